r"""The balance forms the benchmark compared and the product does not ship, registered when this module is imported.

    import research.balancers  # before parsing a cfg that names one (research/run.py does)

Each keeps the rows of research/REPORT.md reproducible. Names and what they are (``s`` log-weights, ``w = e^{-s}``,
``sg`` stop-gradient; docs of the product's ``gor``: gor_det/balance/gor.py):

* ``gor_loss``: log-variance weighting on loss values (Kendall et al. 2018):
  ``total = e^{-s_t} L_t + e^{-s_k} L_k + s_t + s_k``, stationary at ``s = log L``.
* ``gor_loss_norm``: the same scalars and objective, with the applied weights rescaled so the weighted sum has the
  value ``L_t + L_k``: ``w = sg[c e^{-s}]``, ``c = sg[(L_t + L_k) / (e^{-s_t} L_t + e^{-s_k} L_k)]``,
  ``total = w_t L_t + w_k L_k + (obj - sg[obj])``, ``obj = e^{-s_t} sg[L_t] + e^{-s_k} sg[L_k] + s_t + s_k``.
* ``gor_grad``: the product's gradient game with equal target shares (``a = 1``), on the gradient norms of the two
  losses on the Detect-head inputs (GradNorm's balance condition with GoR's ``+ s`` regularizer).
* ``gor_split``: the product's ``gor`` with the transfer measured between the two halves of each batch at the same
  weights (both directions averaged; the norms are the halves' mean gradients'): four backward passes per measurement
  instead of two, the same mAP on the benchmark.
* ``fixed_task``: ``fixed`` with a task weight ``w_task`` other than 1.

All but ``fixed_task`` keep their state in :func:`gor_det.balance.make_scalars` (``w_task`` sets the initial task
weight) and train their scalars at lr 0.001 for ``lr: auto``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gor_det.balance import FixedBalancer, GoRBalancer, MeasuringBalancer, gradient_game, make_scalars, register
from gor_det.balance.base import Balancer
from gor_det.config import BalanceCfg, ConfigError


@dataclass
class ResearchBalanceCfg(BalanceCfg):
    """The product's balance keys plus ``w_task``."""

    w_task: float = 1.0  # the task weight (fixed_task), or the one the scalars start from

    def validate(self, where: str = "gor.balance") -> None:
        if self.method != "fixed_task" and self.w_kd <= 0:
            raise ConfigError(f"{where}.w_kd={self.w_kd} must be > 0 for {self.method} (s = -log(w_kd))")
        if not self.w_task > 0:
            raise ConfigError(f"{where}.w_task={self.w_task} must be > 0")
        super().validate(where)


class _Scalars:
    """State: the two scalars, started at ``w_task`` / ``w_kd``."""

    @classmethod
    def make_state(cls, cfg):
        return make_scalars(cfg.w_task, cfg.w_kd)


@register("gor_loss", cfg=ResearchBalanceCfg)
class GoRLossBalancer(_Scalars, Balancer):
    def __call__(self, l_task, l_kd, probe=None):
        s_t, s_k = self.state.s_task.float(), self.state.s_kd.float()
        w_t, w_k = torch.exp(-s_t), torch.exp(-s_k)
        return w_t * l_task + w_k * l_kd + s_t + s_k, {"w_task": w_t.detach(), "w_kd": w_k.detach()}


@register("gor_loss_norm", cfg=ResearchBalanceCfg)
class GoRLossNormBalancer(_Scalars, Balancer):
    def __call__(self, l_task, l_kd, probe=None):
        s_t, s_k = self.state.s_task.float(), self.state.s_kd.float()
        w_hat_t, w_hat_k = torch.exp(-s_t), torch.exp(-s_k)
        lt_d, lk_d = l_task.detach().float(), l_kd.detach().float()
        obj = w_hat_t * lt_d + w_hat_k * lk_d + s_t + s_k
        with torch.no_grad():
            denom = w_hat_t * lt_d + w_hat_k * lk_d
            c = torch.where(denom > 0, (lt_d + lk_d) / denom.clamp_min(torch.finfo(torch.float32).tiny), 1.0)
            w_t, w_k = c * w_hat_t, c * w_hat_k
        total = w_t * l_task + w_k * l_kd + (obj - obj.detach())
        return total, {"w_task": w_t.detach(), "w_kd": w_k.detach()}


@register("gor_grad", cfg=ResearchBalanceCfg)
class GoRGradBalancer(_Scalars, MeasuringBalancer):
    def measure(self, probe):
        return {"gnorm_task": probe.gradient(probe.task, "features").norm(),
                "gnorm_kd": probe.gradient(probe.kd, "features").norm()}

    def __call__(self, l_task, l_kd, probe=None):
        return gradient_game(self.state.s_task.float(), self.state.s_kd.float(), l_task, l_kd, self.measured(probe))


@register("gor_split", cfg=ResearchBalanceCfg)
class GoRSplitBalancer(GoRBalancer):
    default_lr = 0.01

    @classmethod
    def make_state(cls, cfg):
        return make_scalars(cfg.w_task, cfg.w_kd)

    def measure(self, probe):
        halves = probe.halves()
        if halves is None:  # one image: the last measurement, or a whole-batch one to start
            return self._last if self._last is not None else super().measure(probe)
        return self.meter.measure_split(*[(probe.gradient(t), probe.gradient(k)) for t, k in halves])


@register("fixed_task", cfg=ResearchBalanceCfg)
class FixedTaskBalancer(FixedBalancer):
    def __init__(self, cfg, state):
        super().__init__(cfg, state)
        self.w_task = float(cfg.w_task)
