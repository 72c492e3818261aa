"""gor_det.quant.transform / calibrate / deploy on a real Ultralytics yolov8n (built from YAML, nc=10, random init)."""

import copy
import io

import pytest
import torch
from torch import nn

import gor_det  # noqa: F401  (offline env before ultralytics)
from gor_det.config import QuantCfg
from gor_det.quant import (
    DEFAULT_SKIP,
    DeployQConv2d,
    FakeQuantizer,
    QConv2d,
    QConvBn2d,
    calibrate,
    convert_for_export,
    freeze_bn,
    is_qat,
    prepare_qat,
    quant_modules,
    quant_scale_parameters,
    quant_state_dict,
    set_quant_enabled,
    strip_qat,
)

ultralytics_tasks = pytest.importorskip("ultralytics.nn.tasks")
Conv = pytest.importorskip("ultralytics.nn.modules.conv").Conv

SKIPPED = {"model.0.conv", "model.22.dfl.conv"} | {f"model.22.cv{j}.{i}.2" for j in (2, 3) for i in range(3)}
X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def yolov8n():
    torch.manual_seed(0)
    m = ultralytics_tasks.DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    with torch.no_grad():  # non-trivial BN statistics so that folding matters
        for bn in (mm for mm in m.modules() if isinstance(mm, nn.BatchNorm2d)):
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return m.eval()


def out(m, x=X):
    m.eval()
    with torch.no_grad():
        return m(x)[0]


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def qat_model():
    """A calibrated QAT yolov8n after two training forwards (BN stats moved) and its float original."""
    m = yolov8n()
    ref = copy.deepcopy(m)
    prepare_qat(m, QuantCfg(calib="minmax"), forward_loop=lambda mm: mm(X))
    m.train()
    with torch.no_grad():
        m(X)
        m(X)
    return m.eval(), ref


def test_prepare_counts_and_default_skips(qat_model):
    m, ref = qat_model
    n_blocks = sum(isinstance(x, Conv) for x in ref.modules())
    qm = quant_modules(m)
    assert sum(isinstance(x, QConvBn2d) for x in qm.values()) == n_blocks - 1 == 56  # all but model.0
    assert not any(isinstance(x, QConv2d) for x in qm.values())  # every plain conv of v8n is a default skip
    float_convs = {n for n, x in m.named_modules() if type(x) is nn.Conv2d}
    float_convs = {n for n in float_convs if not any(n.startswith(q + ".") for q in qm)}  # not inside a QAT module
    assert float_convs == SKIPPED
    assert all(isinstance(m.get_submodule(n.rsplit(".", 1)[0]), Conv) for n in qm)
    blk = m.model[1]
    assert not hasattr(blk, "bn") and blk.__dict__["forward"] == blk.forward_fuse
    assert hasattr(m.model[0], "bn") and "forward" not in m.model[0].__dict__
    assert is_qat(m) and not is_qat(ref) and not is_qat("yolov8n.pt")
    assert all(q.is_initialized for q in m.modules() if isinstance(q, FakeQuantizer))
    with pytest.raises(ValueError):
        prepare_qat(m, QuantCfg())


def test_skip_globs_and_filter():
    m = prepare_qat(yolov8n(), QuantCfg(calib="minmax", skip=["model.2.*", "*.dfl.conv"]))
    qm = quant_modules(m)
    assert "model.0.conv" in qm and not any(n.startswith("model.2.") for n in qm)
    assert isinstance(m.model[22].cv2[0][2], QConv2d) and not isinstance(m.model[22].dfl.conv, QConv2d)
    m2 = prepare_qat(yolov8n(), QuantCfg(calib="minmax"), filter_fn=lambda mod, name: name.startswith("model.1."))
    assert list(quant_modules(m2)) == ["model.1.conv"]
    assert DEFAULT_SKIP == ("model.0.conv", "*.dfl.conv", "*cv2.*.2", "*cv3.*.2")


def test_train_forward_backward_gives_scale_grads(qat_model):
    m, _ = qat_model
    m = copy.deepcopy(m).train()
    preds = m(X)
    loss = preds["boxes"].float().square().mean() + preds["scores"].float().square().mean()
    loss.backward()
    params = quant_scale_parameters(m)
    assert len(params) == 2 * 56 and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert sum(bool((p.grad != 0).any()) for p in params) >= 0.9 * len(params)


def test_quant_disabled_and_strip_round_trip(qat_model):
    m, ref = qat_model
    # right after prepare, strip gives back the very same float model
    fresh = prepare_qat(copy.deepcopy(ref), QuantCfg(calib="minmax"))
    stripped = strip_qat(fresh)
    assert not is_qat(stripped) and list(stripped.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(stripped.state_dict().values(), ref.state_dict().values()))
    assert "forward" not in stripped.model[1].__dict__ and hasattr(stripped.model[1], "bn")
    assert torch.equal(out(stripped), out(ref))
    # after training forwards: quantization off == the stripped float model with the trained BN statistics
    q = copy.deepcopy(m)
    set_quant_enabled(q, weights=False, acts=False)
    y_off = out(q)
    s = strip_qat(copy.deepcopy(m))
    torch.testing.assert_close(out(s), y_off, rtol=1e-4, atol=1e-3)
    assert rel(out(m), y_off) < 0.05  # 8-bit QAT stays close to float
    assert not torch.equal(s.model[1].bn.running_mean, ref.model[1].bn.running_mean)


