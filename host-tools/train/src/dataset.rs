//! Dataset ingestion (folder of class folders or CSV manifest) and patient-level splits.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use contract::{Class, LABELS};
use usimage::FrameRef;

/// Errors reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// File system.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A CSV whose text cannot be read (not UTF-8).
    #[error("{path} line {line}: not readable as CSV text: {source}")]
    Csv {
        /// The CSV.
        path: String,
        /// 1-based line of the row that failed.
        line: u64,
        /// Why.
        source: csv::Error,
    },
    /// A CSV without the required columns.
    #[error("{path}: header must name at least `path` and `label` columns (got `{header}`)")]
    Header {
        /// The CSV.
        path: String,
        /// Its first line.
        header: String,
    },
    /// Rows whose label is not one of the six classes or `no_kidney`.
    #[error("unknown labels (expected one of normal, stone, cyst, hyperechogenicity, sol, hydronephrosis, or no_kidney for views without a kidney):\n{0}")]
    Labels(String),
    /// Rows that cannot be parsed.
    #[error("malformed rows:\n{0}")]
    Rows(String),
    /// Nothing found.
    #[error("no images found in {0}")]
    Empty(String),
    /// A sweep set whose frames carry no per-frame truth to train on.
    #[error(
        "{0}: a sweep's frames.csv needs `label`, `state` and `lesion_visible` columns to train on \
         its frames (phantom sweeps have them; a recorded sweep needs its frames labelled)"
    )]
    SweepLabels(String),
}

/// Which part of the data an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Fits the head.
    Train,
    /// Early stopping, threshold and temperature.
    Val,
    /// Touched only by `renalscan eval`.
    Test,
}

impl Split {
    /// Name used in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Split::Train),
            "val" | "valid" | "validation" | "dev" => Some(Split::Val),
            "test" | "testing" | "holdout" => Some(Split::Test),
            _ => None,
        }
    }
}

/// Label index of images that show no kidney: after the six classes.
pub const NO_KIDNEY: usize = LABELS.len();

/// The data set's labels: the six classes, then `no_kidney` (views for the view gate).
pub const DATA_LABELS: [&str; LABELS.len() + 1] = [
    LABELS[0],
    LABELS[1],
    LABELS[2],
    LABELS[3],
    LABELS[4],
    LABELS[5],
    "no_kidney",
];

/// One labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Image file (absolute or relative to the working directory).
    pub path: PathBuf,
    /// Frame within it (0 for still images; a cine's frames are samples of their own).
    pub frame: u32,
    /// Index into [`DATA_LABELS`]: a class ([`contract::LABELS`] order), or [`NO_KIDNEY`].
    pub label: usize,
    /// Severity if the manifest gives one.
    pub severity: Option<f32>,
    /// Patient identifier: images of one patient stay in one split.
    pub patient: String,
    /// Split from the manifest, if it has a `split` column.
    pub split: Option<Split>,
}

impl Sample {
    /// The frame this sample is.
    pub fn frame_ref(&self) -> FrameRef {
        FrameRef {
            path: self.path.clone(),
            frame: self.frame,
        }
    }

    /// True unless the image shows no kidney.
    pub fn is_kidney(&self) -> bool {
        self.label != NO_KIDNEY
    }
}

/// Maps the common spellings of the six classes to their index (see
/// [`contract::Class::from_alias`]), and those of "no kidney in view" to [`NO_KIDNEY`].
pub fn parse_label(s: &str) -> Option<usize> {
    if let Some(c) = Class::from_alias(s) {
        return Some(c.index());
    }
    let k: String = s
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    matches!(
        k.as_str(),
        "nokidney" | "notkidney" | "nonkidney" | "notarenal" | "nonrenal" | "other" | "noview"
    )
    .then_some(NO_KIDNEY)
}

const IMAGE_EXT: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom"];

/// Loads `data`: a CSV manifest, a directory holding `manifest.csv`, or `<root>/<class>/*`
/// (then every image is its own patient, with a warning: splits cannot respect patients).
pub fn load(data: &Path) -> Result<Vec<Sample>, DatasetError> {
    if data.is_file() {
        return load_csv(data);
    }
    let manifest = data.join("manifest.csv");
    if manifest.is_file() {
        return load_csv(&manifest);
    }
    if data.join("sweeps.csv").is_file() {
        return load_sweep_set(data);
    }
    load_folders(data)
}

