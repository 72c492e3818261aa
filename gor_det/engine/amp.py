"""The AMP check, on the model being trained.

Ultralytics' ``check_amp`` loads ``yolo26n.pt`` (downloading it if missing: a network attempt on every GPU run, which
``YOLO_OFFLINE`` does not stop) and compares its FP32 and autocast predictions: it checks a model that is not the one
trained, and not gor_det's QAT modules. :func:`amp_check` runs the same comparison on a copy of the student itself,
on Ultralytics' bundled images (nothing is fetched). ``GorDetectionTrainer._setup_train`` calls it instead of
Ultralytics' check (see there).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

REL_TOL = 0.05  # the autocast outputs may differ from FP32 by this relative L2 (fp16 rounds to ~1e-3 per op)


def amp_check(model: nn.Module, imgsz: int, device: torch.device) -> tuple[bool, str]:
    """``(use AMP, why)``: whether fp16 autocast gives the model's FP32 predictions on ``device``
    (:func:`autocast_matches` on Ultralytics' bundled ``bus.jpg`` / ``zidane.jpg`` at the training size).

    ``model``: the student (unwrapped, on ``device``). AMP is for accelerators: on a CPU (or MPS) the answer is False
    without running anything.
    """
    if device.type in {"cpu", "mps"}:
        return False, f"AMP is used on CUDA devices only; training on {device.type} runs in float32"
    from gor_det.export.parity import default_images, load_images

    stride = int(max(getattr(model, "stride", torch.tensor([32])).max(), 32))
    size = max(256, -(-int(imgsz) // stride) * stride)
    images = torch.from_numpy(np.ascontiguousarray(load_images(default_images(), size))).to(device)
    return autocast_matches(model, images, device.type)


def autocast_matches(model: nn.Module, images: torch.Tensor, device_type: str) -> tuple[bool, str]:
    """``(ok, why)``: the decoded predictions ``(B, 4 + nc, A)`` of a copy of ``model`` in eval mode (so neither its
    BN statistics nor its quantizers change) on ``images`` (B, 3, H, W) are finite under fp16 autocast and within
    :data:`REL_TOL` relative L2 of FP32."""
    m = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            ref = _decoded(m(images)).float()
            with torch.autocast(device_type, dtype=torch.float16):
                amp = _decoded(m(images)).float()
    except RuntimeError as e:  # an op without an fp16 kernel on this device
        return False, f"the model fails under fp16 autocast: {str(e).splitlines()[0]}"
    finally:
        del m
    if not bool(torch.isfinite(amp).all()):
        return False, "fp16 autocast gives non-finite predictions"
    rel = float((amp - ref).norm() / ref.norm().clamp_min(1e-12))
    if rel > REL_TOL:
        return False, f"fp16 autocast predictions differ from FP32 by {rel:.3f} relative L2 (> {REL_TOL})"
    return True, f"fp16 autocast matches FP32 on the model being trained ({rel:.1e} relative L2)"


def _decoded(y) -> torch.Tensor:
    """The decoded ``(B, 4 + nc, A)`` predictions of an eval-mode Detect output ``(decoded, raw)``."""
    y = y[0] if isinstance(y, (tuple, list)) else y
    return y["one2many"] if isinstance(y, dict) else y
