//! Sessions to a folder that leaves the cart (a USB stick): per session `report.pdf`,
//! `results.csv` (one row per decision), `session.json` (the same, complete) and the key
//! frames, plus `SHA256SUMS` over the whole export.
//!
//! Atomic: each session is built in a temporary folder and renamed into place, the sums are
//! replaced the same way; a kill leaves at most a `.tmp-*` folder that the next run removes.
//! Idempotent: the files depend only on the journal and the store (no export time inside),
//! so a rerun finds them identical and leaves them alone. A target without the space, or
//! read-only, is refused before anything is written, naming the target and the space needed.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use contract::events::{MarkKind, SessionContext};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::pdf::{self, KeyFrame, Report};
use crate::session::{Session, SessionState};
use crate::store::{ExportMark, SessionStore};
use crate::time::utc;

/// Kept free on the target besides the export itself (file system overhead).
const SLACK: u64 = 256 * 1024;

/// Why an export did not happen; nothing half-written is left behind.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("nothing to export: {0}")]
    Nothing(String),
    #[error(
        "export target {path} has {free} bytes free; this export needs {needed} bytes: use a \
         larger or emptier stick, or export fewer sessions (--session, --since)"
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error("export target {0} is read-only: unlock the stick (write-protect switch) or choose another folder")]
    ReadOnly(PathBuf),
    #[error("export target {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("report of session {session}: {source}")]
    Pdf {
        session: String,
        source: pdf::PdfError,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn io_err(path: &Path, e: std::io::Error) -> ExportError {
    match e.raw_os_error() {
        Some(libc::EROFS) => ExportError::ReadOnly(path.to_path_buf()),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ExportError::NoSpace {
            path: path.to_path_buf(),
            needed: 0,
            free: free_bytes(path).unwrap_or(0),
        },
        _ => ExportError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Leave out patient identifier, accession number and operator.
    pub deidentify: bool,
    /// Who exports (`renalscan-edge 0.1.0`), printed on the report.
    pub runtime: String,
}

/// What an export did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportSummary {
    pub target: PathBuf,
    /// Sessions written (new or changed since the last export).
    pub written: Vec<String>,
    /// Sessions already there, identical.
    pub unchanged: Vec<String>,
    /// Bytes of the sessions exported.
    pub bytes: u64,
}

/// Free bytes for an unprivileged writer on the file system holding `path`.
#[allow(unsafe_code)] // statvfs: std has no free-space query.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

fn mark_name(k: MarkKind) -> &'static str {
    match k {
        MarkKind::Agree => "agree",
        MarkKind::Disagree => "disagree",
    }
}

