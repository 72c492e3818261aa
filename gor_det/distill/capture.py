"""Capturing what a detector computes: the Detect head's raw outputs, and forward hooks for other layers.

Pure torch (no Ultralytics import). The layouts are those of Ultralytics 8.4's ``Detect.forward_head``:

* ``feats``: the list of neck maps fed to the head, P3..P5, each ``(B, C_l, H_l, W_l)``;
* ``scores``: class logits ``(B, nc, A)``, with ``A = sum_l H_l * W_l`` anchors, concatenated level by level
  (P3 first) and row-major (``h * W_l + w``) inside a level, since the head does ``x.view(B, nc, -1)``;
* ``boxes``: box-regression logits ``(B, 4 * reg_max, A)``, read as ``view(B, 4, reg_max, A)`` (side-major: the
  ``reg_max`` bins of side ``l, t, r, b`` are contiguous, exactly as Ultralytics' ``DFL`` module and
  ``v8DetectionLoss.bbox_decode`` read them). With ``reg_max == 1`` (YOLO26) ``boxes`` holds the raw ltrb distances in
  grid units (no DFL).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["FeatureCapture", "HeadOutputs", "head_outputs"]


@dataclass
class HeadOutputs:
    """The raw outputs of one YOLO Detect head (see the module docstring for the layouts).

    Attributes:
        feats: neck maps feeding the head, P3..P5, each ``(B, C_l, H_l, W_l)``.
        scores: class logits ``(B, nc, A)`` (before the sigmoid).
        boxes: DFL logits ``(B, 4 * reg_max, A)``, or raw ltrb distances ``(B, 4, A)`` when ``reg_max == 1``.
        reg_max: number of DFL bins per box side.
    """

    feats: list[torch.Tensor]
    scores: torch.Tensor
    boxes: torch.Tensor
    reg_max: int

    @property
    def nc(self) -> int:
        return int(self.scores.shape[1])

    @property
    def num_anchors(self) -> int:
        return int(self.scores.shape[2])

    @property
    def batch_size(self) -> int:
        return int(self.scores.shape[0])

    @property
    def channels(self) -> list[int]:
        """Channel count of each feature level (what ``build_adapters`` needs)."""
        return [int(f.shape[1]) for f in self.feats]

    @property
    def level_sizes(self) -> list[tuple[int, int]]:
        """``(H_l, W_l)`` of each level."""
        return [(int(f.shape[2]), int(f.shape[3])) for f in self.feats]

    def select(self, rows: slice) -> HeadOutputs:
        """The outputs of the images ``rows`` of the batch (views, graph kept)."""
        return HeadOutputs([f[rows] for f in self.feats], self.scores[rows], self.boxes[rows], self.reg_max)

    def detach(self) -> HeadOutputs:
        """A copy whose tensors are detached from the graph (for teachers)."""
        return HeadOutputs([f.detach() for f in self.feats], self.scores.detach(), self.boxes.detach(), self.reg_max)


def _raw_dict(preds) -> Mapping:
    """Find the raw ``{"boxes","scores","feats"}`` dict inside any Detect return value."""
    if isinstance(preds, (tuple, list)):
        dicts = [p for p in preds if isinstance(p, Mapping)]
        if not dicts:
            raise ValueError(
                "head_outputs: got a tuple/list without the raw prediction dict; the Detect head was probably in "
                "export mode (it then returns only decoded boxes). Run the model with head.export = False."
            )
        preds = dicts[-1]  # eval mode: (decoded, raw dict)
    if not isinstance(preds, Mapping):
        raise TypeError(
            f"head_outputs: expected an Ultralytics Detect output (dict, or (decoded, dict) tuple), got {type(preds)}"
        )
    if "one2many" in preds:  # end-to-end heads (YOLOv10 / YOLO26): distil the one-to-many branch
        preds = preds["one2many"]
    missing = [k for k in ("boxes", "scores", "feats") if k not in preds]
    if missing:
        raise ValueError(f"head_outputs: the prediction dict lacks {missing}; keys are {sorted(preds)}")
    return preds


def head_outputs(preds, reg_max: int | None = None) -> HeadOutputs:
    """Wrap what an Ultralytics 8.4 Detect head returned as :class:`HeadOutputs` (no copy, the graph is kept).

    Accepts the train-mode dict ``{"boxes","scores","feats"}``, the eval-mode tuple ``(decoded, dict)``, and the
    end-to-end form ``{"one2many": {...}, "one2one": {...}}`` (alone or inside the eval tuple; ``one2many`` is used,
    as it carries the dense, gradient-connected predictions). A :class:`HeadOutputs` is returned unchanged.

    Args:
        preds: the head (or ``DetectionModel``) output.
        reg_max: the head's ``reg_max`` (``model.model[-1].reg_max``); None infers ``boxes.shape[1] // 4``.

    Raises:
        ValueError: when the tensors do not have consistent shapes (e.g. a wrong ``reg_max``).
    """
    if isinstance(preds, HeadOutputs):
        return preds
    d = _raw_dict(preds)
    feats, scores, boxes = list(d["feats"]), d["scores"], d["boxes"]
    if scores.ndim != 3 or boxes.ndim != 3:
        raise ValueError(f"head_outputs: scores/boxes must be (B,C,A); got {tuple(scores.shape)}, {tuple(boxes.shape)}")
    if reg_max is None:
        reg_max = int(boxes.shape[1]) // 4
    reg_max = int(reg_max)
    if boxes.shape[1] != 4 * reg_max:
        raise ValueError(f"head_outputs: boxes have {boxes.shape[1]} channels, expected 4 * reg_max = {4 * reg_max}")
    if boxes.shape[2] != scores.shape[2] or boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"head_outputs: boxes {tuple(boxes.shape)} and scores {tuple(scores.shape)} disagree")
    n = sum(int(f.shape[2]) * int(f.shape[3]) for f in feats)
    if n != scores.shape[2]:
        raise ValueError(f"head_outputs: feature maps hold {n} locations but the head has {scores.shape[2]} anchors")
    return HeadOutputs(feats=feats, scores=scores, boxes=boxes, reg_max=reg_max)


class _StoreOutput:
    """Forward hook storing a module's output at ``capture.outputs[index]`` (a class, not a closure: picklable)."""

    def __init__(self, capture: FeatureCapture, index: int):
        self.capture = capture
        self.index = index

    def __call__(self, module: nn.Module, inputs, output) -> None:
        self.capture.outputs[self.index] = output.detach() if self.capture.detach else output


