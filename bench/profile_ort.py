#!/usr/bin/env python
"""Where ONNX Runtime spends its time on one model: per operator type, mean ms per run and share of the kernel time
(ORT's own profiler), batch 1, random input at the model's input size.

    python bench/profile_ort.py bench/out/latency/yolov8n/320/ort_int8_full.onnx --threads 2     # a model bench/latency.py wrote
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile


def op_times(path: str, threads: int, runs: int, warmup: int) -> tuple[dict[str, tuple[float, int]], float]:
    """``{op_type: (ms per run, nodes)}`` sorted by time, and the total kernel ms per run."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    x = {inp.name: np.random.rand(*[d if isinstance(d, int) else 1 for d in inp.shape]).astype(np.float32)}
    for _ in range(warmup):  # before profiling starts: warm-up runs are not counted
        s.run(None, x)
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling, so.profile_file_prefix = True, os.path.join(tmp, "ort")
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            s.run(None, x)
        events = json.load(open(s.end_profiling()))
    us, nodes = collections.Counter(), collections.defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            us[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]].add(e["name"])
    table = {op: (t / runs / 1e3, len(nodes[op])) for op, t in us.most_common()}
    return table, sum(us.values()) / runs / 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    a = ap.parse_args()
    table, total = op_times(a.model, a.threads, a.runs, a.warmup)
    print("| op type | nodes | ms per run | share |\n|---|---|---|---|")
    for op, (ms, n) in table.items():
        print(f"| {op} | {n} | {ms:.2f} | {100 * ms / total:.1f}% |")
    print(f"| all kernels | | {total:.2f} | |")


if __name__ == "__main__":
    main()
