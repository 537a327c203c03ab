//! The aarch64 build of the runtime under qemu-aarch64 on a replay source: it must reach
//! the same decisions as the host build. Needs the cross-built binary, so it is run by
//! `firmware/renalscan-edge/scripts/aarch64-e2e.sh` (which builds it and sets
//! `RENALSCAN_EDGE_AARCH64_BIN`); plain `cargo test` skips it as ignored.

mod common;

use std::process::Command;

use common::*;

fn summary(stdout: &[u8]) -> Vec<(String, bool, String, u64, f64)> {
    decisions(&json_lines(&String::from_utf8_lossy(stdout)))
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["abnormal"].as_bool().unwrap(),
                d["class"].as_str().unwrap().to_string(),
                d["frame_index"].as_u64().unwrap(),
                d["p_abnormal"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs the aarch64 binary: run scripts/aarch64-e2e.sh"]
fn aarch64_binary_under_qemu_decides_like_the_host() {
    let bin = std::env::var("RENALSCAN_EDGE_AARCH64_BIN").expect(
        "set RENALSCAN_EDGE_AARCH64_BIN to the aarch64 renalscan-edge (scripts/aarch64-e2e.sh)",
    );
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    let mut pattern = vec![false; 6];
    pattern.extend([true; 6]);
    pattern.extend([false; 6]);
    write_frames(&frames, &pattern);
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let cfg = tmp.path().join("edge.toml");
    std::fs::write(
        &cfg,
        "[aggregate]\nwindow = 3\nmin_frames = 2\nhysteresis = 0.05\nreport_every_s = 0.0\n",
    )
    .unwrap();
    let args = |jdir: &str| {
        let j = tmp.path().join(jdir).display().to_string();
        run_args(&cfg, &bundle, &frames, &["--fps", "0", "--journal", &j])
    };
    let host = Command::new(edge_bin())
        .args(args("j-host"))
        .output()
        .unwrap();
    assert!(
        host.status.success(),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );
    let arm = Command::new("qemu-aarch64-static")
        .args(["-L", "/usr/aarch64-linux-gnu", &bin])
        .args(args("j-arm"))
        .output()
        .expect("qemu-aarch64-static");
    let arm_err = String::from_utf8_lossy(&arm.stderr);
    assert!(arm.status.success(), "{arm_err}");
    eprintln!(
        "{}",
        arm_err
            .lines()
            .rfind(|l| l.contains("status"))
            .unwrap_or("")
    );
    let (h, a) = (summary(&host.stdout), summary(&arm.stdout));
    let kinds: Vec<(&str, bool, &str)> = a
        .iter()
        .map(|d| (d.0.as_str(), d.1, d.2.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("first", false, "normal"),
            ("change", true, "cyst"),
            ("change", false, "normal")
        ],
        "aarch64 decisions: {a:?}"
    );
    assert_eq!(h.len(), a.len(), "host {h:?} vs aarch64 {a:?}");
    for (x, y) in h.iter().zip(&a) {
        assert_eq!((&x.0, x.1, &x.2, x.3), (&y.0, y.1, &y.2, y.3));
        assert!((x.4 - y.4).abs() < 1e-4, "p_abnormal {} vs {}", x.4, y.4);
    }
    // Both name the same software and bundle (the configurations differ: journal dirs).
    let trace = |out: &[u8]| {
        let d = decisions(&json_lines(&String::from_utf8_lossy(out)));
        let t = &d[0]["trace"];
        (
            t["bundle_sha256"].clone(),
            t["signer"].clone(),
            t["runtime"].clone(),
            t["git"].clone(),
        )
    };
    assert_eq!(trace(&host.stdout), trace(&arm.stdout));
    assert!(trace(&arm.stdout).0.is_string());
    // The aarch64 journal holds the same decisions.
    let n = journal::Journal::records(tmp.path().join("j-arm"))
        .unwrap()
        .count();
    assert_eq!(n, a.len());
}
