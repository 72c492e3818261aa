"""gor_det.balance: GoR scalars, balancers, exact bit storage."""

import io
import math
import pickle

import pytest
import torch
from torch import nn

import gor_det  # noqa: F401
from gor_det.balance import (
    Balancer,
    FixedBalancer,
    GoRBalancer,
    NoKDBalancer,
    TransferMeter,
    flat_gradient,
    gor_scalars,
    gradient_norm,
    make_balancer,
    make_gor_params,
    restore_from_bits,
    sync_bits,
)
from gor_det.config import SCALAR_LR, BalanceCfg

LT, LK = 3.0, 0.5
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # float(param) in asserts


def _losses(lt=LT, lk=LK):
    return {"task": torch.tensor(lt), "kd": torch.tensor(lk)}


def _train(bal, steps=(600, 400), lrs=(0.05, 0.005)):
    opt = torch.optim.Adam(bal.params.parameters(), lr=lrs[0])
    for n, lr in zip(steps, lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        for _ in range(n):
            total, w = bal(_losses())
            opt.zero_grad()
            total.backward()
            opt.step()
    return total, w


def test_make_gor_params_plain_module():
    p = make_gor_params(w_task=2.0, w_kd=0.25)
    assert type(p) is nn.Module
    assert dict(p.named_parameters()).keys() == {"s_task", "s_kd"}
    assert p.s_task.dtype == torch.float32 and p.s_task.shape == () and p.s_kd.shape == ()
    assert float(p.s_task) == pytest.approx(-math.log(2.0)) and float(p.s_kd) == pytest.approx(math.log(4.0))
    assert p.bits.dtype == torch.int32 and p.bits.shape == (2,) and dict(p.named_buffers()).keys() == {"bits", "xfer_bits"}
    assert torch.equal(p.bits.view(torch.float32), torch.stack([p.s_task, p.s_kd]).detach())
    p1 = make_gor_params()
    assert torch.equal(p1.bits, torch.zeros(2, dtype=torch.int32))  # s = +0.0, never -0.0
    with pytest.raises(ValueError, match="w_kd"):
        make_gor_params(1.0, 0.0)


def test_gor_converges_to_log_losses():
    bal = GoRBalancer(make_gor_params(), form="gor")
    total, w = _train(bal)
    assert float(bal.params.s_task) == pytest.approx(math.log(LT), abs=2e-3)
    assert float(bal.params.s_kd) == pytest.approx(math.log(LK), abs=2e-3)
    assert float(w["w_task"]) == pytest.approx(1 / LT, rel=3e-3) and float(w["w_kd"]) == pytest.approx(1 / LK, rel=3e-3)
    assert float(total) == pytest.approx(2 + math.log(LT) + math.log(LK), abs=1e-4)  # minimum value of the objective


def test_gor_norm_converges_and_keeps_scale():
    bal = GoRBalancer(make_gor_params(), form="gor_norm")
    total, w = _train(bal)
    # the scalars follow the same objective: s* = log L; the applied weights are rescaled by c = (Lt + Lk) / 2
    assert float(bal.params.s_task) == pytest.approx(math.log(LT), abs=2e-3)
    assert float(bal.params.s_kd) == pytest.approx(math.log(LK), abs=2e-3)
    assert float(w["w_task"]) == pytest.approx((LT + LK) / (2 * LT), rel=3e-3)
    assert float(w["w_kd"]) == pytest.approx((LT + LK) / (2 * LK), rel=3e-3)
    assert float(total) == pytest.approx(LT + LK, rel=1e-6)  # value = L_t + L_k at any s


def test_gradients_gor():
    p = make_gor_params(w_task=2.0, w_kd=0.5)
    x = torch.tensor(1.5, requires_grad=True)  # a "student" parameter: L_t = 2 x^2, L_k = 3 x
    lt, lk = 2 * x**2, 3 * x
    total, w = GoRBalancer(p, "gor")({"task": lt, "kd": lk})
    total.backward()
    et, ek = math.exp(-float(p.s_task)), math.exp(-float(p.s_kd))
    assert float(total) == pytest.approx(et * 4.5 + ek * 4.5 + float(p.s_task) + float(p.s_kd), rel=1e-6)
    assert float(p.s_task.grad) == pytest.approx(1 - et * 4.5, rel=1e-5)
    assert float(p.s_kd.grad) == pytest.approx(1 - ek * 4.5, rel=1e-5)
    assert float(x.grad) == pytest.approx(et * 4 * 1.5 + ek * 3, rel=1e-5)
    assert float(w["w_task"]) == pytest.approx(et) and not w["w_task"].requires_grad


def test_gradients_gor_norm():
    p = make_gor_params(w_task=2.0, w_kd=0.5)
    x = torch.tensor(1.5, requires_grad=True)
    lt, lk = 2 * x**2, 3 * x  # both 4.5
    total, w = GoRBalancer(p, "gor_norm")({"task": lt, "kd": lk})
    total.backward()
    et, ek = 2.0, 0.5
    c = 9.0 / (et * 4.5 + ek * 4.5)
    assert float(total) == pytest.approx(9.0, rel=1e-6)
    assert float(w["w_task"]) == pytest.approx(c * et, rel=1e-6) and float(w["w_kd"]) == pytest.approx(c * ek, rel=1e-6)
    assert float(p.s_task.grad) == pytest.approx(1 - et * 4.5, rel=1e-5)  # gradient of obj, as in gor
    assert float(p.s_kd.grad) == pytest.approx(1 - ek * 4.5, rel=1e-5)
    assert float(x.grad) == pytest.approx(c * et * 6 + c * ek * 3, rel=1e-5)  # rescaled weights
    assert not w["w_task"].requires_grad and not w["w_kd"].requires_grad
    total, w = GoRBalancer(p, "gor_norm")(_losses(0.0, 0.0))  # denominator 0: c = 1
    assert float(total) == 0.0 and float(w["w_task"]) == pytest.approx(2.0)


NT, NK = 0.6, 1.0  # gradient norms of L_t and L_k on the shared features (gor_grad)


def test_gor_grad_converges_to_equal_gradient_norms():
    bal = GoRBalancer(make_gor_params(), form="gor_grad")
    opt = torch.optim.Adam(bal.params.parameters(), lr=0.05)
    for step in range(1000):
        if step == 600:
            opt.param_groups[0]["lr"] = 0.005
        total, w = bal({**_losses(), "gnorm_task": torch.tensor(NT), "gnorm_kd": torch.tensor(NK)})
        opt.zero_grad()
        total.backward()
        opt.step()
    n_bar = (NT + NK) / 2
    # s* = log(n / n_bar): each weighted term moves the shared features by n_bar, together by n_t + n_k
    assert float(bal.params.s_task) == pytest.approx(math.log(NT / n_bar), abs=2e-3)
    assert float(bal.params.s_kd) == pytest.approx(math.log(NK / n_bar), abs=2e-3)
    assert float(w["w_task"]) * NT == pytest.approx(n_bar, rel=3e-3) and float(w["w_kd"]) * NK == pytest.approx(n_bar, rel=3e-3)
    # the value is the weighted sum of the losses (the scalars' objective contributes only its gradient)
    assert float(total) == pytest.approx(float(w["w_task"]) * LT + float(w["w_kd"]) * LK, rel=1e-6)


def test_gradients_gor_grad():
    p = make_gor_params(w_task=2.0, w_kd=0.5)
    x = torch.tensor(1.5, requires_grad=True)
    lt, lk = 2 * x**2, 3 * x  # both 4.5; d/dx: 6 and 3
    n_t, n_k = torch.tensor(0.3), torch.tensor(0.9)
    total, w = GoRBalancer(p, "gor_grad")({"task": lt, "kd": lk, "gnorm_task": n_t, "gnorm_kd": n_k})
    total.backward()
    n_bar = 0.6
    assert float(total) == pytest.approx(2.0 * 4.5 + 0.5 * 4.5, rel=1e-6)
    assert float(w["w_task"]) == pytest.approx(2.0) and float(w["w_kd"]) == pytest.approx(0.5)
    assert float(p.s_task.grad) == pytest.approx(1 - 2.0 * 0.3 / n_bar, rel=1e-5)
    assert float(p.s_kd.grad) == pytest.approx(1 - 0.5 * 0.9 / n_bar, rel=1e-5)
    assert float(x.grad) == pytest.approx(2.0 * 6 + 0.5 * 3, rel=1e-5)
    # zero norms (no gradient reaches the head inputs): value unchanged, the scalars get a zero gradient
    p.s_task.grad = p.s_kd.grad = None
    zero = torch.tensor(0.0)
    total, _ = GoRBalancer(p, "gor_grad")({"task": 2 * x**2, "kd": 3 * x, "gnorm_task": zero, "gnorm_kd": zero})
    total.backward()
    assert float(total) == pytest.approx(11.25, rel=1e-6)
    assert float(p.s_task.grad) == 0.0 and float(p.s_kd.grad) == 0.0
    # without the norms (validation): the weights in force, no gradient for the scalars
    p.s_task.grad = p.s_kd.grad = None
    total, w = GoRBalancer(p, "gor_grad")({"task": 2 * x**2, "kd": 3 * x})
    total.backward()
    assert float(total) == pytest.approx(11.25, rel=1e-6) and p.s_task.grad is None and p.s_kd.grad is None


def test_gor_lookahead_converges_to_transfer_shares():
    """Constant norms and transfer ratio a: the scalars settle where w_t n_t = q_t n_bar, w_k n_k = q_k n_bar with
    q_t = 2 / (1 + a), q_k = 2a / (1 + a) (gradient shares in the ratio of the transfers, total size n_t + n_k)."""
    a = 0.5
    bal = GoRBalancer(make_gor_params(), form="gor_lookahead")
    opt = torch.optim.Adam(bal.params.parameters(), lr=0.05)
    for step in range(1000):
        if step == 600:
            opt.param_groups[0]["lr"] = 0.005
        losses = {**_losses(), "gnorm_task": torch.tensor(NT), "gnorm_kd": torch.tensor(NK), "xfer_ratio": torch.tensor(a)}
        total, w = bal(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
    n_bar, q_t, q_k = (NT + NK) / 2, 2 / (1 + a), 2 * a / (1 + a)
    assert float(w["w_task"]) * NT == pytest.approx(q_t * n_bar, rel=3e-3)
    assert float(w["w_kd"]) * NK == pytest.approx(q_k * n_bar, rel=3e-3)
    assert float(w["w_kd"]) / float(w["w_task"]) == pytest.approx(a * NT / NK, rel=5e-3)
    assert float(total) == pytest.approx(float(w["w_task"]) * LT + float(w["w_kd"]) * LK, rel=1e-6)


def test_gor_lookahead_at_ratio_one_is_gor_grad():
    x = torch.tensor(1.5, requires_grad=True)
    grads = []
    for form, extra in (("gor_grad", {}), ("gor_lookahead", {"xfer_ratio": torch.tensor(1.0)})):
        p = make_gor_params(w_task=2.0, w_kd=0.5)
        x.grad = None
        losses = {"task": 2 * x**2, "kd": 3 * x, "gnorm_task": torch.tensor(0.3), "gnorm_kd": torch.tensor(0.9), **extra}
        total, _ = GoRBalancer(p, form)(losses)
        total.backward()
        grads.append((float(total), float(p.s_task.grad), float(p.s_kd.grad), float(x.grad)))
    assert grads[0] == grads[1]
    # a = 3: the KD term's target share is 3x the task's, so the scalars' gradients are 1 - w n / (q n_bar)
    p = make_gor_params(w_task=2.0, w_kd=0.5)
    total, _ = GoRBalancer(p, "gor_lookahead")({"task": 2 * x**2, "kd": 3 * x, "gnorm_task": torch.tensor(0.3),
                                                 "gnorm_kd": torch.tensor(0.9), "xfer_ratio": torch.tensor(3.0)})
    total.backward()
    assert float(p.s_task.grad) == pytest.approx(1 - 2.0 * 0.3 / (0.5 * 0.6), rel=1e-5)
    assert float(p.s_kd.grad) == pytest.approx(1 - 0.5 * 0.9 / (1.5 * 0.6), rel=1e-5)


def test_transfer_meter():
    """The transfers of the previous measurement's gradients to this batch's task gradient, averaged over measurements
    (exact arithmetic on hand-made vectors), kept in the exact bits of params.xfer_bits."""
    p = make_gor_params()
    meter = TransferMeter(p, beta=0.5)
    g1_t, g1_k = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.0, 0.0, 2.0])
    out = meter.measure(g1_t, g1_k)  # nothing to transfer from yet
    assert float(out["gnorm_task"]) == 5.0 and float(out["gnorm_kd"]) == 2.0 and float(out["xfer_ratio"]) == 1.0
    assert meter.state() == (0.0, 0.0, 0)
    g2_t = torch.tensor([1.0, 2.0, 3.0])
    out = meter.measure(g2_t, torch.tensor([0.0, 1.0, 0.0]))
    x_t, x_k = (3 + 8) / 5, 6 / 2  # <g2_t, g1_t> / |g1_t|, <g2_t, g1_k> / |g1_k|
    assert meter.state() == pytest.approx((x_t, x_k, 1)) and float(out["xfer_ratio"]) == pytest.approx(x_k / x_t)
    g3_t = torch.tensor([0.0, -1.0, 0.0])
    meter.measure(g3_t, g3_t)
    r_t, r_k = 0.5 * x_t + 0.5 * (-2 / 14**0.5), 0.5 * x_k + 0.5 * (-1.0)  # transfers from g2_t, g2_k to g3_t
    assert meter.state() == pytest.approx((r_t, r_k, 2))
    assert meter.ratio() == pytest.approx(r_k / r_t)
    # the state is the buffer's: a new meter on the same params (a resumed run) continues from it
    assert TransferMeter(p).state() == meter.state()
    # clipping: a KD direction that hurts the task keeps a 1/20 ratio; no positive task transfer yet: ratio 1
    p.xfer_bits.copy_(torch.tensor([1.0, -0.5, 3.0]).view(torch.int32))
    assert meter.ratio() == pytest.approx(1 / 20)
    p.xfer_bits.copy_(torch.tensor([-1.0, 0.5, 3.0]).view(torch.int32))
    assert meter.ratio() == 1.0
    with pytest.raises(ValueError, match="xfer_bits"):
        TransferMeter(torch.nn.Module())


