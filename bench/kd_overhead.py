#!/usr/bin/env python
"""Step-time overhead of gor_det's distillation over its unavoidable cost (student step + teacher forwards).

    python bench/kd_overhead.py --imgsz 192 --batch 16 --teachers yolov8s.yaml yolo11s.yaml --steps 10

Times, on the same random batch (median of --steps after 2 warm-up steps, torch threads = --threads; for K with
``--balance gor_grad`` the mean, since it measures gradient norms only every ``grad_every`` steps: use a multiple):
  A  student step: forward + Ultralytics loss + backward + optimizer step (FP, or QAT with --quant)
  T  teacher forwards: every teacher under no_grad
  K  gor_det KD step: the same student step with the KD criterion (teachers + adapters + KD terms + GoR)
and reports overhead = K / (A + T) - 1: what gor_det adds beyond running the student and the teachers.
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


def fake_batch(batch: int, imgsz: int, nc: int, per_image: int = 4) -> dict:
    """A random Ultralytics training batch: ``img`` (batch, 3, imgsz, imgsz) in [0, 1], ``per_image`` boxes each."""
    import torch

    n = per_image * batch
    return {"img": torch.rand(batch, 3, imgsz, imgsz), "batch_idx": torch.arange(batch).repeat_interleave(per_image).float(),
            "cls": torch.randint(0, nc, (n, 1)).float(), "bboxes": torch.rand(n, 4) * 0.5 + 0.25}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="yolov8n.yaml")
    ap.add_argument("--teachers", nargs="+", default=["yolov8s.yaml"])
    ap.add_argument("--imgsz", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quant", action="store_true", help="W8A8 QAT student")
    ap.add_argument("--balance", default="gor")
    ap.add_argument("--grad-every", type=int, default=4, help="gor_grad: measure the gradient norms every N steps")
    a = ap.parse_args()
    import torch
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace

    from gor_det.config import parse_gor
    from gor_det.engine.criterion import attach_kd_criterion, build_kd_modules
    from gor_det.engine.teachers import TeacherSet
    from gor_det.quant import calibrate, prepare_qat

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    nc = 12
    names = {i: f"c{i}" for i in range(nc)}
    gor = parse_gor({"teachers": [{"model": t} for t in a.teachers],
                     "balance": {"method": a.balance, "grad_every": a.grad_every}, **({"quant": {}} if a.quant else {})})
    student = DetectionModel(a.student, nc=nc, verbose=False)
    student.names = names
    student.args = IterableSimpleNamespace(**DEFAULT_CFG_DICT)
    batch = fake_batch(a.batch, a.imgsz, nc)
    x = batch["img"]
    if a.quant:
        prepare_qat(student, gor.quant)
        calibrate(student.eval(), lambda m: m(x[:4]), gor.quant)
    teachers = TeacherSet(gor.teachers, names)
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def step():
        loss, _ = student(batch)
        loss.sum().backward()
        opt.step()
        opt.zero_grad()

    t_a = timed(step, a.steps)
    t_t = timed(lambda: teachers(x), a.steps)
    student.kd = build_kd_modules(student, teachers, gor.balance)
    attach_kd_criterion(student, teachers, gor)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    # gor_grad measures its gradient norms every grad_every steps: the mean over the steps is the amortised cost
    amortised = a.balance == "gor_grad"
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
