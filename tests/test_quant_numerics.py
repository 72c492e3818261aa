"""gor_det.quant.numerics: FakeQuantizer against a float64 reference written from the formulas, calibration, dtypes."""

import copy
import math
import pickle

import pytest
import torch

import gor_det  # noqa: F401  (offline env first)
from gor_det.config import QuantCfg
from gor_det.quant import kernels
from gor_det.quant.numerics import SCALE_MIN, FakeQuantizer, qrange


# ----------------------------------------------------------------------------------------------------------------------
# float64 reference of Q(x) = s * (clamp(round(x/s) + z, qmin, qmax) - z) and its LSQ gradients
# ----------------------------------------------------------------------------------------------------------------------
def ref_fake_quant(x, s, z, qmin, qmax, gy, g):
    """Returns (y, dL/dx, dL/ds) in float64. s, z broadcast against x; dL/ds summed to s's shape and scaled by g."""
    x, s, z, gy = x.double(), s.double(), z.double(), gy.double()
    r = torch.round(x / s)
    qu = r + z
    inside = (qu >= qmin) & (qu <= qmax)
    y = (qu.clamp(qmin, qmax) - z) * s
    dx = gy * inside
    ds_el = torch.where(inside, r - x / s, torch.where(qu < qmin, qmin - z, qmax - z))
    ds = gy * ds_el * g
    return y, dx, ds


