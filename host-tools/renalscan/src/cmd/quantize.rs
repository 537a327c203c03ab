//! `renalscan quantize`: static post-training int8 quantization of an exported float model
//! (QOperator form, calibrated on images through usimage), with the accuracy checks that
//! decide whether the int8 file may ship.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use contract::manifest::{Manifest, Precision};
use contract::{Class, Taxonomy};
use quantize::{Agreement, Calibrator, FloatModel, Form, LayerRow};
use train::{Sample, Split};
use usimage::FrameRef;

/// Calibrator selection on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CalibratorArg {
    /// Pick the calibrator whose simulated int8 model agrees best with float on validation.
    Auto,
    /// Largest magnitude seen.
    Minmax,
    /// A percentile of |x| (`--percentile`).
    Percentile,
    /// KL-divergence threshold (TensorRT style).
    Entropy,
    /// KL-divergence threshold on the histogram without its exact zeros.
    EntropyNozeros,
    /// Threshold minimising the expected squared quantization error.
    Mse,
}

/// Activation encoding on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EncodingArg {
    /// Zero point 0 everywhere.
    Symmetric,
    /// Post-ReLU tensors over all 256 levels (zero point -128).
    ReluFullRange,
}

/// Arguments of `quantize`.
#[derive(clap::Args)]
pub struct Args {
    /// Float ONNX model from `renalscan train` (a `manifest.toml` beside it gives the
    /// operating threshold).
    #[arg(long)]
    pub model: PathBuf,
    /// Calibration images: folder or CSV manifest. With a `split` column only `train` rows.
    #[arg(long)]
    pub calib: PathBuf,
    /// The int8 ONNX file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// How activation ranges are chosen.
    #[arg(long, value_enum, default_value_t = CalibratorArg::Auto)]
    pub calibrator: CalibratorArg,
    /// Percentile of |x| for the percentile calibrator.
    #[arg(value_parser = argrange::f64_in(50.0, 100.0), long, default_value_t = 99.99)]
    pub percentile: f64,
    /// Calibration images used (a seeded random subset).
    #[arg(value_parser = argrange::usize_in(1, 10_000_000), long, default_value_t = 200)]
    pub calib_n: usize,
    /// Validation images for `--calibrator auto`: folder or CSV (with a `split` column only
    /// `val` rows). Default: calibration-set images not used for calibration.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Validation images used by `auto`.
    #[arg(value_parser = argrange::usize_in(1, 10_000_000), long, default_value_t = 100)]
    pub val_n: usize,
    /// Test data for the accuracy report (with a `split` column only `test` rows): AUC
    /// float vs int8 and decision agreement at the operating threshold.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Report directory: quantize.md and quantize.json (per-layer SQNR, calibrator choice,
    /// accuracy).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Calibration images for the per-layer SQNR table.
    #[arg(value_parser = argrange::usize_in(0, 10_000_000), long, default_value_t = 32)]
    pub sqnr_n: usize,
    /// Images run through the integer form in tract to check the simulation (about 8 s each
    /// on x86); 0 skips the check.
    #[arg(value_parser = argrange::usize_in(0, 10_000_000), long, default_value_t = 2)]
    pub check_integer: usize,
    /// Calibration images for bias correction (each conv's expected output shift from
    /// weight rounding, subtracted from its bias); 0 turns it off. On by default: on the
    /// phantom validation split it cut mean |dp| from 0.0228 to 0.0195 and flips 10 -> 6.
    #[arg(value_parser = argrange::usize_in(0, 10_000_000), long, default_value_t = 100)]
    pub bias_correction: usize,
    /// Calibration images for GPTQ weight rounding (each conv's weights rounded against its
    /// input statistics so that its output, not its weights, is closest to float); 0 rounds
    /// every weight to nearest. With every activation float, it cut the int8 weights' mean
    /// |dp| on the phantom validation split from 0.0116 to 0.0030.
    #[arg(value_parser = argrange::usize_in(0, 10_000_000), long, default_value_t = 128)]
    pub gptq: usize,
    /// GPTQ damping: fraction of the mean input second moment added to the diagonal.
    #[arg(value_parser = argrange::f64_in(0.0, 1.0), long, default_value_t = 0.01)]
    pub gptq_damp: f64,
    /// GPTQ rounds columns in order of decreasing input energy instead of weight order.
    #[arg(long)]
    pub gptq_act_order: bool,
    /// Activation range equalization strength in [0, 1] (0: off): before calibration, each
    /// `Conv -> Relu -> Conv` activation's weak channels are scaled up by `(max / range)^a`
    /// and the reading conv's weights down by as much, so that one int8 scale fits all
    /// channels. The float function is unchanged. 0.7 had the lowest mean |dp| on the phantom
    /// validation split (0.0086; 0.3: 0.0110, 0.5: 0.0110, 0.85: 0.0094, off: 0.0161).
    #[arg(value_parser = argrange::f32_in(0.0, 1.0), long, default_value_t = 0.7)]
    pub equalize: f32,
    /// Largest channel scale equalization applies.
    #[arg(value_parser = argrange::f32_in(1.0, 1e6), long, default_value_t = 16.0)]
    pub equalize_max: f32,
    /// Histogram bins per tensor.
    #[arg(value_parser = argrange::usize_in(16, 10_000_000), long, default_value_t = quantize::DEFAULT_BINS)]
    pub bins: usize,
    /// Override the manifest's operating threshold on p(abnormal).
    #[arg(value_parser = argrange::f64_in(0.0, 1.0), long)]
    pub threshold: Option<f64>,
    /// Int8 encoding of activations: `relu-full-range` gives post-ReLU tensors all 256
    /// levels (zero point -128), `symmetric` keeps zero point 0 everywhere.
    #[arg(long, value_enum, default_value_t = EncodingArg::ReluFullRange)]
    pub activations: EncodingArg,
    /// Activations kept float (comma-separated names as in the SQNR table, e.g.
    /// `res4b_b_relu`): the conv producing each keeps an integer matmul with a float output
    /// and the convs reading it compute in float on the int8-stored weights. For layers whose
    /// rounding costs decisions; the file size does not change.
    #[arg(long, value_delimiter = ',')]
    pub float_layers: Vec<String>,
    /// Seed of the calibration subset.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Percentage of unreadable images tolerated (skipped and listed) before failing.
    #[arg(value_parser = argrange::f64_in(0.0, 100.0), long, default_value_t = 5.0)]
    pub max_failed_pct: f64,
}

