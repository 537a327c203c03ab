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

/// A runtime in the background whose stdout JSON lines and stderr log are collected as they
/// come, for tests that talk to it while it runs. Killed when dropped, however the test ends.
pub struct Running {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Starts `renalscan-edge <args>` with `RUST_LOG=info`.
    pub fn spawn(args: &[String]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = spawn_edge(args);
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::<std::sync::Mutex<Vec<serde_json::Value>>>::default();
        let log = std::sync::Arc::<std::sync::Mutex<String>>::default();
        let (l2, g2) = (lines.clone(), log.clone());
        let readers = vec![
            std::thread::spawn(move || {
                for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str(&l) {
                        l2.lock().unwrap().push(v);
                    }
                }
            }),
            std::thread::spawn(move || {
                for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut g = g2.lock().unwrap();
                    g.push_str(&l);
                    g.push('\n');
                }
            }),
        ];
        Self {
            child,
            lines,
            log,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The decisions printed so far.
    pub fn decisions(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == "decision")
            .cloned()
            .collect()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the exit and the last output.
    #[allow(unsafe_code)] // kill(2): std can only send SIGKILL; the test needs SIGTERM.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary cart for exam tests: the tiny model's bundle, a normal then an abnormal
/// sweep, and a config with `head` (aggregation, output), the journal and the session store
/// under `root`, then `tail`.
pub struct ExamCart {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub bundle: PathBuf,
    pub frames: PathBuf,
    pub cfg: PathBuf,
}

pub fn exam_cart(normal: usize, abnormal: usize, head: &str, tail: &str) -> ExamCart {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let frames = root.join("frames");
    let mut pattern = vec![false; normal];
    pattern.extend(std::iter::repeat_n(true, abnormal));
    write_frames(&frames, &pattern);
    let bundle = write_bundle(&root.join("bundle"), 0.5);
    let cfg = root.join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "{head}[journal]\ndir = \"{}\"\n[session]\ndir = \"{}\"\n{tail}",
            root.join("journal").display(),
            root.join("sessions").display()
        ),
    )
    .unwrap();
    ExamCart {
        _tmp: tmp,
        root,
        bundle,
        frames,
        cfg,
    }
}
