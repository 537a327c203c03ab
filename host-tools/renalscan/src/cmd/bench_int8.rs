//! `renalscan bench-int8`: the int8 budgets of issue 6 measured in one run on one machine.
//!
//! File size, load + optimise of each form, tract fp32 against the form the loader picks
//! (medians), the integer form's latency beside them, onnxruntime fp32 and int8 on the same
//! network and inputs as the yardstick, and how far each form's outputs are from fp32.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use model::int8::{Built, Form, FormReport, LoadOptions};
use model::{output, Network};
use usimage::{Normalization, Preprocessor, UsFile};

const SIDE: usize = 224;
const SHAPE: [usize; 4] = [1, 3, SIDE, SIDE];

const SETUP: &str = "\
onnxruntime yardstick: the command runs scripts/ort_bench.py in a Python venv when one exists
(--venv, $RENALSCAN_VENV, default ~/.cache/renalscan/venv). Set it up once (PyPI must be
reachable):
    python3 -m venv ~/.cache/renalscan/venv
    ~/.cache/renalscan/venv/bin/pip install onnxruntime onnx numpy
Without it the onnxruntime rows are skipped with this hint. See docs/tract-int8-x86.md.";

/// Arguments of `bench-int8`.
#[derive(clap::Args)]
#[command(after_long_help = SETUP)]
pub struct Args {
    /// The float model (`renalscan train` output).
    #[arg(long)]
    pub float: PathBuf,
    /// The int8 QOperator model (`renalscan quantize` output).
    #[arg(long)]
    pub int8: PathBuf,
    /// Timed runs of tract fp32 and of the form the loader picks (after two warm-ups).
    #[arg(value_parser = argrange::usize_in(1, 100_000), long, default_value_t = 20)]
    pub runs: usize,
    /// Timed runs of the integer form, one image each, no warm-up (about 8 s each on x86
    /// AVX2 with tract 0.23.9).
    #[arg(value_parser = argrange::usize_in(0, 100_000), long, default_value_t = 3)]
    pub integer_runs: usize,
    /// Input images or directories (searched recursively), preprocessed with usimage; default:
    /// synthetic inputs.
    #[arg(long, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// How many images to use, spread evenly over those found.
    #[arg(value_parser = argrange::usize_in(1, 100_000), long, default_value_t = 8)]
    pub max_images: usize,
    /// A signed bundle to open as the device does (verify signature and hashes, then load its
    /// model in the Auto form): the start-up budget, <= 2 s.
    #[arg(long, requires = "trusted")]
    pub bundle: Option<PathBuf>,
    /// Trusted public key file or directory, for --bundle.
    #[arg(long)]
    pub trusted: Option<PathBuf>,
    /// Python venv with onnxruntime.
    #[arg(long, env = "RENALSCAN_VENV")]
    pub venv: Option<PathBuf>,
    /// Also write the preprocessed inputs here (raw little-endian f32, N x 3 x 224 x 224), the
    /// format scripts/ort_bench.py reads, to rerun or recalibrate without this command.
    #[arg(long)]
    pub save_inputs: Option<PathBuf>,
    /// Intra-op threads of every tract network and onnxruntime session timed here (the
    /// device's own use of several cores is measured by `renalscan-edge bench --threads`).
    #[arg(value_parser = argrange::usize_in(1, 256), long, default_value_t = 1)]
    pub threads: usize,
    /// Write all figures as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Stats {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        Self {
            median,
            min: ms[0],
            max: ms[n - 1],
            n,
        }
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"median_ms": self.median, "min_ms": self.min, "max_ms": self.max, "runs": self.n})
    }
    fn line(&self) -> String {
        format!(
            "median {:8.1} ms  (min {:.1}, max {:.1}, n={})",
            self.median, self.min, self.max, self.n
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Loads `path` in `form`, returning the network and the wall time of read + rewrite +
/// optimise.
fn load(path: &Path, form: Form, threads: usize) -> Result<(Network, f64)> {
    let t = Instant::now();
    let opts = LoadOptions {
        form,
        threads,
        ..LoadOptions::default()
    };
    let net = Network::load_with(path, &SHAPE, &opts)
        .with_context(|| format!("loading {} ({form})", path.display()))?;
    Ok((net, ms(t.elapsed())))
}

fn find_images(roots: &[PathBuf], out: &mut Vec<PathBuf>) -> Result<()> {
    for root in roots {
        if root.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(root)
                .with_context(|| format!("reading {}", root.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            find_images(&entries, out)?;
        } else if root.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm"]
                .contains(&e.to_ascii_lowercase().as_str())
        }) {
            out.push(root.clone());
        }
    }
    Ok(())
}

/// Model inputs: the given images through usimage, or deterministic synthetic frames.
fn inputs(args: &Args) -> Result<(Vec<Vec<f32>>, String)> {
    let n = SHAPE.iter().product::<usize>();
    if args.images.is_empty() {
        // Smooth speckle-like pattern in the Caffe-normalised range, 4 frames.
        let frames = (0..4u32)
            .map(|f| {
                let mut s = 0x9E37_79B9u32.wrapping_add(f);
                (0..n)
                    .map(|i| {
                        s ^= s << 13;
                        s ^= s >> 17;
                        s ^= s << 5;
                        let (y, x) = ((i / SIDE) % SIDE, i % SIDE);
                        let smooth =
                            ((x as f32 * 0.05 + f as f32).sin() + (y as f32 * 0.04).cos()) * 40.0;
                        smooth + (s % 64) as f32 - 32.0
                    })
                    .collect()
            })
            .collect();
        return Ok((frames, "4 synthetic frames".into()));
    }
    let mut found = Vec::new();
    find_images(&args.images, &mut found)?;
    if found.is_empty() {
        bail!(
            "no images (png, jpg, bmp, tiff, dcm) under {:?}",
            args.images
        );
    }
    let take = args.max_images.clamp(1, found.len());
    let step = found.len() as f64 / take as f64;
    let picked: Vec<&PathBuf> = (0..take)
        .map(|i| &found[(i as f64 * step) as usize])
        .collect();
    let mut pre = Preprocessor::new(SIDE as u32, Normalization::caffe_bgr());
    let mut frames = Vec::with_capacity(take);
    for p in &picked {
        let file = UsFile::open(p).with_context(|| format!("decoding {}", p.display()))?;
        let frame = file
            .frame(0)
            .with_context(|| format!("frame of {}", p.display()))?;
        let mut out = vec![0f32; n];
        pre.process(&frame, &mut out)
            .with_context(|| format!("preprocessing {}", p.display()))?;
        frames.push(out);
    }
    Ok((
        frames,
        format!("{take} of {} images under {:?}", found.len(), args.images),
    ))
}

fn time_runs(net: &Network, input: &[f32], runs: usize) -> Result<Stats> {
    for _ in 0..2 {
        net.run(input)?;
    }
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        net.run(input)?;
        t.push(ms(t0.elapsed()));
    }
    Ok(Stats::of(t))
}