fn rows(path: &Path, split: Split) -> Result<Vec<Sample>> {
    let mut s = train::load(path).with_context(|| format!("reading {}", path.display()))?;
    if s.iter().any(|x| x.split.is_some()) {
        s.retain(|x| x.split == Some(split));
        log::info!(
            "{}: split column present, {} {} rows",
            path.display(),
            s.len(),
            split.name()
        );
    }
    Ok(s)
}

fn probs_output(model: &FloatModel) -> Result<String> {
    let outs = model.output_names();
    if outs.iter().any(|o| o == "probs") {
        return Ok("probs".into());
    }
    outs.first().cloned().context("model has no outputs")
}

#[derive(serde::Serialize)]
struct Candidate {
    calibrator: String,
    #[serde(flatten)]
    agreement: Agreement,
}

#[derive(serde::Serialize)]
struct TestReport {
    n: usize,
    n_normal: usize,
    auc_float: f64,
    auc_int8: f64,
    auc_drop: f64,
    threshold: f64,
    #[serde(flatten)]
    agreement: Agreement,
    /// Images whose decision flips, with both scores: how far from the threshold they sit.
    flipped: Vec<Flip>,
    /// Every test image's label and both scores (written as `scores.csv`).
    #[serde(skip)]
    scores: Vec<(String, usize, f64, f64)>,
}

#[derive(serde::Serialize)]
struct Flip {
    path: String,
    p_float: f64,
    p_int8: f64,
}

#[derive(serde::Serialize)]
struct IntegerCheck {
    images: usize,
    max_abs_dp_vs_simulation: f64,
    qlinearconv_nodes: usize,
    /// `ConvInteger` nodes (convs feeding a residual Add, float output).
    convinteger_nodes: usize,
    integer_matmuls: usize,
    kernels: Vec<String>,
    seconds_per_image: f64,
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    out: String,
    out_bytes: u64,
    calibration_images: usize,
    calibration_skipped: Vec<String>,
    calibration_s: f64,
    chosen: String,
    /// Calibration images the bias correction was measured on (0: none).
    bias_correction_images: usize,
    /// Calibration images GPTQ weight rounding used (0: nearest rounding).
    gptq_images: usize,
    /// Equalization strength (0: off).
    equalize_strength: f32,
    /// Activations equalized before calibration.
    equalized: Vec<quantize::equalize::Equalized>,
    selection_rule: &'static str,
    candidates: Vec<Candidate>,
    integer_check: Option<IntegerCheck>,
    test: Option<TestReport>,
    convolutions: Vec<quantize::ConvInfo>,
    layers: Vec<LayerRow>,
}

