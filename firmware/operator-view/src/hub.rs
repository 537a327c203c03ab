//! The hand-over between the runtime and the view's threads: the latest frame (latest wins),
//! events in order, the health record, controls back to the runtime, and counters.
//!
//! The runtime only ever locks briefly to drop a value in; the encoder thread masks, scales
//! and encodes each frame once; every viewer's thread sends the same bytes.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;
use serde::Serialize;
use serde_json::json;

use crate::protocol::{frame_message, Control, Preview, ViewEvent};

/// Controls waiting for the runtime, at most (a stuck runtime must not grow memory).
const MAX_CONTROLS: usize = 64;
/// Thumbnail side in the timeline.
const THUMB: u32 = 112;
/// Preview pixels per cell of the scan-area grid sent with each frame.
const MASK_CELL: u32 = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Work {
    frame: Option<Preview>,
    events: VecDeque<ViewEvent>,
}

/// What the viewers' threads send.
#[derive(Default)]
pub(crate) struct Out {
    /// Bumped on every change (viewers wait for it).
    pub version: u64,
    /// The latest encoded frame message and its number.
    pub frame: Option<(u64, Arc<Vec<u8>>)>,
    /// Numbered event messages, oldest first.
    pub events: VecDeque<(u64, Arc<str>)>,
    pub next_event: u64,
    /// The latest health message and its number.
    pub health: Option<(u64, Arc<str>)>,
}

/// The view's counters, for the status and the bench.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Frames the runtime published.
    pub published: u64,
    /// Frames encoded (each once, for every viewer).
    pub encoded: u64,
    /// Frames replaced by a newer one before they were encoded (latest wins).
    pub superseded: u64,
    /// Frame messages sent, all viewers together.
    pub frames_sent: u64,
    /// Viewers connected now.
    pub viewers: usize,
    /// Connections refused (too many viewers, bad origin, bad session, bad request).
    pub refused: u64,
    /// Mean encode time per frame, ms.
    pub encode_ms: f64,
    /// Decision-to-screen latency the pages measured: count, median and p95, ms.
    pub latency_n: usize,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    /// Controls received from operators.
    pub controls: u64,
}

pub(crate) struct Hub {
    pub max_side: u32,
    pub quality: u8,
    pub history: usize,
    work: Mutex<Work>,
    work_cv: Condvar,
    pub out: Mutex<Out>,
    pub out_cv: Condvar,
    controls: Mutex<VecDeque<Control>>,
    pub stop: AtomicBool,
    pub viewers: AtomicUsize,
    pub published: AtomicU64,
    pub encoded: AtomicU64,
    pub superseded: AtomicU64,
    pub frames_sent: AtomicU64,
    pub refused: AtomicU64,
    pub controls_in: AtomicU64,
    encode_us: AtomicU64,
    latency: Mutex<VecDeque<f64>>,
}

impl Hub {
    pub fn new(max_side: u32, quality: u8, history: usize) -> Self {
        Self {
            max_side,
            quality,
            history,
            work: Mutex::default(),
            work_cv: Condvar::new(),
            out: Mutex::default(),
            out_cv: Condvar::new(),
            controls: Mutex::default(),
            stop: AtomicBool::new(false),
            viewers: AtomicUsize::new(0),
            published: AtomicU64::new(0),
            encoded: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            controls_in: AtomicU64::new(0),
            encode_us: AtomicU64::new(0),
            latency: Mutex::default(),
        }
    }

    /// Runtime side: a new frame replaces any not yet encoded.
    pub fn publish(&self, p: Preview) {
        self.published.fetch_add(1, Ordering::Relaxed);
        let mut w = lock(&self.work);
        if w.frame.replace(p).is_some() {
            self.superseded.fetch_add(1, Ordering::Relaxed);
        }
        drop(w);
        self.work_cv.notify_one();
    }

    /// Runtime side: an event, kept in order.
    pub fn event(&self, e: ViewEvent) {
        let mut w = lock(&self.work);
        if w.events.len() >= self.history {
            w.events.pop_front();
        }
        w.events.push_back(e);
        drop(w);
        self.work_cv.notify_one();
    }

