//! What the pipeline emits: decisions (journaled, printed, sent to the cart) and status.

use serde::Serialize;

use crate::gate::GateReason;

/// Why a decision was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// First decision of a window (screening started, or after a reset).
    First,
    /// The aggregated decision flipped (hysteresis crossed).
    Change,
    /// Periodic repeat of the current aggregated decision.
    Update,
    /// Answer to the cart's Capture command (one frame).
    Capture,
    /// Classify-on-freeze: the frozen image, once.
    Freeze,
}

/// Where a decision stands in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum JournalState {
    /// No journal configured.
    #[default]
    Off,
    /// Synced to disk under this sequence number.
    Committed { seq: u64 },
    /// The disk refused it; held in memory and retried.
    Held,
    /// Neither written nor held (hold buffer full or journal failed).
    Lost { reason: String },
}

/// One screening decision.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Per-run decision counter.
    pub seq: u64,
    pub kind: DecisionKind,
    pub abnormal: bool,
    pub p_abnormal: f32,
    pub class: String,
    pub confidence: f32,
    /// Frames behind it (1 for capture and freeze).
    pub frames: usize,
    /// Source index of the last frame.
    pub frame_index: u64,
    pub threshold: f32,
    /// The image was blank, frozen or without anatomy (capture of a poor frame).
    pub low_quality: bool,
    pub unix_ms: u64,
    pub uptime_ms: u64,
    /// `name@version` of the model.
    pub model: String,
    /// Snapshot PNG of the decisive frame, when one was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Journal outcome (filled in by the journal sink, not part of the journaled record).
    #[serde(skip_serializing_if = "is_off")]
    pub journal: JournalState,
}

fn is_off(j: &JournalState) -> bool {
    *j == JournalState::Off
}

impl Decision {
    /// The journaled form: the decision without its journal outcome.
    pub fn record_bytes(&self) -> Vec<u8> {
        let mut d = self.clone();
        d.journal = JournalState::Off;
        serde_json::to_vec(&d).unwrap_or_default()
    }
}

/// Current time as Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counters by gate reason.
pub fn gated_map(counts: &[u64; 4]) -> serde_json::Map<String, serde_json::Value> {
    GateReason::ALL
        .iter()
        .map(|r| (r.name().to_string(), counts[r.index()].into()))
        .collect()
}
