#!/usr/bin/env python
"""Where the time of one W8A8 QAT training step goes on CPU (torch.profiler, self CPU time per op).

    python bench/profile_qat_step.py --kernel torch     # PyTorch's fake-quant ops
    python bench/profile_qat_step.py --kernel auto      # gor_det's compiled kernels (the default in training)

Profiles the step that bench/qat_step_time.py times (forward + Ultralytics loss + backward + AdamW, random batch)
after 2 warm-up steps; prints the top ops and the share of the step's self CPU time spent in fake quantization
(PyTorch's ``fake_quantize*`` ops, or gor_det's ``LSQ`` autograd function and its compiled graphs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steps import NC, build_student, fake_batch, stepper  # noqa: E402  (bench/ is sys.path[0] when run as a script)

import gor_det  # noqa: E402,F401


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolov8n.yaml")
    ap.add_argument("--imgsz", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kernel", choices=("torch", "auto"), default="torch", help="GOR_DET_FQ_KERNEL for the step")
    a = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from gor_det.config import QuantCfg

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    batch = fake_batch(a.batch, a.imgsz, NC)
    step = stepper(build_student(a.model, NC, batch["img"][:4], QuantCfg()), batch, a.kernel)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    total = sum(e.self_cpu_time_total for e in events)
    marks = ("fake_quantize",) if a.kernel == "torch" else ("LSQ", "CompiledFxGraph")
    fq = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in marks))
    print(f"fake quantization ({a.kernel} kernels): {fq / total:.0%} of the step's self CPU time ({total / 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
