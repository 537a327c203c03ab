//! `renalscan-edge version`: what this cart would run, for a fleet tool or a support call.
//! The runtime's version and git revision, its target, and with a configuration or bundle:
//! the bundle's identity and signer (verified), the effective configuration's hash and the
//! operating threshold with its source. The same fields stamp every decision and status.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::cli::{apply_model, load_config, ModelArgs};
use crate::config::Config;
use crate::trace::{config_sha256, GIT_REVISION, RUNTIME_VERSION};

/// Arguments of `version`.
#[derive(Args)]
pub struct VersionArgs {
    /// TOML configuration: its hash, and its model section's bundle.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What would run, as JSON: the runtime, and with a configured bundle its verified identity
/// and the operating threshold with its source. Fails when the bundle does not verify or its
/// threshold policy refuses the configuration (what `run` would refuse).
pub fn collect(
    cfg: &Config,
    config_path: Option<&std::path::Path>,
) -> anyhow::Result<serde_json::Value> {
    cfg.validate()?;
    let mut out = serde_json::json!({
        "runtime": RUNTIME_VERSION,
        "git": GIT_REVISION,
        "target": format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        "cpu_features": crate::selftest::cpu_features(),
        "config": config_path.map(|p| p.display().to_string()),
        "config_sha256": config_sha256(cfg),
    });
    if let Some(dir) = &cfg.model.bundle {
        let (b, admission) = crate::infer::open_admitted(
            dir,
            cfg.model.trusted_keys.as_deref(),
            cfg.model.floor_file.as_deref(),
        )
        .with_context(|| format!("bundle {} is not usable on this cart", dir.display()))?;
        let m = b.manifest();
        let (threshold, source) = crate::pipeline::operating_threshold(cfg.aggregate.threshold, m)?;
        out["bundle"] = serde_json::json!({
            "path": dir.display().to_string(),
            "name": m.model.name,
            "version": m.model.version,
            "precision": m.model.precision.as_str(),
            "sha256": b.manifest_sha256(),
            "signer": b.signer().key_id(),
            "signed_threshold": m.operating_point.threshold,
            "site_range": m.operating_point.site_range,
            "selftest_references": m.selftest.len(),
            "release": m.release_version().map(|r| r.to_string()),
            "product": m.release.as_ref().map(|r| r.product.clone()),
            "downgrade_override": match admission {
                bundle::policy::Admission::Override(o) => Some(format!("{} ({})", o.reason, o.at)),
                bundle::policy::Admission::Allowed => None,
            },
        });
        if let Some(l) = b.signer_list() {
            out["trust_list"] =
                serde_json::json!({"serial": l.serial, "issued": l.issued, "root": l.signer});
        }
        out["threshold"] = serde_json::json!(threshold);
        out["threshold_source"] = serde_json::to_value(source)?;
    }
    Ok(out)
}

/// Prints the versions; fails as [`collect`] does.
pub fn cmd(a: VersionArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = load_config(a.config.as_deref())?;
    apply_model(&mut cfg, &a.model);
    let out = collect(&cfg, a.config.as_deref())?;
    if a.json {
        println!("{out}");
    } else {
        println!(
            "renalscan-edge {RUNTIME_VERSION} (git {GIT_REVISION}, {})",
            out["target"].as_str().unwrap_or("?")
        );
        println!(
            "config sha256 {}",
            out["config_sha256"].as_str().unwrap_or("?")
        );
        if let Some(b) = out.get("bundle") {
            println!(
                "bundle {}@{} sha256 {} signed by {}",
                b["name"].as_str().unwrap_or("?"),
                b["version"].as_str().unwrap_or("?"),
                b["sha256"].as_str().unwrap_or("?"),
                b["signer"].as_str().unwrap_or("?")
            );
            println!(
                "operating threshold {} ({})",
                out["threshold"],
                out["threshold_source"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
