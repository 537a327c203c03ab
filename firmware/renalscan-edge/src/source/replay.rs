//! Replay of recorded frames: a DICOM cine (every frame), one image, or a folder of images
//! in name order, at a given rate, optionally looping. Used for demos, tests, benchmarks and
//! for checking a cart without a probe.

use std::path::{Path, PathBuf};

use usimage::{DecodeError, GreyFrame, UsFile};

use super::{FrameMeta, Pacer, Source, SourceError};

/// File extensions a replay folder's frames may have (DICOM files often have none).
const FRAME_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom"];

enum Media {
    /// One decoded file (a still or a cine), frames decoded on demand.
    File(UsFile),
    /// Folder entries, decoded one per frame.
    Folder(Vec<PathBuf>),
}

/// The replay source.
pub struct Replay {
    path: PathBuf,
    fps: f32,
    looped: bool,
    media: Option<Media>,
    /// Position in the current pass.
    pos: u64,
    /// Frames delivered in total (across loops).
    delivered: u64,
    pacer: Pacer,
}

impl Replay {
    pub fn new(path: &Path, fps: f32, looped: bool) -> Self {
        Self {
            path: path.to_path_buf(),
            fps,
            looped,
            media: None,
            pos: 0,
            delivered: 0,
            pacer: Pacer::new(fps),
        }
    }

    fn len(&self) -> u64 {
        match &self.media {
            Some(Media::File(f)) => u64::from(f.frame_count()),
            Some(Media::Folder(v)) => v.len() as u64,
            None => 0,
        }
    }
}

/// Frame files of a folder, sorted by name.
pub fn list_frames(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| match p.extension().and_then(|e| e.to_str()) {
            Some(ext) => FRAME_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()),
            None => true,
        })
        .collect();
    v.sort();
    Ok(v)
}

/// A decode error caused by the file being unreadable (gone) rather than its content.
fn is_io(e: &DecodeError) -> bool {
    matches!(e, DecodeError::Io { .. })
}

impl Source for Replay {
    fn describe(&self) -> String {
        format!(
            "replay {} at {} fps{}",
            self.path.display(),
            if self.fps > 0.0 {
                format!("{}", self.fps)
            } else {
                "pipeline pace".into()
            },
            if self.looped { ", looping" } else { "" }
        )
    }

    fn open(&mut self) -> Result<(), SourceError> {
        let media = if self.path.is_dir() {
            let files = list_frames(&self.path)
                .map_err(|e| SourceError::Lost(format!("{}: {e}", self.path.display())))?;
            if files.is_empty() {
                return Err(SourceError::Lost(format!(
                    "{} holds no image or DICOM files",
                    self.path.display()
                )));
            }
            Media::Folder(files)
        } else {
            match UsFile::open(&self.path) {
                Ok(f) => Media::File(f),
                Err(e) if is_io(&e) => return Err(SourceError::Lost(e.to_string())),
                // A file that exists but cannot be decoded will not get better by retrying.
                Err(e) => return Err(SourceError::Lost(format!("{}: {e}", self.path.display()))),
            }
        };
        self.media = Some(media);
        // A reopened folder resumes where it stopped (the medium came back).
        if self.pos >= self.len() {
            self.pos = 0;
        }
        self.pacer.reset();
        Ok(())
    }

    fn read(&mut self, out: &mut GreyFrame) -> Result<FrameMeta, SourceError> {
        if self.pos >= self.len() {
            if !self.looped || self.len() == 0 {
                return Err(SourceError::End);
            }
            self.pos = 0;
        }
        self.pacer.wait();
        let index = self.pos;
        self.pos += 1;
        let r = match &self.media {
            Some(Media::File(f)) => f.frame_into(index as u32, out),
            Some(Media::Folder(files)) => {
                let p = &files[index as usize];
                match UsFile::open(p) {
                    Ok(f) => f.frame_into(0, out),
                    Err(e) => Err(e),
                }
            }
            None => return Err(SourceError::Lost("not open".into())),
        };
        match r {
            Ok(()) => {
                self.delivered += 1;
                Ok(FrameMeta { index })
            }
            Err(e) if is_io(&e) => {
                // Retry this frame after the reopen.
                self.pos = index;
                Err(SourceError::Lost(e.to_string()))
            }
            Err(e) => Err(SourceError::Corrupt(format!("frame {index}: {e}"))),
        }
    }

    fn close(&mut self) {
        self.media = None;
    }

    fn lockstep(&self) -> bool {
        self.fps <= 0.0
    }
}
