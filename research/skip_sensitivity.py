#!/usr/bin/env python
"""Measure why gor_det keeps some layers in float: PTQ of a trained FP model with the default skip list, then with
each default skip group quantized too, scored by pycocotools mAP on the val split.

    python research/skip_sensitivity.py --model research/out/synthetic/fp_v8n/seed0/weights/best.pt \
        --data datasets/synth_bench/data.yaml --bits 8 8 4 4

Writes <out>/skip_sensitivity.md (and .json). PTQ isolates the quantization error of each group; no training noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gor_det  # noqa: E402,F401

GROUPS = {
    "first conv (model.0.conv)": "model.0.conv",
    "DFL fixed conv (*.dfl.conv)": "*.dfl.conv",
    "box output 1x1 convs (*cv2.*.2)": "*cv2.*.2",
    "class output 1x1 convs (*cv3.*.2)": "*cv3.*.2",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 8, 4, 4], help="pairs of w_bits a_bits")
    ap.add_argument("--imgsz", type=int)
    ap.add_argument("--out", default="research/out/skip_sensitivity")
    a = ap.parse_args()
    from gor_det.config import parse_gor
    from gor_det.engine.evaluate import evaluate_artifact, imgsz_of
    from gor_det.engine.ptq import ptq
    from gor_det.quant import DEFAULT_SKIP

    imgsz = a.imgsz or imgsz_of(a.model)
    out = Path(a.out)
    rows = []
    fp = evaluate_artifact(a.model, a.data, imgsz, out / "fp")
    rows.append({"config": "FP (no quantization)", "bits": "-", "mAP50-95": fp["mAP50-95"], "mAP50": fp["mAP50"]})
    pairs = list(zip(a.bits[::2], a.bits[1::2]))
    for wb, ab in pairs:
        variants = {"default skip list (all four groups float)": list(DEFAULT_SKIP)}
        for label, pat in GROUPS.items():
            variants[f"also quantize {label}"] = [p for p in DEFAULT_SKIP if p != pat]
        for label, skip in variants.items():
            q = parse_gor({"quant": {"w_bits": wb, "a_bits": ab, "skip": skip}}).quant
            tag = f"w{wb}a{ab}_" + str(abs(hash(label)) % 10**6)
            path = ptq(a.model, a.data, q, imgsz, out / tag / "best.pt")
            m = evaluate_artifact(path, a.data, imgsz, out / tag)
            rows.append({"config": label, "bits": f"W{wb}A{ab}", "mAP50-95": m["mAP50-95"], "mAP50": m["mAP50"]})
            print(rows[-1], flush=True)
    md = ["| bits | configuration (PTQ, mse calibration) | mAP50-95 | mAP50 |", "|---|---|---|---|"]
    md += [f"| {r['bits']} | {r['config']} | {r['mAP50-95']:.4f} | {r['mAP50']:.4f} |" for r in rows]
    md += ["", f"Command: `python research/skip_sensitivity.py {' '.join(sys.argv[1:])}`  ", f"Date: {date.today()}", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "skip_sensitivity.md").write_text("\n".join(md))
    (out / "skip_sensitivity.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
