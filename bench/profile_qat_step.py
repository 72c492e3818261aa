#!/usr/bin/env python
"""Where the time of one W8A8 QAT training step goes on CPU (torch.profiler, self CPU time per op).

    python bench/profile_qat_step.py --imgsz 192 --batch 16 --threads 2

Prints the top ops and the share of the step spent in fake-quantization kernels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gor_det  # noqa: E402,F401


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolov8n.yaml")
    ap.add_argument("--imgsz", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile
    from ultralytics.nn.tasks import DetectionModel

    from gor_det.config import QuantCfg
    from gor_det.quant import calibrate, prepare_qat

    torch.set_num_threads(a.threads)
    m = DetectionModel(a.model, nc=12, verbose=False)
    x = torch.rand(a.batch, 3, a.imgsz, a.imgsz)
    prepare_qat(m, QuantCfg())
    calibrate(m.eval(), lambda mm: mm(x[:4]), QuantCfg())
    m.train()

    def step():
        y = m(x)
        (y["boxes"].float().mean() + y["scores"].mean()).backward()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    total = sum(e.self_cpu_time_total for e in events)
    fq = sum(e.self_cpu_time_total for e in events if "fake_quantize" in e.key)
    print(f"fake-quant kernels: {fq / total:.0%} of the step's self CPU time")


if __name__ == "__main__":
    main()
