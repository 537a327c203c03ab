//! A model's labels as its manifest lists them, checked once: every label a known class,
//! none twice, exactly one normal class. Host and device then compute p(abnormal) from the
//! normal class's position in that list, not from an index assumed to be 0.

use crate::class::{self, Class, LABELS};

/// Why a label list cannot be a screening model's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaxonomyError {
    /// No labels at all.
    #[error("the model has no labels")]
    Empty,
    /// A label that is not one of the screening classes.
    #[error("label {label:?} is not a screening class (known: {})", LABELS.join(", "))]
    Unknown {
        /// The label.
        label: String,
    },
    /// A class listed twice.
    #[error("label {label:?} is listed twice")]
    Duplicate {
        /// The label.
        label: String,
    },
    /// Nothing to compute p(abnormal) against.
    #[error("the labels have no \"normal\" class, so p(abnormal) is undefined")]
    NoNormal,
}

/// The classes of one model, in its output order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taxonomy {
    classes: Vec<Class>,
    labels: Vec<String>,
    normal: usize,
}

impl Default for Taxonomy {
    fn default() -> Self {
        Self::standard()
    }
}

impl Taxonomy {
    /// The six classes in the standard order (what `renalscan train` writes).
    pub fn standard() -> Self {
        Self {
            classes: Class::ALL.to_vec(),
            labels: LABELS.iter().map(|s| (*s).to_string()).collect(),
            normal: Class::Normal.index(),
        }
    }

    /// Checks a manifest's label list (exact labels, see [`Class::label`]).
    pub fn from_labels<S: AsRef<str>>(labels: &[S]) -> Result<Self, TaxonomyError> {
        if labels.is_empty() {
            return Err(TaxonomyError::Empty);
        }
        let mut classes = Vec::with_capacity(labels.len());
        for l in labels {
            let l = l.as_ref();
            let c = Class::from_label(l).ok_or_else(|| TaxonomyError::Unknown {
                label: l.to_string(),
            })?;
            if classes.contains(&c) {
                return Err(TaxonomyError::Duplicate {
                    label: l.to_string(),
                });
            }
            classes.push(c);
        }
        let normal = classes
            .iter()
            .position(|c| *c == Class::Normal)
            .ok_or(TaxonomyError::NoNormal)?;
        Ok(Self {
            labels: classes.iter().map(|c| c.label().to_string()).collect(),
            classes,
            normal,
        })
    }

    /// Number of model outputs.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Never true for a checked taxonomy (kept for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The labels, in output order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The classes, in output order.
    pub fn classes(&self) -> &[Class] {
        &self.classes
    }

    /// Output index of the normal class.
    pub fn normal_index(&self) -> usize {
        self.normal
    }

    /// The class of output `index`.
    pub fn class(&self, index: usize) -> Option<Class> {
        self.classes.get(index).copied()
    }

    /// Output index of `class`, when the model has it.
    pub fn index_of(&self, class: Class) -> Option<usize> {
        self.classes.iter().position(|c| *c == class)
    }

    /// True when this is the standard six-class order.
    pub fn is_standard(&self) -> bool {
        self.classes == Class::ALL
    }

    /// `1 - p(normal)`, clamped to `[0, 1]` (the device's score).
    pub fn p_abnormal(&self, probs: &[f32]) -> f32 {
        class::p_abnormal(probs, self.normal)
    }

    /// `1 - p(normal)` in double precision, unclamped (the host's metrics, which rank
    /// scores and must not merge two that differ in the last float bit).
    pub fn p_abnormal_f64(&self, probs: &[f32]) -> f64 {
        probs
            .get(self.normal)
            .map_or(f64::NAN, |p| 1.0 - f64::from(*p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_round_trips_through_labels() {
        let t = Taxonomy::from_labels(&LABELS).unwrap();
        assert_eq!(t, Taxonomy::standard());
        assert!(t.is_standard());
        assert_eq!(t.normal_index(), 0);
    }

    #[test]
    fn normal_anywhere_and_refusals() {
        let t = Taxonomy::from_labels(&["cyst", "normal"]).unwrap();
        assert_eq!(t.normal_index(), 1);
        assert!((t.p_abnormal(&[0.75, 0.25]) - 0.75).abs() < 1e-6);
        assert_eq!(t.index_of(Class::Cyst), Some(0));
        assert_eq!(t.index_of(Class::Stone), None);
        assert!(!t.is_standard());
        assert_eq!(
            Taxonomy::from_labels::<&str>(&[]),
            Err(TaxonomyError::Empty)
        );
        assert_eq!(
            Taxonomy::from_labels(&["stone", "cyst"]),
            Err(TaxonomyError::NoNormal)
        );
        assert!(matches!(
            Taxonomy::from_labels(&["normal", "liver"]),
            Err(TaxonomyError::Unknown { .. })
        ));
        assert!(matches!(
            Taxonomy::from_labels(&["normal", "cyst", "cyst"]),
            Err(TaxonomyError::Duplicate { .. })
        ));
    }
}
