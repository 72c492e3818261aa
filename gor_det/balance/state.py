"""A balancer's persistent state: learnable scalars kept exact through fp16 checkpoints and the EMA.

:func:`make_scalars` builds a *plain* ``torch.nn.Module()`` (no gor_det class, so checkpoints unpickle in stock
Ultralytics) holding float32 Parameters ``s_task``, ``s_kd`` (shape ``()``), an int32 buffer ``bits`` (shape ``(2,)``)
with the exact float32 bit patterns of ``(s_task, s_kd)``, and an int32 buffer ``xfer_bits`` (shape ``(3,)``) for a
balancer's own float32 running values (GoR: its two transfer averages and their count). Ultralytics saves checkpoints
with ``.half()`` (fp16 rounding of the scalars, ~1e-3 relative) and its EMA averages only floating tensors, so the int32
buffers survive both unchanged: :func:`sync_bits` after each optimizer step, :func:`restore_from_bits` after any load.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _s_init(w: float, name: str) -> float:
    w = float(w)
    if not (w > 0 and math.isfinite(w)):
        raise ValueError(f"gor.balance.{name}={w} must be a positive finite number (GoR starts at s = -log(w))")
    return -math.log(w) + 0.0  # + 0.0 turns -0.0 (w = 1) into 0.0, whose bit pattern is 0


def make_scalars(w_task: float = 1.0, w_kd: float = 1.0) -> nn.Module:
    """A plain ``nn.Module()`` with Parameters ``s_task = -log(w_task)``, ``s_kd = -log(w_kd)`` (float32, shape ``()``)
    and the int32 buffers ``bits`` (shape ``(2,)``, already synced) and ``xfer_bits`` (shape ``(3,)``, zeros)."""
    m = nn.Module()
    m.s_task = nn.Parameter(torch.tensor(_s_init(w_task, "w_task"), dtype=torch.float32))
    m.s_kd = nn.Parameter(torch.tensor(_s_init(w_kd, "w_kd"), dtype=torch.float32))
    m.register_buffer("bits", torch.zeros(2, dtype=torch.int32))
    m.register_buffer("xfer_bits", torch.zeros(3, dtype=torch.int32))
    sync_bits(m)
    return m


def has_scalars(state: nn.Module | None) -> bool:
    """Whether ``state`` holds the two scalars (a GoR-type balancer's state)."""
    return state is not None and isinstance(getattr(state, "s_task", None), nn.Parameter)


@torch.no_grad()
def sync_bits(state: nn.Module) -> None:
    """Write the float32 bit patterns of ``(s_task, s_kd)`` into ``state.bits`` (int32); no host sync."""
    vals = torch.stack([state.s_task.detach().float(), state.s_kd.detach().float()])
    state.bits.copy_(vals.to(state.bits.device).view(torch.int32))


@torch.no_grad()
def restore_from_bits(state: nn.Module) -> bool:
    """Set ``s_task``, ``s_kd`` to the exact float32 values held in ``state.bits``.

    The parameters become float32 again (also after ``.half()``), keeping their identity (optimizers still hold them).
    Returns False, changing nothing, when ``bits`` is all zero (never synced). Reads the device once.
    """
    if not hasattr(state, "xfer_bits"):  # state saved without the running-value buffer: give it one
        state.register_buffer("xfer_bits", torch.zeros(3, dtype=torch.int32, device=state.bits.device))
    bits = state.bits.to(torch.int32)
    if not bool(bits.any()):
        return False
    vals = bits.view(torch.float32).clone()
    for i, name in enumerate(("s_task", "s_kd")):
        p = getattr(state, name)
        p.data = vals[i].to(p.device)
    return True


def scalar_values(state: nn.Module) -> dict[str, float]:
    """``{"s_task": float, "s_kd": float}`` (for logs; reads the device)."""
    return {"s_task": float(state.s_task.detach().float()), "s_kd": float(state.s_kd.detach().float())}
