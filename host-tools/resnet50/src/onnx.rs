//! ONNX export of the ResNet-50 with BatchNorm folded into the convolutions.
//!
//! Written with tract-onnx's own protobuf types (the ONNX schema as tract reads it), so the
//! file we write is, by construction, one the device's engine parses. Two outputs: the head's
//! (`logits` for ImageNet, `probs` for the renal classifier) and `features`, the last
//! convolutional map, which a pooled + linear head turns into class-activation maps for free.

use onnx_graph::pb::ValueInfoProto;
use onnx_graph::{attr, value_info, Dim, Graph, ModelMeta};

use crate::{Conv, Dense, ResNet50};

/// ONNX opset we target (Softmax over one axis, Gemm, GlobalAveragePool are stable here).
pub const OPSET: i64 = onnx_graph::OPSET;
/// Name of the input tensor, `N x 3 x 224 x 224`.
pub const INPUT: &str = "image";
/// Name of the feature map the head pools: `N x 2048 x 7 x 7` after layer4, `N x 1024 x 14 x
/// 14` after layer3 (see [`Tap`]).
pub const FEATURES: &str = "features";
/// Symbolic batch dimension.
pub const BATCH: &str = "N";
/// The view gate's p(kidney) output, `N x 1`.
pub const KIDNEY: &str = "kidney";
/// The view gate's out-of-distribution score output, `N x 1`.
pub const OOD: &str = "ood";

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The head does not fit the backbone and its pooling.
    #[error("head takes {0} inputs, the backbone's pooled features are {1} wide")]
    HeadWidth(usize, usize),
    /// A trunk must keep between one and all stages.
    #[error("cannot cut the network after {0} stages")]
    Stages(usize),
    /// An output name collides with an internal tensor name.
    #[error("output name {0:?} is reserved")]
    ReservedName(String),
    /// The view gate's parameters do not fit the backbone.
    #[error("view gate: {0}")]
    Gate(String),
    /// A per-cell classifier that does not fit the map or itself.
    #[error("cell classifier: {0}")]
    Cells(String),
    /// The network halves its input five times: the side must be a multiple of 32.
    #[error("input side {0} is not a positive multiple of 32")]
    Side(usize),
}

fn check_side(side: usize) -> Result<i64, OnnxError> {
    if side == 0 || !side.is_multiple_of(32) {
        return Err(OnnxError::Side(side));
    }
    Ok(side as i64)
}

/// Which stage's map the head reads. The model ends there: a layer-3 model has no layer4.
///
/// `Layer3` because ImageNet's last stage is the most specific to photographs. On the
/// randomized-scanner phantom a linear head on layer-3 means ranked still images far better
/// than one on layer-4 means, on the training scanner and on unseen ones, and per exam no
/// worse (`host-tools/train/README.md`, "Which layer the head reads"); the model is smaller
/// and faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tap {
    /// After layer3 (Keras stage 4): 1,024 channels at 1/16 of the input side.
    Layer3,
    /// After layer4 (Keras stage 5), the ImageNet classifier's input: 2,048 channels at 1/32.
    Layer4,
}

impl Tap {
    /// Stages of the trunk the model keeps.
    pub fn stages(self) -> usize {
        match self {
            Tap::Layer3 => 3,
            Tap::Layer4 => 4,
        }
    }

    /// Channels of the map.
    pub fn channels(self) -> usize {
        crate::STAGE_CHANNELS[self.stages() - 1]
    }

    /// Side of the map for an input of `input_side` pixels.
    pub fn side(self, input_side: usize) -> usize {
        input_side >> (self.stages() + 1)
    }

    /// The name used on the command line, in manifests and logs.
    pub fn name(self) -> &'static str {
        match self {
            Tap::Layer3 => "layer3",
            Tap::Layer4 => "layer4",
        }
    }
}

