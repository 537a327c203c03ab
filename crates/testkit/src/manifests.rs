//! The manifest text every test that reads manifests starts from (edit it with `replace`).

/// A complete manifest's text, as `renalscan bundle` writes it, for a model with sha256
/// `model_sha`; it ends with a table no runtime knows (forward compatibility).
pub fn sample(model_sha: &str) -> String {
    let preprocess_version = usimage::PREPROCESS_VERSION;
    format!(
        r#"labels = ["normal", "stone", "cyst", "hyperechogenicity", "sol", "hydronephrosis"]

[model]
name = "renalscan-resnet50"
version = "0.1.0"
file = "model.onnx"
sha256 = "{model_sha}"
precision = "float32"

[input]
name = "image"
shape = [1, 3, 224, 224]
usimage_preprocess_version = {preprocess_version}

[input.normalization]
order = "bgr"
mean = [103.939, 116.779, 123.68]
std = [1.0, 1.0, 1.0]

[operating_point]
threshold = 0.3138
target_sensitivity = 0.95

[calibration]
method = "temperature"
temperature = 2.2299

[training.counts.train]
normal = 236
stone = 180

[training.counts.test]
normal = 46
stone = 39

[training.data]
source = "synthetic"
description = "physics phantom"

[validation]
auc = 0.9420
accuracy = 0.8795
sensitivity = 0.9545
specificity = 0.6042

[intended_use]
purpose = "Screening aid."
warning = "Not for diagnosis."

[release]
counter = 1
product = "renalscan-pediatric-renal"

[some_future_table]
anything = [1, 2, 3]
"#
    )
}
