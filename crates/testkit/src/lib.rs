//! Fixtures for tests, shared so that no crate writes its own: a dev-dependency only, never
//! linked into a shipped binary.
//!
//! - [`Rng`]: deterministic numbers without `rand`.
//! - [`qop`]: a tiny residual network in float and QOperator int8 form (the file contract of
//!   `renalscan quantize`), for the int8 loader and the quantizer.
//! - [`tiny`]: a classifier with the real model's interface whose answer is the brightness of
//!   the scan, so a test decides what the model says by the frames it feeds.
//! - [`frames`]: synthetic probe frames (sector scan with speckle and burned-in text).
//! - [`manifests`]: the complete manifest text tests start from.
//! - [`signed`]: signed bundles around any model, with the test manifest and trusted keys.
//! - [`orthanc`]: a real PACS (Debian's Orthanc) started by the test on loopback.

pub mod frames;
pub mod manifests;
pub mod orthanc;
pub mod qop;
pub mod signed;
pub mod tiny;

/// Deterministic uniform numbers in [-1, 1) for test tensors, from the workspace's one
/// seeded generator.
#[derive(Debug, Clone)]
pub struct Rng(seeded::Rng);

impl Rng {
    /// A generator; different seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        Self(seeded::Rng::new(seed))
    }

    /// The next number in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0.f() * 2.0 - 1.0
    }

    /// `n` numbers scaled to [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// A model with one float input and float outputs of fixed shapes.
pub fn finish(
    g: onnx_graph::Graph,
    input: (&str, &[usize]),
    outputs: &[(&str, &[usize])],
) -> onnx_graph::pb::ModelProto {
    g.into_model(
        vec![onnx_graph::value_info_fixed(input.0, input.1)],
        outputs
            .iter()
            .map(|(n, d)| onnx_graph::value_info_fixed(n, d))
            .collect(),
        onnx_graph::ModelMeta {
            producer: "renalscan-tests".into(),
            ..Default::default()
        },
    )
}

/// Writes a model file.
pub fn write_model(model: &onnx_graph::pb::ModelProto, path: &std::path::Path) {
    std::fs::write(path, onnx_graph::encode(model)).expect("write test model");
}
