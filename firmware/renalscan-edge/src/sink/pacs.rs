//! Store-and-forward to the hospital PACS, on its own thread: when an exam ends (or is found
//! interrupted) its DICOM objects are made and queued in the durable outbox; the thread
//! drains the outbox when the PACS answers, backing off with jitter while it does not.
//! Screening never waits for it; its state is in the status, the operator view and the cart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pacs::status::Action;
use pacs::{Equipment, Outbox};

use super::{FrameView, Receipt, Sink, SinkError};
use crate::config::PacsConfig;
use crate::events::{Decision, SessionEvent, SessionRecord, SinkState};

/// What the outbox looks like, for the status, the view and the cart.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PacsState {
    /// `AET@HOST:PORT`.
    pub address: String,
    pub pending: usize,
    pub sent: usize,
    pub quarantined: usize,
    /// Nothing can be sent until the configuration is fixed (association rejected, no
    /// accepted presentation context).
    pub held: bool,
    /// What the operator must know: the last failure, or the hold's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// Seconds until the next attempt while backing off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_s: Option<f32>,
}

/// The runtime's end of the sender thread.
pub struct PacsSink {
    jobs: Sender<String>,
    state: Arc<Mutex<PacsState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PacsSink {
    /// Starts the sender. `journal` and `sessions` are where exams are read from;
    /// `device_id` names the cart in the objects.
    /// `retention_days` (0: keep) also bounds what stays in the outbox: objects still
    /// there after it (quarantined, or never sent) hold patient data and are deleted.
    pub fn spawn(
        cfg: &PacsConfig,
        journal: PathBuf,
        sessions: PathBuf,
        device_id: &str,
        retention_days: u32,
    ) -> anyhow::Result<Self> {
        let outbox = Outbox::open(&cfg.outbox)?;
        let drain = cfg.drain_config()?;
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(Mutex::new(PacsState {
            address: cfg.addr().to_string(),
            ..PacsState::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            cfg: cfg.clone(),
            drain,
            retention_days,
            journal,
            store: records::SessionStore::at(&sessions),
            equipment: Equipment::renalscan(device_id, env!("CARGO_PKG_VERSION")),
            outbox,
            jobs: rx,
            state: state.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("pacs".into())
            .spawn(move || worker.run())?;
        log::info!("pacs: sending ended exams to {}", cfg.addr());
        Ok(Self {
            jobs: tx,
            state,
            stop,
            thread: Some(thread),
        })
    }

    pub fn snapshot(&self) -> PacsState {
        self.state.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl Sink for PacsSink {
    fn name(&self) -> &'static str {
        "pacs"
    }

    fn decision(&mut self, _d: &Decision, _f: &FrameView<'_>) -> Result<Receipt, SinkError> {
        Ok(Receipt::None)
    }

    /// An exam that ended, or was found interrupted, is queued (its objects are made on
    /// the sender thread, off the screening loop).
    fn session(&mut self, r: &SessionRecord) -> Result<Receipt, SinkError> {
        if matches!(r.event, SessionEvent::Ended | SessionEvent::Interrupted) {
            self.jobs
                .send(r.session.clone())
                .map_err(|_| SinkError::new("the PACS sender has stopped"))?;
        }
        Ok(Receipt::None)
    }

    /// Held or with quarantined objects: failed (someone must act); backing off or with
    /// objects waiting: degraded.
    fn state(&self) -> SinkState {
        let s = self.snapshot();
        if s.held || s.quarantined > 0 {
            SinkState::Failed
        } else if s.alarm.is_some() {
            SinkState::Degraded
        } else {
            SinkState::Ok
        }
    }

    fn report(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.snapshot()).ok()
    }

    /// Keeps draining for up to `pacs.drain_on_shutdown_s`, then stops.
    fn shutdown(&mut self) -> Result<(), SinkError> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                return Err(SinkError::new("the PACS sender panicked"));
            }
        }
        let s = self.snapshot();
        if s.pending > 0 {
            log::warn!(
                "pacs: {} objects still in the outbox; they are sent after the next start",
                s.pending
            );
        }
        Ok(())
    }
}

impl Drop for PacsSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    cfg: PacsConfig,
    /// Timeouts, TLS, the retry cap.
    drain: pacs::DrainConfig,
    retention_days: u32,
    journal: PathBuf,
    store: records::SessionStore,
    equipment: Equipment,
    outbox: Outbox,
    jobs: Receiver<String>,
    state: Arc<Mutex<PacsState>>,
    stop: Arc<AtomicBool>,
}

/// `d` scaled by a factor in [0.75, 1.25): carts that lost the same PACS do not come back
/// in step.
fn jittered(d: Duration) -> Duration {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let mut x = u64::from(n) ^ (u64::from(std::process::id()) << 32);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    d.mul_f64(0.75 + (x % 1000) as f64 / 2000.0)
}

