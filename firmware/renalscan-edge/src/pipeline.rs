//! The per-frame path: gate -> preprocess -> infer -> aggregate, with per-stage timing.
//! Single-threaded and allocation-free per frame after warm-up (buffers are reused); the
//! capture thread feeds it and the runtime passes its decisions to the sinks.

use std::time::{Duration, Instant};

use anyhow::Context;
use cartlink::Command;
use model::cam::HeadWeights;
use usimage::{FrameInfo, Preprocessor};

use crate::aggregate::{Aggregator, Params, Sample, Trigger};
use crate::config::SnapshotConfig;
use crate::config::{AggregateConfig, GateConfig, Mode, PipelineConfig};
use crate::events::{unix_ms, Decision, DecisionKind, JournalState};
use crate::gate::{after_detection, Gate, GateReason};
use crate::infer::{Classified, Classifier};
use crate::snapshot::{scan_mask, Snapshot, SnapshotWriter};
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
    pub gated: [u64; 4],
    /// Usable frames skipped by `infer_every` (or live frames in freeze mode).
    pub skipped: u64,
    pub inferred: u64,
    pub decisions: u64,
    /// Preprocessing or inference failures.
    pub errors: u64,
}

/// Snapshot PNGs of decisive frames: the model input and its class-activation map.
pub struct Snapshots {
    writer: SnapshotWriter,
    head: HeadWeights,
    pub written: u64,
    pub failed: u64,
}

impl Snapshots {
    /// Opens the snapshot directory and reads the model's head (for the maps) once.
    pub fn open(cfg: &SnapshotConfig, classifier: &Classifier) -> anyhow::Result<Self> {
        let model = &classifier.info().model_path;
        let head = HeadWeights::from_onnx(model)
            .with_context(|| format!("snapshots need the head of {}", model.display()))?;
        let writer = SnapshotWriter::new(&cfg.dir, cfg.keep)?;
        Ok(Self {
            writer,
            head,
            written: 0,
            failed: 0,
        })
    }
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
    /// The last inference failed (status: fault).
    pub faulted: bool,
    snapshots: Option<Snapshots>,
}

impl Pipeline {
    pub fn new(
        classifier: Classifier,
        pipeline: &PipelineConfig,
        gate: &GateConfig,
        agg: &AggregateConfig,
    ) -> Self {
        let info = classifier.info().clone();
        let params = Params {
            window: agg.window,
            min_frames: agg.min_frames,
            threshold: agg.threshold.unwrap_or(info.threshold),
            hysteresis: agg.hysteresis,
            classes: info.labels.len(),
            normal_index: info.normal_index,
        };
        let pre = Preprocessor::new(info.input_size, info.normalization.clone());
        let tensor = vec![0.0; pre.output_len()];
        Self {
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
            faulted: false,
            snapshots: None,
        }
    }

