"""gor_det.quant.kernels: the compiled CPU training kernels against PyTorch's own ops, and the fallback."""

import pytest
import torch

import gor_det  # noqa: F401  (offline env first)
from gor_det.quant import kernels
from gor_det.quant.numerics import qrange


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, True), (8, False)])
def test_compiled_kernel_equals_pytorch_kernel(bits, symmetric):
    """Forward values and input gradients bit-identical to PyTorch's kernel on unstructured data (rounding ties
    included), step-size gradient equal up to summation order; a batch-1 and a 2-D input reuse the same code."""
    qmin, qmax = qrange(bits, symmetric)
    z = torch.tensor([0.0 if symmetric else 37.0])
    for shape in [(8, 16, 24, 24), (1, 5, 7, 3), (33, 10)]:
        gen = torch.Generator().manual_seed(len(shape))
        x = (torch.randn(shape, generator=gen) * 3).requires_grad_(True)
        x[..., 0].data.copy_(torch.arange(x[..., 0].numel()).reshape(x[..., 0].shape) * 0.25)  # exact ties at s=0.5
        gy = torch.randn(shape, generator=gen)
        outs = []
        for f in (lambda *a: kernels.LSQ.apply(*a, False), torch._fake_quantize_learnable_per_tensor_affine):
            xi = x.detach().clone().requires_grad_(True)
            s = torch.tensor([0.5 if bits == 8 else 0.9], requires_grad=True)
            y = f(xi, s, z, qmin, qmax, 0.01)
            y.backward(gy)
            outs.append((y, xi.grad, s.grad))
        (y, gx, gs), (ry, rgx, rgs) = outs
        assert torch.equal(y, ry) and torch.equal(gx, rgx)
        torch.testing.assert_close(gs, rgs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (5, 7)])
def test_compiled_per_channel_equals_pytorch_kernel(shape):
    """Per-channel (weights, narrow int4/int8): forward and input gradient bit-identical to PyTorch's kernel, the
    per-channel step-size gradient equal up to summation order; conv (4-D) and linear (2-D) weights."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen) * 0.2
    gy = torch.randn(shape, generator=gen)
    c = shape[0]
    for bits in (4, 8):
        qmin, qmax = qrange(bits, True, narrow=True)
        s0 = (torch.rand(c, generator=gen) * 0.03 + 0.005)
        outs = []
        for f in (lambda *a: kernels.LSQ.apply(*a, True),
                  lambda *a: torch._fake_quantize_learnable_per_channel_affine(*a[:3], 0, *a[3:])):
            xi, s = x.clone().requires_grad_(True), s0.clone().requires_grad_(True)
            y = f(xi, s, torch.zeros(c), qmin, qmax, 0.05)
            y.backward(gy)
            outs.append((y, xi.grad, s.grad))
        (y, gx, gs), (ry, rgx, rgs) = outs
        assert torch.equal(y, ry) and torch.equal(gx, rgx)
        torch.testing.assert_close(gs, rgs, rtol=1e-5, atol=1e-6)


def test_compile_failure_falls_back_to_pytorch_kernel(monkeypatch):
    def broken(name):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(kernels, "_COMPILED", {})
    monkeypatch.setattr(kernels, "_compiled", broken)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    s = torch.tensor([0.1], requires_grad=True)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        y = kernels.lsq_fake_quant(x, s, torch.zeros(1), -128, 127, 0.01, False)
    y.sum().backward()
    assert "failed" in kernels._COMPILED and not kernels.fast_kernel_wanted(x)
    ref = torch._fake_quantize_learnable_per_tensor_affine(x.detach(), s.detach(), torch.zeros(1), -128, 127, 0.01)
    assert torch.equal(y, ref) and x.grad is not None


def test_divide_channels_equals_eager_division():
    """Forward bit-identical to ``y / f`` (computed in place); gradients for y and f equal to autograd's up to
    rounding; the eager path serves no_grad calls."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(4, 6, 9, 7, generator=gen)
    f = torch.rand(6, generator=gen) + 0.1
    f[1] = -0.7  # a negative BN gamma
    gy = torch.randn(y.shape, generator=gen)
    outs = []
    for fn in (kernels.DivideChannels.apply, lambda a, b: a / b.reshape(1, -1, 1, 1)):
        yi, fi = y.clone().requires_grad_(True), f.clone().requires_grad_(True)
        out = fn(yi * 1.0, fi)  # a non-leaf input, as a conv output is (DivideChannels writes into it)
        out.backward(gy)
        outs.append((out, yi.grad, fi.grad))
    (o, gy1, gf1), (ro, rgy, rgf) = outs
    assert torch.equal(o, ro)
    torch.testing.assert_close(gy1, rgy, rtol=1e-6, atol=0)
    torch.testing.assert_close(gf1, rgf, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(kernels.divide_channels(y, f), ro)
    assert kernels.fast_kernel_wanted(y) and not kernels.fast_kernel_wanted(y.to("meta"))


def test_retained_graph_backpropagates_twice_identically():
    """gor_grad back-propagates the same graph to the head inputs before the training backward (retain_graph): the
    compiled kernels' backward must not consume or modify what it saved (in-place unfold division included)."""
    import copy

    from torch import nn

    from gor_det.config import QuantCfg
    from gor_det.quant.modules import QConvBn2d

    torch.manual_seed(0)
    m = QConvBn2d.from_float(nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), QuantCfg())
    x0 = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        m.eval()(x0)  # initialises the step sizes
    m.train()

    def grads(probe_first: bool):
        mi = copy.deepcopy(m)  # the same BN running statistics for both (a train forward updates them)
        x = x0.clone().requires_grad_(True)
        loss = mi(x).square().sum()
        if probe_first:
            torch.autograd.grad(loss, [x], retain_graph=True)
        loss.backward()
        return [x.grad] + [p.grad for p in mi.parameters() if p.grad is not None]

    plain, probed = grads(False), grads(True)
    assert len(plain) == len(probed) > 3
    assert all(torch.equal(a, b) for a, b in zip(plain, probed))


