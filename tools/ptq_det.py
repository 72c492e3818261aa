#!/usr/bin/env python
"""Alias of `gor-det ptq` (gor_det.commands.ptq): the same command and arguments, for a source checkout."""

import gor_det  # noqa: F401  (offline environment before ultralytics is imported)
from gor_det.commands import ptq
from gor_det.engine.cli import run_cli


def main(argv=None):
    return ptq.main(argv, prog="python tools/ptq_det.py")


if __name__ == "__main__":
    run_cli(main)
