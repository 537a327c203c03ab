//! The six screening classes of the reference study (Tsai et al. 2022): normal, and the five
//! abnormalities a pediatric renal ultrasound is screened for.
//!
//! The order of [`Class`] is the models' output order and part of the cart-link wire format
//! (postcard encodes the variant index): new classes are only ever appended.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A screening class. `Sol` is a space-occupying lesion (mass).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Class {
    /// No abnormality.
    Normal,
    /// Renal stone (nephrolithiasis).
    Stone,
    /// Renal cyst.
    Cyst,
    /// Parenchyma brighter than liver or spleen.
    Hyperechogenicity,
    /// Space-occupying lesion.
    Sol,
    /// Dilated collecting system.
    Hydronephrosis,
}

/// Labels of [`Class::ALL`], in model output order: what manifests, folders and CSVs say.
pub const LABELS: [&str; 6] = [
    "normal",
    "stone",
    "cyst",
    "hyperechogenicity",
    "sol",
    "hydronephrosis",
];

impl Class {
    /// Every class, in model output (and wire) order.
    pub const ALL: [Class; 6] = [
        Class::Normal,
        Class::Stone,
        Class::Cyst,
        Class::Hyperechogenicity,
        Class::Sol,
        Class::Hydronephrosis,
    ];

    /// The abnormal classes, in order.
    pub const ABNORMAL: [Class; 5] = [
        Class::Stone,
        Class::Cyst,
        Class::Hyperechogenicity,
        Class::Sol,
        Class::Hydronephrosis,
    ];

    /// Position in [`Class::ALL`] (the standard model's output index).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The class at `index` of [`Class::ALL`].
    pub fn from_index(index: usize) -> Option<Class> {
        Class::ALL.get(index).copied()
    }

    /// Short lower-case label: manifests, folder names, logs, the cart's display.
    pub const fn label(self) -> &'static str {
        LABELS[self as usize]
    }

    /// Name for people (reports, the operator view).
    pub const fn display_name(self) -> &'static str {
        match self {
            Class::Normal => "Normal",
            Class::Stone => "Stone",
            Class::Cyst => "Cyst",
            Class::Hyperechogenicity => "Hyperechogenicity",
            Class::Sol => "Space-occupying lesion",
            Class::Hydronephrosis => "Hydronephrosis",
        }
    }

    /// True for every class but [`Class::Normal`].
    pub const fn is_abnormal(self) -> bool {
        !matches!(self, Class::Normal)
    }

    /// The class with this exact label (ASCII case ignored).
    pub fn from_label(label: &str) -> Option<Class> {
        Class::ALL
            .into_iter()
            .find(|c| c.label().eq_ignore_ascii_case(label.trim()))
    }

    /// The class a clinic's folder name or CSV label means: the labels, the display names
    /// and common synonyms ("calculi", "hydro", "mass", ...), ignoring case, spaces and
    /// punctuation. `None` for anything else: an unknown label is an error for the caller
    /// to report, never a guess.
    pub fn from_alias(text: &str) -> Option<Class> {
        // Lower-case ASCII letters and digits only, without allocating (no_std).
        let mut buf = [0u8; 32];
        let mut n = 0;
        for b in text.bytes().filter(u8::is_ascii_alphanumeric) {
            if n == buf.len() {
                return None;
            }
            buf[n] = b.to_ascii_lowercase();
            n += 1;
        }
        let key = core::str::from_utf8(&buf[..n]).ok()?;
        Some(match key {
            "normal" | "healthy" | "nl" | "neg" | "negative" => Class::Normal,
            "stone" | "stones" | "calculus" | "calculi" | "nephrolithiasis" | "urolithiasis"
            | "renalstone" | "kidneystone" => Class::Stone,
            "cyst" | "cysts" | "renalcyst" | "cystic" => Class::Cyst,
            "hyperechogenicity"
            | "hyperechoic"
            | "hyperechogenic"
            | "echogenic"
            | "increasedechogenicity"
            | "hyperecho" => Class::Hyperechogenicity,
            "sol" | "sols" | "spaceoccupyinglesion" | "mass" | "tumor" | "tumour" | "lesion" => {
                Class::Sol
            }
            "hydronephrosis" | "hydro" | "hn" | "pelviectasis" | "pelvicaliectasis" => {
                Class::Hydronephrosis
            }
            _ => return None,
        })
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The screening score: `1 - p(normal)`, clamped to `[0, 1]`. NaN when `normal_index` is
/// outside `probs` (a model whose outputs do not match its labels: callers check that once at
/// load, see [`crate::Taxonomy`]).
pub fn p_abnormal(probs: &[f32], normal_index: usize) -> f32 {
    probs
        .get(normal_index)
        .map_or(f32::NAN, |p| (1.0 - p).clamp(0.0, 1.0))
}

/// Which kidney an exam is about. `no_std` because the cart sends it (cart link protocol 2):
/// the variant order is part of that wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Left,
    Right,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_enum_order() {
        for (i, c) in Class::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(Class::from_index(i), Some(c));
            assert_eq!(Class::from_label(c.label()), Some(c));
            assert_eq!(Class::from_alias(c.label()), Some(c));
            assert_eq!(Class::from_alias(c.display_name()), Some(c));
        }
        assert_eq!(Class::from_index(6), None);
        assert_eq!(&Class::ABNORMAL[..], &Class::ALL[1..]);
    }

    #[test]
    fn aliases_ignore_case_and_punctuation_and_refuse_the_unknown() {
        assert_eq!(Class::from_alias(" Kidney-Stone "), Some(Class::Stone));
        assert_eq!(Class::from_alias("HN"), Some(Class::Hydronephrosis));
        assert_eq!(
            Class::from_alias("space-occupying lesion"),
            Some(Class::Sol)
        );
        assert_eq!(Class::from_alias("liver"), None);
        assert_eq!(Class::from_alias(""), None);
        assert_eq!(Class::from_alias(&"a".repeat(100)), None);
        assert_eq!(Class::from_label("Stones"), None);
    }

    #[test]
    fn p_abnormal_uses_the_normal_index() {
        let probs = [0.1, 0.7, 0.2];
        assert!((p_abnormal(&probs, 0) - 0.9).abs() < 1e-6);
        assert!((p_abnormal(&probs, 2) - 0.8).abs() < 1e-6);
        assert!(p_abnormal(&probs, 3).is_nan());
        assert_eq!(p_abnormal(&[1.2], 0), 0.0);
    }
}
