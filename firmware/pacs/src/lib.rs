//! Store-and-forward of exam results to the hospital PACS.
//!
//! - [`objects`]: an exam's DICOM objects (Secondary Capture per key frame, Comprehensive SR
//!   following TID 1500), every UID made once, when the object is made.
//! - [`outbox`]: the durable queue: Part-10 files plus a journal of what happened to each
//!   (queued, sent, retried, quarantined), so a crash loses nothing and sends nothing twice
//!   under another UID.
//! - [`scu`]: the DICOM network side (dicom-ul): C-ECHO, C-STORE over one association per
//!   drain, with timeouts and an explicit release.
//! - [`status`]: what a DIMSE status or a network failure means for an object (done, retry,
//!   quarantine, hold as a configuration error).
#![forbid(unsafe_code)]

pub mod codes;
pub mod objects;
pub mod outbox;
pub mod sample;
pub mod scu;
pub mod status;
pub mod tls;
pub mod uid;

pub use objects::{
    exam_objects, session_objects, Equipment, ExamInput, Kind, Made, ObjectError,
    SessionObjectsError, SourceStudy,
};
pub use outbox::{DrainConfig, DrainReport, Outbox, OutboxError};
pub use scu::{LinkOptions, PacsAddr, Timeouts};

/// Our implementation class UID (derived, fixed) and version name, in every file's meta.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.141259930412348867371434436716045451299";
/// Implementation version name (SH, 16 characters at most).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("RENALSCAN_", env!("CARGO_PKG_VERSION"));