def test_deepcopy_pickle_half_keep_quant_state(qat_model):
    m, _ = qat_model
    sd, y = quant_state_dict(m), out(m)
    assert len(sd) == 3 * 2 * 56
    buf = io.BytesIO()
    torch.save({"ema": copy.deepcopy(m).half()}, buf)  # what Ultralytics' save_model does
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)["ema"]
    assert (
        loaded.model[1].conv.conv.weight.dtype == torch.float32 and loaded.model[0].conv.weight.dtype == torch.float16
    )
    for m2 in (copy.deepcopy(m), loaded.float()):
        sd2 = quant_state_dict(m2)
        assert sd2.keys() == sd.keys() and all(torch.equal(sd2[k], v) for k, v in sd.items())
    assert torch.equal(out(copy.deepcopy(m)), y)
    assert rel(out(loaded), y) < 1e-3  # only the float (skipped) layers went through fp16


def test_dtype_conversion_keeps_each_tensor_on_its_device(qat_model):
    # a CUDA model's .half() (AutoBackend, the validator, save_model's deepcopy(ema).half()) must not send the QAT
    # tensors to another device; the meta device stands in for CUDA (the conversion is worked out on the CPU otherwise)
    m, _ = qat_model
    m = copy.deepcopy(m).to("meta")
    qat = {id(t) for q in quant_modules(m).values() for t in (*q.parameters(), *q.buffers())}
    for convert in (lambda mm: mm.half(), lambda mm: mm.to(torch.float16), lambda mm: mm.to("meta", torch.float16)):
        convert(m)
        for t in (*m.parameters(), *m.buffers()):
            assert t.device.type == "meta"
            if t.is_floating_point():
                assert t.dtype == (torch.float32 if id(t) in qat else torch.float16)
    m.model.to_empty(device="cpu")  # a device move still moves everything, QAT state still float32
    q = quant_modules(m)["model.1.conv"]
    assert q.weight_q.log_scale.device.type == "cpu" and q.weight_q.log_scale.dtype == torch.float32
    assert q.conv.weight.device.type == "cpu" and m.model[0].conv.weight.dtype == torch.float16


def test_ultralytics_fuse_leaves_qat_alone(qat_model):
    m, _ = qat_model
    y = out(m)
    f = copy.deepcopy(m).fuse(verbose=False)
    assert isinstance(f.model[1].conv, QConvBn2d) and not hasattr(f.model[0], "bn")
    torch.testing.assert_close(out(f), y, rtol=1e-4, atol=1e-3)


def test_freeze_bn_train_equals_eval(qat_model):
    m = copy.deepcopy(qat_model[0])
    freeze_bn(m)
    assert all(x.bn_frozen for x in quant_modules(m).values())
    m.train()
    m.model[0].bn.eval()  # the skipped first conv is plain float: its BN is not QAT's to freeze
    with torch.no_grad():
        feats_train = m(X)["feats"]
    m.eval()
    with torch.no_grad():
        feats_eval = m(X)[1]["feats"]
    for a, b in zip(feats_train, feats_eval):
        assert torch.equal(a, b)


@pytest.mark.parametrize("calib", ["minmax", "percentile", "mse"])
def test_calibrate_methods(calib):
    m = prepare_qat(yolov8n(), QuantCfg(calib=calib))
    seen = {}
    h = m.model[1].register_forward_pre_hook(lambda mod, inp: seen.setdefault("x", inp[0].detach()))
    calibrate(m, lambda mm: mm(X), QuantCfg(calib=calib))
    h.remove()
    aq, wq = m.model[1].conv.act_q, m.model[1].conv.weight_q
    amax, s = float(seen["x"].abs().max()), float(aq.scale.detach())
    w_amax = m.model[1].conv.weight_to_quantize().detach().abs().amax((1, 2, 3))
    if calib == "minmax":
        assert abs(s - amax / 127) <= 1e-6 * amax
        torch.testing.assert_close(wq.scale.detach(), w_amax / 127, rtol=1e-5, atol=0)
    else:
        assert 0.05 * amax / 127 < s <= amax / 127 * (1 + 1e-6)
        assert (wq.scale.detach() <= w_amax / 127 * (1 + 1e-5)).all()
    assert not any(q.observing for q in m.modules() if isinstance(q, FakeQuantizer))
    assert all(q._obs is None for q in m.modules() if isinstance(q, FakeQuantizer))


@pytest.mark.parametrize("fold", [True, False])
def test_convert_for_export_matches_qat_eval(qat_model, fold):
    if fold:
        m = qat_model[0]
    else:
        m = prepare_qat(yolov8n(), QuantCfg(calib="minmax", fold_bn=False), forward_loop=lambda mm: mm(X))
    y = out(m)
    d = convert_for_export(m)
    assert sum(isinstance(x, DeployQConv2d) for x in d.modules()) == 56 and is_qat(m)
    assert not any(isinstance(x, QConvBn2d) for x in d.modules())
    yd = out(d)
    assert rel(yd, y) < 1e-5


def test_low_bits_model_runs():
    m = prepare_qat(
        yolov8n(), QuantCfg(w_bits=2, a_bits=3, a_symmetric=False, calib="minmax"), forward_loop=lambda mm: mm(X)
    ).train()
    preds = m(X)
    preds["scores"].float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in quant_scale_parameters(m) if p.grad is not None)
