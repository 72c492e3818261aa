"""Shared CLI plumbing for tools/: one clear error line and exit code 2 for bad input, never a deep stack trace."""

from __future__ import annotations

import sys
from collections.abc import Callable

from gor_det.config import ConfigError


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; a ConfigError (bad cfg, missing file, class mismatch) prints ``error: ...`` and exits 2."""
    try:
        code = main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # train_det's message says what is saved (gor_det.engine.run.Interrupted)
        print(str(e) or "interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
