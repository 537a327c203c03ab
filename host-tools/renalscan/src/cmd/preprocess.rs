//! `renalscan preprocess`: ultrasound files to model-input PNGs, one record per frame.
//!
//! A thin wrapper: the work (decode, scan-area detection, crop, blank, letterbox) is
//! `usimage::preprocess_file`, the same code the trainer and the device run.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use usimage::{preprocess_file, Normalization, Preprocessor, PREPROCESS_VERSION};

/// Arguments of `renalscan preprocess`.
#[derive(clap::Args)]
pub struct Args {
    /// Input files: PNG, JPEG, BMP, TIFF or DICOM (every frame of a cine is written).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Directory for the model-input PNGs (`<stem>_f<frame>.png`; inputs sharing a stem are
    /// refused); created if missing.
    #[arg(long)]
    pub out: PathBuf,
    /// JSON lines on stdout instead of text: one object per frame.
    #[arg(long)]
    pub json: bool,
    /// Model input side N (the PNGs are N x N).
    #[arg(value_parser = argrange::u32_in(32, 4096), long, default_value_t = 224)]
    pub size: u32,
}

/// The first two inputs with the same file stem: their outputs would share names in one
/// folder, the later silently overwriting the earlier (`normal/0001.png`, `cyst/0001.png`).
fn same_stem(files: &[PathBuf]) -> Option<(&Path, &Path)> {
    let mut seen: HashMap<&OsStr, &Path> = HashMap::new();
    for f in files {
        // usimage names a file without a stem "frame".
        let stem = f.file_stem().unwrap_or(OsStr::new("frame"));
        if let Some(first) = seen.insert(stem, f) {
            return Some((first, f));
        }
    }
    None
}

pub fn run(args: Args) -> Result<()> {
    if let Some((a, b)) = same_stem(&args.files) {
        anyhow::bail!(
            "{} and {} would both be written as {}_f<frame>.png in {}: preprocess them into \
             separate --out folders (or rename one)",
            a.display(),
            b.display(),
            a.file_stem().unwrap_or_default().to_string_lossy(),
            args.out.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output directory {}", args.out.display()))?;
    log::info!(
        "preprocessing version {PREPROCESS_VERSION}, {0}x{0} inputs",
        args.size
    );
    let mut pre = Preprocessor::new(args.size, Normalization::caffe_bgr());
    let mut failed = 0usize;
    for file in &args.files {
        let result = preprocess_file(file, &args.out, &mut pre, |r| {
            if args.json {
                match serde_json::to_string(r) {
                    Ok(line) => println!("{line}"),
                    Err(e) => log::error!("cannot encode record: {e}"),
                }
            } else {
                println!(
                    "{} #{}: {}x{} box {:?} image area {:?} {:?} panes {}{} {:.1} ms -> {}",
                    r.source,
                    r.frame,
                    r.width,
                    r.height,
                    r.bbox,
                    r.image_area,
                    r.kind,
                    r.panes,
                    if r.no_anatomy { " NO ANATOMY" } else { "" },
                    r.ms,
                    r.output
                );
            }
        });
        if let Err(e) = result {
            log::error!("{e}");
            failed += 1;
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} file(s) failed",
        args.files.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_that_would_share_an_output_name_are_found() {
        let files = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(same_stem(&files(&["a/1.png", "a/2.png", "b/3.dcm"])), None);
        let f = files(&["normal/0118.png", "x.dcm", "sol/0118.png"]);
        assert_eq!(
            same_stem(&f),
            Some((Path::new("normal/0118.png"), Path::new("sol/0118.png")))
        );
        // Same stem, another extension: the PNG names still collide.
        let f = files(&["scan.dcm", "scan.png"]);
        assert!(same_stem(&f).is_some());
    }
}
