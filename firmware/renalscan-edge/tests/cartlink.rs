//! Issue 8 item 4: the runtime against a cart controller over a pseudo-terminal pair.
//! Start, results arrive once each and are acknowledged, a Capture, stop. Then the same
//! with a relay in between that flips, drops and inserts bytes in both directions. And an
//! exam opened and closed from the cart (protocol 2) with its entered context.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartlink::cart::{Controller, ControllerConfig, Event};
use cartlink::serial::serialport::TTYPort;
use cartlink::serial::{millis_since, port_name, pty_pair, read_some, service_controller};
use cartlink::{flags, Command, ExamContext, Side, State};
use common::*;

/// Deterministic byte corruption (the workspace's seeded generator), each fault at `ppm`
/// parts per million.
struct Noise {
    s: seeded::Rng,
    ppm: u64,
    hits: u64,
}

impl Noise {
    fn next(&mut self) -> u64 {
        self.s.u64()
    }
    fn chance(&mut self) -> bool {
        self.s.below(1_000_000) < self.ppm
    }
    fn apply(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.chance() {
                self.hits += 1;
                out.push(if self.next().is_multiple_of(4) {
                    0
                } else {
                    self.next() as u8
                });
            }
            if self.chance() {
                self.hits += 1;
                continue;
            }
            if self.chance() {
                self.hits += 1;
                out.push(b ^ (1 << (self.next() % 8)));
                continue;
            }
            out.push(b);
        }
    }
}

/// Copies bytes between two ports, corrupting both directions.
fn relay(
    mut a: TTYPort,
    mut b: TTYPort,
    ppm: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut na = Noise {
            s: seeded::Rng::new(0x1234_5678_9abc),
            ppm,
            hits: 0,
        };
        let mut nb = Noise {
            s: seeded::Rng::new(0x0fed_cba9_8765),
            ppm,
            hits: 0,
        };
        let mut buf = [0u8; 512];
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = read_some(&mut a, &mut buf) {
                out.clear();
                na.apply(&buf[..n], &mut out);
                let _ = b.write_all(&out);
            }
            if let Ok(n) = read_some(&mut b, &mut buf) {
                out.clear();
                nb.apply(&buf[..n], &mut out);
                let _ = a.write_all(&out);
            }
        }
        na.hits + nb.hits
    })
}

struct CartRun {
    results: Vec<cartlink::ResultMsg>,
    captures: usize,
    stopped_idle: bool,
    pending_at_end: u32,
    duplicates_shown: usize,
}

/// Drives the cart side: start, wait for `n` results, capture, stop, wait for idle.
fn drive_cart(port: &mut TTYPort, n: usize) -> CartRun {
    let start = Instant::now();
    let clock = || millis_since(start);
    let mut ctl = Controller::new(ControllerConfig::default(), 4242);
    ctl.send_command(Command::StartScreening).unwrap();
    let mut results = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut duplicates_shown = 0;
    let mut phase = 0;
    let mut stopped_idle = false;
    let mut pending_at_end = 0;
    let deadline = Duration::from_secs(90);
    while start.elapsed() < deadline {
        let mut events = Vec::new();
        service_controller(&mut ctl, port, clock, |e| events.push(e)).unwrap();
        for e in events {
            match e {
                Event::Result(r) => {
                    if !seen.insert((r.session, r.seq)) {
                        duplicates_shown += 1;
                    }
                    results.push(r);
                }
                Event::Status(s) => {
                    pending_at_end = s.results_pending as u32;
                    if phase == 3 && s.state == State::Idle && s.results_pending == 0 {
                        stopped_idle = true;
                    }
                }
                _ => {}
            }
        }
        match phase {
            0 if results.len() >= n => {
                ctl.send_command(Command::Capture).unwrap();
                phase = 1;
            }
            1 if results.iter().any(|r| r.flags & flags::CAPTURE != 0) => {
                ctl.send_command(Command::StopScreening).unwrap();
                phase = 2;
            }
            2 if ctl.commands_pending() == 0 => phase = 3,
            3 if stopped_idle => break,
            _ => {}
        }
    }
    let captures = results
        .iter()
        .filter(|r| r.flags & flags::CAPTURE != 0)
        .count();
    CartRun {
        results,
        captures,
        stopped_idle,
        pending_at_end,
        duplicates_shown,
    }
}

/// The runtime replaying `frames` in a loop at 20 fps, waiting for the cart on `port`.
fn spawn_with_cart(
    cfg: &std::path::Path,
    bundle: &std::path::Path,
    frames: &std::path::Path,
    port: &str,
    extra: &[&str],
) -> std::process::Child {
    let mut args = vec!["--fps", "20", "--loop", "--cart", port, "--wait-for-cart"];
    args.extend_from_slice(extra);
    spawn_edge(&run_args(cfg, bundle, frames, &args))
}

