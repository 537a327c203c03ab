//! One run: source and capture thread -> slot -> pipeline -> sinks, commands from the
//! command sources, periodic status, systemd readiness and watchdog, and an orderly shutdown
//! in which every sink flushes what it holds (the journal first).
//!
//! [`Runtime`] knows no sink by type: outputs are the [`SinkSet`] built from the config
//! (`sink::build`), inputs besides frames are [`CommandSource`]s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{Config, SourceKind};
use crate::events::{
    gated_map, no_kidney_map, Decision, DeviceState, FrameCounts, SourceCounts, StatusReport,
};
use crate::events::{
    unix_ms, Mark, MarkKind, ModelIdentity, SessionContext, SessionEvent, SessionRecord,
};
use crate::infer::Classifier;
use crate::pipeline::{Counters, Pipeline};
use crate::sink::build::Outputs;
use crate::sink::{CommandSource, Control, SinkSet, StatusKind};
use crate::source::phantom::PhantomSource;
use crate::source::replay::Replay;
use crate::source::v4l::V4lSource;
use crate::source::{capture_loop, Backoff, CaptureCounters, Frame, Slot, Source};
use crate::stats::{rss_kib, Span, Stage};
use crate::watchdog::{Notifier, Watchdog};

/// Builds the configured source.
pub fn make_source(cfg: &Config) -> anyhow::Result<Box<dyn Source>> {
    Ok(match cfg.source.kind {
        SourceKind::V4l => Box::new(V4lSource::new(&cfg.source.v4l)),
        SourceKind::Replay => {
            let path = cfg
                .source
                .replay
                .path
                .as_ref()
                .context("source.kind = \"replay\" needs source.replay.path")?;
            Box::new(Replay::new(
                path,
                cfg.source.replay.fps,
                cfg.source.replay.looped,
            ))
        }
        SourceKind::Phantom => Box::new(PhantomSource::new(&cfg.source.phantom)?),
    })
}

/// Options of one run beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Sample the RSS every this many processed frames (bench).
    pub rss_every: u64,
    /// Receives every periodic and the final status (in-process tests, embedding).
    pub status_tx: Option<std::sync::mpsc::Sender<StatusReport>>,
}

/// What a finished run did (bench, tests).
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub counters: Counters,
    pub timers: crate::stats::Timers,
    pub dropped: u64,
    pub corrupt: u64,
    pub captured: u64,
    pub wall: Duration,
    /// (frames processed, RSS KiB) samples.
    pub rss: Vec<(u64, u64)>,
}

/// Runs until the source ends, `pipeline.max_frames`, or `term` is set (signal).
/// The patient and study attributes of the replayed DICOM file (or a folder's first DICOM
/// file), when the source is one and it says anything. Nothing about them is logged.
fn source_study(cfg: &Config) -> Option<crate::events::SourceStudy> {
    if cfg.source.kind != SourceKind::Replay {
        return None;
    }
    let path = cfg.source.replay.path.as_ref()?;
    let file = if path.is_dir() {
        crate::source::replay::list_frames(path)
            .ok()?
            .into_iter()
            .find(|p| {
                std::fs::read(p)
                    .map(|b| usimage::dicom::is_dicom(&b))
                    .unwrap_or(false)
            })?
    } else {
        path.clone()
    };
    let bytes = std::fs::read(&file).ok()?;
    if !usimage::dicom::is_dicom(&bytes) {
        return None;
    }
    match usimage::dicom::read_study(&bytes) {
        Ok(s) if !s.is_empty() => {
            log::info!(
                "replayed DICOM study {}: exams copy its patient and study attributes",
                file.display()
            );
            Some(s)
        }
        Ok(_) => None,
        Err(e) => {
            log::warn!("{}: study attributes not read: {e}", file.display());
            None
        }
    }
}

/// How often a running cart applies the retention period.
pub(crate) const RETENTION_EVERY: Duration = Duration::from_secs(3600);

