//! Messages carried by the link, in both directions.
//!
//! One enum for both directions keeps a single tag space on the wire: a loopback or a
//! crossed cable shows up as "unexpected message" rather than as garbage. Variants are only
//! ever appended (postcard encodes the variant index), so adding a message is a compatible
//! change; changing a field is not and bumps [`crate::PROTOCOL_VERSION`].
//!
//! Protocol 2 appended the exam and outbox messages (tags 9..=12). A frame's version byte says which
//! messages it may carry ([`Message::min_version`]); each side frames at the newest version
//! both speak, so a version-1 cart keeps working with a version-2 device and never sees a
//! message it cannot decode.

use serde::{Deserialize, Serialize};

/// Longest device id in a [`Hello`].
pub const DEVICE_ID_LEN: usize = 24;
/// Longest model id in a [`Hello`].
pub const MODEL_ID_LEN: usize = 24;
/// Longest model version in a [`Hello`].
pub const MODEL_VERSION_LEN: usize = 16;

/// Everything that travels over the link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    // ---- device -> cart (tags 0..=3)
    /// Sent at start-up and until the cart is heard; announces versions and identity.
    Hello(Hello),
    /// One classification; re-sent until the cart acknowledges it.
    Result(ResultMsg),
    /// Operating state, sent when it changes and periodically.
    Status(Status),
    /// Keeps the link alive when there is nothing else to say.
    Heartbeat(Heartbeat),
    // ---- cart -> device (tags 4..=7)
    /// Begin screening (continuous classification).
    StartScreening(CommandId),
    /// Stop screening.
    StopScreening(CommandId),
    /// Classify the current frame now.
    Capture(CommandId),
    /// Acknowledge one result.
    Ack(Ack),
    // ---- device -> cart, appended (tag 8)
    /// The operator view's pairing codes, for the cart's display (LAN access only).
    Pairing(Pairing),
    // ---- cart -> device, protocol 2 (tags 9..=10)
    /// Open an exam with this context (an open one is ended first).
    StartExam(StartExam),
    /// End the open exam.
    EndExam(CommandId),
    // ---- device -> cart, protocol 2 (tags 11..=12)
    /// The open exam, if any: sent when it changes and after every Hello.
    Exam(ExamState),
    /// Results waiting for the hospital PACS: sent when it changes and after every Hello.
    Outbox(OutboxState),
}

impl Message {
    /// True for messages the device sends (and the cart receives).
    pub fn is_from_device(&self) -> bool {
        matches!(
            self,
            Message::Hello(_)
                | Message::Result(_)
                | Message::Status(_)
                | Message::Heartbeat(_)
                | Message::Pairing(_)
                | Message::Exam(_)
                | Message::Outbox(_)
        )
    }

    /// The oldest protocol version whose frames may carry this message.
    pub fn min_version(&self) -> u8 {
        match self {
            Message::StartExam(_) | Message::EndExam(_) | Message::Exam(_) | Message::Outbox(_) => {
                2
            }
            _ => 1,
        }
    }
}

/// Identifies a cart command so that re-sent copies run once. The device echoes the last
/// one it executed in [`Status::last_command`] and [`Heartbeat::last_command`]; the cart
/// re-sends a command until it sees its id echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandId(pub u16);

/// Device announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Highest protocol version the device speaks (the one in every frame header).
    pub protocol_version: u8,
    /// Lowest protocol version the device could fall back to.
    pub min_protocol_version: u8,
    /// Random per boot: results of an earlier boot are not confused with this one's.
    pub session: u32,
    pub device_id: heapless::String<DEVICE_ID_LEN>,
    pub model_id: heapless::String<MODEL_ID_LEN>,
    pub model_version: heapless::String<MODEL_VERSION_LEN>,
}

/// Most likely finding: the project's screening classes ([`contract::Class`]); their order
/// is part of the wire format (postcard encodes the variant index).
pub use contract::Class;

/// Which kidney an exam is about ([`contract::Side`]); variant order is wire format.
pub use contract::Side;

/// Bits of [`ResultMsg::flags`].
pub mod flags {
    /// p(abnormal) is at or above the bundle's operating threshold.
    pub const ABNORMAL: u8 = 1 << 0;
    /// Answer to a [`crate::Message::Capture`] rather than continuous screening.
    pub const CAPTURE: u8 = 1 << 1;
    /// Image quality gate was marginal (blank, frozen, small scan area).
    pub const LOW_QUALITY: u8 = 1 << 2;
    /// Aggregated over several frames rather than a single one.
    pub const AGGREGATED: u8 = 1 << 3;
    /// Could not be written to the journal.
    pub const NOT_JOURNALED: u8 = 1 << 4;
}

/// One classification.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResultMsg {
    /// Copied from [`Hello::session`]; with `seq`, the identity of the result.
    pub session: u32,
    /// Increases by one per result within a session (from 0; sessions are shorter than
    /// the 2^32 results it would take to wrap).
    pub seq: u32,
    /// Device clock, milliseconds (Unix epoch when the device knows it, else uptime).
    pub timestamp_ms: u64,
    pub p_abnormal: f32,
    pub class: Class,
    /// Probability of `class`.
    pub confidence: f32,
    /// See [`flags`].
    pub flags: u8,
}

/// What the device is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Idle,
    Screening,
    /// No usable image (probe unplugged, frozen, no scan area).
    NoSignal,
    Fault,
}

/// Health of the device's crash-safe journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalHealth {
    Ok,
    /// Writable but nearly full or slow.
    Degraded,
    Failed,
    Disabled,
}

