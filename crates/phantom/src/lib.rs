//! Synthetic pediatric renal ultrasound with known truth.
//!
//! No labelled renal ultrasound set can be had here, yet training, evaluation, quantisation,
//! the device runtime and the demo all need images with labels and the device needs a probe
//! stream. This crate forms B-mode images the way a scanner does (scatterers, PSF, envelope,
//! attenuation/TGC, log compression, scan conversion) from a tissue map of a child's kidney
//! with optional pathology, and burns in screen furniture like a real machine.
//!
//! Entry points:
//! - [`plan`] + [`write_dataset`]: a labelled set on disk (`<class>/<index>.png`, manifest).
//! - [`Renderer::render`] for one [`ImageSpec`], or [`render_one`] for a quick image.
//! - [`ProbeSweep`]: an iterator of frames (scanning / lifted / frozen) for the edge runtime.
//! - [`views`]: what else a probe shows (liver, spleen, bladder, bowel, ribs over lung, gel
//!   or air, planes beside the kidney), labelled `no_kidney`, for the view gate.
//!
//! Determinism: every image depends only on its spec (seeds derived from the global seed and
//! its index), the RNG is ChaCha8 and transcendental functions come from the pure-Rust
//! `libm`, so output is bit-identical across machines and thread counts.

pub mod dataset;
pub mod formation;
pub mod profile;
pub mod render;
pub mod rng;
pub mod scene;
pub mod screen;
pub mod stats;
pub mod stream;
pub mod views;

pub use dataset::{
    class_counts, encode_png, plan, save_png, write_dataset, Mix, PlanConfig, ProfileChoice,
    MANIFEST_HEADER,
};
pub use profile::{Geometry, Profile};
pub use render::{render_map, render_one, render_other, ImageSpec, Renderer, NO_KIDNEY};
pub use scene::{hydronephrosis_grade, Class, DEFAULT_ELEVATION_MAX, LEAST_SEVERITY};
pub use stream::{
    write_sweep, Motion, ProbeState, ProbeSweep, SweepConfig, SweepFrame, FRAMES_HEADER,
};
pub use views::Anatomy;

use std::path::PathBuf;

/// Errors from the generator's input paths (names, files).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown scanner profile {name:?} (known: {known}, mixed or randomized)")]
    UnknownProfile { name: String, known: String },
    #[error("scanner profile {}: {msg}", path.display())]
    ProfileFile { path: PathBuf, msg: String },
    #[error("unknown mix {0:?} (expected paper or balanced)")]
    UnknownMix(String),
    #[error("cannot write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode {}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}
