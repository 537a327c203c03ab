//! Running an ONNX model over image files (tract, parallel, progress bar) and the feature
//! cache: frozen-backbone features are computed once per image content, preprocessing
//! version and backbone.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use model::Network;
use progress::Progress;
use sha2::{Digest, Sha256};
use usimage::{FrameRef, Normalization, Preprocessor, PREPROCESS_VERSION};

/// Model input side.
pub const SIZE: usize = resnet50::INPUT_SIZE;
/// Pooled feature width.
pub const FEATURES: usize = resnet50::FEATURE_CHANNELS;

/// Errors of extraction.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// File system.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Model loading or inference.
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// The model lacks the output asked for.
    #[error("model {model} has no output `{output}`")]
    NoOutput {
        /// The ONNX file.
        model: String,
        /// The missing output.
        output: String,
    },
    /// Too many unreadable images.
    #[error("{failed} of {total} images could not be read (more than {max_pct}%):\n{list}")]
    TooManyFailures {
        /// Failed.
        failed: usize,
        /// Attempted.
        total: usize,
        /// Tolerated percentage.
        max_pct: f64,
        /// The first failures.
        list: String,
    },
    /// A corrupt cache file.
    #[error("feature cache {0} is corrupt: delete it")]
    Cache(String),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String, ExtractError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Decodes frame `frame` of an image file's bytes and writes the model input (the same
/// usimage path the device runs).
pub fn preprocess_bytes(
    bytes: &[u8],
    frame: &FrameRef,
    pre: &mut Preprocessor,
    out: &mut [f32],
) -> Result<(), String> {
    let grey = frame.decode(bytes).map_err(|e| e.to_string())?;
    pre.process(&grey, out).map_err(|e| e.to_string())?;
    Ok(())
}

/// What the worker computes from one image: the named output, optionally averaged over the
/// spatial axes (N x C x H x W -> C).
#[derive(Debug, Clone)]
pub struct Job<'a> {
    /// ONNX model bytes (read, or verified, once by the caller).
    pub model: &'a [u8],
    /// Where they came from, for messages.
    pub origin: &'a Path,
    /// Outputs to read, concatenated in this order per image.
    pub outputs: &'a [&'a str],
    /// Global-average-pool a 4-D output.
    pub pool: bool,
    /// Worker threads (each loads its own copy of the model: tract runs one image per core
    /// faster than one image on two cores).
    pub threads: usize,
    /// Progress bar label.
    pub label: &'a str,
}

/// The progress of `len` images labelled `label`: a bar on a terminal, log lines otherwise.
pub fn progress(len: u64, label: &str) -> Progress {
    Progress::new(label, len)
}

type WorkResult = (usize, [u8; 32], Result<Vec<f32>, String>);

/// Receives each freshly computed output with its image hash.
pub type Sink<'a> = dyn FnMut(&[u8; 32], &[f32]) -> Result<(), ExtractError> + 'a;

