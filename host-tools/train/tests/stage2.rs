//! Stage 2 end to end on a tiny phantom set: stage 1, layer-3 activations with augmented
//! views, one epoch of layer4 + head, export; the exported file agrees with the trained
//! burn layers; `--resume` continues from the checkpoint exactly where an uninterrupted run
//! would be (warm-up and L2-SP included), and refuses changed settings.
//!
//! Needs the ImageNet weights, like `parity.rs`.

use std::path::Path;

use model::Network;
use train::finetune::{self, FinetuneError};
use train::{FinetuneConfig, HeadConfig, Stage2Options, TrainError, TrainOptions};
use usimage::{Normalization, Preprocessor};

const S: usize = train::extract::SIZE;

mod common;

fn options(data: &Path, out: &Path, cache: &Path, epochs: usize, resume: bool) -> Stage2Options {
    Stage2Options {
        base: TrainOptions {
            data: data.to_path_buf(),
            out: out.to_path_buf(),
            cache_dir: cache.to_path_buf(),
            val_fraction: 0.25,
            test_fraction: 0.15,
            target_sensitivity: 0.95,
            threads: 2,
            max_failed_pct: 5.0,
            head: HeadConfig {
                max_epochs: 20,
                patience: 10,
                ..HeadConfig::default()
            },
            backbone_name: "test".into(),
            view_gate: false,
            tap: resnet50::Tap::Layer4,
            pooling: train::extract::POOLING,
            head_views: train::extract::HEAD_VIEWS,
            cell_head: None,
            cell_context: false,
        },
        finetune: FinetuneConfig {
            epochs,
            views: 1,
            batch: 8,
            // Exercised here so that resuming is shown to repeat them exactly too; with
            // L2-SP on, a layer4 parameter whose start is not found fails the run.
            warmup_epochs: 0.5,
            l2sp: 100.0,
            ..FinetuneConfig::default()
        },
        resume,
    }
}

#[test]
fn stage2_trains_exports_resumes_and_refuses_changed_settings() {
    let weights = common::weights();
    let dir = tempfile::tempdir().unwrap();
    let data = common::phantom(dir.path(), 40, 4);
    let backbone = common::backbone(dir.path(), &weights);
    let cache = dir.path().join("cache");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));

    // Stage 2 fine-tunes layer4: a stage 1 that reads layer3 is refused before any work.
    let mut on_layer3 = options(&data, &a, &cache, 1, false);
    on_layer3.base.tap = resnet50::Tap::Layer3;
    let e = match train::train_stage2(&on_layer3, &weights, &backbone) {
        Ok(_) => panic!("stage 2 on a layer-3 stage 1 must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("--features-from layer4"), "{e}");
    assert!(!a.exists(), "nothing was written");

    // Run A: one epoch.
    let s = train::train_stage2(&options(&data, &a, &cache, 1, false), &weights, &backbone)
        .expect("stage 2");
    assert!(s.views_computed > 0);
    assert_eq!(s.stage2.history.len(), 1);
    // Epoch 0 is stage 1's head on the ImageNet layer4, read from the f16 activation cache:
    // it must score validation as stage 1's kept epoch did from its own features. (Not as
    // the temperature-scaled `validation`: a temperature on six classes can reorder
    // p(abnormal), and with one normal image in validation one pair is 0.07 of AUC.)
    let start = s.start_val_auc.expect("epoch 0 evaluated");
    let kept = &s.stage1.history[s.stage1.best_epoch - 1];
    assert_eq!(kept.epoch, s.stage1.best_epoch);
    assert!(
        (start - kept.val_auc).abs() <= 0.02,
        "epoch 0 {start} vs stage 1's epoch {} {}",
        kept.epoch,
        kept.val_auc
    );
    if s.stage2.best_epoch == 0 {
        assert_eq!(
            s.stage2.head, s.stage1.head,
            "no better epoch: stage 1's head kept"
        );
    } else {
        assert!(s.stage2.history[0].val_auc > start - 1e-9);
    }
    for f in [
        "model.onnx",
        "manifest.toml",
        "metrics.json",
        "train.log",
        "split.csv",
        "stage1/model.onnx",
    ] {
        assert!(a.join(f).is_file(), "{f}");
    }
    assert!(finetune::has_checkpoint(&a));
    let manifest = std::fs::read_to_string(a.join("manifest.toml")).unwrap();
    assert!(manifest.contains("stage = \"2:"), "{manifest}");
    assert!(manifest.contains("[training.finetune"), "{manifest}");

    // The exported file is the trained model: tract on model.onnx vs burn layer4 + head on
    // the layer-3 activations of the same input (tract, f32, not the f16 cache).
    let head: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("head.json")).unwrap()).unwrap();
    let t = head["temperature"].as_f64().unwrap() as f32;
    let img = data.join("normal");
    let first = std::fs::read_dir(&img)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .min()
        .unwrap();
    let mut pre = Preprocessor::new(S as u32, Normalization::caffe_bgr());
    let mut input = vec![0f32; 3 * S * S];
    train::extract::preprocess_bytes(
        &std::fs::read(&first).unwrap(),
        &usimage::FrameRef::first(&first),
        &mut pre,
        &mut input,
    )
    .unwrap();
    let short = &train::extract::file_sha256(&backbone).unwrap()[..16];
    let l3 = Network::load(&cache.join(format!("layer3-{short}.onnx")), &[1, 3, S, S]).unwrap();
    let act = l3.run(&input).unwrap();
    let act = &model::output(&act, train::activations::OUTPUT)
        .unwrap()
        .data;
    assert_eq!(act.len(), train::activations::LEN);
    let full = Network::load(&a.join("model.onnx"), &[1, 3, S, S]).unwrap();
    let p_tract = model::output(&full.run(&input).unwrap(), "probs")
        .unwrap()
        .data
        .clone();
    let p_burn = finetune::probs_from_layer3(&s.layer4, act, t).unwrap();
    let worst = p_tract
        .iter()
        .zip(&p_burn)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    eprintln!("stage 2 export: max |p_tract - p_burn| = {worst:e}");
    assert!(worst <= 1e-4, "{p_tract:?} vs {p_burn:?}");

    // Without --resume a run directory with checkpoints is refused.
    let e = train::train_stage2(&options(&data, &a, &cache, 2, false), &weights, &backbone)
        .unwrap_err();
    assert!(
        matches!(e, TrainError::Finetune(FinetuneError::NotResuming(_))),
        "{e}"
    );
    // Changed settings are refused.
    let mut changed = options(&data, &a, &cache, 2, true);
    changed.finetune.lr_layer4 = 3e-4;
    let e = train::train_stage2(&changed, &weights, &backbone).unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::Finetune(FinetuneError::ConfigMismatch { .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("lr_layer4"), "{e}");

    // Resume A to two epochs; B runs two epochs straight: same model.
    let r = train::train_stage2(&options(&data, &a, &cache, 2, true), &weights, &backbone)
        .expect("resume");
    assert_eq!(r.resumed_from, Some(1));
    assert_eq!(r.views_computed, 0, "activations come from the cache");
    assert_eq!(r.stage2.history.len(), 2);
    let straight = train::train_stage2(&options(&data, &b, &cache, 2, false), &weights, &backbone)
        .expect("straight");
    let (ha, hb) = (&r.stage2.history[1], &straight.stage2.history[1]);
    assert_eq!(
        ha.train_loss, hb.train_loss,
        "epoch 2 after resume = epoch 2 straight"
    );
    assert_eq!(ha.val_auc, hb.val_auc);
    assert_eq!(r.stage2.head, straight.stage2.head, "same final head");
}