/// Operating status.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub fps: f32,
    /// Frame-to-result latency, milliseconds.
    pub latency_ms: f32,
    /// Frames the pipeline skipped (cumulative).
    pub frames_dropped: u32,
    /// Results dropped from the link's buffer before they were acknowledged (cumulative;
    /// some may still have reached the cart).
    pub results_dropped: u32,
    /// Results waiting for an acknowledgement.
    pub results_pending: u8,
    pub journal: JournalHealth,
    /// Last cart command executed, if any.
    pub last_command: Option<CommandId>,
}

/// Keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub session: u32,
    pub uptime_ms: u64,
    /// Last cart command executed, if any.
    pub last_command: Option<CommandId>,
}

/// Longest pairing code in a [`Pairing`].
pub const PAIRING_CODE_LEN: usize = 12;

/// The codes a tablet enters to pair with the device's operator view over the LAN: shown on
/// the cart's display so nobody needs the device's console. Changes at every start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairing {
    /// Pairs as an operator (acts).
    pub operator: heapless::String<PAIRING_CODE_LEN>,
    /// Pairs as a viewer (sees).
    pub viewer: heapless::String<PAIRING_CODE_LEN>,
}

/// Longest patient identifier in an [`ExamContext`] (DICOM's Patient ID, LO, holds 64).
pub const PATIENT_ID_LEN: usize = 64;
/// Longest accession number in an [`ExamContext`] (DICOM's Accession Number, SH, holds 16).
pub const ACCESSION_LEN: usize = 16;
/// Longest operator identifier in an [`ExamContext`].
pub const OPERATOR_LEN: usize = 16;
/// Longest exam id in an [`ExamState`].
pub const EXAM_ID_LEN: usize = 32;

/// What the cart's keypad or barcode scanner entered for an exam; empty strings are "not
/// entered". Its `Debug` leaves the identifiers out, so no log line can carry them.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExamContext {
    pub patient_id: heapless::String<PATIENT_ID_LEN>,
    pub accession: heapless::String<ACCESSION_LEN>,
    pub operator: heapless::String<OPERATOR_LEN>,
    pub side: Option<Side>,
}

/// A field of an [`ExamContext`] is longer than the wire carries. Refused rather than
/// truncated: a shortened patient identifier names somebody else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldTooLong {
    pub field: &'static str,
    pub max: usize,
}

impl core::fmt::Display for FieldTooLong {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} is longer than {} bytes", self.field, self.max)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FieldTooLong {}

impl ExamContext {
    /// Builds a context from entered text, refusing (not truncating) what does not fit.
    pub fn new(
        patient_id: &str,
        accession: &str,
        operator: &str,
        side: Option<Side>,
    ) -> Result<Self, FieldTooLong> {
        fn field<const L: usize>(
            v: &str,
            name: &'static str,
        ) -> Result<heapless::String<L>, FieldTooLong> {
            heapless::String::try_from(v).map_err(|_| FieldTooLong {
                field: name,
                max: L,
            })
        }
        Ok(Self {
            patient_id: field(patient_id, "patient id")?,
            accession: field(accession, "accession number")?,
            operator: field(operator, "operator")?,
            side,
        })
    }
}

impl core::fmt::Debug for ExamContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let set = |s: &str| if s.is_empty() { "-" } else { "<entered>" };
        f.debug_struct("ExamContext")
            .field("patient_id", &set(&self.patient_id))
            .field("accession", &set(&self.accession))
            .field("operator", &set(&self.operator))
            .field("side", &self.side)
            .finish()
    }
}

/// Cart command opening an exam.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartExam {
    pub id: CommandId,
    pub context: ExamContext,
}

/// The device's open exam. Carries the exam's id only, never the patient's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExamState {
    /// `None` when no exam is open.
    pub open: Option<heapless::String<EXAM_ID_LEN>>,
}

/// The device's PACS outbox, for the cart's display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxState {
    /// Objects waiting to be sent (saturating).
    pub pending: u16,
    /// Objects the PACS refused for good: someone must look (saturating).
    pub quarantined: u16,
    /// Nothing can be sent until the PACS configuration is fixed.
    pub held: bool,
}

/// Acknowledges the result `(session, seq)`. Selective rather than cumulative, so a lost
/// or reordered ack never acknowledges a result the cart has not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub session: u32,
    pub seq: u32,
}

/// A cart command as the device application sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Command {
    StartScreening,
    StopScreening,
    Capture,
    /// Protocol 2. Serialised (for the simulator's event log) without the identifiers.
    StartExam(#[serde(serialize_with = "redacted")] ExamContext),
    /// Protocol 2.
    EndExam,
}

fn redacted<S: serde::Serializer>(_: &ExamContext, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<context>")
}

impl Command {
    /// The wire message carrying this command.
    pub fn to_message(&self, id: CommandId) -> Message {
        match self {
            Command::StartScreening => Message::StartScreening(id),
            Command::StopScreening => Message::StopScreening(id),
            Command::Capture => Message::Capture(id),
            Command::StartExam(context) => Message::StartExam(StartExam {
                id,
                context: context.clone(),
            }),
            Command::EndExam => Message::EndExam(id),
        }
    }

    /// The command in a cart message, if it is one.
    pub fn from_message(msg: &Message) -> Option<(Command, CommandId)> {
        match msg {
            Message::StartScreening(id) => Some((Command::StartScreening, *id)),
            Message::StopScreening(id) => Some((Command::StopScreening, *id)),
            Message::Capture(id) => Some((Command::Capture, *id)),
            Message::StartExam(s) => Some((Command::StartExam(s.context.clone()), s.id)),
            Message::EndExam(id) => Some((Command::EndExam, *id)),
            _ => None,
        }
    }

    /// The oldest protocol version that carries this command.
    pub fn min_version(&self) -> u8 {
        self.to_message(CommandId(0)).min_version()
    }
}
