"""Distillation losses. Every loss is ``loss(student, teacher, ...)`` and returns a float32 scalar.

Conventions shared by all losses:

* **Order**: student first, teacher second. The teacher is always ``.detach()``-ed inside, so no gradient ever reaches
  a teacher tensor even if it requires grad; the student receives the gradient.
* **Precision**: inputs are cast to float32 inside (teachers may run in fp16 under AMP); log-probabilities come from
  ``log_softmax`` / ``logsigmoid``, never ``log(softmax)``, so no term overflows or takes ``log(0)``.
* **Per-image scale**: every loss is a *mean* (over images, and over channels, anchors or locations as stated), never a
  sum over the batch, so its value does not grow with the batch size, like the per-image ``box/cls/dfl`` values of
  Ultralytics' ``v8DetectionLoss``.
* **Per-anchor weights** ``weight`` ``(B, A)`` (or ``(B, H, W)`` for features) are detached; the weighted mean is
  ``sum(weight * per_anchor) / sum(weight)`` (``sum(weight)`` clamped at 1e-12, so all-zero weights give 0).
  ``weight=None`` is the plain mean over ``B * A``.
* **Ensembles**: ``cls_kd_loss``, ``dfl_kd_loss`` and ``ltrb_kd_loss`` accept a list of teacher tensors instead of one
  tensor; the target is then the teachers' *mean distribution* (mean Bernoulli probability per class, mean bin
  distribution per side, mean decoded distance), computed in log space (log-mean-exp) for stability. With
  ``teacher_weights`` (one positive number per teacher, normalised to sum 1) the mean is the weighted one; a tensor
  ``(n, B, A)`` of per-anchor shares (summing to 1 over the teachers) weights each anchor's mean on its own.

Layouts are Ultralytics 8.4's (see :mod:`gor_det.distill.capture`): class logits ``(B, nc, A)``, box logits
``(B, 4 * reg_max, A)`` viewed as ``(B, 4, reg_max, A)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "cls_kd_loss",
    "cwd_loss",
    "decode_ltrb",
    "dfl_kd_loss",
    "ensemble_weights",
    "ltrb_kd_loss",
    "score_weighted_mse_loss",
    "teacher_confidence",
    "weighted_mean",
]

_EPS = 1e-12

TensorOrList = torch.Tensor | Sequence[torch.Tensor]


def _as_list(t: TensorOrList) -> list[torch.Tensor]:
    out = [t] if isinstance(t, torch.Tensor) else list(t)
    if not out:
        raise ValueError("no teacher tensor given")
    return out


def _check_same(name: str, s: torch.Tensor, t: torch.Tensor) -> None:
    if s.shape != t.shape:
        raise ValueError(f"{name}: student {tuple(s.shape)} and teacher {tuple(t.shape)} shapes differ")


def ensemble_weights(n: int, teacher_weights: Sequence[float] | None = None, allow_zero: bool = False) -> list[float]:
    """The ``n`` teachers' shares in an ensemble: ``teacher_weights`` normalised to sum 1 (None: ``1 / n`` each).
    Raises ValueError for a wrong count or a weight that is not a positive finite number (``allow_zero``: finite and
    >= 0, one of them positive; a teacher at 0 is left out, as in feature KD with ``feat_weight: 0``)."""
    if teacher_weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in teacher_weights]
    if len(w) != n:
        raise ValueError(f"{len(w)} teacher weights for {n} teachers")
    if allow_zero:
        if not (all(math.isfinite(x) and x >= 0 for x in w) and any(x > 0 for x in w)):
            raise ValueError(f"teacher weights must be finite numbers >= 0, one of them positive, got {w}")
    elif not all(math.isfinite(x) and x > 0 for x in w):
        raise ValueError(f"teacher weights must be positive finite numbers, got {w}")
    total = sum(w)
    return [x / total for x in w]


Shares = list[float] | list[torch.Tensor]


def _shares(n: int, teacher_weights: Sequence[float] | torch.Tensor | None) -> Shares:
    """The teachers' shares: :func:`ensemble_weights` of ``teacher_weights`` (one number per teacher), or, for a tensor
    ``(n, B, A)`` of per-anchor shares (each anchor's column summing to 1, e.g. from
    :func:`gor_det.distill.agreement.agreement_shares`), its ``n`` detached float32 ``(B, A)`` slices."""
    if isinstance(teacher_weights, torch.Tensor):
        if teacher_weights.ndim != 3 or teacher_weights.shape[0] != n:
            raise ValueError(f"per-anchor teacher shares {tuple(teacher_weights.shape)} are not ({n}, B, A)")
        return list(teacher_weights.detach().float())
    return ensemble_weights(n, teacher_weights)


def _bcast(w: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """A share ``w`` (a number, or ``(B, A)`` per anchor) shaped to broadcast against ``x`` ``(B, ..., A)``."""
    if isinstance(w, torch.Tensor):
        return w.view(w.shape[0], *([1] * (x.ndim - 2)), w.shape[1])
    return w


def _times(w: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``w * x`` for a share ``w`` (a number or per anchor, see :func:`_bcast`)."""
    return _bcast(w, x) * x


