//! Stage 2's input: layer-3 activations (`1024 x 14 x 14` per view) of the frozen stem and
//! layers 1-3, computed once per (image content, view) with tract on a truncated ONNX export
//! and cached on disk as f16.
//!
//! f16 rather than bf16: layer-3 outputs are post-ReLU values far below f16's 65,504 limit,
//! so bf16's wide exponent buys nothing while its 8-bit mantissa (0.4% steps) would cost
//! precision; f16 keeps 11 bits (0.05%) at the same 392 KiB per view, half of f32.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use half::f16;
use model::Network;
use sha2::{Digest, Sha256};
use usimage::{FrameRef, Normalization, Preprocessor, PREPROCESS_VERSION};

use crate::augment::{self, AugParams, AUG_VERSION};
use crate::extract::{self, io, ExtractError, SIZE};

/// Channels of the layer-3 map.
pub const CHANNELS: usize = resnet50::STAGE_CHANNELS[2];
/// Its side for a 224 px input.
pub const SIDE: usize = SIZE / 16;
/// Floats per view.
pub const LEN: usize = CHANNELS * SIDE * SIDE;
/// Output name of the truncated model.
pub const OUTPUT: &str = "layer3";

const MAGIC: &[u8; 8] = b"RSACT001";
const RECORD: usize = 32 + 2 * LEN;

/// Cache key of `view` of the image with content hash `image`: view 0 (the original) does
/// not depend on the augmentation seed, the others do, and on [`AUG_VERSION`].
pub fn view_key(image: &[u8; 32], view: u32, seed: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"layer3");
    h.update(image);
    h.update(view.to_le_bytes());
    if view > 0 {
        h.update(seed.to_le_bytes());
        h.update(AUG_VERSION.to_le_bytes());
    }
    h.finalize().into()
}

/// Writes the stem and layers 1-3 of `weights` as ONNX (output [`OUTPUT`]) unless present.
pub fn write_layer3_onnx(
    weights: &resnet50::ResNet50,
    path: &Path,
) -> Result<(), crate::TrainError> {
    if path.is_file() {
        return Ok(());
    }
    let bytes = resnet50::onnx::export_trunk_onnx(
        weights,
        3,
        OUTPUT,
        SIZE,
        "ResNet-50 v1 stem + layers 1-3 (frozen part of stage-2 fine-tuning)",
    )?;
    Ok(extract::write_onnx(path, &bytes)?)
}

/// Layer-3 activations on disk: one file per (preprocessing version, backbone hash) holding
/// records of a 32-byte view key and `LEN` little-endian f16, appended as computed (an
/// interrupted run keeps what it did); reads go to the file, so memory stays small.
#[derive(Debug)]
pub struct ActivationCache {
    path: PathBuf,
    index: HashMap<[u8; 32], u64>,
    reader: Option<File>,
    writer: Option<BufWriter<File>>,
    end: u64,
}

