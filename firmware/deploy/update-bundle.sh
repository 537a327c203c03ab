#!/usr/bin/env bash
# Installs a signed model bundle on the cart and switches to it, or rolls back. As root:
#
#   update-bundle.sh <bundle-dir>     copy, verify + selftest, switch, restart, roll back on failure
#   update-bundle.sh --rollback       switch back to the previous bundle and restart
#
# Bundles live in /var/lib/renalscan/bundles/<name>/; the symlink bundles/current (what
# /etc/renalscan/config.toml's model.bundle names) is replaced atomically by rename, and
# bundles/previous keeps the one before. See firmware/docs/install.md.
#
# Overrides for staging and checks: ROOT (prefix, default /), RENALSCAN_EDGE (the runtime
# binary), SYSTEMCTL (e.g. "true" where no systemd runs).
set -euo pipefail

root=${ROOT:-}
bundles=$root/var/lib/renalscan/bundles
edge=${RENALSCAN_EDGE:-$root/opt/renalscan/current/bin/renalscan-edge}
config=$root/etc/renalscan/config.toml
keys=$root/etc/renalscan/keys
systemctl=${SYSTEMCTL:-systemctl}

say() { echo "update-bundle: $*" >&2; }

# Points bundles/<link> at <target> (a name inside bundles/) by an atomic rename.
point() {
    ln -sfn "$2" "$bundles/.$1.tmp"
    mv -T "$bundles/.$1.tmp" "$bundles/$1"
}

restart() {
    # Type=notify: returns once the runtime has reported READY=1, or fails.
    $systemctl restart renalscan-edge.service
}

rollback() {
    local prev
    prev=$(readlink "$bundles/previous" 2>/dev/null) || { say "no previous bundle to roll back to"; exit 1; }
    local cur
    cur=$(readlink "$bundles/current" 2>/dev/null || true)
    point current "$prev"
    [[ -n $cur ]] && point previous "$cur"
    say "current -> $prev (was ${cur:-none})"
    restart
}

[[ $# -eq 1 ]] || { echo "usage: $0 <bundle-dir> | --rollback" >&2; exit 2; }
if [[ $1 == --rollback ]]; then
    rollback
    exit 0
fi

src=${1%/}
for f in model.onnx manifest.toml manifest.sig; do
    [[ -f $src/$f ]] || { say "$src is not a bundle: $f missing"; exit 2; }
done
name=$(basename "$src")
[[ $name =~ ^[0-9A-Za-z._+-]+$ && $name != current && $name != previous ]] \
    || { say "bad bundle name '$name'"; exit 2; }
dest=$bundles/$name
if [[ -e $dest ]]; then
    say "$dest exists; not overwriting an installed bundle (rename the new one)"
    exit 1
fi

# Copy under a temporary name, then rename: a half-copied bundle never has its final name.
install -d -m 0755 "$bundles"
rm -rf "$bundles/.incoming"
cp -r "$src" "$bundles/.incoming"
chmod -R u=rwX,go=rX "$bundles/.incoming"
sync -f "$bundles/.incoming/model.onnx" 2>/dev/null || sync
mv -T "$bundles/.incoming" "$dest"

# Refuse a bundle the runtime would refuse: signature, trusted key, hash, preprocessing
# version, then one timed inference on the built-in frame.
if ! "$edge" selftest --config "$config" --bundle "$dest" --trusted-keys "$keys"; then
    say "selftest refused $dest; removing it, current bundle unchanged"
    rm -rf "$dest"
    exit 1
fi

cur=$(readlink "$bundles/current" 2>/dev/null || true)
old_prev=$(readlink "$bundles/previous" 2>/dev/null || true)
point current "$name"
[[ -n $cur && $cur != "$name" ]] && point previous "$cur"
say "current -> $name (previous: ${cur:-none})"
if ! restart; then
    say "runtime did not come up on $name; rolling back"
    if [[ -n $cur ]]; then
        point current "$cur"
        [[ -n $old_prev ]] && point previous "$old_prev"
        restart || say "rollback restart failed too: see journalctl -u renalscan-edge"
    fi
    exit 1
fi
say "running $name"
