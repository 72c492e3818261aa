"""QAT modules: :class:`QConvBn2d` (conv + folded BN), :class:`QConv2d`, :class:`QLinear`.

Each wraps the float modules it replaces (kept as children, so ``to_float()`` gives them back with their trained
parameters), quantizes its INPUT with ``act_q`` (per tensor: that is where TensorRT puts the Q/DQ pair of a conv) and its
weight with ``weight_q`` (per output channel). Classes are defined statically (checkpoints pickle them by name).

BN folding in :class:`QConvBn2d` (Jacob et al. 2018; Krishnamoorthi 2018; as ``torch.ao.nn.intrinsic.qat.ConvBn2d``),
``gamma, beta, mu, var, eps`` being the BN affine parameters and running statistics, per output channel::

    f      = gamma / sqrt(var + eps)                       fold factor, (Cout,)
    w_fold = w * f                                         what is fake-quantized (fold_bn=True)
    b_fold = beta + (b_conv - mu) * f                      (b_conv = 0 for Ultralytics' bias-free convs)

    train, BN not frozen:  y = BN_batch( conv(Q_a(x), Q_w(w_fold)) / f + b_conv )     BN uses and updates batch stats
    eval, or BN frozen:    y = conv(Q_a(x), Q_w(w_fold)) + b_fold                      = the deployed conv exactly

With ``fold_bn=False`` the unfolded weight is quantized, ``Q_w(w)``, and BN runs after the conv; the deployed conv then
uses ``Q_w(w) * f``, still exact because the per-channel step size absorbs ``f`` (``s' = s * |f|``, codes times
``sign(f)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gor_det.quant.kernels import divide_channels
from gor_det.quant.numerics import SCALE_MIN, FakeQuantizer, Float32Module

_GEOMETRY = frozenset({"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                       "in_features", "out_features"})


def autocast_on(x: torch.Tensor) -> bool:
    """Whether autocast (AMP) is active for ``x``'s device type."""
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know (meta): no autocast
        return False


