r"""Balancing the task loss against the distillation loss: fixed weights, or GoR ("Game of Regularizer").

A balancer maps ``{"task": L_t, "kd": L_k}`` (scalar tensors; ``L_t`` = Ultralytics' box + cls + dfl per image,
``L_k`` = the weighted KD terms of :class:`gor_det.distill.Distiller`) to ``(total, {"w_task", "w_kd"})``, where
``total`` is what is back-propagated and the weights (detached float32 tensors) are the ones in force, for logging.

Methods (``gor.balance.method``):

* ``fixed``: ``total = w_task * L_t + w_kd * L_k`` (classical QAT + KD with hand-tuned weights); with ``w_kd_end``
  the KD weight moves from ``w_kd`` to ``w_kd_end`` over training (``schedule``: linear, or exp in log w_kd).
* ``none``: ``total = L_t`` (``w_kd = 0``; the KD loss is not even touched, so a NaN in it cannot leak in).
* ``gor``: exactly two learnable scalars ``s_t, s_k`` (log-variances, Kendall et al. 2018 style), trained with the
  network:

  .. math::  total = e^{-s_t} L_t + e^{-s_k} L_k + s_t + s_k, \qquad w_{task} = e^{-s_t},\; w_{kd} = e^{-s_k}.

  ``d total / d s = 1 - e^{-s} L`` vanishes at ``s* = log L``: at the stationary point each loss is divided by its own
  magnitude (``e^{-s*} L = 1``), so neither the task nor the distillation term dominates because of its units or
  scale, and the balance follows the losses as training goes on. The ``+ s`` terms are the regularizer of the game:
  without them ``e^{-s} L`` alone is minimised by ``s -> +inf``, i.e. both weights collapsing to 0.
  Initialisation: ``s = -log w`` with ``w = gor.balance.w_task / w_kd``. (As for any log-variance weighting, a loss
  that is identically 0 drives its ``s`` towards ``-inf``; do not enable GoR without KD terms.)
* ``gor_norm``: the same two scalars with the same objective for *their* gradients, but the weights applied to the
  losses are rescaled so that the weighted sum has the value ``L_t + L_k``. The GoR weights are typically far from 1
  (``e^{-s*} = 1/L``), which rescales the gradient the student receives; Ultralytics' learning rates, warm-up and
  gradient clipping (max norm 10) are tuned for the unweighted loss scale, so ``gor_norm`` keeps that scale and lets
  GoR decide only the *ratio* between the terms:

  .. math::

      \hat w = e^{-s} \text{ (per term)}, \quad
      c = \mathrm{sg}\Big[\frac{L_t + L_k}{\hat w_t L_t + \hat w_k L_k}\Big], \quad
      w = \mathrm{sg}[c\,\hat w],

      obj = e^{-s_t}\,\mathrm{sg}[L_t] + e^{-s_k}\,\mathrm{sg}[L_k] + s_t + s_k, \qquad
      total = w_t L_t + w_k L_k + (obj - \mathrm{sg}[obj])

  (``sg`` = stop-gradient / ``detach``). The value of ``total`` is ``w_t L_t + w_k L_k = L_t + L_k``; the student's
  gradient is ``w_t dL_t + w_k dL_k`` (ratio ``w_t / w_k = e^{s_k - s_t}``, as in ``gor``), and the scalars' gradient
  is that of ``obj``, i.e. the ``gor`` objective, so they converge to the same ``s* = log L``, where
  ``w = (L_t + L_k) / (2 L)`` per term. ``c = 1`` if the denominator is 0.

* ``gor_grad``: the same two scalars and the same log-variance game, played on the magnitudes of the two losses'
  *gradients* on the features the losses share (the maps feeding the Detect head, ``F``) instead of on the loss values:

  .. math::

      n_t = \lVert \partial L_t / \partial F \rVert_2, \quad n_k = \lVert \partial L_k / \partial F \rVert_2, \quad
      \bar n = (n_t + n_k) / 2 \quad \text{(all detached, measured on the batch)},

      obj = e^{-s_t}\, n_t / \bar n + e^{-s_k}\, n_k / \bar n + s_t + s_k, \qquad
      total = w_t L_t + w_k L_k + (obj - \mathrm{sg}[obj]), \quad w = \mathrm{sg}[e^{-s}].

  ``d obj / d s = 1 - e^{-s} n / \bar n`` vanishes at ``s* = log(n / n̄)``, where ``w_t n_t = w_k n_k = n̄``: both
  players move the shared features by the same amount (GradNorm's balance condition, Chen et al. 2018, with the
  ``+ s`` regularizer of GoR instead of a renormalisation), and the weighted gradient keeps the size ``n_t + n_k`` of
  the unweighted one. Why: what decides how much each term steers the student is its gradient, not its value; loss
  values carry arbitrary units and gains (Ultralytics' box gain 7.5, a CWD temperature), gradient norms on the
  shared features do not. The criterion measures ``n_t, n_k`` with two extra backward passes through the head
  (:func:`gradient_norm`, every ``gor.balance.grad_every`` training steps) and passes them as ``losses["gnorm_task"]``,
  ``losses["gnorm_kd"]``; without them (validation, ``no_grad``) the weights in force are returned and ``obj`` is 0.

* ``gor_lookahead``: ``gor_grad``'s game with each term's share of the gradient set by how much a step along it
  lowers the *task* loss of another batch (a one-step lookahead, measured online). After the step
  ``θ' = θ - η (w_t g_t^A + w_k g_k^A)`` on batch A, the task loss of a batch B changes by
  ``-η (w_t <g_t^B, g_t^A> + w_k <g_t^B, g_k^A>)`` to first order (``-η <g_t^B, g_j^A>`` is the hypergradient
  ``dL_t^B(θ') / dw_j``). Per unit of gradient spent, term ``j`` lowers it by the *transfer*
  ``ρ_j = <g_t^B, g_j^A> / ||g_j^A||``. With the gradients taken on the parameters that produce and read the
  Detect-head inputs (:class:`TransferMeter`; A and B are successive measurements, ``grad_every`` steps apart),
  ``ρ_t, ρ_k`` are exponential moving averages over measurements and ``a = clip(ρ_k / ρ_t, 1/20, 20)``
  (``a = 1`` until ``ρ_t > 0`` has been measured):

  .. math::

      q_t = \frac{2}{1 + a}, \quad q_k = \frac{2a}{1 + a}, \qquad
      obj = e^{-s_t} \frac{n_t}{q_t \bar n} + e^{-s_k} \frac{n_k}{q_k \bar n} + s_t + s_k,

  stationary at ``w_j n_j = q_j n̄``: the gradient shares are in the ratio of the transfers (``a = 1``: ``gor_grad``),
  and the weighted gradient keeps the size ``n_t + n_k``. The balancer receives ``n_t, n_k`` (``gnorm_*``, on the
  same parameters) and ``a`` (``losses["xfer_ratio"]``). Where A and B come from (``gor.balance.transfer``):
  ``next`` (default), the batches of two successive measurements ``grad_every`` optimizer steps apart (the gradient of
  B is then taken at weights those steps have moved, so the steps' own effect enters the transfer); ``split``, the two
  halves of one batch at the same weights ``θ`` (the lookahead exactly as written, symmetrised over A, B = the halves
  in both orders; ``n`` are the norms of the halves' mean gradients).

Storage (``make_gor_params``): a *plain* ``torch.nn.Module()`` instance (no gor_det class, so checkpoints unpickle in
stock Ultralytics) holding float32 Parameters ``s_task``, ``s_kd`` (shape ``()``) and an int32 buffer ``bits`` (shape
``(2,)``) with the exact float32 bit patterns of ``(s_task, s_kd)``, and an int32 buffer ``xfer_bits`` (shape ``(3,)``,
the float32 bits of ``gor_lookahead``'s two transfer averages and its measurement count; zeros otherwise). Ultralytics saves checkpoints with ``.half()``
(fp16 rounding of the scalars, ~1e-3 relative) and its EMA averages only floating tensors, so the int32 buffer survives
both unchanged: call :func:`sync_bits` after each optimizer step (and before saving), and :func:`restore_from_bits`
after loading a checkpoint to recover the exact float32 values.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from gor_det.config import BalanceCfg

__all__ = [
    "Balancer",
    "FixedBalancer",
    "GoRBalancer",
    "TransferMeter",
    "flat_gradient",
    "gradient_norm",
    "NoKDBalancer",
    "gor_scalars",
    "make_balancer",
    "make_gor_params",
    "restore_from_bits",
    "sync_bits",
]


# --------------------------------------------------------------------------------------------------------------------
# The two scalars
# --------------------------------------------------------------------------------------------------------------------
def _s_init(w: float, name: str) -> float:
    w = float(w)
    if not (w > 0 and math.isfinite(w)):
        raise ValueError(f"gor.balance.{name}={w} must be a positive finite number (GoR starts at s = -log(w))")
    return -math.log(w) + 0.0  # + 0.0 turns -0.0 (w = 1) into 0.0, whose bit pattern is 0


def make_gor_params(w_task: float = 1.0, w_kd: float = 1.0) -> nn.Module:
    """A plain ``nn.Module()`` with Parameters ``s_task = -log(w_task)``, ``s_kd = -log(w_kd)`` (float32, shape ``()``)
    and the int32 buffer ``bits`` (shape ``(2,)``, already synced)."""
    m = nn.Module()
    m.s_task = nn.Parameter(torch.tensor(_s_init(w_task, "w_task"), dtype=torch.float32))
    m.s_kd = nn.Parameter(torch.tensor(_s_init(w_kd, "w_kd"), dtype=torch.float32))
    m.register_buffer("bits", torch.zeros(2, dtype=torch.int32))
    m.register_buffer("xfer_bits", torch.zeros(3, dtype=torch.int32))
    sync_bits(m)
    return m


@torch.no_grad()
def sync_bits(params: nn.Module) -> None:
    """Write the float32 bit patterns of ``(s_task, s_kd)`` into ``params.bits`` (int32)."""
    vals = torch.stack([params.s_task.detach().float(), params.s_kd.detach().float()])
    params.bits.copy_(vals.to(params.bits.device).view(torch.int32))


@torch.no_grad()
def restore_from_bits(params: nn.Module) -> bool:
    """Set ``s_task``, ``s_kd`` to the exact float32 values held in ``params.bits``.

    The parameters become float32 again (also after ``.half()``), keeping their identity (optimizers still hold them).
    Returns False, changing nothing, when ``bits`` is all zero (never synced).
    """
    bits = params.bits.to(torch.int32)
    if not bool(bits.any()):
        return False
    vals = bits.view(torch.float32).clone()
    for i, name in enumerate(("s_task", "s_kd")):
        p = getattr(params, name)
        p.data = vals[i].to(p.device)
    return True


def gor_scalars(params: nn.Module) -> dict[str, float]:
    """``{"s_task": float, "s_kd": float}`` (for logging)."""
    return {"s_task": float(params.s_task.detach().float()), "s_kd": float(params.s_kd.detach().float())}


def gradient_norm(loss: torch.Tensor, wrt: list[torch.Tensor], scale: torch.Tensor | None = None) -> torch.Tensor:
    """``||d loss / d wrt||_2`` over all tensors of ``wrt`` (detached float32 scalar; 0 if ``loss`` does not reach
    them), measured at the loss scale ``scale`` (see :func:`flat_gradient`). The graph is kept for the training
    backward that follows; nothing is accumulated in ``.grad``."""
    return flat_gradient(loss, wrt, scale).norm()


def flat_gradient(loss: torch.Tensor, wrt: list[torch.Tensor], scale: torch.Tensor | None = None) -> torch.Tensor:
    """``d loss / d wrt`` flattened into one detached float32 vector (zeros where ``loss`` does not reach a tensor).

    ``scale`` (a float32 scalar tensor, e.g. the AMP GradScaler's, a power of two): the backward runs on
    ``loss * scale`` and the gradient is divided by it in float32, so fp16 gradients under autocast do not flush to
    zero (what the training backward does through the GradScaler); None: no scaling. The graph is kept
    (``retain_graph``) for the training backward that follows; nothing is accumulated in ``.grad``.
    """
    if not loss.requires_grad:
        return torch.cat([w.new_zeros(w.numel(), dtype=torch.float32) for w in wrt])
    if scale is not None:
        loss = loss * scale
    grads = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True, materialize_grads=True)
    flat = torch.cat([g.detach().float().flatten() for g in grads])
    return flat if scale is None else flat / scale


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
    :func:`flat_gradient`) and, when an earlier measurement is held, the transfers of the earlier gradients to this
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
            raise ValueError("GoR params lack the buffer 'xfer_bits'; build them with make_gor_params()")
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


# --------------------------------------------------------------------------------------------------------------------
# Balancers
# --------------------------------------------------------------------------------------------------------------------
@runtime_checkable
class Balancer(Protocol):
    """``balancer({"task": L_t, "kd": L_k}) -> (total, {"w_task": w_t, "w_kd": w_k})`` (weights detached)."""

    def __call__(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def _loss(losses: dict, key: str) -> torch.Tensor:
    if key not in losses:
        raise KeyError(f"balancer needs the loss '{key}' (got keys {sorted(losses)})")
    return (
        torch.as_tensor(losses[key], dtype=torch.float32) if not isinstance(losses[key], torch.Tensor) else losses[key]
    )


def _w(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=like.device).detach()


class FixedBalancer:
    """``total = w_task * L_t + w_kd(p) * L_k`` (a weight of 0 drops its term entirely).

    ``w_kd(p)`` is ``w_kd`` throughout, or with ``w_kd_end`` goes from ``w_kd`` at ``p = 0`` to ``w_kd_end`` at ``p = 1``:
    ``linear``, ``w_kd + (w_kd_end - w_kd) p``, or ``exp``, ``w_kd (w_kd_end / w_kd)^p``. ``progress`` (p: the fraction
    of training batches done, in [0, 1]) is set by the trainer before each batch (callback ``balance_progress``).
    """

    def __init__(self, w_task: float = 1.0, w_kd: float = 1.0, w_kd_end: float | None = None,
                 schedule: str = "linear"):
        if schedule not in ("linear", "exp"):
            raise ValueError(f"schedule {schedule!r} is not one of linear, exp")
        if w_kd_end is not None and schedule == "exp" and not (w_kd > 0 and w_kd_end > 0):
            raise ValueError(f"an exp schedule needs w_kd > 0 and w_kd_end > 0 (got {w_kd} -> {w_kd_end})")
        self.w_task, self.w_kd = float(w_task), float(w_kd)
        self.w_kd_end = None if w_kd_end is None else float(w_kd_end)
        self.schedule = schedule
        self.progress = 0.0

    def kd_weight(self) -> float:
        """``w_kd(p)`` at the current ``progress`` (clipped to [0, 1])."""
        if self.w_kd_end is None:
            return self.w_kd
        p = min(max(float(self.progress), 0.0), 1.0)
        if self.schedule == "exp":
            return self.w_kd * (self.w_kd_end / self.w_kd) ** p
        return self.w_kd + (self.w_kd_end - self.w_kd) * p

    def __call__(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lt = _loss(losses, "task")
        w_kd = self.kd_weight()
        total = self.w_task * lt if self.w_task else torch.zeros_like(lt)
        if w_kd:
            total = total + w_kd * _loss(losses, "kd")
        return total, {"w_task": _w(self.w_task, lt), "w_kd": _w(w_kd, lt)}


class NoKDBalancer:
    """``total = L_t``; ``w_kd = 0`` (``losses["kd"]`` is optional and ignored)."""

    def __call__(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lt = _loss(losses, "task")
        return lt, {"w_task": _w(1.0, lt), "w_kd": _w(0.0, lt)}


class GoRBalancer:
    """GoR with learnable ``params.s_task``, ``params.s_kd`` (from :func:`make_gor_params`).

    Args:
        params: the module holding the scalars (it must be in the optimizer, without weight decay).
        form: ``"gor"`` (log-variance form), ``"gor_norm"`` (same scalars, weights rescaled so the weighted sum
            equals ``L_t + L_k`` in value), ``"gor_grad"`` (the log-variance game on the two losses' gradient norms,
            ``losses["gnorm_task"]`` / ``losses["gnorm_kd"]``) or ``"gor_lookahead"`` (``gor_grad`` with gradient
            shares in the ratio ``losses["xfer_ratio"]`` of the terms' transfer to another batch's task loss). See the
            module docstring for the formulas.
    """

    FORMS = ("gor", "gor_norm", "gor_grad", "gor_lookahead")

    def __init__(self, params: nn.Module, form: str = "gor"):
        if form not in self.FORMS:
            raise ValueError(f"GoR form {form!r} is not one of {', '.join(self.FORMS)}")
        for name in ("s_task", "s_kd"):
            if not isinstance(getattr(params, name, None), nn.Parameter):
                raise ValueError(f"GoR params lack the Parameter '{name}'; build them with make_gor_params()")
        self.params, self.form = params, form

    def __call__(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lt, lk = _loss(losses, "task"), _loss(losses, "kd")
        s_t, s_k = self.params.s_task.float(), self.params.s_kd.float()
        w_hat_t, w_hat_k = torch.exp(-s_t), torch.exp(-s_k)
        if self.form == "gor":
            total = w_hat_t * lt + w_hat_k * lk + s_t + s_k
            return total, {"w_task": w_hat_t.detach(), "w_kd": w_hat_k.detach()}
        if self.form in ("gor_grad", "gor_lookahead"):
            w_t, w_k = w_hat_t.detach(), w_hat_k.detach()
            total = w_t * lt + w_k * lk
            if "gnorm_task" in losses and "gnorm_kd" in losses:
                n_t, n_k = _loss(losses, "gnorm_task").detach().float(), _loss(losses, "gnorm_kd").detach().float()
                n_bar = (n_t + n_k) / 2
                # target gradient shares q_t, q_k (sum 2): equal for gor_grad, in the transfer ratio a for lookahead
                a = _loss(losses, "xfer_ratio").detach().float() if self.form == "gor_lookahead" else 1.0
                q_t, q_k = 2 / (1 + a), 2 * a / (1 + a)
                obj = (w_hat_t * n_t / q_t + w_hat_k * n_k / q_k) / n_bar.clamp_min(torch.finfo(torch.float32).tiny)
                obj = obj + s_t + s_k
                # no gradient at all (n_bar = 0): the scalars stay put (torch.where, not an if: no host sync per step)
                total = total + torch.where(n_bar > 0, obj - obj.detach(), 0.0)
            return total, {"w_task": w_t, "w_kd": w_k}
        # gor_norm
        lt_d, lk_d = lt.detach().float(), lk.detach().float()
        obj = w_hat_t * lt_d + w_hat_k * lk_d + s_t + s_k
        with torch.no_grad():
            denom = w_hat_t * lt_d + w_hat_k * lk_d
            c = torch.where(denom > 0, (lt_d + lk_d) / denom.clamp_min(torch.finfo(torch.float32).tiny), 1.0)
            w_t, w_k = c * w_hat_t, c * w_hat_k
        total = w_t * lt + w_k * lk + (obj - obj.detach())
        return total, {"w_task": w_t.detach(), "w_kd": w_k.detach()}


def make_balancer(cfg: BalanceCfg | None = None, params: nn.Module | None = None) -> Balancer:
    """The balancer for ``gor.balance``: ``fixed`` | ``gor`` | ``gor_norm`` | ``gor_grad`` | ``gor_lookahead`` |
    ``none``.

    For the GoR forms, ``params`` are the model's scalars (``model.kd.gor``); None creates fresh ones from
    ``cfg.w_task`` / ``cfg.w_kd`` (reachable as ``balancer.params``; they must then be registered for optimization).
    """
    cfg = cfg if cfg is not None else BalanceCfg()
    if cfg.method == "fixed":
        return FixedBalancer(cfg.w_task, cfg.w_kd, cfg.w_kd_end, cfg.schedule)
    if cfg.method == "none":
        return NoKDBalancer()
    if cfg.method in GoRBalancer.FORMS:
        return GoRBalancer(params if params is not None else make_gor_params(cfg.w_task, cfg.w_kd), form=cfg.method)
    raise ValueError(f"gor.balance.method={cfg.method!r} is not one of fixed, {', '.join(GoRBalancer.FORMS)}, none")