pub fn run(
    cfg: &Config,
    classifier: Classifier,
    outputs: Outputs,
    term: Arc<AtomicBool>,
    opts: &RunOptions,
) -> anyhow::Result<RunSummary> {
    Runtime::start(cfg, classifier, outputs, opts)?.run(&term)
}

/// The capture thread and its hand-over slot.
struct Capture {
    slot: Arc<Slot>,
    counters: Arc<CaptureCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    fn start(cfg: &Config, source: Box<dyn Source>) -> anyhow::Result<Self> {
        let slot = Arc::new(Slot::new());
        let counters = Arc::new(CaptureCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let backoff = Backoff::new(
            Duration::from_millis(cfg.source.reopen.initial_ms),
            Duration::from_millis(cfg.source.reopen.max_ms),
        );
        let thread = {
            let (slot, counters, stop) = (slot.clone(), counters.clone(), stop.clone());
            std::thread::Builder::new()
                .name("capture".into())
                .spawn(move || capture_loop(source, slot, counters, stop, backoff))?
        };
        Ok(Self {
            slot,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.slot.close();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("capture thread panicked");
            }
        }
    }

    fn load(&self, c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// When the status is due, and what the last interval saw.
struct StatusClock {
    started: Instant,
    every: Duration,
    last: Instant,
    /// (processed, inferred) at the last periodic status.
    last_counts: (u64, u64),
    recent_gated: u64,
    recent_used: u64,
    /// Something changed (a command): tell the sinks now.
    dirty: bool,
    /// The status line in the log: at most once per `log_every`.
    log_every: Duration,
    last_log: Option<Instant>,
}

/// Whether the loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// A run in progress.
pub struct Runtime<'o> {
    opts: &'o RunOptions,
    pipeline: Pipeline,
    sinks: SinkSet,
    commands: Vec<Box<dyn CommandSource>>,
    capture: Capture,
    watchdog: Watchdog,
    clock: StatusClock,
    max_frames: u64,
    /// Frames taken from the slot.
    submitted: u64,
    reopens_seen: u64,
    decisions: Vec<Decision>,
    rss: Vec<(u64, u64)>,
    /// The exam open now.
    session: Option<String>,
    store: records::SessionStore,
    identity: ModelIdentity,
    /// Journal and retention period (days) when retention applies; checked at start and
    /// every [`RETENTION_EVERY`] after, so a cart that never restarts still forgets.
    retention: Option<(std::path::PathBuf, u32)>,
    last_retention: Instant,
    /// The patient and study of a replayed DICOM study, kept with each exam it screens so
    /// its PACS objects join that study.
    source_study: Option<crate::events::SourceStudy>,
    /// Writes the health file an A/B update waits for.
    health: Option<crate::health::HealthReporter>,
    /// The journal's retention pin (shared with the journal sink).
    journal_keep: journal::KeepFrom,
}

impl<'o> Runtime<'o> {
    /// Starts the capture thread and tells systemd the runtime is ready.
    pub fn start(
        cfg: &Config,
        classifier: Classifier,
        outputs: Outputs,
        opts: &'o RunOptions,
    ) -> anyhow::Result<Self> {
        let source = make_source(cfg)?;
        let desc = source.describe();
        let capture = Capture::start(cfg, source)?;
        let mut pcfg = cfg.pipeline.clone();
        if !pcfg.autostart && outputs.commands.is_empty() {
            log::warn!(
                "pipeline.autostart = false without a command source: screening starts anyway"
            );
            pcfg.autostart = true;
        } else if !pcfg.autostart {
            log::info!("waiting for a StartScreening command");
        }
        let mut pipeline = Pipeline::new(classifier, &pcfg, &cfg.gate, &cfg.aggregate)?;
        let (threshold, source) = pipeline.threshold();
        crate::pipeline::announce_threshold(
            threshold,
            source,
            &pipeline.classifier().info().manifest,
        );
        let (workers, threads) = cfg.model.layout();
        let slot = Arc::clone(&capture.slot);
        pipeline.start_workers(workers, threads, Some(Arc::new(move || slot.wake())))?;
        log::info!(
            "inference on {} core(s): {} worker(s), {threads} thread(s) each (model.threads, \
             model.workers, model.parallelism = {:?})",
            cfg.model.cores(),
            workers.max(1),
            cfg.model.parallelism
        );
        pipeline.set_trace(crate::trace::trace(pipeline.classifier().info(), cfg));
        let (threshold, source) = pipeline.threshold();
        log::info!(
            "operating threshold {threshold} ({source:?}); build {} git {}; config sha256 {}",
            crate::trace::RUNTIME_VERSION,
            crate::trace::GIT_REVISION,
            pipeline.trace().map_or("-", |t| t.config_sha256.as_str())
        );
        let sinks = SinkSet::new(outputs.sinks);
        log::info!(
            "running: {desc}, mode {:?}, sinks {:?}",
            cfg.pipeline.mode,
            sinks.names()
        );
        let info = pipeline.classifier().info();
        let identity = ModelIdentity {
            name: info.name.clone(),
            version: info.version.clone(),
            bundle_sha256: info.bundle_sha256.clone(),
            signer: info.signer.clone(),
            threshold,
        };
        let watchdog = Watchdog::new(Notifier::from_env());
        if let Err(e) = watchdog.notifier().ready(&format!(
            "screening aid ready: {} from {desc}",
            pipeline.classifier().info().name
        )) {
            log::warn!("{e}");
        }
        let health = crate::health::HealthReporter::new(cfg, pipeline.classifier().info());
        let now = Instant::now();
        Ok(Self {
            opts,
            pipeline,
            sinks,
            commands: outputs.commands,
            capture,
            watchdog,
            clock: StatusClock {
                started: now,
                every: Duration::from_secs_f32(cfg.output.status_every_s),
                last: now,
                last_counts: (0, 0),
                recent_gated: 0,
                recent_used: 0,
                dirty: true,
                log_every: Duration::from_secs_f32(cfg.output.log_every_s),
                last_log: None,
            },
            max_frames: cfg.pipeline.max_frames,
            submitted: 0,
            reopens_seen: 0,
            decisions: Vec::with_capacity(4),
            rss: Vec::new(),
            session: None,
            store: records::SessionStore::at(&cfg.session.dir),
            identity,
            retention: cfg
                .journal
                .enabled
                .then(|| (cfg.journal.dir.clone(), cfg.session.retention_days)),
            last_retention: now,
            source_study: source_study(cfg),
            health,
            journal_keep: cfg.journal.keep_from.clone(),
        })
        .map(|mut rt| {
            if cfg.journal.enabled {
                rt.recover_sessions(&cfg.journal.dir);
                rt.apply_retention();
            }
            if let Some(ctx) = &cfg.session.open_at_start {
                rt.start_session(ctx.clone());
            }
            rt
        })
    }

    /// After a restart: sessions left open are marked interrupted (what was committed is
    /// kept).
    fn recover_sessions(&mut self, journal: &std::path::Path) {
        let sessions = match records::read(journal) {
            Ok(s) => s,
            Err(e) => {
                log::error!("sessions in {} not read: {e}", journal.display());
                return;
            }
        };
        let now = unix_ms();
        for s in sessions
            .iter()
            .filter(|s| s.state == records::SessionState::Open)
        {
            log::warn!(
                "session {} was interrupted (the runtime stopped without ending it): marked so, its {} decisions kept",
                s.id,
                s.decisions.len()
            );
            self.sinks.session(&SessionRecord {
                session: s.id.clone(),
                event: SessionEvent::Interrupted,
                unix_ms: now,
            });
        }
    }

    /// Sessions ended longer ago than the retention period lose their context and key
    /// frames; each deletion is journalled. The open session is never touched.
    fn apply_retention(&mut self) {
        self.last_retention = Instant::now();
        let Some((journal, retention_days)) = self.retention.clone() else {
            return;
        };
        let sessions = match records::read(&journal) {
            Ok(s) => s,
            Err(e) => {
                log::error!("retention: sessions in {} not read: {e}", journal.display());
                return;
            }
        };
        // The journal keeps every record from the oldest exam that has not left the cart.
        let keep = records::oldest_unreleased(&sessions, &self.store);
        self.journal_keep.set(keep);
        if let Some(k) = keep {
            log::info!(
                "journal retention keeps records from seq {k} (exams not yet exported or \
                 forwarded)"
            );
        }
        if retention_days == 0 {
            return;
        }
        let now = unix_ms();
        let cutoff = now.saturating_sub(u64::from(retention_days) * 86_400_000);
        for s in records::expired(&sessions, &self.store, cutoff) {
            if self.session.as_deref() == Some(s.id.as_str()) {
                continue;
            }
            match self.store.purge(&s.id) {
                Ok(_) => {
                    log::info!(
                        "session {}: context and key frames deleted after {retention_days} days (retention)",
                        s.id
                    );
                    self.sinks.session(&SessionRecord {
                        session: s.id.clone(),
                        event: SessionEvent::Purged,
                        unix_ms: now,
                    });
                }
                Err(e) => log::error!("retention: {e}"),
            }
        }
        let held = records::held_past_retention(&sessions, &self.store, cutoff).len();
        if held > 0 {
            log::warn!(
                "retention: {held} exam(s) past {retention_days} days are kept because their \
                 records never left the cart (not exported, not accepted by a PACS): export \
                 them (renalscan-edge export --all --out DIR) so retention can delete them"
            );
        }
    }

    /// Opens an exam (ending an open one first). Its context goes to the session store
    /// before the journal records the start; nothing about the patient reaches a log.
    fn start_session(&mut self, ctx: SessionContext) {
        if self.session.is_some() {
            self.end_session();
        }
        let ctx = match ctx.cleaned() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("session not started: {e}");
                return;
            }
        };
        let now = unix_ms();
        let id = records::new_session_id(now);
        if let Err(e) = self.store.begin(&id, &ctx) {
            log::error!("session not started: {e} (session.dir must be writable)");
            return;
        }
        if let Some(s) = &self.source_study {
            if let Err(e) = self.store.write_source(&id, s) {
                log::error!("session {id}: the source study's attributes not kept: {e}");
            }
        }
        let state = self.sinks.session(&SessionRecord {
            session: id.clone(),
            event: SessionEvent::Started {
                model: Some(self.identity.clone()),
            },
            unix_ms: now,
        });
        if let crate::events::JournalState::Committed { seq } = state {
            // A new exam has not left the cart: its records outlive the journal's limits.
            self.journal_keep.lower_to(seq);
        }
        let set = |o: &Option<String>| if o.is_some() { "entered" } else { "none" };
        log::info!(
            "session {id} started: patient id {}, accession {}, operator {}, side {:?}; journal {state:?}",
            set(&ctx.patient_id),
            set(&ctx.accession),
            set(&ctx.operator),
            ctx.side
        );
        self.session = Some(id);
    }

