//! Stage 2: layer4 + head fine-tuned in burn on cached layer-3 activations, with per-epoch
//! checkpoints (weights and AdamW state) that `--resume` continues from.
//!
//! layer4's BatchNorms are folded into its convolutions with their ImageNet running
//! statistics ("frozen BN"): a CPU batch of 16 gives batch statistics too noisy to replace
//! statistics learnt on ImageNet, and the folded block is cheaper. The scale and shift stay
//! trainable through the convolution weights and biases; the export writes identity
//! BatchNorms, so the one ONNX writer serves both stages.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, Param, ParamId};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use serde::{Deserialize, Serialize};

use crate::activations::{ActivationCache, CHANNELS, LEN, SIDE};
use crate::extract::{self, ExtractError};
use crate::head::{self, Epoch, Features, LinearHead};
use seeded::Rng;

const K: usize = contract::LABELS.len();
const WEIGHTS_MAGIC: &[u8; 8] = b"RSL4W001";

/// Errors of stage 2.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// File system.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A checkpoint that cannot be used.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// `--resume` with different settings than the checkpointed run.
    #[error(
        "cannot resume: the checkpoint in {path} was made with different settings ({diff}); \
         rerun with the same settings, or choose another --out"
    )]
    ConfigMismatch {
        /// The checkpoint directory.
        path: String,
        /// Differing keys with both values.
        diff: String,
    },
    /// A run directory with checkpoints but no `--resume`.
    #[error(
        "{0} holds stage-2 checkpoints: pass --resume to continue from them, or choose another --out"
    )]
    NotResuming(String),
    /// Activation cache.
    #[error(transparent)]
    Extract(#[from] ExtractError),
    /// Bad input.
    #[error("{0}")]
    Data(String),
    /// A tensor could not be read back.
    #[error("reading tensor: {0}")]
    Tensor(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FinetuneError + '_ {
    move |source| FinetuneError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Hyper-parameters of stage 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneConfig {
    /// Upper bound on epochs (may be raised on `--resume`).
    pub epochs: usize,
    /// Stop after this many epochs without a better validation AUC.
    pub patience: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// AdamW learning rate of layer4 (low: it starts from ImageNet weights; on the phantom
    /// set 1e-4 dropped validation AUC to 0.864 after one epoch, 1e-5 kept 0.921).
    pub lr_layer4: f64,
    /// AdamW learning rate of the head (it starts from the stage-1 head).
    pub lr_head: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Dropout on the pooled features.
    pub dropout: f64,
    /// Augmented views per training image besides the original; each epoch draws one of
    /// the `views + 1` per image, so an epoch costs the same whatever `views` is.
    pub views: u32,
    /// Seed for augmentation, view choice, shuffling and dropout.
    pub seed: u64,
    /// How both learning rates move over the planned `epochs` after the warm-up. This and
    /// the next two settings are left out of the serialised settings at their defaults, so
    /// runs and checkpoints from before they existed keep their identity.
    #[serde(default, skip_serializing_if = "LrSchedule::is_constant")]
    pub schedule: LrSchedule,
    /// Both learning rates rise linearly from zero over this many epochs (fractions allowed)
    /// at the start, so the first steps do not shake the stage-1 head with layer4's
    /// still-random Adam moments.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_epochs: f64,
    /// L2-SP: after each step layer4 moves `lr * l2sp` of the way back to its starting
    /// (ImageNet) weights, decoupled from Adam's normalisation like AdamW's decay, so a
    /// small data set cannot carry layer4 far from what ImageNet taught it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub l2sp: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Learning-rate schedule of stage 2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// The learning rates stay at their set values.
    #[default]
    Constant,
    /// Half a cosine from the set values down to zero at the end of the last planned epoch,
    /// so the kept weights come from small steps rather than the noisiest ones.
    Cosine,
}

impl LrSchedule {
    fn is_constant(&self) -> bool {
        *self == Self::Constant
    }
}

/// Multiplier of both learning rates at 0-based global `step` of a run of `cfg.epochs`
/// epochs of `steps_per_epoch` steps: the warm-up ramp, then the schedule.
pub fn lr_factor(cfg: &FinetuneConfig, step: u64, steps_per_epoch: u64) -> f64 {
    let s = step as f64;
    let warm = cfg.warmup_epochs.max(0.0) * steps_per_epoch as f64;
    if s < warm {
        return ((s + 1.0) / warm).min(1.0);
    }
    match cfg.schedule {
        LrSchedule::Constant => 1.0,
        LrSchedule::Cosine => {
            let total = (cfg.epochs as u64 * steps_per_epoch) as f64;
            let p = if total > warm {
                ((s - warm) / (total - warm)).clamp(0.0, 1.0)
            } else {
                1.0
            };
            0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }
}

/// The starting value of every layer4 parameter, flattened, by parameter id (the ids are
/// fixed, so a resumed run's module finds them too).
struct StartWeights(std::collections::HashMap<ParamId, Tensor<1>>);

impl burn::module::ModuleVisitor for StartWeights {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // The inner (non-autodiff) value: a constant, never part of a graph.
        let v = param.val().inner();
        let n = v.shape().num_elements();
        self.0.insert(param.id, v.reshape([n]));
    }
}

/// One decoupled L2-SP step: `w <- w - k (w - w0)` on every parameter with a start value.
struct PullToStart<'a> {
    start: &'a StartWeights,
    k: f64,
    /// Parameters met without a start value: a pull that silently skipped them would train
    /// as if L2-SP were off (the ids of the live net and the start must match).
    missed: usize,
}

impl<'a> PullToStart<'a> {
    fn new(start: &'a StartWeights, k: f64) -> Self {
        Self {
            start,
            k,
            missed: 0,
        }
    }
}

impl burn::module::ModuleMapper for PullToStart<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, t, mapper) = param.consume();
        let t = match self.start.0.get(&id) {
            Some(w0) => {
                let grad = t.is_require_grad();
                let w = t.inner();
                let shape = w.shape();
                let pulled =
                    Tensor::from_inner(w.clone() - (w - w0.clone().reshape(shape)) * self.k);
                if grad {
                    pulled.require_grad()
                } else {
                    pulled
                }
            }
            None => {
                self.missed += 1;
                t
            }
        };
        Param::from_mapped_value(id, t, mapper)
    }
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            epochs: 2,
            patience: 3,
            batch: 16,
            lr_layer4: 1e-5,
            lr_head: 1e-4,
            weight_decay: 1e-2,
            dropout: 0.3,
            views: 2,
            seed: 1,
            schedule: LrSchedule::Constant,
            warmup_epochs: 0.0,
            l2sp: 0.0,
        }
    }
}

