//! The signed trust list: which keys may sign bundles and updates for a cart, and which are
//! revoked.
//!
//! A cart is commissioned once with one or more *root* public keys (`keys/root/*.pub`), which
//! sign nothing but trust lists. The list (`keys/trust-list.toml`) names the signing keys and
//! the revoked ones, carries a serial, and is one file: its body and the root's signature over
//! the body's exact bytes, so replacing it is one atomic rename. Rotating a signing key is
//! installing a list with the new key; revoking one is installing a list that names it under
//! `[[revoked]]`: from the next load on, every bundle and update it signed is refused with the
//! reason. A list with a lower serial than the installed one is refused, so an old list cannot
//! bring a revoked key back.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{io_err, verify_parsed, BundleError, PublicKey, SecretKey, SigFile, TrustedKeys};

/// The trust list's file name in a keys directory.
pub const LIST_FILE: &str = "trust-list.toml";
/// The folder of root keys (the keys that sign trust lists) in a keys directory.
pub const ROOTS_DIR: &str = "root";

/// A revoked signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The key's id.
    pub key_id: String,
    /// Why (shown in every refusal).
    pub reason: String,
    /// When, as the issuer states it (a date).
    pub revoked: String,
}

/// Which list the trusted keys came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListInfo {
    /// The list's serial.
    pub serial: u64,
    /// When it was issued (as stated).
    pub issued: String,
    /// The file.
    pub path: PathBuf,
    /// The root key that signed it.
    pub signer: String,
}

/// A trust list to sign (workstation side).
#[derive(Debug, Clone)]
pub struct TrustList {
    /// Higher than every list installed before.
    pub serial: u64,
    /// When it is issued (RFC 3339 or a date).
    pub issued: String,
    /// Keys that may sign bundles and updates.
    pub keys: Vec<PublicKey>,
    /// Keys that must no longer be accepted.
    pub revoked: Vec<Revocation>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    serial: u64,
    issued: String,
    #[serde(default)]
    key: Vec<BodyKey>,
    #[serde(default)]
    revoked: Vec<Revocation>,
}

#[derive(Serialize, Deserialize)]
struct BodyKey {
    key_id: String,
    name: String,
    public_key: String,
}

#[derive(Deserialize)]
struct Envelope {
    algorithm: String,
    key_id: String,
    signature: String,
    body: String,
}

const DELIM: &str = "'''";

