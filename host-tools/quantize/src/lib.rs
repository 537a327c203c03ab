//! Static post-training int8 quantization of renalscan ONNX models.
//!
//! The float model is rewritten into the ONNX QOperator form tract runs with integer
//! kernels: s8 symmetric per-output-channel weights stored once, s8 activations (the input
//! symmetric, post-ReLU tensors over the full range with zero point -128 unless asked
//! otherwise) whose ranges come from calibration images preprocessed by usimage exactly as
//! on the device, int32 biases. The residual additions and the head stay float. The file
//! format is specified in this crate's README.
//!
//! tract's integer kernel is very slow on AVX2-only x86 (see DESIGN), so calibrator choice and
//! accuracy use [`Form::Simulated`]: the same quantization in float kernels.

pub mod calib;
pub mod engine;
pub mod equalize;
pub mod error;
pub mod gptq;
pub mod graph;
pub mod math;

use std::borrow::Cow;
use std::collections::BTreeMap;

use contract::Taxonomy;
use serde::Serialize;
use usimage::{FrameRef, Normalization, Preprocessor};

pub use calib::{Calibrator, Histogram, DEFAULT_BINS};
pub use engine::Engine;
pub use error::QuantizeError;
pub use gptq::GptqOptions;
pub use graph::{ActEncoding, Adjustments, BiasCorrection, ConvInfo, FloatModel, Form, Q8};
pub use math::RoundedWeights;
pub use tract_onnx::pb::ModelProto;

/// Serialises a model to ONNX bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}

/// Progress of calibration, GPTQ, SQNR and bias correction: a bar on a terminal, log lines
/// otherwise (the host tools' one report).
pub use progress::Progress;

/// Preprocessed model inputs of a set of image files.
#[derive(Debug, Default)]
pub struct Images {
    /// Frames that were read, in order.
    pub paths: Vec<FrameRef>,
    /// Their model inputs (3 x side x side, usimage's Caffe BGR normalisation).
    pub tensors: Vec<Vec<f32>>,
    /// Frames skipped and why.
    pub skipped: Vec<(FrameRef, String)>,
}

