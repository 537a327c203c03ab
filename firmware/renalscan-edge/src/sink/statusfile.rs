//! The latest status as one JSON file (`output.status_file`, `/run/renalscan/status.json`
//! under the systemd unit), for fleet tools that poll the cart instead of reading its log.
//! Written to a temporary file beside it and renamed over it, so a reader never sees half a
//! status; a write that fails (a full or read-only `/run`) is this sink's error alone.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{FrameView, Receipt, Sink, SinkError, StatusKind};
use crate::events::{Decision, StatusReport};

/// The status-file sink.
#[derive(Debug)]
pub struct StatusFileSink {
    path: PathBuf,
    tmp: PathBuf,
    written: u64,
}

impl StatusFileSink {
    /// A sink writing `path`; its directory must exist (systemd's `RuntimeDirectory=`).
    pub fn new(path: &Path) -> Self {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        Self {
            path: path.to_path_buf(),
            tmp: PathBuf::from(tmp),
            written: 0,
        }
    }

    fn write(&mut self, s: &StatusReport, kind: StatusKind) -> std::io::Result<()> {
        let mut v = serde_json::to_value(s)?;
        v["kind"] = serde_json::json!(match kind {
            StatusKind::Change => "change",
            StatusKind::Periodic => "periodic",
            StatusKind::Final => "final",
        });
        v["unix_ms"] = serde_json::json!(crate::events::unix_ms());
        let mut f = std::fs::File::create(&self.tmp)?;
        f.write_all(&serde_json::to_vec(&v)?)?;
        f.write_all(b"\n")?;
        std::fs::rename(&self.tmp, &self.path)
    }
}

impl Sink for StatusFileSink {
    fn name(&self) -> &'static str {
        "status_file"
    }

    fn decision(&mut self, _d: &Decision, _frame: &FrameView<'_>) -> Result<Receipt, SinkError> {
        Ok(Receipt::None)
    }

    fn status(&mut self, s: &StatusReport, kind: StatusKind) -> Result<(), SinkError> {
        self.write(s, kind).map_err(|e| {
            SinkError(format!(
                "cannot write the status file {}: {e}",
                self.path.display()
            ))
        })?;
        self.written += 1;
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"path": self.path.display().to_string(), "written": self.written}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_holds_the_latest_status_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let mut sink = StatusFileSink::new(&path);
        let mut s: StatusReport = serde_json::from_value(serde_json::json!({
            "state": "screening", "uptime_s": 1.0, "fps": 10.0, "infer_fps": 9.0,
            "frames": {"captured": 1, "processed": 1, "dropped": 0, "corrupt": 0, "idle": 0,
                       "gated": {}, "no_kidney_by": {}, "skipped": 0, "inferred": 1,
                       "errors": 0, "decisions": 0},
            "source": {"up": true, "lost": 0, "reopens": 0, "open_failures": 0},
            "latency_ms": {}, "cpu_ms": {}, "journal": {"health": "ok"}, "sinks": {},
            "rss_kib": 1
        }))
        .unwrap();
        sink.status(&s, StatusKind::Periodic).unwrap();
        s.uptime_s = 2.0;
        sink.status(&s, StatusKind::Final).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["uptime_s"], 2.0);
        assert_eq!(v["kind"], "final");
        assert!(!dir.path().join("status.json.tmp").exists());
        // A directory that is gone is this sink's error, naming the file.
        let mut gone = StatusFileSink::new(&dir.path().join("nope/status.json"));
        let e = gone.status(&s, StatusKind::Periodic).unwrap_err();
        assert!(e.0.contains("nope/status.json"), "{e:?}");
    }
}
