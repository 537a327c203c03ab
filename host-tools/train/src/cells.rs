//! `--head cells`: a small classifier on every cell of layer3's map (`C -> H`, ReLU, dropout,
//! `H -> 6`), its cell logits pooled per class by log-mean-exp, trained in burn on cached
//! layer-3 maps (f16, [`crate::activations`]).
//!
//! Why a head per cell: a stone or a cyst fills a few of the 196 cells, and the channel means
//! that the linear head reads dilute it among the kidney's normal texture; a smooth maximum of
//! per-cell verdicts lets those few cells decide ("The head's shape", in the README). The
//! recipe (AdamW, balanced class weights, dropout, early stopping on validation AUC) is the
//! linear head's; inputs are standardised per channel with the training cells' statistics,
//! folded into the first layer when read back, so the result applies to raw maps.
//!
//! With `context` (`--cell-context`) the hidden layer also reads the map's channel means
//! (`C -> H`, no bias of its own), the same for every cell of an image: a cell is judged
//! knowing the whole image. Verdicts of separate cells pooled by a smooth maximum cannot
//! express an interaction between what two cells show; this can (the tests below).

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use half::f16;
use resnet50::{CellClassifier, Dense};
use seeded::Rng;

use crate::head::{self, class_weights, loss_weights, tensor_vec, Epoch, HeadConfig, HeadError, K};

/// Hidden width of the per-cell classifier: the width measured offline (64 and 256 were no
/// better there).
pub const HIDDEN: usize = 128;
/// Default epochs of the cell head: each is about 20 times a linear epoch's work, and the
/// offline runs peaked within 25.
pub const MAX_EPOCHS: usize = 30;
/// Default patience of the cell head.
pub const PATIENCE: usize = 8;
/// Maps per inference batch (validation, calibration).
const EVAL_BATCH: usize = 64;

/// Feature maps (f16 bit patterns, `channels x cells` each, channel-major as the backbone
/// writes them) with their labels.
#[derive(Debug, Clone, Default)]
pub struct Maps {
    /// `n x channels x cells`.
    pub x: Vec<u16>,
    /// One label per map.
    pub y: Vec<usize>,
    /// Channels per map.
    pub channels: usize,
    /// Cells per map (`H x W`).
    pub cells: usize,
}

impl Maps {
    /// No maps yet.
    pub fn new(channels: usize, cells: usize) -> Self {
        Self {
            channels,
            cells,
            ..Self::default()
        }
    }

    /// Values per map.
    pub fn len_of_one(&self) -> usize {
        self.channels * self.cells
    }

    /// Maps held.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// No maps.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Map `i`.
    pub fn map(&self, i: usize) -> &[u16] {
        let n = self.len_of_one();
        &self.x[i * n..(i + 1) * n]
    }

    fn check(&self, what: &str) -> Result<(), HeadError> {
        if self.len_of_one() == 0 || self.x.len() != self.y.len() * self.len_of_one() {
            return Err(HeadError::Data(format!(
                "{what}: {} values for {} maps of {} x {}",
                self.x.len(),
                self.y.len(),
                self.channels,
                self.cells
            )));
        }
        if let Some(&l) = self.y.iter().find(|&&l| l >= K) {
            return Err(HeadError::Data(format!("{what}: label {l} out of range")));
        }
        Ok(())
    }
}

/// Result of training.
#[derive(Debug, Clone)]
pub struct Trained {
    /// On raw maps, temperature 1 (uncalibrated).
    pub head: CellClassifier,
    /// Epoch whose weights were kept.
    pub best_epoch: usize,
    /// Every epoch.
    pub history: Vec<Epoch>,
}

#[derive(Module, Debug)]
struct CellNet {
    hidden: Linear,
    context: Option<Linear>,
    dropout: Dropout,
    out: Linear,
}

