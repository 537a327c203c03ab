//! Data-aware rounding of convolution weights (the GPTQ method of Frantar et al., 2022).
//!
//! Rounding each weight to its nearest int8 level minimises the weights' own error, not the
//! error of the conv's output, and at 8 bits per channel the weight error is most of the
//! int8 model's deviation from float. GPTQ rounds a conv's weights one input column at a time
//! and moves each rounding error onto the columns not yet rounded, in the proportions given
//! by the inverse of the input's second-moment matrix `H = sum x x^T` (`x`: an im2col patch
//! of the float model's input to that conv, over calibration images). That minimises
//! `||(W - Q) X||` instead of `||W - Q||`. Scales stay per channel, `max |w| / 127`, so the
//! file format, the integer kernels and the loader do not change.

use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::prelude::tract_ndarray::{linalg::general_mat_mul, s, Array2, ArrayView2};

use crate::engine::Engine;
use crate::error::QuantizeError;
use crate::graph::{float_data, FloatModel};
use crate::math::{ChannelWeights, RoundedWeights, WEIGHT_QMAX};
use crate::Progress;

/// Settings of [`gptq`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    /// Added to `H`'s diagonal, as a fraction of its mean: keeps `H` invertible where the
    /// calibration patches do not span every input direction.
    pub damp: f64,
    /// Columns rounded between two matrix-product updates of the rest (speed only).
    pub block: usize,
    /// Largest number of output positions per image and conv entering `H` (evenly spread;
    /// bounds the cost of the early, large feature maps).
    pub max_positions: usize,
    /// Round the columns with the largest input energy first, while the most columns are
    /// left to absorb their error.
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            damp: 0.01,
            block: 128,
            max_positions: 1024,
            act_order: false,
        }
    }
}

/// The geometry of one conv, enough to build im2col patches of its input.
#[derive(Debug, Clone)]
struct Geometry {
    name: String,
    input: String,
    weight: String,
    out_channels: usize,
    in_channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// Top, left, bottom, right.
    pads: [usize; 4],
}

impl Geometry {
    /// Patch length: one column of weights per input channel and kernel tap.
    fn k(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }

    fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let span = |n: usize, pad: usize, k: usize, d: usize, st: usize| {
            let full = n + pad;
            let reach = d * (k - 1) + 1;
            if full < reach {
                0
            } else {
                (full - reach) / st + 1
            }
        };
        (
            span(
                h,
                self.pads[0] + self.pads[2],
                self.kernel[0],
                self.dilation[0],
                self.stride[0],
            ),
            span(
                w,
                self.pads[1] + self.pads[3],
                self.kernel[1],
                self.dilation[1],
                self.stride[1],
            ),
        )
    }

    /// Writes the patch at output position (`oy`, `ox`) of a C x H x W input into `row`,
    /// in the weights' column order (channel, kernel row, kernel column); padding reads 0.
    fn patch(&self, x: &[f32], (h, w): (usize, usize), (oy, ox): (usize, usize), row: &mut [f32]) {
        let [kh, kw] = self.kernel;
        let mut i = 0;
        for c in 0..self.in_channels {
            let plane = &x[c * h * w..(c + 1) * h * w];
            for ky in 0..kh {
                let y = (oy * self.stride[0] + ky * self.dilation[0]).checked_sub(self.pads[0]);
                for kx in 0..kw {
                    let xx =
                        (ox * self.stride[1] + kx * self.dilation[1]).checked_sub(self.pads[1]);
                    row[i] = match (y, xx) {
                        (Some(y), Some(xx)) if y < h && xx < w => plane[y * w + xx],
                        _ => 0.0,
                    };
                    i += 1;
                }
            }
        }
    }
}

fn ints(n: &NodeProto, name: &str) -> Option<Vec<usize>> {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.iter().map(|v| (*v).max(0) as usize).collect())
}

