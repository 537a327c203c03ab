//! A classifier with the real model's interface (`image` 1x3x224x224 -> `probs` 1x6 and
//! `features` 1x3x7x7) whose answer is the scan's brightness: p(cyst) = sigmoid(k (m - c))
//! where m is the mean of the first input channel; every other abnormal class is negligible.
//! Bright frames are abnormal (cyst), dark ones normal, split at `c`.

use onnx_graph::{attr, Graph};

use crate::finish;

/// Model input side.
pub const SIZE: usize = 224;

/// The model's bytes for slope `k` and split `c` (see the module docs).
pub fn classifier(k: f32, c: f32) -> Vec<u8> {
    classifier_with_bias(k, [0.0, -20.0, -k * c, -20.0, -20.0, -20.0])
}

/// The same network with slope `k` and explicit logit biases: `k = 0` with `[0, -20, 20, ...]`
/// says cyst for every frame, a model clearly different from [`classifier`] (tests of which
/// bytes run).
pub fn classifier_with_bias(k: f32, bias: [f32; 6]) -> Vec<u8> {
    let (g, outputs) = body(k, bias);
    onnx_graph::encode(&finish(g, ("image", &[1, 3, SIZE, SIZE]), &outputs))
}

/// The view gate's two outputs on the same brightness `m`: `kidney` = sigmoid(-gk (m - gc))
/// (frames brighter than `gc` are "not a kidney") and `ood` = ((m - mu) / s)^2 (far from `mu`
/// is "unlike the training kidneys"). See [`crate::frames::gate`] for values that place
/// [`crate::frames::GLARE`] frames beyond both.
#[derive(Debug, Clone, Copy)]
pub struct GateParams {
    pub gk: f32,
    pub gc: f32,
    pub mu: f32,
    pub s: f32,
}

/// [`classifier`] with view-gate outputs `kidney` and `ood` (1x1 each), as `renalscan train`
/// exports them.
pub fn classifier_with_gate(k: f32, c: f32, gate: GateParams) -> Vec<u8> {
    let (mut g, mut outputs) = body(k, [0.0, -20.0, -k * c, -20.0, -20.0, -20.0]);
    let wk = g.f32("wk", &[3, 1], &[-gate.gk, 0.0, 0.0]);
    let bk = g.f32("bk", &[1], &[gate.gk * gate.gc]);
    g.node("Gemm", "kidney_logit", &["flat", &wk, &bk], vec![]);
    g.node("Sigmoid", "kidney", &["kidney_logit"], vec![]);
    let wo = g.f32("wo", &[3, 1], &[1.0 / gate.s, 0.0, 0.0]);
    let bo = g.f32("bo", &[1], &[-gate.mu / gate.s]);
    g.node("Gemm", "z", &["flat", &wo, &bo], vec![]);
    g.node("Mul", "ood", &["z", "z"], vec![]);
    outputs.push(("kidney", &[1, 1]));
    outputs.push(("ood", &[1, 1]));
    onnx_graph::encode(&finish(g, ("image", &[1, 3, SIZE, SIZE]), &outputs))
}

type Outputs = Vec<(&'static str, &'static [usize])>;

fn body(k: f32, bias: [f32; 6]) -> (Graph, Outputs) {
    let mut w = vec![0.0f32; 3 * 6];
    w[2] = k; // row 0 (channel 0) -> column 2 (cyst)
    let mut g = Graph::new();
    g.node_to(
        "AveragePool",
        "features",
        &["image"],
        vec![
            attr::ints("kernel_shape", &[32, 32]),
            attr::ints("strides", &[32, 32]),
        ],
        "features",
    );
    g.node("GlobalAveragePool", "pooled", &["features"], vec![]);
    g.node("Flatten", "flat", &["pooled"], vec![attr::int("axis", 1)]);
    let wn = g.f32("w", &[3, 6], &w);
    let bn = g.f32("b", &[6], &bias);
    g.node("Gemm", "logits", &["flat", &wn, &bn], vec![]);
    g.node("Softmax", "probs", &["logits"], vec![attr::int("axis", 1)]);
    (g, vec![("probs", &[1, 6]), ("features", &[1, 3, 7, 7])])
}
