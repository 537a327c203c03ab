//! What the device emits, in the form every consumer reads: the journal (the record of
//! truth), stdout JSON lines, the cart, and host tools reading journals back.
//!
//! Decisions are journalled as their JSON ([`Decision::record_bytes`]); other records carry a
//! `"record"` tag ([`JournalRecord`]), so a journal written before a record kind existed still
//! reads as decisions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a decision was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// First decision of a window (screening started, or after a reset).
    First,
    /// The aggregated decision flipped (hysteresis crossed).
    Change,
    /// Periodic repeat of the current aggregated decision.
    Update,
    /// Answer to a capture command (one frame).
    Capture,
    /// Classify-on-freeze: the frozen image, once.
    Freeze,
}

impl DecisionKind {
    /// True for decisions about one frame (capture, freeze) rather than a window.
    pub fn is_single_frame(self) -> bool {
        matches!(self, DecisionKind::Capture | DecisionKind::Freeze)
    }
}

/// Where a decision stands in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum JournalState {
    /// No journal configured.
    #[default]
    Off,
    /// Synced to disk under this sequence number.
    Committed {
        /// The journal's sequence number: the decision's identity from here on.
        seq: u64,
    },
    /// The disk refused it; held in memory and retried.
    Held,
    /// Neither written nor held (hold buffer full or journal failed).
    Lost {
        /// Why, and what the operator should do.
        reason: String,
    },
}

impl JournalState {
    /// The journal sequence number, once committed.
    pub fn seq(&self) -> Option<u64> {
        match self {
            JournalState::Committed { seq } => Some(*seq),
            _ => None,
        }
    }
}

/// One screening decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Per-run decision counter.
    pub seq: u64,
    /// Why it was emitted.
    pub kind: DecisionKind,
    /// p(abnormal) at or above the threshold.
    pub abnormal: bool,
    /// The screening score.
    pub p_abnormal: f32,
    /// Label of the most likely class (see [`crate::Class::label`]).
    pub class: String,
    /// Probability of `class`.
    pub confidence: f32,
    /// Frames behind it (1 for capture and freeze).
    pub frames: usize,
    /// Source index of the last frame.
    pub frame_index: u64,
    /// Operating threshold on p(abnormal).
    pub threshold: f32,
    /// Where `threshold` came from (records before this field: the bundle).
    #[serde(default)]
    pub threshold_source: ThresholdSource,
    /// The image was blank, frozen or without anatomy (capture of a poor frame).
    pub low_quality: bool,
    /// Wall clock, Unix milliseconds (1970-based on carts without a clock battery).
    pub unix_ms: u64,
    /// Milliseconds since the runtime started.
    pub uptime_ms: u64,
    /// `name@version` of the model.
    pub model: String,
    /// Snapshot PNG of the decisive frame, when one was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Journal outcome (filled in by the journal sink, not part of the journalled record).
    #[serde(default, skip_serializing_if = "is_off")]
    pub journal: JournalState,
    /// The exam it belongs to, when one is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The software and configuration that made it (the device always sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Trace>,
}

/// Where an operating threshold came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdSource {
    /// The bundle's signed operating point.
    #[default]
    Bundle,
    /// The site's configuration, inside the range the bundle's signature allows.
    Site,
}

/// What made a decision: enough to find every decision a given build, bundle or
/// configuration made, and to rebuild the exact software.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// sha256 of the signed manifest: the bundle's identity.
    pub bundle_sha256: String,
    /// Key id of the bundle's signer.
    pub signer: String,
    /// Runtime version.
    pub runtime: String,
    /// Git revision the runtime was built from (`unknown` when built outside a checkout).
    pub git: String,
    /// sha256 of the effective configuration (file, defaults and flags), as JSON.
    pub config_sha256: String,
    /// The bundle's release (`model.version` and `[release] counter`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub release: String,
    /// Set when the bundle is older than the cart's floor and runs under a recorded
    /// downgrade override: its reason and time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade_override: Option<String>,
}

fn is_off(j: &JournalState) -> bool {
    *j == JournalState::Off
}

impl Decision {
    /// The journalled form: the decision without its journal outcome or snapshot (sinks
    /// after the journal add those, and name their files by the journal's sequence number).
    pub fn record_bytes(&self) -> Vec<u8> {
        let mut d = self.clone();
        d.journal = JournalState::Off;
        d.snapshot = None;
        // Serialising plain fields into a Vec cannot fail.
        serde_json::to_vec(&d).unwrap_or_default()
    }
}

