//! ResNet-50 weights by layer, converted from Keras layout, with BatchNorm folding.

use tfjs::LayersModel;

use crate::{block_id, block_stride, BLOCKS, BN_EPSILON, FEATURE_CHANNELS, STAGE_CHANNELS};

/// Why a set of tensors is not the expected network.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A tensor the topology needs is absent.
    #[error("weight {0} is missing: these are not Keras ResNet-50 v1 weights")]
    Missing(String),
    /// A tensor has an unexpected shape.
    #[error("weight {name} has shape {actual:?}, expected {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Shape found.
        actual: Vec<usize>,
        /// Shape required.
        expected: Vec<usize>,
    },
    /// The TF.js files could not be read.
    #[error(transparent)]
    Read(#[from] tfjs::TfjsError),
    /// The file's topology disagrees with ResNet-50 v1 (e.g. the stride sits on the 3x3).
    #[error("layer {layer}: {why}")]
    Topology {
        /// Layer name.
        layer: String,
        /// What disagrees.
        why: String,
    },
}

/// A convolution in ONNX/burn layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    /// Kernel, `[out, in, kh, kw]` row-major (OIHW).
    pub kernel: Vec<f32>,
    /// `[out, in, kh, kw]`.
    pub shape: [usize; 4],
    /// One bias per output channel.
    pub bias: Vec<f32>,
    /// Stride (same in both directions).
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

/// BatchNorm parameters and running statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// Scale.
    pub gamma: Vec<f32>,
    /// Shift.
    pub beta: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
    /// Numerical-stability epsilon.
    pub eps: f32,
}

/// A fully connected layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Weights, `[in, out]` row-major (Keras and burn layout).
    pub weight: Vec<f32>,
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// One bias per output.
    pub bias: Vec<f32>,
}

/// One bottleneck block: 1x1 -> 3x3 -> 1x1, plus a projection shortcut where shapes change.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// 1x1 reduction (carries the stride in v1).
    pub conv_a: Conv,
    /// BatchNorm after `conv_a`.
    pub bn_a: BatchNorm,
    /// 3x3.
    pub conv_b: Conv,
    /// BatchNorm after `conv_b`.
    pub bn_b: BatchNorm,
    /// 1x1 expansion.
    pub conv_c: Conv,
    /// BatchNorm after `conv_c`.
    pub bn_c: BatchNorm,
    /// Projection shortcut (first block of each stage).
    pub shortcut: Option<(Conv, BatchNorm)>,
}

/// The whole network: stem, four stages, ImageNet classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct ResNet50 {
    /// 7x7/2 stem convolution.
    pub conv1: Conv,
    /// Stem BatchNorm.
    pub bn1: BatchNorm,
    /// Stages 2-5 (`layer1`-`layer4`).
    pub stages: Vec<Vec<Block>>,
    /// ImageNet classifier (2048 -> 1000).
    pub fc: Dense,
}

impl BatchNorm {
    /// Per-channel `(scale, shift)` so that `bn(x) = scale * x + shift`.
    pub fn affine(&self) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> = self
            .gamma
            .iter()
            .zip(&self.var)
            .map(|(g, v)| g / (v + self.eps).sqrt())
            .collect();
        let shift = scale
            .iter()
            .zip(&self.mean)
            .zip(&self.beta)
            .map(|((s, m), b)| b - s * m)
            .collect();
        (scale, shift)
    }
}

impl Conv {
    /// This convolution followed by `bn`, as one convolution (inference only).
    pub fn fold(&self, bn: &BatchNorm) -> Conv {
        let (scale, shift) = bn.affine();
        let per_out = self.shape[1] * self.shape[2] * self.shape[3];
        let kernel = self
            .kernel
            .chunks_exact(per_out)
            .zip(&scale)
            .flat_map(|(k, s)| k.iter().map(move |w| w * s))
            .collect();
        let bias = self
            .bias
            .iter()
            .zip(scale.iter().zip(&shift))
            .map(|(b, (s, t))| b * s + t)
            .collect();
        Conv {
            kernel,
            shape: self.shape,
            bias,
            stride: self.stride,
            pad: self.pad,
        }
    }
}

