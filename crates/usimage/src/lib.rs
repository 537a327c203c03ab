//! usimage: ultrasound frames in, model input out — one implementation for host and device.
//!
//! Training and the edge runtime both call this crate, so the network never sees inputs
//! prepared two different ways (no training/serving skew).
//!
//! Pipeline: [`UsFile`] / [`v4l2`] decode to a [`GreyFrame`]; [`detect_scan_area`] finds the
//! image area (mask, box, sector or linear, panes); [`Preprocessor`] crops, blanks what lies
//! outside the scan area, letterboxes to N x N and normalises into a CHW tensor.

pub mod batch;
pub mod decode;
pub mod detect;
pub mod dicom;
pub mod error;
pub mod frame;
pub mod frameref;
pub mod normalize;
pub mod photo;
pub mod preprocess;
pub mod synthetic;
pub mod v4l2;

pub use batch::{preprocess_file, BatchError, FrameRecord};
pub use decode::{decode_image, UsFile};
pub use detect::{detect_scan_area, AreaMask, Detector, ScanArea, ScanKind};
pub use dicom::{read_header, DicomHeader, DicomImage, UsRegion};
pub use error::DecodeError;
pub use frame::{GreyFrame, MAX_PIXELS, MAX_SIDE};
pub use frameref::FrameRef;
pub use normalize::{ChannelOrder, Normalization};
pub use photo::{photo_tensor, PhotoError};
pub use preprocess::{FrameInfo, Preprocessor, PREPROCESS_VERSION};
