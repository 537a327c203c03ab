//! Stamps the binary with the git revision it was built from, so every decision record can
//! name its exact software (`RENALSCAN_GIT_REVISION`; `unknown` outside a checkout, or the
//! value of that variable when the build environment sets it, as a source tarball would).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=RENALSCAN_GIT_REVISION");
    let rev = std::env::var("RENALSCAN_GIT_REVISION")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: a commit, a checkout or a fetch into the branch.
            // Only paths that exist: cargo reruns every build for a missing one.
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                for p in ["HEAD", "refs/heads", "packed-refs"] {
                    let path = std::path::Path::new(&dir).join(p);
                    if path.exists() {
                        println!("cargo:rerun-if-changed={}", path.display());
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=RENALSCAN_GIT_REVISION={rev}");
}