    fn end_session(&mut self) {
        if let Some(id) = self.session.take() {
            let state = self.sinks.session(&SessionRecord {
                session: id.clone(),
                event: SessionEvent::Ended,
                unix_ms: unix_ms(),
            });
            log::info!("session {id} ended; journal {state:?}");
        }
    }

    /// Turns the loop until the source ends, the frame limit, or `term`; then shuts down.
    pub fn run(mut self, term: &AtomicBool) -> anyhow::Result<RunSummary> {
        loop {
            // Pings only while this loop turns: a stage that hangs stops them and systemd
            // restarts the runtime.
            self.watchdog.tick(Instant::now());
            if let Some(h) = &mut self.health {
                h.turn(Instant::now());
            }
            if term.load(Ordering::Relaxed) {
                log::info!("signal received: shutting down");
                break;
            }
            self.poll_commands();
            if self.next_frame() == Flow::Stop {
                break;
            }
            self.sinks.tick(Instant::now());
            self.status_if_due();
            if self.last_retention.elapsed() >= RETENTION_EVERY {
                self.apply_retention();
            }
        }
        Ok(self.finish())
    }

    fn poll_commands(&mut self) {
        let mut cmds = Vec::new();
        for source in &mut self.commands {
            while let Some(cmd) = source.poll() {
                cmds.push((source.name(), cmd));
            }
        }
        for (from_source, cmd) in cmds {
            {
                // A session's context is not logged (patient identifiers never reach a log).
                match &cmd {
                    Control::StartSession(_) => {
                        log::info!("command from {from_source}: start a session")
                    }
                    c => log::info!("command from {from_source}: {c:?}"),
                }
                match cmd {
                    Control::Mark {
                        journal_seq,
                        agree,
                        from,
                    } => {
                        let m = Mark {
                            kind: if agree {
                                MarkKind::Agree
                            } else {
                                MarkKind::Disagree
                            },
                            decision_seq: journal_seq,
                            unix_ms: crate::events::unix_ms(),
                            from: from.to_string(),
                            session: self.session.clone(),
                        };
                        let state = self.sinks.mark(&m);
                        log::info!(
                            "mark {:?} on decision {journal_seq}: journal {state:?}",
                            m.kind
                        );
                    }
                    Control::StartSession(ctx) => self.start_session(ctx),
                    Control::EndSession => self.end_session(),
                    other => self.pipeline.command(other),
                }
                self.clock.dirty = true;
            }
        }
        let reopens = self.capture.load(&self.capture.counters.reopens);
        if reopens != self.reopens_seen {
            self.reopens_seen = reopens;
            self.pipeline.source_reopened();
        }
    }