pub fn run(args: Args) -> Result<()> {
    if !(0.0..=1.0).contains(&args.equalize) {
        bail!("--equalize must be in [0, 1], not {}", args.equalize);
    }
    let bytes =
        std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let mut model = FloatModel::from_bytes(&bytes)
        .with_context(|| format!("{} cannot be quantized", args.model.display()))?;
    model.set_encoding(match args.activations {
        EncodingArg::Symmetric => quantize::ActEncoding::Symmetric,
        EncodingArg::ReluFullRange => quantize::ActEncoding::ReluFullRange,
    });

    let shape = model
        .input_shape()
        .context("the model's input shape is not fixed (besides the batch)")?;
    let side = shape
        .get(2)
        .copied()
        .context("input is not N x C x H x W")? as u32;
    let probs = probs_output(&model)?;
    let manifest_path = args.model.with_file_name("manifest.toml");
    let draft = if manifest_path.is_file() {
        Some(
            Manifest::draft_from_file(&manifest_path)
                .with_context(|| format!("reading the manifest beside {}", args.model.display()))?,
        )
    } else {
        None
    };
    let threshold = match (args.threshold, &draft) {
        (Some(t), _) => t,
        (None, Some(m)) => m.operating_point.threshold,
        (None, None) => bail!(
            "no manifest.toml beside {} to read the operating threshold from: give \
             --threshold",
            args.model.display()
        ),
    };
    let taxonomy = match &draft {
        Some(m) => m
            .taxonomy()
            .with_context(|| format!("labels of {}", manifest_path.display()))?,
        None => Taxonomy::standard(),
    };

    // Calibration set: a seeded subset; the rest may serve as validation.
    let mut calib_rows = rows(&args.calib, Split::Train)?;
    if calib_rows.is_empty() {
        bail!(
            "empty calibration set: no images in {}",
            args.calib.display()
        );
    }
    seeded::Rng::new(args.seed).shuffle(&mut calib_rows);
    let rest = calib_rows.split_off(args.calib_n.min(calib_rows.len()));
    let calib_paths: Vec<FrameRef> = calib_rows.iter().map(Sample::frame_ref).collect();
    let calib = quantize::load_images(&calib_paths, side, args.max_failed_pct, "calibration")?;
    log::info!(
        "calibration: {} images ({} skipped) from {}",
        calib.tensors.len(),
        calib.skipped.len(),
        args.calib.display()
    );

    // `model` stays the float reference every comparison is made against; `qmodel` is what
    // gets quantized (the equalized model, or the same one).
    let mut equalized = Vec::new();
    let equalized_model = if args.equalize > 0.0 {
        let (m, rep) =
            quantize::equalize::equalize(&model, &calib.tensors, args.equalize, args.equalize_max)?;
        log::info!(
            "equalized {} activations (strength {}, channel scales up to {})",
            rep.len(),
            args.equalize,
            rep.iter().map(|e| e.max_scale).fold(1.0, f32::max)
        );
        equalized = rep;
        Some(m)
    } else {
        None
    };
    let qmodel = equalized_model.as_ref().unwrap_or(&model);

    let t0 = Instant::now();
    let stats = quantize::collect_stats(qmodel, &calib.tensors, args.bins)?;
    let calibration_s = t0.elapsed().as_secs_f64();
    log::info!(
        "calibration statistics of {} tensors over {} images in {calibration_s:.1} s",
        stats.tensors.len(),
        stats.images
    );

    // Weight rounding and bias correction do not depend on activation scales: computed
    // first, so that calibrators are compared on the weights that ship.
    let rounded = if args.gptq > 0 {
        let n = args.gptq.min(calib.tensors.len());
        let t = Instant::now();
        let r = quantize::gptq::gptq(
            qmodel,
            &calib.tensors[..n],
            &quantize::GptqOptions {
                damp: args.gptq_damp,
                act_order: args.gptq_act_order,
                ..Default::default()
            },
        )?;
        log::info!(
            "gptq: {} convolutions rounded against {n} calibration images in {:.1} s",
            r.len(),
            t.elapsed().as_secs_f64()
        );
        Some(r)
    } else {
        None
    };
    let correction = if args.bias_correction > 0 {
        let n = args.bias_correction.min(calib.tensors.len());
        let c = quantize::bias_correction(qmodel, &calib.tensors[..n], rounded.as_ref())?;
        let largest = c
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |d| (d.abs(), k)))
            .fold(
                (0f32, None),
                |m, (d, k)| if d > m.0 { (d, Some(k)) } else { m },
            );
        log::info!(
            "bias correction on {n} calibration images: largest per-channel shift {:.4} ({})",
            largest.0,
            largest.1.map_or("-", String::as_str)
        );
        Some(c)
    } else {
        None
    };
    let candidates: Vec<Calibrator> = match args.calibrator {
        CalibratorArg::Auto => vec![
            Calibrator::MinMax,
            Calibrator::Percentile(args.percentile),
            Calibrator::Entropy,
            Calibrator::EntropyNoZeros,
            Calibrator::Mse,
        ],
        CalibratorArg::Minmax => vec![Calibrator::MinMax],
        CalibratorArg::Percentile => vec![Calibrator::Percentile(args.percentile)],
        CalibratorArg::Entropy => vec![Calibrator::Entropy],
        CalibratorArg::EntropyNozeros => vec![Calibrator::EntropyNoZeros],
        CalibratorArg::Mse => vec![Calibrator::Mse],
    };
    let mut cand_reports = Vec::new();
    let chosen = if candidates.len() == 1 {
        candidates[0]
    } else {
        // The calibrator is chosen on screening decisions: kidneys only (calibration itself
        // sees every view, so no-kidney frames do not saturate).
        let mut val_rows = match &args.val {
            Some(v) => rows(v, Split::Val)?,
            None => rest,
        };
        val_rows.retain(Sample::is_kidney);
        let mut val_paths: Vec<FrameRef> = val_rows.iter().map(Sample::frame_ref).collect();
        val_paths.truncate(args.val_n);
        if val_paths.is_empty() {
            bail!("--calibrator auto needs validation images: give --val or more calibration images than --calib-n");
        }
        let val = quantize::load_images(&val_paths, side, args.max_failed_pct, "validation")?;
        let float = quantize::predict(
            model.proto(),
            &shape,
            &probs,
            &val.tensors,
            "validation float",
        )?;
        let mut best: Option<(Calibrator, Agreement)> = None;
        for c in &candidates {
            let (sim, _) = qmodel.rewrite_with(
                &stats.scales(*c),
                Form::Simulated,
                quantize::Adjustments {
                    correction: correction.as_ref(),
                    rounded: rounded.as_ref(),
                    float_keys: None,
                },
            )?;
            let q = quantize::predict(
                &sim,
                &shape,
                &probs,
                &val.tensors,
                &format!("validation {}", c.name()),
            )?;
            let a = quantize::agreement(&taxonomy, &float, &q, threshold);
            log::info!(
                "{}: mean |dp_abnormal| {:.5}, max |dp| {:.4}, {} decision flips of {}",
                c.name(),
                a.mean_abs_dp,
                a.max_abs_dp,
                a.flips,
                a.n
            );
            cand_reports.push(Candidate {
                calibrator: c.name(),
                agreement: a,
            });
            let better = best
                .as_ref()
                .is_none_or(|(_, b)| (a.mean_abs_dp, a.flips) < (b.mean_abs_dp, b.flips));
            if better {
                best = Some((*c, a));
            }
        }
        let (c, a) = best.context("no calibrator evaluated")?;
        log::info!(
            "chosen: {} (lowest mean |p_abnormal(int8) - p_abnormal(float)| = {:.5} on {} validation images)",
            c.name(),
            a.mean_abs_dp,
            a.n
        );
        c
    };

    let scales = stats.scales(chosen);
    let float_keys: BTreeSet<String> = args.float_layers.iter().cloned().collect();
    if !float_keys.is_empty() {
        log::info!(
            "activations kept float: {}",
            float_keys.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let adj = quantize::Adjustments {
        correction: correction.as_ref(),
        rounded: rounded.as_ref(),
        float_keys: Some(&float_keys),
    };
    let (int_proto, convs) = qmodel.rewrite_with(&scales, Form::Integer, adj)?;
    let (sim_proto, _) = qmodel.rewrite_with(&scales, Form::Simulated, adj)?;
    let encoded = quantize::encode(&int_proto);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, &encoded)
        .with_context(|| format!("writing {}", args.out.display()))?;
    log::info!(
        "wrote {} ({:.2} MB; float model {:.2} MB)",
        args.out.display(),
        encoded.len() as f64 / 1e6,
        bytes.len() as f64 / 1e6
    );
    // The next steps (`eval`, `bundle`) read the manifest beside the model: give the int8
    // file the float model's draft, which is what describes it (labels, threshold, gate),
    // saying int8. Always this run's: a draft left there earlier would describe another model.
    let beside = args.out.with_file_name("manifest.toml");
    let same_file = beside
        .canonicalize()
        .ok()
        .is_some_and(|b| manifest_path.canonicalize().is_ok_and(|m| m == b));
    if let (Some(draft), false) = (&draft, same_file) {
        let mut int8_draft = draft.clone();
        int8_draft.model.precision = Precision::Int8;
        let text = int8_draft
            .to_toml()
            .with_context(|| format!("writing the draft of {}", args.out.display()))?;
        std::fs::write(&beside, text).with_context(|| format!("writing {}", beside.display()))?;
        log::info!(
            "{}: the float model's draft manifest, as int8, for eval and bundle",
            beside.display()
        );
    }

    let integer_check = if args.check_integer > 0 {
        Some(check_integer(
            &args,
            &int_proto,
            &sim_proto,
            &shape,
            &probs,
            &calib.tensors,
        )?)
    } else {
        None
    };

    let n = args.sqnr_n.min(calib.tensors.len());
    let layers = quantize::layer_report(qmodel, &stats, &scales, &sim_proto, &calib.tensors[..n])?;
    let mut worst: Vec<&LayerRow> = layers.iter().filter(|r| r.scale > 0.0).collect();
    worst.sort_by(|a, b| a.network_sqnr_db.total_cmp(&b.network_sqnr_db));
    for r in worst.iter().take(5) {
        log::info!(
            "low SQNR: {} network {:.1} dB, local {:.1} dB, clipped {:.3}%",
            r.tensor,
            r.network_sqnr_db,
            r.local_sqnr_db,
            r.clipped_pct
        );
    }
    for r in layers.iter().filter(|r| r.scale == 0.0) {
        log::info!("output {}: SQNR {:.1} dB", r.tensor, r.network_sqnr_db);
    }

    let test = match &args.test {
        Some(t) => Some(test_report(
            t, &args, &model, &sim_proto, &shape, &probs, side, &taxonomy, threshold,
        )?),
        None => None,
    };

    if let Some(dir) = &args.report {
        let report = Report {
            model: args.model.display().to_string(),
            out: args.out.display().to_string(),
            out_bytes: encoded.len() as u64,
            calibration_images: calib.tensors.len(),
            calibration_skipped: calib
                .skipped
                .iter()
                .map(|(p, e)| format!("{p}: {e}"))
                .collect(),
            calibration_s,
            chosen: chosen.name(),
            bias_correction_images: args.bias_correction.min(calib.tensors.len()),
            gptq_images: args.gptq.min(calib.tensors.len()),
            equalize_strength: args.equalize,
            equalized,
            selection_rule: "lowest mean |p_abnormal(int8 simulated) - p_abnormal(float)| on validation images, then fewest decision flips",
            candidates: cand_reports,
            integer_check,
            test,
            convolutions: convs,
            layers,
        };
        write_report(dir, &report)?;
    }
    Ok(())
}

