//! The per-frame path: gate -> preprocess -> infer -> aggregate, with per-stage timing.
//! Single-threaded and allocation-free per frame after warm-up (buffers are reused); the
//! capture thread feeds it and the runtime passes its decisions, with a [`FrameView`] of
//! the frame they were made on, to the sinks.

use std::time::{Duration, Instant};

use contract::Manifest;
use usimage::{FrameInfo, Preprocessor};

use crate::aggregate::{Aggregator, Params, Sample, Trigger};
use crate::config::{AggregateConfig, GateConfig, Mode, PipelineConfig};
use crate::events::{unix_ms, Decision, DecisionKind, JournalState, ThresholdSource, Trace};
use crate::gate::{after_detection, Gate, GateReason};
use crate::infer::{Classified, Classifier};
use crate::sink::{Control, FrameView, LiveFrame, Outcome};
use crate::source::Frame;
use crate::stats::{Span, Stage, Timers};

/// Pipeline counters (cumulative).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Counters {
    /// Frames taken from the slot.
    pub processed: u64,
    /// Frames taken while not screening (idle).
    pub idle: u64,
    /// Frames not classified, by [`GateReason`].
    pub gated: [u64; 5],
    /// Frames the view gate refused, by the signal that fired: learned, ood, both.
    pub no_kidney_by: [u64; 3],
    /// Usable frames skipped by `infer_every` (or live frames in freeze mode).
    pub skipped: u64,
    pub inferred: u64,
    pub decisions: u64,
    /// Preprocessing or inference failures.
    pub errors: u64,
}

/// Gate, preprocessing, model and aggregation for one stream of frames.
pub struct Pipeline {
    mode: Mode,
    infer_every: u32,
    report_every: Option<Duration>,
    reset_after_gated: u32,
    classifier: Classifier,
    pre: Preprocessor,
    tensor: Vec<f32>,
    gate: Gate,
    agg: Aggregator,
    pub timers: Timers,
    pub counters: Counters,
    screening: bool,
    capture_pending: bool,
    /// Consecutive gated frames.
    gated_run: u32,
    usable: u64,
    last_emit: Option<Instant>,
    started: Instant,
    model_tag: String,
    /// Where the operating threshold came from.
    threshold_source: ThresholdSource,
    /// What makes these decisions (set by the runtime; `None` in workstation replays).
    trace: Option<Trace>,
    /// The last inference failed (status: fault).
    pub faulted: bool,
    /// The last classified frame's detection and classification (for [`Pipeline::view`]).
    last: Option<(FrameInfo, Classified)>,
    /// What became of the last frame, and its detection if it got that far.
    outcome: Outcome,
    last_info: Option<FrameInfo>,
    /// The operator asked for a freeze: the next frame is classified once.
    freeze_pending: bool,
    /// Frozen by the operator until unfreeze.
    frozen: bool,
}

/// The operating threshold and where it came from. The bundle's signed threshold wins: a
/// configuration may set another (`aggregate.threshold`) only inside the range the bundle's
/// signature allows for a site (`operating_point.site_range`); otherwise it is refused, so an
/// unsigned file can never move the line between normal and abnormal.
pub fn operating_threshold(
    configured: Option<f32>,
    manifest: &Manifest,
) -> anyhow::Result<(f32, ThresholdSource)> {
    let signed = manifest.operating_point.threshold as f32;
    let Some(t) = configured else {
        return Ok((signed, ThresholdSource::Bundle));
    };
    if (t - signed).abs() <= 1e-6 {
        return Ok((signed, ThresholdSource::Bundle));
    }
    let bundle = format!("{}@{}", manifest.model.name, manifest.model.version);
    match manifest.operating_point.site_range {
        None => anyhow::bail!(
            "aggregate.threshold = {t} in the configuration would replace the signed \
             threshold {signed} of bundle {bundle}, which allows no site threshold: remove \
             aggregate.threshold, recalibrate the bundle for this site (renalscan \
             calibrate), or have it signed with a site range (renalscan bundle \
             --site-threshold-range LO,HI)"
        ),
        Some([lo, hi]) if !(lo..=hi).contains(&f64::from(t)) => anyhow::bail!(
            "aggregate.threshold = {t} is outside the site range [{lo}, {hi}] that bundle \
             {bundle} allows (signed threshold {signed})"
        ),
        Some(_) => {
            log::warn!(
                "operating threshold {t} from the site's configuration (bundle {bundle}: \
                 signed {signed}, site range allowed)"
            );
            Ok((t, ThresholdSource::Site))
        }
    }
}

