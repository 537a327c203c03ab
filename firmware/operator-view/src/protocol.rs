//! What travels between the runtime, the server and the page.
//!
//! Frames go to the page as one binary WebSocket message: [`FRAME_MAGIC`], the header length
//! (u32, little endian), the [`FrameHeader`] as JSON, then the JPEG. Header and pixels travel
//! together so the label on screen always belongs to the pixels under it. Everything else is
//! JSON text: `hello`, `event` (numbered, replayed after a reconnect), `health`, `error`.

use serde::{Deserialize, Serialize};
use usimage::AreaMask;

/// First four bytes of a frame message (format version 1).
pub const FRAME_MAGIC: &[u8; 4] = b"RSF1";

/// A frame the runtime publishes: the crop box of the scan area as captured, not yet masked
/// or scaled (that happens on the view's encoder thread). Frames without an image (probe
/// lifted, idle) carry only the header.
#[derive(Debug, Clone, Default)]
pub struct Preview {
    /// Grey pixels of the crop box, row-major, `width x height`.
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// Where the crop box starts in the captured frame (for the mask).
    pub origin: [u32; 2],
    /// The scan area: pixels outside it (names, dates burned into the screen) are blacked
    /// out before anything leaves the device.
    pub mask: Option<AreaMask>,
    /// What the page shows with these pixels.
    pub header: FrameHeader,
}

/// The label of one preview frame.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FrameHeader {
    /// The runtime's frame index.
    pub frame: u64,
    /// When the frame was published, Unix ms (the page measures latency from it).
    pub sent_ms: u64,
    /// Why the frame was not screened (`probe_lifted`, `frozen`, `no_scan_area`,
    /// `no_anatomy`, `not_a_kidney`), or `None`.
    pub gate: Option<String>,
    /// This frame's own p(abnormal), when it was classified.
    pub p_abnormal: Option<f32>,
    /// The operating threshold on p(abnormal).
    pub threshold: f32,
    /// The decision standing for this frame: `None` while gated or before the first one.
    pub decision: Option<DecisionInfo>,
    /// The operator froze the view: this is the frozen frame.
    pub frozen: bool,
    /// Class-activation map of p(abnormal) over the model input (row-major `cam_w x
    /// cam_h`, scaled to 0..1), when this frame was classified.
    pub cam: Option<Vec<f32>>,
    pub cam_w: u32,
    pub cam_h: u32,
    /// Model input side N and where the crop sits in it `[x0, y0, x1, y1]` (the map covers
    /// the N x N input).
    pub input_size: u32,
    pub placed: [u32; 4],
    /// JPEG size (0 without an image: the page keeps the previous picture).
    pub width: u32,
    pub height: u32,
    /// The scan area on a coarse grid over the JPEG (`mask_w x mask_h` bits, row-major,
    /// most significant bit first, base64): the overlay is drawn inside it only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    #[serde(default)]
    pub mask_w: u32,
    #[serde(default)]
    pub mask_h: u32,
}

/// A decision as the page shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DecisionInfo {
    /// The runtime's decision number.
    pub seq: u64,
    /// Its journal sequence number (marks refer to it); `None` when not journalled.
    pub journal_seq: Option<u64>,
    /// `first`, `change`, `update`, `capture`, `freeze`.
    pub kind: String,
    pub abnormal: bool,
    /// Most likely class label.
    pub class: String,
    pub p_abnormal: f32,
    pub threshold: f32,
    /// Frames aggregated.
    pub frames: usize,
    pub frame_index: u64,
    pub unix_ms: u64,
    pub low_quality: bool,
}

/// Something for the timeline and the health strip.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewEvent {
    /// A decision, with the grey model input of its frame for the thumbnail.
    Decision {
        info: DecisionInfo,
        /// `size x size` grey pixels (the de-identified model input).
        thumb: Vec<u8>,
        size: u32,
    },
    /// A clinician's mark was journalled.
    Mark {
        journal_seq: u64,
        agree: bool,
        unix_ms: u64,
    },
    /// A control was refused by the runtime (the page shows why).
    Refused { action: String, reason: String },
    /// The operator froze or unfroze.
    Freeze { frozen: bool, unix_ms: u64 },
    /// An exam was opened (`Some(id)`) or closed (`None`).
    Session {
        session: Option<String>,
        unix_ms: u64,
    },
}

