//! The bundle manifest (`manifest.toml`): one type for its whole life.
//!
//! `renalscan train` writes a draft of it beside `model.onnx`; `renalscan bundle` completes it
//! (model hash and precision, data source, test metrics, card hash) and signs it; the device
//! reads it back after checking the signature. Because all three use [`Manifest`], a field the
//! trainer writes is a field the device can read, and every figure a clinician sees in the
//! model card is one that was signed.
//!
//! Unknown tables and keys are ignored, so older runtimes accept newer manifests. A complete
//! manifest ([`Manifest::parse`]) must have every key of [`REQUIRED_FIELDS`]; all the missing
//! ones are reported at once, so a half-written manifest is fixed in one go. A draft
//! ([`Manifest::parse_draft`]) may lack what only the bundle step knows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::taxonomy::{Taxonomy, TaxonomyError};

/// Keys a complete manifest must have (dotted TOML paths). Checked before typed parsing so
/// that the error lists all of them instead of serde's first.
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

/// The warning `renalscan train` writes.
pub const WARNING: &str = "Not for diagnosis.";

/// Why manifest text was refused. Each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Required keys are absent.
    #[error(
        "{path}: missing required fields: {}; complete the draft (or regenerate it with \
         `renalscan train`) and rebuild the bundle",
        fields.join(", ")
    )]
    MissingFields {
        /// The manifest.
        path: PathBuf,
        /// Dotted TOML paths.
        fields: Vec<String>,
    },
    /// Not TOML, wrong types, or values that break the manifest's rules.
    #[error("{path}: {reason}")]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The labels are not a screening model's.
    #[error("{path}: {source}")]
    Labels {
        /// The manifest.
        path: PathBuf,
        /// What is wrong with them.
        source: TaxonomyError,
    },
    /// Reading or writing the file.
    #[error("cannot read or write {path}: {source}")]
    Io {
        /// The manifest.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The manifest could not be written as TOML.
    #[error("cannot write the manifest as TOML: {0}")]
    Serialize(String),
}

/// A bundle manifest (complete, or a trainer's draft).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Output classes in the model's order (see [`Manifest::taxonomy`]).
    pub labels: Vec<String>,
    /// Model identity and file.
    pub model: ModelInfo,
    /// Input tensor and the preprocessing it expects.
    pub input: InputInfo,
    /// Output tensors by name, with what they hold.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// Screening decision rule.
    pub operating_point: OperatingPoint,
    /// Probability calibration.
    pub calibration: Calibration,
    /// The pretrained network the features came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone: Option<Backbone>,
    /// Is it a kidney at all? Frames the gate refuses get no decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_gate: Option<ViewGate>,
    /// A clinic's recalibration of this bundle on its own exams (`renalscan calibrate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_calibration: Option<SiteCalibration>,
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
    /// Reference inputs inside the bundle with the answers this model gives them:
    /// `renalscan-edge selftest` runs them through the form the cart chose and fails on a
    /// different answer (a miscompiled kernel, a broken board, a wrong build).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selftest: Vec<SelftestCase>,
    /// Where this bundle sits among its product's releases: a cart refuses to go back to an
    /// older one, or to run another product's bundle, unless told to on the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
    /// How closely other execution forms of this model agree with its fp32 execution,
    /// measured when the bundle was made (`renalscan bundle --half-agreement N`). A cart's
    /// loader considers such a form only when its agreement is recorded here and proven
    /// ([`FormAgreement::proven`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub form_agreement: Vec<FormAgreement>,
}

/// `[[form_agreement]]`: one execution form of the model against fp32 on fresh images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormAgreement {
    /// The form: `half` (f16 weights, activations and accumulation).
    pub form: String,
    /// Images compared: fresh phantom frames, never used in training, through the device's
    /// own stages.
    pub images: u32,
    /// Images with the same decision (abnormal or not at the operating threshold) in both.
    pub same_decision: u32,
    /// Largest |p(abnormal) difference| over the images.
    pub max_dp: f64,
    /// What executed the form for the measurement (kernels and CPU).
    pub measured_with: String,
}

impl FormAgreement {
    /// The half form's name in `[[form_agreement]]`.
    pub const HALF: &'static str = "half";
    /// Fewest images that can prove agreement.
    pub const MIN_IMAGES: u32 = 200;
    /// Least fraction of same decisions that proves it.
    pub const MIN_FRACTION: f64 = 0.995;