def test_transfer_meter_stays_on_the_device_with_python_float_arithmetic():
    """No host sync in a measurement (it runs on the meta device, where any read of a value fails); on CPU the stored
    averages are bit-identical to the same update done in Python floats (float64), so CPU runs are unchanged; a
    non-finite transfer (an fp16 overflow under AMP) is not folded in."""
    meta = make_gor_params().to("meta")
    meter = TransferMeter(meta)
    g = torch.empty(7, device="meta")
    for _ in range(3):
        out = meter.measure(g, g)
    assert out["xfer_ratio"].device.type == "meta"
    GoRBalancer(meta, "gor_lookahead")({"task": g.sum(), "kd": g.sum(), **out})

    p, beta = make_gor_params(), 0.9
    meter, ref, prev = TransferMeter(p, beta), [0.0, 0.0, 0], None
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        g_t, g_k = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
        out = meter.measure(g_t, g_k)
        if prev is not None:  # the update in Python floats
            x = [float(g_t @ q / q.norm().clamp_min(torch.finfo(torch.float32).tiny)) for q in prev]
            b = beta if ref[2] else 0.0
            ref = [float(torch.tensor(b * ref[i] + (1 - b) * x[i], dtype=torch.float32)) for i in (0, 1)] + [ref[2] + 1]
        prev = (g_t, g_k)
        assert meter.state() == (ref[0], ref[1], ref[2])
        a = 1.0 if not (ref[2] and ref[0] > 0) else min(max(ref[1] / ref[0], 1 / 20), 20)
        assert float(out["xfer_ratio"]) == float(torch.tensor(a, dtype=torch.float32))
    before = p.xfer_bits.clone()
    meter.measure(torch.full((50,), float("inf")), g_k)
    assert torch.equal(p.xfer_bits, before)


