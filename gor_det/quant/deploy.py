"""Export form of a QAT model: constant step sizes, integer weights, and only ONNX-exportable fake-quant ops.

``convert_for_export(model)`` returns a deepcopy in which every QAT module is a :class:`DeployQConv2d` /
:class:`DeployQLinear`::

    x_q = fake_quantize_per_tensor_affine(x, act_scale, act_zero_point, lo, hi)           -> QuantizeLinear/DequantizeLinear
    w   = fake_quantize_per_channel_affine(weight_int * weight_scale, weight_scale, 0, axis 0, -128, 127)  -> Q/DQ (axis 0)
    y   = conv2d(x_q, w, bias)   (or linear)

The ``full`` placement's own quantization points (residual Add and Concat inputs: :mod:`gor_det.quant.placement`)
become :class:`DeployQuant` (``fake_quantize_per_tensor_affine`` with the learned step: a QuantizeLinear /
DequantizeLinear pair in ONNX).

``weight_int`` are the integer codes training used (narrow range, |code| <= 2^(w_bits-1) - 1), stored as float32, so
``weight_int * weight_scale`` reproduces the QAT weight and the per-channel Q/DQ is exact for any ``w_bits``.

ONNX export range: the TorchScript ONNX symbolic of ``fake_quantize_*`` accepts only (qmin, qmax) in
{(-128, 127), (0, 127), (0, 255)}, so the export always uses the 8-bit grid: ``(lo, hi) = (-128, 127)`` for symmetric
activations (zero point 0, TensorRT's form) and ``(0, 255)`` for asymmetric ones. For ``a_bits = 8`` this is exactly the
training grid and the output equals the QAT module's eval output. For ``a_bits < 8`` the step size and zero point are
the trained ones but activations are NOT clipped to the low-bit grid ``[a_qmin, a_qmax]`` (kept as attributes): values
beyond the trained clipping range get extra codes. Weights are unaffected (their codes are stored).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from gor_det.quant.modules import QConv2d, QConvBn2d, QLinear, QuantModule
from gor_det.quant.numerics import FakeQuantizer, Float32Module
from gor_det.quant.placement import TiedQuantizer

W_EXPORT_RANGE = (-128, 127)


class _DeployQ(Float32Module):
    """Buffers: ``weight_int`` (codes, float32), ``weight_scale`` (Cout,), ``weight_zero_point`` (Cout,) int32 zeros,
    ``bias`` (Cout,), ``act_scale`` (), ``act_zero_point`` () int32. Attributes ``w_bits``, ``a_bits``, ``a_qmin``,
    ``a_qmax`` (the training grid of the input) and ``a_export_range`` (the 8-bit grid used by forward/export)."""

    def _init_from(self, q: QuantModule) -> None:
        wq, aq = q.weight_q, q.act_q
        if not (wq.enabled and aq.enabled):
            raise ValueError("convert_for_export: a quantizer is disabled (set_quant_enabled(model) first)")
        if not aq.is_initialized:
            raise ValueError("convert_for_export: an activation quantizer was never calibrated or run")
        w_int, w_scale, bias = q.deploy_params()
        self.register_buffer("weight_int", w_int.float())
        self.register_buffer("weight_scale", w_scale.float())
        self.register_buffer("weight_zero_point", torch.zeros(w_scale.shape, dtype=torch.int32, device=w_scale.device))
        self.register_buffer("bias", bias.float())
        self.register_buffer("act_scale", aq.scale.detach().clone().reshape(()))
        self.register_buffer("act_zero_point", aq.zero_point.detach().round().to(torch.int32).reshape(()))
        self.w_bits, self.a_bits, self.a_qmin, self.a_qmax = wq.bits, aq.bits, aq.qmin, aq.qmax
        self.a_export_range = (-128, 127) if aq.qmin < 0 else (0, 255)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.a_export_range
        return torch.fake_quantize_per_tensor_affine(x, self.act_scale, self.act_zero_point, lo, hi)

    def dequant_weight(self) -> torch.Tensor:
        """The dequantized weight ``weight_int * weight_scale`` (through a per-channel Q/DQ pair, axis 0)."""
        s = self.weight_scale.reshape(-1, *([1] * (self.weight_int.dim() - 1)))
        return torch.fake_quantize_per_channel_affine(
            self.weight_int * s, self.weight_scale, self.weight_zero_point, 0, *W_EXPORT_RANGE
        )

    def extra_repr(self) -> str:
        return f"w_bits={self.w_bits}, a_bits={self.a_bits}, a_q=[{self.a_qmin}, {self.a_qmax}]"


class DeployQConv2d(_DeployQ):
    """Export form of :class:`QConvBn2d` / :class:`QConv2d`. (B, Cin, H, W) -> (B, Cout, H', W')."""

    def __init__(self, q: QConvBn2d | QConv2d):
        super().__init__()
        conv = q.conv
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported for export (zeros only)")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self._init_from(q)

    @classmethod
    def from_qat(cls, q: QConvBn2d | QConv2d) -> DeployQConv2d:
        return cls(q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = F.conv2d(
            self.quantize_input(x.float()),
            self.dequant_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        return y.to(dtype)


class DeployQLinear(_DeployQ):
    """Export form of :class:`QLinear`. (*, in) -> (*, out)."""

    def __init__(self, q: QLinear):
        super().__init__()
        self.in_features, self.out_features = q.linear.in_features, q.linear.out_features
        self._init_from(q)

    @classmethod
    def from_qat(cls, q: QLinear) -> DeployQLinear:
        return cls(q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        return F.linear(self.quantize_input(x.float()), self.dequant_weight(), self.bias).to(dtype)


class DeployQuant(Float32Module):
    """Export form of an activation quantizer outside a conv (a :class:`FakeQuantizer` or :class:`TiedQuantizer` of
    the ``full`` placement): ``fake_quantize_per_tensor_affine`` on the 8-bit export grid (see module docstring).
    Buffers ``scale`` (), ``zero_point`` () int32; attributes ``bits``, ``qmin``, ``qmax`` (the training grid),
    ``export_range``. Any shape -> same shape and dtype."""

    def __init__(self, q: FakeQuantizer | TiedQuantizer):
        super().__init__()
        if not q.enabled:
            raise ValueError("convert_for_export: a quantizer is disabled (set_quant_enabled(model) first)")
        if not q.is_initialized:
            raise ValueError("convert_for_export: an activation quantizer was never calibrated or run")
        self.register_buffer("scale", q.scale.detach().clone().reshape(()))
        self.register_buffer("zero_point", q.zero_point.detach().round().to(torch.int32).reshape(()))
        self.bits, self.qmin, self.qmax = q.bits, q.qmin, q.qmax
        self.export_range = (-128, 127) if q.qmin < 0 else (0, 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.export_range
        x32 = x if x.dtype == torch.float32 else x.float()  # (no Cast nodes in the ONNX of a float32 model)
        y = torch.fake_quantize_per_tensor_affine(x32, self.scale, self.zero_point, lo, hi)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, q=[{self.qmin}, {self.qmax}]"


def convert_for_export(model: nn.Module) -> nn.Module:
    """A deepcopy of ``model`` with every QAT module and quantizer replaced by its export form (the original is
    untouched)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):  # first the placement's points: they may read a conv's input quantizer
        if isinstance(parent, QuantModule):
            continue
        for cname, q in list(parent.named_children()):
            if isinstance(q, (FakeQuantizer, TiedQuantizer)):
                setattr(parent, cname, DeployQuant(q))
    for parent in list(model.modules()):
        for cname, q in list(parent.named_children()):
            if isinstance(q, (QConvBn2d, QConv2d)):
                setattr(parent, cname, DeployQConv2d.from_qat(q))
            elif isinstance(q, QLinear):
                setattr(parent, cname, DeployQLinear.from_qat(q))
    return model
