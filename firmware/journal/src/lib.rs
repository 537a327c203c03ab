//! Crash-safe append-only journal of screening decisions for the edge runtime.
//!
//! [`Journal`] is the durable log: `append` returns only after the record is written and
//! fdatasync'ed, recovery at open cuts a torn tail and reports damage, segments rotate and
//! old ones are retired by the configured retention. [`ResilientJournal`] wraps it for the
//! runtime: when the disk is full or read-only it holds records in a bounded queue, raises
//! a [`Health`] alarm and flushes in order once the disk works again.
//!
//! On-disk format, guarantees and figures: `firmware/journal/README.md`.

mod fault;
mod format;
mod journal;
mod resilient;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use fault::{Fault, FaultSwitch};
pub use journal::{Journal, Record, Records};
pub use resilient::{FaultKind, Health, Outcome, ResilientJournal};

/// Largest payload the on-disk format can hold (64 MiB).
pub const FORMAT_MAX_PAYLOAD: usize = format::FORMAT_MAX_PAYLOAD;

/// The oldest record retention must keep: records from this sequence number on are never
/// deleted by the size and count limits, so a record that has not left the device (an exam
/// not yet exported or forwarded) outlives them. Shared: the owner of that knowledge (the
/// runtime) moves it while the journal writes; clones are the same pin.
#[derive(Debug, Clone, Default)]
pub struct KeepFrom(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl KeepFrom {
    /// Keeps every record from `seq` on (`None`: nothing pinned).
    pub fn set(&self, seq: Option<u64>) {
        // Stored as seq + 1 so that 0 means "nothing pinned".
        self.0.store(
            seq.map_or(0, |s| s.saturating_add(1)),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Lowers the pin to `seq` if it is not already at or below it.
    pub fn lower_to(&self, seq: u64) {
        if self.get().is_none_or(|k| seq < k) {
            self.set(Some(seq));
        }
    }

    /// The pinned sequence number, if any.
    pub fn get(&self) -> Option<u64> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            v => Some(v - 1),
        }
    }
}

impl PartialEq for KeepFrom {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for KeepFrom {}

/// Where the journal lives and how much of it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Directory holding the segment files; created if missing.
    pub dir: PathBuf,
    /// A new segment is started before a record that would take the current one past
    /// this size (a single batch is never split, so it is a soft limit).
    pub segment_bytes: u64,
    /// Oldest segments are deleted while all segments together exceed this.
    pub max_total_bytes: Option<u64>,
    /// Oldest segments are deleted while there are more than this many.
    pub max_segments: Option<usize>,
    /// ... but never one holding a record at or after this pin (see [`KeepFrom`]).
    pub keep_from: KeepFrom,
    /// [`ResilientJournal`]: most records held in memory while the disk fails.
    pub hold_capacity: usize,
    /// [`ResilientJournal`]: most payload bytes held in memory while the disk fails.
    pub hold_max_bytes: usize,
    /// Largest payload `append` accepts.
    pub max_record_bytes: usize,
    /// [`ResilientJournal`]: while degraded, `record` retries the disk at most this often.
    pub retry_interval: Duration,
}

impl JournalConfig {
    /// Defaults sized for a cart: 4 MiB segments, 256 MiB / 64 segments kept, 4096 records
    /// or 4 MiB held while the disk fails, 1 MiB records, a retry every 2 s.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 4 << 20,
            max_total_bytes: Some(256 << 20),
            max_segments: Some(64),
            keep_from: KeepFrom::default(),
            hold_capacity: 4096,
            hold_max_bytes: 4 << 20,
            max_record_bytes: 1 << 20,
            retry_interval: Duration::from_secs(2),
        }
    }

    fn validate(&self) -> Result<(), JournalError> {
        let bad = |why: String| Err(JournalError::Config(why));
        if self.segment_bytes < 64 {
            return bad(format!("segment_bytes {} is below 64", self.segment_bytes));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > FORMAT_MAX_PAYLOAD {
            return bad(format!(
                "max_record_bytes {} must be 1..={FORMAT_MAX_PAYLOAD}",
                self.max_record_bytes
            ));
        }
        if self.max_segments == Some(0) {
            return bad("max_segments must be at least 1".into());
        }
        Ok(())
    }
}

