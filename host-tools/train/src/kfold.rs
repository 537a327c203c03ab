//! k-fold cross-validation of stage 1, by patient and stratified: the protocol a small
//! clinic data set needs, where one held-out split is too few patients to trust.
//!
//! Each patient's images go to one fold (folds balanced per majority class). For fold i the
//! test images are fold i; the other folds are split again by patient into training and
//! validation (`val_fraction`), the head is trained, its temperature and operating threshold
//! are set on that validation set exactly as a normal run does, and the test fold is scored.
//! Backbone features (pooled for the linear head, layer-3 maps for the cell head) are
//! extracted once for every image (cached). The report gives each
//! fold's figures, their mean with a t-interval over folds, and the pooled test predictions'
//! AUC (DeLong) with sensitivity and specificity at each fold's own threshold.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use contract::Taxonomy;
use evaluate::{delong, evaluate, threshold_for_sensitivity, Evaluation, Prediction};
use serde::Serialize;

use crate::activations::{self, ActivationCache, Item};
use crate::cells::{self, Maps};
use crate::dataset::{self, Sample, Split};
use crate::extract::{self, FeatureCache};
use crate::head::{self, Features};
use crate::pipeline::{TrainError, TrainOptions};
use seeded::Rng;

/// One fold's result.
#[derive(Debug, Clone, Serialize)]
pub struct Fold {
    /// 1-based.
    pub fold: usize,
    /// Patients in its test set.
    pub test_patients: usize,
    /// Images (train, validation, test).
    pub images: [usize; 3],
    /// Epoch kept by early stopping.
    pub best_epoch: usize,
    /// Temperature fitted on its validation set.
    pub temperature: f32,
    /// Threshold for the target sensitivity on its validation set.
    pub threshold: f64,
    /// Its test images at that threshold.
    pub test: evaluate::Overall,
}

/// Mean, standard deviation and a 95% t-interval of one figure over the folds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
    pub ci: [f64; 2],
}

/// The whole cross-validation.
#[derive(Debug, Clone, Serialize)]
pub struct CrossValidation {
    pub k: usize,
    pub seed: u64,
    pub target_sensitivity: f64,
    pub folds: Vec<Fold>,
    /// AUC, sensitivity, specificity and accuracy over folds.
    pub auc: Spread,
    pub sensitivity: Spread,
    pub specificity: Spread,
    pub accuracy: Spread,
    /// Every test prediction pooled: AUC with its DeLong interval.
    pub pooled_auc: f64,
    pub pooled_auc_ci: [f64; 2],
    /// Pooled, each image judged at its own fold's threshold.
    pub pooled_sensitivity: f64,
    pub pooled_specificity: f64,
    pub pooled_n: [usize; 2],
    pub seconds: f64,
}

/// Two-sided 97.5% quantiles of Student's t for 1..=30 degrees of freedom.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

fn spread(v: &[f64]) -> Spread {
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return Spread {
            mean,
            sd: f64::NAN,
            ci: [f64::NAN; 2],
        };
    }
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let t = T975.get(n - 2).copied().unwrap_or(1.96);
    let h = t * sd / (n as f64).sqrt();
    Spread {
        mean,
        sd,
        ci: [mean - h, mean + h],
    }
}

/// Patients into `k` folds, stratified by each patient's majority label; deterministic
/// for the seed.
pub fn assign_folds(samples: &[Sample], k: usize, seed: u64) -> HashMap<String, usize> {
    let by_class = dataset::patients_by_class(samples.iter());
    let mut rng = Rng::new(seed ^ 0x6B66_6F6C_6473);
    let mut out = HashMap::new();
    // Deal each class's shuffled patients round-robin, continuing where the last class
    // stopped so that small classes do not all start at fold 0.
    let mut next = 0usize;
    for (_, mut pats) in by_class {
        rng.shuffle(&mut pats);
        for p in pats {
            out.insert(p.to_string(), next % k);
            next += 1;
        }
    }
    out
}

