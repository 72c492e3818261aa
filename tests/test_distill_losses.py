"""gor_det.distill.losses: exact checks against float64 references written here."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, kl_divergence

import gor_det  # noqa: F401  (before ultralytics)
from gor_det.distill import (
    cls_kd_loss,
    cwd_loss,
    decode_ltrb,
    dfl_kd_loss,
    ensemble_weights,
    ltrb_kd_loss,
    score_weighted_mse_loss,
    teacher_confidence,
)

B, C, H, W = 2, 5, 4, 3
NC, A, R = 6, 21, 16


def _g(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


# ---------------------------------------------------------------------------------------------------------- references
def ref_cwd(s, t, tau):
    s, t = s.double(), t.double()
    total = 0.0
    for b in range(s.shape[0]):
        for c in range(s.shape[1]):
            ps = torch.exp(s[b, c].flatten() / tau)
            ps = ps / ps.sum()
            pt = torch.exp(t[b, c].flatten() / tau)
            pt = pt / pt.sum()
            total += float((pt * torch.log(pt / ps)).sum())
    return total / (s.shape[0] * s.shape[1]) * tau**2


def ref_cls(s, t, T, weight=None):
    p = torch.sigmoid(t.double() / T)
    q = torch.sigmoid(s.double() / T)
    kl = (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).sum(1)  # (B, A)
    w = torch.ones_like(kl) if weight is None else weight.double()
    return float((kl * w).sum() / w.sum()) * T**2


# ------------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_cwd(tau):
    s, t = _g(B, C, H, W, scale=2), _g(B, C, H, W, scale=2, seed=1)
    assert float(cwd_loss(t, t, tau)) == pytest.approx(0.0, abs=1e-6)
    got = cwd_loss(s, t, tau)
    assert got.dtype == torch.float32 and got.ndim == 0 and float(got) > 0
    assert float(got) == pytest.approx(ref_cwd(s, t, tau), rel=1e-5)
    # averaged per image: duplicating the batch leaves it unchanged
    assert float(cwd_loss(torch.cat([s, s]), torch.cat([t, t]), tau)) == pytest.approx(float(got), rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        cwd_loss(s, t[:, :3], tau)


def test_score_weighted_mse():
    s, t = _g(B, C, H, W), _g(B, C, H, W, seed=1)
    w = torch.rand(B, H, W, generator=torch.Generator().manual_seed(2))
    assert float(score_weighted_mse_loss(t, t, w)) == 0.0
    per = ((s.double() - t.double()) ** 2).mean(1)
    ref = float((per * w.double()).sum() / w.double().sum())
    assert float(score_weighted_mse_loss(s, t, w)) == pytest.approx(ref, rel=1e-5)
    assert float(score_weighted_mse_loss(s, t, 7 * w)) == pytest.approx(ref, rel=1e-5)  # normalised by sum(w)
    assert float(score_weighted_mse_loss(s, t)) == pytest.approx(float(per.mean()), rel=1e-5)
    assert float(score_weighted_mse_loss(s, t, torch.zeros(B, H, W))) == 0.0


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_cls_kd(T):
    s, t = _g(B, NC, A, scale=3), _g(B, NC, A, scale=3, seed=1)
    w = torch.rand(B, A, generator=torch.Generator().manual_seed(3))
    assert float(cls_kd_loss(t, t, T)) == 0.0  # exactly 0 when equal
    got = cls_kd_loss(s, t, T)
    assert float(got) > 0 and float(got) == pytest.approx(ref_cls(s, t, T), rel=1e-5)
    assert float(cls_kd_loss(s, t, T, w)) == pytest.approx(ref_cls(s, t, T, w), rel=1e-5)
    # torch.distributions agrees (sum over classes, mean over anchors)
    kl = kl_divergence(Bernoulli(logits=t.double() / T), Bernoulli(logits=s.double() / T)).sum(1).mean() * T**2
    assert float(got) == pytest.approx(float(kl), rel=1e-5)
    # ensemble target = mean probability
    t2 = _g(B, NC, A, scale=3, seed=4)
    pm = (torch.sigmoid(t.double() / T) + torch.sigmoid(t2.double() / T)) / 2
    q = torch.sigmoid(s.double() / T)
    ref = ((pm * torch.log(pm / q) + (1 - pm) * torch.log((1 - pm) / (1 - q))).sum(1) * w.double()).sum() / w.sum()
    assert float(cls_kd_loss(s, [t, t2], T, w)) == pytest.approx(float(ref) * T**2, rel=1e-5)
    assert float(cls_kd_loss(s, [t], T)) == float(got)


def test_cls_kd_extreme_and_fp16():
    s = torch.tensor([[[-100.0, 100.0, 0.0]]])
    t = torch.tensor([[[100.0, -100.0, 0.0]]])
    v = cls_kd_loss(s, t)
    assert torch.isfinite(v) and float(v) == pytest.approx(200 / 3, rel=1e-4)  # KL ~ 100 on two of 3 anchors
    sh, th = _g(B, NC, A).half(), _g(B, NC, A, seed=1).half()
    v = cls_kd_loss(sh, th, 2.0)
    assert v.dtype == torch.float32 and float(v) == pytest.approx(ref_cls(sh.float(), th.float(), 2.0), rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_dfl_kd_matches_torch_distributions(T):
    s, t = _g(B, 4 * R, A, scale=2), _g(B, 4 * R, A, scale=2, seed=1)
    w = torch.rand(B, A, generator=torch.Generator().manual_seed(3))
    assert float(dfl_kd_loss(t, t, R, T)) == pytest.approx(0.0, abs=1e-7)
    # Ultralytics' layout: (B, 4*R, A).view(B, 4, R, A), bins on dim 2
    lt = t.double().view(B, 4, R, A).permute(0, 1, 3, 2) / T
    ls = s.double().view(B, 4, R, A).permute(0, 1, 3, 2) / T
    kl = kl_divergence(Categorical(logits=lt), Categorical(logits=ls)).mean(1)  # (B, A): mean over sides
    got = dfl_kd_loss(s, t, R, T, w)
    assert float(got) > 0
    assert float(got) == pytest.approx(float((kl * w.double()).sum() / w.double().sum()) * T**2, rel=1e-5)
    assert float(dfl_kd_loss(s, t, R, T)) == pytest.approx(float(kl.mean()) * T**2, rel=1e-5)
    # mean_target: mean of the bin distributions
    t2 = _g(B, 4 * R, A, scale=2, seed=5)
    pm = (lt.softmax(-1) + (t2.double().view(B, 4, R, A).permute(0, 1, 3, 2) / T).softmax(-1)) / 2
    kl = kl_divergence(Categorical(probs=pm), Categorical(logits=ls)).mean(1).mean()
    assert float(dfl_kd_loss(s, [t, t2], R, T)) == pytest.approx(float(kl) * T**2, rel=1e-5)
    with pytest.raises(ValueError, match="reg_max > 1"):
        dfl_kd_loss(s[:, :4], t[:, :4], 1)


def test_dfl_kd_layout_one_side():
    """Changing the bins of side k=2 (r) of anchor 5 only is seen as a KL on that side and anchor."""
    t = _g(1, 4 * R, A, seed=1)
    s = t.clone().view(1, 4, R, A)
    s[0, 2, :, 5] = s[0, 2, :, 5].flip(0)
    s = s.view(1, 4 * R, A)
    kl = kl_divergence(
        Categorical(logits=t.view(1, 4, R, A)[0, 2, :, 5]), Categorical(logits=s.view(1, 4, R, A)[0, 2, :, 5])
    )
    assert float(dfl_kd_loss(s, t, R)) == pytest.approx(float(kl) / 4 / A, rel=1e-5)


def test_decode_ltrb_matches_ultralytics_dfl():
    from ultralytics.nn.modules.block import DFL

    box = _g(B, 4 * R, A, scale=2)
    torch.testing.assert_close(decode_ltrb(box, R), DFL(R)(box))
    raw = _g(B, 4, A)
    assert torch.equal(decode_ltrb(raw, 1), raw)


def test_ltrb_kd():
    s16, t16 = _g(B, 4 * R, A, scale=2), _g(B, 4 * R, A, scale=2, seed=1)
    t1 = _g(B, 4, A, seed=2).abs() * 4
    w = torch.rand(B, A, generator=torch.Generator().manual_seed(3))
    assert float(ltrb_kd_loss(t16, R, t16, R)) == 0.0
    assert float(ltrb_kd_loss(t1, 1, t1, 1, w)) == 0.0
    ds = DFLref(s16)
    ref = ((ds - t1.double()).abs().mean(1) * w.double()).sum() / w.double().sum()
    assert float(ltrb_kd_loss(s16, R, t1, 1, w)) == pytest.approx(float(ref), rel=1e-5)
    # student reg_max=1 vs DFL teacher, and a mixed ensemble (mean of decoded distances)
    ref = (t1.double() - DFLref(t16)).abs().mean()
    assert float(ltrb_kd_loss(t1, 1, t16, R)) == pytest.approx(float(ref), rel=1e-5)
    tgt = (DFLref(t16) + t1.double()) / 2
    ref = (DFLref(s16) - tgt).abs().mean()
    assert float(ltrb_kd_loss(s16, R, [t16, t1], [R, 1])) == pytest.approx(float(ref), rel=1e-5)
    # targets out of the DFL student's range are clamped to [0, reg_max - 1]
    far = torch.full((B, 4, A), 100.0)
    ref = (DFLref(s16) - (R - 1)).abs().mean()
    assert float(ltrb_kd_loss(s16, R, far, 1)) == pytest.approx(float(ref), rel=1e-5)


def DFLref(box):
    b, c, a = box.shape
    r = c // 4
    return (box.double().view(b, 4, r, a).softmax(2) * torch.arange(r, dtype=torch.float64).view(1, 1, r, 1)).sum(2)


def test_teacher_confidence():
    t = _g(B, NC, A, scale=3)
    torch.testing.assert_close(teacher_confidence(t), t.sigmoid().amax(1))
    t2 = _g(B, NC, A, scale=3, seed=1)
    torch.testing.assert_close(teacher_confidence([t, t2]), ((t.sigmoid() + t2.sigmoid()) / 2).amax(1))
    assert not teacher_confidence(t.requires_grad_()).requires_grad


def test_gradients_student_only():
    """Gradients reach the student; a teacher tensor, even one requiring grad, never gets one."""
    cases = [
        (lambda s, t: cwd_loss(s, t, 2.0), (B, C, H, W)),
        (lambda s, t: score_weighted_mse_loss(s, t, torch.rand(B, H, W)), (B, C, H, W)),
        (lambda s, t: cls_kd_loss(s, t, 2.0, teacher_confidence(t)), (B, NC, A)),
        (lambda s, t: dfl_kd_loss(s, t, R, 1.0, teacher_confidence(t[:, :NC])), (B, 4 * R, A)),
        (lambda s, t: ltrb_kd_loss(s, R, t, R), (B, 4 * R, A)),
    ]
    for fn, shape in cases:
        s = _g(*shape).requires_grad_()
        t = _g(*shape, seed=1).requires_grad_()
        fn(s, t).backward()
        assert s.grad is not None and float(s.grad.abs().sum()) > 0
        assert t.grad is None
    assert math.isfinite(float(cwd_loss(_g(B, C, H, W, scale=1e3), _g(B, C, H, W, scale=1e3, seed=1))))


def test_weighted_ensemble_targets():
    """teacher_weights: the ensemble target is the weighted mean (probabilities, bin distributions, distances)."""
    T, tw = 2.0, [3.0, 1.0]  # shares 0.75 / 0.25
    s, t, t2 = (_g(B, NC, A, scale=3, seed=k) for k in (0, 1, 4))
    w = torch.rand(B, A, generator=torch.Generator().manual_seed(3))
    pm = 0.75 * torch.sigmoid(t.double() / T) + 0.25 * torch.sigmoid(t2.double() / T)
    q = torch.sigmoid(s.double() / T)
    ref = ((pm * torch.log(pm / q) + (1 - pm) * torch.log((1 - pm) / (1 - q))).sum(1) * w.double()).sum() / w.sum()
    assert float(cls_kd_loss(s, [t, t2], T, w, teacher_weights=tw)) == pytest.approx(float(ref) * T**2, rel=1e-5)
    # equal weights of any scale are the plain mean
    assert float(cls_kd_loss(s, [t, t2], T, w, teacher_weights=[5, 5])) == pytest.approx(
        float(cls_kd_loss(s, [t, t2], T, w)), rel=1e-6)
    torch.testing.assert_close(teacher_confidence([t, t2], tw), (0.75 * t.sigmoid() + 0.25 * t2.sigmoid()).amax(1))

    sb, tb, tb2 = (_g(B, 4 * R, A, scale=2, seed=k) for k in (0, 1, 5))
    bins = [x.double().view(B, 4, R, A).permute(0, 1, 3, 2) for x in (sb, tb, tb2)]
    pm = 0.75 * bins[1].softmax(-1) + 0.25 * bins[2].softmax(-1)
    kl = kl_divergence(Categorical(probs=pm), Categorical(logits=bins[0])).mean(1).mean()
    assert float(dfl_kd_loss(sb, [tb, tb2], R, 1.0, teacher_weights=tw)) == pytest.approx(float(kl), rel=1e-5)
    t1 = _g(B, 4, A, seed=2).abs() * 4
    ref = (DFLref(sb) - (0.75 * DFLref(tb) + 0.25 * t1.double())).abs().mean()
    assert float(ltrb_kd_loss(sb, R, [tb, t1], [R, 1], teacher_weights=tw)) == pytest.approx(float(ref), rel=1e-5)


def test_ensemble_weights():
    assert ensemble_weights(2) == [0.5, 0.5]
    assert ensemble_weights(2, [3, 1]) == [0.75, 0.25]
    with pytest.raises(ValueError, match="2 teacher weights for 3 teachers"):
        ensemble_weights(3, [1, 1])
    for bad in ([1, 0], [1, -1], [1, float("nan")]):
        with pytest.raises(ValueError, match="positive finite"):
            ensemble_weights(2, bad)
    # allow_zero (feature KD's feat_weight): a teacher at 0 is left out; all at 0, or negative, is an error
    assert ensemble_weights(2, [2, 0], allow_zero=True) == [1.0, 0.0]
    for bad in ([0, 0], [1, -1], [1, float("inf")]):
        with pytest.raises(ValueError, match="one of them positive"):
            ensemble_weights(2, bad, allow_zero=True)


def test_per_anchor_shares():
    """teacher_weights as a tensor (n, B, A): each anchor's ensemble target is weighted by its own shares. Constant
    shares are the scalar ones; one-hot shares pick one teacher's prediction per anchor (exact splice references)."""
    T = 2.0
    s, t, t2 = (_g(B, NC, A, scale=3, seed=k) for k in (0, 1, 4))
    sb, tb, tb2 = (_g(B, 4 * R, A, scale=2, seed=k) for k in (0, 1, 5))
    w = torch.rand(B, A, generator=torch.Generator().manual_seed(3))
    const = torch.stack([torch.full((B, A), 0.75), torch.full((B, A), 0.25)])
    for fn, args in ((cls_kd_loss, (s, [t, t2], T, w)), (dfl_kd_loss, (sb, [tb, tb2], R, 1.0, w))):
        assert float(fn(*args, teacher_weights=const)) == pytest.approx(float(fn(*args, teacher_weights=[3, 1])),
                                                                        rel=1e-6)
    torch.testing.assert_close(ltrb_kd_loss(sb, R, [tb, tb2], R, w, teacher_weights=const),
                               ltrb_kd_loss(sb, R, [tb, tb2], R, w, teacher_weights=[3, 1]))
    torch.testing.assert_close(teacher_confidence([t, t2], const), teacher_confidence([t, t2], [3, 1]))

    pick = torch.rand(B, A, generator=torch.Generator().manual_seed(7)) > 0.5  # True: teacher 0 at that anchor
    one_hot = torch.stack([pick.float(), (~pick).float()])
    splice = lambda x0, x1: torch.where(pick.unsqueeze(1), x0, x1)  # noqa: E731  (B, ., A)
    assert float(cls_kd_loss(s, [t, t2], T, w, teacher_weights=one_hot)) == pytest.approx(
        ref_cls(s, splice(t, t2), T, w), rel=1e-5)
    assert float(dfl_kd_loss(sb, [tb, tb2], R, 1.0, w, teacher_weights=one_hot)) == pytest.approx(
        float(dfl_kd_loss(sb, splice(tb, tb2), R, 1.0, w)), rel=1e-5)
    t1 = _g(B, 4, A, seed=2).abs() * 4
    ref = (DFLref(sb) - splice(DFLref(tb), t1.double())).abs().mean()
    assert float(ltrb_kd_loss(sb, R, [tb, t1], [R, 1], teacher_weights=one_hot)) == pytest.approx(float(ref), rel=1e-5)
    torch.testing.assert_close(teacher_confidence([t, t2], one_hot), teacher_confidence(splice(t, t2)))
    with pytest.raises(ValueError, match=r"per-anchor teacher shares \(3, 2, 21\) are not \(2, B, A\)"):
        cls_kd_loss(s, [t, t2], T, teacher_weights=torch.ones(3, B, A) / 3)
