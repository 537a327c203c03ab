//! `renalscan eval`: the study's figures for an exported model, run in tract (what ships).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use evaluate::{Prediction, CLASSES};
use train::extract::{self, Job};
use train::Split;

/// Arguments of `eval`.
#[derive(clap::Args)]
pub struct Args {
    /// `model.onnx` (with `manifest.toml` beside it) or a run/bundle directory holding both.
    #[arg(long)]
    pub model: PathBuf,
    /// Test data: folder or CSV manifest. With a `split` column only `test` rows are used.
    #[arg(long)]
    pub data: PathBuf,
    /// Report directory (report.md, report.html, metrics.json, PNGs).
    #[arg(long)]
    pub out: PathBuf,
    /// Override the manifest's operating threshold on p(abnormal).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Inference threads (one tract model each).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Percentage of unreadable images tolerated (skipped) before failing.
    #[arg(long, default_value_t = 5.0)]
    pub max_failed_pct: f64,
    /// Verify `--model` as a signed bundle first (signature, signer, hashes), trusting this
    /// public key file or directory of `*.pub` files.
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let onnx = if let Some(pubkey) = &args.pubkey {
        let keys = model::bundle::TrustedKeys::from_path(pubkey)?;
        let bundle = model::bundle::Bundle::open(&args.model, &keys)
            .with_context(|| format!("verifying bundle {}", args.model.display()))?;
        log::info!(
            "bundle {} verified, signed by {}",
            args.model.display(),
            bundle.signer().key_id()
        );
        bundle.model_path()
    } else if args.model.is_dir() {
        args.model.join("model.onnx")
    } else {
        args.model.clone()
    };
    if !onnx.is_file() {
        bail!(
            "{} not found (expected model.onnx or a directory holding it)",
            onnx.display()
        );
    }
    let manifest_path = onnx.with_file_name("manifest.toml");
    let manifest = train::pipeline::read_manifest(&manifest_path)
        .with_context(|| format!("reading the manifest beside {}", onnx.display()))?;
    if manifest.preprocess_version != usimage::PREPROCESS_VERSION {
        bail!(
            "model expects usimage preprocessing v{}, this build implements v{}",
            manifest.preprocess_version,
            usimage::PREPROCESS_VERSION
        );
    }
    if manifest.labels != CLASSES {
        bail!(
            "model labels {:?} differ from {:?}",
            manifest.labels,
            CLASSES
        );
    }
    let threshold = args.threshold.unwrap_or(manifest.threshold);
    let mut samples = train::load(&args.data)?;
    if samples.iter().any(|s| s.split.is_some()) {
        samples.retain(|s| s.split == Some(Split::Test));
        log::info!(
            "{}: split column present, {} test images",
            args.data.display(),
            samples.len()
        );
    }
    if samples.is_empty() {
        bail!("no test images in {}", args.data.display());
    }
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let job = Job {
        model: &onnx,
        output: "probs",
        pool: false,
        threads: args.threads,
        label: "eval",
    };
    let t = std::time::Instant::now();
    let results = extract::run(&paths, &job, &|_| None, &mut |_, _| Ok(()))?;
    let secs = t.elapsed().as_secs_f64();
    let skipped = extract::check_failures(&paths, &results, args.max_failed_pct)?;
    let preds: Vec<Prediction> = samples
        .iter()
        .zip(results)
        .filter_map(|(s, r)| {
            r.ok().map(|probs| Prediction {
                label: s.label,
                probs,
            })
        })
        .collect();
    let e = evaluate::evaluate(&preds, threshold)?;
    let context = format!(
        "Model `{}`, data `{}`: {} images scored ({} skipped) in {:.1} s with tract; threshold {:.4} \
         on p(abnormal) = 1 - p(normal) ({}).",
        onnx.display(),
        args.data.display(),
        preds.len(),
        skipped,
        secs,
        threshold,
        if args.threshold.is_some() { "given on the command line" } else { "from the manifest" }
    );
    evaluate::write_report(&args.out, &e, &context)?;
    let o = &e.overall;
    println!(
        "test: {} images ({} normal, {} abnormal)\nAUC {:.4} (95% CI {:.4}-{:.4})\n\
         accuracy {:.1}%  sensitivity {:.1}%  specificity {:.1}%  at threshold {:.4}\n\
         6-class accuracy {:.1}%  ECE {:.4}",
        o.n,
        o.n_normal,
        o.n_abnormal,
        o.auc,
        o.auc_ci[0],
        o.auc_ci[1],
        100.0 * o.accuracy,
        100.0 * o.sensitivity,
        100.0 * o.specificity,
        o.threshold,
        100.0 * o.accuracy_6class,
        o.ece
    );
    println!(
        "{:<18} {:>4} {:>9} {:>7}  95% CI",
        "type vs normal", "n", "accuracy", "AUC"
    );
    for (name, t) in &e.per_type {
        println!(
            "{name:<18} {:>4} {:>8.1}% {:>7.4}  {:.4}-{:.4}",
            t.n,
            100.0 * t.accuracy,
            t.auc,
            t.auc_ci[0],
            t.auc_ci[1]
        );
    }
    println!("report: {}", args.out.join("report.html").display());
    Ok(())
}