/// layer4 (BatchNorm folded, identity BatchNorm recorded) and the head, as plain numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer4Weights {
    /// The three bottleneck blocks.
    pub blocks: Vec<resnet50::Block>,
    /// Linear head on the pooled features (2048 averages, then 2048 maxima if it is that
    /// wide).
    pub head: LinearHead,
}

fn identity_bn(c: usize) -> resnet50::BatchNorm {
    let eps = resnet50::BN_EPSILON;
    resnet50::BatchNorm {
        gamma: vec![1.0; c],
        beta: vec![0.0; c],
        mean: vec![0.0; c],
        var: vec![1.0 - eps; c],
        eps,
    }
}

fn folded(c: &resnet50::Conv, bn: &resnet50::BatchNorm) -> (resnet50::Conv, resnet50::BatchNorm) {
    (c.fold(bn), identity_bn(c.shape[0]))
}

impl Layer4Weights {
    /// layer4 of `backbone` with its BatchNorms folded, plus `head`.
    pub fn new(backbone: &resnet50::ResNet50, head: LinearHead) -> Result<Self, FinetuneError> {
        let stage = backbone
            .stages
            .get(3)
            .ok_or_else(|| FinetuneError::Data("the backbone has no layer4".into()))?;
        let blocks = stage
            .iter()
            .map(|b| {
                let (conv_a, bn_a) = folded(&b.conv_a, &b.bn_a);
                let (conv_b, bn_b) = folded(&b.conv_b, &b.bn_b);
                let (conv_c, bn_c) = folded(&b.conv_c, &b.bn_c);
                resnet50::Block {
                    conv_a,
                    bn_a,
                    conv_b,
                    bn_b,
                    conv_c,
                    bn_c,
                    shortcut: b.shortcut.as_ref().map(|(c, n)| folded(c, n)),
                }
            })
            .collect();
        let c = resnet50::FEATURE_CHANNELS;
        if resnet50::Pooling::for_width(head.dim, c).is_none() || head.weight.len() != head.dim * K
        {
            return Err(FinetuneError::Data(format!(
                "head takes {} inputs, layer4 pooled gives {c} or {}",
                head.dim,
                2 * c
            )));
        }
        Ok(Self { blocks, head })
    }

    /// `backbone` with this layer4 (and `head` as its classifier): what gets exported.
    pub fn into_backbone(&self, backbone: &resnet50::ResNet50) -> resnet50::ResNet50 {
        let mut w = backbone.clone();
        w.stages[3] = self.blocks.clone();
        w.fc = self.head.to_dense();
        w
    }

    fn convs(&self) -> Vec<&resnet50::Conv> {
        self.blocks
            .iter()
            .flat_map(|b| {
                [&b.conv_a, &b.conv_b, &b.conv_c]
                    .into_iter()
                    .chain(b.shortcut.as_ref().map(|(c, _)| c))
            })
            .collect()
    }

