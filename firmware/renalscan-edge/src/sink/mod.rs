//! Where the runtime's results go: every output is a [`Sink`], in one list built from the
//! config ([`build`]).
//!
//! In the spirit of ripgrep's `Sink`: the runtime drives, each sink receives. One required
//! method, [`Sink::decision`], which also sees the frame the decision was made on
//! ([`FrameView`]: the scan area, the model input, the class-activation map) so image sinks
//! are sinks like any other; [`Sink::status`], [`Sink::tick`] and [`Sink::shutdown`] default
//! to doing nothing.
//!
//! The order of the list matters once: the journal comes first and is the record of truth.
//! A sink may return a [`Receipt`] (the journal's sequence number, a snapshot's file); the
//! runtime writes it into the decision before the next sink sees it, so everything after the
//! journal knows whether, and under which number, the decision is on disk.
//!
//! [`SinkSet`] isolates sinks from each other and from screening: an error is counted and
//! logged (rate-limited), a panic disables that sink only, and each sink's health is in the
//! status under its name.

pub mod build;
pub mod cartlink;
pub mod journal;
pub mod keyframes;
pub mod pacs;
pub mod snapshots;
pub mod statusfile;
pub mod stdout;
pub mod view;

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use model::cam::{ActivationMap, HeadWeights};
use usimage::{Detector, FrameInfo, GreyFrame, ScanKind};

use crate::events::{
    Decision, JournalState, Mark, SessionContext, SessionRecord, SinkHealth, SinkState,
    StatusReport,
};
use crate::gate::GateReason;
use crate::infer::Classified;
use crate::source::Frame;

/// Why a sink could not handle an event. Screening goes on; the message reaches the log and
/// the sink's health in the status, so it should name what failed and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

impl SinkError {
    /// An error from anything displayable.
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// What a sink adds to a decision for the sinks after it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Receipt {
    /// Nothing (most sinks).
    #[default]
    None,
    /// Where the decision stands in the journal.
    Journal(JournalState),
    /// The snapshot file written for it.
    Snapshot(String),
}

/// Why a status is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// Something changed (state, command): cheap sinks (the cart) update at once.
    Change,
    /// The periodic status (stdout, log).
    Periodic,
    /// The last one, at shutdown.
    Final,
}

/// One output of the runtime.
pub trait Sink: Send {
    /// Short name: the key of this sink's health and report in the status.
    fn name(&self) -> &'static str;

