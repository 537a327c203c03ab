//! Signed model bundles: the unit a device integrator flashes.
//!
//! A bundle is a directory holding `model.onnx` (or the file the manifest names),
//! `manifest.toml`, `manifest.sig` and usually `MODEL_CARD.md`. The manifest pins the sha256
//! of the model and of the card; `manifest.sig` is an ed25519 signature over the exact
//! manifest bytes. So one signature check plus one hash proves that every byte the device
//! runs was released by a trusted key. The host (`renalscan verify`) and the device call the
//! same [`Bundle::open`], so a bundle that verifies on the workstation verifies on the cart.
//!
//! [`Bundle::open`] reads the model once, hashes those bytes and keeps them: the network is
//! built from [`Bundle::model_bytes`], never from the file again, so what runs is what was
//! verified even if the file is replaced a moment later.
//!
//! Keys and signatures are small TOML files (hex bytes plus a key id), readable in a terminal
//! and diffable. The key id is derived from the public key, so a renamed file cannot pose as
//! another key. [`assemble`] completes a trainer's draft and writes a signed bundle;
//! [`card`] renders the model card from the manifest.

pub mod assemble;
pub mod card;
pub mod policy;
pub mod trust;

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use contract::manifest::{Manifest, ManifestError};

/// The manifest's file name inside a bundle.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// The detached signature over the manifest.
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// The model file name `renalscan bundle` writes.
pub const MODEL_FILE: &str = "model.onnx";
/// The model card file name `renalscan bundle` writes.
pub const CARD_FILE: &str = "MODEL_CARD.md";
/// File extension of public key files in a trusted-keys directory.
pub const PUBLIC_KEY_EXT: &str = "pub";

const ALGORITHM: &str = "ed25519";

