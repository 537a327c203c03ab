//! The view gate: is it a kidney at all?
//!
//! Fitted on the pooled backbone features (2048 per image) the head already uses, so it costs
//! the device nothing but two small extra outputs of the same network:
//!
//! - a learned head, p(kidney) from a one-hidden-layer network on kidney images against
//!   non-kidney views (liver, spleen, bladder, bowel, ribs over lung, lifted probe, planes
//!   beside the kidney). A separate output rather than a seventh class: p(abnormal) stays a
//!   probability among kidneys and the screening threshold keeps its meaning;
//! - an out-of-distribution score: the Mahalanobis distance of the features to the training
//!   kidneys, exact in the leading principal subspace plus the residual energy outside it
//!   (scaled by the mean residual variance), divided by the dimension so a typical kidney
//!   scores about 1. It needs no negatives, so it also refuses what nobody showed the model
//!   (an eye, a heart, a QA phantom, another scanner's kidney).
//!
//! Thresholds are set on validation: the OOD score's on the kidneys alone, to let through all
//! but a stated share of them ([`KIDNEY_LOSS_OOD`]), since it must not depend on which
//! negatives were shown; the learned head's by the cost of its two errors
//! ([`KIDNEY_REFUSAL_COST`]).

use nalgebra::{DMatrix, SymmetricEigen};

/// Why the gate could not be fitted.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Too few images of a kind.
    #[error("the view gate needs at least {need} {what} images, got {got}")]
    TooFew {
        /// What is missing.
        what: &'static str,
        /// Needed.
        need: usize,
        /// Got.
        got: usize,
    },
    /// Features of the wrong width, or not finite.
    #[error("view gate features: {0}")]
    Data(String),
}

/// Principal directions kept exactly (the rest enters as one residual term).
pub const COMPONENTS: usize = 64;
/// Largest number of training kidneys the covariance is estimated from (a deterministic,
/// evenly spread subset beyond that: the eigen-decomposition is cubic in it).
const MAX_FIT: usize = 1600;

/// What refusing a kidney costs against letting one non-kidney view through, when the
/// learned head's threshold is chosen: a refused kidney only delays a screening the clinician
/// is watching, but it is the screening; a non-kidney view let through gets an answer that
/// means nothing. The threshold minimises `COST * kidneys refused + others let through` on
/// validation, never above 0.5.
pub const KIDNEY_REFUSAL_COST: f64 = 4.0;
/// Share of validation kidneys the OOD score may refuse: its threshold is that quantile.
pub const KIDNEY_LOSS_OOD: f64 = 0.005;

/// Mahalanobis distance to the training kidneys (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Mahalanobis {
    /// Feature width.
    pub dim: usize,
    /// Mean feature of the training kidneys.
    pub mean: Vec<f32>,
    /// Principal directions, `dim x k` column-major in the ONNX sense: row `i` holds the
    /// `k` loadings of feature `i` (so `centered[N x dim] * components` projects).
    pub components: Vec<f32>,
    /// `1 / sqrt(variance)` along each direction.
    pub inv_sd: Vec<f32>,
    /// `1 / variance` of the residual outside the kept directions (its mean per dimension).
    pub residual_inv_var: f32,
}

