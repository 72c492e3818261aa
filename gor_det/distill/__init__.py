"""gor_det.distill: knowledge distillation from frozen YOLO teachers (pure torch; never imports Ultralytics).

mmrazor-style pieces: :mod:`.capture` (what the models computed), :mod:`.adapters` (student -> teacher channels),
:mod:`.losses` (each ``loss(student, teacher, ...)`` -> scalar per image) and :mod:`.distiller` (combines them
according to ``gor.distill``).
"""

from .adapters import build_adapters, init_adapter
from .agreement import GroundTruth, agreement_shares
from .capture import FeatureCapture, HeadOutputs, head_outputs
from .distiller import ENSEMBLES, KD_KEYS, Distiller, anchor_weight_to_levels
from .losses import (
    cls_kd_loss,
    cwd_loss,
    decode_ltrb,
    dfl_kd_loss,
    ensemble_weights,
    ltrb_kd_loss,
    score_weighted_mse_loss,
    teacher_confidence,
    weighted_mean,
)

__all__ = [
    "ENSEMBLES",
    "KD_KEYS",
    "Distiller",
    "FeatureCapture",
    "GroundTruth",
    "agreement_shares",
    "HeadOutputs",
    "anchor_weight_to_levels",
    "build_adapters",
    "cls_kd_loss",
    "cwd_loss",
    "decode_ltrb",
    "dfl_kd_loss",
    "ensemble_weights",
    "head_outputs",
    "init_adapter",
    "ltrb_kd_loss",
    "score_weighted_mse_loss",
    "teacher_confidence",
    "weighted_mean",
]