    /// A decision and the frame it was made on.
    fn decision(&mut self, d: &Decision, frame: &FrameView<'_>) -> Result<Receipt, SinkError>;

    /// A status record.
    fn status(&mut self, _s: &StatusReport, _kind: StatusKind) -> Result<(), SinkError> {
        Ok(())
    }

    /// Every frame the pipeline took, whatever became of it (the live view). Called on the
    /// screening thread for each frame: return at once unless the sink is due, and never
    /// encode or do I/O here.
    fn frame(&mut self, _f: &LiveFrame<'_>) -> Result<(), SinkError> {
        Ok(())
    }

    /// A clinician's mark on a journalled decision (the journal records it).
    fn mark(&mut self, _m: &Mark) -> Result<Receipt, SinkError> {
        Ok(Receipt::None)
    }

    /// A session started, ended, was found interrupted or purged (the journal records it;
    /// the context is in the session store, never here).
    fn session(&mut self, _r: &SessionRecord) -> Result<Receipt, SinkError> {
        Ok(Receipt::None)
    }

    /// Called every loop turn (retries, flushing); keep it cheap.
    fn tick(&mut self, _now: Instant) -> Result<(), SinkError> {
        Ok(())
    }

    /// The sink's own view of its state (a journal holding records is degraded).
    fn state(&self) -> SinkState {
        SinkState::Ok
    }

    /// Counters for the status, under [`Sink::name`].
    fn report(&self) -> Option<serde_json::Value> {
        None
    }

    /// The run ends: deliver or write what is pending.
    fn shutdown(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn decision(&mut self, d: &Decision, frame: &FrameView<'_>) -> Result<Receipt, SinkError> {
        (**self).decision(d, frame)
    }
    fn status(&mut self, s: &StatusReport, kind: StatusKind) -> Result<(), SinkError> {
        (**self).status(s, kind)
    }
    fn frame(&mut self, f: &LiveFrame<'_>) -> Result<(), SinkError> {
        (**self).frame(f)
    }
    fn mark(&mut self, m: &Mark) -> Result<Receipt, SinkError> {
        (**self).mark(m)
    }
    fn session(&mut self, r: &SessionRecord) -> Result<Receipt, SinkError> {
        (**self).session(r)
    }
    fn tick(&mut self, now: Instant) -> Result<(), SinkError> {
        (**self).tick(now)
    }
    fn state(&self) -> SinkState {
        (**self).state()
    }
    fn report(&self) -> Option<serde_json::Value> {
        (**self).report()
    }
    fn shutdown(&mut self) -> Result<(), SinkError> {
        (**self).shutdown()
    }
}

/// The frame behind a decision, for sinks that keep or show images. Everything is borrowed
/// from the pipeline; the activation map and the masks are computed on first use, once.
pub struct FrameView<'a> {
    /// The frame as the source delivered it (full screen).
    pub frame: &'a Frame,
    /// Where the scan area was found and how it was cropped and placed.
    pub info: &'a FrameInfo,
    /// The model input tensor (CHW, normalised).
    pub input: &'a [f32],
    /// The grey N x N model input (de-identified: only the scan area).
    pub input_grey: &'a [u8],
    /// N.
    pub size: u32,
    /// The classification of this frame.
    pub classified: &'a Classified,
    detector: &'a Detector,
    features: Option<(&'a [f32], &'a [usize])>,
    head: Option<&'a HeadWeights>,
    normal_index: usize,
    cam: OnceCell<Option<ActivationMap>>,
    mask: OnceCell<Vec<u8>>,
}

impl<'a> FrameView<'a> {
    /// The view of a classified frame.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        frame: &'a Frame,
        info: &'a FrameInfo,
        input: &'a [f32],
        input_grey: &'a [u8],
        size: u32,
        detector: &'a Detector,
        classified: &'a Classified,
        features: Option<(&'a [f32], &'a [usize])>,
        head: Option<&'a HeadWeights>,
        normal_index: usize,
    ) -> Self {
        Self {
            frame,
            info,
            input,
            input_grey,
            size,
            classified,
            detector,
            features,
            head,
            normal_index,
            cam: OnceCell::new(),
            mask: OnceCell::new(),
        }
    }

    /// The frame as a heatmap snapshot (grey model input, scan-area mask, normalised
    /// class-activation map) handed to `f`: every sink that draws one draws the same.
    pub fn with_snapshot<R>(
        &self,
        label: &str,
        f: impl FnOnce(&crate::snapshot::Snapshot<'_>) -> Result<R, SinkError>,
    ) -> Result<R, SinkError> {
        let map = self
            .activation_map()
            .ok_or_else(|| SinkError::new("no activation map for this frame"))?;
        let heat = map.normalised();
        f(&crate::snapshot::Snapshot {
            grey: self.input_grey,
            size: self.size,
            mask: self.scan_mask(),
            map: &heat,
            map_w: map.width,
            map_h: map.height,
            label,
        })
    }

    /// The class-activation map of p(abnormal) (7 x 7 for a 224 input), when the model has a
    /// `features` output and a head that maps onto it (pooled linear, or per cell).
    pub fn activation_map(&self) -> Option<&ActivationMap> {
        self.cam
            .get_or_init(|| {
                let (f, shape) = self.features?;
                let head = self.head?;
                head.abnormal_map(f, shape, self.classified.probs(), self.normal_index)
                    .map_err(|e| log::warn!("activation map: {e}"))
                    .ok()
            })
            .as_ref()
    }

    /// The scan area in model-input pixels (`size x size`, non-zero inside).
    pub fn scan_mask(&self) -> &[u8] {
        self.mask
            .get_or_init(|| crate::snapshot::scan_mask(self.detector, self.info, self.size))
    }

    /// The scan area of the source frame at full resolution: the crop box of the detection,
    /// with every pixel outside the scan area black (names and dates burned into the screen
    /// around the image never leave). `None` when no scan area was found.
    pub fn scan_area_crop(&self) -> Option<GreyFrame> {
        if self.info.area.kind == ScanKind::None {
            return None;
        }
        let [x0, y0, x1, y1] = self.info.crop;
        let (w, h) = (x1.checked_sub(x0)?, y1.checked_sub(y0)?);
        let src = &self.frame.grey;
        if w == 0 || h == 0 || x1 > src.width() || y1 > src.height() {
            return None;
        }
        let stride = src.width() as usize;
        let mut px = Vec::with_capacity(w as usize * h as usize);
        for y in y0..y1 {
            let row = &src.grey()[y as usize * stride..];
            px.extend((x0..x1).map(|x| {
                if self.detector.inside(x, y) {
                    row[x as usize]
                } else {
                    0
                }
            }));
        }
        GreyFrame::from_grey(w, h, px).ok()
    }
}

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not screening (stopped, or before a start command).
    Idle,
    /// The operator froze the view: frames are not screened until unfreeze.
    Frozen,
    /// Refused by a gate.
    Gated(GateReason),
    /// Usable but not classified (`infer_every`, live frames in freeze mode).
    Skipped,
    /// Classified.
    Classified,
    /// Preprocessing or inference failed.
    Failed,
}

