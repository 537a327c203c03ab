//! Bounded latest-frame hand-over between the capture thread and the pipeline.
//!
//! Holds at most one waiting frame: a new frame replaces an unprocessed one (counted as
//! dropped), so capture never blocks and the pipeline always gets the freshest image.
//! Frame buffers circulate through a small pool, so steady state allocates nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use usimage::GreyFrame;

use super::FrameMeta;

/// A captured frame and its timing.
#[derive(Debug, Clone)]
pub struct Frame {
    pub grey: GreyFrame,
    pub meta: FrameMeta,
    /// When capture finished (start of the frame's latency).
    pub captured_at: Instant,
    /// Time spent acquiring and decoding it.
    pub capture_time: Duration,
    /// Capture thread CPU time spent on it.
    pub capture_cpu: Duration,
}

impl Default for Frame {
    fn default() -> Self {
        Self {
            grey: GreyFrame::default(),
            meta: FrameMeta::default(),
            captured_at: Instant::now(),
            capture_time: Duration::ZERO,
            capture_cpu: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct Inner {
    latest: Option<Frame>,
    spare: Vec<Frame>,
    closed: bool,
    /// Someone else (an inference worker) has news for the consumer: `take` returns.
    woken: bool,
}

/// The hand-over slot.
#[derive(Default)]
pub struct Slot {
    inner: Mutex<Inner>,
    ready: Condvar,
    taken: Condvar,
    dropped: AtomicU64,
}

/// Frame buffers kept for reuse: one being captured, one waiting, and those in the pipeline
/// (one per inference worker, up to 8 workers; beyond that, buffers are allocated).
const POOL: usize = 10;

impl Slot {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the data inconsistent (plain moves).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer for the capture side to fill.
    pub fn spare(&self) -> Frame {
        self.lock().spare.pop().unwrap_or_default()
    }

    /// Publishes a frame, replacing (and counting) an unprocessed one; returns a buffer to
    /// fill next. Never waits for the consumer.
    pub fn put(&self, frame: Frame) -> Frame {
        let mut g = self.lock();
        let old = g.latest.replace(frame);
        self.ready.notify_one();
        match old {
            Some(old) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                old
            }
            None => g.spare.pop().unwrap_or_default(),
        }
    }

    /// Publishes a frame once the previous one was taken (lockstep replay); `None` when
    /// `stop` was set or the slot closed meanwhile.
    pub fn put_wait(&self, frame: Frame, stop: &AtomicBool) -> Option<Frame> {
        let mut g = self.lock();
        while g.latest.is_some() && !g.closed {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            g = self
                .taken
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if g.closed {
            return None;
        }
        g.latest = Some(frame);
        self.ready.notify_one();
        Some(g.spare.pop().unwrap_or_default())
    }

    /// Takes the latest frame, waiting up to `timeout`. `None` on timeout or when the slot
    /// is closed and empty.
    pub fn take(&self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if let Some(f) = g.latest.take() {
                self.taken.notify_one();
                return Some(f);
            }
            let now = Instant::now();
            if std::mem::take(&mut g.woken) || g.closed || now >= deadline {
                return None;
            }
            g = self
                .ready
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Ends a [`Slot::take`] that is waiting (or the next one) without a frame: an inference
    /// worker finished, and the consumer has decisions to deliver.
    pub fn wake(&self) {
        self.lock().woken = true;
        self.ready.notify_all();
    }

    /// Returns a processed frame's buffers to the pool.
    pub fn recycle(&self, frame: Frame) {
        let mut g = self.lock();
        if g.spare.len() < POOL {
            g.spare.push(frame);
        }
    }

    /// No more frames will come (the source ended or capture stopped).
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.taken.notify_all();
    }

    /// True once closed and drained.
    pub fn is_finished(&self) -> bool {
        let g = self.lock();
        g.closed && g.latest.is_none()
    }

    /// Frames replaced before the pipeline took them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: u64) -> Frame {
        Frame {
            meta: FrameMeta { index: i },
            ..Frame::default()
        }
    }

    #[test]
    fn keeps_only_the_latest_and_counts_drops() {
        let slot = Slot::new();
        let _ = slot.put(frame(1));
        let _ = slot.put(frame(2));
        let _ = slot.put(frame(3));
        assert_eq!(slot.dropped(), 2);
        let f = slot.take(Duration::from_millis(1)).unwrap();
        assert_eq!(f.meta.index, 3);
        assert!(slot.take(Duration::from_millis(1)).is_none());
        slot.close();
        assert!(slot.is_finished());
    }

    #[test]
    fn put_never_blocks_and_put_wait_waits_for_the_consumer() {
        let slot = std::sync::Arc::new(Slot::new());
        let stop = AtomicBool::new(false);
        let _ = slot.put_wait(frame(1), &stop).unwrap();
        let s = slot.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s.take(Duration::from_secs(1)).map(|f| f.meta.index)
        });
        let t0 = Instant::now();
        let _ = slot.put_wait(frame(2), &stop).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(40));
        assert_eq!(t.join().unwrap(), Some(1));
        assert_eq!(slot.dropped(), 0);
    }
}
