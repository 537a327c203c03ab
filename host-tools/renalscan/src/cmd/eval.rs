//! `renalscan eval`: the study's figures for an exported model, run in tract (what ships).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use contract::manifest::Manifest;
use contract::Class;
use evaluate::Prediction;
use train::extract::{self, Job};
use train::Split;

/// Arguments of `eval`.
#[derive(clap::Args)]
pub struct Args {
    /// `model.onnx` (with `manifest.toml` beside it) or a run/bundle directory holding both.
    #[arg(long)]
    pub model: PathBuf,
    /// Test data: folder or CSV manifest. With a `split` column only `test` rows are used.
    #[arg(long, required_unless_present = "sweeps")]
    pub data: Option<PathBuf>,
    /// Exam level instead: recorded sweeps (`renalscan synth --stream --sweeps-per-class`,
    /// or a folder with `sweeps.csv` of `path,label[,severity]` naming frame folders or cine
    /// DICOMs), each replayed through renalscan-edge's pipeline (gates, model, view gate,
    /// aggregation) with the signed bundle `--model` (needs `--trusted-keys`).
    #[arg(long, requires = "trusted_keys", conflicts_with = "data")]
    pub sweeps: Option<PathBuf>,
    /// With --sweeps: the cart's renalscan-edge config (pipeline, gate and aggregation
    /// settings); the device defaults otherwise.
    #[arg(long, requires = "sweeps")]
    pub edge_config: Option<PathBuf>,
    /// Report directory (report.md, report.html, metrics.json, PNGs).
    #[arg(long)]
    pub out: PathBuf,
    /// Override the manifest's operating threshold on p(abnormal).
    #[arg(value_parser = argrange::f64_in(0.0, 1.0), long)]
    pub threshold: Option<f64>,
    /// Inference threads (one tract model each) [default: the cores this process may use].
    #[arg(value_parser = argrange::usize_in(1, 256), long, default_value_t = super::cores(), hide_default_value = true)]
    pub threads: usize,
    /// Percentage of unreadable images tolerated (skipped) before failing.
    #[arg(value_parser = argrange::f64_in(0.0, 100.0), long, default_value_t = 5.0)]
    pub max_failed_pct: f64,
    /// The manifest describing `--model` (labels, threshold, view gate) when it is not
    /// beside it [default: `manifest.toml` in the model's folder].
    #[arg(long, conflicts_with = "trusted_keys")]
    pub manifest: Option<PathBuf>,
    /// Verify `--model` as a signed bundle first (signature, signer, hashes), trusting this
    /// public key file or directory of `*.pub` files.
    #[arg(long = "trusted-keys", alias = "pubkey", value_name = "KEY|DIR")]
    pub trusted_keys: Option<PathBuf>,
}

/// The model to score: bytes read (or verified) once, and its manifest.
struct Scored {
    origin: PathBuf,
    bytes: Vec<u8>,
    manifest: Manifest,
}