/// How the last feature map becomes the head's input vector.
///
/// `AvgMax` concatenates the global average (where the kidney's texture and shape live) and
/// the global maximum (a small focal finding, a stone or a cyst, that an average over 49
/// cells dilutes) of each channel. Both are exact sums over map cells, so class-activation
/// maps still add up to the logits (see `model::cam`). On the phantom it did not beat the
/// average alone (`host-tools/train/README.md`), so `Avg` stays the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Global average only: `C` features (the ImageNet classifier's).
    #[default]
    Avg,
    /// Global average then global maximum: `2 C` features.
    AvgMax,
}

impl Pooling {
    /// Width of the pooled vector for a map of `channels` channels.
    pub fn width(self, channels: usize) -> usize {
        match self {
            Pooling::Avg => channels,
            Pooling::AvgMax => 2 * channels,
        }
    }

    /// The pooling whose vector is `width` wide for `channels` channels.
    pub fn for_width(width: usize, channels: usize) -> Option<Self> {
        [Pooling::Avg, Pooling::AvgMax]
            .into_iter()
            .find(|p| p.width(channels) == width)
    }

    /// The name used in manifests and logs.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Avg => "avg",
            Pooling::AvgMax => "avg-max",
        }
    }
}

/// The classifier on top of the feature map.
#[derive(Debug, Clone)]
pub struct Head {
    /// Output tensor name (`logits`, `probs`).
    pub output: String,
    /// Which map the head reads (the model ends there).
    pub tap: Tap,
    /// How the map becomes class scores.
    pub classifier: Classifier,
    /// Append a softmax (the output is then probabilities).
    pub softmax: bool,
    /// The view gate's two outputs, from the globally averaged features.
    pub gate: Option<GateHead>,
}

/// How the feature map becomes class scores.
#[derive(Debug, Clone)]
pub enum Classifier {
    /// The map pooled (see [`Pooling`]), then one linear layer `pooling.width(C) -> classes`
    /// (temperature folded into it).
    Pooled {
        /// How the map is pooled into the linear layer's input.
        pooling: Pooling,
        /// The linear layer.
        dense: Dense,
    },
    /// A classifier on every cell of the map, pooled per class by log-mean-exp: see
    /// [`CellClassifier`].
    Cells(CellClassifier),
}

/// A two-layer classifier applied to every cell of the map (`C -> H`, ReLU, `H -> classes`),
/// whose cell logits are pooled per class by log-mean-exp, `log(mean_cells(exp(z)))`, then
/// divided by the temperature.
///
/// Why: a finding occupies a few cells of the map; averaging the map first (the pooled head)
/// dilutes it among the kidney's normal texture, while a smooth maximum of per-cell verdicts
/// lets a few cells decide (`host-tools/train/README.md`, "The head's shape"). The smooth
/// maximum is not homogeneous, so the temperature is a node of its own, not folded into the
/// weights.
#[derive(Debug, Clone, PartialEq)]
pub struct CellClassifier {
    /// `C -> H` on each cell, ReLU after.
    pub hidden: Dense,
    /// `H -> classes` on each cell.
    pub out: Dense,
    /// `C -> H` on the map's channel means, added to every cell's hidden layer before its
    /// ReLU (`renalscan train --cell-context`): each cell is judged knowing the whole image,
    /// so what the rest of the kidney shows (an infant's dark pyramids, say) can change a
    /// cell's verdict. `None`: each cell alone. Its bias, if any, acts as the hidden layer's.
    pub context: Option<Dense>,
    /// Divides the pooled logits (1: none).
    pub temperature: f32,
}

impl CellClassifier {
    /// Checks that the layers fit a map of `channels` channels and each other.
    pub fn check(&self, channels: usize) -> Result<(), OnnxError> {
        let (h, o) = (&self.hidden, &self.out);
        let fits = |d: &Dense| d.weight.len() == d.inputs * d.outputs && d.bias.len() == d.outputs;
        let context_fits = self
            .context
            .as_ref()
            .is_none_or(|c| fits(c) && c.inputs == channels && c.outputs == h.outputs);
        if h.inputs != channels
            || o.inputs != h.outputs
            || !fits(h)
            || !fits(o)
            || !context_fits
            || o.outputs == 0
            || !(self.temperature.is_finite() && self.temperature > 0.0)
        {
            return Err(OnnxError::Cells(format!(
                "{} -> {} -> {} layers ({} + {} weights), context {}, temperature {}, for a \
                 map of {channels} channels",
                h.inputs,
                h.outputs,
                o.outputs,
                h.weight.len(),
                o.weight.len(),
                self.context
                    .as_ref()
                    .map_or("none".to_string(), |c| format!(
                        "{} -> {} ({} weights)",
                        c.inputs,
                        c.outputs,
                        c.weight.len()
                    )),
                self.temperature
            )));
        }
        Ok(())
    }

