//! Release policy: which verified bundles a cart agrees to run.
//!
//! A signature says who released a bundle, not whether it belongs on this cart. The policy
//! adds three checks, each with its own refusal: the bundle is for this product line
//! ([`contract::manifest::PRODUCT`]), this runtime is at least the one it needs, and it is not
//! older than the newest bundle this cart has proven good (the *floor*, kept in
//! [`FLOOR_FILE`] by the root-run update tool, readable by the service). Going back to an
//! older bundle on purpose takes an override naming that exact bundle and a reason; the floor
//! file keeps every override, and every decision made under one says so.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use contract::manifest::{Manifest, ReleaseVersion, PRODUCT};

use crate::{io_err, BundleError};

/// The floor file's name in the bundles directory.
pub const FLOOR_FILE: &str = "floor.toml";

/// Why the policy refused a bundle. Each message names the bundle and the way forward.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A manifest without `[release]`.
    #[error(
        "{bundle}: the manifest has no [release] table (product, counter), so this cart cannot \
         tell whether it is newer than what it runs: rebuild it with `renalscan bundle`"
    )]
    NoRelease {
        /// The bundle.
        bundle: PathBuf,
    },
    /// Another product's bundle.
    #[error(
        "{bundle} is for product {found:?}, this cart runs {expected:?}: install a bundle \
         released for {expected:?}"
    )]
    WrongProduct {
        /// The bundle.
        bundle: PathBuf,
        /// Its product.
        found: String,
        /// This runtime's product.
        expected: String,
    },
    /// A bundle that needs a newer runtime.
    #[error(
        "{bundle} needs renalscan-edge {needs} or newer, this is {have}: update the runtime \
         first, then the bundle"
    )]
    RuntimeTooOld {
        /// The bundle.
        bundle: PathBuf,
        /// Its `min_runtime`.
        needs: String,
        /// This runtime's version.
        have: String,
    },
    /// Older than the floor, with no override for it.
    #[error(
        "{bundle} is {offered}, older than {floor} which this cart already ran ({floor_file}); \
         a cart never goes back to an older model by accident: install a newer bundle, or, if \
         going back is intended, install this one with --allow-downgrade \"<reason>\" (the \
         reason is recorded with every decision it makes)"
    )]
    Downgrade {
        /// The bundle.
        bundle: PathBuf,
        /// Its release.
        offered: String,
        /// The floor's release.
        floor: String,
        /// The floor file.
        floor_file: PathBuf,
    },
    /// The floor file exists but cannot be used.
    #[error(
        "{path}: {reason}; it records the newest bundle this cart ran: restore it from the \
         update log or reinstall the current bundle with the update tool"
    )]
    Floor {
        /// The floor file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The newest bundle this cart has proven good, and the recorded exceptions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    /// `model.version` of that bundle.
    pub version: String,
    /// Its `[release] counter`.
    pub counter: u64,
    /// Its manifest's sha256.
    pub manifest_sha256: String,
    /// When it became the floor (UTC, RFC 3339).
    pub since: String,
    /// Every deliberate downgrade, oldest first.
    #[serde(default, rename = "override", skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
}

/// A recorded permission to run one older bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The bundle it allows (manifest sha256).
    pub manifest_sha256: String,
    /// Its release, for whoever reads the file.
    pub release: String,
    /// Why, as the operator gave it.
    pub reason: String,
    /// When (UTC, RFC 3339).
    pub at: String,
}

/// How a bundle was admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Not older than the floor (or no floor yet).
    Allowed,
    /// Older than the floor, run under this recorded override.
    Override(Override),
}