impl Mahalanobis {
    /// Fits on `x` (`n x dim` row-major, kidneys only).
    pub fn fit(x: &[f32], dim: usize) -> Result<Self, GateError> {
        if dim == 0 || !x.len().is_multiple_of(dim) {
            return Err(GateError::Data(format!(
                "{} values for width {dim}",
                x.len()
            )));
        }
        let n_all = x.len() / dim;
        if n_all < 8 {
            return Err(GateError::TooFew {
                what: "training kidney",
                need: 8,
                got: n_all,
            });
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(GateError::Data("not finite".into()));
        }
        // Evenly spread subset when there are very many.
        let step = n_all.div_ceil(MAX_FIT);
        let rows: Vec<&[f32]> = x.chunks_exact(dim).step_by(step).collect();
        let n = rows.len();
        let mut mean = vec![0f64; dim];
        for r in &rows {
            for (m, v) in mean.iter_mut().zip(*r) {
                *m += f64::from(*v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let xc = DMatrix::from_fn(n, dim, |i, j| f64::from(rows[i][j]) - mean[j]);
        // The snapshot method: eigenvectors of the n x n Gram matrix give those of the
        // dim x dim covariance (n < dim here), at a fraction of the cost.
        let gram = &xc * xc.transpose() / (n - 1) as f64;
        let total_var = gram.trace();
        let eig = SymmetricEigen::new(gram);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        // Never as many directions as the width: what is left over is the residual term.
        let k = COMPONENTS.min(n - 2).min(dim - 1);
        let floor = 1e-9 * total_var.max(1e-30);
        let mut components = vec![0f32; dim * k];
        let mut inv_sd = Vec::with_capacity(k);
        let mut kept_var = 0.0;
        for (c, &e) in order.iter().take(k).enumerate() {
            let lambda = eig.eigenvalues[e].max(floor);
            kept_var += lambda;
            // v = Xc^T u / sqrt((n - 1) lambda): a unit vector in feature space.
            let u = eig.eigenvectors.column(e);
            let v = xc.transpose() * u / ((n - 1) as f64 * lambda).sqrt();
            for i in 0..dim {
                components[i * k + c] = v[i] as f32;
            }
            inv_sd.push((1.0 / lambda.sqrt()) as f32);
        }
        let residual_var = ((total_var - kept_var) / (dim - k) as f64).max(floor);
        Ok(Self {
            dim,
            mean: mean.iter().map(|m| *m as f32).collect(),
            components,
            inv_sd,
            residual_inv_var: (1.0 / residual_var) as f32,
        })
    }

    /// Directions kept.
    pub fn k(&self) -> usize {
        self.inv_sd.len()
    }

    /// The score of one feature row (what the exported graph computes).
    pub fn score(&self, x: &[f32]) -> f32 {
        let k = self.k();
        let centered: Vec<f32> = x.iter().zip(&self.mean).map(|(a, m)| a - m).collect();
        let total: f32 = centered.iter().map(|c| c * c).sum();
        let mut proj = vec![0f32; k];
        for (i, c) in centered.iter().enumerate() {
            let row = &self.components[i * k..(i + 1) * k];
            for (p, w) in proj.iter_mut().zip(row) {
                *p += c * w;
            }
        }
        let inside: f32 = proj.iter().map(|p| p * p).sum();
        let z: f32 = proj
            .iter()
            .zip(&self.inv_sd)
            .map(|(p, s)| (p * s) * (p * s))
            .sum();
        (z + (total - inside).max(0.0) * self.residual_inv_var) / self.dim as f32
    }
}

/// Hidden units of the learned head.
pub const HIDDEN: usize = 64;

/// p(kidney) = sigmoid(w2 . relu(W1^T x + b1) + b2): one hidden layer, because a linear
/// head on pooled features confuses a kidney filled by a large cyst with a full bladder.
#[derive(Debug, Clone, PartialEq)]
pub struct KidneyHead {
    /// `dim x HIDDEN` row-major (input standardisation folded in).
    pub w1: Vec<f32>,
    /// `HIDDEN` biases.
    pub b1: Vec<f32>,
    /// `HIDDEN` output weights.
    pub w2: Vec<f32>,
    /// Output bias.
    pub b2: f32,
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

type Mat = nalgebra::DMatrix<f32>;

/// Deterministic standard normal numbers.
fn normals(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = seeded::Rng::new(seed);
    (0..n).map(|_| rng.normal()).collect()
}

/// Adam state for one parameter block.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    fn step(&mut self, w: &mut [f32], g: &[f32], lr: f32, t: i32) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        for i in 0..w.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = self.m[i] / (1.0 - b1.powi(t));
            let vh = self.v[i] / (1.0 - b2.powi(t));
            w[i] -= lr * mh / (vh.sqrt() + eps);
        }
    }
}

impl KidneyHead {
    /// p(kidney) of one feature row.
    pub fn prob(&self, x: &[f32]) -> f32 {
        let h = self.b1.len();
        let mut z = self.b1.clone();
        for (i, v) in x.iter().enumerate() {
            if *v == 0.0 {
                continue;
            }
            for (zj, w) in z.iter_mut().zip(&self.w1[i * h..(i + 1) * h]) {
                *zj += v * w;
            }
        }
        let o: f32 = z
            .iter()
            .zip(&self.w2)
            .map(|(z, w)| z.max(0.0) * w)
            .sum::<f32>()
            + self.b2;
        sigmoid(o)
    }