    fn convs_mut(&mut self) -> Vec<&mut resnet50::Conv> {
        self.blocks
            .iter_mut()
            .flat_map(|b| {
                [&mut b.conv_a, &mut b.conv_b, &mut b.conv_c]
                    .into_iter()
                    .chain(b.shortcut.as_mut().map(|(c, _)| c))
            })
            .collect()
    }

    /// Every trainable number, in a fixed order (checkpoint files).
    fn flat(&self) -> Vec<f32> {
        let mut v = Vec::new();
        for c in self.convs() {
            v.extend_from_slice(&c.kernel);
            v.extend_from_slice(&c.bias);
        }
        v.extend_from_slice(&self.head.weight);
        v.extend_from_slice(&self.head.bias);
        v
    }

    /// Inverse of [`Self::flat`] into a copy of `self`'s layout.
    fn with_flat(&self, v: &[f32]) -> Option<Self> {
        let mut w = self.clone();
        let mut at = 0usize;
        let mut take = |dst: &mut Vec<f32>| -> Option<()> {
            let src = v.get(at..at + dst.len())?;
            dst.copy_from_slice(src);
            at += dst.len();
            Some(())
        };
        for c in w.convs_mut() {
            take(&mut c.kernel)?;
            take(&mut c.bias)?;
        }
        take(&mut w.head.weight)?;
        take(&mut w.head.bias)?;
        (at == v.len()).then_some(w)
    }

    /// The burn module, parameters numbered in a fixed order so that a saved optimizer
    /// state finds its parameters again after a restart.
    pub fn to_net(&self, device: &Device, dropout: f64) -> Layer4Net {
        let mut id = 0u64;
        let mut conv = |c: &resnet50::Conv| {
            let [o, i, kh, kw] = c.shape;
            let mut m = Conv2dConfig::new([i, o], [kh, kw])
                .with_stride([c.stride, c.stride])
                .with_padding(PaddingConfig2d::Explicit(c.pad, c.pad, c.pad, c.pad))
                .with_bias(true)
                .init(device);
            m.weight = numbered(&c.kernel, c.shape, device, &mut id);
            m.bias = Some(numbered(&c.bias, [o], device, &mut id));
            m
        };
        let blocks = self
            .blocks
            .iter()
            .map(|b| Block4 {
                a: conv(&b.conv_a),
                b: conv(&b.conv_b),
                c: conv(&b.conv_c),
                shortcut: b.shortcut.as_ref().map(|(c, _)| conv(c)),
            })
            .collect();
        let mut head = LinearConfig::new(self.head.dim, K).init(device);
        head.weight = numbered(&self.head.weight, [self.head.dim, K], device, &mut id);
        head.bias = Some(numbered(&self.head.bias, [K], device, &mut id));
        Layer4Net {
            blocks,
            dropout: DropoutConfig::new(dropout).init(),
            head,
        }
    }
}

/// A trainable parameter with the next id of a fixed numbering.
fn numbered<const D: usize>(
    data: &[f32],
    shape: [usize; D],
    device: &Device,
    id: &mut u64,
) -> Param<Tensor<D>> {
    *id += 1;
    let mut p = Param::from_tensor(Tensor::<D>::from_data(
        TensorData::new(data.to_vec(), shape),
        device,
    ));
    p.id = ParamId::from(*id);
    p
}

/// A layer4 bottleneck with BatchNorm folded into its convolutions.
#[derive(Module, Debug)]
pub struct Block4 {
    a: Conv2d,
    b: Conv2d,
    c: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Block4 {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
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

/// layer4 + dropout + linear head, trained on layer-3 activations.
#[derive(Module, Debug)]
pub struct Layer4Net {
    blocks: Vec<Block4>,
    dropout: Dropout,
    head: Linear,
}

fn tensor_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, FinetuneError> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| FinetuneError::Tensor(format!("{e:?}")))
}

impl Layer4Net {
    /// Pooled layer4 output as the head reads it: `N x 2048` channel means, followed by the
    /// channel maxima (`N x 4096`) when the head is that wide.
    pub fn pooled(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for b in &self.blocks {
            x = b.forward(x);
        }
        let [n, c, _, _] = x.dims();
        let avg = x.clone().mean_dim(3).mean_dim(2).reshape([n, c]);
        if self.head.weight.dims()[0] == 2 * c {
            let max = x.max_dim(3).max_dim(2).reshape([n, c]);
            Tensor::cat(vec![avg, max], 1)
        } else {
            avg
        }
    }