/// Runs the integer form in tract on a few images and compares with the simulation; also
/// counts the integer matmuls in tract's optimised graph.
fn check_integer(
    args: &Args,
    int_proto: &quantize::ModelProto,
    sim_proto: &quantize::ModelProto,
    shape: &[usize],
    probs: &str,
    images: &[Vec<f32>],
) -> Result<IntegerCheck> {
    let opt = quantize::engine::optimized(int_proto, shape, &[])?;
    let ops = quantize::engine::describe(&opt);
    let integer_matmuls = ops.iter().filter(|(_, i)| i.contains("mmm_i32")).count();
    let mut kernels: Vec<String> = ops
        .iter()
        .filter_map(|(_, i)| {
            i.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .find(|w| w.contains("_mmm_"))
                .map(str::to_string)
        })
        .collect();
    kernels.sort();
    kernels.dedup();
    let count = |op: &str| {
        int_proto
            .graph
            .as_ref()
            .map_or(0, |g| g.node.iter().filter(|n| n.op_type == op).count())
    };
    let qconv = count("QLinearConv");
    let conv_integer = count("ConvInteger");
    log::info!(
        "integer form: {qconv} QLinearConv + {conv_integer} ConvInteger nodes, {integer_matmuls} integer matmuls in tract's optimised graph (kernels {kernels:?})"
    );
    if integer_matmuls < qconv + conv_integer {
        log::warn!(
            "only {integer_matmuls} integer matmuls for {} integer convolutions: tract runs some in float",
            qconv + conv_integer
        );
    }
    let n = args.check_integer.min(images.len());
    let t = Instant::now();
    let q = quantize::predict(int_proto, shape, probs, &images[..n], "integer form")?;
    let seconds_per_image = t.elapsed().as_secs_f64() / n.max(1) as f64;
    let s = quantize::predict(sim_proto, shape, probs, &images[..n], "simulated form")?;
    let max = q
        .iter()
        .zip(&s)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())))
        .fold(0.0, f64::max);
    log::info!("integer form vs simulation on {n} images: max |dp| = {max:.2e} ({seconds_per_image:.1} s/image integer)");
    Ok(IntegerCheck {
        images: n,
        max_abs_dp_vs_simulation: max,
        qlinearconv_nodes: qconv,
        convinteger_nodes: conv_integer,
        integer_matmuls,
        kernels,
        seconds_per_image,
    })
}