def bench_module(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("per_channel", [False, True])
def test_plain_path_equals_pytorch_kernel_and_keeps_the_input_dtype(per_channel, monkeypatch):
    """The path a GPU takes (``plain``): forward and input gradient bit-identical to PyTorch's kernel, step-size
    gradient up to summation order; an fp16 input is saved for the backward as fp16 (no float32 copy) and quantized
    to the fp16 rounding of the float32 result."""
    monkeypatch.setenv("GOR_DET_FQ_KERNEL", "plain")
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 5, 7, 7, generator=gen)
    gy = torch.randn(x.shape, generator=gen)
    s0 = torch.rand(6, generator=gen) * 0.05 + 0.01 if per_channel else torch.tensor([0.05])
    z = torch.zeros_like(s0)
    qmin, qmax = (-127, 127) if per_channel else (-128, 127)
    outs = []
    for ref in (False, True):
        xi, s = x.clone().requires_grad_(True), s0.clone().requires_grad_(True)
        if ref:
            y = (torch._fake_quantize_learnable_per_channel_affine(xi, s, z, 0, qmin, qmax, 0.01) if per_channel else
                 torch._fake_quantize_learnable_per_tensor_affine(xi, s, z, qmin, qmax, 0.01))
        else:
            assert kernels.kernel_for(xi) == "plain"
            y = kernels.lsq_fake_quant(xi, s, z, qmin, qmax, 0.01, per_channel)
        y.backward(gy)
        outs.append((y, xi.grad, s.grad))
    (y, gx, gs), (ry, rgx, rgs) = outs
    assert torch.equal(y, ry) and torch.equal(gx, rgx)
    torch.testing.assert_close(gs, rgs, rtol=1e-5, atol=1e-6)

    xh = x.half().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        yh = kernels.lsq_fake_quant(xh, s0, z, qmin, qmax, 0.01, per_channel)
    assert yh.dtype == torch.float16 and torch.equal(yh, kernels.lsq_fake_quant(xh.float(), s0, z, qmin, qmax, 0.01,
                                                                              per_channel).half())
    assert [t.dtype for t in saved if t.shape == x.shape] == [torch.float16]
    yh.backward(gy.half())
    assert xh.grad.dtype == torch.float16


def test_plain_weight_multiplier_does_not_save_the_folded_weight(monkeypatch):
    """``Q(w * f)`` (a BN-folded weight) on the plain path: the same values and gradients as quantizing the product
    (for w, f and the step size), and the product is not kept for the backward (only w, a Parameter, and f)."""
    gen = torch.Generator().manual_seed(6)
    w0, f0 = torch.randn(8, 4, 3, 3, generator=gen) * 0.3, torch.rand(8, generator=gen) + 0.5
    s0, gy = torch.rand(8, generator=gen) * 0.02 + 0.01, torch.randn(8, 4, 3, 3, generator=gen)
    outs = []
    for mode in ("torch", "plain"):
        monkeypatch.setenv("GOR_DET_FQ_KERNEL", mode)
        w, f, s = (t.clone().requires_grad_(True) for t in (w0, f0, s0))
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, kept=saved: kept.append(t) or t, lambda t: t):
            y = kernels.lsq_fake_quant(w, s, torch.zeros(8), -127, 127, 0.02, True, multiplier=f)
        y.backward(gy)
        outs.append((y, w.grad, f.grad, s.grad))
        if mode == "plain":
            big = [t for t in saved if t.shape == w0.shape]
            assert len(big) == 1 and big[0].data_ptr() == w.data_ptr()
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gpu_path_needs_no_host_sync():
    """A QAT YOLOv8n forward + backward on the path a GPU takes makes no host sync (PyTorch's learnable fake-quant
    ops read scale.item() and zero_point.item() per quantizer and pass): on the meta device (which has no values to
    read, so any host read fails) and counted by the profiler on CPU with that path forced."""
    import copy

    probe = bench_module("amp_probe")
    _, qat = probe.students(64)
    meta = copy.deepcopy(qat).to("meta")
    assert kernels.kernel_for(torch.empty(1, device="meta")) == "plain"
    probe.output_sum(meta(torch.rand(2, 3, 64, 64, device="meta"))).backward()
    assert meta.model[2].cv1.conv.act_q.log_scale.grad is not None
    img = torch.rand(2, 3, 64, 64)
    counts = {}
    for mode in ("plain", "torch"):
        with probe.kernel(mode):
            counts[mode] = probe.host_syncs(lambda: probe.output_sum(probe.amp_forward(qat, img)).backward())
    assert counts["plain"] == 0
    assert counts["torch"] > 200  # what the step made before (and the count can fail)


def test_amp_saves_at_most_1_5x_the_stock_activation_bytes():
    """Under fp16 autocast on the GPU path, a QAT YOLOv8n keeps at most 1.5x the bytes for the backward that the
    stock model of the same weights keeps (2 x 128 x 128; PyTorch's ops, with float32 copies, keep ~2.6x)."""
    probe = bench_module("amp_probe")
    r = probe.measure(128, 2)
    assert r["qat_plain"] <= 1.5 * r["stock"], r
    assert r["qat_torch"] > 1.5 * r["stock"], r
