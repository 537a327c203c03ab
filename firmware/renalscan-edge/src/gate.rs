//! Frame quality gate: only frames that can show a kidney reach the model.
//!
//! Before preprocessing (cheap): blank frames (probe unplugged from the scanner, black
//! screen) and frozen frames (identical to the previous one: the operator pressed freeze).
//! After usimage's scan-area detection: no scan area, or a scan area without echoes (probe
//! lifted off the skin). After inference, the bundle's view gate (`infer::ViewCheck`): a
//! learned "not a kidney" head and an out-of-distribution score, either of which refuses the
//! frame as `no_kidney`. Gated frames are counted by reason, never decided on (except on a
//! Capture command, flagged low quality).

use serde::Serialize;
use usimage::{FrameInfo, GreyFrame, ScanKind};

use crate::config::GateConfig;

/// Why a frame was not classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateReason {
    Blank,
    Frozen,
    NoScanArea,
    NoAnatomy,
    /// The bundle's view gate: anatomy, but not a kidney (or unlike any training kidney).
    NoKidney,
}

impl GateReason {
    pub const ALL: [GateReason; 5] = [
        GateReason::Blank,
        GateReason::Frozen,
        GateReason::NoScanArea,
        GateReason::NoAnatomy,
        GateReason::NoKidney,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            GateReason::Blank => "blank",
            GateReason::Frozen => "frozen",
            GateReason::NoScanArea => "no_scan_area",
            GateReason::NoAnatomy => "no_anatomy",
            GateReason::NoKidney => "no_kidney",
        }
    }
}

/// What the pre-preprocessing gate saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreGate {
    /// Blank, or `None`.
    pub blank: bool,
    /// Identical to the previous frame.
    pub repeat: bool,
    /// Consecutive identical frames so far (0 for a new image).
    pub repeats: u32,
}

/// The gate; keeps a copy of the previous frame to detect freezes (buffer reused).
#[derive(Debug, Default)]
pub struct Gate {
    cfg: GateConfig,
    prev: Vec<u8>,
    prev_dims: (u32, u32),
    repeats: u32,
}

impl Gate {
    pub fn new(cfg: GateConfig) -> Self {
        Self {
            cfg,
            ..Self::default()
        }
    }

    /// Blank and freeze checks on the raw frame.
    pub fn check(&mut self, frame: &GreyFrame) -> PreGate {
        let g = frame.grey();
        let dims = (frame.width(), frame.height());
        let repeat = self.cfg.frozen && dims == self.prev_dims && self.prev.as_slice() == g;
        if repeat {
            self.repeats = self.repeats.saturating_add(1);
        } else {
            self.repeats = 0;
            self.prev.clear();
            self.prev.extend_from_slice(g);
            self.prev_dims = dims;
        }
        PreGate {
            blank: self.is_blank(frame),
            repeat,
            repeats: self.repeats,
        }
    }

    /// Sampled grey range and mean (every 4th pixel of every 4th row).
    fn is_blank(&self, frame: &GreyFrame) -> bool {
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let g = frame.grey();
        let (mut lo, mut hi, mut sum, mut n) = (u8::MAX, 0u8, 0u64, 0u64);
        for y in (0..h).step_by(4) {
            for &v in g[y * w..(y + 1) * w].iter().step_by(4) {
                lo = lo.min(v);
                hi = hi.max(v);
                sum += u64::from(v);
                n += 1;
            }
        }
        if n == 0 {
            return true;
        }
        let mean = sum as f32 / n as f32;
        hi.saturating_sub(lo) <= self.cfg.blank_max_range || mean < self.cfg.blank_max_mean
    }

    /// Forget the previous frame (after a source reopen).
    pub fn reset(&mut self) {
        self.prev.clear();
        self.prev_dims = (0, 0);
        self.repeats = 0;
    }
}

/// The post-detection verdict from usimage's frame info.
pub fn after_detection(info: &FrameInfo) -> Option<GateReason> {
    if info.area.kind == ScanKind::None {
        Some(GateReason::NoScanArea)
    } else if info.area.no_anatomy {
        Some(GateReason::NoAnatomy)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> GreyFrame {
        let mut v = Vec::new();
        for y in 0..h {
            for x in 0..w {
                v.push(f(x, y));
            }
        }
        GreyFrame::from_grey(w, h, v).unwrap()
    }

    #[test]
    fn black_and_flat_frames_are_blank_speckle_is_not() {
        let mut g = Gate::new(GateConfig::default());
        assert!(g.check(&frame(64, 64, |_, _| 0)).blank);
        assert!(g.check(&frame(64, 64, |_, _| 120)).blank);
        let speckle = frame(64, 64, |x, y| ((x * 37 + y * 91) % 200) as u8);
        assert!(!g.check(&speckle).blank);
    }

    #[test]
    fn identical_frames_count_as_repeats_until_the_image_changes() {
        let mut g = Gate::new(GateConfig::default());
        let a = frame(32, 32, |x, y| (x + y) as u8);
        let b = frame(32, 32, |x, y| (x * y) as u8);
        assert!(!g.check(&a).repeat);
        let r = g.check(&a);
        assert!(r.repeat && r.repeats == 1);
        assert_eq!(g.check(&a).repeats, 2);
        assert!(!g.check(&b).repeat);
        let off = Gate::new(GateConfig {
            frozen: false,
            ..GateConfig::default()
        });
        let mut off = off;
        off.check(&a);
        assert!(!off.check(&a).repeat);
    }
}