#[allow(clippy::too_many_arguments)]
fn test_report(
    data: &Path,
    args: &Args,
    model: &FloatModel,
    sim_proto: &quantize::ModelProto,
    shape: &[usize],
    probs: &str,
    side: u32,
    taxonomy: &Taxonomy,
    threshold: f64,
) -> Result<TestReport> {
    let p_abnormal = |p: &[f32]| taxonomy.p_abnormal_f64(p);
    let normal = Class::Normal.index();
    let mut samples = rows(data, Split::Test)?;
    samples.retain(Sample::is_kidney);
    let paths: Vec<FrameRef> = samples.iter().map(Sample::frame_ref).collect();
    let imgs = quantize::load_images(&paths, side, args.max_failed_pct, "test")?;
    let label: BTreeMap<FrameRef, usize> =
        samples.iter().map(|s| (s.frame_ref(), s.label)).collect();
    let labels: Vec<usize> = imgs
        .paths
        .iter()
        .map(|p| label.get(p).copied().unwrap_or(0))
        .collect();
    let f = quantize::predict(model.proto(), shape, probs, &imgs.tensors, "test float")?;
    let q = quantize::predict(
        sim_proto,
        shape,
        probs,
        &imgs.tensors,
        "test int8 (simulated)",
    )?;
    let auc = |p: &[Vec<f32>]| {
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for (row, &l) in p.iter().zip(&labels) {
            if l == normal {
                neg.push(p_abnormal(row))
            } else {
                pos.push(p_abnormal(row))
            }
        }
        evaluate::auc(&pos, &neg)
    };
    let (af, aq) = (auc(&f), auc(&q));
    let a = quantize::agreement(taxonomy, &f, &q, threshold);
    let flipped: Vec<Flip> = imgs
        .paths
        .iter()
        .zip(f.iter().zip(&q))
        .map(|(p, (f, q))| Flip {
            path: p.to_string(),
            p_float: p_abnormal(f),
            p_int8: p_abnormal(q),
        })
        .filter(|x| (x.p_float >= threshold) != (x.p_int8 >= threshold))
        .collect();
    for x in &flipped {
        log::info!(
            "flip: {} p(abnormal) float {:.4}, int8 {:.4} (threshold {threshold:.4})",
            x.path,
            x.p_float,
            x.p_int8
        );
    }
    log::info!(
        "test ({} images): AUC float {af:.4}, int8 {aq:.4} (drop {:.4}); decision agreement at {threshold:.4}: {:.2}% ({} flips); max |dp| {:.4}",
        a.n,
        af - aq,
        100.0 * a.agreement,
        a.flips,
        a.max_abs_dp
    );
    Ok(TestReport {
        n: a.n,
        n_normal: labels.iter().filter(|&&l| l == normal).count(),
        auc_float: af,
        auc_int8: aq,
        auc_drop: af - aq,
        threshold,
        agreement: a,
        flipped,
        scores: imgs
            .paths
            .iter()
            .zip(&labels)
            .zip(f.iter().zip(&q))
            .map(|((p, l), (f, q))| (p.to_string(), *l, p_abnormal(f), p_abnormal(q)))
            .collect(),
    })
}

