//! A clinic's DICOM as training data: a folder of DICOM files (single-frame and cine, any
//! layout) and a labels CSV keyed by file path or SOP Instance UID become [`Sample`]s.
//!
//! Patients come from PatientID and are only ever kept as [`usimage::dicom::patient_key`]
//! hashes, so nothing written downstream (split.csv, manifests, logs) carries the identifier.
//! Every file and every label row is accounted for in the ingest report: used, not DICOM,
//! unreadable, without pixels, unlabelled, duplicate, or a label whose file is missing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};
use usimage::{DecodeError, UsFile};

use crate::dataset::{io, parse_label, write_csv, CsvTable, DatasetError, Sample, Split};

/// Which frames of a cine become training images (single-frame files always give frame 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameChoice {
    /// Every frame.
    All,
    /// Frame 0.
    First,
    /// The middle frame (`n / 2`).
    Middle,
    /// Frames 0, N, 2N, ...
    Every(u32),
    /// These frames (0-based).
    List(Vec<u32>),
}

impl FrameChoice {
    /// The frames picked from a file of `n` frames, and those asked for that it lacks.
    pub fn pick(&self, n: u32) -> (Vec<u32>, Vec<u32>) {
        let n = n.max(1);
        match self {
            FrameChoice::All => ((0..n).collect(), Vec::new()),
            FrameChoice::First => (vec![0], Vec::new()),
            FrameChoice::Middle => (vec![n / 2], Vec::new()),
            FrameChoice::Every(k) => ((0..n).step_by((*k).max(1) as usize).collect(), Vec::new()),
            FrameChoice::List(l) => l.iter().partition(|&&f| f < n),
        }
    }
}

impl FromStr for FrameChoice {
    type Err = String;

    /// `all`, `first`, `middle`, `every:N`, or frame numbers and ranges separated by `;` or
    /// spaces (`0;12;40-59`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || {
            format!(
                "frames `{s}`: expected all, first, middle, every:N or frame numbers like 0;12;40"
            )
        };
        match t.as_str() {
            "all" => return Ok(FrameChoice::All),
            "first" => return Ok(FrameChoice::First),
            "middle" | "mid" => return Ok(FrameChoice::Middle),
            _ => {}
        }
        if let Some(k) = t.strip_prefix("every:") {
            return match k.trim().parse::<u32>() {
                Ok(k) if k > 0 => Ok(FrameChoice::Every(k)),
                _ => Err(bad()),
            };
        }
        let mut list = BTreeSet::new();
        for item in t.split([';', ' ']).filter(|x| !x.is_empty()) {
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            match (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                (Ok(a), Ok(b)) if a <= b && b - a < 1 << 20 => list.extend(a..=b),
                _ => return Err(bad()),
            }
        }
        if list.is_empty() {
            return Err(bad());
        }
        Ok(FrameChoice::List(list.into_iter().collect()))
    }
}

impl fmt::Display for FrameChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameChoice::All => f.write_str("all"),
            FrameChoice::First => f.write_str("first"),
            FrameChoice::Middle => f.write_str("middle"),
            FrameChoice::Every(k) => write!(f, "every:{k}"),
            FrameChoice::List(l) => {
                let s: Vec<String> = l.iter().map(u32::to_string).collect();
                f.write_str(&s.join(";"))
            }
        }
    }
}

/// What became of one file or label row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Its frames are training images.
    Used,
    /// Not a DICOM file (no `DICM` marker): a DICOMDIR's companions, notes, thumbnails.
    NotDicom,
    /// DICOM, but its header or pixels cannot be read (the detail names why).
    Unreadable,
    /// DICOM without pixel data (structured reports, DICOMDIR).
    NoPixels,
    /// Readable, but no label row names it.
    Unlabelled,
    /// A second file with a SOP Instance UID already seen: the first one is used.
    Duplicate,
    /// A label row whose file is not in the folder.
    LabelWithoutFile,
    /// Frames the labels ask for that the file does not have (the rest are used).
    MissingFrames,
}

impl Status {
    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Status::Used => "used",
            Status::NotDicom => "not_dicom",
            Status::Unreadable => "unreadable",
            Status::NoPixels => "no_pixels",
            Status::Unlabelled => "unlabelled",
            Status::Duplicate => "duplicate",
            Status::LabelWithoutFile => "label_without_file",
            Status::MissingFrames => "missing_frames",
        }
    }
}

