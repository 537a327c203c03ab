//! The Keras ImageNet ResNet-50 **v1** as plain data: topology, weights, BatchNorm folding
//! and ONNX export.
//!
//! Kept free of any training framework so that the exporter, the burn model and the tests
//! agree on one description of the network. Keras v1 differs from torchvision in ways that
//! matter (DESIGN.md): the stride of a stage's first block sits on its 1x1 `branch2a`
//! convolution, convolutions carry biases, BatchNorm epsilon is 1e-3.

pub mod onnx;
pub mod weights;

pub use onnx::{export_onnx, CellClassifier, Classifier, GateHead, Head, OnnxError, Pooling, Tap};
pub use weights::{BatchNorm, Block, Conv, Dense, ResNet50, WeightsError};

/// Bottleneck blocks per stage (stages 2-5 in Keras naming, layer1-4 in torchvision's).
pub const BLOCKS: [usize; 4] = [3, 4, 6, 3];
/// Output channels of each stage (4x the bottleneck width).
pub const STAGE_CHANNELS: [usize; 4] = [256, 512, 1024, 2048];
/// Channels of the last feature map, the input of the classifier head.
pub const FEATURE_CHANNELS: usize = 2048;
/// Input side the ImageNet weights were trained at.
pub const INPUT_SIZE: usize = 224;
/// Keras BatchNormalization epsilon used by these weights.
pub const BN_EPSILON: f32 = 1e-3;
/// Parameter count of the published Keras model (weights + biases + BN statistics).
pub const KERAS_PARAMETERS: usize = 25_636_712;

/// Keras name stem of block `block` (0-based) of stage `stage` (0-based): `2a`, `3d`, ...
pub fn block_id(stage: usize, block: usize) -> String {
    format!("{}{}", stage + 2, (b'a' + block as u8) as char)
}

/// Stride of a block: 2 on the first block of stages 3-5, else 1.
pub fn block_stride(stage: usize, block: usize) -> usize {
    if block == 0 && stage > 0 {
        2
    } else {
        1
    }
}
