"""gor_det.quant.placement: the ``full`` placement finds every residual Add and Concat and ties the right scales.

The ground truth is the float model itself: every ``torch.cat`` and tensor ``+`` its forward runs outside the Detect
head and the attention internals is recorded (a TorchFunctionMode), and in the placed QAT model each of them must
read only tensors produced by activation quantizers (max-pooling and nearest upsampling pass the grid through), with
one step size for all inputs of a Concat, and each residual Add its residual input; every tensor read by several
quantized convs is read with one step size.
"""

import copy
import io

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from ultralytics.nn.tasks import DetectionModel

from gor_det.config import ConfigError, QuantCfg, parse_gor
from gor_det.quant import (
    FakeQuantizer,
    QuantModule,
    TiedQuantizer,
    convert_for_export,
    is_placed,
    prepare_qat,
    quant_modules,
    set_quant_enabled,
    strip_qat,
)
from gor_det.quant.placement import place_full

CFGS = ("yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml")
# (residual Adds, Concats) of each model's backbone + neck, counted by hand from the Ultralytics yamls:
# yolov8n: C2f shortcut in the backbone (n = 1, 2, 2, 1); 8 C2f + SPPF + 4 neck Concats.
# yolo11n: a Bottleneck per C3k2 with c3k=False, 2 per C3k, 2 PSABlock Adds in C2PSA; 8 C3k2 + 3 C3k + SPPF + C2PSA + 4
# neck Concats. yolo26n: C3k in 5 C3k2, the SPPF shortcut, a Bottleneck + PSABlock in the last neck C3k2.
PASS_OPS = {torch.nn.functional.max_pool2d, torch.nn.functional.interpolate, torch.Tensor.contiguous}


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return DetectionModel(cfg, nc=4, verbose=False).eval()


def _prepared(cfg, placement="full", x=None):
    m = _model(cfg)
    x = torch.rand(2, 3, 64, 64) if x is None else x
    prepare_qat(m, QuantCfg(calib="minmax", placement=placement), forward_loop=lambda mm: mm(x))
    return m, x


class _Recorder(TorchFunctionMode):
    """Records ``torch.cat`` and tensor ``+`` outside quantizers, QAT convs, attention internals and the head."""

    def __init__(self, src):
        super().__init__()
        self.src, self.depth, self.ops = src, 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth:
            return out
        if func is torch.cat:
            self.ops.append(("cat", [self.src.get(id(t)) for t in args[0]]))
        elif func in (torch.Tensor.__add__, torch.add, torch.Tensor.add) and all(
                isinstance(a, torch.Tensor) for a in args[:2]):
            self.ops.append(("add", [self.src.get(id(a)) for a in args[:2]]))
        elif func in PASS_OPS and isinstance(args[0], torch.Tensor) and id(args[0]) in self.src:
            self.src[id(out)] = self.src[id(args[0])]
            self.keep.append(out)
        return out


def _record(model, x):
    """``(ops, conv_inputs)``: the recorded ops with their inputs' step-size owners, and ``{tensor id: {owner}}`` for
    the inputs of quantized convs."""
    src, keep, conv_in, hooks = {}, [], {}, []
    rec = _Recorder(src)
    rec.keep = keep

    def owner(q):
        return id(q.source) if isinstance(q, TiedQuantizer) else id(q)

    def enter(*_):
        rec.depth += 1

    def leave_q(mod, args, out):
        rec.depth -= 1
        src[id(out)] = id(mod)
        keep.append(out)

    def leave(*_):
        rec.depth -= 1

    weights = {id(m.weight_q) for m in quant_modules(model).values()}
    for mod in model.modules():
        if isinstance(mod, FakeQuantizer) and id(mod) not in weights:
            hooks += [mod.register_forward_pre_hook(enter), mod.register_forward_hook(leave_q)]
        elif isinstance(mod, QuantModule):
            def pre(m, args):
                conv_in.setdefault(id(args[0]), set()).add(owner(m.act_q))
                keep.append(args[0])
                rec.depth += 1
            hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(leave)]
        elif type(mod).__name__ in ("Attention", "Detect") or isinstance(mod, nn.Conv2d):
            hooks += [mod.register_forward_pre_hook(enter), mod.register_forward_hook(leave)]
    try:
        with rec:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return rec.ops, conv_in


@pytest.mark.parametrize("cfg", CFGS)
def test_full_placement_quantizes_every_add_and_concat_with_tied_scales(cfg):
    fp_ops, _ = _record(_model(cfg), torch.rand(2, 3, 64, 64))
    m, x = _prepared(cfg)
    ops, conv_in = _record(m, x)
    assert [k for k, _ in ops] == [k for k, _ in fp_ops]  # the same Adds and Concats, in the same order
    n_add, n_cat = sum(k == "add" for k, _ in ops), sum(k == "cat" for k, _ in ops)
    assert (n_add, n_cat) == {"yolov8n.yaml": (6, 13), "yolo11n.yaml": (13, 17), "yolo26n.yaml": (18, 19)}[cfg]
    for kind, owners in ops:
        if kind == "cat":
            assert None not in owners and len(set(owners)) == 1, f"Concat inputs not on one step size: {owners}"
        else:  # the residual input is quantized, the branch (conv output) is not: TensorRT fuses the Add into the conv
            assert owners.count(None) == 1, f"residual Add inputs: {owners}"
    shared = [s for s in conv_in.values() if len(s) > 1]
    assert not shared, f"{len(shared)} tensors are read by quantized convs with different step sizes"


