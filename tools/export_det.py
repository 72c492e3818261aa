#!/usr/bin/env python
"""Export a trained student for deployment; every artefact is checked against PyTorch (non-zero exit on failure).

    python tools/export_det.py --model runs/x/weights/best.pt --out runs/x/export
    python tools/export_det.py --model best.pt --formats onnx_qdq ncnn --imgsz 320 --data data.yaml   # + mAP of each

Formats: onnx_qdq (TensorRT INT8, learned scales), onnx (FP32), ncnn (FP32 and, for QAT students, INT8),
onnx_ort_int8 (ONNX Runtime CPU INT8: learned scales + ranges calibrated on --data's, else the run's, training images),
engine (TensorRT, where tensorrt and a GPU exist; otherwise the trtexec line for the Jetson is printed).
"""

import argparse
import sys
from pathlib import Path

import gor_det  # noqa: F401
from gor_det.engine.cli import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a gor_det/Ultralytics .pt (QAT or FP)")
    ap.add_argument("--out", help="output dir (default: <run>/export)")
    ap.add_argument("--formats", nargs="+", help="default: the run's gor.export.formats, else onnx_qdq onnx ncnn")
    ap.add_argument("--imgsz", type=int, help="default: the training imgsz")
    ap.add_argument("--images", nargs="*", help="parity images (default: Ultralytics' bus.jpg and zidane.jpg)")
    ap.add_argument("--data", help="evaluate every export on this dataset's val split (COCO mAP); its train images "
                    "calibrate onnx_ort_int8")
    a = ap.parse_args()
    from gor_det.engine.exporting import ExportCheckError, export_student

    out = Path(a.out) if a.out else Path(a.model).resolve().parent.parent / "export"
    try:
        report = export_student(a.model, out, formats=a.formats, imgsz=a.imgsz, parity_images=a.images,
                                data=a.data)
    except ExportCheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.data:
        from gor_det.engine.evaluate import evaluate_artifact

        for name, e in report["exports"].items():
            if "path" in e and not str(e["path"]).endswith(".engine"):
                m = evaluate_artifact(e["path"], a.data, report["imgsz"], out / "eval" / name)
                print(f"[{name}] mAP50-95 {m['mAP50-95']:.4f}  mAP50 {m['mAP50']:.4f}")
    print(f"exports: {out}")


if __name__ == "__main__":
    run_cli(main)
