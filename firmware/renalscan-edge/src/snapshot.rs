//! Snapshots of decisive frames: what the model saw, and where it looked.
//!
//! One PNG per snapshot, side by side: left the grey model input (the de-identified scan area,
//! letterboxed N x N, exactly what usimage fed the network), right the same image with the
//! class-activation map over it (bilinear upsampling of the 7 x 7 map, the inferno colormap,
//! alpha rising with the heat). Both panels are black outside the scan area: nothing of the
//! screen around the image (names, dates, IDs burned into the video) is ever written, even if
//! a caller passed a frame that usimage had not blanked.
//!
//! Writes are atomic (temporary file, fsync, rename), so a reader or a power cut never sees a
//! half PNG under a final name. The directory holds at most `keep` snapshots: the oldest (by
//! sequence number, which survives restarts, not by clock: carts without an RTC battery boot
//! in 1970) are removed after each write. A full or read-only disk is a typed error, never a
//! panic; the caller logs it and screening goes on.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use image::{ImageEncoder, Rgb, RgbImage};
use usimage::{Detector, FrameInfo, ScanKind};

/// Snapshots kept on disk by default (about 60 KB to 150 KB each).
pub const DEFAULT_KEEP: usize = 500;
/// Opacity of the heatmap where the map is at its maximum.
pub const DEFAULT_ALPHA: f32 = 0.6;
/// File name suffix; the temporary file adds `.tmp`.
const EXT: &str = "png";

/// Why a snapshot was not written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The inputs do not describe one N x N image and one map.
    #[error("snapshot input: {0}")]
    Input(String),
    /// The snapshot directory could not be created or listed.
    #[error("snapshot directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the file failed (disk full, read-only, I/O error); nothing is left behind.
    #[error("cannot write snapshot {path}{}: {source}", if is_disk_full(source) { " (disk full)" } else { "" })]
    Write {
        /// The final path that was not written.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// PNG encoding failed.
    #[error("cannot encode snapshot PNG: {0}")]
    Encode(#[from] image::ImageError),
}

impl SnapshotError {
    /// True when the write failed because the file system is full (or over quota).
    pub fn disk_full(&self) -> bool {
        matches!(self, SnapshotError::Write { source, .. } if is_disk_full(source))
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    // ENOSPC 28, EDQUOT 122 on Linux.
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
}

/// One frame to record.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// Grey model input, `size x size` (`Preprocessor::last_grey`).
    pub grey: &'a [u8],
    /// Side N of `grey` (224).
    pub size: u32,
    /// Scan-area mask in model-input pixels, `size x size`, non-zero inside (see
    /// [`scan_mask`]). Outside it nothing is drawn.
    pub mask: &'a [u8],
    /// Activation map in `[0, 1]`, row-major `map_h x map_w`
    /// (`model::cam::ActivationMap::normalised`).
    pub map: &'a [f32],
    /// Map columns.
    pub map_w: usize,
    /// Map rows.
    pub map_h: usize,
    /// Class label for the file name (`abnormal`, `stone`, ...).
    pub label: &'a str,
}

/// Scan-area mask in model-input coordinates for a frame that went through
/// `Preprocessor::process`: each output pixel inside `info.placed` is mapped back to the
/// source pixel it came from and tested with the detector that produced `info`. All zero when
/// no scan area was found.
pub fn scan_mask(detector: &Detector, info: &FrameInfo, size: u32) -> Vec<u8> {
    let n = size as usize;
    let mut mask = vec![0u8; n * n];
    if info.area.kind == ScanKind::None {
        return mask;
    }
    let [cx0, cy0, cx1, cy1] = info.crop;
    let [px0, py0, px1, py1] = info.placed;
    let (cw, ch) = (cx1.saturating_sub(cx0), cy1.saturating_sub(cy0));
    let (pw, ph) = (px1.saturating_sub(px0), py1.saturating_sub(py0));
    if cw == 0 || ch == 0 || pw == 0 || ph == 0 {
        return mask;
    }
    for v in py0..py1.min(size) {
        let sy = cy0 + ((u64::from(v - py0) * 2 + 1) * u64::from(ch) / (2 * u64::from(ph))) as u32;
        for u in px0..px1.min(size) {
            let sx =
                cx0 + ((u64::from(u - px0) * 2 + 1) * u64::from(cw) / (2 * u64::from(pw))) as u32;
            if detector.inside(sx, sy) {
                mask[v as usize * n + u as usize] = 1;
            }
        }
    }
    mask
}

/// Mask of a known image box in model-input pixels (`Preprocessor::process_with_box`, which
/// returns `placed`: everything inside it is image).
pub fn box_mask(placed: [u32; 4], size: u32) -> Vec<u8> {
    let n = size as usize;
    let mut mask = vec![0u8; n * n];
    for v in placed[1].min(size)..placed[3].min(size) {
        let row = &mut mask[v as usize * n..(v as usize + 1) * n];
        row[placed[0].min(size) as usize..placed[2].min(size) as usize].fill(1);
    }
    mask
}

/// Bilinear upsampling of a `h x w` map to `size x size` (cell centres at `(i + 0.5) * size /
/// w`, edges clamped), as the CAM literature displays it.
pub fn upsample(map: &[f32], w: usize, h: usize, size: u32) -> Vec<f32> {
    let n = size as usize;
    let mut out = vec![0.0f32; n * n];
    if w == 0 || h == 0 || map.len() != w * h {
        return out;
    }
    let axis = |i: usize, cells: usize| {
        let s = ((i as f32 + 0.5) * cells as f32 / n as f32 - 0.5).clamp(0.0, (cells - 1) as f32);
        let i0 = s.floor() as usize;
        (i0, (i0 + 1).min(cells - 1), s - i0 as f32)
    };
    let xs: Vec<_> = (0..n).map(|x| axis(x, w)).collect();
    for y in 0..n {
        let (y0, y1, fy) = axis(y, h);
        for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
            let top = map[y0 * w + x0] * (1.0 - fx) + map[y0 * w + x1] * fx;
            let bot = map[y1 * w + x0] * (1.0 - fx) + map[y1 * w + x1] * fx;
            out[y * n + x] = top * (1.0 - fy) + bot * fy;
        }
    }
    out
}