impl CellNet {
    /// `x`: `B x cells x C` (standardised) -> pooled logits `B x K`.
    fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let cells = x.dims()[1];
        let mut h = self.hidden.forward(x.clone());
        if let Some(ctx) = &self.context {
            // B x 1 x C means -> B x 1 x H, broadcast over the cells.
            h = h + ctx.forward(x.mean_dim(1));
        }
        let h = self.dropout.forward(relu(h));
        let z = self.out.forward(h);
        let m = z.clone().max_dim(1).detach();
        let lse = (z - m.clone()).exp().sum_dim(1).log() + m;
        lse.squeeze_dim::<2>(1) - (cells as f32).ln()
    }

    fn read(&self) -> Result<(Dense, Dense, Option<Dense>), HeadError> {
        let dense = |l: &Linear| -> Result<Dense, HeadError> {
            let [inputs, outputs] = l.weight.val().dims();
            Ok(Dense {
                weight: tensor_vec(l.weight.val())?,
                inputs,
                outputs,
                bias: match &l.bias {
                    Some(b) => tensor_vec(b.val())?,
                    None => vec![0.0; outputs],
                },
            })
        };
        let context = self.context.as_ref().map(dense).transpose()?;
        Ok((dense(&self.hidden)?, dense(&self.out)?, context))
    }

    fn from_dense(hidden: &Dense, out: &Dense, context: Option<&Dense>, device: &Device) -> Self {
        let linear = |d: &Dense| {
            let mut l = LinearConfig::new(d.inputs, d.outputs).init(device);
            l.weight = Param::from_tensor(Tensor::<2>::from_data(
                TensorData::new(d.weight.clone(), [d.inputs, d.outputs]),
                device,
            ));
            l.bias = Some(Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(d.bias.clone(), [d.outputs]),
                device,
            )));
            l
        };
        Self {
            hidden: linear(hidden),
            context: context.map(linear),
            dropout: DropoutConfig::new(0.0).init(),
            out: linear(out),
        }
    }
}

/// Per-channel mean and standard deviation over every cell of the training maps.
fn channel_stats(m: &Maps) -> (Vec<f32>, Vec<f32>) {
    let (c, l) = (m.channels, m.cells);
    let (mut s1, mut s2) = (vec![0f64; c], vec![0f64; c]);
    for i in 0..m.len() {
        for (ch, plane) in m.map(i).chunks_exact(l).enumerate() {
            let (mut a, mut b) = (0f64, 0f64);
            for &v in plane {
                let v = f64::from(f16::from_bits(v).to_f32());
                a += v;
                b += v * v;
            }
            s1[ch] += a;
            s2[ch] += b;
        }
    }
    let n = (m.len() * l).max(1) as f64;
    let mu: Vec<f64> = s1.iter().map(|s| s / n).collect();
    let sd = s2
        .iter()
        .zip(&mu)
        .map(|(s, m)| (((s / n - m * m).max(0.0)).sqrt() as f32).max(1e-3))
        .collect();
    (mu.iter().map(|&m| m as f32).collect(), sd)
}

/// Maps `idx` of `m`, standardised and transposed to `B x cells x C` (burn's linear layers
/// act on the last axis).
fn batch(m: &Maps, idx: &[usize], mu: &[f32], sd: &[f32], device: &Device) -> Tensor<3> {
    let (c, l) = (m.channels, m.cells);
    let mut x = vec![0f32; idx.len() * l * c];
    for (b, &i) in idx.iter().enumerate() {
        let dst = &mut x[b * l * c..(b + 1) * l * c];
        for (ch, plane) in m.map(i).chunks_exact(l).enumerate() {
            let (mean, inv) = (mu[ch], 1.0 / sd[ch]);
            for (cell, &v) in plane.iter().enumerate() {
                dst[cell * c + ch] = (f16::from_bits(v).to_f32() - mean) * inv;
            }
        }
    }
    Tensor::<3>::from_data(TensorData::new(x, [idx.len(), l, c]), device)
}

