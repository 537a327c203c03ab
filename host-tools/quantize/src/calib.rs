//! Activation statistics and the calibrators that turn them into a clip threshold.
//!
//! Activations are quantized symmetrically, so only `|x|` matters: one histogram of
//! magnitudes per tensor, built in a single pass. The range is not known before the first
//! image, so the histogram doubles its range (merging bin pairs) whenever a larger value
//! arrives: resolution never drops below half the bins over the true maximum.

use serde::Serialize;

/// Histogram bins per tensor (TensorRT uses 2048 for its entropy calibrator).
pub const DEFAULT_BINS: usize = 2048;
/// Quantization levels on one side of zero for int8.
const LEVELS: usize = 128;

/// How the clip threshold of a tensor is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "param")]
pub enum Calibrator {
    /// The largest magnitude seen: no clipping, coarsest steps.
    MinMax,
    /// The given percentile of `|x|` (e.g. 99.99): clips rare outliers.
    Percentile(f64),
    /// The threshold minimising the KL divergence between the magnitude distribution and
    /// its 128-level quantized version (TensorRT's entropy calibration).
    Entropy,
    /// [`Calibrator::Entropy`] on the histogram without its exact zeros: post-Relu tensors
    /// hold a spike of zeros (quantized exactly, whatever the threshold) that otherwise
    /// dominates the KL search and makes it clip hard.
    EntropyNoZeros,
    /// The threshold minimising the expected squared quantization error (rounding below
    /// it, clipping above it) over the histogram, exact zeros costing nothing.
    Mse,
}

impl Calibrator {
    /// Short name for logs and reports.
    pub fn name(&self) -> String {
        match self {
            Calibrator::MinMax => "minmax".into(),
            Calibrator::Percentile(p) => format!("percentile-{p}"),
            Calibrator::Entropy => "entropy".into(),
            Calibrator::EntropyNoZeros => "entropy-nozeros".into(),
            Calibrator::Mse => "mse".into(),
        }
    }
}

/// Histogram of `|x|` over `[0, range]` with a growing range.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bins: Vec<u64>,
    range: f32,
    max: f32,
    count: u64,
    /// Exact zeros among `count` (all in bin 0).
    zeros: u64,
}

impl Histogram {
    /// An empty histogram with `bins` bins (at least [`LEVELS`], even).
    pub fn new(bins: usize) -> Self {
        let bins = bins.max(LEVELS).next_multiple_of(2);
        Self {
            bins: vec![0; bins],
            range: 0.0,
            max: 0.0,
            count: 0,
            zeros: 0,
        }
    }

    /// Largest magnitude seen.
    pub fn max(&self) -> f32 {
        self.max
    }

