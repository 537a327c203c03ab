//! What the pipeline emits. The types are the host/device contract (`contract::events`);
//! this module adds what only the runtime knows: the gate's reasons by name.

use std::collections::BTreeMap;

pub use contract::events::{
    unix_ms, Decision, DecisionKind, DeviceState, FrameCounts, JournalRecord, JournalState, Mark,
    MarkKind, ModelIdentity, SessionContext, SessionEvent, SessionRecord, Side, SinkHealth,
    SinkState, SourceCounts, SourceStudy, StatusReport, ThresholdSource, Trace,
};

use crate::gate::GateReason;

/// Counters by gate reason, keyed by the reason's name.
pub fn gated_map(counts: &[u64; 5]) -> BTreeMap<String, u64> {
    GateReason::ALL
        .iter()
        .map(|r| (r.name().to_string(), counts[r.index()]))
        .collect()
}

/// The view gate's refusals by the signal that fired.
pub fn no_kidney_map(counts: &[u64; 3]) -> BTreeMap<String, u64> {
    ["learned", "ood", "both"]
        .iter()
        .zip(counts)
        .map(|(k, v)| ((*k).to_string(), *v))
        .collect()
}