/// Inferno colormap (matplotlib; perceptually uniform, monotonic in lightness, readable in
/// grey print and by colour-blind readers): nine published stops, linearly interpolated.
const INFERNO: [[u8; 3]; 9] = [
    [0x00, 0x00, 0x04],
    [0x1F, 0x0C, 0x48],
    [0x55, 0x0F, 0x6D],
    [0x88, 0x22, 0x6A],
    [0xBA, 0x36, 0x55],
    [0xE3, 0x59, 0x32],
    [0xF9, 0x8C, 0x0A],
    [0xF9, 0xC9, 0x32],
    [0xFC, 0xFF, 0xA4],
];

/// Colour of heat `t` in `[0, 1]` (clamped; NaN is cold).
pub fn inferno(t: f32) -> [f32; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let s = t * (INFERNO.len() - 1) as f32;
    let i = (s.floor() as usize).min(INFERNO.len() - 2);
    let f = s - i as f32;
    let (a, b) = (INFERNO[i], INFERNO[i + 1]);
    [0, 1, 2].map(|c| f32::from(a[c]) * (1.0 - f) + f32::from(b[c]) * f)
}

/// The side-by-side picture (`2N x N`): grey input | grey with the heatmap blended in, where
/// the opacity is `alpha * heat` so cold regions show the anatomy untouched.
pub fn render(s: &Snapshot<'_>, alpha: f32) -> Result<RgbImage, SnapshotError> {
    let n = s.size as usize;
    if n == 0 || s.grey.len() != n * n || s.mask.len() != n * n {
        return Err(SnapshotError::Input(format!(
            "grey has {} and mask {} pixels for a {n} x {n} image",
            s.grey.len(),
            s.mask.len()
        )));
    }
    if s.map_w == 0 || s.map_h == 0 || s.map.len() != s.map_w * s.map_h {
        return Err(SnapshotError::Input(format!(
            "map has {} values for {} x {}",
            s.map.len(),
            s.map_w,
            s.map_h
        )));
    }
    let heat = upsample(s.map, s.map_w, s.map_h, s.size);
    let alpha = alpha.clamp(0.0, 1.0);
    let mut img = RgbImage::new(2 * s.size, s.size);
    for y in 0..n {
        for x in 0..n {
            let i = y * n + x;
            if s.mask[i] == 0 {
                // Outside the scan area: black in both panels (RgbImage::new is black).
                continue;
            }
            let g = s.grey[i];
            img.put_pixel(x as u32, y as u32, Rgb([g; 3]));
            let t = if heat[i].is_finite() {
                heat[i].clamp(0.0, 1.0)
            } else {
                0.0
            };
            let a = alpha * t;
            let c = inferno(t);
            let px = c.map(|c| (f32::from(g) * (1.0 - a) + c * a).round().clamp(0.0, 255.0) as u8);
            img.put_pixel((n + x) as u32, y as u32, Rgb(px));
        }
    }
    Ok(img)
}

