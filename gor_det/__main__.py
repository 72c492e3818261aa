"""``python -m gor_det <command> ...`` is ``gor-det <command> ...`` (gor_det.cli)."""

from gor_det.cli import entrypoint

entrypoint()
