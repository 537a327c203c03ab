//! The serial link to the cart controller, on its own thread, split in two: [`CartSink`]
//! sends every decision as a Result, re-sent until acknowledged (cartlink's `device::Link`),
//! a Status with fps, latency, drops and journal health, and the open exam's id (protocol 2
//! carts); [`CartCommands`] is where the cart's buttons (start, stop, capture, exam start
//! and end with the context its keypad or barcode scanner entered) reach the runtime. A serial port that fails is
//! reopened with backoff; screening goes on meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cartlink::device::{Classification, DeviceStatus, Identity, Link, LinkConfig};
use cartlink::serial::{self, millis_since, receive_link, transmit_link};
use cartlink::{flags, Class, Command, JournalHealth, OutboxState, State};

use super::{CommandSource, Control, FrameView, Receipt, Sink, SinkError, StatusKind};
use crate::config::CartlinkConfig;
use crate::events::{
    Decision, DeviceState, JournalState, SessionEvent, SessionRecord, SinkState, StatusReport,
};
use crate::source::{sleep_unless, Backoff};

/// Results kept until acknowledged (cartlink's bounded buffer).
pub const PENDING: usize = 16;

/// Link counters for status.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CartCounters {
    pub port_open: bool,
    pub peer_alive: bool,
    pub results_queued: u32,
    pub results_sent: u32,
    pub results_resent: u32,
    pub results_acked: u32,
    pub results_dropped: u32,
    pub results_pending: usize,
    pub commands: u32,
    pub frames_bad: u32,
    pub reopens: u32,
}

/// The runtime's sending end of the link.
pub struct CartSink {
    results: Sender<Classification>,
    status: Arc<Mutex<DeviceStatus>>,
    /// The open exam's id, for the cart's display.
    exam: Arc<Mutex<Option<String>>>,
    /// What waits for the PACS, when there is one.
    outbox: Arc<Mutex<Option<OutboxState>>>,
    counters: Arc<Mutex<CartCounters>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The cart's commands, as a command source of the runtime.
pub struct CartCommands {
    commands: Receiver<Command>,
}

impl CommandSource for CartCommands {
    fn name(&self) -> &'static str {
        "cart"
    }

    fn poll(&mut self) -> Option<Control> {
        self.commands.try_recv().ok().map(Control::from)
    }
}

/// The wire class of a label (the contract's classes are the wire's).
pub fn wire_class(label: &str) -> Option<Class> {
    Class::from_label(label)
}

impl CartSink {
    /// Starts the link thread. `labels` are checked against the wire classes here, so a
    /// model the cart cannot display refuses to start rather than sending wrong classes.
    pub fn spawn(
        cfg: &CartlinkConfig,
        model_name: &str,
        model_version: &str,
        labels: &[String],
        pairing: Option<(String, String)>,
    ) -> anyhow::Result<(Self, CartCommands)> {
        for l in labels {
            anyhow::ensure!(
                wire_class(l).is_some(),
                "label {l:?} has no cart-link class (cartlink knows {})",
                contract::LABELS.join(", ")
            );
        }
        let (rtx, rrx) = mpsc::channel();
        let (ctx, crx) = mpsc::channel();
        let status = Arc::new(Mutex::new(DeviceStatus::default()));
        let exam = Arc::new(Mutex::new(None));
        let outbox = Arc::new(Mutex::new(None));
        let counters = Arc::new(Mutex::new(CartCounters::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            cfg: cfg.clone(),
            model_name: model_name.to_string(),
            model_version: model_version.to_string(),
            pairing,
            results: rrx,
            commands: ctx,
            status: status.clone(),
            exam: exam.clone(),
            outbox: outbox.clone(),
            counters: counters.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("cartlink".into())
            .spawn(move || worker.run())?;
        Ok((
            Self {
                results: rtx,
                status,
                exam,
                outbox,
                counters,
                stop,
                thread: Some(thread),
            },
            CartCommands { commands: crx },
        ))
    }

    /// Queues a decision as a Result.
    pub fn send(&mut self, d: &Decision) {
        let mut f = 0;
        if d.abnormal {
            f |= flags::ABNORMAL;
        }
        if d.kind.is_single_frame() {
            f |= flags::CAPTURE;
        }
        if d.low_quality {
            f |= flags::LOW_QUALITY;
        }
        if d.frames > 1 {
            f |= flags::AGGREGATED;
        }
        if !matches!(d.journal, JournalState::Committed { .. }) {
            f |= flags::NOT_JOURNALED;
        }
        let c = Classification {
            timestamp_ms: d.unix_ms,
            p_abnormal: d.p_abnormal,
            class: wire_class(&d.class).unwrap_or(Class::Normal),
            confidence: d.confidence,
            flags: f,
        };
        // The worker only stops at shutdown; a send error then is expected.
        let _ = self.results.send(c);
    }

    /// Updates what the next Status says.
    pub fn set_status(&self, s: DeviceStatus) {
        if let Ok(mut g) = self.status.lock() {
            *g = s;
        }
    }

    pub fn counters(&self) -> CartCounters {
        self.counters.lock().map(|g| *g).unwrap_or_default()
    }

    /// Stops the thread after it had a moment to deliver what is pending.
    fn stop_link(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("cartlink thread panicked");
            }
        }
    }
}

