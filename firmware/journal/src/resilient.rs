//! The runtime's view of the journal: screening never stops for a bad disk.
//!
//! When the directory is full, read-only or failing, records are held in a bounded
//! in-memory queue, [`Health`] turns to `Degraded` (logged with `log::error!` once per
//! transition), and the disk is retried on later records (at most every
//! `retry_interval`) and on [`ResilientJournal::retry_flush`]. Held records are written in
//! their original order before any new one.
//!
//! **Queue full: the new record is refused, the held ones are kept.** For a medical device
//! the refusal is the lesser loss: the caller learns synchronously that *this* result was
//! not recorded ([`Outcome::Refused`]) while the patient is still at the cart, so the
//! operator can note it by hand or stop screening; dropping the oldest instead would
//! silently lose results of patients who have already left, and would make the journal a
//! sequence with holes nobody was told about at the time. The loss stays visible
//! ([`Health::Lost`]) after the disk recovers, until acknowledged.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime};

use crate::fault::FaultSwitch;
use crate::{Journal, JournalConfig, JournalError, Recovery};

/// Why the journal is degraded; compact, for the cart link's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// ENOSPC / quota.
    Full,
    /// Read-only filesystem or no write permission.
    ReadOnly,
    /// Any other I/O error.
    Io,
}

/// Journal health, for the runtime's status and the cart link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Every accepted record is committed.
    Ok,
    /// The disk fails; records are held in memory (`held`), `dropped` were refused.
    Degraded {
        /// Records waiting in memory.
        held: usize,
        /// Records refused because the queue was full (since the last acknowledgement).
        dropped: u64,
        /// When the fault began.
        since: SystemTime,
        /// Kind of fault.
        reason: FaultKind,
        /// The last error message (names the directory and the fix).
        detail: String,
    },
    /// The disk works again and everything held was flushed, but `dropped` records were
    /// refused during the fault. Latched until [`ResilientJournal::acknowledge_loss`].
    Lost {
        /// Records refused.
        dropped: u64,
        /// When the fault that lost them began.
        since: SystemTime,
    },
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Full => "full",
            Self::ReadOnly => "read-only",
            Self::Io => "I/O error",
        })
    }
}

/// One line for logs and the status view, e.g.
/// `DEGRADED (full) for 42 s: 12 held in memory, 0 refused`.
impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = |t: &SystemTime| t.elapsed().map_or(0, |d| d.as_secs());
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Degraded {
                held,
                dropped,
                since,
                reason,
                ..
            } => write!(
                f,
                "DEGRADED ({reason}) for {} s: {held} held in memory, {dropped} refused",
                secs(since)
            ),
            Self::Lost { dropped, since } => write!(
                f,
                "LOST: {dropped} records refused in a fault {} s ago (acknowledge to clear)",
                secs(since)
            ),
        }
    }
}

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written and synced with this seq.
    Committed(u64),
    /// Held in memory (the disk fails); `held` records wait, this one included.
    Held {
        /// Records waiting in memory.
        held: usize,
    },
    /// Not recorded: the hold queue is full. Tell the operator.
    Refused {
        /// Records waiting in memory.
        held: usize,
        /// Records refused so far.
        dropped: u64,
    },
    /// Not recorded: the payload is over `max_record_bytes` (a caller bug).
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

struct Fault {
    since: SystemTime,
    reason: FaultKind,
    detail: String,
}

/// [`Journal`] plus a bounded hold queue and a health alarm. Never panics, never blocks
/// longer than one failing I/O call.
pub struct ResilientJournal {
    cfg: JournalConfig,
    faults: FaultSwitch,
    inner: Option<Journal>,
    held: VecDeque<Vec<u8>>,
    held_bytes: usize,
    dropped: u64,
    fault: Option<Fault>,
    /// Start of the fault episode whose refusals are not yet acknowledged.
    lost_since: Option<SystemTime>,
    refusing: bool,
    last_try: Instant,
}

impl std::fmt::Debug for ResilientJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientJournal")
            .field("journal", &self.inner)
            .field("held", &self.held.len())
            .field("health", &self.health())
            .finish()
    }
}

impl ResilientJournal {
    /// Opens the journal. A disk fault does not fail the open: the journal starts
    /// degraded and opens on a later retry. Errors are configuration mistakes and
    /// another process holding the directory. The recovery report is `None` if degraded.
    pub fn open(cfg: JournalConfig) -> Result<(Self, Option<Recovery>), JournalError> {
        Self::open_with(cfg, FaultSwitch::new())
    }

