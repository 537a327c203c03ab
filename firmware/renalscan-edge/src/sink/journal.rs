//! The journal: the first sink and the record of truth. Every decision is appended to the
//! crash-safe journal before any other sink sees it; its [`Receipt`] (committed under a
//! sequence number, held, or lost) travels with the decision, so what the operator and the
//! cart see says whether it is on disk. A full or read-only disk does not stop screening: the
//! journal holds records in memory (bounded), raises a loud alarm (error log every ten
//! seconds, health in the status and on the cart) and flushes the held records, in order,
//! when writes succeed again.

use std::time::{Duration, Instant};

use journal::{FaultSwitch, Health, JournalConfig, Outcome, ResilientJournal};

use super::{FrameView, Receipt, Sink, SinkError};
use crate::config::JournalSection;
use crate::events::{Decision, JournalRecord, JournalState, Mark, SessionRecord, SinkState};

/// How often the alarm is repeated in the log while degraded.
const ALARM_EVERY: Duration = Duration::from_secs(10);

/// The journal sink.
pub struct JournalSink {
    j: ResilientJournal,
    dir: String,
    committed: u64,
    held_records: u64,
    refused: u64,
    last_seq: Option<u64>,
    last_alarm: Option<Instant>,
    retry_every: Duration,
    last_tick: Instant,
}

impl JournalSink {
    /// Opens the journal (recovering what a crash left: a torn tail is cut, damage is
    /// reported). A disk fault at open does not stop the runtime: it starts degraded.
    pub fn open(cfg: &JournalSection) -> anyhow::Result<Self> {
        Self::open_with(cfg, FaultSwitch::new())
    }

    /// [`JournalSink::open`] with the journal's I/O fault seam (fault tests).
    pub fn open_with(cfg: &JournalSection, faults: FaultSwitch) -> anyhow::Result<Self> {
        let mut jc = JournalConfig::new(&cfg.dir);
        jc.segment_bytes = cfg.segment_bytes;
        jc.max_total_bytes = Some(cfg.max_total_bytes);
        jc.max_segments = Some(cfg.max_segments);
        jc.hold_capacity = cfg.hold_capacity;
        jc.keep_from = cfg.keep_from.clone();
        let retry_every = Duration::from_secs_f32(cfg.retry_every_s.max(0.05));
        jc.retry_interval = retry_every;
        let (j, recovery) = ResilientJournal::open_with(jc, faults).map_err(|e| {
            anyhow::anyhow!("cannot open the journal in {}: {e}", cfg.dir.display())
        })?;
        match &recovery {
            Some(r) => {
                log::info!(
                    "journal {}: {} records in {} segments, next seq {}{}",
                    cfg.dir.display(),
                    r.records,
                    r.segments,
                    r.next_seq,
                    if r.torn_bytes_cut > 0 {
                        format!(", torn tail of {} bytes cut", r.torn_bytes_cut)
                    } else {
                        String::new()
                    }
                );
                for d in &r.damage {
                    log::error!(
                        "journal damage in {} at byte {}: {} bytes, {} records missing",
                        d.path.display(),
                        d.offset,
                        d.bytes,
                        d.missing_records
                    );
                }
            }
            None => log::error!(
                "JOURNAL ALARM: {} is not writable at start; decisions are held in memory",
                cfg.dir.display()
            ),
        }
        Ok(Self {
            j,
            dir: cfg.dir.display().to_string(),
            committed: 0,
            held_records: 0,
            refused: 0,
            last_seq: None,
            last_alarm: None,
            retry_every,
            last_tick: Instant::now(),
        })
    }

    fn alarm(&mut self) {
        let h = self.j.health();
        if h == Health::Ok {
            self.last_alarm = None;
            return;
        }
        if self.last_alarm.is_none_or(|t| t.elapsed() >= ALARM_EVERY) {
            self.last_alarm = Some(Instant::now());
            log::error!("JOURNAL ALARM ({}): {h}", self.dir);
        }
    }
}

