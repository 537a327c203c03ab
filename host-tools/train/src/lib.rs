//! train: transfer learning for pediatric renal screening on the ImageNet ResNet-50.
//!
//! Stage 1 keeps the backbone frozen: pooled features are extracted once with tract (the
//! engine the device runs) and cached by image content, preprocessing version and backbone
//! hash; the head (dropout, linear, 6 classes) then trains in burn in seconds. Splits are by
//! patient. The run ends with a calibrated, thresholded ONNX model and its manifest draft.
//! Stage 2 (`--finetune layer4`) then trains layer4 + head from cached, augmented layer-3
//! activations, with per-epoch checkpoints to resume from, and exports the same way.

pub mod activations;
pub mod augment;
pub mod cells;
pub mod dataset;
pub mod extract;
pub mod finetune;
pub mod gate;
pub mod head;
pub mod kfold;
pub mod negatives;
pub mod pipeline;
pub mod random;
pub mod studies;

pub use dataset::{assign_splits, load, parse_label, Sample, Split};
pub use extract::FeatureCache;
pub use finetune::FinetuneConfig;
pub use head::{HeadConfig, LinearHead};
pub use pipeline::{
    draft_manifest, export, export_classifier, train_stage1, train_stage1_cells, train_stage2,
    RunSummary, Stage, Stage2Options, Stage2Summary, TrainError, TrainOptions, TrainedHead,
};
pub use random::randomise;

/// burn's random draws (initialisation, dropout) come from one process-wide generator that
/// `Device::seed` resets: tests that train or initialise a burn module hold this lock, so that
/// tests running in parallel cannot interleave their draws and break "same seed, same
/// result".
#[cfg(test)]
pub(crate) static BURN_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