/// Why a bundle (or a key) was refused. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A pinned file's bytes differ from what was signed.
    #[error(
        "{file}: sha256 is {actual} but the signed manifest pins {expected}; the file was \
         changed or damaged after signing: copy the bundle again or rebuild it with \
         `renalscan bundle`"
    )]
    HashMismatch {
        /// The file that was hashed.
        file: PathBuf,
        /// sha256 in the manifest.
        expected: String,
        /// sha256 of the file.
        actual: String,
    },
    /// No `manifest.sig`: nobody vouched for this bundle.
    #[error(
        "{path} is missing: the bundle is unsigned and must not run; sign it with \
         `renalscan bundle --key <secret key>`"
    )]
    MissingSignature {
        /// Where the signature was expected.
        path: PathBuf,
    },
    /// The signature file is malformed or does not match the manifest bytes.
    #[error(
        "{path}: {reason}; the manifest was edited after signing or the signature is damaged: \
         rebuild the bundle with `renalscan bundle`"
    )]
    BadSignature {
        /// The signature file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Signed by a key this device does not trust.
    #[error(
        "{path} was signed by key {key_id}, which is not among the trusted keys ({trusted}); \
         add that key's .pub file to the trusted keys only if you trust whoever holds it"
    )]
    UnknownSigner {
        /// The signature file.
        path: PathBuf,
        /// Key id named in the signature.
        key_id: String,
        /// Trusted key ids, comma separated.
        trusted: String,
    },
    /// Signed by a key the trust list revokes.
    #[error(transparent)]
    RevokedSigner(Box<Revoked>),
    /// A trust list older than (or as old as) the installed one.
    #[error(
        "{path}: trust list #{serial} is not newer than the installed #{installed}; an older \
         list could bring back a revoked key: issue a list with a serial above {installed}"
    )]
    TrustListOlder {
        /// The list offered.
        path: PathBuf,
        /// Its serial.
        serial: u64,
        /// The installed list's serial.
        installed: u64,
    },
    /// A bundle the cart's release policy refuses (older, another product, newer runtime
    /// needed).
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// The model expects a preprocessing this code does not implement.
    #[error(
        "{path}: the model expects usimage preprocessing v{found}, this build implements \
         v{supported}; use a bundle trained for v{supported} or a renalscan that implements \
         v{found}"
    )]
    UnsupportedPreprocess {
        /// The manifest.
        path: PathBuf,
        /// Version in the manifest.
        found: u32,
        /// Version this code implements.
        supported: u32,
    },
    /// The manifest is incomplete or breaks the manifest's rules.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A draft (or output directory) a release cannot be made from.
    #[error("{path}: {reason}")]
    Draft {
        /// The draft or directory.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
    /// A key file is malformed or inconsistent.
    #[error("key file {path}: {reason}")]
    BadKey {
        /// The key file (or directory).
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// File system.
    #[error("cannot read or write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The operating system gave no randomness for a new key.
    #[error("no randomness for key generation: {0}")]
    Random(String),
}

/// A signature by a revoked key (boxed in [`BundleError`]: it is the rare, large case).
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} was signed by key {key_id}, REVOKED since {since} by {list}: {reason}; this is \
     refused at every load: install a release re-signed with a current key"
)]
pub struct Revoked {
    /// The signature file.
    pub path: PathBuf,
    /// The revoked key.
    pub key_id: String,
    /// Why it was revoked.
    pub reason: String,
    /// When (as the list states it).
    pub since: String,
    /// The list that revokes it.
    pub list: String,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Streams a file through sha256 (1 MiB reads, so a 100 MB model never sits in memory twice).
pub fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// sha256 of bytes, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Key id: the first 8 bytes of sha256(public key), hex. Derived, so it cannot be forged by
/// renaming a file.
fn key_id_of(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// The fields of key and signature files (TOML).
#[derive(Deserialize)]
struct KeyFile {
    algorithm: String,
    key_id: Option<String>,
    #[serde(default)]
    name: String,
    public_key: Option<String>,
    secret_key: Option<String>,
}

fn parse_key_file(text: &str, path: &Path) -> Result<KeyFile, BundleError> {
    let bad = |reason: String| BundleError::BadKey {
        path: path.to_path_buf(),
        reason,
    };
    let f: KeyFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    if f.algorithm != ALGORITHM {
        return Err(bad(format!(
            "algorithm {:?}, only {ALGORITHM:?} is supported",
            f.algorithm
        )));
    }
    Ok(f)
}

fn hex32(field: Option<&str>, what: &str, path: &Path) -> Result<[u8; 32], BundleError> {
    let bad = |reason: String| BundleError::BadKey {
        path: path.to_path_buf(),
        reason,
    };
    let text = field.ok_or_else(|| bad(format!("no `{what}`")))?;
    let bytes = hex::decode(text.trim()).map_err(|e| bad(format!("`{what}`: {e}")))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad(format!("`{what}` has {} bytes, expected 32", b.len())))
}

/// Checks a stated key id against the derived one (catches files edited by hand).
fn check_key_id(stated: Option<&str>, actual: &str, path: &Path) -> Result<(), BundleError> {
    match stated {
        Some(id) if id != actual => Err(BundleError::BadKey {
            path: path.to_path_buf(),
            reason: format!("key_id {id} does not belong to this key (its id is {actual})"),
        }),
        _ => Ok(()),
    }
}

/// A public signing key a device trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_id: String,
    name: String,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {:?})", self.key_id, self.name)
    }
}

impl PublicKey {
    /// Derived key id (16 hex digits).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Human name given at `keygen` (e.g. "renalscan-release-2026").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parses a public key file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<PublicKey, BundleError> {
        let f = parse_key_file(text, path)?;
        if f.secret_key.is_some() {
            return Err(BundleError::BadKey {
                path: path.to_path_buf(),
                reason: "this is a SECRET key file; give the .pub file (and move the secret \
                         one off this machine if it is a device)"
                    .into(),
            });
        }
        let bytes = hex32(f.public_key.as_deref(), "public_key", path)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| BundleError::BadKey {
            path: path.to_path_buf(),
            reason: format!("not an ed25519 public key: {e}"),
        })?;
        let key_id = key_id_of(&key);
        check_key_id(f.key_id.as_deref(), &key_id, path)?;
        Ok(PublicKey {
            key_id,
            name: f.name,
            key,
        })
    }

    /// From the fields of a trust list entry; `path` names the list in errors.
    pub(crate) fn from_fields(
        key_id: &str,
        name: &str,
        public_key_hex: &str,
        path: &Path,
    ) -> Result<PublicKey, BundleError> {
        let bytes = hex32(Some(public_key_hex), "public_key", path)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| BundleError::BadKey {
            path: path.to_path_buf(),
            reason: format!("{name}: not an ed25519 public key: {e}"),
        })?;
        let derived = key_id_of(&key);
        check_key_id(Some(key_id), &derived, path)?;
        Ok(PublicKey {
            key_id: derived,
            name: name.to_string(),
            key,
        })
    }

    /// The public key bytes, hex.
    pub fn hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// Reads a public key file.
    pub fn from_file(path: &Path) -> Result<PublicKey, BundleError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        PublicKey::parse(&text, path)
    }

    /// The text of a `.pub` file.
    pub fn to_file_text(&self) -> String {
        format!(
            "# renalscan model-bundle signing key, PUBLIC half: copy it into each device's \
             trusted keys directory.\nalgorithm = \"{ALGORITHM}\"\nkey_id = \"{}\"\nname = {}\n\
             public_key = \"{}\"\n",
            self.key_id,
            toml_string(&self.name),
            hex::encode(self.key.as_bytes())
        )
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A secret signing key (host only; never on a device).
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({} {:?})", self.public().key_id, self.name)
    }
}

