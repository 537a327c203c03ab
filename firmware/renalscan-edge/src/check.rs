//! `renalscan-edge check`: what the device makes of files, frame by frame, without a run.
//!
//! Each frame goes through the runtime's own stages (blank gate, usimage preprocessing, the
//! anatomy gate, the model, the bundle's view gate) and gets one verdict: gated and why, or
//! the single-frame classification. For an integrator or clinician asking "what does it say
//! about this file?", and for measuring the view gate on real material.

use std::path::{Path, PathBuf};

use serde::Serialize;
use usimage::{GreyFrame, Preprocessor, UsFile};

use crate::config::GateConfig;
use crate::gate::{after_detection, Gate, GateReason};
use crate::infer::Classifier;

/// One frame's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub file: String,
    pub frame: u32,
    /// `gated`, `classified` or `error`.
    pub outcome: &'static str,
    /// Gate reason (`blank`, `no_scan_area`, `no_anatomy`, `no_kidney`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// For `no_kidney`: `learned`, `ood` or `both`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_kidney: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ood: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abnormal: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_abnormal: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Verdict {
    fn new(file: &Path, frame: u32, outcome: &'static str) -> Self {
        Self {
            file: file.display().to_string(),
            frame,
            outcome,
            reason: None,
            signal: None,
            p_kidney: None,
            ood: None,
            abnormal: None,
            class: None,
            p_abnormal: None,
            error: None,
        }
    }

    fn error(file: &Path, frame: u32, e: impl std::fmt::Display) -> Self {
        Self {
            error: Some(e.to_string()),
            ..Self::new(file, frame, "error")
        }
    }
}

/// Files under `inputs`: files as given, directories expanded (sorted, one level, images
/// and DICOM by extension).
pub fn expand(inputs: &[PathBuf]) -> Vec<PathBuf> {
    const EXT: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom"];
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| EXT.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// Verdicts for every `every`-th frame of `path` (cines: 1 = every frame).
pub fn check_file(classifier: &mut Classifier, path: &Path, every: u32) -> Vec<Verdict> {
    let file = match UsFile::open(path) {
        Ok(f) => f,
        Err(e) => return vec![Verdict::error(path, 0, format!("cannot decode: {e}"))],
    };
    let info = classifier.info().clone();
    let mut pre = Preprocessor::new(info.input_size, info.normalization.clone());
    let mut tensor = vec![0.0; pre.output_len()];
    let mut frame = GreyFrame::default();
    let mut out = Vec::new();
    for index in (0..file.frame_count()).step_by(every.max(1) as usize) {
        if let Err(e) = file.frame_into(index, &mut frame) {
            out.push(Verdict::error(path, index, format!("frame {index}: {e}")));
            continue;
        }
        // A fresh gate per frame: frames of different files are not freezes of each other.
        if Gate::new(GateConfig::default()).check(&frame).blank {
            out.push(gated(path, index, GateReason::Blank));
            continue;
        }
        let fi = match pre.process(&frame, &mut tensor) {
            Ok(fi) => fi,
            Err(e) => {
                out.push(Verdict::error(path, index, e));
                continue;
            }
        };
        if let Some(r) = after_detection(&fi) {
            out.push(gated(path, index, r));
            continue;
        }
        let c = match classifier.classify(&tensor) {
            Ok(c) => c,
            Err(e) => {
                out.push(Verdict::error(path, index, format!("{e:#}")));
                continue;
            }
        };
        let mut v = match c.view.as_ref().and_then(|v| v.signal()) {
            Some(signal) => Verdict {
                signal: Some(signal),
                ..gated(path, index, GateReason::NoKidney)
            },
            None => Verdict {
                abnormal: Some(c.p_abnormal >= info.threshold),
                class: Some(info.labels[c.class].clone()),
                p_abnormal: Some(c.p_abnormal),
                ..Verdict::new(path, index, "classified")
            },
        };
        if let Some(view) = &c.view {
            v.p_kidney = Some(view.p_kidney);
            v.ood = Some(view.ood);
        }
        out.push(v);
    }
    out
}

fn gated(path: &Path, frame: u32, r: GateReason) -> Verdict {
    Verdict {
        reason: Some(r.name()),
        ..Verdict::new(path, frame, "gated")
    }
}
