#!/usr/bin/env bash
# CycloneDX SBOMs (JSON, spec 1.5) of the two binaries, for integrators:
#   renalscan-edge for the cart (aarch64-unknown-linux-gnu), renalscan for the workstation
#   (x86_64-unknown-linux-gnu); run-time dependencies only (no build scripts' own).
# Usage: bash scripts/sbom.sh [OUT_DIR]   (default: $CARGO_TARGET_DIR/sbom)
# firmware/deploy/install.sh ships renalscan-edge's beside the binary
# (/opt/renalscan/<version>/share/sbom/renalscan-edge.cdx.json).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
out=${1:-$CARGO_TARGET_DIR/sbom}
mkdir -p "$out"
CYCLONEDX_VERSION=0.5.9
if ! cargo cyclonedx --version 2>/dev/null | grep -q " $CYCLONEDX_VERSION\$"; then
  echo "sbom: installing cargo-cyclonedx $CYCLONEDX_VERSION (a few minutes on 2 cores)"
  CARGO_TARGET_DIR="${TMPDIR:-/tmp}/renalscan-cargo-cyclonedx" \
    cargo install --locked --quiet cargo-cyclonedx --version "$CYCLONEDX_VERSION"
fi
# Reproducible: the timestamp is the last commit's.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
for spec in "renalscan-edge firmware/renalscan-edge aarch64-unknown-linux-gnu" \
            "renalscan host-tools/renalscan x86_64-unknown-linux-gnu"; do
  read -r bin dir target <<<"$spec"
  cargo cyclonedx --manifest-path "$dir/Cargo.toml" --describe binaries --format json \
    --spec-version 1.5 --no-build-deps --target "$target" -q
  mv "$dir/${bin}_bin.cdx.json" "$out/$bin.cdx.json"
  # The workspace run writes the other binaries' too; only this target's is kept.
  find . -name '*_bin.cdx.json' -not -path './target/*' -delete
  n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1])).get("components", [])))' "$out/$bin.cdx.json")
  echo "sbom: $out/$bin.cdx.json ($target): $n components"
done