    /// Logits, `N x 6`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.dropout.forward(self.pooled(x)))
    }

    /// Current parameters as plain weights in `template`'s layout.
    pub fn to_weights(&self, template: &Layer4Weights) -> Result<Layer4Weights, FinetuneError> {
        let mut v = Vec::new();
        for b in &self.blocks {
            for c in [&b.a, &b.b, &b.c].into_iter().chain(b.shortcut.as_ref()) {
                v.extend(tensor_vec(c.weight.val())?);
                if let Some(bias) = &c.bias {
                    v.extend(tensor_vec(bias.val())?);
                }
            }
        }
        v.extend(tensor_vec(self.head.weight.val())?);
        if let Some(b) = &self.head.bias {
            v.extend(tensor_vec(b.val())?);
        }
        template
            .with_flat(&v)
            .ok_or_else(|| FinetuneError::Data("module and weights layouts differ".into()))
    }
}

/// Pooled layer4 features (the head's input width per view) of `keys` with `w`, inference
/// only.
pub fn pooled_features(
    w: &Layer4Weights,
    cache: &mut ActivationCache,
    keys: &[[u8; 32]],
    batch: usize,
) -> Result<Vec<f32>, FinetuneError> {
    let device = Device::flex();
    let net = w.to_net(&device, 0.0);
    let mut out = Vec::with_capacity(keys.len() * w.head.dim);
    for chunk in keys.chunks(batch.max(1)) {
        let x = load_batch(cache, chunk, &device)?;
        out.extend(tensor_vec(net.pooled(x))?);
    }
    Ok(out)
}

/// Probabilities of one view's layer-3 activations (`LEN` floats) at temperature `t`: the
/// trained model as burn computes it (parity with the exported file).
pub fn probs_from_layer3(
    w: &Layer4Weights,
    act: &[f32],
    t: f32,
) -> Result<Vec<f32>, FinetuneError> {
    if act.len() != LEN {
        return Err(FinetuneError::Data(format!(
            "{} activations, expected {LEN}",
            act.len()
        )));
    }
    let device = Device::flex();
    let x = Tensor::<4>::from_data(
        TensorData::new(act.to_vec(), [1, CHANNELS, SIDE, SIDE]),
        &device,
    );
    let pooled = tensor_vec(w.to_net(&device, 0.0).pooled(x))?;
    Ok(head::softmax_t(&w.head.logits(&pooled), t))
}

fn load_batch(
    cache: &mut ActivationCache,
    keys: &[[u8; 32]],
    device: &Device,
) -> Result<Tensor<4>, FinetuneError> {
    let mut buf = vec![0f32; keys.len() * LEN];
    for (k, dst) in keys.iter().zip(buf.chunks_exact_mut(LEN)) {
        if !cache.read(k, dst)? {
            return Err(FinetuneError::Data(format!(
                "layer-3 activations missing from {}",
                cache.path().display()
            )));
        }
    }
    Ok(Tensor::<4>::from_data(
        TensorData::new(buf, [keys.len(), CHANNELS, SIDE, SIDE]),
        device,
    ))
}

/// Stage-2 training data: per training image the cache keys of its views (index 0 the
/// original) and label; per validation image the original's key and label.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// Training views and labels.
    pub train: Vec<(Vec<[u8; 32]>, usize)>,
    /// Validation originals and labels.
    pub val: Vec<([u8; 32], usize)>,
}

/// Checkpoint bookkeeping (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// The settings that must match to resume (everything but `epochs`).
    identity: serde_json::Value,
    epoch: usize,
    best_epoch: usize,
    best_auc: f64,
    best_nll: f64,
    history: Vec<Epoch>,
    epoch_s: Vec<f64>,
    /// Validation AUC and NLL of the starting point (stage 1's head on the frozen layer4),
    /// the bar every epoch must clear; absent in checkpoints written before it was kept.
    #[serde(default)]
    start: Option<(f64, f64)>,
}

/// Result of stage 2.
#[derive(Debug, Clone)]
pub struct Finetuned {
    /// Weights of the best epoch (head before temperature scaling).
    pub weights: Layer4Weights,
    /// That epoch.
    pub best_epoch: usize,
    /// Every epoch, including those before a resume.
    pub history: Vec<Epoch>,
    /// Seconds per epoch (training + validation).
    pub epoch_s: Vec<f64>,
    /// Pooled validation features of the best weights (for temperature and threshold).
    pub val: Features,
    /// The checkpoint epoch the run continued from.
    pub resumed_from: Option<usize>,
    /// Validation AUC and NLL before the first epoch (stage 1's head on the frozen layer4).
    pub start: Option<(f64, f64)>,
}

/// The checkpoint directory of a run.
pub fn checkpoint_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

