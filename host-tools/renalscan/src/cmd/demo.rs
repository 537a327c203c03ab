//! `renalscan demo`: the whole chain, from a fresh machine to decisions on the cart.
//!
//! ImageNet weights -> phantom data set -> stage-1 training -> float evaluation -> int8
//! quantization -> int8 evaluation -> signing key -> signed bundle -> `renalscan-edge` on
//! phantom probe sweeps. Every step writes into `--work` and is skipped when its output is
//! already there, so a second run only replays the edge part. Each step runs the same code
//! as its own subcommand, parsed from the same flags a user would type.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use contract::events::{Decision, StatusReport};
use contract::Class;

use super::weights::CacheArgs;

/// Arguments of `demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Working directory: phantom data, training run, keys, bundle, journal (reused).
    #[arg(long, default_value = "models/demo")]
    pub work: PathBuf,
    /// Phantom images to synthesise for training, validation and test.
    #[arg(value_parser = argrange::usize_in(1, 10_000_000), long, default_value_t = 800)]
    pub n: usize,
    /// Frames of each phantom probe sweep screened by the edge runtime.
    #[arg(value_parser = argrange::u64_in(1, 10_000_000), long, default_value_t = 60)]
    pub frames: u64,
    /// Sweeps screened by the edge runtime, one each: a patient condition (a kidney with
    /// it), or a view without a kidney (liver, spleen, bladder, bowel, rib_lung, lifted,
    /// off_axis) that the bundle's view gate must refuse.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "normal,hydronephrosis,liver"
    )]
    pub sweeps: Vec<String>,
    /// The `renalscan-edge` binary [default: beside this executable].
    #[arg(long)]
    pub edge: Option<PathBuf>,
    /// Where the edge runtime serves the operator view during the sweeps (open the printed
    /// URL in a browser to watch).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub ui: std::net::SocketAddr,
    /// Run the sweeps without the operator view.
    #[arg(long)]
    pub no_ui: bool,
    /// Phantom frames per second of each sweep (real time, so the view can be watched; 0 =
    /// as fast as the pipeline takes them).
    #[arg(value_parser = argrange::f32_in(0.1, 240.0), long, default_value_t = 20.0)]
    pub sweep_fps: f32,
    /// Redo every step, even those whose outputs exist.
    #[arg(long)]
    pub fresh: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Parses `argv` as the flags of subcommand `A`, exactly as the command line would.
pub(crate) fn flags<A: clap::Args + clap::FromArgMatches>(
    name: &'static str,
    argv: &[OsString],
) -> Result<A> {
    let cmd = A::augment_args(clap::Command::new(name).no_binary_name(true));
    let matches = cmd
        .try_get_matches_from(argv)
        .with_context(|| format!("demo: building the {name} step"))?;
    A::from_arg_matches(&matches).with_context(|| format!("demo: building the {name} step"))
}

/// `OsString` argv from mixed strings and paths.
macro_rules! argv {
    ($($a:expr),* $(,)?) => { [$(OsString::from($a)),*] };
}

