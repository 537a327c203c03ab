//! The pretrained backbone end to end: npm weights -> burn model and ONNX -> tract.
//!
//! Proves that the burn network training will use and the ONNX network the device will run
//! are the same network, and that both are the real ImageNet model (known photos give their
//! known classes). Photos: the test material's `photos/` (Debian darknet samples, MIT;
//! fetched by `renalscan fetch-fixtures`); reference classes in `docs/test-material.md`.

use burn::prelude::*;
use e2e::{fixtures, weights_and_onnx};
use model::Network;
use resnet50::{INPUT_SIZE, KERAS_PARAMETERS};
use usimage::Normalization;

const S: usize = INPUT_SIZE;

#[test]
fn burn_and_tract_agree_on_imagenet_photos() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, onnx) = weights_and_onnx(dir.path(), S);
    assert_eq!(weights.parameter_count(), KERAS_PARAMETERS);
    let tract = Network::load(&onnx, &[1, 3, S, S]).expect("tract loads the export");
    assert_eq!(tract.output_names(), ["logits", "features"]);

    let device = Device::flex();
    let burn_net = resnet50_burn::ResNet50::from_weights(&weights, &device);
    drop(weights);

    let norm = Normalization::caffe_bgr();
    // (photo, expected top-1 class); None = parity only (the giraffe photo also shows zebras).
    let photos = [
        ("dog.jpg", Some(249)),
        ("eagle.jpg", Some(22)),
        ("giraffe.jpg", None),
    ];
    let mut worst = 0f32;
    for (name, expected) in photos {
        let input = usimage::photo_tensor(&fixtures().join("photos").join(name), S as u32, &norm)
            .expect("photo decodes");

        let out = tract.run(&input).unwrap();
        let features = model::output(&out, "features").unwrap();
        assert_eq!(features.shape, [1, 2048, 7, 7]);
        let p_tract = model::softmax(&model::output(&out, "logits").unwrap().data);

        let x = Tensor::<4>::from_data(TensorData::new(input, [1, 3, S, S]), &device);
        let logits = burn_net
            .forward(x)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let p_burn = model::softmax(&logits);

        let top_tract = model::top_k(&p_tract, 1)[0];
        let top_burn = model::top_k(&p_burn, 1)[0];
        assert_eq!(
            top_tract, top_burn,
            "{name}: tract and burn disagree on top-1"
        );
        if let Some(class) = expected {
            assert_eq!(
                top_tract, class,
                "{name}: wrong ImageNet class (p={})",
                p_tract[top_tract]
            );
            // Not a coin toss: the winner clearly beats the runner-up (probabilities
            // themselves depend on the JPEG decoder and resize filter, so no exact value).
            let second = model::top_k(&p_tract, 2)[1];
            assert!(
                p_tract[class] >= 1.5 * p_tract[second],
                "{name}: weak prediction {} vs {} for class {second}",
                p_tract[class],
                p_tract[second]
            );
        }
        let diff = p_tract
            .iter()
            .zip(&p_burn)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{name}: top-1 {top_tract} p={:.4}, max |p_tract - p_burn| = {diff:.2e}",
            p_tract[top_tract]
        );
        worst = worst.max(diff);
    }
    assert!(
        worst <= 1e-3,
        "max probability difference {worst} exceeds 1e-3"
    );
}

#[test]
fn export_has_dynamic_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, onnx) = weights_and_onnx(dir.path(), S);
    drop(weights);
    let net = Network::load(&onnx, &[2, 3, S, S]).expect("batch 2 accepted");
    // Two different images in one batch must give two different rows.
    let mut input = vec![0f32; 2 * 3 * S * S];
    for (i, v) in input.iter_mut().enumerate().skip(3 * S * S) {
        *v = ((i % 251) as f32) - 120.0;
    }
    let out = net.run(&input).unwrap();
    let logits = model::output(&out, "logits").unwrap();
    assert_eq!(logits.shape, [2, 1000]);
    assert_eq!(
        model::output(&out, "features").unwrap().shape,
        [2, 2048, 7, 7]
    );
    assert_ne!(logits.data[..1000], logits.data[1000..]);
}
