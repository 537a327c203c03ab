//! `renalscan release runtime|bundle` and `renalscan trust-list`: what an integrator ships to
//! carts. An update is one signed file (`artifact` crate); a trust list is one signed file
//! (`bundle::trust`). The cart verifies both with the same code before touching anything.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use artifact::{Kind, Source, Spec};
use bundle::trust::{Revocation, TrustList};
use bundle::{PublicKey, SecretKey};

/// `release` subcommands.
#[derive(clap::Subcommand)]
pub enum ReleaseCmd {
    /// The runtime: binary, systemd units, default configuration, install guide, SBOM.
    Runtime(RuntimeArgs),
    /// A signed model bundle directory, as one file.
    Bundle(BundleArgs),
}

/// Arguments of `release runtime`.
#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// The renalscan-edge binary (its architecture is read from the ELF header).
    #[arg(long)]
    pub binary: PathBuf,
    /// Folder of the deployment files (the unit, the commit timer, the udev rule).
    #[arg(long, default_value = "firmware/deploy")]
    pub deploy: PathBuf,
    /// The documented default configuration.
    #[arg(long, default_value = "firmware/renalscan-edge/config.example.toml")]
    pub config: PathBuf,
    /// The install guide.
    #[arg(long, default_value = "firmware/docs/install.md")]
    pub doc: PathBuf,
    /// The binary's CycloneDX SBOM (`scripts/sbom.sh`); required unless --no-sbom.
    #[arg(long, required_unless_present = "no_sbom")]
    pub sbom: Option<PathBuf>,
    /// Ship without an SBOM (development builds only).
    #[arg(long)]
    pub no_sbom: bool,
    /// Semantic version (default: this workspace's).
    #[arg(long)]
    pub version: Option<String>,
    /// Release counter within the version (default: now, in Unix seconds).
    #[arg(long, value_parser = argrange::u64_in(1, u64::MAX / 2))]
    pub counter: Option<u64>,
    /// Signing key (one the carts' trust list names).
    #[arg(long)]
    pub key: PathBuf,
    /// The artifact to write (`.rsu`).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `release bundle`.