impl Worker {
    fn run(mut self) {
        self.catch_up();
        self.mark_delivered();
        self.apply_retention();
        let mut last_retention = Instant::now();
        let initial = Duration::from_secs_f32(self.cfg.backoff_initial_s);
        let max = Duration::from_secs_f32(self.cfg.backoff_max_s);
        let mut delay = initial;
        let mut next_try = Instant::now();
        let mut stop_by: Option<Instant> = None;
        loop {
            if stop_by.is_none() && self.stop.load(Ordering::Relaxed) {
                stop_by =
                    Some(Instant::now() + Duration::from_secs_f32(self.cfg.drain_on_shutdown_s));
                // The PACS may be back: the shutdown drain does not wait out the backoff.
                next_try = Instant::now();
            }
            let wait = next_try
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            match self.jobs.recv_timeout(wait) {
                Ok(id) => self.queue(&id),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if stop_by.is_none() {
                        stop_by = Some(Instant::now());
                    }
                }
            }
            while let Ok(id) = self.jobs.try_recv() {
                self.queue(&id);
            }
            if last_retention.elapsed() >= crate::runtime::RETENTION_EVERY {
                last_retention = Instant::now();
                self.apply_retention();
            }
            let pending = self.outbox.counts().pending;
            if let Some(t) = stop_by {
                if pending == 0 || Instant::now() >= t {
                    self.publish(None, None);
                    return;
                }
            }
            if pending == 0 || Instant::now() < next_try {
                self.publish_retry(next_try);
                continue;
            }
            let mut dc = self.drain.clone();
            dc.pace = test_pace();
            let report = self.outbox.drain(&self.cfg.addr(), &dc);
            if report.sent > 0 {
                self.mark_delivered();
            }
            match report.stopped {
                None => {
                    delay = initial;
                    next_try = Instant::now();
                    self.publish(None, None);
                }
                Some((action, why)) => {
                    log::warn!("pacs: {why}");
                    let held = action == Action::HoldConfig;
                    let d = if held { max } else { jittered(delay) };
                    delay = (delay * 2).min(max);
                    next_try = Instant::now() + d;
                    self.publish(Some(why), Some(held));
                }
            }
        }
    }

    /// The retention period never deletes what did not reach the PACS: it says what is held
    /// past it, for an operator to send (`outbox retry`) or drop (`outbox purge`).
    fn apply_retention(&mut self) {
        if self.retention_days == 0 {
            return;
        }
        let cutoff =
            pacs::outbox::now_ms().saturating_sub(u64::from(self.retention_days) * 86_400_000);
        let (q, p) = self.outbox.held_past(cutoff);
        if q + p > 0 {
            log::warn!(
                "pacs: {q} quarantined and {p} unsent objects are older than the retention \
                 period ({} days) and kept: they never reached the PACS (renalscan-edge outbox \
                 retry, or outbox purge to drop them)",
                self.retention_days
            );
        }
    }

    /// Marks every exam the PACS accepted whole, so the session store's retention may
    /// delete it (`records::SessionStore::released`).
    fn mark_delivered(&mut self) {
        let pacs = self.cfg.addr().to_string();
        for id in self.outbox.delivered_sessions() {
            if self.store.released(&id) {
                continue;
            }
            if let Err(e) = self
                .store
                .record_forwarded(&id, &pacs, pacs::outbox::now_ms())
            {
                log::warn!("pacs: exam {id} delivered, but not noted in the session store: {e}");
            }
        }
    }

    /// Ended or interrupted exams the outbox has not seen (the runtime stopped between the
    /// end and the queueing), since the outbox began.
    fn catch_up(&mut self) {
        let sessions = match records::read(&self.journal) {
            Ok(s) => s,
            Err(e) => {
                log::error!("pacs: exams in {} not read: {e}", self.journal.display());
                return;
            }
        };
        let missed: Vec<String> = self
            .outbox
            .missed(&sessions)
            .iter()
            .map(|s| s.id.clone())
            .collect();
        for id in missed {
            self.queue_from(&sessions, &id);
        }
        self.publish(None, None);
    }

    fn queue(&mut self, id: &str) {
        match records::read(&self.journal) {
            Ok(sessions) => self.queue_from(&sessions, id),
            Err(e) => log::error!(
                "pacs: exam {id} not queued: the journal {} is unreadable: {e}",
                self.journal.display()
            ),
        }
    }

    fn queue_from(&mut self, sessions: &[records::Session], id: &str) {
        if self.outbox.has_session(id) {
            return;
        }
        let made = match pacs::session_objects(sessions, id, &self.store, &self.equipment) {
            Ok(m) => m,
            Err(e) => {
                log::error!("pacs: exam {id}: objects not made: {e}");
                self.publish(Some(format!("exam {id}: objects not made: {e}")), None);
                return;
            }
        };
        if let Err(e) = self.outbox.enqueue(id, &made) {
            log::error!("pacs: exam {id} not queued: {e}");
            self.publish(Some(format!("exam {id} not queued: {e}")), None);
        }
    }

    fn publish(&self, alarm: Option<String>, held: Option<bool>) {
        let c = self.outbox.counts();
        if let Ok(mut s) = self.state.lock() {
            s.pending = c.pending;
            s.sent = c.sent;
            s.quarantined = c.quarantined;
            s.alarm = alarm.or_else(|| {
                (c.quarantined > 0).then(|| {
                    format!(
                        "{} objects quarantined: `renalscan-edge outbox list` says why",
                        c.quarantined
                    )
                })
            });
            s.held = held.unwrap_or(false);
            s.retry_in_s = None;
        }
    }

    fn publish_retry(&self, next_try: Instant) {
        let c = self.outbox.counts();
        if let Ok(mut s) = self.state.lock() {
            s.pending = c.pending;
            s.sent = c.sent;
            s.quarantined = c.quarantined;
            s.retry_in_s = (c.pending > 0).then(|| {
                next_try
                    .saturating_duration_since(Instant::now())
                    .as_secs_f32()
            });
        }
    }
}

/// A pause before each object sent (`RENALSCAN_PACS_PACE_MS`), so a test can kill the
/// runtime in the middle of a drain.
pub fn test_pace() -> Option<Duration> {
    std::env::var("RENALSCAN_PACS_PACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}
