//! Stage 1: the renal head (dropout -> linear -> 6 classes) trained in burn on cached pooled
//! features, then temperature scaling and the operating point on the validation split.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use evaluate::{auc, ece};

use seeded::Rng;

/// Classes of the renal head.
pub const K: usize = contract::LABELS.len();

/// Errors of head training.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Features of the wrong width or mismatched labels.
    #[error("training data: {0}")]
    Data(String),
    /// A tensor could not be read back.
    #[error("reading tensor: {0}")]
    Tensor(String),
}

/// Hyper-parameters of stage 1.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeadConfig {
    /// Upper bound on epochs.
    pub max_epochs: usize,
    /// Stop after this many epochs without a better validation AUC.
    pub patience: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Dropout on the pooled features.
    pub dropout: f64,
    /// Seed for initialisation, dropout and shuffling.
    pub seed: u64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            max_epochs: 300,
            patience: 40,
            batch: 64,
            lr: 1e-3,
            weight_decay: 1e-2,
            dropout: 0.3,
            seed: 1,
        }
    }
}

/// Features (rows of `dim` floats) with their class labels.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// Row-major `n x dim`.
    pub x: Vec<f32>,
    /// One label per row.
    pub y: Vec<usize>,
    /// Row width.
    pub dim: usize,
}

impl Features {
    /// No rows yet, `dim` wide.
    pub fn with_dim(dim: usize) -> Self {
        Self {
            dim,
            ..Self::default()
        }
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    fn check(&self, what: &str) -> Result<(), HeadError> {
        if self.dim == 0 || self.x.len() != self.y.len() * self.dim {
            return Err(HeadError::Data(format!(
                "{what}: {} floats for {} labels of width {}",
                self.x.len(),
                self.y.len(),
                self.dim
            )));
        }
        if let Some(&l) = self.y.iter().find(|&&l| l >= K) {
            return Err(HeadError::Data(format!("{what}: label {l} out of range")));
        }
        Ok(())
    }
}

/// A linear classifier in plain numbers: `logits = x W + b`, `W` is `[dim, K]` (in x out,
/// the layout of [`resnet50::Dense`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LinearHead {
    /// `[dim, K]` row-major.
    pub weight: Vec<f32>,
    /// `K` biases.
    pub bias: Vec<f32>,
    /// Input width.
    pub dim: usize,
}

impl LinearHead {
    /// Logits of one feature row.
    pub fn logits(&self, x: &[f32]) -> [f32; K] {
        let mut z = [0f32; K];
        z.copy_from_slice(&self.bias);
        for (i, &xi) in x.iter().enumerate() {
            let row = &self.weight[i * K..(i + 1) * K];
            for k in 0..K {
                z[k] += xi * row[k];
            }
        }
        z
    }

    /// Divides weights and bias by `t`: the temperature baked into the exported head.
    pub fn scaled(&self, t: f32) -> Self {
        Self {
            weight: self.weight.iter().map(|w| w / t).collect(),
            bias: self.bias.iter().map(|b| b / t).collect(),
            dim: self.dim,
        }
    }

    /// As ONNX/burn dense weights.
    pub fn to_dense(&self) -> resnet50::Dense {
        resnet50::Dense {
            weight: self.weight.clone(),
            inputs: self.dim,
            outputs: K,
            bias: self.bias.clone(),
        }
    }
}

