//! One frame of one file: what data sets, caches and extraction address, so a cine's frames
//! can each be a training image without being written out again.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::decode::UsFile;
use crate::error::DecodeError;
use crate::frame::GreyFrame;

/// Frame `frame` of the image or DICOM file `path` (0 for still images).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameRef {
    /// The file.
    pub path: PathBuf,
    /// Frame index within it.
    pub frame: u32,
}

impl FrameRef {
    /// The first (or only) frame of a file.
    pub fn first(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            frame: 0,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decodes this frame from the file's bytes.
    pub fn decode(&self, bytes: &[u8]) -> Result<GreyFrame, DecodeError> {
        UsFile::from_bytes(bytes)?.frame(self.frame)
    }

    /// Content key of this frame: the sha256 of the file's bytes for frame 0 (so caches keyed
    /// by file content stay valid), of the bytes and the frame index otherwise.
    pub fn content_key(&self, bytes: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(bytes);
        if self.frame > 0 {
            h.update(b"\0renalscan-frame\0");
            h.update(self.frame.to_le_bytes());
        }
        h.finalize().into()
    }
}

impl fmt::Display for FrameRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.frame == 0 {
            write!(f, "{}", self.path.display())
        } else {
            write!(f, "{} frame {}", self.path.display(), self.frame)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_zero_keys_by_content_alone_and_others_differ() {
        let bytes = b"pixels";
        let a = FrameRef::first("x.dcm");
        let b = FrameRef {
            path: "x.dcm".into(),
            frame: 3,
        };
        let plain: [u8; 32] = Sha256::digest(bytes).into();
        assert_eq!(a.content_key(bytes), plain);
        assert_ne!(b.content_key(bytes), plain);
        assert_eq!(b.to_string(), "x.dcm frame 3");
        assert_eq!(a.to_string(), "x.dcm");
    }
}