def _log_mean_exp(logs: list[torch.Tensor], weights: Shares) -> torch.Tensor:
    """``log(sum_i weights[i] * exp(logs[i]))`` (weights sum to 1; numbers or per-anchor ``(B, A)`` tensors),
    elementwise: the log of a (weighted) mean of probabilities, stable."""
    if len(logs) == 1:
        return logs[0]
    # numbers enter as Python scalars: no host-to-device copy per call in the training step
    terms = [x + (_bcast(w.clamp_min(1e-30).log(), x) if isinstance(w, torch.Tensor) else math.log(w))
             for x, w in zip(logs, weights)]
    return torch.logsumexp(torch.stack(terms, 0), 0)


def weighted_mean(per: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``sum(weight * per) / sum(weight)`` (weight detached, sum clamped at 1e-12), or ``per.mean()`` without weight."""
    if weight is None:
        return per.mean()
    w = weight.detach().float()
    if w.shape != per.shape:
        raise ValueError(f"weight has shape {tuple(w.shape)}, expected {tuple(per.shape)}")
    return (per * w).sum() / w.sum().clamp_min(_EPS)


# --------------------------------------------------------------------------------------------------------------------
# Feature losses: (B, C, H, W)
# --------------------------------------------------------------------------------------------------------------------
def cwd_loss(s_feat: torch.Tensor, t_feat: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021), as in mmrazor's ``ChannelWiseDivergence``.

    For each image ``b`` and channel ``c`` the map is turned into a distribution over the ``H*W`` locations,
    ``P = softmax(x[b, c].flatten() / tau)``, and

        loss = tau^2 * mean_{b, c} KL(P_teacher[b, c] || P_student[b, c])
             = tau^2 / (B * C) * sum_{b, c, hw} P_t * (log P_t - log P_s)

    i.e. the KL is summed over locations and averaged over channels and images (mmrazor divides by ``N * C`` too).

    Args:
        s_feat: student map ``(B, C, H, W)``, already adapted to the teacher's channels.
        t_feat: teacher map ``(B, C, H, W)``.
        tau: temperature.
    """
    _check_same("cwd_loss", s_feat, t_feat)
    if s_feat.ndim != 4:
        raise ValueError(f"cwd_loss expects (B, C, H, W) maps, got {tuple(s_feat.shape)}")
    log_ps = F.log_softmax(s_feat.float().flatten(2) / tau, dim=-1)
    log_pt = F.log_softmax(t_feat.detach().float().flatten(2) / tau, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # (B, C)
    return kl.mean() * (tau * tau)


def score_weighted_mse_loss(
    s_feat: torch.Tensor, t_feat: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Teacher-score-weighted feature MSE.

        per[b, h, w] = mean_c (s[b, c, h, w] - t[b, c, h, w])^2
        loss = sum_{b,h,w} weight * per / sum_{b,h,w} weight

    Args:
        s_feat: student map ``(B, C, H, W)``, already adapted to the teacher's channels.
        t_feat: teacher map ``(B, C, H, W)``.
        weight: ``(B, H, W)``, typically the teacher's confidence at each location (see :func:`teacher_confidence`);
            None: uniform (plain MSE).
    """
    _check_same("score_weighted_mse_loss", s_feat, t_feat)
    per = (s_feat.float() - t_feat.detach().float()).pow(2).mean(1)  # (B, H, W)
    return weighted_mean(per, weight)


# --------------------------------------------------------------------------------------------------------------------
# Head losses: scores (B, nc, A), boxes (B, 4 * reg_max, A)
# --------------------------------------------------------------------------------------------------------------------
def cls_kd_loss(
    s_logits: torch.Tensor,
    t_logits: TensorOrList,
    T: float = 1.0,
    weight: torch.Tensor | None = None,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-class binary KL at temperature ``T`` (YOLO classes are independent sigmoids, not a softmax).

    With ``p = sigmoid(t / T)`` (teacher) and ``q = sigmoid(s / T)`` (student), per anchor

        kl[b, a] = T^2 * sum_c [ p log(p / q) + (1 - p) log((1 - p) / (1 - q)) ]   (>= 0, = 0 iff p == q)
        loss = sum_{b,a} weight * kl / sum weight     (or mean over B * A without weight)

    i.e. summed over classes (as Ultralytics' BCE is), weighted-averaged over anchors and images. Computed with
    ``logsigmoid`` only: ``log p = logsigmoid(t/T)``, ``log(1-p) = logsigmoid(-t/T)``.

    Args:
        s_logits: student class logits ``(B, nc, A)``.
        t_logits: teacher logits ``(B, nc, A)``, or a list of them: the target is then the mean probability
            ``p = mean_i sigmoid(t_i / T)`` (KL against the averaged Bernoulli).
        T: temperature.
        weight: per-anchor weight ``(B, A)`` or None.
        teacher_weights: the teachers' shares in the mean (see :func:`ensemble_weights`); None: equal.
    """
    teachers = _as_list(t_logits)
    tw = _shares(len(teachers), teacher_weights)
    for t in teachers:
        _check_same("cls_kd_loss", s_logits, t)
    s = s_logits.float() / T
    log_q, log_1mq = F.logsigmoid(s), F.logsigmoid(-s)
    ts = [t.detach().float() / T for t in teachers]
    log_p = _log_mean_exp([F.logsigmoid(t) for t in ts], tw)
    log_1mp = _log_mean_exp([F.logsigmoid(-t) for t in ts], tw)
    kl = log_p.exp() * (log_p - log_q) + log_1mp.exp() * (log_1mp - log_1mq)  # (B, nc, A)
    return weighted_mean(kl.sum(1), weight) * (T * T)


def _check_box(name: str, box: torch.Tensor, reg_max: int) -> None:
    if box.ndim != 3 or box.shape[1] != 4 * reg_max:
        raise ValueError(f"{name}: box tensor {tuple(box.shape)} is not (B, 4 * reg_max, A) with reg_max={reg_max}")


def dfl_kd_loss(
    s_box: torch.Tensor,
    t_box: TensorOrList,
    reg_max: int,
    T: float = 1.0,
    weight: torch.Tensor | None = None,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Localization distillation (Zheng et al., CVPR 2022): KL between the DFL bin distributions of each box side.

    ``box.view(B, 4, reg_max, A)`` (Ultralytics' DFL layout) gives, per side ``k`` in ``l, t, r, b``,
    ``P = softmax(box[:, k, :, a] / T)`` over the ``reg_max`` bins, and

        kl[b, a] = T^2 * mean_k sum_bins P_t (log P_t - log P_s)
        loss = sum_{b,a} weight * kl / sum weight     (or mean over B * A without weight)

    i.e. the KL summed over bins, averaged over the 4 sides (as Ultralytics' DFL loss is) and weighted-averaged over
    anchors and images.

    Args:
        s_box: student box logits ``(B, 4 * reg_max, A)``.
        t_box: teacher box logits of the same shape, or a list of them (target = mean bin distribution).
        reg_max: bins per side, shared by student and teachers (> 1; for reg_max 1 or a mismatch use
            :func:`ltrb_kd_loss`).
        T: temperature.
        weight: per-anchor weight ``(B, A)`` or None.
        teacher_weights: the teachers' shares in the mean bin distribution (:func:`ensemble_weights`); None: equal.
    """
    reg_max = int(reg_max)
    if reg_max < 2:
        raise ValueError(f"dfl_kd_loss needs reg_max > 1 (got {reg_max}); use ltrb_kd_loss for raw ltrb heads")
    teachers = _as_list(t_box)
    tw = _shares(len(teachers), teacher_weights)
    _check_box("dfl_kd_loss student", s_box, reg_max)
    for t in teachers:
        _check_same("dfl_kd_loss", s_box, t)
    b, _, a = s_box.shape
    log_ps = F.log_softmax(s_box.float().view(b, 4, reg_max, a) / T, dim=2)
    log_pt = _log_mean_exp([F.log_softmax(t.detach().float().view(b, 4, reg_max, a) / T, dim=2) for t in teachers], tw)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(2).mean(1)  # (B, A)
    return weighted_mean(kl, weight) * (T * T)


def decode_ltrb(box: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Expected ltrb distances ``(B, 4, A)`` in grid units (float32), as Ultralytics decodes them.

    ``reg_max > 1``: ``softmax(box.view(B, 4, reg_max, A), bins) @ arange(reg_max)`` (the ``DFL`` module);
    ``reg_max == 1``: the raw values (YOLO26 regresses distances directly).
    """
    reg_max = int(reg_max)
    _check_box("decode_ltrb", box, reg_max)
    box = box.float()
    if reg_max == 1:
        return box
    b, _, a = box.shape
    proj = torch.arange(reg_max, dtype=torch.float32, device=box.device)
    return torch.einsum("bkra,r->bka", box.view(b, 4, reg_max, a).softmax(2), proj)


def ltrb_kd_loss(
    s_box: torch.Tensor,
    s_reg_max: int,
    t_box: TensorOrList,
    t_reg_max: int | Sequence[int],
    weight: torch.Tensor | None = None,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """L1 between decoded ltrb distances, for heads whose ``reg_max`` differ (e.g. a YOLO26 teacher, reg_max=1).

    ``d = decode_ltrb(box, reg_max)`` ``(B, 4, A)`` for student and teacher(s); the teacher target is the mean of the
    teachers' decoded distances, clamped to ``[0, s_reg_max - 1]`` when the student uses DFL (``s_reg_max > 1``): the
    student cannot express other values, so the clamp only removes an unreachable constant from the value (the L1
    gradient is unchanged). Then

        per[b, a] = mean_k |d_s[b, k, a] - d_t[b, k, a]|        (k over the 4 sides, grid units)
        loss = sum_{b,a} weight * per / sum weight     (or mean over B * A without weight)

    Args:
        s_box: student box output ``(B, 4 * s_reg_max, A)``.
        s_reg_max: student bins per side.
        t_box: teacher box output ``(B, 4 * t_reg_max, A)``, or a list of them.
        t_reg_max: teacher bins per side, or one per teacher.
        weight: per-anchor weight ``(B, A)`` or None.
        teacher_weights: the teachers' shares in the mean distance (:func:`ensemble_weights`); None: equal.
    """
    teachers = _as_list(t_box)
    t_regs = [int(t_reg_max)] * len(teachers) if isinstance(t_reg_max, int) else [int(r) for r in t_reg_max]
    if len(t_regs) != len(teachers):
        raise ValueError(f"ltrb_kd_loss: {len(teachers)} teacher boxes but {len(t_regs)} reg_max values")
    d_s = decode_ltrb(s_box, s_reg_max)
    d_t = [decode_ltrb(t.detach(), r) for t, r in zip(teachers, t_regs)]
    for d in d_t:
        _check_same("ltrb_kd_loss (decoded)", d_s, d)
    tw = _shares(len(d_t), teacher_weights)
    target = d_t[0] if len(d_t) == 1 else sum(_times(w, d) for w, d in zip(tw, d_t))
    if int(s_reg_max) > 1:
        target = target.clamp(0.0, float(int(s_reg_max) - 1))
    per = (d_s - target).abs().mean(1)  # (B, A)
    return weighted_mean(per, weight)


def teacher_confidence(t_scores: TensorOrList, teacher_weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Per-anchor teacher confidence ``(B, A)``: the max class probability ``max_c sigmoid(t[b, c, a])`` (float32,
    detached). For a list of teachers: ``max_c sum_i w_i sigmoid(t_i)`` (the confidence of the averaged prediction;
    ``w`` from :func:`ensemble_weights`, equal by default)."""
    teachers = [t.detach().float() for t in _as_list(t_scores)]
    if len(teachers) == 1:
        return teachers[0].amax(1).sigmoid()
    tw = _shares(len(teachers), teacher_weights)
    return sum(_times(w, t.sigmoid()) for w, t in zip(tw, teachers)).amax(1)
