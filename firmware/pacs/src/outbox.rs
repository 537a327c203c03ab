//! The durable outbox: Part-10 files named by SOP Instance UID, and a journal (the journal
//! crate: appended, fdatasync'ed, torn tails cut) of what happened to each: queued, a failed
//! attempt, sent, quarantined, put back, purged. The state is the fold of that journal, so
//! a crash at any point loses nothing, and an object stored just before a crash is resent
//! with the same UIDs, which the PACS keeps once.
//!
//! One process owns an outbox at a time (a lock file): the runtime while it runs, else the
//! `outbox` command.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use journal::{Journal, JournalConfig};
use serde::{Deserialize, Serialize};

use crate::objects::{Kind, Made};
use crate::scu::{LinkOptions, NetError, PacsAddr, StoreAssociation};
use crate::status::{self, Action};

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Entry {
    Queued {
        uid: String,
        sop_class: String,
        kind: Kind,
        session: String,
        unix_ms: u64,
    },
    Attempt {
        uid: String,
        error: String,
        unix_ms: u64,
    },
    Sent {
        uid: String,
        status: u16,
        unix_ms: u64,
    },
    Quarantined {
        uid: String,
        reason: String,
        unix_ms: u64,
    },
    Requeued {
        uid: String,
        unix_ms: u64,
    },
    Purged {
        uid: String,
        unix_ms: u64,
    },
}

/// Where an object stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    Pending,
    Sent,
    /// Refused for good or past the retry cap: set aside until `outbox retry`.
    Quarantined,
    Purged,
}

/// One object in the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub uid: String,
    pub sop_class: String,
    pub kind: Kind,
    pub session: String,
    pub state: ItemState,
    pub queued_ms: u64,
    /// Failed attempts counted against the cap since it was (re)queued.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// DIMSE status it was stored with.
    pub status: Option<u16>,
}

/// Counts for status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub pending: usize,
    pub sent: usize,
    pub quarantined: usize,
    /// Queued time of the oldest pending object (Unix ms).
    pub oldest_pending_ms: Option<u64>,
}

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {dir}: {action}: {source}")]
    Io {
        dir: PathBuf,
        action: String,
        source: std::io::Error,
    },
    #[error("outbox {dir} is in use by another process (the runtime drains it while it runs; stop it first, or let it send)")]
    Busy { dir: PathBuf },
    #[error("outbox {dir}: journal: {source}")]
    Journal {
        dir: PathBuf,
        source: journal::JournalError,
    },
    #[error("outbox {dir}: no object {uid}")]
    Unknown { dir: PathBuf, uid: String },
}

/// The outbox in `dir`, locked for this process.
pub struct Outbox {
    dir: PathBuf,
    journal: Journal,
    _lock: File,
    items: Vec<Item>,
    index: BTreeMap<String, usize>,
}

