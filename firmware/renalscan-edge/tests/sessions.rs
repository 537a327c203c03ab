//! Exams end to end with the runtime binary and the tiny model: a session over a normal and
//! an abnormal sweep with a freeze and a clinician's mark (through the operator view's
//! socket), then `export`: the PDF read back by pdftotext and rendered by pdftoppm, the CSV
//! parsed, `sha256sum -c`, a rerun that changes nothing, `--deidentify`; `kill -9` during an
//! export and a rerun; a full and a read-only target (small tmpfs mounts: needs root); a
//! session interrupted by `kill -9` listed as interrupted and exportable after a restart.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const PATIENT: &str = "P-7731-XQ";
const ACCESSION: &str = "ACC-55102";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every file under `dir`, relative path -> bytes.
fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

type Setup = ExamCart;

fn setup() -> Setup {
    exam_cart(
        20,
        20,
        "[aggregate]\nwindow = 6\nmin_frames = 3\nreport_every_s = 0.0\n[output]\nstatus_every_s = 0.5\n",
        "",
    )
}

impl Setup {
    fn places(&self) -> Vec<String> {
        vec!["--config".into(), self.cfg.display().to_string()]
    }

    fn export(&self, out: &Path, extra: &[&str]) -> std::process::Output {
        let mut a = vec!["export".to_string()];
        a.extend(self.places());
        a.extend(["--all".into(), "--out".into(), out.display().to_string()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        Command::new(edge_bin()).args(&a).output().unwrap()
    }

    fn sessions(&self) -> Vec<Value> {
        let mut a = vec!["sessions".to_string()];
        a.extend(self.places());
        a.push("--json".into());
        let o = Command::new(edge_bin()).args(&a).output().unwrap();
        json_lines(&ok(&o))
    }
}

/// Runs a session over the sweep with the view; freezes, unfreezes and agrees through the
/// view's socket; ends with SIGTERM (the session is ended).
fn recorded_session(s: &Setup) -> Vec<Value> {
    let port = free_port();
    let ui = format!("127.0.0.1:{port}");
    let mut args = run_args(&s.cfg, &s.bundle, &s.frames, &["--fps", "10"]);
    args.extend(
        [
            "--ui",
            &ui,
            "--session",
            "--patient-id",
            PATIENT,
            "--accession",
            ACCESSION,
            "--operator",
            "Dr Test",
            "--side",
            "right",
        ]
        .iter()
        .map(|x| x.to_string()),
    );
    let mut edge = Running::spawn(&args);
    // The view's socket, as the page would use it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ws = loop {
        let mut req = format!("ws://{ui}/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("Origin", format!("http://{ui}").parse().unwrap());
        if let Ok(sock) = std::net::TcpStream::connect(&ui) {
            if let Ok((ws, _)) = tungstenite::client(req, sock) {
                break ws;
            }
        }
        assert!(
            Instant::now() < deadline,
            "view did not start:\n{}",
            edge.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let wait = |what: &str, f: &dyn Fn(&[Value]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f(&edge.decisions()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("a normal and an abnormal decision", &|d| {
        d.iter().any(|x| x["abnormal"] == false) && d.iter().any(|x| x["abnormal"] == true)
    });
    ws.send(Message::text(r#"{"type":"control","action":"freeze"}"#))
        .unwrap();
    wait("the freeze decision", &|d| {
        d.iter().any(|x| x["kind"] == "freeze")
    });
    ws.send(Message::text(r#"{"type":"control","action":"unfreeze"}"#))
        .unwrap();
    let frozen = edge
        .decisions()
        .into_iter()
        .find(|x| x["kind"] == "freeze")
        .unwrap();
    let jseq = frozen["journal"]["seq"].as_u64().unwrap();
    ws.send(Message::text(format!(
        r#"{{"type":"mark","journal_seq":{jseq},"agree":false}}"#
    )))
    .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    drop(ws);
    // SIGTERM: the run ends, and with it the session.
    let status = edge.terminate();
    let (d, log) = (edge.decisions(), edge.log());
    assert!(status.success(), "{log}");
    // No patient identifier in the log.
    assert!(!log.contains(PATIENT) && !log.contains(ACCESSION), "{log}");
    assert!(
        d.iter().all(|x| x["session"].is_string()),
        "every decision carries the session"
    );
    d
}

#[test]
fn a_recorded_session_exports_to_a_pdf_csv_json_and_checksums() {
    let s = setup();
    let printed = recorded_session(&s);
    let sessions = s.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let id = sessions[0]["session"].as_str().unwrap().to_string();
    assert_eq!(sessions[0]["state"], "ended");
    assert_eq!(sessions[0]["marks"], 1);
    // No file name in the store or the journal holds the patient's identifier.
    for (rel, bytes) in tree(&s.root.join("sessions")) {
        assert!(!rel.contains(PATIENT), "{rel}");
        if rel.ends_with("context.json") {
            assert!(String::from_utf8_lossy(&bytes).contains(PATIENT));
        }
    }
    for (_, bytes) in tree(&s.root.join("journal")) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(PATIENT) && !text.contains(ACCESSION));
    }

    let usb = s.root.join("usb");
    let out = ok(&s.export(&usb, &[]));
    assert!(out.contains(&id), "{out}");
    let dir = usb.join(&id);
    for f in ["report.pdf", "results.csv", "session.json", "images"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    // The PDF, read back by a real reader.
    let text = Command::new("pdftotext")
        .args(["-layout"])
        .arg(dir.join("report.pdf"))
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils: bash scripts/setup.sh)");
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    for want in [
        "Screening aid — not a diagnosis",
        "Exam call:",
        PATIENT,
        ACCESSION,
        "right kidney",
        "Normal",
        "Abnormal",
        "freeze",
        "disagreed",
        &id,
    ] {
        assert!(text.contains(want), "{want:?} not in the report:\n{text}");
    }
    let model = printed[0]["model"]
        .as_str()
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    assert!(text.contains(model), "model {model} not in the report");
    // Rendered, for a person to look at.
    let page = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("session-report");
    std::fs::create_dir_all(&page).unwrap();
    let r = Command::new("pdftoppm")
        .args(["-r", "80", "-png", "-singlefile"])
        .arg(dir.join("report.pdf"))
        .arg(page.join("report"))
        .status()
        .expect("pdftoppm");
    assert!(r.success());
    assert!(page.join("report.png").metadata().unwrap().len() > 10_000);

    // The CSV: one row per decision of the session, as journalled.
    let mut rdr = csv::Reader::from_path(dir.join("results.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    let in_session: Vec<&Value> = printed
        .iter()
        .filter(|d| d["session"] == id.as_str())
        .collect();
    assert_eq!(rows.len(), in_session.len());
    let h = rdr.headers().unwrap().clone();
    let col = |name: &str| h.iter().position(|x| x == name).unwrap();
    for (row, d) in rows.iter().zip(&in_session) {
        assert_eq!(
            row[col("journal_seq")].parse::<u64>().unwrap(),
            d["journal"]["seq"].as_u64().unwrap()
        );
        let p: f64 = row[col("p_abnormal")].parse().unwrap();
        assert!((p - d["p_abnormal"].as_f64().unwrap()).abs() < 1e-4);
        assert_eq!(
            &row[col("result")],
            if d["abnormal"] == true {
                "abnormal"
            } else {
                "normal"
            }
        );
    }
    let json: Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
    assert_eq!(json["context"]["patient_id"], PATIENT);
    assert_eq!(json["decisions"].as_array().unwrap().len(), rows.len());

    // sha256sum -c over the whole export.
    let c = Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(&usb)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stdout));

    // A rerun changes nothing.
    let before = tree(&usb);
    let again = ok(&s.export(&usb, &[]));
    assert!(again.contains(r#""written":[]"#), "{again}");
    assert_eq!(tree(&usb), before);
    // The export is noted beside the session.
    assert_eq!(s.sessions()[0]["exports"].as_array().unwrap().len(), 1);

    // De-identified: nothing about the patient anywhere in it.
    let anon = s.root.join("anon");
    ok(&s.export(&anon, &["--deidentify"]));
    for (rel, bytes) in tree(&anon) {
        let t = String::from_utf8_lossy(&bytes);
        assert!(
            !t.contains(PATIENT) && !t.contains(ACCESSION) && !t.contains("Dr Test"),
            "{rel}"
        );
    }
    let t = Command::new("pdftotext")
        .arg(anon.join(&id).join("report.pdf"))
        .arg("-")
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&t.stdout);
    assert!(t.contains("de-identified") && !t.contains(PATIENT), "{t}");

    // kill -9 at different moments of an export (each file write paced to 40 ms so the
    // kills land inside it); each rerun completes it, identical to the clean export.
    let mut half_done = 0;
    for delay_ms in [5u64, 60, 100, 140, 180, 260] {
        let target = s.root.join(format!("killed-{delay_ms}"));
        let mut a = vec!["export".to_string()];
        a.extend(s.places());
        a.extend(["--all".into(), "--out".into(), target.display().to_string()]);
        let mut c = Command::new(edge_bin())
            .args(&a)
            .env("RENALSCAN_EXPORT_PACE_MS", "40")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = c.kill();
        let _ = c.wait();
        if target.exists() && tree(&target).keys().any(|k| k.starts_with(".tmp-s-")) {
            half_done += 1;
            // Half-written files stay in the temporary folder: no session folder yet.
            assert!(
                !target.join(&id).exists(),
                "a half-written session is visible"
            );
        }
        ok(&s.export(&target, &[]));
        assert_eq!(tree(&target), before, "after a kill at {delay_ms} ms");
    }
    assert!(
        half_done >= 2,
        "only {half_done} kills landed inside an export"
    );
}

/// A tmpfs of `size` at `dir`, read-only if asked; unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str, ro: bool) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let opts = format!("size={size}{}", if ro { ",ro" } else { "" });
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a small tmpfs failed: this test needs root (it makes a full and a read-only target)"
        );
        Self(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn interrupted_sessions_are_kept_and_full_or_read_only_targets_refused() {
    let s = setup();
    // A session killed mid-run.
    let mut args = run_args(&s.cfg, &s.bundle, &s.frames, &["--fps", "10", "--loop"]);
    args.extend(
        ["--session", "--patient-id", PATIENT]
            .iter()
            .map(|x| x.to_string()),
    );
    let mut child = spawn_edge(&args);
    let stdout = child.stdout.take().unwrap();
    let mut seen = 0;
    for l in BufReader::new(stdout).lines().map_while(Result::ok) {
        if l.contains(r#""event":"decision""#) && l.contains("committed") {
            seen += 1;
            if seen == 2 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(s.sessions()[0]["state"], "open");
    // Restart without a session: the open one is marked interrupted, its decisions kept.
    let restart = run_args(
        &s.cfg,
        &s.bundle,
        &s.frames,
        &["--fps", "0", "--max-frames", "3"],
    );
    let o = run_edge(&restart);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("was interrupted"));
    let listed = s.sessions();
    assert_eq!(listed[0]["state"], "interrupted", "{listed:?}");
    assert!(listed[0]["decisions"].as_u64().unwrap() >= 2);
    let usb = s.root.join("usb");
    ok(&s.export(&usb, &[]));

    // A full target: refused before anything is written, naming the target and the need.
    let full = s.root.join("full");
    let _m = Mount::tmpfs(&full, "8k", false);
    let o = s.export(&full, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&full.display().to_string()) && err.contains("needs"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&full).unwrap().next().is_none(),
        "something was written"
    );

    // A read-only target.
    let ro = s.root.join("ro");
    let _r = Mount::tmpfs(&ro, "1m", true);
    let o = s.export(&ro, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("read-only") && err.contains(&ro.display().to_string()),
        "{err}"
    );
}

#[test]
fn sessions_past_retention_lose_their_context_and_frames_only_once_exported() {
    use contract::events::{JournalRecord, SessionContext, SessionEvent, SessionRecord};
    let s = setup();
    let jdir = s.root.join("journal");
    let store = records::SessionStore::open(&s.root.join("sessions")).unwrap();
    let now = contract::events::unix_ms();
    let day = 86_400_000u64;
    // Exams of 40 days ago (one exported, one never) and one of 2 days ago (retention is
    // 30 days by default).
    let old = "s-20261024T090000-0a0a";
    let unexported = "s-20261024T100000-0c0c";
    let recent = "s-20261202T090000-0b0b";
    {
        let (mut j, _) = journal::Journal::open(journal::JournalConfig::new(&jdir)).unwrap();
        for (id, t) in [
            (old, now - 40 * day),
            (unexported, now - 40 * day),
            (recent, now - 2 * day),
        ] {
            for (event, at) in [
                (SessionEvent::Started { model: None }, t),
                (SessionEvent::Ended, t + 600_000),
            ] {
                let r = JournalRecord::Session(SessionRecord {
                    session: id.into(),
                    event,
                    unix_ms: at,
                });
                j.append(&r.to_bytes()).unwrap();
            }
            let ctx = SessionContext {
                patient_id: Some(PATIENT.into()),
                ..Default::default()
            };
            store.begin(id, &ctx).unwrap();
            store.write_frame(id, 1, b"png").unwrap();
        }
        store
            .record_export(
                old,
                &records::ExportMark {
                    unix_ms: now - 39 * day,
                    target: "/media/usb/exams".into(),
                    deidentified: false,
                    report_sha256: "0".repeat(64),
                },
            )
            .unwrap();
    }
    let o = run_edge(&run_args(
        &s.cfg,
        &s.bundle,
        &s.frames,
        &["--fps", "0", "--max-frames", "3"],
    ));
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains(&format!("session {old}: context and key frames deleted")),
        "{log}"
    );
    assert!(!s.root.join("sessions").join(old).exists());
    // The record that never left the cart stays, and the log says how to release it.
    assert!(s
        .root
        .join("sessions")
        .join(unexported)
        .join("context.json")
        .exists());
    assert!(
        log.contains("1 exam(s) past 30 days are kept because their records never left the cart"),
        "{log}"
    );
    assert!(s
        .root
        .join("sessions")
        .join(recent)
        .join("context.json")
        .exists());
    let listed = s.sessions();
    let state = |id: &str| {
        listed
            .iter()
            .find(|x| x["session"] == id)
            .map(|x| x["state"].clone())
            .unwrap()
    };
    assert_eq!(state(old), "purged");
    assert_eq!(state(unexported), "ended");
    assert_eq!(state(recent), "ended");
    // A second start purges nothing more.
    let o = run_edge(&run_args(
        &s.cfg,
        &s.bundle,
        &s.frames,
        &["--fps", "0", "--max-frames", "3"],
    ));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("deleted after"));
}

#[test]
fn the_journal_size_limit_never_removes_an_exam_that_has_not_left_the_cart() {
    use contract::events::{JournalRecord, SessionContext, SessionEvent, SessionRecord};
    // A journal of at most 2 segments of 4 KiB, and an exam at its start.
    let s = setup();
    let jdir = s.root.join("journal");
    let cfg = format!(
        "[aggregate]\nwindow = 6\nmin_frames = 3\nreport_every_s = 0.0\n\
         [journal]\ndir = \"{}\"\nsegment_bytes = 4096\nmax_total_bytes = 8192\nmax_segments = 2\n\
         [session]\ndir = \"{}\"\n",
        jdir.display(),
        s.root.join("sessions").display()
    );
    std::fs::write(&s.cfg, cfg).unwrap();
    let store = records::SessionStore::open(&s.root.join("sessions")).unwrap();
    let id = "s-20261204T090000-0d0d";
    let now = contract::events::unix_ms();
    let started = {
        let (mut j, _) = journal::Journal::open(journal::JournalConfig::new(&jdir)).unwrap();
        let seqs: Vec<u64> = [SessionEvent::Started { model: None }, SessionEvent::Ended]
            .into_iter()
            .map(|event| {
                let r = JournalRecord::Session(SessionRecord {
                    session: id.into(),
                    event,
                    unix_ms: now,
                });
                j.append(&r.to_bytes()).unwrap()
            })
            .collect();
        store.begin(id, &SessionContext::default()).unwrap();
        seqs[0]
    };
    let first_seq = |dir: &Path| {
        journal::Journal::records(dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|r| r.seq)
            .min()
    };
    // Enough decisions to fill the journal's limits many times over.
    let run = || {
        let o = run_edge(&run_args(
            &s.cfg,
            &s.bundle,
            &s.frames,
            &["--fps", "0", "--loop", "--max-frames", "400"],
        ));
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{log}");
        log
    };
    let log = run();
    assert_eq!(
        first_seq(&jdir),
        Some(started),
        "the unexported exam's records were deleted"
    );
    assert!(log.contains("have not left the cart"), "{log}");
    let segments = std::fs::read_dir(&jdir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(
        segments > 2,
        "{segments} segments: the limit was not reached"
    );
    // Exported: the next run's retention applies the limits again.
    store
        .record_export(
            id,
            &records::ExportMark {
                unix_ms: now,
                target: "/media/usb/exams".into(),
                deidentified: false,
                report_sha256: "0".repeat(64),
            },
        )
        .unwrap();
    run();
    assert!(
        first_seq(&jdir).unwrap() > started + 1,
        "the exported exam's records are the journal's to rotate"
    );
}
