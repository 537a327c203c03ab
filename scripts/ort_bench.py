#!/usr/bin/env python3
"""onnxruntime yardstick for `renalscan bench-int8` (and a stand-in int8 file for development).

Times onnxruntime fp32 and int8 on the same network and the same preprocessed inputs as the
Rust benchmark, on --threads intra-op threads (default 1), and prints one JSON object.
--fp32-only skips the int8 models (the thread-scaling comparison needs only fp32). The int8 model is onnxruntime's
own: quantize_static calibrated on the given inputs, QDQ, u8 activations, s8 per-channel
weights, reduce_range (AVX2 without VNNI saturates u8 x s8 pair sums otherwise). With --int8
it also runs our QOperator file in onnxruntime.

Setup (once; PyPI must be reachable):
    python3 -m venv ~/.cache/renalscan/venv
    ~/.cache/renalscan/venv/bin/pip install onnxruntime onnx numpy

Inputs: a raw little-endian float32 file of N x 3 x 224 x 224 values (what the Rust side
writes), so both engines see identical tensors.

--make-qoperator OUT writes the file contract of `renalscan quantize` with onnxruntime
(QOperator, s8 symmetric activations, s8 symmetric per-channel weights, only convolutions
quantized, head float), for developing the loader before the real quantizer's file exists.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)


class Reader(CalibrationDataReader):
    def __init__(self, name, images):
        self.it = iter([{name: x[None]} for x in images])

    def get_next(self):
        return next(self.it, None)


THREADS = 1


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def timed(path, images, runs, warmup=2):
    s = session(path)
    name = s.get_inputs()[0].name
    outs = [o.name for o in s.get_outputs()]
    probs_ix = outs.index("probs") if "probs" in outs else 0
    x0 = images[0][None]
    for _ in range(warmup):
        s.run(None, {name: x0})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, {name: x0})
        times.append((time.perf_counter() - t) * 1e3)
    probs = np.stack([s.run(None, {name: x[None]})[probs_ix][0] for x in images])
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "runs": runs,
        "file_bytes": os.path.getsize(path),
    }, probs


def input_name(path):
    return session(path).get_inputs()[0].name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--float", required=True, help="float ONNX model")
    ap.add_argument("--inputs", required=True, help="raw f32 inputs, N x 3 x H x W")
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every session")
    ap.add_argument("--fp32-only", action="store_true", help="time the float model only")
    ap.add_argument("--int8", help="our QOperator int8 file, also timed in onnxruntime")
    ap.add_argument("--workdir", help="where onnxruntime's int8 file goes (default: a temp dir)")
    ap.add_argument("--make-qoperator", metavar="OUT", help="only write a contract-form QOperator file")
    a = ap.parse_args()
    global THREADS
    THREADS = max(1, a.threads)

    images = np.fromfile(a.inputs, dtype="<f4").reshape(-1, 3, a.side, a.side)
    name = input_name(a.float)
    if a.make_qoperator:
        quantize_static(
            a.float, a.make_qoperator, Reader(name, images),
            quant_format=QuantFormat.QOperator, op_types_to_quantize=["Conv"],
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
        print(json.dumps({"wrote": a.make_qoperator, "calibration_images": len(images)}))
        return

    if a.fp32_only:
        res = {"onnxruntime": ort.__version__, "threads": THREADS, "images": len(images)}
        res["fp32"], p_fp32 = timed(a.float, images, a.runs)
        res["probs_fp32"] = p_fp32.tolist()
        print(json.dumps(res))
        return

    workdir = a.workdir or tempfile.mkdtemp(prefix="ort-bench-")
    ort_int8 = os.path.join(workdir, "ort-int8-qdq-u8s8-reduce-range.onnx")
    if not os.path.exists(ort_int8):
        quantize_static(
            a.float, ort_int8, Reader(name, images),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
        )
    res = {"onnxruntime": ort.__version__, "threads": THREADS, "images": len(images)}
    res["fp32"], p_fp32 = timed(a.float, images, a.runs)
    res["int8_ort"], p = timed(ort_int8, images, a.runs)
    res["int8_ort"]["form"] = "QDQ, u8 activations, s8 per-channel weights, reduce_range"
    res["int8_ort"]["max_dp_vs_fp32"] = float(np.abs(p - p_fp32).max())
    if a.int8:
        try:
            res["int8_ours"], p = timed(a.int8, images, a.runs)
            res["int8_ours"]["max_dp_vs_fp32"] = float(np.abs(p - p_fp32).max())
        except Exception as e:  # onnxruntime may lack a kernel for some int8 layout
            res["int8_ours"] = {"error": str(e)}
    res["probs_fp32"] = p_fp32.tolist()
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