    /// Fraction of images with the same decision.
    pub fn fraction(&self) -> f64 {
        if self.images == 0 {
            0.0
        } else {
            f64::from(self.same_decision) / f64::from(self.images)
        }
    }

    /// Enough images, and enough of them decided the same.
    pub fn proven(&self) -> bool {
        self.images >= Self::MIN_IMAGES && self.fraction() >= Self::MIN_FRACTION
    }
}

/// The figures, as the bundle tools print them.
impl std::fmt::Display for FormAgreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} fresh frames decided as fp32 ({:.2}%), max |dp| {:.4}",
            self.same_decision,
            self.images,
            100.0 * self.fraction(),
            self.max_dp
        )
    }
}

/// The product line this code screens for. A bundle names the product it was trained and
/// validated for; a cart runs only its own product's bundles.
pub const PRODUCT: &str = "renalscan-pediatric-renal";

/// `[release]`: the bundle's place in its product's release history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Build number within `model.version`, never reused: `renalscan bundle` defaults it to
    /// the build time in Unix seconds, so successive builds are increasing.
    pub counter: u64,
    /// The product line (see [`PRODUCT`]).
    pub product: String,
    /// Oldest runtime version (semver) that implements what this bundle needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_runtime: Option<String>,
}

/// A release's position: `model.version` (semver) first, then the counter. Ordered, so
/// "newer" means the same thing on every cart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReleaseVersion {
    /// Semantic version.
    pub version: semver::Version,
    /// Build counter within it.
    pub counter: u64,
}

impl std::fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (release {})", self.version, self.counter)
    }
}

impl ReleaseVersion {
    /// Parses `version` as semver; `None` when it is not.
    pub fn new(version: &str, counter: u64) -> Option<ReleaseVersion> {
        Some(ReleaseVersion {
            version: semver::Version::parse(version.trim()).ok()?,
            counter,
        })
    }
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
    /// Drafts from the trainer are float.
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

/// Channel order of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (Caffe / Keras ResNet-50 v1).
    Bgr,
}

impl ChannelOrder {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelOrder::Rgb => "rgb",
            ChannelOrder::Bgr => "bgr",
        }
    }
}

/// `[input.normalization]`: `(value - mean[c]) / std[c]` on the 0-255 scale, in the output
/// channel order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Channel order.
    pub order: ChannelOrder,
    /// Per-channel mean subtracted.
    pub mean: [f64; 3],
    /// Per-channel divisor (positive).
    pub std: [f64; 3],
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
    /// `[lo, hi]`: a site may set its own threshold in the cart's configuration
    /// (`aggregate.threshold`) within this range. Without it the signed threshold stands and
    /// a configuration that changes it is refused (a site re-fits it with `renalscan
    /// calibrate`, which re-signs the bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_range: Option<[f64; 2]>,
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

/// `[site_calibration]`: a signed bundle recalibrated on one clinic's labelled exams. Its
/// scanner may make the model over- or under-confident, and the trained threshold then misses
/// the sensitivity it was chosen for; the model itself is unchanged (same bytes, same hash).
/// The device applies `temperature` to the model's probabilities and uses the manifest's
/// (re-fitted) operating threshold; the original bundle and both sets of figures stay here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteCalibration {
    /// Who recalibrated (a site name given by the clinic).
    pub site: String,
    /// Temperature on top of the trained one: p' = softmax(ln p / temperature), relative to
    /// the model's own output (a recalibrated bundle recalibrated again multiplies them).
    pub temperature: f64,
    /// Sensitivity the new threshold was chosen for on the site's exams.
    pub target_sensitivity: f64,
    /// Exams it was fitted on.
    pub n_normal: usize,
    pub n_abnormal: usize,
    /// Where they came from.
    pub data: String,
    /// The bundle it started from: its manifest sha256, signer and threshold.
    pub from_bundle_sha256: String,
    pub from_signer: String,
    pub from_threshold: f64,
    /// The site's exams through the original bundle as it was...
    pub before: OverallMetrics,
    /// ...and after recalibration (in-sample: the figures it was fitted on).
    pub after: OverallMetrics,
}

impl SiteCalibration {
    /// Applies the site temperature to a probability row in place.
    pub fn apply(&self, probs: &mut [f32]) {
        apply_temperature(probs, self.temperature as f32);
    }
}

