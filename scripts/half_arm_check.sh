#!/usr/bin/env bash
# The half (f16) form's decisions with ARM's own f16 arithmetic, on fresh phantom frames.
#
# All N frames run in fp32 on this machine. The frames whose p(abnormal) lies nearest the
# bundle's threshold (where a small difference could flip a decision), plus a few drawn at
# random, run as the half form under qemu-aarch64 on an fp16-capable CPU model (cortex-a76;
# tract then picks its arm64fp16 kernels, which accumulate in f16); the first 20 picked also
# run in tract's x86 half form for comparison. NEAR=all runs every frame under qemu.
# Emulated ResNet-50 in f16 takes 1-2 minutes a frame per core, so the frames are spread
# over the cores (JOBS, default every core) in chunks of 5, nearest first, each chunk's
# results kept as it finishes. Frames left out are decided by their margin, reported against
# the largest |ARM - fp32| seen. qemu is not a timing.
#
#   bash scripts/half_arm_check.sh BUNDLE KEYS [N=200] [NEAR=14|all] [RANDOM=6] [SEED=19190419]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bundle=$(realpath "$1") keys=$(realpath "$2")
n=${3:-200} near=${4:-14} random=${5:-6} seed=${6:-19190419} jobs=${JOBS:-$(nproc)}
[ "$near" = all ] && near=$n
host=$CARGO_TARGET_DIR/release/renalscan
edge=$CARGO_TARGET_DIR/release/renalscan-edge
arm=$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/renalscan-edge
cargo build --release -p renalscan -p renalscan-edge
cargo build --release --target aarch64-unknown-linux-gnu -p renalscan-edge
out=$(mktemp -d /tmp/half-arm.XXXXXX)
echo "work folder: $out"
"$host" synth --n "$n" --other-views 0 --seed "$seed" --out "$out/set"
check() { "$1" check --bundle "$bundle" --trusted-keys "$keys" --threads 1 --json "${@:2}"; }
check "$edge" --form float $(ls -d "$out"/set/*/) > "$out/fp32.jsonl"
threshold=$(python3 -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb'))['operating_point']['threshold'])" "$bundle/manifest.toml")
python3 - "$out" "$threshold" "$near" "$random" <<'EOF'
import json, random, sys
out, t, near, rnd = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(l) for l in open(f"{out}/fp32.jsonl") if '"classified"' in l]
rows.sort(key=lambda r: abs(r["p_abnormal"] - t))
pick = [r["file"] for r in rows[:near]]
random.seed(7)
pick += random.sample([r["file"] for r in rows[near:]], min(rnd, len(rows) - near))
open(f"{out}/picked.txt", "w").write("\n".join(pick) + "\n")
EOF
# tract's x86 half form: not ARM's arithmetic, about 20 s a frame, so only the first 20 picked
check "$edge" --form half $(head -20 "$out/picked.txt") > "$out/half-x86.jsonl"
frames=$(wc -l < "$out/picked.txt")
echo "half form under qemu (cortex-a76, fp16): $frames frames, $jobs at a time," \
  "about $(( (frames * 2 + jobs - 1) / jobs )) min"
mkdir "$out/arm"
split -l 5 -d -a 3 "$out/picked.txt" "$out/arm/chunk-"
export arm bundle keys
ls "$out"/arm/chunk-??? | xargs -P "$jobs" -I{} bash -c '
  TRACT_CPU_ISA=+fp16 qemu-aarch64-static -cpu cortex-a76 -L /usr/aarch64-linux-gnu \
    "$arm" check --bundle "$bundle" --trusted-keys "$keys" --form half --threads 1 --json \
    $(cat {}) > {}.jsonl 2> {}.log || { echo "  $(basename {}) failed: see {}.log" >&2; exit 255; }
  echo "  $(basename {}): $(wc -l < {}.jsonl) frames done"'
cat "$out"/arm/chunk-???.jsonl > "$out/half-arm.jsonl"
grep -ho "kernels arm64[^\"]*" "$out"/arm/chunk-*.log | head -1
python3 - "$out" "$threshold" <<'EOF'
import json, sys
out, t = sys.argv[1], float(sys.argv[2])
def load(name):
    return {json.loads(l)["file"]: json.loads(l)["p_abnormal"]
            for l in open(f"{out}/{name}") if '"classified"' in l}
fp32, hx, arm = load("fp32.jsonl"), load("half-x86.jsonl"), load("half-arm.jsonl")
print("| frame | fp32 | margin | half, x86 | half, ARM | ARM - fp32 | same decision |")
print("|---|---|---|---|---|---|---|")
worst = 0.0
for f, p in arm.items():
    d = p - fp32[f]
    worst = max(worst, abs(d))
    same = (p >= t) == (fp32[f] >= t)
    x86 = f"{hx[f]:.4f}" if f in hx else "-"
    print(f"| {'/'.join(f.split('/')[-2:])} | {fp32[f]:.4f} | {abs(fp32[f]-t):.4f} | "
          f"{x86} | {p:.4f} | {d:+.4f} | {'yes' if same else 'NO'} |")
same = sum((arm[f] >= t) == (fp32[f] >= t) for f in arm)
rest = [abs(p - t) for f, p in fp32.items() if f not in arm]
print(f"\nARM arithmetic: {same}/{len(arm)} decisions as fp32, max |ARM - fp32| {worst:.4f}")
if rest:
    print(f"the other {len(rest)} frames: smallest margin {min(rest):.4f} "
          f"({min(rest) / max(worst, 1e-9):.1f}x the largest difference seen)")
sys.exit(0 if same == len(arm) else 1)
EOF