    /// [`ResilientJournal::open`] with an I/O fault seam, for fault tests.
    pub fn open_with(
        cfg: JournalConfig,
        faults: FaultSwitch,
    ) -> Result<(Self, Option<Recovery>), JournalError> {
        let mut me = Self {
            inner: None,
            held: VecDeque::new(),
            held_bytes: 0,
            dropped: 0,
            fault: None,
            lost_since: None,
            refusing: false,
            last_try: Instant::now(),
            cfg,
            faults,
        };
        match Journal::open_with(me.cfg.clone(), me.faults.clone()) {
            Ok((j, rec)) => {
                me.inner = Some(j);
                Ok((me, Some(rec)))
            }
            Err(e) if e.is_disk_fault() => {
                me.degrade(&e);
                Ok((me, None))
            }
            Err(e) => Err(e),
        }
    }

    /// Records one payload: committed if the disk works, else held (or refused when the
    /// queue is full). Held records always go to disk before this one.
    pub fn record(&mut self, payload: &[u8]) -> Outcome {
        let max = self.cfg.max_record_bytes;
        if payload.len() > max {
            log::error!(
                "journal: record of {} bytes refused, over max_record_bytes {max}",
                payload.len()
            );
            return Outcome::TooLarge {
                len: payload.len(),
                max,
            };
        }
        if (self.inner.is_none() || !self.held.is_empty())
            && self.last_try.elapsed() >= self.cfg.retry_interval
        {
            // Failure is already reflected in health; the record is held below.
            let _ = self.retry_flush();
        }
        if self.held.is_empty() {
            if let Some(j) = self.inner.as_mut() {
                match j.append(payload) {
                    Ok(seq) => {
                        // A fault whose records were all refused left nothing held.
                        self.recovered(0);
                        return Outcome::Committed(seq);
                    }
                    Err(e) => self.degrade(&e),
                }
            }
        }
        self.hold(payload)
    }

    /// Tries the disk now: reopens the journal if needed and writes every held record in
    /// order. Returns how many were written; an error leaves the rest held.
    pub fn retry_flush(&mut self) -> Result<usize, JournalError> {
        self.last_try = Instant::now();
        let result = self.flush_held();
        match &result {
            Ok(n) => self.recovered(*n),
            Err(e) => self.degrade(e),
        }
        result
    }

    /// Current health (cheap; call it for every status message).
    pub fn health(&self) -> Health {
        match (&self.fault, self.lost_since) {
            (Some(f), _) => Health::Degraded {
                held: self.held.len(),
                dropped: self.dropped,
                since: f.since,
                reason: f.reason,
                detail: f.detail.clone(),
            },
            (None, Some(since)) => Health::Lost {
                dropped: self.dropped,
                since,
            },
            (None, None) => Health::Ok,
        }
    }

    /// The operator has seen the loss: clears `dropped` and a latched [`Health::Lost`].
    pub fn acknowledge_loss(&mut self) {
        self.dropped = 0;
        if self.fault.is_none() {
            self.lost_since = None;
        }
    }

    /// Records waiting in memory.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The underlying journal, when it is open.
    pub fn journal(&self) -> Option<&Journal> {
        self.inner.as_ref()
    }

    fn flush_held(&mut self) -> Result<usize, JournalError> {
        if self.inner.is_none() {
            let (j, rec) = Journal::open_with(self.cfg.clone(), self.faults.clone())?;
            log::info!("journal opened after a fault; next seq {}", rec.next_seq);
            self.inner = Some(j);
        }
        let Some(j) = self.inner.as_mut() else {
            return Ok(0);
        };
        let mut flushed = 0;
        while !self.held.is_empty() {
            // One fdatasync per batch; batches stay within a segment's worth of bytes.
            let (mut n, mut bytes) = (0, 0u64);
            for p in self.held.iter().take(64) {
                bytes += p.len() as u64;
                if n > 0 && bytes > self.cfg.segment_bytes {
                    break;
                }
                n += 1;
            }
            let batch: Vec<&[u8]> = self.held.iter().take(n).map(Vec::as_slice).collect();
            // On failure the journal stays open: it cuts the failed bytes before its next
            // write. Reopening instead would recover them as records and write them twice.
            j.append_batch(&batch)?;
            for p in self.held.drain(..n) {
                self.held_bytes -= p.len();
            }
            flushed += n;
        }
        Ok(flushed)
    }

    fn hold(&mut self, payload: &[u8]) -> Outcome {
        let full = self.held.len() >= self.cfg.hold_capacity
            || self.held_bytes + payload.len() > self.cfg.hold_max_bytes;
        if full {
            self.dropped += 1;
            if !self.refusing {
                self.refusing = true;
                log::error!(
                    "journal ALARM: hold queue full ({} records, {} bytes): new records are \
                     REFUSED and not recorded until the journal directory {} works again",
                    self.held.len(),
                    self.held_bytes,
                    self.cfg.dir.display()
                );
            }
            return Outcome::Refused {
                held: self.held.len(),
                dropped: self.dropped,
            };
        }
        self.held_bytes += payload.len();
        self.held.push_back(payload.to_vec());
        Outcome::Held {
            held: self.held.len(),
        }
    }