/// Frames of a labelled sweep set (`renalscan synth --stream --sweeps-per-class`): every
/// second frame of each sweep, and every frame where a focal finding (stone, cyst, mass) is
/// in view, since a pass shows a small one for a few frames only. Each frame is labelled by
/// what it shows (`lesion_visible`): the sweep's class where its finding is in the plane,
/// normal where it is not; a sweep is one patient. Stills alone never show the planes a
/// protocol pass goes through (a lesion cut at its edge, a normal kidney swept pole to pole),
/// and per exam that is where a model trained on stills errs.
pub fn load_sweep_set(dir: &Path) -> Result<Vec<Sample>, DatasetError> {
    let list = CsvTable::read(&dir.join("sweeps.csv"))?;
    let pc = list.col(&["path"]).ok_or_else(|| DatasetError::Header {
        path: dir.join("sweeps.csv").display().to_string(),
        header: list.header().to_string(),
    })?;
    let mut out = Vec::new();
    for row in list.rows() {
        let Some(rel) = row.get(Some(pc)) else {
            continue;
        };
        let sweep = dir.join(rel);
        let frames = sweep.join("frames.csv");
        let t = CsvTable::read(&frames)?;
        let need = |names: &[&str]| {
            t.col(names)
                .ok_or_else(|| DatasetError::SweepLabels(frames.display().to_string()))
        };
        let (fc, lc, sc, vc) = (
            need(&["path"])?,
            need(&["label"])?,
            need(&["state"])?,
            need(&["lesion_visible"])?,
        );
        let (ic, xc, kc) = (
            t.col(&["index"]),
            t.col(&["severity"]),
            t.col(&["patient_id"]),
        );
        for (i, f) in t.rows().iter().enumerate() {
            let get = |c| f.get(Some(c)).unwrap_or("");
            let label_text = get(lc);
            let Some(class) = parse_label(label_text) else {
                return Err(DatasetError::Labels(format!(
                    "  {} line {}: `{label_text}`\n",
                    frames.display(),
                    f.line()
                )));
            };
            // A lifted or frozen probe, or a sweep over another organ: nothing to learn here.
            if get(sc) != "scanning" || class == NO_KIDNEY {
                continue;
            }
            let visible = get(vc) == "1";
            let index = f.get(ic).and_then(|v| v.parse::<usize>().ok()).unwrap_or(i);
            let focal = [Class::Stone, Class::Cyst, Class::Sol]
                .iter()
                .any(|c| c.index() == class);
            if index % 2 == 1 && !(visible && focal) {
                continue;
            }
            let label = if visible {
                class
            } else {
                Class::Normal.index()
            };
            out.push(Sample {
                path: sweep.join(get(fc)),
                frame: 0,
                label,
                severity: (label != Class::Normal.index())
                    .then(|| f.get(xc).and_then(|v| v.parse().ok()))
                    .flatten(),
                patient: format!(
                    "sweep:{}",
                    f.get(kc).map_or_else(|| rel.to_string(), str::to_string)
                ),
                split: None,
            });
        }
    }
    if out.is_empty() {
        return Err(DatasetError::Empty(dir.display().to_string()));
    }
    log::info!(
        "{}: {} training frames from {} sweeps (every second frame, and every frame showing a \
         focal finding)",
        dir.display(),
        out.len(),
        list.rows().len()
    );
    Ok(out)
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn load_folders(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let mut out = Vec::new();
    let mut unknown = String::new();
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(label) = name.as_deref().and_then(parse_label) else {
            let _ = writeln!(unknown, "  folder {}", dir.display());
            continue;
        };
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXT.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        files.sort();
        for path in files {
            out.push(Sample {
                patient: path.display().to_string(),
                path,
                frame: 0,
                label,
                severity: None,
                split: None,
            });
        }
    }
    if !unknown.is_empty() {
        return Err(DatasetError::Labels(unknown));
    }
    if out.is_empty() {
        return Err(DatasetError::Empty(root.display().to_string()));
    }
    log::warn!(
        "{}: no manifest.csv, so no patient ids: each image counts as its own patient",
        root.display()
    );
    Ok(out)
}

