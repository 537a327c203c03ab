//! Sessions as the journal tells them: start, decisions, marks, end (or an interruption).

use std::collections::BTreeMap;

use contract::events::{Decision, JournalRecord, Mark, ModelIdentity, SessionEvent};
use serde::Serialize;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Started, not ended (the runtime is screening it now, or it crashed and has not
    /// restarted yet).
    Open,
    Ended,
    /// The runtime stopped without ending it (crash, power cut); what was committed is kept.
    Interrupted,
    /// Its data went by the retention period.
    Purged,
}

/// One child's exam, from the journal.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub id: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub state: SessionState,
    /// The model that screened it.
    pub model: Option<ModelIdentity>,
    /// Decisions with their journal sequence numbers, in order.
    pub decisions: Vec<(u64, Decision)>,
    /// Clinicians' marks, in order.
    pub marks: Vec<Mark>,
    /// Journal number of its start record.
    pub journal_seq_first: u64,
}

impl Session {
    /// The mark standing for a decision (the last one entered).
    pub fn mark_of(&self, journal_seq: u64) -> Option<&Mark> {
        self.marks
            .iter()
            .rev()
            .find(|m| m.decision_seq == journal_seq)
    }
}

/// Whether a session id is one the runtime makes (`s-` + date-time + hex), so ids read
/// from a journal or typed on a command line can name folders safely.
pub fn valid_id(id: &str) -> bool {
    id.len() <= 64
        && id.starts_with("s-")
        && id.len() > 2
        && id[2..].bytes().all(|b| {
            b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-' || b == b'T' || b == b'Z'
        })
}

/// Groups journal records into sessions, oldest first. Decisions and marks outside any
/// session are not part of one; records of unknown sessions are ignored.
pub fn collect(records: impl IntoIterator<Item = (u64, JournalRecord)>) -> Vec<Session> {
    let mut by_id: BTreeMap<String, Session> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (seq, r) in records {
        match r {
            JournalRecord::Session(s) => match s.event {
                SessionEvent::Started { model } => {
                    if !valid_id(&s.session) || by_id.contains_key(&s.session) {
                        log::warn!(
                            "journal #{seq}: session {:?} started twice or badly named",
                            s.session
                        );
                        continue;
                    }
                    order.push(s.session.clone());
                    by_id.insert(
                        s.session.clone(),
                        Session {
                            id: s.session,
                            started_ms: s.unix_ms,
                            ended_ms: None,
                            state: SessionState::Open,
                            model,
                            decisions: Vec::new(),
                            marks: Vec::new(),
                            journal_seq_first: seq,
                        },
                    );
                }
                SessionEvent::Ended => {
                    if let Some(x) = by_id.get_mut(&s.session) {
                        x.ended_ms = Some(s.unix_ms);
                        x.state = SessionState::Ended;
                    }
                }
                SessionEvent::Interrupted => {
                    if let Some(x) = by_id.get_mut(&s.session) {
                        if x.state == SessionState::Open {
                            x.state = SessionState::Interrupted;
                            x.ended_ms = Some(s.unix_ms);
                        }
                    }
                }
                SessionEvent::Purged => {
                    if let Some(x) = by_id.get_mut(&s.session) {
                        x.state = SessionState::Purged;
                    }
                }
            },
            JournalRecord::Decision(d) => {
                if let Some(x) = d.session.as_ref().and_then(|id| by_id.get_mut(id)) {
                    x.decisions.push((seq, d));
                }
            }
            JournalRecord::Mark(m) => {
                if let Some(x) = m.session.as_ref().and_then(|id| by_id.get_mut(id)) {
                    x.marks.push(m);
                }
            }
        }
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect()
}

/// Reads the journal in `dir` and groups it. Damaged stretches are skipped with a warning
/// (the journal reports them); records that do not parse are skipped likewise.
pub fn read(dir: &std::path::Path) -> Result<Vec<Session>, journal::JournalError> {
    let mut out = Vec::new();
    for r in journal::Journal::records(dir)? {
        match r {
            Ok(rec) => match JournalRecord::from_bytes(&rec.payload) {
                Ok(j) => out.push((rec.seq, j)),
                Err(e) => log::warn!("journal #{}: not a record this version reads: {e}", rec.seq),
            },
            Err(e) => log::warn!("journal damage skipped: {e}"),
        }
    }
    Ok(collect(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::events::{DecisionKind, JournalState, MarkKind, SessionRecord};

    fn decision(session: Option<&str>, abnormal: bool) -> Decision {
        Decision {
            seq: 1,
            kind: DecisionKind::First,
            abnormal,
            p_abnormal: if abnormal { 0.9 } else { 0.1 },
            class: if abnormal {
                "cyst".into()
            } else {
                "normal".into()
            },
            confidence: 0.8,
            frames: 5,
            frame_index: 3,
            threshold: 0.5,
            threshold_source: contract::events::ThresholdSource::Bundle,
            low_quality: false,
            unix_ms: 10,
            uptime_ms: 1,
            model: "m@1".into(),
            snapshot: None,
            journal: JournalState::Off,
            session: session.map(str::to_string),
            trace: None,
        }
    }

    fn ev(id: &str, event: SessionEvent, t: u64) -> JournalRecord {
        JournalRecord::Session(SessionRecord {
            session: id.into(),
            event,
            unix_ms: t,
        })
    }

    #[test]
    fn records_group_into_sessions_with_their_state() {
        let a = "s-20261204T101500-ab12";
        let b = "s-20261204T103000-cd34";
        let recs = vec![
            (1, JournalRecord::Decision(decision(None, false))),
            (2, ev(a, SessionEvent::Started { model: None }, 100)),
            (3, JournalRecord::Decision(decision(Some(a), false))),
            (4, JournalRecord::Decision(decision(Some(a), true))),
            (
                5,
                JournalRecord::Mark(Mark {
                    kind: MarkKind::Agree,
                    decision_seq: 4,
                    unix_ms: 20,
                    from: "view".into(),
                    session: Some(a.into()),
                }),
            ),
            (6, ev(a, SessionEvent::Ended, 200)),
            (7, ev(b, SessionEvent::Started { model: None }, 300)),
            (8, JournalRecord::Decision(decision(Some(b), true))),
            (9, ev(b, SessionEvent::Interrupted, 400)),
            (
                10,
                ev("../../etc", SessionEvent::Started { model: None }, 500),
            ),
        ];
        let s = collect(recs);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].state, s[0].decisions.len()), (SessionState::Ended, 2));
        assert_eq!(s[0].decisions[1].0, 4);
        assert_eq!(s[0].mark_of(4).unwrap().kind, MarkKind::Agree);
        assert!(s[0].mark_of(3).is_none());
        assert_eq!(
            (s[1].state, s[1].ended_ms),
            (SessionState::Interrupted, Some(400))
        );
    }

    #[test]
    fn ids_that_could_escape_a_folder_are_not_valid() {
        assert!(valid_id("s-20261204T101500-ab12"));
        for bad in ["", "s-", "../x", "s-../x", "s-a/b", "x-123", "s-ABC"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
