//! Reads TensorFlow.js layers models: `model.json` (Keras topology + `weightsManifest`) and
//! its binary weight shards, into named float tensors.
//!
//! The shards of a weight group are one byte stream cut into files; tensors follow each
//! other in manifest order, little-endian. We check every byte count before trusting any of
//! it, so a short or damaged shard is reported by file name instead of silently shifting
//! every later tensor.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a model could not be read. Messages name the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TfjsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `model.json` is not a TF.js layers model.
    #[error("{path} is not a TF.js layers model: {why}")]
    BadModelJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A shard has the wrong size.
    #[error(
        "weight shard {path} is {actual} bytes, expected {expected}: the file is truncated or \
         damaged; fetch the weights again"
    )]
    ShardSize {
        /// The shard.
        path: PathBuf,
        /// Its size.
        actual: u64,
        /// The size the manifest implies.
        expected: u64,
    },
    /// A shard holds non-finite numbers where weights should be.
    #[error(
        "weight shard {path} is corrupt: tensor {tensor} contains a non-finite value; fetch the \
         weights again"
    )]
    CorruptValues {
        /// The shard holding the first bad value.
        path: PathBuf,
        /// The tensor that contains it.
        tensor: String,
    },
    /// The manifest uses a feature we do not read (quantized or non-float weights).
    #[error("{path}: weight {tensor} has unsupported {what}")]
    Unsupported {
        /// The model.json file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The unsupported feature.
        what: String,
    },
}

/// A dense float tensor in the layout the file gives (Keras: conv kernels HWIO).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// Number of elements the shape implies.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// One Keras layer from the topology.
#[derive(Debug, Clone, Deserialize)]
pub struct Layer {
    /// Layer name, which prefixes its weight names (`conv1/kernel`).
    pub name: String,
    /// Keras class (`Conv2D`, `BatchNormalization`, ...).
    pub class_name: String,
    /// Layer configuration as Keras wrote it.
    pub config: serde_json::Value,
}

/// A loaded layers model.
#[derive(Debug, Clone)]
pub struct LayersModel {
    /// Layers in topology order.
    pub layers: Vec<Layer>,
    /// Weights by name (`res2a_branch2a/kernel`), in name order.
    pub weights: BTreeMap<String, Tensor>,
    /// Weight names in manifest order.
    pub order: Vec<String>,
}

