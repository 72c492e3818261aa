"""Checkpoint helpers: atomic writes and the deployable student (no training-only modules)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` to ``path.tmp`` then ``os.replace``: a crash never leaves a torn checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def deployable(model: nn.Module) -> nn.Module:
    """A copy of the student without what only training needs: KD adapters and GoR scalars (``model.kd``) and the
    criterion. Quantization modules stay (they are the deployed arithmetic)."""
    m = copy.deepcopy(model)
    if hasattr(m, "kd"):
        del m.kd
    if hasattr(m, "criterion"):
        m.criterion = None
    return m