/// `created` in the outbox `dir`, written now when missing.
fn ob_created(dir: &Path) -> u64 {
    let p = dir.join("created");
    if let Some(ms) = std::fs::read_to_string(&p)
        .ok()
        .and_then(|t| t.trim().parse().ok())
    {
        return ms;
    }
    let now = now_ms();
    if let Err(e) = records::store::write_atomic(&p, now.to_string().as_bytes()) {
        log::warn!("pacs outbox: {}: {e}", p.display());
    }
    now
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Outbox {
    /// Opens (creating) the outbox in `dir` and takes its lock.
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        let io = |action: &str, source| OutboxError::Io {
            dir: dir.to_path_buf(),
            action: action.to_string(),
            source,
        };
        std::fs::create_dir_all(dir.join("objects")).map_err(|e| io("creating it", e))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| io("opening its lock", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OutboxError::Busy {
                    dir: dir.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("locking it", e)),
        }
        let mut cfg = JournalConfig::new(dir.join("journal"));
        // Every entry matters until its object is purged: nothing ages out.
        cfg.max_total_bytes = None;
        cfg.max_segments = None;
        let jerr = |source| OutboxError::Journal {
            dir: dir.to_path_buf(),
            source,
        };
        let (journal, recovery) = Journal::open(cfg).map_err(jerr)?;
        log::debug!("pacs outbox: journal recovered: {recovery:?}");
        let mut ob = Self {
            dir: dir.to_path_buf(),
            journal,
            _lock: lock,
            items: Vec::new(),
            index: BTreeMap::new(),
        };
        // Marks when the outbox began, the first time.
        let _ = ob_created(dir);
        for r in Journal::records(dir.join("journal")).map_err(jerr)? {
            match r {
                Ok(rec) => match serde_json::from_slice::<Entry>(&rec.payload) {
                    Ok(e) => ob.apply(e),
                    Err(e) => log::warn!("pacs outbox: entry {} unreadable: {e}", rec.seq),
                },
                Err(e) => log::warn!("pacs outbox: journal damage skipped: {e}"),
            }
        }
        Ok(ob)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn apply(&mut self, e: Entry) {
        match e {
            Entry::Queued {
                uid,
                sop_class,
                kind,
                session,
                unix_ms,
            } => {
                if self.index.contains_key(&uid) {
                    return;
                }
                self.index.insert(uid.clone(), self.items.len());
                self.items.push(Item {
                    uid,
                    sop_class,
                    kind,
                    session,
                    state: ItemState::Pending,
                    queued_ms: unix_ms,
                    attempts: 0,
                    last_error: None,
                    status: None,
                });
            }
            Entry::Attempt { uid, error, .. } => {
                if let Some(i) = self.item_mut(&uid) {
                    i.attempts += 1;
                    i.last_error = Some(error);
                }
            }
            Entry::Sent { uid, status, .. } => {
                if let Some(i) = self.item_mut(&uid) {
                    i.state = ItemState::Sent;
                    i.status = Some(status);
                }
            }
            Entry::Quarantined { uid, reason, .. } => {
                if let Some(i) = self.item_mut(&uid) {
                    i.state = ItemState::Quarantined;
                    i.last_error = Some(reason);
                }
            }
            Entry::Requeued { uid, .. } => {
                if let Some(i) = self.item_mut(&uid) {
                    i.state = ItemState::Pending;
                    i.attempts = 0;
                }
            }
            Entry::Purged { uid, .. } => {
                if let Some(i) = self.item_mut(&uid) {
                    i.state = ItemState::Purged;
                }
            }
        }
    }

    fn item_mut(&mut self, uid: &str) -> Option<&mut Item> {
        let i = *self.index.get(uid)?;
        self.items.get_mut(i)
    }

    fn record(&mut self, entries: &[Entry]) -> Result<(), OutboxError> {
        let payloads: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap_or_default())
            .collect();
        self.journal
            .append_batch(&payloads)
            .map_err(|source| OutboxError::Journal {
                dir: self.dir.clone(),
                source,
            })?;
        for e in entries {
            self.apply(e.clone());
        }
        Ok(())
    }

    fn path(&self, uid: &str) -> PathBuf {
        self.dir.join("objects").join(format!("{uid}.dcm"))
    }

    /// When this outbox began (kept in `created` beside it, written at the first call):
    /// exams that ended before are not [`Self::missed`], so enabling the PACS does not send
    /// a cart's whole history.
    pub fn created_ms(&self) -> u64 {
        ob_created(&self.dir)
    }

    /// Ended or interrupted exams since the outbox began that it has not queued (the
    /// runtime stopped between an exam's end and its queueing).
    pub fn missed<'a>(&self, sessions: &'a [records::Session]) -> Vec<&'a records::Session> {
        let since = self.created_ms();
        sessions
            .iter()
            .filter(|s| {
                matches!(
                    s.state,
                    records::SessionState::Ended | records::SessionState::Interrupted
                ) && s.ended_ms.unwrap_or(s.started_ms) >= since
                    && !self.has_session(&s.id)
            })
            .collect()
    }

    /// Whether this session's objects were queued already.
    pub fn has_session(&self, session: &str) -> bool {
        self.items.iter().any(|i| i.session == session)
    }

    /// Queues a session's objects, in the order given (Secondary Captures before the SR):
    /// the files are written and synced first, then one journal batch queues them all. A
    /// session queued before is not queued again.
    pub fn enqueue(&mut self, session: &str, made: &[Made]) -> Result<usize, OutboxError> {
        if self.has_session(session) {
            return Ok(0);
        }
        for m in made {
            records::store::write_atomic(&self.path(&m.sop_instance_uid), &m.bytes).map_err(
                |source| OutboxError::Io {
                    dir: self.dir.clone(),
                    action: format!("writing {}", m.sop_instance_uid),
                    source,
                },
            )?;
        }
        let now = now_ms();
        let entries: Vec<Entry> = made
            .iter()
            .map(|m| Entry::Queued {
                uid: m.sop_instance_uid.clone(),
                sop_class: m.sop_class_uid.clone(),
                kind: m.kind,
                session: session.to_string(),
                unix_ms: now,
            })
            .collect();
        self.record(&entries)?;
        log::info!(
            "pacs outbox: session {session}: {} objects queued",
            made.len()
        );
        Ok(made.len())
    }

    /// Every object, oldest first.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for i in &self.items {
            match i.state {
                ItemState::Pending => {
                    c.pending += 1;
                    c.oldest_pending_ms = Some(
                        c.oldest_pending_ms
                            .map_or(i.queued_ms, |t| t.min(i.queued_ms)),
                    );
                }
                ItemState::Sent => c.sent += 1,
                ItemState::Quarantined => c.quarantined += 1,
                ItemState::Purged => {}
            }
        }
        c
    }

    /// Puts quarantined objects (all, or one) back in the queue.
    pub fn retry(&mut self, uid: Option<&str>) -> Result<usize, OutboxError> {
        let picked = self.pick(uid, |s| s == ItemState::Quarantined)?;
        let now = now_ms();
        let entries: Vec<Entry> = picked
            .iter()
            .map(|u| Entry::Requeued {
                uid: u.clone(),
                unix_ms: now,
            })
            .collect();
        self.record(&entries)?;
        Ok(entries.len())
    }

    /// Deletes objects that will not be sent (quarantined ones; with `pending`, also those
    /// still waiting) or one by UID, files included; journalled.
    pub fn purge(&mut self, uid: Option<&str>, pending: bool) -> Result<usize, OutboxError> {
        let picked = self.pick(uid, |s| {
            s == ItemState::Quarantined || (pending && s == ItemState::Pending)
        })?;
        self.purge_uids(&picked)
    }

    /// Deletes these objects' files and journals them as purged.
    fn purge_uids(&mut self, uids: &[String]) -> Result<usize, OutboxError> {
        let now = now_ms();
        for u in uids {
            self.remove_file(u);
        }
        let entries: Vec<Entry> = uids
            .iter()
            .map(|u| Entry::Purged {
                uid: u.clone(),
                unix_ms: now,
            })
            .collect();
        self.record(&entries)?;
        Ok(entries.len())
    }

    /// Objects queued before `cutoff_ms` that never reached the PACS: `(quarantined,
    /// pending)`. Retention never deletes them (a result that never left the cart is not
    /// the retention period's to drop); `outbox purge` does, on an operator's word.
    pub fn held_past(&self, cutoff_ms: u64) -> (usize, usize) {
        let old = |state| {
            self.items
                .iter()
                .filter(|i| i.queued_ms < cutoff_ms && i.state == state)
                .count()
        };
        (old(ItemState::Quarantined), old(ItemState::Pending))
    }

    /// Sessions whose every object the PACS has accepted.
    pub fn delivered_sessions(&self) -> Vec<String> {
        let mut by: std::collections::BTreeMap<&str, bool> = Default::default();
        for i in &self.items {
            let all = by.entry(i.session.as_str()).or_insert(true);
            *all &= i.state == ItemState::Sent;
        }
        by.into_iter()
            .filter(|(_, all)| *all)
            .map(|(s, _)| s.to_string())
            .collect()
    }

    fn pick(
        &self,
        uid: Option<&str>,
        which: impl Fn(ItemState) -> bool,
    ) -> Result<Vec<String>, OutboxError> {
        match uid {
            Some(u) => {
                let i = self.index.get(u).ok_or_else(|| OutboxError::Unknown {
                    dir: self.dir.clone(),
                    uid: u.to_string(),
                })?;
                Ok(vec![self.items[*i].uid.clone()])
            }
            None => Ok(self
                .items
                .iter()
                .filter(|i| which(i.state))
                .map(|i| i.uid.clone())
                .collect()),
        }
    }

    fn remove_file(&self, uid: &str) {
        match std::fs::remove_file(self.path(uid)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("pacs outbox: {uid}: file not removed: {e}"),
        }
    }

    /// Sends what is pending, in order, over one association; see [`DrainReport`].
    pub fn drain(&mut self, addr: &PacsAddr, cfg: &DrainConfig) -> DrainReport {
        let mut report = DrainReport::default();
        let pending: Vec<Item> = self
            .items
            .iter()
            .filter(|i| i.state == ItemState::Pending)
            .cloned()
            .collect();
        if pending.is_empty() {
            return report;
        }
        if let Err(e) = crate::scu::echo(addr, &cfg.link) {
            report.stopped = Some((e.action(), e.to_string()));
            return report;
        }
        let mut classes: Vec<&str> = pending.iter().map(|i| i.sop_class.as_str()).collect();
        classes.sort_unstable();
        classes.dedup();
        let mut assoc = match StoreAssociation::open(addr, &cfg.link, &classes) {
            Ok(a) => a,
            Err(e) => {
                report.stopped = Some((e.action(), e.to_string()));
                return report;
            }
        };
        for item in pending {
            if let Some(pause) = cfg.pace {
                std::thread::sleep(pause);
            }
            let bytes = match std::fs::read(self.path(&item.uid)) {
                Ok(b) => b,
                Err(e) => {
                    let reason = format!("its file is unreadable: {e}");
                    self.quarantine(&item.uid, &reason, &mut report);
                    continue;
                }
            };
            match assoc.store(&bytes, &item.sop_class, &item.uid) {
                Ok(st) => match status::store_status(st) {
                    Action::Done => {
                        if let Err(e) = self.record(&[Entry::Sent {
                            uid: item.uid.clone(),
                            status: st,
                            unix_ms: now_ms(),
                        }]) {
                            // Stored but not recorded: it goes again, with the same UID.
                            report.stopped = Some((Action::Backoff, e.to_string()));
                            assoc.abort();
                            return report;
                        }
                        self.remove_file(&item.uid);
                        report.sent += 1;
                        log::info!(
                            "pacs: {:?} {} stored ({})",
                            item.kind,
                            item.uid,
                            status::describe(st)
                        );
                    }
                    Action::RetryCapped => {
                        let error = format!("C-STORE answered {}", status::describe(st));
                        if item.attempts + 1 >= cfg.retry_cap {
                            let reason =
                                format!("{error}, {} times: retry cap reached", item.attempts + 1);
                            self.quarantine(&item.uid, &reason, &mut report);
                        } else {
                            let _ = self.record(&[Entry::Attempt {
                                uid: item.uid.clone(),
                                error: error.clone(),
                                unix_ms: now_ms(),
                            }]);
                            report.stopped =
                                Some((Action::RetryCapped, format!("{}: {error}", item.uid)));
                            assoc.release();
                            return report;
                        }
                    }
                    _ => {
                        let reason = format!("C-STORE answered {}", status::describe(st));
                        self.quarantine(&item.uid, &reason, &mut report);
                    }
                },
                Err(e @ NetError::Object { .. }) => {
                    self.quarantine(&item.uid, &e.to_string(), &mut report);
                }
                Err(e) => {
                    let action = e.action();
                    report.stopped = Some((action, e.to_string()));
                    assoc.abort();
                    return report;
                }
            }
        }
        assoc.release();
        report
    }

    fn quarantine(&mut self, uid: &str, reason: &str, report: &mut DrainReport) {
        log::error!("pacs: {uid} quarantined: {reason}");
        report.quarantined += 1;
        if let Err(e) = self.record(&[Entry::Quarantined {
            uid: uid.to_string(),
            reason: reason.to_string(),
            unix_ms: now_ms(),
        }]) {
            log::error!("pacs outbox: quarantine of {uid} not recorded: {e}");
        }
    }
}