/// Reads and preprocesses `paths` (one frame of a file each) through usimage, the path the
/// device runs. Unreadable files are skipped and listed; more than `max_failed_pct` percent
/// of them is an error, as is an empty set.
pub fn load_images(
    paths: &[FrameRef],
    side: u32,
    max_failed_pct: f64,
    what: &str,
) -> Result<Images, QuantizeError> {
    if paths.is_empty() {
        return Err(QuantizeError::EmptySet(what.into()));
    }
    let mut pre = Preprocessor::new(side, Normalization::caffe_bgr());
    let mut out = Images::default();
    for p in paths {
        let r = std::fs::read(p.path())
            .map_err(|e| e.to_string())
            .and_then(|b| {
                let frame = p.decode(&b).map_err(|e| e.to_string())?;
                let mut t = vec![0f32; pre.output_len()];
                pre.process(&frame, &mut t).map_err(|e| e.to_string())?;
                Ok(t)
            });
        match r {
            Ok(t) => {
                out.paths.push(p.clone());
                out.tensors.push(t);
            }
            Err(e) => {
                log::warn!("{what}: skipped {p}: {e}");
                out.skipped.push((p.clone(), e));
            }
        }
    }
    let failed = out.skipped.len();
    if out.tensors.is_empty() || failed as f64 > max_failed_pct / 100.0 * paths.len() as f64 {
        return Err(QuantizeError::Unreadable {
            what: what.into(),
            failed,
            total: paths.len(),
            max_pct: max_failed_pct,
            list: out
                .skipped
                .iter()
                .take(20)
                .map(|(p, e)| format!("  {p}: {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    Ok(out)
}

/// Magnitude histograms of every tensor that needs an activation scale.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Calibrated tensors, graph order.
    pub tensors: Vec<String>,
    /// One histogram per tensor.
    pub hists: Vec<Histogram>,
    /// Images seen.
    pub images: usize,
}

impl Stats {
    /// Activation scales chosen by `calibrator`, per tensor.
    pub fn scales(&self, calibrator: Calibrator) -> BTreeMap<String, f32> {
        self.tensors
            .iter()
            .zip(&self.hists)
            .map(|(t, h)| (t.clone(), math::symmetric_scale(h.threshold(calibrator))))
            .collect()
    }
}

/// Float values of the calibrated tensors for one input, then any further outputs: the
/// input tensor is taken as is, the others from `outs` (an engine run with them as outputs,
/// in order, the input excluded).
fn activations<'a>(
    model: &FloatModel,
    tensors: &[String],
    outs: Vec<Vec<f32>>,
    input: &'a [f32],
) -> Result<Vec<Cow<'a, [f32]>>, QuantizeError> {
    let mut outs = outs.into_iter();
    let mut v = tensors
        .iter()
        .map(|t| {
            if t == model.input_name() {
                Ok(Cow::Borrowed(input))
            } else {
                outs.next()
                    .map(Cow::Owned)
                    .ok_or_else(|| QuantizeError::Tract(format!("no output for `{t}`")))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    v.extend(outs.map(Cow::Owned));
    Ok(v)
}

fn shape(model: &FloatModel) -> Result<Vec<usize>, QuantizeError> {
    model
        .input_shape()
        .ok_or_else(|| QuantizeError::Invalid("input shape not fixed (besides batch)".into()))
}

fn hidden(model: &FloatModel, tensors: &[String]) -> Vec<String> {
    tensors
        .iter()
        .filter(|t| *t != model.input_name())
        .cloned()
        .collect()
}

/// Runs the float model over `images` once, histogramming every tensor to be quantized.
pub fn collect_stats(
    model: &FloatModel,
    images: &[Vec<f32>],
    bins: usize,
) -> Result<Stats, QuantizeError> {
    if images.is_empty() {
        return Err(QuantizeError::EmptySet("calibration".into()));
    }
    let tensors = model.calibration_tensors()?;
    let engine = Engine::new(model.proto(), &shape(model)?, &hidden(model, &tensors))?;
    let mut hists = vec![Histogram::new(bins); tensors.len()];
    let progress = Progress::new("calibration", images.len() as u64);
    for input in images {
        for (h, a) in hists
            .iter_mut()
            .zip(activations(model, &tensors, engine.run(input)?, input)?)
        {
            h.add(&a);
        }
        progress.tick();
    }
    Ok(Stats {
        tensors,
        hists,
        images: images.len(),
    })
}

/// Runs `proto` over `images` and returns output `output` of each.
pub fn predict(
    proto: &ModelProto,
    input_shape: &[usize],
    output: &str,
    images: &[Vec<f32>],
    label: &str,
) -> Result<Vec<Vec<f32>>, QuantizeError> {
    let engine = Engine::new(proto, input_shape, &[output.to_string()])?;
    let progress = Progress::new(label, images.len() as u64);
    images
        .iter()
        .map(|x| {
            let mut o = engine.run(x)?;
            progress.tick();
            o.pop()
                .ok_or_else(|| QuantizeError::Tract(format!("no output `{output}`")))
        })
        .collect()
}

/// How closely quantized class probabilities follow the float ones, on the screening score
/// p(abnormal) of the model's taxonomy.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Agreement {
    /// Images compared.
    pub n: usize,
    /// Mean |p_abnormal(int8) - p_abnormal(float)|.
    pub mean_abs_dp: f64,
    /// Largest |difference| of any class probability.
    pub max_abs_dp: f64,
    /// Images whose decision at the threshold differs.
    pub flips: usize,
    /// Share of images with the same decision.
    pub agreement: f64,
}

/// Compares two sets of probability rows at the operating `threshold` on p(abnormal).
pub fn agreement(
    taxonomy: &Taxonomy,
    float: &[Vec<f32>],
    quant: &[Vec<f32>],
    threshold: f64,
) -> Agreement {
    let (mut sum, mut max, mut flips) = (0.0, 0.0f64, 0);
    for (f, q) in float.iter().zip(quant) {
        let pf = taxonomy.p_abnormal_f64(f);
        let pq = taxonomy.p_abnormal_f64(q);
        sum += (pf - pq).abs();
        for (a, b) in f.iter().zip(q) {
            max = max.max(f64::from((a - b).abs()));
        }
        if (pf >= threshold) != (pq >= threshold) {
            flips += 1;
        }
    }
    let n = float.len().min(quant.len());
    Agreement {
        n,
        mean_abs_dp: sum / n.max(1) as f64,
        max_abs_dp: max,
        flips,
        agreement: 1.0 - flips as f64 / n.max(1) as f64,
    }
}

/// One row of the per-layer error report.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    /// The quantized tensor (a convolution's output, its Relu, or a block output / input).
    pub tensor: String,
    /// Activation scale.
    pub scale: f32,
    /// Largest magnitude seen in calibration.
    pub max_abs: f32,
    /// Clip threshold (127 * scale).
    pub threshold: f32,
    /// Share of values beyond the threshold, percent.
    pub clipped_pct: f64,
    /// SQNR of quantizing the float tensor alone, dB: the calibrator's own error.
    pub local_sqnr_db: f64,
    /// SQNR of the simulated int8 network's tensor against float, dB: error accumulated
    /// through all layers up to here.
    pub network_sqnr_db: f64,
    /// Kept float (`--float-layers`): not rounded; `local_sqnr_db` is what rounding would
    /// have cost.
    pub kept_float: bool,
}

/// Per-layer SQNR on `images`: each calibrated tensor of the simulated int8 network against
/// the float network, plus the model outputs (`tensor` = output name, scale 0).
pub fn layer_report(
    model: &FloatModel,
    stats: &Stats,
    scales: &BTreeMap<String, f32>,
    sim: &ModelProto,
    images: &[Vec<f32>],
) -> Result<Vec<LayerRow>, QuantizeError> {
    let shape = shape(model)?;
    let outs = model.output_names();
    let mut fnames = hidden(model, &stats.tensors);
    fnames.extend(outs.iter().cloned());
    // A tensor kept float (see `FloatModel::rewrite_mixed`) is read under its own name.
    let produced: std::collections::HashSet<&str> = sim
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(
            sim.graph
                .iter()
                .flat_map(|g| &g.input)
                .map(|i| i.name.as_str()),
        )
        .collect();
    let kept_float: Vec<bool> = stats
        .tensors
        .iter()
        .map(|t| !produced.contains(format!("{t}{Q8}").as_str()) && produced.contains(t.as_str()))
        .collect();
    let mut snames: Vec<String> = stats
        .tensors
        .iter()
        .zip(&kept_float)
        .map(|(t, f)| if *f { t.clone() } else { format!("{t}{Q8}") })
        .collect();
    snames.extend(outs.iter().cloned());
    let fe = Engine::new(model.proto(), &shape, &fnames)?;
    let se = Engine::new(sim, &shape, &snames)?;
    let k = stats.tensors.len();
    let mut local = vec![math::Sqnr::default(); k + outs.len()];
    let mut net = vec![math::Sqnr::default(); k + outs.len()];
    let mut clipped = vec![(0u64, 0u64); k];
    let progress = Progress::new("per-layer SQNR", images.len() as u64);
    for x in images {
        let f = activations(model, &stats.tensors, fe.run(x)?, x)?;
        let s = se.run(x)?;
        for (i, (fv, sv)) in f.iter().zip(&s).enumerate() {
            if i < k {
                let t = &stats.tensors[i];
                let (sc, zp) = model.act_qparams(t, scales.get(t).copied().unwrap_or(1.0));
                let lq: Vec<f32> = fv.iter().map(|v| math::fake_quant_zp(*v, sc, zp)).collect();
                local[i].add(fv, &lq);
                let (unit, z) = if kept_float[i] {
                    (1.0, 0.0)
                } else {
                    (sc, f32::from(zp))
                };
                let deq: Vec<f32> = sv.iter().map(|q| (q - z) * unit).collect();
                net[i].add(fv, &deq);
                let t = (math::ACT_MAX - f32::from(zp)) * sc;
                clipped[i].0 += fv.iter().filter(|v| v.abs() > t).count() as u64;
                clipped[i].1 += fv.len() as u64;
            } else {
                net[i].add(fv, sv);
            }
        }
        progress.tick();
    }
    let mut rows: Vec<LayerRow> = stats
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (sc, zp) = model.act_qparams(t, scales.get(t).copied().unwrap_or(1.0));
            LayerRow {
                tensor: t.clone(),
                scale: sc,
                max_abs: stats.hists[i].max(),
                threshold: (math::ACT_MAX - f32::from(zp)) * sc,
                clipped_pct: 100.0 * clipped[i].0 as f64 / clipped[i].1.max(1) as f64,
                local_sqnr_db: local[i].db(),
                network_sqnr_db: net[i].db(),
                kept_float: kept_float[i],
            }
        })
        .collect();
    rows.extend(outs.iter().enumerate().map(|(j, o)| LayerRow {
        tensor: o.clone(),
        scale: 0.0,
        max_abs: 0.0,
        threshold: 0.0,
        clipped_pct: 0.0,
        local_sqnr_db: f64::NAN,
        network_sqnr_db: net[k + j].db(),
        kept_float: true,
    }));
    Ok(rows)
}

/// The per-layer table as Markdown.
pub fn layer_table_markdown(rows: &[LayerRow]) -> String {
    let mut s = String::from(
        "| tensor | scale | max abs | threshold | clipped % | local SQNR dB | network SQNR dB |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let float = if r.kept_float && r.scale > 0.0 {
            " (kept float)"
        } else {
            ""
        };
        s.push_str(&format!(
            "| {}{float} | {:.5} | {:.3} | {:.3} | {:.4} | {:.1} | {:.1} |\n",
            r.tensor,
            r.scale,
            r.max_abs,
            r.threshold,
            r.clipped_pct,
            r.local_sqnr_db,
            r.network_sqnr_db
        ));
    }
    s
}

