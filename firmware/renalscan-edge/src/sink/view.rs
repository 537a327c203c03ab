//! The operator view as a sink: frames (at most at the preview rate), decisions and marks go
//! to the `operator-view` server; its operators' buttons come back as a [`CommandSource`].
//!
//! On the screening thread this sink only copies: the crop box's rows, the scan-area mask
//! (a few KiB) and the 7 x 7 map, at most `ui.preview_fps` times a second. Masking, scaling,
//! JPEG encoding and every socket live on the view's own threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use operator_view::{
    Control as ViewControl, DecisionInfo, FrameHeader, Identity, Preview, ViewConfig, ViewEvent,
    ViewServer,
};
use usimage::ScanKind;

use super::StatusKind;
use super::{CommandSource, Control, FrameView, LiveFrame, Outcome, Receipt, Sink, SinkError};
use crate::events::{
    Decision, DecisionKind, Mark, MarkKind, SessionContext, SessionEvent, SessionRecord, Side,
    StatusReport,
};
use crate::gate::GateReason;
use crate::infer::Classifier;

/// While nothing is published (idle, frozen), a header-only frame this often tells the pages
/// the device is alive, so they do not mark the decision stale.
const HEARTBEAT: Duration = Duration::from_millis(400);

/// The view's sink.
pub struct ViewSink {
    server: Arc<ViewServer>,
    interval: Duration,
    last_publish: Option<Instant>,
    /// The decision standing now (cleared when the aggregation window empties).
    current: Option<DecisionInfo>,
    /// The frozen frame's decision, while frozen.
    frozen: Option<DecisionInfo>,
    /// The runtime is frozen by the operator (as last seen).
    ui_frozen: bool,
}

/// The operators' controls, as a command source of the runtime.
pub struct ViewCommands {
    server: Arc<ViewServer>,
}

impl CommandSource for ViewCommands {
    fn name(&self) -> &'static str {
        "view"
    }

    fn poll(&mut self) -> Option<Control> {
        Some(match self.server.take_control()? {
            ViewControl::Freeze => Control::Freeze,
            ViewControl::Unfreeze => Control::Unfreeze,
            ViewControl::Capture => Control::Capture,
            ViewControl::Mark { journal_seq, agree } => Control::Mark {
                journal_seq,
                agree,
                from: "view",
            },
            ViewControl::StartSession(c) => Control::StartSession(SessionContext {
                patient_id: c.patient_id,
                accession: c.accession,
                operator: c.operator,
                side: match c.side.as_deref() {
                    Some("left") => Some(Side::Left),
                    Some("right") => Some(Side::Right),
                    _ => None,
                },
            }),
            ViewControl::EndSession => Control::EndSession,
        })
    }
}

/// The page's name for a gate reason.
fn gate_name(r: GateReason) -> &'static str {
    match r {
        GateReason::Blank => "probe_lifted",
        GateReason::Frozen => "frozen",
        GateReason::NoScanArea => "no_scan_area",
        GateReason::NoAnatomy => "no_anatomy",
        GateReason::NoKidney => "not_a_kidney",
    }
}