    /// Trains on standardised features with both kinds weighted equally, full-batch Adam and
    /// L2 `decay`, early stopping on the validation log loss; deterministic for `seed`.
    pub fn fit(train: &Labelled, val: &Labelled, dim: usize, decay: f32, seed: u64) -> Self {
        let h = HIDDEN;
        let (mu, sd) = train.moments(dim);
        let standardise = |set: &Labelled| {
            let n = set.y.len();
            Mat::from_fn(n, dim, |r, c| (set.x[r * dim + c] - mu[c]) / sd[c])
        };
        let (tx, vx) = (standardise(train), standardise(val));
        let (npos, nneg) = train.counts();
        let weights: Vec<f32> = train
            .y
            .iter()
            .map(|y| {
                if *y {
                    0.5 / npos.max(1) as f32
                } else {
                    0.5 / nneg.max(1) as f32
                }
            })
            .collect();
        let scale = (2.0 / dim as f32).sqrt();
        let mut w1 = Mat::from_vec(
            dim,
            h,
            normals(dim * h, seed).iter().map(|v| v * scale).collect(),
        );
        let mut b1 = vec![0f32; h];
        let mut w2: Vec<f32> = normals(h, seed ^ 1)
            .iter()
            .map(|v| v * (1.0 / h as f32).sqrt())
            .collect();
        let mut b2 = 0f32;
        let (mut a_w1, mut a_b1, mut a_w2, mut a_b2) =
            (Adam::new(dim * h), Adam::new(h), Adam::new(h), Adam::new(1));
        let lr = 1e-3f32;
        let mut best = (f32::INFINITY, w1.clone(), b1.clone(), w2.clone(), b2);
        let mut since = 0;
        for step in 1..=600 {
            // Forward.
            let mut z1 = &tx * &w1;
            for mut row in z1.row_iter_mut() {
                for (v, b) in row.iter_mut().zip(&b1) {
                    *v += b;
                }
            }
            let a1 = z1.map(|v| v.max(0.0));
            // Backward through the output unit.
            let mut dz2 = vec![0f32; train.y.len()];
            for (r, (y, wt)) in train.y.iter().zip(&weights).enumerate() {
                let o: f32 = a1.row(r).iter().zip(&w2).map(|(a, w)| a * w).sum::<f32>() + b2;
                dz2[r] = (sigmoid(o) - f32::from(u8::from(*y))) * wt;
            }
            let mut gw2 = vec![0f32; h];
            for (r, d) in dz2.iter().enumerate() {
                for (g, a) in gw2.iter_mut().zip(a1.row(r).iter()) {
                    *g += d * a;
                }
            }
            let gb2: f32 = dz2.iter().sum();
            let dz1 = Mat::from_fn(train.y.len(), h, |r, c| {
                if z1[(r, c)] > 0.0 {
                    dz2[r] * w2[c]
                } else {
                    0.0
                }
            });
            let mut gw1 = tx.transpose() * &dz1;
            gw1 += &w1 * decay;
            let gb1: Vec<f32> = (0..h).map(|c| dz1.column(c).sum()).collect();
            let gw2: Vec<f32> = gw2.iter().zip(&w2).map(|(g, w)| g + decay * w).collect();
            a_w1.step(w1.as_mut_slice(), gw1.as_slice(), lr, step);
            a_b1.step(&mut b1, &gb1, lr, step);
            a_w2.step(&mut w2, &gw2, lr, step);
            let mut b2v = [b2];
            a_b2.step(&mut b2v, &[gb2], lr, step);
            b2 = b2v[0];
            if step % 5 == 0 {
                let loss = mlp_loss(&vx, &val.y, &w1, &b1, &w2, b2);
                if loss < best.0 - 1e-5 {
                    best = (loss, w1.clone(), b1.clone(), w2.clone(), b2);
                    since = 0;
                } else {
                    since += 1;
                    if since >= 20 {
                        break;
                    }
                }
            }
        }
        let (_, w1, b1, w2, b2) = best;
        // Fold the standardisation into the first layer: W1^T ((x - mu) / sd) + b1.
        let mut fw1 = vec![0f32; dim * h];
        let mut fb1 = b1.clone();
        for i in 0..dim {
            for c in 0..h {
                let w = w1[(i, c)] / sd[i];
                fw1[i * h + c] = w;
                fb1[c] -= w * mu[i];
            }
        }
        Self {
            w1: fw1,
            b1: fb1,
            w2,
            b2,
        }
    }
}

/// Balanced log loss of standardised rows through the network.
fn mlp_loss(x: &Mat, y: &[bool], w1: &Mat, b1: &[f32], w2: &[f32], b2: f32) -> f32 {
    let z1 = x * w1;
    let (mut sum, mut n) = ([0f32; 2], [0usize; 2]);
    for (r, yy) in y.iter().enumerate() {
        let o: f32 = z1
            .row(r)
            .iter()
            .zip(b1)
            .zip(w2)
            .map(|((z, b), w)| (z + b).max(0.0) * w)
            .sum::<f32>()
            + b2;
        let p = sigmoid(o).clamp(1e-6, 1.0 - 1e-6);
        let k = usize::from(*yy);
        sum[k] -= if *yy { p.ln() } else { (1.0 - p).ln() };
        n[k] += 1;
    }
    (0..2).map(|k| sum[k] / n[k].max(1) as f32).sum::<f32>() / 2.0
}

/// Feature rows with "is a kidney" labels.
#[derive(Debug, Clone, Default)]
pub struct Labelled {
    /// `n x dim` row-major.
    pub x: Vec<f32>,
    /// True for kidneys.
    pub y: Vec<bool>,
}

impl Labelled {
    /// Adds one row.
    pub fn push(&mut self, x: &[f32], kidney: bool) {
        self.x.extend_from_slice(x);
        self.y.push(kidney);
    }

