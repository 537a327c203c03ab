//! Signed update artifacts: one file per update, for the runtime or for a model bundle.
//!
//! An artifact is a plain tar file: `update.toml` (what it is, for which product and target,
//! its release, and the sha256, size and mode of every payload file), `update.sig` (an
//! ed25519 signature over the exact bytes of `update.toml`, by a key of the cart's trust
//! list), then the payload under `payload/`. [`verify`] reads the whole file once and checks
//! everything (signature, signer not revoked, every file present once with its hash and size,
//! nothing else, no path leaving the payload) before the caller touches the cart;
//! [`Verified::extract`] then writes the payload durably into a staging folder, hashing again
//! as it writes, so a file swapped between the two passes is caught too.
//!
//! A tar because an integrator can list one with standard tools (`tar tvf`) and because the
//! format is trivial to stream; the trust comes from the signature, never from the container.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use bundle::{PublicKey, SecretKey, TrustedKeys};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File extension of update artifacts.
pub const EXT: &str = "rsu";
/// The update manifest inside an artifact.
pub const MANIFEST: &str = "update.toml";
/// The detached signature over it.
pub const SIGNATURE: &str = "update.sig";
/// Where the payload lives inside the tar.
pub const PAYLOAD: &str = "payload";

/// What an artifact updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The runtime: binary, systemd unit, default configuration, SBOM, documentation.
    Runtime,
    /// A signed model bundle.
    Bundle,
}

impl Kind {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Runtime => "runtime",
            Kind::Bundle => "bundle",
        }
    }
}

/// One payload file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path under the slot (`bin/renalscan-edge`, `model.onnx`).
    pub path: String,
    /// Lower-case hex sha256.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Unix permission bits (0o755 for programs, 0o644 otherwise).
    pub mode: u32,
}

/// `update.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateManifest {
    /// Runtime or bundle.
    pub kind: Kind,
    /// Product line ([`contract::manifest::PRODUCT`]).
    pub product: String,
    /// Semantic version of what is inside.
    pub version: String,
    /// Release counter within the version (see `contract::manifest::ReleaseVersion`).
    pub counter: u64,
    /// `<arch>-<os>` the runtime was built for (`aarch64-linux`); runtime artifacts only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// When it was packed (UTC, RFC 3339).
    pub created: String,
    /// Every payload file, sorted by path.
    #[serde(rename = "file")]
    pub files: Vec<FileEntry>,
}

impl UpdateManifest {
    /// The release position of what is inside.
    pub fn release(&self) -> Option<contract::manifest::ReleaseVersion> {
        contract::manifest::ReleaseVersion::new(&self.version, self.counter)
    }

    /// Parses `update.toml` text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<UpdateManifest, ArtifactError> {
        let m: UpdateManifest = toml::from_str(text).map_err(|e| ArtifactError::Malformed {
            path: path.to_path_buf(),
            reason: format!("{MANIFEST}: {e}"),
        })?;
        if m.release().is_none() {
            return Err(ArtifactError::Malformed {
                path: path.to_path_buf(),
                reason: format!("{MANIFEST}: version {:?} is not semver", m.version),
            });
        }
        for f in &m.files {
            check_rel_path(&f.path).map_err(|reason| ArtifactError::Malformed {
                path: path.to_path_buf(),
                reason,
            })?;
        }
        Ok(m)
    }
}

/// Why an artifact was refused. Each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Not an artifact at all, or damaged beyond reading.
    #[error(
        "{path} is not a renalscan update artifact ({reason}); build one with `renalscan \
         release`, and copy it again if it was damaged in transfer"
    )]
    Malformed {
        /// The artifact.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A payload file differs from what was signed, or is missing, extra or repeated.
    #[error(
        "{path}: {file} {reason}: the artifact was changed after signing or damaged in \
         transfer; nothing was installed: copy it again from the release"
    )]
    Tampered {
        /// The artifact.
        path: PathBuf,
        /// The payload file.
        file: String,
        /// What differs.
        reason: String,
    },
    /// The signature, the signer or the trust list refused it (the refusal names the
    /// artifact).
    #[error("{refusal}")]
    Signature {
        /// The refusal (unknown or revoked signer, bad signature).
        refusal: Box<bundle::BundleError>,
    },
    /// File system.
    #[error("cannot read or write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A relative path of normal components only: nothing can be written outside the slot.
fn check_rel_path(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    let ok = !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!("payload path {p:?} must be relative, without `..`"))
    }
}

/// A payload file to pack: where it goes in the slot, where it is now, its mode.
#[derive(Debug, Clone)]
pub struct Source {
    /// Relative path under the slot.
    pub path: String,
    /// The file on the workstation.
    pub from: PathBuf,
    /// Unix permission bits.
    pub mode: u32,
}

