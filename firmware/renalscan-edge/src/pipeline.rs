//! The per-frame path: gate -> preprocess -> infer -> aggregate, with per-stage timing.
//! Gates, preprocessing and aggregation run on the runtime's thread in frame order; the
//! inference runs there too, or on inference workers (one per core, `model.parallelism =
//! "frames"`), so several frames can be in the model at once while decisions still come out
//! in frame order. Allocation-free per frame after warm-up (buffers circulate); the runtime
//! passes the decisions, with a [`FrameView`] of the frame they were made on, to the sinks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use contract::Manifest;
use usimage::{FrameInfo, Preprocessor};

use crate::aggregate::{Aggregator, Input, Params, Sample, Trigger};
use crate::config::{AggregateConfig, GateConfig, Mode, PipelineConfig};
use crate::events::{unix_ms, Decision, DecisionKind, JournalState, ThresholdSource, Trace};
use crate::gate::{after_detection, Gate, GateReason};
use crate::infer::{Classified, Classifier, InferWorker};
use crate::sink::{Control, FrameView, LiveFrame, Outcome};
use crate::source::Frame;
use crate::stats::{Span, Stage, Timers};
use crate::workers::{Job, Notify, Workers, WorkersGone};

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
    /// The model on this thread (no workers, or every worker gone).
    inline: InferWorker,
    workers: Option<Workers>,
    pre: Preprocessor,
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
    /// Every input the aggregator got, kept only when asked ([`Pipeline::record_aggregation`]).
    agg_inputs: Option<Vec<Input>>,
    /// The source frame index of each of `agg_inputs` (`None` for a reset).
    agg_frames: Vec<Option<u64>>,
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
    /// The freeze shot is being inferred: later frames wait as if frozen.
    freeze_in_flight: bool,
    /// Submission number of the last frame taken.
    seq: u64,
    /// Bumped by every command that starts a new window (start, stop, unfreeze): a frame
    /// prepared before it cannot add to the window after it.
    epoch: u64,
    /// Frames submitted and not yet given back, oldest first.
    queue: VecDeque<Ticket>,
    /// The buffers of the last classified frame (its view).
    current: Option<Box<Job>>,
    /// Buffers for later frames (kept boxed: they circulate as boxes, never reallocated).
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Job>>,
}

/// A frame between [`Pipeline::submit`] and [`Pipeline::finish_next`].
struct Ticket {
    frame: Frame,
    seq: u64,
    epoch: u64,
    /// Its scan-area detection, when preprocessing got that far.
    info: Option<FrameInfo>,
    step: Step,
}

/// What is to become of a frame, as decided before inference.
enum Step {
    /// Not screening.
    Idle,
    /// The view is frozen.
    Frozen,
    /// Refused by a gate before inference.
    Gated(Option<GateReason>),
    /// Usable but not classified.
    Skipped,
    /// Preprocessing failed (logged), or its inference was lost.
    Failed,
    /// On a worker.
    Out { ctx: InferCtx },
    /// Inferred (or failed to be): the rest of the stages are due.
    Infer { job: Box<Job>, ctx: InferCtx },
}

/// What the stages after the model need to know about a frame.
struct InferCtx {
    info: FrameInfo,
    reason: Option<GateReason>,
    capture: bool,
    freeze: bool,
    single: bool,
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
        Some(_) => Ok((t, ThresholdSource::Site)),
    }
}