#[derive(clap::Args)]
pub struct BundleArgs {
    /// The signed bundle directory (`renalscan bundle`).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Signing key for the artifact.
    #[arg(long)]
    pub key: PathBuf,
    /// The artifact to write (`.rsu`).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `trust-list`.
#[derive(clap::Args)]
pub struct TrustListArgs {
    /// The root key that signs lists (kept offline; its .pub is on every cart).
    #[arg(long)]
    pub root_key: PathBuf,
    /// A public key that may sign bundles and updates (repeat).
    #[arg(long = "key", value_name = "PUB", required = true)]
    pub keys: Vec<PathBuf>,
    /// Revoke a key: `KEYID=reason` (repeat).
    #[arg(long = "revoke", value_name = "KEYID=REASON")]
    pub revoke: Vec<String>,
    /// Serial, above every list issued before (carts refuse an older one).
    #[arg(long, value_parser = argrange::u64_in(1, u64::MAX / 2))]
    pub serial: u64,
    /// The list file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs a `release` subcommand.
pub fn run(c: ReleaseCmd) -> Result<()> {
    match c {
        ReleaseCmd::Runtime(a) => runtime(a),
        ReleaseCmd::Bundle(a) => bundle_artifact(a),
    }
}

/// `<arch>-linux` from an ELF header, so a binary cannot be shipped under the wrong target.
fn elf_target(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        bail!("{} is not an ELF executable", path.display());
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    let arch = match machine {
        0xB7 => "aarch64",
        0x3E => "x86_64",
        0x28 => "arm",
        other => bail!("{}: unsupported ELF machine {other:#x}", path.display()),
    };
    Ok(format!("{arch}-linux"))
}

fn runtime(a: RuntimeArgs) -> Result<()> {
    let key = SecretKey::from_file(&a.key)?;
    let target = elf_target(&a.binary)?;
    let version = a
        .version
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    let mut files = vec![Source {
        path: "bin/renalscan-edge".into(),
        from: a.binary.clone(),
        mode: 0o755,
    }];
    for unit in [
        "renalscan-edge.service",
        "renalscan-update-commit.service",
        "renalscan-update-commit.timer",
        "99-renalscan-probe.rules",
        "60-renalscan-site.rules.in",
        "site.conf.example",
    ] {
        files.push(Source {
            path: format!("share/deploy/{unit}"),
            from: a.deploy.join(unit),
            mode: 0o644,
        });
    }
    files.push(Source {
        path: "share/doc/config.example.toml".into(),
        from: a.config.clone(),
        mode: 0o644,
    });
    files.push(Source {
        path: "share/doc/install.md".into(),
        from: a.doc.clone(),
        mode: 0o644,
    });
    if let Some(sbom) = &a.sbom {
        files.push(Source {
            path: "share/sbom/renalscan-edge.cdx.json".into(),
            from: sbom.clone(),
            mode: 0o644,
        });
    }
    for f in &files {
        if !f.from.is_file() {
            bail!(
                "{} is missing (needed as {} in the artifact)",
                f.from.display(),
                f.path
            );
        }
    }
    let counter = a.counter.unwrap_or_else(bundle::assemble::default_counter);
    let m = artifact::pack(
        &a.out,
        &Spec {
            kind: Kind::Runtime,
            product: contract::manifest::PRODUCT.into(),
            version: version.clone(),
            counter,
            target: Some(target.clone()),
            files,
        },
        &key,
    )?;
    println!(
        "runtime {version} (release {counter}) for {target}: {} files -> {} (signed by {})",
        m.files.len(),
        a.out.display(),
        key.public().key_id()
    );
    Ok(())
}

fn bundle_artifact(a: BundleArgs) -> Result<()> {
    let key = SecretKey::from_file(&a.key)?;
    let manifest = contract::Manifest::from_file(&a.bundle.join(bundle::MANIFEST_FILE))?;
    let Some(r) = manifest.release_version() else {
        bail!(
            "{}: the manifest has no [release] table; rebuild the bundle with `renalscan bundle`",
            a.bundle.display()
        );
    };
    if !a.bundle.join(bundle::SIGNATURE_FILE).is_file() {
        bail!(
            "{} is not signed ({} missing)",
            a.bundle.display(),
            bundle::SIGNATURE_FILE
        );
    }
    let mut files = Vec::new();
    for e in fs::read_dir(&a.bundle).with_context(|| format!("reading {}", a.bundle.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            files.push(Source {
                path: e.file_name().to_string_lossy().into_owned(),
                from: e.path(),
                mode: 0o644,
            });
        }
    }
    let m = artifact::pack(
        &a.out,
        &Spec {
            kind: Kind::Bundle,
            product: manifest
                .release
                .as_ref()
                .map_or_else(|| contract::manifest::PRODUCT.into(), |r| r.product.clone()),
            version: r.version.to_string(),
            counter: r.counter,
            target: None,
            files,
        },
        &key,
    )?;
    println!(
        "bundle {} {r}: {} files -> {} (signed by {})",
        manifest.model.name,
        m.files.len(),
        a.out.display(),
        key.public().key_id()
    );
    Ok(())
}

/// Writes a signed trust list.
pub fn trust_list(a: TrustListArgs) -> Result<()> {
    let root = SecretKey::from_file(&a.root_key)?;
    let keys = a
        .keys
        .iter()
        .map(|p| PublicKey::from_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    let revoked = a
        .revoke
        .iter()
        .map(|r| {
            let (id, reason) = r
                .split_once('=')
                .with_context(|| format!("--revoke {r:?} is not KEYID=REASON"))?;
            if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("--revoke {r:?}: {id:?} is not a key id (16 hex digits)");
            }
            Ok(Revocation {
                key_id: id.to_ascii_lowercase(),
                reason: reason.trim().to_string(),
                revoked: jiff::Timestamp::now().strftime("%Y-%m-%d").to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let list = TrustList {
        serial: a.serial,
        issued: jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        keys,
        revoked,
    };
    let text = list.signed_text(&root)?;
    fs::write(&a.out, text).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "trust list #{} -> {}: {} key(s), {} revoked, signed by root {}",
        list.serial,
        a.out.display(),
        list.keys.len(),
        list.revoked.len(),
        root.public().key_id()
    );
    Ok(())
}
