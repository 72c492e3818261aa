#!/usr/bin/env python
"""CPU latency of one student in every runtime gor_det exports to: batch 1, median of N runs after warm-up.

    python bench/latency.py                                    # yolov8n (random init; latency does not depend on weights)
    python bench/latency.py --model runs/x/weights/best.pt --sizes 320 640 --runs 50 --threads 2

Rows: PyTorch FP32 (BN fused), ONNX Runtime FP32, ONNX Runtime INT8 Q/DQ (TensorRT-style symmetric int8 activations),
ONNX Runtime INT8 with asymmetric uint8 activations (``gor.quant.a_symmetric: false``), ONNX Runtime INT8 in the CPU
layout (``onnx_ort_int8``: conv outputs quantized too, so ORT runs its integer kernels), NCNN FP32, NCNN FP16 (NCNN's default fp16 storage/arithmetic), NCNN INT8 (learned scales).
INT8 models are made by PTQ calibration on random data here: the timing is what matters, not the accuracy.
Writes <out>/latency.md and latency.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# NCNN's OpenMP pool follows OMP_NUM_THREADS (Ultralytics sets it to 1 at import when unset): give every runtime the
# same --threads before anything imports torch or ncnn.
_t = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
os.environ["OMP_NUM_THREADS"] = _t

import gor_det  # noqa: E402,F401


def median_ms(runtimes: dict, runs: int, warmup: int, block: int = 5) -> dict:
    """Median latency (ms) of every ``name -> (fn, input)`` over ``runs`` calls, timed in interleaved rounds of
    ``block`` calls per runtime (after one untimed call, which absorbs the previous runtime's spinning thread pool),
    so that a slow spell of a shared VM hits every runtime alike instead of one of them."""
    for fn, x in runtimes.values():
        for _ in range(warmup):
            fn(x)
    ts = {name: [] for name in runtimes}
    for _ in range(max(1, runs // block)):
        for name, (fn, x) in runtimes.items():
            fn(x)
            for _ in range(block):
                t = time.perf_counter()
                fn(x)
                ts[name].append((time.perf_counter() - t) * 1e3)
    return {name: statistics.median(v) for name, v in ts.items()}


def build_models(model_path: str | None, a_symmetric: bool):
    import torch

    from gor_det.config import QuantCfg
    from gor_det.engine.checkpoint import deployable
    from gor_det.engine.evaluate import load_model
    from gor_det.quant import calibrate, prepare_qat, strip_qat

    if model_path:
        student = deployable(load_model(model_path))
    else:
        from ultralytics.nn.tasks import DetectionModel

        student = DetectionModel("yolov8n.yaml", nc=80, verbose=False).eval()
    fp = copy.deepcopy(student)
    from gor_det.quant import is_qat

    if is_qat(fp):
        strip_qat(fp)
    q = copy.deepcopy(fp)
    prepare_qat(q, QuantCfg(a_symmetric=a_symmetric, calib="minmax"))

    def loop(m):
        for _ in range(2):
            m(torch.rand(1, 3, 320, 320))

    with torch.no_grad():
        calibrate(q.eval(), loop, QuantCfg(a_symmetric=a_symmetric, calib="minmax"))
    return fp, q


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a gor_det/Ultralytics .pt (default: yolov8n from YAML, 80 classes)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out/latency")
    a = ap.parse_args()
    import numpy as np
    import torch

    from gor_det.engine.exporting import export_mode, float_model
    from gor_det.export import (
        NcnnBackend,
        OnnxBackend,
        export_ncnn,
        export_ncnn_int8,
        export_onnx,
        export_onnx_ort_int8,
        export_onnx_qdq,
    )
    from gor_det.quant import convert_for_export

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fp, q_sym = build_models(a.model, a_symmetric=True)
    _, q_asym = build_models(a.model, a_symmetric=False)
    fp_exp = float_model(fp)
    dq_sym = export_mode(convert_for_export(q_sym))
    dq_asym = export_mode(convert_for_export(q_asym))
    rows = []
    for sz in a.sizes:
        d = out / f"{sz}"
        x = np.random.rand(1, 3, sz, sz).astype(np.float32)
        xt = torch.from_numpy(x)

        def torch_fn(inp, m=fp_exp):
            with torch.no_grad():
                m(inp)

        runtimes = {"PyTorch FP32 (fused)": (torch_fn, xt)}
        runtimes["ONNX Runtime FP32"] = (OnnxBackend(export_onnx(fp_exp, sz, d / "fp32.onnx"), threads=a.threads), x)
        runtimes["ONNX Runtime INT8 Q/DQ (symmetric int8 act., TensorRT layout)"] = (
            OnnxBackend(export_onnx_qdq(dq_sym, sz, d / "qdq.onnx"), threads=a.threads), x)
        runtimes["ONNX Runtime INT8 Q/DQ (asymmetric uint8 act.)"] = (
            OnnxBackend(export_onnx_qdq(dq_asym, sz, d / "qdq_u8.onnx", strict=False), threads=a.threads), x)
        calib = np.random.rand(4, 3, sz, sz).astype(np.float32)  # ranges only: timing does not depend on them
        runtimes["ONNX Runtime INT8 (CPU layout, onnx_ort_int8)"] = (
            OnnxBackend(export_onnx_ort_int8(dq_sym, sz, d / "ort_int8.onnx", calib), threads=a.threads), x)
        n_fp = export_ncnn(fp_exp, sz, d / "ncnn_fp32")
        runtimes["NCNN FP32"] = (NcnnBackend(n_fp.dir, threads=a.threads, fp16=False), x)
        runtimes["NCNN FP16 (ncnn default fp16 storage/arith)"] = (NcnnBackend(n_fp.dir, threads=a.threads, fp16=True), x)
        n_i8 = export_ncnn_int8(dq_sym, sz, d / "ncnn_int8")
        runtimes["NCNN INT8 (learned scales)"] = (NcnnBackend(n_i8.dir, threads=a.threads), x)
        for name, ms in median_ms(runtimes, a.runs, a.warmup).items():
            rows.append({"runtime": name, "imgsz": sz, "median_ms": ms})
            print(f"{sz:4d} {name:70s} {ms:8.2f} ms", flush=True)
    sizes = a.sizes
    md = ["| runtime | " + " | ".join(f"{s} px (ms)" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for name in dict.fromkeys(r["runtime"] for r in rows):
        cells = [next(f"{r['median_ms']:.1f}" for r in rows if r["runtime"] == name and r["imgsz"] == s) for s in sizes]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    md += ["", f"Command: `python bench/latency.py {' '.join(sys.argv[1:])}`  ",
           f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {a.threads} threads, torch {torch.__version__}; "
           f"batch 1, median of {a.runs} runs (runtimes interleaved in blocks of 5) after {a.warmup} warm-up  ", f"Date: {date.today()}", ""]
    (out / "latency.md").write_text("\n".join(md))
    (out / "latency.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