impl LayersModel {
    /// The layer with this name, if any.
    pub fn layer(&self, name: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.name == name)
    }

    /// Total number of weight values.
    pub fn parameter_count(&self) -> usize {
        self.weights.values().map(Tensor::len).sum()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModelJson {
    format: Option<String>,
    model_topology: serde_json::Value,
    weights_manifest: Vec<WeightGroup>,
}

#[derive(Deserialize)]
struct WeightGroup {
    paths: Vec<String>,
    weights: Vec<WeightSpec>,
}

#[derive(Deserialize)]
struct WeightSpec {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    quantization: Option<serde_json::Value>,
}

/// Reads `model.json` and every shard it lists (paths relative to its directory).
pub fn load(model_json: &Path) -> Result<LayersModel, TfjsError> {
    let text = fs::read_to_string(model_json).map_err(|source| TfjsError::Io {
        path: model_json.to_path_buf(),
        source,
    })?;
    let bad = |why: String| TfjsError::BadModelJson {
        path: model_json.to_path_buf(),
        why,
    };
    let parsed: ModelJson = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if let Some(f) = &parsed.format {
        if f != "layers-model" {
            return Err(bad(format!("format is {f:?}, expected \"layers-model\"")));
        }
    }
    let layers = parse_layers(&parsed.model_topology).map_err(bad)?;
    let base = model_json.parent().unwrap_or(Path::new("."));
    let mut weights = BTreeMap::new();
    let mut order = Vec::new();
    for group in &parsed.weights_manifest {
        for (name, tensor) in read_group(model_json, base, group)? {
            order.push(name.clone());
            if weights.insert(name.clone(), tensor).is_some() {
                return Err(bad(format!("weight {name} appears twice")));
            }
        }
    }
    log::debug!(
        "read {} layers, {} weight tensors from {}",
        layers.len(),
        weights.len(),
        model_json.display()
    );
    Ok(LayersModel {
        layers,
        weights,
        order,
    })
}

/// Finds the layer list whether the topology is `{model_config: {config: {layers}}}` (Keras
/// 2.2 export) or `{config: {layers}}`.
fn parse_layers(topology: &serde_json::Value) -> Result<Vec<Layer>, String> {
    let cfg = topology.get("model_config").unwrap_or(topology);
    let layers = cfg
        .get("config")
        .and_then(|c| c.get("layers"))
        .ok_or("modelTopology has no config.layers")?;
    serde_json::from_value(layers.clone()).map_err(|e| format!("bad layer list: {e}"))
}

fn read_group(
    model_json: &Path,
    base: &Path,
    group: &WeightGroup,
) -> Result<Vec<(String, Tensor)>, TfjsError> {
    let mut needed: u64 = 0;
    for w in &group.weights {
        if w.dtype != "float32" {
            return Err(TfjsError::Unsupported {
                path: model_json.to_path_buf(),
                tensor: w.name.clone(),
                what: format!("dtype {}", w.dtype),
            });
        }
        if w.quantization.is_some() {
            return Err(TfjsError::Unsupported {
                path: model_json.to_path_buf(),
                tensor: w.name.clone(),
                what: "quantization".into(),
            });
        }
        needed += 4 * w.shape.iter().product::<usize>() as u64;
    }
    let paths: Vec<PathBuf> = group.paths.iter().map(|p| base.join(p)).collect();
    check_shard_sizes(&paths, needed)?;

    // Bytes of the group, with where each shard starts, to name the shard of a bad value.
    let mut bytes = Vec::with_capacity(needed as usize);
    let mut starts = Vec::with_capacity(paths.len());
    for p in &paths {
        starts.push(bytes.len());
        let chunk = fs::read(p).map_err(|source| TfjsError::Io {
            path: p.clone(),
            source,
        })?;
        bytes.extend_from_slice(&chunk);
    }
    if bytes.len() as u64 != needed {
        // Files changed under us between the size check and the read.
        return Err(TfjsError::ShardSize {
            path: paths.last().cloned().unwrap_or_default(),
            actual: bytes.len() as u64,
            expected: needed,
        });
    }
    let shard_of = |offset: usize| -> PathBuf {
        let i = starts.partition_point(|&s| s <= offset).saturating_sub(1);
        paths[i].clone()
    };

    let mut out = Vec::with_capacity(group.weights.len());
    let mut offset = 0usize;
    for w in &group.weights {
        let n: usize = w.shape.iter().product();
        let raw = &bytes[offset..offset + 4 * n];
        let data: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(TfjsError::CorruptValues {
                path: shard_of(offset + 4 * i),
                tensor: w.name.clone(),
            });
        }
        out.push((
            w.name.clone(),
            Tensor {
                shape: w.shape.clone(),
                data,
            },
        ));
        offset += 4 * n;
    }
    Ok(out)
}

