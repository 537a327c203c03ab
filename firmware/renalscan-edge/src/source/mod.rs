//! Frame sources and the capture thread.
//!
//! A source yields grey frames; the capture thread pulls them as fast as the source gives
//! them and hands each to the [`Slot`], which keeps only the latest: the pipeline always works
//! on the freshest frame and capture never waits for inference. A corrupt frame is counted
//! and skipped; a lost source (probe unplugged, replay medium gone) is reopened with
//! exponential backoff.

pub mod phantom;
pub mod replay;
pub mod slot;
pub mod v4l;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use usimage::GreyFrame;

pub use slot::{Frame, Slot};

/// Why a source could not give a frame. The capture loop branches on the variant.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// This frame is unusable (bad buffer, undecodable file); the next may be fine.
    #[error("corrupt frame: {0}")]
    Corrupt(String),
    /// The source is gone (device unplugged, files vanished); close and reopen it.
    #[error("source lost: {0}")]
    Lost(String),
    /// A finite source has no more frames.
    #[error("end of source")]
    End,
}

/// What a source knows about a frame besides its pixels.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameMeta {
    /// Index in the source (driver sequence, file frame, sweep index).
    pub index: u64,
}

/// A frame source. `open` may be called again after `Lost`.
pub trait Source: Send {
    /// Human-readable description for logs.
    fn describe(&self) -> String;
    /// Opens (or reopens) the source.
    fn open(&mut self) -> Result<(), SourceError>;
    /// Fills `out` with the next frame, waiting for it as long as the source's rate needs.
    fn read(&mut self, out: &mut GreyFrame) -> Result<FrameMeta, SourceError>;
    /// Releases the device or files (after `Lost`, or at shutdown).
    fn close(&mut self);
    /// True when every frame must be processed (replay at fps 0): the capture thread then
    /// waits for the pipeline instead of replacing unprocessed frames.
    fn lockstep(&self) -> bool {
        false
    }
}

/// Exponential backoff for reopening: initial, doubled per failure, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Capture-side counters, shared with the pipeline's status.
#[derive(Debug, Default)]
pub struct CaptureCounters {
    pub captured: AtomicU64,
    pub corrupt: AtomicU64,
    pub lost: AtomicU64,
    pub reopens: AtomicU64,
    pub open_failures: AtomicU64,
    /// 1 while the source is open and delivering.
    pub up: AtomicBool,
    /// Set when a finite source ended.
    pub ended: AtomicBool,
}