    /// Hands finished frames to the sinks, then takes the next frame from the slot (waiting
    /// briefly) and submits it. With inference workers, several frames are in the model at
    /// once; their decisions still reach the sinks in frame order.
    fn next_frame(&mut self) -> Flow {
        // Whatever the workers finished, oldest first.
        while self.pipeline.in_flight() > 0 {
            let full = self.pipeline.in_flight() >= self.pipeline.capacity();
            match self.finish_one(full) {
                Some(Flow::Stop) => return Flow::Stop,
                Some(Flow::Continue) => {}
                None => break,
            }
        }
        if self.max_frames > 0 && self.submitted >= self.max_frames {
            // Every frame asked for is in: deliver the rest, then stop.
            while self.pipeline.in_flight() > 0 {
                if self.finish_one(true) == Some(Flow::Stop) {
                    return Flow::Stop;
                }
            }
            return Flow::Stop;
        }
        // A worker finishing wakes this wait (`Slot::wake`). While another worker is busy,
        // a free one waits for a fresh frame rather than start on one already most of a
        // frame interval old: decisions keep coming from the busy worker, and the second
        // core's share of the work then comes back as latency instead of adding to it. With
        // every worker idle (or one worker) any frame is taken at once.
        let wait = Duration::from_millis(20);
        let frame = if self.pipeline.workers() > 1 && self.pipeline.in_flight() > 0 {
            self.capture.slot.take_fresh(wait)
        } else {
            self.capture.slot.take(wait)
        };
        let Some(frame) = frame else {
            return if self.capture.slot.is_finished() && self.pipeline.in_flight() == 0 {
                Flow::Stop
            } else {
                Flow::Continue
            };
        };
        self.submitted += 1;
        self.pipeline.submit(frame);
        if self.pipeline.workers() == 0 {
            // Inferred inline: its decisions are due now.
            return self.finish_one(true).unwrap_or(Flow::Continue);
        }
        Flow::Continue
    }