class FeatureCapture:
    """Forward hooks that keep the latest output of each given module.

    ``capture.outputs[i]`` is the output of ``modules[i]`` from the most recent forward (None before the first one).
    The handles are kept; :meth:`remove` (or leaving the ``with`` block) removes the hooks.

    Pickling, ``copy.deepcopy`` and ``copy.copy`` drop the stored outputs (``__getstate__``): tensors that carry a
    graph cannot be deep-copied (Ultralytics deep-copies the model for its EMA) and are not worth saving. The hooks
    themselves are small picklable objects, so a model holding a capture still pickles and deep-copies, and the
    copy's hooks fill the copy's capture.

    Args:
        modules: the modules to hook (e.g. ``[model.model[i] for i in (15, 18, 21)]``).
        detach: store ``output.detach()`` instead of the output (for teachers).
    """

    def __init__(self, modules: Iterable[nn.Module], detach: bool = False):
        modules = list(modules)
        self.detach = bool(detach)
        self.outputs: list = [None] * len(modules)
        self.handles = [m.register_forward_hook(_StoreOutput(self, i)) for i, m in enumerate(modules)]

    def __len__(self) -> int:
        return len(self.outputs)

    def clear(self) -> None:
        """Forget the stored outputs (keep the hooks)."""
        self.outputs = [None] * len(self.outputs)

    def remove(self) -> None:
        """Remove the hooks and forget the outputs. Safe to call twice."""
        for h in self.handles:
            h.remove()
        self.handles = []
        self.clear()

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["outputs"] = [None] * len(self.outputs)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __deepcopy__(self, memo: dict) -> FeatureCapture:
        new = FeatureCapture.__new__(FeatureCapture)
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new