/// The exam's call from its decisions, in order: the most confident abnormal window decision
/// if the device called abnormal at any point, else the last window decision; `None` when
/// no window decision was made (single-frame answers alone do not make an exam call).
///
/// Latched, because a sweep passes through a focal finding and out again: the live call
/// turns back to normal at the far pole, and the call standing at the end would miss it
/// (300 protocol sweeps: 71% of abnormal exams called at the end, 88% latched; specificity
/// 88% and 76%). A screening exam with an abnormal call during it is referred.
pub fn exam_call<'a>(decisions: impl IntoIterator<Item = &'a Decision>) -> Option<&'a Decision> {
    let mut last = None;
    let mut worst: Option<&Decision> = None;
    for d in decisions.into_iter().filter(|d| !d.kind.is_single_frame()) {
        if d.abnormal && worst.is_none_or(|w| d.p_abnormal > w.p_abnormal) {
            worst = Some(d);
        }
        last = Some(d);
    }
    worst.or(last)
}

/// A clinician's judgement of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkKind {
    /// The clinician agrees with the decision.
    Agree,
    /// The clinician disagrees.
    Disagree,
}

/// A clinician's mark on a journalled decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Agree or disagree.
    pub kind: MarkKind,
    /// Journal sequence number of the decision it judges.
    pub decision_seq: u64,
    /// Wall clock, Unix milliseconds.
    pub unix_ms: u64,
    /// Where it was entered (`view`, `cart`, `cli`).
    pub from: String,
    /// The exam it belongs to, when one is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

pub use crate::class::Side;

/// What the clinician typed or scanned for an exam (a barcode scanner is a keyboard). Kept
/// in the device's session store, never in the journal, logs, URLs or file names, so that
/// retention deletes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accession: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
}

impl SessionContext {
    /// Longest accepted field (a barcode, an MRN).
    pub const MAX_FIELD: usize = 64;

    /// Fields trimmed, empty ones dropped; a field too long or with control characters is
    /// refused with its name.
    pub fn cleaned(self) -> Result<Self, String> {
        let f = |name: &str, v: Option<String>| -> Result<Option<String>, String> {
            let Some(v) = v else { return Ok(None) };
            let v = v.trim().to_string();
            if v.is_empty() {
                return Ok(None);
            }
            if v.chars().count() > Self::MAX_FIELD {
                return Err(format!(
                    "{name} is longer than {} characters",
                    Self::MAX_FIELD
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(format!("{name} holds control characters"));
            }
            Ok(Some(v))
        };
        Ok(Self {
            patient_id: f("patient id", self.patient_id)?,
            accession: f("accession number", self.accession)?,
            operator: f("operator", self.operator)?,
            side: self.side,
        })
    }
}

/// The model that screened an exam, as its report names it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub name: String,
    pub version: String,
    /// sha256 of the signed manifest: the bundle's identity.
    pub bundle_sha256: String,
    /// Key id of the signer.
    pub signer: String,
    /// Operating threshold on p(abnormal).
    pub threshold: f32,
}

/// What happened to a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SessionEvent {
    /// Opened (its context went to the session store first).
    Started {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<ModelIdentity>,
    },
    /// Closed by the operator, the cart or the end of the run.
    Ended,
    /// Found open after a restart: the runtime stopped without closing it.
    Interrupted,
    /// Its context and images went by the retention period.
    Purged,
}

/// Patient and study attributes of a replayed DICOM study, read from the source: kept in
/// the session store beside the entered context (never in the journal), and copied into the
/// exam's DICOM objects so they join the source's study in the PACS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStudy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_birth_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_sex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accession: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study_time: Option<String>,
}

impl SourceStudy {
    /// Whether the source said anything about the patient or study.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A session's journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session: String,
    #[serde(flatten)]
    pub event: SessionEvent,
    pub unix_ms: u64,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "records are built one at a time, serialised and dropped: boxing the decision \
              would add an allocation per decision and save nothing"
)]
pub enum JournalRecord {
    /// A screening decision.
    Decision(Decision),
    /// A clinician's mark.
    Mark(Mark),
    /// A session started, ended, was interrupted or purged.
    Session(SessionRecord),
}

impl JournalRecord {
    /// Parses a journal payload; untagged records are decisions (the original format).
    pub fn from_bytes(bytes: &[u8]) -> Result<JournalRecord, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_slice(bytes)?;
        if v.get("record").is_none() {
            return serde_json::from_value(v).map(JournalRecord::Decision);
        }
        serde_json::from_value(v)
    }

    /// The payload to journal: decisions untagged (see [`Decision::record_bytes`]), other
    /// records tagged.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            JournalRecord::Decision(d) => d.record_bytes(),
            other => serde_json::to_vec(other).unwrap_or_default(),
        }
    }
}

