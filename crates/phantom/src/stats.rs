//! Image statistics used to check realism and difficulty: speckle statistics of a region,
//! global intensity histograms, and a small logistic regression with AUC.

/// Speckle statistics of a rectangular grey region.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionStats {
    pub mean: f64,
    pub std: f64,
    /// mean / std of the displayed (log-compressed) grey values.
    pub snr: f64,
    /// Standard deviation after removing the local mean (31 x 31 box): speckle alone,
    /// without slow shading, which real regions are never free of.
    pub std_local: f64,
    /// Full widths at half maximum of the detrended autocorrelation, pixels (lateral,
    /// axial): the speckle grain size.
    pub corr_x: f64,
    pub corr_y: f64,
}

fn luma(img: &image::RgbImage, x: u32, y: u32) -> f64 {
    let p = img.get_pixel(x, y).0;
    0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
}

/// Statistics of region (x0, y0, w, h), clipped to the image.
pub fn region_stats(img: &image::RgbImage, x0: u32, y0: u32, w: u32, h: u32) -> RegionStats {
    let x1 = (x0 + w).min(img.width());
    let y1 = (y0 + h).min(img.height());
    let (w, h) = ((x1 - x0.min(x1)) as usize, (y1 - y0.min(y1)) as usize);
    let v: Vec<f64> = (0..w * h)
        .map(|i| luma(img, x0 + (i % w) as u32, y0 + (i / w) as u32))
        .collect();
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / n).sqrt();
    // Detrend: subtract a 31 x 31 box mean (clipped at the region edge).
    let k = 15usize;
    let res: Vec<f64> = (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            let (xa, xb) = (x.saturating_sub(k), (x + k + 1).min(w));
            let (ya, yb) = (y.saturating_sub(k), (y + k + 1).min(h));
            let mut s = 0.0;
            for yy in ya..yb {
                s += v[yy * w + xa..yy * w + xb].iter().sum::<f64>();
            }
            v[i] - s / ((xb - xa) * (yb - ya)) as f64
        })
        .collect();
    let var_l = res.iter().map(|a| a * a).sum::<f64>() / n;
    let corr = |dx: usize, dy: usize| -> f64 {
        let (mut s, mut c) = (0.0, 0usize);
        for y in 0..h.saturating_sub(dy) {
            for x in 0..w.saturating_sub(dx) {
                s += res[y * w + x] * res[(y + dy) * w + x + dx];
                c += 1;
            }
        }
        if c == 0 || var_l == 0.0 {
            0.0
        } else {
            s / c as f64 / var_l
        }
    };
    let fwhm = |horizontal: bool| -> f64 {
        let mut prev = 1.0;
        for d in 1..30usize {
            let c = if horizontal { corr(d, 0) } else { corr(0, d) };
            if c < 0.5 {
                let f = (prev - 0.5) / (prev - c);
                return 2.0 * ((d - 1) as f64 + f);
            }
            prev = c;
        }
        60.0
    };
    RegionStats {
        mean,
        std,
        snr: if std > 0.0 { mean / std } else { 0.0 },
        std_local: var_l.sqrt(),
        corr_x: fwhm(true),
        corr_y: fwhm(false),
    }
}

/// Normalised global intensity histogram (luma) with `bins` bins.
pub fn histogram(img: &image::RgbImage, bins: usize) -> Vec<f64> {
    let mut h = vec![0.0; bins];
    for p in img.pixels() {
        let l = (0.299 * p.0[0] as f64 + 0.587 * p.0[1] as f64 + 0.114 * p.0[2] as f64) as usize;
        h[(l * bins / 256).min(bins - 1)] += 1.0;
    }
    let n = (img.width() * img.height()) as f64;
    h.iter_mut().for_each(|v| *v /= n);
    h
}

/// Area under the ROC curve of `scores` for binary `labels` (ties count half).
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in &idx[i..=j] {
            if labels[*k] {
                rank_sum += r;
            }
        }
        i = j + 1;
    }
    let np = labels.iter().filter(|l| **l).count() as f64;
    let nn = labels.len() as f64 - np;
    if np == 0.0 || nn == 0.0 {
        return 0.5;
    }
    (rank_sum - np * (np + 1.0) / 2.0) / (np * nn)
}

/// L2-regularised logistic regression by gradient descent on standardised features.
/// Returns a scoring function's weights (bias last) and the standardisation.
pub struct Logistic {
    mean: Vec<f64>,
    scale: Vec<f64>,
    w: Vec<f64>,
}