    fn degrade(&mut self, e: &JournalError) {
        let reason = match e {
            JournalError::Full { .. } => FaultKind::Full,
            JournalError::ReadOnly { .. } => FaultKind::ReadOnly,
            _ => FaultKind::Io,
        };
        let detail = e.to_string();
        match &mut self.fault {
            Some(f) if f.reason == reason => f.detail = detail,
            Some(f) => {
                log::error!("journal ALARM: fault changed to {reason:?}: {detail}");
                f.reason = reason;
                f.detail = detail;
            }
            None => {
                log::error!(
                    "journal ALARM: {detail}; screening goes on, records are held in memory \
                     (up to {} records / {} bytes) and written when the disk works again",
                    self.cfg.hold_capacity,
                    self.cfg.hold_max_bytes
                );
                let since = SystemTime::now();
                self.lost_since.get_or_insert(since);
                self.fault = Some(Fault {
                    since,
                    reason,
                    detail,
                });
            }
        }
    }

    fn recovered(&mut self, flushed: usize) {
        if self.fault.take().is_none() {
            return;
        }
        self.refusing = false;
        if self.dropped > 0 {
            log::error!(
                "journal recovered: {flushed} held records written, but {} records were \
                 refused during the fault and are NOT in the journal",
                self.dropped
            );
        } else {
            self.lost_since = None;
            log::warn!("journal recovered: {flushed} held records written in order, none lost");
        }
    }
}

