//! Screening metrics: AUC with a DeLong confidence interval, the operating point, the
//! per-abnormality table of the reference study, confusion matrix and calibration error.
//!
//! These are our own code on purpose: no maintained Rust crate computes DeLong's interval,
//! and each function is short and checked against a hand computation below.

use std::collections::BTreeMap;

use contract::Taxonomy;
use serde::Serialize;

use crate::study;

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Errors computing metrics.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    /// AUC needs both classes.
    #[error("need at least one normal and one abnormal image (got {normal} normal, {abnormal} abnormal)")]
    OneClass {
        /// Normal images.
        normal: usize,
        /// Abnormal images.
        abnormal: usize,
    },
    /// A prediction has the wrong number of probabilities or an out-of-range label.
    #[error(
        "prediction {index}: label {label} with {probs} probabilities (expected {classes} classes)"
    )]
    Shape {
        /// Which prediction.
        index: usize,
        /// Its label.
        label: usize,
        /// Its probability count.
        probs: usize,
        /// Classes expected.
        classes: usize,
    },
}

/// One scored image: its true class and the model's class probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Output index of the true class, in the model's taxonomy.
    pub label: usize,
    /// Softmax output, one per class.
    pub probs: Vec<f32>,
}

impl Prediction {
    /// The screening score p(abnormal), as the model's taxonomy defines it.
    pub fn p_abnormal(&self, t: &Taxonomy) -> f64 {
        t.p_abnormal_f64(&self.probs)
    }

