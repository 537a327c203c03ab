//! The runtime binary on replayed frames with the tiny model: decisions follow the frames,
//! corrupt frames are skipped, freeze mode classifies a frozen image once, a replay medium
//! that disappears mid-run is reopened, SIGTERM shuts down cleanly, bad bundles refuse, and
//! systemd hears readiness, status, watchdog pings and the shutdown.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("edge.toml");
    std::fs::write(
        &p,
        format!(
            "[aggregate]\nwindow = 4\nmin_frames = 3\nhysteresis = 0.05\nreport_every_s = 0.0\n\
             [output]\nstatus_every_s = 0.2\n{extra}"
        ),
    )
    .unwrap();
    p
}

#[test]
fn decisions_follow_the_frames_and_corrupt_frames_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    let mut pattern = vec![false; 10];
    pattern.extend([true; 10]);
    write_frames(&frames, &pattern);
    // A truncated PNG in the middle: counted, skipped.
    std::fs::write(
        frames.join("frame_00009x.png"),
        b"\x89PNG\r\n\x1a\n garbage",
    )
    .unwrap();
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    // Two inference workers whatever this machine has: decisions, snapshots and counts must
    // be those of one frame at a time.
    let cfg = config(tmp.path(), "[model]\nthreads = 2\n");
    let snaps = tmp.path().join("snaps");
    let out = run_edge(&run_args(
        &cfg,
        &bundle,
        &frames,
        &[
            "--fps",
            "0",
            "--no-journal",
            "--snapshots",
            snaps.to_str().unwrap(),
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    let d = decisions(&lines);
    let summary: Vec<(String, bool, String)> = d
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["abnormal"].as_bool().unwrap(),
                d["class"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("first".into(), false, "normal".into()),
            ("change".into(), true, "cyst".into())
        ],
        "{stderr}"
    );
    // The change comes once the window mean passes 0.55: the third bright frame, which is
    // file 13 (the corrupt file sorts between the dark and the bright ones).
    assert_eq!(d[1]["frame_index"], 13, "{:?}", d[1]);
    // Both decisions are decisive: each names its snapshot, a PNG of model input + heatmap.
    for d in &d {
        let p = std::path::PathBuf::from(d["snapshot"].as_str().expect("snapshot path"));
        assert!(p.starts_with(&snaps), "{p:?}");
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (448, 224));
    }
    let fin = lines.iter().find(|v| v["event"] == "final").expect("final");
    assert_eq!(fin["snapshots"]["written"], 2, "{fin}");
    assert_eq!(fin["frames"]["processed"], 20, "{fin}");
    assert_eq!(fin["frames"]["corrupt"], 1, "{fin}");
    assert_eq!(fin["frames"]["inferred"], 20, "{fin}");
    assert_eq!(fin["frames"]["dropped"], 0, "{fin}");
    for stage in [
        "capture",
        "gate",
        "preprocess",
        "infer",
        "aggregate",
        "sinks",
    ] {
        assert!(
            fin["latency_ms"][stage]["n"].as_u64().unwrap() > 0,
            "{stage}"
        );
    }
}

#[test]
fn freeze_mode_classifies_a_frozen_image_once() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false, true, false, false]);
    // Freeze on a bright image: three identical frames after frame 3.
    let frozen = std::fs::read(frames.join("frame_00001.png")).unwrap();
    for i in 4..7 {
        std::fs::write(frames.join(format!("frame_{i:05}.png")), &frozen).unwrap();
    }
    write_frames(&tmp.path().join("tail"), &[false]);
    std::fs::rename(
        tmp.path().join("tail/frame_00000.png"),
        frames.join("frame_00007.png"),
    )
    .unwrap();
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let cfg = config(tmp.path(), "[pipeline]\nmode = \"freeze\"\n");
    let out = run_edge(&run_args(
        &cfg,
        &bundle,
        &frames,
        &["--fps", "0", "--no-journal"],
    ));
    assert!(out.status.success());
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    let d = decisions(&lines);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["kind"], "freeze");
    assert_eq!(d[0]["abnormal"], true);
    assert_eq!(d[0]["class"], "cyst");
    assert_eq!(d[0]["frame_index"], 5);
    let fin = lines.iter().find(|v| v["event"] == "final").unwrap();
    assert_eq!(fin["frames"]["inferred"], 1, "{fin}");
    assert_eq!(fin["frames"]["gated"]["frozen"], 1, "{fin}");
}

