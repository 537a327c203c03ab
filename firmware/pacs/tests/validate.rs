//! Every object the crate writes, checked by other people's validators: `dciodvfy`
//! (dicom3tools) on the Secondary Capture and the SR, and `dsrdump` (dcmtk) on the SR's tree.
//! Both come with `scripts/setup.sh`; missing, the test fails and says so.

use std::process::Command;

use pacs::{exam_objects, sample, Equipment, ExamInput, Kind};

fn tool(name: &str) -> String {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "{name} is not installed: run scripts/setup.sh");
    name.to_string()
}

#[test]
fn secondary_capture_and_sr_pass_dciodvfy_and_the_sr_tree_dumps() {
    let session = sample::session();
    let ctx = sample::context();
    let frames = vec![(14, sample::key_frame())];
    let eq = Equipment::renalscan("cart-07", "0.1.0");
    let made = exam_objects(&ExamInput {
        session: &session,
        context: Some(&ctx),
        key_frames: &frames,
        equipment: &eq,
        source: None,
        now_ms: 1_796_000_100_000,
    })
    .unwrap();
    assert_eq!(
        made.iter().map(|m| m.kind).collect::<Vec<_>>(),
        [Kind::SecondaryCapture, Kind::StructuredReport]
    );
    let dir = tempfile::tempdir().unwrap();
    for m in &made {
        let path = dir.path().join(format!("{:?}.dcm", m.kind));
        std::fs::write(&path, &m.bytes).unwrap();
        let out = Command::new(tool("dciodvfy")).arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
        assert!(errors.is_empty(), "{:?}: dciodvfy errors:\n{text}", m.kind);
        let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("Warning")).collect();
        eprintln!(
            "{:?}: dciodvfy clean, {} warnings:\n{}",
            m.kind,
            warnings.len(),
            warnings.join("\n")
        );
        if m.kind == Kind::StructuredReport {
            let out = Command::new(tool("dsrdump"))
                .args(["+Pu", "+Pl"])
                .arg(&path)
                .output()
                .unwrap();
            let tree = String::from_utf8_lossy(&out.stdout);
            let diag = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "dsrdump: {diag}");
            // dcmtk's VR checker has no UTF-8 (ISO_IR 192) support: its one warning; no other.
            let other: Vec<&str> = diag
                .lines()
                .filter(|l| !l.is_empty() && !l.contains("ISO_IR 192"))
                .collect();
            assert!(other.is_empty(), "dsrdump diagnostics: {other:?}");
            for want in [
                "Imaging Measurement Report",
                "UNVERIFIED",
                "Kidney",
                "Left",
                "Hydronephrosis",
                "Normal",
                "Abnormal",
                "renal-resnet50",
                "1.2.0",
                "0.910000",
                &made[0].sop_instance_uid,
            ] {
                assert!(
                    tree.contains(want),
                    "{want} missing from the SR tree:\n{tree}"
                );
            }
            eprintln!("{tree}");
        }
    }
}