    /// (kidneys, others).
    pub fn counts(&self) -> (usize, usize) {
        let k = self.y.iter().filter(|y| **y).count();
        (k, self.y.len() - k)
    }

    /// The kidney rows only.
    pub fn kidneys(&self, dim: usize) -> Vec<f32> {
        self.x
            .chunks_exact(dim)
            .zip(&self.y)
            .filter(|(_, y)| **y)
            .flat_map(|(r, _)| r.iter().copied())
            .collect()
    }

    /// Per-feature mean and standard deviation (floored).
    fn moments(&self, dim: usize) -> (Vec<f32>, Vec<f32>) {
        let n = self.y.len().max(1) as f64;
        let mut mean = vec![0f64; dim];
        let mut sq = vec![0f64; dim];
        for r in self.x.chunks_exact(dim) {
            for i in 0..dim {
                let v = f64::from(r[i]);
                mean[i] += v;
                sq[i] += v * v;
            }
        }
        let mu: Vec<f32> = mean.iter().map(|m| (m / n) as f32).collect();
        let sd = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / n - (m / n) * (m / n)).max(0.0).sqrt().max(1e-4)) as f32)
            .collect();
        (mu, sd)
    }
}

/// A fitted gate: both signals, their thresholds and how they did on validation.
#[derive(Debug, Clone)]
pub struct ViewGate {
    /// The learned head.
    pub head: KidneyHead,
    /// No kidney when p(kidney) is below this.
    pub kidney_threshold: f32,
    /// The OOD score.
    pub ood: Mahalanobis,
    /// Unlike the training kidneys above this.
    pub ood_threshold: f32,
    /// Validation figures.
    pub metrics: contract::manifest::ViewGateMetrics,
}

/// The learned head's threshold: among the observed probabilities (and 0.5), the one with
/// the lowest validation cost (see [`KIDNEY_REFUSAL_COST`]), the highest on ties; never above
/// 0.5, so a frame the head finds more likely a kidney than not is never refused by it.
fn cost_threshold(kidneys: &[f32], others: &[f32]) -> f32 {
    let nk = kidneys.len().max(1) as f64;
    let no = others.len().max(1) as f64;
    let cost = |t: f32| {
        let refused = kidneys.iter().filter(|p| **p < t).count() as f64 / nk;
        let through = others.iter().filter(|p| **p >= t).count() as f64 / no;
        KIDNEY_REFUSAL_COST * refused + through
    };
    let mut best = (cost(0.5), 0.5f32);
    for &t in kidneys.iter().chain(others) {
        // Just above an observed value, so that value falls below the threshold.
        let t = (t * (1.0 + 1e-6) + 1e-12).min(0.5);
        let c = cost(t);
        if c < best.0 - 1e-12 || (c <= best.0 + 1e-12 && t > best.1) {
            best = (c, t);
        }
    }
    best.1
}

