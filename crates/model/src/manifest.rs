//! The typed `manifest.toml` of a model bundle.
//!
//! The trainer writes a draft beside `model.onnx`; `renalscan bundle` completes it (model hash
//! and precision, data source, test metrics, card hash) and signs it. The device reads the
//! same struct, so every figure a clinician sees in the model card is the one that was signed.
//! Unknown tables and keys are ignored so that older runtimes accept newer manifests; missing
//! required keys are all reported at once, so a half-written manifest is fixed in one go.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bundle::BundleError;

/// Keys a bundle manifest must have (dotted TOML paths). Checked before typed parsing so that
/// the error lists all of them instead of serde's first.
pub const REQUIRED_FIELDS: &[&str] = &[
    "labels",
    "model.name",
    "model.version",
    "model.file",
    "model.sha256",
    "input.name",
    "input.shape",
    "input.usimage_preprocess_version",
    "input.normalization.order",
    "input.normalization.mean",
    "input.normalization.std",
    "operating_point.threshold",
    "operating_point.target_sensitivity",
    "calibration.temperature",
    "training.counts",
    "training.data.source",
    "validation.auc",
    "validation.accuracy",
    "validation.sensitivity",
    "validation.specificity",
    "intended_use.purpose",
    "intended_use.warning",
];

/// The words the intended-use warning must contain (case-insensitive).
pub const WARNING_TEXT: &str = "not for diagnosis";

/// A parsed, complete bundle manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Output classes in the model's order; `labels[0]` is "normal".
    pub labels: Vec<String>,
    /// Model identity and file.
    pub model: ModelInfo,
    /// Input tensor and the preprocessing it expects.
    pub input: InputInfo,
    /// Screening decision rule.
    pub operating_point: OperatingPoint,
    /// Probability calibration.
    pub calibration: Calibration,
    /// Training data and settings.
    pub training: Training,
    /// Validation-set figures at the operating point (the split the threshold was chosen on).
    pub validation: OverallMetrics,
    /// Held-out evaluations by precision (`float32`, `int8`), from `renalscan eval`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub evaluation: BTreeMap<String, Evaluation>,
    /// Who and what the model is for.
    pub intended_use: IntendedUse,
    /// The model card inside the bundle, pinned by hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<FilePin>,
}

/// Numeric precision of the model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float weights and activations (the trainer's export).
    #[default]
    Float32,
    /// Int8 weights and activations (post-training quantization).
    Int8,
}

impl Precision {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Int8 => "int8",
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Unix seconds when the trainer exported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_unix: Option<u64>,
    /// File name inside the bundle.
    pub file: String,
    /// Lower-case hex sha256 of that file.
    pub sha256: String,
    /// Drafts from the trainer predate this key and are float.
    #[serde(default)]
    pub precision: Precision,
    /// Quantization details for int8 models (scheme, calibrator, float layers, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<toml::Table>,
}

/// `[input]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputInfo {
    /// Input tensor name.
    pub name: String,
    /// `[N, 3, H, W]`.
    pub shape: Vec<usize>,
    /// usimage algorithm version the model was trained with.
    pub usimage_preprocess_version: u32,
    /// Grey frames become three equal channels.
    #[serde(default)]
    pub grey_to_three_channels: bool,
    /// Channel order, mean, std.
    pub normalization: Normalization,
}

/// `[input.normalization]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Channel order, e.g. "bgr".
    pub order: String,
    /// Per-channel mean subtracted (0-255 scale).
    pub mean: Vec<f64>,
    /// Per-channel divisor.
    pub std: Vec<f64>,
}

/// `[operating_point]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    /// How the score is computed from the outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<String>,
    /// Abnormal when score >= threshold.
    pub threshold: f64,
    /// Validation sensitivity the threshold was chosen for.
    pub target_sensitivity: f64,
}

/// `[calibration]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// "temperature".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Fitted temperature.
    pub temperature: f64,
    /// True when `probs` already include it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded_into_model: Option<bool>,
    /// Validation expected calibration error before calibration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ece_before: Option<f64>,
    /// And after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ece_after: Option<f64>,
}

