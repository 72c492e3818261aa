#!/usr/bin/env python
"""Training-step time of QAT against FP on this CPU, for each fake-quant kernel.

    python bench/qat_step_time.py --imgsz 192 --batch 16 --threads 2 --steps 10

Times one training step (forward + Ultralytics loss + backward + AdamW step; median of --steps, the variants
interleaved, after 2 warm-up steps each) on the same random batch for: the FP student, and the QAT student (``--w-bits``/``--a-bits``, BN folded, calibrated)
with PyTorch's learnable fake-quant kernel (``GOR_DET_FQ_KERNEL=torch``) and with gor_det's compiled LSQ kernel
(the default on CPU, :mod:`gor_det.quant.kernels`). Reports each as a multiple of the FP step (the issue's target
is QAT <= 1.3x FP) and the first step with the compiled kernels, which includes compiling them (unless inductor's
disk cache has them). Writes the table to bench/out/qat_step_time/. ``bench/profile_qat_step.py`` profiles the same
step.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steps import NC, build_student, fake_batch, stepper  # noqa: E402  (bench/ is sys.path[0] when run as a script)

import gor_det  # noqa: E402,F401


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolov8n.yaml")
    ap.add_argument("--imgsz", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--w-bits", type=int, default=8)
    ap.add_argument("--a-bits", type=int, default=8)
    a = ap.parse_args()
    import torch

    from gor_det.config import QuantCfg

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    batch = fake_batch(a.batch, a.imgsz, NC)
    qat = build_student(a.model, NC, batch["img"][:4], QuantCfg(w_bits=a.w_bits, a_bits=a.a_bits))
    variants = [("FP", stepper(build_student(a.model, NC, None), batch, "torch")),
                (f"W{a.w_bits}A{a.a_bits} QAT, PyTorch ops (GOR_DET_FQ_KERNEL=torch)", stepper(qat, batch, "torch")),
                (f"W{a.w_bits}A{a.a_bits} QAT, gor_det compiled kernels (default)", stepper(qat, batch, "auto"))]
    first = {}
    for n, step in variants:  # warm-up; the compiled variant's first step compiles the kernels
        t = time.perf_counter()
        step()
        first[n] = time.perf_counter() - t
        step()
    times = {n: [] for n, _ in variants}
    for _ in range(a.steps):  # interleaved, so a slow spell of the machine hits every variant alike
        for n, step in variants:
            t = time.perf_counter()
            step()
            times[n].append(time.perf_counter() - t)
    rows = [(n, statistics.median(ts)) for n, ts in times.items()]
    t_fp = rows[0][1]
    lines = ["| student step | seconds | x FP |", "|---|---|---|"]
    lines += [f"| {n} | {t:.3f} | {t / t_fp:.2f}x |" for n, t in rows]
    lines += ["", f"Command: `python bench/qat_step_time.py {' '.join(sys.argv[1:])}`  ",
              f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {a.threads} threads, torch "
              f"{torch.__version__}; {a.model} batch {a.batch} at {a.imgsz} px, median of {a.steps} interleaved steps  ",
              f"Date: {date.today()}  ",
              f"First step with the compiled kernels (includes their compile unless cached): {first[variants[2][0]]:.1f} s",
              ""]
    print("\n".join(lines))
    out = Path("bench/out/qat_step_time")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"w{a.w_bits}a{a.a_bits}_{a.imgsz}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