    /// The calibrated logits of one map (`C x cells`, channel-major, the layout of the
    /// model's `features` output): what the exported graph computes, in plain arithmetic.
    pub fn logits(&self, map: &[f32], cells: usize) -> Result<Vec<f32>, OnnxError> {
        let (c, hn, k) = (self.hidden.inputs, self.hidden.outputs, self.out.outputs);
        self.check(c)?;
        if cells == 0 || map.len() != c * cells {
            return Err(OnnxError::Cells(format!(
                "a map of {} values for {c} channels x {cells} cells",
                map.len()
            )));
        }
        // The hidden layer's bias for this image: its own, plus the context of the channel
        // means where the head reads it.
        let mut base = self.hidden.bias.clone();
        if let Some(ctx) = &self.context {
            for (ch, plane) in map.chunks_exact(cells).enumerate() {
                let mean = plane.iter().sum::<f32>() / cells as f32;
                let row = &ctx.weight[ch * hn..(ch + 1) * hn];
                for (a, w) in base.iter_mut().zip(row) {
                    *a += mean * w;
                }
            }
            base.iter_mut().zip(&ctx.bias).for_each(|(a, b)| *a += b);
        }
        let mut z = vec![vec![0f32; cells]; k];
        let mut hidden = vec![0f32; hn];
        for cell in 0..cells {
            hidden.copy_from_slice(&base);
            for ch in 0..c {
                let v = map[ch * cells + cell];
                if v != 0.0 {
                    let row = &self.hidden.weight[ch * hn..(ch + 1) * hn];
                    for (a, w) in hidden.iter_mut().zip(row) {
                        *a += v * w;
                    }
                }
            }
            for (j, &a) in hidden.iter().enumerate() {
                let a = a.max(0.0);
                for (kk, zk) in z.iter_mut().enumerate() {
                    zk[cell] += a * self.out.weight[j * k + kk];
                }
            }
        }
        Ok(z.iter()
            .zip(&self.out.bias)
            .map(|(zk, b)| (log_mean_exp(zk) + b) / self.temperature)
            .collect())
    }
}

/// `log(mean(exp(z)))`, stable.
pub fn log_mean_exp(z: &[f32]) -> f32 {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        return m;
    }
    let s: f32 = z.iter().map(|v| (v - m).exp()).sum();
    m + (s / z.len() as f32).ln()
}

/// The view gate as the graph computes it from the pooled features `f` (`N x C`):
/// `kidney = sigmoid(relu(f * kidney_w1 + kidney_b1) . kidney_w2 + kidney_b2)` and, with
/// `c = f - mean` and
/// `p = c * components` (`C x k`), `ood = (sum((p * inv_sd)^2) + (|c|^2 - |p|^2) *
/// residual_inv_var) / C`.
#[derive(Debug, Clone, PartialEq)]
pub struct GateHead {
    /// `C x H` first-layer weights of the learned head, row-major.
    pub kidney_w1: Vec<f32>,
    /// `H` first-layer biases.
    pub kidney_b1: Vec<f32>,
    /// `H` output weights.
    pub kidney_w2: Vec<f32>,
    /// Output bias.
    pub kidney_b2: f32,
    /// `C` feature means of the training kidneys.
    pub mean: Vec<f32>,
    /// `C x k` principal directions, row-major.
    pub components: Vec<f32>,
    /// `k` inverse standard deviations along them.
    pub inv_sd: Vec<f32>,
    /// Inverse mean variance outside them.
    pub residual_inv_var: f32,
}