    /// Writes snapshots of decisive frames (first decision, changes, captures, freezes).
    /// Fails when the model has no `features` output to draw the map from.
    pub fn set_snapshots(&mut self, s: Snapshots) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.classifier.keep_features(true),
            "snapshots need the model's `features` output, which this model lacks"
        );
        self.snapshots = Some(s);
        Ok(())
    }

    /// Snapshots written and failed so far.
    pub fn snapshot_counts(&self) -> Option<(u64, u64)> {
        self.snapshots.as_ref().map(|s| (s.written, s.failed))
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    pub fn screening(&self) -> bool {
        self.screening
    }

    /// The grey N x N model input of the last preprocessed frame (snapshots).
    pub fn last_input(&self) -> &[u8] {
        self.pre.last_grey()
    }

    /// Applies a cart command.
    pub fn command(&mut self, c: Command) {
        match c {
            Command::StartScreening => {
                if !self.screening {
                    self.agg.reset();
                    self.last_emit = None;
                }
                self.screening = true;
            }
            Command::StopScreening => {
                self.screening = false;
                self.agg.reset();
                self.last_emit = None;
            }
            Command::Capture => self.capture_pending = true,
        }
    }

    /// Runs one frame through the stages; decisions are appended to `out`.
    pub fn process(&mut self, frame: &Frame, out: &mut Vec<Decision>) {
        self.counters.processed += 1;
        self.timers
            .record_both(Stage::Capture, frame.capture_time, frame.capture_cpu);
        let capture = std::mem::take(&mut self.capture_pending);
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
            return;
        }

        // Preprocess (scan area, crop, normalise) and the anatomy gate.
        let t = Span::start();
        let info = match self.pre.process(&frame.grey, &mut self.tensor) {
            Ok(i) => i,
            Err(e) => {
                self.counters.errors += 1;
                log::error!("preprocessing failed: {e}");
                return;
            }
        };
        self.timers.record_span(Stage::Preprocess, t);
        reason = reason.or(after_detection(&info));
        if reason.is_some() && !capture {
            self.gated(reason);
            return;
        }
        self.gated_run = 0;
        self.usable += 1;
        let single = capture || freeze_shot;
        if !single && !(self.usable - 1).is_multiple_of(u64::from(self.infer_every)) {
            self.counters.skipped += 1;
            return;
        }

        // Inference.
        let t = Span::start();
        let c = match self.classifier.classify(&self.tensor) {
            Ok(c) => c,
            Err(e) => {
                self.counters.errors += 1;
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

        // Aggregation and decision.
        let t = Span::start();
        if single {
            let kind = if capture {
                DecisionKind::Capture
            } else {
                DecisionKind::Freeze
            };
            out.push(self.single(kind, &c, frame, reason.is_some()));
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
        if self.snapshots.is_some() {
            let t = Span::start();
            for d in out.iter_mut() {
                if d.kind != DecisionKind::Update {
                    self.snapshot(d, &info, &c);
                }
            }
            self.timers.record_span(Stage::Snapshot, t);
        }
    }

    /// Renders and writes the snapshot of the current frame for `d`; failures are logged
    /// and counted, never fatal.
    fn snapshot(&mut self, d: &mut Decision, info: &FrameInfo, c: &Classified) {
        let Some(snaps) = self.snapshots.as_mut() else {
            return;
        };
        let Some((features, shape)) = self.classifier.last_features() else {
            return;
        };
        let normal = self.classifier.info().normal_index;
        let r = snaps
            .head
            .abnormal_map(features, shape, &c.probs[..c.classes], normal)
            .map_err(anyhow::Error::from)
            .and_then(|m| {
                let size = self.pre.size();
                let mask = scan_mask(self.pre.detector(), info, size);
                let map = m.normalised();
                let label = if d.abnormal {
                    d.class.as_str()
                } else {
                    "normal"
                };
                let s = Snapshot {
                    grey: self.pre.last_grey(),
                    size,
                    mask: &mask,
                    map: &map,
                    map_w: m.width,
                    map_h: m.height,
                    label,
                };
                Ok(snaps.writer.write(&s, std::time::SystemTime::now())?)
            });
        match r {
            Ok(p) => {
                snaps.written += 1;
                d.snapshot = Some(p.display().to_string());
            }
            Err(e) => {
                snaps.failed += 1;
                if snaps.failed <= 5 || snaps.failed.is_multiple_of(100) {
                    log::warn!("snapshot not written ({} so far): {e:#}", snaps.failed);
                }
            }
        }
    }

    fn gated(&mut self, reason: Option<GateReason>) {
        if let Some(r) = reason {
            self.counters.gated[r.index()] += 1;
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
            low_quality,
            unix_ms: unix_ms(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            model: self.model_tag.clone(),
            journal: JournalState::Off,
            snapshot: None,
        }
    }

    /// Forget freeze state after a source reopen (the next frame is not a repeat).
    pub fn source_reopened(&mut self) {
        self.gate.reset();
    }
}
