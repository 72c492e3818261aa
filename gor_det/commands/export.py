"""Export a trained student for deployment; every artefact is checked against PyTorch (non-zero exit on failure).

    gor-det export --model runs/x/weights/best.pt --out runs/x/export     (alias: python tools/export_det.py)
    gor-det export --model best.pt --formats onnx_qdq ncnn --imgsz 320 --data data.yaml   # + mAP of each
    gor-det export model=best.pt data=coco.yaml ann=annotations/instances_val2017.json   # key=value works too

Formats: onnx_qdq (TensorRT INT8, learned scales), onnx (FP32), ncnn (FP32 and, for QAT students, INT8),
onnx_ort_int8 (ONNX Runtime CPU INT8: learned scales + ranges calibrated on --data's, else the run's, training images),
engine (TensorRT, where tensorrt and a GPU exist; otherwise the trtexec line for the Jetson is printed).
INT8 formats need a quantized model: a float checkpoint is PTQ'd first with gor-det ptq (tools/ptq_det.py).

Every argument is checked before the first export. A format that fails (e.g. a TensorRT build error) is recorded
with its error in <out>/export.json, the others are still written, checked and scored, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gor_det.commands import parse_args


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a gor_det/Ultralytics .pt (QAT, PTQ or FP)")
    ap.add_argument("--out", help="output dir (default: <run>/export for <run>/weights/*.pt, else export/ next to "
                    "the model)")
    ap.add_argument("--formats", nargs="+", help="default: the run's gor.export.formats, else onnx_qdq onnx ncnn "
                    "onnx_ort_int8 (the float ones only for an FP model)")
    ap.add_argument("--imgsz", type=int, help="default: the training imgsz")
    ap.add_argument("--images", nargs="*", help="parity images (default: Ultralytics' bus.jpg and zidane.jpg)")
    ap.add_argument("--data", help="evaluate every export on this dataset's val split (COCO mAP); its train images "
                    "calibrate onnx_ort_int8")
    ap.add_argument("--ann", help="COCO annotation json of --data's val split (default: the yaml's coco_json entry)")
    return ap


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    a = parse_args(build_parser(prog), argv)
    from gor_det.engine.exporting import ExportCheckError, export_student

    model_dir = Path(a.model).resolve().parent  # runs/x/weights/best.pt -> runs/x/export; else next to the model
    out = Path(a.out) if a.out else (model_dir.parent if model_dir.name == "weights" else model_dir) / "export"
    try:
        export_student(a.model, out, formats=a.formats, imgsz=a.imgsz, parity_images=a.images, data=a.data,
                       ann=a.ann, evaluate=bool(a.data))
    except ExportCheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exports: {out}")
    return 0