/// The value below which a share `q` of `v` lies (nearest rank).
fn quantile(v: &[f32], q: f64) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let i = ((q * s.len() as f64).floor() as usize).min(s.len().saturating_sub(1));
    s.get(i).copied().unwrap_or(f32::NAN)
}

impl ViewGate {
    /// Fits both signals on `train` and sets the thresholds on the validation kidneys (see
    /// [`KIDNEY_REFUSAL_COST`], [`KIDNEY_LOSS_OOD`]).
    pub fn fit(train: &Labelled, val: &Labelled, dim: usize) -> Result<Self, GateError> {
        let (tk, to) = train.counts();
        let (vk, vo) = val.counts();
        for (what, got, need) in [
            ("training kidney", tk, 8),
            ("training non-kidney", to, 4),
            ("validation kidney", vk, 4),
        ] {
            if got < need {
                return Err(GateError::TooFew { what, need, got });
            }
        }
        let ood = Mahalanobis::fit(&train.kidneys(dim), dim)?;
        let head = KidneyHead::fit(train, val, dim, 1e-3, 0x4B49_444E);
        let (mut pk, mut po, mut sk) = (Vec::new(), Vec::new(), Vec::new());
        for (r, y) in val.x.chunks_exact(dim).zip(&val.y) {
            if *y {
                pk.push(head.prob(r));
                sk.push(ood.score(r));
            } else {
                po.push(head.prob(r));
            }
        }
        let kidney_threshold = cost_threshold(&pk, &po);
        let ood_threshold = quantile(&sk, 1.0 - KIDNEY_LOSS_OOD);
        let mut gate = Self {
            head,
            kidney_threshold,
            ood,
            ood_threshold,
            metrics: contract::manifest::ViewGateMetrics {
                n_kidney: vk,
                n_other: vo,
                kidney_pass: 0.0,
                other_gated: 0.0,
                other_gated_learned: 0.0,
                other_gated_ood: 0.0,
            },
        };
        gate.metrics = gate.measure(val, dim);
        Ok(gate)
    }

    /// Which signals fire for one row: (learned, ood).
    pub fn fires(&self, x: &[f32]) -> (bool, bool) {
        (
            self.head.prob(x) < self.kidney_threshold,
            self.ood.score(x) > self.ood_threshold,
        )
    }

    /// Pass and catch rates on labelled rows.
    pub fn measure(&self, set: &Labelled, dim: usize) -> contract::manifest::ViewGateMetrics {
        let (mut pass, mut gated, mut learned, mut ood) = (0usize, 0usize, 0usize, 0usize);
        let (nk, no) = set.counts();
        for (r, y) in set.x.chunks_exact(dim).zip(&set.y) {
            let (l, o) = self.fires(r);
            if *y {
                pass += usize::from(!l && !o);
            } else {
                gated += usize::from(l || o);
                learned += usize::from(l);
                ood += usize::from(o);
            }
        }
        let rate = |a: usize, b: usize| {
            if b == 0 {
                f64::NAN
            } else {
                a as f64 / b as f64
            }
        };
        contract::manifest::ViewGateMetrics {
            n_kidney: nk,
            n_other: no,
            kidney_pass: rate(pass, nk),
            other_gated: rate(gated, no),
            other_gated_learned: rate(learned, no),
            other_gated_ood: rate(ood, no),
        }
    }

    /// The gate as the exporter writes it into the network.
    pub fn export(&self) -> resnet50::GateHead {
        resnet50::GateHead {
            kidney_w1: self.head.w1.clone(),
            kidney_b1: self.head.b1.clone(),
            kidney_w2: self.head.w2.clone(),
            kidney_b2: self.head.b2,
            mean: self.ood.mean.clone(),
            components: self.ood.components.clone(),
            inv_sd: self.ood.inv_sd.clone(),
            residual_inv_var: self.ood.residual_inv_var,
        }
    }