fn info_of(d: &Decision) -> DecisionInfo {
    DecisionInfo {
        seq: d.seq,
        journal_seq: d.journal.seq(),
        kind: serde_json::to_value(d.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        abnormal: d.abnormal,
        class: d.class.clone(),
        p_abnormal: d.p_abnormal,
        threshold: d.threshold,
        frames: d.frames,
        frame_index: d.frame_index,
        unix_ms: d.unix_ms,
        low_quality: d.low_quality,
    }
}

impl ViewSink {
    /// Starts the view's server. The caller logs a failure and screens without the view.
    pub fn start(
        cfg: &ViewConfig,
        classifier: &Classifier,
    ) -> Result<(Self, ViewCommands), operator_view::ViewError> {
        let info = classifier.info();
        let identity = Identity {
            model: info.name.clone(),
            version: info.version.clone(),
            signer: info.signer.clone(),
            form: info.trust.clone(),
            bundle_sha256: info.bundle_sha256.clone(),
            threshold: info.threshold,
            labels: info.labels.clone(),
        };
        let server = Arc::new(ViewServer::start(cfg.clone(), identity)?);
        Ok((
            Self {
                interval: server.preview_interval(),
                server: server.clone(),
                last_publish: None,
                current: None,
                frozen: None,
                ui_frozen: false,
            },
            ViewCommands { server },
        ))
    }

    /// The server (URL, stats).
    pub fn server(&self) -> &Arc<ViewServer> {
        &self.server
    }

    fn header(&self, f: &LiveFrame<'_>) -> FrameHeader {
        let gate = match f.outcome {
            Outcome::Gated(r) => Some(gate_name(r).to_string()),
            _ => None,
        };
        let frozen = f.frozen;
        let decision = if frozen {
            self.frozen.clone()
        } else if gate.is_some() {
            None
        } else {
            self.current.clone()
        };
        let mut h = FrameHeader {
            frame: f.frame.meta.index,
            sent_ms: crate::events::unix_ms(),
            gate,
            threshold: f.threshold,
            decision,
            frozen,
            ..Default::default()
        };
        if let (Some(v), Outcome::Classified) = (&f.view, f.outcome) {
            h.p_abnormal = Some(v.classified.p_abnormal);
            if let Some(map) = v.activation_map() {
                h.cam = Some(map.normalised());
                h.cam_w = map.width as u32;
                h.cam_h = map.height as u32;
            }
        }
        if let Some(info) = f.info {
            h.input_size = v_size(f);
            h.placed = info.placed;
        }
        h
    }
}

/// The model input side (from the view when classified, else the detection's placement).
fn v_size(f: &LiveFrame<'_>) -> u32 {
    f.view.as_ref().map_or_else(
        || f.info.map_or(0, |i| i.placed[2].max(i.placed[3])),
        |v| v.size,
    )
}

impl Sink for ViewSink {
    fn name(&self) -> &'static str {
        "view"
    }

    fn decision(&mut self, d: &Decision, frame: &FrameView<'_>) -> Result<Receipt, SinkError> {
        let info = info_of(d);
        match d.kind {
            DecisionKind::Freeze => self.frozen = Some(info.clone()),
            DecisionKind::Capture => {}
            _ => self.current = Some(info.clone()),
        }
        self.server.event(ViewEvent::Decision {
            info,
            thumb: frame.input_grey.to_vec(),
            size: frame.size,
        });
        // The decision's own frame goes out at once, whatever the rate cap says.
        self.last_publish = None;
        Ok(Receipt::None)
    }

    fn session(&mut self, r: &SessionRecord) -> Result<Receipt, SinkError> {
        let open = match r.event {
            SessionEvent::Started { .. } => Some(r.session.clone()),
            SessionEvent::Ended => None,
            // Records about earlier sessions (recovery, retention) change nothing on screen.
            SessionEvent::Interrupted | SessionEvent::Purged => return Ok(Receipt::None),
        };
        self.server.event(ViewEvent::Session {
            session: open,
            unix_ms: r.unix_ms,
        });
        Ok(Receipt::None)
    }

    fn mark(&mut self, m: &Mark) -> Result<Receipt, SinkError> {
        self.server.event(ViewEvent::Mark {
            journal_seq: m.decision_seq,
            agree: m.kind == MarkKind::Agree,
            unix_ms: m.unix_ms,
        });
        Ok(Receipt::None)
    }

    fn frame(&mut self, f: &LiveFrame<'_>) -> Result<(), SinkError> {
        if !f.frozen {
            self.frozen = None;
        }
        if f.window == 0 {
            self.current = None;
        }
        if f.frozen != self.ui_frozen {
            self.ui_frozen = f.frozen;
            self.server.event(ViewEvent::Freeze {
                frozen: f.frozen,
                unix_ms: crate::events::unix_ms(),
            });
        }
        let now = Instant::now();
        let publishes_pixels = matches!(f.outcome, Outcome::Classified | Outcome::Gated(_));
        let due = self.last_publish.is_none_or(|t| now - t >= self.interval);
        let heartbeat = self.last_publish.is_none_or(|t| now - t >= HEARTBEAT);
        let alive = matches!(f.outcome, Outcome::Idle | Outcome::Frozen) && heartbeat;
        if !(publishes_pixels && due || alive) {
            return Ok(());
        }
        self.last_publish = Some(now);
        let header = self.header(f);
        let mut p = Preview {
            header,
            ..Default::default()
        };
        if publishes_pixels {
            if let Some(info) = f.info.filter(|i| i.area.kind != ScanKind::None) {
                let [x0, y0, x1, y1] = info.crop;
                let g = &f.frame.grey;
                if x1 > x0 && y1 > y0 && x1 <= g.width() && y1 <= g.height() {
                    let (w, stride) = ((x1 - x0) as usize, g.width() as usize);
                    let mut px = Vec::with_capacity(w * (y1 - y0) as usize);
                    for y in y0..y1 {
                        let row = y as usize * stride + x0 as usize;
                        px.extend_from_slice(&g.grey()[row..row + w]);
                    }
                    p.pixels = px;
                    p.width = x1 - x0;
                    p.height = y1 - y0;
                    p.origin = [x0, y0];
                    p.mask = Some(f.detector.area_mask());
                }
            }
        }
        self.server.publish(p);
        Ok(())
    }

    fn status(&mut self, s: &StatusReport, _kind: StatusKind) -> Result<(), SinkError> {
        let p95 = s
            .latency_ms
            .get("total")
            .and_then(|v| v.get("p95"))
            .and_then(|v| v.as_f64());
        let journal = s
            .journal
            .get("health")
            .and_then(|v| v.as_str())
            .unwrap_or("disabled");
        self.server.health(serde_json::json!({
            "state": s.state,
            "fps": s.fps,
            "infer_fps": s.infer_fps,
            "p95_ms": p95,
            "journal": journal,
            "frozen": self.ui_frozen,
            "decisions": s.frames.decisions,
            "dropped": s.frames.dropped,
            "pacs": s.reports.get("pacs"),
        }));
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        let mut v = serde_json::to_value(self.server.stats()).ok()?;
        v["url"] = serde_json::json!(self.server.url());
        Some(v)
    }
}
