//! Signed bundles around test models: the manifest a test bundle carries, signed by a fresh
//! key whose public half lands in a trusted-keys directory beside the bundle.

use std::path::{Path, PathBuf};

/// The complete manifest of a test bundle for a model with sha256 `model_sha` and this
/// operating threshold, as text (so a test can edit it before signing).
pub fn manifest_text(model_sha: &str, threshold: f32) -> String {
    crate::manifests::sample(model_sha)
        .replace("threshold = 0.3138", &format!("threshold = {threshold}"))
}

/// Writes a signed bundle holding `model` into `dir` (model.onnx, manifest.toml,
/// manifest.sig); the public key goes to [`keys_of`]`(dir)`. Returns `dir`.
pub fn write_bundle(dir: &Path, model: &[u8], threshold: f32) -> PathBuf {
    write_bundle_with(dir, model, threshold, |m| m)
}

/// [`write_bundle`] with the manifest text edited before signing.
pub fn write_bundle_with(
    dir: &Path,
    model: &[u8],
    threshold: f32,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    std::fs::create_dir_all(dir).expect("bundle dir");
    std::fs::write(dir.join(bundle::MODEL_FILE), model).expect("write model");
    let text = edit(manifest_text(&bundle::sha256_hex(model), threshold));
    std::fs::write(dir.join(bundle::MANIFEST_FILE), text).expect("write manifest");
    let key = bundle::SecretKey::generate("renalscan-test").expect("key");
    bundle::sign_bundle(dir, &key).expect("sign test bundle");
    let keys = keys_of(dir);
    std::fs::create_dir_all(&keys).expect("keys dir");
    std::fs::write(keys.join("test.pub"), key.public().to_file_text()).expect("write key");
    dir.to_path_buf()
}

/// The trusted-keys directory written beside a test bundle.
pub fn keys_of(bundle: &Path) -> PathBuf {
    let name = bundle
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "bundle".into());
    bundle.with_file_name(format!("{name}-keys"))
}