    /// Values seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn width(&self) -> f32 {
        self.range / self.bins.len() as f32
    }

    /// Adds values (non-finite ones are ignored).
    pub fn add(&mut self, values: &[f32]) {
        let batch_max = values
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |m, v| m.max(v.abs()));
        self.max = self.max.max(batch_max);
        self.zeros += values.iter().filter(|v| **v == 0.0).count() as u64;
        if self.range == 0.0 {
            if batch_max == 0.0 {
                // All zeros so far: count them in bin 0 without fixing a range.
                self.bins[0] += values.iter().filter(|v| v.is_finite()).count() as u64;
                self.count += values.iter().filter(|v| v.is_finite()).count() as u64;
                return;
            }
            self.range = batch_max;
        }
        while batch_max > self.range {
            self.double();
        }
        let n = self.bins.len();
        let inv = n as f32 / self.range;
        for v in values.iter().filter(|v| v.is_finite()) {
            let i = ((v.abs() * inv) as usize).min(n - 1);
            self.bins[i] += 1;
        }
        self.count += values.iter().filter(|v| v.is_finite()).count() as u64;
    }

    fn double(&mut self) {
        let n = self.bins.len();
        for k in 0..n / 2 {
            self.bins[k] = self.bins[2 * k] + self.bins[2 * k + 1];
        }
        self.bins[n / 2..].iter_mut().for_each(|b| *b = 0);
        self.range *= 2.0;
    }

    /// The clip threshold (magnitude mapped to 127) that `calibrator` picks.
    pub fn threshold(&self, calibrator: Calibrator) -> f32 {
        if self.max == 0.0 || self.range == 0.0 {
            return 0.0;
        }
        match calibrator {
            Calibrator::MinMax => self.max,
            Calibrator::Percentile(p) => self.percentile(p).min(self.max),
            Calibrator::Entropy => self.entropy_threshold(&self.bins).min(self.max),
            Calibrator::EntropyNoZeros => {
                let mut bins = self.bins.clone();
                bins[0] -= self.zeros.min(bins[0]);
                self.entropy_threshold(&bins).min(self.max)
            }
            Calibrator::Mse => self.mse_threshold().min(self.max),
        }
    }

    /// Expected squared error of symmetric int8 quantization with clip threshold `t`, from
    /// bin centres: values beyond `t` cost their distance to it, values below a uniform
    /// rounding error of `step^2 / 12`; exact zeros cost nothing.
    fn squared_error(&self, t: f64) -> f64 {
        let w = f64::from(self.width());
        let step = t / (LEVELS - 1) as f64;
        let round = step * step / 12.0;
        self.bins
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let n = if i == 0 { b - self.zeros.min(b) } else { b } as f64;
                let c = (i as f64 + 0.5) * w;
                if c > t {
                    n * ((c - t) * (c - t) + round)
                } else {
                    n * round
                }
            })
            .sum()
    }

    /// Upper bin edge minimising [`Histogram::squared_error`].
    fn mse_threshold(&self) -> f32 {
        let last = self.bins.iter().rposition(|&b| b > 0).unwrap_or(0) + 1;
        let w = f64::from(self.width());
        let mut best = (f64::INFINITY, last);
        for i in 1..=last {
            let e = self.squared_error(i as f64 * w);
            if e < best.0 {
                best = (e, i);
            }
        }
        best.1 as f32 * self.width()
    }

    /// Upper edge of the bin where the cumulative count reaches `p` percent.
    fn percentile(&self, p: f64) -> f32 {
        let target = (p.clamp(0.0, 100.0) / 100.0 * self.count as f64).ceil() as u64;
        let mut acc = 0u64;
        for (i, b) in self.bins.iter().enumerate() {
            acc += b;
            if acc >= target {
                return (i + 1) as f32 * self.width();
            }
        }
        self.range
    }

    /// TensorRT's search: for each candidate `i` (bins kept), the reference distribution
    /// `P` is the first `i` bins with everything beyond folded into the last one; `Q`
    /// spreads `P` over 128 levels (each level's mass shared evenly among its non-empty
    /// bins). The threshold is the upper edge of the `i` minimising KL(P || Q).
    fn entropy_threshold(&self, bins: &[u64]) -> f32 {
        let n = bins.len();
        let last = bins.iter().rposition(|&b| b > 0).unwrap_or(0) + 1;
        if last <= LEVELS {
            return last as f32 * self.width();
        }
        let mut best = (f64::INFINITY, last);
        let mut p = vec![0f64; n];
        let mut q = vec![0f64; n];
        for i in LEVELS..=last {
            let outliers: u64 = bins[i..].iter().sum();
            p[..i]
                .iter_mut()
                .zip(&bins[..i])
                .for_each(|(d, &b)| *d = b as f64);
            p[i - 1] += outliers as f64;
            // Quantize the first i bins (without outliers) into LEVELS levels.
            for level in 0..LEVELS {
                let start = level * i / LEVELS;
                let end = ((level + 1) * i / LEVELS).max(start + 1);
                let mass: u64 = bins[start..end].iter().sum();
                let nonzero = bins[start..end].iter().filter(|&&b| b > 0).count();
                for j in start..end {
                    q[j] = if bins[j] > 0 {
                        mass as f64 / nonzero as f64
                    } else {
                        0.0
                    };
                }
            }
            let kl = kl_divergence(&p[..i], &q[..i]);
            if kl < best.0 {
                best = (kl, i);
            }
        }
        best.1 as f32 * self.width()
    }
}

