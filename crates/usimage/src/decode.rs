//! Any supported file (PNG, JPEG, BMP, TIFF, DICOM) to grey frames.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageReader, Limits};

use crate::dicom::{is_dicom, DicomImage, UsRegion};
use crate::error::{guarded, DecodeError};
use crate::frame::{check_dims, GreyFrame, MAX_PIXELS, MAX_SIDE};

/// A decoded source file: a still image or a DICOM object with one or more frames.
#[derive(Debug)]
pub enum UsFile {
    /// PNG, JPEG, BMP or TIFF: one frame.
    Still(GreyFrame),
    /// DICOM: frames decoded on demand, regions from its header.
    Dicom(Box<DicomImage>),
}

impl UsFile {
    /// Reads and decodes a file; the format is sniffed from its content, not its name.
    pub fn open(path: &Path) -> Result<Self, DecodeError> {
        let bytes = std::fs::read(path).map_err(|source| DecodeError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Decodes an in-memory file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if is_dicom(bytes) {
            return Ok(Self::Dicom(Box::new(DicomImage::from_bytes(bytes)?)));
        }
        decode_image(bytes).map(Self::Still)
    }

    /// Number of frames.
    pub fn frame_count(&self) -> u32 {
        match self {
            Self::Still(_) => 1,
            Self::Dicom(d) => d.frame_count(),
        }
    }

    /// Writes frame `index` into `out`, reusing its buffers.
    pub fn frame_into(&self, index: u32, out: &mut GreyFrame) -> Result<(), DecodeError> {
        match self {
            Self::Still(f) if index == 0 => {
                out.clone_from(f);
                Ok(())
            }
            Self::Still(_) => Err(DecodeError::FrameOutOfRange { index, count: 1 }),
            Self::Dicom(d) => d.frame_into(index, out),
        }
    }

    /// Frame `index` as a new [`GreyFrame`].
    pub fn frame(&self, index: u32) -> Result<GreyFrame, DecodeError> {
        let mut f = GreyFrame::default();
        self.frame_into(index, &mut f)?;
        Ok(f)
    }

    /// DICOM ultrasound regions (empty for still images).
    pub fn regions(&self) -> &[UsRegion] {
        match self {
            Self::Still(_) => &[],
            Self::Dicom(d) => d.regions(),
        }
    }
}

/// Decodes a PNG/JPEG/BMP/TIFF image (8 or 16 bit, grey or colour) with bounded memory.
pub fn decode_image(bytes: &[u8]) -> Result<GreyFrame, DecodeError> {
    guarded("image", || decode_image_inner(bytes))
}

fn decode_image_inner(bytes: &[u8]) -> Result<GreyFrame, DecodeError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| DecodeError::UnknownFormat)?;
    let format = reader.format().ok_or(DecodeError::UnknownFormat)?;
    reader.limits(limits());
    let (w, h) = reader.into_dimensions().map_err(classify)?;
    check_dims(w, h)?;
    check_plausible(w, h, bytes.len())?;
    if format == image::ImageFormat::Jpeg {
        // jpeg-decoder rather than image's zune-jpeg: fuzzing found zune-jpeg 0.5.15
        // panicking in its AVX2 IDCT on a corrupt file.
        return decode_jpeg(bytes);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| DecodeError::UnknownFormat)?;
    reader.limits(limits());
    let img = reader.decode().map_err(classify)?;
    dynamic_to_grey(img)
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // Largest legitimate decode: 16-bit RGBA at the pixel limit would be 2 GiB; allow 1 GiB.
    limits.max_alloc = Some(1 << 30);
    limits
}

/// Largest decoded / file size ratio believed: deflate tops out near 1032:1 and JPEG needs
/// bits for every 8x8 block, so a header beyond this is corrupt, and decoding it would only
/// burn time and memory.
const MAX_PIXELS_PER_BYTE: u64 = 2048;

/// Refuses headers that declare far more pixels than the file could hold.
pub(crate) fn check_plausible(w: u32, h: u32, bytes: usize) -> Result<(), DecodeError> {
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PIXELS {
        return Err(DecodeError::TooLarge {
            width: w,
            height: h,
        });
    }
    if pixels
        > (bytes as u64)
            .saturating_mul(MAX_PIXELS_PER_BYTE)
            .max(1 << 20)
    {
        return Err(DecodeError::Implausible {
            width: w,
            height: h,
            bytes,
        });
    }
    Ok(())
}

