r"""``gor``: GoR, two learnable scalars that balance the task loss against the distillation loss.

gor_det's own definition (the paper, "Punching Above Precision", arXiv 2509.20854, is public only as an abstract).
Two scalars ``s_t, s_k`` (log-weights, ``w = e^{-s}``) play a game with the usual log-variance regularizer, on the
losses' *gradients* in the head region rather than on the loss values, with each term's share of the gradient set by
how much a step along it lowers the task loss of the next batch (a one-step lookahead, measured online):

.. math::

    n_t = \lVert g_t \rVert, \quad n_k = \lVert g_k \rVert, \quad \bar n = (n_t + n_k)/2, \qquad
    \rho_j = \mathrm{EMA}\Big[\frac{\langle g_t^{B}, g_j^{A} \rangle}{\lVert g_j^{A} \rVert}\Big], \quad
    a = \mathrm{clip}(\rho_k / \rho_t,\ 1/20,\ 20),

    q_t = \frac{2}{1 + a}, \quad q_k = \frac{2a}{1 + a}, \qquad
    obj = e^{-s_t} \frac{n_t}{q_t \bar n} + e^{-s_k} \frac{n_k}{q_k \bar n} + s_t + s_k,

    total = w_t L_t + w_k L_k + (obj - \mathrm{sg}[obj]), \qquad w = \mathrm{sg}[e^{-s}].

``g_t, g_k``: the gradients of ``L_t`` and ``L_k`` on the parameters that produce and read the Detect-head inputs
(:class:`~gor_det.balance.probe.GradientProbe`, ``where="head"``), measured every ``grad_every`` training steps (the
last measurement is used in between); A and B are two successive measurements' batches, so the steps between them
enter the transfer. ``ρ_j`` is, per unit of gradient spent on term ``j`` at batch A, how much the task loss of batch B
falls (to first order, the hypergradient ``-dL_t^B / dw_j`` per step size). ``a = 1`` until ``ρ_t > 0`` is measured.

``d obj / d s_j = 1 - w_j n_j / (q_j n̄)`` vanishes at ``w_j n_j = q_j n̄``: at the stationary point the two terms
move the student's head region in the ratio of their measured usefulness to the task (``a``), and the weighted
gradient keeps the size ``n_t + n_k`` of the unweighted one, so Ultralytics' learning rates and gradient clipping
keep their meaning. The ``+ s`` terms are the regularizer of the game: without them both weights would collapse to 0.
Why gradients and not loss values: loss values carry arbitrary units and gains (Ultralytics' box gain 7.5, a CWD
temperature); what decides how much a term steers the student is its gradient, and whether that steering helps the
task is what the transfer measures. ``n = 0`` (no gradient at all) leaves the scalars where they are.

Initialisation: ``w_t = 1``, ``w_k = gor.balance.w_kd``. Validation batches (no gradients) use the weights in force.
"""

from __future__ import annotations

import torch
from torch import nn

from gor_det.balance.base import Balancer, register
from gor_det.balance.state import make_scalars
from gor_det.config import ConfigError


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the DDP ranks (``x`` itself without a process group): every rank then folds the same
    measurement into its state."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x