/// Runs `job` over `paths`. Returns, per path, its content hash and the output or why the
/// image could not be read. `skip(hash)` returning a value short-cuts inference (cache hit);
/// `on_result` sees every freshly computed output (to append it to a cache).
pub fn run(
    paths: &[FrameRef],
    job: &Job<'_>,
    skip: &(dyn Fn(&[u8; 32]) -> Option<Vec<f32>> + Sync),
    on_result: &mut Sink<'_>,
) -> Result<Vec<Result<Vec<f32>, String>>, ExtractError> {
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<WorkResult>();
    let threads = job.threads.max(1).min(paths.len().max(1));
    let bar = progress(paths.len() as u64, job.label);
    let mut results: Vec<Option<Result<Vec<f32>, String>>> = vec![None; paths.len()];
    std::thread::scope(|scope| -> Result<(), ExtractError> {
        let mut handles = Vec::new();
        for _ in 0..threads {
            let tx = tx.clone();
            let next = &next;
            handles.push(scope.spawn(move || -> Result<(), ExtractError> {
                let mut net: Option<Network> = None;
                let mut pre = Preprocessor::new(SIZE as u32, Normalization::caffe_bgr());
                let mut input = vec![0f32; 3 * SIZE * SIZE];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(frame) = paths.get(i) else {
                        return Ok(());
                    };
                    let bytes = match fs::read(frame.path()) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send((i, [0; 32], Err(e.to_string())));
                            continue;
                        }
                    };
                    let hash = frame.content_key(&bytes);
                    if let Some(v) = skip(&hash) {
                        let _ = tx.send((i, hash, Ok(v)));
                        continue;
                    }
                    if let Err(e) = preprocess_bytes(&bytes, frame, &mut pre, &mut input) {
                        let _ = tx.send((i, hash, Err(e)));
                        continue;
                    }
                    if net.is_none() {
                        net = Some(Network::from_bytes(
                            job.model,
                            job.origin,
                            &[1, 3, SIZE, SIZE],
                            &model::int8::LoadOptions::default(),
                        )?);
                    }
                    let Some(n) = net.as_ref() else {
                        continue;
                    };
                    let outs = n.run(&input)?;
                    let mut v = Vec::new();
                    for name in job.outputs {
                        let o =
                            model::output(&outs, name).ok_or_else(|| ExtractError::NoOutput {
                                model: job.origin.display().to_string(),
                                output: name.to_string(),
                            })?;
                        if job.pool && o.shape.len() == 4 {
                            let (c, hw) = (o.shape[1], o.shape[2] * o.shape[3]);
                            v.extend((0..c).map(|k| {
                                o.data[k * hw..(k + 1) * hw].iter().sum::<f32>() / hw as f32
                            }));
                        } else {
                            v.extend_from_slice(&o.data);
                        }
                    }
                    if tx.send((i, hash, Ok(v))).is_err() {
                        return Ok(());
                    }
                }
            }));
        }
        drop(tx);
        for (i, hash, r) in rx {
            if let Ok(v) = &r {
                on_result(&hash, v)?;
            }
            results[i] = Some(r);
            bar.inc(1);
        }
        for h in handles {
            match h.join() {
                Ok(r) => r?,
                Err(_) => return Err(ExtractError::Cache("worker thread panicked".into())),
            }
        }
        Ok(())
    })?;
    bar.finish();
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not processed".into())))
        .collect())
}