/// One line of the ingest report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file (relative to the folder) or, for [`Status::LabelWithoutFile`], the row's key.
    pub item: String,
    /// What became of it.
    pub status: Status,
    /// Frames used, or why not.
    pub detail: String,
}

/// The outcome of [`ingest`].
#[derive(Debug, Clone, Default)]
pub struct Ingest {
    /// One sample per chosen frame of every labelled, readable file.
    pub samples: Vec<Sample>,
    /// Every file and unmatched label row, sorted by status then item.
    pub entries: Vec<Entry>,
}

impl Ingest {
    /// Entries with this status.
    pub fn count(&self, status: Status) -> usize {
        self.entries.iter().filter(|e| e.status == status).count()
    }

    /// Writes the report to `out` as `item,status,detail`, one line per entry (line breaks
    /// in a detail become `; `, so the report greps line by line; commas are quoted).
    pub fn write_report(&self, out: &Path) -> Result<(), DatasetError> {
        let rows = self.entries.iter().map(|e| {
            [
                e.item.clone(),
                e.status.name().to_string(),
                e.detail.replace("\r\n", "; ").replace(['\n', '\r'], "; "),
            ]
        });
        write_csv(out, &["item", "status", "detail"], rows)
    }
}

/// One row of the labels CSV.
#[derive(Debug, Clone)]
struct LabelRow {
    line: u64,
    key: String,
    label: usize,
    severity: Option<f32>,
    split: Option<Split>,
    frames: Option<FrameChoice>,
    patient: Option<String>,
}

/// Keys of the labels CSV: normalised relative paths and SOP Instance UIDs.
#[derive(Default)]
struct Labels {
    by_path: HashMap<PathBuf, Vec<LabelRow>>,
    by_uid: HashMap<String, Vec<LabelRow>>,
}

