"""How well each teacher agrees with the ground truth, per anchor: the per-anchor shares of ``ensemble: gt_weighted``.

An ensemble distilled against one averaged target (``mean_target``) inherits each teacher's mistakes in proportion to
its fixed share. During training the labels are at hand, so the target can lean, anchor by anchor, on the teacher
that is right there (the idea of CA-MKD, Zhang et al. 2022, "Confidence-aware multi-teacher knowledge distillation",
which weights teachers per sample by their cross-entropy with the label; here per anchor, in detection terms):

* each anchor is matched to the ground-truth box that contains its centre (the smallest one when several do, the
  FCOS rule; Ultralytics' assigner uses the same "centre inside the box" candidates), else it is background;
* teacher ``i``'s agreement at an anchor ``q_i`` is, on a matched anchor, ``p_i(c_g) * IoU(box_i, box_g)`` (its
  probability of the box's class times the IoU of its decoded box with the box: the quality TOOD / VarifocalNet score
  a prediction by), and on a background anchor ``1 - max_c p_i(c)`` (its probability of "no object");
* the per-anchor shares are ``w_i[b, a] = s_i (q_i + eps) / sum_j s_j (q_j + eps)`` with ``s_i`` the teachers' fixed
  shares (``gor.teachers[i].weight``, normalised): equal agreement keeps the fixed shares, a teacher that is right
  where the other is wrong takes over. ``eps`` (1e-3) keeps the shares defined where every teacher scores 0.

Pure torch (no Ultralytics import); layouts as in :mod:`gor_det.distill.capture`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .capture import HeadOutputs
from .losses import decode_ltrb, ensemble_weights

__all__ = ["GroundTruth", "agreement_shares", "anchor_centers", "match_anchors", "teacher_agreement"]

_EPS = 1e-3  # added to every agreement: shares stay defined (= the fixed shares) where all teachers score 0


@dataclass
class GroundTruth:
    """The labelled boxes of a batch.

    Attributes:
        batch_idx: ``(M,)`` image index of each box.
        cls: ``(M,)`` class index (long).
        boxes: ``(M, 4)`` ``x1, y1, x2, y2`` in pixels of the network input.
        img_hw: ``(H, W)`` of the network input (pixels).
    """

    batch_idx: torch.Tensor
    cls: torch.Tensor
    boxes: torch.Tensor
    img_hw: tuple[int, int]

    @classmethod
    def from_yolo_batch(cls, batch: dict) -> GroundTruth:
        """From an Ultralytics detection batch: ``img (B, 3, H, W)``, ``batch_idx (M,)``, ``cls (M, 1)``, ``bboxes
        (M, 4)`` normalised ``x_c, y_c, w, h``."""
        h, w = (int(v) for v in batch["img"].shape[-2:])
        xc, yc, bw, bh = batch["bboxes"].float().unbind(1)  # scaled by Python numbers: no host-to-device copy
        xyxy = torch.stack([(xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h], 1)
        return cls(batch["batch_idx"].long().view(-1), batch["cls"].long().view(-1), xyxy, (h, w))


def anchor_centers(level_sizes: Sequence[tuple[int, int]], img_hw: tuple[int, int],
                   device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres ``(A, 2)`` (x, y in pixels) and strides ``(A,)``, in the Detect head's anchor order (levels
    concatenated, row-major), as Ultralytics' ``make_anchors`` places them: ``((w + 0.5) * stride, (h + 0.5) *
    stride)`` with ``stride = H_img / H_level``."""
    centers, strides = [], []
    for h, w in level_sizes:
        stride = img_hw[0] / h
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        centers.append(torch.stack([(xs.reshape(-1) + 0.5) * stride, (ys.reshape(-1) + 0.5) * stride], 1))
        strides.append(torch.full((h * w,), stride, device=device, dtype=torch.float32))
    return torch.cat(centers), torch.cat(strides)


def match_anchors(gt: GroundTruth, centers: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Index into ``gt`` of the box each anchor is matched to, ``(B, A)`` long, -1 for background: the smallest box
    whose interior contains the anchor centre."""
    a = centers.shape[0]
    match = torch.full((batch_size, a), -1, dtype=torch.long, device=centers.device)
    if gt.boxes.shape[0] == 0:
        return match
    boxes = gt.boxes.to(centers.device)
    x, y = centers[:, 0:1], centers[:, 1:2]  # (A, 1)
    inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])  # (A, M)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand(a, -1)
    idx = gt.batch_idx.to(centers.device)
    for b in range(batch_size):  # per image: its boxes only (masks, not indices: no host sync on GPU)
        ins = inside & (idx == b)
        best = area.masked_fill(~ins, float("inf")).argmin(1)
        match[b] = torch.where(ins.any(1), best, match.new_tensor(-1))
    return match


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``(..., 4)`` xyxy, elementwise."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = lambda z: (z[..., 2:] - z[..., :2]).clamp_min(0).prod(-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp_min(1e-9)


def teacher_agreement(teacher: HeadOutputs, gt: GroundTruth, match: torch.Tensor, centers: torch.Tensor,
                      strides: torch.Tensor) -> torch.Tensor:
    """Teacher's agreement with the ground truth per anchor ``(B, A)`` in [0, 1] (float32, detached): on an anchor
    matched to box ``g``, ``sigmoid(score[c_g]) * IoU(decoded box, box g)``; on background ``1 - max_c sigmoid``."""
    probs = teacher.scores.detach().float().sigmoid()  # (B, nc, A)
    fg = match >= 0
    g = match.clamp_min(0)
    cls = gt.cls.to(match.device)[g] if gt.cls.numel() else torch.zeros_like(g)
    p_cls = probs.gather(1, cls.unsqueeze(1)).squeeze(1)  # (B, A)
    d = decode_ltrb(teacher.boxes.detach(), teacher.reg_max) * strides  # (B, 4, A) pixels
    box = torch.cat([centers.t() - d[:, :2], centers.t() + d[:, 2:]], 1).permute(0, 2, 1)  # (B, A, 4)
    gt_box = gt.boxes.to(box.device)[g] if gt.boxes.numel() else torch.zeros_like(box)
    q_fg = p_cls * _iou(box, gt_box)
    q_bg = 1.0 - probs.amax(1)
    return torch.where(fg, q_fg, q_bg)


def agreement_shares(teachers: Sequence[HeadOutputs], gt: GroundTruth,
                     teacher_weights: Sequence[float] | None = None) -> torch.Tensor:
    """Per-anchor teacher shares ``(n, B, A)`` (sum 1 over teachers; float32, detached):
    ``w_i = s_i (q_i + eps) / sum_j s_j (q_j + eps)``, ``q`` = :func:`teacher_agreement`, ``s`` = the fixed shares
    (:func:`ensemble_weights` of ``teacher_weights``)."""
    t0 = teachers[0]
    shares = ensemble_weights(len(teachers), teacher_weights)
    centers, strides = anchor_centers(t0.level_sizes, gt.img_hw, t0.scores.device)
    if centers.shape[0] != t0.num_anchors:
        raise ValueError(f"{t0.num_anchors} anchors do not match levels {t0.level_sizes}")
    match = match_anchors(gt, centers, t0.batch_size)
    w = torch.stack([s * (teacher_agreement(t, gt, match, centers, strides) + _EPS) for s, t in zip(shares, teachers)])
    return w / w.sum(0, keepdim=True)