impl SecretKey {
    /// A new random key from the operating system's generator.
    pub fn generate(name: &str) -> Result<SecretKey, BundleError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| BundleError::Random(e.to_string()))?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(SecretKey {
            name: name.to_string(),
            key,
        })
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        let key = self.key.verifying_key();
        PublicKey {
            key_id: key_id_of(&key),
            name: self.name.clone(),
            key,
        }
    }

    /// Parses a secret key file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<SecretKey, BundleError> {
        let f = parse_key_file(text, path)?;
        let bytes = hex32(f.secret_key.as_deref(), "secret_key", path)?;
        let key = SigningKey::from_bytes(&bytes);
        let s = SecretKey { name: f.name, key };
        check_key_id(f.key_id.as_deref(), &s.public().key_id, path)?;
        if let Some(public) = f.public_key.as_deref() {
            if hex::decode(public.trim()).ok().as_deref()
                != Some(&s.key.verifying_key().as_bytes()[..])
            {
                return Err(BundleError::BadKey {
                    path: path.to_path_buf(),
                    reason: "public_key does not belong to secret_key".into(),
                });
            }
        }
        Ok(s)
    }

    /// Reads a secret key file, warning when others may read it.
    pub fn from_file(path: &Path) -> Result<SecretKey, BundleError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path)
                .map_err(io_err(path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                log::warn!(
                    "{}: secret key readable by others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                );
            }
        }
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        SecretKey::parse(&text, path)
    }

    /// The text of a secret key file. Write it with mode 0600.
    pub fn to_file_text(&self) -> String {
        let public = self.public();
        format!(
            "# renalscan model-bundle signing key, SECRET half: keep it offline, mode 0600, never \
             on a device or in git.\nalgorithm = \"{ALGORITHM}\"\nkey_id = \"{}\"\nname = {}\n\
             public_key = \"{}\"\nsecret_key = \"{}\"\n",
            public.key_id,
            toml_string(&self.name),
            hex::encode(public.key.as_bytes()),
            hex::encode(self.key.as_bytes())
        )
    }
}

/// A new key pair as file texts: `(secret key file, public key file)`.
pub fn keygen(name: &str) -> Result<(String, String), BundleError> {
    let secret = SecretKey::generate(name)?;
    let public = secret.public().to_file_text();
    Ok((secret.to_file_text(), public))
}

/// The public keys a device accepts bundles from. Several at once allow key rotation: ship
/// the new `.pub` beside the old one, re-sign, then remove the old one.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
    revoked: Vec<trust::Revocation>,
    list: Option<trust::ListInfo>,
}

impl TrustedKeys {
    /// From keys already loaded.
    pub fn new(keys: Vec<PublicKey>) -> TrustedKeys {
        TrustedKeys {
            keys,
            revoked: Vec::new(),
            list: None,
        }
    }

    /// From a verified trust list: its keys, minus nothing (a list never names a key both
    /// trusted and revoked), and its revocations.
    pub(crate) fn from_list(
        keys: Vec<PublicKey>,
        revoked: Vec<trust::Revocation>,
        list: trust::ListInfo,
    ) -> TrustedKeys {
        TrustedKeys {
            keys,
            revoked,
            list: Some(list),
        }
    }