    /// Gives the oldest submitted frame's decisions and view to the sinks (`wait`: waiting
    /// for its inference); `None` when no frame was ready.
    fn finish_one(&mut self, wait: bool) -> Option<Flow> {
        let gated_before: u64 = self.pipeline.counters.gated.iter().sum();
        let inferred_before = self.pipeline.counters.inferred;
        self.decisions.clear();
        let frame = self.pipeline.finish_next(wait, &mut self.decisions)?;
        let t = Span::start();
        self.deliver(&frame);
        self.sinks.frame(&self.pipeline.live(&frame));
        self.pipeline.timers.record_span(Stage::Sinks, t);
        let latency = frame.captured_at.elapsed();
        self.pipeline.timers.record(Stage::Total, latency);
        if self.pipeline.counters.inferred > inferred_before {
            self.pipeline.timers.record(Stage::Decide, latency);
        }
        let gated_now: u64 = self.pipeline.counters.gated.iter().sum();
        if gated_now > gated_before {
            self.clock.recent_gated += 1;
        } else {
            self.clock.recent_used += 1;
        }
        self.capture.slot.recycle(frame);
        let n = self.pipeline.counters.processed;
        if self.opts.rss_every > 0 && n.is_multiple_of(self.opts.rss_every) {
            self.rss.push((n, rss_kib().unwrap_or(0)));
        }
        if self.max_frames > 0 && n >= self.max_frames {
            log::info!("{n} frames processed: stopping (pipeline.max_frames)");
            return Some(Flow::Stop);
        }
        Some(Flow::Continue)
    }