impl Head {
    /// The ImageNet classifier of the pretrained model, emitting raw `logits`.
    pub fn imagenet(net: &ResNet50) -> Self {
        Self {
            output: "logits".into(),
            tap: Tap::Layer4,
            classifier: Classifier::Pooled {
                pooling: Pooling::Avg,
                dense: net.fc.clone(),
            },
            softmax: false,
            gate: None,
        }
    }
}

/// Serialises `net` (BatchNorm folded) with `head` to ONNX bytes, for a square input of
/// `side` pixels (the weights were trained at [`crate::INPUT_SIZE`]; a larger side keeps more
/// of an ultrasound image's detail for the same weights).
pub fn export_onnx(
    net: &ResNet50,
    head: &Head,
    side: usize,
    doc: &str,
) -> Result<Vec<u8>, OnnxError> {
    let side = check_side(side)?;
    let channels = head.tap.channels();
    let classes = match &head.classifier {
        Classifier::Pooled { pooling, dense } => {
            let width = pooling.width(channels);
            if dense.inputs != width {
                return Err(OnnxError::HeadWidth(dense.inputs, width));
            }
            dense.outputs
        }
        Classifier::Cells(cells) => {
            cells.check(channels)?;
            cells.out.outputs
        }
    };
    if head.output == INPUT || head.output == FEATURES {
        return Err(OnnxError::ReservedName(head.output.clone()));
    }
    let mut g = Graph::new();
    let x = trunk(&mut g, net, head.tap.stages(), FEATURES);
    // The channel means, written once and only when read (the pooled head, the view gate).
    let mut means: Option<String> = None;
    let mut means_of = |g: &mut Graph| -> String {
        means
            .get_or_insert_with(|| {
                let pooled = g.node("GlobalAveragePool", "avg_pool", &[&x], vec![]);
                g.node("Flatten", "flatten", &[&pooled], vec![attr::int("axis", 1)])
            })
            .clone()
    };
    let logits_to = if head.softmax {
        "logits".to_string()
    } else {
        head.output.clone()
    };
    match &head.classifier {
        Classifier::Pooled { pooling, dense } => {
            let flat = means_of(&mut g);
            let head_in = match pooling {
                Pooling::Avg => flat.clone(),
                Pooling::AvgMax => {
                    let max = g.node("GlobalMaxPool", "max_pool", &[&x], vec![]);
                    let max = g.node(
                        "Flatten",
                        "max_flatten",
                        &[&max],
                        vec![attr::int("axis", 1)],
                    );
                    g.node(
                        "Concat",
                        "pooled_concat",
                        &[&flat, &max],
                        vec![attr::int("axis", 1)],
                    )
                }
            };
            let w = g.f32("head.weight", &[dense.inputs, dense.outputs], &dense.weight);
            let bias = g.f32("head.bias", &[dense.outputs], &dense.bias);
            g.node_to("Gemm", "head", &[&head_in, &w, &bias], vec![], &logits_to);
        }
        Classifier::Cells(cells) => {
            let cell_count = head.tap.side(side as usize).pow(2);
            cell_nodes(&mut g, cells, &x, channels, cell_count, &logits_to);
        }
    }
    if head.softmax {
        g.node_to(
            "Softmax",
            "softmax",
            &[&logits_to],
            vec![attr::int("axis", 1)],
            &head.output,
        );
    }
    if let Some(gate) = &head.gate {
        let flat = means_of(&mut g);
        gate_nodes(&mut g, gate, &flat, channels)?;
    }

    let final_side = head.tap.side(side as usize) as i64;
    let mut outputs = vec![
        value_info(&head.output, &[batch(), Dim::Fixed(classes as i64)]),
        value_info(
            FEATURES,
            &[
                batch(),
                Dim::Fixed(channels as i64),
                Dim::Fixed(final_side),
                Dim::Fixed(final_side),
            ],
        ),
    ];
    if head.gate.is_some() {
        for name in [KIDNEY, OOD] {
            outputs.push(value_info(name, &[batch(), Dim::Fixed(1)]));
        }
    }
    Ok(finish(
        g,
        outputs,
        side,
        doc,
        "Keras ResNet-50 v1, BatchNorm folded",
    ))
}

