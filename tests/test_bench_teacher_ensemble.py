"""Tests of bench/teacher_ensemble.py's per-anchor fusion of teacher outputs (the scoring runs real checkpoints only)."""

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "teacher_ensemble", Path(__file__).resolve().parents[1] / "bench/teacher_ensemble.py")
te = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(te)


def test_teacher_ensemble_fusion_rules():
    """Fusion of decoded outputs (B, 4 + nc, A): mean, confidence-weighted, fixed shares (exact on hand values)."""
    # one image, 4 box rows + 2 classes, 2 anchors
    a = torch.tensor([[[10.0, 20.0], [10.0, 20.0], [4.0, 4.0], [4.0, 4.0], [0.9, 0.1], [0.0, 0.2]]])
    b = torch.tensor([[[14.0, 20.0], [10.0, 24.0], [4.0, 8.0], [4.0, 4.0], [0.3, 0.1], [0.1, 0.6]]])
    torch.testing.assert_close(te.fuse([a, b], "mean"), (a + b) / 2)
    # confidences: anchor 0: 0.9 vs 0.3 -> shares 0.75 / 0.25; anchor 1: 0.2 vs 0.6 -> 0.25 / 0.75
    w_a = torch.tensor([0.75, 0.25])
    torch.testing.assert_close(te.fuse([a, b], "conf"), w_a * a + (1 - w_a) * b)
    torch.testing.assert_close(te.fuse([a, b], "static", [3.0, 1.0]), 0.75 * a + 0.25 * b)