impl ActivationCache {
    /// Opens (or creates) the cache for `backbone_sha` in `dir`.
    pub fn open(dir: &Path, backbone_sha: &str) -> Result<Self, ExtractError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let short = backbone_sha.get(..16).unwrap_or(backbone_sha);
        let path = dir.join(format!("layer3-pre{PREPROCESS_VERSION}-{short}.bin"));
        let mut index = HashMap::new();
        let mut end = MAGIC.len() as u64;
        if path.is_file() {
            let n = extract::record_file(&path, MAGIC, RECORD)?;
            end = 8 + n * RECORD as u64;
            let mut f = File::open(&path).map_err(io(&path))?;
            for r in 0..n {
                let off = 8 + r * RECORD as u64;
                let mut key = [0u8; 32];
                f.seek(SeekFrom::Start(off))
                    .and_then(|_| f.read_exact(&mut key))
                    .map_err(io(&path))?;
                index.insert(key, off + 32);
            }
            log::info!("activation cache {}: {} views", path.display(), index.len());
        }
        Ok(Self {
            path,
            index,
            reader: None,
            writer: None,
            end,
        })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Views stored.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Nothing stored.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether a view is stored.
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.index.contains_key(key)
    }

    /// Appends one view (`LEN` f16 bit patterns); a known key is ignored.
    pub fn insert(&mut self, key: &[u8; 32], v: &[u16]) -> Result<(), ExtractError> {
        if self.index.contains_key(key) || v.len() != LEN {
            return Ok(());
        }
        if self.writer.is_none() {
            self.writer = Some(extract::append_writer(&self.path, MAGIC, 1 << 20)?);
        }
        if let Some(w) = self.writer.as_mut() {
            let mut rec = Vec::with_capacity(RECORD);
            rec.extend_from_slice(key);
            for x in v {
                rec.extend_from_slice(&x.to_le_bytes());
            }
            w.write_all(&rec).map_err(io(&self.path))?;
        }
        self.index.insert(*key, self.end + 32);
        self.end += RECORD as u64;
        Ok(())
    }

    /// Flushes appended records (reads see them only after this).
    pub fn flush(&mut self) -> Result<(), ExtractError> {
        if let Some(w) = self.writer.as_mut() {
            w.flush().map_err(io(&self.path))?;
        }
        Ok(())
    }

    /// Reads a view as f32 into `out` (`LEN` values); false if it is not cached.
    pub fn read(&mut self, key: &[u8; 32], out: &mut [f32]) -> Result<bool, ExtractError> {
        self.read_with(key, |i, bits| {
            if let Some(o) = out.get_mut(i) {
                *o = f16::from_bits(bits).to_f32();
            }
        })
    }

    /// Reads a view as stored, f16 bit patterns, into `out` (`LEN` values): half the memory
    /// of [`ActivationCache::read`] for callers that hold many views; false if not cached.
    pub fn read_f16(&mut self, key: &[u8; 32], out: &mut [u16]) -> Result<bool, ExtractError> {
        self.read_with(key, |i, bits| {
            if let Some(o) = out.get_mut(i) {
                *o = bits;
            }
        })
    }

    /// [`ActivationCache::read_f16`] of a view that must be there (extracted a moment ago):
    /// its absence is an error naming the cache.
    pub fn read_f16_extracted(
        &mut self,
        key: &[u8; 32],
        out: &mut [u16],
    ) -> Result<(), ExtractError> {
        if self.read_f16(key, out)? {
            Ok(())
        } else {
            Err(ExtractError::Cache(format!(
                "a layer-3 map is missing from {} after extraction",
                self.path.display()
            )))
        }
    }

    /// Reads a view's `LEN` stored values, handing each (index, f16 bits) to `put`.
    fn read_with(
        &mut self,
        key: &[u8; 32],
        mut put: impl FnMut(usize, u16),
    ) -> Result<bool, ExtractError> {
        let Some(&off) = self.index.get(key) else {
            return Ok(false);
        };
        self.flush()?;
        if self.reader.is_none() {
            self.reader = Some(File::open(&self.path).map_err(io(&self.path))?);
        }
        let Some(f) = self.reader.as_ref() else {
            return Ok(false);
        };
        let mut buf = vec![0u8; 2 * LEN];
        f.read_exact_at(&mut buf, off).map_err(io(&self.path))?;
        for (i, b) in buf.chunks_exact(2).enumerate() {
            put(i, u16::from_le_bytes([b[0], b[1]]));
        }
        Ok(true)
    }
}

/// f32 to f16 bit patterns, saturating (never infinity).
pub fn to_f16(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| f16::from_f32(x.clamp(-65504.0, 65504.0)).to_bits())
        .collect()
}

/// One image to extract: its file and how many augmented views besides the original.
#[derive(Debug, Clone)]
pub struct Item {
    /// Image file and frame.
    pub frame: FrameRef,
    /// Augmented views (0: the original only).
    pub views: u32,
}

/// Per image: its content hash, or why it could not be read.
pub type ImageHashes = Vec<Result<[u8; 32], String>>;

enum Msg {
    View([u8; 32], Vec<u16>),
    Image(usize, Result<[u8; 32], String>),
}

