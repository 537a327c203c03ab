//! Activation range equalization across consecutive convolutions.
//!
//! An int8 activation has one scale for all its channels, so a channel whose values stay
//! far below the tensor's largest gets only a few levels. Between `Conv_a -> Relu ->
//! Conv_b` (optionally through a MaxPool), scaling channel `i` of `Conv_a`'s weights and bias
//! by `s_i > 0` and `Conv_b`'s input column `i` by `1 / s_i` leaves the float function
//! unchanged, because `relu(s x) = s relu(x)` and max pooling commutes with a positive scale.
//! Choosing `s_i = (R / r_i)^alpha` (`r_i`: channel `i`'s largest value on calibration
//! images, `R`: the tensor's) lifts the weak channels towards the strong ones. `Conv_a` keeps
//! its precision (its weights are quantized per output channel, which a row scale does not
//! change); `Conv_b` pays with relatively coarser weights on the lifted columns, which is why
//! `alpha` < 1 balances the two.

use std::collections::HashMap;

use tract_onnx::pb::{GraphProto, TensorProto};

use crate::engine::Engine;
use crate::error::QuantizeError;
use crate::graph::{float_data, readers, FloatModel};
use crate::Progress;

/// One equalized activation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Equalized {
    /// The Relu output whose channels were rescaled.
    pub tensor: String,
    /// Smallest and largest channel scale applied.
    pub min_scale: f32,
    /// See `min_scale`.
    pub max_scale: f32,
    /// Ratio of the largest to the median channel range, before and after.
    pub spread_before: f32,
    /// See `spread_before`.
    pub spread_after: f32,
}

/// A `Conv -> Relu -> [MaxPool] -> Conv...` site.
struct Site {
    producer: String,
    producer_weight: String,
    producer_bias: Option<String>,
    relu_out: String,
    /// Weights of every conv reading the (pooled) activation.
    consumer_weights: Vec<String>,
}

