"""Lazy imports of the optional export dependencies (onnx, onnxruntime, onnxslim, pnnx, ncnn, tensorrt).

``import gor_det.export`` imports none of them; each function imports what it needs through :func:`require`, which
turns a missing package into a clear ``RuntimeError``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

INSTALL_HINT = "pip install 'gor_det[export]'"


class ModelFileError(RuntimeError):
    """A model file exists but cannot be read (corrupt, truncated, wrong format)."""


def require(module: str, hint: str = INSTALL_HINT):
    """Import and return ``module``; raise ``RuntimeError`` naming the install command when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(f"gor_det.export needs the '{module}' package ({e}); install it with: {hint}") from e


def existing_file(path, what: str = "model file") -> Path:
    """``Path(path)`` if it is a file, else ``FileNotFoundError('model file not found: ...')``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    return p


def imgsz_hw(imgsz) -> tuple[int, int]:
    """``640 -> (640, 640)``; ``(h, w) -> (h, w)``."""
    if isinstance(imgsz, int):
        return imgsz, imgsz
    h, w = (int(v) for v in imgsz)
    return h, w
