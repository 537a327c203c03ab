//! The manifest's whole life on a tiny model: the draft `renalscan train` writes, completed
//! and signed as `renalscan bundle` does, opened by the device. Every field the trainer wrote
//! and the bundle step added must reach the device unchanged: one type, written once, read
//! once (`contract::Manifest`).

use std::collections::BTreeMap;

use bundle::assemble::{self, Release};
use contract::manifest::{DataKind, Manifest, Precision};
use renalscan_edge::config::ModelForm;
use renalscan_edge::infer::Classifier;
use train::{HeadConfig, LinearHead, RunSummary, Stage, TrainOptions, TrainedHead};

fn run_summary() -> RunSummary {
    let mut counts = BTreeMap::new();
    for (split, n) in [("train", 40), ("val", 10), ("test", 10)] {
        let per_class = contract::LABELS
            .iter()
            .map(|l| (l.to_string(), n))
            .collect();
        counts.insert(split.to_string(), per_class);
    }
    RunSummary {
        counts,
        skipped: 0,
        extract_s: 1.0,
        extract_images_per_s: None,
        head_s: 0.5,
        total_s: 2.0,
        best_epoch: 17,
        temperature: 1.8731,
        val_ece_before: 0.081,
        val_ece_after: 0.032,
        threshold: 0.3742,
        validation: evaluate::Overall {
            n: 60,
            n_normal: 10,
            n_abnormal: 50,
            auc: 0.931,
            auc_ci: [0.88, 0.98],
            accuracy: 0.9,
            sensitivity: 0.96,
            specificity: 0.6,
            threshold: 0.3742,
            accuracy_6class: 0.71,
            ece: 0.032,
        },
        history: Vec::new(),
        head: TrainedHead::Linear(LinearHead {
            weight: Vec::new(),
            bias: Vec::new(),
            dim: 0,
        }),
        view_gate: Some(contract::manifest::ViewGate {
            kidney_output: "kidney".into(),
            kidney_threshold: 0.12,
            ood_output: "ood".into(),
            ood_threshold: 2.5,
            rule: "test".into(),
            negatives: "none".into(),
            validation: contract::manifest::ViewGateMetrics {
                n_kidney: 10,
                n_other: 5,
                kidney_pass: 1.0,
                other_gated: 0.8,
                other_gated_learned: 0.6,
                other_gated_ood: 0.4,
            },
        }),
    }
}

#[test]
fn train_draft_bundle_and_device_agree_on_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let (k, c) = testkit::frames::split();
    let model = testkit::tiny::classifier_with_gate(k, c, testkit::frames::gate());
    std::fs::write(run.join("model.onnx"), &model).unwrap();

    // train: the draft, written as a run writes it.
    let opt = TrainOptions {
        data: dir.path().join("data"),
        out: run.clone(),
        cache_dir: dir.path().join("cache"),
        val_fraction: 0.15,
        test_fraction: 0.15,
        target_sensitivity: 0.95,
        threads: 1,
        max_failed_pct: 5.0,
        head: HeadConfig::default(),
        backbone_name: "tiny test backbone".into(),
        view_gate: false,
        tap: train::extract::TAP,
        pooling: train::extract::POOLING,
        head_views: train::extract::HEAD_VIEWS,
        cell_head: None,
        cell_context: false,
    };
    let draft = train::draft_manifest(
        &opt,
        &run_summary(),
        &bundle::sha256_hex(&model),
        &"b".repeat(64),
        Stage::One,
    )
    .unwrap();
    train::pipeline::write_manifest(&run, &draft).unwrap();
    let read_back = Manifest::draft_from_file(&run.join("manifest.toml")).unwrap();
    assert_eq!(read_back, draft, "the draft survives its own file");
    assert!(draft.training.head.is_some() && draft.backbone.is_some());
    assert_eq!(draft.training.best_epoch, Some(17));

    // bundle: completed and signed as `renalscan bundle` does.
    let release = Release {
        model_sha256: bundle::sha256_hex(&model),
        precision: Precision::Float32,
        data_source: Some(DataKind::Synthetic),
        data_description: Some("tiny test set".into()),
        quant_report: None,
        evaluations: Vec::new(),
        site_range: None,
        counter: 3,
        min_runtime: None,
    };
    let completed = assemble::complete(read_back, &release, &run.join("manifest.toml")).unwrap();
    let key = bundle::SecretKey::generate("roundtrip").unwrap();
    let out = dir.path().join("bundle");
    let signed = assemble::write(&out, &model, completed.clone(), &[], &key).unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("k.pub"), key.public().to_file_text()).unwrap();

    // device: what the runtime opens is what train wrote plus what the bundle step added.
    let device = Classifier::open(&out, Some(&keys), ModelForm::Auto, None).unwrap();
    let seen = &device.info().manifest;
    let mut expected = completed;
    expected.card = signed.manifest().card.clone();
    assert_eq!(seen, &expected);
    // And field by field against the draft, for what the bundle step does not touch.
    assert_eq!(seen.labels, draft.labels);
    assert_eq!(seen.input, draft.input);
    assert_eq!(seen.outputs, draft.outputs);
    assert_eq!(seen.operating_point, draft.operating_point);
    assert_eq!(seen.calibration, draft.calibration);
    assert_eq!(seen.backbone, draft.backbone);
    assert_eq!(seen.view_gate, draft.view_gate);
    assert_eq!(seen.validation, draft.validation);
    assert_eq!(seen.intended_use, draft.intended_use);
    assert_eq!(seen.training.head, draft.training.head);
    assert_eq!(seen.training.counts, draft.training.counts);
    assert_eq!(seen.training.best_epoch, draft.training.best_epoch);
    assert_eq!(seen.model.name, draft.model.name);
    assert_eq!(seen.model.created_unix, draft.model.created_unix);
    assert_eq!(
        seen.training.data.as_ref().map(|d| d.source),
        Some(DataKind::Synthetic)
    );
    // The runtime's working copy follows the manifest.
    let info = device.info();
    assert_eq!(info.threshold, draft.operating_point.threshold as f32);
    assert_eq!(info.labels, draft.labels);
    assert_eq!(info.normal_index, 0);
    assert_eq!(info.signer, key.public().key_id());
}
