#!/usr/bin/env python
"""Post-training quantization (PTQ): calibrate a float checkpoint into a gor_det INT8 one, no training.

    python tools/ptq_det.py --model runs/fp/weights/best.pt --data data.yaml        # -> runs/fp/weights/best_ptq.pt
    python tools/ptq_det.py --model best.pt --data data.yaml --out best_w4.pt w_bits=4 calib=percentile

key=value: any gor.quant key (w_bits, a_bits, a_symmetric, calib, calib_batches, percentile, skip, ...; defaults as
in a run cfg). The result is a regular gor_det quantized checkpoint: tools/val_det.py evaluates it and
tools/export_det.py exports it (onnx_qdq, onnx_ort_int8, NCNN INT8) like a QAT student.
"""

import argparse

import gor_det  # noqa: F401  (offline environment before ultralytics is imported)
from gor_det.engine.cli import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a float Ultralytics/gor_det .pt")
    ap.add_argument("--data", required=True, help="dataset yaml: its train images calibrate the step sizes")
    ap.add_argument("--out", help="output .pt (default: <model>_ptq.pt next to the model)")
    ap.add_argument("--imgsz", type=int, help="calibration size (default: the training imgsz)")
    ap.add_argument("--batch", type=int, default=16, help="images per calibration batch")
    ap.add_argument("overrides", nargs="*", help="gor.quant key=value, e.g. w_bits=4 calib=percentile")
    a = ap.parse_args()
    from gor_det.engine.ptq import run_ptq

    path = run_ptq(a.model, a.data, a.out, imgsz=a.imgsz, batch=a.batch, overrides=a.overrides)
    print(f"PTQ checkpoint: {path}")


if __name__ == "__main__":
    run_cli(main)
