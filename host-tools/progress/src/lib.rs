//! Progress of the host tools' long steps (synthesis, feature extraction, calibration, GPTQ,
//! evaluation, training epochs).
//!
//! On a terminal a user wants a bar with rate and time left; in CI logs, under `nohup` or in
//! a pipe, a bar is either invisible or a flood of carriage returns, and the same progress
//! must arrive as plain `log` lines (at most one per 10 s, and one at the end). One type does
//! both, so every step reports the same way. It is `Sync`: worker threads tick it directly.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Seconds between log lines when there is no terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Where the report goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An indicatif bar on stderr.
    Bar,
    /// `log::info!` lines.
    Log,
}

impl Mode {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Log
        }
    }
}

/// One long step's progress.
#[derive(Debug)]
pub struct Progress {
    label: Mutex<String>,
    unit: &'static str,
    total: u64,
    done: AtomicU64,
    start: Instant,
    last_line: Mutex<Instant>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Starts reporting `total` images of the step `label`.
    pub fn new(label: &str, total: u64) -> Self {
        Self::counted(label, total, "images")
    }

    /// Starts reporting `total` items called `unit`.
    pub fn counted(label: &str, total: u64, unit: &'static str) -> Self {
        Self::with_mode(label, total, unit, Mode::detect())
    }

    /// As [`Progress::counted`], with the mode chosen by the caller (tests).
    pub fn with_mode(label: &str, total: u64, unit: &'static str, mode: Mode) -> Self {
        let bar = match mode {
            Mode::Bar => {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_message(label.to_string());
                Some(bar)
            }
            Mode::Log => {
                log::info!("{label}: {total} {unit}");
                None
            }
        };
        let now = Instant::now();
        Self {
            label: Mutex::new(label.to_string()),
            unit,
            total,
            done: AtomicU64::new(0),
            start: now,
            last_line: Mutex::new(now),
            bar,
        }
    }

    /// One more item done.
    pub fn tick(&self) {
        self.inc(1);
    }

    /// `n` more items done.
    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        let due = match self.last_line.lock() {
            Ok(mut last) if last.elapsed() >= LOG_EVERY || done >= self.total => {
                *last = Instant::now();
                true
            }
            _ => false,
        };
        if due {
            log::info!("{}", self.line(done));
        }
    }

    /// Replaces the label (e.g. with the latest validation figure).
    pub fn set_label(&self, label: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(label.clone());
        }
        if let Ok(mut l) = self.label.lock() {
            *l = label;
        }
    }

    /// Ends the report (the bar stays on screen with its final count).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }

    /// Items done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Seconds since the start.
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// `label: done/total unit (pct), elapsed, ETA`.
    fn line(&self, done: u64) -> String {
        let el = self.elapsed_s();
        let left = self.total.saturating_sub(done);
        let eta = if done == 0 {
            0.0
        } else {
            el / done as f64 * left as f64
        };
        let label = self.label.lock().map(|l| l.clone()).unwrap_or_default();
        format!(
            "{label}: {done}/{} {} ({:.0}%), {el:.0} s elapsed, ETA {eta:.0} s",
            self.total,
            self.unit,
            100.0 * done as f64 / self.total.max(1) as f64
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads() {
        let p = Progress::with_mode("work", 400, "items", Mode::Log);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..100).for_each(|_| p.tick()));
            }
        });
        assert_eq!(p.done(), 400);
        assert!(p.line(400).starts_with("work: 400/400 items (100%)"));
    }

    #[test]
    fn the_log_line_names_the_step_and_time_left() {
        let p = Progress::with_mode("calibration", 10, "images", Mode::Log);
        p.inc(5);
        p.set_label("calibration (entropy)".into());
        let line = p.line(p.done());
        assert!(
            line.starts_with("calibration (entropy): 5/10 images (50%)"),
            "{line}"
        );
        assert!(line.contains("ETA"), "{line}");
    }
}
