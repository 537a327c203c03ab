//! Bounded latest-frame hand-over between the capture thread and the pipeline.
//!
//! Holds at most one waiting frame: a new frame replaces an unprocessed one (counted as
//! dropped), so capture never blocks and the pipeline always gets the freshest image.
//! Frame buffers circulate through a small pool, so steady state allocates nothing.
//!
//! With several inference workers the consumer can ask for a *fresh* frame
//! ([`Slot::take_fresh`]): a worker freed between two frames then waits for the next one
//! instead of starting on one that has already aged most of a frame interval. That keeps
//! frame-to-decision latency down where a second core would otherwise add to it.

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
    /// Frames come in lockstep with the consumer (`put_wait`): never left waiting.
    lockstep: bool,
    /// When the last frame was published, and the smoothed interval between frames.
    last_put: Option<Instant>,
    interval: Option<Duration>,
}

impl Inner {
    /// Notes a live frame's arrival: the interval is a running mean (weight 1/8) of the gaps
    /// between frames, gaps over a second (a stalled or reopened source) left out.
    fn arrived(&mut self, at: Instant) {
        if let Some(prev) = self.last_put.replace(at) {
            let gap = at.saturating_duration_since(prev);
            if gap <= Duration::from_secs(1) {
                self.interval = Some(match self.interval {
                    Some(iv) => (iv * 7 + gap) / 8,
                    None => gap,
                });
            }
        }
    }

    /// When the waiting frame stops being worth leaving for the next one: `None` if it is
    /// fresh enough to take now. Fresh: younger than 60% of a frame interval. A stale frame
    /// is taken anyway once the next frame is overdue (half an interval late), so a source
    /// that slows down or stops never starves the pipeline.
    fn stale_until(&self, now: Instant) -> Option<Instant> {
        let f = self.latest.as_ref()?;
        let iv = self.interval.filter(|_| !self.lockstep && !self.closed)?;
        let age = now.saturating_duration_since(f.captured_at);
        let overdue = f.captured_at + iv + iv / 2;
        (age > iv * 3 / 5 && now < overdue).then_some(overdue)
    }
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
        g.arrived(frame.captured_at);
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
        g.lockstep = true;
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

    /// Takes the latest frame if it is fresh (younger than 60% of the interval between
    /// frames), waiting up to `timeout`; a stale one is left for the next frame to replace
    /// (counted as dropped), or taken once that frame is overdue. Lockstep frames, a closed
    /// slot and a source whose rate is not known yet are taken as [`Slot::take`] would.
    /// For a consumer with a free inference worker while another is busy: decisions keep
    /// coming from the busy one, so the free one can afford to wait for a fresh frame.
    pub fn take_fresh(&self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            let now = Instant::now();
            let stale_until = g.stale_until(now);
            if stale_until.is_none() {
                if let Some(f) = g.latest.take() {
                    self.taken.notify_one();
                    return Some(f);
                }
            }
            if std::mem::take(&mut g.woken) || g.closed || now >= deadline {
                return None;
            }
            let until = stale_until.map_or(deadline, |t| t.min(deadline));
            g = self
                .ready
                .wait_timeout(g, until.saturating_duration_since(now))
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

    fn frame_at(i: u64, at: Instant) -> Frame {
        Frame {
            captured_at: at,
            ..frame(i)
        }
    }

    /// A slot that has seen frames 100 ms apart, the last captured `last_age` ago.
    fn paced(last_age: Duration) -> Slot {
        let slot = Slot::new();
        let last = Instant::now() - last_age;
        for k in (0..5u32).rev() {
            let _ = slot.put(frame_at(
                u64::from(5 - k),
                last - Duration::from_millis(100) * k,
            ));
        }
        slot
    }

    #[test]
    fn take_fresh_leaves_a_stale_frame_for_the_next_one() {
        let slot = paced(Duration::from_millis(75));
        assert_eq!(slot.dropped(), 4);
        // 75 ms old with 100 ms between frames: stale; the next is due in about 25 ms and
        // overdue at 150 ms, so a 5 ms wait ends without a frame.
        assert!(slot.take_fresh(Duration::from_millis(5)).is_none());
        let _ = slot.put(frame_at(6, Instant::now()));
        assert_eq!(slot.dropped(), 5, "the stale frame was replaced");
        let f = slot.take_fresh(Duration::from_millis(5)).unwrap();
        assert_eq!(f.meta.index, 6);
    }

    #[test]
    fn take_fresh_takes_a_fresh_frame_at_once_and_an_overdue_stale_one() {
        let slot = paced(Duration::from_millis(5));
        assert_eq!(slot.take_fresh(Duration::ZERO).unwrap().meta.index, 5);
        // The next frame is overdue (200 ms since the last, 150 allowed): take the old one.
        let slot = paced(Duration::from_millis(200));
        assert_eq!(slot.take_fresh(Duration::ZERO).unwrap().meta.index, 5);
        // Stale, and the source goes quiet: taken when the next would have been overdue.
        let slot = paced(Duration::from_millis(80));
        let t0 = Instant::now();
        let f = slot.take_fresh(Duration::from_secs(1)).unwrap();
        assert_eq!(f.meta.index, 5);
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_secs(1), "{waited:?}");
    }

    #[test]
    fn take_fresh_never_waits_on_lockstep_closed_or_unpaced_frames() {
        let stop = AtomicBool::new(false);
        let slot = Slot::new();
        let old = Instant::now() - Duration::from_millis(200);
        let _ = slot.put_wait(frame_at(1, old), &stop).unwrap();
        assert_eq!(slot.take_fresh(Duration::ZERO).unwrap().meta.index, 1);
        // One live frame: no interval known yet.
        let slot = Slot::new();
        let _ = slot.put(frame_at(1, old));
        assert_eq!(slot.take_fresh(Duration::ZERO).unwrap().meta.index, 1);
        // Closed with a stale frame waiting: the last frame is still processed.
        let slot = paced(Duration::from_millis(75));
        slot.close();
        assert_eq!(slot.take_fresh(Duration::ZERO).unwrap().meta.index, 5);
    }

    #[test]
    fn take_fresh_returns_when_woken() {
        let slot = paced(Duration::from_millis(75));
        slot.wake();
        let t0 = Instant::now();
        assert!(slot.take_fresh(Duration::from_secs(1)).is_none());
        assert!(t0.elapsed() < Duration::from_millis(500));
    }
}