/// The convs GPTQ can handle (2-D, one group, explicit padding); others keep nearest
/// rounding, logged.
fn geometries(graph: &GraphProto) -> Vec<Geometry> {
    let mut out = Vec::new();
    for n in graph.node.iter().filter(|n| n.op_type == "Conv") {
        let Some(w) = n
            .input
            .get(1)
            .and_then(|w| graph.initializer.iter().find(|t| &t.name == w))
        else {
            continue;
        };
        let group = n
            .attribute
            .iter()
            .find(|a| a.name == "group")
            .map_or(1, |a| a.i);
        let auto_pad = n
            .attribute
            .iter()
            .find(|a| a.name == "auto_pad")
            .map(|a| String::from_utf8_lossy(&a.s).to_string())
            .unwrap_or_default();
        if w.dims.len() != 4 || group != 1 || !(auto_pad.is_empty() || auto_pad == "NOTSET") {
            log::info!(
                "gptq: `{}` keeps nearest rounding (grouped, not 2-D or auto_pad)",
                n.name
            );
            continue;
        }
        let d = |i: usize| w.dims[i].max(1) as usize;
        let pair = |v: Option<Vec<usize>>| match v.as_deref() {
            Some([a, b]) => [(*a).max(1), (*b).max(1)],
            _ => [1, 1],
        };
        let pads = match ints(n, "pads").as_deref() {
            Some([t, l, b, r]) => [*t, *l, *b, *r],
            _ => [0; 4],
        };
        out.push(Geometry {
            name: n.name.clone(),
            input: n.input[0].clone(),
            weight: w.name.clone(),
            out_channels: d(0),
            in_channels: d(1),
            kernel: [d(2), d(3)],
            stride: pair(ints(n, "strides")),
            dilation: pair(ints(n, "dilations")),
            pads,
        });
    }
    out
}

/// Adds `sum x x^T` over (a spread subset of) the patches of one input to `h`.
fn accumulate(
    g: &Geometry,
    shape: &[usize],
    x: &[f32],
    offset: usize,
    max_positions: usize,
    h: &mut Array2<f32>,
) -> Result<(), QuantizeError> {
    let (c, hh, ww) = match shape {
        [1, c, hh, ww] => (*c, *hh, *ww),
        _ => {
            return Err(QuantizeError::Invalid(format!(
                "gptq: input of `{}` has shape {shape:?}, expected 1 x C x H x W",
                g.name
            )))
        }
    };
    if c != g.in_channels || x.len() != c * hh * ww {
        return Err(QuantizeError::Invalid(format!(
            "gptq: input of `{}` has {c} channels, its weights expect {}",
            g.name, g.in_channels
        )));
    }
    let (oh, ow) = g.out_size(hh, ww);
    let positions = oh * ow;
    if positions == 0 {
        return Ok(());
    }
    let step = positions.div_ceil(max_positions.max(1));
    let first = offset % step;
    let rows = (positions - first).div_ceil(step);
    let k = g.k();
    let mut patches = Array2::<f32>::zeros((rows, k));
    for (r, p) in (first..positions).step_by(step).enumerate() {
        if let Some(row) = patches.row_mut(r).as_slice_mut() {
            g.patch(x, (hh, ww), (p / ow, p % ow), row);
        }
    }
    general_mat_mul(1.0, &patches.t(), &patches, 1.0, h);
    Ok(())
}

/// Dot product in 8 independent lanes so that it vectorises.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Lower Cholesky factor of the symmetric `k x k` row-major matrix `a`, in place (the upper
/// triangle is left as is). `None` when `a` is not positive definite.
fn cholesky_in_place(a: &mut [f64], k: usize) -> Option<()> {
    for i in 0..k {
        let (done, rest) = a.split_at_mut(i * k);
        let row = &mut rest[..k];
        for j in 0..i {
            let lj = &done[j * k..j * k + j + 1];
            let v = (row[j] - dot(&row[..j], &lj[..j])) / lj[j];
            row[j] = v;
        }
        let d = row[i] - dot(&row[..i], &row[..i]);
        if d.is_nan() || d <= 0.0 {
            return None;
        }
        row[i] = d.sqrt();
    }
    Some(())
}