def test_transfer_meter_split():
    """transfer: split: the transfers between the two halves of one batch, both directions averaged (exact arithmetic
    on hand-made vectors); the norms are the halves' mean gradients'."""
    meter = TransferMeter(make_gor_params(), beta=0.5)
    h1 = (torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.0, 0.0, 2.0]))
    h2 = (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 0.0]))
    out = meter.measure_split(h1, h2)
    x_t = ((3 + 8) / 5 + (3 + 8) / 14**0.5) / 2  # <g2_t, g1_t> / |g1_t| and <g1_t, g2_t> / |g2_t|
    x_k = (6 / 2 + 4 / 1) / 2  # <g2_t, g1_k> / |g1_k| and <g1_t, g2_k> / |g2_k|
    assert meter.state() == pytest.approx((x_t, x_k, 1))  # the first measurement already holds a transfer
    assert float(out["xfer_ratio"]) == pytest.approx(x_k / x_t)
    assert float(out["gnorm_task"]) == pytest.approx(float(torch.tensor([2.0, 3.0, 1.5]).norm()))
    assert float(out["gnorm_kd"]) == pytest.approx(float(torch.tensor([0.0, 0.5, 1.0]).norm()))
    meter.measure_split(h2, h1)  # the same pair in the other order: the same transfers, averaged in
    assert meter.state() == pytest.approx((x_t, x_k, 2))


