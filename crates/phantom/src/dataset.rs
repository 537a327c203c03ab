//! Planning and writing a labelled data set: `<out>/<class>/<index>.png` + `manifest.csv`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::ImageEncoder;
use rayon::prelude::*;

use crate::profile::Profile;
use crate::render::{ImageSpec, Renderer, NO_KIDNEY};
use crate::rng::{derive, Rand};
use crate::scene::{draw_severity, Class};
use crate::views::Anatomy;
use crate::Error;

/// Class proportions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// The reference study: 330 normal : 1,269 abnormal, abnormal split evenly by type.
    Paper,
    /// Equal counts of all six classes.
    Balanced,
}

impl std::str::FromStr for Mix {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "paper" => Ok(Mix::Paper),
            "balanced" => Ok(Mix::Balanced),
            _ => Err(Error::UnknownMix(s.to_string())),
        }
    }
}

/// Which scanner profile(s) to render with.
#[derive(Clone, Copy, Debug)]
pub enum ProfileChoice {
    One(&'static Profile),
    /// Each patient gets a profile at random (half the default, the rest shared).
    Mixed,
    /// Each patient gets one of [`Profile::randomized`]'s scanners.
    Randomized,
}

impl ProfileChoice {
    /// `mixed` or a profile name.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.eq_ignore_ascii_case("mixed") {
            Ok(ProfileChoice::Mixed)
        } else if s.eq_ignore_ascii_case("randomized") {
            Ok(ProfileChoice::Randomized)
        } else {
            Profile::by_name(s).map(ProfileChoice::One)
        }
    }
}

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct PlanConfig {
    /// Kidney images.
    pub n: usize,
    pub seed: u64,
    pub mix: Mix,
    pub profile: ProfileChoice,
    /// Images that show no kidney (liver, spleen, bladder, bowel, ribs over lung, lifted
    /// probe, planes beside the kidney), appended after the kidney images so those keep their
    /// exact pixels for a seed.
    pub other_views: usize,
    /// How far from the kidney's mid-plane a still's plane may lie
    /// ([`crate::DEFAULT_ELEVATION_MAX`]; up to 0.75 covers the planes a protocol sweep shows).
    pub elevation_max: f32,
}

/// The share of no-kidney views `renalscan synth` adds by default: enough for the view gate
/// to learn from, few enough to leave the kidney set as it was.
pub const DEFAULT_OTHER_FRACTION: f64 = 0.4;

const TAG_PATIENTS: u64 = 0x5041_5449;
const TAG_PATIENT: u64 = 0x5041_5431;
const TAG_IMAGE: u64 = 0x494D_4147;
const TAG_OTHER: u64 = 0x4F54_4852;

/// Images per class for `n` images.
pub fn class_counts(n: usize, mix: Mix) -> [(Class, usize); 6] {
    let mut out = Class::ALL.map(|c| (c, 0));
    match mix {
        Mix::Paper => {
            let normal = (n as f64 * 330.0 / 1599.0).round() as usize;
            let abn = n - normal;
            out[0].1 = normal;
            for (i, o) in out[1..].iter_mut().enumerate() {
                o.1 = abn / 5 + usize::from(i < abn % 5);
            }
        }
        Mix::Balanced => {
            for (i, o) in out.iter_mut().enumerate() {
                o.1 = n / 6 + usize::from(i < n % 6);
            }
        }
    }
    out
}

/// The full, deterministic list of images for a configuration. Cheap: nothing is rendered.
///
/// Images come in patients of 2-4 (same anatomy and lesion, different views and settings);
/// patients are shuffled so any prefix has a mix of classes.
pub fn plan(cfg: &PlanConfig) -> Vec<ImageSpec> {
    let mut rng = Rand::new(derive(cfg.seed, TAG_PATIENTS, cfg.n as u64));
    let mut patients: Vec<(Class, usize)> = Vec::new();
    for (class, count) in class_counts(cfg.n, cfg.mix) {
        let mut left = count;
        while left > 0 {
            let k = (rng.int(2, 4) as usize).min(left);
            patients.push((class, k));
            left -= k;
        }
    }
    for i in (1..patients.len()).rev() {
        let j = rng.int(0, i as u32) as usize;
        patients.swap(i, j);
    }
    let mut specs = Vec::with_capacity(cfg.n);
    for (pid, (class, k)) in patients.into_iter().enumerate() {
        let pseed = derive(cfg.seed, TAG_PATIENT, pid as u64);
        let mut pr = Rand::new(pseed ^ 0xA5A5);
        let severity = if class.is_abnormal() {
            draw_severity(&mut pr)
        } else {
            0.0
        };
        let profile = profile_for(cfg.profile, &mut pr);
        for _ in 0..k {
            let index = specs.len() as u64;
            specs.push(ImageSpec {
                index,
                class,
                severity,
                patient_id: pid as u32 + 1,
                patient_seed: pseed,
                seed: derive(cfg.seed, TAG_IMAGE, index),
                profile,
                anatomy: Anatomy::Kidney,
                elevation_max: cfg.elevation_max,
            });
        }
    }
    plan_other_views(cfg, &mut specs);
    specs
}

