//! `renalscan-edge selftest`: is this board ready to screen? Loads and verifies the bundle,
//! renders a phantom frame in-process (no probe needed), runs it through every stage and
//! reports the latency of each, plus the model's answer.

use std::time::{Duration, Instant};

use phantom::{Class, ProbeState, ProbeSweep, Profile, SweepConfig};
use serde::Serialize;
use usimage::{GreyFrame, Preprocessor};

use crate::aggregate::{Aggregator, Params, Sample};
use crate::gate::{after_detection, Gate};
use crate::infer::Classifier;

/// Selftest figures (milliseconds are medians over the runs).
#[derive(Debug, Clone, Serialize)]
pub struct SelftestReport {
    pub model: String,
    pub trust: String,
    pub load_ms: f32,
    pub runs: usize,
    pub frame: String,
    pub capture_ms: f32,
    pub gate_ms: f32,
    pub preprocess_ms: f32,
    pub infer_ms: f32,
    pub aggregate_ms: f32,
    pub total_ms: f32,
    pub scan_area: [u32; 4],
    pub p_abnormal: f32,
    pub class: String,
    pub confidence: f32,
    pub threshold: f32,
}

fn median(mut v: Vec<Duration>) -> f32 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f32() * 1e3)
}

/// Runs the built-in frame `runs` times through gate, preprocessing, inference and
/// aggregation.
pub fn run(classifier: &mut Classifier, runs: usize) -> anyhow::Result<SelftestReport> {
    let info = classifier.info().clone();
    // A hydronephrotic kidney on the default scanner: the first frame with the probe on.
    let mut cfg = SweepConfig::new(7, Profile::default_profile());
    cfg.class = Some(Class::Hydronephrosis);
    cfg.severity = Some(0.8);
    let sf = ProbeSweep::new(cfg)
        .take(50)
        .find(|f| f.state == ProbeState::Scanning)
        .ok_or_else(|| anyhow::anyhow!("the phantom produced no scanning frame"))?;
    let (w, h) = sf.image.dimensions();
    let mut pre = Preprocessor::new(info.input_size, info.normalization.clone());
    let mut tensor = vec![0.0; pre.output_len()];
    let mut agg = Aggregator::new(Params {
        window: 1,
        min_frames: 1,
        threshold: info.threshold,
        hysteresis: 0.0,
        classes: info.labels.len(),
        normal_index: info.normal_index,
    });
    let mut frame = GreyFrame::default();
    let runs = runs.max(1);
    let mut t = [const { Vec::new() }; 6];
    let mut last = None;
    for _ in 0..runs {
        let t0 = Instant::now();
        frame.set_from_rgb(w, h, sf.image.as_raw())?;
        let t1 = Instant::now();
        // A fresh gate each run: the same frame again would be a freeze.
        let pg = Gate::new(Default::default()).check(&frame);
        anyhow::ensure!(!pg.blank, "the built-in frame was gated as blank");
        let t2 = Instant::now();
        let fi = pre.process(&frame, &mut tensor)?;
        if let Some(r) = after_detection(&fi) {
            anyhow::bail!("the built-in frame was gated: {}", r.name());
        }
        let t3 = Instant::now();
        let c = classifier.classify(&tensor)?;
        let t4 = Instant::now();
        agg.reset();
        let d = agg.push(Sample::new(c.p_abnormal, &c.probs[..c.classes]));
        let t5 = Instant::now();
        for (i, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0]
            .into_iter()
            .enumerate()
        {
            t[i].push(d);
        }
        last = Some((c, fi.area.bbox, d.is_some()));
    }
    let (c, bbox, decided) = last.ok_or_else(|| anyhow::anyhow!("no run"))?;
    anyhow::ensure!(decided, "aggregation produced no decision for one frame");
    let [capture, gate, pre_t, infer, aggregate, total] = t;
    Ok(SelftestReport {
        model: format!("{} {}", info.name, info.version),
        trust: info.trust.clone(),
        load_ms: info.load_time.as_secs_f32() * 1e3,
        runs,
        frame: format!("phantom hydronephrosis {w}x{h} (built in)"),
        capture_ms: median(capture),
        gate_ms: median(gate),
        preprocess_ms: median(pre_t),
        infer_ms: median(infer),
        aggregate_ms: median(aggregate),
        total_ms: median(total),
        scan_area: bbox,
        p_abnormal: c.p_abnormal,
        class: info.labels[c.class].clone(),
        confidence: c.confidence,
        threshold: info.threshold,
    })
}