/// The cart's view of the PACS sink's report.
fn outbox_state(r: &serde_json::Value) -> Option<OutboxState> {
    let n = |k: &str| {
        r.get(k)
            .and_then(serde_json::Value::as_u64)
            .map(|v| u16::try_from(v).unwrap_or(u16::MAX))
    };
    Some(OutboxState {
        pending: n("pending")?,
        quarantined: n("quarantined")?,
        held: r.get("held").and_then(serde_json::Value::as_bool)?,
    })
}

/// The cart's view of a status: its state, speed, drops and the journal's health.
pub fn device_status(s: &StatusReport) -> DeviceStatus {
    let mean = |stage: &str| {
        s.latency_ms
            .get(stage)
            .and_then(|v| v.get("mean"))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0) as f32
    };
    DeviceStatus {
        state: match s.state {
            DeviceState::Idle => State::Idle,
            DeviceState::Screening => State::Screening,
            DeviceState::NoSignal => State::NoSignal,
            DeviceState::Fault => State::Fault,
        },
        fps: s.fps,
        latency_ms: mean("total"),
        frames_dropped: (s.frames.dropped + s.frames.corrupt).min(u64::from(u32::MAX)) as u32,
        journal: match s.sinks.get("journal").map(|h| h.state) {
            None => JournalHealth::Disabled,
            Some(SinkState::Ok) => JournalHealth::Ok,
            Some(SinkState::Degraded) => JournalHealth::Degraded,
            Some(SinkState::Failed) => JournalHealth::Failed,
        },
    }
}

impl Sink for CartSink {
    fn name(&self) -> &'static str {
        "cart"
    }

    fn decision(&mut self, d: &Decision, _frame: &FrameView<'_>) -> Result<Receipt, SinkError> {
        self.send(d);
        Ok(Receipt::None)
    }

    fn status(&mut self, s: &StatusReport, kind: StatusKind) -> Result<(), SinkError> {
        if kind != StatusKind::Final {
            self.set_status(device_status(s));
            if let Some(o) = s.reports.get("pacs").and_then(outbox_state) {
                if let Ok(mut g) = self.outbox.lock() {
                    *g = Some(o);
                }
            }
        }
        Ok(())
    }

    /// A closed port or a silent cart is degraded: screening and the journal go on.
    fn state(&self) -> SinkState {
        let c = self.counters();
        if c.port_open && c.peer_alive {
            SinkState::Ok
        } else {
            SinkState::Degraded
        }
    }

    fn report(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.counters()).ok()
    }

    /// Keeps the cart's display on the open exam (its id only, never the patient's).
    fn session(&mut self, r: &SessionRecord) -> Result<Receipt, SinkError> {
        if let Ok(mut g) = self.exam.lock() {
            match r.event {
                SessionEvent::Started { .. } => *g = Some(r.session.clone()),
                SessionEvent::Ended | SessionEvent::Interrupted => {
                    if g.as_deref() == Some(r.session.as_str()) {
                        *g = None;
                    }
                }
                SessionEvent::Purged => {}
            }
        }
        Ok(Receipt::None)
    }

    /// Tells the cart the device is idle, then lets the link deliver what is pending.
    fn shutdown(&mut self) -> Result<(), SinkError> {
        self.set_status(DeviceStatus {
            state: State::Idle,
            ..DeviceStatus::default()
        });
        self.stop_link();
        Ok(())
    }
}

impl Drop for CartSink {
    fn drop(&mut self) {
        self.stop_link();
    }
}

