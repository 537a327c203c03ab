#!/usr/bin/env bash
# First installation of renalscan-edge on a cart, from a signed runtime update artifact. As
# root on the device (or with DESTDIR for an image build):
#
#   PROBE_ID=vvvv:pppp CART_ID=vvvv:pppp[:serial] install.sh <runtime.rsu> <keys-dir>
#
# <runtime.rsu>: `renalscan release runtime` (binary, units, udev rule, default config,
# install guide, SBOM), signed by a key of the trust list.
# <keys-dir>: the cart's keys: root/*.pub (the root keys, which sign trust lists) and
# trust-list.toml (`renalscan trust-list`); or, for a development cart, *.pub files.
# PROBE_ID, CART_ID: the USB vendor:product IDs of the probe and the cart controller (and
# the controller's serial number), written once into the site udev rule.
#
# Layout (firmware/docs/install.md): A/B slots /opt/renalscan/slots/{a,b} with the links
# current and good; /var/lib/renalscan/bundles/slots/{a,b} likewise for model bundles;
# /var/lib/renalscan/update/{state.toml,log.jsonl}. The first install trusts the media it
# comes from (the image build); every later update is verified by the installed good
# runtime (`renalscan-edge update install`), which this script also uses when the cart
# already has one. Site files are written once and never replaced: /etc/renalscan/config.toml,
# /etc/systemd/system/renalscan-edge.service.d/site.conf, /etc/udev/rules.d/60-renalscan-site.rules.
#
# DESTDIR=<dir> installs into a staging tree instead of / and skips useradd, udevadm and
# systemctl (image builds, and checking this script).
set -euo pipefail

usage() { echo "usage: [PROBE_ID=v:p] [CART_ID=v:p[:serial]] $0 <runtime.rsu> <keys-dir>" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
artifact=$1
keys_src=$2
root=${DESTDIR:-}
live() { [[ -z $root ]]; }

[[ -f $artifact ]] || { echo "no such artifact: $artifact" >&2; exit 2; }
[[ -d $keys_src ]] || { echo "no such keys directory: $keys_src" >&2; exit 2; }
if live && [[ $(id -u) -ne 0 ]]; then
    echo "run as root (or set DESTDIR for a staging tree)" >&2
    exit 1
fi

# Service account: no login, no home; video and dialout for the probe and the serial link.
if live && ! id renalscan >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        --user-group renalscan
fi

# Keys first: the artifact is checked against them. Never replaced once there (a newer trust
# list goes in with `renalscan-edge trust install`).
keys=$root/etc/renalscan/keys
if [[ ! -d $keys ]]; then
    install -d -m 0755 "$keys"
    cp -r "$keys_src"/. "$keys"/
    chmod -R u=rwX,go=rX "$keys"
    echo "installed the trusted keys into /etc/renalscan/keys"
fi

# The runtime, through the A/B installer: the cart's good runtime when it has one, else the
# artifact's own (first install).
good=$root/opt/renalscan/good/bin/renalscan-edge
if [[ -x $good ]]; then
    installer=$good
else
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    tar -xf "$artifact" -C "$scratch" payload/bin/renalscan-edge
    installer=$scratch/payload/bin/renalscan-edge
fi
"$installer" update install "$artifact" --root "${root:-/}" --no-restart
cur=$root/opt/renalscan/current

# Default configuration, only where there is none.
install -d -m 0755 "$root/etc/renalscan"
if [[ ! -e $root/etc/renalscan/config.toml ]]; then
    install -m 0640 "$cur/share/doc/config.example.toml" "$root/etc/renalscan/config.toml"
    live && chgrp renalscan /etc/renalscan/config.toml
    echo "installed /etc/renalscan/config.toml from the example: review it"
fi

# State. bundles/ and update/ are root's (the service only reads them); the others are created
# and owned for the service by systemd (StateDirectory=) and made here for staging.
install -d -m 0755 "$root/var/lib/renalscan" "$root/var/lib/renalscan/bundles" "$root/var/lib/renalscan/update"
for d in journal snapshots sessions outbox health; do
    install -d -m 0750 "$root/var/lib/renalscan/$d"
    live && chown renalscan:renalscan "/var/lib/renalscan/$d"
done

# Units: ours under /usr/local/lib (replaced by runtime updates), the site's drop-in under
# /etc (written once).
units=$root/usr/local/lib/systemd/system
install -d -m 0755 "$units"
for u in renalscan-edge.service renalscan-update-commit.service renalscan-update-commit.timer; do
    install -m 0644 "$cur/share/deploy/$u" "$units/$u"
done
dropin=$root/etc/systemd/system/renalscan-edge.service.d
if [[ ! -e $dropin/site.conf ]]; then
    install -d -m 0755 "$dropin"
    install -m 0644 "$cur/share/deploy/site.conf.example" "$dropin/site.conf"
fi

# udev: our rule (replaced by updates) and the site's IDs (written once).
rules=$root/etc/udev/rules.d
install -d -m 0755 "$rules"
install -m 0644 "$cur/share/deploy/99-renalscan-probe.rules" "$rules/99-renalscan-probe.rules"
site_rule=$rules/60-renalscan-site.rules
if [[ ! -e $site_rule ]]; then
    id_re='^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}(:[0-9A-Za-z._-]+)?$'
    probe=${PROBE_ID:-}
    cart=${CART_ID:-}
    if [[ -z $probe || -z $cart ]]; then
        echo "PROBE_ID and CART_ID are not set: writing $site_rule with placeholders;" \
            "no device gets /dev/renalscan-probe or /dev/renalscan-cart until it is edited" >&2
    fi
    for v in "$probe" "$cart"; do
        [[ -z $v || $v =~ $id_re ]] || { echo "bad USB id '$v' (vvvv:pppp[:serial])" >&2; exit 2; }
    done
    IFS=: read -r pv pm _ <<<"${probe:-0000:0000}"
    IFS=: read -r cv cm cs <<<"${cart:-0000:0000}"
    serial=""
    [[ -n ${cs:-} ]] && serial=", ATTRS{serial}==\"$cs\""
    sed -e "s/@PROBE_VENDOR@/${pv,,}/" -e "s/@PROBE_MODEL@/${pm,,}/" \
        -e "s/@CART_VENDOR@/${cv,,}/" -e "s/@CART_PRODUCT@/${cm,,}/" -e "s/@CART_SERIAL@/$serial/" \
        "$cur/share/deploy/60-renalscan-site.rules.in" >"$site_rule"
    chmod 0644 "$site_rule"
fi
sync

if live; then
    udevadm control --reload
    udevadm trigger --subsystem-match=video4linux --subsystem-match=tty
    systemctl daemon-reload
    systemctl enable renalscan-edge.service renalscan-update-commit.timer
    echo "next: install a bundle (renalscan-edge update install <bundle.rsu>), then" \
        "systemctl restart renalscan-edge"
fi