/// A CSV read whole, as clinic systems and spreadsheets export it: quoted fields (commas,
/// doubled quotes, line breaks), CRLF line ends, a UTF-8 byte-order mark, and rows with more
/// or fewer cells than the header are all accepted, so a site's export loads without hand
/// editing. Header names are trimmed and lower-cased (`Path` and ` path ` both match), cells
/// are trimmed, and rows with no content are skipped. The manifest, labels and sweep-list
/// readers share it, so they accept the same files and their errors name the same lines.
#[derive(Debug, Clone)]
pub struct CsvTable {
    header: String,
    cols: Vec<String>,
    rows: Vec<CsvRow>,
}

/// One data row of a [`CsvTable`], with the line it starts on for error messages.
#[derive(Debug, Clone)]
pub struct CsvRow {
    line: u64,
    record: csv::StringRecord,
}

impl CsvTable {
    /// Reads `csv`; the first row with content is the header. Errors name the file, and for
    /// text that is not UTF-8 the 1-based line.
    pub fn read(csv: &Path) -> Result<Self, DatasetError> {
        let body = fs::read(csv).map_err(io(csv))?;
        // A UTF-8 byte-order mark (Excel's "CSV UTF-8", many clinic exports) is dropped by
        // csv-core when the first read holds all of it, which reading from memory ensures.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(body.as_slice());
        let mut lines = LineCounter {
            body: &body,
            at: 0,
            line: 1,
        };
        let mut header: Option<csv::StringRecord> = None;
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|source| DatasetError::Csv {
                path: csv.display().to_string(),
                line: lines.line_of(source.position()),
                source,
            })?;
            let line = lines.line_of(record.position());
            if record.iter().all(str::is_empty) {
                continue;
            }
            if header.is_none() {
                header = Some(record);
                continue;
            }
            rows.push(CsvRow { line, record });
        }
        let header = header.unwrap_or_default();
        Ok(Self {
            cols: header.iter().map(str::to_ascii_lowercase).collect(),
            header: header.iter().collect::<Vec<_>>().join(","),
            rows,
        })
    }

    /// The header's names as written (trimmed), for messages about missing columns.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Index of the first column named any of `names` (lower case): files from different
    /// sources spell the same column differently.
    pub fn col(&self, names: &[&str]) -> Option<usize> {
        self.cols.iter().position(|c| names.contains(&c.as_str()))
    }

    /// The data rows in file order.
    pub fn rows(&self) -> &[CsvRow] {
        &self.rows
    }
}

/// Line numbers of records. The `csv` crate's `Position::line` of a record is where the
/// previous one ended, so it lags behind the record with CRLF line ends (the `\r` ends a
/// record, the `\n` is counted with the next) and after blank lines. Its byte offset is the
/// same place, so the line is counted here up to the first byte past those line ends.
struct LineCounter<'a> {
    body: &'a [u8],
    /// Bytes counted so far, and the 1-based line of the byte at `at`.
    at: usize,
    line: u64,
}

impl LineCounter<'_> {
    /// The line a record starts on, from the position the reader gives it.
    fn line_of(&mut self, pos: Option<&csv::Position>) -> u64 {
        let len = self.body.len();
        let mut start = pos
            .and_then(|p| usize::try_from(p.byte()).ok())
            .map_or(len, |b| b.min(len));
        while start < len && matches!(self.body[start], b'\r' | b'\n') {
            start += 1;
        }
        if start > self.at {
            let newlines = self.body[self.at..start].iter().filter(|&&b| b == b'\n');
            self.line += newlines.count() as u64;
            self.at = start;
        }
        self.line
    }
}

impl CsvRow {
    /// 1-based line the row starts on, as an editor numbers it (a quoted line break makes a
    /// row span lines, so this is not the row's index).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The cell in column `col`, or `None` when there is no such column, the row is too
    /// short, or the cell is empty: all three mean "not given".
    pub fn get(&self, col: Option<usize>) -> Option<&str> {
        col.and_then(|c| self.record.get(c))
            .filter(|s| !s.is_empty())
    }

    /// The row's cells joined by commas, to show in a message.
    pub fn text(&self) -> String {
        self.record.iter().collect::<Vec<_>>().join(",")
    }
}