fn attr_i(n: &tract_onnx::pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// Sites where the rescaling is exact: the Relu output (or its only MaxPool's output) is read
/// only by ungrouped convs as their data input, and no weight tensor is shared.
fn sites(graph: &GraphProto) -> Vec<Site> {
    let readers = |t: &str| readers(graph, t);
    let is_output = |t: &str| graph.output.iter().any(|o| o.name == t);
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for conv in graph.node.iter().filter(|n| n.op_type == "Conv") {
        if attr_i(conv, "group").unwrap_or(1) != 1 {
            continue;
        }
        let Some(y) = conv.output.first() else {
            continue;
        };
        let [r] = readers(y)[..] else { continue };
        let relu = &graph.node[r];
        if relu.op_type != "Relu" || is_output(y) {
            continue;
        }
        let Some(t) = relu.output.first() else {
            continue;
        };
        let mut data = t.clone();
        let mut rs = readers(t);
        if let [m] = rs[..] {
            let pool = &graph.node[m];
            if pool.op_type == "MaxPool" && !is_output(t) {
                if let Some(o) = pool.output.first() {
                    data = o.clone();
                    rs = readers(o);
                }
            }
        }
        if rs.is_empty() || is_output(&data) {
            continue;
        }
        let ok = rs.iter().all(|&i| {
            let n = &graph.node[i];
            n.op_type == "Conv"
                && attr_i(n, "group").unwrap_or(1) == 1
                && n.input.first() == Some(&data)
                && n.input.iter().skip(1).all(|w| w != &data)
        });
        if !ok {
            continue;
        }
        let weight = |n: &tract_onnx::pb::NodeProto| n.input.get(1).cloned().unwrap_or_default();
        let consumer_weights: Vec<String> = rs.iter().map(|&i| weight(&graph.node[i])).collect();
        let producer_bias = conv.input.get(2).filter(|b| !b.is_empty()).cloned();
        let private = std::iter::once(weight(conv))
            .chain(producer_bias.iter().cloned())
            .chain(consumer_weights.iter().cloned())
            .all(|w| uses.get(w.as_str()) == Some(&1));
        if !private {
            continue;
        }
        out.push(Site {
            producer: conv.name.clone(),
            producer_weight: weight(conv),
            producer_bias,
            relu_out: t.clone(),
            consumer_weights,
        });
    }
    out
}

fn set_floats(t: &mut TensorProto, v: &[f32]) {
    t.float_data.clear();
    t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
}

fn median(v: &[f32]) -> f32 {
    let mut s: Vec<f32> = v.iter().copied().filter(|x| *x > 0.0).collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(f32::total_cmp);
    s[s.len() / 2]
}

/// Per-channel scales `(R / r_i)^alpha`, clamped to `[1, max_scale]`; 1 for a dead channel.
pub fn channel_scales(ranges: &[f32], alpha: f32, max_scale: f32) -> Vec<f32> {
    let top = ranges.iter().fold(0f32, |m, r| m.max(*r));
    ranges
        .iter()
        .map(|r| {
            if *r > 0.0 && top > 0.0 {
                (top / r).powf(alpha).clamp(1.0, max_scale.max(1.0))
            } else {
                1.0
            }
        })
        .collect()
}

/// The model with its `Conv -> Relu -> Conv` activations equalized (strength `alpha` in
/// [0, 1], channel scales at most `max_scale`), measured on `images`; the same float function.
pub fn equalize(
    model: &FloatModel,
    images: &[Vec<f32>],
    alpha: f32,
    max_scale: f32,
) -> Result<(FloatModel, Vec<Equalized>), QuantizeError> {
    if images.is_empty() {
        return Err(QuantizeError::EmptySet("equalization".into()));
    }
    let mut proto = model.proto().clone();
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| QuantizeError::Invalid("no graph".into()))?;
    let found = sites(graph);
    if found.is_empty() {
        return Ok((model.clone(), Vec::new()));
    }
    let shape = model
        .input_shape()
        .ok_or_else(|| QuantizeError::Invalid("input shape not fixed (besides batch)".into()))?;
    let names: Vec<String> = found.iter().map(|s| s.relu_out.clone()).collect();
    let engine = Engine::new(model.proto(), &shape, &names)?;
    let mut ranges: Vec<Vec<f32>> = Vec::new();
    let progress = Progress::new("equalization ranges", images.len() as u64);
    for x in images {
        for (k, (sh, v)) in engine.run_shaped(x)?.into_iter().enumerate() {
            let c = sh.get(1).copied().unwrap_or(1).max(1);
            let per = v.len() / c;
            if ranges.len() <= k {
                ranges.push(vec![0.0; c]);
            }
            for (r, ch) in ranges[k].iter_mut().zip(v.chunks_exact(per.max(1))) {
                *r = ch.iter().fold(*r, |m, x| m.max(x.abs()));
            }
        }
        progress.tick();
    }
    let index: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let init = |name: &str| -> Result<usize, QuantizeError> {
        index
            .get(name)
            .copied()
            .ok_or_else(|| QuantizeError::Invalid(format!("`{name}` is not an initializer")))
    };
    let mut report = Vec::new();
    for (site, r) in found.iter().zip(&ranges) {
        let s = channel_scales(r, alpha, max_scale);
        let c = s.len();
        let pw = init(&site.producer_weight)?;
        let mut w = float_data(&graph.initializer[pw])?;
        if w.len() % c != 0 || graph.initializer[pw].dims.first() != Some(&(c as i64)) {
            return Err(QuantizeError::Invalid(format!(
                "equalization: `{}` has {c} output channels but weights of shape {:?}",
                site.producer, graph.initializer[pw].dims
            )));
        }
        let per = w.len() / c;
        for (row, si) in w.chunks_exact_mut(per).zip(&s) {
            row.iter_mut().for_each(|v| *v *= si);
        }
        set_floats(&mut graph.initializer[pw], &w);
        if let Some(b) = &site.producer_bias {
            let bi = init(b)?;
            let mut bias = float_data(&graph.initializer[bi])?;
            bias.iter_mut().zip(&s).for_each(|(v, si)| *v *= si);
            set_floats(&mut graph.initializer[bi], &bias);
        }
        for cw in &site.consumer_weights {
            let ci = init(cw)?;
            let dims = graph.initializer[ci].dims.clone();
            let mut w = float_data(&graph.initializer[ci])?;
            let cin = dims.get(1).copied().unwrap_or(0).max(0) as usize;
            if cin != c || dims.len() != 4 {
                return Err(QuantizeError::Invalid(format!(
                    "equalization: `{cw}` reads {cin} channels, `{}` has {c}",
                    site.relu_out
                )));
            }
            let khw = (dims[2] * dims[3]).max(0) as usize;
            for (j, v) in w.iter_mut().enumerate() {
                *v /= s[(j / khw.max(1)) % c];
            }
            set_floats(&mut graph.initializer[ci], &w);
        }
        let after: Vec<f32> = r.iter().zip(&s).map(|(a, b)| a * b).collect();
        let spread = |v: &[f32]| {
            let m = median(v);
            if m > 0.0 {
                v.iter().fold(0f32, |a, b| a.max(*b)) / m
            } else {
                1.0
            }
        };
        report.push(Equalized {
            tensor: site.relu_out.clone(),
            min_scale: s.iter().copied().fold(f32::INFINITY, f32::min),
            max_scale: s.iter().copied().fold(0.0, f32::max),
            spread_before: spread(r),
            spread_after: spread(&after),
        });
    }
    let bytes = crate::encode(&proto);
    let mut out = FloatModel::from_bytes(&bytes)?;
    out.set_encoding(model.encoding());
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_lift_weak_channels_only() {
        let s = channel_scales(&[8.0, 2.0, 0.5, 0.0], 0.5, 3.0);
        assert_eq!(s, [1.0, 2.0, 3.0, 1.0]);
        let full = channel_scales(&[8.0, 2.0], 1.0, 100.0);
        assert_eq!(full, [1.0, 4.0]);
    }
}
