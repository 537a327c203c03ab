#!/usr/bin/env bash
# The main job, from a fresh machine: set up, build, then `renalscan demo`: fetch the
# ImageNet weights, synthesise phantom data, train stage 1, quantize to int8, sign a bundle
# and run renalscan-edge on phantom probe sweeps. Later runs reuse what exists
# (models/demo; pass --fresh to redo everything). Extra arguments go to `renalscan demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
cargo build --release -p renalscan -p renalscan-edge
"$CARGO_TARGET_DIR/release/renalscan" demo "$@"