/// One step: skipped when `done` exists, else run and timed.
fn step(
    n: usize,
    title: &str,
    done: &Path,
    fresh: bool,
    f: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if done.exists() && !fresh {
        println!("[{n}/9] {title}: done before ({})", done.display());
        return Ok(());
    }
    println!("[{n}/9] {title} ...");
    let t = Instant::now();
    f().with_context(|| format!("demo step {n}: {title}"))?;
    println!("[{n}/9] {title}: {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Whether the run whose manifest is `m` was trained under another preprocessing version
/// than this build's (or its manifest cannot be read). The run's manifest is the trainer's
/// draft, without what only `renalscan bundle` adds, so it is read as one.
fn trained_for_another_preprocessing(m: &Path) -> bool {
    contract::Manifest::draft_from_file(m).map_or(true, |m| {
        m.input.usimage_preprocess_version != usimage::PREPROCESS_VERSION
    })
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let w = &args.work;
    fs::create_dir_all(w).with_context(|| format!("creating {}", w.display()))?;
    let data = w.join("phantom");
    let run = w.join("run");
    let split = run.join("split.csv");
    // quantize writes the int8 model with its draft manifest beside it: the folder is what
    // eval and bundle take next, as they would by hand.
    let int8_dir = run.join("int8");
    let int8 = int8_dir.join("model.onnx");
    let keys = w.join("keys");
    let bundle = w.join("bundle");
    let fresh = args.fresh;

    println!(
        "renalscan demo in {} (a screening aid, not a diagnosis)",
        w.display()
    );
    let t = Instant::now();
    let got = args.cache.ensure()?;
    println!(
        "[1/9] ImageNet ResNet-50 weights: {} ({:.1} s)",
        got.dir.display(),
        t.elapsed().as_secs_f64()
    );

    step(
        2,
        "synthesise phantom images",
        &data.join("manifest.csv"),
        fresh,
        || {
            let tmp = w.join("phantom.partial");
            if tmp.exists() {
                fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
            }
            let n = args.n.to_string();
            super::synth::run(flags(
                "synth",
                &argv!["--out", &tmp, "--n", n, "--seed", "7", "--mix", "paper"],
            )?)?;
            if data.exists() {
                fs::remove_dir_all(&data)
                    .with_context(|| format!("removing {}", data.display()))?;
            }
            fs::rename(&tmp, &data).with_context(|| format!("moving {} into place", data.display()))
        },
    )?;

    // A run trained under another preprocessing version (an older renalscan) makes a bundle
    // that carts refuse: it is trained again, and everything made from it.
    let run_manifest = run.join(bundle::MANIFEST_FILE);
    if run_manifest.exists() && trained_for_another_preprocessing(&run_manifest) {
        println!(
            "[3/9] the run in {} was trained for another preprocessing version (this build: \
             {}): training again",
            run.display(),
            usimage::PREPROCESS_VERSION
        );
        for dir in [&run, &bundle] {
            if dir.exists() {
                fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
            }
        }
    }
    step(
        3,
        "train stage 1 (frozen backbone, new head)",
        &run.join("model.onnx"),
        fresh,
        || {
            let mut a = argv!["--data", &data, "--out", &run, "--seed", "1"].to_vec();
            if run.exists() {
                a.push("--resume".into());
            }
            super::train::run(flags("train", &a)?)
        },
    )?;

    let float_report = run.join("report-float");
    step(
        4,
        "evaluate the float model (test split)",
        &float_report.join("metrics.json"),
        fresh,
        || {
            super::eval::run(flags(
                "eval",
                &argv!["--model", &run, "--data", &split, "--out", &float_report],
            )?)
        },
    )?;

    let quant_report = run.join("quantize");
    step(
        5,
        "quantize to int8 (calibrated on training images)",
        &int8,
        fresh,
        || {
            super::quantize::run(flags(
                "quantize",
                &argv![
                    "--model",
                    run.join("model.onnx"),
                    "--calib",
                    &split,
                    "--out",
                    &int8,
                    "--calib-n",
                    "64",
                    "--val-n",
                    "48",
                    "--sqnr-n",
                    "8",
                    "--check-integer",
                    "0",
                    "--test",
                    &split,
                    "--report",
                    &quant_report,
                ],
            )?)
        },
    )?;

    let int8_report = run.join("report-int8");
    step(
        6,
        "evaluate the int8 model (test split)",
        &int8_report.join("metrics.json"),
        fresh,
        || {
            super::eval::run(flags(
                "eval",
                &argv![
                    "--model",
                    &int8_dir,
                    "--data",
                    &split,
                    "--out",
                    &int8_report
                ],
            )?)
        },
    )?;

    let secret = keys.join("demo.key");
    let public = keys.join("demo.pub");
    step(
        7,
        "signing key (demo only: keep real keys off the build machine)",
        &secret,
        fresh,
        || {
            if keys.exists() {
                fs::remove_dir_all(&keys)
                    .with_context(|| format!("removing {}", keys.display()))?;
            }
            super::bundle::keygen(flags("keygen", &argv!["--out", &keys, "--name", "demo"])?)
        },
    )?;

    // A bundle from an older renalscan that carts would now refuse (no `[release]`) is made
    // again rather than reused.
    let manifest = bundle.join(bundle::MANIFEST_FILE);
    if manifest.exists()
        && contract::Manifest::from_file(&manifest).map_or(true, |m| m.release_version().is_none())
    {
        println!(
            "[8/9] the bundle in {} predates release policy: making it again",
            bundle.display()
        );
        fs::remove_dir_all(&bundle).with_context(|| format!("removing {}", bundle.display()))?;
    }
    step(
        8,
        "signed int8 bundle with model card",
        &bundle.join("manifest.sig"),
        fresh,
        || {
            if bundle.exists() {
                fs::remove_dir_all(&bundle)
                    .with_context(|| format!("removing {}", bundle.display()))?;
            }
            super::bundle::make(flags(
                "bundle",
                &argv![
                    "--model",
                    &int8,
                    "--manifest",
                    int8_dir.join("manifest.toml"),
                    "--key",
                    &secret,
                    "--out",
                    &bundle,
                    "--metrics-float",
                    float_report.join("metrics.json"),
                    "--metrics-int8",
                    int8_report.join("metrics.json"),
                    "--quant-report",
                    quant_report.join("quantize.json"),
                    "--data-source",
                    "synthetic",
                    "--data-description",
                    "renalscan phantom: synthetic pediatric renal B-mode images, paper class mix",
                ],
            )?)
        },
    )?;
    super::bundle::verify(flags("verify", &argv![&bundle, "--trusted-keys", &public])?)?;

    let edge = match &args.edge {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("renalscan-edge"),
    };
    if !edge.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p renalscan-edge` or pass --edge",
            edge.display()
        );
    }
    let journal = w.join("journal");
    if !args.no_ui {
        println!(
            "[9/9] operator view during the sweeps: http://{}/ (open it in a browser; it \
             reconnects between sweeps)",
            args.ui
        );
    }
    let mut summaries = Vec::new();
    for (i, sweep) in args.sweeps.iter().enumerate() {
        let view = phantom::Anatomy::parse(sweep).filter(|a| !a.is_kidney());
        let (what, flag) = match view {
            Some(a) => (format!("over the {a} (no kidney in view)"), "--view"),
            None => (format!("of a {sweep} kidney"), "--class"),
        };
        println!(
            "[9/9] renalscan-edge: phantom probe sweep {what}, {} frames",
            args.frames
        );
        let t = Instant::now();
        // The runtime's JSON lines (decisions, status) go to a file; the terminal gets a
        // summary of them, and the runtime's warnings.
        let events = w.join(format!("edge-{sweep}.jsonl"));
        let events_file =
            fs::File::create(&events).with_context(|| format!("creating {}", events.display()))?;
        let mut cmd = Command::new(&edge);
        cmd.stdout(events_file);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        if !args.no_ui {
            cmd.arg("run").arg("--ui").arg(args.ui.to_string());
        } else {
            cmd.arg("run");
        }
        let status = cmd
            .arg("--bundle")
            .arg(&bundle)
            .arg("--trusted-keys")
            .arg(&public)
            .args([
                "--phantom",
                "--fps",
                &args.sweep_fps.to_string(),
                flag,
                sweep,
            ])
            .arg("--seed")
            .arg((11 + i).to_string())
            .arg("--max-frames")
            .arg(args.frames.to_string())
            .arg("--journal")
            .arg(&journal)
            .status()
            .with_context(|| format!("starting {}", edge.display()))?;
        if !status.success() {
            bail!(
                "renalscan-edge failed on the {sweep} sweep ({status}); its output is in {}",
                events.display()
            );
        }
        let summary = SweepSummary::read(&events)?;
        println!(
            "[9/9] {sweep} sweep: {} ({:.1} s)",
            summary.line(),
            t.elapsed().as_secs_f64()
        );
        summaries.push((sweep.clone(), view.is_some(), summary, events));
    }
    println!();
    println!("demo finished in {:.1} s", start.elapsed().as_secs_f64());
    println!("  {:<16} {:<9} {:<46} frames", "sweep", "expected", "call");
    for (sweep, no_kidney, s, _) in &summaries {
        let expected = if *no_kidney {
            "refused"
        } else if sweep == "normal" {
            "normal"
        } else {
            "abnormal"
        };
        println!(
            "  {sweep:<16} {expected:<9} {:<46} {}",
            s.call(),
            s.frames()
        );
    }
    println!("  bundle    {}", bundle.display());
    println!("  journal   {}", journal.display());
    println!(
        "  reports   {} (float), {} (int8)",
        float_report.join("report.html").display(),
        int8_report.join("report.html").display()
    );
    println!(
        "  events    {} (the runtime's JSON lines, one file per sweep)",
        w.join("edge-*.jsonl").display()
    );
    Ok(())
}

/// What one sweep's JSON lines say, for the terminal.
#[derive(Debug, Default)]
struct SweepSummary {
    /// Decisions emitted, in order (the exam's call comes from them).
    all: Vec<Decision>,
    /// Frame of the first decision.
    first_frame: Option<u64>,
    /// Frames the pipeline took, model runs, and refusals by the gate's reason.
    processed: u64,
    inferred: u64,
    gated: std::collections::BTreeMap<String, u64>,
}

impl SweepSummary {
    fn read(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut s = Self::default();
        for (n, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a JSON line", path.display(), n + 1))?;
            match v.get("event").and_then(|e| e.as_str()) {
                Some("decision") => {
                    let d: Decision = serde_json::from_value(v).with_context(|| {
                        format!("{} line {}: not a decision", path.display(), n + 1)
                    })?;
                    s.first_frame.get_or_insert(d.frame_index);
                    s.all.push(d);
                }
                Some("final") => {
                    let r: StatusReport = serde_json::from_value(v).with_context(|| {
                        format!("{} line {}: not a status report", path.display(), n + 1)
                    })?;
                    s.processed = r.frames.processed;
                    s.inferred = r.frames.inferred;
                    s.gated = r.frames.gated;
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// The exam's call (as the session record gives it), in words.
    fn call(&self) -> String {
        match contract::events::exam_call(&self.all) {
            None => "no decision (every frame refused)".to_string(),
            Some(d) if d.abnormal => format!(
                "ABNORMAL, {} (p(abnormal) {:.2})",
                Class::from_label(&d.class)
                    .map_or_else(|| d.class.clone(), |c| c.display_name().to_string()),
                d.p_abnormal
            ),
            Some(d) => format!("normal (p(abnormal) {:.2})", d.p_abnormal),
        }
    }

    /// Frames taken, refused by the gate (by reason) and seen by the model.
    fn frames(&self) -> String {
        let gated: u64 = self.gated.values().sum();
        let reasons: Vec<String> = self
            .gated
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let reasons = if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        };
        format!(
            "{} frames, {gated} gated{reasons}, model run on {}",
            self.processed, self.inferred
        )
    }

    fn line(&self) -> String {
        let first = match self.first_frame {
            Some(f) => format!("; {} decisions, the first at frame {f}", self.all.len()),
            None => String::new(),
        };
        format!("{}{first}; {}", self.call(), self.frames())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_trained_again_only_for_another_preprocessing_version() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("manifest.toml");
        // The trainer's draft: a bundle's manifest without what only `renalscan bundle` adds.
        let sample = testkit::manifests::sample(&"0".repeat(64));
        let mut draft: toml::Table = toml::from_str(&sample).expect("sample");
        let training = draft.get_mut("training").and_then(|t| t.as_table_mut());
        training.expect("training").remove("data");
        let write = |table: &toml::Table| {
            fs::write(&path, toml::to_string(table).expect("toml")).expect("write");
        };
        write(&draft);
        assert!(contract::Manifest::from_file(&path).is_err(), "not a draft");
        assert!(!trained_for_another_preprocessing(&path));
        let input = draft.get_mut("input").and_then(|i| i.as_table_mut());
        let older = i64::from(usimage::PREPROCESS_VERSION) - 1;
        input
            .expect("input")
            .insert("usimage_preprocess_version".into(), older.into());
        write(&draft);
        assert!(trained_for_another_preprocessing(&path));
        fs::write(&path, "not toml [").expect("write");
        assert!(trained_for_another_preprocessing(&path));
    }
}