class QuantModule(Float32Module):
    """Common part: ``act_q`` (input, per tensor) and ``weight_q`` (weight, per output channel).

    dtypes: outside autocast the input is cast to float32 (the weights are float32, also in a ``.half()`` model) and
    the output cast back to the input's dtype. Under autocast (AMP training) the input keeps its dtype (fp16: the
    quantizer computes in float32 but saves and returns fp16) and the op runs in autocast's dtype, as the float layer
    it replaces would: no float32 copies of activations are made or kept for the backward.
    """

    act_q: FakeQuantizer
    weight_q: FakeQuantizer
    # True when the input arrives already quantized by ``act_q`` (the ``full`` placement ties it to the quantizer of
    # the Concat / residual block that feeds this conv): ``act_q`` is then not applied again, its step size is still
    # the one export writes
    input_quantized = False

    @staticmethod
    def _input(x: torch.Tensor) -> tuple[torch.Tensor, torch.dtype | None]:
        """``(input for the quantizer, dtype to cast the output to or None)``."""
        return (x, None) if autocast_on(x) else (x.float(), x.dtype)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantized else self.act_q(x)

    @staticmethod
    def _output(y: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        return y if dtype is None else y.to(dtype)

    def _init_quantizers(self, out_channels: int, device: torch.device, qcfg) -> None:
        self.act_q = FakeQuantizer.for_acts(qcfg)
        self.weight_q = FakeQuantizer.for_weights(out_channels, qcfg)
        self.float().to(device=device)  # quantizers are born on the CPU; a half model's modules become float32 here
        self.init_weight_scale()

    @torch.no_grad()
    def init_weight_scale(self, method: str | None = None) -> None:
        """Calibrate ``weight_q`` from the weight it quantizes (the folded one for QConvBn2d)."""
        self.weight_q.init_from(self.weight_to_quantize(), method)

    def weight_to_quantize(self) -> torch.Tensor:
        raise NotImplementedError

    # The wrapped layer's geometry, readable like a conv/linear: Ultralytics inspects e.g.
    # ``head.cv2[i][0].conv.in_channels`` when it loads weights (DetectionModel.load).
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _GEOMETRY:
                inner = self._modules.get("conv") or self._modules.get("linear")
                if inner is not None:
                    return getattr(inner, name)
            raise

    def deploy_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weight_int, weight_scale, bias)``: integer codes (float32), per-channel step (Cout,), bias (Cout,) such
        that the eval forward is ``op(Q_a(x), weight_int * weight_scale) + bias``."""
        raise NotImplementedError


class QConvBn2d(QuantModule):
    """Conv2d + BatchNorm2d with the BN folded into the fake-quantized weight (see module docstring).

    Children: ``conv`` (the original nn.Conv2d), ``bn`` (the original nn.BatchNorm2d, its statistics keep updating in
    train mode until :meth:`freeze_bn`), ``act_q``, ``weight_q``. Input (B, Cin, H, W) -> output (B, Cout, H', W').
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, qcfg, fold: bool | None = None):
        super().__init__()
        if bn.num_features != conv.out_channels:
            raise ValueError(f"BN has {bn.num_features} channels, conv has {conv.out_channels} outputs")
        self.conv, self.bn = conv, bn
        self.fold = bool(qcfg.fold_bn if fold is None else fold)
        self.bn_frozen = False
        self._init_quantizers(conv.out_channels, conv.weight.device, qcfg)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, qcfg) -> QConvBn2d:
        """Wrap (not copy) ``conv`` and ``bn``; the weight step sizes are calibrated from the folded weight."""
        return cls(conv, bn, qcfg)

    def to_float(self) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
        """The original float modules with the trained weights and BN parameters/statistics (unfolded)."""
        return self.conv, self.bn

    def freeze_bn(self) -> QConvBn2d:
        """From now on train mode uses the running statistics (and stops updating them): train == deploy."""
        self.bn_frozen = True
        return self

    def unfreeze_bn(self) -> QConvBn2d:
        self.bn_frozen = False
        return self

    def extra_repr(self) -> str:
        return f"fold={self.fold}, bn_frozen={self.bn_frozen}"

    # ----------------------------------------------------------------------------------------------------------------
    def _bn_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.bn
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_var)
        return gamma, beta

    def fold_factor(self) -> torch.Tensor:
        """``f = gamma / sqrt(running_var + eps)``, (Cout,)."""
        gamma, _ = self._bn_affine()
        return gamma / torch.sqrt(self.bn.running_var + self.bn.eps)

    def folded_bias(self) -> torch.Tensor:
        """``b_fold = beta + (b_conv - running_mean) * f``, (Cout,)."""
        _, beta = self._bn_affine()
        b = -self.bn.running_mean if self.conv.bias is None else self.conv.bias - self.bn.running_mean
        return beta + b * self.fold_factor()

    def weight_to_quantize(self, f: torch.Tensor | None = None) -> torch.Tensor:
        """The weight the quantizer sees: ``w * f`` (folded) or ``w``; ``f`` = :meth:`fold_factor` if already known."""
        w = self.conv.weight
        if not self.fold:
            return w
        return w * (self.fold_factor() if f is None else f).reshape(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, dtype = self._input(x)
        x = self._quantize_input(x)
        f = self.fold_factor()
        w = self.weight_q(self.conv.weight, f) if self.fold else self.weight_q(self.conv.weight)  # Q_w(w * f) | Q_w(w)
        if self.training and not self.bn_frozen:
            y = self.conv._conv_forward(x, w, None)
            if self.fold:  # undo the fold so BN can normalise with the batch statistics (torch.ao's ConvBn2d)
                y = divide_channels(y, torch.where(f.abs() > 1e-12, f, 1e-12))
            if self.conv.bias is not None:
                y = y + self.conv.bias.reshape(1, -1, 1, 1)
            y = self.bn(y)
        else:  # deploy form
            if not self.fold:
                w = w * f.reshape(-1, 1, 1, 1)
            y = self.conv._conv_forward(x, w, self.folded_bias())
        return self._output(y, dtype)

    @torch.no_grad()
    def deploy_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes, s = self.weight_q.int_codes(self.weight_to_quantize()), self.weight_q.scale.detach().clone()
        if not self.fold:  # Q(w) * f = (codes * sign f) * (s * |f|)
            f = self.fold_factor()
            codes = codes * torch.where(f < 0, -1.0, 1.0).reshape(-1, 1, 1, 1)
            s = (s * f.abs()).clamp_min(SCALE_MIN)
        return codes, s, self.folded_bias().detach().clone()


class QConv2d(QuantModule):
    """Fake-quantized plain nn.Conv2d (bias kept in float), e.g. a head's output conv. Child ``conv`` is the
    original module. (B, Cin, H, W) -> (B, Cout, H', W')."""

    def __init__(self, conv: nn.Conv2d, qcfg):
        super().__init__()
        self.conv = conv
        self._init_quantizers(conv.out_channels, conv.weight.device, qcfg)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, qcfg) -> QConv2d:
        return cls(conv, qcfg)

    def to_float(self) -> nn.Conv2d:
        return self.conv

    def weight_to_quantize(self) -> torch.Tensor:
        return self.conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, dtype = self._input(x)
        y = self.conv._conv_forward(self._quantize_input(x), self.weight_q(self.conv.weight), self.conv.bias)
        return self._output(y, dtype)

    @torch.no_grad()
    def deploy_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.conv
        bias = c.bias.detach().clone() if c.bias is not None else torch.zeros(c.out_channels, device=c.weight.device)
        return self.weight_q.int_codes(c.weight), self.weight_q.scale.detach().clone(), bias


class QLinear(QuantModule):
    """Fake-quantized nn.Linear. Child ``linear`` is the original module. (*, in) -> (*, out)."""

    def __init__(self, linear: nn.Linear, qcfg):
        super().__init__()
        self.linear = linear
        self._init_quantizers(linear.out_features, linear.weight.device, qcfg)

    @classmethod
    def from_float(cls, linear: nn.Linear, qcfg) -> QLinear:
        return cls(linear, qcfg)

    def to_float(self) -> nn.Linear:
        return self.linear

    def weight_to_quantize(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, dtype = self._input(x)
        return self._output(F.linear(self._quantize_input(x), self.weight_q(self.linear.weight), self.linear.bias), dtype)

    @torch.no_grad()
    def deploy_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.linear
        bias = m.bias.detach().clone() if m.bias is not None else torch.zeros(m.out_features, device=m.weight.device)
        return self.weight_q.int_codes(m.weight), self.weight_q.scale.detach().clone(), bias


QUANT_MODULES = (QConvBn2d, QConv2d, QLinear)


def quant_modules(model: nn.Module) -> dict[str, QuantModule]:
    """``{dotted name: module}`` of every QAT module in ``model``, in ``named_modules`` order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANT_MODULES)}