impl Pipeline {
    /// A pipeline for `classifier`; refuses a configured threshold the bundle does not allow
    /// ([`operating_threshold`]).
    pub fn new(
        classifier: Classifier,
        pipeline: &PipelineConfig,
        gate: &GateConfig,
        agg: &AggregateConfig,
    ) -> anyhow::Result<Self> {
        let info = classifier.info().clone();
        let (threshold, threshold_source) = operating_threshold(agg.threshold, &info.manifest)?;
        let params = Params {
            window: agg.window,
            min_frames: agg.min_frames,
            threshold,
            hysteresis: agg.hysteresis,
            classes: info.labels.len(),
            normal_index: info.normal_index,
        };
        let pre = Preprocessor::new(info.input_size, info.normalization.clone());
        let tensor = vec![0.0; pre.output_len()];
        Ok(Self {
            mode: pipeline.mode,
            infer_every: pipeline.infer_every.max(1),
            report_every: (agg.report_every_s > 0.0)
                .then(|| Duration::from_secs_f32(agg.report_every_s)),
            reset_after_gated: agg.reset_after_gated,
            classifier,
            pre,
            tensor,
            gate: Gate::new(gate.clone()),
            agg: Aggregator::new(params),
            timers: Timers::default(),
            counters: Counters::default(),
            screening: pipeline.autostart,
            capture_pending: false,
            gated_run: 0,
            usable: 0,
            last_emit: None,
            started: Instant::now(),
            model_tag: format!("{}@{}", info.name, info.version),
            threshold_source,
            trace: None,
            faulted: false,
            last: None,
            outcome: Outcome::Idle,
            last_info: None,
            freeze_pending: false,
            frozen: false,
        })
    }

    /// Stamps every decision from now on with `trace`.
    pub fn set_trace(&mut self, trace: Trace) {
        self.trace = Some(trace);
    }

    /// The operating threshold in force and where it came from.
    pub fn threshold(&self) -> (f32, ThresholdSource) {
        (self.agg.params().threshold, self.threshold_source)
    }

    /// What stamps the decisions, when set.
    pub fn trace(&self) -> Option<&Trace> {
        self.trace.as_ref()
    }

    /// The last processed frame as the live view sees it: pass the frame that was processed.
    pub fn live<'a>(&'a self, frame: &'a Frame) -> LiveFrame<'a> {
        LiveFrame {
            frame,
            outcome: self.outcome,
            info: self.last_info.as_ref(),
            detector: self.pre.detector(),
            view: self.view(frame),
            window: self.agg.len(),
            frozen: self.frozen,
            threshold: self.agg.params().threshold,
        }
    }

    /// Frozen by the operator.
    pub fn frozen(&self) -> bool {
        self.frozen
    }

