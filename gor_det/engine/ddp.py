"""Keeping every DDP rank's model state identical.

Ultralytics wraps the student in ``DistributedDataParallel(..., find_unused_parameters=True)`` with buffer syncing off
(``forward_sync_buffers`` / ``broadcast_buffers=False``): gradients are all-reduced, buffers never are. For a float
model that only lets BN running statistics drift (they are used at eval, and rank 0's are saved). For QAT they are
training state: a folded BN divides by its running statistics in the training forward, asymmetric activation zero
points come from each rank's own calibration batches, and GoR's transfer averages from each rank's own batch. So:

* :func:`broadcast_state` sends rank 0's parameters and buffers of some modules to every rank (the quantizers,
  after calibration);
* :func:`sync_buffers` averages the BatchNorm statistics over the ranks (as SyncBN would see the global batch, to
  first order) and gives every other buffer rank 0's value. The trainer calls it before each optimizer step, so the
  EMA update and the checkpoint see the same state on every rank, and before each forward while gradients
  accumulate (``accumulate > 1``), so every rank folds with the same statistics. One all-reduce and one broadcast of a
  few hundred KiB per step (YOLOv8n).

Without an initialised process group of two or more ranks both are no-ops.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn.modules.batchnorm import _BatchNorm


def world_size() -> int:
    """Ranks in the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _by_dtype(tensors: list[torch.Tensor]) -> dict[torch.dtype, list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return groups


@torch.no_grad()
def _collective(tensors: list[torch.Tensor], op) -> None:
    """Run ``op(flat)`` on the flattened ``tensors`` (per dtype, one call each) and copy the result back in place."""
    for group in _by_dtype(tensors).values():
        flat = _flatten_dense_tensors([t.detach() for t in group])
        op(flat)
        for t, v in zip(group, _unflatten_dense_tensors(flat, group)):
            t.copy_(v)


def broadcast_state(modules: list[nn.Module], src: int = 0) -> None:
    """Every parameter and buffer of ``modules`` from rank ``src`` to all ranks (one broadcast per dtype)."""
    if world_size() < 2:
        return
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    _collective(tensors, lambda flat: dist.broadcast(flat, src=src))


def sync_buffers(model: nn.Module, src: int = 0) -> None:
    """BatchNorm running statistics averaged over the ranks; every other buffer (quantizer zero points, GoR bits, BN
    batch counters) set to rank ``src``'s."""
    n = world_size()
    if n < 2:
        return
    averaged, broadcast = [], []
    for m in model.modules():
        for name, b in m.named_buffers(recurse=False):
            if b is not None:
                stat = isinstance(m, _BatchNorm) and name in ("running_mean", "running_var")
                (averaged if stat else broadcast).append(b)

    def mean(flat):
        dist.all_reduce(flat)
        flat.div_(n)

    _collective(averaged, mean)
    _collective(broadcast, lambda flat: dist.broadcast(flat, src=src))
