#!/usr/bin/env bash
# The main job, from a fresh machine: set up, fetch the ImageNet weights, export the
# backbone to ONNX and classify the sample photos with tract on it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
cargo build --release -p renalscan
bin="$CARGO_TARGET_DIR/release/renalscan"
"$bin" fetch-weights
[ -f models/resnet50-imagenet.onnx ] || "$bin" export-backbone --out models/resnet50-imagenet.onnx
"$bin" imagenet ../shared/fixtures/photos/*.jpg
