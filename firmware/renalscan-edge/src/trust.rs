//! `renalscan-edge trust`: the cart's signed trust list (which keys may sign bundles and
//! updates, which are revoked). Rotating or revoking a key is installing a newer list signed
//! by one of the root keys the cart was commissioned with.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

/// `trust` subcommands.
#[derive(Subcommand)]
pub enum TrustCmd {
    /// Check a trust list against the cart's root keys and install it (a newer serial only).
    Install(TrustInstallArgs),
    /// The keys the cart trusts now, and the revoked ones.
    Show(TrustShowArgs),
}

/// Arguments of `trust install`.
#[derive(Args)]
pub struct TrustInstallArgs {
    /// The list (`renalscan trust-list`).
    pub list: PathBuf,
    /// The cart's keys directory.
    #[arg(long, default_value = "/etc/renalscan/keys")]
    pub keys: PathBuf,
}

/// Arguments of `trust show`.
#[derive(Args)]
pub struct TrustShowArgs {
    /// The cart's keys directory.
    #[arg(long, default_value = "/etc/renalscan/keys")]
    pub keys: PathBuf,
}

/// Runs a `trust` subcommand.
pub fn cmd(c: TrustCmd) -> anyhow::Result<ExitCode> {
    match c {
        TrustCmd::Install(a) => {
            let info = bundle::trust::install(&a.list, &a.keys)?;
            println!(
                "trust list #{} ({}) installed in {}, signed by root {}; bundles and updates \
                 are checked against it from their next load",
                info.serial,
                info.issued,
                a.keys.display(),
                info.signer
            );
        }
        TrustCmd::Show(a) => {
            let keys = bundle::TrustedKeys::from_path(&a.keys)?;
            match keys.list() {
                Some(l) => println!(
                    "trust list #{} issued {}, signed by root {}",
                    l.serial, l.issued, l.signer
                ),
                None => println!(
                    "loose key files in {} (no signed list, no revocations)",
                    a.keys.display()
                ),
            }
            for k in keys.keys() {
                println!("trusted  {} {}", k.key_id(), k.name());
            }
            for r in keys.revoked() {
                println!("REVOKED  {} since {}: {}", r.key_id, r.revoked, r.reason);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
