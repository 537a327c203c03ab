#!/usr/bin/env python3
"""Cores on the cart, side by side in one run: `renalscan-edge bench` at 1 and N cores on a
30 fps replay (decisions per second, frame-to-decision latency), beside onnxruntime fp32 at
1 and N intra-op threads on the same network.

    ~/.cache/renalscan/venv/bin/python scripts/bench_cores.py \
        --edge $CARGO_TARGET_DIR/release/renalscan-edge \
        --bundle models/demo/bundle --keys models/demo/keys \
        --float models/demo/run/model.onnx --replay SWEEP_DIR

SWEEP_DIR: a recorded sweep (`renalscan synth --stream --fps 30 --n 300 --out SWEEP_DIR`).
The edge runs alternate 1 and N cores for --rounds rounds so a noisy neighbour hurts both
alike; each figure is the median over rounds. onnxruntime needs the venv of
scripts/ort_bench.py. Prints a table, and one JSON object on the last line.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def edge_run(a, threads):
    cmd = [
        a.edge, "bench", "--bundle", a.bundle, "--trusted-keys", a.keys,
        "--replay", a.replay, "--fps", str(a.fps), "--loop",
        "--frames", str(a.frames), "--warmup", "50",
        "--threads", str(threads), "--parallelism", a.parallelism, "--json",
    ]
    env = dict(os.environ, RUST_LOG="warn")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"renalscan-edge bench --threads {threads} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ort_run(a, threads, inputs):
    cmd = [
        sys.executable, os.path.join(HERE, "ort_bench.py"), "--float", a.float,
        "--inputs", inputs, "--runs", str(a.ort_runs), "--threads", str(threads), "--fp32-only",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"ort_bench.py --threads {threads} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edge", required=True, help="the renalscan-edge binary")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--keys", required=True, help="trusted keys of the bundle")
    ap.add_argument("--float", required=True, help="the float ONNX model, for onnxruntime")
    ap.add_argument("--replay", required=True, help="a recorded sweep to replay")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--cores", type=int, default=2, help="N, compared with 1")
    ap.add_argument("--parallelism", default="frames", choices=["frames", "ops"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ort-runs", type=int, default=20)
    a = ap.parse_args()

    import numpy as np  # the venv of ort_bench.py

    runs = {1: [], a.cores: []}
    for r in range(a.rounds):
        for t in (1, a.cores):
            d = edge_run(a, t)
            runs[t].append(d)
            print(f"round {r + 1}: {t} core(s): {d['inferences_per_s']:.2f} inferences/s, "
                  f"frame to decision p50 {d['latency_ms']['p50']:.1f} ms, "
                  f"p95 {d['latency_ms']['p95']:.1f} ms", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-cores-") as work:
        inputs = os.path.join(work, "inputs.f32")
        rng = np.random.default_rng(7)
        rng.normal(0.0, 50.0, size=(2, 3, 224, 224)).astype("<f4").tofile(inputs)
        ort = {t: ort_run(a, t, inputs) for t in (1, a.cores)}

    def med(t, f):
        return statistics.median(f(d) for d in runs[t])

    rows = {}
    for t in (1, a.cores):
        rows[t] = {
            "threads": t,
            "workers": runs[t][0]["workers"],
            "intra_op_threads": runs[t][0]["intra_op_threads"],
            "inferences_per_s": med(t, lambda d: d["inferences_per_s"]),
            "latency_ms": {
                "p50": med(t, lambda d: d["latency_ms"]["p50"]),
                "p95": med(t, lambda d: d["latency_ms"]["p95"]),
            },
            "infer_ms": med(t, lambda d: d["infer_ms"]["wall"]),
            "ort_fp32_ms": ort[t]["fp32"]["median_ms"],
            "ort_fp32_per_s": 1e3 / ort[t]["fp32"]["median_ms"],
        }
    one, n = rows[1], rows[a.cores]
    speedup = n["inferences_per_s"] / one["inferences_per_s"]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores online; model {runs[1][0]['model']}")
    print(f"replay {a.replay} at {a.fps:g} fps, {a.frames} frames, {a.rounds} rounds; "
          f"parallelism = {a.parallelism}")
    print("cores  workers x threads  decisions/s  frame-to-decision p50  p95 (ms)  inference ms"
          "  onnxruntime fp32 ms (per s)  device/ort")
    for r in (one, n):
        print(f"{r['threads']:5}  {r['workers']:7} x {r['intra_op_threads']:<7}  "
              f"{r['inferences_per_s']:11.2f}  {r['latency_ms']['p50']:21.1f}  "
              f"{r['latency_ms']['p95']:8.1f}  {r['infer_ms']:12.1f}  "
              f"{r['ort_fp32_ms']:19.1f} ({r['ort_fp32_per_s']:5.2f})  "
              f"{r['inferences_per_s'] / r['ort_fp32_per_s']:10.2f}")
    print(f"{a.cores} cores / 1 core: {speedup:.2f}x decisions per second; "
          f"latency p50 {n['latency_ms']['p50'] - one['latency_ms']['p50']:+.1f} ms, "
          f"p95 {n['latency_ms']['p95'] - one['latency_ms']['p95']:+.1f} ms; "
          f"onnxruntime {one['ort_fp32_ms'] / n['ort_fp32_ms']:.2f}x")
    print(json.dumps({"cpu": cpu_name(), "speedup": speedup, "rows": [one, n]}))


if __name__ == "__main__":
    main()