/// What the device is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Not screening (waiting for a start).
    Idle,
    /// Classifying usable frames.
    Screening,
    /// Screening, but no usable frames arrive (probe lifted, unplugged).
    NoSignal,
    /// Inference fails.
    Fault,
}

/// Health of one sink, as the status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Working.
    Ok,
    /// Working with losses or delays (held records, a peer not answering).
    Degraded,
    /// Not working; screening goes on without it.
    Failed,
}

/// One sink's line in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkHealth {
    /// Working, degraded or failed.
    pub state: SinkState,
    /// Errors since start.
    pub errors: u64,
    /// The latest error, for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl SinkHealth {
    /// A healthy sink.
    pub fn ok() -> Self {
        Self {
            state: SinkState::Ok,
            errors: 0,
            last_error: None,
        }
    }
}

/// Frame counters of the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameCounts {
    /// Frames the source delivered.
    pub captured: u64,
    /// Frames taken from the slot.
    pub processed: u64,
    /// Replaced in the slot before the pipeline took them.
    pub dropped: u64,
    /// Source frames that could not be decoded.
    pub corrupt: u64,
    /// Taken while not screening.
    pub idle: u64,
    /// Not classified, by gate reason.
    pub gated: BTreeMap<String, u64>,
    /// `no_kidney` refusals by the view gate's signal that fired (`learned`, `ood`, `both`).
    #[serde(default)]
    pub no_kidney_by: BTreeMap<String, u64>,
    /// Usable frames not classified (every-Nth, live frames in freeze mode).
    pub skipped: u64,
    /// Inferences run.
    pub inferred: u64,
    /// Preprocessing or inference failures.
    pub errors: u64,
    /// Decisions emitted.
    pub decisions: u64,
}

/// Source counters of the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceCounts {
    /// Delivering frames now.
    pub up: bool,
    /// Times the source was lost.
    pub lost: u64,
    /// Times it was reopened.
    pub reopens: u64,
    /// Failed open attempts.
    pub open_failures: u64,
}

/// The periodic status record (stdout, log, the cart's subset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// What the device is doing.
    pub state: DeviceState,
    /// Seconds since start.
    pub uptime_s: f32,
    /// Frames processed per second over the last interval.
    pub fps: f32,
    /// Inferences per second over the last interval.
    pub infer_fps: f32,
    /// Frame counters.
    pub frames: FrameCounts,
    /// Source counters.
    pub source: SourceCounts,
    /// Latency per stage (mean, p50, p95, max), milliseconds.
    pub latency_ms: serde_json::Map<String, serde_json::Value>,
    /// Mean thread CPU time per stage over the run (contention-free cost).
    pub cpu_ms: serde_json::Map<String, serde_json::Value>,
    /// The journal's report (`{"health": "disabled"}` without one).
    pub journal: serde_json::Value,
    /// Health of every sink, by name.
    pub sinks: BTreeMap<String, SinkHealth>,
    /// Each other sink's own report under its name (`cart`, `snapshots`, ...).
    #[serde(flatten)]
    pub reports: BTreeMap<String, serde_json::Value>,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// The operating threshold in force and where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_source: Option<ThresholdSource>,
    /// The software and configuration running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Trace>,
}

