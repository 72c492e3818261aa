#!/usr/bin/env python
"""Alias of `gor-det synth` (gor_det.commands.synth): the same command and arguments, for a source checkout."""

import sys

from gor_det.commands import synth


def main(argv=None):
    return synth.main(argv, prog="python tools/make_synthetic.py")


if __name__ == "__main__":
    sys.exit(main())
