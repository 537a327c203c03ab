//! usimage: ultrasound frames in, model input out — one implementation for host and device.
//!
//! Training and the edge runtime both call this crate, so the network never sees inputs
//! prepared two different ways (no training/serving skew).

pub mod normalize;
pub mod photo;

pub use normalize::{ChannelOrder, Normalization};
pub use photo::{photo_tensor, PhotoError};