/// Sleeps up to `d`, waking early when `stop` is set.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// The capture loop: runs until `stop` or the end of a finite source, then closes the slot.
pub fn capture_loop(
    mut source: Box<dyn Source>,
    slot: Arc<Slot>,
    counters: Arc<CaptureCounters>,
    stop: Arc<AtomicBool>,
    mut backoff: Backoff,
) {
    let lockstep = source.lockstep();
    let mut open = false;
    let mut frame = slot.spare();
    let desc = source.describe();
    while !stop.load(Ordering::Relaxed) {
        if !open {
            match source.open() {
                Ok(()) => {
                    open = true;
                    backoff.reset();
                    counters.up.store(true, Ordering::Relaxed);
                    log::info!("source open: {desc}");
                }
                Err(SourceError::End) => break,
                Err(e) => {
                    counters.open_failures.fetch_add(1, Ordering::Relaxed);
                    let d = backoff.next_delay();
                    log::warn!("{desc}: {e}; retrying in {} ms", d.as_millis());
                    sleep_unless(&stop, d);
                    continue;
                }
            }
        }
        let span = crate::stats::Span::start();
        match source.read(&mut frame.grey) {
            Ok(meta) => {
                frame.meta = meta;
                frame.captured_at = Instant::now();
                (frame.capture_time, frame.capture_cpu) = span.elapsed();
                counters.captured.fetch_add(1, Ordering::Relaxed);
                frame = if lockstep {
                    match slot.put_wait(frame, &stop) {
                        Some(f) => f,
                        None => break,
                    }
                } else {
                    slot.put(frame)
                };
            }
            Err(SourceError::Corrupt(why)) => {
                let n = counters.corrupt.fetch_add(1, Ordering::Relaxed) + 1;
                // Loud for the first few, then every hundredth: a bad cable must not flood
                // the log.
                if n <= 5 || n.is_multiple_of(100) {
                    log::warn!("{desc}: corrupt frame skipped ({n} so far): {why}");
                }
            }
            Err(SourceError::Lost(why)) => {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                counters.up.store(false, Ordering::Relaxed);
                log::error!("{desc}: lost ({why}); reopening with backoff");
                source.close();
                open = false;
                counters.reopens.fetch_add(1, Ordering::Relaxed);
                sleep_unless(&stop, backoff.next_delay());
            }
            Err(SourceError::End) => {
                log::info!("{desc}: end of frames");
                counters.ended.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    counters.up.store(false, Ordering::Relaxed);
    source.close();
    slot.close();
}

/// Paces a source at `fps` against a fixed schedule (no drift); `fps <= 0` does not wait.
#[derive(Debug, Clone)]
pub struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(fps: f32) -> Self {
        let period = (fps.is_finite() && fps > 0.0).then(|| Duration::from_secs_f32(1.0 / fps));
        Self { period, next: None }
    }

    /// Waits until the next frame is due.
    pub fn wait(&mut self) {
        let Some(p) = self.period else { return };
        let now = Instant::now();
        let due = self.next.unwrap_or(now);
        if due > now {
            std::thread::sleep(due - now);
        }
        // After a long stall, do not burst to catch up.
        let base = if now > due + p { now } else { due };
        self.next = Some(base + p);
    }

    /// Forget the schedule (after a reopen).
    pub fn reset(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    /// Gives `ok` frames, then fails `lost` times at reopen after a `Lost`, then gives
    /// frames again until `total`.
    struct Flaky {
        served: u64,
        fail_at: u64,
        reopen_failures_left: u32,
        total: u64,
        opens: u32,
    }

    impl Source for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn open(&mut self) -> Result<(), SourceError> {
            self.opens += 1;
            if self.opens > 1 && self.reopen_failures_left > 0 {
                self.reopen_failures_left -= 1;
                return Err(SourceError::Lost("still unplugged".into()));
            }
            Ok(())
        }
        fn read(&mut self, out: &mut GreyFrame) -> Result<FrameMeta, SourceError> {
            if self.served == self.total {
                return Err(SourceError::End);
            }
            if self.served == self.fail_at {
                self.fail_at = u64::MAX;
                return Err(SourceError::Lost("unplugged".into()));
            }
            if self.served == 3 {
                self.served += 1;
                return Err(SourceError::Corrupt("bad buffer".into()));
            }
            *out = GreyFrame::from_grey(2, 2, vec![self.served as u8; 4])
                .map_err(|e| SourceError::Corrupt(e.to_string()))?;
            self.served += 1;
            Ok(FrameMeta { index: self.served })
        }
        fn close(&mut self) {}
        fn lockstep(&self) -> bool {
            true
        }
    }

    #[test]
    fn lost_source_is_reopened_and_frames_resume() {
        let slot = Arc::new(Slot::new());
        let counters = Arc::new(CaptureCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let src = Flaky {
            served: 0,
            fail_at: 5,
            reopen_failures_left: 2,
            total: 10,
            opens: 0,
        };
        let (s, c, st) = (slot.clone(), counters.clone(), stop.clone());
        let t = std::thread::spawn(move || {
            capture_loop(
                Box::new(src),
                s,
                c,
                st,
                Backoff::new(Duration::from_millis(1), Duration::from_millis(4)),
            )
        });
        let mut got = Vec::new();
        while let Some(f) = slot.take(Duration::from_secs(5)) {
            got.push(f.meta.index);
            slot.recycle(f);
        }
        t.join().unwrap();
        // Frame 4 was corrupt (skipped); the source was lost after 5, reopened after two
        // failed attempts, and delivered the rest.
        assert_eq!(got, [1, 2, 3, 5, 6, 7, 8, 9, 10]);
        assert_eq!(counters.corrupt.load(Ordering::Relaxed), 1);
        assert_eq!(counters.lost.load(Ordering::Relaxed), 1);
        assert_eq!(counters.open_failures.load(Ordering::Relaxed), 2);
        assert!(counters.ended.load(Ordering::Relaxed));
    }
}