/// Outputs of one image: probabilities and the feature map.
fn outputs(net: &Network, input: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
    let o = net.run(input)?;
    let get = |name: &str| -> Result<Vec<f32>> {
        Ok(output(&o, name)
            .with_context(|| format!("model has no `{name}` output"))?
            .data
            .clone())
    };
    Ok((get("probs")?, get("features")?))
}

/// Disagreement with fp32 over images: max |dp|, max |df| / max |f|, top-1 agreement count.
#[derive(Default)]
struct Agreement {
    max_dp: f32,
    max_df_rel: f32,
    top1_same: usize,
    n: usize,
}

impl Agreement {
    fn add(&mut self, reference: &(Vec<f32>, Vec<f32>), other: &(Vec<f32>, Vec<f32>)) {
        let diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        self.max_dp = self.max_dp.max(diff(&reference.0, &other.0));
        let fmax = reference
            .1
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-12);
        self.max_df_rel = self.max_df_rel.max(diff(&reference.1, &other.1) / fmax);
        let top = |p: &[f32]| model::top_k(p, 1).first().copied();
        self.top1_same += usize::from(top(&reference.0) == top(&other.0));
        self.n += 1;
    }
    fn line(&self) -> String {
        format!(
            "max |dp| {:.4}, max |df|/max|f| {:.4}, top-1 same {}/{}",
            self.max_dp, self.max_df_rel, self.top1_same, self.n
        )
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"max_dp": self.max_dp, "max_df_rel": self.max_df_rel,
            "top1_same": self.top1_same, "images": self.n})
    }
}

fn report_json(r: Option<&FormReport>) -> serde_json::Value {
    match r {
        None => serde_json::Value::Null,
        Some(r) => serde_json::json!({
            "built": r.built.to_string(),
            "reason": r.reason,
            "summary": r.to_string(),
        }),
    }
}

fn venv_python(args: &Args) -> Option<PathBuf> {
    let venv = args.venv.clone().or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/renalscan/venv"))
    })?;
    let py = venv.join("bin/python");
    py.is_file().then_some(py)
}