/// What to pack.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Runtime or bundle.
    pub kind: Kind,
    /// Product line ([`contract::manifest::PRODUCT`] for ours).
    pub product: String,
    /// Semantic version.
    pub version: String,
    /// Release counter.
    pub counter: u64,
    /// Target triple-ish (`aarch64-linux`) for runtimes.
    pub target: Option<String>,
    /// The files.
    pub files: Vec<Source>,
}

fn sha256_reader(r: impl Read, path: &Path) -> Result<(String, u64), ArtifactError> {
    copy_hashing(r, None, path)
}

/// Streams `r` through sha256 (1 MiB reads), into `out` when given; `(sha256, bytes)`.
fn copy_hashing(
    mut r: impl Read,
    mut out: Option<&mut fs::File>,
    path: &Path,
) -> Result<(String, u64), ArtifactError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).map_err(io_err(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        if let Some(f) = out.as_deref_mut() {
            f.write_all(&buf[..k]).map_err(io_err(path))?;
        }
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Packs and signs an artifact at `out` (written beside and renamed into place).
pub fn pack(out: &Path, spec: &Spec, key: &SecretKey) -> Result<UpdateManifest, ArtifactError> {
    let bad = |reason: String| ArtifactError::Malformed {
        path: out.to_path_buf(),
        reason,
    };
    if contract::manifest::ReleaseVersion::new(&spec.version, spec.counter).is_none() {
        return Err(bad(format!("version {:?} is not semver", spec.version)));
    }
    let mut files = Vec::with_capacity(spec.files.len());
    let mut seen = BTreeMap::new();
    for s in &spec.files {
        check_rel_path(&s.path).map_err(bad)?;
        if seen.insert(s.path.clone(), ()).is_some() {
            return Err(bad(format!("{} is given twice", s.path)));
        }
        let f = fs::File::open(&s.from).map_err(io_err(&s.from))?;
        let (sha256, size) = sha256_reader(f, &s.from)?;
        files.push(FileEntry {
            path: s.path.clone(),
            sha256,
            size,
            mode: s.mode & 0o777,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let m = UpdateManifest {
        kind: spec.kind,
        product: spec.product.clone(),
        version: spec.version.clone(),
        counter: spec.counter,
        target: spec.target.clone(),
        created: jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        files,
    };
    let text = toml::to_string(&m).map_err(|e| bad(e.to_string()))?;
    let sig = bundle::signature_text(text.as_bytes(), key, MANIFEST);
    let tmp = out.with_extension("rsu.partial");
    {
        let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut tar = tar::Builder::new(io::BufWriter::new(file));
        let mut add = |name: &str, bytes: &[u8], mode: u32| -> Result<(), ArtifactError> {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(mode);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, name, bytes).map_err(io_err(&tmp))
        };
        add(MANIFEST, text.as_bytes(), 0o644)?;
        add(SIGNATURE, sig.as_bytes(), 0o644)?;
        for s in &spec.files {
            let mode = s.mode & 0o777;
            let mut f = fs::File::open(&s.from).map_err(io_err(&s.from))?;
            let size = f.metadata().map_err(io_err(&s.from))?.len();
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(mode);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, format!("{PAYLOAD}/{}", s.path), &mut f)
                .map_err(io_err(&tmp))?;
        }
        let w = tar.into_inner().map_err(io_err(&tmp))?;
        let f = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, out).map_err(io_err(out))?;
    log::info!(
        "packed {} {} {} (release {}), {} files, signed by {}",
        out.display(),
        m.kind.as_str(),
        m.version,
        m.counter,
        m.files.len(),
        key.public().key_id()
    );
    Ok(m)
}

/// An artifact whose signature and every payload byte checked.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The artifact file.
    pub path: PathBuf,
    /// Its signed manifest.
    pub manifest: UpdateManifest,
    /// sha256 of the signed manifest bytes: the update's identity in logs.
    pub manifest_sha256: String,
    /// Who signed it.
    pub signer: PublicKey,
}

fn entry_name(e: &tar::Entry<'_, impl Read>, path: &Path) -> Result<String, ArtifactError> {
    let p = e.path().map_err(io_err(path))?;
    Ok(p.to_string_lossy().into_owned())
}

/// Reads the artifact `path` in full and checks it against `keys`: the manifest first, its
/// signature, then every payload entry (present once, the signed size and sha256, nothing
/// unlisted). Touches nothing.
pub fn verify(path: &Path, keys: &TrustedKeys) -> Result<Verified, ArtifactError> {
    let malformed = |reason: String| ArtifactError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let f = fs::File::open(path).map_err(io_err(path))?;
    let mut tar = tar::Archive::new(io::BufReader::new(f));
    let mut entries = tar.entries().map_err(|e| malformed(e.to_string()))?;
    let mut small = |want: &str| -> Result<Vec<u8>, ArtifactError> {
        let mut e = entries
            .next()
            .ok_or_else(|| malformed(format!("no {want}")))?
            .map_err(|e| malformed(e.to_string()))?;
        let name = entry_name(&e, path)?;
        if name != want {
            return Err(malformed(format!("expected {want} first, found {name:?}")));
        }
        if e.size() > 1 << 20 {
            return Err(malformed(format!("{want} is {} bytes", e.size())));
        }
        let mut v = Vec::new();
        e.read_to_end(&mut v)
            .map_err(|e| malformed(e.to_string()))?;
        Ok(v)
    };
    let manifest_bytes = small(MANIFEST)?;
    let sig_bytes = small(SIGNATURE)?;
    let sig_text =
        String::from_utf8(sig_bytes).map_err(|_| malformed(format!("{SIGNATURE} is not UTF-8")))?;
    let inside = |name: &str| PathBuf::from(format!("{} ({name})", path.display()));
    let signer = bundle::verify_signature_text(
        &sig_text,
        &inside(SIGNATURE),
        &manifest_bytes,
        &inside(MANIFEST),
        keys,
    )
    .map_err(|e| ArtifactError::Signature {
        refusal: Box::new(e),
    })?;
    let text = String::from_utf8(manifest_bytes.clone())
        .map_err(|_| malformed(format!("{MANIFEST} is not UTF-8")))?;
    let manifest = UpdateManifest::parse(&text, path)?;
    check_payload(path, &manifest, entries, None)?;
    log::info!(
        "update {} verified: {} {} (release {}), {} files, signed by {} ({})",
        path.display(),
        manifest.kind.as_str(),
        manifest.version,
        manifest.counter,
        manifest.files.len(),
        signer.key_id(),
        signer.name()
    );
    Ok(Verified {
        path: path.to_path_buf(),
        manifest_sha256: bundle::sha256_hex(&manifest_bytes),
        manifest,
        signer,
    })
}

/// Walks the payload entries: each listed file once with its size and hash, nothing else.
/// With `into`, writes each file there durably as it goes.
fn check_payload<R: Read>(
    path: &Path,
    m: &UpdateManifest,
    entries: tar::Entries<'_, R>,
    into: Option<&Path>,
) -> Result<(), ArtifactError> {
    let tampered = |file: &str, reason: String| ArtifactError::Tampered {
        path: path.to_path_buf(),
        file: file.to_string(),
        reason,
    };
    let listed: BTreeMap<&str, &FileEntry> = m.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut seen = BTreeMap::new();
    let prefix = format!("{PAYLOAD}/");
    for e in entries {
        let mut e = e.map_err(|e| ArtifactError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let name = entry_name(&e, path)?;
        let rel = name.strip_prefix(&prefix).unwrap_or(&name).to_string();
        let Some(f) = listed.get(rel.as_str()) else {
            return Err(tampered(&name, "is not in the signed list".into()));
        };
        if seen.insert(rel.clone(), ()).is_some() {
            return Err(tampered(&rel, "appears twice".into()));
        }
        if e.header().entry_type() != tar::EntryType::Regular {
            return Err(tampered(&rel, "is not a regular file".into()));
        }
        let (sha, size) = match into {
            None => sha256_reader(&mut e, path)?,
            Some(dir) => write_entry(&mut e, &dir.join(&rel), f.mode)?,
        };
        if size != f.size || sha != f.sha256 {
            return Err(tampered(
                &rel,
                format!(
                    "has {size} bytes, sha256 {sha}; signed: {} bytes, sha256 {}",
                    f.size, f.sha256
                ),
            ));
        }
    }
    if let Some(missing) = m.files.iter().find(|f| !seen.contains_key(&f.path)) {
        return Err(tampered(&missing.path, "is missing".into()));
    }
    Ok(())
}

/// Writes one payload file (created new, mode set, fsynced), hashing it on the way.
fn write_entry(r: &mut impl Read, dest: &Path, mode: u32) -> Result<(String, u64), ArtifactError> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode & 0o777);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut out = opts.open(dest).map_err(io_err(dest))?;
    let hashed = copy_hashing(r, Some(&mut out), dest)?;
    out.sync_all().map_err(io_err(dest))?;
    Ok(hashed)
}

/// Fsyncs `dir` and every folder below it, so that new names survive a power cut.
pub fn sync_tree(dir: &Path) -> Result<(), ArtifactError> {
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        if e.file_type().map_err(io_err(dir))?.is_dir() {
            sync_tree(&e.path())?;
        }
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Verified {
    /// Writes the payload into `into` (which must not exist), checking every byte against
    /// the signed hashes again as it writes, then fsyncs the tree. On any error the partial
    /// folder is removed.
    pub fn extract(&self, into: &Path) -> Result<(), ArtifactError> {
        fs::create_dir(into).map_err(io_err(into))?;
        let result = (|| {
            let f = fs::File::open(&self.path).map_err(io_err(&self.path))?;
            let mut tar = tar::Archive::new(io::BufReader::new(f));
            let mut entries = tar.entries().map_err(io_err(&self.path))?;
            // Skip the manifest and signature (checked by `verify`; checked again below by
            // comparing the manifest bytes).
            let mut first = Vec::new();
            if let Some(e) = entries.next() {
                e.map_err(io_err(&self.path))?
                    .read_to_end(&mut first)
                    .map_err(io_err(&self.path))?;
            }
            if bundle::sha256_hex(&first) != self.manifest_sha256 {
                return Err(ArtifactError::Tampered {
                    path: self.path.clone(),
                    file: MANIFEST.into(),
                    reason: "changed since it was verified".into(),
                });
            }
            if let Some(e) = entries.next() {
                e.map_err(io_err(&self.path))?;
            }
            check_payload(&self.path, &self.manifest, entries, Some(into))?;
            sync_tree(into)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(into);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SecretKey {
        SecretKey::generate(name).unwrap()
    }

    fn files(dir: &Path) -> Vec<Source> {
        fs::create_dir_all(dir.join("src/bin")).unwrap();
        fs::write(dir.join("src/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::write(dir.join("src/unit"), b"[Service]\n").unwrap();
        vec![
            Source {
                path: "bin/tool".into(),
                from: dir.join("src/bin/tool"),
                mode: 0o755,
            },
            Source {
                path: "share/unit".into(),
                from: dir.join("src/unit"),
                mode: 0o644,
            },
        ]
    }

    fn spec(dir: &Path) -> Spec {
        Spec {
            kind: Kind::Runtime,
            product: contract::manifest::PRODUCT.into(),
            version: "0.2.0".into(),
            counter: 4,
            target: Some("aarch64-linux".into()),
            files: files(dir),
        }
    }

    #[test]
    fn packs_verifies_and_extracts_with_modes() {
        let d = tempfile::tempdir().unwrap();
        let k = key("release");
        let out = d.path().join("u.rsu");
        pack(&out, &spec(d.path()), &k).unwrap();
        let keys = TrustedKeys::new(vec![k.public()]);
        let v = verify(&out, &keys).unwrap();
        assert_eq!(v.manifest.files.len(), 2);
        assert_eq!(v.manifest.release().unwrap().counter, 4);
        let into = d.path().join("slot");
        v.extract(&into).unwrap();
        assert_eq!(
            fs::read(into.join("bin/tool")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(into.join("bin/tool"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755);
        }
    }

    /// Flips one byte of the payload (the last file's content) inside the tar.
    #[test]
    fn a_changed_payload_byte_or_unknown_signer_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let k = key("release");
        let out = d.path().join("u.rsu");
        pack(&out, &spec(d.path()), &k).unwrap();
        let mut bytes = fs::read(&out).unwrap();
        let at = bytes.windows(9).position(|w| w == b"[Service]").unwrap();
        bytes[at + 1] ^= 0x20;
        let bad = d.path().join("bad.rsu");
        fs::write(&bad, &bytes).unwrap();
        let keys = TrustedKeys::new(vec![k.public()]);
        let e = verify(&bad, &keys).unwrap_err();
        assert!(
            matches!(e, ArtifactError::Tampered { ref file, .. } if file == "share/unit"),
            "{e}"
        );
        let e = verify(&out, &TrustedKeys::new(vec![key("other").public()])).unwrap_err();
        assert!(e.to_string().contains("not among the trusted keys"), "{e}");
        // A truncated file is not an artifact.
        fs::write(&bad, &fs::read(&out).unwrap()[..700]).unwrap();
        assert!(verify(&bad, &keys).is_err());
    }

    #[test]
    fn paths_leaving_the_slot_are_refused_at_pack_and_parse() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec(d.path());
        s.files[0].path = "../etc/passwd".into();
        assert!(pack(&d.path().join("x.rsu"), &s, &key("k")).is_err());
        let m = "kind = \"runtime\"\nproduct = \"p\"\nversion = \"1.0.0\"\ncounter = 1\n\
                 created = \"\"\n[[file]]\npath = \"/abs\"\nsha256 = \"00\"\nsize = 0\nmode = 420\n";
        assert!(UpdateManifest::parse(m, Path::new("u")).is_err());
    }
}