/// The upper-triangular `U` with `H^-1 = U^T U` (row-major), from the symmetric positive
/// definite `h`. Computed without forming `H^-1`: with `J` the order reversal, the lower
/// Cholesky factor `L` of `J H J` gives `U = J L^-1 J`.
pub fn inverse_cholesky_upper(h: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..=i {
            l[i * k + j] = h[(k - 1 - i) * k + (k - 1 - j)];
        }
    }
    cholesky_in_place(&mut l, k)?;
    let mut u = vec![0.0; k * k];
    let mut x = vec![0.0; k];
    for c in 0..k {
        // Column c of L^-1 by forward substitution (zero above row c).
        x[c] = 1.0 / l[c * k + c];
        for i in c + 1..k {
            x[i] = -dot(&l[i * k + c..i * k + i], &x[c..i]) / l[i * k + i];
        }
        for (r, v) in x.iter().enumerate().skip(c) {
            u[(k - 1 - r) * k + (k - 1 - c)] = *v;
        }
    }
    Some(u)
}

/// GPTQ rounding of one kernel (`m` output channels, `k` columns each) against the input
/// second moments `h` (`k x k`, row-major; modified: damped). Scales are the nearest
/// rounding's, `max |w_c| / 127`.
pub fn round_kernel(
    kernel: &[f32],
    m: usize,
    h: &mut [f64],
    opts: &GptqOptions,
) -> Result<ChannelWeights, QuantizeError> {
    let k = kernel.len() / m.max(1);
    if m == 0 || k == 0 || m * k != kernel.len() || h.len() != k * k {
        return Err(QuantizeError::Invalid(format!(
            "gptq: kernel of {} values, {m} channels and a {}-value H do not fit",
            kernel.len(),
            h.len()
        )));
    }
    if let Some(bad) = h.iter().find(|v| !v.is_finite()) {
        return Err(QuantizeError::Invalid(format!(
            "gptq: input statistics hold a non-finite value ({bad}): a calibration image made the float model overflow"
        )));
    }
    if kernel.iter().any(|v| !v.is_finite()) {
        return Err(QuantizeError::Invalid(
            "gptq: the float weights hold a non-finite value".into(),
        ));
    }
    let scales: Vec<f64> = kernel
        .chunks_exact(k)
        .map(|c| {
            let max = c.iter().fold(0f32, |a, v| a.max(v.abs()));
            if max > 0.0 {
                f64::from(max / WEIGHT_QMAX)
            } else {
                1.0
            }
        })
        .collect();
    // A column whose input never varied is rounded alone and takes no error from others.
    for i in 0..k {
        if h[i * k + i] <= 0.0 {
            h[i * k + i] = 1.0;
        }
    }
    if opts.act_order {
        let mut perm: Vec<usize> = (0..k).collect();
        perm.sort_by(|a, b| h[b * k + b].total_cmp(&h[a * k + a]));
        let mut hp = vec![0.0; k * k];
        for (i, pi) in perm.iter().enumerate() {
            for (j, pj) in perm.iter().enumerate() {
                hp[i * k + j] = h[pi * k + pj];
            }
        }
        let kp: Vec<f32> = kernel
            .chunks_exact(k)
            .flat_map(|ch| perm.iter().map(move |p| ch[*p]))
            .collect();
        let inner = GptqOptions {
            act_order: false,
            ..*opts
        };
        let q = round_kernel(&kp, m, &mut hp, &inner)?;
        let mut values = vec![0i8; m * k];
        for c in 0..m {
            for (i, p) in perm.iter().enumerate() {
                values[c * k + p] = q.values[c * k + i];
            }
        }
        return Ok(ChannelWeights {
            values,
            scales: q.scales,
        });
    }
    let mean = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
    let mut damp = opts.damp.max(1e-6) * mean;
    let u = loop {
        for i in 0..k {
            h[i * k + i] += damp;
        }
        if let Some(u) = inverse_cholesky_upper(h, k) {
            break u;
        }
        if damp > 1e3 * mean {
            return Err(QuantizeError::Invalid(
                "gptq: input second-moment matrix not positive definite even when damped".into(),
            ));
        }
        damp *= 10.0;
    };
    // Columns as rows: each column of W is one contiguous row here.
    let mut wt = Array2::<f64>::zeros((k, m));
    for (c, ch) in kernel.chunks_exact(k).enumerate() {
        for (i, v) in ch.iter().enumerate() {
            wt[[i, c]] = f64::from(*v);
        }
    }
    let mut values = vec![0i8; m * k];
    let qmax = f64::from(WEIGHT_QMAX);
    let block = opts.block.max(1);
    let mut e = vec![0.0f64; m];
    for b0 in (0..k).step_by(block) {
        let b1 = (b0 + block).min(k);
        let mut err = Array2::<f64>::zeros((b1 - b0, m));
        for i in b0..b1 {
            let d = u[i * k + i];
            for (c, w) in wt.row(i).iter().enumerate() {
                let q = (w / scales[c]).round_ties_even().clamp(-qmax, qmax);
                values[c * k + i] = q as i8;
                e[c] = (w - q * scales[c]) / d;
            }
            let ev = tract_onnx::prelude::tract_ndarray::ArrayView1::from(&e[..]);
            for j in i + 1..b1 {
                let f = u[i * k + j];
                if f != 0.0 {
                    wt.row_mut(j).scaled_add(-f, &ev);
                }
            }
            err.row_mut(i - b0).assign(&ev);
        }
        if b1 < k {
            let ub = ArrayView2::from_shape((k, k), &u[..])
                .map_err(|e| QuantizeError::Invalid(format!("gptq: {e}")))?;
            let ub = ub.slice(s![b0..b1, b1..]);
            let mut rest = wt.slice_mut(s![b1.., ..]);
            general_mat_mul(-1.0, &ub.t(), &err, 1.0, &mut rest);
        }
    }
    Ok(ChannelWeights {
        values,
        scales: scales.iter().map(|s| *s as f32).collect(),
    })
}

