"""Make every gor_det process offline by construction, before ``ultralytics`` is imported.

Ultralytics 8.4 probes DNS at import (``is_online``), downloads ``Arial.ttf`` from GitHub whenever a dataset is
checked (``check_font``, even with ``plots=False``) and may ``pip install`` missing requirements. gor_det therefore:

* sets ``YOLO_OFFLINE=1`` (skips the DNS probe and auto-updates) and ``YOLO_AUTOINSTALL=False``;
* gives Ultralytics its own config dir (unless the user set ``YOLO_CONFIG_DIR``), so a foreign ``settings.json`` with a
  stale ``datasets_dir`` cannot redirect relative data paths;
* copies a TTF that matplotlib ships (DejaVuSans) to ``<config>/Ultralytics/Arial.ttf`` and ``Arial.Unicode.ttf``, which
  is where ``check_font`` looks first.

Only the standard library is used, and matplotlib is located without being imported.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def default_config_dir() -> Path:
    """``$GOR_DET_HOME`` or ``~/.cache/gor_det``: gor_det's private Ultralytics config dir."""
    return Path(os.environ.get("GOR_DET_HOME", Path.home() / ".cache" / "gor_det")) / "ultralytics"


def _bundled_ttf() -> Path | None:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    ttf = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ttf if ttf.is_file() else None


def setup_offline() -> Path:
    """Set the environment so that Ultralytics makes no network attempt; return the Ultralytics config dir.

    Idempotent; values the user already set are respected (``setdefault``).
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(default_config_dir()))
    cfg_dir = Path(os.environ["YOLO_CONFIG_DIR"])
    # Ultralytics appends "Ultralytics" to YOLO_CONFIG_DIR only on some platforms; put the font in both places.
    for d in (cfg_dir, cfg_dir / "Ultralytics"):
        d.mkdir(parents=True, exist_ok=True)
        src = _bundled_ttf()
        for name in FONT_NAMES:
            dst = d / name
            if src is not None and not dst.exists():
                tmp = dst.with_suffix(".tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
    return cfg_dir
