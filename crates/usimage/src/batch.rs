//! Files in, model-input PNGs and per-frame records out: the body of
//! `renalscan preprocess`, kept here so it is tested with the rest of the crate.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::decode::UsFile;
use crate::detect::ScanKind;
use crate::error::DecodeError;
use crate::frame::GreyFrame;
use crate::preprocess::{Preprocessor, PREPROCESS_VERSION};

/// What happened to one frame (one JSON line of `renalscan preprocess --json`). Holds no
/// patient attributes: only geometry and the detection.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FrameRecord {
    /// Source file as given.
    pub source: String,
    /// Frame index within the source (0 for still images).
    pub frame: u32,
    /// Source frame width.
    pub width: u32,
    /// Source frame height.
    pub height: u32,
    /// Scan-area box `[x0, y0, x1, y1]` (exclusive ends): the echo area the model input is
    /// cropped to; all zero when none was found.
    pub bbox: [u32; 4],
    /// The scanner's image region `[x0, y0, x1, y1]` (see `ScanArea::image_area`): what a
    /// DICOM ultrasound region describes; reported, never cropped to.
    pub image_area: [u32; 4],
    /// Sector, linear or none.
    pub kind: ScanKind,
    /// Panes found (split screens).
    pub panes: usize,
    /// Nothing in view: a gate for the caller, not an error.
    pub no_anatomy: bool,
    /// Milliseconds for decode-to-model-input of this frame.
    pub ms: f64,
    /// The model-input PNG written.
    pub output: String,
    /// [`PREPROCESS_VERSION`] that produced it.
    pub preprocess_version: u32,
}

/// Why a file could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Decoding failed.
    #[error("{path}: {source}")]
    Decode {
        /// The file.
        path: String,
        /// Why.
        source: DecodeError,
    },
    /// Writing the output failed.
    #[error("cannot write {path}: {source} (is the --out directory writable?)")]
    Write {
        /// The output file.
        path: String,
        /// Why.
        source: image::ImageError,
    },
}

/// Preprocesses every frame of `path`, writes `<out_dir>/<stem>_f<index>.png` (the grey
/// N x N model input before normalisation) and reports each frame to `on_frame`.
/// Returns the number of frames written.
pub fn preprocess_file(
    path: &Path,
    out_dir: &Path,
    pre: &mut Preprocessor,
    mut on_frame: impl FnMut(&FrameRecord),
) -> Result<u32, BatchError> {
    let name = path.display().to_string();
    let t0 = Instant::now();
    let file = UsFile::open(path).map_err(|source| BatchError::Decode {
        path: name.clone(),
        source,
    })?;
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "frame".into());
    let mut frame = GreyFrame::default();
    let mut tensor = vec![0f32; pre.output_len()];
    let n = pre.size();
    for index in 0..file.frame_count() {
        let t = Instant::now();
        file.frame_into(index, &mut frame)
            .map_err(|source| BatchError::Decode {
                path: name.clone(),
                source,
            })?;
        let info = pre
            .process(&frame, &mut tensor)
            .map_err(|e| BatchError::Decode {
                path: name.clone(),
                source: DecodeError::V4l2(e.to_string()),
            })?;
        let mut ms = t.elapsed().as_secs_f64() * 1e3;
        if index == 0 {
            ms += open_ms; // parsing and (for compressed DICOM) decoding all frames
        }
        let out: PathBuf = out_dir.join(format!("{stem}_f{index:04}.png"));
        image::GrayImage::from_raw(n, n, pre.last_grey().to_vec())
            .ok_or_else(|| BatchError::Write {
                path: out.display().to_string(),
                source: image::ImageError::Parameter(image::error::ParameterError::from_kind(
                    image::error::ParameterErrorKind::DimensionMismatch,
                )),
            })?
            .save(&out)
            .map_err(|source| BatchError::Write {
                path: out.display().to_string(),
                source,
            })?;
        on_frame(&FrameRecord {
            source: name.clone(),
            frame: index,
            width: frame.width(),
            height: frame.height(),
            bbox: info.crop,
            image_area: info.area.image_area,
            kind: info.area.kind,
            panes: info.area.pane_count,
            no_anatomy: info.area.no_anatomy,
            ms,
            output: out.display().to_string(),
            preprocess_version: PREPROCESS_VERSION,
        });
    }
    Ok(file.frame_count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{dicom_bytes, screen, FanShape};
    use crate::Normalization;

    #[test]
    fn writes_one_png_and_record_per_frame() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let shape = FanShape::Linear([80, 30, 240, 220]);
        let a = screen(320, 240, shape, 1, &mut Vec::new());
        let mut px = a.grey().to_vec();
        px.extend_from_slice(a.grey());
        let dcm = dir.join("cine.dcm");
        std::fs::write(&dcm, dicom_bytes(320, 240, "MONOCHROME2", 1, 2, px, None)).unwrap();
        let mut pre = Preprocessor::new(32, Normalization::caffe_bgr());
        let mut records = Vec::new();
        let n = preprocess_file(&dcm, dir, &mut pre, |r| records.push(r.clone())).unwrap();
        assert_eq!(n, 2);
        assert_eq!(records[1].frame, 1);
        assert_eq!(records[0].kind, ScanKind::Linear);
        let [x0, y0, x1, y1] = records[0].image_area;
        assert!(
            x0 <= 80 && y0 <= 30 && x1 >= 240 && y1 >= 220,
            "{records:?}"
        );
        // De-identification: the synthetic object's PatientName reaches no output.
        assert!(!format!("{records:?}").contains("Synthetic"));
        let bytes = std::fs::read(&records[0].output).unwrap();
        assert!(!bytes.windows(9).any(|w| w == b"Synthetic"));
        let png = image::open(&records[1].output).unwrap();
        assert_eq!((png.width(), png.height()), (32, 32));
        let missing = preprocess_file(&dir.join("nope.png"), dir, &mut pre, |_| {});
        assert!(matches!(missing, Err(BatchError::Decode { .. })));
    }
}