/// `[training]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Training {
    /// Stage description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// How the splits were made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Images per split (`train`, `val`, `test`) and class.
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
    /// Where the images came from.
    pub data: DataSource,
}

/// Kind of training images: the card must say plainly when they are not from patients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// Generated images (the physics phantom), no patients.
    Synthetic,
    /// Images from patients.
    Clinical,
    /// Both.
    Mixed,
}

/// `[training.data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    /// Synthetic, clinical or mixed.
    pub source: DataKind,
    /// Free text: generator and profiles, or sites and years.
    #[serde(default)]
    pub description: String,
}

/// Normal-vs-abnormal figures at the operating point (keys as in `metrics.json` `overall`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverallMetrics {
    /// Images scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Of which normal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_normal: Option<usize>,
    /// Of which abnormal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_abnormal: Option<usize>,
    /// AUC of p(abnormal).
    pub auc: f64,
    /// DeLong 95% interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auc_ci: Option<[f64; 2]>,
    /// Binary accuracy at the threshold.
    pub accuracy: f64,
    /// Abnormal images flagged.
    pub sensitivity: f64,
    /// Normal images passed.
    pub specificity: f64,
    /// Threshold the figures were computed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Six-class argmax accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_6class: Option<f64>,
    /// Expected calibration error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
}

/// One abnormality type against the normal images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeMetrics {
    /// Images of this type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Accuracy over this type plus the normal images.
    pub accuracy: f64,
    /// AUC, this type vs normal.
    pub auc: f64,
    /// DeLong 95% interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auc_ci: Option<[f64; 2]>,
    /// Images of this type flagged abnormal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,
}

/// `[evaluation.<precision>]`: one `metrics.json` of `renalscan eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Which images these are (e.g. the manifest's held-out test split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Normal vs abnormal.
    pub overall: OverallMetrics,
    /// Per abnormality type.
    #[serde(default)]
    pub per_type: BTreeMap<String, TypeMetrics>,
}

/// `[intended_use]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntendedUse {
    /// Purpose.
    pub purpose: String,
    /// Must contain "Not for diagnosis".
    pub warning: String,
}

/// A file inside the bundle pinned by its sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilePin {
    /// File name inside the bundle.
    pub file: String,
    /// Lower-case hex sha256.
    pub sha256: String,
}

/// Dotted paths of [`REQUIRED_FIELDS`] absent from `table`.
pub fn missing_fields(table: &toml::Table) -> Vec<String> {
    REQUIRED_FIELDS
        .iter()
        .filter(|path| {
            let mut parts = path.split('.');
            let Some(first) = parts.next() else {
                return true;
            };
            let mut value = table.get(first);
            for part in parts {
                value = value.and_then(|v| v.get(part));
            }
            value.is_none()
        })
        .map(|p| (*p).to_string())
        .collect()
}

/// True when `name` is a plain file name, so a manifest cannot point outside its bundle.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && Path::new(name).file_name().is_some_and(|f| f == name)
}

impl Manifest {
    /// Parses manifest text; `path` only names the file in errors.
    ///
    /// Fails with [`BundleError::MissingFields`] listing every absent required key, or
    /// [`BundleError::Parse`] for bad TOML, wrong types, file names that leave the bundle, a
    /// malformed sha256, or a warning that does not say "Not for diagnosis".
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, BundleError> {
        let parse_err = |reason: String| BundleError::Parse {
            path: path.to_path_buf(),
            reason,
        };
        let table: toml::Table = text.parse().map_err(|e| parse_err(format!("{e}")))?;
        let missing = missing_fields(&table);
        if !missing.is_empty() {
            return Err(BundleError::MissingFields {
                path: path.to_path_buf(),
                fields: missing,
            });
        }
        let m: Manifest = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        m.check().map_err(parse_err)?;
        Ok(m)
    }