    /// Why `key_id` is revoked, if the trust list revokes it.
    pub fn revocation(&self, key_id: &str) -> Option<&trust::Revocation> {
        self.revoked.iter().find(|r| r.key_id == key_id)
    }

    /// The revoked keys (empty without a signed list).
    pub fn revoked(&self) -> &[trust::Revocation] {
        &self.revoked
    }

    /// The signed list these keys came from (`None` for loose `.pub` files).
    pub fn list(&self) -> Option<&trust::ListInfo> {
        self.list.as_ref()
    }

    fn list_name(&self) -> String {
        match &self.list {
            Some(l) => format!("trust list #{} ({})", l.serial, l.path.display()),
            None => "the trusted keys".into(),
        }
    }

    /// One public key file.
    pub fn from_file(path: &Path) -> Result<TrustedKeys, BundleError> {
        Ok(TrustedKeys::new(vec![PublicKey::from_file(path)?]))
    }

    /// A keys directory. With a signed trust list in it ([`trust::LIST_FILE`], checked
    /// against the root keys in [`trust::ROOTS_DIR`]), the list's keys and revocations and
    /// nothing else. Otherwise every `*.pub` file (a workstation's or a test's keys; no
    /// revocation is possible then). An empty directory is an error: a device that trusts
    /// nobody would refuse every bundle for a confusing reason.
    pub fn from_dir(dir: &Path) -> Result<TrustedKeys, BundleError> {
        if dir.join(trust::LIST_FILE).exists() {
            return trust::load(dir);
        }
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == PUBLIC_KEY_EXT))
            .collect();
        paths.sort();
        let keys = paths
            .iter()
            .map(|p| PublicKey::from_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(BundleError::BadKey {
                path: dir.to_path_buf(),
                reason: format!("no *.{PUBLIC_KEY_EXT} public key files"),
            });
        }
        Ok(TrustedKeys::new(keys))
    }

    /// A key file or a keys directory.
    pub fn from_path(path: &Path) -> Result<TrustedKeys, BundleError> {
        if path.is_dir() {
            TrustedKeys::from_dir(path)
        } else {
            TrustedKeys::from_file(path)
        }
    }

    /// The key with this id.
    pub fn get(&self, key_id: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }

    /// All keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }
}

/// Checks a detached signature file's text (`sig_path` names it in errors) over `bytes` (the
/// content of `signed`) against `keys`: well formed, signer trusted and not revoked, signature
/// valid. Returns the signer. One check for manifests, trust lists and update artifacts.
pub fn verify_signature_text(
    sig_text: &str,
    sig_path: &Path,
    bytes: &[u8],
    signed: &Path,
    keys: &TrustedKeys,
) -> Result<PublicKey, BundleError> {
    let sig: SigFile = toml::from_str(sig_text).map_err(|e| BundleError::BadSignature {
        path: sig_path.to_path_buf(),
        reason: format!("malformed signature file: {e}"),
    })?;
    verify_parsed(&sig, sig_path, bytes, signed, keys)
}

pub(crate) fn verify_parsed(
    sig: &SigFile,
    sig_path: &Path,
    bytes: &[u8],
    signed: &Path,
    keys: &TrustedKeys,
) -> Result<PublicKey, BundleError> {
    let bad_sig = |reason: String| BundleError::BadSignature {
        path: sig_path.to_path_buf(),
        reason,
    };
    if sig.algorithm != ALGORITHM {
        return Err(bad_sig(format!(
            "algorithm {:?}, only {ALGORITHM:?} is supported",
            sig.algorithm
        )));
    }
    let sig_bytes: [u8; 64] = hex::decode(sig.signature.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad_sig("signature is not 64 hex-encoded bytes".into()))?;
    if let Some(r) = keys.revocation(&sig.key_id) {
        return Err(BundleError::RevokedSigner(Box::new(Revoked {
            path: sig_path.to_path_buf(),
            key_id: sig.key_id.clone(),
            reason: r.reason.clone(),
            since: r.revoked.clone(),
            list: keys.list_name(),
        })));
    }
    let signer = keys
        .get(&sig.key_id)
        .ok_or_else(|| BundleError::UnknownSigner {
            path: sig_path.to_path_buf(),
            key_id: sig.key_id.clone(),
            trusted: keys
                .keys()
                .iter()
                .map(|k| format!("{} {}", k.key_id, k.name))
                .collect::<Vec<_>>()
                .join(", "),
        })?
        .clone();
    signer
        .key
        .verify_strict(bytes, &Signature::from_bytes(&sig_bytes))
        .map_err(|_| {
            bad_sig(format!(
                "signature by key {} does not match {}",
                signer.key_id,
                signed.display()
            ))
        })?;
    Ok(signer)
}