/// Current time as Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision() -> Decision {
        Decision {
            seq: 3,
            kind: DecisionKind::Change,
            abnormal: true,
            p_abnormal: 0.9,
            class: "cyst".into(),
            confidence: 0.8,
            frames: 5,
            frame_index: 42,
            threshold: 0.5,
            threshold_source: ThresholdSource::Bundle,
            low_quality: false,
            unix_ms: 1,
            uptime_ms: 2,
            model: "m@1".into(),
            snapshot: Some("s.png".into()),
            journal: JournalState::Committed { seq: 9 },
            session: Some("s-20261204T101500-ab12".into()),
            trace: Some(Trace {
                bundle_sha256: "ab".into(),
                signer: "k".into(),
                runtime: "0.1.0".into(),
                git: "0123abcd".into(),
                config_sha256: "cd".into(),
                release: "0.1.0 (release 7)".into(),
                downgrade_override: None,
            }),
        }
    }

    #[test]
    fn the_exam_call_latches_the_most_confident_abnormal_window_decision() {
        let d = |kind, abnormal, p: f32| Decision {
            kind,
            abnormal,
            p_abnormal: p,
            ..decision()
        };
        use DecisionKind::*;
        // Abnormal while the plane crossed the finding, normal again at the far pole.
        let sweep = [
            d(First, false, 0.2),
            d(Change, true, 0.7),
            d(Update, true, 0.9),
            d(Change, false, 0.4),
        ];
        assert_eq!(exam_call(&sweep).map(|d| d.p_abnormal), Some(0.9));
        // Never abnormal: the last window decision.
        let calm = [d(First, false, 0.2), d(Update, false, 0.3)];
        assert_eq!(exam_call(&calm).map(|d| d.p_abnormal), Some(0.3));
        // A capture alone is no exam call, and an abnormal capture does not make one.
        assert!(exam_call(&[d(Capture, true, 0.99)]).is_none());
        let with_capture = [d(First, false, 0.2), d(Capture, true, 0.99)];
        assert!(!exam_call(&with_capture).unwrap().abnormal);
    }

    #[test]
    fn session_records_round_trip_tagged() {
        let r = JournalRecord::Session(SessionRecord {
            session: "s-20261204T101500-ab12".into(),
            event: SessionEvent::Started {
                model: Some(ModelIdentity {
                    name: "m".into(),
                    version: "1".into(),
                    bundle_sha256: "ab".into(),
                    signer: "k".into(),
                    threshold: 0.5,
                }),
            },
            unix_ms: 7,
        });
        let b = r.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            (v["record"].as_str(), v["event"].as_str()),
            (Some("session"), Some("started"))
        );
        assert_eq!(JournalRecord::from_bytes(&b).unwrap(), r);
        let end = JournalRecord::Session(SessionRecord {
            session: "s-1".into(),
            event: SessionEvent::Interrupted,
            unix_ms: 9,
        });
        assert_eq!(JournalRecord::from_bytes(&end.to_bytes()).unwrap(), end);
        // Older decisions (no session field) still read.
        let old = br#"{"seq":1,"kind":"first","abnormal":false,"p_abnormal":0.1,"class":"normal","confidence":0.9,"frames":3,"frame_index":7,"threshold":0.5,"low_quality":false,"unix_ms":0,"uptime_ms":0,"model":"m@1"}"#;
        match JournalRecord::from_bytes(old).unwrap() {
            JournalRecord::Decision(d) => assert_eq!(d.session, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn session_context_is_cleaned_and_bounded() {
        let c = SessionContext {
            patient_id: Some("  P-42 ".into()),
            accession: Some("".into()),
            operator: None,
            side: Some(Side::Right),
        }
        .cleaned()
        .unwrap();
        assert_eq!(c.patient_id.as_deref(), Some("P-42"));
        assert_eq!(c.accession, None);
        let long = SessionContext {
            patient_id: Some("x".repeat(65)),
            ..Default::default()
        };
        assert!(long.cleaned().unwrap_err().contains("patient id"));
        let ctl = SessionContext {
            operator: Some("a\u{7}b".into()),
            ..Default::default()
        };
        assert!(ctl.cleaned().unwrap_err().contains("operator"));
    }

    #[test]
    fn decision_records_are_untagged_and_read_back() {
        let d = decision();
        let bytes = d.record_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            !text.contains("record") && !text.contains("journal"),
            "{text}"
        );
        let back = JournalRecord::from_bytes(&bytes).unwrap();
        let mut expected = d.clone();
        expected.journal = JournalState::Off;
        expected.snapshot = None;
        assert_eq!(back, JournalRecord::Decision(expected));
        // The journalled record names the software that made it.
        for key in ["bundle_sha256", "signer", "runtime", "git", "config_sha256"] {
            assert!(text.contains(&format!("\"{key}\"")), "{key}: {text}");
        }
        assert!(text.contains("\"threshold_source\":\"bundle\""), "{text}");
    }

    /// Journals written before traces and threshold sources still read.
    #[test]
    fn older_decision_records_read_with_defaults() {
        let mut v: serde_json::Value = serde_json::from_slice(&decision().record_bytes()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("trace");
        o.remove("threshold_source");
        let bytes = serde_json::to_vec(&v).unwrap();
        let JournalRecord::Decision(d) = JournalRecord::from_bytes(&bytes).unwrap() else {
            panic!("not a decision");
        };
        assert_eq!(d.threshold_source, ThresholdSource::Bundle);
        assert_eq!(d.trace, None);
    }

    #[test]
    fn marks_are_tagged() {
        let m = JournalRecord::Mark(Mark {
            kind: MarkKind::Disagree,
            decision_seq: 9,
            unix_ms: 5,
            from: "view".into(),
            session: None,
        });
        let bytes = m.to_bytes();
        assert!(String::from_utf8_lossy(&bytes).contains("\"record\":\"mark\""));
        assert_eq!(JournalRecord::from_bytes(&bytes).unwrap(), m);
        assert!(JournalRecord::from_bytes(b"{\"record\":\"nonsense\"}").is_err());
        assert!(JournalRecord::from_bytes(b"not json").is_err());
    }
}
