#!/usr/bin/env python
"""Alias of `gor-det val` (gor_det.commands.val): the same command and arguments, for a source checkout."""

import gor_det  # noqa: F401  (offline environment before ultralytics is imported)
from gor_det.commands import val
from gor_det.engine.cli import run_cli


def main(argv=None):
    return val.main(argv, prog="python tools/val_det.py")


if __name__ == "__main__":
    run_cli(main)
