//! The bundle's view gate on the runtime binary: frames the model says are no kidney (the
//! learned signal) or unlike its training kidneys (the OOD score) get no decision and count
//! as gated `no_kidney`, with the signal that fired; kidney frames are classified as before.
//! `check` gives the same verdicts frame by frame. The tiny gated model refuses glare frames
//! (`testkit::frames::GLARE`) and accepts dark and bright ones.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use testkit::frames::{gate, write_frames_gain, BRIGHT, DARK, GLARE};

/// A signed bundle of the tiny gated model with these view-gate thresholds.
fn gated_bundle(dir: &Path, kidney_threshold: f32, ood_threshold: f32) -> PathBuf {
    let (k, c) = split();
    let model = testkit::tiny::classifier_with_gate(k, c, gate());
    testkit::signed::write_bundle_with(dir, &model, 0.5, |m| {
        format!(
            "{m}\n[view_gate]\nkidney_output = \"kidney\"\nkidney_threshold = {kidney_threshold}\n\
             ood_output = \"ood\"\nood_threshold = {ood_threshold}\nrule = \"test\"\n\
             negatives = \"glare\"\n[view_gate.validation]\nn_kidney = 10\nn_other = 10\n\
             kidney_pass = 1.0\nother_gated = 1.0\nother_gated_learned = 1.0\n\
             other_gated_ood = 1.0\n"
        )
    })
}

fn config(dir: &Path) -> PathBuf {
    let p = dir.join("edge.toml");
    std::fs::write(
        &p,
        "[aggregate]\nwindow = 3\nmin_frames = 2\nhysteresis = 0.05\nreport_every_s = 0.0\n\
         [output]\nstatus_every_s = 0.2\n",
    )
    .unwrap();
    p
}

/// dark x6, glare x6, bright x6, glare x6.
fn frames(dir: &Path) -> PathBuf {
    let frames = dir.join("frames");
    let mut gains = vec![DARK; 6];
    gains.extend([GLARE; 6]);
    gains.extend([BRIGHT; 6]);
    gains.extend([GLARE; 6]);
    write_frames_gain(&frames, &gains);
    frames
}

fn run(dir: &Path, kidney_threshold: f32, ood_threshold: f32) -> (Vec<serde_json::Value>, String) {
    let bundle = gated_bundle(&dir.join("bundle"), kidney_threshold, ood_threshold);
    let out = run_edge(&run_args(
        &config(dir),
        &bundle,
        &frames(dir),
        &["--fps", "0", "--no-journal"],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    (json_lines(&String::from_utf8_lossy(&out.stdout)), stderr)
}

#[test]
fn glare_frames_get_no_decision_and_count_as_no_kidney() {
    // Both signals armed: glare fires both.
    let tmp = tempfile::tempdir().unwrap();
    let (lines, stderr) = run(tmp.path(), 0.5, 4.0);
    let d = decisions(&lines);
    let summary: Vec<(bool, i64)> = d
        .iter()
        .map(|d| {
            (
                d["abnormal"].as_bool().unwrap(),
                d["frame_index"].as_i64().unwrap(),
            )
        })
        .collect();
    // A normal first decision in the dark frames, the abnormal change in the bright ones;
    // nothing decided on a glare frame (indices 6..12 and 18..24).
    assert_eq!(summary.len(), 2, "{summary:?}\n{stderr}");
    assert!(!summary[0].0 && summary[0].1 < 6, "{summary:?}");
    assert!(
        summary[1].0 && (12..18).contains(&summary[1].1),
        "{summary:?}"
    );
    let fin = lines.iter().find(|v| v["event"] == "final").expect("final");
    assert_eq!(fin["frames"]["gated"]["no_kidney"], 12, "{fin}");
    assert_eq!(fin["frames"]["no_kidney_by"]["both"], 12, "{fin}");
    assert_eq!(fin["frames"]["inferred"], 24, "{fin}");
}

#[test]
fn each_signal_alone_gates_and_is_named() {
    // The OOD threshold out of reach: the learned signal alone.
    let tmp = tempfile::tempdir().unwrap();
    let (lines, _) = run(tmp.path(), 0.5, 1e9);
    let fin = lines.iter().find(|v| v["event"] == "final").expect("final");
    assert_eq!(fin["frames"]["gated"]["no_kidney"], 12, "{fin}");
    assert_eq!(fin["frames"]["no_kidney_by"]["learned"], 12, "{fin}");
    // p(kidney) can never be below 0: the OOD score alone.
    let tmp = tempfile::tempdir().unwrap();
    let (lines, _) = run(tmp.path(), 0.0, 4.0);
    let fin = lines.iter().find(|v| v["event"] == "final").expect("final");
    assert_eq!(fin["frames"]["gated"]["no_kidney"], 12, "{fin}");
    assert_eq!(fin["frames"]["no_kidney_by"]["ood"], 12, "{fin}");
    // Both disarmed: glare is classified like any frame (what a bundle without a gate does).
    let tmp = tempfile::tempdir().unwrap();
    let (lines, _) = run(tmp.path(), 0.0, 1e9);
    let fin = lines.iter().find(|v| v["event"] == "final").expect("final");
    assert!(
        fin["frames"]["gated"]
            .get("no_kidney")
            .is_none_or(|v| v == 0),
        "{fin}"
    );
}

#[test]
fn check_gives_one_verdict_per_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = gated_bundle(&tmp.path().join("bundle"), 0.5, 4.0);
    let frames = frames(tmp.path());
    let out = std::process::Command::new(edge_bin())
        .args(["check", "--json", "--bundle"])
        .arg(&bundle)
        .arg("--trusted-keys")
        .arg(keys_of(&bundle))
        .arg(&frames)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v.len(), 24, "{stderr}");
    for (i, v) in v.iter().enumerate() {
        let glare = (6..12).contains(&i) || i >= 18;
        if glare {
            assert_eq!(v["outcome"], "gated", "{i}: {v}");
            assert_eq!(v["reason"], "no_kidney", "{i}: {v}");
            assert_eq!(v["signal"], "both", "{i}: {v}");
            assert!(v["p_kidney"].as_f64().unwrap() < 0.5, "{v}");
            assert!(v["ood"].as_f64().unwrap() > 4.0, "{v}");
        } else {
            assert_eq!(v["outcome"], "classified", "{i}: {v}");
            assert_eq!(v["abnormal"], i >= 12, "{i}: {v}");
            assert!(v["p_kidney"].as_f64().unwrap() > 0.5, "{v}");
            assert!(v["ood"].as_f64().unwrap() < 4.0, "{v}");
        }
    }
}

/// `check ... | head -1`: the reader leaving early ends the check quietly, without a panic.
#[test]
fn check_stops_quietly_when_its_reader_leaves() {
    use std::io::BufRead as _;
    let tmp = tempfile::tempdir().unwrap();
    let bundle = gated_bundle(&tmp.path().join("bundle"), 0.5, 4.0);
    let frames = frames(tmp.path());
    let mut child = std::process::Command::new(edge_bin())
        .args(["check", "--bundle"])
        .arg(&bundle)
        .arg("--trusted-keys")
        .arg(keys_of(&bundle))
        .arg(&frames)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: every later write meets a closed pipe.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.contains("#0:"), "{first}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
