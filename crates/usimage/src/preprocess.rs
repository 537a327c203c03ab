//! Frame to model input: crop to the scan area, blank outside it, letterbox to N x N, grey
//! to three channels, normalise. One implementation for training and the device.

use crate::detect::{Detector, ScanArea, ScanKind};
use crate::frame::GreyFrame;
use crate::normalize::Normalization;

/// Version of this algorithm (detection + crop + blank + resize). Model manifests pin it;
/// any change of output for the same input must bump it. 2: UI bars touching the image
/// (a full-width header) are no longer part of the scan area.
pub const PREPROCESS_VERSION: u32 = 2;

/// Errors of the per-frame path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreprocessError {
    /// The output tensor has the wrong length.
    #[error(
        "output tensor holds {got} floats, the model input needs 3 x {size} x {size} = {expected}"
    )]
    OutputSize {
        /// Input side.
        size: u32,
        /// Floats expected.
        expected: usize,
        /// Floats given.
        got: usize,
    },
}

/// What happened to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FrameInfo {
    /// The detected scan area (box, kind, panes, anatomy flag).
    pub area: ScanArea,
    /// Source region that was resized (`area.bbox`; all zero when no scan area was found).
    pub crop: [u32; 4],
    /// Where the content sits in the N x N output `[x0, y0, x1, y1]` (letterbox).
    pub placed: [u32; 4],
}

/// Per-frame preprocessing with reusable buffers: after the first frame of the largest size,
/// `process` does not allocate.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    size: u32,
    norm: Normalization,
    detector: Detector,
    /// Horizontal pass output: crop height x content width, u16 fixed point (value * 16).
    rows: Vec<u16>,
    /// Final grey N x N image.
    grey: Vec<u8>,
    /// One masked crop row.
    line: Vec<u8>,
    /// Per output column: source x range.
    xs: Vec<(u32, u32)>,
    /// Per output row: source y range.
    ys: Vec<(u32, u32)>,
}

impl Preprocessor {
    /// A preprocessor producing `size` x `size` inputs normalised by `norm` (from the model
    /// manifest).
    pub fn new(size: u32, norm: Normalization) -> Self {
        let size = size.max(1);
        Self {
            size,
            norm,
            detector: Detector::default(),
            rows: Vec::new(),
            grey: vec![0; (size * size) as usize],
            line: Vec::new(),
            xs: Vec::new(),
            ys: Vec::new(),
        }
    }

    /// Model input side N.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Floats the output tensor must hold: 3 x N x N.
    pub fn output_len(&self) -> usize {
        3 * (self.size * self.size) as usize
    }

    /// The grey N x N image of the last frame (what the model sees, before normalisation):
    /// save it as the de-identified snapshot.
    pub fn last_grey(&self) -> &[u8] {
        &self.grey
    }

    /// The detector, e.g. to read its mask after `process`.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Detects the scan area, then writes the model input (CHW, normalised) into `out`.
    /// When no scan area is found the output is black (nothing of the screen leaves usimage)
    /// and `info.area.no_anatomy` is set.
    pub fn process(
        &mut self,
        frame: &GreyFrame,
        out: &mut [f32],
    ) -> Result<FrameInfo, PreprocessError> {
        self.check_out(out)?;
        let area = self.detector.detect(frame);
        if area.kind == ScanKind::None {
            // Nothing that is surely image: output black rather than the screen (its text).
            self.grey.fill(0);
            self.norm.grey_to_chw(&self.grey, out);
            return Ok(FrameInfo {
                area,
                crop: [0; 4],
                placed: [0; 4],
            });
        }
        let crop = area.bbox;
        let placed = self.render(frame, crop, true);
        self.norm.grey_to_chw(&self.grey, out);
        Ok(FrameInfo { area, crop, placed })
    }

    /// Like [`Preprocessor::process`] but with a known image area (e.g. a DICOM region) instead
    /// of detection; everything outside `crop` is dropped and nothing inside is blanked
    /// except colour pixels.
    pub fn process_with_box(
        &mut self,
        frame: &GreyFrame,
        crop: [u32; 4],
        out: &mut [f32],
    ) -> Result<[u32; 4], PreprocessError> {
        self.check_out(out)?;
        let crop = [
            crop[0].min(frame.width() - 1),
            crop[1].min(frame.height() - 1),
            crop[2].clamp(1, frame.width()),
            crop[3].clamp(1, frame.height()),
        ];
        let crop = [
            crop[0],
            crop[1],
            crop[2].max(crop[0] + 1),
            crop[3].max(crop[1] + 1),
        ];
        let placed = self.render(frame, crop, false);
        self.norm.grey_to_chw(&self.grey, out);
        Ok(placed)
    }

    fn check_out(&self, out: &[f32]) -> Result<(), PreprocessError> {
        if out.len() != self.output_len() {
            return Err(PreprocessError::OutputSize {
                size: self.size,
                expected: self.output_len(),
                got: out.len(),
            });
        }
        Ok(())
    }

