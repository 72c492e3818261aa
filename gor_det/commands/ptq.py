"""Post-training quantization (PTQ): calibrate a float checkpoint into a gor_det INT8 one, no training.

    gor-det ptq --model runs/fp/weights/best.pt --data data.yaml   # -> runs/fp/weights/best_ptq.pt (alias: tools/ptq_det.py)
    gor-det ptq model=best.pt data=data.yaml out=best_w4.pt w_bits=4 calib=percentile

key=value: any gor.quant key (w_bits, a_bits, a_symmetric, calib, calib_batches, percentile, skip, ...; defaults as
in a run cfg). The result is a regular gor_det quantized checkpoint: gor-det val evaluates it and
gor-det export exports it (onnx_qdq, onnx_ort_int8, NCNN INT8) like a QAT student.
"""

from __future__ import annotations

import argparse

from gor_det.commands import parse_args


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a float Ultralytics/gor_det .pt")
    ap.add_argument("--data", required=True, help="dataset yaml: its train images calibrate the step sizes")
    ap.add_argument("--out", help="output .pt (default: <model>_ptq.pt next to the model)")
    ap.add_argument("--imgsz", type=int, help="calibration size (default: the training imgsz)")
    ap.add_argument("--batch", type=int, default=16, help="images per calibration batch")
    ap.add_argument("overrides", nargs="*", help="gor.quant key=value, e.g. w_bits=4 calib=percentile")
    return ap


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    a = parse_args(build_parser(prog), argv)
    from gor_det.engine.ptq import run_ptq

    path = run_ptq(a.model, a.data, a.out, imgsz=a.imgsz, batch=a.batch, overrides=a.overrides)
    print(f"PTQ checkpoint: {path}")
    return 0
