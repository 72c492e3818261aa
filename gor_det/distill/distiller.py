"""The Distiller: combines the capture, adapters and losses into the KD terms of one batch.

For a student and one or more frozen teachers (all :class:`HeadOutputs` of the same images):

* ``kd_feat = cfg.feat * mean_teachers mean_levels F(adapter[t][l](s_feat[l]), t_feat[l])`` with ``F`` =
  :func:`cwd_loss` (``feat_loss: cwd``, temperature ``feat_tau``) or :func:`score_weighted_mse_loss` (``feat_loss:
  mse``; location weight = the teacher's confidence at the anchor of that location: anchors are P3, P4, P5
  concatenated, each row-major ``h * W + w``). Feature KD is always per teacher (each has its own adapters), in both
  ensemble modes.
* ``kd_cls = cfg.cls * cls_kd_loss(s_scores, t_scores, T=cls_T, weight)``;
* ``kd_box = cfg.box * dfl_kd_loss(s_boxes, t_boxes, reg_max, T=box_T, weight)`` when student and teacher have the same
  ``reg_max > 1``, else ``ltrb_kd_loss`` (L1 on decoded distances);
* ``weight`` = :func:`teacher_confidence` (max class probability per anchor) when ``cfg.conf_weight``, else uniform.
* Ensembles: ``mean_loss`` averages the per-teacher head losses; ``mean_target`` computes one head loss against the
  averaged teacher prediction (mean Bernoulli probabilities for classes; mean bin distributions for boxes when all
  ``reg_max`` agree with the student's, else mean decoded distances), weighted by the averaged prediction's
  confidence. Every mean over teachers (feature losses included) is weighted by the teachers' shares ``w_i``
  (``gor.teachers[i].weight`` normalised to sum 1; equal by default). ``gt_weighted`` is ``mean_target`` with
  per-anchor shares in the head losses: each teacher's share at an anchor is scaled by its agreement with the ground
  truth there (:mod:`.agreement`; needs the batch's labels, ``gt``); feature KD keeps the fixed shares.
* ``kd = kd_feat + kd_cls + kd_box``. A term whose weight is 0 is not computed and is reported as a float32 zero, so
  the keys never change (Ultralytics fixes its loss names on the first batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gor_det.config import CHOICES, DistillCfg, check_choices

from .agreement import GroundTruth, agreement_shares
from .capture import HeadOutputs
from .losses import (
    cls_kd_loss,
    cwd_loss,
    dfl_kd_loss,
    ensemble_weights,
    ltrb_kd_loss,
    score_weighted_mse_loss,
    teacher_confidence,
)

__all__ = ["ENSEMBLES", "KD_KEYS", "Distiller", "anchor_weight_to_levels"]

KD_KEYS = ("kd_feat", "kd_cls", "kd_box")  # the weighted KD terms; their sum is "kd"
ENSEMBLES = CHOICES["distill.ensemble"]


def anchor_weight_to_levels(weight: torch.Tensor, level_sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Split a per-anchor map ``(B, A)`` into per-level maps ``(B, H_l, W_l)`` (anchors: levels concatenated,
    row-major inside a level, as Ultralytics' Detect head flattens them)."""
    sizes = [int(h) * int(w) for h, w in level_sizes]
    if sum(sizes) != weight.shape[1]:
        raise ValueError(f"{weight.shape[1]} anchors cannot be split into levels {list(level_sizes)}")
    parts = weight.split(sizes, dim=1)
    return [p.reshape(weight.shape[0], int(h), int(w)) for p, (h, w) in zip(parts, level_sizes)]