/// What recovery found when the journal was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segment files found.
    pub segments: usize,
    /// Valid records found across all segments.
    pub records: u64,
    /// Seq of the last valid record, if any.
    pub last_seq: Option<u64>,
    /// Seq the next append gets.
    pub next_seq: u64,
    /// Bytes of torn tail cut from the last segment (a write the crash interrupted; it
    /// was never acknowledged).
    pub torn_bytes_cut: u64,
    /// Damage found and left on disk (readers skip it and report it).
    pub damage: Vec<Damage>,
}

/// Bytes that do not form a valid record but are followed by valid ones, or a jump in the
/// sequence. Never truncated: the records after it stay readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Segment file.
    pub path: PathBuf,
    /// Byte offset of the damage in that file.
    pub offset: u64,
    /// Damaged bytes skipped (0 for a pure sequence gap).
    pub bytes: u64,
    /// Sequence numbers missing across the damage.
    pub missing_records: u64,
}

/// Errors of the journal. Disk faults come first and carry the directory and the fix.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// ENOSPC or EDQUOT.
    #[error("journal directory {dir} is full: free space on that filesystem, or lower journal.max_total_bytes / set journal.dir elsewhere ({source})")]
    Full {
        /// The journal directory.
        dir: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// EROFS, EACCES or EPERM.
    #[error("journal directory {dir} is read-only or not writable: remount it rw, fix its permissions, or set journal.dir ({source})")]
    ReadOnly {
        /// The journal directory.
        dir: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Any other I/O failure (EIO from a failing card, for instance).
    #[error("journal I/O error while {op} {path}: {source}; check the storage device (dmesg) or set journal.dir")]
    Io {
        /// What the journal was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another process holds the journal.
    #[error("journal directory {dir} is in use by another process (lock {dir}/LOCK): stop the other renalscan-edge or set journal.dir")]
    Locked {
        /// The journal directory.
        dir: PathBuf,
    },
    /// A payload over `max_record_bytes`.
    #[error("record of {len} bytes is over journal.max_record_bytes ({max})")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// Damaged bytes met by a reader (recovery reports these in [`Recovery::damage`]).
    #[error("journal segment {path} is damaged at byte {offset} ({bytes} bytes, {missing_records} records missing); later records are still read")]
    Damaged {
        /// Segment file.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Damaged bytes.
        bytes: u64,
        /// Sequence numbers missing across the damage.
        missing_records: u64,
    },
    /// A configuration value out of range.
    #[error("invalid journal configuration: {0}")]
    Config(String),
}

impl JournalError {
    /// Classifies an I/O error: full and read-only get their own variants because the
    /// runtime alarms on them and the operator's fix differs.
    pub(crate) fn io(
        op: &'static str,
        dir: &std::path::Path,
        path: &std::path::Path,
        e: io::Error,
    ) -> Self {
        use io::ErrorKind::*;
        match e.kind() {
            StorageFull | QuotaExceeded => Self::Full {
                dir: dir.to_path_buf(),
                source: e,
            },
            ReadOnlyFilesystem | PermissionDenied => Self::ReadOnly {
                dir: dir.to_path_buf(),
                source: e,
            },
            _ => Self::Io {
                op,
                path: path.to_path_buf(),
                source: e,
            },
        }
    }

    /// True for the faults a [`ResilientJournal`] rides out by holding records.
    pub fn is_disk_fault(&self) -> bool {
        matches!(
            self,
            Self::Full { .. } | Self::ReadOnly { .. } | Self::Io { .. }
        )
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::JournalConfig;
    use std::time::Duration;

    /// A temporary directory and a config with small limits, for tests.
    pub fn cfg() -> (tempfile::TempDir, JournalConfig) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cfg = JournalConfig::new(tmp.path().join("journal"));
        cfg.retry_interval = Duration::ZERO;
        (tmp, cfg)
    }
}
