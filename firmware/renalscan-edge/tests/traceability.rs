//! The signed threshold wins, and every decision and status names the software behind it:
//! a configuration that moves the threshold is refused unless the bundle's signature allows
//! a site range; decisions, the status and `version --json` carry the bundle's sha256 and
//! signer, the runtime's version and git revision, and the effective configuration's hash.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn config(dir: &Path, aggregate_extra: &str) -> std::path::PathBuf {
    let p = dir.join("edge.toml");
    std::fs::write(
        &p,
        format!(
            "[aggregate]\nwindow = 3\nmin_frames = 2\nreport_every_s = 0.0\n{aggregate_extra}\n\
             [output]\nstatus_every_s = 0.2\n"
        ),
    )
    .unwrap();
    p
}

/// A bundle with signed threshold 0.5, optionally allowing a site range.
fn bundle(dir: &Path, site_range: Option<&str>) -> std::path::PathBuf {
    write_bundle_with(&dir.join("bundle"), 0.5, |m| match site_range {
        Some(r) => m.replace(
            "target_sensitivity = 0.95",
            &format!("target_sensitivity = 0.95\nsite_range = {r}"),
        ),
        None => m,
    })
}

fn run(cfg: &Path, bundle: &Path, frames: &Path) -> std::process::Output {
    run_edge(&run_args(
        cfg,
        bundle,
        frames,
        &["--fps", "0", "--no-journal"],
    ))
}

/// A run that must succeed: its stdout's JSON lines.
fn run_ok(cfg: &Path, bundle: &Path, frames: &Path) -> Vec<serde_json::Value> {
    let out = run(cfg, bundle, frames);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&String::from_utf8_lossy(&out.stdout))
}

fn version(cfg: &Path, bundle: &Path) -> std::process::Output {
    Command::new(edge_bin())
        .args(["version", "--json", "--config"])
        .arg(cfg)
        .arg("--bundle")
        .arg(bundle)
        .arg("--trusted-keys")
        .arg(keys_of(bundle))
        .output()
        .unwrap()
}

#[test]
fn a_config_threshold_needs_the_bundles_signed_permission() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false, false, true, true]);
    let signed_only = bundle(&tmp.path().join("a"), None);

    // The unsigned file may not move the line between normal and abnormal.
    let moved = config(tmp.path(), "threshold = 0.3");
    for out in [
        run(&moved, &signed_only, &frames),
        version(&moved, &signed_only),
    ] {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("aggregate.threshold = 0.3") && err.contains("allows no site threshold"),
            "{err}"
        );
    }
    // Restating the signed threshold is no change.
    let same = config(tmp.path(), "threshold = 0.5");
    let d = decisions(&run_ok(&same, &signed_only, &frames));
    assert!(!d.is_empty());
    assert!(d
        .iter()
        .all(|d| d["threshold_source"] == "bundle" && d["threshold"] == 0.5));

    // A bundle signed with a site range: inside it the site's threshold applies, and says so.
    let ranged = bundle(&tmp.path().join("b"), Some("[0.3, 0.7]"));
    let site = config(tmp.path(), "threshold = 0.4");
    let lines = run_ok(&site, &ranged, &frames);
    let d = decisions(&lines);
    assert!(!d.is_empty());
    for d in &d {
        assert_eq!(d["threshold_source"], "site", "{d}");
        assert!((d["threshold"].as_f64().unwrap() - 0.4).abs() < 1e-6, "{d}");
    }
    let fin = lines.iter().find(|v| v["event"] == "final").unwrap();
    assert_eq!(fin["threshold_source"], "site", "{fin}");
    let v: serde_json::Value =
        serde_json::from_slice(&version(&site, &ranged).stdout).expect("version --json");
    assert_eq!(v["threshold_source"], "site", "{v}");
    assert_eq!(
        v["bundle"]["site_range"],
        serde_json::json!([0.3, 0.7]),
        "{v}"
    );
    // Outside the signed range: refused.
    let beyond = config(tmp.path(), "threshold = 0.9");
    let out = run(&beyond, &ranged, &frames);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outside the site range [0.3, 0.7]"), "{err}");
}