impl Logistic {
    pub fn fit(x: &[Vec<f64>], y: &[bool], l2: f64, iters: usize) -> Self {
        let d = x.first().map_or(0, |r| r.len());
        let n = x.len().max(1) as f64;
        let mut mean = vec![0.0; d];
        let mut scale = vec![0.0; d];
        for r in x {
            for j in 0..d {
                mean[j] += r[j] / n;
            }
        }
        for r in x {
            for j in 0..d {
                scale[j] += (r[j] - mean[j]).powi(2) / n;
            }
        }
        scale.iter_mut().for_each(|s| *s = s.sqrt().max(1e-9));
        let z: Vec<Vec<f64>> = x
            .iter()
            .map(|r| (0..d).map(|j| (r[j] - mean[j]) / scale[j]).collect())
            .collect();
        // Balance the classes so the prior does not dominate.
        let np = y.iter().filter(|v| **v).count().max(1) as f64;
        let nn = (y.len() as f64 - np).max(1.0);
        let mut w = vec![0.0; d + 1];
        let lr = 0.5;
        for _ in 0..iters {
            let mut g = vec![0.0; d + 1];
            for (r, &t) in z.iter().zip(y) {
                let s = w[d] + r.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
                let p = 1.0 / (1.0 + (-s).exp());
                let wt = if t { 0.5 / np } else { 0.5 / nn };
                let e = (p - if t { 1.0 } else { 0.0 }) * wt;
                for j in 0..d {
                    g[j] += e * r[j];
                }
                g[d] += e;
            }
            for j in 0..d {
                w[j] -= lr * (g[j] + l2 * w[j]);
            }
            w[d] -= lr * g[d];
        }
        Logistic { mean, scale, w }
    }

    pub fn score(&self, r: &[f64]) -> f64 {
        let d = self.mean.len();
        self.w[d]
            + (0..d)
                .map(|j| (r[j] - self.mean[j]) / self.scale[j] * self.w[j])
                .sum::<f64>()
    }
}

/// Cross-validated AUC of a logistic regression on global intensity histograms, normal vs
/// abnormal: how far a classifier gets without looking at anatomy. Two folds split by
/// patient (patients never straddle train and test). Returns (overall AUC, per-class AUC
/// of each abnormal class against normal).
pub fn histogram_auc(specs: &[crate::ImageSpec], bins: usize) -> (f64, Vec<(crate::Class, f64)>) {
    use rayon::prelude::*;
    let r = crate::Renderer::new();
    let x: Vec<Vec<f64>> = specs
        .par_iter()
        .map(|s| histogram(&r.render(s), bins))
        .collect();
    let y: Vec<bool> = specs.iter().map(|s| s.class.is_abnormal()).collect();
    let mut scores = vec![0.0; specs.len()];
    for fold in 0..2u32 {
        let train: Vec<usize> = (0..specs.len())
            .filter(|&i| specs[i].patient_id % 2 != fold)
            .collect();
        let xt: Vec<Vec<f64>> = train.iter().map(|&i| x[i].clone()).collect();
        let yt: Vec<bool> = train.iter().map(|&i| y[i]).collect();
        let m = Logistic::fit(&xt, &yt, 1e-2, 400);
        for i in 0..specs.len() {
            if specs[i].patient_id % 2 == fold {
                scores[i] = m.score(&x[i]);
            }
        }
    }
    let overall = auc(&scores, &y);
    let per = crate::Class::ABNORMAL
        .iter()
        .map(|&c| {
            let idx: Vec<usize> = (0..specs.len())
                .filter(|&i| specs[i].class == c || !y[i])
                .collect();
            let s: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
            let l: Vec<bool> = idx.iter().map(|&i| y[i]).collect();
            (c, auc(&s, &l))
        })
        .collect();
    (overall, per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_extremes() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), 0.5);
    }

    #[test]
    fn logistic_learns_a_separable_problem() {
        let x: Vec<Vec<f64>> = (0..100).map(|i| vec![i as f64, (i % 7) as f64]).collect();
        let y: Vec<bool> = (0..100).map(|i| i >= 50).collect();
        let m = Logistic::fit(&x, &y, 1e-3, 300);
        let s: Vec<f64> = x.iter().map(|r| m.score(r)).collect();
        assert!(auc(&s, &y) > 0.99);
    }
}