/// Says that the site's configured threshold replaces the signed one: the device log must
/// show who set the line. Callers log it where the setting takes effect (device start, each
/// replayer of many sweeps), not per pipeline, so a replay does not repeat it per sweep.
pub fn announce_threshold(threshold: f32, source: ThresholdSource, manifest: &Manifest) {
    if source == ThresholdSource::Site {
        log::warn!(
            "operating threshold {threshold} from the site's configuration (bundle {}@{}: \
             signed {}, site range allowed)",
            manifest.model.name,
            manifest.model.version,
            manifest.operating_point.threshold
        );
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
        let params = agg.params(threshold, info.labels.len(), info.normal_index);
        let pre = Preprocessor::new(info.input_size, info.normalization.clone());
        Ok(Self {
            mode: pipeline.mode,
            infer_every: pipeline.infer_every.max(1),
            report_every: (agg.report_every_s > 0.0)
                .then(|| Duration::from_secs_f32(agg.report_every_s)),
            reset_after_gated: agg.reset_after_gated,
            inline: classifier.worker(),
            classifier,
            workers: None,
            pre,
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
            agg_inputs: None,
            agg_frames: Vec::new(),
            faulted: false,
            last: None,
            outcome: Outcome::Idle,
            last_info: None,
            freeze_pending: false,
            frozen: false,
            freeze_in_flight: false,
            seq: 0,
            epoch: 0,
            queue: VecDeque::new(),
            current: None,
            spare: Vec::new(),
        })
    }

    /// Runs inference on `n` worker threads from now on, each with `threads` intra-op
    /// threads of its own (`n` <= 1: on the caller's thread, with the model's own threads).
    /// `notify` runs on a worker after each inference (to wake a waiting caller).
    pub fn start_workers(
        &mut self,
        n: usize,
        threads: usize,
        notify: Option<Notify>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.queue.is_empty(),
            "workers can only be started with no frame in flight"
        );
        self.workers = None;
        if n > 1 {
            self.workers = Some(Workers::start(&self.inline, n, threads, notify)?);
        }
        Ok(())
    }

    /// Stamps every decision from now on with `trace`.
    pub fn set_trace(&mut self, trace: Trace) {
        self.trace = Some(trace);
    }

    /// Keeps every input the aggregator gets from now on (workstation replays): the exam's
    /// frames can then be judged at other aggregation settings without the model.
    pub fn record_aggregation(&mut self) {
        self.agg_inputs = Some(Vec::new());
        self.agg_frames.clear();
    }

    /// The inputs kept since [`Pipeline::record_aggregation`] (empty when not recording), with
    /// the source frame index of each (`None` for a reset): which frame showed what.
    pub fn take_aggregation(&mut self) -> (Vec<Input>, Vec<Option<u64>>) {
        let inputs = self
            .agg_inputs
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        (inputs, std::mem::take(&mut self.agg_frames))
    }

    /// The aggregation parameters in force.
    pub fn aggregation(&self) -> Params {
        *self.agg.params()
    }

    fn agg_reset(&mut self) {
        self.agg.reset();
        if let Some(inputs) = self.agg_inputs.as_mut() {
            inputs.push(Input::Reset);
            self.agg_frames.push(None);
        }
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

    /// The frame behind the decisions the last [`Pipeline::finish_next`] gave: pass `frame`,
    /// the frame that was processed. `None` when that frame was not classified.
    pub fn view<'a>(&'a self, frame: &'a Frame) -> Option<FrameView<'a>> {
        let (info, c) = self.last.as_ref()?;
        let job = self.current.as_ref()?;
        Some(FrameView::new(
            frame,
            info,
            &job.tensor,
            &job.grey,
            self.pre.size(),
            self.pre.detector(),
            c,
            job.features.get(),
            self.classifier.cam_head().ok(),
            self.classifier.info().normal_index,
        ))
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Gives the model back (to start another stream with it without reloading); its
    /// workers stop first.
    pub fn into_classifier(mut self) -> Classifier {
        self.workers = None;
        self.classifier
    }

    pub fn screening(&self) -> bool {
        self.screening
    }

    /// The grey N x N model input of the last classified frame (snapshots).
    pub fn last_input(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], |j| j.grey.as_slice())
    }

    /// Applies a command (cart, operator view). Marks are the runtime's, not the pipeline's.
    pub fn command(&mut self, c: Control) {
        match c {
            Control::StartScreening => {
                if !self.screening {
                    self.agg_reset();
                    self.last_emit = None;
                    self.epoch += 1;
                }
                self.screening = true;
            }
            Control::StopScreening => {
                self.screening = false;
                self.frozen = false;
                self.freeze_pending = false;
                self.freeze_in_flight = false;
                self.epoch += 1;
                self.agg_reset();
                self.last_emit = None;
            }
            Control::Capture => self.capture_pending = true,
            Control::Freeze => {
                if !self.frozen {
                    self.freeze_pending = true;
                }
            }
            Control::Unfreeze => {
                if self.frozen || self.freeze_pending || self.freeze_in_flight {
                    self.frozen = false;
                    self.freeze_pending = false;
                    self.freeze_in_flight = false;
                    self.epoch += 1;
                    self.agg_reset();
                    self.last_emit = None;
                    self.gate.reset();
                }
            }
            Control::Mark { .. } | Control::StartSession(_) | Control::EndSession => {}
        }
    }

    /// Takes a frame: the gates and preprocessing run now, in frame order; its inference
    /// runs inline or on a worker. [`Pipeline::finish_next`] gives it back with its
    /// decisions.
    pub fn submit(&mut self, frame: Frame) {
        self.seq += 1;
        self.timers
            .record_both(Stage::Capture, frame.capture_time, frame.capture_cpu);
        let mut info = None;
        let step = self.prepare(&frame, &mut info);
        let step = match step {
            Step::Infer { mut job, ctx } => {
                job.seq = self.seq;
                job.result = None;
                match &self.workers {
                    None => {
                        job.run(&self.inline);
                        Step::Infer { job, ctx }
                    }
                    Some(w) => match w.send(job) {
                        Ok(()) => Step::Out { ctx },
                        Err(mut job) => {
                            // Only if every worker died: run it here rather than lose it.
                            log::error!("inference workers are gone: inferring on this thread");
                            job.run(&self.inline);
                            Step::Infer { job, ctx }
                        }
                    },
                }
            }
            other => other,
        };
        self.queue.push_back(Ticket {
            frame,
            seq: self.seq,
            epoch: self.epoch,
            info,
            step,
        });
    }

    /// Frames submitted and not yet given back.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Frames that may be in flight at once: one per inference worker, one without workers.
    pub fn capacity(&self) -> usize {
        self.workers().max(1)
    }

    /// Inference workers running (0: inference runs on the caller's thread).
    pub fn workers(&self) -> usize {
        self.workers.as_ref().map_or(0, Workers::count)
    }

    /// Gives back the oldest submitted frame once its inference is done, with its decisions
    /// appended to `out`; after it, [`Pipeline::view`] and [`Pipeline::live`] describe it.
    /// `wait`: wait for its inference; otherwise `None` while it is still running.
    pub fn finish_next(&mut self, wait: bool, out: &mut Vec<Decision>) -> Option<Frame> {
        self.collect(wait);
        if matches!(self.queue.front()?.step, Step::Out { .. }) {
            return None;
        }
        let t = self.queue.pop_front()?;
        self.counters.processed += 1;
        self.last = None;
        self.last_info = t.info;
        self.outcome = Outcome::Idle;
        let stale = t.epoch != self.epoch;
        match t.step {
            Step::Idle => self.counters.idle += 1,
            Step::Frozen => {
                self.counters.idle += 1;
                self.outcome = Outcome::Frozen;
            }
            Step::Gated(reason) => self.gated(reason),
            Step::Skipped => {
                self.counters.skipped += 1;
                self.outcome = Outcome::Skipped;
            }
            Step::Failed => {
                self.counters.errors += 1;
                self.outcome = Outcome::Failed;
            }
            Step::Infer { job, ctx } => self.finish_inference(job, ctx, &t.frame, stale, out),
            // Unreachable: `collect` waited for it or returned above.
            Step::Out { .. } => {
                self.counters.errors += 1;
                self.outcome = Outcome::Failed;
            }
        }
        Some(t.frame)
    }

    /// Takes finished jobs from the workers into their tickets; with `wait`, until the
    /// oldest ticket's job is back.
    fn collect(&mut self, wait: bool) {
        let Some(workers) = &self.workers else { return };
        loop {
            let head_out = matches!(self.queue.front().map(|t| &t.step), Some(Step::Out { .. }));
            let timeout = (wait && head_out).then_some(Duration::from_secs(3600));
            let job = match workers.recv(timeout) {
                Ok(Some(j)) => j,
                Ok(None) if wait && head_out => continue,
                Ok(None) => return,
                Err(WorkersGone) => {
                    log::error!("every inference worker has stopped: frames in flight failed");
                    for t in &mut self.queue {
                        if matches!(t.step, Step::Out { .. }) {
                            t.step = Step::Failed;
                        }
                    }
                    return;
                }
            };
            let Some(t) = self.queue.iter_mut().find(|t| t.seq == job.seq) else {
                log::error!(
                    "an inference came back for frame {} that is not in flight",
                    job.seq
                );
                continue;
            };
            match std::mem::replace(&mut t.step, Step::Failed) {
                Step::Out { ctx } => t.step = Step::Infer { job, ctx },
                other => {
                    log::error!("an inference came back twice for frame {}", job.seq);
                    t.step = other;
                }
            }
        }
    }

    /// Gates and preprocessing, in frame order: what is to become of this frame.
    fn prepare(&mut self, frame: &Frame, info_out: &mut Option<FrameInfo>) -> Step {
        if self.frozen || self.freeze_in_flight {
            // The operator froze the view: the frozen frame's decision stands.
            return Step::Frozen;
        }
        let freeze = self.screening && std::mem::take(&mut self.freeze_pending);
        let capture = std::mem::take(&mut self.capture_pending) || freeze;
        if !self.screening && !capture {
            return Step::Idle;
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
            return Step::Gated(reason);
        }
        // Live frames in freeze mode are only watched for the freeze.
        if self.mode == Mode::Freeze && !freeze_shot && !capture {
            return Step::Skipped;
        }

        // Preprocess (scan area, crop, normalise) and the anatomy gate.
        let t = Span::start();
        let mut job = self.spare.pop().unwrap_or_default();
        job.tensor.resize(self.pre.output_len(), 0.0);
        let info = match self.pre.process(&frame.grey, &mut job.tensor) {
            Ok(i) => i,
            Err(e) => {
                self.spare.push(job);
                log::error!("preprocessing failed: {e}");
                return Step::Failed;
            }
        };
        job.grey.clear();
        job.grey.extend_from_slice(self.pre.last_grey());
        *info_out = Some(info);
        self.timers.record_span(Stage::Preprocess, t);
        reason = reason.or(after_detection(&info));
        if reason.is_some() && !capture {
            self.spare.push(job);
            return Step::Gated(reason);
        }
        self.usable += 1;
        let single = capture || freeze_shot;
        if !single && !(self.usable - 1).is_multiple_of(u64::from(self.infer_every)) {
            self.spare.push(job);
            return Step::Skipped;
        }
        if freeze {
            self.freeze_in_flight = true;
        }
        Step::Infer {
            job,
            ctx: InferCtx {
                info,
                reason,
                capture,
                freeze,
                single,
            },
        }
    }

    /// Everything after the model, in frame order: the view gate, aggregation, decisions.
    fn finish_inference(
        &mut self,
        mut job: Box<Job>,
        ctx: InferCtx,
        frame: &Frame,
        stale: bool,
        out: &mut Vec<Decision>,
    ) {
        let InferCtx {
            info,
            mut reason,
            capture,
            freeze,
            single,
        } = ctx;
        if freeze && !stale {
            self.freeze_in_flight = false;
        }
        let c = match job.result.take() {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                self.spare.push(job);
                self.counters.errors += 1;
                self.outcome = Outcome::Failed;
                if !self.faulted {
                    log::error!("inference failed: {e}");
                }
                self.faulted = true;
                return;
            }
            None => {
                self.spare.push(job);
                self.counters.errors += 1;
                self.outcome = Outcome::Failed;
                return;
            }
        };
        self.faulted = false;
        self.counters.inferred += 1;
        self.timers
            .record_both(Stage::Infer, job.time.0, job.time.1);
        if stale && !capture {
            // Screening was stopped, restarted or unfrozen while this frame was inferred:
            // it belongs to a window that no longer exists.
            self.spare.push(job);
            self.counters.skipped += 1;
            self.outcome = Outcome::Skipped;
            return;
        }

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
                self.spare.push(job);
                self.gated(reason);
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
            if freeze && !stale {
                self.frozen = true;
                self.agg_reset();
                self.last_emit = None;
            }
        }
        if self.mode == Mode::Continuous && reason.is_none() && !stale {
            let sample = Sample::new(c.p_abnormal, &c.probs[..c.classes]);
            let now = Instant::now();
            if let Some(inputs) = self.agg_inputs.as_mut() {
                inputs.push(Input::Push(sample));
                self.agg_frames.push(Some(frame.meta.index));
            }
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
        if let Some(old) = self.current.replace(job) {
            self.spare.push(old);
        }
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
            self.agg_reset();
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