class TransferMeter:
    """``gor_lookahead``'s measurements: the two gradient norms and the transfer ratio ``a = ρ_k / ρ_t``.

    ``measure(g_t, g_k)`` takes this batch's task and KD gradients (flat float32 vectors on the same parameters, from
    :meth:`GradientProbe.gradient`) and, when an earlier measurement is held, the transfers of the earlier gradients to this
    batch's task loss, ``<g_t, g_t^prev> / ||g_t^prev||`` and ``<g_t, g_k^prev> / ||g_k^prev||``, into exponential
    moving averages (decay ``beta`` per measurement) (``gor.balance.transfer: next``). ``measure_split(half_1,
    half_2)`` takes the two gradients of each half of one batch instead and folds in the transfers between the halves
    (``transfer: split``). Both return ``{"gnorm_task", "gnorm_kd", "xfer_ratio"}`` (float32 scalars).

    The averages and their count live in ``params.xfer_bits`` (exact float32 bits: checkpoints, the EMA copy and resume
    carry them); the previous gradients are held here only, so after a resume the first measurement re-arms the
    lookahead and the averages continue from the checkpoint. Everything stays on the gradients' device (no host
    sync): the update is computed in float64 tensors, as Python floats would be, and stored as float32. A transfer
    that is not finite (an fp16 overflow under AMP) is not folded in. Under DDP the transfers are averaged over the
    ranks before they are folded in, so every rank holds the same averages (the scalars' gradients are all-reduced by
    DDP as usual).
    """

    RATIO_CLIP = 20.0  # a is clipped to [1/20, 20]: a term whose direction stops helping keeps a 1/21 share

    def __init__(self, params: nn.Module, beta: float = 0.9):
        if not isinstance(getattr(params, "xfer_bits", None), torch.Tensor):
            raise ValueError("GoR state lacks the buffer 'xfer_bits'; build it with make_scalars()")
        self.params, self.beta, self._prev = params, float(beta), None

    def state(self) -> tuple[float, float, int]:
        """``(ema of ρ_t, ema of ρ_k, number of transfer measurements)``, not bias-corrected (the ratio needs none).
        Reads the device (for logs and tests; the training step never calls it)."""
        v = self.params.xfer_bits.detach().cpu().view(torch.float32).tolist()
        return v[0], v[1], int(v[2])

    def ratio(self) -> float:
        """``a = clip(ρ_k / ρ_t, 1/20, 20)``; 1 until a positive ``ρ_t`` has been measured."""
        return float(self._ratio(self.params.xfer_bits.detach().view(torch.float32)))

    @classmethod
    def _ratio(cls, vals: torch.Tensor) -> torch.Tensor:
        """``clip(r_k / r_t, 1/20, 20)`` from ``vals = (r_t, r_k, count)`` (float32), or 1 while ``count == 0`` or
        ``r_t <= 0``; computed in float64, returned as a float32 scalar."""
        v = vals.to(_wide(vals.device))
        r_t, r_k, count = v[0], v[1], v[2]
        a = (r_k / r_t).clamp(1.0 / cls.RATIO_CLIP, cls.RATIO_CLIP)
        return torch.where((count > 0) & (r_t > 0), a, torch.ones_like(a)).float()

    @staticmethod
    def _transfers(g_task_b: torch.Tensor, g_task_a: torch.Tensor, g_kd_a: torch.Tensor) -> torch.Tensor:
        """``(<g_t^B, g_t^A> / |g_t^A|, <g_t^B, g_k^A> / |g_k^A|)``, shape (2,) float32."""
        tiny = torch.finfo(torch.float32).tiny
        return torch.stack([g_task_b @ g / g.norm().clamp_min(tiny) for g in (g_task_a, g_kd_a)])

    def _update(self, x: torch.Tensor | None) -> torch.Tensor:
        """Fold one transfer pair ``x`` (2,) into the averages (None: nothing measured) and return the clipped ratio
        (a float32 scalar tensor)."""
        bits = self.params.xfer_bits
        vals = bits.detach().view(torch.float32)
        if x is not None:
            x = _mean_over_ranks(x)
            wide = _wide(x.device)
            v, xw = vals.to(x.device, wide), x.to(wide)
            b = (v[2] > 0).to(wide) * self.beta  # the first transfer starts the averages
            new = torch.stack([b * v[0] + (1 - b) * xw[0], b * v[1] + (1 - b) * xw[1], v[2] + 1]).float()
            new = torch.where(torch.isfinite(x).all(), new, vals.to(x.device))
            bits.copy_(new.view(torch.int32).to(bits.device))
            vals = new  # the ratio from the stored (float32) averages, as a resumed run reads them
        return self._ratio(vals)

    @torch.no_grad()
    def measure(self, g_task: torch.Tensor, g_kd: torch.Tensor) -> dict[str, torch.Tensor]:
        """``transfer: next``: this batch's gradients; the transfer is from the previous call's batch to this one."""
        a = self._update(self._transfers(g_task, *self._prev) if self._prev is not None else None)
        self._prev = (g_task, g_kd)
        return {"gnorm_task": g_task.norm(), "gnorm_kd": g_kd.norm(), "xfer_ratio": a.to(g_task.device)}

    @torch.no_grad()
    def measure_split(self, half_1: tuple[torch.Tensor, torch.Tensor], half_2: tuple[torch.Tensor, torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
        """``transfer: split``: ``(g_task, g_kd)`` of the two halves of one batch, at the same weights. The transfer
        is the mean of both directions (half 1 -> half 2 and back); the norms are those of the halves' mean
        gradients (an estimate of the whole batch's)."""
        x_12, x_21 = self._transfers(half_2[0], *half_1), self._transfers(half_1[0], *half_2)
        wide = _wide(x_12.device)
        a = self._update((x_12.to(wide) + x_21.to(wide)) / 2)
        g_t, g_k = (half_1[0] + half_2[0]) / 2, (half_1[1] + half_2[1]) / 2
        return {"gnorm_task": g_t.norm(), "gnorm_kd": g_k.norm(), "xfer_ratio": a.to(g_t.device)}


def _wide(device: torch.device) -> torch.dtype:
    """float64 where the device has it (the transfer averages are updated as Python floats would be), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64



def gradient_game(s_t: torch.Tensor, s_k: torch.Tensor, l_task: torch.Tensor, l_kd: torch.Tensor,
                  measured: dict[str, torch.Tensor] | None, a: torch.Tensor | float = 1.0):
    """``(total, weights)`` of the log-variance game on gradient norms with target shares in the ratio ``a`` (see the
    module docstring; ``measured`` = ``{"gnorm_task", "gnorm_kd"}`` or None: no game, the weights in force)."""
    w_hat_t, w_hat_k = torch.exp(-s_t), torch.exp(-s_k)
    w_t, w_k = w_hat_t.detach(), w_hat_k.detach()
    total = w_t * l_task + w_k * l_kd
    if measured is not None:
        n_t, n_k = measured["gnorm_task"].detach().float(), measured["gnorm_kd"].detach().float()
        n_bar = (n_t + n_k) / 2
        q_t, q_k = 2 / (1 + a), 2 * a / (1 + a)
        obj = (w_hat_t * n_t / q_t + w_hat_k * n_k / q_k) / n_bar.clamp_min(torch.finfo(torch.float32).tiny)
        obj = obj + s_t + s_k
        # no gradient at all (n_bar = 0): the scalars stay put (torch.where, not an if: no host sync per step)
        total = total + torch.where(n_bar > 0, obj - obj.detach(), 0.0)
    return total, {"w_task": w_t, "w_kd": w_k}


class MeasuringBalancer(Balancer):
    """A balancer that measures the probe every ``grad_every`` training steps and keeps the last measurement in
    between (an fp16 overflow under AMP keeps the last finite one). Subclasses implement :meth:`measure`."""

    wants_probe = True

    def __init__(self, cfg, state: nn.Module):
        super().__init__(cfg, state)
        self._calls, self._last = 0, None

    def measure(self, probe) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def measured(self, probe) -> dict[str, torch.Tensor] | None:
        """The measurement in force for this call (None without a probe: validation)."""
        if probe is None:
            return None
        if self._calls % self.cfg.grad_every == 0 or self._last is None:
            new = self.measure(probe)
            if self._last is not None:
                new = {k: torch.where(torch.isfinite(v), v, self._last[k]) for k, v in new.items()}
            self._last = new
        self._calls += 1
        return self._last


@register("gor")
class GoRBalancer(MeasuringBalancer):
    """GoR (module docstring). State: :func:`~gor_det.balance.state.make_scalars` (``s_task``, ``s_kd``, their bits,
    and the transfer averages in ``xfer_bits``)."""

    default_lr = 0.01  # the scalars fall from w_kd / w_task = 1 to ~0.1-0.25 on the benchmark: ~400 steps at 0.01

    def __init__(self, cfg, state: nn.Module):
        super().__init__(cfg, state)
        self.meter = TransferMeter(state)

    @classmethod
    def make_state(cls, cfg) -> nn.Module:
        return make_scalars(1.0, cfg.w_kd)

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.w_kd <= 0:
            raise ConfigError(f"gor.balance.w_kd={cfg.w_kd}: {cls.name} starts its scalars at s = -log(w_kd) and needs "
                              "w_kd > 0; for training without KD use method=fixed with w_kd: 0")
        if cfg.w_kd_end is not None:
            raise ConfigError(f"gor.balance.w_kd_end applies to method=fixed only ({cls.name} learns its weights); "
                              "remove w_kd_end or set gor.balance.method=fixed")

    def measure(self, probe) -> dict[str, torch.Tensor]:
        return self.meter.measure(probe.gradient(probe.task), probe.gradient(probe.kd))

    def __call__(self, l_task, l_kd, probe=None):
        m = self.measured(probe)
        a = m["xfer_ratio"].detach().float() if m is not None else 1.0
        return gradient_game(self.state.s_task.float(), self.state.s_kd.float(), l_task, l_kd, m, a)
