//! JSON lines on stdout: one object per decision and per periodic status, flushed per line
//! so a supervisor or test reading the pipe sees each at once. A closed stdout is not fatal.

use std::io::Write;

use serde::Serialize;

use super::{FrameView, Receipt, Sink, SinkError, StatusKind};
use crate::events::{Decision, SinkState, StatusReport};

/// The stdout sink.
#[derive(Debug, Default)]
pub struct StdoutSink {
    failed: bool,
}

impl StdoutSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `{"event": <event>, ...value}`. Serialised straight from the value (not via
    /// `serde_json::Value`, which would widen f32 to f64), so the numbers are the same text
    /// as in the journal record.
    pub fn emit(&mut self, event: &str, value: &impl Serialize) -> Result<(), SinkError> {
        let body = match serde_json::to_string(value) {
            Ok(b) if b.starts_with('{') => b,
            Ok(b) => format!("{{\"value\":{b}}}"),
            Err(e) => return Err(SinkError(format!("cannot serialise {event}: {e}"))),
        };
        let rest = &body[1..];
        let sep = if rest == "}" { "" } else { "," };
        let line = format!("{{\"event\":{event:?}{sep}{rest}\n");
        let mut out = std::io::stdout().lock();
        let r = out.write_all(line.as_bytes()).and_then(|_| out.flush());
        if let Err(e) = r {
            if !self.failed {
                log::warn!("stdout closed ({e}); decisions still go to the journal and cart");
            }
            self.failed = true;
        }
        Ok(())
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn decision(&mut self, d: &Decision, _frame: &FrameView<'_>) -> Result<Receipt, SinkError> {
        self.emit("decision", d)?;
        Ok(Receipt::None)
    }

    fn status(&mut self, s: &StatusReport, kind: StatusKind) -> Result<(), SinkError> {
        match kind {
            StatusKind::Change => Ok(()),
            StatusKind::Periodic => self.emit("status", s),
            StatusKind::Final => self.emit("final", s),
        }
    }

    /// A closed stdout is degraded, not failed: nothing on it is the record.
    fn state(&self) -> SinkState {
        if self.failed {
            SinkState::Degraded
        } else {
            SinkState::Ok
        }
    }
}