/// Writes `header` and `rows` to `out` with `csv::Writer`, so a path, patient id or detail
/// holding a comma, quote or line break is quoted and reads back unchanged.
pub fn write_csv<R, C>(out: &Path, header: &[&str], rows: R) -> Result<(), DatasetError>
where
    R: IntoIterator<Item = C>,
    C: IntoIterator,
    C::Item: AsRef<[u8]>,
{
    let err = |e: csv::Error| DatasetError::Io {
        path: out.display().to_string(),
        source: e.into(),
    };
    let mut w = csv::Writer::from_path(out).map_err(err)?;
    w.write_record(header).map_err(err)?;
    for row in rows {
        w.write_record(row).map_err(err)?;
    }
    w.flush().map_err(io(out))
}

/// Reads a CSV manifest (`path,label[,severity][,patient_id][,split][,frame]`, any column
/// order, other columns ignored; see [`CsvTable`] for the dialect). Paths are relative to
/// the CSV's folder.
pub fn load_csv(csv: &Path) -> Result<Vec<Sample>, DatasetError> {
    let table = CsvTable::read(csv)?;
    let base = csv.parent().unwrap_or(Path::new("."));
    let col = |names: &[&str]| table.col(names);
    let (Some(pc), Some(lc)) = (
        col(&["path", "file", "image", "filename"]),
        col(&["label", "class", "diagnosis"]),
    ) else {
        return Err(DatasetError::Header {
            path: csv.display().to_string(),
            header: table.header().to_string(),
        });
    };
    let sc = col(&["severity"]);
    let ic = col(&["patient_id", "patient", "patientid", "subject"]);
    let xc = col(&["split", "set", "fold"]);
    let fc = col(&["frame", "frame_index"]);
    let mut out = Vec::new();
    let (mut bad_labels, mut bad_rows) = (String::new(), String::new());
    for row in table.rows() {
        let (n, get) = (row.line(), |c| row.get(c));
        let Some(rel) = get(Some(pc)) else {
            let _ = writeln!(bad_rows, "  line {n}: no path: {}", row.text());
            continue;
        };
        let label_text = get(Some(lc)).unwrap_or("");
        let Some(label) = parse_label(label_text) else {
            let _ = writeln!(bad_labels, "  line {n}: `{label_text}` ({rel})");
            continue;
        };
        let split = match get(xc) {
            Some(s) => match Split::parse(s) {
                Some(s) => Some(s),
                None => {
                    let _ = writeln!(bad_rows, "  line {n}: split `{s}`");
                    continue;
                }
            },
            None => None,
        };
        let frame = match get(fc).map(str::parse::<u32>) {
            None => 0,
            Some(Ok(f)) => f,
            Some(Err(_)) => {
                let _ = writeln!(bad_rows, "  line {n}: frame `{}`", get(fc).unwrap_or(""));
                continue;
            }
        };
        let path = Path::new(rel);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        out.push(Sample {
            patient: get(ic).map_or_else(|| path.display().to_string(), str::to_string),
            path,
            frame,
            label,
            severity: get(sc).and_then(|s| s.parse().ok()),
            split,
        });
    }
    if !bad_labels.is_empty() {
        return Err(DatasetError::Labels(bad_labels));
    }
    if !bad_rows.is_empty() {
        return Err(DatasetError::Rows(bad_rows));
    }
    if out.is_empty() {
        return Err(DatasetError::Empty(csv.display().to_string()));
    }
    if ic.is_none() {
        log::warn!(
            "{}: no patient_id column: each image counts as its own patient",
            csv.display()
        );
    }
    Ok(out)
}

/// Assigns every sample without a manifest split to train/val/test by **patient**,
/// stratified by the patient's most frequent label: `val` and `test` are fractions of each
/// class's patients. Deterministic for a seed.
pub fn assign_splits(samples: &mut [Sample], val: f64, test: f64, seed: u64) {
    let by_class = patients_by_class(samples.iter().filter(|s| s.split.is_none()));
    let mut rng = seeded::Rng::new(seed);
    let mut assigned: HashMap<String, Split> = HashMap::new();
    for (_, mut pats) in by_class {
        rng.shuffle(&mut pats);
        let n = pats.len();
        let mut n_test = (test * n as f64).round() as usize;
        let mut n_val = (val * n as f64).round() as usize;
        if n >= 3 {
            n_test = n_test.max(usize::from(test > 0.0));
            n_val = n_val.max(usize::from(val > 0.0));
        }
        n_test = n_test.min(n);
        n_val = n_val.min(n - n_test);
        for (i, p) in pats.iter().enumerate() {
            let s = if i < n_test {
                Split::Test
            } else if i < n_test + n_val {
                Split::Val
            } else {
                Split::Train
            };
            assigned.insert((*p).to_string(), s);
        }
    }
    for s in samples.iter_mut().filter(|s| s.split.is_none()) {
        s.split = assigned.get(&s.patient).copied();
    }
}