/// The patient's scanner: the chosen one, or, mixed, half the default and the rest shared.
fn profile_for(choice: ProfileChoice, pr: &mut Rand) -> &'static Profile {
    match choice {
        ProfileChoice::One(p) => p,
        ProfileChoice::Mixed => {
            let all = Profile::builtin();
            let u = pr.f();
            if u < 0.5 {
                &all[0]
            } else {
                &all[1 + ((u - 0.5) * 2.0 * (all.len() - 1) as f32) as usize % (all.len() - 1)]
            }
        }
        ProfileChoice::Randomized => {
            let bank = Profile::randomized();
            &bank[pr.int(0, bank.len() as u32 - 1) as usize]
        }
    }
}

/// Appends `cfg.other_views` no-kidney images: patients of 2-4 views each, the anatomies in
/// turn so every kind is present, each patient on one scanner.
fn plan_other_views(cfg: &PlanConfig, specs: &mut Vec<ImageSpec>) {
    let mut rng = Rand::new(derive(cfg.seed, TAG_OTHER, cfg.other_views as u64));
    let first_pid = specs.iter().map(|s| s.patient_id).max().unwrap_or(0) + 1;
    let mut left = cfg.other_views;
    let mut turn = 0usize;
    let mut pid = first_pid;
    while left > 0 {
        let k = (rng.int(2, 4) as usize).min(left);
        let pseed = derive(cfg.seed, TAG_OTHER ^ TAG_PATIENT, u64::from(pid));
        let mut pr = Rand::new(pseed ^ 0xA5A5);
        let profile = profile_for(cfg.profile, &mut pr);
        for _ in 0..k {
            let index = specs.len() as u64;
            let anatomy = Anatomy::OTHER[turn % Anatomy::OTHER.len()];
            turn += 1;
            specs.push(ImageSpec {
                index,
                class: Class::Normal,
                severity: 0.0,
                patient_id: pid,
                patient_seed: pseed,
                seed: derive(cfg.seed, TAG_IMAGE, index),
                profile,
                anatomy,
                elevation_max: cfg.elevation_max,
            });
        }
        left -= k;
        pid += 1;
    }
}

/// Encode a screen grab as PNG (fast compression: speckle barely compresses anyway).
pub fn encode_png(img: &image::RgbImage, w: impl Write) -> Result<(), image::ImageError> {
    PngEncoder::new_with_quality(w, CompressionType::Fast, FilterType::Sub).write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a PNG file.
pub fn save_png(img: &image::RgbImage, path: &Path) -> Result<(), Error> {
    let f = std::fs::File::create(path).map_err(io_err(path))?;
    let mut w = std::io::BufWriter::new(f);
    encode_png(img, &mut w).map_err(|source| Error::Image {
        path: path.to_path_buf(),
        source,
    })?;
    w.flush().map_err(io_err(path))
}

/// The manifest header; columns are those the trainer's CSV ingestion reads (`view` names
/// the anatomy of `no_kidney` images).
pub const MANIFEST_HEADER: &str = "path,label,severity,patient_id,profile,seed,view";

/// One manifest row for a spec, cell by cell in [`MANIFEST_HEADER`]'s order (a CSV writer
/// quotes them: a profile loaded from a file may carry a comma in its name).
pub fn manifest_record(s: &ImageSpec) -> [String; 7] {
    [
        s.rel_path(),
        s.label().to_string(),
        format!("{:.3}", s.severity),
        s.patient_id.to_string(),
        s.profile.name.to_string(),
        s.seed.to_string(),
        s.anatomy.label().to_string(),
    ]
}

/// `header` (comma-separated names) and `rows` as CSV text, for files written in one go.
pub(crate) fn csv_bytes<R>(path: &Path, header: &str, rows: R) -> Result<Vec<u8>, Error>
where
    R: IntoIterator,
    R::Item: IntoIterator,
    <R::Item as IntoIterator>::Item: AsRef<[u8]>,
{
    let err = |e: csv::Error| Error::Io {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header.split(',')).map_err(err)?;
    for row in rows {
        w.write_record(row).map_err(err)?;
    }
    w.into_inner().map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.into_error(),
    })
}

