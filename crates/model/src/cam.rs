//! Class-activation maps (CAM) of a globally pooled + linear head, or of a classifier on
//! every cell pooled by log-mean-exp.
//!
//! The renal model ends in `features` (N x C x H x W) -> GlobalAveragePool -> Gemm -> Softmax.
//! Pooling and the linear layer are both linear, so they commute: the logit of class k is the
//! spatial mean of `CAM_k(h, w) = sum_c W[k, c] * F[c, h, w]` plus the bias `b_k`. The map
//! therefore costs one small matrix product on the `features` output the network already
//! computes, and its mean is the logit exactly (tests check this against tract's output).
//!
//! A head that also reads each channel's global maximum (`Concat(GAP, GlobalMaxPool)`,
//! `renalscan train --pooling avg-max`) adds `sum_c M[k, c] * max_hw F[c]`. Each maximum is the
//! value of one cell, so its term is placed on that cell (times `H W`, as the map is read by
//! its mean): the map's mean is still the logit exactly, and the maximum's evidence sits
//! where the finding is.
//!
//! A per-cell head (`renalscan train --head cells`) classifies each cell,
//! `z_k(cell) = w2 . relu(w1 . F[:, cell] + b1)`, and pools by log-mean-exp. Its logit splits
//! exactly over the cells by each cell's share `a` of the smooth maximum: `lse(z_k) =
//! sum_cells a z_k + H(a)`, so cell c carries `HW a_c z_k(c)` and the shares' entropy `H(a)`,
//! which has no location, joins the bias. The map's mean plus bias is again the logit, and it
//! lights the cells whose verdicts decided. It costs the head's two layers on every cell
//! (about 26 M multiply-adds for 1,024 channels, 128 hidden, 196 cells), computed only when a
//! map is drawn. A head that also reads the map's channel means (`--cell-context`) adds
//! `wc . mean_cells(F)` to `b1`: one shift per image, the same for every cell, so the
//! split over cells is unchanged.
//!
//! The head's weights are read from the same ONNX file the device runs, so the map cannot
//! drift from the model. Temperature scaling is folded into a pooled head's weights by the
//! trainer (`W / T`, `b / T`; a per-cell head keeps it as a node after its pooling): a
//! positive scale that changes the map's units (calibrated logits) but
//! not its shape, so display normalisation removes it. The bias is left out of the spatial
//! values (it has no location; spreading `b_k / HW` over every cell would only shift the map)
//! and kept separately in [`ActivationMap::bias`] for the logit identity.
//!
//! Which map answers "why abnormal?": [`HeadWeights::abnormal_map`] combines the class maps
//! with the gradient of the abnormal log-odds `log(p_abnormal / p_normal)` with respect to the
//! logits: `+p_k / p_abnormal` for each abnormal class k and `-1` for normal. Its mean plus
//! bias is that linearised log-odds, so its positive part is where the frame pushes the
//! decision towards "abnormal", whichever abnormality wins. A single class's map is
//! [`HeadWeights::class_map`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb::{tensor_proto::DataType, GraphProto, ModelProto, NodeProto, TensorProto};

/// The renal model's probability output, whose head is looked up by default.
pub const PROBS: &str = "probs";

/// Longest chain of pass-through nodes followed between two parts of the head.
const MAX_HOPS: usize = 16;

/// Why head weights could not be read or a map could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum CamError {
    /// The model file could not be read.
    #[error("cannot read model {path}: {source}")]
    Read {
        /// The model file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not an ONNX protobuf.
    #[error("model {path} is not an ONNX file: {reason}")]
    Decode {
        /// The model file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// No global-average-pool + linear head, nor a per-cell head, feeds the requested output.
    #[error("model {path}: no GAP + linear head or per-cell head feeds output {output:?} ({reason}); class-activation maps need one")]
    NoHead {
        /// The model file.
        path: PathBuf,
        /// The output searched from.
        output: String,
        /// Where the search stopped.
        reason: String,
    },
    /// The weights passed to [`HeadWeights::new`] are inconsistent.
    #[error("head weights: {0}")]
    Weights(String),
    /// The feature map does not fit the head.
    #[error("features of shape {shape:?} ({len} values) do not fit a head over {channels} channels (want [1, {channels}, H, W])")]
    FeatureShape {
        /// Shape given.
        shape: Vec<usize>,
        /// Values given.
        len: usize,
        /// Channels the head expects.
        channels: usize,
    },
    /// A class index or coefficient vector does not fit the head.
    #[error("{what}: the head has {classes} classes")]
    Classes {
        /// What was wrong.
        what: String,
        /// Classes of the head.
        classes: usize,
    },
}

/// The head on the feature map: either the linear layer on the pooled features,
/// `logits = W * mean_hw(F) + M * max_hw(F) + b` (no `M` for an average-only head), or a
/// classifier on every cell pooled by log-mean-exp (see [`HeadWeights::is_per_cell`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadWeights {
    classes: usize,
    channels: usize,
    layers: Layers,
    /// Per class: the linear bias, or for a cell head everything constant in the pooled
    /// logit (the last layer's bias, minus log(cells), times the scale).
    bias: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
enum Layers {
    Pooled {
        /// Row-major `classes x channels`, on the channel means.
        weight: Vec<f32>,
        /// Row-major `classes x channels`, on the channel maxima.
        max_weight: Option<Vec<f32>>,
    },
    Cells(CellLayers),
}

/// `logit_k = scale * lse_cells(w2 . relu(w1 . F[:, cell] + b1)) + bias_k`.
#[derive(Debug, Clone, PartialEq)]
struct CellLayers {
    hidden: usize,
    /// Row-major `hidden x channels`.
    w1: Vec<f32>,
    b1: Vec<f32>,
    /// Row-major `hidden x channels` on the map's channel means, added to every cell's
    /// hidden layer (`renalscan train --cell-context`).
    context: Option<Vec<f32>>,
    /// Row-major `classes x hidden`.
    w2: Vec<f32>,
    /// The inverse temperature.
    scale: f32,
}

/// A spatial map (row-major `height x width`) plus the bias that completes its logit.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationMap {
    /// Columns (7 for a 224 input).
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Per-cell contribution in logit units.
    pub values: Vec<f32>,
    /// The head's bias for this combination (not spatial).
    pub bias: f32,
}

impl ActivationMap {
    /// Spatial mean plus bias: the (combined) logit the map explains.
    pub fn score(&self) -> f32 {
        if self.values.is_empty() {
            return self.bias;
        }
        self.values.iter().sum::<f32>() / self.values.len() as f32 + self.bias
    }

    /// Display form in `[0, 1]`: the positive part divided by its maximum, so 1 marks the
    /// strongest evidence for the class and 0 marks none (negative evidence is not shown;
    /// min-max scaling would light up the "least negative" cell of a map with no support).
    /// All zero when no cell is positive.
    pub fn normalised(&self) -> Vec<f32> {
        let max = self.values.iter().copied().fold(0.0f32, f32::max);
        if max <= 0.0 || !max.is_finite() {
            return vec![0.0; self.values.len()];
        }
        self.values.iter().map(|&v| v.max(0.0) / max).collect()
    }
}

/// Logit-space coefficients of the abnormal log-odds `log(p_abnormal / p_normal)`:
/// `d/dz_k` is `p_k / p_abnormal` for abnormal k and `-1` for `normal`. When `p_abnormal` is
/// zero (underflow) the abnormal classes share equally.
pub fn abnormal_coefficients(probs: &[f32], normal: usize) -> Vec<f32> {
    let p_abn: f32 = probs
        .iter()
        .enumerate()
        .filter(|&(k, _)| k != normal)
        .map(|(_, &p)| p.max(0.0))
        .sum();
    let n_abn = probs.len().saturating_sub(1).max(1) as f32;
    probs
        .iter()
        .enumerate()
        .map(|(k, &p)| {
            if k == normal {
                -1.0
            } else if p_abn > 0.0 && p_abn.is_finite() {
                p.max(0.0) / p_abn
            } else {
                1.0 / n_abn
            }
        })
        .collect()
}