/// What the operator typed or scanned when opening an exam. Checked by the runtime (length,
/// control characters); never put in a URL, a title or a log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExamContext {
    #[serde(default)]
    pub patient_id: Option<String>,
    #[serde(default)]
    pub accession: Option<String>,
    #[serde(default)]
    pub operator: Option<String>,
    /// `left` or `right`.
    #[serde(default)]
    pub side: Option<String>,
}

/// What the operator asks of the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Freeze the view: the next usable frame is classified once and held.
    Freeze,
    /// Back to live screening.
    Unfreeze,
    /// Classify the current frame once and keep it (snapshot).
    Capture,
    /// The clinician's judgement of the decision journalled as `journal_seq`.
    Mark { journal_seq: u64, agree: bool },
    /// Open an exam (the open one ends first).
    StartSession(ExamContext),
    /// Close the open exam.
    EndSession,
}

impl Control {
    /// Name for logs and refusals.
    pub fn name(&self) -> &'static str {
        match self {
            Control::Freeze => "freeze",
            Control::Unfreeze => "unfreeze",
            Control::Capture => "capture",
            Control::Mark { agree: true, .. } => "agree",
            Control::Mark { agree: false, .. } => "disagree",
            Control::StartSession(_) => "start exam",
            Control::EndSession => "end exam",
        }
    }
}

/// The model and device the page names in its health strip.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Identity {
    pub model: String,
    pub version: String,
    pub signer: String,
    /// The form the loader picked and why (int8 integer or float, trust).
    pub form: String,
    pub bundle_sha256: String,
    pub threshold: f32,
    pub labels: Vec<String>,
}

/// A message from the page.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ClientMessage {
    /// Replay events after `since` (0: all kept).
    Resume { since: u64 },
    /// `freeze`, `unfreeze`, `capture`.
    Control { action: String },
    /// Agree or disagree with a journalled decision.
    Mark { journal_seq: u64, agree: bool },
    /// `start` (with the exam's context) or `end`.
    Session {
        action: String,
        #[serde(default)]
        context: Option<ExamContext>,
    },
    /// The page measured this decision-to-screen latency (ms).
    Latency { ms: f64 },
}

/// The frame message: magic, header length, header JSON, JPEG.
pub(crate) fn frame_message(header: &FrameHeader, jpeg: &[u8]) -> Vec<u8> {
    // Serialising plain fields cannot fail.
    let h = serde_json::to_vec(header).unwrap_or_default();
    let mut m = Vec::with_capacity(8 + h.len() + jpeg.len());
    m.extend_from_slice(FRAME_MAGIC);
    m.extend_from_slice(&(h.len() as u32).to_le_bytes());
    m.extend_from_slice(&h);
    m.extend_from_slice(jpeg);
    m
}

/// Splits a frame message (tests, bench clients).
pub fn parse_frame_message(m: &[u8]) -> Option<(FrameHeader, &[u8])> {
    if m.len() < 8 || &m[..4] != FRAME_MAGIC {
        return None;
    }
    let n = u32::from_le_bytes(m[4..8].try_into().ok()?) as usize;
    let h = m.get(8..8 + n)?;
    Some((serde_json::from_slice(h).ok()?, &m[8 + n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_messages_round_trip() {
        let h = FrameHeader {
            frame: 7,
            gate: Some("probe_lifted".into()),
            threshold: 0.3,
            ..Default::default()
        };
        let m = frame_message(&h, b"\xff\xd8jpeg");
        let (back, jpeg) = parse_frame_message(&m).unwrap();
        assert_eq!(back, h);
        assert_eq!(jpeg, b"\xff\xd8jpeg");
        assert!(parse_frame_message(b"RSF1\xff\xff\xff\xff{}").is_none());
        assert!(parse_frame_message(b"XXXX").is_none());
    }

    #[test]
    fn client_messages_are_strict() {
        let m: ClientMessage = serde_json::from_str(r#"{"type":"resume","since":4}"#).unwrap();
        assert!(matches!(m, ClientMessage::Resume { since: 4 }));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"reboot"}"#).is_err());
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"resume","since":1,"x":2}"#).is_err()
        );
    }
}
