//! `renalscan-edge bench-view`: what the operator view costs screening. Runs the same
//! as-fast-as-possible phantom sweep without the view and with it and N viewers, alternating
//! (A B A B ...) so machine noise falls on both, and reports the inference rate, RSS and
//! what the viewers received. Viewers are socket clients in this process (the cost of
//! serving pages, which on a ward are tablets elsewhere), or real browser pages
//! (`--browser`), which also report the decision-to-screen latency they measure.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

use crate::cli::{bench_config, open_model, ModelArgs, SourceArgs};
use crate::runtime::{self, RunOptions};
use crate::sink::build;

#[derive(Args)]
pub struct BenchViewArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Frames per run.
    #[arg(long, default_value_t = 300, value_parser = argrange::u64_in(1, 1_000_000_000))]
    pub frames: u64,
    /// Pages watching during the runs with the view.
    #[arg(long, default_value_t = 2, value_parser = argrange::usize_in(0, 16))]
    pub viewers: usize,
    /// Preview rate cap.
    #[arg(long, default_value_t = 15.0, value_parser = argrange::f32_in(0.5, 30.0))]
    pub preview_fps: f32,
    /// Pairs of runs (without, with).
    #[arg(long, default_value_t = 2, value_parser = argrange::usize_in(1, 1000))]
    pub rounds: usize,
    /// Use real pages: this browser binary (chromium), headless, one process per viewer.
    #[arg(long)]
    pub browser: Option<PathBuf>,
}