    /// Runtime side: the health record (small JSON: encoded here, on the caller's thread).
    pub fn health(&self, v: serde_json::Value) {
        let msg: Arc<str> = json!({"type": "health", "health": v}).to_string().into();
        let mut o = lock(&self.out);
        let n = o.health.as_ref().map_or(1, |h| h.0 + 1);
        o.health = Some((n, msg));
        o.version += 1;
        drop(o);
        self.out_cv.notify_all();
    }

    /// Viewer side: an operator's control for the runtime. Refused when the runtime has not
    /// taken the last [`MAX_CONTROLS`].
    pub fn control(&self, c: Control) -> bool {
        let mut q = lock(&self.controls);
        if q.len() >= MAX_CONTROLS {
            return false;
        }
        q.push_back(c);
        self.controls_in.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Runtime side: the next control.
    pub fn take_control(&self) -> Option<Control> {
        lock(&self.controls).pop_front()
    }

    /// A latency the page measured.
    pub fn latency(&self, ms: f64) {
        if !(0.0..60_000.0).contains(&ms) {
            return;
        }
        let mut l = lock(&self.latency);
        if l.len() >= 1024 {
            l.pop_front();
        }
        l.push_back(ms);
    }

    pub fn stats(&self) -> Stats {
        let encoded = self.encoded.load(Ordering::Relaxed);
        let mut lat: Vec<f64> = lock(&self.latency).iter().copied().collect();
        lat.sort_by(f64::total_cmp);
        let q = |p: f64| {
            if lat.is_empty() {
                0.0
            } else {
                lat[((lat.len() - 1) as f64 * p).round() as usize]
            }
        };
        Stats {
            published: self.published.load(Ordering::Relaxed),
            encoded,
            superseded: self.superseded.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            viewers: self.viewers.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            encode_ms: self.encode_us.load(Ordering::Relaxed) as f64
                / 1000.0
                / encoded.max(1) as f64,
            latency_n: lat.len(),
            latency_p50_ms: q(0.5),
            latency_p95_ms: q(0.95),
            controls: self.controls_in.load(Ordering::Relaxed),
        }
    }

    /// Wakes every thread that waits (shutdown).
    pub fn wake_all(&self) {
        self.work_cv.notify_all();
        self.out_cv.notify_all();
    }

    /// The encoder thread: encodes each frame and event once, until `stop`.
    pub fn encode_loop(&self) {
        loop {
            let (frame, events) = {
                let mut w = lock(&self.work);
                while w.frame.is_none() && w.events.is_empty() {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    w = self
                        .work_cv
                        .wait_timeout(w, Duration::from_millis(200))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
                (w.frame.take(), std::mem::take(&mut w.events))
            };
            let events: Vec<Arc<str>> = events.into_iter().map(|e| self.event_json(e)).collect();
            let msg = frame.map(|f| {
                let t = std::time::Instant::now();
                let m = self.frame_bytes(f);
                self.encode_us
                    .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                self.encoded.fetch_add(1, Ordering::Relaxed);
                m
            });
            let mut o = lock(&self.out);
            for e in events {
                let id = o.next_event + 1;
                o.next_event = id;
                let msg: Arc<str> = format!(r#"{{"type":"event","id":{id},"event":{e}}}"#).into();
                if o.events.len() >= self.history {
                    o.events.pop_front();
                }
                o.events.push_back((id, msg));
            }
            if let Some(m) = msg {
                let n = o.frame.as_ref().map_or(1, |f| f.0 + 1);
                o.frame = Some((n, Arc::new(m)));
            }
            o.version += 1;
            drop(o);
            self.out_cv.notify_all();
        }
    }

    /// Masks, scales and encodes a preview into its message.
    fn frame_bytes(&self, mut p: Preview) -> Vec<u8> {
        let mut header = std::mem::take(&mut p.header);
        let (w, h) = (p.width, p.height);
        if w == 0 || h == 0 || p.pixels.len() != w as usize * h as usize {
            header.width = 0;
            header.height = 0;
            return frame_message(&header, &[]);
        }
        let scale = (self.max_side as f32 / w.max(h) as f32).min(1.0);
        let (ow, oh) = (
            ((w as f32 * scale).round() as u32).max(1),
            ((h as f32 * scale).round() as u32).max(1),
        );
        let px = masked_scaled(&p, ow, oh);
        if p.mask.is_some() {
            let (mw, mh) = (ow.div_ceil(MASK_CELL), oh.div_ceil(MASK_CELL));
            header.mask = Some(coarse_mask(&p, mw, mh));
            header.mask_w = mw;
            header.mask_h = mh;
        }
        let mut jpeg = Vec::with_capacity(px.len() / 8);
        match JpegEncoder::new_with_quality(&mut Cursor::new(&mut jpeg), self.quality).encode(
            &px,
            ow,
            oh,
            ExtendedColorType::L8,
        ) {
            Ok(()) => {
                header.width = ow;
                header.height = oh;
            }
            Err(e) => {
                log::warn!("view: preview not encoded: {e}");
                jpeg.clear();
                header.width = 0;
                header.height = 0;
            }
        }
        frame_message(&header, &jpeg)
    }

    fn event_json(&self, e: ViewEvent) -> Arc<str> {
        let v = match e {
            ViewEvent::Decision { info, thumb, size } => {
                let mut v = serde_json::to_value(&info).unwrap_or_default();
                v["kind"] = json!("decision");
                v["decision_kind"] = json!(info.kind);
                v["thumb"] = json!(thumbnail(&thumb, size, self.quality));
                v
            }
            ViewEvent::Mark {
                journal_seq,
                agree,
                unix_ms,
            } => {
                json!({"kind": "mark", "journal_seq": journal_seq, "agree": agree, "unix_ms": unix_ms})
            }
            ViewEvent::Refused { action, reason } => {
                json!({"kind": "refused", "action": action, "reason": reason})
            }
            ViewEvent::Freeze { frozen, unix_ms } => {
                json!({"kind": "freeze", "frozen": frozen, "unix_ms": unix_ms})
            }
            ViewEvent::Session { session, unix_ms } => {
                json!({"kind": "session", "session": session, "unix_ms": unix_ms})
            }
        };
        v.to_string().into()
    }
}

/// The crop with everything outside the scan area black, box-filtered to `ow x oh`.
fn masked_scaled(p: &Preview, ow: u32, oh: u32) -> Vec<u8> {
    let (w, h) = (p.width as usize, p.height as usize);
    let (ow, oh) = (ow as usize, oh as usize);
    let mut out = vec![0u8; ow * oh];
    for oy in 0..oh {
        let (y0, y1) = (oy * h / oh, ((oy + 1) * h / oh).max(oy * h / oh + 1));
        for ox in 0..ow {
            let (x0, x1) = (ox * w / ow, ((ox + 1) * w / ow).max(ox * w / ow + 1));
            let (mut sum, mut n) = (0u32, 0u32);
            for y in y0..y1.min(h) {
                let row = &p.pixels[y * w..(y + 1) * w];
                for (x, &v) in row.iter().enumerate().take(x1.min(w)).skip(x0) {
                    let inside = p
                        .mask
                        .as_ref()
                        .is_none_or(|m| m.inside(p.origin[0] + x as u32, p.origin[1] + y as u32));
                    sum += if inside { u32::from(v) } else { 0 };
                    n += 1;
                }
            }
            out[oy * ow + ox] = (sum / n.max(1)) as u8;
        }
    }
    out
}

/// The scan area on an `mw x mh` grid over the crop, as packed bits in base64 (a cell is
/// inside when its centre is).
fn coarse_mask(p: &Preview, mw: u32, mh: u32) -> String {
    let mut bits = vec![0u8; (mw * mh).div_ceil(8) as usize];
    for gy in 0..mh {
        for gx in 0..mw {
            let x = ((gx as f32 + 0.5) * p.width as f32 / mw as f32) as u32;
            let y = ((gy as f32 + 0.5) * p.height as f32 / mh as f32) as u32;
            let inside = p
                .mask
                .as_ref()
                .is_none_or(|m| m.inside(p.origin[0] + x, p.origin[1] + y));
            if inside {
                let i = (gy * mw + gx) as usize;
                bits[i / 8] |= 0x80 >> (i % 8);
            }
        }
    }
    base64::engine::general_purpose::STANDARD.encode(bits)
}

/// A small JPEG data URL of the model input.
fn thumbnail(px: &[u8], size: u32, quality: u8) -> String {
    if size == 0 || px.len() != (size * size) as usize {
        return String::new();
    }
    let p = Preview {
        pixels: px.to_vec(),
        width: size,
        height: size,
        ..Default::default()
    };
    let t = THUMB.min(size);
    let small = masked_scaled(&p, t, t);
    let mut jpeg = Vec::new();
    if JpegEncoder::new_with_quality(&mut Cursor::new(&mut jpeg), quality)
        .encode(&small, t, t, ExtendedColorType::L8)
        .is_err()
    {
        return String::new();
    }
    format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&jpeg)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{parse_frame_message, DecisionInfo, FrameHeader};

    #[test]
    fn the_latest_frame_wins_and_is_encoded_once() {
        let hub = Arc::new(Hub::new(64, 80, 100));
        for i in 0..3 {
            hub.publish(Preview {
                pixels: vec![200; 128 * 96],
                width: 128,
                height: 96,
                header: FrameHeader {
                    frame: i,
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        hub.event(ViewEvent::Decision {
            info: DecisionInfo {
                seq: 1,
                ..Default::default()
            },
            thumb: vec![90; 224 * 224],
            size: 224,
        });
        let h = hub.clone();
        let t = std::thread::spawn(move || h.encode_loop());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while hub.stats().encoded == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        hub.stop.store(true, Ordering::Relaxed);
        hub.wake_all();
        t.join().unwrap();
        let s = hub.stats();
        assert_eq!((s.published, s.encoded, s.superseded), (3, 1, 2));
        let o = lock(&hub.out);
        let (hdr, jpeg) = parse_frame_message(&o.frame.as_ref().unwrap().1).unwrap();
        assert_eq!(hdr.frame, 2);
        // Scaled to the longest side of 64.
        assert_eq!((hdr.width, hdr.height), (64, 48));
        let img = image::load_from_memory(jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (64, 48));
        assert_eq!(o.events.len(), 1);
        let ev: serde_json::Value = serde_json::from_str(&o.events[0].1).unwrap();
        assert_eq!(ev["id"], 1);
        assert_eq!(ev["event"]["kind"], "decision");
        assert!(ev["event"]["thumb"]
            .as_str()
            .unwrap()
            .starts_with("data:image/jpeg;base64,"));
    }

    #[test]
    fn pixels_outside_the_scan_area_leave_black() {
        // A screen grab with burned-in text beside a sector.
        use usimage::synthetic::{screen, FanShape};
        let shape = FanShape::Sector {
            apex_x: 330.0,
            apex_y: -20.0,
            half_angle: 0.65,
            r0: 70.0,
            r1: 440.0,
        };
        let mut text = Vec::new();
        let grey = screen(640, 480, shape, 11, &mut text);
        let mut d = usimage::Detector::default();
        d.detect(&grey);
        let p = Preview {
            pixels: grey.grey().to_vec(),
            width: 640,
            height: 480,
            mask: Some(d.area_mask()),
            ..Default::default()
        };
        let out = masked_scaled(&p, 640, 480);
        assert!(!text.is_empty());
        let unmasked = |out: &[u8]| {
            text.iter()
                .flat_map(|t| (t[1]..t[3]).flat_map(move |y| (t[0]..t[2]).map(move |x| (x, y))))
                .filter(|&(x, y)| out[(y * 640 + x) as usize] > 0)
                .count()
        };
        assert!(unmasked(grey.grey()) > 0);
        assert_eq!(unmasked(&out), 0);
        // Inside the sector the pixels are kept.
        assert!(out.iter().filter(|&&v| v > 0).count() > 640 * 480 / 5);
        // The coarse mask sent for the overlay: the sector's centre in, the text out.
        let bits = base64::engine::general_purpose::STANDARD
            .decode(coarse_mask(&p, 160, 120))
            .unwrap();
        let at = |x: u32, y: u32| {
            bits[((y * 160 + x) / 8) as usize] & (0x80 >> ((y * 160 + x) % 8)) != 0
        };
        assert!(at(80, 60));
        let t = text[0];
        assert!(!at((t[0] + t[2]) / 8, (t[1] + t[3]) / 8), "text box {t:?}");
    }

    #[test]
    fn controls_are_bounded() {
        let hub = Hub::new(64, 80, 100);
        for _ in 0..MAX_CONTROLS {
            assert!(hub.control(Control::Capture));
        }
        assert!(!hub.control(Control::Capture));
        assert_eq!(hub.take_control(), Some(Control::Capture));
    }
}