fn write_report(dir: &Path, r: &Report) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    std::fs::write(dir.join("quantize.json"), json)?;
    if let Some(t) = &r.test {
        train::dataset::write_csv(
            &dir.join("scores.csv"),
            &["path", "label", "p_abnormal_float", "p_abnormal_int8"],
            t.scores.iter().map(|(p, l, f, q)| {
                [
                    p.clone(),
                    l.to_string(),
                    format!("{f:.6}"),
                    format!("{q:.6}"),
                ]
            }),
        )?;
    }
    let mut md = format!(
        "# int8 quantization of {}\n\n- output: {} ({:.2} MB)\n- calibration: {} images in {:.1} s ({} skipped)\n- chosen calibrator: **{}** ({})\n- bias correction: {}\n- weight rounding: {}\n- equalization: {}\n\n",
        r.model,
        r.out,
        r.out_bytes as f64 / 1e6,
        r.calibration_images,
        r.calibration_s,
        r.calibration_skipped.len(),
        r.chosen,
        r.selection_rule,
        if r.bias_correction_images > 0 {
            format!("measured on {} calibration images", r.bias_correction_images)
        } else {
            "off".into()
        },
        if r.gptq_images > 0 {
            format!("GPTQ on {} calibration images", r.gptq_images)
        } else {
            "nearest".into()
        },
        if r.equalized.is_empty() {
            "off".into()
        } else {
            format!(
                "strength {} on {} activations",
                r.equalize_strength,
                r.equalized.len()
            )
        }
    );
    if !r.candidates.is_empty() {
        md.push_str("| calibrator | images | mean abs dp_abnormal | max abs dp | flips | agreement |\n|---|---:|---:|---:|---:|---:|\n");
        for c in &r.candidates {
            let a = &c.agreement;
            md.push_str(&format!(
                "| {} | {} | {:.5} | {:.4} | {} | {:.2}% |\n",
                c.calibrator,
                a.n,
                a.mean_abs_dp,
                a.max_abs_dp,
                a.flips,
                100.0 * a.agreement
            ));
        }
        md.push('\n');
    }
    if let Some(t) = &r.test {
        md.push_str(&format!(
            "## Test set\n\n{} images ({} normal): AUC float {:.4}, int8 {:.4}, drop {:.4}; decision agreement at threshold {:.4}: {:.2}% ({} flips); max |dp| {:.4}.\n\n",
            t.n, t.n_normal, t.auc_float, t.auc_int8, t.auc_drop, t.threshold, 100.0 * t.agreement.agreement, t.agreement.flips, t.agreement.max_abs_dp
        ));
        if !t.flipped.is_empty() {
            md.push_str("| flipped image | p(abnormal) float | int8 |\n|---|---:|---:|\n");
            for f in &t.flipped {
                md.push_str(&format!(
                    "| {} | {:.4} | {:.4} |\n",
                    f.path, f.p_float, f.p_int8
                ));
            }
            md.push('\n');
        }
    }
    if let Some(c) = &r.integer_check {
        md.push_str(&format!(
            "## Integer form in tract\n\n{} QLinearConv + {} ConvInteger nodes, {} integer matmuls in the optimised graph ({}); on {} images the integer form differs from the simulation by max |dp| {:.2e} ({:.1} s/image).\n\n",
            c.qlinearconv_nodes, c.convinteger_nodes, c.integer_matmuls, c.kernels.join(", "), c.images, c.max_abs_dp_vs_simulation, c.seconds_per_image
        ));
    }
    md.push_str("## Per-layer SQNR (calibration images, simulated int8 vs float)\n\n");
    md.push_str(&quantize::layer_table_markdown(&r.layers));
    std::fs::write(dir.join("quantize.md"), md)?;
    log::info!("report written to {}", dir.display());
    Ok(())
}