impl Floor {
    /// Reads the floor file; `None` when there is none yet (a new cart).
    pub fn load(path: &Path) -> Result<Option<Floor>, BundleError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        let floor: Floor = toml::from_str(&text).map_err(|e| PolicyError::Floor {
            path: path.to_path_buf(),
            reason: format!("malformed: {e}"),
        })?;
        floor.release().ok_or_else(|| PolicyError::Floor {
            path: path.to_path_buf(),
            reason: format!("version {:?} is not semver", floor.version),
        })?;
        Ok(Some(floor))
    }

    /// The floor's release position.
    pub fn release(&self) -> Option<ReleaseVersion> {
        ReleaseVersion::new(&self.version, self.counter)
    }

    /// Writes the floor file durably (temporary file, fsync, rename, fsync of the folder).
    pub fn store(&self, path: &Path) -> Result<(), BundleError> {
        let text = toml::to_string(self).map_err(|e| PolicyError::Floor {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        write_durably(
            path,
            format!(
                "# The newest model bundle this cart has run and proven good, and every deliberate\n\
                 # downgrade. Kept by the update tool; bundles older than this are refused.\n{text}"
            )
            .as_bytes(),
        )
    }
}

/// Writes `bytes` to `path` so that after a power cut the file is either the old one or
/// the new one: a temporary file beside it, fsync, rename, fsync of the folder.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.new"));
    {
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The checks a cart applies to a verified bundle.
#[derive(Debug, Clone)]
pub struct Policy {
    /// This runtime's product line.
    pub product: String,
    /// This runtime's version.
    pub runtime: semver::Version,
    /// The floor file (`None`: no downgrade check, e.g. on a workstation).
    pub floor_file: Option<PathBuf>,
}

impl Policy {
    /// The policy of a runtime at `runtime_version` (its `CARGO_PKG_VERSION`).
    pub fn new(runtime_version: &str, floor_file: Option<PathBuf>) -> Policy {
        Policy {
            product: PRODUCT.to_string(),
            runtime: semver::Version::parse(runtime_version)
                .unwrap_or_else(|_| semver::Version::new(0, 0, 0)),
            floor_file,
        }
    }

    /// Admits or refuses the bundle in `dir` with this manifest (already verified).
    pub fn admit(
        &self,
        dir: &Path,
        m: &Manifest,
        manifest_sha256: &str,
    ) -> Result<Admission, BundleError> {
        let bundle = dir.to_path_buf();
        let r = m.release.as_ref().ok_or_else(|| PolicyError::NoRelease {
            bundle: bundle.clone(),
        })?;
        if r.product != self.product {
            return Err(PolicyError::WrongProduct {
                bundle,
                found: r.product.clone(),
                expected: self.product.clone(),
            }
            .into());
        }
        if let Some(need) = &r.min_runtime {
            let need_v =
                semver::Version::parse(need.trim()).map_err(|_| PolicyError::NoRelease {
                    bundle: bundle.clone(),
                })?;
            if self.runtime < need_v {
                return Err(PolicyError::RuntimeTooOld {
                    bundle,
                    needs: need.clone(),
                    have: self.runtime.to_string(),
                }
                .into());
            }
        }
        let offered = m.release_version().ok_or_else(|| PolicyError::NoRelease {
            bundle: bundle.clone(),
        })?;
        let Some(path) = &self.floor_file else {
            return Ok(Admission::Allowed);
        };
        let Some(floor) = Floor::load(path)? else {
            return Ok(Admission::Allowed);
        };
        let floor_release = floor.release().ok_or_else(|| PolicyError::Floor {
            path: path.clone(),
            reason: "version is not semver".into(),
        })?;
        if offered >= floor_release {
            return Ok(Admission::Allowed);
        }
        if let Some(o) = floor
            .overrides
            .iter()
            .rev()
            .find(|o| o.manifest_sha256.eq_ignore_ascii_case(manifest_sha256))
        {
            log::warn!(
                "bundle {} ({offered}) is older than the floor {floor_release}; running it under \
                 the override of {}: {}",
                dir.display(),
                o.at,
                o.reason
            );
            return Ok(Admission::Override(o.clone()));
        }
        Err(PolicyError::Downgrade {
            bundle,
            offered: offered.to_string(),
            floor: floor_release.to_string(),
            floor_file: path.clone(),
        }
        .into())
    }
}

/// Raises the floor to this bundle when it is newer (called once a bundle is proven good).
/// Returns whether it moved.
pub fn raise_floor(path: &Path, m: &Manifest, manifest_sha256: &str) -> Result<bool, BundleError> {
    let Some(offered) = m.release_version() else {
        return Ok(false);
    };
    let mut floor = Floor::load(path)?;
    if let Some(f) = &floor {
        if f.release().is_some_and(|r| r >= offered) {
            return Ok(false);
        }
    }
    let overrides = floor.take().map(|f| f.overrides).unwrap_or_default();
    Floor {
        version: offered.version.to_string(),
        counter: offered.counter,
        manifest_sha256: manifest_sha256.to_string(),
        since: now(),
        overrides,
    }
    .store(path)?;
    log::info!("release floor raised to {offered} ({})", path.display());
    Ok(true)
}

/// Records a deliberate downgrade to this bundle, so [`Policy::admit`] lets it run.
pub fn record_override(
    path: &Path,
    m: &Manifest,
    manifest_sha256: &str,
    reason: &str,
) -> Result<Override, BundleError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(PolicyError::Floor {
            path: path.to_path_buf(),
            reason: "an override needs a reason".into(),
        }
        .into());
    }
    let Some(mut floor) = Floor::load(path)? else {
        return Err(PolicyError::Floor {
            path: path.to_path_buf(),
            reason: "there is no floor yet, so nothing to override".into(),
        }
        .into());
    };
    let o = Override {
        manifest_sha256: manifest_sha256.to_string(),
        release: m
            .release_version()
            .map(|r| r.to_string())
            .unwrap_or_else(|| m.model.version.clone()),
        reason: reason.to_string(),
        at: now(),
    };
    floor.overrides.push(o.clone());
    floor.store(path)?;
    log::warn!(
        "downgrade override recorded in {}: {} ({})",
        path.display(),
        o.release,
        o.reason
    );
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str, counter: u64, product: &str, min_runtime: Option<&str>) -> Manifest {
        let mut text = testkit::manifests::sample(&"ab".repeat(32))
            .replace("version = \"0.1.0\"", &format!("version = \"{version}\""));
        text = text.replace(
            "[release]\ncounter = 1\nproduct = \"renalscan-pediatric-renal\"\n",
            &format!(
                "[release]\ncounter = {counter}\nproduct = \"{product}\"\n{}",
                min_runtime
                    .map(|v| format!("min_runtime = \"{v}\"\n"))
                    .unwrap_or_default()
            ),
        );
        Manifest::parse(&text, Path::new("m.toml")).unwrap()
    }

    #[test]
    fn orders_by_version_then_counter_and_refuses_going_back() {
        let d = tempfile::tempdir().unwrap();
        let floor = d.path().join(FLOOR_FILE);
        let p = Policy::new("0.1.0", Some(floor.clone()));
        let b = Path::new("b");
        let v2 = manifest("0.2.0", 5, PRODUCT, None);
        assert_eq!(p.admit(b, &v2, "s2").unwrap(), Admission::Allowed);
        assert!(raise_floor(&floor, &v2, "s2").unwrap());
        // Same version, higher counter: newer. Lower semver with a huge counter: older.
        assert_eq!(
            p.admit(b, &manifest("0.2.0", 6, PRODUCT, None), "s3")
                .unwrap(),
            Admission::Allowed
        );
        let old = manifest("0.1.9", 99, PRODUCT, None);
        let e = p.admit(b, &old, "s1").unwrap_err();
        assert!(e.to_string().contains("--allow-downgrade"), "{e}");
        // The override names that exact bundle, and the floor stays where it was.
        let o = record_override(&floor, &old, "s1", "rolling back a field issue").unwrap();
        assert_eq!(p.admit(b, &old, "s1").unwrap(), Admission::Override(o));
        assert!(p.admit(b, &old, "another").is_err());
        assert!(!raise_floor(&floor, &old, "s1").unwrap());
        assert_eq!(Floor::load(&floor).unwrap().unwrap().counter, 5);
    }

    #[test]
    fn refuses_another_product_a_newer_runtime_and_no_release() {
        let p = Policy::new("0.1.0", None);
        let b = Path::new("b");
        let e = p
            .admit(b, &manifest("0.1.0", 1, "thyroid-screen", None), "s")
            .unwrap_err();
        assert!(e.to_string().contains("thyroid-screen"), "{e}");
        let e = p
            .admit(b, &manifest("0.1.0", 1, PRODUCT, Some("0.3.0")), "s")
            .unwrap_err();
        assert!(e.to_string().contains("needs renalscan-edge 0.3.0"), "{e}");
        let mut m = manifest("0.1.0", 1, PRODUCT, None);
        m.release = None;
        assert!(matches!(
            p.admit(b, &m, "s"),
            Err(BundleError::Policy(PolicyError::NoRelease { .. }))
        ));
    }

    #[test]
    fn a_release_needs_a_semver_model_version() {
        let text = testkit::manifests::sample(&"ab".repeat(32))
            .replace("version = \"0.1.0\"", "version = \"spring build\"");
        let e = Manifest::parse(&text, Path::new("m.toml")).unwrap_err();
        assert!(e.to_string().contains("semantic version"), "{e}");
    }
}
