#!/usr/bin/env bash
# The project's test command: formatting, the dependency policy (cargo deny), lints, the
# test suite, the device crates cross-built for aarch64 (contract, bundle, model, journal,
# operator view and PACS tests and the edge runtime under qemu) and the cart link built for
# a Cortex-M4F microcontroller.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

step() { echo; echo "=== $* ($(date +%H:%M:%S))"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo deny: licenses, bans, sources (deny.toml; advisories need a network)"
cargo deny --offline check --hide-inclusion-graph licenses bans sources

step "clippy -D warnings"
cargo clippy --release --workspace --all-targets -- -D warnings

step "tests (x86_64)"
cargo test --release --workspace

step "deployment in a throwaway root: install.sh, an A/B update, systemd-analyze verify"
bash firmware/deploy/check.sh

step "device crates for aarch64, tests under qemu"
cargo build --release --target aarch64-unknown-linux-gnu "${DEVICE_CRATES[@]}"
cargo test --release --target aarch64-unknown-linux-gnu -p contract -p bundle -p artifact -p updater -p model -p journal -p operator-view -p pacs

step "renalscan-edge for aarch64 under qemu on a replay source, decisions vs the host build"
bash firmware/renalscan-edge/scripts/aarch64-e2e.sh

step "cartlink for thumbv7em-none-eabihf (no_std)"
cargo build --release -p cartlink --no-default-features --target thumbv7em-none-eabihf

step "all green"