#[test]
fn decisions_status_and_version_name_the_software() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false, false, true, true, true]);
    let b = bundle(tmp.path(), None);
    let cfg = config(tmp.path(), "");
    let lines = run_ok(&cfg, &b, &frames);
    let d = decisions(&lines);
    assert!(!d.is_empty());
    let trace = &d[0]["trace"];
    let v: serde_json::Value =
        serde_json::from_slice(&version(&cfg, &b).stdout).expect("version --json");
    assert_eq!(trace["bundle_sha256"], v["bundle"]["sha256"], "{trace} {v}");
    assert_eq!(trace["signer"], v["bundle"]["signer"], "{trace} {v}");
    assert_eq!(trace["runtime"], env!("CARGO_PKG_VERSION"));
    assert_eq!(trace["git"], v["git"]);
    let git = v["git"].as_str().unwrap();
    assert!(
        git == "unknown" || (git.len() == 12 && git.chars().all(|c| c.is_ascii_hexdigit())),
        "{git}"
    );
    let hash = trace["config_sha256"].as_str().unwrap();
    assert_eq!(hash.len(), 64, "{trace}");
    // Every decision and the status carry the same trace.
    assert!(d.iter().all(|x| x["trace"] == *trace));
    let fin = lines.iter().find(|v| v["event"] == "final").unwrap();
    assert_eq!(fin["trace"], *trace, "{fin}");
    assert_eq!(fin["threshold_source"], "bundle");
    // The hash follows the effective settings: another window, another hash.
    let other = tmp.path().join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("window = 3", "window = 4"),
    )
    .unwrap();
    let w: serde_json::Value = serde_json::from_slice(&version(&other, &b).stdout).unwrap();
    assert_ne!(w["config_sha256"], v["config_sha256"]);
    assert_eq!(w["bundle"]["sha256"], v["bundle"]["sha256"]);
}

/// `diagnostics` packs what support needs and nothing that identifies a child.
#[test]
fn diagnostics_hold_no_patient_data() {
    const PATIENT: &str = "ZZPATIENT4711";
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    write_frames(&frames, &[false, true, true, true]);
    let b = bundle(tmp.path(), None);
    let cfg = tmp.path().join("edge.toml");
    let status_file = tmp.path().join("status.json");
    std::fs::write(
        &cfg,
        format!(
            "[aggregate]\nwindow = 3\nmin_frames = 2\nreport_every_s = 0.0\n\
             [output]\nstatus_every_s = 0.2\nstatus_file = {:?}\n\
             [journal]\nenabled = true\ndir = {:?}\n[session]\ndir = {:?}\n\
             [snapshot]\nenabled = true\ndir = {:?}\n",
            status_file.display().to_string(),
            tmp.path().join("journal").display().to_string(),
            tmp.path().join("sessions").display().to_string(),
            tmp.path().join("snaps").display().to_string(),
        ),
    )
    .unwrap();
    let out = run_edge(&run_args(
        &cfg,
        &b,
        &frames,
        &["--fps", "0", "--session", "--patient-id", PATIENT],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The status file holds the final status, whole.
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&status_file).unwrap()).unwrap();
    assert_eq!(st["kind"], "final", "{st}");
    assert!(st["trace"]["bundle_sha256"].is_string(), "{st}");

    let archive = tmp.path().join("diag.tar.gz");
    let out = Command::new(edge_bin())
        .args(["diagnostics", "--log-lines", "50", "--config"])
        .arg(&cfg)
        .arg("--bundle")
        .arg(&b)
        .arg("--trusted-keys")
        .arg(keys_of(&b))
        .arg("--out")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x = tmp.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    let ok = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut names: Vec<String> = std::fs::read_dir(&x)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "README.txt",
            "config.json",
            "disk.json",
            "exams.json",
            "log.txt",
            "status.json",
            "version.json"
        ]
    );
    for n in &names {
        let text = std::fs::read_to_string(x.join(n)).unwrap();
        assert!(!text.contains(PATIENT), "{n} holds the patient id");
    }
    let exams: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("exams.json")).unwrap()).unwrap();
    assert_eq!(exams["sessions"], 1, "{exams}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("version.json")).unwrap()).unwrap();
    assert!(v["bundle"]["sha256"].is_string(), "{v}");
    // The session store does hold it: the test would mean nothing otherwise.
    let held = std::fs::read_dir(tmp.path().join("sessions"))
        .unwrap()
        .filter_map(Result::ok)
        .any(|d| {
            std::fs::read_to_string(d.path().join("context.json"))
                .is_ok_and(|t| t.contains(PATIENT))
        });
    assert!(held);
}