/// Fails if more than `max_pct` percent of `results` are errors; otherwise logs them.
pub fn check_failures<T>(
    paths: &[FrameRef],
    results: &[Result<T, String>],
    max_pct: f64,
) -> Result<usize, ExtractError> {
    let failed: Vec<String> = paths
        .iter()
        .zip(results)
        .filter_map(|(p, r)| r.as_ref().err().map(|e| format!("  {p}: {e}")))
        .collect();
    for f in &failed {
        log::warn!("skipped{f}");
    }
    if failed.len() as f64 > max_pct / 100.0 * results.len() as f64 {
        return Err(ExtractError::TooManyFailures {
            failed: failed.len(),
            total: results.len(),
            max_pct,
            list: failed
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    Ok(failed.len())
}

const MAGIC: &[u8; 8] = b"RSFEAT01";

/// Opens an append-only cache file for appending, writing `magic` first when the file is
/// new; the writer is buffered by `capacity` bytes.
pub(crate) fn append_writer(
    path: &Path,
    magic: &[u8; 8],
    capacity: usize,
) -> Result<BufWriter<File>, ExtractError> {
    let fresh = !path.is_file();
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    let mut w = BufWriter::with_capacity(capacity, f);
    if fresh {
        w.write_all(magic).map_err(io(path))?;
    }
    Ok(w)
}

/// Checks an append-only cache file (8-byte `magic`, then fixed-size records) and cuts off a
/// torn last record (killed mid-write) so appends stay aligned. Returns the record count.
pub(crate) fn record_file(path: &Path, magic: &[u8; 8], rec: usize) -> Result<u64, ExtractError> {
    let mut f = File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let mut m = [0u8; 8];
    if len < 8 || f.read_exact(&mut m).is_err() || &m != magic {
        return Err(ExtractError::Cache(path.display().to_string()));
    }
    let n = (len - 8) / rec as u64;
    let whole = 8 + n * rec as u64;
    if whole != len {
        log::warn!("{}: dropping a torn last record", path.display());
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(whole))
            .map_err(io(path))?;
    }
    Ok(n)
}

/// Pooled backbone features on disk: one file per (preprocessing version, backbone hash),
/// records of `sha256(image bytes)` + 2048 little-endian f32, appended as they are computed
/// (an interrupted run keeps what it did).
#[derive(Debug)]
pub struct FeatureCache {
    path: PathBuf,
    map: HashMap<[u8; 32], Vec<f32>>,
    writer: Option<BufWriter<File>>,
}

impl FeatureCache {
    /// Opens (or creates) the cache for `backbone_sha` in `dir`.
    pub fn open(dir: &Path, backbone_sha: &str) -> Result<Self, ExtractError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let short = backbone_sha.get(..16).unwrap_or(backbone_sha);
        let path = dir.join(format!("features-pre{PREPROCESS_VERSION}-{short}.bin"));
        let mut map = HashMap::new();
        if path.is_file() {
            let rec = 32 + 4 * FEATURES;
            record_file(&path, MAGIC, rec)?;
            let bytes = fs::read(&path).map_err(io(&path))?;
            for r in bytes[8..].chunks_exact(rec) {
                let mut key = [0u8; 32];
                key.copy_from_slice(&r[..32]);
                let v = r[32..]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                map.insert(key, v);
            }
            log::info!("feature cache {}: {} images", path.display(), map.len());
        }
        Ok(Self {
            path,
            map,
            writer: None,
        })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Cached features of an image hash.
    pub fn get(&self, key: &[u8; 32]) -> Option<&Vec<f32>> {
        self.map.get(key)
    }

    /// Records and appends features.
    pub fn insert(&mut self, key: &[u8; 32], v: &[f32]) -> Result<(), ExtractError> {
        if self.map.contains_key(key) || v.len() != FEATURES {
            return Ok(());
        }
        if self.writer.is_none() {
            self.writer = Some(append_writer(&self.path, MAGIC, 8 << 10)?);
        }
        if let Some(w) = self.writer.as_mut() {
            let mut rec = Vec::with_capacity(32 + 4 * FEATURES);
            rec.extend_from_slice(key);
            for x in v {
                rec.extend_from_slice(&x.to_le_bytes());
            }
            w.write_all(&rec).map_err(io(&self.path))?;
        }
        self.map.insert(*key, v.to_vec());
        Ok(())
    }

    /// Flushes appended records.
    pub fn flush(&mut self) -> Result<(), ExtractError> {
        if let Some(w) = self.writer.as_mut() {
            w.flush().map_err(io(&self.path))?;
        }
        Ok(())
    }
}

/// Per image: its features or why it failed.
pub type FeatureResults = Vec<Result<Vec<f32>, String>>;

/// Pooled backbone features of `paths` (cached), 2048 floats each, or why an image failed;
/// plus how many were computed rather than read from the cache.
pub fn features(
    paths: &[FrameRef],
    backbone: &Path,
    cache: &mut FeatureCache,
    threads: usize,
) -> Result<(FeatureResults, usize), ExtractError> {
    let bytes = fs::read(backbone).map_err(io(backbone))?;
    let job = Job {
        model: &bytes,
        origin: backbone,
        outputs: &[resnet50::onnx::FEATURES],
        pool: true,
        threads,
        label: "features",
    };
    let snapshot: HashMap<[u8; 32], Vec<f32>> = cache.map.clone();
    let hits = std::sync::atomic::AtomicUsize::new(0);
    let skip = |k: &[u8; 32]| {
        let v = snapshot.get(k).cloned();
        if v.is_some() {
            hits.fetch_add(1, Ordering::Relaxed);
        }
        v
    };
    let mut added = 0usize;
    let mut on = |k: &[u8; 32], v: &[f32]| {
        if cache.get(k).is_none() {
            added += 1;
        }
        cache.insert(k, v)
    };
    let r = run(paths, &job, &skip, &mut on)?;
    cache.flush()?;
    log::info!(
        "features: {} from cache, {added} computed",
        hits.load(Ordering::Relaxed)
    );
    Ok((r, added))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip_and_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let v: Vec<f32> = (0..FEATURES).map(|i| i as f32 * 0.5).collect();
        let path = {
            let mut c = FeatureCache::open(d.path(), "abcdef0123456789ffff").unwrap();
            c.insert(&[7; 32], &v).unwrap();
            c.insert(&[8; 32], &v).unwrap();
            c.flush().unwrap();
            c.path().to_path_buf()
        };
        // Simulate a kill mid-record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        let c = FeatureCache::open(d.path(), "abcdef0123456789ffff").unwrap();
        assert_eq!(c.get(&[7; 32]), Some(&v));
        assert!(c.get(&[8; 32]).is_some());
        assert!(c.get(&[9; 32]).is_none());
    }

    #[test]
    fn failures_over_threshold_are_fatal() {
        let paths: Vec<FrameRef> = (0..10).map(|i| FrameRef::first(format!("{i}"))).collect();
        let mut r: Vec<Result<(), String>> = vec![Ok(()); 10];
        r[3] = Err("bad".into());
        assert_eq!(check_failures(&paths, &r, 10.0).unwrap(), 1);
        r[4] = Err("bad".into());
        assert!(check_failures(&paths, &r, 10.0).is_err());
    }
}