    /// The frame behind the decisions the last [`Pipeline::process`] emitted: pass `frame`,
    /// the frame that was processed. `None` when that frame was not classified.
    pub fn view<'a>(&'a self, frame: &'a Frame) -> Option<FrameView<'a>> {
        let (info, c) = self.last.as_ref()?;
        Some(FrameView::new(
            frame,
            info,
            &self.tensor,
            self.pre.last_grey(),
            self.pre.size(),
            self.pre.detector(),
            c,
            self.classifier.last_features(),
            self.classifier.cam_head().ok(),
            self.classifier.info().normal_index,
        ))
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Gives the model back (to start another stream with it without reloading).
    pub fn into_classifier(self) -> Classifier {
        self.classifier
    }

    pub fn screening(&self) -> bool {
        self.screening
    }

    /// The grey N x N model input of the last preprocessed frame (snapshots).
    pub fn last_input(&self) -> &[u8] {
        self.pre.last_grey()
    }

    /// Applies a command (cart, operator view). Marks are the runtime's, not the pipeline's.
    pub fn command(&mut self, c: Control) {
        match c {
            Control::StartScreening => {
                if !self.screening {
                    self.agg.reset();
                    self.last_emit = None;
                }
                self.screening = true;
            }
            Control::StopScreening => {
                self.screening = false;
                self.frozen = false;
                self.freeze_pending = false;
                self.agg.reset();
                self.last_emit = None;
            }
            Control::Capture => self.capture_pending = true,
            Control::Freeze => {
                if !self.frozen {
                    self.freeze_pending = true;
                }
            }
            Control::Unfreeze => {
                if self.frozen || self.freeze_pending {
                    self.frozen = false;
                    self.freeze_pending = false;
                    self.agg.reset();
                    self.last_emit = None;
                    self.gate.reset();
                }
            }
            Control::Mark { .. } | Control::StartSession(_) | Control::EndSession => {}
        }
    }

    /// Runs one frame through the stages; decisions are appended to `out`.
    pub fn process(&mut self, frame: &Frame, out: &mut Vec<Decision>) {
        self.counters.processed += 1;
        self.last = None;
        self.last_info = None;
        self.outcome = Outcome::Idle;
        self.timers
            .record_both(Stage::Capture, frame.capture_time, frame.capture_cpu);
        if self.frozen {
            // The operator froze the view: the frozen frame's decision stands.
            self.counters.idle += 1;
            self.outcome = Outcome::Frozen;
            return;
        }
        let freeze = self.screening && std::mem::take(&mut self.freeze_pending);
        let capture = std::mem::take(&mut self.capture_pending) || freeze;
        if !self.screening && !capture {
            self.counters.idle += 1;
            return;
        }

        // Gate (blank, frozen).
        let t = Span::start();
        let pg = self.gate.check(&frame.grey);
        let freeze_shot = self.mode == Mode::Freeze && pg.repeat && pg.repeats == 1;
        let mut reason = if pg.blank {
            Some(GateReason::Blank)
        } else if pg.repeat && !freeze_shot {
            Some(GateReason::Frozen)
        } else {
            None
        };
        self.timers.record_span(Stage::Gate, t);
        if reason.is_some() && !capture {
            self.gated(reason);
            return;
        }
        // Live frames in freeze mode are only watched for the freeze.
        if self.mode == Mode::Freeze && !freeze_shot && !capture {
            self.counters.skipped += 1;
            self.outcome = Outcome::Skipped;
            return;
        }

        // Preprocess (scan area, crop, normalise) and the anatomy gate.
        let t = Span::start();
        let info = match self.pre.process(&frame.grey, &mut self.tensor) {
            Ok(i) => i,
            Err(e) => {
                self.counters.errors += 1;
                self.outcome = Outcome::Failed;
                log::error!("preprocessing failed: {e}");
                return;
            }
        };
        self.last_info = Some(info);
        self.timers.record_span(Stage::Preprocess, t);
        reason = reason.or(after_detection(&info));
        if reason.is_some() && !capture {
            self.gated(reason);
            return;
        }
        self.usable += 1;
        let single = capture || freeze_shot;
        if !single && !(self.usable - 1).is_multiple_of(u64::from(self.infer_every)) {
            self.counters.skipped += 1;
            self.outcome = Outcome::Skipped;
            return;
        }

        // Inference.
        let t = Span::start();
        let c = match self.classifier.classify(&self.tensor) {
            Ok(c) => c,
            Err(e) => {
                self.counters.errors += 1;
                self.outcome = Outcome::Failed;
                if !self.faulted {
                    log::error!("inference failed: {e:#}");
                }
                self.faulted = true;
                return;
            }
        };
        self.faulted = false;
        self.counters.inferred += 1;
        self.timers.record_span(Stage::Infer, t);

        // The bundle's view gate: anatomy, but is it a kidney?
        if let Some(signal) = c.view.as_ref().and_then(|v| v.signal()) {
            let i = match signal {
                "learned" => 0,
                "ood" => 1,
                _ => 2,
            };
            self.counters.no_kidney_by[i] += 1;
            reason = reason.or(Some(GateReason::NoKidney));
            if !capture {
                self.gated(reason);
                // Kept for the view: the map of a refused frame is not shown, its pixels are.
                return;
            }
        }
        if reason.is_none() {
            self.gated_run = 0;
        }

        // Aggregation and decision.
        let t = Span::start();
        if single {
            let kind = if capture && !freeze {
                DecisionKind::Capture
            } else {
                DecisionKind::Freeze
            };
            out.push(self.single(kind, &c, frame, reason.is_some()));
            if freeze {
                self.frozen = true;
                self.agg.reset();
                self.last_emit = None;
            }
        }
        if self.mode == Mode::Continuous && reason.is_none() {
            let sample = Sample::new(c.p_abnormal, &c.probs[..c.classes]);
            let now = Instant::now();
            let kind = match self.agg.push(sample) {
                Some((Trigger::First, _)) => Some(DecisionKind::First),
                Some((Trigger::Change, _)) => Some(DecisionKind::Change),
                None => match (self.report_every, self.last_emit) {
                    (Some(every), Some(last)) if now - last >= every => Some(DecisionKind::Update),
                    _ => None,
                },
            };
            if let (Some(kind), Some(s)) = (kind, self.agg.summary()) {
                self.last_emit = Some(now);
                let label = self.classifier.info().labels[s.class].clone();
                out.push(self.decision(
                    kind,
                    s.abnormal,
                    s.p_abnormal,
                    label,
                    s.confidence,
                    s.frames,
                    frame.meta.index,
                    false,
                ));
            }
        }
        self.timers.record_span(Stage::Aggregate, t);
        self.last = Some((info, c));
        self.outcome = match reason {
            Some(r) => Outcome::Gated(r),
            None => Outcome::Classified,
        };
    }

    fn gated(&mut self, reason: Option<GateReason>) {
        if let Some(r) = reason {
            self.counters.gated[r.index()] += 1;
            self.outcome = Outcome::Gated(r);
        }
        self.gated_run = self.gated_run.saturating_add(1);
        if self.reset_after_gated > 0 && self.gated_run == self.reset_after_gated {
            if !self.agg.is_empty() {
                log::info!(
                    "{} unusable frames in a row: starting a new window",
                    self.gated_run
                );
            }
            self.agg.reset();
            self.last_emit = None;
        }
    }

    fn single(
        &mut self,
        kind: DecisionKind,
        c: &Classified,
        frame: &Frame,
        poor: bool,
    ) -> Decision {
        let threshold = self.agg.params().threshold;
        let label = self.classifier.info().labels[c.class].clone();
        self.decision(
            kind,
            c.p_abnormal >= threshold,
            c.p_abnormal,
            label,
            c.confidence,
            1,
            frame.meta.index,
            poor,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn decision(
        &mut self,
        kind: DecisionKind,
        abnormal: bool,
        p_abnormal: f32,
        class: String,
        confidence: f32,
        frames: usize,
        frame_index: u64,
        low_quality: bool,
    ) -> Decision {
        self.counters.decisions += 1;
        Decision {
            seq: self.counters.decisions,
            kind,
            abnormal,
            p_abnormal,
            class,
            confidence,
            frames,
            frame_index,
            threshold: self.agg.params().threshold,
            threshold_source: self.threshold_source,
            low_quality,
            unix_ms: unix_ms(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            model: self.model_tag.clone(),
            journal: JournalState::Off,
            session: None,
            snapshot: None,
            trace: self.trace.clone(),
        }
    }

    /// Forget freeze state after a source reopen (the next frame is not a repeat).
    pub fn source_reopened(&mut self) {
        self.gate.reset();
    }
}