fn epoch_dirs(dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("epoch-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Whether `run` holds a complete checkpoint.
pub fn has_checkpoint(run: &Path) -> bool {
    !epoch_dirs(&checkpoint_dir(run)).is_empty()
}

fn write_weights(path: &Path, w: &Layer4Weights) -> Result<(), FinetuneError> {
    let v = w.flat();
    let mut bytes = Vec::with_capacity(16 + 4 * v.len());
    bytes.extend_from_slice(WEIGHTS_MAGIC);
    bytes.extend_from_slice(&(v.len() as u64).to_le_bytes());
    for x in &v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    let mut f = fs::File::create(path).map_err(io(path))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(path))
}

fn read_weights(path: &Path, template: &Layer4Weights) -> Result<Layer4Weights, FinetuneError> {
    let bad = |reason: &str| FinetuneError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    };
    let bytes = fs::read(path).map_err(io(path))?;
    if bytes.len() < 16 || &bytes[..8] != WEIGHTS_MAGIC {
        return Err(bad("not a layer4 weights file"));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[8..16]);
    let n = u64::from_le_bytes(n) as usize;
    if bytes.len() != 16 + 4 * n {
        return Err(bad("truncated"));
    }
    let v: Vec<f32> = bytes[16..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    template
        .with_flat(&v)
        .ok_or_else(|| bad("layout differs from this backbone's layer4"))
}

struct Checkpoint<'a> {
    state: &'a State,
    last: &'a Layer4Weights,
    best: &'a Layer4Weights,
    optim_layer4: &'a ModuleOptimizer,
    optim_head: &'a ModuleOptimizer,
}

/// Writes `checkpoints/epoch-NNNN` atomically (a temporary directory renamed into place),
/// then removes older epochs.
fn save_checkpoint(run: &Path, c: &Checkpoint<'_>) -> Result<PathBuf, FinetuneError> {
    let dir = checkpoint_dir(run);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = dir.join(format!(".partial-epoch-{:04}", c.state.epoch));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    write_weights(&tmp.join("last.bin"), c.last)?;
    write_weights(&tmp.join("best.bin"), c.best)?;
    let optim = |o: &ModuleOptimizer, name: &str| -> Result<(), FinetuneError> {
        let p = tmp.join(name);
        o.save(&p).map_err(|e| FinetuneError::Checkpoint {
            path: p.display().to_string(),
            reason: format!("saving optimizer state: {e:?}"),
        })
    };
    optim(c.optim_layer4, "optim-layer4.bpk")?;
    optim(c.optim_head, "optim-head.bpk")?;
    let state = serde_json::to_vec_pretty(c.state).map_err(|e| FinetuneError::Checkpoint {
        path: tmp.display().to_string(),
        reason: e.to_string(),
    })?;
    let sp = tmp.join("state.json");
    fs::write(&sp, state).map_err(io(&sp))?;
    let done = dir.join(format!("epoch-{:04}", c.state.epoch));
    if done.exists() {
        fs::remove_dir_all(&done).map_err(io(&done))?;
    }
    fs::rename(&tmp, &done).map_err(io(&done))?;
    for (n, p) in epoch_dirs(&dir) {
        if n < c.state.epoch {
            fs::remove_dir_all(&p).map_err(io(&p))?;
        }
    }
    Ok(done)
}

struct Restored {
    state: State,
    last: Layer4Weights,
    best: Layer4Weights,
    optim_layer4: ModuleOptimizer,
    optim_head: ModuleOptimizer,
}

fn load_checkpoint(
    dir: &Path,
    template: &Layer4Weights,
    cfg: &FinetuneConfig,
) -> Result<Restored, FinetuneError> {
    let bad = |reason: String| FinetuneError::Checkpoint {
        path: dir.display().to_string(),
        reason,
    };
    let sp = dir.join("state.json");
    let state: State = serde_json::from_slice(&fs::read(&sp).map_err(io(&sp))?)
        .map_err(|e| bad(format!("state.json: {e}")))?;
    let optim = |name: &str, init: ModuleOptimizer| -> Result<ModuleOptimizer, FinetuneError> {
        init.load(dir.join(name))
            .map_err(|e| bad(format!("{name}: {e:?}")))
    };
    Ok(Restored {
        last: read_weights(&dir.join("last.bin"), template)?,
        best: read_weights(&dir.join("best.bin"), template)?,
        optim_layer4: optim("optim-layer4.bpk", adamw(cfg))?,
        optim_head: optim("optim-head.bpk", adamw(cfg))?,
        state,
    })
}

fn adamw(cfg: &FinetuneConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay)
        .init()
}

/// The settings that must not change across `--resume`: the config without `epochs`
/// (raising it continues a finished run), plus what the caller adds (data, split, backbone).
/// A cosine schedule keeps `epochs`: its decay is laid over them, so a longer run is a
/// different run, not a continuation.
pub fn identity(cfg: &FinetuneConfig, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        if cfg.schedule.is_constant() {
            m.remove("epochs");
        }
        m.insert("run".into(), extra);
    }
    v
}

fn diff(a: &serde_json::Value, b: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = serde_json::Value::Null;
                diff(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &format!("{prefix}{k}."),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!(
            "{}: checkpoint {a}, now {b}",
            prefix.trim_end_matches('.')
        )),
        _ => {}
    }
}

