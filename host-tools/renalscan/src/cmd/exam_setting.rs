//! `renalscan exam-setting`: the cart's aggregation setting (pooling, window, threshold),
//! chosen on development sweeps for the exams to come. `eval --sweeps` records what each
//! sweep fed the device's aggregator (`exam_inputs.csv`); here those inputs, from one or more
//! development sets, are judged again at every setting by the device's own aggregator
//! ([`super::exams::judge`]). The setting chosen is the one most likely to keep the exam
//! targets on the next exams ([`evaluate::metrics::chance_at_most`]), not one that only just
//! keeps them on the sweeps it was chosen on: those flatter it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use contract::manifest::Manifest;
use contract::Class;
use evaluate::metrics::{chance_at_most, log_odds};
use renalscan_edge::aggregate::{Input, Params, Pooling, Sample, MAX_WINDOW};
use renalscan_edge::config::{AggregateConfig, Config};
use renalscan_edge::pipeline::operating_threshold;
use train::dataset::CsvTable;

use super::exams::{judge, CurvePoint, Judged, CURVE_WINDOWS, INPUTS_FILE};

/// Arguments of `exam-setting`.
#[derive(clap::Args)]
pub struct Args {
    /// Development sweeps judged by `renalscan eval --sweeps`: its output folders (or their
    /// `exam_inputs.csv`), any number, joined. Never the sweeps the setting is judged on.
    #[arg(long = "from", required = true, num_args = 1.., value_name = "DIR|CSV")]
    pub from: Vec<PathBuf>,
    /// Exam sensitivity to keep on the next exams.
    #[arg(value_parser = argrange::f64_in(0.5, 1.0), long, default_value_t = 0.98)]
    pub sensitivity: f64,
    /// Exam specificity to keep on the next exams.
    #[arg(value_parser = argrange::f64_in(0.0, 1.0), long, default_value_t = 0.90)]
    pub specificity: f64,
    /// The next exams the targets are to hold over, abnormal and normal: 250,50 is fifty
    /// sweeps of each of the five abnormalities and fifty normal ones.
    #[arg(long, value_name = "ABNORMAL,NORMAL", default_value = "250,50", value_parser = next_exams)]
    pub over: (usize, usize),
    /// Aggregation windows to try (frames).
    #[arg(
        value_parser = argrange::usize_in(1, MAX_WINDOW),
        long,
        value_delimiter = ',',
        default_values_t = CURVE_WINDOWS
    )]
    pub windows: Vec<usize>,
    /// The cart's renalscan-edge config: the rest of its `[aggregate]` section (first decision
    /// after `min_frames`, hysteresis, resets) is kept; the device defaults otherwise. Give
    /// the one the development sweeps were replayed with.
    #[arg(long)]
    pub edge_config: Option<PathBuf>,
    /// The signed bundle the development sweeps were judged with: only the thresholds it
    /// lets a site set are tried (its signed one, or inside its signed
    /// `--site-threshold-range`), so the cart does not refuse the setting at start.
    #[arg(long, requires = "trusted_keys")]
    pub bundle: Option<PathBuf>,
    /// Public key file, or directory of `*.pub` files, to verify `--bundle` with.
    #[arg(long = "trusted-keys", value_name = "KEY|DIR", requires = "bundle")]
    pub trusted_keys: Option<PathBuf>,
    /// Output folder: `exam-setting.toml` (the `[aggregate]` section for the cart, and
    /// `--edge-config` for `eval --sweeps`) and `exam_setting.md`.
    #[arg(long)]
    pub out: PathBuf,
}

/// `ABNORMAL,NORMAL`, both at least 1.
fn next_exams(s: &str) -> Result<(usize, usize), String> {
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| format!("{v:?} is not a count of exams (1 or more)"))
    };
    match s.split_once(',') {
        Some((a, n)) => Ok((parse(a)?, parse(n)?)),
        None => Err(format!(
            "{s:?}: give the abnormal and the normal exams, e.g. 250,50"
        )),
    }
}

/// One sweep being read: its name, label and inputs so far.
type Reading = (String, Class, Vec<Input>);

