#!/usr/bin/env python
"""Step-time overhead of gor_det's distillation over its unavoidable cost (student step + teacher forwards).

    python bench/kd_overhead.py --imgsz 192 --batch 16 --teachers yolov8s.yaml yolo11s.yaml --steps 10

Times, on the same random batch (median of --steps after 2 warm-up steps, torch threads = --threads; for K with a
balancer that measures gradients (``--balance gor``, the default) the mean, since it measures them only every
``grad_every`` steps: use a multiple):
  A  student step: forward + Ultralytics loss + backward + optimizer step (FP, or QAT with --quant)
  T  teacher forwards: every teacher under no_grad
  K  gor_det KD step: the same student step with the KD criterion (teachers + adapters + KD terms + GoR)
and reports overhead = K / (A + T) - 1: what gor_det adds beyond running the student and the teachers. ``--balance``
takes any registered balancer: the product's ``gor`` / ``fixed``, or a research form of research/balancers.py
(``gor_grad``, ``gor_split``, ...; imported for a name the product does not register).
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


def timed(fn, steps, mean=False):
    for _ in range(2):
        fn()
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.mean(ts) if mean else statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="yolov8n.yaml")
    ap.add_argument("--teachers", nargs="+", default=["yolov8s.yaml"])
    ap.add_argument("--imgsz", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quant", action="store_true", help="W8A8 QAT student")
    ap.add_argument("--balance", default="gor", help="gor.balance.method (gor, fixed, or a research form)")
    ap.add_argument("--grad-every", type=int, default=4, help="gor.balance.grad_every: measure every N steps")
    a = ap.parse_args()
    import torch

    from gor_det.balance import balancer_class, registered
    from gor_det.config import parse_gor

    if a.balance not in registered():
        import research.balancers  # noqa: F401  (registers the research forms)
    from gor_det.engine.criterion import attach_kd_criterion, build_kd_modules
    from gor_det.engine.teachers import TeacherSet

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gor = parse_gor({"teachers": [{"model": t} for t in a.teachers],
                     "balance": {"method": a.balance, "grad_every": a.grad_every}, **({"quant": {}} if a.quant else {})})
    batch = fake_batch(a.batch, a.imgsz, NC)
    x = batch["img"]
    student = build_student(a.student, NC, x[:4], gor.quant)
    teachers = TeacherSet(gor.teachers, {i: f"c{i}" for i in range(NC)})
    step = stepper(student, batch, "auto")

    t_a = timed(step, a.steps)
    t_t = timed(lambda: teachers(x), a.steps)
    student.kd = build_kd_modules(student, teachers, gor.balance)
    attach_kd_criterion(student, teachers, gor)
    step = stepper(student, batch, "auto")  # a fresh optimizer that also holds the adapters and the GoR scalars
    # a balancer with a gradient probe measures every grad_every steps: the mean over the steps is the amortised cost
    amortised = balancer_class(a.balance).wants_probe
    t_k = timed(step, a.steps, mean=amortised)
    over = t_k / (t_a + t_t) - 1
    lines = [
        "| quantity | seconds per step |", "|---|---|",
        f"| A: student step ({'W8A8 QAT' if a.quant else 'FP'} {a.student}) | {t_a:.3f} |",
        f"| T: teacher forwards ({', '.join(a.teachers)}) | {t_t:.3f} |",
        f"| K: student step with gor_det KD ({a.balance}{', mean' if amortised else ''}) | {t_k:.3f} |",
        f"| overhead K / (A + T) - 1 | {over:+.1%} |",
        "", f"Command: `python bench/kd_overhead.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {a.threads} threads; batch {a.batch} at {a.imgsz} px, "
        f"{'A, T median, K mean' if amortised else 'median'} of {a.steps} steps  ", f"Date: {date.today()}", ""]
    print("\n".join(lines))
    out = Path("bench/out/kd_overhead")
    out.mkdir(parents=True, exist_ok=True)
    tag = ("qat_" if a.quant else "fp_") + "_".join(Path(t).stem for t in a.teachers)
    (out / f"{tag}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
