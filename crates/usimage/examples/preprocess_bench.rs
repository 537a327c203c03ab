//! Budget check for the per-frame device path (issue 3):
//! 1024x768 frame -> 224x224 model input, median ms on one core, and allocation / RSS
//! stability over 10,000 frames (a counting global allocator).
//!
//! `cargo run --release -p usimage --example preprocess_bench [-- FRAMES]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use usimage::synthetic::{screen, FanShape};
use usimage::{Normalization, Preprocessor};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// A counting allocator is a GlobalAlloc, whose methods are unsafe by definition.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarding the caller's layout to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// CPU time this thread has run, in ns (`/proc/thread-self/schedstat`), so that timings are
/// not inflated by other processes on a busy machine. Reads into a stack buffer.
fn cpu_ns() -> u64 {
    use std::io::Read;
    let mut buf = [0u8; 96];
    let n = std::fs::File::open("/proc/thread-self/schedstat")
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    let frames: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let (w, h) = (1024, 768);
    // Three different screens (sector, linear, empty) so the detector's work varies.
    let inputs = [
        screen(
            w,
            h,
            FanShape::Sector {
                apex_x: 512.0,
                apex_y: -30.0,
                half_angle: 0.7,
                r0: 90.0,
                r1: 760.0,
            },
            1,
            &mut Vec::new(),
        ),
        screen(
            w,
            h,
            FanShape::Linear([300, 60, 760, 740]),
            2,
            &mut Vec::new(),
        ),
        screen(w, h, FanShape::Linear([0, 0, 0, 0]), 3, &mut Vec::new()),
    ];
    let mut pre = Preprocessor::new(224, Normalization::caffe_bgr());
    let mut out = vec![0f32; pre.output_len()];
    // Warm-up: buffers reach their largest size.
    for f in &inputs {
        pre.process(f, &mut out).expect("output size");
    }
    // Timing: the sector frame, 300 runs.
    let runs = 300;
    let c0 = cpu_ns();
    let mut wall: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            pre.process(&inputs[0], &mut out).expect("output size");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let cpu_mean = (cpu_ns() - c0) as f64 / 1e6 / runs as f64;
    wall.sort_by(f64::total_cmp);
    let q = |p: usize| wall[wall.len() * p / 100];
    println!(
        "1024x768 -> 3x224x224 (one thread, {runs} runs): wall median {:.2} ms (p10 {:.2}, p90 {:.2}); \
         mean thread CPU time {cpu_mean:.2} ms",
        q(50),
        q(10),
        q(90)
    );
    // Stability: allocations and RSS over many frames.
    let r0 = rss_kib(); // reading /proc allocates: before the counters are sampled
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let t = Instant::now();
    for i in 0..frames {
        pre.process(&inputs[i % 3], &mut out).expect("output size");
    }
    let secs = t.elapsed().as_secs_f64();
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let r1 = rss_kib();
    println!(
        "{frames} frames in {secs:.1} s: {} allocations ({} bytes) during the loop; RSS {r0} KiB -> {r1} KiB",
        a1 - a0,
        b1 - b0
    );
}
