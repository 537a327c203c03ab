//! `renalscan eval --sweeps`: the device's answer per exam, judged. Each recorded sweep runs
//! through renalscan-edge's own pipeline ([`renalscan_edge::exam`]) with the signed bundle;
//! the exam's call is the device's own ([`contract::events::exam_call`]: latched on an
//! abnormal decision during the sweep), beside the decision standing when the sweep ends.
//! What the aggregator was fed is kept per sweep, so the same frames are judged again at
//! other aggregation settings without the model: the exam operating points a site chooses
//! its setting from ([`OperatingCurve`]), and a per-frame trace (`exam_inputs.csv`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use contract::Class;
use evaluate::plots::{curves_png, Curve};
use renalscan_edge::aggregate::{exam_call_of, Input, Params, Pooling};
use renalscan_edge::config::{Config, ModelForm};
use renalscan_edge::exam::{ExamReplay, SweepOutcome};
use renalscan_edge::infer::Classifier;
use serde::Serialize;
use train::dataset::{write_csv, CsvTable};

use super::frames_in_view::{frames_in_view, SweepFrames};

use super::eval::Args;

/// One sweep to judge.
#[derive(Debug)]
struct Sweep {
    name: String,
    path: PathBuf,
    label: Class,
    /// `time_s` per frame index, from a phantom sweep's `frames.csv`.
    times: Vec<f64>,
    /// How marked the finding is (0-1, the phantom's scale): the list's `severity` column,
    /// else the phantom's `frames.csv`. Lets the report say which findings a setting misses.
    severity: Option<f64>,
    /// The patient's age in years: the list's `age_y` column, else the phantom's
    /// `frames.csv`. Lets the report say which patients a setting fails.
    age_y: Option<f64>,
    /// Whether the finding was in view, by source frame index (the phantom's
    /// `lesion_visible`): which frames a missed exam's finding was on.
    in_view: Option<Vec<bool>>,
}

/// Columns of `exams.csv`, in [`Row`]'s order.
const EXAMS_HEADER: [&str; 14] = [
    "sweep",
    "label",
    "severity",
    "frames",
    "inferred",
    "gated",
    "first_decision_frame",
    "first_decision_s",
    "call",
    "class",
    "p_abnormal",
    "final_call",
    "decisions",
    "age_y",
];

/// One judged exam (a row of `exams.csv`).
#[derive(Debug, Serialize)]
struct Row {
    sweep: String,
    label: String,
    severity: Option<f64>,
    frames: u64,
    inferred: u64,
    gated: u64,
    /// Frames read before the first aggregated decision (inclusive).
    first_decision_frame: Option<u64>,
    /// Sweep time of that frame, seconds (phantom sweeps).
    first_decision_s: Option<f64>,
    /// The exam's call: `abnormal`, `normal`, or `none` (never decided).
    call: &'static str,
    class: Option<String>,
    p_abnormal: Option<f32>,
    /// The aggregated decision standing when the sweep ended (what the live screen shows as
    /// the probe leaves the far pole).
    final_call: &'static str,
    decisions: usize,
    age_y: Option<f64>,
}

/// Sweeps under `dir`: `sweeps.csv` (path,label, optionally severity and age_y) if present,
/// else every subfolder with a phantom `frames.csv` (its label, severity and age columns).
fn discover(dir: &Path) -> Result<Vec<Sweep>> {
    let list = dir.join("sweeps.csv");
    let mut out = Vec::new();
    if list.is_file() {
        let table = CsvTable::read(&list)?;
        let col = |name: &str| {
            table
                .col(&[name])
                .with_context(|| format!("{}: no `{name}` column", list.display()))
        };
        let (pc, lc) = (col("path")?, col("label")?);
        let (sc, ac) = (table.col(&[SEVERITY.name]), table.col(&[AGE.name]));
        for r in table.rows() {
            let (Some(p), Some(l)) = (r.get(Some(pc)), r.get(Some(lc))) else {
                bail!("{} line {}: no path or no label", list.display(), r.line());
            };
            let label = Class::from_label(l).with_context(|| {
                format!("{} line {}: unknown label {l:?}", list.display(), r.line())
            })?;
            // An empty cell leaves the phantom's value.
            let listed = |c: &NumberColumn, at| {
                r.get(at)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| {
                        c.parse(v).with_context(|| {
                            format!("{} line {}: {} {v:?}", list.display(), r.line(), c.name)
                        })
                    })
                    .transpose()
            };
            let (severity, age_y) = (listed(&SEVERITY, sc)?, listed(&AGE, ac)?);
            let path = dir.join(p);
            let f = frames_csv(&path)?;
            out.push(Sweep {
                name: p.to_string(),
                in_view: f.in_view,
                times: f.times,
                severity: severity.or(f.severity),
                age_y: age_y.or(f.age_y),
                path,
                label,
            });
        }
    } else {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("frames.csv").is_file())
            .collect();
        dirs.sort();
        for path in dirs {
            let csv = path.join("frames.csv");
            let f = frames_csv(&path)?;
            let l = f
                .label
                .with_context(|| format!("{}: no frames", csv.display()))?;
            let label = Class::from_label(&l).with_context(|| {
                format!(
                    "{}: label {l:?} is not a screening class (a sweep without a kidney has no \
                     exam-level truth)",
                    csv.display()
                )
            })?;
            out.push(Sweep {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                times: f.times,
                severity: f.severity,
                age_y: f.age_y,
                in_view: f.in_view,
                path,
                label,
            });
        }
    }
    if out.is_empty() {
        bail!(
            "no sweeps in {}: expected sweeps.csv (path,label) or subfolders with frames.csv \
             (renalscan synth --stream --sweeps-per-class N --out {})",
            dir.display(),
            dir.display()
        );
    }
    Ok(out)
}

/// What a phantom sweep's `frames.csv` says about the sweep.
#[derive(Debug, Default)]
struct FramesCsv {
    /// The first frame's label.
    label: Option<String>,
    /// `time_s` by frame index.
    times: Vec<f64>,
    /// The first frame's severity.
    severity: Option<f64>,
    /// The first frame's patient age (years).
    age_y: Option<f64>,
    /// `lesion_visible` by source frame index: the rows in file-name order, the order a
    /// replay reads a folder's frames in. `None` without the column or with a bad value.
    in_view: Option<Vec<bool>>,
}

/// A per-sweep number a sweep list or a phantom `frames.csv` may carry, with its range.
struct NumberColumn {
    name: &'static str,
    range: std::ops::RangeInclusive<f64>,
    /// What a bad value is told.
    expect: &'static str,
}

/// How marked the finding is, the phantom's 0-1 scale.
const SEVERITY: NumberColumn = NumberColumn {
    name: "severity",
    range: 0.0..=1.0,
    expect: "a severity is a number from 0 to 1",
};

/// The patient's age in years (pediatric screening).
const AGE: NumberColumn = NumberColumn {
    name: "age_y",
    range: 0.0..=18.0,
    expect: "an age is a number of years from 0 to 18",
};

