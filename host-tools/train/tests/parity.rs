//! The exported screening model is the trained one: burn (backbone + head, softmax) and
//! tract on the exported ONNX agree on probabilities within 1e-4.
//!
//! Needs the ImageNet weights (fetched once into `$RENALSCAN_CACHE` or
//! `<workspace>/models/cache`, as the end-to-end tests do).

use burn::prelude::*;
use model::Network;
use seeded::Rng;
use train::LinearHead;

const S: usize = train::extract::SIZE;

mod common;

#[test]
fn burn_and_tract_agree_on_exported_probs() {
    let mut weights = common::weights();

    // A head with logits of a few units, so the softmax is far from uniform.
    let mut rng = Rng::new(5);
    let head = LinearHead {
        weight: (0..2048 * 6)
            .map(|_| (rng.uniform() as f32 - 0.5) * 0.2)
            .collect(),
        bias: vec![0.3, -0.2, 0.1, 0.0, -0.1, 0.2],
        dim: 2048,
    };
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("model.onnx");
    train::export(&weights, resnet50::Tap::Layer4, &head, None, &onnx, "test").expect("export");
    let tract = Network::load(&onnx, &[1, 3, S, S]).expect("tract loads the export");
    assert_eq!(tract.output_names(), ["probs", "features"]);

    weights.fc = head.to_dense();
    let device = Device::flex();
    let net = resnet50_burn::ResNet50::from_weights(&weights, &device);
    drop(weights);

    let mut worst = 0f32;
    for seed in 0..2u64 {
        // A grey ultrasound-like input: speckle-ish noise, Caffe means subtracted.
        let mut r = Rng::new(seed);
        let grey: Vec<f32> = (0..S * S).map(|_| (r.uniform() * 200.0) as f32).collect();
        let means = [103.939f32, 116.779, 123.68];
        let input: Vec<f32> = means
            .iter()
            .flat_map(|m| grey.iter().map(move |g| g - m))
            .collect();
        let out = tract.run(&input).unwrap();
        let p_tract = &model::output(&out, "probs").unwrap().data;
        let x = Tensor::<4>::from_data(TensorData::new(input, [1, 3, S, S]), &device);
        let logits = net.forward(x).into_data().try_into_vec::<f32>().unwrap();
        let p_burn = model::softmax(&logits);
        let s: f32 = p_tract.iter().sum();
        assert!((s - 1.0).abs() < 1e-5, "probs sum {s}");
        let maxp = p_burn.iter().cloned().fold(0.0, f32::max);
        assert!(maxp > 0.3, "head should not be uniform: {p_burn:?}");
        for (a, b) in p_tract.iter().zip(&p_burn) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("max |p_tract - p_burn| = {worst:e}");
    assert!(worst <= 1e-4, "max |probability difference| {worst}");
}

/// A random head of `dim` inputs with logits of a few units.
fn random_head(seed: u64, dim: usize, scale: f32) -> LinearHead {
    let mut rng = Rng::new(seed);
    LinearHead {
        weight: (0..dim * 6)
            .map(|_| (rng.uniform() as f32 - 0.5) * scale)
            .collect(),
        bias: vec![0.1, -0.2, 0.0, 0.2, -0.1, 0.05],
        dim,
    }
}

/// The exported file's CAM head, a random input of `seed` and tract's outputs on it (the
/// file must have `probs` and `features`).
fn run_export(
    onnx: &std::path::Path,
    seed: u64,
) -> (model::cam::HeadWeights, Vec<f32>, Vec<model::Output>) {
    let tract = Network::load(onnx, &[1, 3, S, S]).expect("tract loads the export");
    assert_eq!(tract.output_names(), ["probs", "features"]);
    let cam = model::cam::HeadWeights::from_onnx(onnx).expect("CAM head of the export");
    let mut r = Rng::new(seed);
    let input: Vec<f32> = (0..3 * S * S)
        .map(|_| (r.uniform() * 200.0 - 110.0) as f32)
        .collect();
    let out = tract.run(&input).unwrap();
    (cam, input, out)
}

/// Runs the exported `onnx` on a random input and checks its probabilities against `head`
/// on the map that `backbone` (the extraction's file; the model itself when `None`) gives,
/// pooled as training pools it, and against the class-activation maps of its own map.
fn check_export(
    onnx: &std::path::Path,
    backbone: Option<&std::path::Path>,
    head: &LinearHead,
    channels: usize,
    side: usize,
    pooling: resnet50::Pooling,
) {
    let (cam, input, out) = run_export(onnx, 3);
    assert_eq!((cam.classes(), cam.channels()), (6, channels));
    let p_model = &model::output(&out, "probs").unwrap().data;
    let f = model::output(&out, "features").unwrap();
    assert_eq!(f.shape, [1, channels, side, side]);
    let extracted = backbone.map(|b| {
        let net = Network::load(b, &[1, 3, S, S]).expect("tract loads the backbone");
        model::output(&net.run(&input).unwrap(), "features")
            .unwrap()
            .data
            .clone()
    });
    let mut pooled = Vec::new();
    let map = extracted.as_deref().unwrap_or(&f.data);
    train::extract::pool_into(&mut pooled, map, channels, pooling);
    let p_train = model::softmax(&head.logits(&pooled));
    let z_maps: Vec<f32> = (0..6)
        .map(|k| cam.class_map(&f.data, &f.shape, k).unwrap().score())
        .collect();
    let p_maps = model::softmax(&z_maps);
    for ((a, b), m) in p_model.iter().zip(&p_train).zip(&p_maps) {
        assert!(
            (a - b).abs() < 1e-4,
            "model {p_model:?} vs head on training's pooled map {p_train:?}"
        );
        assert!((a - m).abs() < 1e-4, "model {p_model:?} vs maps {p_maps:?}");
    }
    let maxp = p_model.iter().cloned().fold(0.0, f32::max);
    assert!(maxp > 0.3, "head should not be uniform: {p_model:?}");
}

/// `--pooling avg-max`: the exported graph pools in the order training does (means, then
/// maxima), and the class-activation maps read back from the file still add up to its logits.
#[test]
fn avg_max_export_matches_training_pooling_and_its_maps() {
    let weights = common::weights();
    let c = resnet50::FEATURE_CHANNELS;
    let head = random_head(11, 2 * c, 0.1);
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("model.onnx");
    train::export(&weights, resnet50::Tap::Layer4, &head, None, &onnx, "test").expect("export");
    drop(weights);
    check_export(&onnx, None, &head, c, S / 32, resnet50::Pooling::AvgMax);
}

/// The default recipe's model ends at layer3: its probabilities are the trained head on the
/// pooled output of the layer-3 backbone file that extraction reads (one definition of the
/// features), and its class-activation maps (14 x 14) add up to its logits.
#[test]
fn layer3_export_reads_what_extraction_reads() {
    let weights = common::weights();
    let tap = resnet50::Tap::Layer3;
    let head = random_head(17, tap.channels(), 0.2);
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("model.onnx");
    train::export(&weights, tap, &head, None, &onnx, "test").expect("export");
    let trunk = common::backbone_for(dir.path(), &weights, tap);
    drop(weights);
    check_export(
        &onnx,
        Some(&trunk),
        &head,
        tap.channels(),
        tap.side(S),
        resnet50::Pooling::Avg,
    );
}

/// `--head cells` (with `--cell-context`, and without below): tract on the exported file gives
/// what the classifier's own arithmetic gives on the model's layer-3 map (so what training
/// computed), and the class-activation maps read back from the file add up to its logits.
#[test]
fn cell_head_export_matches_its_arithmetic_and_its_maps() {
    let weights = common::weights();
    let tap = resnet50::Tap::Layer3;
    let (c, hidden, side) = (tap.channels(), 16, tap.side(S));
    let mut rng = Rng::new(21);
    let mut dense = |inputs: usize, outputs: usize, scale: f32| resnet50::Dense {
        weight: (0..inputs * outputs)
            .map(|_| (rng.uniform() as f32 - 0.5) * scale)
            .collect(),
        inputs,
        outputs,
        bias: (0..outputs)
            .map(|_| (rng.uniform() as f32 - 0.5) * 0.2)
            .collect(),
    };
    let cells = resnet50::CellClassifier {
        hidden: dense(c, hidden, 0.1),
        out: dense(hidden, 6, 4.0),
        context: Some(dense(c, hidden, 0.3)),
        temperature: 1.7,
    };
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("model.onnx");
    train::export_classifier(
        &weights,
        tap,
        resnet50::Classifier::Cells(cells.clone()),
        None,
        &onnx,
        "test",
    )
    .expect("export");
    drop(weights);
    let (cam, _, out) = run_export(&onnx, 4);
    assert!(cam.is_per_cell());
    assert_eq!((cam.classes(), cam.channels()), (6, c));
    let p_model = &model::output(&out, "probs").unwrap().data;
    let f = model::output(&out, "features").unwrap();
    assert_eq!(f.shape, [1, c, side, side]);
    let z = cells.logits(&f.data, side * side).unwrap();
    let p_plain = model::softmax(&z);
    let z_cam = cam.logits(&f.data, &f.shape).unwrap();
    let z_maps: Vec<f32> = (0..6)
        .map(|k| cam.class_map(&f.data, &f.shape, k).unwrap().score())
        .collect();
    for k in 0..6 {
        assert!(
            (p_model[k] - p_plain[k]).abs() < 1e-4,
            "model {p_model:?} vs plain {p_plain:?}"
        );
        assert!(
            (z_cam[k] - z[k]).abs() < 1e-3,
            "CAM logits {z_cam:?} vs {z:?}"
        );
        assert!((z_maps[k] - z[k]).abs() < 1e-3, "maps {z_maps:?} vs {z:?}");
    }
    let maxp = p_model.iter().cloned().fold(0.0, f32::max);
    assert!(maxp > 0.3, "head should not be uniform: {p_model:?}");
    // The context counts: without it the same weights give other logits.
    let alone = resnet50::CellClassifier {
        context: None,
        ..cells.clone()
    };
    let z_alone = alone.logits(&f.data, side * side).unwrap();
    assert!(
        z.iter().zip(&z_alone).any(|(a, b)| (a - b).abs() > 0.1),
        "{z:?} vs {z_alone:?}"
    );

    // Cell logits in the thousands (exp overflows f32 above 88): the pooling stays finite.
    // Without a context, the head as exported before it.
    let loud = resnet50::CellClassifier {
        out: resnet50::Dense {
            weight: cells.out.weight.iter().map(|w| w * 1000.0).collect(),
            ..cells.out.clone()
        },
        context: None,
        ..cells
    };
    let weights = common::weights();
    train::export_classifier(
        &weights,
        tap,
        resnet50::Classifier::Cells(loud.clone()),
        None,
        &onnx,
        "test",
    )
    .expect("export");
    drop(weights);
    let (_, _, out) = run_export(&onnx, 4);
    let p = &model::output(&out, "probs").unwrap().data;
    let f = model::output(&out, "features").unwrap();
    let z = loud.logits(&f.data, side * side).unwrap();
    assert!(z.iter().any(|v| v.abs() > 200.0), "logits {z:?}");
    assert!(p.iter().all(|v| v.is_finite()), "{p:?}");
    for (a, b) in p.iter().zip(model::softmax(&z)) {
        assert!((a - b).abs() < 1e-4, "{p:?} vs {z:?}");
    }
}