/// KL(P || Q) of two unnormalised distributions; bins where P has mass but Q has none
/// cost as if Q had a tiny mass there (as TensorRT smooths).
fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    let eps = 1e-4 / sq.max(1.0);
    p.iter()
        .zip(q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| {
            let pa = a / sp;
            let qb = (b / sq).max(eps);
            pa * (pa / qb).ln()
        })
        .sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic uniforms in (0, 1) (open: half a step off zero), shared by the crate's
    /// tests.
    pub(crate) fn uniforms(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = seeded::Rng::new(seed);
        (0..n)
            .map(|_| ((rng.u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64)
            .collect()
    }

    #[test]
    fn growing_range_keeps_counts_and_max() {
        let mut h = Histogram::new(256);
        h.add(&[0.0, 0.0]);
        h.add(&[1.0, -0.5]);
        h.add(&[7.9, f32::NAN]);
        assert_eq!(h.count(), 5);
        assert_eq!(h.max(), 7.9);
        assert_eq!(h.bins.iter().sum::<u64>(), 5);
        assert!(h.range >= 7.9 && h.range <= 2.0 * 7.9);
        assert_eq!(h.threshold(Calibrator::MinMax), 7.9);
    }

    #[test]
    fn percentile_of_uniform() {
        let v: Vec<f32> = uniforms(100_000, 7).iter().map(|u| *u as f32).collect();
        let mut h = Histogram::new(DEFAULT_BINS);
        h.add(&v);
        let t = h.threshold(Calibrator::Percentile(90.0));
        assert!((t - 0.9).abs() < 0.01, "{t}");
    }

    #[test]
    fn entropy_clips_a_heavy_tail_but_not_a_uniform() {
        // Laplace-like magnitudes (exponential) with a few huge outliers: the KL threshold
        // sits far below the maximum; for a uniform distribution it keeps (nearly) all.
        let mut v: Vec<f32> = uniforms(200_000, 3)
            .iter()
            .map(|u| (-u.ln()) as f32)
            .collect();
        v.extend([60.0, -80.0, 100.0]);
        let mut h = Histogram::new(DEFAULT_BINS);
        h.add(&v);
        let t = h.threshold(Calibrator::Entropy);
        assert!(
            t < 0.3 * h.max(),
            "entropy threshold {t} of max {}",
            h.max()
        );
        assert!(t > 5.0, "clipped into the body of the distribution: {t}");

        let u: Vec<f32> = uniforms(200_000, 5).iter().map(|u| *u as f32).collect();
        let mut hu = Histogram::new(DEFAULT_BINS);
        hu.add(&u);
        let tu = hu.threshold(Calibrator::Entropy);
        assert!(tu > 0.9 * hu.max(), "uniform clipped at {tu}");
    }

    #[test]
    fn mse_clips_a_heavy_tail_keeps_a_uniform_and_ignores_zeros() {
        // Exponential magnitudes (max about ln(200000) = 12.2): the int8 MSE optimum for a
        // Laplace distribution of unit scale is near 9.9, inside the range.
        let v: Vec<f32> = uniforms(200_000, 3)
            .iter()
            .map(|u| (-u.ln()) as f32)
            .collect();
        let mut h = Histogram::new(DEFAULT_BINS);
        h.add(&v);
        let t = h.threshold(Calibrator::Mse);
        assert!(
            t < 0.9 * h.max() && t > 7.0,
            "mse threshold {t} of max {}",
            h.max()
        );
        // A spike of exact zeros (post-Relu) does not move it.
        let mut hz = h.clone();
        hz.add(&vec![0.0; 400_000]);
        assert_eq!(hz.threshold(Calibrator::Mse), t);

        let u: Vec<f32> = uniforms(200_000, 5).iter().map(|u| *u as f32).collect();
        let mut hu = Histogram::new(DEFAULT_BINS);
        hu.add(&u);
        let tu = hu.threshold(Calibrator::Mse);
        assert!(tu > 0.95 * hu.max(), "uniform clipped at {tu}");
    }

    #[test]
    fn entropy_without_zeros_clips_less_on_a_zero_spike() {
        // Half exact zeros, half exponential magnitudes: the plain KL search is pulled
        // towards the spike; without zeros it keeps more of the tail.
        let mut v: Vec<f32> = uniforms(100_000, 9)
            .iter()
            .map(|u| (-u.ln()) as f32)
            .collect();
        v.extend(vec![0.0; 100_000]);
        let mut h = Histogram::new(DEFAULT_BINS);
        h.add(&v);
        let with = h.threshold(Calibrator::Entropy);
        let without = h.threshold(Calibrator::EntropyNoZeros);
        assert!(without > with, "{without} <= {with}");
        assert!(without <= h.max());
    }

    #[test]
    fn all_zero_tensor_has_zero_threshold() {
        let mut h = Histogram::new(DEFAULT_BINS);
        h.add(&[0.0; 10]);
        for c in [
            Calibrator::MinMax,
            Calibrator::Percentile(99.99),
            Calibrator::Entropy,
            Calibrator::EntropyNoZeros,
            Calibrator::Mse,
        ] {
            assert_eq!(h.threshold(c), 0.0);
        }
    }
}