/// Numerically stable softmax of logits divided by `t`.
pub fn softmax_t(z: &[f32], t: f32) -> Vec<f32> {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b / t));
    let e: Vec<f32> = z.iter().map(|&v| (v / t - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Per-epoch record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Epoch {
    /// 1-based.
    pub epoch: usize,
    /// Mean weighted training loss.
    pub train_loss: f64,
    /// Validation AUC, normal vs abnormal.
    pub val_auc: f64,
    /// Validation NLL (6 classes, unweighted).
    pub val_nll: f64,
}

/// Result of stage 1.
#[derive(Debug, Clone)]
pub struct Trained {
    /// Head on raw (unstandardised) features, before temperature scaling.
    pub head: LinearHead,
    /// Epoch whose weights were kept.
    pub best_epoch: usize,
    /// Every epoch.
    pub history: Vec<Epoch>,
}

#[derive(Module, Debug)]
struct HeadNet {
    dropout: Dropout,
    linear: Linear,
}

impl HeadNet {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear.forward(self.dropout.forward(x))
    }
}

/// Balanced class weights `n / (K n_c)` (0 for absent classes): the study's 330 normal vs
/// 1,269 abnormal would otherwise teach the head that "abnormal" is the safe answer.
pub fn class_weights(y: &[usize]) -> [f32; K] {
    let mut n = [0usize; K];
    for &l in y {
        n[l] += 1;
    }
    let present = n.iter().filter(|&&c| c > 0).count().max(1);
    let mut w = [0f32; K];
    for k in 0..K {
        if n[k] > 0 {
            w[k] = y.len() as f32 / (present as f32 * n[k] as f32);
        }
    }
    w
}

/// The `b x K` matrix that turns summed log-softmax into the class-weighted mean NLL of a
/// batch with labels `ys`: `cw[y] / sum(cw)` at each row's label, 0 elsewhere.
pub fn loss_weights(ys: &[usize], cw: &[f32; K]) -> Vec<f32> {
    let wsum: f32 = ys.iter().map(|&y| cw[y]).sum::<f32>().max(1e-12);
    let mut w = vec![0f32; ys.len() * K];
    for (r, &y) in ys.iter().enumerate() {
        w[r * K + y] = cw[y] / wsum;
    }
    w
}

pub(crate) fn tensor_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, HeadError> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| HeadError::Tensor(format!("{e:?}")))
}

/// Validation AUC of p(abnormal) and mean NLL of `head` at temperature `t`.
pub fn auc_nll(head: &LinearHead, f: &Features, t: f32) -> (f64, f64) {
    auc_nll_of(&row_logits(head, f), &f.y, t)
}

/// Logits of every row of `f`.
pub fn row_logits(head: &LinearHead, f: &Features) -> Vec<[f32; K]> {
    f.x.chunks_exact(f.dim.max(1))
        .map(|r| head.logits(r))
        .collect()
}

/// AUC of p(abnormal) and mean NLL of logits `z` (one row per label in `y`) at temperature
/// `t`: whatever head produced them.
pub fn auc_nll_of(z: &[[f32; K]], y: &[usize], t: f32) -> (f64, f64) {
    let taxonomy = contract::Taxonomy::standard();
    let (mut pos, mut neg, mut nll) = (Vec::new(), Vec::new(), 0.0);
    for (zi, &y) in z.iter().zip(y) {
        let p = softmax_t(zi, t);
        let s = taxonomy.p_abnormal_f64(&p);
        if y == taxonomy.normal_index() {
            neg.push(s);
        } else {
            pos.push(s);
        }
        nll -= f64::from(p[y].max(1e-12)).ln();
    }
    let a = if pos.is_empty() || neg.is_empty() {
        f64::NAN
    } else {
        auc(&pos, &neg)
    };
    (a, nll / y.len().max(1) as f64)
}