/// p' = softmax(ln p / t): temperature scaling of probabilities whose logits are gone (the
/// trained temperature is folded into the model). `t` = 1 leaves them as they are.
pub fn apply_temperature(probs: &mut [f32], t: f32) {
    if t == 1.0 || probs.is_empty() || !(t.is_finite() && t > 0.0) {
        return;
    }
    for p in probs.iter_mut() {
        *p = p.max(1e-30).ln() / t;
    }
    let max = probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for p in probs.iter_mut() {
        *p = (*p - max).exp();
        sum += *p;
    }
    for p in probs.iter_mut() {
        *p /= sum;
    }
}

/// `[backbone]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backbone {
    /// Description (architecture, weights source).
    pub name: String,
    /// sha256 of the backbone ONNX the features were extracted with.
    pub onnx_sha256: String,
}

/// `[view_gate]`: two signals, either of which says "no kidney in view".
///
/// A learned head (a separate logistic output, not a seventh class, so p(abnormal) and its
/// threshold keep their meaning among kidneys) recognises the non-kidney scenes it was shown;
/// an out-of-distribution score on the pooled backbone features (Mahalanobis distance to the
/// training kidneys, principal subspace plus residual) catches what nobody showed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewGate {
    /// Model output holding p(kidney).
    pub kidney_output: String,
    /// No kidney when p(kidney) is below this.
    pub kidney_threshold: f64,
    /// Model output holding the out-of-distribution score (about 1 for a typical kidney).
    pub ood_output: String,
    /// Unlike the training kidneys when the score is above this.
    pub ood_threshold: f64,
    /// How each threshold was chosen.
    pub rule: String,
    /// What the non-kidney examples were.
    pub negatives: String,
    /// Figures on the validation split at these thresholds.
    pub validation: ViewGateMetrics,
}

/// How the view gate did on held-out images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewGateMetrics {
    /// Kidney images.
    pub n_kidney: usize,
    /// Non-kidney images.
    pub n_other: usize,
    /// Kidney images let through (neither signal fired).
    pub kidney_pass: f64,
    /// Non-kidney images gated (either signal fired).
    pub other_gated: f64,
    /// Non-kidney images the learned head alone gated.
    pub other_gated_learned: f64,
    /// Non-kidney images the OOD score alone gated.
    pub other_gated_ood: f64,
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
    /// Epoch kept (early stopping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<usize>,
    /// How the splits were made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Images per split (`train`, `val`, `test`) and class.
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
    /// Head hyper-parameters as the trainer ran them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<toml::Table>,
    /// What stage 2 did on top of stage 1 (absent for stage 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<Finetune>,
    /// Where the images came from: required in a complete manifest, the trainer's draft may
    /// leave it to `renalscan bundle --data-source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSource>,
}

/// `[training.finetune]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finetune {
    /// Hyper-parameters.
    pub config: toml::Table,
    /// The augmentation and its version.
    pub augmentation: String,
    /// Epochs run (including any before a resume).
    pub epochs_run: usize,
    /// Validation AUC of the stage-1 model it started from.
    pub stage1_val_auc: f64,
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

impl DataKind {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DataKind::Synthetic => "synthetic",
            DataKind::Clinical => "clinical",
            DataKind::Mixed => "mixed",
        }
    }
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
    /// The view gate on these images' kidney and non-kidney views (models with a gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_gate: Option<ViewGateMetrics>,
}

/// `[intended_use]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntendedUse {
    /// Purpose.
    pub purpose: String,
    /// Must contain "Not for diagnosis".
    pub warning: String,
}