/// One frame as the live view sees it: the frame, what became of it, its detection when it
/// got that far, and the classification when it was classified.
pub struct LiveFrame<'a> {
    pub frame: &'a Frame,
    pub outcome: Outcome,
    /// The scan-area detection of this frame (after preprocessing).
    pub info: Option<&'a FrameInfo>,
    pub detector: &'a Detector,
    /// The classified frame (its map, its model input) when `outcome` is `Classified`, or
    /// for a frame classified once (capture, freeze) even if a gate objected.
    pub view: Option<FrameView<'a>>,
    /// Frames in the aggregation window now (0: no decision stands).
    pub window: usize,
    /// The operator froze the view (the frozen frame's decision stands).
    pub frozen: bool,
    /// The operating threshold on p(abnormal).
    pub threshold: f32,
}

/// A sink with the runtime's bookkeeping.
struct Entry {
    sink: Box<dyn Sink>,
    errors: u64,
    last_error: Option<String>,
    /// The most recent call failed.
    failing: bool,
    /// It panicked: never called again.
    disabled: bool,
}

impl Entry {
    /// Runs `f` on the sink; an error or a panic is recorded, never propagated.
    fn call<T: Default>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut dyn Sink) -> Result<T, SinkError>,
    ) -> T {
        if self.disabled {
            return T::default();
        }
        let name = self.sink.name();
        match catch_unwind(AssertUnwindSafe(|| f(self.sink.as_mut()))) {
            Ok(Ok(v)) => {
                self.failing = false;
                v
            }
            Ok(Err(e)) => {
                self.errors += 1;
                self.failing = true;
                if self.errors <= 5 || self.errors.is_multiple_of(100) {
                    log::warn!("sink {name}: {what} failed ({} so far): {e}", self.errors);
                }
                self.last_error = Some(e.0);
                T::default()
            }
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                log::error!("sink {name} panicked in {what} and is disabled: {msg}");
                self.errors += 1;
                self.disabled = true;
                self.last_error = Some(format!("panicked in {what}: {msg}"));
                T::default()
            }
        }
    }

    fn health(&self) -> SinkHealth {
        let state = if self.disabled {
            SinkState::Failed
        } else {
            let own = self.sink.state();
            if self.failing && own == SinkState::Ok {
                SinkState::Degraded
            } else {
                own
            }
        };
        SinkHealth {
            state,
            errors: self.errors,
            last_error: self.last_error.clone(),
        }
    }
}

/// The runtime's sinks, in order, each isolated from the others.
#[derive(Default)]
pub struct SinkSet {
    entries: Vec<Entry>,
}