/// `YYYYMMDDTHHMMSS.mmmZ` (UTC) of a time: sorts by name, no separator a file system dislikes.
pub fn utc_stamp(t: SystemTime) -> String {
    let ts = jiff::Timestamp::try_from(t.max(UNIX_EPOCH)).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!(
        "{}.{:03}Z",
        ts.strftime("%Y%m%dT%H%M%S"),
        ts.subsec_millisecond()
    )
}

/// Label reduced to `[a-z0-9-]` for a file name.
fn file_label(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    if s.is_empty() {
        "unlabelled".into()
    } else {
        s
    }
}

/// Sequence number of a snapshot file name `<stamp>_<seq>_<label>.png`.
fn seq_of(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(EXT)?.strip_suffix('.')?;
    let mut parts = stem.splitn(3, '_');
    let _stamp = parts.next()?;
    let seq = parts.next()?;
    parts.next()?;
    seq.parse().ok()
}

/// Writes snapshots into one directory and keeps it bounded.
#[derive(Debug)]
pub struct SnapshotWriter {
    dir: PathBuf,
    keep: usize,
    /// Bytes the directory may hold; the oldest go first (the newest always stays).
    max_bytes: u64,
    alpha: f32,
    next_seq: u64,
    /// Opens the temporary file; a seam so tests can hand it `/dev/full`.
    open_tmp: fn(&Path) -> io::Result<File>,
}

fn create_tmp(path: &Path) -> io::Result<File> {
    // A stale temporary from a crash is ours: replace it.
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    File::options().write(true).create_new(true).open(path)
}