impl TrustList {
    /// The list file's text, signed by `root`.
    pub fn signed_text(&self, root: &SecretKey) -> Result<String, BundleError> {
        let bad = |reason: String| BundleError::BadKey {
            path: PathBuf::from(LIST_FILE),
            reason,
        };
        for r in &self.revoked {
            if self.keys.iter().any(|k| k.key_id() == r.key_id) {
                return Err(bad(format!("key {} is both trusted and revoked", r.key_id)));
            }
            if r.key_id == root.public().key_id() {
                return Err(bad("a list cannot revoke the root key that signs it".into()));
            }
        }
        let body = Body {
            serial: self.serial,
            issued: self.issued.clone(),
            key: self
                .keys
                .iter()
                .map(|k| BodyKey {
                    key_id: k.key_id().to_string(),
                    name: k.name().to_string(),
                    public_key: k.hex(),
                })
                .collect(),
            revoked: self.revoked.clone(),
        };
        let body = toml::to_string(&body).map_err(|e| bad(e.to_string()))?;
        if body.contains(DELIM) {
            return Err(bad(format!(
                "key names and reasons must not contain {DELIM}"
            )));
        }
        let sig = crate::signature_text(body.as_bytes(), root, "body");
        let sig: toml::Table = sig.parse().map_err(|e| bad(format!("{e}")))?;
        let field = |k: &str| {
            sig.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Ok(format!(
            "# renalscan trust list: the keys that may sign bundles and updates for this cart, and\n\
             # the revoked ones. Signed by a root key over the exact bytes of `body`; install it\n\
             # with `renalscan-edge trust install`.\n\
             algorithm = \"{}\"\nkey_id = \"{}\"\nsignature = \"{}\"\nbody = {DELIM}\n{body}{DELIM}\n",
            field("algorithm"),
            field("key_id"),
            field("signature"),
        ))
    }
}

/// The root keys of a keys directory.
fn roots(dir: &Path) -> Result<TrustedKeys, BundleError> {
    let root_dir = dir.join(ROOTS_DIR);
    if !root_dir.is_dir() {
        return Err(BundleError::BadKey {
            path: root_dir,
            reason: format!(
                "a keys directory with a {LIST_FILE} needs the root keys that sign it in \
                 {ROOTS_DIR}/ (*.pub, installed when the cart is commissioned)"
            ),
        });
    }
    TrustedKeys::from_dir(&root_dir)
}

/// Verifies the list file `list` against the root keys of `keys_dir`.
pub fn verify(list: &Path, keys_dir: &Path) -> Result<TrustedKeys, BundleError> {
    let roots = roots(keys_dir)?;
    let text = fs::read_to_string(list).map_err(io_err(list))?;
    let bad = |reason: String| BundleError::BadKey {
        path: list.to_path_buf(),
        reason,
    };
    let env: Envelope =
        toml::from_str(&text).map_err(|e| bad(format!("malformed trust list: {e}")))?;
    let sig = SigFile {
        algorithm: env.algorithm,
        key_id: env.key_id,
        signature: env.signature,
    };
    let signer = verify_parsed(&sig, list, env.body.as_bytes(), list, &roots)?;
    let body: Body = toml::from_str(&env.body).map_err(|e| bad(format!("list body: {e}")))?;
    let keys = body
        .key
        .iter()
        .map(|k| PublicKey::from_fields(&k.key_id, &k.name, &k.public_key, list))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(bad(
            "the list trusts no key; every bundle would be refused".into()
        ));
    }
    for r in &body.revoked {
        if keys.iter().any(|k| k.key_id() == r.key_id) {
            return Err(bad(format!("key {} is both trusted and revoked", r.key_id)));
        }
    }
    let info = ListInfo {
        serial: body.serial,
        issued: body.issued,
        path: list.to_path_buf(),
        signer: signer.key_id().to_string(),
    };
    Ok(TrustedKeys::from_list(keys, body.revoked, info))
}

/// The keys of a keys directory holding a trust list (see [`TrustedKeys::from_dir`]).
pub(crate) fn load(dir: &Path) -> Result<TrustedKeys, BundleError> {
    let loose = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == crate::PUBLIC_KEY_EXT)
        })
        .count();
    if loose > 0 {
        log::warn!(
            "{}: {loose} loose .pub file(s) ignored: with a {LIST_FILE} only the list's keys are \
             trusted",
            dir.display()
        );
    }
    let keys = verify(&dir.join(LIST_FILE), dir)?;
    if let Some(l) = keys.list() {
        log::info!(
            "trust list #{} ({}, signed by root {}): {} key(s), {} revoked",
            l.serial,
            l.issued,
            l.signer,
            keys.keys().len(),
            keys.revoked.len()
        );
    }
    Ok(keys)
}

