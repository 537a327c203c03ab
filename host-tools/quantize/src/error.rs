//! Why a quantization failed. Each message names the file, node or image involved.

/// Errors of the quantizer.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The bytes are not an ONNX model.
    #[error("not an ONNX model: {0}")]
    Decode(String),
    /// The model has an operator the quantizer does not handle.
    #[error("unsupported operator {op} (node `{node}`): the quantizer handles Conv, Relu, MaxPool, Add, GlobalAveragePool, GlobalMaxPool, Concat, Flatten, Reshape, Gemm, MatMul, Softmax, Sigmoid, Sub, Mul, ReduceSumSquare, ReduceMax, ReduceLogSumExp")]
    UnsupportedOp {
        /// ONNX op type.
        op: String,
        /// Node name.
        node: String,
    },
    /// The model is already quantized or has non-float tensors.
    #[error("model is not a float model: {0}")]
    NotFloat(String),
    /// The graph is not shaped the way the quantizer needs.
    #[error("invalid model: {0}")]
    Invalid(String),
    /// A tensor needs an activation scale the calibration did not produce.
    #[error("no calibrated scale for tensor `{0}`")]
    MissingScale(String),
    /// No calibration images at all.
    #[error("empty {0} set: give at least one image")]
    EmptySet(String),
    /// Too many images could not be decoded or preprocessed.
    #[error(
        "{failed} of {total} {what} images unreadable (more than {max_pct}% tolerated):\n{list}"
    )]
    Unreadable {
        /// Which set.
        what: String,
        /// Unreadable images.
        failed: usize,
        /// Images tried.
        total: usize,
        /// Tolerated percentage.
        max_pct: f64,
        /// The first of them, one per line with the reason.
        list: String,
    },
    /// tract refused the model or failed to run it.
    #[error("tract: {0}")]
    Tract(String),
    /// File system.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}
