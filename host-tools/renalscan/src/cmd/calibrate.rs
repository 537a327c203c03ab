//! `renalscan calibrate`: a signed bundle recalibrated on one clinic's labelled exams.
//!
//! Another scanner shifts the model's scores: its probabilities become over- or
//! under-confident and the trained threshold no longer gives the sensitivity it was chosen
//! for (on an unseen phantom scanner every normal kidney was called abnormal). The model is
//! left exactly as signed; a temperature on its probabilities (fitted by likelihood on the
//! site's exams) and a new operating threshold (for the target sensitivity on them) go into
//! the manifest's `[site_calibration]`, with the original bundle's identity and the figures
//! before and after. The output is a draft for `renalscan bundle`: the integrator signs it.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use contract::manifest::{apply_temperature, OverallMetrics, SiteCalibration};
use contract::Class;
use evaluate::metrics::log_odds;
use evaluate::{
    evaluate, rank_in_sample, rank_on_new, threshold_for_sensitivity,
    threshold_for_sensitivity_on_new, Evaluation, Prediction,
};
use train::extract::{self, Job};

/// Arguments of `calibrate`.
#[derive(clap::Args)]
pub struct Args {
    /// The signed bundle to recalibrate (verified first).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Trusted public key file, or a directory of `*.pub` files.
    #[arg(long = "trusted-keys", alias = "pubkey", value_name = "KEY|DIR")]
    pub trusted_keys: PathBuf,
    /// The site's labelled kidney images: a folder or CSV, as `eval --data` takes.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: `model.onnx` (the verified bytes, unchanged), the recalibrated
    /// draft `manifest.toml` and `calibration.md`. Sign it with `renalscan bundle`.
    #[arg(long)]
    pub out: PathBuf,
    /// Site name recorded in the manifest and shown on the model card.
    #[arg(long)]
    pub site: String,
    /// Sensitivity the new threshold is chosen for [default: the bundle's own target].
    #[arg(value_parser = argrange::f64_in(0.01, 1.0), long)]
    pub target_sensitivity: Option<f64>,
    /// Fewest normal images accepted: specificity needs them.
    #[arg(value_parser = argrange::usize_in(1, 10_000_000), long, default_value_t = 30)]
    pub min_normal: usize,
    /// Fewest abnormal images accepted: the threshold needs them.
    #[arg(value_parser = argrange::usize_in(1, 10_000_000), long, default_value_t = 30)]
    pub min_abnormal: usize,
    /// Inference threads [default: the cores this process may use].
    #[arg(value_parser = argrange::usize_in(1, 256), long, default_value_t = super::cores(), hide_default_value = true)]
    pub threads: usize,
}

/// Mean negative log-likelihood of the true classes after temperature `t`.
fn nll(preds: &[Prediction], t: f32) -> f64 {
    let mut sum = 0.0;
    let mut p = Vec::new();
    for x in preds {
        p.clear();
        p.extend_from_slice(&x.probs);
        apply_temperature(&mut p, t);
        sum -= f64::from(p[x.label].max(1e-12)).ln();
    }
    sum / preds.len().max(1) as f64
}

/// Temperatures the fit searches (on their log).
const T_RANGE: [f64; 2] = [0.05, 20.0];

/// The site's temperature, or why its images cannot fix one.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TemperatureFit {
    /// The temperature with the least NLL, inside [`T_RANGE`].
    Fitted(f32),
    /// Every image's true class already has the highest probability. Each image's
    /// likelihood then rises as the temperature falls, without end: the "fit" would be the
    /// search's floor, and the site's next exams would get probabilities far surer than the
    /// model is (a site of 80 phantom images did this: 0.05, and its test set's ECE doubled).
    Separable,
    /// The least NLL lies on a bound of [`T_RANGE`]: no optimum inside it.
    AtBound(f32),
}

impl TemperatureFit {
    /// The factor on the signed temperature: 1 (kept) where the images do not fix one.
    fn factor(self) -> f32 {
        match self {
            TemperatureFit::Fitted(t) => t,
            TemperatureFit::Separable | TemperatureFit::AtBound(_) => 1.0,
        }
    }