/// What socket clients saw.
#[derive(Default)]
struct Seen {
    frames: AtomicU64,
    bytes: AtomicU64,
    decisions: AtomicU64,
    /// Decision events: receive time minus the decision's time, ms.
    latency: Mutex<Vec<f64>>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn client(addr: String, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ws = loop {
        let req = match format!("ws://{addr}/ws").into_client_request() {
            Ok(mut r) => {
                if let Ok(o) = format!("http://{addr}").parse() {
                    r.headers_mut().insert("Origin", o);
                }
                r
            }
            Err(_) => return,
        };
        match std::net::TcpStream::connect(&addr)
            .map_err(tungstenite::Error::Io)
            .and_then(|s| {
                tungstenite::client(req, s).map_err(|e| match e {
                    tungstenite::HandshakeError::Failure(e) => e,
                    tungstenite::HandshakeError::Interrupted(_) => {
                        tungstenite::Error::ConnectionClosed
                    }
                })
            }) {
            Ok((ws, _)) => break ws,
            Err(_) if Instant::now() < deadline && !stop.load(Ordering::Relaxed) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(_) => return,
        }
    };
    let _ = ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)));
    let _ = ws.send(Message::text(r#"{"type":"resume","since":0}"#));
    while !stop.load(Ordering::Relaxed) {
        match ws.read() {
            Ok(Message::Binary(b)) => {
                seen.frames.fetch_add(1, Ordering::Relaxed);
                seen.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                if v["type"] == "event" && v["event"]["kind"] == "decision" {
                    seen.decisions.fetch_add(1, Ordering::Relaxed);
                    if let Some(ms) = v["event"]["unix_ms"].as_u64() {
                        let now = crate::events::unix_ms();
                        if let Ok(mut l) = seen.latency.lock() {
                            l.push(now.saturating_sub(ms) as f64);
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) if operator_view::is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

/// Browser pages, killed when dropped.
struct Pages(Vec<Child>, Vec<tempfile::TempDir>);

impl Drop for Pages {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct RunResult {
    infer_rate: f64,
    inferred: u64,
    wall_s: f64,
    rss_max_kib: u64,
    view: Option<serde_json::Value>,
    frames_received: u64,
    bytes_received: u64,
    decisions_received: u64,
    latency: Vec<f64>,
}

fn one_run(a: &BenchViewArgs, with_view: bool) -> anyhow::Result<RunResult> {
    let mut cfg = bench_config(&a.model, &a.source, a.frames)?;
    cfg.output.status_every_s = 0.5;
    cfg.journal.enabled = false;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    if with_view {
        cfg.ui.enabled = true;
        cfg.ui.listen = addr.parse()?;
        cfg.ui.preview_fps = a.preview_fps;
        cfg.ui.max_viewers = a.viewers.max(1);
    }
    cfg.validate()?;
    let classifier = open_model(&cfg)?;
    let outputs = build::from_config(&cfg, &classifier, false)?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let mut clients = Vec::new();
    let mut pages = Pages(Vec::new(), Vec::new());
    if with_view {
        for i in 0..a.viewers {
            match &a.browser {
                Some(b) => {
                    let dir = tempfile::Builder::new()
                        .prefix(&format!("renalscan-bench-view-{i}-"))
                        .tempdir()
                        .context("creating a browser profile directory")?;
                    pages.0.push(
                        Command::new(b)
                            .args([
                                "--headless=new",
                                "--no-sandbox",
                                "--disable-gpu",
                                "--window-size=1280,800",
                            ])
                            .arg(format!("--user-data-dir={}", dir.path().display()))
                            .arg(format!("http://{addr}/"))
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .with_context(|| format!("cannot start {}", b.display()))?,
                    );
                    pages.1.push(dir);
                }
                None => {
                    let (addr, stop, seen) = (addr.clone(), stop.clone(), seen.clone());
                    clients.push(std::thread::spawn(move || client(addr, stop, seen)));
                }
            }
        }
        // Pages need a moment to connect before the clock starts: the sweep waits for them.
        std::thread::sleep(Duration::from_millis(if a.browser.is_some() {
            4000
        } else {
            300
        }));
    }
    let (tx, rx) = mpsc::channel();
    let opts = RunOptions {
        rss_every: 20,
        status_tx: Some(tx),
    };
    let term = Arc::new(AtomicBool::new(false));
    let s = runtime::run(&cfg, classifier, outputs, term, &opts)?;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    drop(pages);
    let last = rx.try_iter().last();
    let view = last.and_then(|r| r.reports.get("view").cloned());
    let latency = std::mem::take(&mut *seen.latency.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(RunResult {
        infer_rate: s.counters.inferred as f64 / s.wall.as_secs_f64().max(1e-9),
        inferred: s.counters.inferred,
        wall_s: s.wall.as_secs_f64(),
        rss_max_kib: s.rss.iter().map(|r| r.1).max().unwrap_or(0),
        view,
        frames_received: seen.frames.load(Ordering::Relaxed),
        bytes_received: seen.bytes.load(Ordering::Relaxed),
        decisions_received: seen.decisions.load(Ordering::Relaxed),
        latency,
    })
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

pub fn cmd(a: BenchViewArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(a.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(
        (1..=16).contains(&a.viewers),
        "--viewers must be 1..=16 (ui.max_viewers)"
    );
    let mut without = Vec::new();
    let mut with = Vec::new();
    for r in 0..a.rounds {
        log::info!("round {}/{}: without the view", r + 1, a.rounds);
        without.push(one_run(&a, false)?);
        log::info!(
            "round {}/{}: with the view and {} viewers",
            r + 1,
            a.rounds,
            a.viewers
        );
        with.push(one_run(&a, true)?);
    }
    let rate = |v: &[RunResult]| {
        v.iter().map(|r| r.inferred as f64).sum::<f64>() / v.iter().map(|r| r.wall_s).sum::<f64>()
    };
    let (r0, r1) = (rate(&without), rate(&with));
    let rss0 = without.iter().map(|r| r.rss_max_kib).max().unwrap_or(0);
    let rss1 = with.iter().map(|r| r.rss_max_kib).max().unwrap_or(0);
    let mut lat: Vec<f64> = with.iter().flat_map(|r| r.latency.clone()).collect();
    let wall1: f64 = with.iter().map(|r| r.wall_s).sum();
    let frames1: u64 = with.iter().map(|r| r.frames_received).sum();
    let report = serde_json::json!({
        "cpu": cpu_name(),
        "frames_per_run": a.frames,
        "rounds": a.rounds,
        "viewers": a.viewers,
        "viewer_kind": if a.browser.is_some() { "browser pages" } else { "socket clients" },
        "preview_fps_cap": a.preview_fps,
        "inference_per_s": {
            "without_view": r0,
            "with_view": r1,
            "drop_pct": 100.0 * (r0 - r1) / r0.max(1e-9),
            "runs_without": without.iter().map(|r| r.infer_rate).collect::<Vec<_>>(),
            "runs_with": with.iter().map(|r| r.infer_rate).collect::<Vec<_>>(),
        },
        "rss_max_mib": {
            "without_view": rss0 as f64 / 1024.0,
            "with_view": rss1 as f64 / 1024.0,
            "growth": (rss1 as f64 - rss0 as f64) / 1024.0,
        },
        "socket_clients": if a.browser.is_none() { serde_json::json!({
            "preview_fps_per_viewer": frames1 as f64 / wall1.max(1e-9) / a.viewers as f64,
            "kib_per_frame": with.iter().map(|r| r.bytes_received).sum::<u64>() as f64 / 1024.0 / frames1.max(1) as f64,
            "decisions_received": with.iter().map(|r| r.decisions_received).sum::<u64>(),
            "decision_latency_ms": { "n": lat.len(), "p50": quantile(&mut lat, 0.5), "p95": quantile(&mut lat, 0.95), "max": quantile(&mut lat, 1.0) },
        }) } else { serde_json::Value::Null },
        "view_reports": with.iter().map(|r| r.view.clone()).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(std::process::ExitCode::SUCCESS)
}

/// The CPU model, for the record (timings differ between machines).
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
