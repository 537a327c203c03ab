//! Decoding errors: each names what was wrong with the input and what would fix it.

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file could not be read at all.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The bytes are not a PNG, JPEG, BMP, TIFF or DICOM file we recognise.
    #[error("unrecognised format (expected PNG, JPEG, BMP, TIFF or DICOM with a DICM preamble)")]
    UnknownFormat,
    /// The image decoder refused the data (truncated or corrupt file).
    #[error("image decoding failed: {0} (the file is truncated or corrupt; re-export it)")]
    Image(#[from] image::ImageError),
    /// The JPEG decoder refused the data.
    #[error("JPEG decoding failed: {0} (the file is truncated or corrupt; re-export it)")]
    Jpeg(String),
    /// The header declares far more pixels than the file could hold compressed.
    #[error(
        "header declares {width}x{height} but the file holds only {bytes} bytes; it is corrupt"
    )]
    Implausible {
        /// Width declared.
        width: u32,
        /// Height declared.
        height: u32,
        /// File size.
        bytes: usize,
    },
    /// A third-party decoder panicked on this input (a bug in that dependency, caught here).
    #[error("the {0} decoder crashed on this input (corrupt or unusual file); please report it")]
    DecoderPanic(&'static str),
    /// The image has a zero side.
    #[error("image is empty ({width}x{height}); a frame needs at least one pixel")]
    Empty {
        /// Width found.
        width: u32,
        /// Height found.
        height: u32,
    },
    /// The image is larger than the limits ([`crate::MAX_SIDE`], [`crate::MAX_PIXELS`]).
    #[error("image {width}x{height} exceeds the limits (16384 px per side, 256 MPixel); downscale it first")]
    TooLarge {
        /// Width found.
        width: u32,
        /// Height found.
        height: u32,
    },
    /// A buffer is shorter than its declared geometry needs.
    #[error("{what} truncated: need {expected} bytes, got {got}")]
    Truncated {
        /// Which buffer.
        what: &'static str,
        /// Bytes needed.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// The DICOM data set could not be parsed.
    #[error("DICOM parse failed: {0} (not a DICOM Part 10 file, or truncated)")]
    DicomParse(String),
    /// The DICOM object carries no pixel data (e.g. a structured report).
    #[error("DICOM object has no Pixel Data (7FE0,0010); it is not an image")]
    NoPixelData,
    /// A DICOM attribute needed for decoding is missing or malformed.
    #[error("DICOM attribute {name} missing or invalid; the object cannot be decoded")]
    DicomAttribute {
        /// Attribute keyword.
        name: &'static str,
    },
    /// The DICOM pixel encoding is one we cannot decode.
    #[error("unsupported DICOM pixel encoding: {0}; transcode it (e.g. `dcmconv +te`) to explicit VR little endian")]
    Unsupported(String),
    /// The DICOM pixel data decoder failed.
    #[error("DICOM pixel data decoding failed: {0}")]
    DicomPixels(String),
    /// A frame index past the end of a multi-frame object.
    #[error("frame {index} requested but the object has {count} frames")]
    FrameOutOfRange {
        /// Requested index.
        index: u32,
        /// Frames available.
        count: u32,
    },
    /// A raw V4L2 buffer whose geometry does not fit its format.
    #[error("V4L2 buffer invalid: {0}")]
    V4l2(String),
}

/// Runs a third-party decoder, turning a panic (a bug in it) into a typed error: input must
/// never bring the process down.
pub(crate) fn guarded<T>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::error!("{what} decoder panicked; input refused");
        Err(DecodeError::DecoderPanic(what))
    })
}