    /// Area-average resize of `crop` into the letterboxed N x N grey buffer, blanking pixels
    /// outside the detector's mask (when `use_mask`) and colour pixels. Integer arithmetic
    /// only: bit-identical on every target.
    fn render(&mut self, frame: &GreyFrame, crop: [u32; 4], use_mask: bool) -> [u32; 4] {
        let n = self.size;
        let (cw, ch) = (crop[2] - crop[0], crop[3] - crop[1]);
        // Letterbox: scale the long side to N.
        let (ow, oh) = if cw >= ch {
            (
                n,
                ((u64::from(ch) * u64::from(n) + u64::from(cw) / 2) / u64::from(cw)).max(1) as u32,
            )
        } else {
            (
                ((u64::from(cw) * u64::from(n) + u64::from(ch) / 2) / u64::from(ch)).max(1) as u32,
                n,
            )
        };
        let (ox, oy) = ((n - ow) / 2, (n - oh) / 2);
        spans(&mut self.xs, cw, ow);
        spans(&mut self.ys, ch, oh);
        let w = frame.width() as usize;
        let grey = frame.grey();
        let colour = frame.colour_mask();
        // Horizontal pass: for every crop row, average each output column's source span.
        self.rows.clear();
        self.rows.resize(ch as usize * ow as usize, 0);
        let det = &self.detector;
        let block = det.block().max(1);
        let (gw, _) = det.grid();
        let mask = det.mask();
        let (cx0, cx1) = (crop[0] as usize, crop[2] as usize);
        self.line.clear();
        self.line.resize(cx1 - cx0, 0);
        for sy in 0..ch as usize {
            let y = crop[1] as usize + sy;
            // The crop row with everything outside the scan area and every colour pixel set
            // to black, built run by run from the block mask.
            let line = &mut self.line;
            line.copy_from_slice(&grey[y * w + cx0..y * w + cx1]);
            if use_mask {
                let gy = y / block as usize;
                let mrow = &mask[gy * gw..(gy + 1) * gw];
                for (gx, &m) in mrow.iter().enumerate() {
                    if m == 0 {
                        let a = (gx * block as usize).max(cx0);
                        let b = ((gx + 1) * block as usize).min(cx1);
                        if a < b {
                            line[a - cx0..b - cx0].fill(0);
                        }
                    }
                }
            }
            if let Some(c) = colour {
                for (p, &m) in line.iter_mut().zip(&c[y * w + cx0..y * w + cx1]) {
                    if m != 0 {
                        *p = 0;
                    }
                }
            }
            let out = &mut self.rows[sy * ow as usize..(sy + 1) * ow as usize];
            for (o, &(a, b)) in out.iter_mut().zip(&self.xs) {
                let s: u32 = line[a as usize..b as usize]
                    .iter()
                    .map(|&v| u32::from(v))
                    .sum();
                let cnt = b - a;
                *o = ((s * 16 + cnt / 2) / cnt) as u16;
            }
        }
        // Vertical pass into the letterboxed output; padding is black.
        self.grey.fill(0);
        for (oyi, &(a, b)) in self.ys.iter().enumerate() {
            let dst =
                &mut self.grey[(oy as usize + oyi) * n as usize + ox as usize..][..ow as usize];
            let cnt = (b - a) * 16;
            for (ox_i, d) in dst.iter_mut().enumerate() {
                let mut s = 0u32;
                for sy in a..b {
                    s += u32::from(self.rows[sy as usize * ow as usize + ox_i]);
                }
                *d = ((s + cnt / 2) / cnt).min(255) as u8;
            }
        }
        [ox, oy, ox + ow, oy + oh]
    }
}

