//! Proves an update healthy: once the pipeline loop has turned without a stall for
//! `update.health_after_s`, the runtime writes the health file naming its executable and
//! bundle, resolved. The root-run update tool ([`updater::commit`], also run by the guard
//! before each start) makes a pending slot `good` only on such proof from a process started
//! after the switch; a crash or hang before it keeps the slot unproven and the guard rolls it
//! back after a few starts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::infer::ModelInfo;

/// A gap between loop turns longer than this restarts the clock: progress must be
/// continuous (the watchdog allows 30 s).
const STALL: Duration = Duration::from_secs(30);

/// Writes the health file once; see the module documentation.
#[derive(Debug)]
pub struct HealthReporter {
    file: PathBuf,
    after: Duration,
    since: Instant,
    last_turn: Instant,
    record: updater::Health,
    done: bool,
}

impl HealthReporter {
    /// `None` when no health file is configured.
    pub fn new(cfg: &Config, info: &ModelInfo) -> Option<Self> {
        let file = cfg.update.health_file.clone()?;
        let resolve = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        let exe = std::env::current_exe().map(resolve).unwrap_or_default();
        let bundle = cfg.model.bundle.clone().map(resolve).unwrap_or_default();
        let now = Instant::now();
        Some(Self {
            file,
            after: Duration::from_secs_f32(cfg.update.health_after_s),
            since: now,
            last_turn: now,
            record: updater::Health {
                exe,
                bundle,
                bundle_sha256: info.bundle_sha256.clone(),
                runtime: crate::trace::RUNTIME_VERSION.into(),
                started_unix_ms: crate::events::unix_ms(),
                healthy_unix_ms: 0,
            },
            done: false,
        })
    }

    /// One turn of the pipeline loop.
    pub fn turn(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if now.saturating_duration_since(self.last_turn) > STALL {
            log::warn!("pipeline stalled: the health clock starts again");
            self.since = now;
        }
        self.last_turn = now;
        if now.saturating_duration_since(self.since) < self.after {
            return;
        }
        self.record.healthy_unix_ms = crate::events::unix_ms();
        match self.record.store(&self.file) {
            Ok(()) => log::info!(
                "healthy after {:.0} s of progress: wrote {}",
                self.after.as_secs_f32(),
                self.file.display()
            ),
            Err(e) => log::error!("{e}: an update of this slot cannot be committed"),
        }
        // Once, written or not: a failing disk must not turn every frame into an error line.
        self.done = true;
    }
}
