//! Exam-level replay: a recorded sweep through the device's own [`Pipeline`] (gates,
//! preprocessing, model, view gate, aggregation), every frame in order, and what the device
//! would have shown for the exam.
//!
//! The device answers once per exam, from its aggregated decisions, not once per image (the
//! exam's call is latched: [`contract::events::exam_call`]); this is how
//! `renalscan eval --sweeps` judges that answer. No capture thread and no sinks: frames are
//! read from the replay source and handed to the pipeline one by one, so the result does not
//! depend on the machine's speed.

use std::path::Path;
use std::time::Instant;

use crate::aggregate::{Input, Params};
use crate::config::Config;
use crate::events::Decision;
use crate::infer::Classifier;
use crate::pipeline::{Counters, Pipeline};
use crate::source::replay::Replay;
use crate::source::{Frame, Source, SourceError};

/// What the device made of one sweep.
#[derive(Debug, Clone)]
pub struct SweepOutcome {
    /// Frames read.
    pub frames: u64,
    /// Frames that could not be decoded.
    pub corrupt: u64,
    /// Aggregated decisions (the first, then each flip), in order.
    pub decisions: Vec<Decision>,
    /// Pipeline counters (gated frames by reason, inferences).
    pub counters: Counters,
    /// Wall time spent in the pipeline, seconds.
    pub seconds: f64,
    /// Inference workers it ran on (0: on the calling thread).
    pub workers: usize,
    /// Every input the aggregator got, in order: the sweep judged at other aggregation
    /// settings ([`crate::aggregate::exam_call_of`]).
    pub inputs: Vec<Input>,
    /// The source frame index of each of `inputs` (`None` for a reset): lets a replay say
    /// whether the frames that showed a finding scored high.
    pub input_frames: Vec<Option<u64>>,
    /// The aggregation settings the decisions were made with.
    pub params: Params,
}

impl SweepOutcome {
    /// Source index of the frame that produced the first aggregated decision.
    pub fn first_decision_frame(&self) -> Option<u64> {
        self.decisions.first().map(|d| d.frame_index)
    }

    /// The aggregated decision standing when the sweep ended: what the screen shows when the
    /// clinician lifts the probe. `None` when the device never decided (every frame gated).
    pub fn final_decision(&self) -> Option<&Decision> {
        self.decisions.last()
    }

    /// The exam's call, as the device's session record gives it ([`contract::events::exam_call`]:
    /// latched on the most confident abnormal decision, else the last one).
    pub fn exam_call(&self) -> Option<&Decision> {
        contract::events::exam_call(&self.decisions)
    }
}

/// Replays sweeps one after the other with one loaded model.
pub struct ExamReplay {
    cfg: Config,
    classifier: Option<Classifier>,
}

impl ExamReplay {
    /// `cfg` gives the pipeline, gate and aggregation settings (as on the device). Periodic
    /// repeats of the standing decision are turned off: they depend on the wall clock, so
    /// the same sweep would end on a different repeat on a faster machine. The decisions
    /// left (first, and every flip) are a function of the frames alone. A configured
    /// threshold the bundle does not allow is refused here, as on the device.
    pub fn new(mut cfg: Config, classifier: Classifier) -> anyhow::Result<Self> {
        cfg.aggregate.report_every_s = 0.0;
        let manifest = &classifier.info().manifest;
        let (threshold, source) =
            crate::pipeline::operating_threshold(cfg.aggregate.threshold, manifest)?;
        crate::pipeline::announce_threshold(threshold, source, manifest);
        Ok(Self {
            cfg,
            classifier: Some(classifier),
        })
    }

    /// The model in use.
    pub fn classifier(&self) -> Option<&Classifier> {
        self.classifier.as_ref()
    }

    /// Runs the sweep at `path` (a folder of frames in name order, or a cine DICOM) from a
    /// fresh aggregation window, as if screening started with it.
    pub fn run(&mut self, path: &Path) -> Result<SweepOutcome, SourceError> {
        let classifier = self
            .classifier
            .take()
            .ok_or_else(|| SourceError::Lost("the model was lost by an earlier sweep".into()))?;
        // The threshold was checked in `new`, so this does not fail.
        let mut pipeline = Pipeline::new(
            classifier,
            &self.cfg.pipeline,
            &self.cfg.gate,
            &self.cfg.aggregate,
        )
        .map_err(|e| SourceError::Lost(format!("{e:#}")))?;
        pipeline.command(crate::sink::Control::StartScreening);
        pipeline.record_aggregation();
        // As on the cart: one inference worker per core given to the model.
        let (workers, threads) = self.cfg.model.layout();
        if let Err(e) = pipeline.start_workers(workers, threads, None) {
            log::warn!("{e:#}: inferring on one thread");
        }
        let result = replay(&mut pipeline, path);
        self.classifier = Some(pipeline.into_classifier());
        result
    }
}

fn replay(pipeline: &mut Pipeline, path: &Path) -> Result<SweepOutcome, SourceError> {
    let t0 = Instant::now();
    let mut src = Replay::new(path, 0.0, false);
    src.open()?;
    let (mut frames, mut corrupt) = (0u64, 0u64);
    let mut out = Vec::new();
    let mut decisions = Vec::new();
    let mut spare: Vec<Frame> = Vec::new();
    let mut finish = |pipeline: &mut Pipeline, spare: &mut Vec<Frame>| {
        out.clear();
        if let Some(f) = pipeline.finish_next(true, &mut out) {
            spare.push(f);
        }
        decisions.extend(out.drain(..).filter(|d| !d.kind.is_single_frame()));
    };
    loop {
        let mut frame = spare.pop().unwrap_or_default();
        let t = Instant::now();
        match src.read(&mut frame.grey) {
            Ok(meta) => {
                frames += 1;
                frame.meta = meta;
                frame.captured_at = Instant::now();
                frame.capture_time = t.elapsed();
                pipeline.submit(frame);
                while pipeline.in_flight() >= pipeline.capacity() {
                    finish(pipeline, &mut spare);
                }
            }
            Err(SourceError::Corrupt(e)) => {
                spare.push(frame);
                corrupt += 1;
                log::warn!("{}: corrupt frame skipped: {e}", path.display());
            }
            Err(SourceError::End) => break,
            Err(e) => {
                src.close();
                return Err(e);
            }
        }
    }
    while pipeline.in_flight() > 0 {
        finish(pipeline, &mut spare);
    }
    src.close();
    let (inputs, input_frames) = pipeline.take_aggregation();
    Ok(SweepOutcome {
        frames,
        corrupt,
        decisions,
        counters: pipeline.counters,
        seconds: t0.elapsed().as_secs_f64(),
        workers: pipeline.workers(),
        inputs,
        input_frames,
        params: pipeline.aggregation(),
    })
}