    /// What the report says about it.
    fn explain(self) -> String {
        match self {
            TemperatureFit::Fitted(t) => format!("a temperature of {t:.3} on its probabilities"),
            TemperatureFit::Separable => "the temperature kept as signed (every one of these \
                 images already has its true class on top, so their likelihood keeps rising as \
                 the temperature falls, with no optimum: a fitted one would be the search's \
                 floor and make the site's next exams look far surer than the model is)"
                .to_string(),
            TemperatureFit::AtBound(t) => format!(
                "the temperature kept as signed (the least NLL of these images lies on the \
                 search's bound, {t:.3}, of {}-{}: they do not fix one)",
                T_RANGE[0], T_RANGE[1]
            ),
        }
    }
}

/// The temperature with the least NLL (golden-section search on its log; the NLL of
/// temperature scaling is unimodal in it), where the images fix one.
fn fit_temperature(preds: &[Prediction]) -> TemperatureFit {
    if preds.iter().all(|p| p.argmax() == p.label) {
        return TemperatureFit::Separable;
    }
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let (lo, hi) = (T_RANGE[0].ln(), T_RANGE[1].ln());
    let (mut a, mut b) = (lo, hi);
    let f = |x: f64| nll(preds, x.exp() as f32);
    let (mut c, mut d) = (b - phi * (b - a), a + phi * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - phi * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + phi * (b - a);
            fd = f(d);
        }
    }
    let x = (a + b) / 2.0;
    // Within 1% of a bound: the search ran into it.
    if x - lo < 0.01 || hi - x < 0.01 {
        TemperatureFit::AtBound(x.exp() as f32)
    } else {
        TemperatureFit::Fitted(x.exp() as f32)
    }
}

