#!/usr/bin/env python
"""CPU latency of the students in every runtime gor_det exports to, FP32 against INT8 with the conv-only and the full
quantizer placement (``gor.quant.placement``): batch 1, median of N runs after warm-up, runtimes interleaved.

    python bench/latency.py                                    # yolov8n and yolo11n (random init: latency does not
                                                               # depend on the weights), 320 and 640 px
    python bench/latency.py --models runs/x/weights/best.pt --sizes 320 --runs 50 --threads 2

Rows per model and size: PyTorch FP32 (BN fused), ONNX Runtime FP32, ONNX Runtime on the TensorRT Q/DQ graph
(``onnx_qdq``), ONNX Runtime INT8 in its CPU layout (``onnx_ort_int8``), NCNN FP32, NCNN FP16 (its default fp16
storage/arithmetic), NCNN INT8 (learned scales); each INT8 row for ``conv`` and ``full``. INT8 models are made by PTQ
calibration on random data here: the timing is what matters, not the accuracy. The structural report of each INT8
artefact (ops in INT8, INT8<->float boundaries: :mod:`gor_det.export.structure`) is written next to its timing.
Writes <out>/latency.md and latency.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
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


def build_models(model: str, placements=("conv", "full")):
    """``(fp, {placement: QAT model})`` of a model yaml or checkpoint, calibrated on random images."""
    import torch

    from gor_det.config import QuantCfg
    from gor_det.quant import calibrate, is_qat, prepare_qat, strip_qat

    if model.endswith(".pt"):
        from gor_det.engine.checkpoint import deployable
        from gor_det.engine.evaluate import load_model

        student = deployable(load_model(model))
    else:
        from ultralytics.nn.tasks import DetectionModel

        student = DetectionModel(model, nc=80, verbose=False).eval()
    fp = copy.deepcopy(student)
    if is_qat(fp):
        strip_qat(fp)

    def loop(m):
        for _ in range(2):
            m(torch.rand(1, 3, 320, 320))

    qs = {}
    for pl in placements:
        qcfg = QuantCfg(calib="minmax", placement=pl)
        q = prepare_qat(copy.deepcopy(fp), qcfg)
        with torch.no_grad():
            calibrate(q.eval(), loop, qcfg)
        qs[pl] = q
    return fp, qs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["yolov8n.yaml", "yolo11n.yaml"],
                    help="model yamls (random init, 80 classes) or gor_det/Ultralytics .pt files")
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out/latency")
    a = ap.parse_args()
    import numpy as np
    import torch

    from gor_det.engine.evaluate import machine
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
    from gor_det.export.structure import structure_report
    from gor_det.quant import convert_for_export

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in a.models:
        fp, qs = build_models(model)
        fp_exp = float_model(fp)
        deploy = {pl: export_mode(convert_for_export(q)) for pl, q in qs.items()}
        tag = Path(model).stem
        for sz in a.sizes:
            d = out / tag / f"{sz}"
            x = np.random.rand(1, 3, sz, sz).astype(np.float32)
            xt = torch.from_numpy(x)

            def torch_fn(inp, m=fp_exp):
                with torch.no_grad():
                    m(inp)

            runtimes = {"PyTorch FP32 (fused)": (torch_fn, xt)}
            structure = {}
            runtimes["ONNX Runtime FP32"] = (OnnxBackend(export_onnx(fp_exp, sz, d / "fp32.onnx"), threads=a.threads), x)
            calib = np.random.rand(4, 3, sz, sz).astype(np.float32)  # ranges only: timing does not depend on them
            for pl, dq in deploy.items():
                p = export_onnx_qdq(dq, sz, d / f"qdq_{pl}.onnx")
                name = f"ONNX Runtime INT8, TensorRT Q/DQ graph, {pl}"
                runtimes[name], structure[name] = (OnnxBackend(p, threads=a.threads), x), structure_report(p, "onnx_qdq")
            for pl, dq in deploy.items():
                p = export_onnx_ort_int8(dq, sz, d / f"ort_int8_{pl}.onnx", calib)
                name = f"ONNX Runtime INT8, CPU layout (onnx_ort_int8), {pl}"
                runtimes[name], structure[name] = (OnnxBackend(p, threads=a.threads), x), structure_report(
                    p, "onnx_ort_int8")
            n_fp = export_ncnn(fp_exp, sz, d / "ncnn_fp32")
            runtimes["NCNN FP32"] = (NcnnBackend(n_fp.dir, threads=a.threads, fp16=False), x)
            runtimes["NCNN FP16 (ncnn default fp16 storage/arith)"] = (
                NcnnBackend(n_fp.dir, threads=a.threads, fp16=True), x)
            for pl, dq in deploy.items():
                n_i8 = export_ncnn_int8(dq, sz, d / f"ncnn_int8_{pl}")
                name = f"NCNN INT8 (learned scales), {pl}"
                runtimes[name], structure[name] = (NcnnBackend(n_i8.dir, threads=a.threads), x), structure_report(
                    n_i8.param, "ncnn_int8")
            for name, ms in median_ms(runtimes, a.runs, a.warmup).items():
                st = structure.get(name) or {}
                rows.append({"model": tag, "runtime": name, "imgsz": sz, "median_ms": ms,
                             "boundaries": st.get("boundaries"), "ops_int8": st.get("ops_int8"), "ops": st.get("ops")})
                print(f"{tag} {sz:4d} {name:60s} {ms:8.2f} ms", flush=True)
    md = []
    for tag in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == tag]
        sizes = list(dict.fromkeys(r["imgsz"] for r in mine))
        md += [f"**{tag}**", "", "| runtime | " + " | ".join(f"{s} px (ms)" for s in sizes) +
               " | INT8 ops / ops | INT8<->float boundaries |", "|---|" + "---|" * (len(sizes) + 2)]
        for name in dict.fromkeys(r["runtime"] for r in mine):
            rs = {r["imgsz"]: r for r in mine if r["runtime"] == name}
            cells = [f"{rs[s]['median_ms']:.1f}" for s in sizes]
            r0 = rs[sizes[0]]
            st = ["", ""] if r0["ops"] is None else [f"{r0['ops_int8']} / {r0['ops']}", str(r0["boundaries"])]
            md.append(f"| {name} | " + " | ".join(cells + st) + " |")
        md.append("")
    md += [f"Command: `python bench/latency.py {' '.join(sys.argv[1:])}`  ",
           f"Machine: {machine()}, {a.threads} threads; batch 1, median of {a.runs} runs "
           f"(runtimes interleaved in blocks of 5) after {a.warmup} warm-up  ", f"Date: {date.today()}", ""]
    (out / "latency.md").write_text("\n".join(md))
    (out / "latency.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
