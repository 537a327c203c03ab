//! Snapshots of decisive frames (first decision of a window, changes, captures, freezes): the
//! model input and its class-activation map side by side, as one PNG (`crate::snapshot`).
//! An image sink like any other: it reads the frame from the [`FrameView`], names the file
//! after the journal's sequence number when the decision is committed, and hands the file
//! name on as a [`Receipt`]. A full or read-only disk fails the snapshot, never screening.

use std::time::SystemTime;

use super::{FrameView, Receipt, Sink, SinkError};
use crate::config::SnapshotConfig;
use crate::events::{Decision, DecisionKind};
use crate::infer::Classifier;
use crate::snapshot::SnapshotWriter;

/// The snapshot sink.
pub struct SnapshotSink {
    writer: SnapshotWriter,
    written: u64,
    failed: u64,
}

impl SnapshotSink {
    /// Opens the snapshot directory. Refuses a model whose decisions cannot be explained
    /// (no `features` output, or no head that maps onto it): snapshots would be pictures
    /// without a map.
    pub fn open(cfg: &SnapshotConfig, classifier: &Classifier) -> anyhow::Result<Self> {
        classifier.cam_head().map_err(|why| {
            anyhow::anyhow!("snapshots need the model's class-activation map: {why}")
        })?;
        Ok(Self {
            writer: SnapshotWriter::new(&cfg.dir, cfg.keep)?.with_max_bytes(cfg.max_bytes),
            written: 0,
            failed: 0,
        })
    }
}

impl Sink for SnapshotSink {
    fn name(&self) -> &'static str {
        "snapshots"
    }

    fn decision(&mut self, d: &Decision, frame: &FrameView<'_>) -> Result<Receipt, SinkError> {
        if d.kind == DecisionKind::Update {
            return Ok(Receipt::None);
        }
        let mut label = if d.abnormal {
            d.class.clone()
        } else {
            "normal".into()
        };
        if let Some(seq) = d.journal.seq() {
            label.push_str(&format!("-j{seq}"));
        }
        let r = frame.with_snapshot(&label, |s| {
            self.writer
                .write(s, SystemTime::now())
                .map_err(SinkError::new)
        });
        match r {
            Ok(p) => {
                self.written += 1;
                Ok(Receipt::Snapshot(p.display().to_string()))
            }
            Err(e) => {
                self.failed += 1;
                Err(e)
            }
        }
    }

    fn report(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"written": self.written, "failed": self.failed}))
    }
}