fn scaled(preds: &[Prediction], t: f32) -> Vec<Prediction> {
    preds
        .iter()
        .map(|x| {
            let mut probs = x.probs.clone();
            apply_temperature(&mut probs, t);
            Prediction {
                label: x.label,
                probs,
            }
        })
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    let keys = bundle::TrustedKeys::from_path(&args.trusted_keys)?;
    let mut b = bundle::Bundle::open(&args.bundle, &keys)
        .with_context(|| format!("verifying bundle {}", args.bundle.display()))?;
    let original = b.manifest().clone();
    let signer = b.signer().key_id().to_string();
    let bundle_sha = b.manifest_sha256().to_string();
    let origin = b.model_origin();
    let bytes = b.take_model_bytes();
    let taxonomy = original
        .taxonomy()
        .with_context(|| format!("the labels of bundle {}", args.bundle.display()))?;
    let target = args
        .target_sensitivity
        .unwrap_or(original.operating_point.target_sensitivity);
    if !(0.5..=1.0).contains(&target) {
        bail!("--target-sensitivity {target} is outside 0.5..=1");
    }

    let samples: Vec<train::Sample> = train::load(&args.data)?
        .into_iter()
        .filter(train::Sample::is_kidney)
        .collect();
    let paths: Vec<usimage::FrameRef> = samples.iter().map(|s| s.frame_ref()).collect();
    let job = Job {
        model: &bytes,
        origin: &origin,
        outputs: &["probs"],
        pool: None,
        threads: args.threads,
        label: "calibrate",
    };
    let results = extract::run(&paths, &job, &|_| None, &mut |_, _| Ok(()))?;
    extract::check_failures(&paths, &results, 5.0)?;
    let normal = taxonomy.normal_index();
    let mut before = Vec::new();
    for (s, r) in samples.iter().zip(results) {
        let Ok(mut probs) = r else { continue };
        probs.truncate(taxonomy.len());
        // Recalibrating a recalibrated bundle starts from what the device shows today.
        if let Some(c) = &original.site_calibration {
            c.apply(&mut probs);
        }
        let label = Class::from_index(s.label)
            .and_then(|c| taxonomy.index_of(c))
            .with_context(|| format!("{}: a class the bundle does not output", s.path.display()))?;
        before.push(Prediction { label, probs });
    }
    let n_normal = before.iter().filter(|p| p.label == normal).count();
    let n_abnormal = before.len() - n_normal;
    if n_normal < args.min_normal || n_abnormal < args.min_abnormal {
        bail!(
            "{} has {n_normal} normal and {n_abnormal} abnormal kidney images; calibration needs \
             at least {} and {} (--min-normal, --min-abnormal): label more of the site's exams",
            args.data.display(),
            args.min_normal,
            args.min_abnormal
        );
    }

    let e_before = evaluate(&taxonomy, &before, original.operating_point.threshold)?;
    let fit = fit_temperature(&before);
    if !matches!(fit, TemperatureFit::Fitted(_)) {
        log::warn!("calibrate {}: {}", args.site, fit.explain());
    }
    let t = fit.factor();
    let after = scaled(&before, t);
    let pos: Vec<f64> = after
        .iter()
        .filter(|p| p.label != normal)
        .map(|p| p.p_abnormal(&taxonomy))
        .collect();
    let neg: Vec<f64> = after
        .iter()
        .filter(|p| p.label == normal)
        .map(|p| p.p_abnormal(&taxonomy))
        .collect();
    let spec_target = original.validation.specificity;
    let choice = site_threshold(
        &pos,
        &neg,
        (target, spec_target),
        original.operating_point.threshold,
    );
    let threshold = choice.threshold;
    let in_sample = threshold_for_sensitivity(&pos, target);
    let e_after = evaluate(&taxonomy, &after, threshold)?;
    let nll_before = nll(&before, 1.0);
    let nll_after = nll(&before, t);

    let previous_t = original
        .site_calibration
        .as_ref()
        .map_or(1.0, |c| c.temperature);
    let mut m = original.clone();
    m.operating_point.threshold = threshold;
    let (site_range, range_note) = site_range_after(original.operating_point.site_range, threshold);
    m.operating_point.site_range = site_range;
    m.operating_point.target_sensitivity = target;
    m.card = None;
    // The recalibrated model answers differently: `renalscan bundle` measures new references.
    m.selftest.clear();
    m.site_calibration = Some(SiteCalibration {
        site: args.site.clone(),
        temperature: previous_t * f64::from(t),
        target_sensitivity: target,
        n_normal,
        n_abnormal,
        data: args.data.display().to_string(),
        from_bundle_sha256: bundle_sha,
        from_signer: signer,
        from_threshold: original.operating_point.threshold,
        before: OverallMetrics::from(&e_before.overall),
        after: OverallMetrics::from(&e_after.overall),
    });
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let model_path = args.out.join("model.onnx");
    std::fs::write(&model_path, &bytes)
        .with_context(|| format!("writing {}", model_path.display()))?;
    train::pipeline::write_manifest(&args.out, &m)?;
    let mut report = report(
        &args,
        &e_before,
        &e_after,
        (fit, target),
        (nll_before, nll_after),
        &original,
    );
    let _ = writeln!(
        report,
        "\n{}\n\nThe sensitivity bound is the score ranked {} (highest first) of the {} abnormal \
         images (ceil({target} x ({} + 1))): a new abnormal exam from the site, exchangeable \
         with these, scores at or above it with probability {:.1}%. Rank {}, which gives \
         {:.0}% on these images themselves, would be {in_sample:.4}.",
        choice.explain(target, spec_target),
        rank_on_new(pos.len(), target),
        pos.len(),
        pos.len(),
        100.0 * rank_on_new(pos.len(), target) as f64 / (pos.len() + 1) as f64,
        rank_in_sample(pos.len(), target),
        100.0 * target,
    );
    if let Some(note) = range_note {
        report.push('\n');
        report.push_str(&note);
        report.push('\n');
    }
    let md = args.out.join("calibration.md");
    std::fs::write(&md, &report).with_context(|| format!("writing {}", md.display()))?;
    print!("{report}");
    println!(
        "next: renalscan bundle --model {} --manifest {} --key <release key> --out <new bundle>",
        model_path.display(),
        args.out.join("manifest.toml").display()
    );
    Ok(())
}

/// The calibrated operating threshold and the two bounds it comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SiteThreshold {
    threshold: f64,
    /// The signed threshold holds on the site's images and is kept.
    kept: bool,
    /// The highest threshold that keeps the target sensitivity for the site's next abnormal
    /// exams ([`threshold_for_sensitivity_on_new`]).
    for_sensitivity: f64,
    /// The lowest threshold at which the site's normal images reach the specificity the
    /// bundle was validated at (`None` when that figure is not usable).
    for_specificity: Option<f64>,
}

