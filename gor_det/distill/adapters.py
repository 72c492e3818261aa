"""1x1 convolution adapters mapping student feature maps to each teacher's channel count.

Plain ``torch.nn`` classes only (``nn.ModuleList`` of ``nn.ModuleList`` of ``nn.Conv2d``), so a checkpoint whose model
holds them loads in stock Ultralytics without gor_det.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["build_adapters", "init_adapter"]


@torch.no_grad()
def init_adapter(conv: nn.Conv2d) -> nn.Conv2d:
    """Initialise a 1x1 adapter ``C_s -> C_t`` in place; bias 0.

    * ``C_s == C_t``: identity (the adapter starts as a no-op, so KD starts from the raw student features);
    * otherwise a semi-orthogonal matrix (``nn.init.orthogonal_``) with gain ``sqrt(max(1, C_t / C_s))``: orthonormal
      rows (``C_t < C_s``) or columns (``C_t > C_s``), scaled so that, for roughly uncorrelated input channels of
      equal variance, each output channel has on average the variance of an input channel. No information is lost
      when ``C_t >= C_s`` (the map is injective), and no random-init scale mismatch distorts the first KD steps.
    """
    c_out, c_in = conv.weight.shape[:2]
    w = conv.weight.view(c_out, c_in)
    if c_out == c_in:
        w.copy_(torch.eye(c_out, dtype=w.dtype, device=w.device))
    else:
        nn.init.orthogonal_(w, gain=math.sqrt(max(1.0, c_out / c_in)))
    if conv.bias is not None:
        conv.bias.zero_()
    return conv


def build_adapters(student_channels: Sequence[int], teacher_channels: Sequence[Sequence[int]]) -> nn.ModuleList:
    """Build ``adapters[teacher][level]``: a 1x1 ``nn.Conv2d(student_channels[level], teacher_channels[t][level])``.

    Args:
        student_channels: channels of the student's feature levels (e.g. ``[64, 128, 256]`` for YOLOv8n P3-P5).
        teacher_channels: per teacher, the channels of its levels (e.g. ``[[128, 256, 512]]`` for one YOLOv8s).

    Returns:
        ``nn.ModuleList`` (one entry per teacher) of ``nn.ModuleList`` (one ``nn.Conv2d`` with bias per level),
        initialised by :func:`init_adapter` (identity where the channel counts match).

    Raises:
        ValueError: a teacher has a different number of levels than the student.
    """
    student_channels = [int(c) for c in student_channels]
    out = nn.ModuleList()
    for t, chans in enumerate(teacher_channels):
        chans = [int(c) for c in chans]
        if len(chans) != len(student_channels):
            raise ValueError(
                f"teacher {t} has {len(chans)} feature levels {chans}, the student has {len(student_channels)} "
                f"{student_channels}: feature KD needs the same Detect levels (P3-P5) in teacher and student"
            )
        out.append(
            nn.ModuleList(
                init_adapter(nn.Conv2d(cs, ct, kernel_size=1, bias=True)) for cs, ct in zip(student_channels, chans)
            )
        )
    return out