/// The sweeps of one or more `exam_inputs.csv`, in file order, with their count per label.
/// `params` is the setting the record is taken to have been made at (only the exam call is
/// judged, so the per-class columns are not read).
pub(crate) fn read_inputs(
    paths: &[PathBuf],
    params: Params,
) -> Result<(Vec<Judged>, BTreeMap<&'static str, usize>)> {
    let mut judged = Vec::new();
    let mut per_label: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut finish = |s: Option<Reading>, judged: &mut Vec<Judged>| {
        if let Some((_, label, inputs)) = s {
            *per_label.entry(label.label()).or_default() += 1;
            judged.push(Judged::recorded(label.is_abnormal(), inputs, params));
        }
    };
    for path in paths {
        let file = if path.is_dir() {
            path.join(INPUTS_FILE)
        } else {
            path.clone()
        };
        if !file.is_file() {
            bail!(
                "{}: no such file; run `renalscan eval --sweeps DIR --out {}` on the \
                 development sweeps first",
                file.display(),
                path.display()
            );
        }
        let table = CsvTable::read(&file)?;
        let col = |name: &str| {
            table.col(&[name]).with_context(|| {
                format!(
                    "{}: no `{name}` column (header: {:?}); `eval --sweeps` writes this file \
                     as {INPUTS_FILE}",
                    file.display(),
                    table.header()
                )
            })
        };
        let (sc, lc, ec, pc) = (
            col("sweep")?,
            col("label")?,
            col("event")?,
            col("p_abnormal")?,
        );
        // One sweep's rows are contiguous; a sweep met again further on is a broken file.
        let mut current: Option<Reading> = None;
        let mut seen = BTreeSet::new();
        for r in table.rows() {
            let at = || format!("{} line {}", file.display(), r.line());
            let (Some(sweep), Some(label), Some(event)) =
                (r.get(Some(sc)), r.get(Some(lc)), r.get(Some(ec)))
            else {
                bail!("{}: no sweep, label or event in {:?}", at(), r.text());
            };
            let label = Class::from_label(label)
                .with_context(|| format!("{}: unknown label {label:?}", at()))?;
            let input = match event {
                "reset" => Input::Reset,
                "frame" => {
                    let p = r
                        .get(Some(pc))
                        .and_then(|v| v.parse::<f32>().ok())
                        .filter(|p| (0.0..=1.0).contains(p))
                        .with_context(|| format!("{}: p_abnormal is not a probability", at()))?;
                    Input::Push(Sample::new(p, &[]))
                }
                other => bail!("{}: unknown event {other:?} (frame or reset)", at()),
            };
            match current.as_mut() {
                Some((name, l, inputs)) if name == sweep => {
                    if *l != label {
                        bail!("{}: sweep {sweep} changes its label", at());
                    }
                    inputs.push(input);
                }
                _ => {
                    finish(current.take(), &mut judged);
                    if !seen.insert(sweep.to_string()) {
                        bail!("{}: sweep {sweep} appears twice, apart", at());
                    }
                    current = Some((sweep.to_string(), label, vec![input]));
                }
            }
        }
        finish(current.take(), &mut judged);
        log::info!("{}: {} sweeps read so far", file.display(), judged.len());
    }
    Ok((judged, per_label))
}

/// One setting, and its chance to keep each target on the next exams.
#[derive(Debug, Clone)]
struct Scored {
    point: CurvePoint,
    keeps_sensitivity: f64,
    keeps_specificity: f64,
}

impl Scored {
    /// The chance to keep both (misses and false alarms are counted on different exams).
    fn chance(&self) -> f64 {
        self.keeps_sensitivity * self.keeps_specificity
    }
}

/// Errors allowed among `n` exams when `target` of them must be right.
fn allowed(n: usize, target: f64) -> usize {
    n - ((target * n as f64 - 1e-9).ceil().max(0.0) as usize).min(n)
}