fn run_against_cart(noise_ppm: Option<u64>) {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false, false, true, true, true, false]);
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let cfg = tmp.path().join("edge.toml");
    std::fs::write(
        &cfg,
        "[aggregate]\nwindow = 2\nmin_frames = 1\nhysteresis = 0.05\nreport_every_s = 0.3\n\
         [cartlink]\nresend_after_ms = 150\n",
    )
    .unwrap();

    let (mut cart_port, cart_slave) = pty_pair().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (device_path, _keep, relay_thread) = match noise_ppm {
        None => (port_name(&cart_slave).unwrap(), vec![cart_slave], None),
        Some(ppm) => {
            let (dev_master, dev_slave) = pty_pair().unwrap();
            let path = port_name(&dev_slave).unwrap();
            let t = relay(cart_slave, dev_master, ppm, stop.clone());
            (path, vec![dev_slave], Some(t))
        }
    };
    let mut child = spawn_with_cart(&cfg, &bundle, &frames, &device_path, &["--no-journal"]);
    let run = drive_cart(&mut cart_port, 8);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = {
        let mut s = String::new();
        child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
        s
    };
    let status = child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let hits = relay_thread.map(|t| t.join().unwrap());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        run.results.len() >= 8,
        "{} results; {stderr}",
        run.results.len()
    );
    assert_eq!(run.captures, 1, "one capture asked, one answered");
    assert!(run.stopped_idle, "device did not confirm stop; {stderr}");
    assert_eq!(run.pending_at_end, 0);
    // The cart's window de-duplicates re-sent results; each (session, seq) shown once.
    let _ = run.duplicates_shown;
    // Every decision the runtime printed reached the cart (at least once).
    let lines = json_lines(&out);
    let printed = decisions(&lines);
    let seqs: std::collections::HashSet<u32> = run.results.iter().map(|r| r.seq).collect();
    assert!(
        printed.len() >= seqs.len(),
        "printed {} < delivered {}",
        printed.len(),
        seqs.len()
    );
    for i in 0..seqs.len() as u32 {
        assert!(
            seqs.contains(&i),
            "result {i} never reached the cart; {seqs:?}"
        );
    }
    // Classes on the wire match what was printed.
    for r in &run.results {
        let d = &printed[r.seq as usize];
        assert_eq!(r.class.label(), d["class"].as_str().unwrap(), "{d}");
        assert_eq!(r.flags & flags::ABNORMAL != 0, d["abnormal"] == true, "{d}");
    }
    if let Some(h) = hits {
        assert!(h > 0, "the relay corrupted nothing");
        eprintln!("relay corrupted {h} bytes");
    }
}

#[test]
fn cart_over_pty_start_results_acked_capture_stop() {
    run_against_cart(None);
}

#[test]
fn cart_over_corrupting_line() {
    run_against_cart(Some(3000));
}

/// The cart opens an exam with what its barcode scanner read, screens, and closes it: the
/// runtime journals the session, stamps its decisions with the id, shows the id (never the
/// patient's) on the cart, keeps the identifiers out of its log, and the export has them.
#[test]
fn cart_opens_and_closes_an_exam() {
    const PATIENT: &str = "MRN-CART-4471";
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false, false, true, true]);
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let cfg = tmp.path().join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[aggregate]\nwindow = 2\nmin_frames = 1\nreport_every_s = 0.3\n\
             [journal]\ndir = \"{}\"\n[session]\ndir = \"{}\"\n",
            tmp.path().join("journal").display(),
            tmp.path().join("sessions").display()
        ),
    )
    .unwrap();
    let (mut port, slave) = pty_pair().unwrap();
    let mut child = spawn_with_cart(&cfg, &bundle, &frames, &port_name(&slave).unwrap(), &[]);
    let start = Instant::now();
    let clock = || millis_since(start);
    let mut ctl = Controller::new(ControllerConfig::default(), 700);
    let context = ExamContext::new(PATIENT, "ACC-9", "rn-12", Some(Side::Left)).unwrap();
    ctl.send_command(Command::StartExam(context)).unwrap();
    ctl.send_command(Command::StartScreening).unwrap();
    let (mut exams, mut results, mut phase) = (Vec::new(), 0, 0);
    while start.elapsed() < Duration::from_secs(60) && phase < 3 {
        let mut events = Vec::new();
        service_controller(&mut ctl, &mut port, clock, |e| events.push(e)).unwrap();
        for e in events {
            match e {
                Event::Exam(x) => exams.push(x.open.map(|s| s.to_string())),
                Event::Result(_) => results += 1,
                Event::CommandUnsupported { .. } => panic!("device refused exam commands"),
                _ => {}
            }
        }
        match phase {
            0 if results >= 4 && exams.last().is_some_and(Option::is_some) => {
                ctl.send_command(Command::StopScreening).unwrap();
                ctl.send_command(Command::EndExam).unwrap();
                phase = 1;
            }
            1 if exams.last() == Some(&None) => phase = 3,
            _ => {}
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{log}");
    assert_eq!(phase, 3, "exam not opened and closed: {exams:?}\n{log}");
    // None at first (after Hello), then the exam, then none again.
    let opened: Vec<&String> = exams.iter().flatten().collect();
    assert_eq!(opened.len(), 1, "{exams:?}");
    let id = opened[0].clone();
    assert!(id.starts_with("s-"), "{id}");
    assert!(!log.contains(PATIENT), "patient id in the log");
    let stamped = decisions(&json_lines(&out))
        .iter()
        .filter(|d| d["session"] == id.as_str())
        .count();
    assert!(stamped >= 1, "no decision carries {id}");

    let sessions = run_edge(&[
        "sessions".into(),
        "--config".into(),
        cfg.display().to_string(),
        "--json".into(),
    ]);
    let listed = String::from_utf8_lossy(&sessions.stdout);
    let row = json_lines(&listed)
        .into_iter()
        .find(|v| v["session"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed: {listed}"));
    assert_eq!(row["state"], "ended", "{row}");
    let export = tmp.path().join("usb");
    let o = run_edge(&[
        "export".into(),
        "--config".into(),
        cfg.display().to_string(),
        "--session".into(),
        id.clone(),
        "--out".into(),
        export.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = std::fs::read_to_string(export.join(&id).join("session.json")).unwrap();
    assert!(json.contains(PATIENT) && json.contains("ACC-9"), "{json}");
    assert!(json.contains("left"), "{json}");
}