    /// Hands this frame's decisions to the sinks, in order.
    fn deliver(&mut self, frame: &Frame) {
        if self.decisions.is_empty() {
            return;
        }
        match self.pipeline.view(frame) {
            Some(view) => {
                for d in &mut self.decisions {
                    d.session.clone_from(&self.session);
                    self.sinks.decision(d, &view);
                }
            }
            None => log::error!(
                "{} decisions without a classified frame were not delivered (a bug)",
                self.decisions.len()
            ),
        }
    }

    fn state(&self) -> DeviceState {
        let up = self.capture.counters.up.load(Ordering::Relaxed);
        if !self.pipeline.screening() {
            DeviceState::Idle
        } else if self.pipeline.faulted {
            DeviceState::Fault
        } else if !up || (self.clock.recent_used == 0 && self.clock.recent_gated > 0) {
            DeviceState::NoSignal
        } else {
            DeviceState::Screening
        }
    }

    /// On a change, the status goes to the sinks at once; periodically also to the log,
    /// systemd and `status_tx`.
    fn status_if_due(&mut self) {
        let periodic = self.clock.last.elapsed() >= self.clock.every;
        if !self.clock.dirty && !periodic {
            return;
        }
        let report = self.report(self.state());
        let kind = if periodic {
            StatusKind::Periodic
        } else {
            StatusKind::Change
        };
        self.sinks.status(&report, kind);
        self.clock.dirty = false;
        if !periodic {
            return;
        }
        if self
            .clock
            .last_log
            .is_none_or(|t| t.elapsed() >= self.clock.log_every)
        {
            log_status(&report);
            self.clock.last_log = Some(Instant::now());
        }
        let _ = self.watchdog.notifier().status(&format!(
            "{:?} {:.1} fps, {} decisions, dropped {}, journal {}",
            report.state,
            report.fps,
            report.frames.decisions,
            report.frames.dropped,
            report.journal["health"].as_str().unwrap_or("?")
        ));
        if let Some(tx) = &self.opts.status_tx {
            let _ = tx.send(report);
        }
        let c = &self.pipeline.counters;
        self.clock.last_counts = (c.processed, c.inferred);
        self.clock.last = Instant::now();
        self.clock.recent_gated = 0;
        self.clock.recent_used = 0;
    }