impl NumberColumn {
    fn parse(&self, v: &str) -> Result<f64> {
        match v.trim().parse::<f64>() {
            Ok(x) if self.range.contains(&x) => Ok(x),
            _ => bail!("{}", self.expect),
        }
    }
}

/// From a sweep folder's `frames.csv` (phantom sweeps). Nothing for a folder without one or
/// a cine file.
fn frames_csv(path: &Path) -> Result<FramesCsv> {
    let csv = path.join("frames.csv");
    if !csv.is_file() {
        return Ok(FramesCsv::default());
    }
    let table = CsvTable::read(&csv)?;
    let lc = table
        .col(&["label"])
        .with_context(|| format!("{}: no label column", csv.display()))?;
    let label = table
        .rows()
        .first()
        .and_then(|r| r.get(Some(lc)))
        .map(str::to_string);
    let times = match table.col(&["time_s"]) {
        Some(tc) => table
            .rows()
            .iter()
            .filter_map(|r| r.get(Some(tc)).and_then(|v| v.parse().ok()))
            .collect(),
        None => Vec::new(),
    };
    // The first frame's value: the sweep is one patient.
    let first = |c: &NumberColumn| {
        table
            .rows()
            .first()
            .and_then(|r| r.get(table.col(&[c.name])))
            .map(|v| {
                c.parse(v)
                    .with_context(|| format!("{}: {} {v:?}", csv.display(), c.name))
            })
            .transpose()
    };
    let in_view = match (table.col(&["path"]), table.col(&["lesion_visible"])) {
        (Some(pc), Some(vc)) => {
            let mut by_name: Vec<(&str, Option<bool>)> = table
                .rows()
                .iter()
                .map(|r| {
                    let visible = match r.get(Some(vc)).map(str::trim) {
                        Some("1") => Some(true),
                        Some("0") => Some(false),
                        _ => None,
                    };
                    (r.get(Some(pc)).unwrap_or_default(), visible)
                })
                .collect();
            by_name.sort_by(|a, b| a.0.cmp(b.0));
            by_name.into_iter().map(|(_, v)| v).collect()
        }
        _ => None,
    };
    Ok(FramesCsv {
        label,
        times,
        severity: first(&SEVERITY)?,
        age_y: first(&AGE)?,
        in_view,
    })
}

fn call_of(d: Option<&contract::events::Decision>) -> &'static str {
    match d {
        Some(d) if d.abnormal => "abnormal",
        Some(_) => "normal",
        None => "none",
    }
}

fn row(s: &Sweep, o: &SweepOutcome) -> Row {
    let call = o.exam_call();
    let first = o.first_decision_frame();
    Row {
        sweep: s.name.clone(),
        label: s.label.label().to_string(),
        severity: s.severity,
        frames: o.frames,
        inferred: o.counters.inferred,
        gated: o.counters.gated.iter().sum(),
        first_decision_frame: first.map(|i| i + 1),
        first_decision_s: first.and_then(|i| s.times.get(i as usize).copied()),
        call: call_of(call),
        class: call.map(|d| d.class.clone()),
        p_abnormal: call.map(|d| d.p_abnormal),
        final_call: call_of(o.final_decision()),
        decisions: o.decisions.len(),
        age_y: s.age_y,
    }
}

/// k of n as a fraction; NaN for an empty group (no exams of that kind to judge).
fn frac(k: usize, n: usize) -> f64 {
    if n == 0 {
        f64::NAN
    } else {
        k as f64 / n as f64
    }
}

/// Wilson 95% interval of k successes in n.
fn wilson(k: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [f64::NAN; 2];
    }
    let (k, n, z) = (k as f64, n as f64, 1.96f64);
    let p = k / n;
    let d = 1.0 + z * z / n;
    let c = (p + z * z / (2.0 * n)) / d;
    let h = z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt() / d;
    [(c - h).max(0.0), (c + h).min(1.0)]
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    })
}

