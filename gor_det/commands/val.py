r"""COCO mAP (pycocotools, the official protocol) of checkpoints and exported models, one pre/post-processing path.

    gor-det val --model runs/x/weights/best.pt --data datasets/synth_demo/data.yaml   (alias: python tools/val_det.py)
    gor-det val --model best.pt best_qdq.onnx best_ncnn_int8 --data coco.yaml \
        --ann datasets/coco/annotations/instances_val2017.json --table results.md
    gor-det val model=best.pt data=data.yaml ultralytics=true   # key=value works too; + Ultralytics' own val

A model is a .pt (FP or gor_det QAT, fake quant active), an .onnx (ONNX Runtime), an NCNN folder, or a TensorRT
.engine. Writes <out>/<model>/predictions.json and metrics.json. The data, its annotation json (which must cover
every val image) and each model's class count are checked before anything is scored.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from gor_det.commands import parse_args


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from gor_det.engine.evaluate import default_device

    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", required=True)
    ap.add_argument("--data", required=True, help="dataset yaml (its val split is evaluated)")
    ap.add_argument("--ann", help="COCO annotation json (default: the yaml's coco_json entry)")
    ap.add_argument("--imgsz", type=int, help="default: the checkpoint's training imgsz, else 640")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default=default_device(), help="cpu, 0, cuda:1 (default: GPU 0 if there is one)")
    ap.add_argument("--out", default="runs/val")
    ap.add_argument("--table", help="also write a markdown table of all models here")
    ap.add_argument("--ultralytics", action="store_true", help="also run Ultralytics' own val (cross-check)")
    return ap


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    a = parse_args(build_parser(prog), argv)
    from gor_det.config import ConfigError
    from gor_det.engine.evaluate import (
        check_eval_set,
        evaluate_artifact,
        results_table,
        torch_device,
        ultralytics_val,
        write_json,
    )

    for m in a.model:
        if not Path(m).exists():
            raise ConfigError(f"model file not found: {m}")
    torch_device(a.device)
    eval_set = check_eval_set(a.data, a.ann)
    rows = []
    for m in a.model:
        out = Path(a.out) / Path(m).name.replace(".", "_")
        metrics = evaluate_artifact(m, a.data, a.imgsz, out, batch=a.batch, device=a.device, eval_set=eval_set)
        imgsz = metrics["imgsz"]
        if a.ultralytics and m.endswith(".pt"):
            metrics["ultralytics"] = ultralytics_val(m, a.data, imgsz, out / "ultralytics_val", device=a.device)
            write_json({k: v for k, v in metrics.items() if k != "summary"}, out / "metrics.json")
        print(f"\n{m} (imgsz {imgsz}):\n{metrics['summary']}")
        rows.append(metrics)
    given = sys.argv[1:] if argv is None else argv
    md = results_table(rows, command=f"{prog or 'gor-det val'} " + " ".join(shlex.quote(x) for x in given))
    print(md)
    if a.table:
        Path(a.table).parent.mkdir(parents=True, exist_ok=True)
        Path(a.table).write_text(md)
    print(json.dumps([{k: r[k] for k in ("model", "mAP50-95", "mAP50")} for r in rows]))
    return 0
