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

/// The renal model's input side: the 224 the ImageNet weights were trained at. A 320 input
/// (each finding on twice the pixels, twice the device's compute per frame) was measured on
/// six seeds and gained on three, lost on three (`host-tools/train/README.md`, "Recipe
/// candidates"); the exports take the side as a parameter, so it is one line to try again.
pub const SIZE: usize = resnet50::INPUT_SIZE;
/// The default recipe's feature map: layer3's. A linear head on its channel means beat one on
/// layer4's on the same images and splits, on still images of the training scanner and of
/// unseen ones; per exam it was no better (`host-tools/train/README.md`, "Which layer the
/// head reads").
pub const TAP: resnet50::Tap = resnet50::Tap::Layer3;

/// Writes the stem and the stages up to `tap` of `weights` (output
/// [`resnet50::onnx::FEATURES`]) at `path`, unless the file already holds exactly these
/// bytes: stage 1's backbone for a head on `tap`, exported from the same weights on every run
/// so it cannot go stale (the feature cache is keyed by its hash).
pub fn write_trunk_onnx(
    weights: &resnet50::ResNet50,
    tap: resnet50::Tap,
    doc: &str,
    path: &Path,
) -> Result<(), crate::TrainError> {
    let bytes = resnet50::onnx::export_trunk_onnx(
        weights,
        tap.stages(),
        resnet50::onnx::FEATURES,
        SIZE,
        &format!("{doc} Stem and stages up to {}.", tap.name()),
    )?;
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    Ok(write_onnx(path, &bytes)?)
}

/// Writes a model file beside its place and renames it there, so a reader (a cart, a
/// resumed run, the feature cache's hash) never sees half a model.
pub(crate) fn write_onnx(path: &Path, bytes: &[u8]) -> Result<(), ExtractError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("onnx.partial");
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    log::info!(
        "wrote {} ({:.1} MB)",
        path.display(),
        bytes.len() as f64 / 1e6
    );
    Ok(())
}
/// The default recipe's pooling (see [`resnet50::Pooling`]).
pub const POOLING: resnet50::Pooling = resnet50::Pooling::Avg;
/// The default recipe's augmented views per training image for stage 1's head: none. One
/// view raised the development seeds' test AUC by 0.008 but called the demo's normal sweep
/// abnormal (`host-tools/train/README.md`), so it is opt-in (`--head-views 1`).
pub const HEAD_VIEWS: u32 = 0;

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

/// What the worker computes from one image: the named output, optionally pooled over the
/// spatial axes (N x C x H x W -> C, or 2 C for average then maximum).
#[derive(Debug, Clone)]
pub struct Job<'a> {
    /// ONNX model bytes (read, or verified, once by the caller).
    pub model: &'a [u8],
    /// Where they came from, for messages.
    pub origin: &'a Path,
    /// Outputs to read, concatenated in this order per image.
    pub outputs: &'a [&'a str],
    /// Pool a 4-D output over its spatial axes.
    pub pool: Option<resnet50::Pooling>,
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

/// Appends the pooled vector of a `C x H x W` map: the channel means, then (for
/// [`resnet50::Pooling::AvgMax`]) the channel maxima; the order the exported head concatenates.
pub fn pool_into(v: &mut Vec<f32>, map: &[f32], channels: usize, pooling: resnet50::Pooling) {
    let hw = map.len() / channels.max(1);
    if hw == 0 {
        return;
    }
    let planes = map.chunks_exact(hw);
    v.extend(planes.clone().map(|p| p.iter().sum::<f32>() / hw as f32));
    if pooling == resnet50::Pooling::AvgMax {
        v.extend(planes.map(|p| p.iter().copied().fold(f32::NEG_INFINITY, f32::max)));
    }
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
    run_views(paths, &vec![0; paths.len()], 0, job, skip, on_result)
}

/// The key of `view` of the image with content hash `hash`: the hash itself for the
/// original (view 0), else [`crate::activations::view_key`] (seed and augmentation version).
pub fn view_key(hash: &[u8; 32], view: u32, seed: u64) -> [u8; 32] {
    if view == 0 {
        *hash
    } else {
        crate::activations::view_key(hash, view, seed)
    }
}