/// Patients by their majority label (ties to the lower label), each list in first-seen
/// order: what stratified patient-level splits and folds deal out.
pub fn patients_by_class<'a>(
    samples: impl Iterator<Item = &'a Sample>,
) -> BTreeMap<usize, Vec<&'a str>> {
    let mut order: Vec<&str> = Vec::new();
    let mut counts: HashMap<&str, [usize; DATA_LABELS.len()]> = HashMap::new();
    for s in samples {
        let c = counts.entry(&s.patient).or_insert_with(|| {
            order.push(&s.patient);
            [0; DATA_LABELS.len()]
        });
        c[s.label] += 1;
    }
    let mut by_class: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for p in order {
        let c = &counts[p];
        let major = (0..c.len())
            .max_by_key(|&i| (c[i], usize::MAX - i))
            .unwrap_or(0);
        by_class.entry(major).or_default().push(p);
    }
    by_class
}

/// Patients whose images sit in more than one split (only possible through a manifest's
/// `split` column): their images are not independent, so validation and test figures on them
/// are optimistic. Sorted by patient.
pub fn patients_across_splits(samples: &[Sample]) -> Vec<(String, Vec<Split>)> {
    let mut m: BTreeMap<&str, std::collections::BTreeSet<Split>> = BTreeMap::new();
    for s in samples {
        if let Some(x) = s.split {
            m.entry(&s.patient).or_default().insert(x);
        }
    }
    m.into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(p, v)| (p.to_string(), v.into_iter().collect()))
        .collect()
}

/// Columns of `split.csv` (and of the DICOM ingest's manifest), in order.
pub const SPLIT_HEADER: [&str; 6] = ["path", "frame", "label", "severity", "patient_id", "split"];

/// Writes `path,frame,label,severity,patient_id,split` for the samples (absolute paths), so
/// `renalscan eval --data <run>/split.csv` scores exactly the held-out test patients.
pub fn write_split_csv(samples: &[Sample], out: &Path) -> Result<(), DatasetError> {
    let rows = samples.iter().map(|x| {
        let path = fs::canonicalize(&x.path).unwrap_or_else(|_| x.path.clone());
        [
            path.display().to_string(),
            x.frame.to_string(),
            DATA_LABELS[x.label].to_string(),
            x.severity.map(|v| v.to_string()).unwrap_or_default(),
            x.patient.clone(),
            x.split.map_or("", Split::name).to_string(),
        ]
    });
    write_csv(out, &SPLIT_HEADER, rows)
}

