"""gor_det.quant.modules (QConvBn2d, QConv2d, QLinear) and their export form (gor_det.quant.deploy)."""

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gor_det  # noqa: F401
from gor_det.config import QuantCfg
from gor_det.quant import (
    DeployQConv2d,
    DeployQLinear,
    QConv2d,
    QConvBn2d,
    QLinear,
    convert_for_export,
    quant_state_dict,
    set_quant_enabled,
)

torch.manual_seed(0)


def conv_bn(cin=8, cout=16, k=3, s=1, g=1, seed=0):
    """A conv + BN with non-trivial affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False)
    bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.2)
        bn.weight.copy_(torch.rand(cout, generator=gen) * 1.5 + 0.2)
        bn.weight[0] = -0.7  # a negative gamma flips the folded weight's sign
        bn.bias.copy_(torch.randn(cout, generator=gen) * 0.3)
        bn.running_mean.copy_(torch.randn(cout, generator=gen) * 0.5)
        bn.running_var.copy_(torch.rand(cout, generator=gen) * 2 + 0.1)
    return conv, bn


def x_in(c=8, seed=1):
    return torch.randn(4, c, 10, 10, generator=torch.Generator().manual_seed(seed))


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-12))


@pytest.mark.parametrize("fold", [True, False])
def test_convbn_quant_disabled_equals_float_eval_and_train(fold):
    conv, bn = conv_bn()
    ref_conv, ref_bn = copy.deepcopy(conv), copy.deepcopy(bn)
    q = QConvBn2d.from_float(conv, bn, QuantCfg(fold_bn=fold))
    q.act_q.enabled = q.weight_q.enabled = False
    x = x_in()
    q.eval(), ref_bn.eval()
    torch.testing.assert_close(q(x), ref_bn(ref_conv(x)), rtol=1e-5, atol=1e-5)
    q.train(), ref_bn.train()
    for _ in range(2):  # batch statistics, and the running statistics they update, match too
        torch.testing.assert_close(q(x), ref_bn(ref_conv(x)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.bn.running_mean, ref_bn.running_mean)
    torch.testing.assert_close(q.bn.running_var, ref_bn.running_var)


@pytest.mark.parametrize("fold", [True, False])
def test_convbn_eval_is_deploy_form(fold):
    conv, bn = conv_bn()
    q = QConvBn2d.from_float(conv, bn, QuantCfg(fold_bn=fold)).eval()
    x = x_in()
    q.act_q.init_from(x)
    f = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    b_fold = bn.bias - bn.running_mean * f
    xq = q.act_q(x)
    if fold:
        w = q.weight_q(conv.weight * f.view(-1, 1, 1, 1))
    else:
        w = q.weight_q(conv.weight) * f.view(-1, 1, 1, 1)
    ref = F.conv2d(xq, w, b_fold, 1, 1)
    assert torch.equal(q(x), ref)
    assert len(torch.unique(xq)) <= 256
    codes = torch.round(w / (w.abs().amax((1, 2, 3), keepdim=True) / 127))
    assert codes.abs().max() <= 127


def test_freeze_bn_train_equals_eval_and_stops_stats():
    conv, bn = conv_bn()
    q = QConvBn2d.from_float(conv, bn, QuantCfg())
    x = x_in()
    q.train()
    y_train = q(x)
    q.eval()
    assert not torch.allclose(y_train, q(x), atol=1e-3)  # batch stats differ from running stats
    q.freeze_bn()
    mean = q.bn.running_mean.clone()
    q.train()
    y = q(x)
    y.sum().backward()
    assert torch.equal(q.bn.running_mean, mean)
    q.eval()
    assert torch.equal(y, q(x))
    assert q.bn.weight.grad is not None and q.weight_q.log_scale.grad is not None


def test_convbn_gradients_and_to_float():
    conv, bn = conv_bn()
    q = QConvBn2d.from_float(conv, bn, QuantCfg(w_bits=4, a_bits=4)).train()
    x = x_in().requires_grad_()
    q(x).square().mean().backward()
    for p in (q.conv.weight, q.bn.weight, q.bn.bias, q.weight_q.log_scale, q.act_q.log_scale, x):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    c, b = q.to_float()
    assert c is conv and b is bn  # the original float modules, unfolded, with trained parameters


@pytest.mark.parametrize("bits", range(2, 9))
def test_all_bits_run(bits):
    conv, bn = conv_bn()
    cfg = QuantCfg(w_bits=bits, a_bits=bits, a_symmetric=bits % 2 == 0)
    q = QConvBn2d.from_float(conv, bn, cfg).train()
    x = x_in()
    q(x).sum().backward()
    assert torch.isfinite(q.weight_q.log_scale.grad).all()
    w_codes = q.weight_q.int_codes(q.weight_to_quantize())
    assert w_codes.abs().max() <= 2 ** (bits - 1) - 1
    q.eval()
    assert len(torch.unique(q.act_q(x))) <= 2**bits


def test_depthwise_conv():
    conv, bn = conv_bn(8, 8, 3, 2, g=8)
    ref_c, ref_b = copy.deepcopy(conv), copy.deepcopy(bn).eval()
    q = QConvBn2d.from_float(conv, bn, QuantCfg()).eval()
    x = x_in()
    y = q(x)
    assert y.shape == (4, 8, 5, 5) and q.weight_q.log_scale.shape == (8,)
    assert rel(y, ref_b(ref_c(x))) < 0.02  # 8-bit error is small
    d = DeployQConv2d.from_qat(q)
    assert d.groups == 8
    torch.testing.assert_close(d(x), y, rtol=1e-5, atol=1e-5)


def test_qconv2d_and_qlinear():
    conv = nn.Conv2d(8, 6, 1, bias=True)
    lin = nn.Linear(12, 5)
    ref_c, ref_l = copy.deepcopy(conv), copy.deepcopy(lin)
    qc, ql = QConv2d.from_float(conv, QuantCfg()), QLinear.from_float(lin, QuantCfg())
    x, v = x_in(), torch.randn(3, 7, 12)
    for m, inp, ref in ((qc, x, ref_c), (ql, v, ref_l)):
        y = m(inp)
        assert rel(y, ref(inp)) < 0.02
        m.act_q.enabled = m.weight_q.enabled = False
        assert torch.equal(m(inp), ref(inp))
        m.act_q.enabled = m.weight_q.enabled = True
        assert m.to_float() is (conv if m is qc else lin)
    y = qc(x)
    torch.testing.assert_close(y, F.conv2d(qc.act_q(x), qc.weight_q(conv.weight), conv.bias))
    torch.testing.assert_close(ql(v), F.linear(ql.act_q(v), ql.weight_q(lin.weight), lin.bias))


def test_half_keeps_float32_and_pickles_exactly():
    conv, bn = conv_bn()
    q = QConvBn2d.from_float(conv, bn, QuantCfg())
    x = x_in()
    q.train()
    q(x)
    q.eval()
    y = q(x)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q.half()
    assert all(v.dtype == torch.float32 for v in q.state_dict().values() if v.is_floating_point())
    yh = q(x.half())
    assert yh.dtype == torch.float16
    q.float()
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    for q2 in (torch.load(buf, weights_only=False), copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert all(torch.equal(v, state[k]) for k, v in q2.state_dict().items())
        assert torch.equal(q2(x), y)


@pytest.mark.parametrize("a_symmetric", [True, False])
@pytest.mark.parametrize("kind", ["convbn", "convbn_nofold", "conv", "linear"])
def test_deploy_equals_qat_eval(kind, a_symmetric):
    cfg = QuantCfg(a_symmetric=a_symmetric, fold_bn=kind != "convbn_nofold")
    if kind.startswith("convbn"):
        q, x = QConvBn2d.from_float(*conv_bn(), cfg), x_in()
        q.train()
        q(x)  # move BN statistics away from the calibrated state
    elif kind == "conv":
        q, x = QConv2d.from_float(nn.Conv2d(8, 6, 3, padding=1), cfg), x_in()
    else:
        q, x = QLinear.from_float(nn.Linear(8, 6), cfg), torch.randn(5, 8)
    q.act_q.init_from(x.relu() if not a_symmetric else x)
    q.eval()
    d = (DeployQLinear if kind == "linear" else DeployQConv2d).from_qat(q)
    assert d.weight_int.dtype == torch.float32 and torch.equal(d.weight_int, d.weight_int.round())
    assert d.weight_int.abs().max() <= 127 and d.act_zero_point.dtype == torch.int32
    cout = d.weight_int.shape[0]
    assert d.weight_scale.shape == d.bias.shape == (cout,) and d.act_scale.shape == ()
    assert (d.a_qmin, d.a_qmax) == ((-128, 127) if a_symmetric else (0, 255))
    y, yd = q(x), d(x)
    assert rel(yd, y) < 1e-5
    torch.testing.assert_close(yd, y, rtol=1e-5, atol=1e-5)


def test_convert_for_export_copies_and_checks():
    m = nn.Sequential(
        QConv2d.from_float(nn.Conv2d(3, 4, 3), QuantCfg()), nn.ReLU(), QConvBn2d.from_float(*conv_bn(4, 4), QuantCfg())
    )
    x = torch.randn(1, 3, 8, 8)
    m.eval()
    with pytest.raises(ValueError):
        set_quant_enabled(m, weights=False)
        convert_for_export(m)
    set_quant_enabled(m)
    y = m(x)  # runs (and initialises) the activation quantizers
    sd = quant_state_dict(m)
    d = convert_for_export(m)
    assert isinstance(d[0], DeployQConv2d) and isinstance(d[2], DeployQConv2d) and isinstance(m[0], QConv2d)
    assert all(torch.equal(v, sd[k]) for k, v in quant_state_dict(m).items())
    torch.testing.assert_close(d(x), y, rtol=1e-5, atol=1e-5)


def test_onnx_export_has_qdq_nodes(tmp_path):
    onnx = pytest.importorskip("onnx")
    conv, bn = conv_bn(3, 4)
    m = nn.Sequential(
        QConvBn2d.from_float(conv, bn, QuantCfg()),
        nn.SiLU(),
        QConv2d.from_float(nn.Conv2d(4, 2, 1), QuantCfg(w_bits=4, a_bits=4)),
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    m(x)
    d = convert_for_export(m).eval()
    f = tmp_path / "m.onnx"
    torch.onnx.export(d, (x,), str(f), dynamo=False, opset_version=13, input_names=["images"])
    ops = [n.op_type for n in onnx.load(str(f)).graph.node]
    assert ops.count("QuantizeLinear") == 4 and ops.count("DequantizeLinear") == 4  # 2 inputs + 2 weights
    assert ops.count("Conv") == 2
