"""Make every gor_det process offline by construction, before ``ultralytics`` is imported.

Ultralytics 8.4 probes DNS at import (``is_online``), downloads ``Arial.ttf`` from GitHub whenever a dataset is
checked (``check_font``, even with ``plots=False``) and may ``pip install`` missing requirements. gor_det therefore:

* sets ``YOLO_OFFLINE=1`` (skips the DNS probe and auto-updates) and ``YOLO_AUTOINSTALL=False``;
* copies a TTF that matplotlib ships (DejaVuSans) to ``Arial.ttf`` and ``Arial.Unicode.ttf`` in Ultralytics' user
  config dir, which is where ``check_font`` looks first.

The config dir is the user's own (``YOLO_CONFIG_DIR``, else ``~/.config/Ultralytics`` on Linux, the platform's
equivalent elsewhere): the ``settings.json`` that ``yolo settings`` edits there (``datasets_dir``, ``runs_dir``) is
honoured as in plain Ultralytics. :func:`ultralytics_config_dir` finds it the way Ultralytics'
``get_user_config_dir`` does; where neither it nor Ultralytics' private temp fallback can be written, gor_det points
``YOLO_CONFIG_DIR`` at a dir it can write, so the font is still found there.

Only the standard library is used, and matplotlib is located without being imported.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import stat
import tempfile
from pathlib import Path

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
SUB_DIR = "Ultralytics"


def _writable_dir(p: Path) -> bool:
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(p, os.W_OK)


def _preferred_config_dir() -> Path:
    """Ultralytics' first choice (``get_user_config_dir``): ``$YOLO_CONFIG_DIR/Ultralytics`` or the OS default."""
    if env := os.getenv("YOLO_CONFIG_DIR"):
        return Path(env).expanduser() / SUB_DIR
    system = platform.system()
    if system == "Windows":
        return Path.home() / "AppData" / "Roaming" / SUB_DIR
    if system == "Darwin":
        return Path.home() / "Library" / "Application Support" / SUB_DIR
    return Path(os.getenv("XDG_CONFIG_HOME", Path.home() / ".config")) / SUB_DIR


def _temp_fallback() -> Path | None:
    """Ultralytics' fallback where its first choice cannot be created: ``<tmp>/Ultralytics-<uid>``, private (0700)."""
    windows = platform.system() == "Windows"
    alt = Path(tempfile.gettempdir()) / (SUB_DIR if windows else f"{SUB_DIR}-{os.getuid()}")
    try:
        alt.mkdir(mode=0o777 if windows else 0o700)
        return alt
    except OSError:
        try:
            info = alt.lstat()
        except OSError:
            return None
        if stat.S_ISDIR(info.st_mode) and (windows or (info.st_uid, info.st_mode & 0o777) == (os.getuid(), 0o700)):
            return alt
    return None


def ultralytics_config_dir() -> Path:
    """The dir Ultralytics will read ``settings.json`` and the fonts from; ensured to exist and be writable."""
    p = _preferred_config_dir()
    if _writable_dir(p):
        return p
    alt = _temp_fallback()
    if alt is not None and os.access(alt, os.W_OK):
        return alt
    # Ultralytics would make a fresh temp dir per process (no font in it: a download attempt); give it one to keep
    own = Path(tempfile.mkdtemp(prefix="gor_det-ultralytics-"))
    os.environ["YOLO_CONFIG_DIR"] = str(own)
    (own / SUB_DIR).mkdir(exist_ok=True)
    return own / SUB_DIR


def _bundled_ttf() -> Path | None:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    ttf = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ttf if ttf.is_file() else None


def setup_offline() -> Path:
    """Set the environment so that Ultralytics makes no network attempt; return Ultralytics' config dir.

    Idempotent; values the user already set are respected (``setdefault``), fonts already there are kept.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    cfg_dir = ultralytics_config_dir()
    src = _bundled_ttf()
    for name in FONT_NAMES:
        dst = cfg_dir / name
        if src is not None and not dst.exists():
            tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
    return cfg_dir
