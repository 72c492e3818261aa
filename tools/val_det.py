#!/usr/bin/env python
"""COCO mAP (pycocotools, the official protocol) of checkpoints and exported models, one pre/post-processing path.

    python tools/val_det.py --model runs/x/weights/best.pt --data datasets/synth_demo/data.yaml
    python tools/val_det.py --model best.pt best_qdq.onnx best_ncnn_int8 --data coco.yaml \
        --ann datasets/coco/annotations/instances_val2017.json --table results.md
    python tools/val_det.py --model best.pt --data data.yaml --ultralytics   # also Ultralytics' own val, side by side

A model is a .pt (FP or gor_det QAT, fake quant active), an .onnx (ONNX Runtime), an NCNN folder, or a TensorRT
.engine. Writes <out>/<model>/predictions.json and metrics.json.
"""

import argparse
import json
from pathlib import Path

import gor_det  # noqa: F401
from gor_det.engine.cli import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", required=True)
    ap.add_argument("--data", required=True, help="dataset yaml (its val split is evaluated)")
    ap.add_argument("--ann", help="COCO annotation json (default: the yaml's coco_json entry)")
    ap.add_argument("--imgsz", type=int, help="default: the checkpoint's training imgsz, else 640")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/val")
    ap.add_argument("--table", help="also write a markdown table of all models here")
    ap.add_argument("--ultralytics", action="store_true", help="also run Ultralytics' own val (cross-check)")
    a = ap.parse_args()
    from gor_det.engine.evaluate import evaluate_artifact, results_table, ultralytics_val, write_json

    rows = []
    for m in a.model:
        out = Path(a.out) / Path(m).name.replace(".", "_")
        metrics = evaluate_artifact(m, a.data, a.imgsz, out, ann_json=a.ann, batch=a.batch, device=a.device)
        imgsz = metrics["imgsz"]
        if a.ultralytics and m.endswith(".pt"):
            metrics["ultralytics"] = ultralytics_val(m, a.data, imgsz, out / "ultralytics_val")
            write_json({k: v for k, v in metrics.items() if k != "summary"}, out / "metrics.json")
        print(f"\n{m} (imgsz {imgsz}):\n{metrics['summary']}")
        rows.append(metrics)
    md = results_table(rows, command="python tools/val_det.py " + " ".join(__import__("sys").argv[1:]))
    print(md)
    if a.table:
        Path(a.table).parent.mkdir(parents=True, exist_ok=True)
        Path(a.table).write_text(md)
    print(json.dumps([{k: r[k] for k in ("model", "mAP50-95", "mAP50")} for r in rows]))


if __name__ == "__main__":
    run_cli(main)