/// The converter cuts a group into equal shards with a shorter last one; a shard that breaks
/// that pattern (or a missing one) is the culprit, so name it.
fn check_shard_sizes(paths: &[PathBuf], needed: u64) -> Result<(), TfjsError> {
    let mut sizes = Vec::with_capacity(paths.len());
    for p in paths {
        let meta = fs::metadata(p).map_err(|source| TfjsError::Io {
            path: p.clone(),
            source,
        })?;
        sizes.push(meta.len());
    }
    let total: u64 = sizes.iter().sum();
    if total == needed {
        return Ok(());
    }
    let Some(&first) = sizes.first() else {
        return Err(TfjsError::ShardSize {
            path: PathBuf::from("<no shards listed>"),
            actual: 0,
            expected: needed,
        });
    };
    // Expected per-shard sizes under the equal-shards rule, taking the most common size of
    // the non-last shards as the shard size (robust to the first shard being the bad one).
    let body = &sizes[..sizes.len() - 1];
    let shard = if body.is_empty() {
        needed
    } else {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for s in body {
            *counts.entry(*s).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|&(_, c)| c)
            .map(|(s, _)| s)
            .unwrap_or(first)
    };
    for (i, (p, &s)) in paths.iter().zip(&sizes).enumerate() {
        let is_last = i + 1 == paths.len();
        let expected = if is_last {
            needed.saturating_sub(shard * (paths.len() as u64 - 1))
        } else {
            shard
        };
        if s != expected {
            return Err(TfjsError::ShardSize {
                path: p.clone(),
                actual: s,
                expected,
            });
        }
    }
    Err(TfjsError::ShardSize {
        path: paths[paths.len() - 1].clone(),
        actual: total,
        expected: needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a model with two tensors (a: 2x3, b: 4) split over shards of `shard` bytes.
    fn write_model(dir: &Path, shard: usize) -> Vec<f32> {
        let values: Vec<f32> = (0..10).map(|i| i as f32 * 0.5 - 1.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut paths = Vec::new();
        for (i, chunk) in bytes.chunks(shard).enumerate() {
            let name = format!("shard{}.bin", i + 1);
            fs::write(dir.join(&name), chunk).unwrap();
            paths.push(name);
        }
        let json = serde_json::json!({
            "format": "layers-model",
            "modelTopology": {"model_config": {"class_name": "Model", "config": {"layers": [
                {"name": "a", "class_name": "Dense", "config": {"units": 3}},
            ]}}},
            "weightsManifest": [{"paths": paths, "weights": [
                {"name": "a/kernel", "shape": [2, 3], "dtype": "float32"},
                {"name": "a/bias", "shape": [4], "dtype": "float32"},
            ]}],
        });
        fs::write(dir.join("model.json"), json.to_string()).unwrap();
        values
    }

    #[test]
    fn reads_tensors_across_shards() {
        let tmp = tempfile::tempdir().unwrap();
        let values = write_model(tmp.path(), 12);
        let m = load(&tmp.path().join("model.json")).unwrap();
        assert_eq!(m.order, ["a/kernel", "a/bias"]);
        assert_eq!(m.weights["a/kernel"].shape, [2, 3]);
        assert_eq!(m.weights["a/kernel"].data, values[..6]);
        assert_eq!(m.weights["a/bias"].data, values[6..]);
        assert_eq!(m.parameter_count(), 10);
        assert_eq!(m.layer("a").unwrap().class_name, "Dense");
    }

    #[test]
    fn short_middle_shard_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        write_model(tmp.path(), 12); // shards of 12, 12, 12, 4 bytes
        fs::write(tmp.path().join("shard2.bin"), [0u8; 7]).unwrap();
        let err = load(&tmp.path().join("model.json")).unwrap_err();
        match err {
            TfjsError::ShardSize {
                path,
                actual,
                expected,
            } => {
                assert!(path.ends_with("shard2.bin"), "{path:?}");
                assert_eq!((actual, expected), (7, 12));
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn missing_shard_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        write_model(tmp.path(), 12);
        fs::remove_file(tmp.path().join("shard4.bin")).unwrap();
        let err = load(&tmp.path().join("model.json")).unwrap_err();
        assert!(err.to_string().contains("shard4.bin"), "{err}");
    }

    #[test]
    fn nan_in_shard_is_reported_with_tensor_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_model(tmp.path(), 12);
        // Shard 3 holds values 6..=8, the start of the bias; poison its second value.
        let mut b = fs::read(tmp.path().join("shard3.bin")).unwrap();
        b[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        fs::write(tmp.path().join("shard3.bin"), b).unwrap();
        let err = load(&tmp.path().join("model.json")).unwrap_err();
        match err {
            TfjsError::CorruptValues { path, tensor } => {
                assert!(path.ends_with("shard3.bin"));
                assert_eq!(tensor, "a/bias");
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn not_json_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("model.json"), "<html>").unwrap();
        let err = load(&tmp.path().join("model.json")).unwrap_err();
        assert!(matches!(err, TfjsError::BadModelJson { .. }));
    }
}