/// How a drain behaves.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Timeouts and TLS.
    pub link: LinkOptions,
    /// A7xx answers (out of resources) before an object is quarantined.
    pub retry_cap: u32,
    /// A pause before each object (tests: to kill a drain in the middle).
    pub pace: Option<std::time::Duration>,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            link: LinkOptions::default(),
            retry_cap: 5,
            pace: None,
        }
    }
}

/// What one drain did.
#[derive(Debug, Clone, Default)]
pub struct DrainReport {
    pub sent: usize,
    pub quarantined: usize,
    /// Why it stopped before the queue was empty, and what to do.
    pub stopped: Option<(Action, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(n: usize) -> Vec<Made> {
        (0..n)
            .map(|i| Made {
                kind: if i + 1 == n {
                    Kind::StructuredReport
                } else {
                    Kind::SecondaryCapture
                },
                sop_class_uid: "1.2.3".into(),
                sop_instance_uid: format!("2.25.{i}"),
                bytes: vec![i as u8; 10],
            })
            .collect()
    }

    #[test]
    fn state_survives_reopening_and_the_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        assert!(matches!(
            Outbox::open(dir.path()),
            Err(OutboxError::Busy { .. })
        ));
        assert_eq!(ob.enqueue("s-1", &made(3)).unwrap(), 3);
        assert_eq!(ob.enqueue("s-1", &made(3)).unwrap(), 0, "not queued twice");
        ob.record(&[Entry::Sent {
            uid: "2.25.0".into(),
            status: 0,
            unix_ms: 1,
        }])
        .unwrap();
        let mut r = DrainReport::default();
        ob.quarantine("2.25.1", "C-STORE answered 0xC000", &mut r);
        drop(ob);
        let mut ob = Outbox::open(dir.path()).unwrap();
        let c = ob.counts();
        assert_eq!((c.pending, c.sent, c.quarantined), (1, 1, 1));
        assert_eq!(ob.retry(None).unwrap(), 1);
        assert_eq!(ob.counts().pending, 2);
        assert_eq!(ob.purge(None, true).unwrap(), 2);
        assert!(!dir.path().join("objects/2.25.2.dcm").exists());
        assert!(matches!(
            ob.retry(Some("2.25.99")),
            Err(OutboxError::Unknown { .. })
        ));
        let kinds: Vec<Kind> = ob.items().iter().map(|i| i.kind).collect();
        assert_eq!(kinds.last(), Some(&Kind::StructuredReport));
    }

