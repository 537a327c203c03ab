//! Which engine computes stage 2's frozen layers 1-3 faster: tract on the truncated ONNX
//! export, or burn (flex) `forward_to_layer3`. Same input, alternating runs, one thread of
//! work each; prints median seconds per image and the largest activation difference.
//!
//! `cargo run --release -p train --example layer3_engines -- <model.json> [runs]`

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use model::Network;
use resnet50::ResNet50;

const S: usize = train::extract::SIZE;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let json = PathBuf::from(
        args.next()
            .ok_or("usage: layer3_engines <model.json> [runs]")?,
    );
    let runs: usize = args.next().map_or(Ok(7), |s| s.parse())?;
    let weights = ResNet50::load_tfjs(&json)?;
    let dir = std::env::temp_dir().join("renalscan-layer3-bench");
    std::fs::create_dir_all(&dir)?;
    let onnx = dir.join("layer3.onnx");
    train::activations::write_layer3_onnx(&weights, &onnx)?;
    let tract = Network::load(&onnx, &[1, 3, S, S])?;
    let device = Device::flex();
    let burn = resnet50_burn::ResNet50::from_weights(&weights, &device);
    let mut rng = seeded::Rng::new(1);
    let input: Vec<f32> = (0..3 * S * S)
        .map(|_| (rng.uniform() * 200.0 - 100.0) as f32)
        .collect();
    let (mut t_tract, mut t_burn, mut worst) = (Vec::new(), Vec::new(), 0f32);
    for _ in 0..runs {
        let t = Instant::now();
        let a = tract.run(&input)?;
        t_tract.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let x = Tensor::<4>::from_data(TensorData::new(input.clone(), [1, 3, S, S]), &device);
        let b = burn
            .backbone
            .forward_to_layer3(x)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        t_burn.push(t.elapsed().as_secs_f64());
        let a = &model::output(&a, train::activations::OUTPUT)
            .ok_or("no layer3 output")?
            .data;
        worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(worst, f32::max);
    }
    println!(
        "layer 1-3, median of {runs}: tract {:.3} s/image, burn flex {:.3} s/image; max |diff| {worst:e}",
        median(t_tract),
        median(t_burn)
    );
    Ok(())
}