/// Reads the child's stdout lines on a thread.
fn line_reader(child: &mut std::process::Child) -> mpsc::Receiver<serde_json::Value> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

fn wait_for(
    rx: &mpsc::Receiver<serde_json::Value>,
    within: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + within;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(v) if pred(&v) => return v,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("timed out waiting for {what}");
}

fn sigterm(child: &std::process::Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn replay_medium_lost_mid_stream_is_reopened_and_sigterm_shuts_down() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false, false, true, true, false, true]);
    let away = tmp.path().join("away");
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let cfg = config(
        tmp.path(),
        "[source.reopen]\ninitial_ms = 50\nmax_ms = 400\n",
    );
    let mut child = spawn_edge(&run_args(
        &cfg,
        &bundle,
        &frames,
        &["--fps", "25", "--loop", "--no-journal"],
    ));
    let rx = line_reader(&mut child);
    wait_for(&rx, Duration::from_secs(30), "first decision", |v| {
        v["event"] == "decision"
    });
    // The medium goes away (USB stick pulled): the source is lost and retried.
    std::fs::rename(&frames, &away).unwrap();
    let lost = wait_for(&rx, Duration::from_secs(10), "source lost", |v| {
        v["event"] == "status" && v["source"]["lost"].as_u64() >= Some(1)
    });
    assert_eq!(lost["source"]["up"], false, "{lost}");
    std::thread::sleep(Duration::from_millis(500));
    let before = wait_for(&rx, Duration::from_secs(5), "status", |v| {
        v["event"] == "status"
    });
    // It comes back: frames flow again.
    std::fs::rename(&away, &frames).unwrap();
    let processed_before = before["frames"]["processed"].as_u64().unwrap();
    let after = wait_for(&rx, Duration::from_secs(15), "frames after reopen", |v| {
        v["event"] == "status"
            && v["source"]["up"] == true
            && v["frames"]["processed"].as_u64().unwrap() >= processed_before + 10
    });
    assert!(
        after["source"]["open_failures"].as_u64().unwrap() >= 1,
        "{after}"
    );
    sigterm(&child);
    let fin = wait_for(&rx, Duration::from_secs(10), "final status", |v| {
        v["event"] == "final"
    });
    assert!(fin["frames"]["inferred"].as_u64().unwrap() >= 10, "{fin}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The runtime under `Type=notify` + `WatchdogSec=`: a real `$NOTIFY_SOCKET` (a datagram
/// socket the test binds, as systemd's) receives `READY=1` with a status line and the main
/// PID, periodic `STATUS=`, `WATCHDOG=1` at half of `$WATCHDOG_USEC`, and `STOPPING=1` last.
#[test]
fn systemd_hears_ready_status_pings_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false, true, false, true]);
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let cfg = config(tmp.path(), "");
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(edge_bin())
        .args(run_args(
            &cfg,
            &bundle,
            &frames,
            &["--fps", "10", "--loop", "--no-journal"],
        ))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = line_reader(&mut child);
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(60);
    // Until the first decision, a few status lines and several pings have arrived.
    while Instant::now() < end {
        let n = sock.recv(&mut buf).expect("a notification within 30 s");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        let pings = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        let statuses = got.iter().filter(|m| m.starts_with("STATUS=")).count();
        if pings >= 3 && statuses >= 2 {
            break;
        }
    }
    let ready = &got[0];
    assert!(ready.contains("READY=1\n"), "first notification: {got:?}");
    assert!(ready.contains("STATUS=screening aid ready"), "{ready:?}");
    assert!(
        ready.contains(&format!("MAINPID={}\n", child.id())),
        "{ready:?}"
    );
    let statuses: Vec<&String> = got.iter().filter(|m| m.starts_with("STATUS=")).collect();
    assert!(statuses.len() >= 2, "{got:?}");
    assert!(
        statuses.iter().all(|m| m.lines().count() == 1),
        "{statuses:?}"
    );
    assert!(statuses[0].contains("fps"), "{statuses:?}");
    wait_for(&rx, Duration::from_secs(30), "a decision", |v| {
        v["event"] == "decision"
    });
    sigterm(&child);
    let mut last = String::new();
    while let Ok(n) = sock.recv(&mut buf) {
        last = String::from_utf8_lossy(&buf[..n]).into_owned();
        if last.contains("STOPPING=1") {
            break;
        }
    }
    assert_eq!(last, "STOPPING=1\n");
    assert!(child.wait().unwrap().success());
}

