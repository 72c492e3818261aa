"""research/balancers.py: the balance forms the benchmark compared, registered as plug-ins, through the same
interface, probe and criterion as the product's."""

import math

import pytest
import torch
from test_engine_kd import losses_again, save_teacher, spied_kd_student

import research.balancers  # noqa: F401  (registers the research forms)
from gor_det.balance import make_balancer, make_scalars, registered
from gor_det.config import parse_gor

LT, LK = 3.0, 0.5


@pytest.fixture(scope="module")
def teacher_pt(tiny_data, tmp_path_factory):
    import yaml

    names = yaml.safe_load(open(tiny_data))["names"]
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", nc=len(names), names=names)


pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def test_research_forms_register_on_import():
    assert {"gor_loss", "gor_loss_norm", "gor_grad", "gor_split", "fixed_task"} <= set(registered())
    b = parse_gor({"balance": {"method": "gor_loss", "w_task": 2.0, "w_kd": 0.5}}).balance
    assert b.w_task == 2.0 and type(make_balancer(b)).__name__ == "GoRLossBalancer"
    assert make_balancer(parse_gor({"balance": {"method": "gor_grad"}}).balance).scalar_lr(b) == 0.001
    # a saved run cfg naming the forms by their earlier names reads them here
    from gor_det.balance.saved import todays_gor

    saved = {"method": "gor_lookahead", "transfer": "split", "w_task": 1.0, "w_kd": 1.0}
    assert parse_gor(todays_gor({"balance": saved})).balance.method == "gor_split"
    b = parse_gor(todays_gor({"balance": {**saved, "method": "fixed", "w_task": 1.14}})).balance
    assert (b.method, b.w_task) == ("fixed_task", 1.14)