/// Source span `[a, b)` of each of `dst` output cells over `src` input cells (area average;
/// at least one source cell, so upscaling degrades to nearest neighbour).
fn spans(out: &mut Vec<(u32, u32)>, src: u32, dst: u32) {
    out.clear();
    let (src, dst) = (u64::from(src), u64::from(dst));
    for i in 0..dst {
        let a = (i * src / dst) as u32;
        let b = (((i + 1) * src).div_ceil(dst) as u32)
            .max(a + 1)
            .min(src as u32);
        let a = a.min(b - 1);
        out.push((a, b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{screen, FanShape};

    #[test]
    fn output_is_letterboxed_masked_and_normalised() {
        let shape = FanShape::Linear([200, 60, 520, 460]); // 320 x 400: taller than wide
        let mut text = Vec::new();
        let f = screen(720, 480, shape, 5, &mut text);
        let mut p = Preprocessor::new(64, Normalization::caffe_bgr());
        let mut out = vec![0f32; p.output_len()];
        let info = p.process(&f, &mut out).unwrap();
        // Letterbox: 64 high, about 64 * 320 / 400 = 51 wide, centred.
        let [x0, y0, x1, y1] = info.placed;
        assert_eq!((y0, y1), (0, 64));
        assert!((50..=53).contains(&(x1 - x0)), "{:?}", info.placed);
        assert_eq!(x0, (64 - (x1 - x0)) / 2);
        // Padding is black: BGR channel 0 = 0 - 103.939.
        assert_eq!(out[0], -103.939);
        // Content is not.
        let g = p.last_grey();
        assert!(g[32 * 64 + 32] > 0);
        // Three channels of the same grey, Caffe means subtracted.
        let plane = 64 * 64;
        let i = 32 * 64 + 32;
        assert_eq!(out[i] + 103.939, out[plane + i] + 116.779);
        assert_eq!(out[i] + 103.939, out[2 * plane + i] + 123.68);
    }

    #[test]
    fn text_outside_the_area_does_not_reach_the_output() {
        let shape = FanShape::Sector {
            apex_x: 320.0,
            apex_y: -10.0,
            half_angle: 0.6,
            r0: 60.0,
            r1: 420.0,
        };
        let mut text = Vec::new();
        let f = screen(640, 480, shape, 21, &mut text);
        let mut p = Preprocessor::new(96, Normalization::caffe_bgr());
        let mut a = vec![0f32; p.output_len()];
        let info = p.process(&f, &mut a).unwrap();
        // Rewrite every pixel outside the detected area: the output must not change.
        let mut g = f.clone();
        let w = f.width();
        for y in 0..f.height() {
            for x in 0..w {
                if !p.detector().inside(x, y) {
                    g.grey_mut()[(y * w + x) as usize] = ((x * 7 + y * 13) % 256) as u8;
                }
            }
        }
        let mut q = Preprocessor::new(96, Normalization::caffe_bgr());
        let mut b2 = vec![0f32; q.output_len()];
        let info2 = q.process(&f, &mut b2).unwrap();
        assert_eq!(a, b2, "deterministic");
        assert_eq!(info, info2);
        // Same detector mask applied to the altered frame gives the same output.
        let placed = p.render(&g, info.crop, true);
        assert_eq!(placed, info.placed);
        let mut c = vec![0f32; p.output_len()];
        p.norm.grey_to_chw(&p.grey, &mut c);
        assert_eq!(
            a, c,
            "pixels outside the scan area leaked into the model input"
        );
    }

    #[test]
    fn wrong_output_size_is_an_error() {
        let f = GreyFrame::from_grey(8, 8, vec![9; 64]).unwrap();
        let mut p = Preprocessor::new(16, Normalization::caffe_bgr());
        let mut out = vec![0f32; 10];
        assert!(matches!(
            p.process(&f, &mut out),
            Err(PreprocessError::OutputSize { .. })
        ));
        // Tiny frames still work (upscaling path).
        let mut out = vec![0f32; p.output_len()];
        let info = p.process(&f, &mut out).unwrap();
        assert!(info.area.no_anatomy);
        // Without a scan area nothing of the screen (its text) reaches the output.
        let shape = FanShape::Linear([0, 0, 0, 0]);
        let ui_only = screen(320, 240, shape, 4, &mut Vec::new());
        let info = p.process(&ui_only, &mut out).unwrap();
        assert_eq!((info.area.kind, info.crop), (ScanKind::None, [0; 4]));
        assert!(p.last_grey().iter().all(|&g| g == 0));
    }
}

#[cfg(test)]
mod version_pin {
    use super::*;
    use crate::synthetic::{paint_panel, screen, FanShape};

    /// FNV-1a over the grey model inputs of two fixed synthetic frames: a sector on a plain
    /// screen, and a linear image under a full-width header bar that touches it.
    fn digest() -> u64 {
        let shape = FanShape::Sector {
            apex_x: 400.0,
            apex_y: -25.0,
            half_angle: 0.68,
            r0: 80.0,
            r1: 560.0,
        };
        let sector = screen(800, 600, shape, 77, &mut Vec::new());
        let mut header = screen(
            640,
            480,
            FanShape::Linear([150, 40, 560, 440]),
            78,
            &mut Vec::new(),
        );
        paint_panel(&mut header, [0, 0, 640, 40], 40, 230, 79);
        let mut p = Preprocessor::new(224, Normalization::caffe_bgr());
        let mut out = vec![0f32; p.output_len()];
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for f in [&sector, &header] {
            p.process(f, &mut out).unwrap();
            h = p
                .last_grey()
                .iter()
                .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        }
        h
    }

    /// The output for a given input is part of the model contract: when this digest changes,
    /// bump [`PREPROCESS_VERSION`] and update the pin (same value on x86_64 and aarch64:
    /// integer arithmetic only).
    #[test]
    fn output_is_pinned_to_the_version() {
        assert_eq!(PREPROCESS_VERSION, 2);
        assert_eq!(
            digest(),
            PINNED_V2,
            "preprocessing output changed: bump PREPROCESS_VERSION"
        );
    }

    /// Version 2: the header-bar frame joined to the digest when UI bars left the scan area
    /// (under version 1 its crop began at the frame's corner).
    const PINNED_V2: u64 = 15_707_812_751_133_789_830;
}