impl SiteThreshold {
    fn explain(&self, target: f64, specificity: f64) -> String {
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        if self.kept {
            let from = self.for_specificity.map_or(String::new(), |s| {
                format!(
                    "above {s:.4}, where their normal images reach the specificity the bundle \
                     was validated at ({}), and ",
                    pct(specificity)
                )
            });
            return format!(
                "The signed threshold {:.4} holds on the site's images: it lies {from}at or below \
                 {:.4}, the {} sensitivity bound. It was chosen on the bundle's validation set, \
                 far larger than these images, and they give no reason to move it: it is kept.",
                self.threshold,
                self.for_sensitivity,
                pct(target),
            );
        }
        match self.for_specificity {
            Some(s) if s < self.for_sensitivity => format!(
                "The site's images leave a range where both hold: from {s:.4}, where its normal \
                 images reach the specificity the bundle was validated at ({}), to {:.4}, the \
                 {} sensitivity bound. The threshold {:.4} is the middle of that range in \
                 log-odds, so that neither figure sits on the edge these few images put it at.",
                pct(specificity),
                self.for_sensitivity,
                pct(target),
                self.threshold,
            ),
            Some(s) => format!(
                "The threshold {:.4} is the {} sensitivity bound: the site's normal images reach \
                 the validated specificity ({}) only at {s:.4}, and sensitivity comes first.",
                self.threshold,
                pct(target),
                pct(specificity)
            ),
            None => format!(
                "The threshold {:.4} is the {} sensitivity bound (the bundle records no usable \
                 validation specificity).",
                self.threshold,
                pct(target)
            ),
        }
    }
}

/// The site's threshold. Never above the one that keeps `target` sensitivity for the site's
/// next abnormal exams (`pos`). The `signed` one is kept where it holds on the site's images
/// (at or below that bound, and where the site's normal images `neg` reach the bundle's
/// validated `specificity`): 80 images are no reason to move a point chosen on thousands
/// (a phantom site whose 80 images all scored right would have moved it to 0.86 and lost 3
/// points of sensitivity on its test set). Otherwise, where the normal images reach that
/// specificity below the sensitivity bound, the middle of the range between the two (in
/// log-odds): a confident model's top scores crowd near 1, so the sensitivity bound alone
/// climbs there (0.97-0.99 on a phantom site whose normal images scored below 0.1) and gives
/// away sensitivity the site needs, while the specificity bound alone sits on the edge that 40
/// normal images put it at.
fn site_threshold(
    pos: &[f64],
    neg: &[f64],
    (target, specificity): (f64, f64),
    signed: f64,
) -> SiteThreshold {
    let for_sensitivity = threshold_for_sensitivity_on_new(pos, target);
    let for_specificity =
        (specificity.is_finite() && specificity > 0.0 && !neg.is_empty()).then(|| {
            let mut n = neg.to_vec();
            n.sort_by(f64::total_cmp);
            // The k-th lowest normal must fall below the threshold (`>=` is abnormal): half way
            // to the next score, or to 1 above the highest. The in-sample rank, as the
            // validated specificity was measured.
            let k = rank_in_sample(n.len(), specificity);
            let next = n.get(k).copied().unwrap_or(1.0);
            (n[k - 1] + next) / 2.0
        });
    let kept = signed <= for_sensitivity && for_specificity.is_none_or(|s| signed >= s);
    let threshold = match for_specificity {
        _ if kept => signed,
        Some(s) if s < for_sensitivity => {
            let mid = (log_odds(s) + log_odds(for_sensitivity)) / 2.0;
            1.0 / (1.0 + (-mid).exp())
        }
        _ => for_sensitivity,
    };
    SiteThreshold {
        threshold,
        kept,
        for_sensitivity,
        for_specificity,
    }
}

/// The threshold range the integrator let sites choose from, after calibration. It is kept
/// when it holds the new threshold. Otherwise the draft carries none, so the cart keeps the
/// signed threshold, and the note says how to grant one: the range was chosen around the old
/// operating point, and widening it is the integrator's decision, not calibration's.
fn site_range_after(range: Option<[f64; 2]>, threshold: f64) -> (Option<[f64; 2]>, Option<String>) {
    match range {
        Some([lo, hi]) if !(lo..=hi).contains(&threshold) => (
            None,
            Some(format!(
                "The bundle let a site set its threshold within [{lo}, {hi}]. The calibrated \
                 threshold {threshold:.4} lies outside that range, so the new draft carries no \
                 site range and the cart keeps the signed threshold. To let the site adjust it, \
                 grant a range when signing: `renalscan bundle --site-threshold-range LO,HI`."
            )),
        ),
        kept => (kept, None),
    }
}

