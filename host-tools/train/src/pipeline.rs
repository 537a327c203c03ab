//! `renalscan train`, stage 1, end to end: data -> patient split -> cached features -> head
//! -> temperature and threshold on validation -> `model.onnx` + `manifest.toml`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use evaluate::{evaluate, threshold_for_sensitivity, Prediction, CLASSES};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use usimage::{Normalization, PREPROCESS_VERSION};

use crate::activations::{self, ActivationCache, Item};
use crate::augment;
use crate::dataset::{self, Split};
use crate::extract::{self, FeatureCache, FEATURES, SIZE};
use crate::finetune::{self, FinetuneConfig, Layer4Weights};
use crate::head::{self, Features, HeadConfig, LinearHead};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Dataset.
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    /// Extraction.
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    /// Head training.
    #[error(transparent)]
    Head(#[from] head::HeadError),
    /// Metrics.
    #[error(transparent)]
    Metrics(#[from] evaluate::MetricsError),
    /// ONNX export.
    #[error(transparent)]
    Onnx(#[from] resnet50::OnnxError),
    /// Writing run files.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A split is empty.
    #[error("the {0} split has no usable images (too little data, or all one class?)")]
    EmptySplit(&'static str),
    /// Serialising the manifest.
    #[error("manifest: {0}")]
    Toml(#[from] toml::ser::Error),
    /// Stage 2.
    #[error(transparent)]
    Finetune(#[from] finetune::FinetuneError),
    /// Serialising JSON.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Options of a stage-1 run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOptions {
    /// Dataset (folder or CSV).
    pub data: PathBuf,
    /// Run directory.
    pub out: PathBuf,
    /// Feature cache directory.
    pub cache_dir: PathBuf,
    /// Fraction of each class's patients held out for validation.
    pub val_fraction: f64,
    /// Fraction held out for test.
    pub test_fraction: f64,
    /// Sensitivity the threshold is chosen for on validation.
    pub target_sensitivity: f64,
    /// Extraction threads.
    pub threads: usize,
    /// Tolerated unreadable images, percent.
    pub max_failed_pct: f64,
    /// Head hyper-parameters (its seed is the run's seed).
    pub head: HeadConfig,
    /// Describes the backbone in the manifest (e.g. "ImageNet ResNet-50 v1").
    pub backbone_name: String,
}

/// What a run produced (also logged and written to `metrics.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Images per split and class.
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
    /// Images skipped as unreadable.
    pub skipped: usize,
    /// Seconds spent extracting features.
    pub extract_s: f64,
    /// Images whose features were computed (not cached) / s.
    pub extract_images_per_s: Option<f64>,
    /// Seconds spent training the head.
    pub head_s: f64,
    /// Whole run, seconds.
    pub total_s: f64,
    /// Epoch kept.
    pub best_epoch: usize,
    /// Temperature fitted on validation (folded into the exported head).
    pub temperature: f32,
    /// Validation ECE before temperature scaling.
    pub val_ece_before: f64,
    /// After.
    pub val_ece_after: f64,
    /// Operating threshold on p(abnormal).
    pub threshold: f64,
    /// Validation metrics at that threshold (calibrated probabilities).
    pub validation: evaluate::Overall,
    /// Per-epoch history.
    pub history: Vec<head::Epoch>,
    /// The trained head before temperature scaling (stage 2 starts from stage 1's).
    #[serde(skip)]
    pub head: LinearHead,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    fs::write(path, bytes).map_err(io(path))
}

/// Loads the data, splits it by patient, writes `split.csv` and `config.json`.
fn prepare(
    opt: &TrainOptions,
    config: &impl Serialize,
) -> Result<(Vec<dataset::Sample>, Counts), TrainError> {
    fs::create_dir_all(&opt.out).map_err(io(&opt.out))?;
    let mut samples = dataset::load(&opt.data)?;
    dataset::assign_splits(
        &mut samples,
        opt.val_fraction,
        opt.test_fraction,
        opt.head.seed,
    );
    dataset::write_split_csv(&samples, &opt.out.join("split.csv"))?;
    let mut counts = BTreeMap::new();
    for (split, c) in dataset::summary(&samples) {
        let m: BTreeMap<String, usize> = CLASSES
            .iter()
            .zip(c)
            .map(|(n, v)| ((*n).to_string(), v))
            .collect();
        log::info!("{split}: {m:?}");
        counts.insert(split.to_string(), m);
    }
    write(
        &opt.out.join("config.json"),
        serde_json::to_string_pretty(config)?.as_bytes(),
    )?;
    Ok((samples, counts))
}

/// Images per split and class.
type Counts = BTreeMap<String, BTreeMap<String, usize>>;

/// Temperature, operating point and export: the same for both stages.
struct Calibrated {
    temperature: f32,
    ece_before: f64,
    ece_after: f64,
    threshold: f64,
    validation: evaluate::Overall,
    onnx_sha: String,
}

/// Fits the temperature of `head` (uncalibrated, on pooled features) on `va`, picks the
/// threshold, writes `head.json` and `model.onnx` (`weights` with the calibrated head).
fn calibrate_and_export(
    opt: &TrainOptions,
    head: &LinearHead,
    va: &Features,
    best_epoch: usize,
    weights: &resnet50::ResNet50,
    log_text: &mut String,
) -> Result<Calibrated, TrainError> {
    let t = head::fit_temperature(head, va);
    let ece_before = head::ece_at(head, va, 1.0);
    let ece_after = head::ece_at(head, va, t);
    let calibrated = head.scaled(t);
    let val_preds: Vec<Prediction> = head::predict(&calibrated, va, 1.0)
        .into_iter()
        .zip(&va.y)
        .map(|(probs, &label)| Prediction { label, probs })
        .collect();
    let pos: Vec<f64> = val_preds
        .iter()
        .filter(|p| p.label != 0)
        .map(Prediction::p_abnormal)
        .collect();
    let threshold = threshold_for_sensitivity(&pos, opt.target_sensitivity);
    let val_eval = evaluate(&val_preds, threshold)?;
    let _ = writeln!(
        log_text,
        "best epoch {best_epoch}; temperature {t:.4}; val ECE {ece_before:.4} -> {ece_after:.4}; \
         threshold {threshold:.4} (target sensitivity {}); val AUC {:.4}, sens {:.4}, spec {:.4}",
        opt.target_sensitivity,
        val_eval.overall.auc,
        val_eval.overall.sensitivity,
        val_eval.overall.specificity
    );
    log::info!(
        "val: AUC {:.4}, sensitivity {:.3}, specificity {:.3} at threshold {threshold:.4}; \
         temperature {t:.3}, ECE {ece_before:.4} -> {ece_after:.4}",
        val_eval.overall.auc,
        val_eval.overall.sensitivity,
        val_eval.overall.specificity
    );
    write(
        &opt.out.join("head.json"),
        serde_json::to_string(&serde_json::json!({
            "head_uncalibrated": head,
            "temperature": t,
            "threshold": threshold,
        }))?
        .as_bytes(),
    )?;
    let onnx_sha = export(
        weights,
        &calibrated,
        &opt.out.join("model.onnx"),
        &opt.backbone_name,
    )?;
    Ok(Calibrated {
        temperature: t,
        ece_before,
        ece_after,
        threshold,
        validation: val_eval.overall,
        onnx_sha,
    })
}

/// Writes `manifest.toml`, `metrics.json` and `train.log`.
fn write_run_files(
    opt: &TrainOptions,
    manifest: &Manifest,
    metrics: &impl Serialize,
    log_text: &str,
) -> Result<(), TrainError> {
    write(
        &opt.out.join("manifest.toml"),
        toml::to_string(manifest)?.as_bytes(),
    )?;
    write(
        &opt.out.join("metrics.json"),
        serde_json::to_string_pretty(metrics)?.as_bytes(),
    )?;
    write(&opt.out.join("train.log"), log_text.as_bytes())
}

/// Runs stage 1. `weights` is the backbone the ONNX file `backbone_onnx` was exported from
/// (the exported model is those weights plus the trained head).
pub fn train_stage1(
    opt: &TrainOptions,
    weights: &resnet50::ResNet50,
    backbone_onnx: &Path,
) -> Result<RunSummary, TrainError> {
    let t0 = Instant::now();
    let (samples, counts) = prepare(opt, opt)?;

    // Features of the train and validation images only: test images are for `eval`.
    let used: Vec<&dataset::Sample> = samples
        .iter()
        .filter(|s| matches!(s.split, Some(Split::Train | Split::Val)))
        .collect();
    let paths: Vec<PathBuf> = used.iter().map(|s| s.path.clone()).collect();
    let backbone_sha = extract::file_sha256(backbone_onnx)?;
    let mut cache = FeatureCache::open(&opt.cache_dir, &backbone_sha)?;
    let te = Instant::now();
    let (feats, computed) = extract::features(&paths, backbone_onnx, &mut cache, opt.threads)?;
    let extract_s = te.elapsed().as_secs_f64();
    let extract_images_per_s = (computed > 0).then(|| computed as f64 / extract_s);
    if let Some(r) = extract_images_per_s {
        log::info!("extraction: {computed} images in {extract_s:.1} s ({r:.2} images/s)");
    }
    let skipped = extract::check_failures(&paths, &feats, opt.max_failed_pct)?;
    let (mut tr, mut va) = (
        Features {
            dim: FEATURES,
            ..Features::default()
        },
        Features {
            dim: FEATURES,
            ..Features::default()
        },
    );
    for (s, f) in used.iter().zip(&feats) {
        let Ok(f) = f else { continue };
        let dst = if s.split == Some(Split::Train) {
            &mut tr
        } else {
            &mut va
        };
        dst.x.extend_from_slice(f);
        dst.y.push(s.label);
    }
    if tr.is_empty() {
        return Err(TrainError::EmptySplit("train"));
    }
    if va.is_empty() {
        return Err(TrainError::EmptySplit("validation"));
    }

    let th = Instant::now();
    let bar = ProgressBar::new(opt.head.max_epochs as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "head [{elapsed_precise}] {wide_bar} {pos}/{len} epochs (ETA {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut log_text = String::new();
    let trained = head::train_head(&tr, &va, &opt.head, |e| {
        bar.inc(1);
        bar.set_message(format!("val AUC {:.4}", e.val_auc));
        let _ = writeln!(
            log_text,
            "epoch {:>3} train_loss {:.4} val_auc {:.4} val_nll {:.4}",
            e.epoch, e.train_loss, e.val_auc, e.val_nll
        );
    })?;
    bar.finish();
    let head_s = th.elapsed().as_secs_f64();

    let c = calibrate_and_export(
        opt,
        &trained.head,
        &va,
        trained.best_epoch,
        weights,
        &mut log_text,
    )?;
    let summary = RunSummary {
        counts,
        skipped,
        extract_s,
        extract_images_per_s,
        head_s,
        total_s: t0.elapsed().as_secs_f64(),
        best_epoch: trained.best_epoch,
        temperature: c.temperature,
        val_ece_before: c.ece_before,
        val_ece_after: c.ece_after,
        threshold: c.threshold,
        validation: c.validation,
        history: trained.history,
        head: trained.head,
    };
    let manifest = Manifest::new(opt, &summary, &c.onnx_sha, &backbone_sha, Stage::One);
    let _ = writeln!(log_text, "total {:.1} s", summary.total_s);
    write_run_files(opt, &manifest, &summary, &log_text)?;
    Ok(summary)
}

/// Options of a stage-2 run.
#[derive(Debug, Clone, Serialize)]
pub struct Stage2Options {
    /// Data, split, caches, head settings: as stage 1 (which runs first, into `stage1/`).
    pub base: TrainOptions,
    /// layer4 fine-tuning settings.
    pub finetune: FinetuneConfig,
    /// Continue from the last checkpoint in `<out>/checkpoints`.
    pub resume: bool,
}

/// What a stage-2 run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Stage2Summary {
    /// The stage-1 run (in `<out>/stage1`) whose head stage 2 starts from.
    pub stage1: RunSummary,
    /// Stage 2: `extract_*` count layer-3 views, `head_s` is layer4 + head training.
    pub stage2: RunSummary,
    /// Layer-3 views computed (not cached).
    pub views_computed: usize,
    /// Seconds per stage-2 epoch (training + validation).
    pub epoch_s: Vec<f64>,
    /// Checkpoint epoch this run continued from.
    pub resumed_from: Option<usize>,
    /// The exported layer4 and head (head before temperature scaling).
    #[serde(skip)]
    pub layer4: Layer4Weights,
}

/// What must not change across `--resume`.
fn resume_identity(opt: &Stage2Options, backbone_sha: &str) -> serde_json::Value {
    finetune::identity(
        &opt.finetune,
        serde_json::json!({
            "data": opt.base.data,
            "val_fraction": opt.base.val_fraction,
            "test_fraction": opt.base.test_fraction,
            "head": opt.base.head,
            "backbone_sha256": backbone_sha,
            "usimage_preprocess_version": PREPROCESS_VERSION,
            "augmentation_version": augment::AUG_VERSION,
        }),
    )
}

/// Runs stage 1 (into `<out>/stage1`), then fine-tunes layer4 + head from cached layer-3
/// activations (train images: the original and `views` augmented views; validation: the
/// original), calibrates and exports like stage 1.
pub fn train_stage2(
    opt: &Stage2Options,
    weights: &resnet50::ResNet50,
    backbone_onnx: &Path,
) -> Result<Stage2Summary, TrainError> {
    let t0 = Instant::now();
    let base = &opt.base;
    let backbone_sha = extract::file_sha256(backbone_onnx)?;
    let ident = resume_identity(opt, &backbone_sha);
    // Refuse a mismatched resume before any work.
    finetune::check_resume(&base.out, opt.resume, &ident)?;
    let (samples, counts) = prepare(base, opt)?;

    let s1_opt = TrainOptions {
        out: base.out.join("stage1"),
        ..base.clone()
    };
    log::info!("stage 1 into {}", s1_opt.out.display());
    let s1 = train_stage1(&s1_opt, weights, backbone_onnx)?;

    let used: Vec<&dataset::Sample> = samples
        .iter()
        .filter(|s| matches!(s.split, Some(Split::Train | Split::Val)))
        .collect();
    let items: Vec<Item> = used
        .iter()
        .map(|s| Item {
            path: s.path.clone(),
            views: if s.split == Some(Split::Train) {
                opt.finetune.views
            } else {
                0
            },
        })
        .collect();
    let short = backbone_sha.get(..16).unwrap_or(&backbone_sha);
    let layer3 = base.cache_dir.join(format!("layer3-{short}.onnx"));
    fs::create_dir_all(&base.cache_dir).map_err(io(&base.cache_dir))?;
    activations::write_layer3_onnx(weights, &layer3)?;
    let mut cache = ActivationCache::open(&base.cache_dir, &backbone_sha)?;
    let te = Instant::now();
    let (hashes, computed) =
        activations::extract(&items, &layer3, &mut cache, opt.finetune.seed, base.threads)?;
    let extract_s = te.elapsed().as_secs_f64();
    let extract_images_per_s = (computed > 0).then(|| computed as f64 / extract_s);
    if let Some(r) = extract_images_per_s {
        log::info!("layer-3 activations: {computed} views in {extract_s:.1} s ({r:.2} views/s)");
    }
    let paths: Vec<PathBuf> = items.iter().map(|i| i.path.clone()).collect();
    let skipped = extract::check_failures(&paths, &hashes, base.max_failed_pct)?;
    let mut data = finetune::Data::default();
    for (s, h) in used.iter().zip(&hashes) {
        let Ok(h) = h else { continue };
        if s.split == Some(Split::Train) {
            let keys = (0..=opt.finetune.views)
                .map(|v| activations::view_key(h, v, opt.finetune.seed))
                .collect();
            data.train.push((keys, s.label));
        } else {
            data.val
                .push((activations::view_key(h, 0, opt.finetune.seed), s.label));
        }
    }
    if data.train.is_empty() {
        return Err(TrainError::EmptySplit("train"));
    }
    if data.val.is_empty() {
        return Err(TrainError::EmptySplit("validation"));
    }

    let init = Layer4Weights::new(weights, s1.head.clone())?;
    let mut log_text = format!(
        "stage 1: val AUC {:.4} (best epoch {}, {})\n",
        s1.validation.auc,
        s1.best_epoch,
        s1_opt.out.display()
    );
    let tt = Instant::now();
    let ft = finetune::train(
        &init,
        &mut cache,
        &data,
        &opt.finetune,
        finetune::Resume {
            run: &base.out,
            resume: opt.resume,
            identity: &ident,
        },
        |e, secs| {
            log::info!(
                "stage 2 epoch {} of {}: {secs:.0} s, val AUC {:.4}",
                e.epoch,
                opt.finetune.epochs,
                e.val_auc
            );
        },
    )?;
    let head_s = tt.elapsed().as_secs_f64();
    for (e, secs) in ft.history.iter().zip(&ft.epoch_s) {
        let _ = writeln!(
            log_text,
            "stage 2 epoch {:>3} train_loss {:.4} val_auc {:.4} val_nll {:.4} ({secs:.0} s)",
            e.epoch, e.train_loss, e.val_auc, e.val_nll
        );
    }
    if let Some(n) = ft.resumed_from {
        let _ = writeln!(log_text, "resumed after epoch {n}");
    }
    let exported = ft.weights.into_backbone(weights);
    let c = calibrate_and_export(
        base,
        &ft.weights.head,
        &ft.val,
        ft.best_epoch,
        &exported,
        &mut log_text,
    )?;
    let stage2 = RunSummary {
        counts,
        skipped,
        extract_s,
        extract_images_per_s,
        head_s,
        total_s: t0.elapsed().as_secs_f64(),
        best_epoch: ft.best_epoch,
        temperature: c.temperature,
        val_ece_before: c.ece_before,
        val_ece_after: c.ece_after,
        threshold: c.threshold,
        validation: c.validation,
        history: ft.history.clone(),
        head: ft.weights.head.clone(),
    };
    let info = FinetuneInfo {
        config: opt.finetune.clone(),
        augmentation: format!(
            "v{}: on the preprocessed input; gain {:?}, gamma {:?} (log-uniform), rotation \
             +-{} deg, scale +-{}%, multiplicative speckle sd <= {}, horizontal flip p 0.5; \
             each epoch draws one of the original + {} views per training image",
            augment::AUG_VERSION,
            augment::GAIN,
            augment::GAMMA,
            augment::MAX_ROTATION_DEG,
            augment::MAX_SCALE * 100.0,
            augment::MAX_SPECKLE,
            opt.finetune.views
        ),
        epochs_run: ft.history.len(),
        stage1_val_auc: s1.validation.auc,
    };
    let manifest = Manifest::new(base, &stage2, &c.onnx_sha, &backbone_sha, Stage::Two(info));
    let summary = Stage2Summary {
        stage1: s1,
        stage2,
        views_computed: computed,
        epoch_s: ft.epoch_s,
        resumed_from: ft.resumed_from,
        layer4: ft.weights,
    };
    let _ = writeln!(log_text, "total {:.1} s", t0.elapsed().as_secs_f64());
    write_run_files(base, &manifest, &summary, &log_text)?;
    Ok(summary)
}

/// Writes backbone + `head` (softmax) as ONNX with outputs `probs` and `features`; returns
/// the file's sha256.
pub fn export(
    weights: &resnet50::ResNet50,
    head: &LinearHead,
    out: &Path,
    backbone_name: &str,
) -> Result<String, TrainError> {
    let bytes = resnet50::export_onnx(
        weights,
        &resnet50::Head {
            output: "probs".into(),
            dense: head.to_dense(),
            softmax: true,
        },
        &format!(
            "renalscan screening model: {backbone_name} backbone (BatchNorm folded) + renal head \
             (6 classes: {}; temperature folded in). Input: usimage preprocessing v{PREPROCESS_VERSION}, \
             Caffe BGR. Not for diagnosis.",
            CLASSES.join(", ")
        ),
    )?;
    let tmp = out.with_extension("onnx.partial");
    write(&tmp, &bytes)?;
    fs::rename(&tmp, out).map_err(io(out))?;
    log::info!(
        "wrote {} ({:.1} MB)",
        out.display(),
        bytes.len() as f64 / 1e6
    );
    Ok(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)))
}

/// The manifest draft beside `model.onnx` (the bundle step signs it).
#[derive(Debug, Serialize)]
pub struct Manifest {
    /// Model identity.
    pub model: ModelInfo,
    /// Output classes in order.
    pub labels: Vec<String>,
    /// Input tensor and preprocessing.
    pub input: InputInfo,
    /// Output tensors.
    pub outputs: BTreeMap<String, String>,
    /// Screening decision.
    pub operating_point: OperatingPoint,
    /// Probability calibration.
    pub calibration: Calibration,
    /// Backbone provenance.
    pub backbone: BackboneInfo,
    /// Training data and settings.
    pub training: TrainingInfo,
    /// Validation figures at the operating point.
    pub validation: evaluate::Overall,
    /// Intended use.
    pub intended_use: IntendedUse,
}

/// `[model]`.
#[derive(Debug, Serialize)]
pub struct ModelInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Unix seconds.
    pub created_unix: u64,
    /// ONNX file name.
    pub file: String,
    /// Its sha256.
    pub sha256: String,
}

/// `[input]`.
#[derive(Debug, Serialize)]
pub struct InputInfo {
    /// Tensor name.
    pub name: String,
    /// `[N, 3, 224, 224]` (N dynamic).
    pub shape: Vec<usize>,
    /// usimage algorithm version the model was trained with.
    pub usimage_preprocess_version: u32,
    /// Grey frames become three equal channels.
    pub grey_to_three_channels: bool,
    /// Channel order, mean, std.
    pub normalization: Normalization,
}

/// `[operating_point]`.
#[derive(Debug, Serialize)]
pub struct OperatingPoint {
    /// How the score is computed.
    pub score: String,
    /// Abnormal when score >= threshold.
    pub threshold: f64,
    /// Validation sensitivity it was chosen for.
    pub target_sensitivity: f64,
}

/// `[calibration]`.
#[derive(Debug, Serialize)]
pub struct Calibration {
    /// "temperature".
    pub method: String,
    /// Fitted temperature.
    pub temperature: f32,
    /// True: `probs` already include it; do not apply again.
    pub folded_into_model: bool,
    /// Validation ECE before.
    pub val_ece_before: f64,
    /// After.
    pub val_ece_after: f64,
}

/// `[backbone]`.
#[derive(Debug, Serialize)]
pub struct BackboneInfo {
    /// Description.
    pub name: String,
    /// sha256 of the backbone ONNX features were extracted with.
    pub onnx_sha256: String,
}

/// `[training]`.
#[derive(Debug, Serialize)]
pub struct TrainingInfo {
    /// Stage description.
    pub stage: String,
    /// Seed.
    pub seed: u64,
    /// Epoch kept.
    pub best_epoch: usize,
    /// Images per split and class.
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
    /// Head settings.
    pub head: HeadConfig,
    /// How splits were made.
    pub split: String,
    /// Stage 2 settings (absent for stage 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneInfo>,
}

/// `[training.finetune]`: what stage 2 did on top of stage 1.
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneInfo {
    /// Hyper-parameters.
    pub config: FinetuneConfig,
    /// The augmentation and its version.
    pub augmentation: String,
    /// Epochs run (including any before a resume).
    pub epochs_run: usize,
    /// Validation AUC of the stage-1 model it started from.
    pub stage1_val_auc: f64,
}

/// Which stage produced a manifest.
#[derive(Debug, Clone)]
pub enum Stage {
    /// Frozen backbone, head only.
    One,
    /// layer4 + head fine-tuned.
    Two(FinetuneInfo),
}

/// `[intended_use]`.
#[derive(Debug, Serialize)]
pub struct IntendedUse {
    /// Purpose.
    pub purpose: String,
    /// The warning.
    pub warning: String,
}

impl Manifest {
    fn new(
        opt: &TrainOptions,
        s: &RunSummary,
        onnx_sha: &str,
        backbone_sha: &str,
        stage: Stage,
    ) -> Self {
        let (stage, finetune) = match stage {
            Stage::One => (
                "1: frozen backbone, head (dropout, linear) on cached pooled features".to_string(),
                None,
            ),
            Stage::Two(f) => (
                "2: layer4 (BatchNorm frozen, folded) + head fine-tuned on cached, augmented \
                 layer-3 activations, head initialised from stage 1"
                    .to_string(),
                Some(f),
            ),
        };
        let mut outputs = BTreeMap::new();
        outputs.insert(
            "probs".into(),
            "N x 6 class probabilities (softmax, calibrated)".into(),
        );
        outputs.insert(
            "features".into(),
            "N x 2048 x 7 x 7 last feature map (class-activation maps)".into(),
        );
        Self {
            model: ModelInfo {
                name: "renalscan-resnet50".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                created_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                file: "model.onnx".into(),
                sha256: onnx_sha.into(),
            },
            labels: CLASSES.iter().map(|s| s.to_string()).collect(),
            input: InputInfo {
                name: resnet50::onnx::INPUT.into(),
                shape: vec![1, 3, SIZE, SIZE],
                usimage_preprocess_version: PREPROCESS_VERSION,
                grey_to_three_channels: true,
                normalization: Normalization::caffe_bgr(),
            },
            outputs,
            operating_point: OperatingPoint {
                score: "p_abnormal = 1 - probs[normal]".into(),
                threshold: s.threshold,
                target_sensitivity: opt.target_sensitivity,
            },
            calibration: Calibration {
                method: "temperature".into(),
                temperature: s.temperature,
                folded_into_model: true,
                val_ece_before: s.val_ece_before,
                val_ece_after: s.val_ece_after,
            },
            backbone: BackboneInfo {
                name: opt.backbone_name.clone(),
                onnx_sha256: backbone_sha.into(),
            },
            training: TrainingInfo {
                stage,
                seed: opt.head.seed,
                best_epoch: s.best_epoch,
                counts: s.counts.clone(),
                head: opt.head.clone(),
                split: format!(
                    "by patient, stratified by class, val {} / test {} of patients",
                    opt.val_fraction, opt.test_fraction
                ),
                finetune,
            },
            validation: s.validation.clone(),
            intended_use: IntendedUse {
                purpose: "Research and integration testing of pediatric renal ultrasound \
                          screening (normal vs abnormal, likely abnormality type)."
                    .into(),
                warning: "Not for diagnosis.".into(),
            },
        }
    }
}

/// What `eval` needs from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestView {
    /// Operating threshold on p(abnormal).
    pub threshold: f64,
    /// usimage preprocessing version the model expects.
    pub preprocess_version: u32,
    /// Output labels.
    pub labels: Vec<String>,
}

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// File system.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: toml::de::Error,
    },
    /// A required key is missing.
    #[error("{path}: missing or invalid `{key}`")]
    Key {
        /// The file.
        path: String,
        /// The key.
        key: &'static str,
    },
}

/// Reads the fields `eval` relies on from a `manifest.toml`.
pub fn read_manifest(path: &Path) -> Result<ManifestView, ManifestError> {
    let p = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|source| ManifestError::Io {
        path: p.clone(),
        source,
    })?;
    let v: toml::Table = text.parse().map_err(|source| ManifestError::Parse {
        path: p.clone(),
        source,
    })?;
    let key = |key| ManifestError::Key {
        path: p.clone(),
        key,
    };
    let threshold = v
        .get("operating_point")
        .and_then(|o| o.get("threshold"))
        .and_then(|t| t.as_float())
        .ok_or_else(|| key("operating_point.threshold"))?;
    let preprocess_version = v
        .get("input")
        .and_then(|o| o.get("usimage_preprocess_version"))
        .and_then(|t| t.as_integer())
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| key("input.usimage_preprocess_version"))?;
    let labels = v
        .get("labels")
        .and_then(|l| l.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .ok_or_else(|| key("labels"))?;
    Ok(ManifestView {
        threshold,
        preprocess_version,
        labels,
    })
}