struct Worker {
    cfg: CartlinkConfig,
    model_name: String,
    model_version: String,
    /// The operator view's pairing codes (operator, viewer), for the cart's display.
    pairing: Option<(String, String)>,
    results: Receiver<Classification>,
    commands: Sender<Command>,
    status: Arc<Mutex<DeviceStatus>>,
    exam: Arc<Mutex<Option<String>>>,
    outbox: Arc<Mutex<Option<OutboxState>>>,
    counters: Arc<Mutex<CartCounters>>,
    stop: Arc<AtomicBool>,
}

/// Random enough per boot: results of an earlier boot are not confused with this one's.
fn session_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(8)
}

impl Worker {
    fn run(self) {
        let start = Instant::now();
        let clock = || millis_since(start);
        let id = Identity {
            device_id: &self.cfg.device_id,
            model_id: &self.model_name,
            model_version: &self.model_version,
        };
        let link_cfg = LinkConfig {
            resend_after_ms: self.cfg.resend_after_ms,
            ..LinkConfig::default()
        };
        let mut link: Link<PENDING> = Link::new(link_cfg, id, session_id(), clock());
        if let Some((operator, viewer)) = &self.pairing {
            link.set_pairing(operator, viewer);
        }
        log::info!(
            "cartlink: session {:#010x} on {} at {} baud",
            link.session(),
            self.cfg.port,
            self.cfg.baud
        );
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let reopens = AtomicU32::new(0);
        // After stop: keep serving briefly so pending results and the final status go out.
        let mut stop_at: Option<Instant> = None;
        while stop_at.is_none_or(|t| t.elapsed() < Duration::from_millis(1500)) {
            if stop_at.is_none() && self.stop.load(Ordering::Relaxed) {
                stop_at = Some(Instant::now());
            }
            let mut port = match serial::open(&self.cfg.port, self.cfg.baud) {
                Ok(p) => {
                    backoff.reset();
                    self.update(&link, true, &reopens, clock());
                    p
                }
                Err(e) => {
                    if stop_at.is_some() {
                        break;
                    }
                    self.drain(&mut link);
                    self.update(&link, false, &reopens, clock());
                    let d = backoff.next_delay();
                    log::error!(
                        "cartlink: cannot open {}: {e}; retrying in {} ms",
                        self.cfg.port,
                        d.as_millis()
                    );
                    sleep_unless(&self.stop, d);
                    continue;
                }
            };
            loop {
                if stop_at.is_none() && self.stop.load(Ordering::Relaxed) {
                    stop_at = Some(Instant::now());
                }
                if let Some(t) = stop_at {
                    if link.pending() == 0 || t.elapsed() > Duration::from_millis(1500) {
                        let _ = transmit_link(&mut link, &mut port, clock);
                        self.update(&link, true, &reopens, clock());
                        return;
                    }
                }
                let r = receive_link(&mut link, &mut port, clock, |c| {
                    let _ = self.commands.send(c);
                })
                .and_then(|_| {
                    self.drain(&mut link);
                    if let Ok(s) = self.status.lock() {
                        link.set_status(*s);
                    }
                    if let Ok(x) = self.exam.lock() {
                        link.set_exam(x.as_deref());
                    }
                    if let Some(o) = self.outbox.lock().ok().and_then(|g| *g) {
                        link.set_outbox(o);
                    }
                    transmit_link(&mut link, &mut port, clock)
                });
                self.update(&link, true, &reopens, clock());
                if let Err(e) = r {
                    log::error!("cartlink: {} failed: {e}; reopening", self.cfg.port);
                    reopens.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            sleep_unless(&self.stop, backoff.next_delay());
        }
    }

    fn drain(&self, link: &mut Link<PENDING>) {
        while let Ok(c) = self.results.try_recv() {
            link.push_result(c);
        }
    }

    fn update(&self, link: &Link<PENDING>, open: bool, reopens: &AtomicU32, now_ms: u64) {
        let s = link.stats();
        if let Ok(mut c) = self.counters.lock() {
            *c = CartCounters {
                port_open: open,
                peer_alive: link.peer_alive(now_ms),
                results_queued: s.results_queued,
                results_sent: s.results_sent,
                results_resent: s.results_resent,
                results_acked: s.results_acked,
                results_dropped: s.results_dropped,
                results_pending: link.pending(),
                commands: s.commands,
                frames_bad: link.decode_stats().errors(),
                reopens: reopens.load(Ordering::Relaxed),
            };
        }
    }
}