    /// Reads and parses a manifest file.
    pub fn from_file(path: &Path) -> Result<Manifest, BundleError> {
        let text = std::fs::read_to_string(path).map_err(|source| BundleError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(&text, path)
    }

    /// Consistency rules serde cannot express.
    fn check(&self) -> Result<(), String> {
        let mut pins = vec![("model", &self.model.file, &self.model.sha256)];
        if let Some(card) = &self.card {
            pins.push(("card", &card.file, &card.sha256));
        }
        for (table, file, sha) in pins {
            if !is_plain_file_name(file) {
                return Err(format!(
                    "[{table}] file = {file:?} must be a file name inside the bundle"
                ));
            }
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("[{table}] sha256 = {sha:?} is not 64 hex digits"));
            }
        }
        if !self
            .intended_use
            .warning
            .to_lowercase()
            .contains(WARNING_TEXT)
        {
            return Err(format!(
                "[intended_use] warning = {:?} must say \"Not for diagnosis\"",
                self.intended_use.warning
            ));
        }
        if self.labels.is_empty() {
            return Err("labels is empty".into());
        }
        Ok(())
    }

    /// Total images per split (`train`, `val`, `test`).
    pub fn split_totals(&self) -> BTreeMap<String, usize> {
        self.training
            .counts
            .iter()
            .map(|(split, per_class)| (split.clone(), per_class.values().sum()))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A complete manifest as `renalscan bundle` writes it, for tests here and in `bundle`.
    pub(crate) fn sample(model_sha: &str) -> String {
        format!(
            r#"labels = ["normal", "stone", "cyst", "hyperechogenicity", "sol", "hydronephrosis"]

[model]
name = "renalscan-resnet50"
version = "0.1.0"
file = "model.onnx"
sha256 = "{model_sha}"
precision = "float32"

[input]
name = "image"
shape = [1, 3, 224, 224]
usimage_preprocess_version = {pv}

[input.normalization]
order = "bgr"
mean = [103.939, 116.779, 123.68]
std = [1.0, 1.0, 1.0]

[operating_point]
threshold = 0.3138
target_sensitivity = 0.95

[calibration]
method = "temperature"
temperature = 2.2299

[training.counts.train]
normal = 236
stone = 180

[training.counts.test]
normal = 46
stone = 39

[training.data]
source = "synthetic"
description = "physics phantom"

[validation]
auc = 0.9420
accuracy = 0.8795
sensitivity = 0.9545
specificity = 0.6042

[intended_use]
purpose = "Screening aid."
warning = "Not for diagnosis."

[some_future_table]
anything = [1, 2, 3]
"#,
            pv = usimage::PREPROCESS_VERSION
        )
    }

    #[test]
    fn parses_and_tolerates_unknown_tables() {
        let m = Manifest::parse(&sample(&"ab".repeat(32)), Path::new("m.toml")).unwrap();
        assert_eq!(m.model.precision, Precision::Float32);
        assert_eq!(m.training.data.source, DataKind::Synthetic);
        assert_eq!(m.split_totals()["train"], 416);
        assert_eq!(
            m.input.usimage_preprocess_version,
            usimage::PREPROCESS_VERSION
        );
    }

    #[test]
    fn lists_every_missing_field() {
        let text = sample(&"ab".repeat(32))
            .replace("temperature = 2.2299\n", "")
            .replace("source = \"synthetic\"\n", "");
        match Manifest::parse(&text, Path::new("m.toml")) {
            Err(BundleError::MissingFields { fields, .. }) => assert_eq!(
                fields,
                vec!["calibration.temperature", "training.data.source"]
            ),
            other => panic!("expected MissingFields, got {other:?}"),
        }
    }

    #[test]
    fn refuses_paths_leaving_the_bundle_and_missing_warning() {
        let sha = "ab".repeat(32);
        let escape = sample(&sha).replace("file = \"model.onnx\"", "file = \"../x.onnx\"");
        assert!(matches!(
            Manifest::parse(&escape, Path::new("m.toml")),
            Err(BundleError::Parse { .. })
        ));
        let no_warning = sample(&sha).replace("Not for diagnosis.", "Use freely.");
        let err = Manifest::parse(&no_warning, Path::new("m.toml")).unwrap_err();
        assert!(err.to_string().contains("Not for diagnosis"), "{err}");
        let short_sha = sample("abc");
        assert!(Manifest::parse(&short_sha, Path::new("m.toml")).is_err());
    }
}
