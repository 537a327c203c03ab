//! Wires a run together: source + capture thread -> slot -> pipeline -> sinks, the cart
//! link's commands, periodic status, signals, and an orderly shutdown that flushes the
//! journal and lets the cart link deliver what is pending.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cartlink::device::DeviceStatus;
use cartlink::{JournalHealth, State};
use serde::Serialize;

use crate::config::{Config, SourceKind};
use crate::events::{gated_map, Decision};
use crate::infer::Classifier;
use crate::pipeline::{Counters, Pipeline, Snapshots};
use crate::sink::cartlink::{CartCounters, CartSink};
use crate::sink::stdout::StdoutSink;
use crate::source::phantom::PhantomSource;
use crate::source::replay::Replay;
use crate::source::v4l::V4lSource;
use crate::source::{capture_loop, Backoff, CaptureCounters, Slot, Source};
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

/// The status record (stdout, log; the cart gets its subset).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub state: &'static str,
    pub uptime_s: f32,
    /// Frames processed per second over the last interval.
    pub fps: f32,
    /// Inferences per second over the last interval.
    pub infer_fps: f32,
    pub frames: FrameCounts,
    pub source: SourceCounts,
    pub latency_ms: serde_json::Map<String, serde_json::Value>,
    /// Mean thread CPU time per stage over the run (contention-free cost).
    pub cpu_ms: serde_json::Map<String, serde_json::Value>,
    pub journal: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart: Option<CartCounters>,
    /// Snapshots written and failed, when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<serde_json::Value>,
    pub rss_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrameCounts {
    pub captured: u64,
    pub processed: u64,
    /// Replaced in the slot before the pipeline took them.
    pub dropped: u64,
    pub corrupt: u64,
    pub idle: u64,
    pub gated: serde_json::Map<String, serde_json::Value>,
    pub skipped: u64,
    pub inferred: u64,
    pub errors: u64,
    pub decisions: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceCounts {
    pub up: bool,
    pub lost: u64,
    pub reopens: u64,
    pub open_failures: u64,
}

/// Journal health as the status and the cart see it; the journal sink fills it in.
pub trait JournalView {
    fn health(&self) -> JournalHealth;
    fn report(&self) -> serde_json::Value;
}

/// Options of one run beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Print decisions and status on stdout (the bench turns this off).
    pub quiet: bool,
    /// Sample the RSS every this many processed frames (bench).
    pub rss_every: u64,
    /// Receives every periodic status (in-process tests, embedding).
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

/// Sinks the runtime drives.
pub struct Sinks {
    pub stdout: Option<StdoutSink>,
    pub journal: Option<Box<dyn JournalSinkApi>>,
    pub cart: Option<CartSink>,
}

/// The journal sink's interface to the runtime.
pub trait JournalSinkApi: JournalView + Send {
    /// Appends the decision and records the outcome in `d.journal`.
    fn record(&mut self, d: &mut Decision);
    /// Periodic retry of held records.
    fn tick(&mut self);
    /// Flush what is held (shutdown).
    fn shutdown(&mut self);
}

impl Sinks {
    fn decision(&mut self, d: &mut Decision) {
        if let Some(j) = self.journal.as_mut() {
            j.record(d);
        }
        if let Some(s) = self.stdout.as_mut() {
            s.emit("decision", d);
        }
        if let Some(c) = self.cart.as_mut() {
            c.decision(d);
        }
    }
}

/// Runs until the source ends, `max_frames`, or `term` is set (signal).
pub fn run(
    cfg: &Config,
    classifier: Classifier,
    mut sinks: Sinks,
    term: Arc<AtomicBool>,
    opts: &RunOptions,
) -> anyhow::Result<RunSummary> {
    let source = make_source(cfg)?;
    let desc = source.describe();
    let slot = Arc::new(Slot::new());
    let counters = Arc::new(CaptureCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let backoff = Backoff::new(
        Duration::from_millis(cfg.source.reopen.initial_ms),
        Duration::from_millis(cfg.source.reopen.max_ms),
    );
    let capture = {
        let (slot, counters, stop) = (slot.clone(), counters.clone(), stop.clone());
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture_loop(source, slot, counters, stop, backoff))?
    };
    let mut autostart = cfg.pipeline.autostart;
    if sinks.cart.is_some() && !autostart {
        log::info!("waiting for the cart's StartScreening");
    }
    if sinks.cart.is_none() && !autostart {
        log::warn!("pipeline.autostart = false without a cart link: screening starts anyway");
        autostart = true;
    }
    let mut pcfg = cfg.pipeline.clone();
    pcfg.autostart = autostart;
    let mut pipeline = Pipeline::new(classifier, &pcfg, &cfg.gate, &cfg.aggregate);
    if cfg.snapshot.enabled {
        let snaps = Snapshots::open(&cfg.snapshot, pipeline.classifier())?;
        pipeline.set_snapshots(snaps)?;
    }
    log::info!("running: {desc}, mode {:?}", cfg.pipeline.mode);
    let mut watchdog = Watchdog::new(Notifier::from_env());
    if let Err(e) = watchdog.notifier().ready(&format!(
        "screening aid ready: {} from {desc}",
        pipeline.classifier().info().name
    )) {
        log::warn!("{e}");
    }

    let started = Instant::now();
    let status_every = Duration::from_secs_f32(cfg.output.status_every_s);
    let retry_every = Duration::from_secs_f32(cfg.journal.retry_every_s.max(0.05));
    let mut last_status = Instant::now();
    let mut last_retry = Instant::now();
    let mut last_counts = (0u64, 0u64);
    let mut decisions = Vec::with_capacity(4);
    let mut rss = Vec::new();
    let mut reopens_seen = 0u64;
    let mut recent_gated = 0u64;
    let mut recent_used = 0u64;
    let mut status_dirty = true;

    loop {
        // Pings only while this loop turns: a stage that hangs stops them and systemd
        // restarts the runtime.
        watchdog.tick(Instant::now());
        if term.load(Ordering::Relaxed) {
            log::info!("signal received: shutting down");
            break;
        }
        if let Some(c) = sinks.cart.as_ref() {
            while let Ok(cmd) = c.commands.try_recv() {
                pipeline.command(cmd);
                status_dirty = true;
            }
        }
        let reopens = counters.reopens.load(Ordering::Relaxed);
        if reopens != reopens_seen {
            reopens_seen = reopens;
            pipeline.source_reopened();
        }
        match slot.take(Duration::from_millis(20)) {
            Some(frame) => {
                let gated_before: u64 = pipeline.counters.gated.iter().sum();
                decisions.clear();
                pipeline.process(&frame, &mut decisions);
                let t = Span::start();
                for d in decisions.iter_mut() {
                    sinks.decision(d);
                }
                pipeline.timers.record_span(Stage::Sinks, t);
                pipeline
                    .timers
                    .record(Stage::Total, frame.captured_at.elapsed());
                let gated_now: u64 = pipeline.counters.gated.iter().sum();
                if gated_now > gated_before {
                    recent_gated += 1;
                } else {
                    recent_used += 1;
                }
                slot.recycle(frame);
                let n = pipeline.counters.processed;
                if opts.rss_every > 0 && n.is_multiple_of(opts.rss_every) {
                    rss.push((n, rss_kib().unwrap_or(0)));
                }
                if cfg.pipeline.max_frames > 0 && n >= cfg.pipeline.max_frames {
                    log::info!("{n} frames processed: stopping (pipeline.max_frames)");
                    break;
                }
            }
            None => {
                if slot.is_finished() {
                    break;
                }
            }
        }
        if last_retry.elapsed() >= retry_every {
            last_retry = Instant::now();
            if let Some(j) = sinks.journal.as_mut() {
                j.tick();
            }
        }
        if status_dirty || last_status.elapsed() >= status_every {
            let dt = last_status.elapsed().as_secs_f32().max(1e-3);
            let state = if !pipeline.screening() {
                State::Idle
            } else if pipeline.faulted {
                State::Fault
            } else if !counters.up.load(Ordering::Relaxed) || (recent_used == 0 && recent_gated > 0)
            {
                State::NoSignal
            } else {
                State::Screening
            };
            let report = status_report(
                &pipeline,
                &counters,
                &slot,
                &sinks,
                state,
                started,
                dt,
                last_counts,
            );
            if let Some(c) = sinks.cart.as_ref() {
                c.set_status(DeviceStatus {
                    state,
                    fps: report.fps,
                    latency_ms: pipeline.timers.get(Stage::Total).latency().mean,
                    frames_dropped: (slot.dropped() + counters.corrupt.load(Ordering::Relaxed))
                        .min(u64::from(u32::MAX)) as u32,
                    journal: sinks
                        .journal
                        .as_ref()
                        .map_or(JournalHealth::Disabled, |j| j.health()),
                });
            }
            if last_status.elapsed() >= status_every {
                log_status(&report);
                let _ = watchdog.notifier().status(&format!(
                    "{} {:.1} fps, {} decisions, dropped {}, journal {}",
                    report.state,
                    report.fps,
                    report.frames.decisions,
                    report.frames.dropped,
                    report.journal["health"].as_str().unwrap_or("?")
                ));
                if !opts.quiet {
                    if let Some(s) = sinks.stdout.as_mut() {
                        s.emit("status", &report);
                    }
                }
                if let Some(tx) = &opts.status_tx {
                    let _ = tx.send(report.clone());
                }
                last_counts = (pipeline.counters.processed, pipeline.counters.inferred);
                last_status = Instant::now();
                recent_gated = 0;
                recent_used = 0;
            }
            status_dirty = false;
        }
    }

    let _ = watchdog.notifier().stopping();
    stop.store(true, Ordering::Relaxed);
    slot.close();
    if capture.join().is_err() {
        log::error!("capture thread panicked");
    }
    if let Some(j) = sinks.journal.as_mut() {
        j.shutdown();
    }
    let dt = last_status.elapsed().as_secs_f32().max(1e-3);
    let report = status_report(
        &pipeline,
        &counters,
        &slot,
        &sinks,
        State::Idle,
        started,
        dt,
        last_counts,
    );
    log_status(&report);
    if !opts.quiet {
        if let Some(s) = sinks.stdout.as_mut() {
            s.emit("final", &report);
        }
    }
    if let Some(tx) = &opts.status_tx {
        let _ = tx.send(report.clone());
    }
    if let Some(c) = sinks.cart.as_mut() {
        c.set_status(DeviceStatus {
            state: State::Idle,
            ..DeviceStatus::default()
        });
        c.shutdown();
    }
    Ok(RunSummary {
        counters: pipeline.counters,
        timers: pipeline.timers.clone(),
        dropped: slot.dropped(),
        corrupt: counters.corrupt.load(Ordering::Relaxed),
        captured: counters.captured.load(Ordering::Relaxed),
        wall: started.elapsed(),
        rss,
    })
}

#[allow(clippy::too_many_arguments)]
fn status_report(
    p: &Pipeline,
    cap: &CaptureCounters,
    slot: &Slot,
    sinks: &Sinks,
    state: State,
    started: Instant,
    dt: f32,
    last: (u64, u64),
) -> StatusReport {
    let c = &p.counters;
    StatusReport {
        state: match state {
            State::Idle => "idle",
            State::Screening => "screening",
            State::NoSignal => "no_signal",
            State::Fault => "fault",
        },
        uptime_s: started.elapsed().as_secs_f32(),
        fps: c.processed.saturating_sub(last.0) as f32 / dt,
        infer_fps: c.inferred.saturating_sub(last.1) as f32 / dt,
        frames: FrameCounts {
            captured: cap.captured.load(Ordering::Relaxed),
            processed: c.processed,
            dropped: slot.dropped(),
            corrupt: cap.corrupt.load(Ordering::Relaxed),
            idle: c.idle,
            gated: gated_map(&c.gated),
            skipped: c.skipped,
            inferred: c.inferred,
            errors: c.errors,
            decisions: c.decisions,
        },
        source: SourceCounts {
            up: cap.up.load(Ordering::Relaxed),
            lost: cap.lost.load(Ordering::Relaxed),
            reopens: cap.reopens.load(Ordering::Relaxed),
            open_failures: cap.open_failures.load(Ordering::Relaxed),
        },
        latency_ms: p.timers.report(),
        cpu_ms: p.timers.cpu_report(),
        journal: sinks
            .journal
            .as_ref()
            .map_or(serde_json::json!({"health": "disabled"}), |j| j.report()),
        cart: sinks.cart.as_ref().map(|c| c.counters()),
        snapshots: p
            .snapshot_counts()
            .map(|(w, f)| serde_json::json!({"written": w, "failed": f})),
        rss_kib: rss_kib().unwrap_or(0),
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
        "status {} fps {:.1} infer {:.1}/s | ms capture {:.1} gate {:.2} pre {:.1} infer {:.1} agg {:.3} sinks {:.2} total {:.1} | dropped {} corrupt {} decisions {} | journal {} | rss {} MiB",
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