def test_flat_gradient():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([[3.0]], requires_grad=True)
    c = torch.zeros(2, requires_grad=True)
    g = flat_gradient((a**2).sum() + 2 * b.sum(), [a, b, c])  # c unused: zeros
    assert torch.equal(g, torch.tensor([2.0, 4.0, 2.0, 0.0, 0.0])) and a.grad is None
    assert torch.equal(flat_gradient(torch.tensor(1.0), [a, b]), torch.zeros(3))  # no graph


def test_gradient_norm():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([[3.0]], requires_grad=True)
    loss = (a**2).sum() + 2 * b.sum()  # gradients (2, 4) and (2,)
    assert float(gradient_norm(loss, [a, b])) == pytest.approx(math.sqrt(4 + 16 + 4), rel=1e-6)
    assert a.grad is None and b.grad is None  # nothing accumulated
    loss.backward()  # the graph was kept for the training backward
    assert float(gradient_norm((a * 3).sum(), [a, b])) == pytest.approx(math.sqrt(18), rel=1e-6)  # b unused
    assert float(gradient_norm(torch.tensor(1.0), [a])) == 0.0  # no graph


def test_fixed_and_none():
    total, w = FixedBalancer(2.0, 0.5)(_losses())
    assert float(total) == pytest.approx(2 * LT + 0.5 * LK) and float(w["w_task"]) == 2.0 and float(w["w_kd"]) == 0.5
    total, w = NoKDBalancer()({"task": torch.tensor(LT), "kd": torch.tensor(float("nan"))})
    assert float(total) == LT and float(w["w_task"]) == 1.0 and float(w["w_kd"]) == 0.0
    total, _ = FixedBalancer(1.0, 0.0)({"task": torch.tensor(LT), "kd": torch.tensor(float("nan"))})
    assert float(total) == LT