/// Runs `k`-fold cross-validation of stage 1 on `opt.data` and writes `cv.json` and
/// `cv-report.md` into `opt.out`. No model is exported: train without folds for that.
pub fn run(
    opt: &TrainOptions,
    k: usize,
    backbone_onnx: &Path,
) -> Result<CrossValidation, TrainError> {
    let t0 = Instant::now();
    if !(2..=20).contains(&k) {
        return Err(TrainError::Config(format!(
            "--folds {k}: use 2 to 20 folds (5 or 10 are usual)"
        )));
    }
    fs::create_dir_all(&opt.out).map_err(|source| TrainError::Io {
        path: opt.out.display().to_string(),
        source,
    })?;
    let mut samples: Vec<Sample> = dataset::load(&opt.data)?
        .into_iter()
        .filter(Sample::is_kidney)
        .collect();
    for s in &mut samples {
        s.split = None; // a split column is ignored: folds replace it
    }
    let folds = assign_folds(&samples, k, opt.head.seed);
    let patients_per_fold = (0..k)
        .map(|i| folds.values().filter(|&&f| f == i).count())
        .collect::<Vec<_>>();
    if let Some(i) = patients_per_fold.iter().position(|&n| n < 2) {
        return Err(TrainError::Config(format!(
            "--folds {k}: fold {} gets {} patients; {} has {} patients in all: use fewer folds",
            i + 1,
            patients_per_fold[i],
            opt.data.display(),
            folds.len()
        )));
    }

    let paths: Vec<usimage::FrameRef> = samples.iter().map(Sample::frame_ref).collect();
    let inputs = Inputs::extract(opt, &paths, backbone_onnx)?;

    let taxonomy = Taxonomy::standard();
    let normal = taxonomy.normal_index();
    let mut out_folds = Vec::new();
    let mut pooled: Vec<(f64, bool, bool)> = Vec::new(); // (score, abnormal, called)
    for (i, &test_patients) in patients_per_fold.iter().enumerate() {
        let mut fold_samples: Vec<Sample> = samples.clone();
        for s in &mut fold_samples {
            if folds[&s.patient] == i {
                s.split = Some(Split::Test);
            }
        }
        // The rest: training and validation by patient, as a normal run splits.
        dataset::assign_splits(
            &mut fold_samples,
            opt.val_fraction,
            0.0,
            opt.head.seed.wrapping_add(i as u64),
        );
        let f = inputs.train_fold(opt, &fold_samples)?;
        let t = head::fit_temperature_of(&f.val.0, &f.val.1);
        let preds = |(z, y): &(Vec<[f32; head::K]>, Vec<usize>)| -> Vec<Prediction> {
            z.iter()
                .zip(y)
                .map(|(z, &label)| Prediction {
                    label,
                    probs: head::softmax_t(z, t),
                })
                .collect()
        };
        let (va, te) = (&f.val, &f.test);
        let val_pos: Vec<f64> = preds(va)
            .iter()
            .filter(|p| p.label != normal)
            .map(|p| p.p_abnormal(&taxonomy))
            .collect();
        let threshold = threshold_for_sensitivity(&val_pos, opt.target_sensitivity);
        let test_preds = preds(te);
        let e: Evaluation = evaluate(&taxonomy, &test_preds, threshold)?;
        for p in &test_preds {
            let s = p.p_abnormal(&taxonomy);
            pooled.push((s, p.label != normal, s >= threshold));
        }
        log::info!(
            "fold {}/{k}: {} test images, AUC {:.4}, sensitivity {:.3}, specificity {:.3} at \
             threshold {threshold:.4}",
            i + 1,
            te.1.len(),
            e.overall.auc,
            e.overall.sensitivity,
            e.overall.specificity
        );
        out_folds.push(Fold {
            fold: i + 1,
            test_patients,
            images: [f.train_images, va.1.len(), te.1.len()],
            best_epoch: f.best_epoch,
            temperature: t,
            threshold,
            test: e.overall,
        });
    }
    let pick = |f: fn(&Fold) -> f64| spread(&out_folds.iter().map(f).collect::<Vec<_>>());
    let pos: Vec<f64> = pooled.iter().filter(|p| p.1).map(|p| p.0).collect();
    let neg: Vec<f64> = pooled.iter().filter(|p| !p.1).map(|p| p.0).collect();
    let a = delong(&pos, &neg);
    let tp = pooled.iter().filter(|p| p.1 && p.2).count();
    let tn = pooled.iter().filter(|p| !p.1 && !p.2).count();
    let cv = CrossValidation {
        k,
        seed: opt.head.seed,
        target_sensitivity: opt.target_sensitivity,
        auc: pick(|f| f.test.auc),
        sensitivity: pick(|f| f.test.sensitivity),
        specificity: pick(|f| f.test.specificity),
        accuracy: pick(|f| f.test.accuracy),
        folds: out_folds,
        pooled_auc: a.auc,
        pooled_auc_ci: [a.lo, a.hi],
        pooled_sensitivity: tp as f64 / pos.len().max(1) as f64,
        pooled_specificity: tn as f64 / neg.len().max(1) as f64,
        pooled_n: [neg.len(), pos.len()],
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_files(&opt.out, &opt.data, &cv)?;
    Ok(cv)
}

/// What every fold trains from, read once for all images: pooled features (the linear
/// head) or layer-3 maps (the cell head), with the augmented views of every image (each
/// trains in some fold).
enum Inputs {
    Pooled {
        feats: Vec<Result<Vec<f32>, String>>,
        views: Vec<Result<Vec<f32>, String>>,
    },
    Maps {
        /// Per image, its original's map then its views', or why it failed.
        maps: Vec<Result<Vec<Vec<u16>>, String>>,
        hidden: usize,
    },
}

/// One fold's trained head, as logits (temperature 1) with labels.
struct FoldOutcome {
    val: (Vec<[f32; head::K]>, Vec<usize>),
    test: (Vec<[f32; head::K]>, Vec<usize>),
    train_images: usize,
    best_epoch: usize,
}

impl Inputs {
    fn extract(
        opt: &TrainOptions,
        paths: &[usimage::FrameRef],
        backbone_onnx: &Path,
    ) -> Result<Self, TrainError> {
        let backbone_sha = extract::file_sha256(backbone_onnx)?;
        if let Some(hidden) = opt.cell_head {
            let items: Vec<Item> = paths
                .iter()
                .map(|p| Item {
                    frame: p.clone(),
                    views: opt.head_views,
                })
                .collect();
            let mut cache = ActivationCache::open(&opt.cache_dir, &backbone_sha)?;
            let (hashes, _) = activations::extract(
                &items,
                (backbone_onnx, resnet50::onnx::FEATURES),
                &mut cache,
                opt.head.seed,
                opt.threads,
            )?;
            extract::check_failures(paths, &hashes, opt.max_failed_pct)?;
            let mut maps = Vec::with_capacity(hashes.len());
            for h in hashes {
                let Ok(h) = h else {
                    maps.push(Err("unreadable".to_string()));
                    continue;
                };
                let mut views = Vec::new();
                for v in 0..=opt.head_views {
                    let mut m = vec![0u16; activations::LEN];
                    cache
                        .read_f16_extracted(&activations::view_key(&h, v, opt.head.seed), &mut m)?;
                    views.push(m);
                }
                maps.push(Ok(views));
            }
            return Ok(Inputs::Maps { maps, hidden });
        }
        let mut cache = FeatureCache::open(
            &opt.cache_dir,
            &backbone_sha,
            opt.pooling,
            opt.tap.channels(),
        )?;
        let (feats, _) = extract::features(paths, backbone_onnx, &mut cache, opt.threads)?;
        extract::check_failures(paths, &feats, opt.max_failed_pct)?;
        let (view_paths, views): (Vec<usimage::FrameRef>, Vec<u32>) = paths
            .iter()
            .flat_map(|p| (1..=opt.head_views).map(move |v| (p.clone(), v)))
            .unzip();
        let (views, _) = extract::features_of_views(
            &view_paths,
            &views,
            opt.head.seed,
            backbone_onnx,
            &mut cache,
            opt.threads,
        )?;
        Ok(Inputs::Pooled { feats, views })
    }

    /// Trains one fold's head on its training images (and their views), early-stopped on
    /// its validation images; returns its validation and test logits.
    fn train_fold(
        &self,
        opt: &TrainOptions,
        fold_samples: &[Sample],
    ) -> Result<FoldOutcome, TrainError> {
        let slot = |s: &Sample| match s.split {
            Some(Split::Train) => Some(0),
            Some(Split::Val) => Some(1),
            Some(Split::Test) => Some(2),
            None => None,
        };
        let names = ["train", "validation", "test"];
        match self {
            Inputs::Pooled { feats, views } => {
                let hv = opt.head_views as usize;
                let mut sets: [Features; 3] = std::array::from_fn(|_| {
                    Features::with_dim(opt.pooling.width(opt.tap.channels()))
                });
                for (s, f) in fold_samples.iter().zip(feats) {
                    let (Ok(f), Some(k)) = (f, slot(s)) else {
                        continue;
                    };
                    sets[k].x.extend_from_slice(f);
                    sets[k].y.push(s.label);
                }
                let train_images = sets[0].len();
                for (j, s) in fold_samples.iter().enumerate() {
                    if s.split != Some(Split::Train) {
                        continue;
                    }
                    for f in views[j * hv..(j + 1) * hv].iter().flatten() {
                        sets[0].x.extend_from_slice(f);
                        sets[0].y.push(s.label);
                    }
                }
                for (set, name) in sets.iter().zip(names) {
                    if set.is_empty() {
                        return Err(TrainError::EmptySplit(name));
                    }
                }
                let [tr, va, te] = &sets;
                let trained = head::train_head(tr, va, &opt.head, |_| {})?;
                let logits = |f: &Features| (head::row_logits(&trained.head, f), f.y.clone());
                Ok(FoldOutcome {
                    val: logits(va),
                    test: logits(te),
                    train_images,
                    best_epoch: trained.best_epoch,
                })
            }
            Inputs::Maps { maps, hidden } => {
                let cells = activations::SIDE * activations::SIDE;
                let mut sets: [Maps; 3] =
                    std::array::from_fn(|_| Maps::new(activations::CHANNELS, cells));
                let mut train_images = 0;
                for (s, m) in fold_samples.iter().zip(maps) {
                    let (Ok(m), Some(k)) = (m, slot(s)) else {
                        continue;
                    };
                    // Views train only: validation and test see originals.
                    let take = if k == 0 { m.len() } else { 1 };
                    train_images += usize::from(k == 0);
                    for v in &m[..take] {
                        sets[k].x.extend_from_slice(v);
                        sets[k].y.push(s.label);
                    }
                }
                for (set, name) in sets.iter().zip(names) {
                    if set.is_empty() {
                        return Err(TrainError::EmptySplit(name));
                    }
                }
                let [tr, va, te] = &sets;
                let trained = cells::train(tr, va, *hidden, opt.cell_context, &opt.head, |_| {})?;
                Ok(FoldOutcome {
                    val: (cells::predict_logits(&trained.head, va)?, va.y.clone()),
                    test: (cells::predict_logits(&trained.head, te)?, te.y.clone()),
                    train_images,
                    best_epoch: trained.best_epoch,
                })
            }
        }
    }
}

fn write_files(out: &Path, data: &Path, cv: &CrossValidation) -> Result<(), TrainError> {
    let put = |name: &str, bytes: &[u8]| {
        let p: PathBuf = out.join(name);
        fs::write(&p, bytes).map_err(|source| TrainError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    put("cv.json", serde_json::to_string_pretty(cv)?.as_bytes())?;
    put("cv-report.md", report(data, cv).as_bytes())
}

/// The cross-validation report: every fold, then mean and pooled figures.
pub fn report(data: &Path, cv: &CrossValidation) -> String {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {}-fold cross-validation (stage 1)\n\nData `{}`; folds by patient, stratified by \
         class; seed {}; threshold per fold for {:.0}% sensitivity on that fold's validation \
         patients. {:.0} s.\n",
        cv.k,
        data.display(),
        cv.seed,
        100.0 * cv.target_sensitivity,
        cv.seconds
    );
    let _ = writeln!(
        s,
        "| fold | test patients | images train / val / test | best epoch | threshold | AUC (95% CI) | sensitivity | specificity | accuracy |\n|---|---|---|---|---|---|---|---|---|"
    );
    for f in &cv.folds {
        let o = &f.test;
        let _ = writeln!(
            s,
            "| {} | {} | {} / {} / {} | {} | {:.4} | {:.3} ({:.3}-{:.3}) | {} | {} | {} |",
            f.fold,
            f.test_patients,
            f.images[0],
            f.images[1],
            f.images[2],
            f.best_epoch,
            f.threshold,
            o.auc,
            o.auc_ci[0],
            o.auc_ci[1],
            pct(o.sensitivity),
            pct(o.specificity),
            pct(o.accuracy)
        );
    }
    let row = |name: &str, x: &Spread, p: bool| {
        let f = |v: f64| if p { pct(v) } else { format!("{v:.3}") };
        format!(
            "| {name} | {} | {} | {} to {} |\n",
            f(x.mean),
            f(x.sd),
            f(x.ci[0]),
            f(x.ci[1])
        )
    };
    let _ = writeln!(
        s,
        "\n## Over the folds\n\n| figure | mean | SD | 95% CI (t, {} df) |\n|---|---|---|---|",
        cv.k - 1
    );
    s.push_str(&row("AUC", &cv.auc, false));
    s.push_str(&row("sensitivity", &cv.sensitivity, true));
    s.push_str(&row("specificity", &cv.specificity, true));
    s.push_str(&row("accuracy", &cv.accuracy, true));
    let _ = writeln!(
        s,
        "\n## Pooled test predictions\n\n{} normal and {} abnormal images, each scored by the \
         fold that held it out: AUC {:.3} (95% CI {:.3}-{:.3}, DeLong), sensitivity {}, \
         specificity {} (each at its fold's threshold).\n\nThe view gate is not \
         cross-validated here (kidney images only). No model is written: run `renalscan \
         train` without `--folds` for the model to ship.",
        cv.pooled_n[0],
        cv.pooled_n[1],
        cv.pooled_auc,
        cv.pooled_auc_ci[0],
        cv.pooled_auc_ci[1],
        pct(cv.pooled_sensitivity),
        pct(cv.pooled_specificity)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(patients: usize) -> Vec<Sample> {
        let mut v = Vec::new();
        for p in 0..patients {
            for i in 0..3 {
                v.push(Sample {
                    path: PathBuf::from(format!("{p}-{i}.png")),
                    frame: 0,
                    label: p % 6,
                    severity: None,
                    patient: format!("p{p}"),
                    split: None,
                });
            }
        }
        v
    }

    #[test]
    fn folds_are_by_patient_balanced_and_stratified() {
        let s = samples(120);
        let f = assign_folds(&s, 5, 3);
        assert_eq!(f.len(), 120);
        for fold in 0..5 {
            let pats: Vec<&String> = f
                .iter()
                .filter(|(_, &v)| v == fold)
                .map(|(p, _)| p)
                .collect();
            assert_eq!(pats.len(), 24, "fold {fold}");
            // Each class (20 patients) spread 4 per fold.
            for class in 0..6 {
                let n = pats
                    .iter()
                    .filter(|p| p[1..].parse::<usize>().unwrap() % 6 == class)
                    .count();
                assert_eq!(n, 4, "fold {fold} class {class}");
            }
        }
        assert_eq!(f, assign_folds(&s, 5, 3), "deterministic");
        assert_ne!(f, assign_folds(&s, 5, 4), "the seed matters");
    }

    #[test]
    fn spread_uses_the_t_quantile() {
        let s = spread(&[0.9, 0.92, 0.94, 0.96, 0.98]);
        assert!((s.mean - 0.94).abs() < 1e-12);
        let sd = (0.004f64 / 4.0).sqrt();
        assert!((s.sd - sd).abs() < 1e-12);
        let h = 2.776 * sd / 5f64.sqrt();
        assert!((s.ci[0] - (0.94 - h)).abs() < 1e-12 && (s.ci[1] - (0.94 + h)).abs() < 1e-12);
    }
}
