//! Store-and-forward against a real PACS (Debian's Orthanc, started here on loopback): an
//! exam ends and arrives, found by its UIDs; a PACS down for the whole exam, then up, and a
//! drain killed with `kill -9` in the middle: everything arrives, and Orthanc holds no
//! duplicate instance.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use testkit::orthanc::Orthanc;

const PATIENT: &str = "MRN-PACS-0093";

type Setup = ExamCart;

fn setup(drain_on_shutdown_s: f32) -> Setup {
    let tail = format!(
        "[pacs]\noutbox = \"{{OUTBOX}}\"\nbackoff_initial_s = 0.3\nbackoff_max_s = 1.0\n\
         connect_timeout_s = 1.0\ndrain_on_shutdown_s = {drain_on_shutdown_s}\n"
    );
    let s = exam_cart(
        12,
        12,
        "[aggregate]\nwindow = 4\nmin_frames = 2\nreport_every_s = 0.0\n[output]\nstatus_every_s = 0.3\n",
        "",
    );
    let outbox = s.root.join("outbox");
    let text = std::fs::read_to_string(&s.cfg).unwrap()
        + &tail.replace("{OUTBOX}", &outbox.display().to_string());
    std::fs::write(&s.cfg, text).unwrap();
    s
}

/// One exam over the sweep (normal, then abnormal), sent to `pacs` if given; the run's
/// stdout lines and log.
fn exam(s: &Setup, pacs: Option<&str>) -> (Vec<Value>, String) {
    let mut args = run_args(&s.cfg, &s.bundle, &s.frames, &["--fps", "20"]);
    args.extend(
        [
            "--session",
            "--patient-id",
            PATIENT,
            "--accession",
            "ACC-77",
            "--side",
            "left",
        ]
        .iter()
        .map(|x| x.to_string()),
    );
    if let Some(p) = pacs {
        args.extend(["--pacs".to_string(), p.to_string()]);
    }
    let (lines, log) = run_to_end(&args);
    assert!(!log.contains(PATIENT), "patient id in the log");
    (lines, log)
}

