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
