//! Key frames of an exam: for every decision of an open session that is not a periodic
//! repeat (first, change, capture, freeze), the model input beside the same image with the
//! heatmap, kept in the session's folder under the decision's journal number. The export's
//! report shows them; retention deletes them with the session.

use std::io::Cursor;

use records::SessionStore;

use super::{FrameView, Receipt, Sink, SinkError};
use crate::events::{Decision, DecisionKind};
use crate::snapshot::render;

/// Writes key frames into the session store.
pub struct KeyframeSink {
    store: SessionStore,
    written: u64,
}

impl KeyframeSink {
    pub fn new(store: SessionStore) -> Self {
        Self { store, written: 0 }
    }
}

impl Sink for KeyframeSink {
    fn name(&self) -> &'static str {
        "keyframes"
    }

    fn decision(&mut self, d: &Decision, frame: &FrameView<'_>) -> Result<Receipt, SinkError> {
        let (Some(session), Some(seq)) = (d.session.as_deref(), d.journal.seq()) else {
            return Ok(Receipt::None);
        };
        if d.kind == DecisionKind::Update {
            return Ok(Receipt::None);
        }
        let img = frame.with_snapshot("", |s| render(s, 0.55).map_err(SinkError::new))?;
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(SinkError::new)?;
        self.store
            .write_frame(session, seq, &png)
            .map_err(SinkError::new)?;
        self.written += 1;
        Ok(Receipt::None)
    }

    fn report(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "written": self.written, "dir": self.store.root() }))
    }
}
