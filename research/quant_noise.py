#!/usr/bin/env python
"""How much of a QAT checkpoint's accuracy is lost to quantization itself? mAP with the quantizers switched off.

    python research/quant_noise.py research/out/synthetic/qat_w8a8/seed0/weights/best.pt --data datasets/synth_bench/data.yaml

Evaluates the same trained weights four times (pycocotools mAP50-95 on the val split, the checkpoint's own imgsz):
weights and activations quantized (what is deployed), weights only, activations only, nothing quantized (the float
network QAT trained). If all four agree, the quantization error of the trained model is negligible and any gap to a
float fine-tune comes from how QAT trained the weights, not from rounding at inference.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gor_det  # noqa: E402,F401


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+", help="QAT checkpoints (.pt)")
    ap.add_argument("--data", default="datasets/synth_bench/data.yaml")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    from gor_det.engine.evaluate import coco_json_of, load_model, train_imgsz
    from gor_det.eval import evaluate_backend
    from gor_det.export.runtimes import TorchBackend
    from gor_det.quant.transform import set_quant_enabled

    torch.set_num_threads(a.threads)
    data = Path(a.data)
    cells = [(True, True), (True, False), (False, True), (False, False)]
    lines = ["| checkpoint | W + A quantized | weights only | activations only | none (float) |", "|---|---|---|---|---|"]
    for w_path in a.weights:
        maps = []
        model = load_model(w_path)
        for w_on, a_on in cells:
            set_quant_enabled(model, weights=w_on, acts=a_on)
            out = Path("research/out/quant_noise") / "_".join(Path(w_path).parts[-4:-2]) / f"w{int(w_on)}a{int(a_on)}"
            r = evaluate_backend(TorchBackend(model, "cpu"), data, coco_json_of(data), train_imgsz(model), out,
                                 names=model.names, batch=16)
            maps.append(r["mAP50-95"])
        lines.append(f"| {w_path} | " + " | ".join(f"{m:.4f}" for m in maps) + " |")
    lines += ["", f"Command: `python research/quant_noise.py {' '.join(sys.argv[1:])}`  ",
              f"Machine: {platform.machine()}, {a.threads} threads  ", f"Date: {date.today()}", ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