/// The thresholds to try, ascending: the report's grid (0.010-0.990 in steps of 0.005), and
/// with a bundle only those the device would accept from a site's configuration
/// ([`operating_threshold`]), its signed threshold among them.
fn thresholds(bundle: Option<&Manifest>) -> Vec<f32> {
    let grid = (2..=198u32).map(|k| k as f32 / 200.0);
    let Some(m) = bundle else {
        return grid.collect();
    };
    let mut out: Vec<f32> = grid
        .chain([m.operating_point.threshold as f32])
        .filter(|&t| operating_threshold(Some(t), m).is_ok())
        .collect();
    out.sort_by(f32::total_cmp);
    out.dedup();
    out
}

/// Per pooling and window, every threshold of `thresholds` judged on `judged` and scored
/// for the next exams.
fn score(judged: &[Judged], base: Params, thresholds: &[f32], args: &Args) -> Vec<Vec<Scored>> {
    let (next_abn, next_norm) = args.over;
    let (miss_ok, alarm_ok) = (
        allowed(next_abn, args.sensitivity),
        allowed(next_norm, args.specificity),
    );
    let mut out = Vec::new();
    for pooling in Pooling::ALL {
        for &window in &args.windows {
            let row = thresholds
                .iter()
                .map(|&threshold| {
                    let point = judge(
                        judged,
                        Params {
                            window,
                            pooling,
                            min_frames: base.min_frames.min(window),
                            threshold,
                            ..base
                        },
                    );
                    Scored {
                        keeps_sensitivity: chance_at_most(
                            point.abnormal - point.caught,
                            point.abnormal,
                            next_abn,
                            miss_ok,
                        ),
                        keeps_specificity: chance_at_most(
                            point.normal - point.cleared,
                            point.normal,
                            next_norm,
                            alarm_ok,
                        ),
                        point,
                    }
                })
                .collect();
            out.push(row);
        }
    }
    out
}

/// The best threshold of one pooling and window: the highest chance; among the run of
/// thresholds that share it (they call every sweep alike), the one nearest its middle in
/// log-odds, away from both edges. With the run's width in log-odds.
fn best_of(row: &[Scored]) -> Option<(Scored, f64)> {
    let top = row.iter().map(Scored::chance).fold(f64::NAN, f64::max);
    if !top.is_finite() {
        return None;
    }
    let tied = |s: &Scored| s.chance() >= top - 1e-12;
    let i = row.iter().position(tied)?;
    let j = i + row[i..].iter().take_while(|s| tied(s)).count() - 1;
    let t = |k: usize| log_odds(f64::from(row[k].point.threshold));
    let mid = (t(i) + t(j)) / 2.0;
    let k = (i..=j)
        .min_by(|&a, &b| (t(a) - mid).abs().total_cmp(&(t(b) - mid).abs()))
        .unwrap_or(i);
    Some((row[k].clone(), t(j) - t(i)))
}

/// The thresholds at which the development sweeps themselves keep both targets.
fn dev_range(row: &[Scored], args: &Args) -> Option<(f32, f32)> {
    let ok: Vec<f32> = row
        .iter()
        .filter(|s| {
            s.point.sensitivity >= args.sensitivity - 1e-9
                && s.point.specificity >= args.specificity - 1e-9
        })
        .map(|s| s.point.threshold)
        .collect();
    Some((*ok.first()?, *ok.last()?))
}