/// Trains the head on `train`, keeping the epoch with the best validation AUC (ties: lower
/// validation NLL). Features are standardised with the training mean/std for the optimiser;
/// the returned head has that folded in, so it applies to raw pooled features.
pub fn train_head(
    train: &Features,
    val: &Features,
    cfg: &HeadConfig,
    mut on_epoch: impl FnMut(&Epoch),
) -> Result<Trained, HeadError> {
    train.check("train")?;
    val.check("validation")?;
    if train.dim != val.dim {
        return Err(HeadError::Data("train and validation widths differ".into()));
    }
    let (d, n) = (train.dim, train.len());
    let mut mu = vec![0f64; d];
    let mut var = vec![0f64; d];
    for r in train.x.chunks_exact(d) {
        for (j, &v) in r.iter().enumerate() {
            mu[j] += f64::from(v);
        }
    }
    mu.iter_mut().for_each(|m| *m /= n as f64);
    for r in train.x.chunks_exact(d) {
        for (j, &v) in r.iter().enumerate() {
            var[j] += (f64::from(v) - mu[j]).powi(2);
        }
    }
    let sd: Vec<f32> = var
        .iter()
        .map(|v| ((v / n as f64).sqrt() as f32).max(1e-6))
        .collect();
    let mu: Vec<f32> = mu.iter().map(|&m| m as f32).collect();
    let standardise = |x: &[f32]| -> Vec<f32> {
        x.chunks_exact(d)
            .flat_map(|r| r.iter().enumerate().map(|(j, &v)| (v - mu[j]) / sd[j]))
            .collect()
    };
    let xs = standardise(&train.x);
    let val_s = Features {
        x: standardise(&val.x),
        y: val.y.clone(),
        dim: d,
    };
    let cw = class_weights(&train.y);

    let device = Device::flex().autodiff();
    device.seed(cfg.seed);
    let mut net = HeadNet {
        dropout: DropoutConfig::new(cfg.dropout).init(),
        linear: LinearConfig::new(d, K).init(&device),
    };
    let mut optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay)
        .init();
    let mut rng = Rng::new(cfg.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut best: Option<(f64, f64, LinearHead, usize)> = None;
    let mut history = Vec::new();
    let read = |net: &HeadNet| -> Result<LinearHead, HeadError> {
        let weight = tensor_vec(net.linear.weight.val())?;
        let bias = match &net.linear.bias {
            Some(b) => tensor_vec(b.val())?,
            None => vec![0.0; K],
        };
        Ok(LinearHead {
            weight,
            bias,
            dim: d,
        })
    };
    for epoch in 1..=cfg.max_epochs {
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(cfg.batch.max(1)) {
            let b = chunk.len();
            let mut xb = Vec::with_capacity(b * d);
            for &i in chunk {
                xb.extend_from_slice(&xs[i * d..(i + 1) * d]);
            }
            let ys: Vec<usize> = chunk.iter().map(|&i| train.y[i]).collect();
            let wb = loss_weights(&ys, &cw);
            let x = Tensor::<2>::from_data(TensorData::new(xb, [b, d]), &device);
            let w = Tensor::<2>::from_data(TensorData::new(wb, [b, K]), &device);
            let logits = net.forward(x);
            let loss = (log_softmax(logits, 1) * w).sum().neg();
            loss_sum += f64::from(tensor_vec(loss.clone())?[0]) * b as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(cfg.lr, net, grads);
        }
        let head = read(&net)?;
        let (val_auc, val_nll) = auc_nll(&head, &val_s, 1.0);
        let e = Epoch {
            epoch,
            train_loss: loss_sum / n as f64,
            val_auc,
            val_nll,
        };
        on_epoch(&e);
        history.push(e);
        let better = match &best {
            None => true,
            Some((a, l, _, _)) => val_auc > a + 1e-9 || (val_auc >= a - 1e-9 && val_nll < *l),
        };
        if better {
            best = Some((val_auc, val_nll, head, epoch));
        } else if best
            .as_ref()
            .is_some_and(|(_, _, _, be)| epoch - be >= cfg.patience)
        {
            log::info!("early stop at epoch {epoch}");
            break;
        }
    }
    let Some((_, _, h, best_epoch)) = best else {
        return Err(HeadError::Data("no epochs run (max_epochs = 0)".into()));
    };
    // Fold the standardisation: W'[j,k] = W[j,k] / sd_j, b'_k = b_k - sum_j W[j,k] mu_j / sd_j.
    let mut weight = h.weight.clone();
    let mut bias = h.bias.clone();
    for j in 0..d {
        for k in 0..K {
            let w = h.weight[j * K + k] / sd[j];
            weight[j * K + k] = w;
            bias[k] -= w * mu[j];
        }
    }
    Ok(Trained {
        head: LinearHead {
            weight,
            bias,
            dim: d,
        },
        best_epoch,
        history,
    })
}

/// Temperature minimising the validation NLL of `head` (see [`fit_temperature_of`]).
pub fn fit_temperature(head: &LinearHead, val: &Features) -> f32 {
    fit_temperature_of(&row_logits(head, val), &val.y)
}