impl SinkSet {
    /// The sinks in delivery order (the journal first).
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        Self {
            entries: sinks
                .into_iter()
                .map(|sink| Entry {
                    sink,
                    errors: 0,
                    last_error: None,
                    failing: false,
                    disabled: false,
                })
                .collect(),
        }
    }

    /// Names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.sink.name()).collect()
    }

    /// True when no sink is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Delivers a decision to every sink in order; each receipt is written into the decision
    /// before the next sink sees it.
    pub fn decision(&mut self, d: &mut Decision, frame: &FrameView<'_>) {
        for e in &mut self.entries {
            let receipt = e.call("decision", |s| s.decision(d, frame));
            match receipt {
                Receipt::None => {}
                Receipt::Journal(j) => d.journal = j,
                Receipt::Snapshot(p) => d.snapshot = Some(p),
            }
        }
    }

    /// Shows a frame to the sinks that watch frames.
    pub fn frame(&mut self, f: &LiveFrame<'_>) {
        for e in &mut self.entries {
            e.call("frame", |s| s.frame(f));
        }
    }

    /// Delivers a mark; returns where the journal put it.
    pub fn mark(&mut self, m: &Mark) -> JournalState {
        let mut state = JournalState::Off;
        for e in &mut self.entries {
            if let Receipt::Journal(j) = e.call("mark", |s| s.mark(m)) {
                state = j;
            }
        }
        state
    }

    /// Delivers a session record; returns where the journal put it.
    pub fn session(&mut self, r: &SessionRecord) -> JournalState {
        let mut state = JournalState::Off;
        for e in &mut self.entries {
            if let Receipt::Journal(j) = e.call("session", |s| s.session(r)) {
                state = j;
            }
        }
        state
    }

    /// Delivers a status record.
    pub fn status(&mut self, s: &StatusReport, kind: StatusKind) {
        for e in &mut self.entries {
            e.call("status", |sink| sink.status(s, kind));
        }
    }

    /// One loop turn.
    pub fn tick(&mut self, now: Instant) {
        for e in &mut self.entries {
            e.call("tick", |s| s.tick(now));
        }
    }

    /// Shuts every sink down, in order (the journal flushes first).
    pub fn shutdown(&mut self) {
        for e in &mut self.entries {
            e.call("shutdown", |s| s.shutdown());
        }
    }

    /// Health of every sink, by name.
    pub fn health(&self) -> BTreeMap<String, SinkHealth> {
        self.entries
            .iter()
            .map(|e| (e.sink.name().to_string(), e.health()))
            .collect()
    }

    /// Each sink's own report, by name.
    pub fn reports(&self) -> BTreeMap<String, serde_json::Value> {
        self.entries
            .iter()
            .filter_map(|e| Some((e.sink.name().to_string(), e.sink.report()?)))
            .collect()
    }

    /// The state of the sink named `name`, if there is one.
    pub fn state_of(&self, name: &str) -> Option<SinkState> {
        self.entries
            .iter()
            .find(|e| e.sink.name() == name)
            .map(|e| e.health().state)
    }
}

/// What the cart's buttons, the operator view and the command line ask of the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    StartScreening,
    StopScreening,
    /// Classify the current frame once and keep it.
    Capture,
    /// Classify-on-freeze: the next frame is classified once and held until [`Control::Unfreeze`].
    Freeze,
    Unfreeze,
    /// The clinician's judgement of the decision journalled as `journal_seq`.
    Mark {
        journal_seq: u64,
        agree: bool,
        from: &'static str,
    },
    /// Open an exam with this context (an open one is ended first).
    StartSession(SessionContext),
    /// End the open exam.
    EndSession,
}

impl From<::cartlink::Command> for Control {
    fn from(c: ::cartlink::Command) -> Self {
        let entered = |s: &str| (!s.is_empty()).then(|| s.to_string());
        match c {
            ::cartlink::Command::StartScreening => Control::StartScreening,
            ::cartlink::Command::StopScreening => Control::StopScreening,
            ::cartlink::Command::Capture => Control::Capture,
            ::cartlink::Command::StartExam(x) => Control::StartSession(SessionContext {
                patient_id: entered(&x.patient_id),
                accession: entered(&x.accession),
                operator: entered(&x.operator),
                side: x.side,
            }),
            ::cartlink::Command::EndExam => Control::EndSession,
        }
    }
}