def test_fixed_schedule():
    lin = FixedBalancer(1.0, 1.0, w_kd_end=0.2)
    exp = make_balancer(BalanceCfg(method="fixed", w_task=2.0, w_kd=1.0, w_kd_end=0.25, schedule="exp"))
    for p, w_lin, w_exp in ((0.0, 1.0, 1.0), (0.5, 0.6, 0.5), (1.0, 0.2, 0.25), (1.5, 0.2, 0.25), (-1, 1.0, 1.0)):
        lin.progress = exp.progress = p
        total, w = lin(_losses())
        assert float(w["w_kd"]) == pytest.approx(w_lin) and float(total) == pytest.approx(LT + w_lin * LK)
        total, w = exp(_losses())
        assert float(w["w_kd"]) == pytest.approx(w_exp) and float(total) == pytest.approx(2 * LT + w_exp * LK)
        assert float(w["w_task"]) == 2.0
    const = FixedBalancer(1.0, 0.5)
    const.progress = 0.7
    assert const.kd_weight() == 0.5  # no w_kd_end: progress is ignored
    to_zero = FixedBalancer(1.0, 1.0, w_kd_end=0.0)
    to_zero.progress = 1.0
    total, w = to_zero({"task": torch.tensor(LT), "kd": torch.tensor(float("nan"))})
    assert float(total) == LT and float(w["w_kd"]) == 0.0  # a weight of 0 still drops the term
    with pytest.raises(ValueError, match="exp schedule needs"):
        FixedBalancer(1.0, 1.0, w_kd_end=0.0, schedule="exp")
    with pytest.raises(ValueError, match="schedule"):
        FixedBalancer(1.0, 1.0, w_kd_end=0.5, schedule="cosine")


