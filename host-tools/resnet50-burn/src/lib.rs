//! Keras ResNet-50 v1 as a burn module: the network training runs on.
//!
//! Built from [`resnet50::ResNet50`] weights and convertible back to them, so a trained model
//! is exported by the same ONNX writer the pretrained backbone uses (no second description
//! of the network to drift). BatchNorm stays unfolded here because training may update it.

use burn::module::{Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use resnet50::{block_stride, BLOCKS, BN_EPSILON, FEATURE_CHANNELS, STAGE_CHANNELS};

/// A convolution followed by its BatchNorm, as Keras pairs them.
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution (with bias, as in Keras).
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub bn: BatchNorm,
}

/// A bottleneck block; the stride (if any) sits on `a`, the 1x1 reduction.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1 reduction.
    pub a: ConvBn,
    /// 3x3.
    pub b: ConvBn,
    /// 1x1 expansion.
    pub c: ConvBn,
    /// Projection shortcut where the shape changes.
    pub shortcut: Option<ConvBn>,
}

/// Everything up to the last feature map (`N x 2048 x 7 x 7` for 224 px input).
#[derive(Module, Debug)]
pub struct Backbone {
    /// 7x7/2 stem.
    pub stem: ConvBn,
    /// 3x3/2 max pool.
    pub pool: MaxPool2d,
    /// Stage 2 (`layer1`).
    pub layer1: Vec<Bottleneck>,
    /// Stage 3 (`layer2`).
    pub layer2: Vec<Bottleneck>,
    /// Stage 4 (`layer3`).
    pub layer3: Vec<Bottleneck>,
    /// Stage 5 (`layer4`), the part fine-tuning may train.
    pub layer4: Vec<Bottleneck>,
}

/// Backbone plus a replaceable linear head on globally average-pooled features.
#[derive(Module, Debug)]
pub struct ResNet50 {
    /// The convolutional feature extractor.
    pub backbone: Backbone,
    /// Classifier on pooled features: ImageNet's 1000 classes, or a renal head.
    pub head: Linear,
}

impl ConvBn {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }
}

impl Bottleneck {
    /// Applies the block.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = relu(self.a.forward(x.clone()));
        let y = relu(self.b.forward(y));
        let y = self.c.forward(y);
        let s = match &self.shortcut {
            Some(p) => p.forward(x),
            None => x,
        };
        relu(y + s)
    }
}

fn run_stage(blocks: &[Bottleneck], mut x: Tensor<4>) -> Tensor<4> {
    for b in blocks {
        x = b.forward(x);
    }
    x
}

impl Backbone {
    /// Stem through stage 4 (`layer3`): the cached input of layer4 fine-tuning.
    pub fn forward_to_layer3(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.pool.forward(relu(self.stem.forward(x)));
        let x = run_stage(&self.layer1, x);
        let x = run_stage(&self.layer2, x);
        run_stage(&self.layer3, x)
    }

    /// Stage 5 (`layer4`) on layer-3 activations.
    pub fn forward_layer4(&self, x: Tensor<4>) -> Tensor<4> {
        run_stage(&self.layer4, x)
    }

    /// The last feature map.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_layer4(self.forward_to_layer3(x))
    }
}

/// Global average pooling `N x C x H x W -> N x C`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([n, c])
}

impl ResNet50 {
    /// Last feature map and head output (logits) in one pass.
    pub fn forward_with_features(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<2>) {
        let f = self.backbone.forward(x);
        let logits = self.head.forward(global_avg_pool(f.clone()));
        (f, logits)
    }

    /// Head output (logits).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_with_features(x).1
    }

    /// Builds the network from plain weights, on `device`.
    pub fn from_weights(w: &resnet50::ResNet50, device: &Device) -> Self {
        let stage = |s: usize| -> Vec<Bottleneck> {
            w.stages[s].iter().map(|b| bottleneck(b, device)).collect()
        };
        Self {
            backbone: Backbone {
                stem: conv_bn(&w.conv1, &w.bn1, device),
                pool: MaxPool2dConfig::new([3, 3])
                    .with_strides([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(),
                layer1: stage(0),
                layer2: stage(1),
                layer3: stage(2),
                layer4: stage(3),
            },
            head: linear(&w.fc, device),
        }
    }

    /// Replaces the head with a freshly initialised one of `classes` outputs.
    pub fn with_new_head(mut self, classes: usize, device: &Device) -> Self {
        self.head = LinearConfig::new(FEATURE_CHANNELS, classes).init(device);
        self
    }

    /// Reads the current parameters back as plain weights (for export after training).
    pub fn to_weights(&self) -> resnet50::ResNet50 {
        let stage = |blocks: &[Bottleneck], s: usize| -> Vec<resnet50::Block> {
            blocks
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let stride = block_stride(s, i);
                    let (conv_a, bn_a) = read_conv_bn(&b.a, stride, 0);
                    let (conv_b, bn_b) = read_conv_bn(&b.b, 1, 1);
                    let (conv_c, bn_c) = read_conv_bn(&b.c, 1, 0);
                    resnet50::Block {
                        conv_a,
                        bn_a,
                        conv_b,
                        bn_b,
                        conv_c,
                        bn_c,
                        shortcut: b.shortcut.as_ref().map(|p| read_conv_bn(p, stride, 0)),
                    }
                })
                .collect()
        };
        let bb = &self.backbone;
        let (conv1, bn1) = read_conv_bn(&bb.stem, 2, 3);
        let weight = self.head.weight.val();
        let [inputs, outputs] = weight.dims();
        resnet50::ResNet50 {
            conv1,
            bn1,
            stages: vec![
                stage(&bb.layer1, 0),
                stage(&bb.layer2, 1),
                stage(&bb.layer3, 2),
                stage(&bb.layer4, 3),
            ],
            fc: resnet50::Dense {
                weight: to_vec(weight),
                inputs,
                outputs,
                bias: self
                    .head
                    .bias
                    .as_ref()
                    .map_or_else(|| vec![0.0; outputs], |b| to_vec(b.val())),
            },
        }
    }
}