/// Serialises the stem and the first `stages` stages of `net` (BatchNorm folded), with the
/// last feature map as the only output, named `output`: the frozen part of a fine-tuning run
/// (`stages = 3` gives layer-3 activations, `N x 1024 x side/16 x side/16`).
pub fn export_trunk_onnx(
    net: &ResNet50,
    stages: usize,
    output: &str,
    side: usize,
    doc: &str,
) -> Result<Vec<u8>, OnnxError> {
    let input_side = check_side(side)?;
    if stages == 0 || stages > net.stages.len() {
        return Err(OnnxError::Stages(stages));
    }
    if output == INPUT {
        return Err(OnnxError::ReservedName(output.into()));
    }
    let mut g = Graph::new();
    trunk(&mut g, net, stages, output);
    let side = input_side >> (stages + 1);
    let channels = net.stages[stages - 1]
        .last()
        .map_or(0, |b| b.conv_c.shape[0] as i64);
    let outputs = vec![value_info(
        output,
        &[
            batch(),
            Dim::Fixed(channels),
            Dim::Fixed(side),
            Dim::Fixed(side),
        ],
    )];
    Ok(finish(
        g,
        outputs,
        input_side,
        doc,
        &format!("Keras ResNet-50 v1 up to stage {stages} of 4, BatchNorm folded"),
    ))
}

/// The per-cell classifier on the map `x` (`N x C x H x W`), writing the pooled, calibrated
/// logits to `output`. Written as matrix products on the map viewed as `N x C x cells` (not as
/// 1 x 1 convolutions), so the int8 rewrite, which quantizes convolutions, keeps the head in
/// float as it keeps the pooled head's Gemm.
fn cell_nodes(
    g: &mut Graph,
    cells: &CellClassifier,
    x: &str,
    channels: usize,
    cell_count: usize,
    output: &str,
) {
    let (hn, k) = (cells.hidden.outputs, cells.out.outputs);
    let shape = g.init(onnx_graph::tensor::i64(
        "head.cells.shape",
        &[3],
        &[0, channels as i64, -1],
    ));
    let flat = g.node("Reshape", "head_cells_flat", &[x, &shape], vec![]);
    let w1 = g.f32(
        "head.cells.w1",
        &[hn, channels],
        &transpose(&cells.hidden.weight, channels, hn),
    );
    // A context's bias joins the hidden layer's: the same sum, one node fewer.
    let mut bias1 = cells.hidden.bias.clone();
    if let Some(ctx) = &cells.context {
        bias1.iter_mut().zip(&ctx.bias).for_each(|(a, b)| *a += b);
    }
    let b1 = g.f32("head.cells.b1", &[hn, 1], &bias1);
    let w2 = g.f32(
        "head.cells.w2",
        &[k, hn],
        &transpose(&cells.out.weight, hn, k),
    );
    let b2 = g.f32("head.cells.b2", &[k, 1], &cells.out.bias);
    let h = g.node("MatMul", "head_cells_hidden", &[&w1, &flat], vec![]);
    let mut h = g.node("Add", "head_cells_hidden_bias", &[&h, &b1], vec![]);
    if let Some(ctx) = &cells.context {
        // N x C x 1 channel means, through `C -> H`, broadcast over the cells.
        let mean = g.node(
            "ReduceMean",
            "head_cells_context_mean",
            &[&flat],
            vec![attr::ints("axes", &[2]), attr::int("keepdims", 1)],
        );
        let wc = g.f32(
            "head.cells.wc",
            &[hn, channels],
            &transpose(&ctx.weight, channels, hn),
        );
        let c = g.node("MatMul", "head_cells_context", &[&wc, &mean], vec![]);
        h = g.node("Add", "head_cells_hidden_context", &[&h, &c], vec![]);
    }
    let h = g.node("Relu", "head_cells_relu", &[&h], vec![]);
    let z = g.node("MatMul", "head_cells_logits", &[&w2, &h], vec![]);
    let z = g.node("Add", "head_cells_logits_bias", &[&z, &b2], vec![]);
    // log(sum(exp(z))) as m + log(sum(exp(z - m))), m the maximum over cells: engines
    // (tract among them) compute ReduceLogSumExp as written, and exp of a confident cell's
    // logit overflows f32 above 88 and f16 above 11; exp(z - m) never exceeds 1.
    let over_cells = || vec![attr::ints("axes", &[2]), attr::int("keepdims", 1)];
    let m = g.node("ReduceMax", "head_cells_max", &[&z], over_cells());
    let shifted = g.node("Sub", "head_cells_shifted", &[&z, &m], vec![]);
    let lse = g.node(
        "ReduceLogSumExp",
        "head_cells_pool",
        &[&shifted],
        over_cells(),
    );
    let lse = g.node("Add", "head_cells_pool_max", &[&lse, &m], vec![]);
    let lse = g.node(
        "Flatten",
        "head_cells_pooled",
        &[&lse],
        vec![attr::int("axis", 1)],
    );
    let log_n = g.f32("head.cells.log_count", &[1], &[(cell_count as f32).ln()]);
    let mean = g.node("Sub", "head_cells_log_mean_exp", &[&lse, &log_n], vec![]);
    let inv_t = g.f32(
        "head.cells.inv_temperature",
        &[1],
        &[1.0 / cells.temperature],
    );
    g.node_to(
        "Mul",
        "head_cells_temperature",
        &[&mean, &inv_t],
        vec![],
        output,
    );
}