/// `[[selftest]]`: a reference frame pinned by hash and the answer the signed model gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelftestCase {
    /// Image file inside the bundle (a screen grab, as a probe would deliver it).
    pub file: String,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// The most probable class.
    pub class: String,
    /// p(abnormal).
    pub p_abnormal: f64,
    /// Largest allowed |p(abnormal) - expected| on a cart (covers the integer and float
    /// forms' difference, measured at bundle time).
    pub tolerance: f64,
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
    /// Parses a complete manifest; `path` only names the file in errors.
    ///
    /// Fails with [`ManifestError::MissingFields`] listing every absent required key, or
    /// [`ManifestError::Parse`] for bad TOML, wrong types, file names that leave the bundle,
    /// a malformed sha256, or a warning that does not say "Not for diagnosis", or
    /// [`ManifestError::Labels`] when the labels are not a screening model's.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let table = parse_table(text, path)?;
        let missing = missing_fields(&table);
        if !missing.is_empty() {
            return Err(ManifestError::MissingFields {
                path: path.to_path_buf(),
                fields: missing,
            });
        }
        let m = typed(table, path)?;
        m.check(path)?;
        Ok(m)
    }

    /// Parses a trainer's draft: typed like a complete manifest, but what only the bundle
    /// step adds (data source, card) may be absent.
    pub fn parse_draft(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let m = typed(parse_table(text, path)?, path)?;
        m.check(path)?;
        Ok(m)
    }

    /// Reads and parses a complete manifest file.
    pub fn from_file(path: &Path) -> Result<Manifest, ManifestError> {
        Manifest::parse(&read(path)?, path)
    }

    /// Reads and parses a draft (or complete) manifest file.
    pub fn draft_from_file(path: &Path) -> Result<Manifest, ManifestError> {
        Manifest::parse_draft(&read(path)?, path)
    }

    /// The TOML text of this manifest.
    pub fn to_toml(&self) -> Result<String, ManifestError> {
        toml::to_string(self).map_err(|e| ManifestError::Serialize(e.to_string()))
    }

    /// The labels as a checked taxonomy (normal class located).
    pub fn taxonomy(&self) -> Result<Taxonomy, TaxonomyError> {
        Taxonomy::from_labels(&self.labels)
    }

    /// The recorded agreement of the half (f16) form, when it proves agreement with fp32.
    pub fn half_proven(&self) -> Option<&FormAgreement> {
        self.form_agreement
            .iter()
            .find(|a| a.form == FormAgreement::HALF && a.proven())
    }

    /// True when every field a device needs is present (see [`REQUIRED_FIELDS`]).
    pub fn is_complete(&self) -> bool {
        self.training.data.is_some()
    }

    /// Consistency rules serde cannot express.
    fn check(&self, path: &Path) -> Result<(), ManifestError> {
        let err = |reason: String| ManifestError::Parse {
            path: path.to_path_buf(),
            reason,
        };
        let mut pins = vec![("model", &self.model.file, &self.model.sha256)];
        if let Some(card) = &self.card {
            pins.push(("card", &card.file, &card.sha256));
        }
        for case in &self.selftest {
            pins.push(("selftest", &case.file, &case.sha256));
            let ok = (0.0..=1.0).contains(&case.p_abnormal)
                && case.tolerance > 0.0
                && case.tolerance <= 1.0
                && self.labels.contains(&case.class);
            if !ok {
                return Err(err(format!(
                    "[[selftest]] {:?}: class {:?} must be one of the labels, p_abnormal {} a \
                     probability and tolerance {} in (0, 1]",
                    case.file, case.class, case.p_abnormal, case.tolerance
                )));
            }
        }
        for a in &self.form_agreement {
            if a.form != FormAgreement::HALF
                || a.same_decision > a.images
                || !(0.0..=1.0).contains(&a.max_dp)
            {
                return Err(err(format!(
                    "[[form_agreement]] form {:?}: the form must be \"half\", same_decision                      ({}) at most images ({}) and max_dp ({}) in [0, 1]",
                    a.form, a.same_decision, a.images, a.max_dp
                )));
            }
        }
        for (table, file, sha) in pins {
            if !is_plain_file_name(file) {
                return Err(err(format!(
                    "[{table}] file = {file:?} must be a file name inside the bundle"
                )));
            }
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(format!(
                    "[{table}] sha256 = {sha:?} is not 64 hex digits"
                )));
            }
        }
        if !self
            .intended_use
            .warning
            .to_lowercase()
            .contains(WARNING_TEXT)
        {
            return Err(err(format!(
                "[intended_use] warning = {:?} must say \"Not for diagnosis\"",
                self.intended_use.warning
            )));
        }
        self.taxonomy().map_err(|source| ManifestError::Labels {
            path: path.to_path_buf(),
            source,
        })?;
        let t = self.operating_point.threshold;
        if !(0.0..=1.0).contains(&t) {
            return Err(err(format!(
                "[operating_point] threshold = {t} is not a probability"
            )));
        }
        if let Some([lo, hi]) = self.operating_point.site_range {
            if !(0.0 <= lo && lo <= t && t <= hi && hi <= 1.0) {
                return Err(err(format!(
                    "[operating_point] site_range = [{lo}, {hi}] must be probabilities with \
                     lo <= threshold ({t}) <= hi"
                )));
            }
        }
        if let Some(g) = &self.view_gate {
            let ok = (0.0..=1.0).contains(&g.kidney_threshold)
                && g.ood_threshold.is_finite()
                && g.ood_threshold > 0.0
                && !g.kidney_output.is_empty()
                && !g.ood_output.is_empty();
            if !ok {
                return Err(err(format!(
                    "[view_gate] kidney_threshold {} must be in [0, 1], ood_threshold {} \
                     positive, outputs named",
                    g.kidney_threshold, g.ood_threshold
                )));
            }
        }
        if let Some(c) = &self.site_calibration {
            if !(c.temperature.is_finite() && (0.05..=20.0).contains(&c.temperature)) {
                return Err(err(format!(
                    "[site_calibration] temperature = {} is outside 0.05..=20",
                    c.temperature
                )));
            }
        }
        if let Some(r) = &self.release {
            if semver::Version::parse(self.model.version.trim()).is_err() {
                return Err(err(format!(
                    "[model] version = {:?} must be a semantic version (MAJOR.MINOR.PATCH) \
                     when the manifest has a [release] table",
                    self.model.version
                )));
            }
            if r.product.trim().is_empty() {
                return Err(err("[release] product must name the product line".into()));
            }
            if let Some(v) = &r.min_runtime {
                if semver::Version::parse(v.trim()).is_err() {
                    return Err(err(format!(
                        "[release] min_runtime = {v:?} is not a semantic version"
                    )));
                }
            }
        }
        let s = &self.input.shape;
        if s.len() != 4 || s[1] != 3 || s[2] != s[3] || s[2] == 0 {
            return Err(err(format!(
                "[input] shape = {s:?} is not [N, 3, S, S] with S > 0"
            )));
        }
        let n = &self.input.normalization;
        if !n.std.iter().all(|v| *v > 0.0 && v.is_finite()) || !n.mean.iter().all(|v| v.is_finite())
        {
            return Err(err(
                "[input.normalization] mean must be finite and std positive".into(),
            ));
        }
        Ok(())
    }

    /// The release position, when the manifest has a `[release]` table (checked at parse:
    /// `model.version` is then semver).
    pub fn release_version(&self) -> Option<ReleaseVersion> {
        let r = self.release.as_ref()?;
        ReleaseVersion::new(&self.model.version, r.counter)
    }

    /// Total images per split (`train`, `val`, `test`).
    pub fn split_totals(&self) -> BTreeMap<String, usize> {
        self.training
            .counts
            .iter()
            .map(|(split, per_class)| (split.clone(), per_class.values().sum()))
            .collect()
    }

    /// Side of the square model input (224).
    pub fn input_size(&self) -> usize {
        self.input.shape.get(2).copied().unwrap_or(0)
    }
}