/// Temperature minimising the NLL of logits `z` with labels `y` (log-spaced grid over
/// [0.05, 20], then a golden-section refinement): one parameter, so it cannot overfit a
/// small validation set.
pub fn fit_temperature_of(z: &[[f32; K]], y: &[usize]) -> f32 {
    let nll = |lt: f64| auc_nll_of(z, y, lt.exp() as f32).1;
    let (lo, hi) = (0.05f64.ln(), 20f64.ln());
    let steps = 60;
    let mut best = (f64::INFINITY, 0.0);
    for i in 0..=steps {
        let lt = lo + (hi - lo) * i as f64 / steps as f64;
        let v = nll(lt);
        if v < best.0 {
            best = (v, lt);
        }
    }
    let h = (hi - lo) / steps as f64;
    let (mut a, mut b) = (best.1 - h, best.1 + h);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..40 {
        let c = b - g * (b - a);
        let e = a + g * (b - a);
        if nll(c) < nll(e) {
            b = e;
        } else {
            a = c;
        }
    }
    ((a + b) / 2.0).exp() as f32
}

/// Probabilities of every row at temperature `t`.
pub fn predict(head: &LinearHead, f: &Features, t: f32) -> Vec<Vec<f32>> {
    row_logits(head, f)
        .iter()
        .map(|z| softmax_t(z, t))
        .collect()
}

/// Top-label ECE (10 bins) of `head` at temperature `t`.
pub fn ece_at(head: &LinearHead, f: &Features, t: f32) -> f64 {
    ece_of(&row_logits(head, f), &f.y, t)
}

/// Top-label ECE (10 bins) of logits `z` with labels `y` at temperature `t`.
pub fn ece_of(z: &[[f32; K]], y: &[usize], t: f32) -> f64 {
    let (conf, ok): (Vec<f64>, Vec<bool>) = z
        .iter()
        .zip(y)
        .map(|(z, &y)| {
            let p = softmax_t(z, t);
            let k = evaluate::argmax(&p);
            (f64::from(p[k]), k == y)
        })
        .unzip();
    ece(&conf, &ok, 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six separable Gaussian clusters in 16-D.
    fn blobs(n: usize, seed: u64) -> Features {
        let mut rng = Rng::new(seed);
        let dim = 16;
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..n {
            let c = i % K;
            for j in 0..dim {
                let centre = if j == c { 3.0 } else { 0.0 };
                x.push(centre + (rng.uniform() as f32 - 0.5) * 2.0 + 10.0);
            }
            y.push(c);
        }
        Features { x, y, dim }
    }

    #[test]
    fn learns_separable_classes_reproducibly() {
        let _burn = crate::BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let (tr, va) = (blobs(240, 1), blobs(60, 2));
        let cfg = HeadConfig {
            max_epochs: 60,
            patience: 20,
            lr: 1e-2,
            ..HeadConfig::default()
        };
        let a = train_head(&tr, &va, &cfg, |_| {}).unwrap();
        let (auc, _) = auc_nll(&a.head, &va, 1.0);
        assert!(auc > 0.99, "val AUC {auc}");
        let acc = predict(&a.head, &va, 1.0)
            .iter()
            .zip(&va.y)
            .filter(|(p, &y)| evaluate::argmax(p) == y)
            .count() as f64
            / va.len() as f64;
        assert!(acc > 0.9, "accuracy {acc}");
        let b = train_head(&tr, &va, &cfg, |_| {}).unwrap();
        assert_eq!(a.head, b.head, "same seed, same head");
        let t = fit_temperature(&a.head, &va);
        assert!(t > 0.05 && t < 20.0);
        assert!(auc_nll(&a.head, &va, t).1 <= auc_nll(&a.head, &va, 1.0).1 + 1e-9);
    }

    #[test]
    fn balanced_weights() {
        let w = class_weights(&[0, 1, 1, 1]);
        assert_eq!(w[0], 2.0);
        assert!((w[1] - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(w[2], 0.0);
    }

    #[test]
    fn temperature_scaling_folds_into_head() {
        let h = LinearHead {
            weight: vec![1.0; 2 * K],
            bias: (0..K).map(|k| k as f32).collect(),
            dim: 2,
        };
        let x = [0.5, -1.0];
        let a = softmax_t(&h.logits(&x), 2.0);
        let b = softmax_t(&h.scaled(2.0).logits(&x), 1.0);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-6);
        }
    }
}
