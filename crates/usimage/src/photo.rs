//! Ordinary photographs as network input: the ImageNet sanity path.
//!
//! Used to prove the pretrained backbone is intact (known photos must give known classes);
//! ultrasound frames take the scan-area path instead.

use std::path::Path;

use image::imageops::FilterType;

use crate::Normalization;

/// Errors reading a photograph.
#[derive(Debug, thiserror::Error)]
pub enum PhotoError {
    /// The file could not be opened or decoded.
    #[error("cannot read image {path}: {source} (is it a PNG/JPEG/BMP/TIFF file?)")]
    Decode {
        /// The offending file.
        path: String,
        /// What the decoder said.
        source: image::ImageError,
    },
}

/// Loads a photo, squashes it to `size` x `size` (as Keras' `load_img(target_size=...)` does,
/// no crop) and returns a CHW tensor normalised by `norm`.
pub fn photo_tensor(path: &Path, size: u32, norm: &Normalization) -> Result<Vec<f32>, PhotoError> {
    let img = image::open(path).map_err(|source| PhotoError::Decode {
        path: path.display().to_string(),
        source,
    })?;
    let rgb = image::imageops::resize(&img.to_rgb8(), size, size, FilterType::Triangle);
    let mut out = vec![0f32; rgb.as_raw().len()];
    norm.rgb_to_chw(rgb.as_raw(), &mut out);
    Ok(out)
}