/// The text of a detached signature file over `bytes`; `what` says what was signed (a
/// comment for whoever opens the file).
pub fn signature_text(bytes: &[u8], key: &SecretKey, what: &str) -> String {
    let sig = key.key.sign(bytes);
    format!(
        "# ed25519 signature over the exact bytes of {what}\nalgorithm = \"{ALGORITHM}\"\n\
         key_id = \"{}\"\nsignature = \"{}\"\n",
        key.public().key_id,
        hex::encode(sig.to_bytes())
    )
}

/// `manifest.sig` fields.
#[derive(Deserialize)]
pub(crate) struct SigFile {
    pub(crate) algorithm: String,
    pub(crate) key_id: String,
    pub(crate) signature: String,
}

/// The text of `manifest.sig` for these exact manifest bytes.
pub fn signature_file_text(manifest_bytes: &[u8], key: &SecretKey) -> String {
    signature_text(manifest_bytes, key, "manifest.toml")
}

fn check_pin(path: PathBuf, expected: &str, actual: String) -> Result<(), BundleError> {
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(BundleError::HashMismatch {
            file: path,
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Reads the model once and checks its hash, and the card's: the returned bytes are the
/// ones that matched.
/// The model bytes and the self-test frames, each checked against its pin (the card too).
fn read_pinned(dir: &Path, manifest: &Manifest) -> Result<(Vec<u8>, Vec<Vec<u8>>), BundleError> {
    let path = dir.join(&manifest.model.file);
    let model = fs::read(&path).map_err(io_err(&path))?;
    check_pin(path, &manifest.model.sha256, sha256_hex(&model))?;
    if let Some(card) = &manifest.card {
        let path = dir.join(&card.file);
        let actual = sha256_file(&path)?;
        check_pin(path, &card.sha256, actual)?;
    }
    let mut selftest = Vec::with_capacity(manifest.selftest.len());
    for case in &manifest.selftest {
        let path = dir.join(&case.file);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        check_pin(path, &case.sha256, sha256_hex(&bytes))?;
        selftest.push(bytes);
    }
    Ok((model, selftest))
}

fn utf8<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str, BundleError> {
    std::str::from_utf8(bytes).map_err(|e| {
        BundleError::Manifest(ManifestError::Parse {
            path: path.to_path_buf(),
            reason: format!("not UTF-8: {e}"),
        })
    })
}

/// Signs the bundle directory `dir`: checks that `manifest.toml` is complete and that the
/// files it pins match, then writes `manifest.sig`. Returns the signer's public key.
///
/// The preprocessing version is not checked here: a workstation may sign bundles for
/// devices that implement a newer one.
pub fn sign_bundle(dir: &Path, key: &SecretKey) -> Result<PublicKey, BundleError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
    let manifest = Manifest::parse(utf8(&bytes, &manifest_path)?, &manifest_path)?;
    read_pinned(dir, &manifest)?;
    let sig_path = dir.join(SIGNATURE_FILE);
    fs::write(&sig_path, signature_file_text(&bytes, key)).map_err(io_err(&sig_path))?;
    let public = key.public();
    log::info!(
        "signed {} with key {} ({})",
        manifest_path.display(),
        public.key_id,
        public.name
    );
    Ok(public)
}

/// A verified bundle: signature, signer, manifest, preprocessing version and hashes all
/// checked, with the model bytes that passed the check.
#[derive(Clone)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
    manifest_sha256: String,
    signer: PublicKey,
    model: Vec<u8>,
    /// The bytes of each `[[selftest]]` frame, in manifest order, as checked.
    selftest: Vec<Vec<u8>>,
    /// The trust list the signer was found in (`None`: loose key files).
    trust_list: Option<trust::ListInfo>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("dir", &self.dir)
            .field("model", &self.manifest.model.name)
            .field("version", &self.manifest.model.version)
            .field("signer", &self.signer)
            .field("model_bytes", &self.model.len())
            .finish()
    }
}

