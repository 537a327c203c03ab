#!/usr/bin/env bash
# The deployment files, checked in a throwaway root (a temporary folder; this machine's own
# systemd is neither read nor touched): a signed runtime artifact is built and installed by
# install.sh with DESTDIR, the units are verified by `systemd-analyze verify --root` against
# a copy of the distribution's units, then a second runtime goes in as an A/B update and the
# site files written by the first install are checked to be untouched. Part of
# scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh

cargo build --release -q -p renalscan -p renalscan-edge
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "deploy check: $*" >&2; exit 1; }

bash -n firmware/deploy/install.sh
"$bin/renalscan" keygen --out "$work/keys" --name deploy-check >/dev/null
mkdir "$work/cartkeys"
cp "$work/keys/deploy-check.pub" "$work/cartkeys/"
release() {
    "$bin/renalscan" release runtime --binary "$bin/renalscan-edge" --no-sbom \
        --key "$work/keys/deploy-check.key" --counter "$1" --out "$2" >/dev/null 2>&1
}
release 1 "$work/runtime-1.rsu"
release 2 "$work/runtime-2.rsu"

root=$work/root
DESTDIR=$root PROBE_ID=1d6b:0104 CART_ID=0403:6001:A10K3Z \
    bash firmware/deploy/install.sh "$work/runtime-1.rsu" "$work/cartkeys" >/dev/null 2>"$work/install.log" \
    || { cat "$work/install.log"; fail "install.sh failed"; }

# The distribution's units, so that the dependencies of ours resolve inside the root.
mkdir -p "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
units=(renalscan-edge.service renalscan-update-commit.service renalscan-update-commit.timer)
verify=$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1) || fail "systemd-analyze verify: $verify"
[[ -z $verify ]] || fail "systemd-analyze verify warns: $verify"

for f in etc/renalscan/config.toml etc/systemd/system/renalscan-edge.service.d/site.conf \
    etc/udev/rules.d/60-renalscan-site.rules etc/udev/rules.d/99-renalscan-probe.rules \
    opt/renalscan/good/bin/renalscan-edge usr/local/lib/systemd/system/renalscan-edge.service; do
    [[ -e $root/$f ]] || fail "$f missing after install.sh"
done
grep -q 'ATTRS{serial}=="A10K3Z"' "$root/etc/udev/rules.d/60-renalscan-site.rules" \
    || fail "the site udev rule does not name the cart controller"

# A site edit, then an A/B update: the edit stays, the update is pending on slot b.
echo "# site: PACS at 10.20.0.15" >>"$root/etc/systemd/system/renalscan-edge.service.d/site.conf"
site_before=$(cat "$root"/etc/systemd/system/renalscan-edge.service.d/site.conf "$root"/etc/udev/rules.d/60-renalscan-site.rules "$root"/etc/renalscan/config.toml | sha256sum)
"$root/opt/renalscan/good/bin/renalscan-edge" update install "$work/runtime-2.rsu" \
    --root "$root" --no-restart >/dev/null 2>"$work/update.log" || { cat "$work/update.log"; fail "update failed"; }
site_after=$(cat "$root"/etc/systemd/system/renalscan-edge.service.d/site.conf "$root"/etc/udev/rules.d/60-renalscan-site.rules "$root"/etc/renalscan/config.toml | sha256sum)
[[ $site_before == "$site_after" ]] || fail "the update changed a site file"
[[ $(readlink "$root/opt/renalscan/current") == slots/b && $(readlink "$root/opt/renalscan/good") == slots/a ]] \
    || fail "after the update: current -> $(readlink "$root/opt/renalscan/current"), good -> $(readlink "$root/opt/renalscan/good")"
"$root/opt/renalscan/good/bin/renalscan-edge" update guard --root "$root" 2>/dev/null
verify=$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1) || fail "systemd-analyze verify after the update: $verify"
echo "deploy check: install.sh, site files, systemd-analyze verify, A/B update: ok"
