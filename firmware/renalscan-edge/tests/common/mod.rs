//! Test fixtures: a tiny ONNX model with the real model's interface, bundles, and replay
//! frames whose brightness decides what the tiny model says.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use usimage::synthetic::{screen, FanShape};
use usimage::{GreyFrame, Normalization, Preprocessor};

/// The runtime binary under test.
pub fn edge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_renalscan-edge"))
}

/// Labels in the real model's order.
pub const LABELS: [&str; 6] = [
    "normal",
    "stone",
    "cyst",
    "hyperechogenicity",
    "sol",
    "hydronephrosis",
];

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

/// A tiny classifier with the real interface (`image` 1x3x224x224 -> `probs` 1x6 and
/// `features` 1x3x7x7): p(cyst) = sigmoid(k * (m - c)) where m is the mean of the first
/// input channel, every other abnormal class is negligible. So bright frames are abnormal
/// (cyst) and dark ones normal, with the split at `c`.
pub fn tiny_model(k: f32, c: f32) -> Vec<u8> {
    let mut w = vec![0.0f32; 3 * 6];
    w[2] = k; // row 0 (channel 0) -> column 2 (cyst)
    let b = [0.0, -20.0, -k * c, -20.0, -20.0, -20.0];
    let graph = GraphProto {
        name: "tiny".into(),
        node: vec![
            node(
                "AveragePool",
                &["image"],
                "features",
                vec![ints("kernel_shape", &[32, 32]), ints("strides", &[32, 32])],
            ),
            node("GlobalAveragePool", &["features"], "pooled", vec![]),
            node("Flatten", &["pooled"], "flat", vec![int("axis", 1)]),
            node("Gemm", &["flat", "w", "b"], "logits", vec![]),
            node("Softmax", &["logits"], "probs", vec![int("axis", 1)]),
        ],
        initializer: vec![tensor("w", &[3, 6], &w), tensor("b", &[6], &b)],
        input: vec![value_info("image", &[1, 3, 224, 224])],
        output: vec![
            value_info("probs", &[1, 6]),
            value_info("features", &[1, 3, 7, 7]),
        ],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "renalscan-edge tests".into(),
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// A synthetic scan (sector with speckle, text around it) with the tissue scaled by `gain`.
pub fn frame(seed: u32, gain: f32) -> GreyFrame {
    let shape = FanShape::Sector {
        apex_x: 320.0,
        apex_y: -40.0,
        half_angle: 0.6,
        r0: 80.0,
        r1: 460.0,
    };
    let mut boxes = Vec::new();
    let f = screen(640, 480, shape, seed, &mut boxes);
    let (w, h) = (f.width(), f.height());
    let px: Vec<u8> = f
        .grey()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (x, y) = ((i as u32 % w) as f32 + 0.5, (i as u32 / w) as f32 + 0.5);
            if shape.contains(x, y) {
                (f32::from(v) * gain).clamp(1.0, 255.0) as u8
            } else {
                v
            }
        })
        .collect();
    GreyFrame::from_grey(w, h, px).expect("frame")
}

/// Mean of the model's first input channel for a frame (what the tiny model looks at).
pub fn channel0_mean(f: &GreyFrame) -> f32 {
    let mut pre = Preprocessor::new(224, Normalization::caffe_bgr());
    let mut t = vec![0.0; pre.output_len()];
    let info = pre.process(f, &mut t).expect("preprocess");
    assert!(!info.area.no_anatomy, "synthetic frame has no anatomy");
    let plane = 224 * 224;
    t[..plane].iter().sum::<f32>() / plane as f32
}

/// Dark tissue (normal for the tiny model).
pub const DARK: f32 = 0.6;
/// Bright tissue (abnormal).
pub const BRIGHT: f32 = 1.8;

/// (k, c) placing the tiny model's split halfway between dark and bright frames.
pub fn split() -> (f32, f32) {
    let d = channel0_mean(&frame(1, DARK));
    let b = channel0_mean(&frame(1, BRIGHT));
    assert!(b > d + 2.0, "bright {b} vs dark {d}");
    (8.0 / (b - d), (b + d) / 2.0)
}