impl JournalSink {
    /// Appends one record; the journal's outcome as the decision will carry it.
    pub fn append(&mut self, record: &JournalRecord) -> JournalState {
        let bytes = record.to_bytes();
        let state = match self.j.record(&bytes) {
            Outcome::Committed(seq) => {
                self.committed += 1;
                self.last_seq = Some(seq);
                JournalState::Committed { seq }
            }
            Outcome::Held { .. } => {
                self.held_records += 1;
                JournalState::Held
            }
            Outcome::Refused { held, dropped } => {
                self.refused += 1;
                JournalState::Lost {
                    reason: format!(
                        "journal hold queue full ({held} held, {dropped} refused): \
                         note this result by hand"
                    ),
                }
            }
            Outcome::TooLarge { len, max } => {
                self.refused += 1;
                JournalState::Lost {
                    reason: format!("record of {len} bytes over the {max}-byte limit"),
                }
            }
        };
        self.alarm();
        state
    }
}

impl Sink for JournalSink {
    fn name(&self) -> &'static str {
        "journal"
    }

    fn decision(&mut self, d: &Decision, _frame: &FrameView<'_>) -> Result<Receipt, SinkError> {
        Ok(Receipt::Journal(
            self.append(&JournalRecord::Decision(d.clone())),
        ))
    }

    fn mark(&mut self, m: &Mark) -> Result<Receipt, SinkError> {
        // Decisions of earlier runs count: the journal's next number bounds what exists.
        let next = self.j.journal().map(|j| j.next_seq());
        if m.decision_seq == 0 || next.is_some_and(|n| m.decision_seq >= n) {
            return Err(SinkError(format!(
                "mark on decision {} refused: the journal holds no such decision",
                m.decision_seq
            )));
        }
        Ok(Receipt::Journal(
            self.append(&JournalRecord::Mark(m.clone())),
        ))
    }

    fn session(&mut self, r: &SessionRecord) -> Result<Receipt, SinkError> {
        Ok(Receipt::Journal(
            self.append(&JournalRecord::Session(r.clone())),
        ))
    }

    fn tick(&mut self, _now: Instant) -> Result<(), SinkError> {
        if self.last_tick.elapsed() < self.retry_every {
            return Ok(());
        }
        self.last_tick = Instant::now();
        if self.j.held() > 0 || self.j.health() != Health::Ok {
            if let Ok(n) = self.j.retry_flush() {
                if n > 0 {
                    log::warn!("journal: {n} held records written");
                }
            }
        }
        self.alarm();
        Ok(())
    }

    /// Not writing (everything since the fault only in memory): failed; writing again after
    /// records were refused: degraded.
    fn state(&self) -> SinkState {
        match self.j.health() {
            Health::Ok => SinkState::Ok,
            Health::Degraded { .. } => SinkState::Failed,
            Health::Lost { .. } => SinkState::Degraded,
        }
    }

    fn report(&self) -> Option<serde_json::Value> {
        let h = self.j.health();
        let (state, detail) = match &h {
            Health::Ok => ("ok", String::new()),
            Health::Degraded { detail, .. } => ("degraded", detail.clone()),
            Health::Lost { .. } => ("lost", h.to_string()),
        };
        Some(serde_json::json!({
            "health": state,
            "summary": h.to_string(),
            "detail": detail,
            "held": self.j.held(),
            "committed": self.committed,
            "held_total": self.held_records,
            "refused": self.refused,
            "last_seq": self.last_seq,
            "dir": self.dir,
        }))
    }

    fn shutdown(&mut self) -> Result<(), SinkError> {
        if self.j.held() > 0 {
            match self.j.retry_flush() {
                Ok(n) => log::info!("journal: {n} held records written at shutdown"),
                Err(e) => log::error!(
                    "JOURNAL ALARM: {} decisions could not be written at shutdown: {e}",
                    self.j.held()
                ),
            }
        }
        log::info!(
            "journal: {} committed this run, last seq {:?}",
            self.committed,
            self.last_seq
        );
        Ok(())
    }
}