/// GPTQ-rounds every conv of `model` against its float inputs on `images`. Convs it cannot
/// handle are left out (nearest rounding). Accumulation runs on up to 4 threads.
pub fn gptq(
    model: &FloatModel,
    images: &[Vec<f32>],
    opts: &GptqOptions,
) -> Result<RoundedWeights, QuantizeError> {
    if images.is_empty() {
        return Err(QuantizeError::EmptySet("gptq".into()));
    }
    let graph = model
        .proto()
        .graph
        .as_ref()
        .ok_or_else(|| QuantizeError::Invalid("no graph".into()))?;
    let geoms = geometries(graph);
    let shape = model
        .input_shape()
        .ok_or_else(|| QuantizeError::Invalid("input shape not fixed (besides batch)".into()))?;
    let mut inputs: Vec<String> = Vec::new();
    for g in &geoms {
        if g.input != model.input_name() && !inputs.contains(&g.input) {
            inputs.push(g.input.clone());
        }
    }
    let slot = |name: &str| -> usize {
        if name == model.input_name() {
            0
        } else {
            1 + inputs.iter().position(|t| t == name).unwrap_or(0)
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(images.len());
    let per = images.len().div_ceil(threads);
    let progress = Progress::new("gptq statistics", images.len() as u64);
    let partial: Vec<Result<Vec<Array2<f32>>, QuantizeError>> = std::thread::scope(|sc| {
        let handles: Vec<_> = images
            .chunks(per)
            .enumerate()
            .map(|(t, chunk)| {
                let (geoms, inputs, shape, progress) = (&geoms, &inputs, &shape, &progress);
                sc.spawn(move || -> Result<Vec<Array2<f32>>, QuantizeError> {
                    let engine = Engine::new(model.proto(), shape, inputs)?;
                    let mut hs: Vec<Array2<f32>> = geoms
                        .iter()
                        .map(|g| Array2::zeros((g.k(), g.k())))
                        .collect();
                    for (n, x) in chunk.iter().enumerate() {
                        let outs = engine.run_shaped(x)?;
                        for (g, h) in geoms.iter().zip(hs.iter_mut()) {
                            let s = slot(&g.input);
                            let (sh, v) = if s == 0 {
                                (shape.as_slice(), x.as_slice())
                            } else {
                                let o = &outs[s - 1];
                                (o.0.as_slice(), o.1.as_slice())
                            };
                            accumulate(g, sh, v, t * per + n, opts.max_positions, h)?;
                        }
                        progress.tick();
                    }
                    Ok(hs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(QuantizeError::Invalid("gptq worker panicked".into())))
            })
            .collect()
    });
    let mut sums: Option<Vec<Array2<f32>>> = None;
    for p in partial {
        let p = p?;
        match &mut sums {
            None => sums = Some(p),
            Some(s) => {
                for (a, b) in s.iter_mut().zip(p) {
                    *a += &b;
                }
            }
        }
    }
    let sums = sums.unwrap_or_default();
    let jobs: Vec<(&Geometry, &Array2<f32>)> = geoms.iter().zip(&sums).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let solve = Progress::counted("gptq rounding", jobs.len() as u64, "convolutions");
    let results: Vec<Result<Vec<(String, ChannelWeights)>, QuantizeError>> =
        std::thread::scope(|sc| {
            let handles: Vec<_> = (0..threads.min(jobs.len()).max(1))
                .map(|_| {
                    let (jobs, next, solve) = (&jobs, &next, &solve);
                    sc.spawn(move || {
                        let mut done = Vec::new();
                        loop {
                            let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((g, h)) = jobs.get(j) else {
                                return Ok(done);
                            };
                            let w = graph
                                .initializer
                                .iter()
                                .find(|t| t.name == g.weight)
                                .ok_or_else(|| {
                                    QuantizeError::Invalid(format!("conv `{}`: no weights", g.name))
                                })?;
                            let kernel = float_data(w)?;
                            let mut hd: Vec<f64> = h.iter().map(|v| f64::from(*v)).collect();
                            let q = round_kernel(&kernel, g.out_channels, &mut hd, opts).map_err(
                                |e| QuantizeError::Invalid(format!("conv `{}`: {e}", g.name)),
                            )?;
                            done.push((g.name.clone(), q));
                            solve.tick();
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(QuantizeError::Invalid("gptq worker panicked".into()))
                    })
                })
                .collect()
        });
    let mut out = RoundedWeights::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::quantize_weights;

    /// Deterministic values uniform in (-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f64> {
        crate::calib::tests::uniforms(n, seed)
            .iter()
            .map(|u| 2.0 * u - 1.0)
            .collect()
    }

    #[test]
    fn inverse_cholesky_factor_inverts_h() {
        let k = 37;
        let a = noise(k * k, 3);
        // H = A A^T + I: symmetric positive definite.
        let mut h = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] = dot(&a[i * k..(i + 1) * k], &a[j * k..(j + 1) * k])
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let u = inverse_cholesky_upper(&h, k).expect("positive definite");
        for i in 0..k {
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0, "U is upper triangular");
            }
        }
        // (U^T U) H = I.
        for i in 0..k {
            for j in 0..k {
                let mut v = 0.0;
                for r in 0..k {
                    let uti: f64 = (0..k).map(|c| u[c * k + i] * u[c * k + r]).sum();
                    v += uti * h[r * k + j];
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-8, "({i},{j}) = {v}");
            }
        }
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert!(inverse_cholesky_upper(&bad, 2).is_none());
        bad[0] = 0.0;
        assert!(inverse_cholesky_upper(&bad, 2).is_none());
    }

    /// Output error `sum ((W - Q) x)^2` over the patches.
    fn output_error(kernel: &[f32], q: &ChannelWeights, x: &[f64], k: usize) -> f64 {
        let m = q.scales.len();
        let mut e = 0.0;
        for p in x.chunks_exact(k) {
            for c in 0..m {
                let d: f64 = (0..k)
                    .map(|i| {
                        let w = f64::from(kernel[c * k + i]);
                        let wq = f64::from(q.values[c * k + i]) * f64::from(q.scales[c]);
                        (w - wq) * p[i]
                    })
                    .sum();
                e += d * d;
            }
        }
        e
    }

    #[test]
    fn gptq_beats_nearest_on_correlated_inputs_and_keeps_scales() {
        let (m, k, n) = (6, 48, 400);
        // Correlated inputs: a few shared factors plus a little independent noise, like
        // neighbouring pixels and channels of a feature map.
        let f = noise(n * 4, 11);
        let mix = noise(4 * k, 12);
        let own = noise(n * k, 13);
        let x: Vec<f64> = (0..n * k)
            .map(|idx| {
                let (p, i) = (idx / k, idx % k);
                (0..4).map(|j| f[p * 4 + j] * mix[j * k + i]).sum::<f64>() + 0.05 * own[idx]
            })
            .collect();
        let kernel: Vec<f32> = noise(m * k, 21).iter().map(|v| *v as f32 * 0.3).collect();
        let mut h = vec![0.0; k * k];
        for p in x.chunks_exact(k) {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += p[i] * p[j];
                }
            }
        }
        let nearest = quantize_weights(&kernel, m);
        for act_order in [false, true] {
            let opts = GptqOptions {
                act_order,
                ..Default::default()
            };
            let g = round_kernel(&kernel, m, &mut h.clone(), &opts).expect("rounds");
            check_rounding(&kernel, &nearest, &g, &x, k);
        }
    }

    fn check_rounding(
        kernel: &[f32],
        nearest: &ChannelWeights,
        g: &ChannelWeights,
        x: &[f64],
        k: usize,
    ) {
        let m = nearest.scales.len();
        assert_eq!(g.scales, nearest.scales, "same per-channel scales");
        assert!(g.values.iter().all(|v| (-127..=127).contains(v)));
        let (en, eg) = (
            output_error(kernel, nearest, x, k),
            output_error(kernel, g, x, k),
        );
        assert!(eg < 0.5 * en, "gptq error {eg} vs nearest {en}");
        // It moves weights by whole levels, not arbitrarily: most stay within one level.
        let moved = g
            .values
            .iter()
            .zip(&nearest.values)
            .filter(|(a, b)| (i16::from(**a) - i16::from(**b)).abs() > 1)
            .count();
        assert!(
            moved < m * k / 4,
            "{moved} weights moved by more than one level"
        );
    }

    #[test]
    fn non_finite_statistics_or_weights_are_refused() {
        let mut h = vec![1.0, 0.0, 0.0, f64::NAN];
        let e = round_kernel(&[0.5, -0.5], 1, &mut h, &GptqOptions::default()).unwrap_err();
        assert!(e.to_string().contains("non-finite"), "{e}");
        let mut h = vec![1.0, 0.0, 0.0, 1.0];
        let e =
            round_kernel(&[f32::INFINITY, 0.5], 1, &mut h, &GptqOptions::default()).unwrap_err();
        assert!(e.to_string().contains("weights"), "{e}");
    }

    #[test]
    fn patches_follow_the_weight_layout_and_padding() {
        let g = Geometry {
            name: "c".into(),
            input: "x".into(),
            weight: "w".into(),
            out_channels: 1,
            in_channels: 2,
            kernel: [3, 3],
            stride: [2, 2],
            dilation: [1, 1],
            pads: [1, 1, 1, 1],
        };
        // 2 x 4 x 4 input whose value encodes (channel, row, column).
        let x: Vec<f32> = (0..32)
            .map(|i| (100 * (i / 16) + 10 * ((i % 16) / 4) + i % 4) as f32 + 1.0)
            .collect();
        assert_eq!(g.out_size(4, 4), (2, 2));
        let mut row = vec![0f32; g.k()];
        g.patch(&x, (4, 4), (0, 0), &mut row);
        // Top-left patch: the first kernel row and column fall on padding.
        assert_eq!(&row[..9], &[0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 11.0, 12.0]);
        assert_eq!(
            &row[9..],
            &[0.0, 0.0, 0.0, 0.0, 101.0, 102.0, 0.0, 111.0, 112.0]
        );
        g.patch(&x, (4, 4), (1, 1), &mut row);
        assert_eq!(
            &row[..9],
            &[12.0, 13.0, 14.0, 22.0, 23.0, 24.0, 32.0, 33.0, 34.0]
        );
        let mut h = Array2::<f32>::zeros((18, 18));
        accumulate(&g, &[1, 2, 4, 4], &x, 0, 1024, &mut h).expect("accumulates");
        // Diagonal entry of the centre tap of channel 0: sum of squares of x[0, 2i, 2j].
        let want: f32 = [1.0f32, 3.0, 21.0, 23.0].iter().map(|v| v * v).sum();
        assert_eq!(h[[4, 4]], want);
        assert!(accumulate(&g, &[1, 3, 4, 4], &[0.0; 48], 0, 1024, &mut h).is_err());
    }
}
