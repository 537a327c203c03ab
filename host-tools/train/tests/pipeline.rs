//! Stage 1 end to end on a small phantom set: split, extraction (cached), head, calibration,
//! export, then the exported model scored in tract on the held-out patients and reported.
//!
//! Needs the ImageNet weights, like `parity.rs`.

use evaluate::Prediction;
use train::extract::{self, Job};
use train::{HeadConfig, Split, TrainOptions};

mod common;

#[test]
fn stage1_trains_exports_and_evaluates() {
    let weights = common::weights();
    let dir = tempfile::tempdir().unwrap();
    let data = common::phantom(dir.path(), 96, 3);
    // The default recipe's backbone: the trunk up to the map its head reads.
    let backbone = common::backbone_for(dir.path(), &weights, train::extract::TAP);
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
        view_gate: true,
        tap: train::extract::TAP,
        pooling: train::extract::POOLING,
        // One augmented view per training image (opt-in), so that path is tested too.
        head_views: 1,
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
    // The head also learned from augmented views of every training kidney image.
    let train_kidneys = train::load(&opt.out.join("split.csv"))
        .unwrap()
        .iter()
        .filter(|x| x.split == Some(Split::Train) && x.is_kidney())
        .count();
    let log = std::fs::read_to_string(opt.out.join("train.log")).unwrap();
    let views = train_kidneys * opt.head_views as usize;
    assert!(
        views > 0
            && log.contains(&format!(
                "head training set: {train_kidneys} images + {views} augmented views"
            )),
        "{log}"
    );
    let m = contract::Manifest::draft_from_file(&opt.out.join("manifest.toml")).unwrap();
    assert_eq!(m.operating_point.threshold, s.threshold);
    assert_eq!(
        m.input.usimage_preprocess_version,
        usimage::PREPROCESS_VERSION
    );
    assert!(m.taxonomy().unwrap().is_standard());

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
    let paths: Vec<usimage::FrameRef> = test.iter().map(|x| x.frame_ref()).collect();
    let onnx = opt.out.join("model.onnx");
    let bytes = std::fs::read(&onnx).unwrap();
    let job = Job {
        model: &bytes,
        origin: &onnx,
        outputs: &["probs"],
        pool: None,
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
    let e =
        evaluate::evaluate(&m.taxonomy().unwrap(), &preds, m.operating_point.threshold).unwrap();
    assert!(e.overall.auc.is_finite());
    evaluate::write_report(&dir.path().join("report"), &e, "pipeline test").unwrap();
    assert!(dir.path().join("report/report.html").is_file());

    // Cross-validation of the same images (features all cached): every kidney image is
    // tested exactly once, and the report lists every fold.
    let cv_opt = TrainOptions {
        out: dir.path().join("cv"),
        ..opt.clone()
    };
    let cv = train::kfold::run(&cv_opt, 3, &backbone).expect("3-fold cross-validation");
    assert_eq!(cv.folds.len(), 3);
    assert_eq!(cv.folds.iter().map(|f| f.images[2]).sum::<usize>(), 96);
    assert_eq!(cv.pooled_n[0] + cv.pooled_n[1], 96);
    assert!(cv.pooled_auc.is_finite() && cv.auc.ci[0] <= cv.auc.ci[1]);
    let report = std::fs::read_to_string(cv_opt.out.join("cv-report.md")).unwrap();
    for i in 1..=3 {
        assert!(report.contains(&format!("\n| {i} | ")), "fold {i} row");
    }
    assert!(
        !cv_opt.out.join("model.onnx").exists(),
        "cross-validation ships no model"
    );
}