impl Bundle {
    /// Opens and verifies the bundle directory `path` against `keys`, for the preprocessing
    /// this build implements ([`usimage::PREPROCESS_VERSION`]).
    ///
    /// Checks, in order: `manifest.sig` present and well formed, signer trusted, signature
    /// over the exact manifest bytes, manifest complete, preprocessing version implemented,
    /// model (and card) sha256. Cheap checks first, so a wrong bundle fails before the model
    /// is hashed.
    pub fn open(path: &Path, keys: &TrustedKeys) -> Result<Bundle, BundleError> {
        Bundle::open_supporting(path, keys, usimage::PREPROCESS_VERSION)
    }

    /// [`Bundle::open`] for a given implemented preprocessing version.
    pub fn open_supporting(
        path: &Path,
        keys: &TrustedKeys,
        supported_preprocess: u32,
    ) -> Result<Bundle, BundleError> {
        let t = Instant::now();
        let manifest_path = path.join(MANIFEST_FILE);
        let sig_path = path.join(SIGNATURE_FILE);
        let sig_text = match fs::read_to_string(&sig_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BundleError::MissingSignature { path: sig_path })
            }
            Err(source) => {
                return Err(BundleError::Io {
                    path: sig_path,
                    source,
                })
            }
        };
        let manifest_bytes = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
        let signer =
            verify_signature_text(&sig_text, &sig_path, &manifest_bytes, &manifest_path, keys)?;
        let manifest = Manifest::parse(utf8(&manifest_bytes, &manifest_path)?, &manifest_path)?;
        let found = manifest.input.usimage_preprocess_version;
        if found != supported_preprocess {
            return Err(BundleError::UnsupportedPreprocess {
                path: manifest_path,
                found,
                supported: supported_preprocess,
            });
        }
        let signature_ms = t.elapsed().as_secs_f64() * 1e3;
        let (model, selftest) = read_pinned(path, &manifest)?;
        log::info!(
            "bundle {} verified: {} {} ({}), signed by {} ({}); signature {:.1} ms, total {:.0} ms",
            path.display(),
            manifest.model.name,
            manifest.model.version,
            manifest.model.precision.as_str(),
            signer.key_id,
            signer.name,
            signature_ms,
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(Bundle {
            dir: path.to_path_buf(),
            manifest,
            manifest_sha256: sha256_hex(&manifest_bytes),
            signer,
            model,
            selftest,
            trust_list: keys.list().cloned(),
        })
    }

    /// The self-test cases with their frames' bytes (as verified at open).
    pub fn selftest(&self) -> impl Iterator<Item = (&contract::manifest::SelftestCase, &[u8])> {
        self.manifest
            .selftest
            .iter()
            .zip(self.selftest.iter().map(Vec::as_slice))
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The bundle directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the model was read from (for messages: build the network from
    /// [`Bundle::model_bytes`]).
    pub fn model_origin(&self) -> PathBuf {
        self.dir.join(&self.manifest.model.file)
    }

    /// The model bytes whose hash matched the signed manifest.
    pub fn model_bytes(&self) -> &[u8] {
        &self.model
    }

    /// Hands the verified model bytes over (the bundle keeps an empty buffer), so a device
    /// does not hold the file twice in memory while it builds the network.
    pub fn take_model_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.model)
    }

    /// sha256 of the exact manifest bytes the signature covers: the bundle's identity in
    /// decision records.
    pub fn manifest_sha256(&self) -> &str {
        &self.manifest_sha256
    }

    /// The model card, when the manifest pins one.
    pub fn card_path(&self) -> Option<PathBuf> {
        self.manifest.card.as_ref().map(|c| self.dir.join(&c.file))
    }

    /// The key that signed the manifest.
    pub fn signer(&self) -> &PublicKey {
        &self.signer
    }

    /// The signed trust list that vouched for the signer, when the keys came from one.
    pub fn signer_list(&self) -> Option<&trust::ListInfo> {
        self.trust_list.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sha: &str) -> String {
        testkit::manifests::sample(sha)
    }

    const MODEL_BYTES: &[u8] = b"not really onnx, but pinned by hash all the same";

    /// Writes a tiny bundle whose manifest is `edit(sample)` and signs it with `key`.
    fn fake_bundle(dir: &Path, key: &SecretKey, edit: impl Fn(String) -> String) {
        fs::write(dir.join(MODEL_FILE), MODEL_BYTES).unwrap();
        let text = edit(sample(&sha256_hex(MODEL_BYTES)));
        fs::write(dir.join(MANIFEST_FILE), &text).unwrap();
        // Signed raw (not via sign_bundle) so that manifests sign_bundle refuses can be
        // tested on the device side too.
        fs::write(
            dir.join(SIGNATURE_FILE),
            signature_file_text(text.as_bytes(), key),
        )
        .unwrap();
    }

    fn setup(edit: impl Fn(String) -> String) -> (tempfile::TempDir, SecretKey, TrustedKeys) {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate("test").unwrap();
        fake_bundle(dir.path(), &key, edit);
        let keys = TrustedKeys::new(vec![key.public()]);
        (dir, key, keys)
    }

    #[test]
    fn happy_path() {
        let (dir, key, keys) = setup(|s| s);
        let b = Bundle::open(dir.path(), &keys).unwrap();
        assert_eq!(b.signer().key_id(), key.public().key_id());
        assert_eq!(b.manifest().model.name, "renalscan-resnet50");
        assert_eq!(b.model_bytes(), MODEL_BYTES);
        assert_eq!(b.model_origin(), dir.path().join(MODEL_FILE));
        assert_eq!(b.card_path(), None);
    }

    #[test]
    fn the_bytes_kept_are_the_verified_ones() {
        let (dir, _key, keys) = setup(|s| s);
        let mut b = Bundle::open(dir.path(), &keys).unwrap();
        fs::write(dir.path().join(MODEL_FILE), b"swapped after the check").unwrap();
        assert_eq!(b.model_bytes(), MODEL_BYTES);
        assert_eq!(b.take_model_bytes(), MODEL_BYTES);
        assert!(b.model_bytes().is_empty());
        assert_eq!(b.manifest_sha256().len(), 64);
    }

    #[test]
    fn sign_bundle_output_verifies() {
        let (dir, key, keys) = setup(|s| s);
        fs::remove_file(dir.path().join(SIGNATURE_FILE)).unwrap();
        let public = sign_bundle(dir.path(), &key).unwrap();
        assert_eq!(public, key.public());
        Bundle::open(dir.path(), &keys).unwrap();
    }

    #[test]
    fn tampered_model_byte_is_a_hash_mismatch() {
        let (dir, _key, keys) = setup(|s| s);
        let mut bytes = MODEL_BYTES.to_vec();
        bytes[7] ^= 1;
        fs::write(dir.path().join(MODEL_FILE), &bytes).unwrap();
        match Bundle::open(dir.path(), &keys) {
            Err(BundleError::HashMismatch {
                expected, actual, ..
            }) => {
                assert_eq!(expected, sha256_hex(MODEL_BYTES));
                assert_eq!(actual, sha256_hex(&bytes));
            }
            other => panic!("expected HashMismatch, got {other:?}"),
        }
    }

    #[test]
    fn card_is_pinned_too() {
        let card = b"# Model card\n";
        let (dir, _key, keys) = setup(|s| {
            format!(
                "{s}\n[card]\nfile = \"{CARD_FILE}\"\nsha256 = \"{}\"\n",
                sha256_hex(card)
            )
        });
        fs::write(dir.path().join(CARD_FILE), card).unwrap();
        let b = Bundle::open(dir.path(), &keys).unwrap();
        assert_eq!(b.card_path(), Some(dir.path().join(CARD_FILE)));
        fs::write(dir.path().join(CARD_FILE), b"# Model card, improved\n").unwrap();
        assert!(matches!(
            Bundle::open(dir.path(), &keys),
            Err(BundleError::HashMismatch { file, .. }) if file.ends_with(CARD_FILE)
        ));
    }

    #[test]
    fn manifest_edited_after_signing_is_a_bad_signature() {
        let (dir, _key, keys) = setup(|s| s);
        let path = dir.path().join(MANIFEST_FILE);
        let edited = fs::read_to_string(&path)
            .unwrap()
            .replace("threshold = 0.3138", "threshold = 0.05");
        fs::write(&path, edited).unwrap();
        assert!(matches!(
            Bundle::open(dir.path(), &keys),
            Err(BundleError::BadSignature { .. })
        ));
    }

    #[test]
    fn malformed_signature_is_a_bad_signature() {
        let (dir, _key, keys) = setup(|s| s);
        let path = dir.path().join(SIGNATURE_FILE);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("signature = \"", "signature = \"00")).unwrap();
        let err = Bundle::open(dir.path(), &keys).unwrap_err();
        assert!(matches!(err, BundleError::BadSignature { .. }), "{err}");
        fs::write(&path, "garbage").unwrap();
        let err = Bundle::open(dir.path(), &keys).unwrap_err();
        assert!(matches!(err, BundleError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn deleted_signature_is_missing() {
        let (dir, _key, keys) = setup(|s| s);
        fs::remove_file(dir.path().join(SIGNATURE_FILE)).unwrap();
        let err = Bundle::open(dir.path(), &keys).unwrap_err();
        assert!(matches!(err, BundleError::MissingSignature { .. }), "{err}");
        assert!(err.to_string().contains(SIGNATURE_FILE));
    }

    #[test]
    fn other_key_is_an_unknown_signer() {
        let (dir, key, _keys) = setup(|s| s);
        let other = SecretKey::generate("other").unwrap().public();
        let err = Bundle::open(dir.path(), &TrustedKeys::new(vec![other.clone()])).unwrap_err();
        match &err {
            BundleError::UnknownSigner {
                key_id, trusted, ..
            } => {
                assert_eq!(key_id, key.public().key_id());
                assert!(trusted.contains(other.key_id()));
            }
            other => panic!("expected UnknownSigner, got {other:?}"),
        }
        assert!(err.to_string().contains(key.public().key_id()));
    }

    #[test]
    fn other_preprocess_version_is_unsupported() {
        let pv = format!(
            "usimage_preprocess_version = {}",
            usimage::PREPROCESS_VERSION
        );
        let (dir, _key, keys) = setup(|s| s.replace(&pv, "usimage_preprocess_version = 99"));
        match Bundle::open(dir.path(), &keys) {
            Err(BundleError::UnsupportedPreprocess {
                found, supported, ..
            }) => {
                assert_eq!(found, 99);
                assert_eq!(supported, usimage::PREPROCESS_VERSION);
            }
            other => panic!("expected UnsupportedPreprocess, got {other:?}"),
        }
    }

    #[test]
    fn removed_required_field_is_listed() {
        let (dir, key, keys) = setup(|s| s.replace("target_sensitivity = 0.95\n", ""));
        match Bundle::open(dir.path(), &keys) {
            Err(BundleError::Manifest(ManifestError::MissingFields { fields, .. })) => {
                assert_eq!(fields, vec!["operating_point.target_sensitivity"])
            }
            other => panic!("expected MissingFields, got {other:?}"),
        }
        // The signing side refuses the same manifest.
        assert!(matches!(
            sign_bundle(dir.path(), &key),
            Err(BundleError::Manifest(ManifestError::MissingFields { .. }))
        ));
    }

    #[test]
    fn key_files_round_trip_and_rotation_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (secret_text, public_text) = keygen("release-2026").unwrap();
        let secret = SecretKey::parse(&secret_text, Path::new("s")).unwrap();
        let public = PublicKey::parse(&public_text, Path::new("p")).unwrap();
        assert_eq!(secret.public(), public);
        assert_eq!(public.name(), "release-2026");
        // A public file must not accept a secret key, and a hand-edited id is refused.
        assert!(PublicKey::parse(&secret_text, Path::new("s")).is_err());
        let wrong_id = public_text.replace(public.key_id(), "0000000000000000");
        assert!(matches!(
            PublicKey::parse(&wrong_id, Path::new("p")),
            Err(BundleError::BadKey { .. })
        ));
        // Rotation: two .pub files, other files ignored.
        let (_, second) = keygen("release-2027").unwrap();
        fs::write(dir.path().join("a.pub"), &public_text).unwrap();
        fs::write(dir.path().join("b.pub"), &second).unwrap();
        fs::write(dir.path().join("README"), "not a key").unwrap();
        let keys = TrustedKeys::from_path(dir.path()).unwrap();
        assert_eq!(keys.keys().len(), 2);
        assert!(keys.get(public.key_id()).is_some());
        let empty = tempfile::tempdir().unwrap();
        assert!(TrustedKeys::from_dir(empty.path()).is_err());
    }
}