/// Runs the runtime to its end; its stdout lines and log.
fn run_to_end(args: &[String]) -> (Vec<Value>, String) {
    let out = Command::new(edge_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    (json_lines(&String::from_utf8_lossy(&out.stdout)), log)
}

fn outbox(s: &Setup, args: &[&str]) -> std::process::Output {
    Command::new(edge_bin())
        .arg("outbox")
        .args(args)
        .arg("--config")
        .arg(&s.cfg)
        .output()
        .unwrap()
}

fn listed(s: &Setup) -> Vec<Value> {
    let o = outbox(s, &["list", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    json_lines(&String::from_utf8_lossy(&o.stdout))
}

fn check_arrived(pacs: &Orthanc, items: &[Value]) {
    assert_eq!(
        pacs.instance_count(),
        items.len(),
        "one instance per object, no duplicate"
    );
    for i in items {
        assert_eq!(i["state"], "sent", "{i}");
        let uid = i["uid"].as_str().unwrap();
        let id = pacs
            .lookup(uid)
            .unwrap_or_else(|| panic!("{uid} not in Orthanc"));
        let tags = pacs
            .get(&format!("/instances/{id}/simplified-tags"))
            .unwrap();
        assert_eq!(tags["PatientID"], PATIENT, "{tags}");
        assert_eq!(tags["AccessionNumber"], "ACC-77");
        assert_eq!(tags["Manufacturer"], "renalscan");
        if i["kind"] == "structured_report" {
            assert_eq!(tags["VerificationFlag"], "UNVERIFIED");
        } else {
            let png = pacs.get_bytes(&format!("/instances/{id}/preview"));
            assert!(image::load_from_memory(&png).is_ok(), "preview decodes");
        }
    }
    // The Secondary Captures went before the SR that references them.
    let kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.last(), Some(&"structured_report"), "{kinds:?}");
    assert!(kinds.len() >= 2, "at least one key frame: {kinds:?}");
}

#[test]
fn an_ended_exam_arrives_in_the_pacs() {
    let s = setup(10.0);
    let pacs = Orthanc::start(&s.root.join("orthanc"));
    let (lines, _log) = exam(&s, Some(&pacs.address()));
    let items = listed(&s);
    check_arrived(&pacs, &items);
    // The status carried the outbox.
    assert!(
        lines
            .iter()
            .any(|v| v["event"] == "status" && v["pacs"]["address"].is_string()),
        "no pacs report in the status: {:?}",
        lines.iter().rfind(|v| v["event"] == "status")
    );
    // pacs echo from the shell.
    let o = Command::new(edge_bin())
        .args(["pacs", "echo", "--pacs", &pacs.address()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("answered C-ECHO"));
}

#[test]
fn pacs_down_for_the_exam_then_a_drain_killed_midway_still_delivers_once() {
    let s = setup(1.0);
    let dir = s.root.join("orthanc");
    // Reserve an address, then take the PACS away for the whole exam.
    let mut pacs = Orthanc::start(&dir);
    let (dicom, http, address) = (pacs.dicom_port, pacs.http_port, pacs.address());
    pacs.stop();
    let (_, log) = exam(&s, Some(&address));
    let first = listed(&s);
    assert!(first.len() >= 2, "{first:?}\n{log}");
    assert!(first.iter().all(|i| i["state"] == "pending"), "{first:?}");
    // The next exam, still without a PACS: what waits survives the restart and shows in
    // the status with the reason.
    let (lines, _) = exam(&s, Some(&address));
    let waiting = listed(&s);
    assert_eq!(waiting.len(), 2 * first.len(), "{waiting:?}");
    assert!(
        lines.iter().any(|v| v["event"] == "status"
            && v["pacs"]["pending"].as_u64() == Some(first.len() as u64)
            && v["pacs"]["alarm"]
                .as_str()
                .is_some_and(|a| a.contains("cannot connect"))),
        "the status shows the waiting objects and why"
    );
    // A drain while the PACS is down says so and keeps everything.
    let o = outbox(&s, &["drain", "--pacs", &address]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot connect"));

    // Up again; a slow drain is killed after its first object.
    let pacs = Orthanc::start_on(&dir, dicom, http);
    let mut child = Command::new(edge_bin())
        .args(["outbox", "drain", "--pacs", &address, "--config"])
        .arg(&s.cfg)
        .env("RENALSCAN_PACS_PACE_MS", "700")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pacs.instance_count() == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing arrived:\n{}",
            pacs.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = pacs.instance_count();
    assert!(partial < waiting.len(), "killed too late to mean anything");

    // Rerun: the rest arrives; what arrived before is not duplicated.
    let o = outbox(&s, &["drain", "--pacs", &address]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_arrived(&pacs, &listed(&s));
    assert!(!lock_held(&s.root.join("outbox")));
}

/// Whether another process still holds the outbox (it must not, after kill -9).
fn lock_held(dir: &Path) -> bool {
    let f = std::fs::File::open(dir.join("lock")).unwrap();
    f.try_lock().is_err()
}

/// An exam over a replayed DICOM study joins that study in the PACS: its objects carry the
/// study's patient and Study Instance UID, not a new study of their own.
#[test]
fn a_replayed_dicom_study_s_exam_joins_its_study() {
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::tags;
    let s = setup(10.0);
    let ts = dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN;
    let (w, h, frames) = (96u16, 64u16, 6u32);
    let pixels: Vec<u8> = (0..u32::from(w) * u32::from(h) * frames)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut obj =
        usimage::synthetic::dicom_object(w, h, "MONOCHROME2", 1, frames, pixels, None, ts);
    let study_uid = "1.2.826.0.1.3680043.8.498.4471";
    obj.put(DataElement::new(tags::PATIENT_ID, VR::LO, "DCM-PAT-31"));
    obj.put(DataElement::new(tags::PATIENT_NAME, VR::PN, "Test^Child"));
    obj.put(DataElement::new(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        study_uid,
    ));
    obj.put(DataElement::new(
        tags::ACCESSION_NUMBER,
        VR::SH,
        "SRC-ACC-5",
    ));
    let cine = s.root.join("cine.dcm");
    std::fs::write(&cine, usimage::synthetic::part10(obj, ts)).unwrap();

    let pacs = Orthanc::start(&s.root.join("orthanc"));
    let mut args = run_args(&s.cfg, &s.bundle, &cine, &["--fps", "20"]);
    args.extend(
        ["--session", "--pacs", &pacs.address()]
            .iter()
            .map(|x| x.to_string()),
    );
    let (_, log) = run_to_end(&args);
    assert!(
        !log.contains("DCM-PAT-31") && !log.contains("Test^Child"),
        "{log}"
    );
    let items = listed(&s);
    assert!(!items.is_empty(), "nothing queued:\n{log}");
    for i in &items {
        assert_eq!(i["state"], "sent", "{i}");
        let id = pacs.lookup(i["uid"].as_str().unwrap()).unwrap();
        let tags = pacs
            .get(&format!("/instances/{id}/simplified-tags"))
            .unwrap();
        assert_eq!(tags["PatientID"], "DCM-PAT-31", "{tags}");
        assert_eq!(tags["PatientName"], "Test^Child");
        assert_eq!(tags["StudyInstanceUID"], study_uid);
        assert_eq!(tags["AccessionNumber"], "SRC-ACC-5");
    }
}

/// An exam that ended without being queued (here: a run without the PACS, after the outbox
/// began) is found in the journal by `outbox drain` and sent.
#[test]
fn outbox_drain_queues_an_exam_the_runtime_never_queued() {
    let s = setup(1.0);
    let o = outbox(&s, &["list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(20));
    exam(&s, None);
    assert!(listed(&s).is_empty(), "the run had no PACS");
    let pacs = Orthanc::start(&s.root.join("orthanc"));
    let o = outbox(&s, &["drain", "--pacs", &pacs.address()]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(said.contains("objects queued"), "{said}");
    check_arrived(&pacs, &listed(&s));
    // Nothing is queued twice.
    let o = outbox(&s, &["drain", "--pacs", &pacs.address()]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("objects queued"));
}