/// Bias correction of the weight rounding (nearest, or `rounded` where given): for each
/// conv, the expected output shift that its int8 weights cause,
/// `delta[c] = sum_{i,kh,kw} (w_q - w)[c,i,kh,kw] * E[x_i]`, with
/// `E[x_i]` the float model's mean of input channel `i` over `images` (borders ignored).
/// It is subtracted from the bias by [`FloatModel::rewrite_corrected`]. Measured on the float
/// network, so corrections do not compound along the network (an empirical per-layer mean
/// shift of the simulation, measured all at once, counts upstream errors twice).
pub fn bias_correction(
    model: &FloatModel,
    images: &[Vec<f32>],
    rounded: Option<&RoundedWeights>,
) -> Result<BiasCorrection, QuantizeError> {
    if images.is_empty() {
        return Err(QuantizeError::EmptySet("bias correction".into()));
    }
    let shape = shape(model)?;
    let graph = model
        .proto()
        .graph
        .as_ref()
        .ok_or_else(|| QuantizeError::Invalid("no graph".into()))?;
    let convs: Vec<&tract_onnx::pb::NodeProto> =
        graph.node.iter().filter(|n| n.op_type == "Conv").collect();
    let mut inputs: Vec<String> = Vec::new();
    for c in &convs {
        let x = &c.input[0];
        if x != model.input_name() && !inputs.contains(x) {
            inputs.push(x.clone());
        }
    }
    let engine = Engine::new(model.proto(), &shape, &inputs)?;
    let in_ch = shape.get(1).copied().unwrap_or(1);
    // Per-channel sums of every conv input (the model input first).
    let mut sums: Vec<Vec<f64>> = Vec::new();
    let mut count = 0u64;
    let progress = Progress::new("bias correction", images.len() as u64);
    for x in images {
        let outs = engine.run(x)?;
        let all = std::iter::once(x.as_slice()).chain(outs.iter().map(Vec::as_slice));
        for (k, v) in all.enumerate() {
            let ch = if k == 0 {
                in_ch
            } else {
                // Channel count from the consuming conv's weights.
                let name = &inputs[k - 1];
                conv_in_channels(model, &convs, name)?
            };
            let per = v.len() / ch.max(1);
            if sums.len() <= k {
                sums.push(vec![0.0; ch]);
            }
            for (c, chunk) in v.chunks_exact(per.max(1)).take(ch).enumerate() {
                sums[k][c] += chunk.iter().map(|v| f64::from(*v)).sum::<f64>() / per as f64;
            }
        }
        count += 1;
        progress.tick();
    }
    let mut out = BiasCorrection::new();
    for c in &convs {
        let k = if c.input[0] == model.input_name() {
            0
        } else {
            1 + inputs.iter().position(|t| *t == c.input[0]).unwrap_or(0)
        };
        let mean: Vec<f64> = sums[k].iter().map(|s| s / count as f64).collect();
        let w = graph
            .initializer
            .iter()
            .find(|t| t.name == c.input[1])
            .ok_or_else(|| QuantizeError::Invalid(format!("conv `{}`: no weights", c.name)))?;
        let kernel = graph::float_data(w)?;
        let m = w.dims.first().copied().unwrap_or(0).max(0) as usize;
        let cin = w.dims.get(1).copied().unwrap_or(0).max(0) as usize;
        let per = kernel.len() / m.max(1);
        let khw = per / cin.max(1);
        let qw = math::conv_weights(rounded, &c.name, &kernel, m)?;
        let groups = mean.len() / cin.max(1);
        let per_group = m / groups.max(1);
        let delta: Vec<f32> = (0..m)
            .map(|oc| {
                let g = oc / per_group.max(1);
                let mut d = 0.0f64;
                for i in 0..cin {
                    let xm = mean.get(g * cin + i).copied().unwrap_or(0.0);
                    for j in 0..khw {
                        let idx = oc * per + i * khw + j;
                        let err = f64::from(qw.values[idx]) * f64::from(qw.scales[oc])
                            - f64::from(kernel[idx]);
                        d += err * xm;
                    }
                }
                d as f32
            })
            .collect();
        out.insert(c.name.clone(), delta);
    }
    Ok(out)
}

/// Input channels of the conv(s) reading `tensor` (its weights' dim 1 times its group).
fn conv_in_channels(
    model: &FloatModel,
    convs: &[&tract_onnx::pb::NodeProto],
    tensor: &str,
) -> Result<usize, QuantizeError> {
    let c = convs
        .iter()
        .find(|c| c.input[0] == tensor)
        .ok_or_else(|| QuantizeError::Invalid(format!("no conv reads `{tensor}`")))?;
    let group = c
        .attribute
        .iter()
        .find(|a| a.name == "group")
        .map_or(1, |a| a.i.max(1)) as usize;
    let w = model
        .proto()
        .graph
        .as_ref()
        .and_then(|g| g.initializer.iter().find(|t| t.name == c.input[1]))
        .ok_or_else(|| QuantizeError::Invalid(format!("conv `{}`: no weights", c.name)))?;
    Ok(w.dims.get(1).copied().unwrap_or(1).max(1) as usize * group)
}
