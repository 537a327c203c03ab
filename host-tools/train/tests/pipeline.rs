//! Stage 1 end to end on a small phantom set: split, extraction (cached), head, calibration,
//! export, then the exported model scored in tract on the held-out patients and reported.
//!
//! Needs the ImageNet weights, like `parity.rs`.

use evaluate::Prediction;
use train::extract::{self, Job};
use train::{HeadConfig, Split, TrainOptions};

mod common;

/// burn draws initialisation and dropout from one process-wide generator: the two training
/// tests here hold this so that their "same seed, same model" checks cannot interleave.
static BURN_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The tests' stage-1 options: 20% validation and 20% test patients, a short linear head,
/// the default recipe's map, and one augmented view per training image (opt-in), so that
/// path is tested too.
fn options(dir: &std::path::Path, data: std::path::PathBuf) -> TrainOptions {
    TrainOptions {
        data,
        out: dir.join("run"),
        cache_dir: dir.join("cache"),
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
        head_views: 1,
        cell_head: None,
        cell_context: false,
    }
}

#[test]
fn stage1_trains_exports_and_evaluates() {
    let _burn = BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let weights = common::weights();
    let dir = tempfile::tempdir().unwrap();
    let data = common::phantom(dir.path(), 96, 3);
    // The default recipe's backbone: the trunk up to the map its head reads.
    let backbone = common::backbone_for(dir.path(), &weights, train::extract::TAP);
    let opt = options(dir.path(), data.clone());
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

    // Cross-validation of the same images (features all cached).
    cross_validates(&opt, dir.path(), &backbone);
}

/// 3-fold cross-validation of the 96 images `opt` trained on: every kidney image is tested
/// exactly once, the report lists every fold, and no model is shipped.
fn cross_validates(opt: &TrainOptions, dir: &std::path::Path, backbone: &std::path::Path) {
    let cv_opt = TrainOptions {
        out: dir.join("cv"),
        ..opt.clone()
    };
    let cv = train::kfold::run(&cv_opt, 3, backbone).expect("3-fold cross-validation");
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

/// `--head cells` end to end: layer-3 maps extracted once (views too), the cell head
/// trained, calibrated and exported; the file carries it (its activation maps are read from
/// it), a rerun reads every map from the cache and gives the same model, and the held-out
/// patients score through it.
#[test]
fn stage1_cell_head_trains_exports_and_reruns_from_the_cache() {
    let _burn = BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let weights = common::weights();
    let dir = tempfile::tempdir().unwrap();
    let data = common::phantom(dir.path(), 96, 3);
    let backbone = common::backbone_for(dir.path(), &weights, train::extract::TAP);
    let opt = TrainOptions {
        head: HeadConfig {
            max_epochs: 6,
            patience: 6,
            ..HeadConfig::default()
        },
        cell_head: Some(16),
        cell_context: false,
        ..options(dir.path(), data)
    };
    let s = train::train_stage1_cells(&opt, &weights, &backbone).expect("cell head");
    assert!(s.extract_images_per_s.is_some());
    assert!(matches!(&s.head, train::TrainedHead::Cells(c) if c.hidden.outputs == 16));
    let log = std::fs::read_to_string(opt.out.join("train.log")).unwrap();
    let train_kidneys = train::load(&opt.out.join("split.csv"))
        .unwrap()
        .iter()
        .filter(|x| x.split == Some(Split::Train) && x.is_kidney())
        .count();
    assert!(
        log.contains(&format!(
            "head training set: {train_kidneys} images + {train_kidneys} augmented views"
        )) && log.contains("view gate"),
        "{log}"
    );
    let m = contract::Manifest::draft_from_file(&opt.out.join("manifest.toml")).unwrap();
    assert_eq!(m.operating_point.threshold, s.threshold);
    let stage = m.training.stage.clone().unwrap_or_default();
    assert!(stage.contains("every cell"), "{stage}");
    assert!(m.view_gate.is_some());
    let onnx = opt.out.join("model.onnx");
    let cam = model::cam::HeadWeights::from_onnx(&onnx).expect("the cell head is readable");
    assert!(cam.is_per_cell() && cam.channels() == train::activations::CHANNELS);

    let again = train::train_stage1_cells(&opt, &weights, &backbone).expect("cached rerun");
    assert!(again.extract_images_per_s.is_none(), "all maps cached");
    assert_eq!(again.threshold, s.threshold, "same seed, same model");

    let test: Vec<usimage::FrameRef> = train::load(&opt.out.join("split.csv"))
        .unwrap()
        .into_iter()
        .filter(|x| x.split == Some(Split::Test))
        .map(|x| x.frame_ref())
        .collect();
    let bytes = std::fs::read(&onnx).unwrap();
    let job = Job {
        model: &bytes,
        origin: &onnx,
        outputs: &["probs", "kidney"],
        pool: None,
        threads: 2,
        label: "eval",
    };
    let r = extract::run(&test, &job, &|_| None, &mut |_, _| Ok(())).unwrap();
    for p in r {
        let p = p.expect("test image scores");
        let sum: f32 = p[..6].iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{p:?}");
    }

    // Cross-validation with the cell head.
    cross_validates(&opt, dir.path(), &backbone);
}