    #[test]
    fn retention_keeps_what_never_reached_the_pacs() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.enqueue("s-1", &made(3)).unwrap();
        ob.record(&[Entry::Sent {
            uid: "2.25.0".into(),
            status: 0,
            unix_ms: 1,
        }])
        .unwrap();
        let mut r = DrainReport::default();
        ob.quarantine("2.25.1", "C-STORE answered 0xC000", &mut r);
        // Nothing is older than a cutoff in the past.
        assert_eq!(ob.held_past(1), (0, 0));
        // Past the period: the quarantined and the pending object are held, files and all.
        assert_eq!(ob.held_past(now_ms() + 1), (1, 1));
        assert!(dir.path().join("objects/2.25.1.dcm").exists());
        assert!(dir.path().join("objects/2.25.2.dcm").exists());
        assert!(ob.delivered_sessions().is_empty(), "s-1 is not all sent");
        let mut one = made(1);
        one[0].sop_instance_uid = "2.25.9".into();
        ob.enqueue("s-2", &one).unwrap();
        ob.record(&[Entry::Sent {
            uid: "2.25.9".into(),
            status: 0,
            unix_ms: 2,
        }])
        .unwrap();
        assert_eq!(ob.delivered_sessions(), vec!["s-2".to_string()]);
    }

    #[test]
    fn missed_exams_are_those_ended_since_the_outbox_began_and_not_queued() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path()).unwrap();
        let began = ob.created_ms();
        assert_eq!(ob.created_ms(), began, "kept");
        let exam = |id: &str, ended: u64, state| records::Session {
            id: id.into(),
            started_ms: ended - 1000,
            ended_ms: Some(ended),
            state,
            ..crate::sample::session()
        };
        let sessions = vec![
            exam("s-old", began - 5000, records::SessionState::Ended),
            exam("s-new", began + 5000, records::SessionState::Ended),
            exam("s-cut", began + 6000, records::SessionState::Interrupted),
            exam("s-open", began + 7000, records::SessionState::Open),
        ];
        let ids: Vec<&str> = ob.missed(&sessions).iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["s-new", "s-cut"]);
    }
}