impl HeadWeights {
    /// Head from explicit weights (row-major `classes x channels`) and bias (`classes`).
    pub fn new(
        classes: usize,
        channels: usize,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Result<Self, CamError> {
        if classes == 0 || channels == 0 {
            return Err(CamError::Weights(format!(
                "empty head ({classes} classes, {channels} channels)"
            )));
        }
        if weight.len() != classes * channels || bias.len() != classes {
            return Err(CamError::Weights(format!(
                "{} weights and {} biases for {classes} classes x {channels} channels",
                weight.len(),
                bias.len()
            )));
        }
        Ok(Self {
            classes,
            channels,
            layers: Layers::Pooled {
                weight,
                max_weight: None,
            },
            bias,
        })
    }

    /// The same head also reading each channel's global maximum with `max_weight`
    /// (row-major `classes x channels`).
    pub fn with_max_weights(mut self, max_weight: Vec<f32>) -> Result<Self, CamError> {
        if max_weight.len() != self.classes * self.channels {
            return Err(CamError::Weights(format!(
                "{} max-pool weights for {} classes x {} channels",
                max_weight.len(),
                self.classes,
                self.channels
            )));
        }
        match &mut self.layers {
            Layers::Pooled { max_weight: m, .. } => *m = Some(max_weight),
            Layers::Cells(_) => {
                return Err(CamError::Weights(
                    "a per-cell head has no max-pool weights".into(),
                ))
            }
        }
        Ok(self)
    }

    /// A classifier on every cell of the map, pooled by log-mean-exp (the exported
    /// `--head cells`): `logit_k = scale * (log(sum_cells(exp(z_k))) + b2_k) - offset` with
    /// `z = w2 . relu(w1 . F[:, cell] + b1)`; `w1` row-major `hidden x channels`, `w2`
    /// row-major `classes x hidden`, `scale` the inverse temperature, `offset` what the graph
    /// subtracts in logit units (`log(cells) * scale` for the exporter's log-mean-exp).
    #[allow(clippy::too_many_arguments)]
    pub fn per_cell(
        channels: usize,
        hidden: usize,
        w1: Vec<f32>,
        b1: Vec<f32>,
        w2: Vec<f32>,
        b2: &[f32],
        offset: f32,
        scale: f32,
    ) -> Result<Self, CamError> {
        let classes = b2.len();
        if classes == 0
            || channels == 0
            || hidden == 0
            || w1.len() != hidden * channels
            || b1.len() != hidden
            || w2.len() != classes * hidden
            || !(scale.is_finite() && scale > 0.0)
            || !offset.is_finite()
        {
            return Err(CamError::Weights(format!(
                "per-cell head: {} + {} first-layer values for {hidden} x {channels}, {} \
                 second-layer values for {classes} x {hidden}, scale {scale}",
                w1.len(),
                b1.len(),
                w2.len()
            )));
        }
        Ok(Self {
            classes,
            channels,
            layers: Layers::Cells(CellLayers {
                hidden,
                w1,
                b1,
                context: None,
                w2,
                scale,
            }),
            bias: b2.iter().map(|b| b * scale - offset).collect(),
        })
    }

    /// The same per-cell head whose hidden layer also reads the map's channel means through
    /// `context` (row-major `hidden x channels`): an image's context shifts every cell's
    /// hidden units alike, so the map still lights the cells whose verdicts decided.
    pub fn with_context(mut self, context: Vec<f32>) -> Result<Self, CamError> {
        let channels = self.channels;
        match &mut self.layers {
            Layers::Cells(cl) if context.len() == cl.hidden * channels => {
                cl.context = Some(context);
                Ok(self)
            }
            Layers::Cells(cl) => Err(CamError::Weights(format!(
                "{} context weights for {} hidden x {channels} channels",
                context.len(),
                cl.hidden
            ))),
            Layers::Pooled { .. } => Err(CamError::Weights(
                "a pooled head has no per-cell context".into(),
            )),
        }
    }

    /// True for a classifier on every cell (whose map is built from each cell's share of
    /// the smooth maximum, see [`HeadWeights::map`]), false for a pooled linear head.
    pub fn is_per_cell(&self) -> bool {
        matches!(self.layers, Layers::Cells(_))
    }

    /// Reads the head feeding [`PROBS`] from an ONNX file (float, or int8 with a float head).
    pub fn from_onnx(path: &Path) -> Result<Self, CamError> {
        Self::from_onnx_output(path, PROBS)
    }

    /// Reads the head feeding `output` (e.g. `logits` of the ImageNet backbone export).
    pub fn from_onnx_output(path: &Path, output: &str) -> Result<Self, CamError> {
        let bytes = std::fs::read(path).map_err(|source| CamError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_onnx_bytes(&bytes, path, output)
    }

    /// Reads the head feeding `output` from model bytes in memory (a verified bundle's);
    /// `path` only names the model in errors.
    pub fn from_onnx_bytes(bytes: &[u8], path: &Path, output: &str) -> Result<Self, CamError> {
        let model = ModelProto::decode(bytes).map_err(|e| CamError::Decode {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_proto(&model, path, output)
    }

    /// Reads the head feeding `output` from a decoded model; `path` only names it in errors.
    pub fn from_proto(model: &ModelProto, path: &Path, output: &str) -> Result<Self, CamError> {
        let no_head = |reason: String| CamError::NoHead {
            path: path.to_path_buf(),
            output: output.to_string(),
            reason,
        };
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| no_head("the file has no graph".into()))?;
        let head = Graph::new(graph).head(output).map_err(no_head)?;
        log::debug!(
            "CAM head of {}: {} classes x {} channels",
            path.display(),
            head.classes,
            head.channels
        );
        Ok(head)
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Input channels (2048 for ResNet-50).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Weights of class `k` over the channel means (the effective ones: temperature folded
    /// in); `None` for a per-cell head.
    pub fn weights_of(&self, k: usize) -> Option<&[f32]> {
        match &self.layers {
            Layers::Pooled { weight, .. } => {
                (k < self.classes).then(|| &weight[k * self.channels..(k + 1) * self.channels])
            }
            Layers::Cells(_) => None,
        }
    }

    /// Weights of class `k` over the channel maxima, for a head that reads them.
    pub fn max_weights_of(&self, k: usize) -> Option<&[f32]> {
        let Layers::Pooled {
            max_weight: Some(m),
            ..
        } = &self.layers
        else {
            return None;
        };
        (k < self.classes).then(|| &m[k * self.channels..(k + 1) * self.channels])
    }

    /// A per-cell head's raw cell logits `z` (`classes x cells`, before pooling, scale and
    /// bias).
    fn cell_logits(cl: &CellLayers, classes: usize, features: &[f32], hw: usize) -> Vec<f32> {
        let channels = features.len() / hw;
        // This image's hidden bias: the layer's, plus its context where the head reads one.
        let mut b1 = cl.b1.clone();
        if let Some(ctx) = &cl.context {
            let means: Vec<f32> = features
                .chunks_exact(hw)
                .map(|plane| plane.iter().sum::<f32>() / hw as f32)
                .collect();
            for (b, row) in b1.iter_mut().zip(ctx.chunks_exact(channels)) {
                *b += row.iter().zip(&means).map(|(w, m)| w * m).sum::<f32>();
            }
        }
        let mut hidden = vec![0f32; cl.hidden * hw];
        for (j, (row, &b)) in cl.w1.chunks_exact(channels).zip(&b1).enumerate() {
            let out = &mut hidden[j * hw..(j + 1) * hw];
            out.iter_mut().for_each(|v| *v = b);
            for (&w, plane) in row.iter().zip(features.chunks_exact(hw)) {
                if w != 0.0 {
                    for (o, &f) in out.iter_mut().zip(plane) {
                        *o += w * f;
                    }
                }
            }
            out.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        let mut z = vec![0f32; classes * hw];
        for (k, row) in cl.w2.chunks_exact(cl.hidden).enumerate() {
            let out = &mut z[k * hw..(k + 1) * hw];
            for (&w, plane) in row.iter().zip(hidden.chunks_exact(hw)) {
                for (o, &h) in out.iter_mut().zip(plane) {
                    *o += w * h;
                }
            }
        }
        z
    }

    /// Biases, one per class.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Spatial size `(height, width)` of a `[1, C, H, W]` (or `[C, H, W]`) feature map.
    fn spatial(&self, features: &[f32], shape: &[usize]) -> Result<(usize, usize), CamError> {
        let bad = || CamError::FeatureShape {
            shape: shape.to_vec(),
            len: features.len(),
            channels: self.channels,
        };
        let (c, h, w) = match *shape {
            [1, c, h, w] | [c, h, w] => (c, h, w),
            _ => return Err(bad()),
        };
        if c != self.channels || h == 0 || w == 0 || features.len() != c * h * w {
            return Err(bad());
        }
        Ok((h, w))
    }

    /// What the model's head computes from `features` (logits before softmax): the pooling,
    /// then the linear layer; or the cell classifier, then its pooling.
    pub fn logits(&self, features: &[f32], shape: &[usize]) -> Result<Vec<f32>, CamError> {
        let (h, w) = self.spatial(features, shape)?;
        let hw = h * w;
        let (weight, max_weight) = match &self.layers {
            Layers::Pooled { weight, max_weight } => (weight, max_weight),
            Layers::Cells(cl) => {
                let z = Self::cell_logits(cl, self.classes, features, hw);
                return Ok(z
                    .chunks_exact(hw)
                    .zip(&self.bias)
                    .map(|(zk, b)| cl.scale * log_sum_exp(zk) + b)
                    .collect());
            }
        };
        let pooled: Vec<f32> = features
            .chunks_exact(hw)
            .map(|plane| plane.iter().sum::<f32>() / hw as f32)
            .collect();
        // Maxima only for a head that reads them: an average-only head is the device's usual.
        let maxima: Vec<f32> = match max_weight {
            Some(_) => features
                .chunks_exact(hw)
                .map(|plane| plane.iter().copied().fold(f32::NEG_INFINITY, f32::max))
                .collect(),
            None => Vec::new(),
        };
        let c = self.channels;
        Ok((0..self.classes)
            .map(|k| {
                let row = &weight[k * c..(k + 1) * c];
                let avg: f32 = row.iter().zip(&pooled).map(|(a, b)| a * b).sum();
                let max: f32 = max_weight.as_ref().map_or(0.0, |m| {
                    m[k * c..(k + 1) * c]
                        .iter()
                        .zip(&maxima)
                        .map(|(a, b)| a * b)
                        .sum()
                });
                avg + max + self.bias[k]
            })
            .collect())
    }

    /// The map of the logit combination `sum_k coeffs[k] * z_k` (one product over channels).
    pub fn map(
        &self,
        features: &[f32],
        shape: &[usize],
        coeffs: &[f32],
    ) -> Result<ActivationMap, CamError> {
        if coeffs.len() != self.classes {
            return Err(CamError::Classes {
                what: format!("{} coefficients", coeffs.len()),
                classes: self.classes,
            });
        }
        let (h, w) = self.spatial(features, shape)?;
        let hw = h * w;
        let (weight, max_weight) = match &self.layers {
            Layers::Pooled { weight, max_weight } => (weight, max_weight),
            Layers::Cells(cl) => return Ok(self.cell_map(cl, features, (h, w), coeffs)),
        };
        let mut eff = vec![0.0f32; self.channels];
        for (row, &g) in weight.chunks_exact(self.channels).zip(coeffs) {
            if g != 0.0 {
                for (e, &v) in eff.iter_mut().zip(row) {
                    *e += g * v;
                }
            }
        }
        let mut values = vec![0.0f32; hw];
        for (plane, &e) in features.chunks_exact(hw).zip(&eff) {
            for (v, &f) in values.iter_mut().zip(plane) {
                *v += e * f;
            }
        }
        if let Some(m) = max_weight {
            // Each channel's maximum term lands on its (first) maximal cell, scaled by the
            // cell count so that the map's mean stays the logit.
            for (c, plane) in features.chunks_exact(hw).enumerate() {
                let e: f32 = coeffs
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| **g != 0.0)
                    .map(|(k, g)| g * m[k * self.channels + c])
                    .sum();
                if e == 0.0 {
                    continue;
                }
                let mut at = 0;
                for (i, &v) in plane.iter().enumerate() {
                    if v > plane[at] {
                        at = i;
                    }
                }
                values[at] += e * plane[at] * hw as f32;
            }
        }
        let bias = coeffs.iter().zip(&self.bias).map(|(g, b)| g * b).sum();
        Ok(ActivationMap {
            width: w,
            height: h,
            values,
            bias,
        })
    }

    /// A per-cell head's map. Each class's pooled value `lse(z)` splits exactly into cells by
    /// their share of the smooth maximum, `a = softmax_cells(z)`: `lse(z) = sum_c a_c z_c +
    /// H(a)`, `H` the shares' entropy. So cell c carries `HW a_c z_c` (the map is read by its
    /// mean) and `H(a)`, which has no location, joins the bias: the map's mean plus bias is
    /// still the logit, and its mass sits on the cells whose verdicts decided.
    fn cell_map(
        &self,
        cl: &CellLayers,
        features: &[f32],
        (h, w): (usize, usize),
        coeffs: &[f32],
    ) -> ActivationMap {
        let hw = h * w;
        let z = Self::cell_logits(cl, self.classes, features, hw);
        let mut values = vec![0.0f32; hw];
        let mut bias = 0.0f32;
        for ((zk, &g), &b) in z.chunks_exact(hw).zip(coeffs).zip(&self.bias) {
            if g == 0.0 {
                continue;
            }
            let lse = log_sum_exp(zk);
            let mut entropy = 0.0f32;
            for (v, &zc) in values.iter_mut().zip(zk) {
                let a = (zc - lse).exp();
                *v += g * cl.scale * hw as f32 * a * zc;
                if a > 0.0 {
                    entropy -= a * (zc - lse);
                }
            }
            bias += g * (cl.scale * entropy + b);
        }
        ActivationMap {
            width: w,
            height: h,
            values,
            bias,
        }
    }

    /// CAM of one class: its mean plus bias is that class's logit.
    pub fn class_map(
        &self,
        features: &[f32],
        shape: &[usize],
        class: usize,
    ) -> Result<ActivationMap, CamError> {
        if class >= self.classes {
            return Err(CamError::Classes {
                what: format!("class {class}"),
                classes: self.classes,
            });
        }
        let mut coeffs = vec![0.0; self.classes];
        coeffs[class] = 1.0;
        self.map(features, shape, &coeffs)
    }

    /// Map of the abnormal log-odds (see the module doc), from the frame's `probs` and the
    /// index of the `normal` class.
    pub fn abnormal_map(
        &self,
        features: &[f32],
        shape: &[usize],
        probs: &[f32],
        normal: usize,
    ) -> Result<ActivationMap, CamError> {
        if probs.len() != self.classes || normal >= self.classes {
            return Err(CamError::Classes {
                what: format!("{} probabilities, normal class {normal}", probs.len()),
                classes: self.classes,
            });
        }
        self.map(features, shape, &abnormal_coefficients(probs, normal))
    }
}

/// A per-cell layer read from the graph: weight dims, weight, bias, and the tensor it reads.
type Affine<'a> = (Vec<usize>, Vec<f32>, Vec<f32>, &'a str);

/// `log(sum(exp(z)))`, stable.
fn log_sum_exp(z: &[f32]) -> f32 {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        return m;
    }
    m + z.iter().map(|v| (v - m).exp()).sum::<f32>().ln()
}

/// A linear layer found in the graph, before orientation.
struct Linear<'a> {
    /// The activation tensor it multiplies.
    input: &'a str,
    /// `classes x channels`.
    weight: Vec<f32>,
    bias: Vec<f32>,
    classes: usize,
    channels: usize,
}

/// Name lookups over one ONNX graph.
struct Graph<'a> {
    producers: HashMap<&'a str, &'a NodeProto>,
    initializers: HashMap<&'a str, &'a TensorProto>,
}

/// Nodes that do not change which linear layer or pool a value comes from (shape changes,
/// casts, (de)quantisation of the activations, the final softmax).
fn passes_through(op: &str) -> bool {
    matches!(
        op,
        "Identity"
            | "Flatten"
            | "Reshape"
            | "Squeeze"
            | "Unsqueeze"
            | "Cast"
            | "DequantizeLinear"
            | "QuantizeLinear"
            | "Softmax"
            | "LogSoftmax"
    )
}

fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(default, |a| a.i)
}