fn refuses(bundle: &std::path::Path, keys: Option<&std::path::Path>, expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false]);
    let mut cmd = Command::new(edge_bin());
    cmd.arg("run").arg("--bundle").arg(bundle);
    if let Some(k) = keys {
        cmd.arg("--trusted-keys").arg(k);
    }
    let out = cmd
        .arg("--replay")
        .arg(&frames)
        .args(["--fps", "0", "--no-journal"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a bad bundle: {stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert!(stderr.contains(expect), "expected {expect:?} in: {stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("decision"),
        "decided with a bad bundle"
    );
}

#[test]
fn bad_bundles_refuse_to_start_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write_bundle(&tmp.path().join("good"), 0.5);
    let keys = keys_of(&good);
    // The good one starts (so the refusals below are about the bundle).
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false]);
    let ok = Command::new(edge_bin())
        .args(["run", "--bundle"])
        .arg(&good)
        .arg("--trusted-keys")
        .arg(&keys)
        .arg("--replay")
        .arg(&frames)
        .args(["--fps", "0", "--no-journal"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    refuses(&good, None, "no trusted keys");
    refuses(
        &tmp.path().join("missing"),
        Some(&keys),
        "manifest.sig is missing",
    );

    let copy = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["model.onnx", "manifest.toml", "manifest.sig"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    let tampered = copy("tampered");
    let mut onnx = std::fs::read(tampered.join("model.onnx")).unwrap();
    let last = onnx.len() - 1;
    onnx[last] ^= 1;
    std::fs::write(tampered.join("model.onnx"), onnx).unwrap();
    refuses(&tampered, Some(&keys), "sha256");

    let edited = copy("edited");
    let m = std::fs::read_to_string(edited.join("manifest.toml")).unwrap();
    std::fs::write(
        edited.join("manifest.toml"),
        m.replace("threshold = 0.5", "threshold = 0.9"),
    )
    .unwrap();
    refuses(&edited, Some(&keys), "edited after signing");

    let unsigned = copy("unsigned");
    std::fs::remove_file(unsigned.join("manifest.sig")).unwrap();
    refuses(&unsigned, Some(&keys), "unsigned");

    let stranger = write_bundle(&tmp.path().join("stranger"), 0.5);
    refuses(&stranger, Some(&keys), "not among the trusted keys");

    let pv = usimage::PREPROCESS_VERSION;
    let future = write_bundle_with(&tmp.path().join("future"), 0.5, |m| {
        m.replace(
            &format!("usimage_preprocess_version = {pv}"),
            &format!("usimage_preprocess_version = {}", pv + 1),
        )
    });
    refuses(&future, Some(&keys_of(&future)), "preprocessing");

    let garbage = write_bundle_with(&tmp.path().join("garbage"), 0.5, |m| m);
    let gk = keys_of(&garbage);
    // A model that is not ONNX but correctly signed (hash and signature redone).
    std::fs::write(garbage.join("model.onnx"), b"not a model").unwrap();
    let m = std::fs::read_to_string(garbage.join("manifest.toml")).unwrap();
    let sha_line = m
        .lines()
        .find(|l| l.starts_with("sha256"))
        .unwrap()
        .to_string();
    let m = m.replace(
        &sha_line,
        &format!("sha256 = \"{}\"", bundle::sha256_hex(b"not a model")),
    );
    std::fs::write(garbage.join("manifest.toml"), m).unwrap();
    let key = bundle::SecretKey::generate("garbage").unwrap();
    bundle::sign_bundle(&garbage, &key).unwrap();
    std::fs::write(gk.join("garbage.pub"), key.public().to_file_text()).unwrap();
    refuses(&garbage, Some(&gk), "cannot load the model");
}