/// Render and write `specs` under `out` in parallel, then `manifest.csv`.
///
/// `progress(done, total)` is called from worker threads after each image.
pub fn write_dataset(
    out: &Path,
    specs: &[ImageSpec],
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<PathBuf, Error> {
    for label in Class::ALL
        .iter()
        .map(|c| c.label())
        .chain(std::iter::once(NO_KIDNEY))
    {
        let d = out.join(label);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    let renderer = Renderer::new();
    let done = AtomicUsize::new(0);
    specs.par_iter().try_for_each(|s| {
        let img = renderer.render(s);
        save_png(&img, &out.join(s.rel_path()))?;
        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
        progress(d, specs.len());
        Ok::<(), Error>(())
    })?;
    let path = out.join("manifest.csv");
    let text = csv_bytes(&path, MANIFEST_HEADER, specs.iter().map(manifest_record))?;
    std::fs::write(&path, text).map_err(io_err(&path))?;
    log::info!("wrote {} images and {}", specs.len(), path.display());
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize, mix: Mix) -> PlanConfig {
        PlanConfig {
            n,
            seed: 11,
            mix,
            profile: ProfileChoice::One(Profile::default_profile()),
            other_views: 0,
            elevation_max: crate::DEFAULT_ELEVATION_MAX,
        }
    }

    #[test]
    fn paper_mix_matches_the_study() {
        let c = class_counts(1599, Mix::Paper);
        assert_eq!(c[0].1, 330);
        assert_eq!(c[1..].iter().map(|x| x.1).sum::<usize>(), 1269);
        assert!(c[1..].iter().all(|x| x.1 == 253 || x.1 == 254));
        let b = class_counts(13, Mix::Balanced);
        assert_eq!(b.iter().map(|x| x.1).sum::<usize>(), 13);
    }

    #[test]
    fn plan_is_deterministic_and_grouped_by_patient() {
        let a = plan(&cfg(200, Mix::Paper));
        let b = plan(&cfg(200, Mix::Paper));
        assert_eq!(a, b);
        assert_eq!(a.len(), 200);
        let mut per_patient = std::collections::HashMap::new();
        for s in &a {
            let e = per_patient.entry(s.patient_id).or_insert((s.class, 0));
            assert_eq!(e.0, s.class, "one class per patient");
            e.1 += 1;
        }
        assert!(per_patient.values().all(|v| v.1 <= 4));
        assert!(per_patient.values().filter(|v| v.1 >= 2).count() > per_patient.len() / 2);
        // Mixed profiles: every profile shows up, one per patient.
        let mixed = plan(&PlanConfig {
            profile: ProfileChoice::Mixed,
            ..cfg(300, Mix::Paper)
        });
        let names: std::collections::HashSet<_> = mixed.iter().map(|s| s.profile.name).collect();
        assert_eq!(names.len(), Profile::builtin().len());
        for w in mixed.windows(2) {
            if w[0].patient_id == w[1].patient_id {
                assert_eq!(w[0].profile.name, w[1].profile.name);
            }
        }
        // Prefix is mixed.
        let first: std::collections::HashSet<_> = a[..40].iter().map(|s| s.class).collect();
        assert!(first.len() >= 3);
    }

    #[test]
    fn other_views_are_appended_without_touching_the_kidney_images() {
        let kidneys = plan(&cfg(60, Mix::Paper));
        let with = plan(&PlanConfig {
            other_views: 21,
            ..cfg(60, Mix::Paper)
        });
        assert_eq!(&with[..60], &kidneys[..]);
        let others = &with[60..];
        assert_eq!(others.len(), 21);
        let kinds: std::collections::HashSet<_> = others.iter().map(|s| s.anatomy).collect();
        assert_eq!(kinds.len(), Anatomy::OTHER.len());
        assert!(others.iter().all(|s| s.label() == NO_KIDNEY));
        let kidney_pids: std::collections::HashSet<_> =
            kidneys.iter().map(|s| s.patient_id).collect();
        assert!(others.iter().all(|s| !kidney_pids.contains(&s.patient_id)));
        assert_eq!(manifest_record(&others[0])[6], others[0].anatomy.label());
    }

    #[test]
    fn rendering_is_reproducible_per_image() {
        let specs = plan(&cfg(12, Mix::Balanced));
        let r = Renderer::new();
        let a = r.render(&specs[7]);
        let b = Renderer::new().render(&specs[7]);
        assert_eq!(a.as_raw(), b.as_raw());
        let c = r.render(&specs[8]);
        assert_ne!(a.as_raw(), c.as_raw());
    }

    #[test]
    fn writes_files_and_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("set");
        let specs = plan(&cfg(6, Mix::Balanced));
        let m = write_dataset(&dir, &specs, &|_, _| {}).unwrap();
        let text = std::fs::read_to_string(&m).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], MANIFEST_HEADER);
        assert_eq!(lines.len(), 7);
        for s in &specs {
            let p = dir.join(s.rel_path());
            let img = image::open(&p).unwrap();
            assert_eq!(img.width(), s.profile.screen.0);
        }
    }
}