impl SnapshotWriter {
    /// Creates `dir` if needed, removes temporaries left by a crash and continues the sequence
    /// after the highest one on disk. `keep` is at least 1.
    pub fn new(dir: &Path, keep: usize) -> Result<Self, SnapshotError> {
        let dir_err = |source| SnapshotError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_err)?;
        let mut next_seq = 0;
        for entry in fs::read_dir(dir).map_err(dir_err)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") {
                if let Err(e) = fs::remove_file(entry.path()) {
                    log::warn!("cannot remove stale {}: {e}", entry.path().display());
                }
            } else if let Some(s) = seq_of(name) {
                next_seq = next_seq.max(s + 1);
            }
        }
        log::info!(
            "snapshots in {} (keep {}, next #{next_seq})",
            dir.display(),
            keep.max(1)
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            max_bytes: u64::MAX,
            alpha: DEFAULT_ALPHA,
            next_seq,
            open_tmp: create_tmp,
        })
    }

    /// Caps the directory in bytes as well as in count (a disk fills by bytes).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Heatmap opacity at full heat (default [`DEFAULT_ALPHA`]).
    pub fn with_alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha.clamp(0.0, 1.0);
        self
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Renders and writes one snapshot taken at `time`; returns its path. On error nothing
    /// new is left in the directory and the next call tries again.
    pub fn write(&mut self, s: &Snapshot<'_>, time: SystemTime) -> Result<PathBuf, SnapshotError> {
        let img = render(s, self.alpha)?;
        let mut png = Vec::with_capacity(128 * 1024);
        image::codecs::png::PngEncoder::new(&mut png).write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )?;
        let name = format!(
            "{}_{:08}_{}.{EXT}",
            utc_stamp(time),
            self.next_seq,
            file_label(s.label)
        );
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let write_err = |source| SnapshotError::Write {
            path: path.clone(),
            source,
        };
        let written = (self.open_tmp)(&tmp).and_then(|mut f| {
            f.write_all(&png)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &path)) {
            // Never leave a partial file; the removal may fail too on a broken disk.
            let _ = fs::remove_file(&tmp);
            return Err(write_err(e));
        }
        // Make the rename durable; a failure here only risks this one snapshot.
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            log::debug!("fsync {}: {e}", self.dir.display());
        }
        self.next_seq += 1;
        self.prune();
        log::debug!("snapshot {} ({} bytes)", path.display(), png.len());
        Ok(path)
    }

    /// Removes the oldest snapshots beyond `keep` or `max_bytes`; problems are logged, not
    /// fatal.
    fn prune(&self) {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("cannot list {}: {e}", self.dir.display());
                return;
            }
        };
        let mut files: Vec<(u64, PathBuf, u64)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let seq = seq_of(e.file_name().to_str()?)?;
                let len = e.metadata().map_or(0, |m| m.len());
                Some((seq, e.path(), len))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.2).sum();
        if files.len() <= self.keep && total <= self.max_bytes {
            return;
        }
        files.sort_unstable();
        let mut excess = files.len().saturating_sub(self.keep);
        // Then by bytes, oldest first, never the newest.
        total -= files[..excess].iter().map(|f| f.2).sum::<u64>();
        while total > self.max_bytes && excess + 1 < files.len() {
            total -= files[excess].2;
            excess += 1;
        }
        for (_, p, _) in &files[..excess] {
            if let Err(e) = fs::remove_file(p) {
                log::warn!("cannot remove old snapshot {}: {e}", p.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const N: u32 = 224;

    fn disc_mask() -> Vec<u8> {
        let n = N as usize;
        (0..n * n)
            .map(|i| {
                let (x, y) = ((i % n) as f32 - 112.0, (i / n) as f32 - 112.0);
                u8::from(x * x + y * y < 90.0 * 90.0)
            })
            .collect()
    }

    /// A 7 x 7 map peaking at cell (col, row).
    fn peak_map(col: usize, row: usize) -> Vec<f32> {
        (0..49)
            .map(|i| {
                let (x, y) = ((i % 7) as f32 - col as f32, (i / 7) as f32 - row as f32);
                (-(x * x + y * y) / 2.0).exp()
            })
            .collect()
    }

    fn snap<'a>(grey: &'a [u8], mask: &'a [u8], map: &'a [f32]) -> Snapshot<'a> {
        Snapshot {
            grey,
            size: N,
            mask,
            map,
            map_w: 7,
            map_h: 7,
            label: "hydronephrosis",
        }
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    #[test]
    fn writes_a_side_by_side_png_with_a_timestamped_name() {
        let dir = tempdir();
        let mut w = SnapshotWriter::new(dir.path(), 10).unwrap();
        let grey = vec![90u8; (N * N) as usize];
        let mask = disc_mask();
        let map = peak_map(3, 3);
        let t = UNIX_EPOCH + Duration::from_millis(1_795_767_607_250);
        let p = w.write(&snap(&grey, &mask, &map), t).unwrap();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name, "20261127T082007.250Z_00000000_hydronephrosis.png");
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (2 * N, N));
        assert!(matches!(img, image::DynamicImage::ImageRgb8(_)));
        // Left panel is the grey input untouched.
        let rgb = img.to_rgb8();
        assert_eq!(rgb.get_pixel(112, 112).0, [90; 3]);
        // No temporary left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn heat_is_highest_where_the_map_peaks() {
        let grey = vec![0u8; (N * N) as usize];
        let mask = vec![1u8; (N * N) as usize];
        let map = peak_map(5, 2);
        let img = render(&snap(&grey, &mask, &map), 0.6).unwrap();
        // On black, the blended brightness rises with heat (inferno is monotonic in lightness).
        let mut best = (0u32, 0u32, 0u32);
        for y in 0..N {
            for x in 0..N {
                let s: u32 = img
                    .get_pixel(N + x, y)
                    .0
                    .iter()
                    .map(|&c| u32::from(c))
                    .sum();
                if s > best.0 {
                    best = (s, x, y);
                }
            }
        }
        // Cell (5, 2) spans x 160..192, y 64..96 of the 224 input.
        assert!(
            (160..192).contains(&best.1) && (64..96).contains(&best.2),
            "{best:?}"
        );
        // The far corner cell is cold.
        let cold: u32 = img
            .get_pixel(N + 5, 220)
            .0
            .iter()
            .map(|&c| u32::from(c))
            .sum();
        assert!(cold < best.0 / 10, "{cold} vs {}", best.0);
    }

    #[test]
    fn outside_the_scan_area_stays_black_and_unheated() {
        // Burned-in "text" everywhere outside the disc, a hot map everywhere.
        let mask = disc_mask();
        let grey: Vec<u8> = (0..(N * N) as usize)
            .map(|i| if mask[i] == 0 { 255 } else { 60 })
            .collect();
        let map = vec![1.0f32; 49];
        let img = render(&snap(&grey, &mask, &map), 0.6).unwrap();
        let n = N as usize;
        for (i, &m) in mask.iter().enumerate() {
            let (x, y) = ((i % n) as u32, (i / n) as u32);
            if m == 0 {
                assert_eq!(img.get_pixel(x, y).0, [0; 3], "left ({x}, {y})");
                assert_eq!(img.get_pixel(N + x, y).0, [0; 3], "right ({x}, {y})");
            } else {
                assert_ne!(img.get_pixel(N + x, y).0, [60; 3], "inside not heated");
            }
        }
    }

    #[test]
    fn keeps_a_bounded_number_oldest_removed_and_sequence_survives_restart() {
        let dir = tempdir();
        let grey = vec![50u8; (N * N) as usize];
        let mask = disc_mask();
        let map = peak_map(1, 1);
        let mut w = SnapshotWriter::new(dir.path(), 3).unwrap();
        // A clock that goes backwards must not make new files look old.
        let base = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        for i in 0..5u64 {
            w.write(&snap(&grey, &mask, &map), base - Duration::from_secs(i))
                .unwrap();
        }
        let seqs = |d: &Path| {
            let mut v: Vec<u64> = fs::read_dir(d)
                .unwrap()
                .filter_map(|e| seq_of(e.unwrap().file_name().to_str()?))
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(seqs(dir.path()), [2, 3, 4]);
        // Restart: a stale temporary is cleared, numbering continues.
        fs::write(dir.path().join(".x_00000009_y.png.tmp"), b"partial").unwrap();
        let mut w = SnapshotWriter::new(dir.path(), 3).unwrap();
        assert!(!dir.path().join(".x_00000009_y.png.tmp").exists());
        let p = w.write(&snap(&grey, &mask, &map), base).unwrap();
        assert!(
            p.to_str().unwrap().contains("_00000005_"),
            "{}",
            p.display()
        );
        assert_eq!(seqs(dir.path()), [3, 4, 5]);
        // A byte cap below three files' worth: the oldest go until it holds.
        let one = fs::metadata(&p).unwrap().len();
        let mut w = SnapshotWriter::new(dir.path(), 3)
            .unwrap()
            .with_max_bytes(2 * one + one / 2);
        w.write(&snap(&grey, &mask, &map), base).unwrap();
        assert_eq!(seqs(dir.path()), [5, 6]);
        // Even a cap below one file keeps the newest.
        let mut w = SnapshotWriter::new(dir.path(), 3)
            .unwrap()
            .with_max_bytes(1);
        w.write(&snap(&grey, &mask, &map), base).unwrap();
        assert_eq!(seqs(dir.path()), [7]);
    }

    #[test]
    fn a_full_disk_is_a_typed_error_and_leaves_nothing() {
        let dir = tempdir();
        let mut w = SnapshotWriter::new(dir.path(), 3).unwrap();
        // Every write to /dev/full fails with ENOSPC, as on a full file system.
        w.open_tmp = |_| File::options().write(true).open("/dev/full");
        let grey = vec![50u8; (N * N) as usize];
        let mask = disc_mask();
        let map = peak_map(1, 1);
        let err = w
            .write(&snap(&grey, &mask, &map), SystemTime::now())
            .unwrap_err();
        assert!(err.disk_full(), "{err}");
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        // Space again: the next write works, with the same sequence number.
        w.open_tmp = create_tmp;
        let p = w
            .write(&snap(&grey, &mask, &map), SystemTime::now())
            .unwrap();
        assert!(p.to_str().unwrap().contains("_00000000_"));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let grey = vec![0u8; 10];
        let mask = disc_mask();
        let map = peak_map(1, 1);
        assert!(matches!(
            render(&snap(&grey, &mask, &map), 0.5),
            Err(SnapshotError::Input(_))
        ));
        let grey = vec![0u8; (N * N) as usize];
        let short = [0.5f32; 10];
        assert!(matches!(
            render(&snap(&grey, &mask, &short), 0.5),
            Err(SnapshotError::Input(_))
        ));
        // NaN heat is drawn cold, not a panic.
        let nan = [f32::NAN; 49];
        let img = render(&snap(&grey, &mask, &nan), 0.5).unwrap();
        assert_eq!(img.get_pixel(N + 112, 112).0, [0; 3]);
    }

    #[test]
    fn upsampling_and_colormap_behave() {
        // A constant map stays constant; a ramp stays monotonic.
        assert!(upsample(&[0.3; 4], 2, 2, 8)
            .iter()
            .all(|&v| (v - 0.3).abs() < 1e-6));
        let ramp = upsample(&[0.0, 1.0], 2, 1, 8);
        assert!(ramp[..8].windows(2).all(|p| p[0] <= p[1]));
        assert_eq!((ramp[0], ramp[7]), (0.0, 1.0));
        assert_eq!(inferno(0.0), [0.0, 0.0, 4.0]);
        assert_eq!(inferno(1.0), [252.0, 255.0, 164.0]);
        let lum = |c: [f32; 3]| 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
        assert!(
            (0..100).all(|i| lum(inferno(i as f32 / 100.0)) < lum(inferno((i + 1) as f32 / 100.0)))
        );
    }

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000.000Z");
        // 2024-02-29 23:59:59.999 (leap day).
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_999);
        assert_eq!(utc_stamp(t), "20240229T235959.999Z");
        assert_eq!(file_label("SOL / mass"), "sol---mass");
        assert_eq!(file_label(""), "unlabelled");
    }

    /// The whole path on the real model: screen image -> usimage -> tract -> CAM ->
    /// snapshot, and the CAM identity against tract's `probs`. Needs files, so ignored:
    /// `RENALSCAN_CAM_MODEL=/tmp/run1/model.onnx RENALSCAN_CAM_IMAGE=<png>
    /// RENALSCAN_CAM_OUT=docs/cam-example.png cargo test --release -p renalscan-edge
    /// snapshot::tests::example -- --ignored --nocapture`
    #[test]
    #[ignore = "needs a trained model and an image (see the doc comment)"]
    fn example_from_the_real_model() {
        use model::cam::HeadWeights;
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("set {k}"));
        let (model_path, image, out) = (
            var("RENALSCAN_CAM_MODEL"),
            var("RENALSCAN_CAM_IMAGE"),
            var("RENALSCAN_CAM_OUT"),
        );
        // Class names from the manifest the trainer wrote beside the model.
        let manifest = Path::new(&model_path).with_file_name("manifest.toml");
        let manifest: toml::Table =
            toml::from_str(&fs::read_to_string(&manifest).unwrap()).unwrap();
        let labels: Vec<&str> = manifest["labels"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let normal = labels.iter().position(|&l| l == "normal").unwrap();
        let frame = usimage::UsFile::open(Path::new(&image))
            .and_then(|f| f.frame(0))
            .unwrap();
        let mut pre = usimage::Preprocessor::new(N, usimage::Normalization::caffe_bgr());
        let mut input = vec![0f32; pre.output_len()];
        let info = pre.process(&frame, &mut input).unwrap();
        let net = model::Network::load(Path::new(&model_path), &[1, 3, 224, 224]).unwrap();
        let outputs = net.run(&input).unwrap();
        let probs = &model::output(&outputs, "probs").unwrap().data;
        let feats = model::output(&outputs, "features").unwrap();
        let t0 = std::time::Instant::now();
        let head = HeadWeights::from_onnx(Path::new(&model_path)).unwrap();
        let t_head = t0.elapsed();
        let t1 = std::time::Instant::now();
        let map = head
            .abnormal_map(&feats.data, &feats.shape, probs, normal)
            .unwrap();
        let t_map = t1.elapsed();
        // Identity on the real model: softmax of the class maps' scores is tract's output.
        let z: Vec<f32> = (0..head.classes())
            .map(|k| {
                head.class_map(&feats.data, &feats.shape, k)
                    .unwrap()
                    .score()
            })
            .collect();
        let max_err = model::softmax(&z)
            .iter()
            .zip(probs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_err < 1e-4, "CAM scores vs tract probs: {max_err}");
        let mask = scan_mask(pre.detector(), &info, N);
        let norm = map.normalised();
        let class = model::top_k(probs, 1)[0];
        let s = Snapshot {
            grey: pre.last_grey(),
            size: N,
            mask: &mask,
            map: &norm,
            map_w: map.width,
            map_h: map.height,
            label: labels.get(class).copied().unwrap_or("unknown"),
        };
        let dir = tempdir();
        let mut w = SnapshotWriter::new(dir.path(), 1).unwrap();
        let t2 = std::time::Instant::now();
        let p = w.write(&s, SystemTime::now()).unwrap();
        let t_write = t2.elapsed();
        fs::copy(&p, &out).unwrap();
        println!(
            "probs {probs:.3?}; p_abnormal {:.3}; abnormal log-odds map score {:.3}; \
             CAM identity max |err| {max_err:.2e}; head read {t_head:.2?}, map {t_map:.2?}, \
             render+PNG+write {t_write:.2?}; {} bytes -> {out}",
            1.0 - probs[normal],
            map.score(),
            fs::metadata(&out).unwrap().len()
        );
    }

    #[test]
    fn masks_follow_the_letterbox_and_the_detector() {
        let m = box_mask([10, 0, 20, 224], N);
        assert_eq!(m.iter().filter(|&&v| v != 0).count(), 10 * 224);
        assert_eq!((m[9], m[10], m[19], m[20]), (0, 1, 1, 0));
        // A synthetic screen: the detector's area, mapped into the model input, covers the
        // non-black model input and nothing of the letterbox padding.
        let shape = usimage::synthetic::FanShape::Linear([200, 60, 520, 460]);
        let frame = usimage::synthetic::screen(720, 480, shape, 5, &mut Vec::new());
        let mut pre = usimage::Preprocessor::new(N, usimage::Normalization::caffe_bgr());
        let mut out = vec![0f32; pre.output_len()];
        let info = pre.process(&frame, &mut out).unwrap();
        let mask = scan_mask(pre.detector(), &info, N);
        let n = N as usize;
        let grey = pre.last_grey();
        let lit_outside = (0..n * n).filter(|&i| grey[i] > 0 && mask[i] == 0).count();
        let inside = mask.iter().filter(|&&v| v != 0).count();
        assert!(inside > n * n / 2, "{inside}");
        // Only a rim of partially covered pixels may differ.
        assert!(lit_outside < n * 4, "{lit_outside}");
        let [x0, _, x1, _] = info.placed;
        for y in 0..n {
            assert_eq!(mask[y * n + x0 as usize - 1], 0);
            assert_eq!(mask[y * n + x1 as usize], 0);
        }
    }
}