/// Pooled logits (temperature 1) of every map of `m` under `net` (inference).
fn logits(
    net: &CellNet,
    m: &Maps,
    mu: &[f32],
    sd: &[f32],
    device: &Device,
) -> Result<Vec<[f32; K]>, HeadError> {
    let idx: Vec<usize> = (0..m.len()).collect();
    let mut out = Vec::with_capacity(m.len());
    for chunk in idx.chunks(EVAL_BATCH) {
        let z = tensor_vec(net.forward(batch(m, chunk, mu, sd, device)))?;
        for row in z.chunks_exact(K) {
            let mut r = [0f32; K];
            r.copy_from_slice(row);
            out.push(r);
        }
    }
    Ok(out)
}

/// Pooled logits of `head` (any temperature: the rows are divided by it) on every map of
/// `m`, computed in burn: what the exported graph computes.
pub fn predict_logits(head: &CellClassifier, m: &Maps) -> Result<Vec<[f32; K]>, HeadError> {
    m.check("maps")?;
    if head.hidden.inputs != m.channels || head.out.outputs != K {
        return Err(HeadError::Data(format!(
            "a cell head of {} -> {} for maps of {} channels",
            head.hidden.inputs, head.out.outputs, m.channels
        )));
    }
    let device = Device::flex();
    let net = CellNet::from_dense(&head.hidden, &head.out, head.context.as_ref(), &device);
    let (mu, sd) = (vec![0f32; m.channels], vec![1f32; m.channels]);
    let mut z = logits(&net, m, &mu, &sd, &device)?;
    for r in &mut z {
        r.iter_mut().for_each(|v| *v /= head.temperature);
    }
    Ok(z)
}

/// Folds the standardisation into the first layer: `W'[c, h] = W[c, h] / sd_c`,
/// `b'_h = b_h - sum_c W'[c, h] mu_c`.
fn fold(hidden: &Dense, mu: &[f32], sd: &[f32]) -> Dense {
    let mut d = hidden.clone();
    let hn = d.outputs;
    for (c, (&m, &s)) in mu.iter().zip(sd).enumerate() {
        for h in 0..hn {
            let w = hidden.weight[c * hn + h] / s;
            d.weight[c * hn + h] = w;
            d.bias[h] -= w * m;
        }
    }
    d
}