/// Baseline and progressive JPEG (grey, RGB/YCbCr, CMYK) to grey.
pub(crate) fn decode_jpeg(bytes: &[u8]) -> Result<GreyFrame, DecodeError> {
    use jpeg_decoder::PixelFormat as P;
    let jerr = |e: jpeg_decoder::Error| DecodeError::Jpeg(e.to_string());
    let mut d = jpeg_decoder::Decoder::new(bytes);
    d.read_info().map_err(jerr)?;
    let info = d
        .info()
        .ok_or_else(|| DecodeError::Jpeg("no frame header".into()))?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    check_dims(w, h)?;
    check_plausible(w, h, bytes.len())?;
    d.set_max_decoding_buffer_size(1 << 30);
    let px = d.decode().map_err(jerr)?;
    match info.pixel_format {
        P::L8 => GreyFrame::from_grey(w, h, px),
        P::L16 => GreyFrame::from_grey(w, h, px.chunks_exact(2).map(|c| c[0]).collect()),
        P::RGB24 => GreyFrame::from_rgb(w, h, &px),
        P::CMYK32 => {
            let rgb: Vec<u8> = px
                .chunks_exact(4)
                .flat_map(|c| {
                    let k = 255 - u16::from(c[3]);
                    let f = |v: u8| ((255 - u16::from(v)) * k / 255) as u8;
                    [f(c[0]), f(c[1]), f(c[2])]
                })
                .collect();
            GreyFrame::from_rgb(w, h, &rgb)
        }
    }
}

fn classify(e: image::ImageError) -> DecodeError {
    match e {
        image::ImageError::Unsupported(_) => DecodeError::UnknownFormat,
        other => DecodeError::Image(other),
    }
}

/// Converts any decoded image to grey; colour pixels are flagged, 16-bit data keeps its
/// most significant occupied bits (12-bit data in 16-bit containers is not left dark).
fn dynamic_to_grey(img: DynamicImage) -> Result<GreyFrame, DecodeError> {
    let (w, h) = (img.width(), img.height());
    check_dims(w, h)?;
    match img {
        DynamicImage::ImageLuma8(b) => GreyFrame::from_grey(w, h, b.into_raw()),
        DynamicImage::ImageLuma16(b) => {
            let raw = b.into_raw();
            let max = raw.iter().copied().max().unwrap_or(0);
            let shift = (16 - max.leading_zeros()).saturating_sub(8);
            GreyFrame::from_grey(w, h, raw.iter().map(|&v| (v >> shift) as u8).collect())
        }
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageLumaA16(_) => {
            let b = img.to_luma8();
            GreyFrame::from_grey(w, h, b.into_raw())
        }
        DynamicImage::ImageRgb8(b) => GreyFrame::from_rgb(w, h, b.as_raw()),
        other => {
            let b = other.to_rgb8();
            GreyFrame::from_rgb(w, h, b.as_raw())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(img: DynamicImage) -> Vec<u8> {
        let mut v = Vec::new();
        img.write_to(&mut Cursor::new(&mut v), image::ImageFormat::Png)
            .unwrap();
        v
    }

    #[test]
    fn sixteen_bit_png_keeps_its_range() {
        let mut b = image::ImageBuffer::<image::Luma<u16>, _>::new(4, 1);
        for (i, p) in b.pixels_mut().enumerate() {
            p.0[0] = (i as u16) * 1365; // 12-bit data, max 4095
        }
        let f = decode_image(&png_bytes(DynamicImage::ImageLuma16(b))).unwrap();
        assert_eq!(f.grey(), &[0, 85, 170, 255]);
    }

    #[test]
    fn every_still_format_decodes_to_the_same_grey() {
        let g = image::GrayImage::from_fn(16, 8, |x, y| image::Luma([(x * 16 + y) as u8]));
        for fmt in [
            image::ImageFormat::Png,
            image::ImageFormat::Bmp,
            image::ImageFormat::Tiff,
            image::ImageFormat::Jpeg,
        ] {
            let mut v = Vec::new();
            DynamicImage::ImageLuma8(g.clone())
                .write_to(&mut Cursor::new(&mut v), fmt)
                .unwrap();
            let f = UsFile::from_bytes(&v).unwrap().frame(0).unwrap();
            assert_eq!((f.width(), f.height()), (16, 8), "{fmt:?}");
            let max_err = f
                .grey()
                .iter()
                .zip(g.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            let tolerance = if fmt == image::ImageFormat::Jpeg {
                12
            } else {
                0
            };
            assert!(max_err <= tolerance, "{fmt:?}: error {max_err}");
        }
    }

    #[test]
    fn truncated_and_garbage_inputs_are_typed_errors() {
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(64, 64, image::Luma([7])));
        let png = png_bytes(img.clone());
        assert!(matches!(
            decode_image(&png[..png.len() / 2]),
            Err(DecodeError::Image(_))
        ));
        let mut jpg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpg), image::ImageFormat::Jpeg)
            .unwrap();
        assert!(UsFile::from_bytes(&jpg[..40]).is_err());
        assert!(matches!(
            UsFile::from_bytes(b"hello world, not an image"),
            Err(DecodeError::UnknownFormat)
        ));
        assert!(matches!(
            UsFile::from_bytes(&[]),
            Err(DecodeError::UnknownFormat)
        ));
    }

    #[test]
    fn absurd_png_header_refused_without_allocating() {
        // A valid PNG signature + IHDR declaring 100000 x 100000.
        let img = DynamicImage::ImageLuma8(image::GrayImage::new(1, 1));
        let mut png = png_bytes(img);
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        // Fix the IHDR CRC so the decoder reaches the size check.
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(decode_image(&png).is_err());
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
}
