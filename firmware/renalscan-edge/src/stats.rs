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
    /// Every sink, snapshots and the journal's fsync included.
    Sinks,
    /// From the end of capture to the end of the sinks (queueing included).
    Total,
    /// [`Stage::Total`] of the frames the model classified only: frame to decision.
    Decide,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Capture,
        Stage::Gate,
        Stage::Preprocess,
        Stage::Infer,
        Stage::Aggregate,
        Stage::Sinks,
        Stage::Total,
        Stage::Decide,
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
            Stage::Decide => "decide",
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

/// CPU time of the calling thread. Wall time on a loaded machine says more about the other
/// processes than about this code; thread CPU time does not (tract runs on the caller).
#[allow(unsafe_code)] // clock_gettime(CLOCK_THREAD_CPUTIME_ID): std has no thread CPU clock.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Start of a timed stage: wall clock and thread CPU time.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    wall: std::time::Instant,
    cpu: Duration,
}

impl Span {
    pub fn start() -> Self {
        Self {
            wall: std::time::Instant::now(),
            cpu: thread_cpu(),
        }
    }

    /// (wall, cpu) since the start.
    pub fn elapsed(&self) -> (Duration, Duration) {
        (self.wall.elapsed(), thread_cpu().saturating_sub(self.cpu))
    }
}

/// All stages, wall and CPU time.
#[derive(Debug, Clone, Default)]
pub struct Timers {
    t: [StageTimer; 8],
    cpu: [StageTimer; 8],
}

impl Timers {
    /// Wall time only (queueing, end-to-end).
    pub fn record(&mut self, s: Stage, d: Duration) {
        self.t[s as usize].record(d);
    }

    /// Wall and CPU time of a stage that ran on this thread.
    pub fn record_span(&mut self, s: Stage, span: Span) {
        let (w, c) = span.elapsed();
        self.record_both(s, w, c);
    }

    /// Wall and CPU time measured elsewhere (the capture thread).
    pub fn record_both(&mut self, s: Stage, wall: Duration, cpu: Duration) {
        self.t[s as usize].record(wall);
        self.cpu[s as usize].record(cpu);
    }

    pub fn get(&self, s: Stage) -> &StageTimer {
        &self.t[s as usize]
    }

    /// CPU time of a stage (zero samples for `Total`).
    pub fn cpu(&self, s: Stage) -> &StageTimer {
        &self.cpu[s as usize]
    }

    /// Stage name -> mean CPU milliseconds over the run, for JSON.
    pub fn cpu_report(&self) -> serde_json::Map<String, serde_json::Value> {
        Stage::ALL
            .iter()
            .filter(|&&s| s != Stage::Total && s != Stage::Decide)
            .map(|&s| (s.name().to_string(), self.cpu(s).run_mean_ms().into()))
            .collect()
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
    fn thread_cpu_advances_with_work_not_with_sleep() {
        let s = Span::start();
        std::thread::sleep(Duration::from_millis(30));
        let (w, c) = s.elapsed();
        assert!(w >= Duration::from_millis(30));
        assert!(c < Duration::from_millis(15), "{c:?}");
        let s = Span::start();
        let mut x = 0u64;
        while s.elapsed().1 < Duration::from_millis(20) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert!(x != 1);
    }

    #[test]
    fn rss_is_readable() {
        assert!(rss_kib().unwrap() > 0);
    }
}