/// Reads the development sweeps, judges every setting, writes the one most likely to keep
/// the targets on the next exams and the report behind it.
pub fn run(args: &Args) -> Result<()> {
    let cfg = match &args.edge_config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let a = &cfg.aggregate;
    let base = a.params(a.threshold.unwrap_or(0.5), Class::ALL.len(), 0);
    let (judged, per_label) = read_inputs(&args.from, base)?;
    let n_abn = judged.iter().filter(|j| j.abnormal).count();
    let n_norm = judged.len() - n_abn;
    if n_abn == 0 || n_norm == 0 {
        bail!(
            "the development sweeps hold {n_abn} abnormal and {n_norm} normal exams: a setting \
             is chosen on both"
        );
    }
    let manifest = match (&args.bundle, &args.trusted_keys) {
        (Some(b), Some(k)) => {
            let keys = bundle::TrustedKeys::from_path(k)?;
            let opened = bundle::Bundle::open(b, &keys)
                .with_context(|| format!("verifying bundle {}", b.display()))?;
            Some(opened.manifest().clone())
        }
        _ => None,
    };
    let tried = thresholds(manifest.as_ref());
    let t0 = std::time::Instant::now();
    let rows = score(&judged, base, &tried, args);
    // Each pooling and window beside its best threshold, so the report cannot pair a row
    // with another's best.
    let bests: Vec<(&[Scored], Scored, f64)> = rows
        .iter()
        .filter_map(|r| best_of(r).map(|(best, width)| (r.as_slice(), best, width)))
        .collect();
    // The highest chance; between equals, the widest run of thresholds.
    let Some(chosen) = bests
        .iter()
        .max_by(|a, b| {
            a.1.chance()
                .total_cmp(&b.1.chance())
                .then(a.2.total_cmp(&b.2))
        })
        .map(|(_, best, _)| best.clone())
    else {
        bail!("no setting could be judged");
    };
    log::info!(
        "{} settings judged on {} sweeps in {:.1} s",
        rows.iter().map(Vec::len).sum::<usize>(),
        judged.len(),
        t0.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let setting = AggregateConfig {
        window: chosen.point.window,
        pooling: chosen.point.pooling,
        min_frames: chosen.point.min_frames,
        threshold: Some(chosen.point.threshold),
        ..a.clone()
    };
    let toml_path = args.out.join("exam-setting.toml");
    std::fs::write(&toml_path, setting_toml(&setting, &chosen, args))
        .with_context(|| format!("writing {}", toml_path.display()))?;
    // What was written must load as the device loads it.
    Config::load(&toml_path).context("the setting written does not load back")?;
    let allowed_note = manifest.as_ref().map(|m| {
        let name = format!("{}@{}", m.model.name, m.model.version);
        match m.operating_point.site_range {
            Some([lo, hi]) => format!(
                "Thresholds tried: those bundle {name} lets a site set, {lo}-{hi} (signed \
                 {:.4}).",
                m.operating_point.threshold
            ),
            None => format!(
                "Bundle {name} lets a site set no threshold of its own: only its signed {:.4} \
                 was tried (`renalscan bundle --site-threshold-range LO,HI` signs a range).",
                m.operating_point.threshold
            ),
        }
    });
    let report = report(args, &per_label, &bests, &chosen, allowed_note);
    let md = args.out.join("exam_setting.md");
    std::fs::write(&md, &report).with_context(|| format!("writing {}", md.display()))?;
    print!("{report}");
    println!("written: {} and {}", toml_path.display(), md.display());
    Ok(())
}

/// The `[aggregate]` section, where it came from in comments.
fn setting_toml(a: &AggregateConfig, chosen: &Scored, args: &Args) -> String {
    let p = &chosen.point;
    let from: Vec<String> = args.from.iter().map(|p| p.display().to_string()).collect();
    format!(
        "# renalscan exam-setting, on {} development sweeps ({}), for {:.1}% exam sensitivity \
         and {:.1}% specificity\n# over the next {} abnormal and {} normal exams. On those \
         sweeps: {} of {} abnormal and {} of {} normal\n# called right; chance to keep both \
         targets {:.0}%. The cart's bundle must allow the threshold\n# (`renalscan bundle \
         --site-threshold-range LO,HI`).\n\
         [aggregate]\npooling = \"{}\"\nwindow = {}\nmin_frames = {}\nthreshold = {:.3}\n\
         hysteresis = {}\nreport_every_s = {}\nreset_after_gated = {}\n",
        p.abnormal + p.normal,
        from.join(", "),
        100.0 * args.sensitivity,
        100.0 * args.specificity,
        args.over.0,
        args.over.1,
        p.caught,
        p.abnormal,
        p.cleared,
        p.normal,
        100.0 * chosen.chance(),
        a.pooling.label(),
        a.window,
        a.min_frames,
        p.threshold,
        a.hysteresis,
        a.report_every_s,
        a.reset_after_gated
    )
}

fn report(
    args: &Args,
    per_label: &BTreeMap<&'static str, usize>,
    bests: &[(&[Scored], Scored, f64)],
    chosen: &Scored,
    allowed_note: Option<String>,
) -> String {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let (next_abn, next_norm) = args.over;
    let p = &chosen.point;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Exam setting\n\nChosen on {} development sweeps ({} abnormal, {} normal; {}) from \
         {}, for {} exam sensitivity and {} specificity over the next {next_abn} abnormal and \
         {next_norm} normal exams (at most {} missed, at most {} false alarms).\n",
        p.abnormal + p.normal,
        p.abnormal,
        p.normal,
        per_label
            .iter()
            .map(|(l, n)| format!("{l} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        args.from
            .iter()
            .map(|p| format!("`{}`", p.display()))
            .collect::<Vec<_>>()
            .join(", "),
        pct(args.sensitivity),
        pct(args.specificity),
        allowed(next_abn, args.sensitivity),
        allowed(next_norm, args.specificity),
    );
    let _ = writeln!(
        t,
        "**Chosen: {} pooling, window {} (first decision after {} frames), threshold {:.3}.** \
         On the development sweeps: sensitivity {} ({} of {}), specificity {} ({} of {}). \
         Chance to keep both targets on the next exams: {} (sensitivity {}, specificity {}).\n",
        p.pooling.label(),
        p.window,
        p.min_frames,
        p.threshold,
        pct(p.sensitivity),
        p.caught,
        p.abnormal,
        pct(p.specificity),
        p.cleared,
        p.normal,
        pct(chosen.chance()),
        pct(chosen.keeps_sensitivity),
        pct(chosen.keeps_specificity),
    );
    let _ = writeln!(
        t,
        "The chance is the beta-binomial predictive of the development sweeps' miss and \
         false-alarm counts under Jeffreys' prior: it holds for exams like these sweeps (the \
         same scanner, the same mix of findings), and it charges few sweeps for their \
         uncertainty. Thresholds that call every sweep alike share a chance; the one nearest \
         the middle of that run, in log-odds, is taken. {}\n\n\
         | pooling | window | best threshold | chance | sensitivity | specificity | \
         thresholds keeping both targets on these sweeps |\n|---|---|---|---|---|---|---|",
        allowed_note.unwrap_or_else(|| {
            "No bundle was given (`--bundle`): the cart refuses a threshold its bundle does \
             not allow a site."
                .into()
        })
    );
    for (row, best, _) in bests {
        let b = &best.point;
        let range = match dev_range(row, args) {
            Some((lo, hi)) => format!(
                "{lo:.3}-{hi:.3} ({:.2} in log-odds)",
                log_odds(f64::from(hi)) - log_odds(f64::from(lo))
            ),
            None => "none".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.3} | {} | {} | {} | {range} |",
            b.pooling.label(),
            b.window,
            b.threshold,
            pct(best.chance()),
            pct(b.sensitivity),
            pct(b.specificity),
        );
    }
    let _ = writeln!(
        t,
        "\nJudge the setting once, on sweeps it was not chosen on: `renalscan eval --model \
         BUNDLE --trusted-keys KEYS --sweeps FRESH --edge-config {} --out DIR`. On the cart, \
         the `[aggregate]` section of `exam-setting.toml` goes into the configuration.",
        args.out.join("exam-setting.toml").display()
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(from: Vec<PathBuf>, out: PathBuf) -> Args {
        Args {
            from,
            sensitivity: 0.98,
            specificity: 0.90,
            over: (250, 50),
            windows: vec![4, 8],
            edge_config: None,
            bundle: None,
            trusted_keys: None,
            out,
        }
    }

    #[test]
    fn allowed_errors_round_the_target_up() {
        assert_eq!(allowed(250, 0.98), 5);
        assert_eq!(allowed(50, 0.90), 5);
        assert_eq!(allowed(40, 0.98), 0);
        assert_eq!(allowed(7, 1.0), 0);
    }

    #[test]
    fn with_a_bundle_only_the_thresholds_it_allows_a_site_are_tried() {
        let path = std::path::Path::new("manifest.toml");
        let sample = testkit::manifests::sample(&"0".repeat(64));
        let mut m = Manifest::parse_draft(&sample, path).expect("sample");
        m.operating_point.threshold = 0.5125;
        m.operating_point.site_range = Some([0.2, 0.95]);
        let t = thresholds(Some(&m));
        assert_eq!(t.first(), Some(&0.2));
        assert_eq!(t.last(), Some(&0.95));
        assert!(t.contains(&0.5125) && t.windows(2).all(|w| w[0] < w[1]));
        m.operating_point.site_range = None;
        assert_eq!(thresholds(Some(&m)), [0.5125]);
        assert_eq!(thresholds(None).len(), 197);
    }

    #[test]
    fn next_exams_are_two_counts() {
        assert_eq!(next_exams("250,50"), Ok((250, 50)));
        assert!(next_exams("250").unwrap_err().contains("e.g. 250,50"));
        assert!(next_exams("0,50").is_err());
    }

    /// Abnormal sweeps whose frames score `hi`, normal ones scoring `lo`, with one of each
    /// borderline; the setting must sit between the groups, and must load as a config.
    #[test]
    fn the_setting_sits_between_normal_and_abnormal_sweeps_and_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let csv = tmp.path().join(INPUTS_FILE);
        let mut text = String::from("sweep,label,input,event,p_abnormal,p_normal\n");
        let mut add = |name: &str, label: &str, p: f32| {
            for i in 0..20 {
                if i == 10 {
                    text.push_str(&format!("{name},{label},{i},reset,,\n"));
                }
                text.push_str(&format!("{name},{label},{i},frame,{p},{}\n", 1.0 - p));
            }
        };
        for i in 0..60 {
            add(&format!("sol-{i:03}"), "sol", 0.97);
        }
        for i in 0..30 {
            add(&format!("normal-{i:03}"), "normal", 0.08);
        }
        add("cyst-x", "cyst", 0.6);
        add("normal-x", "normal", 0.3);
        std::fs::write(&csv, text).unwrap();
        let out = tmp.path().join("out");
        let a = args(vec![tmp.path().to_path_buf()], out.clone());
        run(&a).unwrap();
        let cfg = Config::load(&out.join("exam-setting.toml")).unwrap();
        let t = cfg.aggregate.threshold.unwrap();
        // Every sweep called right needs 0.3 < t <= 0.6; the middle of that run in log-odds
        // is near 0.45.
        assert!(t > 0.3 && t <= 0.6, "{t}");
        assert!((t - 0.45).abs() < 0.03, "{t}");
        let md = std::fs::read_to_string(out.join("exam_setting.md")).unwrap();
        assert!(md.contains("cyst 1, normal 31, sol 60"), "{md}");
        assert!(md.contains("61 of 61") && md.contains("31 of 31"), "{md}");
    }

    #[test]
    fn a_broken_record_is_named_by_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let csv = tmp.path().join("x.csv");
        let out = tmp.path().join("out");
        let cases = [
            ("sweep,label,event\n", "no `p_abnormal` column"),
            (
                "sweep,label,input,event,p_abnormal\na,sol,0,frame,1.5\n",
                "line 2: p_abnormal is not a probability",
            ),
            (
                "sweep,label,input,event,p_abnormal\na,kidney,0,frame,0.5\n",
                "line 2: unknown label \"kidney\"",
            ),
            (
                "sweep,label,input,event,p_abnormal\na,sol,0,frame,0.5\nb,normal,0,frame,0.1\na,sol,1,frame,0.5\n",
                "line 4: sweep a appears twice",
            ),
            (
                "sweep,label,input,event,p_abnormal\na,sol,0,frame,0.5\n",
                "0 normal exams",
            ),
        ];
        for (text, want) in cases {
            std::fs::write(&csv, text).unwrap();
            let e = run(&args(vec![csv.clone()], out.clone())).unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
        let e = run(&args(vec![tmp.path().join("none")], out)).unwrap_err();
        assert!(
            format!("{e:#}").contains("run `renalscan eval --sweeps"),
            "{e:#}"
        );
    }
}
