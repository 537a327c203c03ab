#!/usr/bin/env bash
# Cross-builds renalscan-edge for the cart (aarch64-unknown-linux-gnu) and runs it under
# qemu-aarch64-static on a replay source, checking its decisions against the host build.
# Needs: gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user-static, libclang-dev and
# `rustup target add aarch64-unknown-linux-gnu` (scripts/setup.sh installs them).
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
source scripts/env.sh
target_dir="$CARGO_TARGET_DIR"
# The same crate selection as the test command's device build: one feature set, so this
# builds nothing the test command already built.
cargo build --release --target aarch64-unknown-linux-gnu "${DEVICE_CRATES[@]}"
bin="$target_dir/aarch64-unknown-linux-gnu/release/renalscan-edge"
file "$bin" | grep -q aarch64 || { echo "not an aarch64 binary: $bin" >&2; exit 1; }
qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" --version
# --workspace: the same feature set as the test command's workspace build, so nothing
# rebuilds for the host here.
RENALSCAN_EDGE_AARCH64_BIN="$bin" cargo test --release --workspace --test qemu \
  -- --ignored --nocapture
