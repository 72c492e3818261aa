#!/usr/bin/env python
"""Train a student detector: Ultralytics training + gor_det QAT / distillation / GoR from one run cfg.

    python tools/train_det.py --cfg cfg/demo_student.yaml [key=value ...]
    python tools/train_det.py --cfg cfg/demo_student.yaml epochs=3 gor.balance.method=fixed gor.quant.w_bits=4
    python tools/train_det.py resume=runs/gor/student/weights/last.pt
"""

import argparse

import gor_det  # noqa: F401  (offline environment before ultralytics is imported)
from gor_det.engine.cli import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", help="run cfg YAML (Ultralytics train keys + a gor: section)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3 gor.balance.method=fixed")
    args = ap.parse_args()
    from gor_det.engine.run import resolve_run_cfg, train

    trainer = train(resolve_run_cfg(args.cfg, args.overrides))
    print(f"best weights: {trainer.best}")


if __name__ == "__main__":
    run_cli(main)
