//! Test fixtures: a tiny ONNX model with the real model's interface, bundles, and replay
//! frames whose brightness decides what the tiny model says.
// Each test binary uses a part of this module.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub use testkit::frames::{split, write_frames};
pub use testkit::signed::keys_of;

/// The runtime binary under test.
pub fn edge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_renalscan-edge"))
}

/// Labels in the real model's order.
pub const LABELS: [&str; 6] = contract::LABELS;

/// The tiny classifier with its split between dark and bright frames (`testkit::tiny`).
pub fn tiny_model() -> Vec<u8> {
    let (k, c) = split();
    testkit::tiny::classifier(k, c)
}

/// Writes a signed bundle with the tiny model: `<dir>` holds model.onnx, manifest.toml and
/// manifest.sig; the public key goes to [`keys_of`]`(dir)`.
pub fn write_bundle(dir: &Path, threshold: f32) -> PathBuf {
    write_bundle_with(dir, threshold, |m| m)
}

/// [`write_bundle`] with the manifest text edited before signing.
pub fn write_bundle_with(dir: &Path, threshold: f32, edit: impl Fn(String) -> String) -> PathBuf {
    testkit::signed::write_bundle_with(dir, &tiny_model(), threshold, edit)
}

/// `run --config <cfg> --bundle <bundle> --trusted-keys <its keys> --replay <frames>`,
/// then `extra`.
pub fn run_args(cfg: &Path, bundle: &Path, frames: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["run".into(), "--config".into()];
    v.push(cfg.display().to_string());
    v.push("--bundle".into());
    v.push(bundle.display().to_string());
    v.push("--trusted-keys".into());
    v.push(keys_of(bundle).display().to_string());
    v.push("--replay".into());
    v.push(frames.display().to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Runs the runtime to completion.
pub fn run_edge(args: &[String]) -> std::process::Output {
    Command::new(edge_bin()).args(args).output().unwrap()
}

/// Starts the runtime with `args`, stdout piped.
pub fn spawn_edge(args: &[String]) -> Child {
    Command::new(edge_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn renalscan-edge")
}

/// JSON lines of an output, parsed (non-JSON lines are skipped).
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Decisions among JSON lines.
pub fn decisions(lines: &[serde_json::Value]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter(|v| v["event"] == "decision")
        .cloned()
        .collect()
}