    /// The manifest's `[view_gate]`.
    pub fn manifest(&self, negatives: &str) -> contract::manifest::ViewGate {
        contract::manifest::ViewGate {
            kidney_output: resnet50::onnx::KIDNEY.into(),
            kidney_threshold: f64::from(self.kidney_threshold),
            ood_output: resnet50::onnx::OOD.into(),
            ood_threshold: f64::from(self.ood_threshold),
            rule: format!(
                "learned: the p(kidney) threshold (at most 0.5) with the lowest validation cost, \
                 a refused kidney counting {} non-kidney views let through; OOD: the quantile \
                 that refuses {:.1}% of the validation kidneys, on the Mahalanobis distance to \
                 the training kidneys' pooled features ({} principal directions plus the \
                 residual) divided by the dimension",
                KIDNEY_REFUSAL_COST,
                100.0 * KIDNEY_LOSS_OOD,
                self.ood.k()
            ),
            negatives: negatives.to_string(),
            validation: self.metrics.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-normal numbers.
    fn gauss(seed: &mut u64) -> f32 {
        let mut u = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 11) as f64 / (1u64 << 53) as f64).max(1e-12)
        };
        let (a, b) = (u(), u());
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    }

    /// Kidneys: a correlated cloud around 1.0 in 32 dimensions; others shifted along a
    /// direction of little variance.
    fn set(n_k: usize, n_o: usize, seed: u64) -> Labelled {
        let dim = 32;
        let mut s = seed | 1;
        let mut out = Labelled::default();
        for i in 0..n_k + n_o {
            let common = gauss(&mut s);
            let mut r: Vec<f32> = (0..dim)
                .map(|j| 1.0 + common * (j as f32 / dim as f32) + 0.1 * gauss(&mut s))
                .collect();
            let kidney = i < n_k;
            if !kidney {
                r[3] += 1.5;
                r[7] -= 1.5;
            }
            out.push(&r, kidney);
        }
        out
    }

    #[test]
    fn the_cost_threshold_weighs_refused_kidneys_four_times() {
        // Kidneys mostly high, two low; others low. Refusing the two low kidneys (cost 4 x
        // 2/100) is worth catching the others only if that catches more than 8% of them.
        let mut k = vec![0.9f32; 98];
        k.extend([0.01, 0.02]);
        let o = vec![0.015f32; 50];
        let t = cost_threshold(&k, &o);
        assert!(t > 0.015 && t <= 0.02, "{t}");
        // Nothing to separate: the cap.
        assert_eq!(cost_threshold(&[0.9; 10], &[0.1; 10]), 0.5);
    }

    #[test]
    fn mahalanobis_of_the_training_mean_is_small_and_of_an_outlier_large() {
        let t = set(300, 0, 3);
        let m = Mahalanobis::fit(&t.kidneys(32), 32).unwrap();
        let typical: f32 = t.x.chunks_exact(32).map(|r| m.score(r)).sum::<f32>() / 300.0;
        assert!((typical - 1.0).abs() < 0.2, "typical score {typical}");
        assert!(m.score(&m.mean.clone()) < 0.05);
        let mut out = m.mean.clone();
        out[5] += 2.0;
        assert!(m.score(&out) > 5.0, "{}", m.score(&out));
    }

    #[test]
    fn the_gate_separates_kidneys_from_the_rest_at_the_chosen_rates() {
        let (tr, va, te) = (set(300, 100, 5), set(200, 80, 6), set(400, 200, 7));
        let g = ViewGate::fit(&tr, &va, 32).unwrap();
        let m = g.measure(&te, 32);
        assert!(m.kidney_pass >= 0.97, "{m:?}");
        assert!(m.other_gated >= 0.99, "{m:?}");
        assert!(g.kidney_threshold <= 0.5);
        // Too few negatives is a clear error.
        let few = set(300, 2, 8);
        assert!(matches!(
            ViewGate::fit(&few, &va, 32),
            Err(GateError::TooFew {
                what: "training non-kidney",
                ..
            })
        ));
    }
}