    /// The status record now.
    fn report(&self, state: DeviceState) -> StatusReport {
        let (p, cap, clock) = (&self.pipeline, &self.capture, &self.clock);
        let c = &p.counters;
        let dt = clock.last.elapsed().as_secs_f32().max(1e-3);
        let mut reports = self.sinks.reports();
        StatusReport {
            state,
            uptime_s: clock.started.elapsed().as_secs_f32(),
            fps: c.processed.saturating_sub(clock.last_counts.0) as f32 / dt,
            infer_fps: c.inferred.saturating_sub(clock.last_counts.1) as f32 / dt,
            frames: FrameCounts {
                captured: cap.load(&cap.counters.captured),
                processed: c.processed,
                dropped: cap.slot.dropped(),
                corrupt: cap.load(&cap.counters.corrupt),
                idle: c.idle,
                gated: gated_map(&c.gated),
                no_kidney_by: no_kidney_map(&c.no_kidney_by),
                skipped: c.skipped,
                inferred: c.inferred,
                errors: c.errors,
                decisions: c.decisions,
            },
            source: SourceCounts {
                up: cap.counters.up.load(Ordering::Relaxed),
                lost: cap.load(&cap.counters.lost),
                reopens: cap.load(&cap.counters.reopens),
                open_failures: cap.load(&cap.counters.open_failures),
            },
            latency_ms: p.timers.report(),
            cpu_ms: p.timers.cpu_report(),
            journal: reports
                .remove("journal")
                .unwrap_or_else(|| serde_json::json!({"health": "disabled"})),
            sinks: self.sinks.health(),
            reports,
            rss_kib: rss_kib().unwrap_or(0),
            threshold: Some(p.threshold().0),
            threshold_source: Some(p.threshold().1),
            trace: p.trace().cloned(),
        }
    }

    /// Stops capture, lets every sink flush (the journal first), reports a last time.
    fn finish(mut self) -> RunSummary {
        let _ = self.watchdog.notifier().stopping();
        self.capture.stop();
        // Frames still in the model: their decisions are recorded before anything closes.
        while self.pipeline.in_flight() > 0 {
            if self.finish_one(true).is_none() {
                break;
            }
        }
        self.end_session();
        self.sinks.shutdown();
        let report = self.report(DeviceState::Idle);
        log_status(&report);
        self.sinks.status(&report, StatusKind::Final);
        if let Some(tx) = &self.opts.status_tx {
            let _ = tx.send(report);
        }
        let cap = &self.capture;
        RunSummary {
            counters: self.pipeline.counters,
            timers: self.pipeline.timers.clone(),
            dropped: cap.slot.dropped(),
            corrupt: cap.load(&cap.counters.corrupt),
            captured: cap.load(&cap.counters.captured),
            wall: self.clock.started.elapsed(),
            rss: self.rss,
        }
    }
}

fn log_status(r: &StatusReport) {
    let ms = |s: &str| {
        r.latency_ms
            .get(s)
            .and_then(|v| v.get("mean"))
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    };
    log::info!(
        "status {:?} fps {:.1} infer {:.1}/s | ms capture {:.1} gate {:.2} pre {:.1} infer {:.1} agg {:.3} sinks {:.2} total {:.1} | dropped {} corrupt {} decisions {} | journal {} | rss {} MiB",
        r.state,
        r.fps,
        r.infer_fps,
        ms("capture"),
        ms("gate"),
        ms("preprocess"),
        ms("infer"),
        ms("aggregate"),
        ms("sinks"),
        ms("total"),
        r.frames.dropped,
        r.frames.corrupt,
        r.frames.decisions,
        r.journal.get("health").and_then(|v| v.as_str()).unwrap_or("?"),
        r.rss_kib / 1024
    );
}