/// Installs the list file `new` into `keys_dir` after checking it against the installed root
/// keys and serial: written beside, synced, renamed over the old one, directory synced. The
/// same list again is a no-op; a lower or equal serial with other content is refused.
pub fn install(new: &Path, keys_dir: &Path) -> Result<ListInfo, BundleError> {
    let keys = verify(new, keys_dir)?;
    let info = keys.list().cloned().ok_or_else(|| BundleError::BadKey {
        path: new.to_path_buf(),
        reason: "not a trust list".into(),
    })?;
    let dest = keys_dir.join(LIST_FILE);
    let new_bytes = fs::read(new).map_err(io_err(new))?;
    if dest.exists() {
        if fs::read(&dest).map_err(io_err(&dest))? == new_bytes {
            log::info!("trust list #{} is already installed", info.serial);
            return Ok(info);
        }
        // An installed list that no longer verifies (a root removed) does not block a new one.
        if let Ok(old) = verify(&dest, keys_dir) {
            let old_serial = old.list().map(|l| l.serial).unwrap_or(0);
            if info.serial <= old_serial {
                return Err(BundleError::TrustListOlder {
                    path: new.to_path_buf(),
                    serial: info.serial,
                    installed: old_serial,
                });
            }
        }
    }
    crate::policy::write_durably(&dest, &new_bytes)?;
    log::info!(
        "installed trust list #{} into {}",
        info.serial,
        keys_dir.display()
    );
    Ok(ListInfo { path: dest, ..info })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SecretKey {
        SecretKey::generate(name).unwrap()
    }

    /// A keys dir with `root` commissioned.
    fn keys_dir(root: &SecretKey) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join(ROOTS_DIR)).unwrap();
        fs::write(
            d.path().join(ROOTS_DIR).join("root.pub"),
            root.public().to_file_text(),
        )
        .unwrap();
        d
    }

    fn list(serial: u64, keys: &[&SecretKey], revoked: &[&SecretKey]) -> TrustList {
        TrustList {
            serial,
            issued: "2026-12-04".into(),
            keys: keys.iter().map(|k| k.public()).collect(),
            revoked: revoked
                .iter()
                .map(|k| Revocation {
                    key_id: k.public().key_id().to_string(),
                    reason: "laptop stolen".into(),
                    revoked: "2026-12-04".into(),
                })
                .collect(),
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn rotation_and_revocation_by_installing_lists() {
        let (root, old, new) = (key("root"), key("release-2025"), key("release-2026"));
        let dir = keys_dir(&root);
        let staging = tempfile::tempdir().unwrap();
        let l1 = write(
            staging.path(),
            "l1.toml",
            &list(1, &[&old], &[]).signed_text(&root).unwrap(),
        );
        install(&l1, dir.path()).unwrap();
        let k = TrustedKeys::from_dir(dir.path()).unwrap();
        assert!(k.get(old.public().key_id()).is_some());
        assert_eq!(k.list().unwrap().serial, 1);
        // Rotation: list 2 trusts the new key and revokes the old one.
        let l2 = write(
            staging.path(),
            "l2.toml",
            &list(2, &[&new], &[&old]).signed_text(&root).unwrap(),
        );
        install(&l2, dir.path()).unwrap();
        let k = TrustedKeys::from_dir(dir.path()).unwrap();
        assert!(k.get(new.public().key_id()).is_some());
        assert_eq!(
            k.revocation(old.public().key_id()).unwrap().reason,
            "laptop stolen"
        );
        // Reinstalling list 2 is a no-op; list 1 again would undo the revocation: refused.
        install(&l2, dir.path()).unwrap();
        let e = install(&l1, dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                BundleError::TrustListOlder {
                    serial: 1,
                    installed: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            TrustedKeys::from_dir(dir.path())
                .unwrap()
                .list()
                .unwrap()
                .serial,
            2
        );
    }

    #[test]
    fn a_list_not_signed_by_a_root_or_edited_is_refused() {
        let (root, other, k1) = (key("root"), key("not-a-root"), key("k1"));
        let dir = keys_dir(&root);
        let staging = tempfile::tempdir().unwrap();
        // Signed by a signing key, not a root.
        let p = write(
            staging.path(),
            "x.toml",
            &list(1, &[&k1], &[]).signed_text(&other).unwrap(),
        );
        assert!(matches!(
            install(&p, dir.path()),
            Err(BundleError::UnknownSigner { .. })
        ));
        // A root-signed list with one more key added by hand.
        let text = list(1, &[&k1], &[]).signed_text(&root).unwrap();
        let forged = text.replace("serial = 1", "serial = 9");
        let p = write(staging.path(), "y.toml", &forged);
        let e = install(&p, dir.path()).unwrap_err();
        assert!(matches!(e, BundleError::BadSignature { .. }), "{e}");
        assert!(!dir.path().join(LIST_FILE).exists());
    }

    #[test]
    fn a_list_cannot_trust_and_revoke_one_key_or_revoke_its_root() {
        let (root, k1) = (key("root"), key("k1"));
        assert!(list(1, &[&k1], &[&k1]).signed_text(&root).is_err());
        assert!(list(1, &[&k1], &[&root]).signed_text(&root).is_err());
    }
}
