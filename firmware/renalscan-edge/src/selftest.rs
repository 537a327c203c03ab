//! `renalscan-edge selftest`: is this board ready to screen, and does it compute what the
//! signer computed? Loads and verifies the bundle, runs the bundle's signed reference frames
//! (`[[selftest]]`) through the device's stages and the form this cart chose, and fails on
//! any answer outside its tolerance (a miscompiled kernel, a broken board, a wrong build).
//! Then renders a phantom frame in-process (no probe needed), times every stage on it, and
//! reports the CPU features and kernels in use.

use std::time::{Duration, Instant};

use phantom::{Class, ProbeState, ProbeSweep, Profile, SweepConfig};
use serde::Serialize;
use usimage::{GreyFrame, Preprocessor, UsFile};

use crate::aggregate::{Aggregator, Params, Pooling, Sample};
use crate::config::GateConfig;
use crate::gate::{after_detection, Gate};
use crate::infer::{Classified, Classifier, Features, InferWorker};

/// One reference frame through the device's own stages: decode, blank gate, scan-area
/// detection and preprocessing, model. The signer measures the expected answers with this
/// very function (`renalscan bundle`), the cart checks them with it.
pub fn answer(classifier: &mut Classifier, bytes: &[u8]) -> anyhow::Result<Classified> {
    let tensor = model_input(classifier, bytes)?;
    classifier.classify(&tensor)
}

/// [`answer`] on an inference worker's handle (several threads on one model).
pub fn answer_on(
    classifier: &Classifier,
    worker: &InferWorker,
    bytes: &[u8],
) -> anyhow::Result<Classified> {
    let tensor = model_input(classifier, bytes)?;
    worker.classify(&tensor, &mut Features::default())
}

/// Decode, blank gate, scan-area detection and preprocessing: the model input of a frame.
fn model_input(classifier: &Classifier, bytes: &[u8]) -> anyhow::Result<Vec<f32>> {
    let file = UsFile::from_bytes(bytes)?;
    let mut frame = GreyFrame::default();
    file.frame_into(0, &mut frame)?;
    anyhow::ensure!(
        !Gate::new(GateConfig::default()).check(&frame).blank,
        "the frame is blank"
    );
    let info = classifier.info();
    let mut pre = Preprocessor::new(info.input_size, info.normalization.clone());
    let mut tensor = vec![0.0; pre.output_len()];
    let fi = pre.process(&frame, &mut tensor)?;
    if let Some(r) = after_detection(&fi) {
        anyhow::bail!("the frame is gated: {}", r.name());
    }
    Ok(tensor)
}

/// `n` phantom frames for measuring agreement between execution forms: the first
/// probe-on frame of sweeps from seeds `seed0..` (never used for training: the trainer's
/// seeds are small), patients cycling through every class, default scanner, as PNG screen
/// grabs.
pub fn fresh_frames(n: usize, seed0: u64) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    (0..n)
        .map(|i| {
            let class = Class::ALL[i % Class::ALL.len()];
            let seed = seed0 + i as u64;
            let png = first_scanning_png(seed, class, None)?;
            Ok((format!("phantom-{seed}-{}", class.label()), png))
        })
        .collect()
}

/// Reference frames for a bundle's self-test: the first probe-on frame of a phantom sweep
/// of each of these patients (default scanner, fixed seeds), as PNG screen grabs.
pub fn reference_frames() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    [
        (Class::Normal, None),
        (Class::Hydronephrosis, Some(0.8)),
        (Class::Cyst, Some(0.8)),
        (Class::Stone, Some(0.8)),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (class, severity))| {
        let png = first_scanning_png(100 + i as u64, class, severity)?;
        Ok((format!("selftest-{i}-phantom-{}.png", class.label()), png))
    })
    .collect()
}