class Distiller:
    """Compute the weighted KD terms of one batch (see the module docstring for the formulas).

    ``Distiller(cfg)(student, teachers, adapters) -> {"kd_feat", "kd_cls", "kd_box", "kd"}`` (float32 scalars, each
    already multiplied by its ``cfg`` weight; ``kd`` is their sum).

    Args:
        cfg: the ``gor.distill`` section (:class:`gor_det.config.DistillCfg`); None: the defaults.
    """

    def __init__(self, cfg: DistillCfg | None = None):
        self.cfg = cfg if cfg is not None else DistillCfg()
        check_choices(self.cfg, "gor.distill")

    # ----------------------------------------------------------------------------------------------------------------
    def check(self, student: HeadOutputs, teachers: Sequence[HeadOutputs], adapters: nn.ModuleList | None) -> None:
        """Raise ValueError when a teacher cannot be distilled into the student as given."""
        if not teachers:
            raise ValueError("Distiller: no teacher outputs given")
        s = student
        for i, t in enumerate(teachers):
            if t.batch_size != s.batch_size:
                raise ValueError(f"teacher {i} saw {t.batch_size} images, student {s.batch_size}: pass the same batch")
            if t.nc != s.nc:
                raise ValueError(
                    f"teacher {i} has {t.nc} classes, student has {s.nc}: map the teacher's class scores to the "
                    f"student's classes first (gor.teachers[{i}].names)"
                )
            if t.num_anchors != s.num_anchors or t.level_sizes != s.level_sizes:
                raise ValueError(
                    f"teacher {i} has {t.num_anchors} anchors (levels {t.level_sizes}), student has {s.num_anchors} "
                    f"(levels {s.level_sizes}): teachers must see the same images at the same size and use the same "
                    f"strides (P3-P5)"
                )
        if self.cfg.feat:
            if adapters is None or len(adapters) != len(teachers):
                n = "no" if adapters is None else len(adapters)
                raise ValueError(f"feature KD needs one adapter list per teacher: {len(teachers)} teachers, {n} lists")
            for i, (t, ad) in enumerate(zip(teachers, adapters)):
                if len(ad) != len(s.feats):
                    raise ValueError(f"teacher {i} has {len(ad)} adapters, the student has {len(s.feats)} levels")
                for level, (conv, sf, tf) in enumerate(zip(ad, s.feats, t.feats)):
                    if conv.in_channels != sf.shape[1] or conv.out_channels != tf.shape[1]:
                        raise ValueError(
                            f"adapter [{i}][{level}] maps {conv.in_channels}->{conv.out_channels} channels, but the "
                            f"student level has {sf.shape[1]} and teacher {i} has {tf.shape[1]}"
                        )

    # ----------------------------------------------------------------------------------------------------------------
    def feat_loss(self, student: HeadOutputs, teacher: HeadOutputs, adapters: nn.ModuleList) -> torch.Tensor:
        """Unweighted feature KD for one teacher: mean over levels."""
        cfg = self.cfg
        weights = None
        if cfg.feat_loss == "mse":
            weights = anchor_weight_to_levels(teacher_confidence(teacher.scores), teacher.level_sizes)
        losses = []
        for level, (sf, tf) in enumerate(zip(student.feats, teacher.feats)):
            s_adapted = adapters[level](sf.to(adapters[level].weight.dtype))
            if cfg.feat_loss == "cwd":
                losses.append(cwd_loss(s_adapted, tf, tau=cfg.feat_tau))
            else:
                losses.append(score_weighted_mse_loss(s_adapted, tf, weights[level]))
        return torch.stack(losses).mean()

    def _weight(self, scores, shares=None) -> torch.Tensor | None:
        return teacher_confidence(scores, shares) if self.cfg.conf_weight else None

    def box_loss(self, student: HeadOutputs, teachers: Sequence[HeadOutputs], weight, shares=None) -> torch.Tensor:
        """Unweighted box KD against one teacher or the (``shares``-weighted) averaged target of several."""
        regs = [t.reg_max for t in teachers]
        boxes = [t.boxes for t in teachers]
        if student.reg_max > 1 and all(r == student.reg_max for r in regs):
            return dfl_kd_loss(student.boxes, boxes, student.reg_max, T=self.cfg.box_T, weight=weight,
                               teacher_weights=shares)
        return ltrb_kd_loss(student.boxes, student.reg_max, boxes, regs, weight=weight, teacher_weights=shares)

    # ----------------------------------------------------------------------------------------------------------------
    def __call__(
        self,
        student: HeadOutputs,
        teachers: Sequence[HeadOutputs],
        adapters: nn.ModuleList | None,
        teacher_weights: Sequence[float] | None = None,
        gt: GroundTruth | None = None,
        feat_weights: Sequence[float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """KD terms for one batch.

        Args:
            student: the student's head outputs (with graph).
            teachers: one :class:`HeadOutputs` per teacher (computed under ``torch.no_grad``; detached here anyway),
                class scores already mapped to the student's classes.
            adapters: ``adapters[teacher][level]`` from :func:`build_adapters` (may be None when ``cfg.feat == 0``).
            teacher_weights: one positive weight per teacher (``gor.teachers[i].weight``), normalised to the shares
                of every mean over teachers; None: equal shares.
            gt: the batch's labels; needed by ``ensemble: gt_weighted`` with several teachers (ignored otherwise).
            feat_weights: the teachers' weights in feature KD alone (``gor.teachers[i].feat_weight``; >= 0, one
                positive; a teacher at 0 is left out of feature KD); None: ``teacher_weights``.

        Returns:
            ``{"kd_feat", "kd_cls", "kd_box", "kd"}``: float32 scalars, each multiplied by its weight.
        """
        cfg = self.cfg
        teachers = [t.detach() for t in teachers]
        self.check(student, teachers, adapters)
        shares = ensemble_weights(len(teachers), teacher_weights)

        def mean_over_teachers(values: list[torch.Tensor]) -> torch.Tensor:
            return sum(w * v for w, v in zip(shares, values))

        out = {k: student.scores.new_zeros((), dtype=torch.float32) for k in ("kd_feat", "kd_cls", "kd_box")}

        if cfg.feat:
            f_shares = shares if feat_weights is None else ensemble_weights(len(teachers), feat_weights, allow_zero=True)
            out["kd_feat"] = cfg.feat * sum(w * self.feat_loss(student, t, ad)
                                            for w, t, ad in zip(f_shares, teachers, adapters) if w > 0)

        if cfg.cls or cfg.box:
            if cfg.ensemble in ("mean_target", "gt_weighted") and len(teachers) > 1:
                t_scores = [t.scores for t in teachers]
                head_shares = shares
                if cfg.ensemble == "gt_weighted":
                    if gt is None:
                        raise ValueError("distill.ensemble=gt_weighted needs the batch's ground truth (gt=...)")
                    head_shares = agreement_shares(teachers, gt, shares)  # (n, B, A)
                weight = self._weight(t_scores, head_shares)
                if cfg.cls:
                    out["kd_cls"] = cfg.cls * cls_kd_loss(student.scores, t_scores, T=cfg.cls_T, weight=weight,
                                                          teacher_weights=head_shares)
                if cfg.box:
                    out["kd_box"] = cfg.box * self.box_loss(student, teachers, weight, head_shares)
            else:  # mean_loss (or a single teacher, where both modes agree)
                cls_l, box_l = [], []
                for t in teachers:
                    weight = self._weight(t.scores)
                    if cfg.cls:
                        cls_l.append(cls_kd_loss(student.scores, t.scores, T=cfg.cls_T, weight=weight))
                    if cfg.box:
                        box_l.append(self.box_loss(student, [t], weight))
                if cfg.cls:
                    out["kd_cls"] = cfg.cls * mean_over_teachers(cls_l)
                if cfg.box:
                    out["kd_box"] = cfg.box * mean_over_teachers(box_l)

        out["kd"] = out["kd_feat"] + out["kd_cls"] + out["kd_box"]
        return out
