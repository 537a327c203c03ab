//! train: transfer learning for pediatric renal screening on the ImageNet ResNet-50.
//!
//! Stage 1 keeps the backbone frozen: pooled features are extracted once with tract (the
//! engine the device runs) and cached by image content, preprocessing version and backbone
//! hash; the head (dropout, linear, 6 classes) then trains in burn in seconds. Splits are by
//! patient. The run ends with a calibrated, thresholded ONNX model and its manifest draft.

pub mod dataset;
pub mod extract;
pub mod head;
pub mod pipeline;
pub mod random;

pub use dataset::{assign_splits, load, parse_label, Sample, Split};
pub use extract::FeatureCache;
pub use head::{HeadConfig, LinearHead};
pub use pipeline::{export, train_stage1, RunSummary, TrainError, TrainOptions};
pub use random::randomise;
