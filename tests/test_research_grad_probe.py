"""Tests of research/grad_probe.py's arithmetic on gradients (the rest of the probe runs real checkpoints only)."""

import pytest
import torch

from research import grad_probe


def _f64(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_consistent_norm_keeps_what_batches_share():
    # three batches: a shared part (3, 0) plus noise along y of +-4 / 0; <g^A, g^B> over distinct pairs
    g = torch.stack([_f64(3, 4), _f64(3, -4), _f64(3, 0)])
    gram = g @ g.T  # off-diagonal: 9 - 16, 9, 9 (each twice): mean 2/3 * 9 + 1/3 * -7 = 11/3
    assert grad_probe.consistent_norm(gram) == pytest.approx((11 / 3) ** 0.5, rel=1e-12)
    opposite = torch.stack([_f64(1, 0), _f64(-1, 0)])  # nothing shared, negative mean: clipped to 0
    assert grad_probe.consistent_norm(opposite @ opposite.T) == 0.0


def test_adam_preconditioning_equalises_gradient_scales():
    # parameter 0: only the task gradient (size 10); parameter 1: only the KD gradient (size 0.1). Raw norms differ
    # 100x; Adam divides each parameter by its own RMS gradient, so both terms move the weights equally.
    g = (_f64(10, 0), _f64(0, 0.1))
    assert grad_probe.adam_shares([g, g], 1.0) == pytest.approx((1.0, 1.0, 1.0, 1.0), rel=1e-12)


def test_adam_shares_and_noise():
    # one parameter moved by both terms; the KD gradient flips sign between the batches: pure noise
    a, b = (_f64(2), _f64(2)), (_f64(2), _f64(-2))
    p_t, p_k, sig_t, sig_k = grad_probe.adam_shares([a, b], 0.5)
    # v = mean((2 + 1)^2, (2 - 1)^2) = 5: every preconditioned entry is +-2 / sqrt(5); KD's consistent part is 0
    assert (p_t, p_k, sig_t, sig_k) == pytest.approx((2 / 5 ** 0.5, 2 / 5 ** 0.5, 2 / 5 ** 0.5, 0.0), rel=1e-12)
    # the table prints them with the two ratios a balance on them would settle at
    row = grad_probe.adam_table([a, b], 0.5, 1)[-1]
    assert row.startswith("| 0.9 | 0.9 | 1.00 | 0.9 | 0.0 |")