fn same_identity(
    dir: &Path,
    saved: &serde_json::Value,
    now: &serde_json::Value,
) -> Result<(), FinetuneError> {
    if saved == now {
        return Ok(());
    }
    let mut d = Vec::new();
    diff(saved, now, "", &mut d);
    Err(FinetuneError::ConfigMismatch {
        path: dir.display().to_string(),
        diff: d.join("; "),
    })
}

/// Before any work: a run directory with checkpoints needs `resume`, and resuming needs
/// the settings (`identity`) the checkpoint was made with.
pub fn check_resume(
    run: &Path,
    resume: bool,
    ident: &serde_json::Value,
) -> Result<(), FinetuneError> {
    let Some((_, dir)) = epoch_dirs(&checkpoint_dir(run)).pop() else {
        return Ok(());
    };
    if !resume {
        return Err(FinetuneError::NotResuming(run.display().to_string()));
    }
    let sp = dir.join("state.json");
    let state: State = serde_json::from_slice(&fs::read(&sp).map_err(io(&sp))?).map_err(|e| {
        FinetuneError::Checkpoint {
            path: dir.display().to_string(),
            reason: format!("state.json: {e}"),
        }
    })?;
    same_identity(&dir, &state.identity, ident)
}

/// Where checkpoints go and whether to continue from them.
#[derive(Debug, Clone, Copy)]
pub struct Resume<'a> {
    /// Run directory (`checkpoints/` inside).
    pub run: &'a Path,
    /// Continue from the last checkpoint.
    pub resume: bool,
    /// Settings that must match the checkpoint's ([`identity`]).
    pub identity: &'a serde_json::Value,
}

