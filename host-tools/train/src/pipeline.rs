//! `renalscan train`, stage 1, end to end: data -> patient split -> cached features -> head
//! -> temperature and threshold on validation -> `model.onnx` + `manifest.toml`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use contract::manifest::{self, Manifest};
use contract::Taxonomy;
use evaluate::{evaluate, threshold_for_sensitivity, Prediction};
use progress::Progress;
use serde::Serialize;
use usimage::{FrameRef, Normalization, PREPROCESS_VERSION};

use crate::activations::{self, ActivationCache, Item};
use crate::augment;
use crate::dataset::{self, Split};
use crate::extract::{self, FeatureCache, SIZE};
use crate::finetune::{self, FinetuneConfig, Layer4Weights};
use crate::gate;
use crate::head::{self, Features, HeadConfig, LinearHead};
use crate::negatives;

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
    /// Settings that cannot work with this data.
    #[error("{0}")]
    Config(String),
    /// Serialising the manifest.
    #[error("manifest: {0}")]
    Toml(#[from] toml::ser::Error),
    /// The manifest type refused what was built.
    #[error(transparent)]
    Manifest(#[from] contract::ManifestError),
    /// Stage 2.
    #[error(transparent)]
    Finetune(#[from] finetune::FinetuneError),
    /// The view gate.
    #[error(transparent)]
    Gate(#[from] gate::GateError),
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
    /// Fit the view gate (is it a kidney at all?) and ship it in the model. Data without
    /// `no_kidney` images gets phantom non-kidney views as negatives.
    pub view_gate: bool,
    /// Which map the head reads ([`extract::TAP`] by default); the backbone file given to
    /// [`train_stage1`] must end there.
    pub tap: resnet50::Tap,
    /// How the head pools the feature map ([`extract::POOLING`] by default).
    pub pooling: resnet50::Pooling,
    /// Augmented views of each training kidney image (stage 2's augmentation, seeded by the
    /// run's seed) whose features the head also learns from; validation and test images are
    /// never augmented.
    pub head_views: u32,
    /// The head's kind: `None` for the linear head on pooled features, `Some(H)` for a
    /// classifier of hidden width `H` on every cell of the layer-3 map ([`crate::cells`];
    /// [`train_stage1_cells`] trains it).
    pub cell_head: Option<usize>,
    /// The cell head's hidden layer also reads the image's channel means
    /// ([`crate::cells`], `--cell-context`); ignored without `cell_head`.
    pub cell_context: bool,
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
    pub head: TrainedHead,
    /// The view gate as the manifest records it (absent with `view_gate` off).
    pub view_gate: Option<manifest::ViewGate>,
}

/// The head a run trained, before temperature scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainedHead {
    /// Linear on pooled features.
    Linear(LinearHead),
    /// A classifier on every cell of the map (temperature 1).
    Cells(resnet50::CellClassifier),
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

/// Fits the view gate on pooled features and logs how it does on validation; returns the
/// gate to export and its manifest table.
fn fit_gate(
    train: &gate::Labelled,
    val: &gate::Labelled,
    channels: usize,
    samples: &[&dataset::Sample],
    log_text: &mut String,
) -> Result<(resnet50::GateHead, manifest::ViewGate), TrainError> {
    let t = Instant::now();
    let g = gate::ViewGate::fit(train, val, channels)?;
    let m = &g.metrics;
    let line = format!(
        "view gate ({:.1} s): p(kidney) < {:.4} or OOD score > {:.3}; validation: {:.1}% of \
         {} kidneys pass, {:.1}% of {} non-kidney views gated (learned {:.1}%, OOD {:.1}%)",
        t.elapsed().as_secs_f64(),
        g.kidney_threshold,
        g.ood_threshold,
        100.0 * m.kidney_pass,
        m.n_kidney,
        100.0 * m.other_gated,
        m.n_other,
        100.0 * m.other_gated_learned,
        100.0 * m.other_gated_ood,
    );
    log::info!("{line}");
    let _ = writeln!(log_text, "{line}");
    Ok((g.export(), g.manifest(&negatives::describe(samples))))
}

/// Stage 2's view gate: the fine-tuned network's pooled features of the train and
/// validation images (kidneys and non-kidney views), computed with tract from the exported
/// model, then [`fit_gate`].
fn stage2_gate(
    opt: &TrainOptions,
    samples: &[&dataset::Sample],
    log_text: &mut String,
) -> Result<(resnet50::GateHead, manifest::ViewGate), TrainError> {
    let onnx = opt.out.join("model.onnx");
    let bytes = fs::read(&onnx).map_err(io(&onnx))?;
    let paths: Vec<FrameRef> = samples.iter().map(|s| s.frame_ref()).collect();
    let job = extract::Job {
        model: &bytes,
        origin: &onnx,
        outputs: &[resnet50::onnx::FEATURES],
        pool: Some(resnet50::Pooling::Avg),
        threads: opt.threads,
        label: "view gate features",
    };
    let feats = extract::run(&paths, &job, &|_| None, &mut |_, _| Ok(()))?;
    let (mut tr, mut va) = (gate::Labelled::default(), gate::Labelled::default());
    for (s, f) in samples.iter().zip(&feats) {
        let Ok(f) = f else { continue };
        let dst = if s.split == Some(Split::Train) {
            &mut tr
        } else {
            &mut va
        };
        dst.push(f, s.is_kidney());
    }
    fit_gate(&tr, &va, opt.tap.channels(), samples, log_text)
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
    let across = dataset::patients_across_splits(&samples);
    if !across.is_empty() {
        let list: Vec<String> = across
            .iter()
            .take(5)
            .map(|(p, s)| {
                let s: Vec<&str> = s.iter().map(|s| s.name()).collect();
                format!("{p} ({})", s.join(", "))
            })
            .collect();
        log::warn!(
            "{}: {} patients have images in more than one split (from its split column), e.g. \
             {}: validation and test figures on them are optimistic",
            opt.data.display(),
            across.len(),
            list.join("; ")
        );
    }
    if opt.view_gate {
        let others = samples.iter().filter(|s| !s.is_kidney()).count();
        if others < negatives::MIN_OTHERS {
            let kidneys = samples.len() - others;
            let n = negatives::count_for(kidneys);
            log::warn!(
                "{}: {others} images labelled no_kidney; the view gate learns from {n} phantom \
                 non-kidney views instead (label some of your own frames no_kidney to \
                 replace them)",
                opt.data.display()
            );
            samples.extend(negatives::phantom(&opt.cache_dir, n, opt.head.seed)?);
        }
    }
    dataset::write_split_csv(&samples, &opt.out.join("split.csv"))?;
    let mut counts = BTreeMap::new();
    for (split, c) in dataset::summary(&samples) {
        let m: BTreeMap<String, usize> = dataset::DATA_LABELS
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

/// Temperature and operating point on validation: the same for every head and stage.
struct Calibration {
    temperature: f32,
    ece_before: f64,
    ece_after: f64,
    threshold: f64,
    validation: evaluate::Overall,
}

/// A calibration and the exported model's sha256.
struct Calibrated {
    calibration: Calibration,
    onnx_sha: String,
}

/// The temperature, its ECE before and after, the threshold and the validation metrics at
/// it, from uncalibrated validation logits `z` (labels `y`): whatever head produced them.
fn calibrate_logits(
    opt: &TrainOptions,
    z: &[[f32; head::K]],
    y: &[usize],
    best_epoch: usize,
    log_text: &mut String,
) -> Result<Calibration, TrainError> {
    let t = head::fit_temperature_of(z, y);
    let ece_before = head::ece_of(z, y, 1.0);
    let ece_after = head::ece_of(z, y, t);
    let val_preds: Vec<Prediction> = z
        .iter()
        .zip(y)
        .map(|(z, &label)| Prediction {
            label,
            probs: head::softmax_t(z, t),
        })
        .collect();
    let taxonomy = Taxonomy::standard();
    let pos: Vec<f64> = val_preds
        .iter()
        .filter(|p| p.label != taxonomy.normal_index())
        .map(|p| p.p_abnormal(&taxonomy))
        .collect();
    let threshold = threshold_for_sensitivity(&pos, opt.target_sensitivity);
    let val_eval = evaluate(&taxonomy, &val_preds, threshold)?;
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
    Ok(Calibration {
        temperature: t,
        ece_before,
        ece_after,
        threshold,
        validation: val_eval.overall,
    })
}

/// Fits the temperature of `head` (uncalibrated, on pooled features) on `va`, picks the
/// threshold, writes `head.json` and `model.onnx` (`weights` with the calibrated head).
fn calibrate_and_export(
    opt: &TrainOptions,
    head: &LinearHead,
    va: &Features,
    best_epoch: usize,
    weights: &resnet50::ResNet50,
    gate: Option<&resnet50::GateHead>,
    log_text: &mut String,
) -> Result<Calibrated, TrainError> {
    let z = head::row_logits(head, va);
    let calibration = calibrate_logits(opt, &z, &va.y, best_epoch, log_text)?;
    let t = calibration.temperature;
    write(
        &opt.out.join("head.json"),
        serde_json::to_string(&serde_json::json!({
            "head_uncalibrated": head,
            "temperature": t,
            "threshold": calibration.threshold,
        }))?
        .as_bytes(),
    )?;
    let onnx_sha = export(
        weights,
        opt.tap,
        &head.scaled(t),
        gate,
        &opt.out.join("model.onnx"),
        &opt.backbone_name,
    )?;
    Ok(Calibrated {
        calibration,
        onnx_sha,
    })
}

/// Writes the draft `manifest.toml` of a run directory (atomically: a reader never sees half
/// a manifest).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), TrainError> {
    let path = dir.join("manifest.toml");
    let tmp = path.with_extension("toml.partial");
    write(&tmp, manifest.to_toml()?.as_bytes())?;
    fs::rename(&tmp, &path).map_err(io(&path))
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
        manifest.to_toml()?.as_bytes(),
    )?;
    write(
        &opt.out.join("metrics.json"),
        serde_json::to_string_pretty(metrics)?.as_bytes(),
    )?;
    write(&opt.out.join("train.log"), log_text.as_bytes())
}

/// Appends to `train` the features of `opt.head_views` augmented views of every training
/// kidney image of `used` whose original was read (`feats`); returns how many were computed
/// rather than read from the cache.
fn add_views(
    opt: &TrainOptions,
    used: &[&dataset::Sample],
    feats: &[Result<Vec<f32>, String>],
    backbone_onnx: &Path,
    cache: &mut FeatureCache,
    train: &mut Features,
) -> Result<usize, TrainError> {
    if opt.head_views == 0 {
        return Ok(0);
    }
    let (mut paths, mut views, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for (s, f) in used.iter().zip(feats) {
        if f.is_err() || !s.is_kidney() || s.split != Some(Split::Train) {
            continue;
        }
        for v in 1..=opt.head_views {
            paths.push(s.frame_ref());
            views.push(v);
            labels.push(s.label);
        }
    }
    let (vf, computed) = extract::features_of_views(
        &paths,
        &views,
        opt.head.seed,
        backbone_onnx,
        cache,
        opt.threads,
    )?;
    for ((f, label), p) in vf.iter().zip(labels).zip(&paths) {
        match f {
            Ok(f) => {
                train.x.extend_from_slice(f);
                train.y.push(label);
            }
            // Its original was read a moment ago: only a changed file gets here.
            Err(e) => log::warn!("augmented view of {p} skipped: {e}"),
        }
    }
    Ok(computed)
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
    let paths: Vec<FrameRef> = used.iter().map(|s| s.frame_ref()).collect();
    let backbone_sha = extract::file_sha256(backbone_onnx)?;
    let channels = opt.tap.channels();
    let mut cache = FeatureCache::open(&opt.cache_dir, &backbone_sha, opt.pooling, channels)?;
    let te = Instant::now();
    let (feats, computed) = extract::features(&paths, backbone_onnx, &mut cache, opt.threads)?;
    let skipped = extract::check_failures(&paths, &feats, opt.max_failed_pct)?;
    let width = opt.pooling.width(channels);
    let (mut tr, mut va) = (Features::with_dim(width), Features::with_dim(width));
    let (mut gate_tr, mut gate_va) = (gate::Labelled::default(), gate::Labelled::default());
    for (s, f) in used.iter().zip(&feats) {
        let Ok(f) = f else { continue };
        let train = s.split == Some(Split::Train);
        // The gate reads the channel means, the first `channels` values of either pooling.
        let avg = f.get(..channels).unwrap_or(f);
        if train { &mut gate_tr } else { &mut gate_va }.push(avg, s.is_kidney());
        if !s.is_kidney() {
            continue;
        }
        let dst = if train { &mut tr } else { &mut va };
        dst.x.extend_from_slice(f);
        dst.y.push(s.label);
    }
    let originals = tr.len();
    let computed = computed + add_views(opt, &used, &feats, backbone_onnx, &mut cache, &mut tr)?;
    let mut start = start_stage1(
        opt,
        Extracted {
            counts,
            skipped,
            seconds: te.elapsed().as_secs_f64(),
            computed,
        },
        (originals, tr.len(), va.len()),
        (&gate_tr, &gate_va, &used),
    )?;
    let (trained, head_s) = train_epochs(opt, "head", &mut start.log_text, |on_epoch| {
        head::train_head(&tr, &va, &opt.head, on_epoch)
    })?;
    let c = calibrate_and_export(
        opt,
        &trained.head,
        &va,
        trained.best_epoch,
        weights,
        start.view_gate.as_ref().map(|(g, _)| g),
        &mut start.log_text,
    )?;
    finish_stage1(
        opt,
        start,
        Finished {
            t0,
            head_s,
            best_epoch: trained.best_epoch,
            history: trained.history,
            calibrated: c,
            head: TrainedHead::Linear(trained.head),
        },
        &backbone_sha,
    )
}

/// What extraction did, for the run summary.
struct Extracted {
    counts: Counts,
    skipped: usize,
    seconds: f64,
    /// Images (or views) computed rather than read from a cache.
    computed: usize,
}

/// Both stage-1 heads once their inputs are read: extraction figures, the run log so far
/// and the view gate.
struct Stage1Start {
    extracted: Extracted,
    log_text: String,
    view_gate: Option<(resnet50::GateHead, manifest::ViewGate)>,
}

/// Refuses an empty split, logs the extraction and the training set's views, and fits the
/// view gate on the labelled channel means `(train, validation, samples)`; `(originals,
/// rows, val_rows)` counts the head's training rows without and with augmented views, and
/// its validation rows.
fn start_stage1(
    opt: &TrainOptions,
    extracted: Extracted,
    (originals, rows, val_rows): (usize, usize, usize),
    (gate_tr, gate_va, used): (&gate::Labelled, &gate::Labelled, &[&dataset::Sample]),
) -> Result<Stage1Start, TrainError> {
    if originals == 0 {
        return Err(TrainError::EmptySplit("train"));
    }
    if val_rows == 0 {
        return Err(TrainError::EmptySplit("validation"));
    }
    if extracted.computed > 0 {
        log::info!(
            "extraction: {} images or views in {:.1} s ({:.2}/s)",
            extracted.computed,
            extracted.seconds,
            extracted.computed as f64 / extracted.seconds
        );
    }
    let mut log_text = String::new();
    if opt.head_views > 0 {
        let _ = writeln!(
            log_text,
            "head training set: {originals} images + {} augmented views",
            rows - originals
        );
    }
    let view_gate = if opt.view_gate {
        Some(fit_gate(
            gate_tr,
            gate_va,
            opt.tap.channels(),
            used,
            &mut log_text,
        )?)
    } else {
        None
    };
    Ok(Stage1Start {
        extracted,
        log_text,
        view_gate,
    })
}

/// Runs `train` with a progress bar over epochs and one run-log line per epoch; returns its
/// result and the seconds it took.
fn train_epochs<T>(
    opt: &TrainOptions,
    label: &str,
    log_text: &mut String,
    train: impl FnOnce(&mut dyn FnMut(&head::Epoch)) -> Result<T, head::HeadError>,
) -> Result<(T, f64), TrainError> {
    let th = Instant::now();
    let bar = Progress::counted(label, opt.head.max_epochs as u64, "epochs");
    let trained = train(&mut |e: &head::Epoch| {
        bar.inc(1);
        bar.set_label(format!("{label}, val AUC {:.4}", e.val_auc));
        let _ = writeln!(
            log_text,
            "epoch {:>3} train_loss {:.4} val_auc {:.4} val_nll {:.4}",
            e.epoch, e.train_loss, e.val_auc, e.val_nll
        );
    })?;
    bar.finish();
    Ok((trained, th.elapsed().as_secs_f64()))
}

/// What the head's training and calibration gave.
struct Finished {
    t0: Instant,
    head_s: f64,
    best_epoch: usize,
    history: Vec<head::Epoch>,
    calibrated: Calibrated,
    head: TrainedHead,
}

/// The run summary, the manifest draft and the run files of a finished stage 1.
fn finish_stage1(
    opt: &TrainOptions,
    start: Stage1Start,
    f: Finished,
    backbone_sha: &str,
) -> Result<RunSummary, TrainError> {
    let Stage1Start {
        extracted: e,
        mut log_text,
        view_gate,
    } = start;
    let Calibrated {
        calibration: c,
        onnx_sha,
    } = f.calibrated;
    let summary = RunSummary {
        counts: e.counts,
        skipped: e.skipped,
        extract_s: e.seconds,
        extract_images_per_s: (e.computed > 0).then(|| e.computed as f64 / e.seconds),
        head_s: f.head_s,
        total_s: f.t0.elapsed().as_secs_f64(),
        best_epoch: f.best_epoch,
        temperature: c.temperature,
        val_ece_before: c.ece_before,
        val_ece_after: c.ece_after,
        threshold: c.threshold,
        validation: c.validation,
        history: f.history,
        head: f.head,
        view_gate: view_gate.map(|(_, m)| m),
    };
    let manifest = draft_manifest(opt, &summary, &onnx_sha, backbone_sha, Stage::One)?;
    let _ = writeln!(log_text, "total {:.1} s", summary.total_s);
    write_run_files(opt, &manifest, &summary, &log_text)?;
    Ok(summary)
}

/// Stage 1 with the cell head ([`crate::cells`], `opt.cell_head` its hidden width): layer-3
/// maps of the train and validation images are extracted once into the activation cache
/// (from `layer3_onnx`, the trunk file that ends at layer3, whose hash keys the cache), the
/// view gate is fitted on their channel means as in [`train_stage1`], and the head on the
/// kidneys' maps.
pub fn train_stage1_cells(
    opt: &TrainOptions,
    weights: &resnet50::ResNet50,
    layer3_onnx: &Path,
) -> Result<RunSummary, TrainError> {
    let t0 = Instant::now();
    let Some(hidden) = opt.cell_head else {
        return Err(TrainError::Config(
            "the cell head's pipeline needs its hidden width (cell_head)".into(),
        ));
    };
    if opt.tap != resnet50::Tap::Layer3 {
        return Err(TrainError::Config(format!(
            "the cell head reads layer3's map (the activation cache holds it); this run reads \
             {}: drop --features-from layer4",
            opt.tap.name()
        )));
    }
    let (samples, counts) = prepare(opt, opt)?;
    let used: Vec<&dataset::Sample> = samples
        .iter()
        .filter(|s| matches!(s.split, Some(Split::Train | Split::Val)))
        .collect();
    // Kidneys give maps (the head's input; their channel means feed the view gate); the
    // gate's non-kidney views only need means, from the pooled-feature cache, not 392 KiB
    // maps each.
    let (kidneys, others): (Vec<&dataset::Sample>, Vec<&dataset::Sample>) =
        used.iter().copied().partition(|s| s.is_kidney());
    let views = |s: &dataset::Sample| {
        if s.split == Some(Split::Train) {
            opt.head_views
        } else {
            0
        }
    };
    let items: Vec<Item> = kidneys
        .iter()
        .map(|s| Item {
            frame: s.frame_ref(),
            views: views(s),
        })
        .collect();
    let trunk_sha = extract::file_sha256(layer3_onnx)?;
    let channels = activations::CHANNELS;
    let te = Instant::now();
    let other_paths: Vec<FrameRef> = others.iter().map(|s| s.frame_ref()).collect();
    let mut features =
        FeatureCache::open(&opt.cache_dir, &trunk_sha, resnet50::Pooling::Avg, channels)?;
    let (other_feats, mut computed) =
        extract::features(&other_paths, layer3_onnx, &mut features, opt.threads)?;
    let mut cache = ActivationCache::open(&opt.cache_dir, &trunk_sha)?;
    let (hashes, maps_computed) = activations::extract(
        &items,
        (layer3_onnx, resnet50::onnx::FEATURES),
        &mut cache,
        opt.head.seed,
        opt.threads,
    )?;
    computed += maps_computed;
    let mut paths: Vec<FrameRef> = items.iter().map(|i| i.frame.clone()).collect();
    paths.extend(other_paths);
    let outcome: Vec<Result<(), String>> = hashes
        .iter()
        .map(|h| h.as_ref().map(|_| ()).map_err(Clone::clone))
        .chain(
            other_feats
                .iter()
                .map(|f| f.as_ref().map(|_| ()).map_err(Clone::clone)),
        )
        .collect();
    let skipped = extract::check_failures(&paths, &outcome, opt.max_failed_pct)?;
    let cells = activations::SIDE * activations::SIDE;
    let (mut tr, mut va) = (
        crate::cells::Maps::new(channels, cells),
        crate::cells::Maps::new(channels, cells),
    );
    let (mut gate_tr, mut gate_va) = (gate::Labelled::default(), gate::Labelled::default());
    for (s, f) in others.iter().zip(&other_feats) {
        let Ok(f) = f else { continue };
        let train = s.split == Some(Split::Train);
        if train { &mut gate_tr } else { &mut gate_va }.push(f, false);
    }
    let mut map = vec![0u16; activations::LEN];
    let (mut map_f32, mut means) = (vec![0f32; activations::LEN], Vec::with_capacity(channels));
    let mut originals = 0;
    for (s, h) in kidneys.iter().zip(&hashes) {
        let Ok(h) = h else { continue };
        let train = s.split == Some(Split::Train);
        for v in 0..=views(s) {
            cache.read_f16_extracted(&activations::view_key(h, v, opt.head.seed), &mut map)?;
            if v == 0 {
                // The gate reads channel means as the feature cache pools them.
                for (f, &b) in map_f32.iter_mut().zip(&map) {
                    *f = half::f16::from_bits(b).to_f32();
                }
                means.clear();
                extract::pool_into(&mut means, &map_f32, channels, resnet50::Pooling::Avg);
                if train { &mut gate_tr } else { &mut gate_va }.push(&means, true);
                originals += usize::from(train);
            }
            let dst = if train { &mut tr } else { &mut va };
            dst.x.extend_from_slice(&map);
            dst.y.push(s.label);
        }
    }
    let mut start = start_stage1(
        opt,
        Extracted {
            counts,
            skipped,
            seconds: te.elapsed().as_secs_f64(),
            computed,
        },
        (originals, tr.len(), va.len()),
        (&gate_tr, &gate_va, &used),
    )?;
    let (trained, head_s) = train_epochs(opt, "cell head", &mut start.log_text, |on_epoch| {
        crate::cells::train(&tr, &va, hidden, opt.cell_context, &opt.head, on_epoch)
    })?;
    drop(tr);

    let z = crate::cells::predict_logits(&trained.head, &va)?;
    let calibration = calibrate_logits(opt, &z, &va.y, trained.best_epoch, &mut start.log_text)?;
    let calibrated = resnet50::CellClassifier {
        temperature: calibration.temperature,
        ..trained.head.clone()
    };
    write(
        &opt.out.join("head.json"),
        serde_json::to_string(&serde_json::json!({
            "cell_head": {
                "hidden": [calibrated.hidden.inputs, calibrated.hidden.outputs],
                "out": [calibrated.out.inputs, calibrated.out.outputs],
                "context": calibrated.context.as_ref().map(|c| [c.inputs, c.outputs]),
                "weights_in": "model.onnx (head.cells.*)",
            },
            "temperature": calibration.temperature,
            "threshold": calibration.threshold,
        }))?
        .as_bytes(),
    )?;
    let onnx_sha = export_classifier(
        weights,
        opt.tap,
        resnet50::Classifier::Cells(calibrated),
        start.view_gate.as_ref().map(|(g, _)| g),
        &opt.out.join("model.onnx"),
        &opt.backbone_name,
    )?;
    finish_stage1(
        opt,
        start,
        Finished {
            t0,
            head_s,
            best_epoch: trained.best_epoch,
            history: trained.history,
            calibrated: Calibrated {
                calibration,
                onnx_sha,
            },
            head: TrainedHead::Cells(trained.head),
        },
        &trunk_sha,
    )
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
    /// Validation AUC of the starting point (stage 1's head on the ImageNet layer4, from the
    /// f16 activation cache): an epoch is kept only if it beats this.
    pub start_val_auc: Option<f64>,
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
    if base.tap != resnet50::Tap::Layer4 {
        return Err(TrainError::Config(format!(
            "stage 2 fine-tunes layer4 on top of its stage 1, so stage 1 must read layer4 too \
             (this run's head reads {}): train it with --features-from layer4",
            base.tap.name()
        )));
    }
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

    // Layer4 trains on kidneys only; the view gate is refitted on the fine-tuned features.
    let gate_samples: Vec<&dataset::Sample> = samples
        .iter()
        .filter(|s| matches!(s.split, Some(Split::Train | Split::Val)))
        .collect();
    let used: Vec<&dataset::Sample> = gate_samples
        .iter()
        .copied()
        .filter(|s| s.is_kidney())
        .collect();
    let items: Vec<Item> = used
        .iter()
        .map(|s| Item {
            frame: s.frame_ref(),
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
    let (hashes, computed) = activations::extract(
        &items,
        (&layer3, activations::OUTPUT),
        &mut cache,
        opt.finetune.seed,
        base.threads,
    )?;
    let extract_s = te.elapsed().as_secs_f64();
    let extract_images_per_s = (computed > 0).then(|| computed as f64 / extract_s);
    if let Some(r) = extract_images_per_s {
        log::info!("layer-3 activations: {computed} views in {extract_s:.1} s ({r:.2} views/s)");
    }
    let paths: Vec<FrameRef> = items.iter().map(|i| i.frame.clone()).collect();
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

    let TrainedHead::Linear(s1_head) = &s1.head else {
        return Err(TrainError::Config(
            "stage 2 fine-tunes layer4 under a linear head; a cell head reads layer3".into(),
        ));
    };
    let init = Layer4Weights::new(weights, s1_head.clone())?;
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
    if let Some((auc, nll)) = ft.start {
        let _ = writeln!(
            log_text,
            "stage 2 epoch   0 (stage-1 head, frozen layer4) val_auc {auc:.4} val_nll {nll:.4}"
        );
    }
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
    if ft.best_epoch == 0 {
        log::warn!(
            "no stage-2 epoch beat its starting point on validation: the model keeps stage 1's \
             head and the ImageNet layer4"
        );
        let _ = writeln!(
            log_text,
            "no epoch beat epoch 0: exported stage 1's head on the ImageNet layer4"
        );
    }
    let exported = ft.weights.into_backbone(weights);
    let mut c = calibrate_and_export(
        base,
        &ft.weights.head,
        &ft.val,
        ft.best_epoch,
        &exported,
        None,
        &mut log_text,
    )?;
    let view_gate = if base.view_gate {
        let (head, table) = stage2_gate(base, &gate_samples, &mut log_text)?;
        c.onnx_sha = export(
            &exported,
            base.tap,
            &ft.weights.head.scaled(c.calibration.temperature),
            Some(&head),
            &base.out.join("model.onnx"),
            &base.backbone_name,
        )?;
        Some(table)
    } else {
        None
    };
    let stage2 = RunSummary {
        counts,
        skipped,
        extract_s,
        extract_images_per_s,
        head_s,
        total_s: t0.elapsed().as_secs_f64(),
        best_epoch: ft.best_epoch,
        temperature: c.calibration.temperature,
        val_ece_before: c.calibration.ece_before,
        val_ece_after: c.calibration.ece_after,
        threshold: c.calibration.threshold,
        validation: c.calibration.validation,
        history: ft.history.clone(),
        head: TrainedHead::Linear(ft.weights.head.clone()),
        view_gate,
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
    let manifest = draft_manifest(base, &stage2, &c.onnx_sha, &backbone_sha, Stage::Two(info))?;
    let summary = Stage2Summary {
        stage1: s1,
        stage2,
        views_computed: computed,
        epoch_s: ft.epoch_s,
        resumed_from: ft.resumed_from,
        start_val_auc: ft.start.map(|(auc, _)| auc),
        layer4: ft.weights,
    };
    let _ = writeln!(log_text, "total {:.1} s", t0.elapsed().as_secs_f64());
    write_run_files(base, &manifest, &summary, &log_text)?;
    Ok(summary)
}

/// Writes backbone + `head` (softmax) as ONNX with outputs `probs` and `features` (and the
/// view gate's `kidney` and `ood`); returns the file's sha256.
pub fn export(
    weights: &resnet50::ResNet50,
    tap: resnet50::Tap,
    head: &LinearHead,
    gate: Option<&resnet50::GateHead>,
    out: &Path,
    backbone_name: &str,
) -> Result<String, TrainError> {
    let pooling = resnet50::Pooling::for_width(head.dim, tap.channels())
        .ok_or(resnet50::OnnxError::HeadWidth(head.dim, tap.channels()))?;
    let classifier = resnet50::Classifier::Pooled {
        pooling,
        dense: head.to_dense(),
    };
    export_classifier(weights, tap, classifier, gate, out, backbone_name)
}

/// Writes the screening model with any classifier (see [`export`]); returns its sha256.
pub fn export_classifier(
    weights: &resnet50::ResNet50,
    tap: resnet50::Tap,
    classifier: resnet50::Classifier,
    gate: Option<&resnet50::GateHead>,
    out: &Path,
    backbone_name: &str,
) -> Result<String, TrainError> {
    let what = match &classifier {
        resnet50::Classifier::Pooled { .. } => "renal head (temperature folded in)".to_string(),
        resnet50::Classifier::Cells(c) => format!(
            "renal head on every cell ({} -> {} -> {}, log-mean-exp pooling, temperature {})",
            c.hidden.inputs, c.hidden.outputs, c.out.outputs, c.temperature
        ),
    };
    let bytes = resnet50::export_onnx(
        weights,
        &resnet50::Head {
            output: "probs".into(),
            tap,
            classifier,
            softmax: true,
            gate: gate.cloned(),
        },
        SIZE,
        &format!(
            "renalscan screening model: {backbone_name} backbone up to {} (BatchNorm folded) + \
             {what} (6 classes: {}). Input: usimage preprocessing v{PREPROCESS_VERSION}, \
             Caffe BGR. Not for diagnosis.",
            tap.name(),
            contract::LABELS.join(", ")
        ),
    )?;
    extract::write_onnx(out, &bytes)?;
    Ok(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)))
}

/// What stage 2 did on top of stage 1, for `[training.finetune]`.
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

/// A serialisable value as a TOML table (hyper-parameters recorded in the manifest). Floats
/// that are exactly an f32 are written as that f32's shortest decimal (0.01, not
/// 0.009999999776482582): the settings are f32, the TOML writer widens them.
fn as_table(v: &impl Serialize) -> Result<toml::Table, TrainError> {
    fn tidy(v: &mut toml::Value) {
        match v {
            toml::Value::Float(x) if f64::from(*x as f32) == *x => {
                *x = f32_as_f64(*x as f32);
            }
            toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| tidy(v)),
            toml::Value::Array(a) => a.iter_mut().for_each(tidy),
            _ => {}
        }
    }
    let mut t = toml::Table::try_from(v)?;
    t.iter_mut().for_each(|(_, v)| tidy(v));
    Ok(t)
}

fn taxonomy_len() -> usize {
    Taxonomy::standard().len()
}

/// The temperature as the shortest decimal of its f32 value (the manifest shows 2.2299, not
/// 2.2299001216888428).
fn f32_as_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// The manifest draft beside `model.onnx`: the type the bundle step completes and signs and
/// the device reads (`contract::Manifest`). Public so that tests build the exact draft a
/// training run writes.
pub fn draft_manifest(
    opt: &TrainOptions,
    s: &RunSummary,
    onnx_sha: &str,
    backbone_sha: &str,
    stage: Stage,
) -> Result<Manifest, TrainError> {
    let (stage, finetune) = match stage {
        Stage::One => (
            match opt.cell_head {
                None => format!(
                    "1: frozen backbone up to {}, head (dropout, linear) on cached pooled \
                     features (pooling {}; {} augmented views per training image)",
                    opt.tap.name(),
                    opt.pooling.name(),
                    opt.head_views
                ),
                Some(h) => format!(
                    "1: frozen backbone up to {}, head on every cell of its map ({} -> {h}{}, \
                     ReLU, dropout, -> {}; log-mean-exp over cells) on cached maps ({} \
                     augmented views per training image)",
                    opt.tap.name(),
                    opt.tap.channels(),
                    if opt.cell_context {
                        ", plus the map's channel means -> the same hidden layer"
                    } else {
                        ""
                    },
                    taxonomy_len(),
                    opt.head_views
                ),
            },
            None,
        ),
        Stage::Two(f) => (
            format!(
                "2: layer4 (BatchNorm frozen, folded) + head fine-tuned on cached, augmented \
                 layer-3 activations, head initialised from stage 1 (pooling {})",
                opt.pooling.name()
            ),
            Some(manifest::Finetune {
                config: as_table(&f.config)?,
                augmentation: f.augmentation,
                epochs_run: f.epochs_run,
                stage1_val_auc: f.stage1_val_auc,
            }),
        ),
    };
    let taxonomy = Taxonomy::standard();
    let mut outputs = BTreeMap::new();
    outputs.insert(
        "probs".into(),
        format!(
            "N x {} class probabilities (softmax, calibrated)",
            taxonomy.len()
        ),
    );
    outputs.insert(
        "features".into(),
        format!(
            "N x {} x {s} x {s} {} feature map (class-activation maps)",
            opt.tap.channels(),
            opt.tap.name(),
            s = opt.tap.side(SIZE)
        ),
    );
    let n = Normalization::caffe_bgr();
    Ok(Manifest {
        model: manifest::ModelInfo {
            name: "renalscan-resnet50".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            created_unix: Some(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
            file: "model.onnx".into(),
            sha256: onnx_sha.into(),
            precision: manifest::Precision::Float32,
            quantization: None,
        },
        labels: taxonomy.labels().to_vec(),
        input: manifest::InputInfo {
            name: resnet50::onnx::INPUT.into(),
            shape: vec![1, 3, SIZE, SIZE],
            usimage_preprocess_version: PREPROCESS_VERSION,
            grey_to_three_channels: true,
            normalization: manifest::Normalization {
                order: match n.order {
                    usimage::ChannelOrder::Bgr => manifest::ChannelOrder::Bgr,
                    usimage::ChannelOrder::Rgb => manifest::ChannelOrder::Rgb,
                },
                mean: n.mean.map(f32_as_f64),
                std: n.std.map(f32_as_f64),
            },
        },
        outputs,
        operating_point: manifest::OperatingPoint {
            score: Some("p_abnormal = 1 - probs[normal]".into()),
            threshold: s.threshold,
            target_sensitivity: opt.target_sensitivity,
            // A signer opens a site range at bundle time (`renalscan bundle`), not the trainer.
            site_range: None,
        },
        calibration: manifest::Calibration {
            method: Some("temperature".into()),
            temperature: f32_as_f64(s.temperature),
            folded_into_model: Some(true),
            val_ece_before: Some(s.val_ece_before),
            val_ece_after: Some(s.val_ece_after),
        },
        backbone: Some(manifest::Backbone {
            name: opt.backbone_name.clone(),
            onnx_sha256: backbone_sha.into(),
        }),
        view_gate: s.view_gate.clone(),
        site_calibration: None,
        training: manifest::Training {
            stage: Some(stage),
            seed: Some(opt.head.seed),
            best_epoch: Some(s.best_epoch),
            split: Some(format!(
                "by patient, stratified by class, val {} / test {} of patients",
                opt.val_fraction, opt.test_fraction
            )),
            counts: s.counts.clone(),
            head: Some(as_table(&opt.head)?),
            finetune,
            data: None,
        },
        validation: (&s.validation).into(),
        evaluation: BTreeMap::new(),
        intended_use: manifest::IntendedUse {
            purpose: "Research and integration testing of pediatric renal ultrasound \
                      screening (normal vs abnormal, likely abnormality type)."
                .into(),
            warning: manifest::WARNING.into(),
        },
        card: None,
        selftest: Vec::new(),
        release: None,
        form_agreement: Vec::new(),
    })
}