def test_conv_placement_leaves_adds_and_concats_float():
    m, x = _prepared("yolov8n.yaml", placement="conv")
    ops, conv_in = _record(m, x)
    assert not is_placed(m) and not any(isinstance(q, TiedQuantizer) for q in m.modules())
    assert all(None in owners for _, owners in ops)
    assert any(len(s) > 1 for s in conv_in.values())  # the neck outputs: one step size per reading conv


def test_placement_counts_and_each_step_size_saved_once():
    m = _model("yolov8n.yaml")
    prepare_qat(m, QuantCfg(calib="minmax"))
    counts = place_full(m, QuantCfg())
    assert counts["residual_adds"] == 6 and counts["concats"] == 13 and counts["blocks"] == 6 + 13
    sd = m.state_dict()
    scales = [k for k in sd if k.endswith("log_scale")]
    assert len({sd[k].data_ptr() for k in scales}) == len(scales)  # no step size appears under two names
    n_act = sum(1 for k in scales if sd[k].dim() == 0)
    convs = quant_modules(m)
    tied = sum(isinstance(q.act_q, TiedQuantizer) for q in convs.values())
    assert tied > 0 and n_act == len(convs) - tied == 37  # every step size is a conv's (docs/quantization.md: 56 -> 37)


def test_strip_is_the_exact_inverse_and_checkpoints_round_trip():
    fp = _model("yolo26n.yaml")
    m, x = _prepared("yolo26n.yaml")
    y = m(x)[0]
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert torch.equal(back(x)[0], y) and torch.equal(copy.deepcopy(m)(x)[0], y)
    assert is_placed(back)
    strip_qat(m)
    assert not is_placed(m) and set(m.state_dict()) == set(fp.state_dict())
    assert torch.allclose(m(x)[0], fp(x)[0], atol=1e-5)


def test_calibration_and_switches_reach_the_block_quantizers():
    m, x = _prepared("yolov8n.yaml")
    acts = [q for q in m.modules() if isinstance(q, FakeQuantizer) and q.channels is None]
    assert acts and all(q.is_initialized for q in acts)
    set_quant_enabled(m, acts=False)
    assert not any(q.enabled for q in acts)
    set_quant_enabled(m)
    assert all(q.enabled for q in acts)


def test_deploy_form_matches_the_fake_quant_model():
    m, x = _prepared("yolov8n.yaml")
    with torch.no_grad():
        y, yd = m(x)[0], convert_for_export(m)(x)[0]
    assert torch.allclose(y, yd, atol=1e-4, rtol=1e-5)


def test_placement_key_is_checked():
    assert parse_gor({"quant": {"placement": "full"}}).quant.placement == "full"
    with pytest.raises(ConfigError, match="did you mean 'full'"):
        parse_gor({"quant": {"placement": "ful"}})
    with pytest.raises(ValueError, match="placement"):
        prepare_qat(_model("yolov8n.yaml"), QuantCfg(placement="all"))


@pytest.mark.parametrize("cfg", CFGS)
def test_no_tensor_is_quantized_twice_by_one_quantizer(cfg):
    """Training-step cost: a tensor that a quantizer produced is never fed to the same step size again (the
    placement's ties make that an identity, so it would be a wasted fake-quant pass per call). Counted per forward."""
    m, x = _prepared(cfg)
    made, again, hooks = {}, [], []
    weights = {id(q.weight_q) for q in quant_modules(m).values()}

    def pre(q, args):
        if made.get(id(args[0])) == id(q):
            again.append(q)

    def post(q, args, out):
        made[id(out)] = id(q)
        keep.append(out)

    keep = []
    for q in m.modules():
        if isinstance(q, FakeQuantizer) and id(q) not in weights:
            hooks += [q.register_forward_pre_hook(pre), q.register_forward_hook(post)]
    try:
        with torch.no_grad():
            m(x)
    finally:
        for h in hooks:
            h.remove()
    assert not again, f"{len(again)} fake-quant passes on tensors already on their grid"


@pytest.mark.xfail(strict=True, reason="known defect: NaN step-size gradients in model.1-2 under fp16 autocast with "
                   "the full placement (finite with conv); docs/quantization.md")
def test_full_placement_under_fp16_autocast_keeps_fp16_and_trains():
    """The AMP path (CPU fp16 autocast standing in for CUDA): the placement's quantizers return the dtype they are
    given (no copies in another dtype between blocks), the Concats and Adds run under autocast, and a training step
    gives finite gradients to every step size."""
    m, x = _prepared("yolov8n.yaml")
    m.train()
    dtypes, hooks = set(), []
    for mod in m.modules():
        if isinstance(mod, TiedQuantizer):
            hooks.append(mod.register_forward_hook(lambda q, a, out: dtypes.add((a[0].dtype, out.dtype))))
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            out = m(x)
        (out["boxes"].float().mean() * 1e-3 + out["scores"].float().mean()).backward()  # (a sum overflows fp16)
    finally:
        for h in hooks:
            h.remove()
    assert dtypes and all(i == o for i, o in dtypes), dtypes
    scales = [q.log_scale for q in m.modules() if isinstance(q, FakeQuantizer)]
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in scales)