/// `rows x cols` row-major, transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// The view gate's nodes on the flattened pooled features `flat` (see [`GateHead`]).
fn gate_nodes(g: &mut Graph, gate: &GateHead, flat: &str, c: usize) -> Result<(), OnnxError> {
    let k = gate.inv_sd.len();
    let h = gate.kidney_b1.len();
    if gate.kidney_w1.len() != c * h
        || gate.kidney_w2.len() != h
        || h == 0
        || gate.mean.len() != c
        || k == 0
        || gate.components.len() != c * k
    {
        return Err(OnnxError::Gate(format!(
            "{} + {} head weights for {c} x {h}, {} means, {} components for {c} channels \
             and {k} directions",
            gate.kidney_w1.len(),
            gate.kidney_w2.len(),
            gate.mean.len(),
            gate.components.len()
        )));
    }
    let sum_sq = |g: &mut Graph, name: &str, x: &str| {
        g.node(
            "ReduceSumSquare",
            name,
            &[x],
            vec![attr::ints("axes", &[1]), attr::int("keepdims", 1)],
        )
    };
    let w1 = g.f32("gate.kidney.w1", &[c, h], &gate.kidney_w1);
    let b1 = g.f32("gate.kidney.b1", &[h], &gate.kidney_b1);
    let hidden = g.node("Gemm", "gate_kidney_hidden", &[flat, &w1, &b1], vec![]);
    let hidden = g.node("Relu", "gate_kidney_relu", &[&hidden], vec![]);
    let w2 = g.f32("gate.kidney.w2", &[h, 1], &gate.kidney_w2);
    let b2 = g.f32("gate.kidney.b2", &[1], &[gate.kidney_b2]);
    let logit = g.node("Gemm", "gate_kidney_logit", &[&hidden, &w2, &b2], vec![]);
    g.node_to("Sigmoid", "gate_kidney", &[&logit], vec![], KIDNEY);
    let mean = g.f32("gate.ood.mean", &[c], &gate.mean);
    let centered = g.node("Sub", "gate_ood_centered", &[flat, &mean], vec![]);
    let comp = g.f32("gate.ood.components", &[c, k], &gate.components);
    let proj = g.node("MatMul", "gate_ood_proj", &[&centered, &comp], vec![]);
    let inv_sd = g.f32("gate.ood.inv_sd", &[k], &gate.inv_sd);
    let z = g.node("Mul", "gate_ood_z", &[&proj, &inv_sd], vec![]);
    let zz = sum_sq(g, "gate_ood_inside", &z);
    let total = sum_sq(g, "gate_ood_total", &centered);
    let pp = sum_sq(g, "gate_ood_proj_energy", &proj);
    let resid = g.node("Sub", "gate_ood_residual", &[&total, &pp], vec![]);
    let riv = g.f32("gate.ood.residual_inv_var", &[1], &[gate.residual_inv_var]);
    let scaled = g.node("Mul", "gate_ood_residual_scaled", &[&resid, &riv], vec![]);
    let sum = g.node("Add", "gate_ood_sum", &[&zz, &scaled], vec![]);
    let per_dim = g.f32("gate.ood.per_dim", &[1], &[1.0 / c as f32]);
    g.node_to("Mul", "gate_ood", &[&sum, &per_dim], vec![], OOD);
    Ok(())
}

