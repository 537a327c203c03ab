//! Non-kidney views for the view gate when a data set has none: phantom liver, spleen,
//! bladder, bowel, ribs over lung, lifted probe and planes beside the kidney (crate
//! `phantom`), rendered once into the cache and split between train and validation by
//! patient. A clinic's own `no_kidney` frames replace them as soon as there are enough.

use std::path::Path;

use crate::dataset::{self, Sample, Split};
use crate::pipeline::TrainError;
use seeded::Rng;

/// Fewer `no_kidney` images than this in the data and phantom views are added.
pub const MIN_OTHERS: usize = 40;

/// Patient ids of phantom negatives start with this, so reports can tell them apart.
pub const PATIENT_PREFIX: &str = "phantom-view-";

/// Phantom negatives for a data set of `kidneys` images: a fifth as many, at least 120.
pub fn count_for(kidneys: usize) -> usize {
    (kidneys / 5).max(120)
}

/// `n` phantom non-kidney views, rendered into `<cache>/phantom-views-<seed>-<n>` (reused
/// when there), as samples with a train or validation split (a quarter of the patients).
pub fn phantom(cache: &Path, n: usize, seed: u64) -> Result<Vec<Sample>, TrainError> {
    let dir = cache.join(format!("phantom-views-{seed}-{n}"));
    let manifest = dir.join("manifest.csv");
    if !manifest.is_file() {
        let specs = phantom::plan(&phantom::PlanConfig {
            n: 0,
            seed: seed ^ 0x5649_4557,
            mix: phantom::Mix::Balanced,
            profile: phantom::ProfileChoice::Mixed,
            other_views: n,
            elevation_max: phantom::DEFAULT_ELEVATION_MAX,
        });
        let tmp = dir.with_extension("partial");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|source| TrainError::Io {
                path: tmp.display().to_string(),
                source,
            })?;
        }
        log::info!(
            "rendering {n} phantom non-kidney views into {}",
            dir.display()
        );
        phantom::write_dataset(&tmp, &specs, &|_, _| {}).map_err(|e| TrainError::Io {
            path: tmp.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        std::fs::rename(&tmp, &dir).map_err(|source| TrainError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let mut samples = dataset::load_csv(&manifest)?;
    let mut rng = Rng::new(seed ^ 0x4E45_4741);
    let mut split_of = std::collections::HashMap::new();
    for s in &mut samples {
        s.patient = format!("{PATIENT_PREFIX}{}", s.patient);
        let split = *split_of.entry(s.patient.clone()).or_insert_with(|| {
            if rng.uniform() < 0.25 {
                Split::Val
            } else {
                Split::Train
            }
        });
        s.split = Some(split);
    }
    Ok(samples)
}

/// Where the non-kidney examples of `samples` (those the gate is fitted and thresholded on:
/// the training and validation splits) came from, for the manifest.
pub fn describe(samples: &[&Sample]) -> String {
    let others: Vec<&&Sample> = samples.iter().filter(|s| !s.is_kidney()).collect();
    let phantom = others
        .iter()
        .filter(|s| s.patient.starts_with(PATIENT_PREFIX))
        .count();
    match (phantom, others.len() - phantom) {
        (0, own) => {
            format!("{own} no_kidney images of the data set (training and validation splits)")
        }
        (p, 0) => format!(
            "{p} phantom non-kidney views (liver, spleen, bladder, bowel, ribs over lung, \
             lifted probe, planes beside the kidney): the data set had none"
        ),
        (p, own) => format!(
            "{own} no_kidney images of the data set and {p} phantom views (training and \
             validation splits)"
        ),
    }
}