/// The first frame with the probe on of a phantom sweep (default scanner), as a PNG.
fn first_scanning_png(seed: u64, class: Class, severity: Option<f32>) -> anyhow::Result<Vec<u8>> {
    let mut cfg = SweepConfig::new(seed, Profile::default_profile());
    cfg.class = Some(class);
    cfg.severity = severity;
    let f = ProbeSweep::new(cfg)
        .take(60)
        .find(|f| f.state == ProbeState::Scanning)
        .ok_or_else(|| anyhow::anyhow!("the phantom produced no scanning frame"))?;
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(f.image)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

/// A signed reference frame and what this cart made of it.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub file: String,
    pub expected_class: String,
    pub expected_p_abnormal: f64,
    pub tolerance: f64,
    pub class: Option<String>,
    pub p_abnormal: Option<f32>,
    pub ok: bool,
    /// Why it failed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs the bundle's `[[selftest]]` frames through `classifier` (the form chosen for this
/// cart) and compares each answer with the signed one.
pub fn check_references(classifier: &mut Classifier) -> Vec<CaseResult> {
    let info = classifier.info().clone();
    let cases = info
        .manifest
        .selftest
        .iter()
        .zip(info.selftest_frames.iter());
    let mut out = Vec::new();
    for (case, bytes) in cases {
        let mut r = CaseResult {
            file: case.file.clone(),
            expected_class: case.class.clone(),
            expected_p_abnormal: case.p_abnormal,
            tolerance: case.tolerance,
            class: None,
            p_abnormal: None,
            ok: false,
            error: None,
        };
        match answer(classifier, bytes) {
            Ok(c) => {
                let class = info.labels[c.class].clone();
                let dp = (f64::from(c.p_abnormal) - case.p_abnormal).abs();
                r.ok = class == case.class && dp <= case.tolerance;
                if !r.ok {
                    r.error = Some(format!(
                        "expected {} with p(abnormal) {:.4} +- {:.4}, got {} with {:.4}",
                        case.class, case.p_abnormal, case.tolerance, class, c.p_abnormal
                    ));
                }
                r.class = Some(class);
                r.p_abnormal = Some(c.p_abnormal);
            }
            Err(e) => r.error = Some(format!("{e:#}")),
        }
        out.push(r);
    }
    out
}

/// The architecture and [`cpu_features`] in one line, as reports print them.
pub fn cpu_description() -> String {
    format!("{} {}", std::env::consts::ARCH, cpu_features().join(" "))
}

/// The CPU features that decide which kernels run: dot-product and fp16 arithmetic on
/// aarch64, AVX2/FMA/AVX-512/VNNI on x86_64.
pub fn cpu_features() -> Vec<&'static str> {
    #[cfg(target_arch = "aarch64")]
    let detected = [
        ("asimd", std::arch::is_aarch64_feature_detected!("asimd")),
        (
            "dotprod",
            std::arch::is_aarch64_feature_detected!("dotprod"),
        ),
        ("fp16", std::arch::is_aarch64_feature_detected!("fp16")),
        ("i8mm", std::arch::is_aarch64_feature_detected!("i8mm")),
    ];
    #[cfg(target_arch = "x86_64")]
    let detected = [
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("fma", std::arch::is_x86_feature_detected!("fma")),
        ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        (
            "avx512vnni",
            std::arch::is_x86_feature_detected!("avx512vnni"),
        ),
    ];
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    let detected: [(&str, bool); 0] = [];
    detected
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect()
}

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
    /// The signed reference frames and this cart's answers (all must pass).
    pub references: Vec<CaseResult>,
    /// `arch` and the features that pick kernels.
    pub cpu: String,
    /// Which form of an int8 model runs, why, and the kernels tract picked.
    pub form: Option<String>,
    /// How inference uses the cores (`model.threads`, `model.parallelism`); set by the
    /// caller, which knows the configuration.
    pub inference: String,
}

fn median(mut v: Vec<Duration>) -> f32 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f32() * 1e3)
}

/// Runs the built-in frame `runs` times through gate, preprocessing, inference and
/// aggregation.
pub fn run(classifier: &mut Classifier, runs: usize) -> anyhow::Result<SelftestReport> {
    let references = check_references(classifier);
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
        pooling: Pooling::Probability,
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
        references,
        cpu: cpu_description(),
        form: info.form.clone(),
        inference: format!("{} intra-op thread(s)", classifier.intra_op_threads()),
    })
}