def grid_values(shape, s, qmin, qmax, z=0.0, seed=0):
    """x = s * (k - z + u): codes k spanning twice the grid (so both clipping regions are hit), |u| <= 0.45 keeps
    x/s away from rounding ties (float32 vs float64 could round a tie differently)."""
    gen = torch.Generator().manual_seed(seed)
    span = qmax - qmin + 1
    k = torch.randint(qmin - span // 2 - 1, qmax + span // 2 + 2, shape, generator=gen).double()
    u = (torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5) * 0.9
    s = torch.as_tensor(s, dtype=torch.float64)
    return ((k - z + u) * s).float()


@pytest.fixture(params=["compiled", "torch"])
def kernel(request, monkeypatch):
    """Runs a test with the compiled LSQ kernel and with PyTorch's (GOR_DET_FQ_KERNEL=torch)."""
    if request.param == "torch":
        monkeypatch.setenv("GOR_DET_FQ_KERNEL", "torch")
    else:
        monkeypatch.delenv("GOR_DET_FQ_KERNEL", raising=False)
    calls = []
    apply = kernels.LSQ.apply
    monkeypatch.setattr(kernels.LSQ, "apply", lambda *a: calls.append(1) or apply(*a))
    return request.param, calls


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_tensor_matches_reference(bits, symmetric, kernel):
    q = FakeQuantizer(bits, symmetric=symmetric)
    s = 0.0371
    z = 0.0 if symmetric else float((q.qmax + 1) // 3)
    q.set_qparams(torch.tensor(s), torch.tensor(z))
    s32 = float(q.scale.detach())  # the step the kernel uses: exp(float32 log_scale)
    x = grid_values((4, 3, 5, 7), s32, q.qmin, q.qmax, z).requires_grad_(True)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    y = q(x)
    y.backward(gy)
    g = 1 / math.sqrt(x.numel() * q.qmax)
    ry, rdx, rds = ref_fake_quant(x.detach(), torch.tensor(s32), torch.tensor(z), q.qmin, q.qmax, gy, g)
    assert (ry.abs() > 0).any() and (rdx == 0).any() and (rdx != 0).any()  # both regions present
    torch.testing.assert_close(y.double(), ry, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(x.grad.double(), rdx, rtol=0, atol=0)
    # d/dlog_scale = s * dL/ds
    torch.testing.assert_close(q.log_scale.grad.double(), s32 * rds.sum(), rtol=1e-5, atol=1e-7)
    name, calls = kernel
    assert bool(calls) == (name == "compiled")  # the kernel under test really ran


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_channel_weights_match_reference(bits, kernel):
    c = 5
    q = FakeQuantizer(bits, symmetric=True, narrow=True, channels=c)
    assert (q.qmin, q.qmax) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
    s = torch.tensor([0.01, 0.2, 0.003, 1.5, 0.07])
    q.set_qparams(s)
    s32 = q.scale.detach().double()
    x = torch.stack([grid_values((4, 3, 3), float(s32[i]), q.qmin, q.qmax, seed=i) for i in range(c)]).requires_grad_()
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    y = q(x)
    y.backward(gy)
    g = 1 / math.sqrt((x.numel() // c) * q.qmax)
    ry, rdx, rds = ref_fake_quant(x.detach(), s32.view(-1, 1, 1, 1), torch.zeros(c, 1, 1, 1), q.qmin, q.qmax, gy, g)
    torch.testing.assert_close(y.double(), ry, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(x.grad.double(), rdx, rtol=0, atol=0)
    torch.testing.assert_close(q.log_scale.grad.double(), s32 * rds.sum((1, 2, 3)), rtol=1e-5, atol=1e-9)
    name, calls = kernel
    assert bool(calls) == (name == "compiled")


def test_qrange():
    assert qrange(8) == (-128, 127)
    assert qrange(8, narrow=True) == (-127, 127)
    assert qrange(8, symmetric=False) == (0, 255)
    assert qrange(2, narrow=True) == (-1, 1)
    assert qrange(4, symmetric=False) == (0, 15)
    for bad in (1, 9):
        with pytest.raises(ValueError):
            qrange(bad)


@pytest.mark.parametrize("symmetric", [True, False])
def test_error_shrinks_with_bits(symmetric):
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    x = x if symmetric else x.relu() * 3 - 0.2
    errs = []
    for bits in range(2, 9):
        q = FakeQuantizer(bits, symmetric=symmetric, calib="minmax")
        q.init_from(x)
        errs.append(float((q(x) - x).pow(2).mean()))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < errs[0] / 1000


def test_minmax_calibration_scales():
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    q = FakeQuantizer(8, calib="minmax")
    q.observe(x[:2])
    q.observe(x[2:] * 1.5)  # running max over calls
    amax = max(float(x[:2].abs().max()), float((x[2:] * 1.5).abs().max()))
    q.init_scale()
    assert math.isclose(float(q.scale.detach()), amax / 127, rel_tol=1e-6)
    assert float(q.zero_point) == 0 and q.is_initialized

    qa = FakeQuantizer(8, symmetric=False)
    y = x.relu() + 0.5  # min > 0: the range is extended to include 0
    qa.init_from(y, "minmax")
    assert math.isclose(float(qa.scale.detach()), float(y.max()) / 255, rel_tol=1e-6)
    assert float(qa.zero_point) == 0
    z = x - 1
    qa.init_from(z, "minmax")
    s = (float(z.max()) - float(z.min())) / 255
    assert math.isclose(float(qa.scale.detach()), s, rel_tol=1e-6)
    assert float(qa.zero_point) == round(-float(z.min()) / s)

    w = torch.randn(6, 4, 3, 3) * torch.arange(1, 7).view(-1, 1, 1, 1)
    qw = FakeQuantizer(8, narrow=True, channels=6)
    qw.init_from(w, "minmax")
    torch.testing.assert_close(qw.scale.detach(), w.abs().amax((1, 2, 3)) / 127, rtol=1e-6, atol=0)


@pytest.mark.parametrize("symmetric", [True, False])
def test_percentile_and_mse_clip_at_most_minmax(symmetric):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8000, generator=gen)
    x[:3] = torch.tensor([40.0, -35.0, 50.0])  # outliers
    scales = {}
    for method in ("minmax", "percentile", "mse"):
        q = FakeQuantizer(4, symmetric=symmetric, percentile=99.9)
        q.init_from(x, method)
        scales[method] = float(q.scale.detach())
        if method == "mse":
            err_mse = float((q(x) - x).pow(2).mean())
        if method == "minmax":
            err_minmax = float((q(x) - x).pow(2).mean())
    assert scales["percentile"] < scales["minmax"] / 5
    assert scales["mse"] <= scales["minmax"] * (1 + 1e-6)
    assert err_mse <= err_minmax
    # per-channel mse never clips beyond minmax either
    w = torch.randn(4, 200, generator=gen)
    qm, qx = FakeQuantizer(3, narrow=True, channels=4), FakeQuantizer(3, narrow=True, channels=4)
    qm.init_from(w, "mse")
    qx.init_from(w, "minmax")
    assert (qm.scale <= qx.scale * (1 + 1e-6)).all()


def test_enabled_observing_and_lazy_init():
    x = torch.randn(2, 3, 4, 4)
    q = FakeQuantizer(4)
    q.enabled = False
    assert torch.equal(q(x), x) and not q.is_initialized
    q.enabled = True
    q.observing = True
    assert torch.equal(q(x), x) and not q.is_initialized
    q.observing = False
    q.reset_observer()
    y = q(x)  # first quantizing call initialises from x (minmax)
    assert q.is_initialized and math.isclose(float(q.scale.detach()), float(x.abs().max()) / 7, rel_tol=1e-6)
    assert len(torch.unique(y)) <= 16
    with pytest.raises(RuntimeError):
        FakeQuantizer(8).init_scale()


def test_fixed_scales_get_no_gradient():
    q = FakeQuantizer.for_acts(QuantCfg(learn_scales=False))
    assert not q.log_scale.requires_grad
    q.set_qparams(torch.tensor(0.1))
    q.log_scale.requires_grad_(True)  # what Ultralytics' freeze loop does to frozen params
    x = torch.randn(10, requires_grad=True)
    q(x).sum().backward()
    assert q.log_scale.grad is None and x.grad is not None


def test_float32_kept_and_pickle_exact():
    q = FakeQuantizer(8, narrow=True, channels=3)
    q.set_qparams(torch.tensor([1e-3, 0.0123456789, 7.0]))
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.half()
    assert q.log_scale.dtype == torch.float32 and q.zero_point.dtype == torch.float32
    q.to(torch.float64)
    assert q.log_scale.dtype == torch.float32
    x = torch.randn(3, 5).half()
    assert q(x).dtype == torch.float16
    for q2 in (copy.deepcopy(q), pickle.loads(pickle.dumps(q)), q.float()):
        for k, v in q2.state_dict().items():
            assert torch.equal(v, before[k])
    qz = FakeQuantizer(8)  # all-zero input: the step floor, no log(0)
    qz.init_from(torch.zeros(4))
    assert math.isclose(float(qz.scale.detach()), SCALE_MIN, rel_tol=1e-5)


def test_from_quantcfg():
    cfg = QuantCfg(w_bits=4, a_bits=6, a_symmetric=False)
    w, a = FakeQuantizer.for_weights(16, cfg), FakeQuantizer.for_acts(cfg)
    assert (w.qmin, w.qmax, w.channels, tuple(w.log_scale.shape)) == (-7, 7, 16, (16,))
    assert (a.qmin, a.qmax, a.channels, tuple(a.log_scale.shape)) == (0, 63, None, ())
    assert w.log_scale.dtype == torch.float32 and w.log_scale.requires_grad
