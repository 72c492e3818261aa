"""Tests of bench/grad_probe.py's AdamW-preconditioned table (the rest of the probe runs real checkpoints only)."""

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("grad_probe", Path(__file__).resolve().parents[1] / "bench/grad_probe.py")
grad_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grad_probe)


def _row(lines):
    return [float(x) for x in lines[-1].strip("| ").split(" | ")]


def test_adam_preconditioning_equalises_gradient_scales():
    # parameter 0: only the task gradient (size 10); parameter 1: only the KD gradient (size 0.1). Raw norms differ
    # 100x; Adam divides each parameter by its own RMS gradient, so both terms move the weights equally: ratio 1.
    g = (torch.tensor([10.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 0.1], dtype=torch.float64))
    p_t, p_k, ratio, sig_t, sig_k, sig_ratio = _row(grad_probe.adam_table([g, g], 1.0, 2))
    assert (p_t, p_k, ratio, sig_t, sig_k, sig_ratio) == (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def test_adam_table_shares_and_noise():
    # one parameter moved by both terms: v = (t + w k)^2 averaged; batch-consistent parts from the cross-batch products
    a = (torch.tensor([2.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64))
    b = (torch.tensor([2.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64))  # KD flips: pure noise
    p_t, p_k, ratio, sig_t, sig_k, sig_ratio = _row(grad_probe.adam_table([a, b], 0.5, 1))
    # v = mean((2 + 1)^2, (2 - 1)^2) = 5: p_t = 2 / sqrt(5) = 0.894..., p_k the same; KD's consistent part is 0
    assert ratio == 1.0 and sig_k == 0.0 and sig_ratio > 1e6
    assert abs(p_t - 0.9) < 0.051 and abs(sig_t - 0.9) < 0.051  # printed to one decimal
