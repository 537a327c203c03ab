//! What made a decision: the runtime's version and git revision, the bundle's identity and
//! signer, and a hash of the effective configuration. Every decision record and status
//! carries it ([`contract::events::Trace`]), and `renalscan-edge version --json` prints it,
//! so a fleet tool can find every decision a given build, bundle or configuration made.

use contract::events::Trace;

use crate::config::Config;
use crate::infer::ModelInfo;

/// The runtime's version.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision the runtime was built from (`build.rs`; `unknown` outside a checkout).
pub const GIT_REVISION: &str = env!("RENALSCAN_GIT_REVISION");

/// sha256 of the effective configuration (the file, its defaults and the flags over it), as
/// JSON in declaration order: the same settings give the same hash on every cart.
pub fn config_sha256(cfg: &Config) -> String {
    // Serialising plain settings into a Vec cannot fail.
    bundle::sha256_hex(&serde_json::to_vec(cfg).unwrap_or_default())
}

/// The trace of decisions made by `model` under `cfg`.
pub fn trace(model: &ModelInfo, cfg: &Config) -> Trace {
    Trace {
        bundle_sha256: model.bundle_sha256.clone(),
        signer: model.signer.clone(),
        runtime: RUNTIME_VERSION.to_string(),
        git: GIT_REVISION.to_string(),
        config_sha256: config_sha256(cfg),
        release: model.release.clone(),
        downgrade_override: model.downgrade_override.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_hash_follows_the_effective_settings() {
        let a = Config::default();
        let mut b = Config::default();
        assert_eq!(config_sha256(&a), config_sha256(&b));
        b.aggregate.window += 1;
        assert_ne!(config_sha256(&a), config_sha256(&b));
        assert_eq!(config_sha256(&a).len(), 64);
        assert!(!GIT_REVISION.is_empty());
    }
}
