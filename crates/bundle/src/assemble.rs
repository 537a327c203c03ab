//! From a trainer's draft to a signed bundle: what `renalscan bundle` does, as a library so
//! that tests sign exactly as releases are signed.
//!
//! [`complete`] fills in what only the release knows (the shipped file's hash and precision,
//! where the data came from, held-out metrics, the quantizer's report) and refuses a draft
//! that describes another model. [`write`] writes the files, renders and pins the model card,
//! signs, and re-opens the result as a device would: a bundle that [`write`] returns is one a
//! device accepts.

use std::fs;
use std::path::{Path, PathBuf};

use contract::manifest::{
    DataKind, DataSource, Evaluation, FilePin, Manifest, Precision, WARNING_TEXT,
};

use crate::{
    io_err, sha256_hex, sign_bundle, Bundle, BundleError, SecretKey, TrustedKeys, CARD_FILE,
    MANIFEST_FILE, MODEL_FILE,
};

/// The quantizer's report, flattened to the scalars the manifest keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantReport {
    /// Top-level scalar values of the report.
    pub values: toml::Table,
    /// sha256 of the report file, so the full report can be matched to the bundle.
    pub sha256: String,
}

/// What the release adds to the draft.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// sha256 of the model file being shipped.
    pub model_sha256: String,
    /// Its precision.
    pub precision: Precision,
    /// Where the training images came from, when the draft does not say (or to override it).
    pub data_source: Option<DataKind>,
    /// One or two sentences on the training data.
    pub data_description: Option<String>,
    /// The quantizer's report, for int8 models.
    pub quant_report: Option<QuantReport>,
    /// Held-out evaluations by precision.
    pub evaluations: Vec<(Precision, Evaluation)>,
    /// `[lo, hi]` a site may move the operating threshold within by configuration; `None`
    /// keeps the draft's (normally none: the signed threshold stands).
    pub site_range: Option<[f64; 2]>,
    /// `[release] counter`: orders releases of one `model.version` (see
    /// [`default_counter`]).
    pub counter: u64,
    /// `[release] min_runtime`: the oldest runtime that may run this bundle.
    pub min_runtime: Option<String>,
}

/// The release counter when none is given: the build time in Unix seconds, so successive
/// builds, from one workstation or several with synchronized clocks, are increasing.
pub fn default_counter() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn refuse(draft: &Path, reason: String) -> BundleError {
    BundleError::Draft {
        path: draft.to_path_buf(),
        reason,
    }
}

/// The draft completed for this release. `draft_path` only names the draft in errors.
pub fn complete(mut m: Manifest, r: &Release, draft_path: &Path) -> Result<Manifest, BundleError> {
    let draft_sha = std::mem::take(&mut m.model.sha256);
    if m.model.precision != r.precision {
        log::warn!(
            "the draft says precision {}, the model is {}; using {}",
            m.model.precision.as_str(),
            r.precision.as_str(),
            r.precision.as_str()
        );
    }
    m.model.file = MODEL_FILE.into();
    m.model.sha256 = r.model_sha256.clone();
    m.model.precision = r.precision;
    if draft_sha != r.model_sha256 {
        match r.precision {
            Precision::Float32 => {
                return Err(refuse(
                    draft_path,
                    format!(
                        "it describes a model with sha256 {draft_sha}, but the model given \
                         has sha256 {}: its threshold and metrics belong to another model; \
                         use the draft written beside this model",
                        r.model_sha256
                    ),
                ))
            }
            Precision::Int8 => {
                // Quantized from the draft's float model: threshold, calibration and
                // validation figures are the float model's; say so.
                let q = m.model.quantization.get_or_insert_with(toml::Table::new);
                if !draft_sha.is_empty() {
                    q.insert("float_model_sha256".into(), draft_sha.into());
                }
                q.insert(
                    "operating_point_from".into(),
                    "the float model's validation split".into(),
                );
            }
        }
    }
    if let Some(report) = &r.quant_report {
        let q = m.model.quantization.get_or_insert_with(toml::Table::new);
        q.extend(report.values.clone());
        q.insert("report_sha256".into(), report.sha256.clone().into());
    }
    if let Some(kind) = r.data_source {
        let data = m.training.data.get_or_insert(DataSource {
            source: kind,
            description: String::new(),
        });
        if data.source != kind {
            log::warn!(
                "--data-source overrides the draft's training.data.source = {}",
                data.source.as_str()
            );
        }
        data.source = kind;
    }
    if let Some(d) = &r.data_description {
        match m.training.data.as_mut() {
            Some(data) => data.description = d.clone(),
            None => {
                return Err(refuse(
                    draft_path,
                    "a data description without a data source: pass --data-source".into(),
                ))
            }
        }
    }
    if m.training.data.is_none() {
        return Err(refuse(
            draft_path,
            "it does not say where the training images came from; pass --data-source \
             synthetic|clinical|mixed (and --data-description): the model card must state it"
                .into(),
        ));
    }
    for (precision, e) in &r.evaluations {
        m.evaluation.insert(precision.as_str().into(), e.clone());
    }
    if let Some([lo, hi]) = r.site_range {
        let t = m.operating_point.threshold;
        if !(0.0 <= lo && lo <= t && t <= hi && hi <= 1.0) {
            return Err(refuse(
                draft_path,
                format!(
                    "site threshold range [{lo}, {hi}] must hold the operating threshold {t} \
                     and stay within [0, 1]"
                ),
            ));
        }
        m.operating_point.site_range = Some([lo, hi]);
    }
    if semver::Version::parse(m.model.version.trim()).is_err() {
        return Err(refuse(
            draft_path,
            format!(
                "model.version {:?} is not a semantic version (MAJOR.MINOR.PATCH); carts order \
                 releases by it: fix the draft",
                m.model.version
            ),
        ));
    }
    m.release = Some(contract::manifest::Release {
        counter: r.counter,
        product: contract::manifest::PRODUCT.into(),
        min_runtime: r.min_runtime.clone(),
    });
    debug_assert!(m.intended_use.warning.to_lowercase().contains(WARNING_TEXT));
    Ok(m)
}