def _train(bal, steps=(600, 400), lrs=(0.05, 0.005)):
    opt = torch.optim.Adam(bal.state.parameters(), lr=lrs[0])
    for n, lr in zip(steps, lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        for _ in range(n):
            total, w = bal(torch.tensor(LT), torch.tensor(LK))
            opt.zero_grad()
            total.backward()
            opt.step()
    return total, w


def test_gor_loss_converges_to_log_losses():
    bal = make_balancer(parse_gor({"balance": {"method": "gor_loss"}}).balance)
    total, w = _train(bal)
    assert float(bal.state.s_task) == pytest.approx(math.log(LT), abs=2e-3)
    assert float(bal.state.s_kd) == pytest.approx(math.log(LK), abs=2e-3)
    assert float(w["w_task"]) == pytest.approx(1 / LT, rel=3e-3) and float(w["w_kd"]) == pytest.approx(1 / LK, rel=3e-3)
    assert float(total) == pytest.approx(2 + math.log(LT) + math.log(LK), abs=1e-4)


def test_gor_loss_norm_converges_and_keeps_scale():
    bal = make_balancer(parse_gor({"balance": {"method": "gor_loss_norm"}}).balance)
    total, w = _train(bal)
    assert float(bal.state.s_task) == pytest.approx(math.log(LT), abs=2e-3)
    assert float(w["w_task"]) == pytest.approx((LT + LK) / (2 * LT), rel=3e-3)
    assert float(total) == pytest.approx(LT + LK, rel=1e-6)  # value = L_t + L_k at any s


def test_fixed_task_weight():
    b = make_balancer(parse_gor({"balance": {"method": "fixed_task", "w_task": 2.0, "w_kd": 0.5}}).balance)
    total, w = b(torch.tensor(LT), torch.tensor(LK))
    assert float(total) == pytest.approx(2 * LT + 0.5 * LK) and float(w["w_task"]) == 2.0
    assert make_scalars(2.0, 0.5) is not None


def test_gor_grad_measures_gradient_norms_on_head_inputs(tiny_data, teacher_pt):
    """gor_grad: the balancer measures ||dL/dF|| of the task and KD losses on the Detect-head inputs F (checked
    against autograd on a second forward), and the scalars get the gradient 1 - w n / n_bar."""
    student, batch, seen = spied_kd_student(tiny_data, teacher_pt, {"method": "gor_grad", "grad_every": 2})
    student.train()
    loss, items = student(batch)
    assert {"gnorm_task", "gnorm_kd"} <= seen.keys()

    task, kd, feats = losses_again(student, batch)
    for name, term in (("gnorm_task", task), ("gnorm_kd", kd["kd"])):
        g = torch.autograd.grad(term, feats, retain_graph=True)
        ref = torch.sqrt(sum((x.double() ** 2).sum() for x in g))
        assert float(seen[name]) == pytest.approx(float(ref), rel=1e-4), name

    loss.sum().backward()
    n_t, n_k = float(seen["gnorm_task"]), float(seen["gnorm_kd"])
    n_bar = (n_t + n_k) / 2
    gp = student.kd["gor"]
    assert float(gp.s_task.grad) == pytest.approx((1 - n_t / n_bar) * 2, rel=1e-4)  # w = 1 at init; times batch size 2
    assert float(gp.s_kd.grad) == pytest.approx((1 - n_k / n_bar) * 2, rel=1e-4)
    seen.clear()
    student.eval()
    with torch.no_grad():
        student.loss(batch, student(batch["img"]))
    assert "gnorm_task" not in seen  # no gradients in validation

    # grad_every=2: measured on training calls 0, 2, 4, ...; call 1 reuses the measurement of call 0
    student.train()
    measured = []
    measure = student.criterion.balancer.measure
    student.criterion.balancer.measure = lambda probe: measured.append(1) or measure(probe)
    for _ in range(3):  # calls 1, 2, 3
        student(batch)
    assert len(measured) == 1 and float(seen["gnorm_task"]) > 0  # call 2 measured


def test_gor_split_transfer_between_batch_halves(tiny_data, teacher_pt):
    """gor_split: the transfers between the two halves of the batch at the same weights, both directions averaged,
    and the norms of the halves' mean gradients (checked against autograd)."""
    from gor_det.distill import head_outputs
    from gor_det.engine.criterion import batch_rows, head_region_parameters, select_rows

    student, batch, seen = spied_kd_student(tiny_data, teacher_pt, {"method": "gor_split", "grad_every": 1})
    crit = student.criterion
    params = [p for p in head_region_parameters(student) if p.requires_grad]
    student.train()
    preds = student(batch["img"])  # train-mode BN: the outputs of the criterion's own forward on this batch
    s_out = head_outputs(preds, crit.reg_max)
    grads = []
    for rows in (slice(0, 1), slice(1, 2)):
        task = crit.base(select_rows(preds, rows, 2), batch_rows(batch, rows))[0].sum()
        t_outs = [head_outputs(y, r) for y, r in zip(crit.teachers(batch["img"][rows]), crit.t_reg_max)]
        kd = crit.distiller(s_out.select(rows), t_outs, student.kd["adapters"])["kd"]
        grads.append([torch.cat([g.double().flatten() for g in torch.autograd.grad(
            t, params, retain_graph=True, allow_unused=True, materialize_grads=True)]) for t in (task, kd)])
    (g1_t, g1_k), (g2_t, g2_k) = grads
    x_t = float(g2_t @ g1_t / g1_t.norm() + g1_t @ g2_t / g2_t.norm()) / 2
    x_k = float(g2_t @ g1_k / g1_k.norm() + g1_t @ g2_k / g2_k.norm()) / 2

    student(batch)
    r_t, r_k, count = crit.balancer.meter.state()
    assert count == 1 and r_t == pytest.approx(x_t, rel=1e-3) and r_k == pytest.approx(x_k, rel=1e-3)
    assert float(seen["xfer_ratio"]) == pytest.approx(min(max(x_k / x_t, 0.05), 20) if x_t > 0 else 1.0, rel=1e-3)
    assert float(seen["gnorm_task"]) == pytest.approx(float(((g1_t + g2_t) / 2).norm()), rel=1e-4)
    assert float(seen["gnorm_kd"]) == pytest.approx(float(((g1_k + g2_k) / 2).norm()), rel=1e-4)




@pytest.mark.parametrize("method", ["gor_split", "gor_loss"])
def test_one_epoch_run_with_a_research_form(tiny_data, teacher_pt, tmp_path, method):
    """The research forms train through the product's trainer, criterion and hooks (scalars move, EMA holds them)."""
    from conftest import tiny_overrides

    from gor_det.engine.trainer import make_trainer_class

    gor = parse_gor({"teachers": [teacher_pt], "balance": {"method": method, "lr": 0.05, "grad_every": 1},
                     "threads": 2})
    trainer = make_trainer_class(gor)(overrides=tiny_overrides(tiny_data, tmp_path, method))
    trainer.train()
    header = trainer.csv.read_text().splitlines()[0]
    assert "gor/s_task" in header and "train/w_kd" in header
    saved = torch.load(trainer.last, weights_only=False)["model"].kd["gor"]
    assert float(saved.bits.view(torch.float32)[0]) != 0.0  # the scalars moved (exact bits in the checkpoint)