/// [`run`] where `paths[i]` is seen as augmented view `views[i]` (0: the original; others
/// drawn by [`crate::augment::AugParams::draw`] from `seed`, the image and the view, after
/// preprocessing, as stage 2 does). Keys given to `skip` and `on_result` are [`view_key`]s.
pub fn run_views(
    paths: &[FrameRef],
    views: &[u32],
    seed: u64,
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
                    let view = views.get(i).copied().unwrap_or(0);
                    let image = frame.content_key(&bytes);
                    let hash = view_key(&image, view, seed);
                    if let Some(v) = skip(&hash) {
                        let _ = tx.send((i, hash, Ok(v)));
                        continue;
                    }
                    if let Err(e) = preprocess_bytes(&bytes, frame, &mut pre, &mut input) {
                        let _ = tx.send((i, hash, Err(e)));
                        continue;
                    }
                    if view > 0 {
                        let p = crate::augment::AugParams::draw(seed, &image, view);
                        crate::augment::apply(&mut input, SIZE, &Normalization::caffe_bgr(), &p);
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
                        match job.pool {
                            Some(p) if o.shape.len() == 4 => {
                                pool_into(&mut v, &o.data, o.shape[1], p)
                            }
                            _ => v.extend_from_slice(&o.data),
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

/// Pooled backbone features on disk: one file per (preprocessing version, pooling, backbone
/// hash), records of `sha256(image bytes)` + the pooled width in little-endian f32, appended
/// as they are computed (an interrupted run keeps what it did). The backbone file differs per
/// [`resnet50::Tap`], so its hash keeps the taps apart.
#[derive(Debug)]
pub struct FeatureCache {
    path: PathBuf,
    pooling: resnet50::Pooling,
    width: usize,
    map: HashMap<[u8; 32], Vec<f32>>,
    writer: Option<BufWriter<File>>,
}

impl FeatureCache {
    /// Opens (or creates) the cache of `pooling` features of a `channels`-channel map for
    /// `backbone_sha` in `dir`.
    pub fn open(
        dir: &Path,
        backbone_sha: &str,
        pooling: resnet50::Pooling,
        channels: usize,
    ) -> Result<Self, ExtractError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let short = backbone_sha.get(..16).unwrap_or(backbone_sha);
        // Average-only caches keep their original name, so existing ones stay valid.
        let tag = match pooling {
            resnet50::Pooling::Avg => String::new(),
            p => format!("{}-", p.name()),
        };
        let path = dir.join(format!("features-pre{PREPROCESS_VERSION}-{tag}{short}.bin"));
        let width = pooling.width(channels);
        let mut map = HashMap::new();
        if path.is_file() {
            let rec = 32 + 4 * width;
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
            pooling,
            width,
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
        let width = self.width;
        if self.map.contains_key(key) || v.len() != width {
            return Ok(());
        }
        if self.writer.is_none() {
            self.writer = Some(append_writer(&self.path, MAGIC, 8 << 10)?);
        }
        if let Some(w) = self.writer.as_mut() {
            let mut rec = Vec::with_capacity(32 + 4 * width);
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

/// Pooled backbone features of `paths` (cached, pooled as the cache is), or why an image
/// failed; plus how many were computed rather than read from the cache.
pub fn features(
    paths: &[FrameRef],
    backbone: &Path,
    cache: &mut FeatureCache,
    threads: usize,
) -> Result<(FeatureResults, usize), ExtractError> {
    features_of_views(paths, &vec![0; paths.len()], 0, backbone, cache, threads)
}

/// [`features`] of augmented views (see [`run_views`]), cached under their view keys.
pub fn features_of_views(
    paths: &[FrameRef],
    views: &[u32],
    seed: u64,
    backbone: &Path,
    cache: &mut FeatureCache,
    threads: usize,
) -> Result<(FeatureResults, usize), ExtractError> {
    let bytes = fs::read(backbone).map_err(io(backbone))?;
    let job = Job {
        model: &bytes,
        origin: backbone,
        outputs: &[resnet50::onnx::FEATURES],
        pool: Some(cache.pooling),
        threads,
        label: if views.iter().any(|&v| v > 0) {
            "augmented views"
        } else {
            "features"
        },
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
    let r = run_views(paths, views, seed, &job, &skip, &mut on)?;
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
        const C: usize = 2048;
        let v: Vec<f32> = (0..C).map(|i| i as f32 * 0.5).collect();
        let path = {
            let mut c =
                FeatureCache::open(d.path(), "abcdef0123456789ffff", resnet50::Pooling::Avg, C)
                    .unwrap();
            c.insert(&[7; 32], &v).unwrap();
            c.insert(&[8; 32], &v).unwrap();
            c.flush().unwrap();
            c.path().to_path_buf()
        };
        // Simulate a kill mid-record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        let c = FeatureCache::open(d.path(), "abcdef0123456789ffff", resnet50::Pooling::Avg, C)
            .unwrap();
        assert_eq!(c.get(&[7; 32]), Some(&v));
        assert!(c.get(&[8; 32]).is_some());
        assert!(c.get(&[9; 32]).is_none());
    }

    #[test]
    fn avg_max_pools_means_then_maxima_and_caches_apart() {
        // 2 channels of a 2 x 2 map.
        let map = [1.0, 2.0, 3.0, 6.0, -1.0, -4.0, -2.0, -1.0];
        let mut v = Vec::new();
        pool_into(&mut v, &map, 2, resnet50::Pooling::AvgMax);
        assert_eq!(v, [3.0, -2.0, 6.0, -1.0]);
        let mut a = Vec::new();
        pool_into(&mut a, &map, 2, resnet50::Pooling::Avg);
        assert_eq!(a, [3.0, -2.0]);
        // Each pooling has its own file, and a cache refuses vectors of the other's width.
        const C: usize = 2048;
        let d = tempfile::tempdir().unwrap();
        let sha = "abcdef0123456789ffff";
        let mut avg = FeatureCache::open(d.path(), sha, resnet50::Pooling::Avg, C).unwrap();
        let mut am = FeatureCache::open(d.path(), sha, resnet50::Pooling::AvgMax, C).unwrap();
        assert_ne!(avg.path(), am.path());
        let wide = vec![0.5; 2 * C];
        am.insert(&[1; 32], &wide).unwrap();
        avg.insert(&[1; 32], &wide).unwrap();
        am.flush().unwrap();
        avg.flush().unwrap();
        let am = FeatureCache::open(d.path(), sha, resnet50::Pooling::AvgMax, C).unwrap();
        assert_eq!(am.get(&[1; 32]), Some(&wide));
        let avg = FeatureCache::open(d.path(), sha, resnet50::Pooling::Avg, C).unwrap();
        assert!(avg.get(&[1; 32]).is_none());
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