/// Where commands to the runtime come from besides the CLI (the cart link, the operator
/// view). Polled every loop turn.
pub trait CommandSource: Send {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// The next pending command, if any.
    fn poll(&mut self) -> Option<Control>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::DecisionKind;

    /// A sink that fails, or panics, on demand.
    struct Faulty {
        name: &'static str,
        fail: bool,
        panic: bool,
        seen: std::sync::Arc<std::sync::Mutex<Vec<Option<u64>>>>,
    }

    impl Sink for Faulty {
        fn name(&self) -> &'static str {
            self.name
        }
        fn decision(&mut self, d: &Decision, _f: &FrameView<'_>) -> Result<Receipt, SinkError> {
            self.seen.lock().unwrap().push(d.journal.seq());
            if self.panic {
                panic!("boom");
            }
            if self.fail {
                return Err(SinkError::new("disk on fire"));
            }
            Ok(Receipt::None)
        }
    }

    /// Pretends to journal: numbers each decision.
    struct Numbering(u64);

    impl Sink for Numbering {
        fn name(&self) -> &'static str {
            "journal"
        }
        fn decision(&mut self, _d: &Decision, _f: &FrameView<'_>) -> Result<Receipt, SinkError> {
            self.0 += 1;
            Ok(Receipt::Journal(JournalState::Committed { seq: self.0 }))
        }
    }

    pub(crate) fn decision() -> Decision {
        Decision {
            seq: 1,
            kind: DecisionKind::First,
            abnormal: false,
            p_abnormal: 0.1,
            class: "normal".into(),
            confidence: 0.9,
            frames: 3,
            frame_index: 7,
            threshold: 0.5,
            threshold_source: contract::events::ThresholdSource::Bundle,
            low_quality: false,
            unix_ms: 0,
            uptime_ms: 0,
            model: "m@1".into(),
            snapshot: None,
            journal: JournalState::Off,
            session: None,
            trace: None,
        }
    }

    #[test]
    fn a_failing_or_panicking_sink_stops_neither_the_others_nor_the_caller() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let faulty = |name, fail, panic| -> Box<dyn Sink> {
            Box::new(Faulty {
                name,
                fail,
                panic,
                seen: seen.clone(),
            })
        };
        let mut set = SinkSet::new(vec![
            Box::new(Numbering(0)),
            faulty("failing", true, false),
            faulty("panicking", false, true),
            faulty("fine", false, false),
        ]);
        let (frame, info) = (Frame::default(), FrameInfo::default());
        let det = Detector::default();
        let c = Classified {
            probs: [0.0; crate::aggregate::MAX_CLASSES],
            classes: 6,
            p_abnormal: 0.1,
            class: 0,
            confidence: 0.9,
            view: None,
        };
        let view = FrameView::new(&frame, &info, &[], &[], 0, &det, &c, None, None, 0);
        for _ in 0..2 {
            let mut d = decision();
            set.decision(&mut d, &view);
            assert!(d.journal.seq().is_some());
        }
        // Every sink after the journal saw its numbers; the panicking one only once.
        assert_eq!(
            *seen.lock().unwrap(),
            [Some(1), Some(1), Some(1), Some(2), Some(2)]
        );
        let h = set.health();
        assert_eq!(h["journal"].state, SinkState::Ok);
        assert_eq!(h["failing"].state, SinkState::Degraded);
        assert_eq!(h["failing"].errors, 2);
        assert_eq!(h["failing"].last_error.as_deref(), Some("disk on fire"));
        assert_eq!(h["panicking"].state, SinkState::Failed);
        assert!(h["panicking"]
            .last_error
            .as_deref()
            .unwrap()
            .contains("boom"));
        assert_eq!(h["fine"].state, SinkState::Ok);
        set.shutdown();
    }
}