/// An integer-list attribute (a reduction's `axes`); empty when absent.
fn attr_ints<'n>(node: &'n NodeProto, name: &str) -> &'n [i64] {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(&[], |a| &a.ints[..])
}

fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(default, |a| a.f)
}

/// Little-endian fixed-width values of `raw`, converted to f32.
fn from_raw<const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    raw.chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            f(b)
        })
        .collect()
}

/// Values of a tensor as f32 (float, double and 8/32-bit integer types).
fn tensor_values(t: &TensorProto) -> Result<(Vec<usize>, Vec<f32>), String> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| format!("tensor {:?} has dims {:?}", t.name, t.dims))
        })
        .collect::<Result<_, _>>()?;
    let n: usize = dims.iter().product();
    if t.data_location == Some(1) {
        return Err(format!("tensor {:?} uses external data", t.name));
    }
    let raw = &t.raw_data;
    let dt = DataType::try_from(t.data_type).unwrap_or(DataType::Undefined);
    let values: Vec<f32> = match dt {
        DataType::Float if !raw.is_empty() => from_raw::<4>(raw, f32::from_le_bytes),
        DataType::Float => t.float_data.clone(),
        DataType::Double if !raw.is_empty() => from_raw::<8>(raw, |b| f64::from_le_bytes(b) as f32),
        DataType::Double => t.double_data.iter().map(|&v| v as f32).collect(),
        DataType::Int8 if !raw.is_empty() => raw.iter().map(|&b| f32::from(b as i8)).collect(),
        DataType::Uint8 if !raw.is_empty() => raw.iter().map(|&b| f32::from(b)).collect(),
        DataType::Int32 if !raw.is_empty() => from_raw::<4>(raw, |b| i32::from_le_bytes(b) as f32),
        DataType::Int8 | DataType::Uint8 | DataType::Int32 => {
            t.int32_data.iter().map(|&v| v as f32).collect()
        }
        other => return Err(format!("tensor {:?} has type {other:?}", t.name)),
    };
    if values.len() != n {
        return Err(format!(
            "tensor {:?} holds {} values for dims {:?}",
            t.name,
            values.len(),
            dims
        ));
    }
    Ok((dims, values))
}