/// The files of one session's folder, by relative path.
pub fn session_files(
    s: &Session,
    store: &SessionStore,
    opts: &ExportOptions,
) -> Result<BTreeMap<String, Vec<u8>>, ExportError> {
    let mut files = BTreeMap::new();
    let stored = if s.state == SessionState::Purged {
        Vec::new()
    } else {
        store.frames(&s.id).unwrap_or_default()
    };
    let mut images: BTreeMap<u64, String> = BTreeMap::new();
    for (seq, path) in stored {
        if !s.decisions.iter().any(|(q, _)| *q == seq) {
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| ExportError::Io {
            path: path.clone(),
            source: e,
        })?;
        let name = format!("images/{seq:010}.png");
        images.insert(seq, name.clone());
        files.insert(name, bytes);
    }
    let full_context: Option<SessionContext> = if s.state == SessionState::Purged {
        None
    } else {
        store.context(&s.id)?
    };
    let context = full_context.as_ref().map(|c| {
        if opts.deidentify {
            SessionContext {
                patient_id: None,
                accession: None,
                operator: None,
                side: c.side,
            }
        } else {
            c.clone()
        }
    });

    // results.csv
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "session",
        "journal_seq",
        "time_utc",
        "kind",
        "result",
        "class",
        "p_abnormal",
        "threshold",
        "frames",
        "low_quality",
        "clinician_mark",
        "image",
    ];
    let csv_err = |e: csv::Error| ExportError::Io {
        path: PathBuf::from("results.csv"),
        source: std::io::Error::other(e.to_string()),
    };
    w.write_record(header).map_err(csv_err)?;
    for (seq, d) in &s.decisions {
        let kind = serde_json::to_value(d.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        w.write_record([
            s.id.clone(),
            seq.to_string(),
            utc(d.unix_ms),
            kind,
            if d.abnormal { "abnormal" } else { "normal" }.to_string(),
            d.class.clone(),
            format!("{:.4}", d.p_abnormal),
            format!("{:.4}", d.threshold),
            d.frames.to_string(),
            d.low_quality.to_string(),
            s.mark_of(*seq)
                .map_or(String::new(), |m| mark_name(m.kind).to_string()),
            images.get(seq).cloned().unwrap_or_default(),
        ])
        .map_err(csv_err)?;
    }
    let csv_bytes = w.into_inner().map_err(|e| ExportError::Io {
        path: PathBuf::from("results.csv"),
        source: std::io::Error::other(e.to_string()),
    })?;
    files.insert("results.csv".into(), csv_bytes);

    // session.json
    let decisions: Vec<serde_json::Value> = s
        .decisions
        .iter()
        .map(|(seq, d)| {
            let mut v = serde_json::to_value(d).unwrap_or_default();
            v["journal_seq"] = json!(seq);
            v["clinician_mark"] = json!(s.mark_of(*seq).map(|m| mark_name(m.kind)));
            v["image"] = json!(images.get(seq));
            if let Some(o) = v.as_object_mut() {
                o.remove("journal");
                o.remove("snapshot");
            }
            v
        })
        .collect();
    let doc = json!({
        "banner": pdf::BANNER,
        "session": s.id,
        "state": s.state,
        "started_utc": utc(s.started_ms),
        "started_unix_ms": s.started_ms,
        "ended_utc": s.ended_ms.map(utc),
        "ended_unix_ms": s.ended_ms,
        "deidentified": opts.deidentify,
        "context": context,
        "model": s.model,
        "decisions": decisions,
        "marks": s.marks,
        "exported_by": opts.runtime,
    });
    files.insert(
        "session.json".into(),
        serde_json::to_vec_pretty(&doc).unwrap_or_default(),
    );

    // report.pdf: key frames of single-frame decisions first, then changes, then the first.
    let mut keys: Vec<(u64, &contract::events::Decision)> = s
        .decisions
        .iter()
        .filter(|(q, _)| images.contains_key(q))
        .map(|(q, d)| (*q, d))
        .collect();
    keys.sort_by_key(|(q, d)| {
        use contract::events::DecisionKind as K;
        let rank = match d.kind {
            K::Freeze | K::Capture => 0,
            K::Change => 1,
            K::First => 2,
            K::Update => 3,
        };
        (rank, *q)
    });
    keys.truncate(4);
    keys.sort_by_key(|(q, _)| *q);
    let frames: Vec<KeyFrame> = keys
        .iter()
        .filter_map(|(q, d)| {
            Some(KeyFrame {
                journal_seq: *q,
                png: files.get(images.get(q)?)?.clone(),
                caption: format!(
                    "#{q} {} · {} · p {:.3}",
                    utc(d.unix_ms).get(11..19).unwrap_or(""),
                    if d.abnormal {
                        format!("abnormal, {}", d.class.replace('_', " "))
                    } else {
                        "normal".into()
                    },
                    d.p_abnormal
                ),
            })
        })
        .collect();
    let report = Report {
        session: s,
        context: context.as_ref(),
        deidentified: opts.deidentify,
        frames: &frames,
        runtime: &opts.runtime,
    };
    let pdf_bytes = pdf::render(&report).map_err(|source| ExportError::Pdf {
        session: s.id.clone(),
        source,
    })?;
    files.insert("report.pdf".into(), pdf_bytes);
    Ok(files)
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Whether `dir` already holds exactly these files.
fn identical(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> bool {
    let mut present = Vec::new();
    collect_files(dir, dir, &mut present);
    present.sort();
    let wanted: Vec<&String> = files.keys().collect();
    if present.iter().collect::<Vec<_>>() != wanted {
        return false;
    }
    files
        .iter()
        .all(|(rel, bytes)| fs::read(dir.join(rel)).is_ok_and(|b| &b == bytes))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Exports `sessions` into `out`.
pub fn export(
    sessions: &[&Session],
    store: &SessionStore,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    if sessions.is_empty() {
        return Err(ExportError::Nothing(
            "no session matches (renalscan-edge sessions lists them)".into(),
        ));
    }
    // Everything is made in memory first: the space needed is known before a byte is
    // written, and a failure while rendering leaves the target untouched.
    let mut built: Vec<(&Session, BTreeMap<String, Vec<u8>>)> = Vec::new();
    for s in sessions {
        built.push((s, session_files(s, store, opts)?));
    }
    fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    // Leftovers of a killed export.
    for e in fs::read_dir(out).map_err(|e| io_err(out, e))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") || name.starts_with(".old-") {
            log::info!("export: removing {name} left by an interrupted export");
            let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
        }
    }
    let mut summary = ExportSummary {
        target: out.to_path_buf(),
        ..Default::default()
    };
    let todo: Vec<&(&Session, BTreeMap<String, Vec<u8>>)> = built
        .iter()
        .filter(|(s, files)| {
            let same = identical(&out.join(&s.id), files);
            if same {
                summary.unchanged.push(s.id.clone());
            }
            !same
        })
        .collect();
    let needed: u64 = todo
        .iter()
        .map(|(_, f)| f.values().map(|b| b.len() as u64 + 4096).sum::<u64>())
        .sum::<u64>()
        + SLACK;
    if !todo.is_empty() {
        // A probe write: read-only media fail here, before any session folder exists.
        let probe = out.join(format!(".tmp-probe-{}", std::process::id()));
        write_synced(&probe, b"renalscan").map_err(|e| io_err(out, e))?;
        let _ = fs::remove_file(&probe);
        let free = free_bytes(out).unwrap_or(u64::MAX);
        if free < needed {
            return Err(ExportError::NoSpace {
                path: out.to_path_buf(),
                needed,
                free,
            });
        }
    }
    // Test seam: slows each file write, so tests can kill an export half-way.
    let pace = std::env::var("RENALSCAN_EXPORT_PACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis);
    for (s, files) in todo {
        let tmp = out.join(format!(".tmp-{}-{}", s.id, std::process::id()));
        let result = (|| -> std::io::Result<()> {
            fs::create_dir_all(tmp.join("images"))?;
            for (rel, bytes) in files {
                write_synced(&tmp.join(rel), bytes)?;
                if let Some(p) = pace {
                    std::thread::sleep(p);
                }
            }
            sync_dir(&tmp.join("images"));
            sync_dir(&tmp);
            let dest = out.join(&s.id);
            if dest.exists() {
                let old = out.join(format!(".old-{}-{}", s.id, std::process::id()));
                fs::rename(&dest, &old)?;
                fs::rename(&tmp, &dest)?;
                let _ = fs::remove_dir_all(&old);
            } else {
                fs::rename(&tmp, &dest)?;
            }
            sync_dir(out);
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io_err(out, e));
        }
        summary.bytes += files.values().map(|b| b.len() as u64).sum::<u64>();
        summary.written.push(s.id.clone());
        let mark = ExportMark {
            unix_ms: contract::events::unix_ms(),
            target: out.display().to_string(),
            deidentified: opts.deidentify,
            report_sha256: files
                .get("report.pdf")
                .map_or(String::new(), |b| sha256_hex(b)),
        };
        if let Err(e) = store.record_export(&s.id, &mark) {
            log::warn!(
                "export of {} done, but not noted beside the session: {e}",
                s.id
            );
        }
    }
    write_sums(out)?;
    Ok(summary)
}

/// `SHA256SUMS` over every session folder in the export, as `sha256sum -c` reads it.
fn write_sums(out: &Path) -> Result<(), ExportError> {
    let mut rels = Vec::new();
    for e in fs::read_dir(out).map_err(|e| io_err(out, e))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() && crate::session::valid_id(&name) {
            let mut v = Vec::new();
            collect_files(out, &e.path(), &mut v);
            rels.extend(v);
        }
    }
    rels.sort();
    let mut text = String::new();
    for rel in &rels {
        let b = fs::read(out.join(rel)).map_err(|e| io_err(out, e))?;
        text.push_str(&format!("{}  {rel}\n", sha256_hex(&b)));
    }
    let p = out.join("SHA256SUMS");
    if fs::read(&p).is_ok_and(|b| b == text.as_bytes()) {
        return Ok(());
    }
    let tmp = out.join(format!(".tmp-sums-{}", std::process::id()));
    write_synced(&tmp, text.as_bytes())
        .and_then(|_| fs::rename(&tmp, &p))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(out, e)
        })?;
    sync_dir(out);
    Ok(())
}