impl Drop for ResilientJournal {
    /// A last try at shutdown so that held records are not lost to a clean exit.
    fn drop(&mut self) {
        if !self.held.is_empty() && self.retry_flush().is_err() {
            log::error!(
                "journal: {} held records lost at shutdown ({} dir)",
                self.held.len(),
                self.cfg.dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::cfg;
    use crate::Fault;
    use std::time::Duration;

    fn seqs(dir: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
        Journal::records(dir)
            .expect("list")
            .map(|r| r.map(|r| (r.seq, r.payload)).expect("no damage"))
            .collect()
    }

    #[test]
    fn full_disk_holds_alarms_and_flushes_in_order() {
        let (_t, cfg) = cfg();
        let faults = FaultSwitch::new();
        let (mut rj, rec) = ResilientJournal::open_with(cfg.clone(), faults.clone()).expect("open");
        assert!(rec.is_some());
        assert_eq!(rj.record(b"a"), Outcome::Committed(1));
        faults.set(Some(Fault::Full));
        assert_eq!(rj.record(b"b"), Outcome::Held { held: 1 });
        assert_eq!(rj.record(b"c"), Outcome::Held { held: 2 });
        match rj.health() {
            Health::Degraded {
                held: 2,
                dropped: 0,
                reason: FaultKind::Full,
                detail,
                ..
            } => assert!(detail.contains("is full"), "{detail}"),
            h => panic!("unexpected health {h:?}"),
        }
        assert!(rj.health().to_string().starts_with("DEGRADED (full)"));
        assert!(rj.retry_flush().is_err(), "still full");
        faults.set(None);
        // The next record flushes the held ones first, then goes in after them.
        assert_eq!(rj.record(b"d"), Outcome::Committed(4));
        assert_eq!(rj.health(), Health::Ok);
        let got = seqs(&cfg.dir);
        let want: Vec<(u64, Vec<u8>)> = [b"a", b"b", b"c", b"d"]
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, p.to_vec()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn hold_queue_is_bounded_and_refuses_newest() {
        let (_t, mut cfg) = cfg();
        cfg.hold_capacity = 3;
        cfg.hold_max_bytes = 1 << 20;
        let faults = FaultSwitch::new();
        faults.set(Some(Fault::SyncFails));
        let (mut rj, _) = ResilientJournal::open_with(cfg.clone(), faults.clone()).expect("open");
        let outs: Vec<Outcome> = (0..5u8).map(|i| rj.record(&[i])).collect();
        assert_eq!(outs[2], Outcome::Held { held: 3 });
        assert_eq!(
            outs[4],
            Outcome::Refused {
                held: 3,
                dropped: 2
            }
        );
        assert!(matches!(
            rj.health(),
            Health::Degraded {
                held: 3,
                dropped: 2,
                reason: FaultKind::Io,
                ..
            }
        ));

        faults.set(None);
        assert_eq!(rj.retry_flush().expect("flush"), 3);
        let got: Vec<Vec<u8>> = seqs(&cfg.dir).into_iter().map(|r| r.1).collect();
        assert_eq!(got, [[0], [1], [2]], "the held ones, in order");
        assert!(
            matches!(rj.health(), Health::Lost { dropped: 2, .. }),
            "loss is latched"
        );
        rj.acknowledge_loss();
        assert_eq!(rj.health(), Health::Ok);

        // The byte bound holds as well as the count.
        cfg.hold_capacity = 100;
        cfg.hold_max_bytes = 10;
        drop(rj);
        let (mut rj, _) = ResilientJournal::open_with(cfg.clone(), faults.clone()).expect("open");
        faults.set(Some(Fault::ReadOnly));
        assert_eq!(rj.record(&[7; 6]), Outcome::Held { held: 1 });
        assert_eq!(
            rj.record(&[8; 6]),
            Outcome::Refused {
                held: 1,
                dropped: 1
            }
        );
        assert!(matches!(
            rj.health(),
            Health::Degraded {
                reason: FaultKind::ReadOnly,
                ..
            }
        ));
    }

    #[test]
    fn zero_capacity_refuses_then_recovers_on_next_record() {
        let (_t, mut cfg) = cfg();
        cfg.hold_capacity = 0;
        let faults = FaultSwitch::new();
        let (mut rj, _) = ResilientJournal::open_with(cfg.clone(), faults.clone()).expect("open");
        faults.set(Some(Fault::Full));
        assert_eq!(
            rj.record(b"x"),
            Outcome::Refused {
                held: 0,
                dropped: 1
            }
        );
        faults.set(None);
        assert_eq!(rj.record(b"y"), Outcome::Committed(1));
        assert!(matches!(rj.health(), Health::Lost { dropped: 1, .. }));
    }

    #[test]
    fn retry_is_rate_limited_on_record() {
        let (_t, mut cfg) = cfg();
        cfg.retry_interval = Duration::from_secs(3600);
        let faults = FaultSwitch::new();
        let (mut rj, _) = ResilientJournal::open_with(cfg.clone(), faults.clone()).expect("open");
        faults.set(Some(Fault::Full));
        assert_eq!(rj.record(b"x"), Outcome::Held { held: 1 });
        faults.set(None);
        assert_eq!(
            rj.record(b"y"),
            Outcome::Held { held: 2 },
            "no retry before the interval"
        );
        assert_eq!(rj.retry_flush().expect("flush"), 2);
        assert_eq!(rj.record(b"z"), Outcome::Committed(3));
    }

    /// A read-only directory at startup: the journal opens degraded, holds, and opens and
    /// flushes once the directory is writable. Uses a real chmod 0555 when that blocks
    /// writes (not root), else the seam.
    #[test]
    fn read_only_dir_at_start_then_writable() {
        use std::os::unix::fs::PermissionsExt;
        let (_t, cfg) = cfg();
        std::fs::create_dir_all(&cfg.dir).expect("mkdir");
        let set_mode = |m| std::fs::set_permissions(&cfg.dir, std::fs::Permissions::from_mode(m));
        set_mode(0o555).expect("chmod");
        let chmod_blocks = std::fs::File::create(cfg.dir.join("probe")).is_err();
        let faults = FaultSwitch::new();
        if !chmod_blocks {
            let _ = std::fs::remove_file(cfg.dir.join("probe"));
            faults.set(Some(Fault::ReadOnly));
        }
        let (mut rj, rec) = ResilientJournal::open_with(cfg.clone(), faults.clone()).expect("open");
        assert!(rec.is_none() && rj.journal().is_none());
        assert!(matches!(
            rj.health(),
            Health::Degraded {
                reason: FaultKind::ReadOnly,
                ..
            }
        ));
        assert_eq!(rj.record(b"first"), Outcome::Held { held: 1 });
        let msg = rj.retry_flush().expect_err("still read-only").to_string();
        assert!(msg.contains("read-only") && msg.contains(&cfg.dir.display().to_string()));

        set_mode(0o755).expect("chmod");
        faults.set(None);
        assert_eq!(rj.record(b"second"), Outcome::Committed(2));
        assert_eq!(rj.health(), Health::Ok);
        let got: Vec<Vec<u8>> = seqs(&cfg.dir).into_iter().map(|r| r.1).collect();
        assert_eq!(got, [b"first".to_vec(), b"second".to_vec()]);
    }

    #[test]
    fn held_records_are_flushed_at_drop() {
        let (_t, cfg) = cfg();
        let faults = FaultSwitch::new();
        let (mut rj, _) = ResilientJournal::open_with(cfg.clone(), faults.clone()).expect("open");
        faults.set(Some(Fault::Full));
        assert_eq!(rj.record(b"late"), Outcome::Held { held: 1 });
        faults.set(None);
        drop(rj);
        assert_eq!(seqs(&cfg.dir), [(1, b"late".to_vec())]);
    }
}
