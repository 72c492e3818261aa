"""gor_det.balance: the registry, the product's two balancers (fixed, gor), the gradient probe, exact bit storage."""

import io
import math
import re
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import gor_det  # noqa: F401
from gor_det.balance import (
    Balancer,
    FixedBalancer,
    GoRBalancer,
    GradientProbe,
    TransferMeter,
    flat_gradient,
    gradient_game,
    gradient_norm,
    make_balancer,
    make_scalars,
    register,
    registered,
    restore_from_bits,
    sync_bits,
)
from gor_det.config import BalanceCfg, ConfigError, parse_gor

LT, LK = 3.0, 0.5
NT, NK = 0.6, 1.0  # gradient norms of L_t and L_k
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # float(param) in asserts


def test_the_product_ships_two_balancers():
    # research forms register only when research.balancers is imported (this process may have imported it)
    assert {"fixed", "gor"} <= set(registered())
    assert BalanceCfg().method == "gor" and isinstance(make_balancer(), GoRBalancer)
    assert isinstance(make_balancer(BalanceCfg(method="fixed", w_kd=0.5)), FixedBalancer)
    keys = [f for f in BalanceCfg.__dataclass_fields__]
    assert keys == ["method", "w_kd", "w_kd_end", "schedule", "lr", "grad_every"]
    with pytest.raises(ConfigError, match="did you mean 'gor'"):
        make_balancer(BalanceCfg(method="gorr"))
    with pytest.raises(ConfigError, match="did you mean 'fixed'"):
        parse_gor({"balance": {"method": "fixd"}})


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test are undone after it."""
    from gor_det import config
    from gor_det.balance import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(config, "_BALANCE_CFGS", dict(config._BALANCE_CFGS))


def test_a_balancer_is_one_registered_class(scratch_registry):
    """A new balancer: a subclass with @register in one place, and the cfg section, the state and the hooks follow."""

    @dataclass
    class HalfCfg(BalanceCfg):
        share: float = 0.5

    @register("test_share", cfg=HalfCfg)
    class ShareBalancer(Balancer):
        def __call__(self, l_task, l_kd, probe=None):
            s = self.cfg.share
            return (1 - s) * l_task + s * l_kd, {"w_task": torch.tensor(1 - s), "w_kd": torch.tensor(s)}

    cfg = parse_gor({"balance": {"method": "test_share", "share": 0.25}}).balance
    b = make_balancer(cfg)
    total, w = b(torch.tensor(LT), torch.tensor(LK))
    assert float(total) == pytest.approx(0.75 * LT + 0.25 * LK) and b.state is not None and b.log_values() == {}
    with pytest.raises(ConfigError, match="unknown key 'share'"):
        parse_gor({"balance": {"method": "gor", "share": 0.25}})


def test_gor_refuses_what_it_cannot_use():
    """The balancer owns the checks of its keys (the cfg module knows no method); a run checks them before it starts
    (engine.run.check_inputs), in one line naming the key and the way out."""
    from gor_det.config import load_run_cfg
    from gor_det.engine.run import check_inputs

    for bad, message in ((["gor.balance.w_kd=0"], "gor.balance.w_kd=0.0: gor starts its scalars at s = -log(w_kd) and "
                                                  "needs w_kd > 0; for training without KD use method=fixed with w_kd: 0"),
                         (["gor.balance.w_kd_end=0.2"], "gor.balance.w_kd_end applies to method=fixed only (gor learns")):
        run = load_run_cfg(None, bad, {"data", "model"})
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_inputs(run)
        with pytest.raises(ConfigError, match=re.escape(message)):
            make_balancer(run.gor.balance)


def test_saved_run_cfgs_read_in_todays_terms():
    """A gor_cfg.yaml saved with the longer balance section (it names `transfer` and `w_task`) reads in today's
    terms: gor_lookahead with transfer next is gor, none is fixed with w_kd 0; forms that moved to the research
    package get their plug-in names (and need it imported: one line says so)."""
    from gor_det.balance.saved import todays_balance, todays_gor

    saved = {"method": "gor_lookahead", "w_task": 1.0, "w_kd": 1.0, "w_kd_end": None, "schedule": "linear",
             "lr": "auto", "grad_every": 4, "transfer": "next"}
    b = parse_gor(todays_gor({"balance": saved})).balance
    assert (b.method, b.w_kd, b.lr, b.grad_every) == ("gor", 1.0, "auto", 4)
    assert todays_balance({**saved, "method": "none"}) == {**{k: v for k, v in saved.items() if k not in (
        "transfer", "w_task")}, "method": "fixed", "w_kd": 0.0}
    assert todays_balance({**saved, "transfer": "split"})["method"] == "gor_split"
    assert todays_balance({**saved, "method": "gor"})["method"] == "gor_loss"
    assert todays_balance({**saved, "method": "fixed", "w_task": 1.14})["method"] == "fixed_task"
    assert todays_balance({"method": "gor", "w_kd": 0.5}) == {"method": "gor", "w_kd": 0.5}  # today's format
    if "gor_grad" not in registered():
        with pytest.raises(ConfigError, match="is not one of"):
            parse_gor(todays_gor({"balance": {**saved, "method": "gor_grad"}}))


def test_make_scalars_plain_module():
    p = make_scalars(w_task=2.0, w_kd=0.25)
    assert type(p) is nn.Module
    assert dict(p.named_parameters()).keys() == {"s_task", "s_kd"}
    assert p.s_task.dtype == torch.float32 and p.s_task.shape == () and p.s_kd.shape == ()
    assert float(p.s_task) == pytest.approx(-math.log(2.0)) and float(p.s_kd) == pytest.approx(math.log(4.0))
    assert p.bits.dtype == torch.int32 and p.bits.shape == (2,) and dict(p.named_buffers()).keys() == {"bits", "xfer_bits"}
    assert torch.equal(p.bits.view(torch.float32), torch.stack([p.s_task, p.s_kd]).detach())
    assert torch.equal(make_scalars().bits, torch.zeros(2, dtype=torch.int32))  # s = +0.0, never -0.0
    with pytest.raises(ValueError, match="w_kd"):
        make_scalars(1.0, 0.0)


def test_fixed_constant_schedule_and_no_kd():
    total, w = make_balancer(BalanceCfg(method="fixed", w_kd=0.5))(torch.tensor(LT), torch.tensor(LK))
    assert float(total) == pytest.approx(LT + 0.5 * LK) and float(w["w_task"]) == 1.0 and float(w["w_kd"]) == 0.5
    no_kd = make_balancer(BalanceCfg(method="fixed", w_kd=0.0))
    total, w = no_kd(torch.tensor(LT), torch.tensor(float("nan")))  # w_kd 0: the KD term is not even added
    assert float(total) == LT and float(w["w_kd"]) == 0.0 and not no_kd.wants_progress
    lin = make_balancer(BalanceCfg(method="fixed", w_kd=1.0, w_kd_end=0.2))
    exp = make_balancer(BalanceCfg(method="fixed", w_kd=1.0, w_kd_end=0.25, schedule="exp"))
    assert lin.wants_progress and exp.wants_progress
    for p, w_lin, w_exp in ((0.0, 1.0, 1.0), (0.5, 0.6, 0.5), (1.0, 0.2, 0.25), (1.5, 0.2, 0.25), (-1, 1.0, 1.0)):
        lin.set_progress(p)
        exp.set_progress(p)
        total, w = lin(torch.tensor(LT), torch.tensor(LK))
        assert float(w["w_kd"]) == pytest.approx(w_lin) and float(total) == pytest.approx(LT + w_lin * LK)
        total, w = exp(torch.tensor(LT), torch.tensor(LK))
        assert float(w["w_kd"]) == pytest.approx(w_exp)
    to_zero = make_balancer(BalanceCfg(method="fixed", w_kd=1.0, w_kd_end=0.0))
    to_zero.set_progress(1.0)
    total, w = to_zero(torch.tensor(LT), torch.tensor(float("nan")))
    assert float(total) == LT and float(w["w_kd"]) == 0.0
    with pytest.raises(ConfigError, match="schedule=exp needs"):
        make_balancer(BalanceCfg(method="fixed", w_kd=1.0, w_kd_end=0.0, schedule="exp"))


def test_gradient_game_gradients_and_convergence():
    """The gor objective: d/ds_j = 1 - w_j n_j / (q_j n_bar); the value is the weighted sum of the losses; n = 0 or
    no measurement (validation): the weights in force, no gradient for the scalars. Constant norms and ratio a: the
    scalars settle at w_t n_t = q_t n_bar, w_k n_k = q_k n_bar, q_t = 2 / (1 + a), q_k = 2a / (1 + a)."""
    p = make_scalars(w_task=2.0, w_kd=0.5)
    x = torch.tensor(1.5, requires_grad=True)
    m = {"gnorm_task": torch.tensor(0.3), "gnorm_kd": torch.tensor(0.9)}
    total, w = gradient_game(p.s_task, p.s_kd, 2 * x**2, 3 * x, m, torch.tensor(3.0))
    total.backward()
    assert float(total) == pytest.approx(2.0 * 4.5 + 0.5 * 4.5, rel=1e-6)
    assert float(p.s_task.grad) == pytest.approx(1 - 2.0 * 0.3 / (0.5 * 0.6), rel=1e-5)
    assert float(p.s_kd.grad) == pytest.approx(1 - 0.5 * 0.9 / (1.5 * 0.6), rel=1e-5)
    assert float(x.grad) == pytest.approx(2.0 * 6 + 0.5 * 3, rel=1e-5) and not w["w_task"].requires_grad
    for measured in ({"gnorm_task": torch.tensor(0.0), "gnorm_kd": torch.tensor(0.0)}, None):
        p.s_task.grad = p.s_kd.grad = None
        total, _ = gradient_game(p.s_task, p.s_kd, 2 * x**2, 3 * x, measured)
        total.backward()
        assert float(total) == pytest.approx(11.25, rel=1e-6)
        assert p.s_task.grad is None or float(p.s_task.grad) == 0.0

    a, p = 0.5, make_scalars()
    opt = torch.optim.Adam(p.parameters(), lr=0.05)
    for step in range(1000):
        if step == 600:
            opt.param_groups[0]["lr"] = 0.005
        m = {"gnorm_task": torch.tensor(NT), "gnorm_kd": torch.tensor(NK)}
        total, w = gradient_game(p.s_task, p.s_kd, torch.tensor(LT), torch.tensor(LK), m, torch.tensor(a))
        opt.zero_grad()
        total.backward()
        opt.step()
    n_bar, q_t, q_k = (NT + NK) / 2, 2 / (1 + a), 2 * a / (1 + a)
    assert float(w["w_task"]) * NT == pytest.approx(q_t * n_bar, rel=3e-3)
    assert float(w["w_kd"]) * NK == pytest.approx(q_k * n_bar, rel=3e-3)


class FakeProbe:
    """A GradientProbe stand-in: fixed gradient vectors for the task and the KD loss."""

    def __init__(self, g_task, g_kd):
        self.task, self.kd = torch.tensor(LT, requires_grad=True), torch.tensor(LK, requires_grad=True)
        self.g = {id(self.task): g_task, id(self.kd): g_kd}
        self.calls = 0

    def gradient(self, loss, where="head"):
        self.calls += 1
        return self.g[id(loss)]


def test_gor_measures_every_grad_every_steps_and_keeps_the_last_finite():
    b = make_balancer(BalanceCfg(method="gor", grad_every=2))
    assert b.wants_probe and b.scalar_lr(b.cfg) == 0.01 and set(b.log_values()) == {"s_task", "s_kd"}
    probes = [FakeProbe(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])) for _ in range(4)]
    for i, probe in enumerate(probes):
        b(probe.task, probe.kd, probe)
        assert probe.calls == (2 if i % 2 == 0 else 0), i  # calls 0 and 2 measure (task and KD gradient)
    assert b.meter.state()[2] == 1  # one transfer: from measurement 1's batch to measurement 2's
    inf = FakeProbe(torch.tensor([float("inf"), 0.0]), torch.tensor([0.0, 2.0]))
    before = b.state.xfer_bits.clone()
    b(inf.task, inf.kd, inf)  # call 4 measures, overflowed: the last finite norms stay in force
    assert torch.equal(b.state.xfer_bits, before) and float(b._last["gnorm_task"]) == 5.0
    total, w = b(torch.tensor(LT), torch.tensor(LK), None)  # validation: the weights in force
    assert float(total) == pytest.approx(LT + LK)


def test_probe_gradients_and_frozen_head():
    f = torch.tensor([[1.0, 2.0]], requires_grad=True)
    h = torch.tensor([3.0], requires_grad=True)
    task, kd = (f**2).sum() * h.sum(), (f * 2).sum()
    probe = GradientProbe(task, kd, [f], [h], scale=torch.tensor(1024.0))
    assert torch.equal(probe.gradient(task, "features"), torch.tensor([6.0, 12.0]))
    assert torch.equal(probe.gradient(task), torch.tensor([5.0]))
    assert probe.halves() is None
    with pytest.raises(ValueError, match="froze"):
        GradientProbe(task, kd, [f], [h.detach()]).gradient(kd)


def test_transfer_meter():
    """The transfers of the previous measurement's gradients to this batch's task gradient, averaged over measurements
    (exact arithmetic on hand-made vectors), kept in the exact bits of params.xfer_bits."""
    p = make_scalars()
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
    meta = make_scalars().to("meta")
    meter = TransferMeter(meta)
    g = torch.empty(7, device="meta")
    for _ in range(3):
        out = meter.measure(g, g)
    assert out["xfer_ratio"].device.type == "meta"
    gradient_game(meta.s_task, meta.s_kd, g.sum(), g.sum(), out, out["xfer_ratio"])

    p, beta = make_scalars(), 0.9
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
    meter = TransferMeter(make_scalars(), beta=0.5)
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
    assert torch.equal(flat_gradient((a**2).sum(), [a], torch.tensor(2.0**16)), torch.tensor([2.0, 4.0]))  # scaled


def test_gradient_norm():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([[3.0]], requires_grad=True)
    loss = (a**2).sum() + 2 * b.sum()  # gradients (2, 4) and (2,)
    assert float(gradient_norm(loss, [a, b])) == pytest.approx(math.sqrt(4 + 16 + 4), rel=1e-6)
    assert a.grad is None and b.grad is None  # nothing accumulated
    loss.backward()  # the graph was kept for the training backward
    assert float(gradient_norm((a * 3).sum(), [a, b])) == pytest.approx(math.sqrt(18), rel=1e-6)  # b unused


def test_bits_round_trip_half_and_save():
    p = make_scalars()
    with torch.no_grad():
        p.s_task.fill_(0.123456789)
        p.s_kd.fill_(-1.987654321e-3)
    exact = (p.s_task.detach().clone(), p.s_kd.detach().clone())
    assert not restore_from_bits(make_scalars())  # never synced (all zero): no-op
    sync_bits(p)
    bits = p.bits.clone()
    with torch.no_grad():
        p.s_task.add_(1.0)
    assert restore_from_bits(p)
    assert torch.equal(p.s_task.detach(), exact[0]) and torch.equal(p.s_kd.detach(), exact[1])

    # a model holding the state in kd, as the trainer does; Ultralytics saves it with .half()
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    model.kd = nn.ModuleDict({"gor": p})
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
    old = nn.Module()  # a state saved without xfer_bits gets the buffer on load
    old.s_task, old.s_kd = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))
    old.register_buffer("bits", torch.zeros(2, dtype=torch.int32))
    restore_from_bits(old)
    assert old.xfer_bits.shape == (3,)