def test_make_balancer():
    p = make_gor_params()
    assert isinstance(make_balancer(BalanceCfg(method="fixed", w_task=1, w_kd=3)), FixedBalancer)
    assert isinstance(make_balancer(BalanceCfg(method="none")), NoKDBalancer)
    for m in ("gor", "gor_norm", "gor_grad", "gor_lookahead"):
        b = make_balancer(BalanceCfg(method=m), p)
        assert isinstance(b, GoRBalancer) and b.form == m and b.params is p and isinstance(b, Balancer)
    b = make_balancer(BalanceCfg(method="gor", w_task=1.0, w_kd=0.1))
    assert float(b.params.s_kd) == pytest.approx(math.log(10.0))
    with pytest.raises(ValueError, match="method"):
        make_balancer(BalanceCfg(method="gorr"))
    with pytest.raises(ValueError, match="form"):
        GoRBalancer(p, "norm")
    # every GoR form has the scalar lr it was benchmarked at (gor.balance.lr: auto), none falls back silently
    assert set(SCALAR_LR) == set(GoRBalancer.FORMS)


def test_bits_round_trip_half_and_save():
    p = make_gor_params()
    with torch.no_grad():
        p.s_task.fill_(0.123456789)
        p.s_kd.fill_(-1.987654321e-3)
    exact = (p.s_task.detach().clone(), p.s_kd.detach().clone())
    assert not restore_from_bits(make_gor_params())  # never synced (all zero): no-op
    sync_bits(p)
    bits = p.bits.clone()
    with torch.no_grad():
        p.s_task.add_(1.0)
    assert restore_from_bits(p)
    assert torch.equal(p.s_task.detach(), exact[0]) and torch.equal(p.s_kd.detach(), exact[1])

    # a model holding the params in kd, as the integrator does; Ultralytics saves it with .half()
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    model.kd = nn.ModuleDict({"gor": p})
    param_ref = p.s_task
    model.half()
    assert p.s_task.dtype == torch.float16 and torch.equal(p.bits, bits)
    assert float(p.s_task) != float(exact[0])  # fp16 rounding
    buf = io.BytesIO()
    torch.save({"ema": model}, buf)
    data = buf.getvalue()
    assert b"gor_det" not in data  # plain torch classes only: loads without gor_det
    loaded = torch.load(io.BytesIO(data), weights_only=False)["ema"].float()
    q = loaded.kd.gor
    assert type(q) is nn.Module and torch.equal(q.bits, bits)
    assert restore_from_bits(q)
    assert q.s_task.dtype == torch.float32 and torch.equal(q.s_task.detach(), exact[0])
    assert torch.equal(q.s_kd.detach(), exact[1])
    # restoring an fp16 module keeps the Parameter objects (optimizers hold them) and makes them float32
    assert restore_from_bits(p) and p.s_task is param_ref and p.s_task.dtype == torch.float32
    assert torch.equal(p.s_task.detach(), exact[0])
    assert gor_scalars(p) == {"s_task": float(exact[0]), "s_kd": float(exact[1])}
    # state_dict path (weights_only load)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    sd = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    fresh = make_gor_params()
    fresh.load_state_dict({k[len("kd.gor.") :]: v for k, v in sd.items() if k.startswith("kd.gor.")})
    assert restore_from_bits(fresh) and torch.equal(fresh.s_kd.detach(), exact[1])
    pickle.loads(pickle.dumps(p))