/// Writes replay frames: `pattern[i]` true = bright (abnormal), false = dark (normal).
pub fn write_frames(dir: &Path, pattern: &[bool]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, &bright) in pattern.iter().enumerate() {
        let f = frame(i as u32 + 1, if bright { BRIGHT } else { DARK });
        image::GrayImage::from_raw(f.width(), f.height(), f.grey().to_vec())
            .unwrap()
            .save(dir.join(format!("frame_{i:05}.png")))
            .unwrap();
    }
}

/// Writes a signed bundle with the tiny model: `<dir>` holds model.onnx, manifest.toml and
/// manifest.sig; the public key goes to [`keys_of`]`(dir)`.
pub fn write_bundle(dir: &Path, threshold: f32) -> PathBuf {
    write_bundle_with(dir, threshold, |m| m)
}

/// [`write_bundle`] with the manifest text edited before signing.
pub fn write_bundle_with(dir: &Path, threshold: f32, edit: impl Fn(String) -> String) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let (k, c) = split();
    let onnx = tiny_model(k, c);
    std::fs::write(dir.join("model.onnx"), &onnx).unwrap();
    let labels: Vec<String> = LABELS.iter().map(|l| format!("{l:?}")).collect();
    let manifest = format!(
        r#"labels = [{labels}]

[model]
name = "tiny-test"
version = "0.0.1"
file = "model.onnx"
sha256 = "{sha}"

[input]
name = "image"
shape = [1, 3, 224, 224]
usimage_preprocess_version = {pv}

[input.normalization]
order = "bgr"
mean = [103.939, 116.779, 123.68]
std = [1.0, 1.0, 1.0]

[operating_point]
threshold = {threshold}
target_sensitivity = 0.95

[calibration]
temperature = 1.0

[training.counts.train]
normal = 1
cyst = 1

[training.data]
source = "synthetic"
description = "renalscan-edge test fixture: a brightness rule, not a trained model"

[validation]
auc = 0.5
accuracy = 0.5
sensitivity = 0.5
specificity = 0.5

[intended_use]
purpose = "Tests of the edge runtime."
warning = "Not for diagnosis."
"#,
        labels = labels.join(", "),
        sha = model::bundle::sha256_hex(&onnx),
        pv = usimage::PREPROCESS_VERSION
    );
    std::fs::write(dir.join("manifest.toml"), edit(manifest)).unwrap();
    let key = model::bundle::SecretKey::generate("renalscan-edge-test").unwrap();
    model::bundle::sign_bundle(dir, &key).unwrap();
    let keys = keys_of(dir);
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("test.pub"), key.public().to_file_text()).unwrap();
    dir.to_path_buf()
}

/// The trusted-keys directory written beside a test bundle.
pub fn keys_of(bundle: &Path) -> PathBuf {
    let name = bundle.file_name().unwrap().to_string_lossy().to_string();
    bundle.with_file_name(format!("{name}-keys"))
}

/// `run --config <cfg> --bundle <bundle> --trusted-keys <its keys> --replay <frames>`,
/// then `extra`.
pub fn run_args(cfg: &Path, bundle: &Path, frames: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["run".into(), "--config".into()];
    v.push(cfg.display().to_string());
    v.push("--bundle".into());
    v.push(bundle.display().to_string());
    v.push("--trusted-keys".into());
    v.push(keys_of(bundle).display().to_string());
    v.push("--replay".into());
    v.push(frames.display().to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Runs the runtime to completion.
pub fn run_edge(args: &[String]) -> std::process::Output {
    Command::new(edge_bin()).args(args).output().unwrap()
}

/// Starts the runtime with `args`, stdout piped.
pub fn spawn_edge(args: &[String]) -> Child {
    Command::new(edge_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn renalscan-edge")
}

/// JSON lines of an output, parsed (non-JSON lines are skipped).
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Decisions among JSON lines.
pub fn decisions(lines: &[serde_json::Value]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter(|v| v["event"] == "decision")
        .cloned()
        .collect()
}
