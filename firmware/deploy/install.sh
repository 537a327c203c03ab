#!/usr/bin/env bash
# Installs (or updates) the renalscan-edge runtime on the cart. Run as root on the device:
#
#   install.sh <version> <renalscan-edge binary> [config.example.toml] [install.md] [sbom]
#
# sbom: the binary's CycloneDX SBOM (`scripts/sbom.sh` writes
# $CARGO_TARGET_DIR/sbom/renalscan-edge.cdx.json, the default), shipped beside the binary.
#
# Layout (firmware/docs/install.md): /opt/renalscan/<version>/bin/renalscan-edge, the
# symlink /opt/renalscan/current switched atomically at the end (the previous target is kept
# for rollback), /etc/renalscan/{config.toml,keys/}, /var/lib/renalscan/{bundles,journal,
# snapshots,sessions,outbox}, the systemd unit and the udev rule. An existing config.toml is never replaced.
#
# DESTDIR=<dir> installs into a staging tree instead of / and skips useradd, udevadm and
# systemctl (for image builds and for checking this script).
set -euo pipefail

usage() { echo "usage: $0 <version> <renalscan-edge binary> [config.example.toml] [install.md] [sbom.cdx.json]" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
version=$1
binary=$2
here=$(cd "$(dirname "$0")" && pwd)
config_example=${3:-$here/../renalscan-edge/config.example.toml}
install_doc=${4:-$here/../docs/install.md}
sbom=${5:-${CARGO_TARGET_DIR:-$HOME/.cache/renalscan/target}/sbom/renalscan-edge.cdx.json}
root=${DESTDIR:-}

[[ $version =~ ^[0-9A-Za-z._+-]+$ ]] || { echo "bad version '$version'" >&2; exit 2; }
[[ -x $binary ]] || { echo "not an executable: $binary" >&2; exit 2; }
if [[ -z $root && $(id -u) -ne 0 ]]; then
    echo "run as root (or set DESTDIR for a staging tree)" >&2
    exit 1
fi

live() { [[ -z $root ]]; }

# Service account: no login, no home; video and dialout for the probe and the serial link.
if live && ! id renalscan >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        --user-group renalscan
fi

# Software, side by side per version.
dest=$root/opt/renalscan/$version
install -d -m 0755 "$dest/bin" "$dest/share/doc"
install -m 0755 "$binary" "$dest/bin/renalscan-edge"
[[ -f $install_doc ]] && install -m 0644 "$install_doc" "$dest/share/doc/install.md"
[[ -f $config_example ]] && install -m 0644 "$config_example" "$dest/share/doc/config.example.toml"
if [[ -f $sbom ]]; then
    install -d -m 0755 "$dest/share/sbom"
    install -m 0644 "$sbom" "$dest/share/sbom/renalscan-edge.cdx.json"
else
    echo "no SBOM at $sbom: run scripts/sbom.sh to ship one beside the binary" >&2
fi

# Configuration and trusted keys: root-owned, readable by the service group.
install -d -m 0755 "$root/etc/renalscan"
install -d -m 0755 "$root/etc/renalscan/keys"
if [[ ! -e $root/etc/renalscan/config.toml && -f $config_example ]]; then
    install -m 0640 "$config_example" "$root/etc/renalscan/config.toml"
    live && chgrp renalscan /etc/renalscan/config.toml
    echo "installed /etc/renalscan/config.toml from the example: set model.bundle, model.trusted_keys"
fi

# State. bundles/ is root-owned (the service only reads it); journal/, snapshots/,
# sessions/ and outbox/ are created and owned for the service by systemd (StateDirectory=)
# and made here for staging.
install -d -m 0755 "$root/var/lib/renalscan" "$root/var/lib/renalscan/bundles"
state_dirs=(journal snapshots sessions outbox)
for d in "${state_dirs[@]}"; do
    install -d -m 0750 "$root/var/lib/renalscan/$d"
    live && chown renalscan:renalscan "/var/lib/renalscan/$d"
done

# systemd unit and udev rule.
install -D -m 0644 "$here/renalscan-edge.service" "$root/etc/systemd/system/renalscan-edge.service"
install -D -m 0644 "$here/99-renalscan-probe.rules" "$root/etc/udev/rules.d/99-renalscan-probe.rules"

# Switch the software atomically (rename over the old link), keeping the previous target.
cur=$root/opt/renalscan/current
if [[ -L $cur ]]; then
    prev=$(readlink "$cur")
    if [[ $prev != "$version" ]]; then
        ln -sfn "$prev" "$root/opt/renalscan/previous.tmp"
        mv -T "$root/opt/renalscan/previous.tmp" "$root/opt/renalscan/previous"
    fi
fi
ln -sfn "$version" "$root/opt/renalscan/current.tmp"
mv -T "$root/opt/renalscan/current.tmp" "$cur"
echo "renalscan-edge $version installed; current -> $version"

if live; then
    udevadm control --reload
    udevadm trigger --subsystem-match=video4linux --subsystem-match=tty
    systemctl daemon-reload
    systemctl enable renalscan-edge.service
    echo "restart with: systemctl restart renalscan-edge (after a bundle and keys are in place)"
fi