/// Per split and label ([`DATA_LABELS`]): image counts (for logs and the manifest).
pub fn summary(samples: &[Sample]) -> BTreeMap<&'static str, [usize; DATA_LABELS.len()]> {
    let mut m = BTreeMap::new();
    for s in samples {
        let k = s.split.map_or("unassigned", Split::name);
        m.entry(k).or_insert([0; DATA_LABELS.len()])[s.label] += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_spellings() {
        assert_eq!(parse_label("Normal"), Some(0));
        assert_eq!(parse_label("kidney_stone"), Some(1));
        assert_eq!(parse_label("Space-occupying lesion"), Some(4));
        assert_eq!(parse_label("hyper-echogenicity"), Some(3));
        assert_eq!(parse_label("HN"), Some(5));
        assert_eq!(parse_label("banana"), None);
        assert_eq!(parse_label("no_kidney"), Some(NO_KIDNEY));
        assert_eq!(parse_label("Non-kidney"), Some(NO_KIDNEY));
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn csv_unknown_labels_are_listed() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "m.csv",
            "path,label,patient_id\na.png,normal,1\nb.png,banana,2\nc.png,kiwi,3\n",
        );
        let e = load_csv(&p).unwrap_err().to_string();
        assert!(
            e.contains("line 3: `banana`") && e.contains("line 4: `kiwi`"),
            "{e}"
        );
    }

    #[test]
    fn a_sweep_set_trains_on_what_each_frame_shows() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "sweeps.csv",
            "path,label,seed\nstone-000,stone,1\nnormal-000,normal,2\n",
        );
        fs::create_dir(d.path().join("stone-000")).unwrap();
        fs::create_dir(d.path().join("normal-000")).unwrap();
        let header = "path,index,time_s,state,label,severity,patient_id,lesion_visible,view\n";
        // Frames 0-5 of a stone pass: the stone in view in frames 2-3; frame 4 frozen.
        let mut stone = header.to_string();
        for (i, (state, vis)) in [
            ("scanning", 0),
            ("scanning", 0),
            ("scanning", 1),
            ("scanning", 1),
            ("frozen", 1),
            ("scanning", 0),
        ]
        .iter()
        .enumerate()
        {
            stone.push_str(&format!(
                "frame_{i:06}.png,{i},0.0,{state},stone,0.200,900007,{vis},kidney\n"
            ));
        }
        write(&d.path().join("stone-000"), "frames.csv", &stone);
        write(
            &d.path().join("normal-000"),
            "frames.csv",
            &format!(
                "{header}frame_000000.png,0,0.0,scanning,normal,0.000,900008,0,kidney\n\
                 frame_000001.png,1,0.0,scanning,normal,0.000,900008,0,kidney\n"
            ),
        );
        let got = load(d.path()).unwrap();
        let seen: Vec<(String, usize, String)> = got
            .iter()
            .map(|s| {
                let name = s.path.file_name().unwrap().to_string_lossy().to_string();
                (name, s.label, s.patient.clone())
            })
            .collect();
        let stone = Class::Stone.index();
        assert_eq!(
            seen,
            vec![
                // Even frames, and odd ones only where the stone is in view.
                ("frame_000000.png".into(), 0, "sweep:900007".into()),
                ("frame_000002.png".into(), stone, "sweep:900007".into()),
                ("frame_000003.png".into(), stone, "sweep:900007".into()),
                ("frame_000000.png".into(), 0, "sweep:900008".into()),
            ]
        );
        assert_eq!(got[1].severity, Some(0.2));
        assert_eq!(got[0].severity, None);
        // A recorded sweep without per-frame truth is refused by name.
        write(
            &d.path().join("normal-000"),
            "frames.csv",
            "path,index,state,label\nframe_000000.png,0,scanning,normal\n",
        );
        let e = load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("lesion_visible") && e.contains("normal-000"),
            "{e}"
        );
    }

    #[test]
    fn csv_columns_any_order() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "m.csv",
            "split,patient_id,label,path\ntest,7,cyst,x/a.png\n",
        );
        let s = load_csv(&p).unwrap();
        assert_eq!(s[0].label, 2);
        assert_eq!(s[0].patient, "7");
        assert_eq!(s[0].split, Some(Split::Test));
        assert_eq!(s[0].path, d.path().join("x/a.png"));
    }

    #[test]
    fn reads_a_clinic_style_export() {
        let d = tempfile::tempdir().unwrap();
        // Excel's "CSV UTF-8" from a clinic system: byte-order mark, CRLF, quoted cells with
        // commas, doubled quotes and a line break, columns the reader does not know, another
        // column order, a blank line and a row with more cells than the header.
        let text = "\u{feff}Referrer,Label,Patient_ID,Path,Notes,Split\r\n\
             \"Dr. Ng, Renal\",Cyst,P1,\"Smith, J/left kidney.png\",\"seen twice, no change\",train\r\n\
             \r\n\
             Dr. Ng,normal,\"P\"\"2\"\"\",plain/b.png,\"he said \"\"fine\"\"\",val,extra,cells\r\n\
             ,Stone, P3 ,\"with \"\"quote\"\".png\",\"first line\r\nsecond line\",test\r\n\
             Dr. Ng,no_kidney,P3,liver.png\r\n";
        let p = write(d.path(), "export.csv", text);
        let s = load_csv(&p).unwrap();
        let got: Vec<(PathBuf, usize, &str, Option<Split>)> = s
            .iter()
            .map(|s| (s.path.clone(), s.label, s.patient.as_str(), s.split))
            .collect();
        let base = d.path();
        assert_eq!(
            got,
            [
                (
                    base.join("Smith, J/left kidney.png"),
                    2,
                    "P1",
                    Some(Split::Train)
                ),
                (base.join("plain/b.png"), 0, "P\"2\"", Some(Split::Val)),
                (base.join("with \"quote\".png"), 1, "P3", Some(Split::Test)),
                (base.join("liver.png"), NO_KIDNEY, "P3", None),
            ]
        );
        let table = CsvTable::read(&p).unwrap();
        assert_eq!(
            table.col(&["referrer"]),
            Some(0),
            "no BOM in the first name"
        );
        let lines: Vec<u64> = table.rows().iter().map(CsvRow::line).collect();
        assert_eq!(
            lines,
            [2, 4, 5, 7],
            "a quoted line break makes a row span two lines"
        );
    }

    #[test]
    fn split_csv_round_trips_commas_and_quotes() {
        let d = tempfile::tempdir().unwrap();
        let sample = |name: &str, patient: &str, split| Sample {
            path: d.path().join(name),
            frame: 3,
            label: 5,
            severity: Some(0.25),
            patient: patient.into(),
            split,
        };
        let samples = vec![
            sample(
                "Smith, J/\"left\" kidney.png",
                "Smith, J",
                Some(Split::Test),
            ),
            sample("plain.png", "say \"hi\"", Some(Split::Train)),
            sample("line\nbreak.png", "p3", None),
        ];
        let out = d.path().join("split.csv");
        write_split_csv(&samples, &out).unwrap();
        assert!(fs::read_to_string(&out)
            .unwrap()
            .starts_with("path,frame,label,severity,patient_id,split\n"));
        assert_eq!(load_csv(&out).unwrap(), samples);
    }

    #[test]
    fn bad_rows_name_their_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "m.csv",
            "path,label,notes\r\na.png,normal,\"two\r\nlines\"\r\n\r\nb.png,banana,\r\n",
        );
        let e = load_csv(&p).unwrap_err().to_string();
        assert!(e.contains("line 5: `banana` (b.png)"), "{e}");
        let p = write(
            d.path(),
            "m.csv",
            "path,label,split\na.png,normal,train\n,normal,test\nc.png,cyst,someday\n",
        );
        let e = load_csv(&p).unwrap_err().to_string();
        assert!(
            e.contains("line 3: no path") && e.contains("line 4: split `someday`"),
            "{e}"
        );
        let p = d.path().join("latin1.csv");
        fs::write(&p, b"path,label\na.png,normal\nb\xe9.png,cyst\n").unwrap();
        let e = load_csv(&p).unwrap_err();
        assert!(matches!(e, DatasetError::Csv { line: 3, .. }), "{e}");
        assert!(e.to_string().contains("latin1.csv line 3"), "{e}");
    }

    #[test]
    fn patients_split_by_the_manifest_are_found() {
        let sample = |patient: &str, split| Sample {
            path: PathBuf::from("x.png"),
            frame: 0,
            label: 0,
            severity: None,
            patient: patient.into(),
            split,
        };
        let v = vec![
            sample("a", Some(Split::Train)),
            sample("a", Some(Split::Val)),
            sample("b", Some(Split::Train)),
            sample("b", Some(Split::Train)),
            sample("c", None),
        ];
        assert_eq!(
            patients_across_splits(&v),
            vec![("a".to_string(), vec![Split::Train, Split::Val])]
        );
    }

    #[test]
    fn splits_keep_patients_together_and_stratify() {
        let mut samples = Vec::new();
        for p in 0..120 {
            for _ in 0..3 {
                samples.push(Sample {
                    path: PathBuf::from(format!("{p}.png")),
                    frame: 0,
                    label: p % 6,
                    severity: None,
                    patient: p.to_string(),
                    split: None,
                });
            }
        }
        let mut a = samples.clone();
        assign_splits(&mut a, 0.15, 0.15, 3);
        let mut by_patient: HashMap<&str, Split> = HashMap::new();
        for s in &a {
            let split = s.split.unwrap();
            assert_eq!(*by_patient.entry(&s.patient).or_insert(split), split);
        }
        let sum = summary(&a);
        assert_eq!(
            sum["test"],
            [9, 9, 9, 9, 9, 9, 0],
            "3 of 20 patients x 3 images per class"
        );
        assert_eq!(sum["val"], [9, 9, 9, 9, 9, 9, 0]);
        let mut b = samples;
        assign_splits(&mut b, 0.15, 0.15, 3);
        assert_eq!(a, b, "same seed, same split");
    }
}
