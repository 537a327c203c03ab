//! Per-stage latency, rates and counters for the log, stdout and the cart's Status.
//! Recent latencies sit in fixed rings (no growth over a long session); whole-run means are
//! kept as sums for the benchmark.

use std::time::Duration;

use heapless::HistoryBuf;
use serde::Serialize;

/// Recent samples kept per stage for percentiles.
const RECENT: usize = 256;

/// Pipeline stages, in data-flow order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Capture,
    Gate,
    Preprocess,
    Infer,
    Aggregate,
    Sinks,
    /// From the end of capture to the end of the sinks (queueing included).
    Total,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Capture,
        Stage::Gate,
        Stage::Preprocess,
        Stage::Infer,
        Stage::Aggregate,
        Stage::Sinks,
        Stage::Total,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Capture => "capture",
            Stage::Gate => "gate",
            Stage::Preprocess => "preprocess",
            Stage::Infer => "infer",
            Stage::Aggregate => "aggregate",
            Stage::Sinks => "sinks",
            Stage::Total => "total",
        }
    }
}

/// Latency figures of one stage, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Samples in the recent window.
    pub n: usize,
    pub mean: f32,
    pub p50: f32,
    pub p95: f32,
    pub max: f32,
    /// Mean over the whole run.
    pub run_mean: f32,
}

/// One stage's recorder.
#[derive(Debug, Clone, Default)]
pub struct StageTimer {
    recent: HistoryBuf<f32, RECENT>,
    run_sum_ms: f64,
    run_n: u64,
}

impl StageTimer {
    pub fn record(&mut self, d: Duration) {
        let ms = d.as_secs_f32() * 1e3;
        self.recent.write(ms);
        self.run_sum_ms += f64::from(ms);
        self.run_n += 1;
    }

    /// Figures over the recent window (no allocation: a stack copy is sorted).
    pub fn latency(&self) -> Latency {
        let n = self.recent.len();
        if n == 0 {
            return Latency::default();
        }
        let mut v = [0f32; RECENT];
        v[..n].copy_from_slice(self.recent.as_slice());
        let v = &mut v[..n];
        v.sort_by(f32::total_cmp);
        let pct = |q: f32| v[((n - 1) as f32 * q).round() as usize];
        Latency {
            n,
            mean: v.iter().sum::<f32>() / n as f32,
            p50: pct(0.5),
            p95: pct(0.95),
            max: v[n - 1],
            run_mean: self.run_mean_ms() as f32,
        }
    }

    /// Mean over every sample of the run.
    pub fn run_mean_ms(&self) -> f64 {
        if self.run_n == 0 {
            0.0
        } else {
            self.run_sum_ms / self.run_n as f64
        }
    }

    pub fn run_count(&self) -> u64 {
        self.run_n
    }
}

/// All stages.
#[derive(Debug, Clone, Default)]
pub struct Timers {
    t: [StageTimer; 7],
}

impl Timers {
    pub fn record(&mut self, s: Stage, d: Duration) {
        self.t[s as usize].record(d);
    }

    pub fn get(&self, s: Stage) -> &StageTimer {
        &self.t[s as usize]
    }

    /// Stage name -> figures, for JSON.
    pub fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        Stage::ALL
            .iter()
            .map(|&s| {
                (
                    s.name().to_string(),
                    serde_json::to_value(self.get(s).latency()).unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Resident set size of this process in KiB (Linux), for status and the benchmark.
pub fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak RSS in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_the_recent_window() {
        let mut t = StageTimer::default();
        for ms in 1..=100 {
            t.record(Duration::from_millis(ms));
        }
        let l = t.latency();
        assert_eq!(l.n, 100);
        assert!((l.mean - 50.5).abs() < 0.01);
        assert!((l.p50 - 51.0).abs() < 1.01);
        assert!((l.p95 - 95.0).abs() < 1.01);
        assert!((l.max - 100.0).abs() < 0.01);
        for _ in 0..1000 {
            t.record(Duration::from_millis(1));
        }
        assert_eq!(t.latency().n, RECENT);
        assert_eq!(t.run_count(), 1100);
    }

    #[test]
    fn rss_is_readable() {
        assert!(rss_kib().unwrap() > 0);
    }
}
