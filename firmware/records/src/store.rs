//! What a session keeps on the device besides the journal: the context typed or scanned
//! (patient identifier, accession, operator, side), the key frames with their heatmaps,
//! and where it was exported. One folder per session, named by the session id only (never
//! by anything about the patient), so retention deletes a child's data by deleting it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use contract::events::{SessionContext, SourceStudy};
use serde::{Deserialize, Serialize};

use crate::session::valid_id;

/// Why the store failed; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("session id {0:?} is not one renalscan makes")]
    BadId(String),
    #[error("session store {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One export of a session, as recorded beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportMark {
    pub unix_ms: u64,
    /// The export folder (a path on removable media; holds no patient data).
    pub target: String,
    pub deidentified: bool,
    /// sha256 of the session's report.pdf as exported.
    pub report_sha256: String,
}

/// The session folders under one root.
#[derive(Debug, Clone)]
pub struct SessionStore {
    root: PathBuf,
}

/// Writes `bytes` to `path` through a temporary file, fsynced and renamed: a crash leaves
/// the old file or the new one, never half of either.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = fs::File::create(&tmp)?;
    let r = f.write_all(bytes).and_then(|_| f.sync_all());
    drop(f);
    if let Err(e) = r.and_then(|_| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl SessionStore {
    /// The store at `root`, created if missing.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(root).map_err(io(root))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// A store that may not exist (export reads a copy of the journal without one).
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !valid_id(id) {
            return Err(StoreError::BadId(id.to_string()));
        }
        Ok(self.root.join(id))
    }

    /// Starts a session's folder with its context (written and synced before the session's
    /// first decision).
    pub fn begin(&self, id: &str, context: &SessionContext) -> Result<(), StoreError> {
        let dir = self.dir(id)?;
        fs::create_dir_all(dir.join("frames")).map_err(io(&dir))?;
        let p = dir.join("context.json");
        let bytes = serde_json::to_vec_pretty(context).unwrap_or_default();
        write_atomic(&p, &bytes).map_err(io(&p))
    }

    /// The context entered for a session (`None`: none kept, or purged).
    pub fn context(&self, id: &str) -> Result<Option<SessionContext>, StoreError> {
        self.read_json(id, "context.json")
    }

    /// A JSON file of the session's folder (`None`: not there).
    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let p = self.dir(id)?.join(name);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    path: p,
                    why: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Keeps the patient and study attributes of the replayed DICOM study an exam screened
    /// (beside the context: the same sensitivity, the same retention).
    pub fn write_source(&self, id: &str, source: &SourceStudy) -> Result<(), StoreError> {
        let dir = self.dir(id)?;
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let p = dir.join("source.json");
        let bytes = serde_json::to_vec_pretty(source).unwrap_or_default();
        write_atomic(&p, &bytes).map_err(io(&p))
    }

    /// The source study's attributes, when the exam screened a replayed DICOM study.
    pub fn source(&self, id: &str) -> Result<Option<SourceStudy>, StoreError> {
        self.read_json(id, "source.json")
    }

    /// Keeps a key frame (PNG) of the decision journalled as `seq`.
    pub fn write_frame(&self, id: &str, seq: u64, png: &[u8]) -> Result<PathBuf, StoreError> {
        let dir = self.dir(id)?.join("frames");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let p = dir.join(format!("{seq:010}.png"));
        write_atomic(&p, png).map_err(io(&p))?;
        Ok(p)
    }

    /// Key frames of a session by journal sequence number, in order.
    pub fn frames(&self, id: &str) -> Result<Vec<(u64, PathBuf)>, StoreError> {
        let dir = self.dir(id)?.join("frames");
        let rd = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut v: Vec<(u64, PathBuf)> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let seq = name.strip_suffix(".png")?.parse().ok()?;
                Some((seq, e.path()))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Notes that the PACS accepted every object of the session (`pacs`: its address).
    pub fn record_forwarded(&self, id: &str, pacs: &str, unix_ms: u64) -> Result<(), StoreError> {
        let dir = self.dir(id)?;
        if !dir.is_dir() {
            // Purged already (an operator's purge): nothing left to keep.
            return Ok(());
        }
        let p = dir.join("forwarded.json");
        let body = serde_json::json!({"pacs": pacs, "unix_ms": unix_ms});
        write_atomic(&p, body.to_string().as_bytes()).map_err(io(&p))
    }

    /// Whether the session's record has left the cart: exported at least once, or accepted
    /// by the PACS. Retention deletes only such sessions.
    pub fn released(&self, id: &str) -> bool {
        let Ok(dir) = self.dir(id) else {
            return false;
        };
        dir.join("forwarded.json").is_file() || self.exports(id).is_ok_and(|e| !e.is_empty())
    }

    /// Notes an export beside the session.
    pub fn record_export(&self, id: &str, m: &ExportMark) -> Result<(), StoreError> {
        let dir = self.dir(id)?;
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut all = self.exports(id)?;
        all.push(m.clone());
        let p = dir.join("exports.json");
        write_atomic(&p, &serde_json::to_vec_pretty(&all).unwrap_or_default()).map_err(io(&p))
    }

    /// Exports recorded for a session.
    pub fn exports(&self, id: &str) -> Result<Vec<ExportMark>, StoreError> {
        let p = self.dir(id)?.join("exports.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                path: p,
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Deletes a session's folder (context, frames, export marks).
    pub fn purge(&self, id: &str) -> Result<bool, StoreError> {
        let dir = self.dir(id)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&dir)(e)),
        }
    }

    /// Session folders present.
    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_id(n))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::events::Side;

    #[test]
    fn context_frames_and_exports_round_trip_and_purge() {
        let tmp = tempfile::tempdir().unwrap();
        let s = SessionStore::open(&tmp.path().join("sessions")).unwrap();
        let id = "s-20261204T101500-ab12";
        let ctx = SessionContext {
            patient_id: Some("P-0042".into()),
            accession: Some("ACC7".into()),
            operator: None,
            side: Some(Side::Left),
        };
        s.begin(id, &ctx).unwrap();
        assert_eq!(s.context(id).unwrap(), Some(ctx));
        s.write_frame(id, 12, b"png12").unwrap();
        s.write_frame(id, 3, b"png3").unwrap();
        let f = s.frames(id).unwrap();
        assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), [3, 12]);
        let m = ExportMark {
            unix_ms: 5,
            target: "/media/usb".into(),
            deidentified: false,
            report_sha256: "ab".into(),
        };
        s.record_export(id, &m).unwrap();
        assert_eq!(s.exports(id).unwrap(), [m]);
        assert_eq!(s.ids(), [id]);
        // Nothing about the patient in any file name.
        for e in walk(tmp.path()) {
            assert!(!e.contains("P-0042") && !e.contains("ACC7"), "{e}");
        }
        assert!(s.purge(id).unwrap());
        assert_eq!(s.context(id).unwrap(), None);
        assert!(!s.purge(id).unwrap());
        assert!(matches!(
            s.begin("../x", &SessionContext::default()),
            Err(StoreError::BadId(_))
        ));
    }

    fn walk(p: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(p).unwrap().flatten() {
            out.push(e.path().display().to_string());
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
        out
    }
}
