#!/usr/bin/env python
"""Where NCNN spends its time on one model: per layer type, ms per run and share, batch 1, random input, for an NCNN
model folder (``model.ncnn.param/.bin``, e.g. one bench/latency.py wrote). The NCNN counterpart of profile_ort.py.

    python bench/profile_ncnn.py bench/out/latency/yolov8n/320/ncnn_int8_conv --threads 2 --runs 20 --warmup 3 --top 12

The ``ncnn`` wheel has no per-layer profiler (``NCNN_BENCHMARK`` is a compile-time option), so this is an
*estimate* by prefix extraction: for each layer in .param order, ``Extractor.extract(<its first top blob>)`` on a
fresh extractor is timed (median of ``runs``, all layers interleaved in each round so that load drift hits every layer
alike); ``extract`` computes only the subgraph that blob needs. A layer is attributed the increase of its prefix time
over the largest prefix time among the layers its bottoms come from, less the attributed time of the ancestors that
this largest prefix does not contain (the other branches of a Concat / BinaryOp, else counted twice), clamped at 0.
Timer noise and cache effects (a prefix ends hot in cache, the full net does not) make the per-layer numbers
approximate: compare the sum of attributed times with the full-net time printed below the table. The extractor
overhead (create, input) lands on ``Input``. On a loaded machine the noise of ~200 prefix medians, clamped at 0,
adds up: yolov8n 320 px FP32 on 2 busy cores gave 615 ms attributed vs 112 ms full net, and took 17 min.

``--method incremental`` (much faster, no differencing): one extractor per round with light mode off, every layer
extracted in .param order, so each ``extract`` computes just that layer; its time less that of a second (cached)
``extract`` of the same blob (the unpack copy, the call) is the layer's. Light mode off runs in-place layers (Swish,
BinaryOp with a scalar, ...) out of place, adding a copy of their blob to them, and keeps all blobs (more memory). The net is built by ``gor_det.export.NcnnBackend`` (same options as
everywhere in gor_det: no Vulkan, fp16/bf16 off, ``use_int8_inference`` when the .param has INT8 convs, threads
capped by ``OMP_NUM_THREADS``).

INT8 convolutions are ``Convolution`` / ``ConvolutionDepthWise`` layers with ``8=`` (int8_scale_term) set; they are
reported as ``Convolution int8`` apart from the float ones (``Convolution fp32``). Their quantize / dequantize /
requantize steps run inside the conv layer, so they show up there, and the float layers between them (Swish,
BinaryOp, Concat, ...) keep their own rows. Input shape: the .param's Input layer (``0=w 1=h 2=c``), else ``--imgsz``,
else an integer parent folder name (bench/latency.py writes ``<model>/<imgsz>/ncnn_*``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def layer_kind(la) -> str:
    """The row a layer is reported in: its type, with ``int8`` / ``fp32`` for the convolution types."""
    if la.type.startswith(("Convolution", "Deconvolution")):
        return f"{la.type} {'int8' if la.i(8) else 'fp32'}"
    return la.type


def input_shape(layers, model_dir: Path, imgsz: int | None) -> tuple[int, int, int]:
    """``(c, h, w)`` from the Input layer, else ``imgsz``, else the parent folder name."""
    la = next((la for la in layers if la.type == "Input"), None)
    if la is not None and la.i(0) > 0 and la.i(1) > 0:
        return la.i(2, 3) or 3, la.i(1), la.i(0)
    if imgsz is None and model_dir.parent.name.isdigit():
        imgsz = int(model_dir.parent.name)
    if imgsz is None:
        raise ValueError(f"{model_dir}: the Input layer has no shape; pass --imgsz")
    return 3, imgsz, imgsz


def profile(model_dir, threads: int = 2, runs: int = 20, warmup: int = 3, imgsz: int | None = None,
            method: str = "prefix") -> dict:
    """``{"table": {kind: (ms, share, count)} sorted by ms, "layers": [(name, kind, ms)], "full_ms", "sum_ms"}``;
    ``method``: "prefix" or "incremental" (see the module docstring); ``share`` is of ``sum_ms`` (the sum of attributed times), ``full_ms`` the median time of the whole net."""
    import numpy as np

    from gor_det.export import NcnnBackend
    from gor_det.export.ncnn_export import read_param

    d = Path(model_dir)
    be = NcnnBackend(d, threads=threads)
    _, layers = read_param(be.param)
    c, h, w = input_shape(layers, d if d.is_dir() else d.parent, imgsz)
    x = be._ncnn.Mat(np.ascontiguousarray(np.random.rand(c, h, w).astype(np.float32)))
    producer = {t: i for i, la in enumerate(layers) for t in la.tops}

    def run(blob: str) -> float:
        t0 = time.perf_counter()
        with be.net.create_extractor() as ex:
            ex.input(be.input_name, x)
            ret, _ = ex.extract(blob)
        dt = time.perf_counter() - t0
        if ret != 0:
            raise RuntimeError(f"ncnn extract('{blob}') failed with code {ret}")
        return dt * 1e3

    blobs = [la.tops[0] if la.tops else None for la in layers]  # layers without tops (none in pnnx output) cost 0
    for _ in range(warmup):
        run(be.output_name)
    full = []
    if method == "incremental":
        samples = [[] for _ in layers]
        for _ in range(runs):
            with be.net.create_extractor() as ex:
                ex.set_light_mode(False)  # keep every blob: extracting layer i then computes layer i only
                ex.input(be.input_name, x)
                for i, b in enumerate(blobs):
                    if b is None:
                        continue
                    t0 = time.perf_counter()
                    ex.extract(b)  # computes the layer (+ unpacks its output to elempack 1 and returns it)
                    t1 = time.perf_counter()
                    ex.extract(b)  # cached: the unpack copy and the call overhead only
                    samples[i].append(max((t1 - t0) - (time.perf_counter() - t1), 0.0) * 1e3)
            full.append(run(be.output_name))
        cost = [statistics.median(s) if s else 0.0 for s in samples]
    else:
        samples = [[] for _ in layers]
        for _ in range(runs):  # interleaved: one round times every prefix once
            for i, b in enumerate(blobs):
                if b is not None:
                    samples[i].append(run(b))
            full.append(run(be.output_name))
        prefix = [statistics.median(s) if s else 0.0 for s in samples]
        anc: list[set[int]] = []  # ancestors (layer indices) of each layer; .param order is topological
        cost = []
        for i, la in enumerate(layers):
            parents = {producer[b] for b in la.bottoms if b in producer}
            anc.append(set().union(parents, *(anc[p] for p in parents)))
            if not parents:
                cost.append(max(prefix[i], 0.0))
                continue
            top = max(parents, key=lambda p: prefix[p])
            extra = anc[i] - anc[top] - {top}  # other branches: not inside the largest prefix
            cost.append(max(prefix[i] - prefix[top] - sum(cost[j] for j in extra), 0.0))

    tot, cnt = {}, {}
    for la, ms in zip(layers, cost):
        k = layer_kind(la)
        tot[k], cnt[k] = tot.get(k, 0.0) + ms, cnt.get(k, 0) + 1
    s = sum(cost)
    table = {k: (ms, ms / s if s > 0 else 0.0, cnt[k]) for k, ms in sorted(tot.items(), key=lambda kv: -kv[1])}
    return dict(table=table, layers=[(la.name, layer_kind(la), ms) for la, ms in zip(layers, cost)],
                full_ms=statistics.median(full), sum_ms=s, threads=be.threads, int8=be.int8, shape=(c, h, w))


def markdown(res: dict, top: int | None = None) -> str:
    rows = list(res["table"].items())
    shown, rest = (rows[:top], rows[top:]) if top else (rows, [])
    md = ["| layer type | layers | ms per run | share |", "|---|---|---|---|"]
    md += [f"| {k} | {n} | {ms:.2f} | {100 * sh:.1f}% |" for k, (ms, sh, n) in shown]
    if rest:
        ms, sh, n = (sum(r[1][i] for r in rest) for i in range(3))
        md.append(f"| other ({len(rest)} types) | {n} | {ms:.2f} | {100 * sh:.1f}% |")
    md.append(f"| sum of attributed | {sum(v[2] for _, v in rows)} | {res['sum_ms']:.2f} | |")
    md.append(f"| full net (extract output) | | {res['full_ms']:.2f} | |")
    return "\n".join(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="NCNN model folder (model.ncnn.param/.bin) or its .param")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top", type=int, default=12, help="rows shown; the rest are summed in one row (0: all)")
    ap.add_argument("--imgsz", type=int, default=None, help="input size when the .param's Input layer has no shape")
    ap.add_argument("--method", choices=["prefix", "incremental"], default="prefix")
    a = ap.parse_args()
    res = profile(a.model_dir, a.threads, a.runs, a.warmup, a.imgsz, a.method)
    c, h, w = res["shape"]
    print(f"{a.model_dir}: input {c}x{h}x{w}, {res['threads']} threads, int8 inference {res['int8']}, "
          f"{a.method}, median of {a.runs} runs after {a.warmup} warm-up\n")
    print(markdown(res, a.top))


if __name__ == "__main__":
    main()
