r"""``fixed``: a hand-set KD weight, constant or moving over training.

.. math::  total = L_t + w_{kd}(p)\, L_k

``w_kd(p)`` is ``w_kd`` throughout, or with ``w_kd_end`` goes from ``w_kd`` at ``p = 0`` to ``w_kd_end`` at ``p = 1``
(``p``: the fraction of training batches done): ``linear``, ``w_kd + (w_kd_end - w_kd) p``, or ``exp``,
``w_kd (w_kd_end / w_kd)^p``. ``w_kd = 0`` is training without KD (the KD term is not even added).
"""

from __future__ import annotations

import torch

from gor_det.balance.base import Balancer, register


def _w(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=like.device).detach()


@register("fixed")
class FixedBalancer(Balancer):
    """``total = w_task L_t + w_kd(p) L_k`` (``w_task`` = 1; a weight of 0 drops its term). ``progress`` (p, in
    [0, 1]) is set before each training batch when a schedule is set."""

    progress: float = 0.0
    w_task: float = 1.0

    @property
    def wants_progress(self) -> bool:
        return self.cfg.w_kd_end is not None

    def set_progress(self, p: float) -> None:
        self.progress = p

    def kd_weight(self) -> float:
        """``w_kd(p)`` at the current ``progress`` (clipped to [0, 1])."""
        c = self.cfg
        if c.w_kd_end is None:
            return float(c.w_kd)
        p = min(max(float(self.progress), 0.0), 1.0)
        if c.schedule == "exp":
            return c.w_kd * (c.w_kd_end / c.w_kd) ** p
        return c.w_kd + (c.w_kd_end - c.w_kd) * p

    def __call__(self, l_task, l_kd, probe=None):
        w_task, w_kd = self.w_task, self.kd_weight()
        total = w_task * l_task if w_task else torch.zeros_like(l_task)
        if w_kd:
            total = total + w_kd * l_kd
        return total, {"w_task": _w(w_task, l_task), "w_kd": _w(w_kd, l_task)}