    /// Index of the most probable class.
    pub fn argmax(&self) -> usize {
        argmax(&self.probs)
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Area under the ROC curve (Mann-Whitney; ties count one half). `pos` are the scores of the
/// positives (abnormal), `neg` those of the negatives.
pub fn auc(pos: &[f64], neg: &[f64]) -> f64 {
    delong(pos, neg).auc
}

/// AUC with its DeLong standard error and 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AucCi {
    /// The AUC.
    pub auc: f64,
    /// DeLong standard error.
    pub se: f64,
    /// Lower end of the 95% interval (clipped to 0).
    pub lo: f64,
    /// Upper end (clipped to 1).
    pub hi: f64,
}

fn psi(x: f64, y: f64) -> f64 {
    if x > y {
        1.0
    } else if x == y {
        0.5
    } else {
        0.0
    }
}

fn sample_var(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64
}

/// DeLong et al. (1988): the AUC's variance from the structural components, so the interval
/// needs no resampling. O(m n), fine for study-sized sets. Returns NaN if a side is empty.
pub fn delong(pos: &[f64], neg: &[f64]) -> AucCi {
    let (m, n) = (pos.len(), neg.len());
    if m == 0 || n == 0 {
        return AucCi {
            auc: f64::NAN,
            se: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
        };
    }
    let mut v01 = vec![0.0; n];
    let v10: Vec<f64> = pos
        .iter()
        .map(|&x| {
            let mut s = 0.0;
            for (j, &y) in neg.iter().enumerate() {
                let p = psi(x, y);
                s += p;
                v01[j] += p;
            }
            s / n as f64
        })
        .collect();
    for v in &mut v01 {
        *v /= m as f64;
    }
    let auc = v10.iter().sum::<f64>() / m as f64;
    let se = (sample_var(&v10) / m as f64 + sample_var(&v01) / n as f64).sqrt();
    AucCi {
        auc,
        se,
        lo: (auc - Z95 * se).max(0.0),
        hi: (auc + Z95 * se).min(1.0),
    }
}

/// ROC curve points `(fpr, tpr)` from (0,0) to (1,1), one step per distinct score.
pub fn roc(pos: &[f64], neg: &[f64]) -> Vec<(f64, f64)> {
    let mut all: Vec<(f64, bool)> = pos
        .iter()
        .map(|&s| (s, true))
        .chain(neg.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (m, n) = (pos.len().max(1) as f64, neg.len().max(1) as f64);
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut pts = vec![(0.0, 0.0)];
    let mut i = 0;
    while i < all.len() {
        let s = all[i].0;
        while i < all.len() && all[i].0 == s {
            if all[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        pts.push((fp as f64 / n, tp as f64 / m));
    }
    pts
}

/// The highest threshold at which at least `target` of the positives score `>=` it: the
/// operating point chosen on validation data. Returns 0.5 when there are no positives.
pub fn threshold_for_sensitivity(pos: &[f64], target: f64) -> f64 {
    score_ranked(pos, rank_in_sample(pos.len(), target))
}

/// The `rank`-th highest score (1 = highest); 0.5 when there are none.
fn score_ranked(pos: &[f64], rank: usize) -> f64 {
    let mut s = pos.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s.get(rank.saturating_sub(1)).copied().unwrap_or(0.5)
}

/// The rank (1 = highest) [`threshold_for_sensitivity`] takes among `n` positive scores.
pub fn rank_in_sample(n: usize, target: f64) -> usize {
    ((target.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n.max(1))
}

/// The rank (1 = highest) [`threshold_for_sensitivity_on_new`] takes among `n` positive
/// scores.
pub fn rank_on_new(n: usize, target: f64) -> usize {
    ((target.clamp(0.0, 1.0) * (n + 1) as f64).ceil() as usize).clamp(1, n.max(1))
}

/// The threshold for `target` sensitivity on positives not yet seen, from `pos`: the
/// `ceil(target * (n + 1))`-th highest of the n scores (the lowest when n is too small for
/// that). A new positive exchangeable with these ranks above the k-th highest with
/// probability k / (n + 1), so the in-sample rule ([`threshold_for_sensitivity`]) promises
/// more than it keeps: on 40 images its 38th score leaves 92.7% on average, and a confident
/// model's top scores crowd together so the threshold climbs. What a small site's set needs.
/// Returns 0.5 when there are no positives.
pub fn threshold_for_sensitivity_on_new(pos: &[f64], target: f64) -> f64 {
    score_ranked(pos, rank_on_new(pos.len(), target))
}

/// The log-odds of probability `p`, clamped to 1e-6..1 - 1e-6 so a threshold at 0 or 1
/// stays finite: thresholds are compared and averaged on this scale, where the distance
/// between 0.98 and 0.99 counts as much as between 0.5 and 0.67.
pub fn log_odds(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// The chance that at most `allowed` of the next `next` cases go wrong, when `errors` of
/// `seen` like cases went wrong: the beta-binomial predictive under Jeffreys' prior. It asks
/// what a screening setting is for (will it keep its targets on the exams to come?) and
/// charges a rate measured on few cases for its uncertainty, where the observed rate alone
/// would credit a setting with the luck of the cases it was chosen on.
pub fn chance_at_most(errors: usize, seen: usize, next: usize, allowed: usize) -> f64 {
    let errors = errors.min(seen);
    beta_binomial_cdf(
        next,
        errors as f64 + 0.5,
        (seen - errors) as f64 + 0.5,
        allowed,
    )
}

/// P(X <= x) for X ~ BetaBinomial(m, a, b), from P(X = 0) = prod (b + i) / (a + b + i) and
/// the ratio of successive terms: no gamma function, exact to rounding for any m.
fn beta_binomial_cdf(m: usize, a: f64, b: f64, x: usize) -> f64 {
    if x >= m {
        return 1.0;
    }
    let ln_p0: f64 = (0..m)
        .map(|i| ((b + i as f64) / (a + b + i as f64)).ln())
        .sum();
    let mut p = ln_p0.exp();
    let mut total = p;
    for k in 0..x {
        let k = k as f64;
        let m = m as f64;
        p *= (m - k) / (k + 1.0) * (k + a) / (m - k - 1.0 + b);
        total += p;
    }
    total.min(1.0)
}

/// Sensitivity and specificity at `threshold` (score `>=` threshold means abnormal).
pub fn sens_spec(pos: &[f64], neg: &[f64], threshold: f64) -> (f64, f64) {
    let tp = pos.iter().filter(|&&s| s >= threshold).count();
    let tn = neg.iter().filter(|&&s| s < threshold).count();
    (
        tp as f64 / pos.len().max(1) as f64,
        tn as f64 / neg.len().max(1) as f64,
    )
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bin {
    /// Mean confidence of the bin's images.
    pub confidence: f64,
    /// Fraction of them classified correctly.
    pub accuracy: f64,
    /// How many.
    pub count: usize,
}

/// Reliability bins (equal width on [0, 1]) of top-label confidence vs correctness.
pub fn reliability(conf: &[f64], correct: &[bool], bins: usize) -> Vec<Bin> {
    let bins = bins.max(1);
    let mut acc = vec![(0.0, 0.0, 0usize); bins];
    for (&c, &ok) in conf.iter().zip(correct) {
        let b = ((c * bins as f64) as usize).min(bins - 1);
        acc[b].0 += c;
        acc[b].1 += f64::from(u8::from(ok));
        acc[b].2 += 1;
    }
    acc.into_iter()
        .map(|(c, a, n)| Bin {
            confidence: if n > 0 { c / n as f64 } else { 0.0 },
            accuracy: if n > 0 { a / n as f64 } else { 0.0 },
            count: n,
        })
        .collect()
}

/// Expected calibration error (Guo et al. 2017): count-weighted |accuracy - confidence|
/// over equal-width bins of top-label confidence.
pub fn ece(conf: &[f64], correct: &[bool], bins: usize) -> f64 {
    let total = conf.len().max(1) as f64;
    reliability(conf, correct, bins)
        .iter()
        .map(|b| b.count as f64 / total * (b.accuracy - b.confidence).abs())
        .sum()
}

/// Top-label confidence and correctness of each prediction (for [`ece`]).
pub fn confidences(preds: &[Prediction]) -> (Vec<f64>, Vec<bool>) {
    preds
        .iter()
        .map(|p| {
            let k = p.argmax();
            (f64::from(p.probs[k]), k == p.label)
        })
        .unzip()
}

/// Normal vs abnormal figures at the operating point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overall {
    /// Images scored.
    pub n: usize,
    /// Of which normal.
    pub n_normal: usize,
    /// Of which abnormal.
    pub n_abnormal: usize,
    /// AUC of p(abnormal).
    pub auc: f64,
    /// DeLong 95% interval `[lo, hi]`.
    pub auc_ci: [f64; 2],
    /// Binary accuracy at the threshold.
    pub accuracy: f64,
    /// Abnormal images flagged.
    pub sensitivity: f64,
    /// Normal images passed (the study's "normal" accuracy).
    pub specificity: f64,
    /// The operating threshold on p(abnormal).
    pub threshold: f64,
    /// Six-class accuracy (argmax).
    pub accuracy_6class: f64,
    /// Expected calibration error, 10 bins, top-label.
    pub ece: f64,
}

/// One abnormality type against the normal images (the study's per-type table).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeMetrics {
    /// Images of this type.
    pub n: usize,
    /// Accuracy at the threshold over this type plus all normal images.
    pub accuracy: f64,
    /// AUC of p(abnormal), this type vs normal.
    pub auc: f64,
    /// DeLong 95% interval.
    pub auc_ci: [f64; 2],
    /// Images of this type flagged abnormal.
    pub sensitivity: f64,
}

/// Everything `metrics.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Class names, in matrix order.
    pub classes: Vec<String>,
    /// Index of the normal class in `classes`.
    pub normal_index: usize,
    /// Normal vs abnormal.
    pub overall: Overall,
    /// Per abnormality type vs normal.
    pub per_type: BTreeMap<String, TypeMetrics>,
    /// `confusion[true][predicted]` (argmax).
    pub confusion: Vec<Vec<usize>>,
    /// Reliability diagram bins.
    pub reliability: Vec<Bin>,
    /// ROC points `(fpr, tpr)`: "overall" and one per type.
    #[serde(skip)]
    pub roc: BTreeMap<String, Vec<(f64, f64)>>,
    /// The reference study's table at the screening threshold and at the Youden point.
    pub study: Vec<study::StudyPoint>,
    /// The view gate on these images (kidney views passed, non-kidney views gated), when the
    /// model has one; the screening figures above count every kidney view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view_gate: Option<contract::manifest::ViewGateMetrics>,
}

impl From<&Overall> for contract::manifest::OverallMetrics {
    fn from(o: &Overall) -> Self {
        Self {
            n: Some(o.n),
            n_normal: Some(o.n_normal),
            n_abnormal: Some(o.n_abnormal),
            auc: o.auc,
            auc_ci: Some(o.auc_ci),
            accuracy: o.accuracy,
            sensitivity: o.sensitivity,
            specificity: o.specificity,
            threshold: Some(o.threshold),
            accuracy_6class: Some(o.accuracy_6class),
            ece: Some(o.ece),
        }
    }
}

impl From<&TypeMetrics> for contract::manifest::TypeMetrics {
    fn from(t: &TypeMetrics) -> Self {
        Self {
            n: Some(t.n),
            accuracy: t.accuracy,
            auc: t.auc,
            auc_ci: Some(t.auc_ci),
            sensitivity: Some(t.sensitivity),
        }
    }
}

impl Evaluation {
    /// Labels of the abnormal classes, in output order.
    pub fn abnormal_classes(&self) -> impl Iterator<Item = &str> {
        self.classes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.normal_index)
            .map(|(_, l)| l.as_str())
    }
}

fn ci(a: &AucCi) -> [f64; 2] {
    [a.lo, a.hi]
}

/// Scores `preds` (labels and probabilities in `t`'s output order) at `threshold` on
/// p(abnormal).
pub fn evaluate(
    t: &Taxonomy,
    preds: &[Prediction],
    threshold: f64,
) -> Result<Evaluation, MetricsError> {
    let k = t.len();
    let normal = t.normal_index();
    let score = |p: &Prediction| p.p_abnormal(t);
    for (index, p) in preds.iter().enumerate() {
        if p.probs.len() != k || p.label >= k {
            return Err(MetricsError::Shape {
                index,
                label: p.label,
                probs: p.probs.len(),
                classes: k,
            });
        }
    }
    let neg: Vec<f64> = preds
        .iter()
        .filter(|p| p.label == normal)
        .map(score)
        .collect();
    let pos: Vec<f64> = preds
        .iter()
        .filter(|p| p.label != normal)
        .map(score)
        .collect();
    if neg.is_empty() || pos.is_empty() {
        return Err(MetricsError::OneClass {
            normal: neg.len(),
            abnormal: pos.len(),
        });
    }
    let a = delong(&pos, &neg);
    let (sens, spec) = sens_spec(&pos, &neg, threshold);
    let correct_bin = pos.iter().filter(|&&s| s >= threshold).count()
        + neg.iter().filter(|&&s| s < threshold).count();
    let mut confusion = vec![vec![0usize; k]; k];
    for p in preds {
        confusion[p.label][p.argmax()] += 1;
    }
    let diag: usize = (0..k).map(|i| confusion[i][i]).sum();
    let (conf, correct) = confidences(preds);
    let mut roc_curves = BTreeMap::new();
    roc_curves.insert("overall".to_string(), roc(&pos, &neg));
    let mut per_type = BTreeMap::new();
    let mut type_scores = Vec::new();
    for (c, name) in t.labels().iter().enumerate().filter(|(c, _)| *c != normal) {
        let tp: Vec<f64> = preds.iter().filter(|p| p.label == c).map(score).collect();
        if tp.is_empty() {
            continue;
        }
        type_scores.push((name.clone(), tp.clone()));
        let at = delong(&tp, &neg);
        let (s, _) = sens_spec(&tp, &neg, threshold);
        let ok = tp.iter().filter(|&&x| x >= threshold).count()
            + neg.iter().filter(|&&x| x < threshold).count();
        per_type.insert(
            name.clone(),
            TypeMetrics {
                n: tp.len(),
                accuracy: ok as f64 / (tp.len() + neg.len()) as f64,
                auc: at.auc,
                auc_ci: ci(&at),
                sensitivity: s,
            },
        );
        roc_curves.insert(name.clone(), roc(&tp, &neg));
    }
    Ok(Evaluation {
        classes: t.labels().to_vec(),
        normal_index: normal,
        overall: Overall {
            n: preds.len(),
            n_normal: neg.len(),
            n_abnormal: pos.len(),
            auc: a.auc,
            auc_ci: ci(&a),
            accuracy: correct_bin as f64 / preds.len() as f64,
            sensitivity: sens,
            specificity: spec,
            threshold,
            accuracy_6class: diag as f64 / preds.len() as f64,
            ece: ece(&conf, &correct, 10),
        },
        per_type,
        confusion,
        reliability: reliability(&conf, &correct, 10),
        roc: roc_curves,
        study: vec![
            study::point("screening threshold", threshold, &type_scores, &neg),
            study::point(
                "Youden point of these images",
                study::youden(&pos, &neg),
                &type_scores,
                &neg,
            ),
        ],
        view_gate: None,
    })
}

/// A small made-up evaluation (60 images, every class) for the report and plot tests.
#[cfg(test)]
pub(crate) fn sample_evaluation() -> Evaluation {
    let mut preds = Vec::new();
    for i in 0..60 {
        let label = i % 6;
        let noise = (i as f32 * 0.37).fract() * 0.5;
        let mut probs = vec![0.02; 6];
        probs[label] = 0.5 + noise * 0.5;
        probs[0] += if label == 0 { 0.0 } else { noise * 0.3 };
        preds.push(Prediction { label, probs });
    }
    evaluate(&Taxonomy::standard(), &preds, 0.5).expect("sample evaluation")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn beta_binomial_is_uniform_under_a_flat_prior() {
        // BetaBinomial(m, 1, 1) gives each of 0..=m the chance 1 / (m + 1).
        for x in 0..=4 {
            assert!(close(
                beta_binomial_cdf(4, 1.0, 1.0, x),
                (x + 1) as f64 / 5.0
            ));
        }
        // Another hand case: m = 2, a = 2, b = 1: P(0) = 1*2/(3*4) = 1/6, P(1) = 2*(2*1)/(3*4) = 1/3.
        assert!(close(beta_binomial_cdf(2, 2.0, 1.0, 0), 1.0 / 6.0));
        assert!(close(beta_binomial_cdf(2, 2.0, 1.0, 1), 0.5));
    }

    #[test]
    fn the_chance_to_hold_a_target_charges_few_cases_for_their_uncertainty() {
        // Nothing seen: Jeffreys' prior is symmetric, one next case errs half the time.
        assert!(close(chance_at_most(0, 0, 1, 0), 0.5));
        // Allowing every case to go wrong always holds.
        assert_eq!(chance_at_most(3, 10, 5, 5), 1.0);
        // No error in 10 cases promises less than none in 1,000 (same observed rate, 0%).
        let few = chance_at_most(0, 10, 50, 0);
        let many = chance_at_most(0, 1000, 50, 0);
        assert!(few < many && many < 1.0, "{few} {many}");
        // 2% seen on many cases, 5 of 250 allowed (98%): near the binomial's 0.62.
        let c = chance_at_most(200, 10_000, 250, 5);
        assert!((c - 0.616).abs() < 0.02, "{c}");
        // More errors seen, less chance; more allowed, more chance.
        assert!(chance_at_most(6, 700, 250, 5) > chance_at_most(12, 700, 250, 5));
        assert!(chance_at_most(6, 700, 250, 8) > chance_at_most(6, 700, 250, 5));
    }

    #[test]
    fn delong_matches_hand_computation() {
        // Pairs: 0.9 and 0.8 beat both negatives, 0.4 beats only 0.3: AUC 5/6.
        // V10 = [1, 1, 0.5] (var 1/12), V01 = [2/3, 1] (var 1/18): Var = 1/36 + 1/36.
        let a = delong(&[0.9, 0.8, 0.4], &[0.5, 0.3]);
        assert!(close(a.auc, 5.0 / 6.0));
        assert!(close(a.se, (1.0f64 / 18.0).sqrt()));
        assert!(close(a.hi, 1.0));
    }

    #[test]
    fn ties_count_half() {
        assert!(close(auc(&[0.5], &[0.5]), 0.5));
        assert!(close(auc(&[1.0, 0.2], &[0.2, 0.0]), 0.875));
    }

    #[test]
    fn roc_runs_corner_to_corner() {
        let r = roc(&[0.9, 0.6], &[0.7, 0.1]);
        assert_eq!(r.first(), Some(&(0.0, 0.0)));
        assert_eq!(r.last(), Some(&(1.0, 1.0)));
        assert_eq!(r[1], (0.0, 0.5));
    }

    #[test]
    fn the_threshold_for_new_positives_takes_the_rank_that_keeps_the_target_on_average() {
        // 40 positives: the in-sample rule takes the 38th highest, this one the 39th
        // (ceil(0.95 * 41)), whose expected sensitivity on a new positive is 39 / 41 >= 0.95.
        let pos: Vec<f64> = (0..40).map(|i| 1.0 - i as f64 / 100.0).collect();
        assert!(close(threshold_for_sensitivity(&pos, 0.95), pos[37]));
        assert!(close(threshold_for_sensitivity_on_new(&pos, 0.95), pos[38]));
        // Too few positives to promise the target: the lowest score.
        assert!(close(
            threshold_for_sensitivity_on_new(&pos[..10], 0.95),
            pos[9]
        ));
        assert!(close(threshold_for_sensitivity_on_new(&[], 0.95), 0.5));
        // Never above the in-sample rule's.
        for n in 1..60 {
            let pos: Vec<f64> = (0..n).map(|i| ((i * 37) % 101) as f64 / 101.0).collect();
            assert!(
                threshold_for_sensitivity_on_new(&pos, 0.9) <= threshold_for_sensitivity(&pos, 0.9)
            );
        }
    }

    #[test]
    fn threshold_reaches_target_sensitivity() {
        let pos = [0.9, 0.8, 0.7, 0.6, 0.1];
        let t = threshold_for_sensitivity(&pos, 0.8);
        assert!(close(t, 0.6));
        assert!(sens_spec(&pos, &[], t).0 >= 0.8);
        assert!(close(threshold_for_sensitivity(&pos, 1.0), 0.1));
    }

    #[test]
    fn ece_of_perfect_and_overconfident() {
        assert!(close(ece(&[1.0, 1.0], &[true, true], 10), 0.0));
        assert!(close(ece(&[0.95, 0.95], &[true, false], 10), 0.45));
    }

    fn pred(label: usize, p_normal: f32, top: usize) -> Prediction {
        let mut probs = vec![0.0; 6];
        probs[0] = p_normal;
        if top == 0 {
            probs[1] = 1.0 - p_normal;
        } else {
            probs[top] = 1.0 - p_normal;
        }
        Prediction { label, probs }
    }

    #[test]
    fn evaluation_table() {
        let preds = vec![
            pred(0, 0.9, 0),
            pred(0, 0.3, 2), // false positive
            pred(1, 0.1, 1),
            pred(2, 0.2, 2),
            pred(2, 0.8, 0), // missed cyst
        ];
        let e = evaluate(&Taxonomy::standard(), &preds, 0.5).unwrap();
        assert_eq!(e.overall.n_normal, 2);
        assert!(close(e.overall.sensitivity, 2.0 / 3.0));
        assert!(close(e.overall.specificity, 0.5));
        assert!(close(e.overall.accuracy, 3.0 / 5.0));
        // Overall AUC: positives 0.9, 0.8, 0.2 vs negatives 0.1, 0.7: 5 of 6 pairs.
        assert!(close(e.overall.auc, 5.0 / 6.0));
        assert!(close(e.per_type["stone"].auc, 1.0));
        assert!(close(e.per_type["cyst"].auc, 0.75));
        assert!(close(e.per_type["cyst"].accuracy, 0.5));
        assert_eq!(e.confusion[2][0], 1);
        assert!(!e.per_type.contains_key("sol"));
        assert!(close(e.overall.accuracy_6class, 3.0 / 5.0));
    }

    #[test]
    fn one_class_is_an_error() {
        let preds = vec![pred(1, 0.1, 1)];
        assert!(matches!(
            evaluate(&Taxonomy::standard(), &preds, 0.5),
            Err(MetricsError::OneClass { normal: 0, .. })
        ));
    }
}