/// Trains layer4 + head from `init` (ImageNet layer4, stage-1 head). Checkpoints every
/// epoch into `<run>/checkpoints`; with `resume`, continues from the last one (refusing if
/// the identity differs). `on_epoch` sees each finished epoch and its seconds.
pub fn train(
    init: &Layer4Weights,
    cache: &mut ActivationCache,
    data: &Data,
    cfg: &FinetuneConfig,
    r: Resume<'_>,
    mut on_epoch: impl FnMut(&Epoch, f64),
) -> Result<Finetuned, FinetuneError> {
    let (run, resume, ident) = (r.run, r.resume, r.identity);
    if data.train.is_empty() || data.val.is_empty() {
        return Err(FinetuneError::Data("empty train or validation set".into()));
    }
    if let Some(&(_, l)) = data.train.iter().find(|(_, l)| *l >= K) {
        return Err(FinetuneError::Data(format!("label {l} out of range")));
    }
    let ckdir = checkpoint_dir(run);
    let latest = epoch_dirs(&ckdir).pop();
    if latest.is_some() && !resume {
        return Err(FinetuneError::NotResuming(run.display().to_string()));
    }
    let device = Device::flex().autodiff();
    let val_keys: Vec<[u8; 32]> = data.val.iter().map(|(k, _)| *k).collect();
    let val_y: Vec<usize> = data.val.iter().map(|(_, l)| *l).collect();
    let (mut net, mut best, mut o4, mut oh, mut state, resumed_from) = match latest {
        Some((n, dir)) => {
            let r = load_checkpoint(&dir, init, cfg)?;
            same_identity(&dir, &r.state.identity, ident)?;
            log::info!("resuming stage 2 after epoch {n} ({})", dir.display());
            (
                r.last.to_net(&device, cfg.dropout),
                r.best,
                r.optim_layer4,
                r.optim_head,
                r.state,
                Some(n),
            )
        }
        None => {
            // Epoch 0 is the starting point: an epoch must beat it on validation to be kept,
            // so stage 2 never hands back a model worse than the stage-1 head it began from.
            let val = Features {
                x: pooled_features(init, cache, &val_keys, 32)?,
                y: val_y.clone(),
                dim: init.head.dim,
            };
            let (auc, nll) = head::auc_nll(&init.head, &val, 1.0);
            log::info!(
                "stage 2 epoch 0 (stage-1 head, frozen layer4): val AUC {auc:.4}, NLL {nll:.4}"
            );
            (
                init.to_net(&device, cfg.dropout),
                init.clone(),
                adamw(cfg),
                adamw(cfg),
                State {
                    identity: ident.clone(),
                    epoch: 0,
                    best_epoch: 0,
                    best_auc: auc,
                    best_nll: nll,
                    history: Vec::new(),
                    epoch_s: Vec::new(),
                    start: Some((auc, nll)),
                },
                None,
            )
        }
    };
    let labels: Vec<usize> = data.train.iter().map(|(_, l)| *l).collect();
    let cw = head::class_weights(&labels);
    let n = data.train.len();
    let batch = cfg.batch.max(1);
    let steps = n.div_ceil(batch) as u64;
    let start = (cfg.l2sp > 0.0).then(|| {
        let mut w = StartWeights(Default::default());
        init.to_net(&device, cfg.dropout).blocks.visit(&mut w);
        w
    });
    let stopped = |s: &State| s.epoch > 0 && s.epoch - s.best_epoch >= cfg.patience;
    while state.epoch < cfg.epochs && !stopped(&state) {
        let epoch = state.epoch + 1;
        let t0 = Instant::now();
        // Everything random in an epoch derives from (seed, epoch): a resumed run repeats it.
        let es = cfg.seed ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        device.seed(es);
        let mut rng = Rng::new(es);
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        let bar = extract::progress(steps, &format!("stage 2 epoch {epoch}/{}", cfg.epochs));
        let mut loss_sum = 0.0;
        let mut factor = 1.0;
        for (b, chunk) in order.chunks(batch).enumerate() {
            factor = lr_factor(cfg, (epoch as u64 - 1) * steps + b as u64, steps);
            let keys: Vec<[u8; 32]> = chunk
                .iter()
                .map(|&i| {
                    let views = &data.train[i].0;
                    views[rng.below(views.len() as u64) as usize]
                })
                .collect();
            let ys: Vec<usize> = chunk.iter().map(|&i| data.train[i].1).collect();
            let x = load_batch(cache, &keys, &device)?;
            let w = Tensor::<2>::from_data(
                TensorData::new(head::loss_weights(&ys, &cw), [ys.len(), K]),
                &device,
            );
            let loss = (log_softmax(net.forward(x), 1) * w).sum().neg();
            let l = f64::from(tensor_vec(loss.clone())?[0]);
            loss_sum += l * chunk.len() as f64;
            let mut grads = loss.backward();
            let g4 = GradientsParams::from_module(&mut grads, &net.blocks);
            let gh = GradientsParams::from_module(&mut grads, &net.head);
            let Layer4Net {
                blocks,
                dropout,
                head,
            } = net;
            let lr4 = cfg.lr_layer4 * factor;
            let mut blocks = o4.step(lr4, blocks, g4);
            if let Some(start) = &start {
                // At most all the way back: a huge `l2sp` must not overshoot the start.
                let mut pull = PullToStart::new(start, (lr4 * cfg.l2sp).min(1.0));
                blocks = blocks.map(&mut pull);
                if pull.missed > 0 {
                    return Err(FinetuneError::Data(format!(
                        "L2-SP found no start value for {} of layer4's parameters: the live \
                         layers and their start are numbered differently (a bug); train \
                         without --l2sp until it is fixed",
                        pull.missed
                    )));
                }
            }
            net = Layer4Net {
                blocks,
                dropout,
                head: oh.step(cfg.lr_head * factor, head, gh),
            };
            bar.inc(1);
            bar.set_label(format!("stage 2 epoch {epoch}/{} loss {l:.3}", cfg.epochs));
        }
        bar.finish();
        let current = net.to_weights(init)?;
        let pooled = pooled_features(&current, cache, &val_keys, 32)?;
        let val = Features {
            x: pooled,
            y: val_y.clone(),
            dim: current.head.dim,
        };
        let (val_auc, val_nll) = head::auc_nll(&current.head, &val, 1.0);
        let e = Epoch {
            epoch,
            train_loss: loss_sum / n as f64,
            val_auc,
            val_nll,
        };
        let better = val_auc > state.best_auc + 1e-9
            || (val_auc >= state.best_auc - 1e-9 && val_nll < state.best_nll);
        if better {
            best = current.clone();
            state.best_epoch = epoch;
            state.best_auc = val_auc;
            state.best_nll = val_nll;
        }
        state.epoch = epoch;
        state.history.push(e.clone());
        let secs = t0.elapsed().as_secs_f64();
        state.epoch_s.push(secs);
        let saved = save_checkpoint(
            run,
            &Checkpoint {
                state: &state,
                last: &current,
                best: &best,
                optim_layer4: &o4,
                optim_head: &oh,
            },
        )?;
        log::info!(
            "stage 2 epoch {epoch}: loss {:.4}, val AUC {val_auc:.4}, NLL {val_nll:.4}, {secs:.0} s, \
             learning rates at {factor:.3} of their set values; checkpoint {}",
            e.train_loss,
            saved.display()
        );
        on_epoch(&e, secs);
    }
    if state.epoch == 0 {
        return Err(FinetuneError::Data("no epochs run (--epochs 0)".into()));
    }
    let pooled = pooled_features(&best, cache, &val_keys, 32)?;
    let dim = best.head.dim;
    Ok(Finetuned {
        weights: best,
        best_epoch: state.best_epoch,
        history: state.history,
        epoch_s: state.epoch_s,
        val: Features {
            x: pooled,
            y: val_y,
            dim,
        },
        resumed_from,
        start: state.start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_ignores_epochs_and_diff_names_keys() {
        let a = FinetuneConfig::default();
        let b = FinetuneConfig {
            epochs: 9,
            ..a.clone()
        };
        let c = FinetuneConfig {
            views: 5,
            ..a.clone()
        };
        let x = serde_json::json!({"data": "d"});
        assert_eq!(identity(&a, x.clone()), identity(&b, x.clone()));
        let mut d = Vec::new();
        diff(&identity(&a, x.clone()), &identity(&c, x), "", &mut d);
        assert_eq!(d, ["views: checkpoint 2, now 5"]);
    }

    #[test]
    fn settings_at_their_defaults_keep_the_old_identity() {
        let old = serde_json::json!({
            "epochs": 2, "patience": 3, "batch": 16, "lr_layer4": 1e-5, "lr_head": 1e-4,
            "weight_decay": 0.01f32, "dropout": 0.3, "views": 2, "seed": 1
        });
        let now = serde_json::to_value(FinetuneConfig::default()).expect("serialises");
        assert_eq!(now, old);
        let back: FinetuneConfig = serde_json::from_value(old).expect("old settings read");
        assert_eq!(back.schedule, LrSchedule::Constant);
        let cos = FinetuneConfig {
            schedule: LrSchedule::Cosine,
            warmup_epochs: 0.5,
            l2sp: 10.0,
            ..FinetuneConfig::default()
        };
        let v = serde_json::to_value(&cos).expect("serialises");
        assert_eq!(v["schedule"], "cosine");
        assert_eq!(v["warmup_epochs"], 0.5);
        assert_eq!(v["l2sp"], 10.0);
        // Raising `epochs` would stretch a cosine run's decay: refused on resume.
        let x = serde_json::json!({"data": "d"});
        let longer = FinetuneConfig {
            epochs: 9,
            ..cos.clone()
        };
        let mut d = Vec::new();
        diff(
            &identity(&cos, x.clone()),
            &identity(&longer, x),
            "",
            &mut d,
        );
        assert_eq!(d, ["epochs: checkpoint 2, now 9"]);
    }

    #[test]
    fn warmup_ramps_and_cosine_falls_to_zero_at_the_planned_end() {
        let cfg = FinetuneConfig {
            epochs: 4,
            schedule: LrSchedule::Cosine,
            warmup_epochs: 1.0,
            ..FinetuneConfig::default()
        };
        let f = |s| lr_factor(&cfg, s, 10);
        assert!((f(0) - 0.1).abs() < 1e-12);
        assert!((f(4) - 0.5).abs() < 1e-12);
        assert!((f(9) - 1.0).abs() < 1e-12);
        assert!((f(10) - 1.0).abs() < 1e-12);
        // Halfway through the 30 steps after the warm-up: half the rate.
        assert!((f(25) - 0.5).abs() < 1e-12);
        assert!(f(39) < 0.01 && f(39) > 0.0);
        assert_eq!(f(40), 0.0);
        let steady = FinetuneConfig::default();
        assert_eq!(lr_factor(&steady, 0, 10), 1.0);
        assert_eq!(lr_factor(&steady, 1000, 10), 1.0);
    }

    #[test]
    fn l2sp_pulls_each_parameter_back_towards_its_start() {
        let _burn = crate::BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let device = Device::flex().autodiff();
        let lin = LinearConfig::new(3, 2).init(&device);
        let mut start = StartWeights(Default::default());
        lin.visit(&mut start);
        let before = tensor_vec(lin.weight.val()).expect("weights");
        // Move every parameter by +1, then pull a quarter of the way back.
        let shifted = StartWeights(
            start
                .0
                .iter()
                .map(|(id, w)| (*id, w.clone() + 4.0))
                .collect(),
        );
        let moved = lin.map(&mut PullToStart::new(&shifted, 0.25));
        let after = tensor_vec(moved.weight.val()).expect("weights");
        for (a, b) in after.iter().zip(&before) {
            assert!((a - (b + 1.0)).abs() < 1e-6, "{a} vs {b} + 1");
        }
        assert!(moved.weight.val().is_require_grad());
        let mut pull = PullToStart::new(&start, 0.25);
        let back = moved.map(&mut pull);
        assert_eq!(pull.missed, 0, "every parameter has its start");
        for (a, b) in tensor_vec(back.weight.val())
            .expect("weights")
            .iter()
            .zip(&before)
        {
            assert!((a - (b + 0.75)).abs() < 1e-6, "{a} vs {b} + 0.75");
        }
        // A layer the start was not taken from (fresh ids) is left alone, and counted.
        let other = LinearConfig::new(3, 2).init(&device);
        let mut pull = PullToStart::new(&start, 0.25);
        let _ = other.map(&mut pull);
        assert_eq!(pull.missed, 2, "weight and bias have no start");
    }
}