/// Pulls tensors out of a TF.js model by Keras layer name, checking shapes and topology.
struct Reader<'a> {
    model: &'a LayersModel,
}

impl Reader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightsError> {
        let t = self
            .model
            .weights
            .get(name)
            .ok_or_else(|| WeightsError::Missing(name.to_string()))?;
        if t.shape != shape {
            return Err(WeightsError::Shape {
                name: name.to_string(),
                actual: t.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(t.data.clone())
    }

    /// Reads a Keras Conv2D (kernel HWIO) into OIHW, checking the topology's stride and
    /// padding against what ResNet-50 v1 requires.
    fn conv(
        &self,
        layer: &str,
        k: usize,
        cin: usize,
        cout: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Conv, WeightsError> {
        self.check_conv_topology(layer, k, stride)?;
        let hwio = self.tensor(&format!("{layer}/kernel"), &[k, k, cin, cout])?;
        let mut kernel = vec![0f32; hwio.len()];
        for h in 0..k {
            for w in 0..k {
                for i in 0..cin {
                    for o in 0..cout {
                        kernel[((o * cin + i) * k + h) * k + w] =
                            hwio[((h * k + w) * cin + i) * cout + o];
                    }
                }
            }
        }
        Ok(Conv {
            kernel,
            shape: [cout, cin, k, k],
            bias: self.tensor(&format!("{layer}/bias"), &[cout])?,
            stride,
            pad,
        })
    }

    fn check_conv_topology(
        &self,
        layer: &str,
        k: usize,
        stride: usize,
    ) -> Result<(), WeightsError> {
        let Some(l) = self.model.layer(layer) else {
            // Weights without topology (e.g. a bare manifest) cannot be cross-checked.
            return Ok(());
        };
        let topo = |why: String| WeightsError::Topology {
            layer: layer.to_string(),
            why,
        };
        let pair = |key: &str| -> Option<Vec<u64>> {
            l.config
                .get(key)?
                .as_array()?
                .iter()
                .map(|v| v.as_u64())
                .collect()
        };
        if let Some(s) = pair("strides") {
            if s != [stride as u64, stride as u64] {
                return Err(topo(format!(
                    "strides {s:?}, expected [{stride}, {stride}] (ResNet-50 v1 puts the stride on the 1x1 convolution)"
                )));
            }
        }
        if let Some(ks) = pair("kernel_size") {
            if ks != [k as u64, k as u64] {
                return Err(topo(format!("kernel_size {ks:?}, expected [{k}, {k}]")));
            }
        }
        if l.config.get("use_bias").and_then(|v| v.as_bool()) == Some(false) {
            return Err(topo(
                "has no bias; Keras ResNet-50 v1 convolutions do".into(),
            ));
        }
        Ok(())
    }

    fn bn(&self, layer: &str, c: usize) -> Result<BatchNorm, WeightsError> {
        let eps = self
            .model
            .layer(layer)
            .and_then(|l| l.config.get("epsilon"))
            .and_then(|v| v.as_f64())
            .map_or(BN_EPSILON, |e| e as f32);
        Ok(BatchNorm {
            gamma: self.tensor(&format!("{layer}/gamma"), &[c])?,
            beta: self.tensor(&format!("{layer}/beta"), &[c])?,
            mean: self.tensor(&format!("{layer}/moving_mean"), &[c])?,
            var: self.tensor(&format!("{layer}/moving_variance"), &[c])?,
            eps,
        })
    }
}

impl ResNet50 {
    /// Reads a TF.js layers model (`model.json` + shards) and builds the network from it.
    pub fn load_tfjs(model_json: &std::path::Path) -> Result<Self, WeightsError> {
        let model = tfjs::load(model_json)?;
        let net = Self::from_tfjs(&model)?;
        log::info!(
            "ResNet-50 v1 weights read from {} ({} values)",
            model_json.display(),
            net.parameter_count()
        );
        Ok(net)
    }

    /// Builds the network from a TF.js export of Keras `ResNet50(weights="imagenet")`.
    pub fn from_tfjs(model: &LayersModel) -> Result<Self, WeightsError> {
        let r = Reader { model };
        let conv1 = r.conv("conv1", 7, 3, 64, 2, 3)?;
        let bn1 = r.bn("bn_conv1", 64)?;
        let mut stages = Vec::with_capacity(4);
        let mut cin = 64;
        for (s, &n) in BLOCKS.iter().enumerate() {
            let cout = STAGE_CHANNELS[s];
            let width = cout / 4;
            let mut blocks = Vec::with_capacity(n);
            for b in 0..n {
                let id = block_id(s, b);
                let stride = block_stride(s, b);
                let conv = |branch: &str, k, ci, co, st, pad| {
                    r.conv(&format!("res{id}_branch{branch}"), k, ci, co, st, pad)
                };
                let bn = |branch: &str, c| r.bn(&format!("bn{id}_branch{branch}"), c);
                blocks.push(Block {
                    conv_a: conv("2a", 1, cin, width, stride, 0)?,
                    bn_a: bn("2a", width)?,
                    conv_b: conv("2b", 3, width, width, 1, 1)?,
                    bn_b: bn("2b", width)?,
                    conv_c: conv("2c", 1, width, cout, 1, 0)?,
                    bn_c: bn("2c", cout)?,
                    shortcut: if b == 0 {
                        Some((conv("1", 1, cin, cout, stride, 0)?, bn("1", cout)?))
                    } else {
                        None
                    },
                });
                cin = cout;
            }
            stages.push(blocks);
        }
        let fc = Dense {
            weight: r.tensor("fc1000/kernel", &[FEATURE_CHANNELS, 1000])?,
            inputs: FEATURE_CHANNELS,
            outputs: 1000,
            bias: r.tensor("fc1000/bias", &[1000])?,
        };
        Ok(Self {
            conv1,
            bn1,
            stages,
            fc,
        })
    }

    /// Number of values (weights, biases, BN statistics), comparable with Keras' count.
    pub fn parameter_count(&self) -> usize {
        let conv = |c: &Conv| c.kernel.len() + c.bias.len();
        let bn = |b: &BatchNorm| 4 * b.gamma.len();
        let mut n = conv(&self.conv1) + bn(&self.bn1) + self.fc.weight.len() + self.fc.bias.len();
        for b in self.stages.iter().flatten() {
            n += conv(&b.conv_a) + bn(&b.bn_a) + conv(&b.conv_b) + bn(&b.bn_b);
            n += conv(&b.conv_c) + bn(&b.bn_c);
            if let Some((c, n2)) = &b.shortcut {
                n += conv(c) + bn(n2);
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_matches_conv_then_bn() {
        // 1x1 conv, 2 in, 2 out, evaluated on one pixel.
        let conv = Conv {
            kernel: vec![1.0, 2.0, -1.0, 0.5],
            shape: [2, 2, 1, 1],
            bias: vec![0.1, -0.2],
            stride: 1,
            pad: 0,
        };
        let bn = BatchNorm {
            gamma: vec![2.0, 0.5],
            beta: vec![1.0, -1.0],
            mean: vec![0.3, 0.4],
            var: vec![4.0, 0.25],
            eps: 1e-3,
        };
        let x = [3.0f32, -1.0];
        let apply = |c: &Conv| -> Vec<f32> {
            (0..2)
                .map(|o| c.kernel[2 * o] * x[0] + c.kernel[2 * o + 1] * x[1] + c.bias[o])
                .collect()
        };
        let y = apply(&conv);
        let expected: Vec<f32> = (0..2)
            .map(|o| bn.gamma[o] * (y[o] - bn.mean[o]) / (bn.var[o] + bn.eps).sqrt() + bn.beta[o])
            .collect();
        let folded = apply(&conv.fold(&bn));
        for (a, b) in folded.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "{folded:?} vs {expected:?}");
        }
    }
}