/// A signed bundle, verified; or `model.onnx` with the manifest (draft) beside it.
fn open_model(args: &Args) -> Result<Scored> {
    if let Some(pubkey) = &args.trusted_keys {
        let keys = bundle::TrustedKeys::from_path(pubkey)?;
        let mut b = bundle::Bundle::open(&args.model, &keys)
            .with_context(|| format!("verifying bundle {}", args.model.display()))?;
        log::info!(
            "bundle {} verified, signed by {}",
            args.model.display(),
            b.signer().key_id()
        );
        return Ok(Scored {
            origin: b.model_origin(),
            bytes: b.take_model_bytes(),
            manifest: b.manifest().clone(),
        });
    }
    let onnx = if args.model.is_dir() {
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
    let manifest_path = args
        .manifest
        .clone()
        .unwrap_or_else(|| onnx.with_file_name("manifest.toml"));
    if !manifest_path.is_file() {
        bail!(
            "no manifest for {}: {} does not exist; pass --manifest <the training run's \
             manifest.toml> (renalscan train writes it beside model.onnx, renalscan quantize \
             copies it beside its output)",
            onnx.display(),
            manifest_path.display()
        );
    }
    let manifest = Manifest::draft_from_file(&manifest_path)
        .with_context(|| format!("reading the manifest of {}", onnx.display()))?;
    let bytes = std::fs::read(&onnx).with_context(|| format!("reading {}", onnx.display()))?;
    Ok(Scored {
        origin: onnx,
        bytes,
        manifest,
    })
}

pub fn run(args: Args) -> Result<()> {
    if let Some(sweeps) = &args.sweeps {
        return super::exams::run(&args, sweeps);
    }
    let data = args
        .data
        .clone()
        .context("--data (or --sweeps) is required")?;
    let Scored {
        origin: onnx,
        bytes,
        manifest,
    } = open_model(&args)?;
    let found = manifest.input.usimage_preprocess_version;
    if found != usimage::PREPROCESS_VERSION {
        bail!(
            "model expects usimage preprocessing v{found}, this build implements v{}",
            usimage::PREPROCESS_VERSION
        );
    }
    let taxonomy = manifest
        .taxonomy()
        .with_context(|| format!("the labels of {}", onnx.display()))?;
    let threshold = args.threshold.unwrap_or(manifest.operating_point.threshold);
    let mut samples = train::load(&data)?;
    if samples.iter().any(|s| s.split.is_some()) {
        samples.retain(|s| s.split == Some(Split::Test));
        log::info!(
            "{}: split column present, {} test images",
            data.display(),
            samples.len()
        );
    }
    if samples.is_empty() {
        bail!("no test images in {}", data.display());
    }
    let paths: Vec<usimage::FrameRef> = samples.iter().map(|s| s.frame_ref()).collect();
    // With a view gate, its two outputs come after the probabilities.
    let gate = manifest.view_gate.clone();
    let names: Vec<&str> = match &gate {
        Some(g) => vec!["probs", &g.kidney_output, &g.ood_output],
        None => vec!["probs"],
    };
    let job = Job {
        model: &bytes,
        origin: &onnx,
        outputs: &names,
        pool: None,
        threads: args.threads,
        label: "eval",
    };
    let t = std::time::Instant::now();
    let results = extract::run(&paths, &job, &|_| None, &mut |_, _| Ok(()))?;
    let secs = t.elapsed().as_secs_f64();
    let skipped = extract::check_failures(&paths, &results, args.max_failed_pct)?;
    let k = taxonomy.len();
    // Dataset labels are classes (or no_kidney); the model's outputs follow its taxonomy.
    let mut unknown = 0usize;
    let mut preds = Vec::new();
    // The kidney views the gate lets through: what a clinician would be shown.
    let mut passed = Vec::new();
    // [kidney, other] x [n, gated, learned, ood]
    let mut gate_counts = [[0usize; 4]; 2];
    // One row per scored image, for finding which images a model gets wrong; every class's
    // probability too, so a site can refit its calibration from the file alone.
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (s, r) in samples.iter().zip(results) {
        let Ok(mut out) = r else { continue };
        // A site-calibrated bundle: the device rescales the model's probabilities; so do we.
        if let Some(site) = &manifest.site_calibration {
            let n = k.min(out.len());
            site.apply(&mut out[..n]);
        }
        let (probs, rest) = out.split_at(k.min(out.len()));
        let mut refused = false;
        if let (Some(g), [p_kidney, ood, ..]) = (&gate, rest) {
            let learned = f64::from(*p_kidney) < g.kidney_threshold;
            let odd = f64::from(*ood) > g.ood_threshold;
            refused = learned || odd;
            let c = &mut gate_counts[usize::from(!s.is_kidney())];
            c[0] += 1;
            c[1] += usize::from(refused);
            c[2] += usize::from(learned);
            c[3] += usize::from(odd);
        }
        let p_abnormal = taxonomy.p_abnormal_f64(probs);
        let (p_kidney, verdict) = match &gate {
            None => (String::new(), ""),
            Some(_) => (
                rest.first().map_or(String::new(), |v| format!("{v:.6}")),
                if refused { "gated" } else { "passed" },
            ),
        };
        let mut row = vec![
            s.path.display().to_string(),
            s.frame.to_string(),
            train::dataset::DATA_LABELS[s.label].to_string(),
            s.patient.clone(),
            format!("{p_abnormal:.6}"),
            if p_abnormal >= threshold {
                "abnormal"
            } else {
                "normal"
            }
            .to_string(),
            taxonomy
                .labels()
                .get(evaluate::metrics::argmax(probs))
                .cloned()
                .unwrap_or_default(),
            p_kidney,
            verdict.to_string(),
        ];
        row.extend(probs.iter().map(|p| format!("{p:.6}")));
        rows.push(row);
        if !s.is_kidney() {
            continue;
        }
        match Class::from_index(s.label).and_then(|c| taxonomy.index_of(c)) {
            Some(label) => {
                let p = Prediction {
                    label,
                    probs: probs.to_vec(),
                };
                if !refused {
                    passed.push(p.clone());
                }
                preds.push(p);
            }
            None => unknown += 1,
        }
    }
    if unknown > 0 {
        bail!(
            "{unknown} images are of classes the model does not output (its labels: {})",
            taxonomy.labels().join(", ")
        );
    }
    let mut e = evaluate::evaluate(&taxonomy, &preds, threshold)?;
    if gate.is_some() {
        let rate = |a: usize, b: usize| {
            if b == 0 {
                f64::NAN
            } else {
                a as f64 / b as f64
            }
        };
        let [kid, other] = gate_counts;
        e.view_gate = Some(contract::manifest::ViewGateMetrics {
            n_kidney: kid[0],
            n_other: other[0],
            kidney_pass: rate(kid[0] - kid[1], kid[0]),
            other_gated: rate(other[1], other[0]),
            other_gated_learned: rate(other[2], other[0]),
            other_gated_ood: rate(other[3], other[0]),
        });
    }
    let context = format!(
        "Model `{}`, data `{}`: {} images scored ({} skipped) in {:.1} s with tract; threshold {:.4} \
         on p(abnormal) = 1 - p(normal) ({}).",
        onnx.display(),
        data.display(),
        preds.len(),
        skipped,
        secs,
        threshold,
        if args.threshold.is_some() { "given on the command line" } else { "from the manifest" }
    );
    evaluate::write_report(&args.out, &e, &context)?;
    let predictions = args.out.join("predictions.csv");
    let class_columns: Vec<String> = taxonomy.labels().iter().map(|l| format!("p_{l}")).collect();
    let mut header = vec![
        "path",
        "frame",
        "label",
        "patient_id",
        "p_abnormal",
        "call",
        "top_class",
        "p_kidney",
        "view_gate",
    ];
    header.extend(class_columns.iter().map(String::as_str));
    train::dataset::write_csv(&predictions, &header, &rows)?;
    log::info!(
        "{}: one row per image (the call at threshold {threshold:.4})",
        predictions.display()
    );
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
    if let Some(g) = &e.view_gate {
        // A rate over no views is NaN: say what is missing instead of printing it.
        let rate = |x: f64, n: usize, what: &str| {
            if n == 0 || x.is_nan() {
                format!("no {what} in this set")
            } else {
                format!("{:.1}% of {n} {what}", 100.0 * x)
            }
        };
        let others = if g.n_other == 0 {
            rate(g.other_gated, g.n_other, "non-kidney views")
        } else {
            format!(
                "{} gated (learned {:.1}%, OOD {:.1}%)",
                rate(g.other_gated, g.n_other, "non-kidney views"),
                100.0 * g.other_gated_learned,
                100.0 * g.other_gated_ood
            )
        };
        println!(
            "view gate: {} pass, {others}",
            rate(g.kidney_pass, g.n_kidney, "kidney views")
        );
        // Screening quality on what the gate lets through, beside the figure on every kidney
        // view above: refusing kidneys must not buy its AUC by dropping the hard ones silently.
        if passed.len() < preds.len() {
            match evaluate::evaluate(&taxonomy, &passed, threshold) {
                Ok(p) => println!(
                    "kidney views the gate passes: {} of {}, AUC {:.4}, sensitivity {:.1}%, \
                     specificity {:.1}%",
                    passed.len(),
                    preds.len(),
                    p.overall.auc,
                    100.0 * p.overall.sensitivity,
                    100.0 * p.overall.specificity
                ),
                Err(e) => println!("kidney views the gate passes: {} ({e})", passed.len()),
            }
        }
    }
    println!("report: {}", args.out.join("report.html").display());
    Ok(())
}