fn batch() -> Dim {
    Dim::Symbolic(BATCH.into())
}

/// The finished model: input `image` (batch symbolic), the given outputs.
fn finish(
    g: Graph,
    outputs: Vec<ValueInfoProto>,
    side: i64,
    doc: &str,
    architecture: &str,
) -> Vec<u8> {
    let input = value_info(
        INPUT,
        &[batch(), Dim::Fixed(3), Dim::Fixed(side), Dim::Fixed(side)],
    );
    let model = g.into_model(
        vec![input],
        outputs,
        ModelMeta {
            graph: "resnet50_v1".into(),
            producer: "renalscan".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc: doc.into(),
            metadata: vec![("architecture".into(), architecture.into())],
            opset: OPSET,
        },
    );
    onnx_graph::encode(&model)
}

/// Stem and the first `stages` stages; the last block's output is named `output`.
fn trunk(g: &mut Graph, net: &ResNet50, stages: usize, output: &str) -> String {
    let mut x = conv(g, "conv1", &net.conv1.fold(&net.bn1), INPUT);
    x = g.node("Relu", "conv1_relu", &[&x], vec![]);
    x = g.node(
        "MaxPool",
        "pool1",
        &[&x],
        vec![
            attr::ints("kernel_shape", &[3, 3]),
            attr::ints("strides", &[2, 2]),
            attr::ints("pads", &[1, 1, 1, 1]),
        ],
    );
    for (s, stage) in net.stages.iter().take(stages).enumerate() {
        for (b, block) in stage.iter().enumerate() {
            let id = crate::block_id(s, b);
            let mut y = conv(
                g,
                &format!("res{id}_a"),
                &block.conv_a.fold(&block.bn_a),
                &x,
            );
            y = g.node("Relu", &format!("res{id}_a_relu"), &[&y], vec![]);
            y = conv(
                g,
                &format!("res{id}_b"),
                &block.conv_b.fold(&block.bn_b),
                &y,
            );
            y = g.node("Relu", &format!("res{id}_b_relu"), &[&y], vec![]);
            y = conv(
                g,
                &format!("res{id}_c"),
                &block.conv_c.fold(&block.bn_c),
                &y,
            );
            let shortcut = match &block.shortcut {
                Some((c, bn)) => conv(g, &format!("res{id}_proj"), &c.fold(bn), &x),
                None => x.clone(),
            };
            let sum = g.node("Add", &format!("res{id}_add"), &[&y, &shortcut], vec![]);
            let last = s + 1 == stages && b + 1 == stage.len();
            x = if last {
                g.node_to("Relu", &format!("res{id}_relu"), &[&sum], vec![], output)
            } else {
                g.node("Relu", &format!("res{id}_relu"), &[&sum], vec![])
            };
        }
    }
    x
}

fn conv(g: &mut Graph, name: &str, c: &Conv, input: &str) -> String {
    g.conv(
        name,
        input,
        c.shape,
        &c.kernel,
        &c.bias,
        c.stride as i64,
        c.pad as i64,
    )
}
