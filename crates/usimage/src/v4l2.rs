//! Raw V4L2 capture buffers (YUYV, GREY, MJPEG) to grey frames, reusing the frame's buffers.
//!
//! The capture code itself lives with the edge runtime; this is the pixel-format half, so it
//! can be tested without a device.

use crate::error::DecodeError;
use crate::frame::{check_dims, GreyFrame};

/// Chroma distance from neutral (128) above which a YUYV pixel counts as coloured.
const UV_COLOUR: u8 = 20;

/// Pixel formats we accept from a capture device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Packed 4:2:2 `Y0 U Y1 V` (fourcc YUYV).
    Yuyv,
    /// 8-bit grey (fourcc GREY).
    Grey,
    /// Motion JPEG: each buffer is one JPEG image (fourcc MJPG).
    Mjpeg,
}

impl PixelFormat {
    /// Parses a fourcc name as configs spell it (`GREY`, `YUYV`, `MJPG`/`MJPEG`, any case).
    pub fn from_fourcc(s: &str) -> Option<PixelFormat> {
        match s.to_ascii_uppercase().as_str() {
            "GREY" | "GRAY" | "Y8" => Some(PixelFormat::Grey),
            "YUYV" | "YUY2" => Some(PixelFormat::Yuyv),
            "MJPG" | "MJPEG" => Some(PixelFormat::Mjpeg),
            _ => None,
        }
    }

    /// The fourcc bytes V4L2 uses for it.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }
}

/// Decodes one capture buffer into `out`. `stride` is the bytes per line the driver reports
/// (`bytesperline`); 0 means tightly packed. Ignored for MJPEG.
pub fn decode_buffer(
    format: PixelFormat,
    buf: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    out: &mut GreyFrame,
) -> Result<(), DecodeError> {
    check_dims(width, height)?;
    let (w, h) = (width as usize, height as usize);
    match format {
        PixelFormat::Grey | PixelFormat::Yuyv => {
            let bpp = if format == PixelFormat::Grey { 1 } else { 2 };
            if format == PixelFormat::Yuyv && w % 2 != 0 {
                return Err(DecodeError::V4l2(format!(
                    "YUYV width must be even, got {width}"
                )));
            }
            let stride = if stride == 0 { w * bpp } else { stride };
            if stride < w * bpp {
                return Err(DecodeError::V4l2(format!(
                    "stride {stride} is shorter than a line ({} bytes)",
                    w * bpp
                )));
            }
            let need = stride * (h - 1) + w * bpp;
            if buf.len() < need {
                return Err(DecodeError::Truncated {
                    what: "V4L2 buffer",
                    expected: need,
                    got: buf.len(),
                });
            }
            out.reset(width, height, format == PixelFormat::Yuyv)?;
            if format == PixelFormat::Grey {
                for (y, row) in out.grey_mut().chunks_exact_mut(w).enumerate() {
                    row.copy_from_slice(&buf[y * stride..y * stride + w]);
                }
                return Ok(());
            }
            let mut any = false;
            for y in 0..h {
                let line = &buf[y * stride..y * stride + 2 * w];
                let grey = &mut out.grey_mut()[y * w..(y + 1) * w];
                for (g, px) in grey.chunks_exact_mut(2).zip(line.chunks_exact(4)) {
                    g[0] = px[0];
                    g[1] = px[2];
                }
                if let Some(mask) = out.colour_mask_mut() {
                    let mask = &mut mask[y * w..(y + 1) * w];
                    for (m, px) in mask.chunks_exact_mut(2).zip(line.chunks_exact(4)) {
                        let c = px[1].abs_diff(128).max(px[3].abs_diff(128)) > UV_COLOUR;
                        any |= c;
                        m[0] = u8::from(c);
                        m[1] = u8::from(c);
                    }
                }
            }
            out.set_has_colour(any);
            Ok(())
        }
        PixelFormat::Mjpeg => {
            let f = crate::error::guarded("JPEG", || crate::decode::decode_jpeg(buf))?;
            if f.width() != width || f.height() != height {
                return Err(DecodeError::V4l2(format!(
                    "MJPEG frame is {}x{}, the device announced {width}x{height}",
                    f.width(),
                    f.height()
                )));
            }
            *out = f;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_with_stride_keeps_luma_and_flags_chroma() {
        // 2x2 pixels, stride 6 (2 padding bytes per line).
        let buf = [
            10, 128, 20, 128, 0xAA, 0xAA, //
            30, 250, 40, 128, 0xAA, 0xAA,
        ];
        let mut f = GreyFrame::default();
        decode_buffer(PixelFormat::Yuyv, &buf, 2, 2, 6, &mut f).unwrap();
        assert_eq!(f.grey(), &[10, 20, 30, 40]);
        assert_eq!(f.colour_mask().unwrap(), &[0, 0, 1, 1]);
    }

    #[test]
    fn mjpeg_frames_decode_and_must_match_the_announced_size() {
        let img = image::GrayImage::from_pixel(16, 8, image::Luma([120]));
        let mut jpg = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut jpg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        let mut f = GreyFrame::default();
        decode_buffer(PixelFormat::Mjpeg, &jpg, 16, 8, 0, &mut f).unwrap();
        assert!(f.grey().iter().all(|&v| v.abs_diff(120) <= 2));
        assert!(decode_buffer(PixelFormat::Mjpeg, &jpg, 32, 8, 0, &mut f).is_err());
        assert!(decode_buffer(PixelFormat::Mjpeg, &jpg[..20], 16, 8, 0, &mut f).is_err());
    }

    #[test]
    fn grey_short_buffer_and_bad_stride_are_errors() {
        let mut f = GreyFrame::default();
        assert!(decode_buffer(PixelFormat::Grey, &[1, 2, 3], 2, 2, 0, &mut f).is_err());
        assert!(decode_buffer(PixelFormat::Grey, &[0; 8], 4, 2, 3, &mut f).is_err());
        assert!(decode_buffer(PixelFormat::Yuyv, &[0; 8], 3, 1, 0, &mut f).is_err());
        decode_buffer(PixelFormat::Grey, &[1, 2, 9, 3, 4], 2, 2, 3, &mut f).unwrap();
        assert_eq!(f.grey(), &[1, 2, 3, 4]);
    }
}