/// Sanity check that the stage layout matches the published architecture.
pub fn check_layout(w: &resnet50::ResNet50) -> bool {
    w.stages.len() == BLOCKS.len()
        && w.stages.iter().zip(BLOCKS).all(|(s, n)| s.len() == n)
        && w.stages
            .iter()
            .zip(STAGE_CHANNELS)
            .all(|(s, c)| s.iter().all(|b| b.conv_c.shape[0] == c))
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    // The flex backend stores f32; a conversion failure would be a burn bug, not bad input.
    t.into_data()
        .try_into_vec::<f32>()
        .expect("float tensor holds f32 values")
}

fn tensor<const D: usize>(data: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
}

fn bottleneck(b: &resnet50::Block, device: &Device) -> Bottleneck {
    Bottleneck {
        a: conv_bn(&b.conv_a, &b.bn_a, device),
        b: conv_bn(&b.conv_b, &b.bn_b, device),
        c: conv_bn(&b.conv_c, &b.bn_c, device),
        shortcut: b.shortcut.as_ref().map(|(c, n)| conv_bn(c, n, device)),
    }
}

fn conv_bn(c: &resnet50::Conv, n: &resnet50::BatchNorm, device: &Device) -> ConvBn {
    let [o, i, kh, kw] = c.shape;
    let p = c.pad;
    let mut conv = Conv2dConfig::new([i, o], [kh, kw])
        .with_stride([c.stride, c.stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(true)
        .init(device);
    conv.weight = Param::from_tensor(tensor(&c.kernel, c.shape, device));
    conv.bias = Some(Param::from_tensor(tensor(&c.bias, [o], device)));
    let mut bn = BatchNormConfig::new(o)
        .with_epsilon(f64::from(n.eps))
        .init(device);
    bn.gamma = Param::from_tensor(tensor(&n.gamma, [o], device));
    bn.beta = Param::from_tensor(tensor(&n.beta, [o], device));
    bn.running_mean = RunningState::new(tensor(&n.mean, [o], device));
    bn.running_var = RunningState::new(tensor(&n.var, [o], device));
    ConvBn { conv, bn }
}

fn read_conv_bn(m: &ConvBn, stride: usize, pad: usize) -> (resnet50::Conv, resnet50::BatchNorm) {
    let w = m.conv.weight.val();
    let shape = w.dims();
    let bias = m
        .conv
        .bias
        .as_ref()
        .map_or_else(|| vec![0.0; shape[0]], |b| to_vec(b.val()));
    let eps = m.bn.epsilon as f32;
    debug_assert!((eps - BN_EPSILON).abs() < 1e-9 || eps > 0.0);
    (
        resnet50::Conv {
            kernel: to_vec(w),
            shape,
            bias,
            stride,
            pad,
        },
        resnet50::BatchNorm {
            gamma: to_vec(m.bn.gamma.val()),
            beta: to_vec(m.bn.beta.val()),
            mean: to_vec(m.bn.running_mean.value()),
            var: to_vec(m.bn.running_var.value()),
            eps,
        },
    )
}

fn linear(d: &resnet50::Dense, device: &Device) -> Linear {
    let mut l = LinearConfig::new(d.inputs, d.outputs).init(device);
    l.weight = Param::from_tensor(tensor(&d.weight, [d.inputs, d.outputs], device));
    l.bias = Some(Param::from_tensor(tensor(&d.bias, [d.outputs], device)));
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny random-weight network layout is too costly to build per test; check the
    /// conv+BN round trip on one layer instead.
    #[test]
    fn conv_bn_round_trips() {
        let device = Device::flex();
        let c = resnet50::Conv {
            kernel: (0..2 * 3 * 3 * 3).map(|v| v as f32 * 0.01).collect(),
            shape: [2, 3, 3, 3],
            bias: vec![0.5, -0.5],
            stride: 2,
            pad: 1,
        };
        let n = resnet50::BatchNorm {
            gamma: vec![1.0, 2.0],
            beta: vec![0.0, 1.0],
            mean: vec![0.1, 0.2],
            var: vec![1.0, 4.0],
            eps: BN_EPSILON,
        };
        let m = conv_bn(&c, &n, &device);
        let (c2, n2) = read_conv_bn(&m, 2, 1);
        assert_eq!(c, c2);
        assert_eq!(n, n2);
        // Inference path = conv then BN with running stats: check one output value.
        let x = Tensor::<4>::ones([1, 3, 4, 4], &device);
        let y = to_vec(m.forward(x));
        // Output pixel (0,0) of channel 0: padded 3x3 window sees a 2x2 block of ones per
        // input channel (rows/cols 1-2 of the kernel).
        let mut acc = 0.5f32;
        for ci in 0..3 {
            for kh in 1..3 {
                for kw in 1..3 {
                    acc += c.kernel[(ci * 3 + kh) * 3 + kw];
                }
            }
        }
        let expected = (acc - 0.1) / (1.0f32 + BN_EPSILON).sqrt();
        assert!((y[0] - expected).abs() < 1e-4, "{} vs {expected}", y[0]);
    }
}
