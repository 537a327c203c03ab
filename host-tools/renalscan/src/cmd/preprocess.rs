//! `renalscan preprocess`: ultrasound files to model-input PNGs, one record per frame.
//!
//! A thin wrapper: the work (decode, scan-area detection, crop, blank, letterbox) is
//! `usimage::preprocess_file`, the same code the trainer and the device run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use usimage::{preprocess_file, Normalization, Preprocessor, PREPROCESS_VERSION};

/// Arguments of `renalscan preprocess`.
#[derive(clap::Args)]
pub struct Args {
    /// Input files: PNG, JPEG, BMP, TIFF or DICOM (every frame of a cine is written).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Directory for the model-input PNGs (`<stem>_f<frame>.png`); created if missing.
    #[arg(long)]
    pub out: PathBuf,
    /// JSON lines on stdout instead of text: one object per frame.
    #[arg(long)]
    pub json: bool,
    /// Model input side N (the PNGs are N x N).
    #[arg(value_parser = argrange::u32_in(32, 4096), long, default_value_t = 224)]
    pub size: u32,
}

pub fn run(args: Args) -> Result<()> {
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
