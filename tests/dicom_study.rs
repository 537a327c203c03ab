//! A clinic's DICOM as training data, on real scanner files: the five ultrasound DICOM
//! objects of the test material (Philips, GE, SonoSite cine, Sonoque; JPEG lossless and
//! baseline, palette colour, RGB, YBR) laid out as an export folder with a made-up labels
//! CSV, plus what such folders also hold (a note, a truncated copy), go through ingestion
//! and stage-1 training (view gate included) without error. Every file is accounted for,
//! patients are hashed and the hashes are stable.
//!
//! Fixtures: the test material's `ultrasound/dicom` (pydicom-data, MIT; itk-pocus,
//! Apache-2.0; provenance in `docs/test-material.md`), fetched on first use.

use std::fs;
use std::path::Path;

use train::studies::{self, FrameChoice, Status};
use train::{HeadConfig, TrainOptions};

/// The real files, their SOP Instance UIDs (`-` where the file has none) and PatientIDs.
const FILES: [(&str, &str, &str); 5] = [
    (
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
        "1.2.826.0.1.3680043.2.1143.7710860250658251928326281926167748476",
        "",
    ),
    (
        "OBXXXX1A.dcm",
        "1.3.46.670589.14.1000.210.2.199999.20110525185628.1.0",
        "11-05-25-142825",
    ),
    (
        "US1_UNCR.dcm",
        "1.3.6.1.4.1.5962.1.1.13.1.1.20040826185059.5457",
        "13US1",
    ),
    (
        "color3d_jpeg_baseline.dcm",
        "1.2.840.114340.3.8251017118051.3.20160503.121539.16117.4",
        "204",
    ),
    ("sonoque_anechoic-3mm-3mm.dcm", "-", "--"),
];

fn copy_study(dir: &Path) {
    let src = e2e::fixtures().join("ultrasound/dicom");
    assert!(
        src.is_dir(),
        "{} is missing: the real DICOM test material must be beside the checkout",
        src.display()
    );
    for (i, (name, _, _)) in FILES.iter().enumerate() {
        let exam = dir.join(format!("exam{}", 1 + i / 2));
        fs::create_dir_all(&exam).unwrap();
        fs::copy(src.join(name), exam.join(name)).unwrap();
    }
    fs::write(dir.join("README.txt"), "exported from the cart\n").unwrap();
    let whole = fs::read(src.join(FILES[2].0)).unwrap();
    fs::write(dir.join("exam3/cut-short.dcm"), &whole[..600]).unwrap();
}

// Made-up labels: keyed by UID or path; the cine split into frame ranges with two labels
// (its last frames in validation, which the run warns about: one patient in two splits).
const LABELS: &str = "path,sop_instance_uid,label,split,frames
,1.2.826.0.1.3680043.2.1143.7710860250658251928326281926167748476,normal,val,
exam1/OBXXXX1A.dcm,,hydronephrosis,train,
,1.3.6.1.4.1.5962.1.1.13.1.1.20040826185059.5457,cyst,val,
,1.2.840.114340.3.8251017118051.3.20160503.121539.16117.4,normal,train,0-19
exam2/color3d_jpeg_baseline.dcm,,hydronephrosis,train,60-79
exam2/color3d_jpeg_baseline.dcm,,hydronephrosis,val,100-109
exam3/sonoque_anechoic-3mm-3mm.dcm,,stone,val,
exam3/cut-short.dcm,,normal,train,
exam4/not-exported.dcm,,normal,,
";

#[test]
fn real_dicom_folder_trains_with_hashed_stable_patients() {
    let d = tempfile::tempdir().unwrap();
    let study = d.path().join("study");
    copy_study(&study);
    let labels = d.path().join("labels.csv");
    fs::write(&labels, LABELS).unwrap();
    let run = d.path().join("run");
    // The rows' frame ranges override the default choice.
    let every = FrameChoice::Every(4);
    let (manifest, ing) = studies::prepare(&study, &labels, &every, &run).expect("ingest");

    let status = |item: &str| -> Vec<Status> {
        ing.entries
            .iter()
            .filter(|e| e.item == item)
            .map(|e| e.status)
            .collect()
    };
    for (i, (name, _, _)) in FILES.iter().enumerate() {
        let item = format!("exam{}/{name}", 1 + i / 2);
        assert_eq!(status(&item), [Status::Used], "{item}: {:?}", ing.entries);
    }
    assert_eq!(status("README.txt"), [Status::NotDicom]);
    assert_eq!(status("exam3/cut-short.dcm"), [Status::Unreadable]);
    assert_eq!(status("exam4/not-exported.dcm"), [Status::LabelWithoutFile]);
    // Four single frames and the 50 cine frames its rows name.
    assert_eq!(ing.samples.len(), 54);
    let report = fs::read_to_string(run.join("dicom-ingest.csv")).unwrap();
    assert_eq!(report.lines().count(), 1 + ing.entries.len());

    // Patients: one-way keys of PatientID, stable across runs and machines; files without a
    // usable PatientID are their own patient.
    let patient_of = |name: &str| {
        let p: Vec<&str> = ing
            .samples
            .iter()
            .filter(|s| s.path.ends_with(name))
            .map(|s| s.patient.as_str())
            .collect();
        assert!(
            !p.is_empty() && p.iter().all(|x| *x == p[0]),
            "{name}: {p:?}"
        );
        p[0].to_string()
    };
    assert_eq!(patient_of("OBXXXX1A.dcm"), "p-418c52a4ad013124");
    assert_eq!(patient_of("US1_UNCR.dcm"), "p-c509d8598e7df337");
    assert_eq!(
        patient_of("color3d_jpeg_baseline.dcm"),
        "p-a67ab9c5fe786230"
    );
    assert!(patient_of(FILES[0].0).starts_with("f-"));
    assert!(patient_of(FILES[4].0).starts_with("f-"));
    let again = studies::ingest(&study, &labels, &every).unwrap();
    assert_eq!(again.samples, ing.samples, "a second ingest is identical");

    let (weights, backbone) = e2e::weights_and_onnx(d.path(), train::extract::SIZE);
    let opt = TrainOptions {
        data: manifest,
        out: run.clone(),
        cache_dir: d.path().join("cache"),
        val_fraction: 0.15,
        test_fraction: 0.15,
        target_sensitivity: 0.95,
        threads: 2,
        max_failed_pct: 5.0,
        head: HeadConfig {
            max_epochs: 30,
            patience: 10,
            ..HeadConfig::default()
        },
        backbone_name: "test".into(),
        view_gate: true,
        tap: resnet50::Tap::Layer4,
        pooling: train::extract::POOLING,
        head_views: train::extract::HEAD_VIEWS,
        cell_head: None,
        cell_context: false,
    };
    let s = train::train_stage1(&opt, &weights, &backbone).expect("train on the DICOM folder");
    assert_eq!(s.skipped, 0, "every ingested frame decodes");
    assert!(s.view_gate.is_some(), "the gate is fitted by default");
    assert!(run.join("model.onnx").is_file());

    // Nothing the run wrote names a patient.
    for e in fs::read_dir(&run).unwrap().flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue; // binary: the model
        };
        for (_, _, id) in FILES.iter().filter(|f| f.2.len() > 3) {
            assert!(
                !text.contains(id),
                "{} holds PatientID {id}",
                e.path().display()
            );
        }
    }
}
