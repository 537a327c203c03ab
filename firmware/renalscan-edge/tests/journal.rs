//! The journal under faults, end to end: a disk that turns read-only or full mid-run
//! raises the alarm while screening goes on, the decisions are held and written once the
//! disk recovers; a runtime killed with SIGKILL leaves a journal holding every decision it
//! had reported as committed.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use journal::{Fault, FaultSwitch, Journal};
use renalscan_edge::config::{Config, SourceKind};
use renalscan_edge::events::StatusReport;
use renalscan_edge::infer::Classifier;
use renalscan_edge::runtime::{self, RunOptions};
use renalscan_edge::sink::build::Outputs;
use renalscan_edge::sink::journal::JournalSink;

fn steady_config(frames: &std::path::Path, journal: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.source.kind = SourceKind::Replay;
    cfg.source.replay.path = Some(frames.to_path_buf());
    cfg.source.replay.fps = 40.0;
    cfg.source.replay.looped = true;
    cfg.aggregate.window = 2;
    cfg.aggregate.min_frames = 1;
    // A decision every frame or so: plenty of records to hold.
    cfg.aggregate.report_every_s = 0.02;
    cfg.output.status_every_s = 0.1;
    cfg.journal.dir = journal.to_path_buf();
    cfg.journal.retry_every_s = 0.1;
    cfg
}

fn run_with_fault(fault: Fault) {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false, true, false, true]);
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let keys = keys_of(&bundle);
    let jdir = tmp.path().join("journal");
    let cfg = steady_config(&frames, &jdir);
    let classifier = Classifier::open(&bundle, Some(&keys), Default::default(), None).unwrap();
    let switch = FaultSwitch::new();
    let mut outputs = Outputs::default();
    outputs.push(JournalSink::open_with(&cfg.journal, switch.clone()).unwrap());
    let term = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<StatusReport>();
    let opts = RunOptions {
        rss_every: 0,
        status_tx: Some(tx),
    };
    let t = {
        let term = term.clone();
        std::thread::spawn(move || runtime::run(&cfg, classifier, outputs, term, &opts))
    };
    let next = |pred: &dyn Fn(&StatusReport) -> bool, what: &str| -> StatusReport {
        let end = Instant::now() + Duration::from_secs(30);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(s) if pred(&s) => return s,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("timed out waiting for {what}");
    };
    let ok = next(
        &|s| s.journal["committed"].as_u64() >= Some(5),
        "commits before the fault",
    );
    assert_eq!(ok.journal["health"], "ok");
    switch.set(Some(fault));
    let degraded = next(
        &|s| s.journal["health"] == "degraded" && s.journal["held"].as_u64() >= Some(5),
        "degraded with held records",
    );
    // Screening goes on while the disk refuses writes.
    let later = next(
        &|s| s.frames.inferred >= degraded.frames.inferred + 10,
        "inference during the fault",
    );
    assert_eq!(later.journal["health"], "degraded", "{:?}", later.journal);
    assert!(later.frames.decisions > degraded.frames.decisions);
    switch.set(None);
    let healed = next(
        &|s| s.journal["health"] == "ok" && s.journal["held"] == 0,
        "recovery",
    );
    assert_eq!(healed.journal["refused"], 0);
    term.store(true, Ordering::Relaxed);
    let summary = t.join().unwrap().unwrap();
    // Every decision of the run is in the journal, in order, none twice.
    let seqs: Vec<u64> = Journal::records(&jdir)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect();
    let expected: Vec<u64> = (1..=summary.counters.decisions).collect();
    assert_eq!(seqs, expected);
}

#[test]
fn read_only_journal_raises_the_alarm_holds_and_flushes() {
    run_with_fault(Fault::ReadOnly);
}

#[test]
fn full_journal_raises_the_alarm_holds_and_flushes() {
    run_with_fault(Fault::Full);
}

#[test]
fn kill_9_mid_run_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false, true, true, false]);
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let jdir = tmp.path().join("journal");
    let cfg = tmp.path().join("edge.toml");
    std::fs::write(
        &cfg,
        "[aggregate]\nwindow = 2\nmin_frames = 1\nreport_every_s = 0.01\n\
         [journal]\nsegment_bytes = 4096\n",
    )
    .unwrap();
    let jd = jdir.display().to_string();
    let args = |extra: &[&str]| {
        let mut e = vec!["--fps", "0", "--loop", "--journal", &jd];
        e.extend_from_slice(extra);
        run_args(&cfg, &bundle, &frames, &e)
    };
    let mut child = spawn_edge(&args(&[]));
    let stdout = child.stdout.take().unwrap();
    let mut acknowledged = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    while acknowledged.len() < 60 {
        let line = lines.next().expect("runtime ended early").unwrap();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["event"] == "decision" && v["journal"]["state"] == "committed" {
            acknowledged.push(v);
        }
    }
    // SIGKILL: no chance to flush or clean up, possibly mid-write.
    child.kill().unwrap();
    for line in lines {
        let Ok(line) = line else { break };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["event"] == "decision" && v["journal"]["state"] == "committed" {
                acknowledged.push(v);
            }
        }
    }
    child.wait().unwrap();

    // Restart on the same journal: recovery cuts any torn tail and it carries on.
    let out = run_edge(&args(&["--max-frames", "8"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = decisions(&json_lines(&String::from_utf8_lossy(&out.stdout)));
    assert!(!after.is_empty());

    let records: Vec<(u64, serde_json::Value)> = Journal::records(&jdir)
        .unwrap()
        .map(|r| {
            let r = r.expect("journal damaged after kill -9");
            (r.seq, serde_json::from_slice(&r.payload).unwrap())
        })
        .collect();
    let by_seq: std::collections::HashMap<u64, &serde_json::Value> =
        records.iter().map(|(s, v)| (*s, v)).collect();
    for d in acknowledged.iter().chain(after.iter()) {
        let seq = d["journal"]["seq"].as_u64().unwrap();
        let rec = by_seq
            .get(&seq)
            .unwrap_or_else(|| panic!("acknowledged record {seq} missing from the journal"));
        let mut printed = d.clone();
        let o = printed.as_object_mut().unwrap();
        o.remove("event");
        o.remove("journal");
        assert_eq!(
            &printed, *rec,
            "journal record {seq} differs from what was printed"
        );
    }
    // Journal seqs are contiguous across the crash.
    for w in records.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1);
    }
}
