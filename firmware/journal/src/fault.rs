//! The I/O seam: every write, sync, truncate, create and delete the journal does goes
//! through here, so tests (and the edge runtime's own fault tests) can make the disk act
//! full or read-only without mounting anything. Production code never sets a fault; the
//! cost is one relaxed atomic load per operation.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// A fault the seam injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Writes put half their bytes down and then fail with ENOSPC (as a real full disk
    /// does); creates fail with ENOSPC. Truncation and deletion still work.
    Full,
    /// Every mutating operation fails with EROFS.
    ReadOnly,
    /// Writes succeed but fdatasync fails with EIO (a failing card).
    SyncFails,
}

/// Shared switch; clone it into the journal and flip it from the test.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<AtomicU8>);

impl FaultSwitch {
    /// A switch with no fault set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or with `None` clears) the injected fault.
    pub fn set(&self, fault: Option<Fault>) {
        let v = match fault {
            None => 0,
            Some(Fault::Full) => 1,
            Some(Fault::ReadOnly) => 2,
            Some(Fault::SyncFails) => 3,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    fn get(&self) -> Option<Fault> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(Fault::Full),
            2 => Some(Fault::ReadOnly),
            3 => Some(Fault::SyncFails),
            _ => None,
        }
    }

    fn err(kind: ErrorKind, what: &str) -> io::Error {
        io::Error::new(kind, format!("{what} (injected fault)"))
    }

    pub(crate) fn write_all_at(&self, f: &File, buf: &[u8], off: u64) -> io::Result<()> {
        match self.get() {
            Some(Fault::ReadOnly) => Err(Self::err(ErrorKind::ReadOnlyFilesystem, "read-only")),
            Some(Fault::Full) => {
                f.write_all_at(&buf[..buf.len() / 2], off)?;
                Err(Self::err(ErrorKind::StorageFull, "no space left on device"))
            }
            _ => f.write_all_at(buf, off),
        }
    }

    pub(crate) fn sync_data(&self, f: &File) -> io::Result<()> {
        match self.get() {
            Some(Fault::ReadOnly) => Err(Self::err(ErrorKind::ReadOnlyFilesystem, "read-only")),
            Some(Fault::SyncFails) => Err(Self::err(ErrorKind::Other, "input/output error")),
            _ => f.sync_data(),
        }
    }

    pub(crate) fn set_len(&self, f: &File, len: u64) -> io::Result<()> {
        match self.get() {
            Some(Fault::ReadOnly) => Err(Self::err(ErrorKind::ReadOnlyFilesystem, "read-only")),
            _ => f.set_len(len),
        }
    }

    /// Gate for creating files and directories.
    pub(crate) fn create(&self) -> io::Result<()> {
        match self.get() {
            Some(Fault::ReadOnly) => Err(Self::err(ErrorKind::ReadOnlyFilesystem, "read-only")),
            Some(Fault::Full) => Err(Self::err(ErrorKind::StorageFull, "no space left on device")),
            _ => Ok(()),
        }
    }

    pub(crate) fn remove_file(&self, p: &Path) -> io::Result<()> {
        match self.get() {
            Some(Fault::ReadOnly) => Err(Self::err(ErrorKind::ReadOnlyFilesystem, "read-only")),
            _ => std::fs::remove_file(p),
        }
    }

    /// fsync of a directory, so a created, renamed or deleted entry survives power loss.
    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self.get() {
            Some(Fault::ReadOnly) => Err(Self::err(ErrorKind::ReadOnlyFilesystem, "read-only")),
            Some(Fault::SyncFails) => Err(Self::err(ErrorKind::Other, "input/output error")),
            _ => File::open(dir)?.sync_all(),
        }
    }
}