/// Trains the cell head on `train`, keeping the epoch with the best validation AUC (ties:
/// lower validation NLL); `hidden` is the per-cell width, `context` whether each cell's
/// hidden layer also reads the image's channel means.
pub fn train(
    train: &Maps,
    val: &Maps,
    hidden: usize,
    context: bool,
    cfg: &HeadConfig,
    mut on_epoch: impl FnMut(&Epoch),
) -> Result<Trained, HeadError> {
    train.check("train")?;
    val.check("validation")?;
    if (train.channels, train.cells) != (val.channels, val.cells) || hidden == 0 {
        return Err(HeadError::Data(format!(
            "train maps {} x {}, validation maps {} x {}, hidden width {hidden}",
            train.channels, train.cells, val.channels, val.cells
        )));
    }
    let (c, n) = (train.channels, train.len());
    let (mu, sd) = channel_stats(train);
    let cw = class_weights(&train.y);
    let device = Device::flex().autodiff();
    device.seed(cfg.seed);
    let mut net = CellNet {
        hidden: LinearConfig::new(c, hidden)
            .with_initializer(Initializer::KaimingNormal {
                gain: std::f64::consts::SQRT_2,
                fan_out_only: false,
            })
            .init(&device),
        // No bias: the hidden layer has one. Kaiming like it, so that the image's context
        // starts as strong as a cell's own input.
        context: context.then(|| {
            LinearConfig::new(c, hidden)
                .with_bias(false)
                .with_initializer(Initializer::KaimingNormal {
                    gain: std::f64::consts::SQRT_2,
                    fan_out_only: false,
                })
                .init(&device)
        }),
        dropout: DropoutConfig::new(cfg.dropout).init(),
        // Small output weights: every class starts near uniform in every cell.
        out: LinearConfig::new(hidden, K)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 0.1 / (hidden as f64).sqrt(),
            })
            .init(&device),
    };
    let mut optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay)
        .init();
    let infer = Device::flex();
    let mut rng = Rng::new(cfg.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut best: Option<(f64, f64, Dense, Dense, Option<Dense>, usize)> = None;
    let mut history = Vec::new();
    for epoch in 1..=cfg.max_epochs {
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(cfg.batch.max(1)) {
            let ys: Vec<usize> = chunk.iter().map(|&i| train.y[i]).collect();
            let w = Tensor::<2>::from_data(
                TensorData::new(loss_weights(&ys, &cw), [chunk.len(), K]),
                &device,
            );
            let z = net.forward(batch(train, chunk, &mu, &sd, &device));
            let loss = (log_softmax(z, 1) * w).sum().neg();
            loss_sum += f64::from(tensor_vec(loss.clone())?[0]) * chunk.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(cfg.lr, net, grads);
        }
        let (h, o, ctx) = net.read()?;
        let z = logits(
            &CellNet::from_dense(&h, &o, ctx.as_ref(), &infer),
            val,
            &mu,
            &sd,
            &infer,
        )?;
        let (val_auc, val_nll) = head::auc_nll_of(&z, &val.y, 1.0);
        let e = Epoch {
            epoch,
            train_loss: loss_sum / n as f64,
            val_auc,
            val_nll,
        };
        log::debug!("cell head epoch {epoch}: val AUC {val_auc:.4}, NLL {val_nll:.4}");
        on_epoch(&e);
        history.push(e);
        let better = match &best {
            None => true,
            Some((a, l, ..)) => val_auc > a + 1e-9 || (val_auc >= a - 1e-9 && val_nll < *l),
        };
        if better {
            best = Some((val_auc, val_nll, h, o, ctx, epoch));
        } else if best
            .as_ref()
            .is_some_and(|(.., be)| epoch - be >= cfg.patience)
        {
            log::info!("cell head: early stop at epoch {epoch}");
            break;
        }
    }
    let Some((_, _, h, o, ctx, best_epoch)) = best else {
        return Err(HeadError::Data("no epochs run (max_epochs = 0)".into()));
    };
    Ok(Trained {
        head: CellClassifier {
            hidden: fold(&h, &mu, &sd),
            out: o,
            // The context reads means of standardised cells, the standardised means: the
            // same fold.
            context: ctx.map(|c| fold(&c, &mu, &sd)),
            temperature: 1.0,
        },
        best_epoch,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps of 8 channels x 9 cells: noise, and for abnormal classes a bright spot in one
    /// cell of channel `label`, the kind of finding a mean over cells dilutes.
    fn spots(n: usize, seed: u64) -> Maps {
        let mut r = Rng::new(seed);
        let mut m = Maps::new(8, 9);
        for i in 0..n {
            let label = i % K;
            let cell = r.below(9) as usize;
            for ch in 0..8 {
                for l in 0..9 {
                    let mut v = r.uniform() as f32;
                    if label > 0 && ch == label && l == cell {
                        v += 4.0;
                    }
                    m.x.push(f16::from_f32(v).to_bits());
                }
            }
            m.y.push(label);
        }
        m
    }

    #[test]
    fn learns_a_focal_finding_and_its_export_form_agrees() {
        let _burn = crate::BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let (tr, va) = (spots(240, 1), spots(120, 2));
        let cfg = HeadConfig {
            max_epochs: 40,
            patience: 40,
            batch: 16,
            lr: 1e-2,
            seed: 3,
            ..HeadConfig::default()
        };
        let a = train(&tr, &va, 16, false, &cfg, |_| {}).unwrap();
        let b = train(&tr, &va, 16, false, &cfg, |_| {}).unwrap();
        assert_eq!(a.head, b.head, "same seed, same head");
        let best = a.history[a.best_epoch - 1].val_auc;
        assert!(best > 0.97, "validation AUC {best}");

        // The folded head on raw maps, in burn and in plain arithmetic (the exported graph's
        // formula), gives the logits training saw, and a temperature divides them.
        let head = CellClassifier {
            temperature: 2.0,
            ..a.head.clone()
        };
        let z = predict_logits(&head, &va).unwrap();
        let (auc, _) = head::auc_nll_of(&z, &va.y, 0.5);
        assert!((auc - best).abs() < 1e-6, "{auc} vs {best}");
        plain_arithmetic_agrees(&head, &va, &z, &[0, 7, 33]);
    }

    /// `head`'s plain arithmetic (the exported graph's formula) on raw maps `idx` of `m`
    /// gives `z`, the logits burn computed for them.
    fn plain_arithmetic_agrees(head: &CellClassifier, m: &Maps, z: &[[f32; K]], idx: &[usize]) {
        for &i in idx {
            let raw: Vec<f32> = m
                .map(i)
                .iter()
                .map(|&v| f16::from_bits(v).to_f32())
                .collect();
            let plain = head.logits(&raw, m.cells).unwrap();
            for (p, q) in plain.iter().zip(&z[i]) {
                assert!((p - q).abs() < 1e-3, "{plain:?} vs {:?}", z[i]);
            }
        }
    }

    /// Maps of 8 channels x 9 cells whose label is an interaction no single cell holds: a
    /// bright spot (channel 1, in one of cells 3-8) and a raised background (channel 2 in
    /// cells 0-2) are each a finding alone and normal together (the spot a variant that
    /// background explains). Judged alone, a cell sees one of the two; pooled by a smooth
    /// maximum, verdicts of separate cells cannot express "exactly one". The image's
    /// channel means, read by every cell, can.
    fn mimics(n: usize, seed: u64) -> Maps {
        let mut r = Rng::new(seed);
        let mut m = Maps::new(8, 9);
        for i in 0..n {
            let (spot, background) = (i % 2 == 1, (i / 2) % 2 == 1);
            let cell = 3 + r.below(6) as usize;
            for ch in 0..8 {
                for l in 0..9 {
                    let mut v = r.uniform() as f32;
                    if ch == 1 && l == cell && spot {
                        v += 4.0;
                    }
                    if ch == 2 && l < 3 && background {
                        v += 3.0;
                    }
                    m.x.push(f16::from_f32(v).to_bits());
                }
            }
            m.y.push(usize::from(spot != background));
        }
        m
    }

    #[test]
    fn context_tells_a_mimic_from_a_finding_and_its_export_form_agrees() {
        let _burn = crate::BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let (tr, va) = (mimics(300, 4), mimics(150, 5));
        let cfg = HeadConfig {
            max_epochs: 60,
            patience: 60,
            batch: 16,
            lr: 1e-2,
            seed: 3,
            ..HeadConfig::default()
        };
        let alone = train(&tr, &va, 16, false, &cfg, |_| {}).unwrap();
        let with = train(&tr, &va, 16, true, &cfg, |_| {}).unwrap();
        let best = |t: &Trained| t.history[t.best_epoch - 1].val_auc;
        assert!(alone.head.context.is_none() && with.head.context.is_some());
        // Alone, the cells cannot: the two kinds of findings and the two of normal images
        // overlap.
        assert!(best(&alone) < 0.93, "cells alone: AUC {}", best(&alone));
        assert!(best(&with) > 0.97, "with context: AUC {}", best(&with));

        // The folded context on raw maps, in burn and in plain arithmetic.
        let z = predict_logits(&with.head, &va).unwrap();
        let (auc, _) = head::auc_nll_of(&z, &va.y, 1.0);
        assert!((auc - best(&with)).abs() < 1e-6, "{auc} vs {}", best(&with));
        plain_arithmetic_agrees(&with.head, &va, &z, &[0, 1, 2, 40]);
    }

    #[test]
    fn refuses_mismatched_maps() {
        let _burn = crate::BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let tr = spots(12, 1);
        let mut va = Maps::new(4, 9);
        va.x = vec![0; 36];
        va.y = vec![0];
        assert!(train(&tr, &va, 8, false, &HeadConfig::default(), |_| {}).is_err());
        let mut bad = spots(12, 1);
        bad.x.pop();
        assert!(train(&bad, &tr, 8, true, &HeadConfig::default(), |_| {}).is_err());
    }
}
