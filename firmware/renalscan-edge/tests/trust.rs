//! What runs is what was verified: a bundle's model file swapped after the signature and hash
//! checks must not be the model that classifies.

mod common;

use std::time::Instant;

use common::*;
use renalscan_edge::config::ModelForm;
use renalscan_edge::infer::Classifier;
use usimage::{Normalization, Preprocessor};

/// p(abnormal) of a dark (normal) frame.
fn p_dark(c: &mut Classifier) -> f32 {
    let mut pre = Preprocessor::new(224, Normalization::caffe_bgr());
    let mut t = vec![0.0; pre.output_len()];
    pre.process(&testkit::frames::frame(3, testkit::frames::DARK), &mut t)
        .unwrap();
    c.classify(&t).unwrap().p_abnormal
}

#[test]
fn a_model_swapped_after_verification_is_not_the_one_that_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_bundle(&tmp.path().join("bundle"), 0.5);
    let keys = bundle::TrustedKeys::from_path(&keys_of(&dir)).unwrap();
    let verified = bundle::Bundle::open(&dir, &keys).unwrap();
    // Between the check and the load, someone replaces the file with a valid model that
    // calls everything a cyst (no weight on the image, all bias).
    let other = testkit::tiny::classifier_with_bias(0.0, [0.0, -20.0, 20.0, -20.0, -20.0, -20.0]);
    std::fs::write(dir.join("model.onnx"), &other).unwrap();
    let mut running = Classifier::from_bundle(verified, ModelForm::Auto, None, Instant::now())
        .expect("the verified bytes load");
    assert!(
        p_dark(&mut running) < 0.1,
        "a dark frame must read normal: the verified model runs, not the swapped file"
    );
    // The swapped file itself is refused by any later check.
    let err = bundle::Bundle::open(&dir, &keys).unwrap_err();
    assert!(
        matches!(err, bundle::BundleError::HashMismatch { .. }),
        "{err}"
    );
}

/// A site-calibrated bundle (`renalscan calibrate`, then signed): the device rescales the
/// model's probabilities by the site temperature before deciding, and says so at load.
#[test]
fn a_site_calibrated_bundle_applies_its_temperature() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = write_bundle(&tmp.path().join("plain"), 0.5);
    let site = write_bundle_with(&tmp.path().join("site"), 0.5, |m| {
        m + r#"
[site_calibration]
site = "test clinic"
temperature = 3.0
target_sensitivity = 0.95
n_normal = 40
n_abnormal = 40
data = "site.csv"
from_bundle_sha256 = "00"
from_signer = "test"
from_threshold = 0.5
before = { auc = 0.9, accuracy = 0.8, sensitivity = 0.95, specificity = 0.5 }
after = { auc = 0.9, accuracy = 0.85, sensitivity = 0.95, specificity = 0.7 }
"#
    });
    let open = |b: &std::path::Path| {
        Classifier::open(b, Some(&keys_of(b)), ModelForm::Auto, None).expect("bundle opens")
    };
    let (mut a, mut b) = (open(&plain), open(&site));
    assert!(b.info().manifest.site_calibration.is_some());
    let mut pre = Preprocessor::new(224, Normalization::caffe_bgr());
    let mut t = vec![0.0; pre.output_len()];
    pre.process(&testkit::frames::frame(3, testkit::frames::DARK), &mut t)
        .unwrap();
    let raw = a.classify(&t).unwrap();
    let cal = b.classify(&t).unwrap();
    let mut expected = raw.probs[..raw.classes].to_vec();
    contract::manifest::apply_temperature(&mut expected, 3.0);
    for (e, c) in expected.iter().zip(&cal.probs[..cal.classes]) {
        assert!((e - c).abs() < 1e-6, "{expected:?} vs {:?}", cal.probs);
    }
    assert!((cal.p_abnormal - (1.0 - expected[0])).abs() < 1e-6);
    // A softer temperature pulls a confident normal towards the middle.
    assert!(
        cal.p_abnormal > raw.p_abnormal,
        "{} vs {}",
        cal.p_abnormal,
        raw.p_abnormal
    );
}