fn read(path: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_table(text: &str, path: &Path) -> Result<toml::Table, ManifestError> {
    text.parse().map_err(|e| ManifestError::Parse {
        path: path.to_path_buf(),
        reason: format!("{e}"),
    })
}

fn typed(table: toml::Table, path: &Path) -> Result<Manifest, ManifestError> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ManifestError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        testkit::manifests::sample(&"ab".repeat(32))
    }

    #[test]
    fn parses_and_tolerates_unknown_tables() {
        let m = Manifest::parse(&sample(), Path::new("m.toml")).unwrap();
        assert_eq!(m.model.precision, Precision::Float32);
        assert_eq!(
            m.training.data.as_ref().unwrap().source,
            DataKind::Synthetic
        );
        assert_eq!(m.split_totals()["train"], 416);
        assert_eq!(m.input.normalization.order, ChannelOrder::Bgr);
        assert_eq!(m.input_size(), 224);
        assert!(m.is_complete());
    }

    #[test]
    fn site_temperature_sharpens_or_softens_and_keeps_the_order() {
        let p = [0.7f32, 0.2, 0.1];
        let mut soft = p;
        apply_temperature(&mut soft, 2.0);
        let mut sharp = p;
        apply_temperature(&mut sharp, 0.5);
        for q in [soft, sharp] {
            assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(q[0] > q[1] && q[1] > q[2]);
        }
        assert!(soft[0] < 0.7 && sharp[0] > 0.7);
        // t = 2: p' is proportional to sqrt(p).
        let z: f32 = p.iter().map(|v| v.sqrt()).sum();
        assert!((soft[0] - 0.7f32.sqrt() / z).abs() < 1e-6);
        let mut same = p;
        apply_temperature(&mut same, 1.0);
        assert_eq!(same, p);
    }

    /// A form's agreement counts only with enough images and enough same decisions, and a
    /// record that cannot be true is refused at parse.
    #[test]
    fn form_agreement_needs_200_images_and_995_per_mille() {
        let rec = |images, same| {
            format!(
                "{}\n[[form_agreement]]\nform = \"half\"\nimages = {images}\nsame_decision = \
                 {same}\nmax_dp = 0.01\nmeasured_with = \"generic f16 kernels\"\n",
                sample()
            )
        };
        let m = Manifest::parse(&rec(200, 199), Path::new("m.toml")).unwrap();
        assert!(m.half_proven().is_some());
        let again = Manifest::parse(&m.to_toml().unwrap(), Path::new("again.toml")).unwrap();
        assert_eq!(again.form_agreement, m.form_agreement);
        for (images, same) in [(200, 198), (199, 199)] {
            let m = Manifest::parse(&rec(images, same), Path::new("m.toml")).unwrap();
            assert!(m.half_proven().is_none(), "{images} / {same}");
        }
        let err = Manifest::parse(&rec(200, 201), Path::new("m.toml")).unwrap_err();
        assert!(err.to_string().contains("form_agreement"), "{err}");
        let other = rec(200, 200).replace("form = \"half\"", "form = \"bf16\"");
        assert!(Manifest::parse(&other, Path::new("m.toml")).is_err());
        assert!(Manifest::parse(&sample(), Path::new("m.toml"))
            .unwrap()
            .half_proven()
            .is_none());
    }

    #[test]
    fn round_trips_through_its_own_text() {
        let m = Manifest::parse(&sample(), Path::new("m.toml")).unwrap();
        let again = Manifest::parse(&m.to_toml().unwrap(), Path::new("again.toml")).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn lists_every_missing_field_but_a_draft_may_lack_the_data_source() {
        let text = sample()
            .replace("temperature = 2.2299\n", "")
            .replace("source = \"synthetic\"\n", "");
        match Manifest::parse(&text, Path::new("m.toml")) {
            Err(ManifestError::MissingFields { fields, .. }) => assert_eq!(
                fields,
                vec!["calibration.temperature", "training.data.source"]
            ),
            other => panic!("expected MissingFields, got {other:?}"),
        }
        let draft = sample().replace(
            "[training.data]\nsource = \"synthetic\"\ndescription = \"physics phantom\"\n",
            "",
        );
        let m = Manifest::parse_draft(&draft, Path::new("d.toml")).unwrap();
        assert!(!m.is_complete());
        assert!(Manifest::parse(&draft, Path::new("d.toml")).is_err());
    }

    #[test]
    fn refuses_paths_leaving_the_bundle_bad_labels_and_missing_warning() {
        let escape = sample().replace("file = \"model.onnx\"", "file = \"../x.onnx\"");
        assert!(matches!(
            Manifest::parse(&escape, Path::new("m.toml")),
            Err(ManifestError::Parse { .. })
        ));
        let no_warning = sample().replace("Not for diagnosis.", "Use freely.");
        let err = Manifest::parse(&no_warning, Path::new("m.toml")).unwrap_err();
        assert!(err.to_string().contains("Not for diagnosis"), "{err}");
        assert!(Manifest::parse(&testkit::manifests::sample("abc"), Path::new("m.toml")).is_err());
        let no_normal = sample().replace("\"normal\", ", "");
        assert!(matches!(
            Manifest::parse(&no_normal, Path::new("m.toml")),
            Err(ManifestError::Labels { .. })
        ));
        let threshold = sample().replace("threshold = 0.3138", "threshold = 1.5");
        assert!(Manifest::parse(&threshold, Path::new("m.toml")).is_err());
        let order = sample().replace("order = \"bgr\"", "order = \"bgra\"");
        assert!(Manifest::parse(&order, Path::new("m.toml")).is_err());
    }
}