/// `a/./b`, `./a/b` and `a//b` name the same file.
fn normalise(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Reads the labels CSV: a key column (`path`/`file` relative to the DICOM folder, or
/// `sop_instance_uid`/`uid`; a row may fill either), `label`, and optionally `split`,
/// `frames`, `severity`, `patient_id` (overrides the file's PatientID; hashed like it).
fn read_labels(csv: &Path, root: &Path) -> Result<Labels, DatasetError> {
    let table = CsvTable::read(csv)?;
    let header = table.header();
    let col = |names: &[&str]| table.col(names);
    let pc = col(&["path", "file", "filename"]);
    let uc = col(&["sop_instance_uid", "sopinstanceuid", "sop_uid", "uid"]);
    let Some(lc) = col(&["label", "class", "diagnosis"]) else {
        return Err(header_error(csv, header));
    };
    if pc.is_none() && uc.is_none() {
        return Err(header_error(csv, header));
    }
    let (sc, xc, fc, ic) = (
        col(&["severity"]),
        col(&["split", "set", "fold"]),
        col(&["frames", "frame"]),
        col(&["patient_id", "patient", "patientid"]),
    );
    let root_abs = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut out = Labels::default();
    let (mut bad_labels, mut bad_rows) = (String::new(), String::new());
    for r in table.rows() {
        let (n, get) = (r.line(), |c| r.get(c));
        let (path, uid) = (get(pc), get(uc));
        let key = match (path, uid) {
            (_, Some(u)) => u.to_string(),
            (Some(p), None) => p.to_string(),
            (None, None) => {
                let _ = writeln!(
                    bad_rows,
                    "  line {n}: neither a path nor a SOP Instance UID"
                );
                continue;
            }
        };
        let label_text = get(Some(lc)).unwrap_or("");
        let Some(label) = parse_label(label_text) else {
            let _ = writeln!(bad_labels, "  line {n}: `{label_text}` ({key})");
            continue;
        };
        let split = match get(xc) {
            None => None,
            Some(s) => match Split::parse(s) {
                Some(s) => Some(s),
                None => {
                    let _ = writeln!(bad_rows, "  line {n}: split `{s}`");
                    continue;
                }
            },
        };
        let frames = match get(fc).map(FrameChoice::from_str) {
            None => None,
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => {
                let _ = writeln!(bad_rows, "  line {n}: {e}");
                continue;
            }
        };
        let severity = match get(sc).map(str::parse::<f32>) {
            None => None,
            Some(Ok(v)) if v.is_finite() => Some(v),
            Some(_) => {
                let _ = writeln!(bad_rows, "  line {n}: severity `{}`", get(sc).unwrap_or(""));
                continue;
            }
        };
        let row = LabelRow {
            line: n,
            key,
            label,
            severity,
            split,
            frames,
            patient: get(ic).map(str::to_string),
        };
        match (uid, path) {
            (Some(u), _) => out.by_uid.entry(u.to_string()).or_default().push(row),
            (None, Some(p)) => {
                let p = Path::new(p);
                let rel = if p.is_absolute() {
                    let abs = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
                    abs.strip_prefix(&root_abs)
                        .map_or(abs.clone(), Path::to_path_buf)
                } else {
                    p.to_path_buf()
                };
                out.by_path.entry(normalise(&rel)).or_default().push(row);
            }
            (None, None) => unreachable!("rows without a key were skipped"),
        }
    }
    if !bad_labels.is_empty() {
        return Err(DatasetError::Labels(bad_labels));
    }
    if !bad_rows.is_empty() {
        return Err(DatasetError::Rows(format!(
            "{}:\n{bad_rows}",
            csv.display()
        )));
    }
    if out.by_path.is_empty() && out.by_uid.is_empty() {
        return Err(DatasetError::Empty(csv.display().to_string()));
    }
    Ok(out)
}

fn header_error(csv: &Path, header: &str) -> DatasetError {
    DatasetError::Rows(format!(
        "{}: the labels CSV needs a `label` column and a key column, `path` (relative to the \
         DICOM folder) or `sop_instance_uid`; its header is `{header}`",
        csv.display()
    ))
}

/// Every regular file under `dir`, sorted, relative to it.
fn walk(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        for e in fs::read_dir(&here).map_err(io(&here))? {
            let e = e.map_err(io(&here))?;
            let name = rel.join(e.file_name());
            let kind = e.file_type().map_err(io(&e.path()))?;
            if kind.is_dir() {
                stack.push(name);
            } else if kind.is_file() || (kind.is_symlink() && e.path().is_file()) {
                out.push(name);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The patient of a file whose PatientID is missing: itself (by SOP Instance UID, else by
/// content), so its frames stay together but it is never merged with another file.
fn own_patient(uid: Option<&str>, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"renalscan-file-v1\0");
    match uid {
        Some(u) => h.update(u.as_bytes()),
        None => h.update(bytes),
    }
    format!("f-{}", &hex::encode(h.finalize())[..16])
}

/// Rows for one file: those naming its SOP Instance UID and those naming its path. Rows
/// giving one frame two labels are an error (which label would win?).
fn rows_for<'a>(labels: &'a Labels, rel: &Path, uid: Option<&str>) -> Vec<&'a LabelRow> {
    let by_uid = uid.and_then(|u| labels.by_uid.get(u)).into_iter().flatten();
    let by_path = labels.by_path.get(&normalise(rel)).into_iter().flatten();
    by_uid.chain(by_path).collect()
}

/// Reads every file under `dir`, matches it with `labels` and picks frames (`frames` unless
/// a row's `frames` column says otherwise). Files that cannot be used are in the report, not
/// an error: a clinic's export always holds some. Errors are for the labels CSV itself and
/// for a folder where nothing at all could be used.
pub fn ingest(dir: &Path, labels_csv: &Path, frames: &FrameChoice) -> Result<Ingest, DatasetError> {
    let labels = read_labels(labels_csv, dir)?;
    let mut out = Ingest::default();
    let mut seen_uid: HashMap<String, PathBuf> = HashMap::new();
    let mut matched_paths: BTreeSet<PathBuf> = BTreeSet::new();
    let mut matched_uids: BTreeSet<String> = BTreeSet::new();
    let mut no_patient = 0usize;
    let entry = |item: &Path, status, detail: String| Entry {
        item: item.display().to_string(),
        status,
        detail,
    };
    let files = walk(dir)?;
    log::info!("{}: {} files", dir.display(), files.len());
    for rel in files {
        // A path row names this file whatever becomes of it below.
        matched_paths.insert(normalise(&rel));
        let abs = dir.join(&rel);
        let bytes = match fs::read(&abs) {
            Ok(b) => b,
            Err(e) => {
                out.entries
                    .push(entry(&rel, Status::Unreadable, e.to_string()));
                continue;
            }
        };
        let header = match usimage::read_header(&bytes) {
            Ok(h) => h,
            Err(DecodeError::UnknownFormat) => {
                out.entries
                    .push(entry(&rel, Status::NotDicom, "no DICM marker".into()));
                continue;
            }
            Err(e) => {
                out.entries
                    .push(entry(&rel, Status::Unreadable, e.to_string()));
                continue;
            }
        };
        if !header.has_pixels {
            out.entries.push(entry(
                &rel,
                Status::NoPixels,
                "no Pixel Data element".into(),
            ));
            continue;
        }
        let uid = header.sop_instance_uid.clone();
        if let Some(u) = &uid {
            if let Some(first) = seen_uid.get(u) {
                out.entries.push(entry(
                    &rel,
                    Status::Duplicate,
                    format!("same SOP Instance UID as {}", first.display()),
                ));
                continue;
            }
            seen_uid.insert(u.clone(), rel.clone());
        }
        let rows = rows_for(&labels, &rel, uid.as_deref());
        if let Some(u) = uid.as_ref().filter(|u| labels.by_uid.contains_key(*u)) {
            matched_uids.insert(u.clone());
        }
        if rows.is_empty() {
            out.entries.push(entry(
                &rel,
                Status::Unlabelled,
                format!(
                    "no label row by path or SOP Instance UID {}",
                    uid.as_deref().unwrap_or("(none)")
                ),
            ));
            continue;
        }
        // Decode one chosen frame now, so a file the decoder refuses (transfer syntax,
        // attribute) is listed here once instead of failing frame by frame later.
        let file = match UsFile::from_bytes(&bytes) {
            Ok(f) => f,
            Err(e) => {
                out.entries
                    .push(entry(&rel, Status::Unreadable, e.to_string()));
                continue;
            }
        };
        let n = file.frame_count().max(header.frames);
        let mut picked: BTreeMap<u32, &LabelRow> = BTreeMap::new();
        let mut missing = Vec::new();
        let mut clash = None;
        for &row in &rows {
            let (f, m) = row.frames.as_ref().unwrap_or(frames).pick(n);
            missing.extend(m);
            for f in f {
                if let Some(other) = picked.insert(f, row) {
                    if other.label != row.label {
                        clash = Some((f, other.line, row.line));
                    }
                }
            }
        }
        if let Some((f, a, b)) = clash {
            return Err(DatasetError::Rows(format!(
                "{}: lines {a} and {b} give frame {f} of {} different labels",
                labels_csv.display(),
                rel.display()
            )));
        }
        if !missing.is_empty() {
            out.entries.push(entry(
                &rel,
                Status::MissingFrames,
                format!("asked for frames {missing:?} of a {n}-frame file"),
            ));
        }
        let Some(&probe) = picked.keys().next() else {
            continue;
        };
        if let Err(e) = file.frame(probe) {
            out.entries.push(entry(
                &rel,
                Status::Unreadable,
                format!("frame {probe}: {e}"),
            ));
            continue;
        }
        let patient_of = |row: &LabelRow| {
            row.patient
                .as_deref()
                .and_then(usimage::dicom::patient_key)
                .or_else(|| header.patient_key.clone())
        };
        let fallback = own_patient(uid.as_deref(), &bytes);
        if rows.iter().all(|r| patient_of(r).is_none()) {
            no_patient += 1;
        }
        for (&f, row) in &picked {
            out.samples.push(Sample {
                path: abs.clone(),
                frame: f,
                label: row.label,
                severity: row.severity,
                patient: patient_of(row).unwrap_or_else(|| fallback.clone()),
                split: row.split,
            });
        }
        out.entries.push(entry(
            &rel,
            Status::Used,
            format!(
                "{} of {n} frames ({})",
                picked.len(),
                frame_summary(&picked)
            ),
        ));
    }
    for (p, rows) in &labels.by_path {
        if !matched_paths.contains(p) {
            for r in rows {
                out.entries.push(Entry {
                    item: r.key.clone(),
                    status: Status::LabelWithoutFile,
                    detail: format!("line {}: no such file under {}", r.line, dir.display()),
                });
            }
        }
    }
    for (u, rows) in &labels.by_uid {
        if !matched_uids.contains(u) {
            for r in rows {
                out.entries.push(Entry {
                    item: r.key.clone(),
                    status: Status::LabelWithoutFile,
                    detail: format!("line {}: no file with this SOP Instance UID", r.line),
                });
            }
        }
    }
    out.entries
        .sort_by(|a, b| (a.status, &a.item).cmp(&(b.status, &b.item)));
    for e in out.entries.iter().filter(|e| e.status != Status::Used) {
        log::warn!("{}: {} ({})", e.item, e.status.name(), e.detail);
    }
    if no_patient > 0 {
        log::warn!("{no_patient} files have no PatientID: each is its own patient for the split");
    }
    if out.samples.is_empty() {
        return Err(DatasetError::Empty(format!(
            "{} (with labels {}): no labelled, readable DICOM frames; see the list above",
            dir.display(),
            labels_csv.display()
        )));
    }
    log::info!(
        "{}: {} frames from {} files; {} not used",
        dir.display(),
        out.samples.len(),
        out.count(Status::Used),
        out.entries
            .iter()
            .filter(|e| e.status != Status::Used)
            .count()
    );
    Ok(out)
}

fn frame_summary(picked: &BTreeMap<u32, &LabelRow>) -> String {
    let f: Vec<u32> = picked.keys().copied().collect();
    match f.as_slice() {
        [one] => format!("frame {one}"),
        [a, .., b] => format!("frames {a}..={b}"),
        [] => String::new(),
    }
}

/// Ingests the folder and writes the run's view of it: `<out>/dicom-manifest.csv` (the
/// samples, hashed patients, for `train`) and `<out>/dicom-ingest.csv` (the report).
/// Returns the manifest's path.
pub fn prepare(
    dir: &Path,
    labels_csv: &Path,
    frames: &FrameChoice,
    out: &Path,
) -> Result<(PathBuf, Ingest), DatasetError> {
    let ing = ingest(dir, labels_csv, frames)?;
    fs::create_dir_all(out).map_err(io(out))?;
    let report = out.join("dicom-ingest.csv");
    ing.write_report(&report)?;
    let manifest = out.join("dicom-manifest.csv");
    crate::dataset::write_split_csv(&ing.samples, &manifest)?;
    Ok((manifest, ing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use usimage::synthetic::study_file;

    #[test]
    fn frame_choices() {
        assert_eq!(
            "all".parse::<FrameChoice>().unwrap().pick(3).0,
            vec![0, 1, 2]
        );
        assert_eq!("middle".parse::<FrameChoice>().unwrap().pick(7).0, vec![3]);
        assert_eq!(
            "every:4".parse::<FrameChoice>().unwrap().pick(10).0,
            vec![0, 4, 8]
        );
        assert_eq!(
            "3-5;1".parse::<FrameChoice>().unwrap().pick(9).0,
            vec![1, 3, 4, 5]
        );
        let l: FrameChoice = "9; 2;2".parse().unwrap();
        assert_eq!(l.to_string(), "2;9");
        assert_eq!(l.pick(5), (vec![2], vec![9]));
        assert_eq!(FrameChoice::Middle.pick(1).0, vec![0]);
        for bad in ["", "every:0", "some", "1;x", "5-3", "-"] {
            assert!(bad.parse::<FrameChoice>().is_err(), "{bad}");
        }
    }

    fn dicom(dir: &Path, name: &str, uid: &str, patient: &str, frames: u32) {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, study_file(uid, patient, frames)).unwrap();
    }

    #[test]
    fn every_file_and_row_is_accounted_for() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("study");
        dicom(&data, "a/one.dcm", "1.2.3.1", "PAT-ONE", 1);
        dicom(&data, "a/cine.dcm", "1.2.3.2", "PAT-ONE", 6);
        dicom(&data, "b/two.dcm", "1.2.3.3", "", 1);
        dicom(&data, "b/copy.dcm", "1.2.3.3", "", 1);
        dicom(&data, "b/nolabel.dcm", "1.2.3.4", "PAT-TWO", 1);
        fs::write(data.join("notes.txt"), "scanned on tuesday").unwrap();
        let mut broken = fs::read(data.join("a/one.dcm")).unwrap();
        broken.truncate(broken.len() / 2);
        fs::write(data.join("b/broken.dcm"), broken).unwrap();
        let labels = d.path().join("labels.csv");
        fs::write(
            &labels,
            "path,sop_instance_uid,label,frames,split\n\
             ,1.2.3.1,normal,,train\n\
             ./a/cine.dcm,,cyst,every:2,val\n\
             ,1.2.3.3,hydronephrosis,,\n\
             ,9.9.9,stone,,\n\
             gone.dcm,,normal,,\n\
             b/broken.dcm,,normal,,\n",
        )
        .unwrap();
        let ing = ingest(&data, &labels, &FrameChoice::All).unwrap();
        let status = |item: &str| {
            ing.entries
                .iter()
                .filter(|e| e.item == item)
                .map(|e| e.status)
                .collect::<Vec<_>>()
        };
        assert_eq!(status("a/one.dcm"), [Status::Used]);
        assert_eq!(status("a/cine.dcm"), [Status::Used]);
        assert_eq!(status("b/nolabel.dcm"), [Status::Unlabelled]);
        assert_eq!(status("notes.txt"), [Status::NotDicom]);
        assert_eq!(status("b/broken.dcm"), [Status::Unreadable]);
        assert_eq!(status("9.9.9"), [Status::LabelWithoutFile]);
        assert_eq!(status("gone.dcm"), [Status::LabelWithoutFile]);

        // Sorted walk: a/cine.dcm, a/one.dcm, b/copy.dcm (b/two.dcm is its duplicate).
        assert_eq!(status("b/copy.dcm"), [Status::Used]);
        assert_eq!(status("b/two.dcm"), [Status::Duplicate]);
        let frames: Vec<(String, u32)> = ing
            .samples
            .iter()
            .map(|s| {
                (
                    s.path.strip_prefix(&data).unwrap().display().to_string(),
                    s.frame,
                )
            })
            .collect();
        let expected: Vec<(String, u32)> = [
            ("a/cine.dcm", 0),
            ("a/cine.dcm", 2),
            ("a/cine.dcm", 4),
            ("a/one.dcm", 0),
            ("b/copy.dcm", 0),
        ]
        .iter()
        .map(|(p, f)| (p.to_string(), *f))
        .collect();
        assert_eq!(frames, expected);
        // One patient for both files of PAT-ONE, hashed; the file without PatientID is its own.
        let one = &ing
            .samples
            .iter()
            .find(|s| s.path.ends_with("one.dcm"))
            .unwrap()
            .patient;
        let cine = &ing
            .samples
            .iter()
            .find(|s| s.path.ends_with("cine.dcm"))
            .unwrap()
            .patient;
        assert_eq!(one, cine);
        assert_eq!(Some(one.clone()), usimage::dicom::patient_key("PAT-ONE"));
        let copy = ing.samples.iter().find(|s| s.path.ends_with("copy.dcm"));
        let two = &copy.unwrap().patient;
        assert!(two.starts_with("f-"));
        assert!(ing.samples.iter().all(|s| !s.patient.contains("PAT")));
        assert_eq!(
            ing.samples
                .iter()
                .filter(|s| s.path.ends_with("cine.dcm"))
                .count(),
            3
        );
        assert!(ing
            .samples
            .iter()
            .filter(|s| s.path.ends_with("cine.dcm"))
            .all(|s| s.split == Some(Split::Val) && s.label == 2));

        // The written manifest loads back as a data set with the same samples.
        let (manifest, _) =
            prepare(&data, &labels, &FrameChoice::All, &d.path().join("run")).unwrap();
        let back = crate::dataset::load(&manifest).unwrap();
        assert_eq!(back.len(), ing.samples.len());
        let text = fs::read_to_string(&manifest).unwrap();
        assert!(
            !text.contains("PAT-ONE") && !text.contains("PAT-TWO"),
            "{text}"
        );
    }

    #[test]
    fn conflicting_rows_and_bad_headers_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("study");
        dicom(&data, "cine.dcm", "1.2.3.2", "P", 4);
        let labels = d.path().join("labels.csv");
        fs::write(
            &labels,
            "uid,label,frames\n1.2.3.2,normal,0;1\n1.2.3.2,cyst,1;2\n",
        )
        .unwrap();
        let e = ingest(&data, &labels, &FrameChoice::All)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("frame 1") && e.contains("different labels"),
            "{e}"
        );
        // Disjoint frames of one cine may carry different labels.
        fs::write(
            &labels,
            "uid,label,frames\n1.2.3.2,normal,0;1\n1.2.3.2,cyst,2;3\n",
        )
        .unwrap();
        let ing = ingest(&data, &labels, &FrameChoice::All).unwrap();
        let l: Vec<usize> = ing.samples.iter().map(|s| s.label).collect();
        assert_eq!(l, [0, 0, 2, 2]);
        fs::write(&labels, "name,label\nx,normal\n").unwrap();
        let e = ingest(&data, &labels, &FrameChoice::All)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sop_instance_uid"), "{e}");
        fs::write(&labels, "uid,label\n1.2.3.2,kidneyish\n").unwrap();
        assert!(matches!(
            ingest(&data, &labels, &FrameChoice::All),
            Err(DatasetError::Labels(_))
        ));
    }
}
