//! Synthetic probe frames: a sector scan with speckle and burned-in text around it, its
//! tissue brightness scaled by a gain, so a test controls what [`crate::tiny`] answers.

use std::path::Path;

use usimage::synthetic::{screen, FanShape};
use usimage::{GreyFrame, Normalization, Preprocessor};

/// Dark tissue (normal for the tiny model).
pub const DARK: f32 = 0.6;
/// Bright tissue (abnormal).
pub const BRIGHT: f32 = 1.8;
/// Glare: brighter than any kidney the tiny gated model knows (its view gate refuses it).
pub const GLARE: f32 = 4.0;

/// A synthetic scan (sector with speckle, text around it) with the tissue scaled by `gain`.
pub fn frame(seed: u32, gain: f32) -> GreyFrame {
    let shape = FanShape::Sector {
        apex_x: 320.0,
        apex_y: -40.0,
        half_angle: 0.6,
        r0: 80.0,
        r1: 460.0,
    };
    let mut boxes = Vec::new();
    let f = screen(640, 480, shape, seed, &mut boxes);
    let (w, h) = (f.width(), f.height());
    let px: Vec<u8> = f
        .grey()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (x, y) = ((i as u32 % w) as f32 + 0.5, (i as u32 / w) as f32 + 0.5);
            if shape.contains(x, y) {
                (f32::from(v) * gain).clamp(1.0, 255.0) as u8
            } else {
                v
            }
        })
        .collect();
    GreyFrame::from_grey(w, h, px).expect("synthetic frame")
}

/// Mean of the model's first input channel for a frame (what the tiny model looks at).
pub fn channel0_mean(f: &GreyFrame) -> f32 {
    let mut pre = Preprocessor::new(224, Normalization::caffe_bgr());
    let mut t = vec![0.0; pre.output_len()];
    let info = pre.process(f, &mut t).expect("preprocess");
    assert!(!info.area.no_anatomy, "synthetic frame has no anatomy");
    let plane = 224 * 224;
    t[..plane].iter().sum::<f32>() / plane as f32
}

/// (k, c) placing the tiny model's split halfway between dark and bright frames.
pub fn split() -> (f32, f32) {
    let d = channel0_mean(&frame(1, DARK));
    let b = channel0_mean(&frame(1, BRIGHT));
    assert!(b > d + 2.0, "bright {b} vs dark {d}");
    (8.0 / (b - d), (b + d) / 2.0)
}

/// View-gate parameters for [`crate::tiny::classifier_with_gate`]: dark and bright frames
/// are kidneys (p(kidney) near 1, OOD score about 1), glare frames are not (p(kidney) near
/// 0, OOD score about 9 or more). Thresholds 0.5 and 4 separate them.
pub fn gate() -> crate::tiny::GateParams {
    let d = channel0_mean(&frame(1, DARK));
    let b = channel0_mean(&frame(1, BRIGHT));
    let g = channel0_mean(&frame(1, GLARE));
    assert!(g > b + 2.0, "glare {g} vs bright {b}");
    crate::tiny::GateParams {
        gk: 8.0 / (g - b),
        gc: (b + g) / 2.0,
        mu: (b + d) / 2.0,
        s: (b - d) / 2.0,
    }
}

/// Writes replay frames: `pattern[i]` true = bright (abnormal), false = dark (normal).
pub fn write_frames(dir: &Path, pattern: &[bool]) {
    let gains: Vec<f32> = pattern
        .iter()
        .map(|&b| if b { BRIGHT } else { DARK })
        .collect();
    write_frames_gain(dir, &gains);
}

/// Writes replay frames with these tissue gains ([`DARK`], [`BRIGHT`], [`GLARE`], ...).
pub fn write_frames_gain(dir: &Path, gains: &[f32]) {
    std::fs::create_dir_all(dir).expect("frames dir");
    for (i, &gain) in gains.iter().enumerate() {
        let f = frame(i as u32 + 1, gain);
        image::GrayImage::from_raw(f.width(), f.height(), f.grey().to_vec())
            .expect("frame buffer")
            .save(dir.join(format!("frame_{i:05}.png")))
            .expect("write frame");
    }
}
