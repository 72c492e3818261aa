"""Train a student detector: Ultralytics training + gor_det QAT / distillation / GoR from one run cfg.

    gor-det train cfg=demo_student.yaml [key=value ...]         (alias: python tools/train_det.py --cfg ...)
    gor-det train cfg=demo_student.yaml epochs=3 gor.balance.method=fixed gor.quant.w_bits=4
    gor-det train resume=runs/gor/student/weights/last.pt

cfg= (or --cfg): a run cfg YAML, a local file or the name of a template gor_det ships (demo_teacher.yaml,
demo_student_fp.yaml, demo_student.yaml, coco_teacher_finetune.yaml, coco_student_qat_kd.yaml).
"""

from __future__ import annotations

import argparse

from gor_det.commands import parse_args


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", help="run cfg YAML (Ultralytics train keys + a gor: section), or a shipped template's name")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3 gor.balance.method=fixed")
    return ap


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(build_parser(prog), argv)
    from gor_det.engine.run import resolve_run_cfg, train

    trainer = train(resolve_run_cfg(args.cfg, args.overrides))
    print(f"best weights: {trainer.best}")
    return 0