fn report(
    args: &Args,
    before: &Evaluation,
    after: &Evaluation,
    (fit, target): (TemperatureFit, f64),
    (nll_before, nll_after): (f64, f64),
    original: &contract::Manifest,
) -> String {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let (b, a) = (&before.overall, &after.overall);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Site calibration: {}\n\nBundle `{}` ({} {}), on `{}`: {} normal and {} abnormal \
         kidney images. The model is unchanged; {} (NLL {nll_before:.4} -> {nll_after:.4}) \
         and the operating threshold for {:.0}% sensitivity checked on them (how it was \
         chosen: below the table). The figures after are in-sample (fitted on \
         these images): judge the new bundle on other exams from the site.\n",
        args.site,
        args.bundle.display(),
        original.model.name,
        original.model.version,
        args.data.display(),
        b.n_normal,
        b.n_abnormal,
        fit.explain(),
        100.0 * target
    );
    let _ = writeln!(
        s,
        "| | threshold | AUC | sensitivity | specificity | accuracy | ECE |\n|---|---|---|---|---|---|---|"
    );
    for (name, o) in [("before (as signed)", b), ("after", a)] {
        let _ = writeln!(
            s,
            "| {name} | {:.4} | {:.3} | {} | {} | {} | {:.3} |",
            o.threshold,
            o.auc,
            pct(o.sensitivity),
            pct(o.specificity),
            pct(o.accuracy),
            o.ece
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_range_that_misses_the_new_threshold_is_dropped_and_said() {
        assert_eq!(site_range_after(None, 0.1), (None, None));
        assert_eq!(
            site_range_after(Some([0.2, 0.95]), 0.4),
            (Some([0.2, 0.95]), None)
        );
        let (range, note) = site_range_after(Some([0.2, 0.95]), 0.1694);
        assert_eq!(range, None);
        let note = note.unwrap_or_default();
        assert!(
            note.contains("[0.2, 0.95]")
                && note.contains("0.1694")
                && note.contains("--site-threshold-range"),
            "{note}"
        );
        // The draft `calibrate` writes must pass the manifest's own check, which a range
        // that misses the threshold fails (as `renalscan bundle` found).
        let path = std::path::Path::new("manifest.toml");
        let sample = testkit::manifests::sample(&"0".repeat(64));
        let mut m = contract::Manifest::parse_draft(&sample, path).expect("sample");
        m.operating_point.threshold = 0.1694;
        let reparse = |m: &contract::Manifest| {
            contract::Manifest::parse_draft(&m.to_toml().expect("toml"), path)
        };
        m.operating_point.site_range = Some([0.2, 0.95]);
        assert!(reparse(&m).is_err());
        m.operating_point.site_range = range;
        assert!(reparse(&m).is_ok());
    }

    #[test]
    fn the_site_threshold_rises_only_as_far_as_the_validated_specificity() {
        // A confident model on a site like its own: abnormal scores crowd near 1, normal
        // ones lie low. The sensitivity rank alone sits among the crowd; the validated
        // specificity (80%) is reached far lower; the threshold goes between them.
        let pos: Vec<f64> = (0..40).map(|i| 1.0 - 0.001 * i as f64).collect();
        let neg: Vec<f64> = (0..40).map(|i| 0.01 * i as f64).collect();
        // The signed threshold was above the sensitivity bound: it moves.
        let c = site_threshold(&pos, &neg, (0.95, 0.8), 0.999);
        assert!(!c.kept);
        assert!((c.for_sensitivity - pos[38]).abs() < 1e-12, "{c:?}");
        // 32 of 40 normal below: half way between the 32nd and 33rd lowest.
        assert!((c.for_specificity.unwrap() - 0.315).abs() < 1e-12, "{c:?}");
        let logit = |p: f64| (p / (1.0 - p)).ln();
        let mid = (logit(0.315) + logit(pos[38])) / 2.0;
        assert!((logit(c.threshold) - mid).abs() < 1e-9, "{c:?}");
        assert!(c.threshold > 0.315 && c.threshold < pos[38]);
        assert!(c.explain(0.95, 0.8).contains("validated at (80.0%)"));
        // A site whose normal images score high (another scanner): sensitivity comes first.
        let neg_high: Vec<f64> = (0..40).map(|i| 0.9 + 0.0025 * i as f64).collect();
        let c = site_threshold(&pos, &neg_high, (0.95, 0.8), 0.5);
        assert_eq!(c.threshold, c.for_sensitivity);
        assert!(c.explain(0.95, 0.8).contains("sensitivity comes first"));
        // No usable validation figure: the sensitivity bound alone.
        let c = site_threshold(&pos, &neg, (0.95, f64::NAN), 0.999);
        assert_eq!((c.threshold, c.for_specificity), (c.for_sensitivity, None));
    }

    #[test]
    fn a_signed_threshold_that_holds_on_the_site_is_kept() {
        let pos: Vec<f64> = (0..40).map(|i| 1.0 - 0.001 * i as f64).collect();
        let neg: Vec<f64> = (0..40).map(|i| 0.01 * i as f64).collect();
        // Between the specificity bound (0.315) and the sensitivity bound (0.962): kept, and
        // the explanation names both bounds.
        for signed in [0.3151, 0.48, pos[38]] {
            let c = site_threshold(&pos, &neg, (0.95, 0.8), signed);
            assert!(c.kept && c.threshold == signed, "{signed}: {c:?}");
            let e = c.explain(0.95, 0.8);
            assert!(e.contains("is kept") && e.contains("0.3150"), "{e}");
        }
        // Below the specificity bound (too many false alarms at the site): it moves up.
        let c = site_threshold(&pos, &neg, (0.95, 0.8), 0.2);
        assert!(!c.kept && c.threshold > 0.315, "{c:?}");
        // No usable validation figure: kept while it keeps the sensitivity.
        let c = site_threshold(&pos, &neg, (0.95, f64::NAN), 0.2);
        assert!(c.kept && c.threshold == 0.2, "{c:?}");
    }

    #[test]
    fn the_fitted_temperature_undoes_a_known_one() {
        // Well-calibrated scores made overconfident by t = 0.4: the fit finds about 1 / 0.4.
        let mut preds = Vec::new();
        let mut seed = 7u64;
        for i in 0..600 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (seed >> 33) as f32 / (1u64 << 31) as f32;
            let label = i % 3;
            // The true class gets 0.4-0.9, the rest share what is left; labels drawn so
            // that the stated confidence is right on average.
            let conf = 0.4 + 0.5 * u;
            let mut probs = vec![(1.0 - conf) / 2.0; 3];
            let truth = if ((seed >> 13) % 1000) as f32 / 1000.0 < conf {
                label
            } else {
                (label + 1) % 3
            };
            probs[label] = conf;
            let mut p = probs.clone();
            apply_temperature(&mut p, 0.4);
            preds.push(Prediction {
                label: truth,
                probs: p,
            });
        }
        let TemperatureFit::Fitted(t) = fit_temperature(&preds) else {
            panic!("no fit: {:?}", fit_temperature(&preds));
        };
        assert!((t - 2.5).abs() < 0.4, "{t}");
        assert!(nll(&preds, t) < nll(&preds, 1.0));
    }

    #[test]
    fn images_that_cannot_fix_a_temperature_keep_the_signed_one() {
        let pred = |label: usize, probs: [f32; 3]| Prediction {
            label,
            probs: probs.to_vec(),
        };
        // Every true class on top, some barely: the NLL falls without end as t falls.
        let separable = vec![
            pred(0, [0.5, 0.3, 0.2]),
            pred(1, [0.2, 0.45, 0.35]),
            pred(2, [0.1, 0.1, 0.8]),
        ];
        assert!(nll(&separable, 0.05) < nll(&separable, 1.0));
        let fit = fit_temperature(&separable);
        assert_eq!(fit, TemperatureFit::Separable);
        assert_eq!(fit.factor(), 1.0);
        assert!(
            fit.explain().contains("kept as signed"),
            "{}",
            fit.explain()
        );
        // Every image confidently wrong: the least NLL is as flat as the search allows.
        let wrong = vec![pred(1, [0.98, 0.01, 0.01]), pred(2, [0.01, 0.98, 0.01])];
        let fit = fit_temperature(&wrong);
        assert!(
            matches!(fit, TemperatureFit::AtBound(t) if t > 19.0),
            "{fit:?}"
        );
        assert_eq!(fit.factor(), 1.0);
        assert!(fit.explain().contains("bound"), "{}", fit.explain());
        // One image on the wrong side is enough for an optimum inside the range.
        let mut mixed = separable.clone();
        mixed.push(pred(0, [0.4, 0.5, 0.1]));
        assert!(matches!(fit_temperature(&mixed), TemperatureFit::Fitted(_)));
    }
}