impl<'a> Graph<'a> {
    fn new(g: &'a GraphProto) -> Self {
        let mut producers = HashMap::new();
        for n in &g.node {
            for o in &n.output {
                producers.insert(o.as_str(), n);
            }
        }
        let initializers = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        Self {
            producers,
            initializers,
        }
    }

    /// A constant tensor: an initializer, a `Constant` node, or either behind `Identity`,
    /// `Cast`, a 2-D `Transpose` or `DequantizeLinear` (an int8 weight stored quantized).
    fn constant(&self, name: &str, depth: usize) -> Result<(Vec<usize>, Vec<f32>), String> {
        if let Some(t) = self.initializers.get(name) {
            return tensor_values(t);
        }
        let node = self
            .producers
            .get(name)
            .ok_or_else(|| format!("{name:?} is neither an initializer nor a node output"))?;
        if depth > MAX_HOPS {
            return Err(format!("{name:?} is too deep to be a constant"));
        }
        let first = || {
            node.input
                .first()
                .map(String::as_str)
                .ok_or_else(|| format!("node {:?} has no input", node.name))
        };
        match node.op_type.as_str() {
            "Constant" => node
                .attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref())
                .ok_or_else(|| format!("Constant {:?} has no tensor value", node.name))
                .and_then(tensor_values),
            "Identity" | "Cast" => self.constant(first()?, depth + 1),
            "Transpose" => {
                let (dims, v) = self.constant(first()?, depth + 1)?;
                let perm: Vec<i64> = node
                    .attribute
                    .iter()
                    .find(|a| a.name == "perm")
                    .map_or_else(|| vec![1, 0], |a| a.ints.clone());
                if dims.len() != 2 || perm != [1, 0] {
                    return Err(format!("Transpose {:?} is not a 2-D transpose", node.name));
                }
                let (r, c) = (dims[0], dims[1]);
                let mut t = vec![0.0; v.len()];
                for i in 0..r {
                    for j in 0..c {
                        t[j * r + i] = v[i * c + j];
                    }
                }
                Ok((vec![c, r], t))
            }
            "DequantizeLinear" => {
                let (dims, q) = self.constant(first()?, depth + 1)?;
                let scale_name = node
                    .input
                    .get(1)
                    .ok_or_else(|| format!("DequantizeLinear {:?} has no scale", node.name))?;
                let (_, scale) = self.constant(scale_name, depth + 1)?;
                let zero = match node.input.get(2).filter(|s| !s.is_empty()) {
                    Some(z) => self.constant(z, depth + 1)?.1,
                    None => vec![0.0],
                };
                let axis = attr_i(node, "axis", 1);
                let axis = if axis < 0 {
                    axis + dims.len() as i64
                } else {
                    axis
                };
                let per_axis = scale.len() > 1;
                let (len, inner) = if per_axis {
                    let a = usize::try_from(axis)
                        .ok()
                        .filter(|&a| a < dims.len() && dims[a] == scale.len())
                        .ok_or_else(|| {
                            format!("DequantizeLinear {:?}: scale does not fit axis", node.name)
                        })?;
                    (dims[a], dims[a + 1..].iter().product::<usize>())
                } else {
                    (1, 1)
                };
                if scale.is_empty() || (zero.len() != 1 && zero.len() != scale.len()) {
                    return Err(format!(
                        "DequantizeLinear {:?}: bad scale/zero point",
                        node.name
                    ));
                }
                let v = q
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| {
                        let a = (i / inner) % len;
                        let z = if zero.len() == 1 { zero[0] } else { zero[a] };
                        (x - z) * scale[a]
                    })
                    .collect();
                Ok((dims, v))
            }
            op => Err(format!("{name:?} comes from a {op} node, not a constant")),
        }
    }

    /// A linear layer `Gemm` or `MatMul` (+ `Add`) producing `name`.
    fn linear(&self, node: &'a NodeProto) -> Result<Linear<'a>, String> {
        let input = |i: usize| {
            node.input
                .get(i)
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("{} {:?} lacks input {i}", node.op_type, node.name))
        };
        let (act, w_name, trans_b, alpha, bias) = match node.op_type.as_str() {
            "Gemm" => {
                if attr_i(node, "transA", 0) != 0 {
                    return Err(format!("Gemm {:?} transposes its input", node.name));
                }
                let beta = attr_f(node, "beta", 1.0);
                let bias = match node.input.get(2).filter(|s| !s.is_empty()) {
                    Some(c) => {
                        let (_, b) = self.constant(c, 0)?;
                        Some(b.into_iter().map(|v| v * beta).collect::<Vec<_>>())
                    }
                    None => None,
                };
                (
                    input(0)?,
                    input(1)?,
                    attr_i(node, "transB", 0) != 0,
                    attr_f(node, "alpha", 1.0),
                    bias,
                )
            }
            "MatMul" => (input(0)?, input(1)?, false, 1.0, None),
            op => return Err(format!("{op} is not a linear layer")),
        };
        let (dims, w) = self.constant(w_name, 0)?;
        let [d0, d1] = dims[..] else {
            return Err(format!("weight {w_name:?} has dims {dims:?}, not 2-D"));
        };
        // Stored as K x N (channels x classes) unless transB.
        let (classes, channels) = if trans_b { (d0, d1) } else { (d1, d0) };
        let weight = if trans_b {
            w.iter().map(|v| v * alpha).collect()
        } else {
            let mut t = vec![0.0; w.len()];
            for c in 0..channels {
                for k in 0..classes {
                    t[k * channels + c] = w[c * classes + k] * alpha;
                }
            }
            t
        };
        let bias = match bias {
            None => vec![0.0; classes],
            Some(b) if b.len() == classes => b,
            Some(b) if b.len() == 1 => vec![b[0]; classes],
            Some(b) => return Err(format!("bias of {} values for {classes} classes", b.len())),
        };
        Ok(Linear {
            input: act,
            weight,
            bias,
            classes,
            channels,
        })
    }

    /// Walks back from `output` through pass-through nodes and scalar scalings to the linear
    /// layer, then checks that the layer's input is a global average pool.
    fn head(&self, output: &str) -> Result<HeadWeights, String> {
        if let Some(h) = self.cell_head(output)? {
            return Ok(h);
        }
        let mut name = output;
        let mut scale = 1.0f32;
        let mut extra_bias: Option<Vec<f32>> = None;
        let mut found = None;
        for _ in 0..MAX_HOPS {
            let node = self
                .producers
                .get(name)
                .ok_or_else(|| format!("no node produces {name:?}"))?;
            let op = node.op_type.as_str();
            let in0 = node.input.first().map(String::as_str).unwrap_or("");
            let in1 = node.input.get(1).map(String::as_str).unwrap_or("");
            match op {
                _ if passes_through(op) => name = in0,
                "Gemm" | "MatMul" => {
                    found = Some(self.linear(node)?);
                    break;
                }
                // MatMul + Add: a bias on either side.
                "Add" => {
                    let (bias_name, other) = match self.constant(in1, 0) {
                        Ok(_) => (in1, in0),
                        Err(_) => (in0, in1),
                    };
                    let (_, b) = self
                        .constant(bias_name, 0)
                        .map_err(|e| format!("Add {:?} without a constant bias: {e}", node.name))?;
                    if extra_bias.is_some() {
                        return Err(format!("second bias Add {:?}", node.name));
                    }
                    // In output units: everything between here and the output scales it.
                    extra_bias = Some(b.iter().map(|v| v * scale).collect());
                    name = other;
                }
                // An unfolded temperature: multiply or divide by a positive scalar.
                "Mul" | "Div" => {
                    let (c, other) = match (self.constant(in1, 0), op) {
                        (Ok((_, c)), _) => (c, in0),
                        (Err(_), "Mul") => (
                            self.constant(in0, 0)
                                .map_err(|e| format!("Mul {:?} by a non-constant: {e}", node.name))?
                                .1,
                            in1,
                        ),
                        (Err(e), _) => {
                            return Err(format!("Div {:?} by a non-constant: {e}", node.name))
                        }
                    };
                    let [c] = c[..] else {
                        return Err(format!("{op} {:?} by a non-scalar", node.name));
                    };
                    scale *= if op == "Mul" { c } else { 1.0 / c };
                    name = other;
                }
                _ => {
                    return Err(format!(
                        "reached a {op} node ({:?}) before any linear layer",
                        node.name
                    ))
                }
            }
        }
        let lin = found.ok_or("no linear layer within reach")?;
        let with_max = self.pooling(lin.input)?;
        let mut bias: Vec<f32> = lin.bias.iter().map(|b| b * scale).collect();
        if let Some(extra) = extra_bias {
            match extra.len() {
                1 => bias.iter_mut().for_each(|b| *b += extra[0]),
                n if n == lin.classes => bias.iter_mut().zip(&extra).for_each(|(b, e)| *b += e),
                n => return Err(format!("bias of {n} values for {} classes", lin.classes)),
            }
        }
        let weight: Vec<f32> = lin.weight.into_iter().map(|w| w * scale).collect();
        if !with_max {
            return HeadWeights::new(lin.classes, lin.channels, weight, bias)
                .map_err(|e| e.to_string());
        }
        // Concat(means, maxima): each class row is C mean weights, then C max weights.
        if lin.channels % 2 != 0 {
            return Err(format!(
                "a linear layer over {} inputs cannot read C means and C maxima",
                lin.channels
            ));
        }
        let c = lin.channels / 2;
        let (mut avg, mut max) = (Vec::with_capacity(lin.classes * c), Vec::new());
        for row in weight.chunks_exact(lin.channels) {
            avg.extend_from_slice(&row[..c]);
            max.extend_from_slice(&row[c..]);
        }
        HeadWeights::new(lin.classes, c, avg, bias)
            .and_then(|h| h.with_max_weights(max))
            .map_err(|e| e.to_string())
    }

    /// The per-cell head feeding `output`, if one does: from the output back through
    /// pass-through nodes, a scalar `Mul`/`Div` (the temperature) and a scalar `Sub` (log of
    /// the cell count) to `ReduceLogSumExp` over the cells (or its stable form, `m +
    /// ReduceLogSumExp(z - m)` with `m = ReduceMax(z)`), then `Add(MatMul(w2, h), b2)`,
    /// `h = Relu(Add(MatMul(w1, Reshape(map)), b1))`. `None` when the chain reaches no
    /// `ReduceLogSumExp` (a pooled head); an error when it does but the rest does not fit.
    fn cell_head(&self, output: &str) -> Result<Option<HeadWeights>, String> {
        // `offset`: what the Subs take off, in output units (times the scales after them).
        let (mut name, mut scale, mut offset) = (output, 1.0f32, 0.0f32);
        let mut pool = None;
        // The cell logits the pool reads (behind the stable form's shift).
        let mut pooled_input = None;
        for _ in 0..MAX_HOPS {
            let Some(node) = self.producers.get(name) else {
                return Ok(None);
            };
            let op = node.op_type.as_str();
            let in0 = node.input.first().map(String::as_str).unwrap_or("");
            let in1 = node.input.get(1).map(String::as_str).unwrap_or("");
            let scalar = |n: &str| match self.constant(n, 0) {
                Ok((_, v)) if v.len() == 1 => Some(v[0]),
                _ => None,
            };
            match op {
                _ if passes_through(op) => name = in0,
                "Mul" | "Div" | "Sub" => {
                    let Some(c) = scalar(in1) else {
                        return Ok(None);
                    };
                    match op {
                        "Mul" => scale *= c,
                        "Div" => scale /= c,
                        _ => offset += c * scale,
                    }
                    name = in0;
                }
                "ReduceLogSumExp" => {
                    pool = Some(*node);
                    break;
                }
                // The stable form: Add(ReduceLogSumExp(Sub(z, m)), m), m = ReduceMax(z).
                "Add" => {
                    let (Some(lse), Some(max)) = (self.producers.get(in0), self.producers.get(in1))
                    else {
                        return Ok(None);
                    };
                    if lse.op_type != "ReduceLogSumExp" || max.op_type != "ReduceMax" {
                        return Ok(None);
                    }
                    let shifted = lse
                        .input
                        .first()
                        .and_then(|t| self.producers.get(t.as_str()));
                    let z = max.input.first().map(String::as_str).unwrap_or("");
                    let fits = shifted.is_some_and(|s| {
                        s.op_type == "Sub"
                            && s.input.len() == 2
                            && s.input[0] == z
                            && s.input[1] == in1
                    });
                    if !fits || attr_ints(max, "axes") != [2] {
                        return Err(format!(
                            "Add {:?} of ReduceLogSumExp and ReduceMax is not the log-sum-exp \
                             of one tensor over its cells",
                            node.name
                        ));
                    }
                    pool = Some(*lse);
                    pooled_input = Some(z);
                    break;
                }
                _ => return Ok(None),
            }
        }
        let Some(pool) = pool else {
            return Ok(None);
        };
        let axes = attr_ints(pool, "axes");
        if axes != [2] && axes != [-1] {
            return Err(format!(
                "ReduceLogSumExp {:?} over axes {axes:?}, not the cells of N x classes x cells",
                pool.name
            ));
        }
        let affine = |t: &str, what: &str| -> Result<Affine<'_>, String> {
            let add = self.through_op(t, "Add", 2, what)?;
            let (_, b) = self
                .constant(&add.input[1], 0)
                .map_err(|e| format!("{what}: bias {e}"))?;
            let mm = self.through_op(&add.input[0], "MatMul", 2, what)?;
            let (dims, w) = self
                .constant(&mm.input[0], 0)
                .map_err(|e| format!("{what}: weight {e}"))?;
            Ok((dims, w, b, mm.input[1].as_str()))
        };
        let first =
            pooled_input.unwrap_or_else(|| pool.input.first().map(String::as_str).unwrap_or(""));
        let (d2, w2, b2, h) = affine(first, "the cell logits")?;
        let relu = self.through_op(h, "Relu", 1, "the hidden cells")?;
        let (pre, context) = self.cell_context(&relu.input[0])?;
        let (d1, w1, b1, flat) = affine(pre, "the hidden cells")?;
        let reshape = self.through_op(flat, "Reshape", 1, "the cells' input")?;
        let [hidden, channels] = d1[..] else {
            return Err(format!(
                "first cell layer of dims {d1:?}, not hidden x channels"
            ));
        };
        if d2.len() != 2 || d2[1] != hidden {
            return Err(format!(
                "second cell layer of dims {d2:?} after {hidden} hidden units"
            ));
        }
        let head = HeadWeights::per_cell(channels, hidden, w1, b1, w2, &b2, offset, scale)
            .map_err(|e| e.to_string())?;
        let Some((dims, wc, mean)) = context else {
            return Ok(Some(head));
        };
        // The context must read the same cells as the first layer, averaged over them.
        let mean_of = self.through_op(&mean.input[0], "Reshape", 1, "the context's input")?;
        if !std::ptr::eq(mean_of, reshape) || attr_ints(mean, "axes") != [2] {
            return Err(format!(
                "ReduceMean {:?} is not the mean over the cells the head reads",
                mean.name
            ));
        }
        if dims[..] != [hidden, channels] {
            return Err(format!(
                "context layer of dims {dims:?}, not {hidden} hidden x {channels} channels"
            ));
        }
        head.with_context(wc).map(Some).map_err(|e| e.to_string())
    }

    /// Splits a per-cell head's hidden pre-activation into the first layer's affine part and,
    /// where the head reads one, its context `Add(_, MatMul(wc, ReduceMean(map)))`: the
    /// weight's dims and values, and the mean node.
    #[allow(clippy::type_complexity)]
    fn cell_context(
        &self,
        name: &'a str,
    ) -> Result<(&'a str, Option<(Vec<usize>, Vec<f32>, &'a NodeProto)>), String> {
        let Some(add) = self.producers.get(name) else {
            return Ok((name, None));
        };
        if add.op_type != "Add" || add.input.len() != 2 {
            return Ok((name, None));
        }
        for (side, other) in [(1, 0), (0, 1)] {
            let Some(mm) = self.producers.get(add.input[side].as_str()) else {
                continue;
            };
            if mm.op_type != "MatMul" || mm.input.len() != 2 {
                continue;
            }
            let Some(mean) = self.producers.get(mm.input[1].as_str()) else {
                continue;
            };
            if mean.op_type != "ReduceMean" || mean.input.is_empty() {
                continue;
            }
            let (dims, w) = self
                .constant(&mm.input[0], 0)
                .map_err(|e| format!("the cells' context: weight {e}"))?;
            return Ok((add.input[other].as_str(), Some((dims, w, *mean))));
        }
        Ok((name, None))
    }

    /// The node of type `op` with at least `inputs` inputs producing `name`, through
    /// pass-through nodes.
    fn through_op(
        &self,
        name: &str,
        op: &str,
        inputs: usize,
        what: &str,
    ) -> Result<&'a NodeProto, String> {
        let mut name = name;
        for _ in 0..MAX_HOPS {
            let node = self
                .producers
                .get(name)
                .ok_or_else(|| format!("{what}: no node produces {name:?}"))?;
            if node.op_type == op {
                if node.input.len() < inputs {
                    return Err(format!(
                        "{what}: {op} {:?} has {} inputs",
                        node.name,
                        node.input.len()
                    ));
                }
                return Ok(node);
            }
            if !passes_through(&node.op_type) || node.op_type == "Softmax" {
                return Err(format!(
                    "{what}: expected {op}, found {} ({:?})",
                    node.op_type, node.name
                ));
            }
            name = node.input.first().map(String::as_str).unwrap_or("");
        }
        Err(format!("{what}: no {op} within reach"))
    }

    /// How the linear layer's input pools the feature map: `false` for a global average,
    /// `true` for `Concat(global average, global maximum)` of one map (axis 1). Anything
    /// else is refused: its class maps would not add up to the logits.
    fn pooling(&self, start: &str) -> Result<bool, String> {
        let node = self.through(start)?;
        if node.op_type != "Concat" {
            self.check_pooled(start, false)?;
            return Ok(false);
        }
        let [avg, max] = &node.input[..] else {
            return Err(format!(
                "the linear layer reads a Concat ({:?}) of {} inputs, not of a mean and a maximum",
                node.name,
                node.input.len()
            ));
        };
        if attr_i(node, "axis", 0) != 1 {
            return Err(format!(
                "Concat {:?} is not over the channel axis",
                node.name
            ));
        }
        let a = self.check_pooled(avg, false)?;
        let m = self.check_pooled(max, true)?;
        if self.source(a) != self.source(m) {
            return Err(format!(
                "the mean and the maximum pool different maps ({a:?}, {m:?})"
            ));
        }
        Ok(true)
    }

    /// The first node at or above `name` that does not pass its input through.
    fn through(&self, name: &str) -> Result<&'a NodeProto, String> {
        let mut name = name;
        for _ in 0..MAX_HOPS {
            let node = self.producers.get(name).ok_or_else(|| {
                format!("the linear layer's input {name:?} is not produced by a pool")
            })?;
            match node.op_type.as_str() {
                op if passes_through(op) && op != "Softmax" && op != "LogSoftmax" => {
                    name = node.input.first().map(String::as_str).unwrap_or("");
                }
                _ => return Ok(node),
            }
        }
        Err("no pool within reach of the linear layer".into())
    }

    /// The tensor a pool reads, above any pass-through nodes (dequantisation included).
    fn source<'b>(&'b self, pool_input: &'b str) -> &'b str {
        let mut name = pool_input;
        for _ in 0..MAX_HOPS {
            match self.producers.get(name) {
                Some(n) if passes_through(&n.op_type) => {
                    name = n.input.first().map(String::as_str).unwrap_or("");
                }
                _ => break,
            }
        }
        name
    }

    /// Checks that `start` is a global average (or, with `max`, a global maximum) of a
    /// feature map, through pass-through nodes; returns the map the pool reads.
    fn check_pooled(&self, start: &str, max: bool) -> Result<&'a str, String> {
        let what = if max {
            "global max pool"
        } else {
            "global average pool"
        };
        let node = self.through(start)?;
        let input = || node.input.first().map(String::as_str).unwrap_or("");

        match (node.op_type.as_str(), max) {
            ("GlobalAveragePool" | "QLinearGlobalAveragePool", false) | ("GlobalMaxPool", true) => {
                Ok(input())
            }
            ("ReduceMean", false) | ("ReduceMax", true) => {
                let axes = attr_ints(node, "axes");
                if axes == [2, 3] || axes == [-2, -1] {
                    Ok(input())
                } else {
                    Err(format!(
                        "{} {:?} over axes {axes:?}",
                        node.op_type, node.name
                    ))
                }
            }
            (op, _) => Err(format!(
                "the linear layer's input comes from a {op} node ({:?}), not a {what}",
                node.name
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{output, softmax, Network};
    use onnx_graph::{attr, tensor, value_info_fixed, Graph, ModelMeta};

    /// Deterministic values in [-1, 1).
    fn noise(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn class_map_matches_a_hand_computation() {
        // 2 classes, 3 channels, 2 x 2 map.
        let head = HeadWeights::new(
            2,
            3,
            vec![1.0, 0.0, -1.0, /* class 1 */ 0.5, 2.0, 0.0],
            vec![0.25, -1.0],
        )
        .unwrap();
        #[rustfmt::skip]
        let f = [
            1.0, 2.0, 3.0, 4.0, // channel 0
            0.0, 1.0, 0.0, 1.0, // channel 1
            4.0, 0.0, 0.0, 1.0, // channel 2
        ];
        let m0 = head.class_map(&f, &[1, 3, 2, 2], 0).unwrap();
        assert_eq!(m0.values, [-3.0, 2.0, 3.0, 3.0]);
        assert_eq!((m0.width, m0.height, m0.bias), (2, 2, 0.25));
        let m1 = head.class_map(&f, &[3, 2, 2], 1).unwrap();
        assert_eq!(m1.values, [0.5, 3.0, 1.5, 4.0]);
        // Mean + bias = logit: class 0: 5/4 + 0.25, class 1: 9/4 - 1.
        assert_eq!(m0.score(), 1.5);
        assert_eq!(m1.score(), 1.25);
        assert_eq!(head.logits(&f, &[1, 3, 2, 2]).unwrap(), [1.5, 1.25]);
        // Display: positive part over its max.
        assert_eq!(m0.normalised(), [0.0, 2.0 / 3.0, 1.0, 1.0]);
        assert!(head.class_map(&f, &[1, 3, 2, 2], 2).is_err());
        assert!(matches!(
            head.class_map(&f, &[1, 4, 2, 2], 0),
            Err(CamError::FeatureShape { .. })
        ));
    }

    /// A per-cell head in plain loops: hidden = relu(w1 F + b1) per cell, z = w2 hidden,
    /// logit = scale * (lse(z) + b2) - offset.
    fn cell_logits_by_hand(
        f: &[f32],
        (c, hw, hn, k): (usize, usize, usize, usize),
        (w1, b1, w2, b2): (&[f32], &[f32], &[f32], &[f32]),
        (offset, scale): (f32, f32),
    ) -> Vec<f32> {
        (0..k)
            .map(|kk| {
                let z: Vec<f64> = (0..hw)
                    .map(|cell| {
                        (0..hn)
                            .map(|j| {
                                let a: f32 = b1[j]
                                    + (0..c)
                                        .map(|ch| w1[j * c + ch] * f[ch * hw + cell])
                                        .sum::<f32>();
                                f64::from(w2[kk * hn + j] * a.max(0.0))
                            })
                            .sum()
                    })
                    .collect();
                let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
                scale * (lse as f32 + b2[kk]) - offset
            })
            .collect()
    }

    #[test]
    fn per_cell_head_maps_add_up_to_its_logits_and_sit_on_the_deciding_cell() {
        let (k, c, hn, h, w) = (3, 6, 5, 3, 4);
        let (w1, b1, w2, b2) = (
            noise(hn * c, 11),
            noise(hn, 12),
            noise(k * hn, 13),
            noise(k, 14),
        );
        let (offset, scale) = (((h * w) as f32).ln() * 0.5, 0.5);
        let head = HeadWeights::per_cell(
            c,
            hn,
            w1.clone(),
            b1.clone(),
            w2.clone(),
            &b2,
            offset,
            scale,
        )
        .unwrap();
        assert!(head.is_per_cell() && head.weights_of(0).is_none());
        let mut f: Vec<f32> = noise(c * h * w, 15).iter().map(|v| v.abs()).collect();
        let shape = [1, c, h, w];
        let z = head.logits(&f, &shape).unwrap();
        let want =
            cell_logits_by_hand(&f, (c, h * w, hn, k), (&w1, &b1, &w2, &b2), (offset, scale));
        for (a, b) in z.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{z:?} vs by hand {want:?}");
        }
        for (kk, zk) in z.iter().enumerate() {
            let m = head.class_map(&f, &shape, kk).unwrap();
            assert!(
                (m.score() - zk).abs() < 1e-4,
                "class {kk}: {} vs {zk}",
                m.score()
            );
        }
        // Make one cell decide class 1: its map peaks there.
        let hot = 7;
        let up: Vec<f32> = (0..c)
            .map(|ch| (0..hn).map(|j| w2[hn + j].max(0.0) * w1[j * c + ch]).sum())
            .collect();
        for ch in 0..c {
            f[ch * h * w + hot] += 30.0 * up[ch].signum();
        }
        let m = head.class_map(&f, &shape, 1).unwrap();
        let top = (0..h * w)
            .max_by(|&a, &b| m.values[a].total_cmp(&m.values[b]))
            .unwrap();
        assert_eq!(top, hot, "{:?}", m.values);
        let z = head.logits(&f, &shape).unwrap();
        assert!((m.score() - z[1]).abs() < 1e-3, "{} vs {}", m.score(), z[1]);
        assert!(head.clone().with_max_weights(vec![0.0; k * c]).is_err());
        assert!(HeadWeights::per_cell(c, hn, w1, b1, vec![0.0; 2], &b2, offset, scale).is_err());
    }

    #[test]
    fn abnormal_map_explains_the_abnormal_log_odds() {
        let (k, c, h, w) = (4, 8, 3, 3);
        let head = HeadWeights::new(k, c, noise(k * c, 1), noise(k, 2)).unwrap();
        let f = noise(c * h * w, 3);
        let shape = [1, c, h, w];
        let z = head.logits(&f, &shape).unwrap();
        let p = softmax(&z);
        let m = head.abnormal_map(&f, &shape, &p, 0).unwrap();
        let p_abn: f32 = p[1..].iter().sum();
        let expect = p[1..]
            .iter()
            .zip(&z[1..])
            .map(|(pk, zk)| pk / p_abn * zk)
            .sum::<f32>()
            - z[0];
        assert!(
            (m.score() - expect).abs() < 1e-5,
            "{} vs {expect}",
            m.score()
        );
        // Linear in the class maps.
        let g = abnormal_coefficients(&p, 0);
        let mut sum = vec![0.0f32; h * w];
        for (kk, &gk) in g.iter().enumerate() {
            let cm = head.class_map(&f, &shape, kk).unwrap();
            for (s, v) in sum.iter_mut().zip(&cm.values) {
                *s += gk * v;
            }
        }
        for (a, b) in sum.iter().zip(&m.values) {
            assert!((a - b).abs() < 1e-5);
        }
        assert_eq!(abnormal_coefficients(&[1.0, 0.0, 0.0], 0), [-1.0, 0.5, 0.5]);
    }

    /// Writes a model `features -> GAP -> Flatten -> <head> -> Softmax -> probs` and returns
    /// its path; `head` adds nodes from `flat` to `logits` and their initializers.
    /// The model as a temporary file (removed when the returned path is dropped).
    fn write_model(
        name: &str,
        c: usize,
        hw: usize,
        head: impl FnOnce(&mut Graph),
    ) -> tempfile::TempPath {
        let mut g = Graph::new();
        g.node("GlobalAveragePool", "pooled", &["features"], vec![]);
        g.node("Flatten", "flat", &["pooled"], vec![attr::int("axis", 1)]);
        head(&mut g);
        g.node_to(
            "Softmax",
            "softmax",
            &["logits"],
            vec![attr::int("axis", 1)],
            PROBS,
        );
        let model = g.into_model(
            vec![value_info_fixed("features", &[1, c, hw, hw])],
            vec![value_info_fixed(PROBS, &[1, 5])],
            ModelMeta::default(),
        );
        let mut f = tempfile::Builder::new().suffix(name).tempfile().unwrap();
        std::io::Write::write_all(&mut f, &onnx_graph::encode(&model)).unwrap();
        f.into_temp_path()
    }

    /// The maps' means + bias, through softmax, must give what tract computes from the file.
    fn assert_identity_with_tract(path: &Path, c: usize, hw: usize) -> HeadWeights {
        let head = HeadWeights::from_onnx(path).unwrap();
        assert_eq!((head.classes(), head.channels()), (5, c));
        let shape = [1, c, hw, hw];
        let f: Vec<f32> = noise(c * hw * hw, 9)
            .iter()
            .map(|v| v.max(0.0) * 3.0)
            .collect();
        let net = Network::load(path, &shape).unwrap();
        let out = net.run(&f).unwrap();
        let probs = &output(&out, PROBS).unwrap().data;
        let z: Vec<f32> = (0..head.classes())
            .map(|k| head.class_map(&f, &shape, k).unwrap().score())
            .collect();
        for (a, b) in softmax(&z).iter().zip(probs) {
            assert!((a - b).abs() < 1e-5, "{z:?} -> {a} vs tract {b}");
        }
        head
    }

    #[test]
    fn gemm_head_with_trans_b_and_alpha_reproduces_tract() {
        let (c, hw, k) = (16, 3, 5);
        let w = noise(k * c, 4);
        let b = noise(k, 5);
        let p = write_model("gemm.onnx", c, hw, |g| {
            g.f32("W", &[k, c], &w);
            g.f32("B", &[k], &b);
            g.node(
                "Gemm",
                "logits",
                &["flat", "W", "B"],
                vec![
                    attr::int("transB", 1),
                    attr::float("alpha", 0.5),
                    attr::float("beta", 2.0),
                ],
            );
        });
        let head = assert_identity_with_tract(&p, c, hw);
        assert_eq!(head.weights_of(1).unwrap()[0], 0.5 * w[c]);
        assert_eq!(head.bias()[2], 2.0 * b[2]);
    }

    #[test]
    fn avg_max_head_reproduces_tract_and_puts_the_maximum_on_its_cell() {
        // The exported renal head: Concat(GAP, GlobalMaxPool) over one map -> Gemm.
        let (c, hw, k) = (6, 3, 5);
        let w = noise(2 * c * k, 6);
        let b = noise(k, 7);
        let p = write_model("avgmax.onnx", c, hw, |g| {
            g.node("GlobalMaxPool", "maxed", &["features"], vec![]);
            g.node(
                "Flatten",
                "max_flat",
                &["maxed"],
                vec![attr::int("axis", 1)],
            );
            g.node(
                "Concat",
                "both",
                &["flat", "max_flat"],
                vec![attr::int("axis", 1)],
            );
            g.f32("W", &[2 * c, k], &w);
            g.f32("B", &[k], &b);
            g.node("Gemm", "logits", &["both", "W", "B"], vec![]);
        });
        let head = assert_identity_with_tract(&p, c, hw);
        // Column j of W (j < c) is class j's mean weight, j >= c its max weight.
        assert_eq!(head.weights_of(2).unwrap()[1], w[k + 2]);
        assert_eq!(head.max_weights_of(2).unwrap()[1], w[(c + 1) * k + 2]);

        // One channel, no mean weight: the whole logit sits on the maximal cell.
        let h1 = HeadWeights::new(1, 1, vec![0.0], vec![0.5])
            .unwrap()
            .with_max_weights(vec![2.0])
            .unwrap();
        let f = [0.0, 3.0, 1.0, 2.0];
        let m = h1.class_map(&f, &[1, 1, 2, 2], 0).unwrap();
        assert_eq!(m.values, [0.0, 24.0, 0.0, 0.0]);
        assert_eq!(m.score(), h1.logits(&f, &[1, 1, 2, 2]).unwrap()[0]);
        assert_eq!(m.score(), 6.5);
    }

    #[test]
    fn a_concat_of_two_averages_is_refused() {
        let (c, hw, k) = (4, 2, 5);
        let p = write_model("avgavg.onnx", c, hw, |g| {
            g.node(
                "Concat",
                "both",
                &["flat", "flat"],
                vec![attr::int("axis", 1)],
            );
            g.f32("W", &[2 * c, k], &noise(2 * c * k, 8));
            g.node("Gemm", "logits", &["both", "W"], vec![]);
        });
        let e = HeadWeights::from_onnx(&p).unwrap_err().to_string();
        assert!(e.contains("not a global max pool"), "{e}");
    }

    #[test]
    fn int8_matmul_add_head_with_temperature_reproduces_tract() {
        // What a quantizer may leave: int8 weight + DequantizeLinear (per class), MatMul,
        // Add, an unfolded temperature division, activations dequantized before the head.
        let (c, hw, k) = (12, 2, 5);
        let q: Vec<f32> = noise(c * k, 6)
            .iter()
            .map(|v| (v * 127.0).round())
            .collect();
        let scale: Vec<f32> = (0..k).map(|i| 0.01 * (i + 1) as f32).collect();
        let p = write_model("int8.onnx", c, hw, |g| {
            let qi: Vec<i8> = q.iter().map(|&v| v as i8).collect();
            g.init(tensor::i8("Wq", &[c, k], &qi));
            g.f32("Ws", &[k], &scale);
            g.f32("Bias", &[k], &noise(k, 7));
            g.f32("T", &[], &[2.5]);
            g.node(
                "DequantizeLinear",
                "W",
                &["Wq", "Ws"],
                vec![attr::int("axis", 1)],
            );
            g.node("MatMul", "mm", &["flat", "W"], vec![]);
            g.node("Add", "biased", &["mm", "Bias"], vec![]);
            g.node("Div", "logits", &["biased", "T"], vec![]);
        });
        let head = assert_identity_with_tract(&p, c, hw);
        // Dequantized per class, divided by the temperature.
        let w01 = head.weights_of(1).unwrap()[0];
        assert!((w01 - q[1] * scale[1] / 2.5).abs() < 1e-7, "{w01}");
    }

    #[test]
    fn a_model_without_a_linear_head_is_a_typed_error_naming_the_file() {
        let p = write_model("nohead.onnx", 4, 2, |g| {
            g.node("Relu", "logits", &["flat"], vec![]);
        });
        let err = HeadWeights::from_onnx(&p).unwrap_err();
        assert!(matches!(err, CamError::NoHead { .. }), "{err}");
        assert!(err.to_string().contains("nohead.onnx"), "{err}");
        // A linear layer not on a pooled input does not give CAMs either.
        let q = write_model("notpooled.onnx", 4, 2, |g| {
            g.f32("W", &[4, 5], &noise(20, 8));
            g.node("Relu", "r", &["flat"], vec![]);
            g.node("Gemm", "logits", &["r", "W"], vec![]);
        });
        let err = HeadWeights::from_onnx(&q).unwrap_err();
        assert!(err.to_string().contains("Relu"), "{err}");
        let missing = HeadWeights::from_onnx(Path::new("/nonexistent/m.onnx")).unwrap_err();
        assert!(matches!(missing, CamError::Read { .. }));
        assert!(missing.to_string().contains("/nonexistent/m.onnx"));
    }
}