/// Writes the bundle `out` (which must not exist or be empty): the model, the card rendered
/// from `manifest` and pinned by it, the manifest, its signature. Returns the bundle as a
/// device opens it, trusting only `key`.
pub fn write(
    out: &Path,
    model: &[u8],
    mut manifest: Manifest,
    selftest_frames: &[Vec<u8>],
    key: &SecretKey,
) -> Result<Bundle, BundleError> {
    if sha256_hex(model) != manifest.model.sha256 {
        return Err(BundleError::Draft {
            path: out.join(MANIFEST_FILE),
            reason: "the manifest's model sha256 is not that of the model given".into(),
        });
    }
    let frames_match = manifest.selftest.len() == selftest_frames.len()
        && manifest
            .selftest
            .iter()
            .zip(selftest_frames)
            .all(|(c, b)| c.sha256 == sha256_hex(b));
    if !frames_match {
        return Err(BundleError::Draft {
            path: out.join(MANIFEST_FILE),
            reason: "the [[selftest]] pins are not those of the self-test frames given".into(),
        });
    }
    let non_empty = match fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(out)(e)),
    };
    if non_empty {
        return Err(BundleError::Draft {
            path: out.to_path_buf(),
            reason: "exists and is not empty; give a new directory".into(),
        });
    }
    fs::create_dir_all(out).map_err(io_err(out))?;
    let model_path: PathBuf = out.join(MODEL_FILE);
    fs::write(&model_path, model).map_err(io_err(&model_path))?;
    for (case, bytes) in manifest.selftest.iter().zip(selftest_frames) {
        let p = out.join(&case.file);
        fs::write(&p, bytes).map_err(io_err(&p))?;
    }
    manifest.card = None;
    let card = crate::card::render(&manifest, key.public().key_id());
    let card_path = out.join(CARD_FILE);
    fs::write(&card_path, &card).map_err(io_err(&card_path))?;
    manifest.card = Some(FilePin {
        file: CARD_FILE.into(),
        sha256: sha256_hex(card.as_bytes()),
    });
    let text = format!(
        "# renalscan model bundle manifest, signed by manifest.sig: any edit breaks the \
         signature.\n{}",
        manifest.to_toml()?
    );
    let manifest_path = out.join(MANIFEST_FILE);
    fs::write(&manifest_path, text).map_err(io_err(&manifest_path))?;
    let signer = sign_bundle(out, key)?;
    // Never hand out a bundle the device would refuse.
    Bundle::open(out, &TrustedKeys::new(vec![signer]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &[u8] = b"a model";

    fn draft() -> Manifest {
        let text = testkit::manifests::sample(&sha256_hex(MODEL)).replace(
            "[training.data]\nsource = \"synthetic\"\ndescription = \"physics phantom\"\n",
            "",
        );
        Manifest::parse_draft(&text, Path::new("draft.toml")).unwrap()
    }

    fn release() -> Release {
        Release {
            model_sha256: sha256_hex(MODEL),
            precision: Precision::Float32,
            data_source: Some(DataKind::Synthetic),
            data_description: Some("phantom".into()),
            quant_report: None,
            evaluations: Vec::new(),
            site_range: None,
            counter: 7,
            min_runtime: Some("0.1.0".into()),
        }
    }

    #[test]
    fn completes_writes_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate("t").unwrap();
        let m = complete(draft(), &release(), Path::new("draft.toml")).unwrap();
        let b = write(&dir.path().join("b"), MODEL, m.clone(), &[], &key).unwrap();
        assert_eq!(b.model_bytes(), MODEL);
        let mut expected = m;
        expected.card = b.manifest().card.clone();
        assert!(expected.card.is_some());
        assert_eq!(b.manifest(), &expected);
        // A second write into the same directory is refused.
        let again = write(&dir.path().join("b"), MODEL, expected, &[], &key).unwrap_err();
        assert!(again.to_string().contains("not empty"), "{again}");
    }

    #[test]
    fn refuses_a_draft_of_another_float_model_and_a_missing_source() {
        let mut r = release();
        r.model_sha256 = sha256_hex(b"another model");
        let e = complete(draft(), &r, Path::new("draft.toml")).unwrap_err();
        assert!(e.to_string().contains("another model"), "{e}");
        r.precision = Precision::Int8;
        let m = complete(draft(), &r, Path::new("draft.toml")).unwrap();
        let q = m.model.quantization.unwrap();
        assert_eq!(
            q["float_model_sha256"].as_str(),
            Some(sha256_hex(MODEL).as_str())
        );
        let mut r = release();
        r.data_source = None;
        r.data_description = None;
        let e = complete(draft(), &r, Path::new("draft.toml")).unwrap_err();
        assert!(e.to_string().contains("--data-source"), "{e}");
    }
}
