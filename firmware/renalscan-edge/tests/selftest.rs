//! `selftest` checks answers: the bundle's signed reference frames go through the device's
//! stages and the chosen form, and any answer outside its signed tolerance fails the
//! selftest loudly; a reference frame swapped after signing is refused at verification.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use renalscan_edge::config::ModelForm;
use renalscan_edge::infer::{Classified, Classifier};

fn selftest(bundle: &Path) -> std::process::Output {
    Command::new(edge_bin())
        .args(["selftest", "--runs", "1", "--json", "--bundle"])
        .arg(bundle)
        .arg("--trusted-keys")
        .arg(keys_of(bundle))
        .output()
        .unwrap()
}

/// A signed tiny bundle carrying `refs` (file name, bytes, expected answer text).
fn with_refs(dir: &Path, refs: &[(&str, &[u8], String)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut cases = String::new();
    for (file, bytes, answer) in refs {
        std::fs::write(dir.join(file), bytes).unwrap();
        cases.push_str(&format!(
            "\n[[selftest]]\nfile = \"{file}\"\nsha256 = \"{}\"\n{answer}",
            bundle::sha256_hex(bytes)
        ));
    }
    write_bundle_with(dir, 0.5, |m| format!("{m}{cases}"))
}

#[test]
fn selftest_fails_on_a_wrong_answer_and_a_swapped_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false, true]);
    let dark = std::fs::read(frames.join("frame_00000.png")).unwrap();
    let bright = std::fs::read(frames.join("frame_00001.png")).unwrap();

    // The answers, through the device's stages, from a bundle without references.
    let plain = write_bundle(&tmp.path().join("plain"), 0.5);
    let mut c = Classifier::open(&plain, Some(&keys_of(&plain)), ModelForm::Auto, None).unwrap();
    let labels = c.info().labels.clone();
    let a_dark = renalscan_edge::selftest::answer(&mut c, &dark).unwrap();
    let a_bright = renalscan_edge::selftest::answer(&mut c, &bright).unwrap();
    assert_ne!(
        a_dark.class, a_bright.class,
        "the frames must differ for the test to mean anything"
    );
    let answer = |a: &Classified, shift: f64| {
        format!(
            "class = \"{}\"\np_abnormal = {}\ntolerance = 0.02\n",
            labels[a.class],
            (f64::from(a.p_abnormal) + shift).clamp(0.0, 1.0)
        )
    };

    // Right answers: the selftest passes and reports each reference.
    let good = with_refs(
        &tmp.path().join("good"),
        &[
            ("selftest-dark.png", &dark, answer(&a_dark, 0.0)),
            ("selftest-bright.png", &bright, answer(&a_bright, 0.0)),
        ],
    );
    let out = selftest(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refs = r["references"].as_array().unwrap();
    assert_eq!(refs.len(), 2, "{r}");
    assert!(refs.iter().all(|c| c["ok"] == true), "{r}");
    assert!(
        r["cpu"]
            .as_str()
            .unwrap()
            .starts_with(std::env::consts::ARCH),
        "{r}"
    );

    // A signed answer this cart does not reproduce: the selftest fails, naming the frame.
    let shift = if a_dark.p_abnormal < 0.5 { 0.3 } else { -0.3 };
    let wrong = with_refs(
        &tmp.path().join("wrong"),
        &[
            ("selftest-dark.png", &dark, answer(&a_dark, shift)),
            ("selftest-bright.png", &bright, answer(&a_bright, 0.0)),
        ],
    );
    let out = selftest(&wrong);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("selftest FAILED: 1 of 2"), "{err}");
    assert!(err.contains("selftest-dark.png"), "{err}");

    // A reference frame swapped after signing: the bundle is refused before anything runs.
    std::fs::write(good.join("selftest-bright.png"), &dark).unwrap();
    let out = selftest(&good);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("selftest-bright.png"), "{err}");
}
