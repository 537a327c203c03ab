# Sourced by the other scripts: one shared cargo target directory outside the clone, so
# repeated CI runs and fresh clones reuse builds (burn alone takes ~15 minutes cold).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/renalscan/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Device crates: everything the cart runs (no training framework).
DEVICE_CRATES=(-p contract -p bundle -p artifact -p updater -p usimage -p model -p cartlink -p journal -p operator-view -p records -p pacs -p renalscan-edge)