/// Fills `cache` with views `0..=views` of every item (the layer-3 map is the output
/// `output` of `layer3_onnx`: [`OUTPUT`] of [`write_layer3_onnx`]'s file, `features` of stage
/// 1's trunk; one tract model per thread). Returns per item its content hash or why it
/// failed, and how many views were computed (not cached).
pub fn extract(
    items: &[Item],
    (layer3_onnx, output): (&Path, &str),
    cache: &mut ActivationCache,
    seed: u64,
    threads: usize,
) -> Result<(ImageHashes, usize), ExtractError> {
    let total: u64 = items.iter().map(|i| u64::from(i.views) + 1).sum();
    let bar = extract::progress(total, "layer-3 activations (views)");
    let known: HashSet<[u8; 32]> = cache.index.keys().copied().collect();
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<Msg>();
    let threads = threads.max(1).min(items.len().max(1));
    let norm = Normalization::caffe_bgr();
    let mut results: ImageHashes = vec![Err("not processed".into()); items.len()];
    let mut computed = 0usize;
    std::thread::scope(|scope| -> Result<(), ExtractError> {
        let mut handles = Vec::new();
        for _ in 0..threads {
            let (tx, next, known, norm) = (tx.clone(), &next, &known, &norm);
            handles.push(scope.spawn(move || -> Result<(), ExtractError> {
                let mut net: Option<Network> = None;
                let mut pre = Preprocessor::new(SIZE as u32, norm.clone());
                let mut input = vec![0f32; 3 * SIZE * SIZE];
                let mut view_in = vec![0f32; 3 * SIZE * SIZE];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else {
                        return Ok(());
                    };
                    let bytes = match fs::read(item.frame.path()) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Msg::Image(i, Err(e.to_string())));
                            continue;
                        }
                    };
                    let hash = item.frame.content_key(&bytes);
                    let mut decoded = false;
                    let mut failed = None;
                    for view in 0..=item.views {
                        let key = view_key(&hash, view, seed);
                        if known.contains(&key) {
                            continue;
                        }
                        if !decoded {
                            if let Err(e) =
                                extract::preprocess_bytes(&bytes, &item.frame, &mut pre, &mut input)
                            {
                                failed = Some(e);
                                break;
                            }
                            decoded = true;
                        }
                        view_in.copy_from_slice(&input);
                        augment::apply(
                            &mut view_in,
                            SIZE,
                            norm,
                            &AugParams::draw(seed, &hash, view),
                        );
                        if net.is_none() {
                            net = Some(Network::load(layer3_onnx, &[1, 3, SIZE, SIZE])?);
                        }
                        let Some(n) = net.as_ref() else {
                            continue;
                        };
                        let outs = n.run(&view_in)?;
                        let o =
                            model::output(&outs, output).ok_or_else(|| ExtractError::NoOutput {
                                model: layer3_onnx.display().to_string(),
                                output: output.into(),
                            })?;
                        if tx.send(Msg::View(key, to_f16(&o.data))).is_err() {
                            return Ok(());
                        }
                    }
                    let r = failed.map_or(Ok(hash), Err);
                    if tx.send(Msg::Image(i, r)).is_err() {
                        return Ok(());
                    }
                }
            }));
        }
        drop(tx);
        for m in rx {
            match m {
                Msg::View(key, v) => {
                    cache.insert(&key, &v)?;
                    computed += 1;
                    bar.inc(1);
                }
                Msg::Image(i, r) => {
                    // Views that were cached (or never computed because the image failed).
                    let done = match &r {
                        Ok(h) => (0..=items[i].views)
                            .filter(|&v| known.contains(&view_key(h, v, seed)))
                            .count() as u64,
                        Err(_) => u64::from(items[i].views) + 1,
                    };
                    bar.inc(done);
                    results[i] = r;
                }
            }
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
    cache.flush()?;
    Ok((results, computed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn round_trip_keys_and_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let v: Vec<f32> = (0..LEN).map(|i| (i % 97) as f32 * 0.37).collect();
        let img = [5u8; 32];
        let (k0, k1) = (view_key(&img, 0, 1), view_key(&img, 1, 1));
        assert_ne!(k0, k1, "views have their own keys");
        assert_eq!(
            k0,
            view_key(&img, 0, 2),
            "the original does not depend on the seed"
        );
        assert_ne!(k1, view_key(&img, 1, 2), "augmented views do");
        assert_ne!(k0, view_key(&[6; 32], 0, 1));
        let path = {
            let mut c = ActivationCache::open(d.path(), "0123456789abcdef00").unwrap();
            c.insert(&k0, &to_f16(&v)).unwrap();
            c.insert(&k1, &to_f16(&v)).unwrap();
            let mut out = vec![0f32; LEN];
            assert!(c.read(&k1, &mut out).unwrap(), "readable before reopening");
            c.flush().unwrap();
            c.path().to_path_buf()
        };
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        let mut c = ActivationCache::open(d.path(), "0123456789abcdef00").unwrap();
        assert_eq!(c.len(), 2);
        let mut out = vec![0f32; LEN];
        assert!(c.read(&k0, &mut out).unwrap());
        let worst = v
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "f16 relative error {worst}");
        assert!(!c.read(&view_key(&img, 2, 1), &mut out).unwrap());
        // Appending after a torn tail stays aligned.
        c.insert(&view_key(&img, 2, 1), &to_f16(&v)).unwrap();
        c.flush().unwrap();
        let c = ActivationCache::open(d.path(), "0123456789abcdef00").unwrap();
        assert_eq!(c.len(), 3);
    }
}