pub fn run(args: &Args, dir: &Path) -> Result<()> {
    let keys = args
        .trusted_keys
        .as_deref()
        .context("--sweeps needs --trusted-keys: the device only runs signed bundles")?;
    let sweeps = discover(dir)?;
    let mut cfg = match &args.edge_config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    // The cores go to sweeps side by side (`--threads`), one single-threaded pipeline each:
    // inference workers inside each would only oversubscribe them. Decisions are the same
    // either way (the pipeline keeps frame order).
    cfg.model.threads = Some(1);
    // One model per worker; sweeps are handed out in order and the rows put back in order.
    let workers = args.threads.clamp(1, sweeps.len());
    let mut replays = Vec::with_capacity(workers);
    for _ in 0..workers {
        let classifier = Classifier::open(&args.model, Some(keys), ModelForm::Auto, None)
            .with_context(|| format!("opening bundle {}", args.model.display()))?;
        replays.push(ExamReplay::new(cfg.clone(), classifier)?);
    }
    let labels = replays
        .first()
        .and_then(|r| r.classifier())
        .map(|c| c.info().labels.clone())
        .unwrap_or_default();
    let t0 = std::time::Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    type Outcome = Result<(Row, Judged), String>;
    let results: Vec<(usize, Outcome)> = std::thread::scope(|scope| {
        let handles: Vec<_> = replays
            .iter_mut()
            .map(|replay| {
                let (sweeps, next, done) = (&sweeps, &next, &done);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(s) = sweeps.get(i) else {
                            return out;
                        };
                        let r = replay.run(&s.path).map(|o| {
                            let (row, secs) = (row(s, &o), o.seconds);
                            (row, Judged::of(s, o), secs)
                        });
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        match r {
                            Ok((r, judged, secs)) => {
                                log::info!(
                                    "[{n}/{}] {} ({}): {} after {} frames ({secs:.1} s)",
                                    sweeps.len(),
                                    s.name,
                                    r.label,
                                    r.call,
                                    r.first_decision_frame.unwrap_or(0),
                                );
                                out.push((i, Ok((r, judged))));
                            }
                            Err(e) => {
                                log::error!("{}: {e}", s.path.display());
                                out.push((i, Err(format!("{}: {e}", s.name))));
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut results = results;
    results.sort_by_key(|(i, _)| *i);
    let mut rows = Vec::new();
    let mut judged = Vec::new();
    let mut shown = Vec::new();
    let mut failed = Vec::new();
    for (i, r) in results {
        match r {
            Ok((r, j)) => {
                shown.push(sweep_frames(&sweeps[i], &r, &j));
                rows.push(r);
                judged.push(j);
            }
            Err(e) => failed.push(e),
        }
    }
    if rows.len() + failed.len() != sweeps.len() {
        bail!(
            "a replay worker stopped early: {} of {} sweeps judged",
            rows.len() + failed.len(),
            sweeps.len()
        );
    }
    if rows.is_empty() {
        bail!("no sweep could be replayed: {}", failed.join("; "));
    }
    let secs = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let summary = summarise(&rows);
    let curve = OperatingCurve::of(&judged);
    let in_view = frames_in_view(&shown);
    let mut report = report(args, dir, &rows, &summary, &failed, secs);
    if let Some(v) = &in_view {
        report.push_str(&v.report());
    }
    report.push_str(&curve.report());
    let write = |name: &str, text: String| {
        let p = args.out.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    let opt = |v: Option<String>| v.unwrap_or_default();
    write_csv(
        &args.out.join("exams.csv"),
        &EXAMS_HEADER,
        rows.iter().map(|r| {
            [
                r.sweep.clone(),
                r.label.clone(),
                opt(r.severity.map(|v| format!("{v:.3}"))),
                r.frames.to_string(),
                r.inferred.to_string(),
                r.gated.to_string(),
                opt(r.first_decision_frame.map(|v| v.to_string())),
                opt(r.first_decision_s.map(|v| format!("{v:.3}"))),
                r.call.to_string(),
                opt(r.class.clone()),
                opt(r.p_abnormal.map(|v| format!("{v:.4}"))),
                r.final_call.to_string(),
                r.decisions.to_string(),
                opt(r.age_y.map(|v| format!("{v:.3}"))),
            ]
        }),
    )?;
    write_csv(
        &args.out.join("exam_operating.csv"),
        &CURVE_HEADER,
        curve.points.iter().map(|p| {
            [
                p.pooling.label().to_string(),
                p.window.to_string(),
                p.min_frames.to_string(),
                format!("{:.3}", p.threshold),
                format!("{:.4}", p.sensitivity),
                format!("{:.4}", p.specificity),
                p.undecided.to_string(),
            ]
        }),
    )?;
    write_inputs(&args.out.join(INPUTS_FILE), &rows, &judged, &labels)?;
    write(
        "exams.json",
        serde_json::to_string_pretty(&serde_json::json!({
            "summary": summary,
            "sweeps": rows,
            "failed": failed,
            "operating_points": curve.chosen(),
            "frames_in_view": in_view,
        }))?,
    )?;
    write("exams.md", report.clone())?;
    if let Some(png) = curve.picture()? {
        let p = args.out.join("exam_roc.png");
        std::fs::write(&p, png).with_context(|| format!("writing {}", p.display()))?;
    }
    print!("{report}");
    println!(
        "written: {} (every operating point: {}; every frame's output: {})",
        args.out.join("exams.md").display(),
        args.out.join("exam_operating.csv").display(),
        args.out.join(INPUTS_FILE).display()
    );
    Ok(())
}

/// What the aggregator got from one sweep, each frame with whether its finding was in view.
/// A sweep whose record cannot be matched to its frames (no `lesion_visible`, a bad value,
/// another frame count than the replay read) gives no frames, with a warning.
fn sweep_frames(s: &Sweep, r: &Row, j: &Judged) -> SweepFrames {
    let normal = s.label == Class::Normal;
    let matched = s.in_view.as_ref().filter(|v| v.len() as u64 == r.frames);
    let frames = match matched {
        None if !normal => {
            if s.in_view.is_some() {
                log::warn!(
                    "{}: frames.csv lists {} frames with lesion_visible, the replay read {}: \
                     its frames are left out of the in-view table",
                    s.name,
                    s.in_view.as_ref().map_or(0, Vec::len),
                    r.frames
                );
            }
            Vec::new()
        }
        _ => j
            .inputs
            .iter()
            .zip(&j.frames)
            .filter_map(|(input, frame)| match (input, frame) {
                (Input::Push(p), Some(f)) => {
                    let shown = !normal
                        && matched
                            .and_then(|v| v.get(*f as usize))
                            .copied()
                            .unwrap_or(false);
                    Some((f64::from(p.p_abnormal), shown))
                }
                _ => None,
            })
            .collect(),
    };
    SweepFrames {
        label: r.label.clone(),
        severity: r.severity,
        frames,
    }
}

/// Per-frame trace of what each sweep fed the aggregator.
pub(crate) const INPUTS_FILE: &str = "exam_inputs.csv";

/// Writes every aggregator input of every sweep, one row each: why an exam was called as
/// it was (which frames scored high), and the raw material to study other exam rules offline.
/// A `reset` row marks where the window started over; gated frames never reach it.
fn write_inputs(path: &Path, rows: &[Row], judged: &[Judged], labels: &[String]) -> Result<()> {
    let mut header: Vec<String> = ["sweep", "label", "input", "frame", "event", "p_abnormal"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(labels.iter().map(|l| format!("p_{l}")));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    // Streamed row by row: a long sweep set is not held twice in memory.
    let lines = rows.iter().zip(judged).flat_map(|(r, j)| {
        j.inputs.iter().enumerate().map(move |(i, input)| {
            let frame = j.frames.get(i).copied().flatten();
            let mut line = vec![
                r.sweep.clone(),
                r.label.clone(),
                i.to_string(),
                frame.map(|f| f.to_string()).unwrap_or_default(),
            ];
            match input {
                Input::Push(s) => {
                    line.push("frame".into());
                    line.push(format!("{:.5}", s.p_abnormal));
                    line.extend(s.probs.iter().take(labels.len()).map(|p| format!("{p:.5}")));
                }
                Input::Reset => {
                    line.push("reset".into());
                    line.extend(std::iter::repeat_n(String::new(), labels.len() + 1));
                }
            }
            line
        })
    });
    write_csv(path, &header, lines)?;
    Ok(())
}

/// One replayed sweep, kept to judge it at other aggregation settings.
#[derive(Debug)]
pub(crate) struct Judged {
    pub(crate) abnormal: bool,
    /// The device's call: abnormal, normal, or none.
    call: Option<bool>,
    pub(crate) inputs: Vec<Input>,
    /// The source frame index of each input (`None` for a reset; empty when not recorded).
    frames: Vec<Option<u64>>,
    params: Params,
}

impl Judged {
    /// A sweep read back from `exam_inputs.csv`: the device's call is not recorded there, so
    /// it is taken to be the call at `params`.
    pub(crate) fn recorded(abnormal: bool, inputs: Vec<Input>, params: Params) -> Self {
        let call = exam_call_of(params, &inputs);
        Self {
            abnormal,
            call,
            inputs,
            frames: Vec::new(),
            params,
        }
    }

    fn of(s: &Sweep, o: SweepOutcome) -> Self {
        Self {
            abnormal: s.label != Class::Normal,
            call: o.exam_call().map(|d| d.abnormal),
            inputs: o.inputs,
            frames: o.input_frames,
            params: o.params,
        }
    }
}

/// Windows the operating curve is drawn for, besides the configured one (frames).
pub(crate) const CURVE_WINDOWS: [usize; 5] = [4, 6, 8, 12, 16];
/// Exam sensitivities the report names an operating point for.
const EXAM_TARGETS: [f64; 3] = [0.98, 0.95, 0.90];
/// Columns of `exam_operating.csv`.
const CURVE_HEADER: [&str; 7] = [
    "pooling",
    "window",
    "min_frames",
    "threshold",
    "sensitivity",
    "specificity",
    "undecided",
];

/// The exams judged at one aggregation setting.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CurvePoint {
    pub(crate) pooling: Pooling,
    pub(crate) window: usize,
    pub(crate) min_frames: usize,
    pub(crate) threshold: f32,
    pub(crate) sensitivity: f64,
    pub(crate) specificity: f64,
    /// Abnormal sweeps called abnormal, of `abnormal`.
    pub(crate) caught: usize,
    pub(crate) abnormal: usize,
    /// Normal sweeps called normal, of `normal`.
    pub(crate) cleared: usize,
    pub(crate) normal: usize,
    pub(crate) undecided: usize,
}

/// Exam-level sensitivity and specificity over aggregation poolings, windows and thresholds,
/// from the frames' recorded model outputs fed to the device's own aggregator: which setting
/// a site should screen at is chosen here, on development sweeps, and then judged on others.
#[derive(Debug)]
struct OperatingCurve {
    /// The configured setting.
    base: Option<Params>,
    /// The exams judged at it (the device's own figures, when the record is sound).
    configured: Option<CurvePoint>,
    points: Vec<CurvePoint>,
    /// Sweeps on which the replay at the configured setting disagreed with the device (0
    /// unless the recording is broken).
    disagree: usize,
    /// Sweeps judged.
    judged: usize,
}

/// The exams judged at one aggregation setting; a sweep without a decision counts as wrong.
pub(crate) fn judge(judged: &[Judged], p: Params) -> CurvePoint {
    let (mut tp, mut tn, mut undecided, mut n_abn) = (0, 0, 0, 0);
    for j in judged {
        n_abn += usize::from(j.abnormal);
        match exam_call_of(p, &j.inputs) {
            Some(call) => {
                tp += usize::from(j.abnormal && call);
                tn += usize::from(!j.abnormal && !call);
            }
            None => undecided += 1,
        }
    }
    CurvePoint {
        pooling: p.pooling,
        window: p.window,
        min_frames: p.min_frames,
        threshold: p.threshold,
        sensitivity: frac(tp, n_abn),
        specificity: frac(tn, judged.len() - n_abn),
        caught: tp,
        abnormal: n_abn,
        cleared: tn,
        normal: judged.len() - n_abn,
        undecided,
    }
}

impl OperatingCurve {
    fn of(judged: &[Judged]) -> Self {
        let Some(base) = judged.first().map(|j| j.params) else {
            return Self {
                base: None,
                configured: None,
                points: Vec::new(),
                disagree: 0,
                judged: 0,
            };
        };
        let disagree = judged
            .iter()
            .filter(|j| exam_call_of(j.params, &j.inputs) != j.call)
            .count();
        if disagree > 0 {
            log::error!(
                "the recorded aggregation gives another call than the device on {disagree} \
                 sweeps: the operating points are not to be trusted"
            );
        }
        let mut windows: Vec<usize> = CURVE_WINDOWS.iter().copied().chain([base.window]).collect();
        windows.sort_unstable();
        windows.dedup();
        // The configured pooling first: the picture draws its curves.
        let poolings = [base.pooling]
            .into_iter()
            .chain(Pooling::ALL.into_iter().filter(|&p| p != base.pooling));
        let mut points = Vec::new();
        for pooling in poolings {
            for &window in &windows {
                let min_frames = base.min_frames.min(window);
                for k in 2..=198u32 {
                    let p = Params {
                        window,
                        pooling,
                        min_frames,
                        threshold: k as f32 / 200.0,
                        ..base
                    };
                    points.push(judge(judged, p));
                }
            }
        }
        let configured = judge(judged, base);
        Self {
            base: Some(base),
            configured: Some(configured),
            points,
            disagree,
            judged: judged.len(),
        }
    }

    /// The poolings and windows on the curve, in order (the points are grouped by them).
    fn settings(&self) -> Vec<(Pooling, usize)> {
        let mut settings: Vec<(Pooling, usize)> =
            self.points.iter().map(|p| (p.pooling, p.window)).collect();
        settings.dedup();
        settings
    }

    /// Per pooling, window and target exam sensitivity, the highest threshold that keeps it
    /// (the most specific setting with that sensitivity on these sweeps).
    fn chosen(&self) -> Vec<(f64, CurvePoint)> {
        let settings = self.settings();
        let mut out = Vec::new();
        for target in EXAM_TARGETS {
            for &(pooling, w) in &settings {
                let best = self
                    .points
                    .iter()
                    .filter(|p| {
                        p.pooling == pooling && p.window == w && p.sensitivity >= target - 1e-9
                    })
                    .max_by(|a, b| a.threshold.total_cmp(&b.threshold));
                if let Some(p) = best {
                    out.push((target, p.clone()));
                }
            }
        }
        out
    }

    /// Exam-level ROC curves, one per window of the configured pooling, the configured
    /// setting marked (the other pooling's figures are in the report and the CSV).
    fn picture(&self) -> Result<Option<Vec<u8>>> {
        let Some(base) = self.base else {
            return Ok(None);
        };
        let curves: Vec<Curve> = self
            .settings()
            .into_iter()
            .filter(|&(pooling, _)| pooling == base.pooling)
            .map(|(pooling, w)| {
                let mut points: Vec<(f64, f64)> = self
                    .points
                    .iter()
                    .filter(|p| p.pooling == pooling && p.window == w)
                    .map(|p| (1.0 - p.specificity, p.sensitivity))
                    .chain([(0.0, 0.0), (1.0, 1.0)])
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
                points.dedup();
                let auc: f64 = points
                    .windows(2)
                    .map(|s| (s[1].0 - s[0].0) * (s[0].1 + s[1].1) / 2.0)
                    .sum();
                let first = base.min_frames.min(w);
                Curve {
                    label: format!("window {w} (first decision at {first}): AUC {auc:.3}"),
                    points,
                }
            })
            .collect();
        let marked = self.configured.as_ref().map(|p| {
            (
                format!(
                    "in use: {} window {}, threshold {:.3}, {:.1}% / {:.1}%",
                    p.pooling.label(),
                    p.window,
                    p.threshold,
                    100.0 * p.sensitivity,
                    100.0 * p.specificity
                ),
                (1.0 - p.specificity, p.sensitivity),
            )
        });
        let png = curves_png(
            &format!(
                "Exam-level ROC by aggregation window, {} pooling ({} sweeps)",
                base.pooling.label(),
                self.judged
            ),
            &curves,
            marked.as_ref().map(|(l, p)| (l.as_str(), *p)),
        )?;
        Ok(Some(png))
    }

    fn report(&self) -> String {
        let Some(base) = self.base else {
            return String::new();
        };
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\n## Exam operating points\n\nThe same frames' model outputs fed again to the \
             device's aggregator at other settings (first decision after {} frames or the \
             window, hysteresis {}); the configured setting is {} pooling, window {}, \
             threshold {:.3}. For each target exam sensitivity, the highest threshold that \
             keeps it on these sweeps:\n",
            base.min_frames,
            base.hysteresis,
            base.pooling.label(),
            base.window,
            base.threshold
        );
        let chosen = self.chosen();
        let _ = writeln!(
            t,
            "| target | pooling | window | threshold | sensitivity | specificity |\n\
             |---|---|---|---|---|---|"
        );
        for (target, p) in &chosen {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {:.3} | {} | {} |",
                pct(*target),
                p.pooling.label(),
                p.window,
                p.threshold,
                pct(p.sensitivity),
                pct(p.specificity)
            );
        }
        let _ = writeln!(
            t,
            "\nChosen on these sweeps, these figures flatter the setting: choose it on \
             development sweeps (`renalscan exam-setting --from` this folder and others: the \
             setting most likely to keep the targets on the next exams) and judge it on sweeps \
             it was not chosen on. On the cart it is \
             `aggregate.pooling`, `aggregate.window` and `aggregate.threshold` in the \
             configuration (`--edge-config` here), and the signed bundle must allow that threshold (`renalscan bundle \
             --site-threshold-range LO,HI`). Every setting tried: `exam_operating.csv`; the \
             curves: `exam_roc.png`."
        );
        if self.disagree > 0 {
            let _ = writeln!(
                t,
                "\n**Not to be trusted:** at the configured setting the replay disagreed with \
                 the device on {} sweeps.",
                self.disagree
            );
        }
        t
    }
}

/// Exam-level figures.
#[derive(Debug, Serialize)]
struct Summary {
    n_normal: usize,
    n_abnormal: usize,
    /// Abnormal exams called abnormal (no decision counts as missed).
    sensitivity: f64,
    sensitivity_ci: [f64; 2],
    /// Normal exams called normal (no decision counts as wrong).
    specificity: f64,
    specificity_ci: [f64; 2],
    undecided: usize,
    /// Abnormal exams whose decision standing at the sweep's end is abnormal.
    sensitivity_final: f64,
    /// Normal exams whose decision standing at the sweep's end is normal.
    specificity_final: f64,
    median_first_decision_frames: Option<f64>,
    median_first_decision_s: Option<f64>,
    /// Per label: exams, called abnormal, undecided.
    per_label: BTreeMap<String, [usize; 3]>,
    /// Abnormal exams with a severity, per band of [`SEVERITY_BANDS`].
    by_severity: Vec<SeverityBand>,
    /// Exams with a patient age, per band of [`AGE_BANDS`].
    by_age: Vec<AgeBand>,
}

/// Exams of one age band: a kidney's look changes with age (an infant's dark pyramids and
/// bright cortex, an older child's larger, deeper kidney), and so do a model's errors.
#[derive(Debug, Serialize, PartialEq)]
struct AgeBand {
    band: &'static str,
    normal: usize,
    called_normal: usize,
    abnormal: usize,
    called_abnormal: usize,
}

/// Age bands (years) for the per-age table, upper bounds exclusive.
const AGE_BANDS: [(&str, f64, f64); 5] = [
    ("under 6 months", 0.0, 0.5),
    ("6 months-2 years", 0.5, 2.0),
    ("2-8 years", 2.0, 8.0),
    ("8-12 years", 8.0, 12.0),
    ("12 years and over", 12.0, f64::INFINITY),
];

/// Abnormal exams of one severity band.
#[derive(Debug, Serialize, PartialEq)]
struct SeverityBand {
    band: &'static str,
    exams: usize,
    called_abnormal: usize,
}

/// Severity bands for the sensitivity table, upper bounds exclusive (the phantom draws
/// 0.06-1, skewed towards subtle findings as screening meets them).
pub(crate) const SEVERITY_BANDS: [(&str, f64, f64); 4] = [
    ("minimal (below 0.10)", 0.0, 0.10),
    ("mild (0.10-0.25)", 0.10, 0.25),
    ("moderate (0.25-0.50)", 0.25, 0.50),
    ("marked (0.50 and above)", 0.50, f64::INFINITY),
];

fn summarise(rows: &[Row]) -> Summary {
    let normal = Class::Normal.label();
    let (nor, abn): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.label == normal);
    let tp = abn.iter().filter(|r| r.call == "abnormal").count();
    let tn = nor.iter().filter(|r| r.call == "normal").count();
    let mut per_label: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    for r in rows {
        let e = per_label.entry(r.label.clone()).or_default();
        e[0] += 1;
        e[1] += usize::from(r.call == "abnormal");
        e[2] += usize::from(r.call == "none");
    }
    let by_severity = SEVERITY_BANDS
        .iter()
        .map(|&(band, lo, hi)| {
            let within: Vec<&&Row> = abn
                .iter()
                .filter(|r| r.severity.is_some_and(|v| v >= lo && v < hi))
                .collect();
            SeverityBand {
                band,
                exams: within.len(),
                called_abnormal: within.iter().filter(|r| r.call == "abnormal").count(),
            }
        })
        .collect();
    let by_age = AGE_BANDS
        .iter()
        .map(|&(band, lo, hi)| {
            let within = |r: &&&Row| r.age_y.is_some_and(|v| v >= lo && v < hi);
            let (n, a): (Vec<&&Row>, Vec<&&Row>) = (
                nor.iter().filter(within).collect(),
                abn.iter().filter(within).collect(),
            );
            AgeBand {
                band,
                normal: n.len(),
                called_normal: n.iter().filter(|r| r.call == "normal").count(),
                abnormal: a.len(),
                called_abnormal: a.iter().filter(|r| r.call == "abnormal").count(),
            }
        })
        .collect();
    Summary {
        n_normal: nor.len(),
        n_abnormal: abn.len(),
        sensitivity: frac(tp, abn.len()),
        sensitivity_ci: wilson(tp, abn.len()),
        specificity: frac(tn, nor.len()),
        specificity_ci: wilson(tn, nor.len()),
        undecided: rows.iter().filter(|r| r.call == "none").count(),
        sensitivity_final: frac(
            abn.iter().filter(|r| r.final_call == "abnormal").count(),
            abn.len(),
        ),
        specificity_final: frac(
            nor.iter().filter(|r| r.final_call == "normal").count(),
            nor.len(),
        ),
        median_first_decision_frames: median(
            rows.iter()
                .filter_map(|r| r.first_decision_frame.map(|v| v as f64))
                .collect(),
        ),
        median_first_decision_s: median(rows.iter().filter_map(|r| r.first_decision_s).collect()),
        per_label,
        by_severity,
        by_age,
    }
}

fn report(
    args: &Args,
    dir: &Path,
    rows: &[Row],
    s: &Summary,
    failed: &[String],
    secs: f64,
) -> String {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Exam-level evaluation\n\nBundle `{}`, sweeps `{}`: {} exams ({} normal, {} abnormal) \
         replayed frame by frame through renalscan-edge's pipeline in {:.0} s. The exam's \
         call is the device's: abnormal if an aggregated decision during the sweep was \
         abnormal (the most confident one gives the class), else the last decision; an exam \
         the device never decided on counts as wrong.\n",
        args.model.display(),
        dir.display(),
        rows.len(),
        s.n_normal,
        s.n_abnormal,
        secs
    );
    let _ = writeln!(t, "| figure | value |\n|---|---|");
    let _ = writeln!(
        t,
        "| sensitivity (abnormal exams called abnormal) | {} (95% CI {}-{}) |",
        pct(s.sensitivity),
        pct(s.sensitivity_ci[0]),
        pct(s.sensitivity_ci[1])
    );
    let _ = writeln!(
        t,
        "| specificity (normal exams called normal) | {} (95% CI {}-{}) |",
        pct(s.specificity),
        pct(s.specificity_ci[0]),
        pct(s.specificity_ci[1])
    );
    let _ = writeln!(t, "| exams without a decision | {} |", s.undecided);
    let _ = writeln!(
        t,
        "| the decision standing when the sweep ended, instead | sensitivity {}, specificity {} |",
        pct(s.sensitivity_final),
        pct(s.specificity_final)
    );
    let _ = writeln!(
        t,
        "| time to first decision (median) | {} frames{} |",
        s.median_first_decision_frames
            .map_or("-".into(), |v| format!("{v:.0}")),
        s.median_first_decision_s
            .map_or(String::new(), |v| format!(", {v:.2} s of sweep time"))
    );
    let _ = writeln!(
        t,
        "\n| label | exams | called abnormal | no decision |\n|---|---|---|---|"
    );
    for (l, [n, a, u]) in &s.per_label {
        let _ = writeln!(
            t,
            "| {l} | {n} | {a} ({}) | {u} |",
            pct(*a as f64 / *n as f64)
        );
    }
    if s.by_severity.iter().any(|b| b.exams > 0) {
        let _ = writeln!(
            t,
            "\nSensitivity by how marked the finding is (the sweep's severity, 0-1):\n\n\
             | severity | abnormal exams | called abnormal | 95% CI |\n|---|---|---|---|"
        );
        for b in s.by_severity.iter().filter(|b| b.exams > 0) {
            let [lo, hi] = wilson(b.called_abnormal, b.exams);
            let _ = writeln!(
                t,
                "| {} | {} | {} ({}) | {}-{} |",
                b.band,
                b.exams,
                b.called_abnormal,
                pct(frac(b.called_abnormal, b.exams)),
                pct(lo),
                pct(hi)
            );
        }
    }
    if s.by_age.iter().any(|b| b.normal + b.abnormal > 0) {
        let _ = writeln!(
            t,
            "\nBy the patient's age:\n\n\
             | age | normal exams | called normal (specificity) | abnormal exams | called \
             abnormal (sensitivity) |\n|---|---|---|---|---|"
        );
        let cell = |k: usize, n: usize| {
            if n == 0 {
                "-".to_string()
            } else {
                format!("{k} ({})", pct(frac(k, n)))
            }
        };
        for b in s.by_age.iter().filter(|b| b.normal + b.abnormal > 0) {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                b.band,
                b.normal,
                cell(b.called_normal, b.normal),
                b.abnormal,
                cell(b.called_abnormal, b.abnormal)
            );
        }
    }
    if !failed.is_empty() {
        let _ = writeln!(t, "\nNot replayed ({}):", failed.len());
        for f in failed {
            let _ = writeln!(t, "- {f}");
        }
    }
    let _ = writeln!(
        t,
        "\nSweep time assumes every frame is processed (replay at pipeline pace); on a cart \
         whose inference is slower than the probe's frame rate, frames in between are \
         dropped and the first decision comes after `min_frames` inferences."
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_of_known_cases() {
        let [lo, hi] = wilson(50, 50);
        assert!(hi == 1.0 && (lo - 0.9287).abs() < 1e-3, "{lo}");
        let [lo, hi] = wilson(45, 50);
        assert!(
            (lo - 0.7864).abs() < 1e-3 && (hi - 0.9565).abs() < 1e-3,
            "{lo} {hi}"
        );
    }

    fn sweep_dir(dir: &Path, name: &str, label: &str) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("frames.csv"),
            format!(
                "path,index,time_s,state,label,severity,patient_id,lesion_visible,view,age_y\n\
                 frame_000000.png,0,0.000,scanning,{label},0.5,1,1,kidney,9.5\n\
                 frame_000001.png,1,0.050,scanning,{label},0.5,1,1,kidney,9.5\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn which_frames_showed_the_finding_is_read_in_the_replays_order() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |rows: &str| {
            std::fs::write(
                tmp.path().join("frames.csv"),
                format!("path,index,label,severity,lesion_visible\n{rows}"),
            )
            .unwrap();
            frames_csv(tmp.path()).unwrap().in_view
        };
        // Listed out of order: the replay reads frames in file-name order.
        let v = write(
            "frame_000002.png,2,cyst,0.3,0\nframe_000000.png,0,cyst,0.3,1\n\
             frame_000001.png,1,cyst,0.3,1\n",
        );
        assert_eq!(v, Some(vec![true, true, false]));
        assert_eq!(write("frame_000000.png,0,cyst,0.3,yes\n"), None);
        std::fs::write(
            tmp.path().join("frames.csv"),
            "path,index,label\nframe_000000.png,0,cyst\n",
        )
        .unwrap();
        assert_eq!(frames_csv(tmp.path()).unwrap().in_view, None);
    }

    #[test]
    fn each_input_is_paired_with_whether_its_frame_showed_the_finding() {
        let push = |p: f32| Input::Push(renalscan_edge::aggregate::Sample::new(p, &[1.0 - p, p]));
        let sweep = |label: Class, in_view: Option<Vec<bool>>| Sweep {
            name: "s".into(),
            path: PathBuf::new(),
            label,
            times: Vec::new(),
            severity: Some(0.2),
            age_y: None,
            in_view,
        };
        // Frame 1 was gated; a reset came before frame 3.
        let j = Judged {
            abnormal: true,
            call: None,
            inputs: vec![push(0.25), push(0.5), Input::Reset, push(0.75)],
            frames: vec![Some(0), Some(2), None, Some(3)],
            params: two_class_params(),
        };
        let mut row = judged_row("cyst", "abnormal");
        row.frames = 4;
        let shown = |s: &Sweep, r: &Row| sweep_frames(s, r, &j).frames;
        let cyst = sweep(Class::Cyst, Some(vec![false, true, true, false]));
        assert_eq!(
            shown(&cyst, &row),
            [(0.25, false), (0.5, true), (0.75, false)]
        );
        // Another frame count than the replay read: not matched, left out.
        let short = sweep(Class::Cyst, Some(vec![false, true]));
        assert!(shown(&short, &row).is_empty());
        assert!(shown(&sweep(Class::Cyst, None), &row).is_empty());
        // A normal sweep's frames are all negatives, with or without a record.
        let normal = sweep(Class::Normal, None);
        assert_eq!(
            shown(&normal, &row),
            [(0.25, false), (0.5, false), (0.75, false)]
        );
    }

    #[test]
    fn sweeps_are_found_by_their_frames_csv_or_a_list() {
        let tmp = tempfile::tempdir().unwrap();
        sweep_dir(tmp.path(), "b-cyst", "cyst");
        sweep_dir(tmp.path(), "a-normal", "normal");
        std::fs::create_dir_all(tmp.path().join("not-a-sweep")).unwrap();
        let found = discover(tmp.path()).unwrap();
        let names: Vec<(&str, Class)> = found.iter().map(|s| (s.name.as_str(), s.label)).collect();
        assert_eq!(
            names,
            [("a-normal", Class::Normal), ("b-cyst", Class::Cyst)]
        );
        assert_eq!(found[1].times, [0.0, 0.05]);
        assert_eq!(found[1].severity, Some(0.5));
        assert_eq!(found[1].age_y, Some(9.5));
        // A list overrides the folders and may name a cine DICOM; labels are checked.
        std::fs::write(
            tmp.path().join("sweeps.csv"),
            "path,label\nexam1.dcm,stone\n",
        )
        .unwrap();
        let listed = discover(tmp.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].label, Class::Stone);
        assert!(listed[0].times.is_empty());
        assert_eq!(listed[0].severity, None);
        // The list's severity wins over the phantom's; an empty cell leaves the phantom's.
        std::fs::write(
            tmp.path().join("sweeps.csv"),
            "path,label,severity\nexam1.dcm,stone,0.08\nb-cyst,cyst,\n",
        )
        .unwrap();
        let listed = discover(tmp.path()).unwrap();
        assert_eq!(listed[0].severity, Some(0.08));
        assert_eq!(listed[1].severity, Some(0.5));
        assert_eq!((listed[0].age_y, listed[1].age_y), (None, Some(9.5)));
        // A clinic's list gives each patient's age; it wins over the phantom's.
        std::fs::write(
            tmp.path().join("sweeps.csv"),
            "path,label,age_y\nexam1.dcm,stone,0.25\nb-cyst,cyst,3\n",
        )
        .unwrap();
        let listed = discover(tmp.path()).unwrap();
        assert_eq!((listed[0].age_y, listed[1].age_y), (Some(0.25), Some(3.0)));
        std::fs::write(
            tmp.path().join("sweeps.csv"),
            "path,label,age_y\nexam1.dcm,stone,40\n",
        )
        .unwrap();
        let e = format!("{:#}", discover(tmp.path()).unwrap_err());
        assert!(
            e.contains("line 2") && e.contains("age_y") && e.contains("0 to 18"),
            "{e}"
        );
        std::fs::write(
            tmp.path().join("sweeps.csv"),
            "path,label,severity\nexam1.dcm,stone,severe\n",
        )
        .unwrap();
        let e = format!("{:#}", discover(tmp.path()).unwrap_err());
        assert!(e.contains("line 2") && e.contains("0 to 1"), "{e}");
        // A list saved by a spreadsheet: BOM, CRLF, a quoted path with a comma, a notes column.
        sweep_dir(tmp.path(), "Smith, J", "hydronephrosis");
        std::fs::write(
            tmp.path().join("sweeps.csv"),
            "\u{feff}Label,Path,Notes\r\nhydronephrosis,\"Smith, J\",\"left, lower pole\"\r\n",
        )
        .unwrap();
        let listed = discover(tmp.path()).unwrap();
        assert_eq!(listed[0].name, "Smith, J");
        assert_eq!(listed[0].label, Class::Hydronephrosis);
        assert_eq!(listed[0].times, [0.0, 0.05]);
        std::fs::write(
            tmp.path().join("sweeps.csv"),
            "path,label\nexam1.dcm,kidneyish\n",
        )
        .unwrap();
        let e = discover(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("kidneyish"), "{e}");
    }

    #[test]
    fn a_sweep_without_a_kidney_or_an_empty_folder_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let e = discover(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("--sweeps-per-class"), "{e}");
        sweep_dir(tmp.path(), "liver", "no_kidney");
        let e = discover(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("not a screening class"), "{e}");
    }

    /// Window 4, first decision at 2 frames, threshold 0.5, normal and one abnormal class.
    fn two_class_params() -> Params {
        Params {
            window: 4,
            pooling: Pooling::Probability,
            min_frames: 2,
            threshold: 0.5,
            hysteresis: 0.05,
            classes: 2,
            normal_index: 0,
        }
    }

    #[test]
    fn operating_points_are_the_most_specific_settings_that_keep_the_sensitivity() {
        let base = two_class_params();
        let sweep = |abnormal: bool, p: f32| {
            let inputs: Vec<Input> = (0..6)
                .map(|_| Input::Push(renalscan_edge::aggregate::Sample::new(p, &[1.0 - p, p])))
                .collect();
            Judged {
                abnormal,
                call: exam_call_of(base, &inputs),
                inputs,
                frames: Vec::new(),
                params: base,
            }
        };
        // Two abnormal sweeps (p 0.875, 0.75), two normal ones (0.625, 0.25).
        let mut judged = vec![
            sweep(true, 0.875),
            sweep(true, 0.75),
            sweep(false, 0.625),
            sweep(false, 0.25),
        ];
        let curve = OperatingCurve::of(&judged);
        assert_eq!(curve.disagree, 0);
        // Both poolings are replayed, the configured one first (the picture draws it).
        let settings = curve.settings();
        assert_eq!(settings[0], (Pooling::Probability, 4));
        assert!(settings.contains(&(Pooling::LogOdds, 16)), "{settings:?}");
        // Identical frames pool to themselves: the log-odds curve calls these sweeps alike.
        let log_odds = curve
            .points
            .iter()
            .find(|p| p.pooling == Pooling::LogOdds && p.window == 4 && p.threshold == 0.5)
            .unwrap();
        assert_eq!((log_odds.sensitivity, log_odds.specificity), (1.0, 0.5));
        let at = |w: usize, t: f32| {
            curve
                .points
                .iter()
                .find(|p| p.pooling == Pooling::Probability && p.window == w && p.threshold == t)
                .unwrap()
        };
        // The configured threshold calls the 0.625 normal sweep abnormal.
        let configured = at(4, 0.5);
        assert_eq!((configured.sensitivity, configured.specificity), (1.0, 0.5));
        let in_use = curve.configured.as_ref().unwrap();
        assert_eq!((in_use.sensitivity, in_use.specificity), (1.0, 0.5));
        // The highest threshold that keeps every abnormal sweep is 0.75: both normal ones pass.
        let (target, p) = curve.chosen()[0].clone();
        assert_eq!((target, p.window, p.threshold), (0.98, 4, 0.75));
        assert_eq!((p.sensitivity, p.specificity), (1.0, 1.0));
        assert!(curve
            .report()
            .contains("| 98.0% | probability | 4 | 0.750 | 100.0% | 100.0% |"));
        let png = curve.picture().unwrap().expect("a picture");
        assert!(png.starts_with(b"\x89PNG"));
        assert!(OperatingCurve::of(&[]).picture().unwrap().is_none());
        // A recording that does not give the device's call back is flagged.
        judged[3].call = Some(true);
        let broken = OperatingCurve::of(&judged);
        assert_eq!(broken.disagree, 1);
        assert!(broken.report().contains("Not to be trusted"));
        assert!(OperatingCurve::of(&[]).report().is_empty());
    }

    #[test]
    fn every_aggregator_input_is_traced_per_sweep() {
        let base = two_class_params();
        let push = |p: f32| Input::Push(renalscan_edge::aggregate::Sample::new(p, &[1.0 - p, p]));
        let judged = [
            (
                vec![push(0.25), Input::Reset, push(0.75)],
                vec![Some(0), None, Some(4)],
            ),
            (vec![push(0.5)], vec![Some(2)]),
        ]
        .map(|(inputs, frames)| Judged {
            abnormal: true,
            call: exam_call_of(base, &inputs),
            inputs,
            frames,
            params: base,
        });
        let row = |sweep: &str| Row {
            sweep: sweep.into(),
            label: "cyst".into(),
            severity: None,
            frames: 3,
            inferred: 2,
            gated: 1,
            first_decision_frame: None,
            first_decision_s: None,
            call: "none",
            class: None,
            p_abnormal: None,
            final_call: "none",
            decisions: 0,
            age_y: None,
        };
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(INPUTS_FILE);
        let labels = ["normal".to_string(), "cyst".to_string()];
        write_inputs(&path, &[row("a"), row("b")], &judged, &labels).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "sweep,label,input,frame,event,p_abnormal,p_normal,p_cyst",
                "a,cyst,0,0,frame,0.25000,0.75000,0.25000",
                "a,cyst,1,,reset,,,",
                "a,cyst,2,4,frame,0.75000,0.25000,0.75000",
                "b,cyst,0,2,frame,0.50000,0.50000,0.50000",
            ]
        );
        // `exam-setting` reads the trace back as the aggregator got it.
        let (back, per_label) = super::super::exam_setting::read_inputs(&[path], base).unwrap();
        assert_eq!(per_label.get("cyst"), Some(&2));
        for (b, j) in back.iter().zip(&judged) {
            let p = |inputs: &[Input]| -> Vec<Option<f32>> {
                inputs
                    .iter()
                    .map(|i| match i {
                        Input::Push(s) => Some(s.p_abnormal),
                        Input::Reset => None,
                    })
                    .collect()
            };
            assert_eq!(p(&b.inputs), p(&j.inputs));
            assert_eq!(b.abnormal, j.abnormal);
            assert_eq!(b.call, j.call);
        }
        assert_eq!(back.len(), 2);
    }

    /// A decided exam of a 60-frame sweep, for the summary's tables.
    fn judged_row(label: &str, call: &'static str) -> Row {
        Row {
            sweep: String::new(),
            label: label.into(),
            severity: None,
            frames: 60,
            inferred: 60,
            gated: 0,
            first_decision_frame: Some(6),
            first_decision_s: None,
            call,
            class: None,
            p_abnormal: None,
            final_call: call,
            decisions: 1,
            age_y: None,
        }
    }

    /// The report's text for these rows.
    fn report_of(rows: &[Row], s: &Summary) -> String {
        let tmp = tempfile::tempdir().unwrap();
        let args = Args {
            model: "bundle".into(),
            data: None,
            sweeps: Some(tmp.path().into()),
            edge_config: None,
            out: tmp.path().into(),
            threshold: None,
            threads: 1,
            max_failed_pct: 5.0,
            manifest: None,
            trusted_keys: Some("keys".into()),
        };
        report(&args, tmp.path(), rows, s, &[], 1.0)
    }

    #[test]
    fn sensitivity_is_banded_by_severity() {
        let row = |label: &str, severity: Option<f64>, call: &'static str| Row {
            severity,
            ..judged_row(label, call)
        };
        let rows = [
            row("stone", Some(0.065), "normal"),
            row("cyst", Some(0.08), "abnormal"),
            row("sol", Some(0.10), "abnormal"),
            row("sol", Some(0.9), "abnormal"),
            row("sol", None, "normal"),
            row("normal", Some(0.0), "normal"),
        ];
        let s = summarise(&rows);
        // Normal exams and abnormal ones without a severity stay out; 0.10 is mild.
        let counts: Vec<[usize; 2]> = s
            .by_severity
            .iter()
            .map(|b| [b.exams, b.called_abnormal])
            .collect();
        assert_eq!(counts, [[2, 1], [1, 1], [0, 0], [1, 1]]);
        let text = report_of(&rows, &s);
        assert!(
            text.contains("| minimal (below 0.10) | 2 | 1 (50.0%) |"),
            "{text}"
        );
        assert!(
            !text.contains("moderate"),
            "an empty band is left out: {text}"
        );
        assert!(
            !text.contains("By the patient's age"),
            "no ages, no table: {text}"
        );
    }

    #[test]
    fn exams_are_banded_by_age() {
        let row = |label: &str, age_y: Option<f64>, call: &'static str| Row {
            age_y,
            ..judged_row(label, call)
        };
        let rows = [
            row("normal", Some(0.1), "abnormal"),
            row("normal", Some(0.4), "normal"),
            row("normal", Some(0.5), "normal"),
            row("stone", Some(9.0), "normal"),
            row("sol", Some(12.0), "abnormal"),
            row("normal", Some(15.9), "normal"),
            row("cyst", None, "normal"),
        ];
        let s = summarise(&rows);
        // 0.5 is the second band, 12 the last; a row without an age stays out.
        let counts: Vec<[usize; 4]> = (s.by_age.iter())
            .map(|b| [b.normal, b.called_normal, b.abnormal, b.called_abnormal])
            .collect();
        assert_eq!(
            counts,
            [
                [2, 1, 0, 0],
                [1, 1, 0, 0],
                [0, 0, 0, 0],
                [0, 0, 1, 0],
                [1, 1, 1, 1]
            ]
        );
        let text = report_of(&rows, &s);
        assert!(
            text.contains("| under 6 months | 2 | 1 (50.0%) | 0 | - |"),
            "{text}"
        );
        assert!(
            text.contains("| 8-12 years | 0 | - | 1 | 0 (0.0%) |") && !text.contains("2-8 years"),
            "{text}"
        );
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
