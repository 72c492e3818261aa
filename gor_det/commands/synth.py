"""Generate the gor_det synthetic shapes benchmark (COCO-like layout) and print the path of its data.yaml.

    gor-det synth --out datasets/synth_bench --preset bench --seed 0 [--force]   (alias: python tools/make_synthetic.py)
    gor-det synth out=datasets/synth_demo preset=demo

The out dir (and its parents) is created. Errors (unknown preset, unwritable dir, a foreign dataset
in the way without --force) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gor_det.commands import parse_args


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        print(f"make_synthetic: error: {message}", file=sys.stderr)
        raise SystemExit(2)



def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from gor_det.data.synthetic import PRESETS

    p = _Parser(prog=prog, description="Generate the gor_det synthetic detection benchmark.")
    p.add_argument("--out", required=True, help="dataset root (created with its parents)")
    p.add_argument("--preset", default="tiny", help=f"one of: {', '.join(PRESETS)} (default tiny)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="regenerate even if a matching dataset exists")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from gor_det.data.synthetic import PRESETS, make_synthetic

    p = build_parser(prog)
    args = parse_args(p, argv)

    if args.preset not in PRESETS:
        p.error(f"unknown preset {args.preset!r} (choose from {', '.join(PRESETS)})")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        p.error(f"--out is not a directory: {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        data_yaml = make_synthetic(out, args.preset, args.seed, force=args.force)
    except (OSError, ValueError, TypeError) as e:
        p.error(f"cannot generate into {out}: {e}")
    print(data_yaml)
    return 0