fn write_f32(path: &Path, frames: &[Vec<f32>]) -> Result<()> {
    let bytes: Vec<u8> = frames
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Runs scripts/ort_bench.py on the same inputs; `None` (with a hint) without a venv.
fn onnxruntime(args: &Args, frames: &[Vec<f32>]) -> Result<Option<serde_json::Value>> {
    let Some(python) = venv_python(args) else {
        println!("\nonnxruntime: skipped, no venv found.\n{SETUP}");
        return Ok(None);
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ort_bench.py");
    let work = tempfile::Builder::new()
        .prefix("renalscan-bench-int8-")
        .tempdir()
        .context("creating a scratch directory for onnxruntime's inputs")?;
    let inputs = work.path().join("inputs.f32");
    write_f32(&inputs, frames)?;
    let out = Command::new(&python)
        .arg(&script)
        .arg("--float")
        .arg(&args.float)
        .arg("--int8")
        .arg(&args.int8)
        .arg("--inputs")
        .arg(&inputs)
        .arg("--runs")
        .arg(args.runs.to_string())
        .arg("--threads")
        .arg(args.threads.to_string())
        .arg("--workdir")
        .arg(work.path())
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    let result = if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default();
        Some(serde_json::from_str(last).with_context(|| format!("ort_bench.py printed {last:?}"))?)
    } else {
        println!(
            "\nonnxruntime: ort_bench.py failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        None
    };
    Ok(result)
}

/// Runs the benchmark and prints the figures.
pub fn run(args: Args) -> Result<()> {
    if args.runs < 1 {
        bail!("--runs must be at least 1");
    }
    let size = |p: &Path| -> Result<u64> {
        Ok(std::fs::metadata(p)
            .with_context(|| format!("reading {}", p.display()))?
            .len())
    };
    let (float_bytes, int8_bytes) = (size(&args.float)?, size(&args.int8)?);
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "files: float {:.1} MB, int8 {:.1} MB ({:.1}% of float; budget <= 26 MB: {})",
        mb(float_bytes),
        mb(int8_bytes),
        100.0 * int8_bytes as f64 / float_bytes as f64,
        if mb(int8_bytes) <= 26.0 { "ok" } else { "OVER" }
    );
    let (frames, source) = inputs(&args)?;
    println!("inputs: {source}");
    if let Some(path) = &args.save_inputs {
        write_f32(path, &frames)?;
    }

    println!("\nload (read + rewrite + parse + optimise), wall:");
    let (fp32, fp32_load) = load(&args.float, Form::Auto, args.threads)?;
    println!("  tract fp32 model        {fp32_load:8.0} ms");
    let (float_form, float_load) = load(&args.int8, Form::Float, args.threads)?;
    println!("  int8 file, float form   {float_load:8.0} ms");
    let (integer, integer_load) = load(&args.int8, Form::Integer, args.threads)?;
    println!("  int8 file, integer form {integer_load:8.0} ms");
    let (auto, auto_load) = load(&args.int8, Form::Auto, args.threads)?;
    let auto_report = auto.form_report().cloned();
    println!("  int8 file, auto         {auto_load:8.0} ms");
    if let Some(r) = &auto_report {
        println!("    auto: {r}");
    }
    if let Some(r) = integer.form_report() {
        println!(
            "    integer form plan: {:?}",
            r.integer.as_ref().map(|c| &c.plan)
        );
    }
    let bundle_ms = match (&args.bundle, &args.trusted) {
        (Some(dir), Some(trusted)) => {
            // As a cart starts: the first start after an update times the candidate forms
            // and remembers the choice (`model.form_cache`); every later start builds only
            // the remembered one.
            let cache = tempfile::tempdir().context("a scratch directory for the form cache")?;
            let mut starts = Vec::new();
            for _ in 0..2 {
                let t = Instant::now();
                let keys = bundle::TrustedKeys::from_path(trusted)?;
                let b = bundle::Bundle::open(dir, &keys)?;
                let verified = ms(t.elapsed());
                let net = Network::from_bytes(
                    b.model_bytes(),
                    &b.model_origin(),
                    &SHAPE,
                    &LoadOptions {
                        threads: args.threads,
                        decision_cache: Some(cache.path().join("form.toml")),
                        model_id: Some(b.manifest().model.sha256.clone()),
                        half_proven: b.manifest().half_proven().is_some(),
                        ..LoadOptions::default()
                    },
                )?;
                let total = ms(t.elapsed());
                let lt = net.timings();
                println!(
                    "  bundle load + verify + optimise, {} start ({}): {total:.0} ms (verify \
                     {verified:.0}, parse {:.0}, declutter {:.0}, codegen {:.0}; budget <= 400 \
                     ms: {})",
                    if starts.is_empty() { "first" } else { "later" },
                    net.form_report()
                        .map(|r| r.built.to_string())
                        .unwrap_or_default(),
                    ms(lt.parse),
                    ms(lt.declutter),
                    ms(lt.codegen),
                    if total <= 400.0 { "ok" } else { "OVER" }
                );
                starts.push(total);
            }
            Some(starts)
        }
        _ => {
            println!(
                "  bundle load + verify + optimise: not measured (pass --bundle and --trusted)"
            );
            None
        }
    };

    println!(
        "\nlatency, batch 1, {} intra-op thread(s), input 0:",
        args.threads
    );
    let fp32_t = time_runs(&fp32, &frames[0], args.runs)?;
    println!("  tract fp32              {}", fp32_t.line());
    let auto_t = time_runs(&auto, &frames[0], args.runs)?;
    let picked = auto_report
        .as_ref()
        .map(|r| r.built)
        .unwrap_or(Built::Plain);
    println!("  tract auto ({picked:<13}) {}", auto_t.line());
    let float_t = time_runs(&float_form, &frames[0], args.runs)?;
    println!("  tract float form        {}", float_t.line());
    let mut integer_ms = Vec::new();
    let mut integer_agree = Agreement::default();
    let mut reference = Vec::with_capacity(frames.len());
    for f in &frames {
        reference.push(outputs(&fp32, f)?);
    }
    for i in 0..args.integer_runs {
        let f = i % frames.len();
        let t0 = Instant::now();
        let o = outputs(&integer, &frames[f])?;
        integer_ms.push(ms(t0.elapsed()));
        integer_agree.add(&reference[f], &o);
    }
    let integer_t = (!integer_ms.is_empty()).then(|| Stats::of(integer_ms.clone()));
    if let Some(s) = &integer_t {
        println!(
            "  tract integer form      {} (no warm-up; one image each)",
            s.line()
        );
    }
    println!(
        "  auto vs fp32: {:.2}x ({})",
        auto_t.median / fp32_t.median,
        if auto_t.median <= fp32_t.median * 1.02 {
            "no slower: ok"
        } else {
            "SLOWER than fp32"
        }
    );

    println!("\nagreement with tract fp32:");
    let mut float_agree = Agreement::default();
    let mut auto_agree = Agreement::default();
    for (f, r) in frames.iter().zip(&reference) {
        float_agree.add(r, &outputs(&float_form, f)?);
        auto_agree.add(r, &outputs(&auto, f)?);
    }
    println!("  float form   {}", float_agree.line());
    println!("  auto         {}", auto_agree.line());
    if integer_agree.n > 0 {
        println!("  integer form {}", integer_agree.line());
    }

    let ort = onnxruntime(&args, &frames)?;
    let mut ort_vs_tract = None;
    if let Some(o) = &ort {
        println!(
            "\nonnxruntime {} ({} thread(s), same inputs):",
            o["onnxruntime"], o["threads"]
        );
        for (key, label) in [
            ("fp32", "fp32"),
            ("int8_ort", "int8 (its own QDQ u8s8 reduce_range)"),
            ("int8_ours", "int8 (our QOperator file)"),
        ] {
            let r = &o[key];
            if let Some(m) = r["median_ms"].as_f64() {
                let dp = r["max_dp_vs_fp32"]
                    .as_f64()
                    .map(|d| format!(", max |dp| vs its fp32 {d:.4}"))
                    .unwrap_or_default();
                println!(
                    "  {label:<38} median {m:7.1} ms (min {:.1}, max {:.1}){dp}",
                    r["min_ms"].as_f64().unwrap_or(f64::NAN),
                    r["max_ms"].as_f64().unwrap_or(f64::NAN)
                );
            } else if let Some(e) = r["error"].as_str() {
                println!("  {label:<38} failed: {e}");
            }
        }
        if let Some(rows) = o["probs_fp32"].as_array() {
            let mut worst = 0f64;
            for (row, r) in rows.iter().zip(&reference) {
                for (a, b) in row.as_array().into_iter().flatten().zip(&r.0) {
                    worst = worst.max((a.as_f64().unwrap_or(f64::NAN) - *b as f64).abs());
                }
            }
            println!("  onnxruntime fp32 vs tract fp32: max |dp| {worst:.5}");
            ort_vs_tract = Some(worst);
        }
    }

    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "float_file": args.float, "int8_file": args.int8,
            "float_bytes": float_bytes, "int8_bytes": int8_bytes, "inputs": source,
            "load_ms": {"fp32": fp32_load, "float_form": float_load,
                "integer_form": integer_load, "auto": auto_load, "bundle": bundle_ms},
            "auto": report_json(auto_report.as_ref()),
            "latency": {"fp32": fp32_t.json(), "auto": auto_t.json(), "float_form": float_t.json(),
                "integer_form": integer_t.as_ref().map(Stats::json)},
            "agreement": {"float_form": float_agree.json(), "auto": auto_agree.json(),
                "integer_form": integer_agree.json()},
            "onnxruntime": ort.map(|mut o| { o.as_object_mut().map(|m| m.remove("probs_fp32")); o }),
            "onnxruntime_fp32_vs_tract_fp32_max_dp": ort_vs_tract,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
