"""Model transforms (torchao style: a function of (model, config, filter), in place, with its exact inverse).

``prepare_qat`` walks the model and replaces, unless skipped:

* a *Conv block* (duck-typed Ultralytics ``Conv``/``DWConv``: children exactly ``conv: nn.Conv2d``, ``bn:
  nn.BatchNorm2d``, ``act``, and a ``forward_fuse(x) = act(conv(x))`` method): ``.conv`` becomes
  :class:`QConvBn2d` (which now owns the BN), ``.bn`` is deleted and the instance attribute ``forward = forward_fuse``
  is set, which is exactly what Ultralytics' own ``fuse()`` does, so ``model.fuse()`` leaves the block alone;
* any other ``nn.Conv2d`` -> :class:`QConv2d`, ``nn.Linear`` -> :class:`QLinear`;
* convs inside other conv+BN modules (``Conv2``, ``RepConv``: ``fuse()`` would re-parameterise them) and the
  ``out_proj`` of ``nn.MultiheadAttention`` (read as a raw weight) stay float;
* with ``qcfg.placement == "full"``, the residual Adds and Concats are quantized too, with tied step sizes
  (:func:`gor_det.quant.placement.place_full`).

Skip globs (``qcfg.skip`` or :data:`DEFAULT_SKIP`) are matched with ``fnmatchcase`` against the dotted name of the
``nn.Conv2d`` / ``nn.Linear`` being replaced, relative to the model passed in (for a Conv block: ``<block>.conv``).
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase

import torch
from torch import nn

from gor_det.quant.calibrate import calibrate
from gor_det.quant.modules import QConv2d, QConvBn2d, QLinear, QuantModule, quant_modules
from gor_det.quant.numerics import FakeQuantizer
from gor_det.quant.placement import PLACEMENTS, place_full, unplace

# YOLO defaults: the first conv (sees raw pixels; tiny and accuracy-critical), DFL's fixed integral conv, and the final
# 1x1 output convs of the Detect head (box/class logits; also one2one_cv2/one2one_cv3 of end-to-end heads).
DEFAULT_SKIP = ("model.0.conv", "*.dfl.conv", "*cv2.*.2", "*cv3.*.2")

FilterFn = Callable[[nn.Module, str], bool]


def is_conv_block(m: nn.Module) -> bool:
    """True for a module shaped like Ultralytics' ``Conv`` (children conv/bn/act only, with ``forward_fuse``)."""
    children = dict(m.named_children())
    return (
        isinstance(children.get("conv"), nn.Conv2d)
        and isinstance(children.get("bn"), nn.BatchNorm2d)
        and "act" in children
        and set(children) <= {"conv", "bn", "act"}
        and callable(getattr(m, "forward_fuse", None))
    )


def skip_filter(patterns) -> FilterFn:
    """``filter_fn(module, name) -> bool`` (True = quantize) that rejects names matching any glob in ``patterns``."""
    patterns = tuple(patterns)
    return lambda module, name: not any(fnmatchcase(name, p) for p in patterns)


def prepare_qat(model: nn.Module, qcfg, forward_loop=None, filter_fn: FilterFn | None = None) -> nn.Module:
    """Insert QAT modules in place (see module docstring) and return ``model``.

    ``filter_fn(module, name)``: True to quantize the nn.Conv2d / nn.Linear ``name``; default: not matching the globs
    of ``qcfg.skip`` (None: :data:`DEFAULT_SKIP`). Weight step sizes are calibrated from the weights right away;
    with ``forward_loop`` the activations are calibrated too (:func:`calibrate`), otherwise each activation quantizer
    initialises itself from its first input.
    """
    if is_qat(model):
        raise ValueError("prepare_qat: the model already holds QAT modules (strip_qat first)")
    keep = filter_fn or skip_filter(DEFAULT_SKIP if qcfg.skip is None else qcfg.skip)
    blocks, plain = [], []
    for name, m in model.named_modules():
        if is_conv_block(m):
            if keep(m.conv, _join(name, "conv")):
                blocks.append(m)
            continue
        for cname, c in m.named_children():
            full = _join(name, cname)
            if not isinstance(c, (nn.Conv2d, nn.Linear)) or isinstance(m, nn.MultiheadAttention):
                continue  # MultiheadAttention reads out_proj.weight directly: stays float
            if isinstance(c, nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d):
                continue  # conv of a conv+BN module that is not a plain Conv block (Conv2, RepConv): stays float
            if keep(c, full):
                plain.append((m, cname, c))
    for m in blocks:
        m.conv = QConvBn2d.from_float(m.conv, m.bn, qcfg)
        del m.bn
        m.forward = m.forward_fuse  # instance attribute, like Ultralytics' fuse(); strip_qat deletes it
    for parent, cname, c in plain:
        setattr(parent, cname, QConv2d.from_float(c, qcfg) if isinstance(c, nn.Conv2d) else QLinear.from_float(c, qcfg))
    placement = getattr(qcfg, "placement", "conv")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r} is not one of {', '.join(PLACEMENTS)}")
    if placement == "full":
        place_full(model, qcfg)
    if forward_loop is not None:
        calibrate(model, forward_loop, qcfg)
    return model


def strip_qat(model: nn.Module) -> nn.Module:
    """Exact inverse of :func:`prepare_qat`, in place: the float modules with their trained (unfolded) weights, BN put
    back on its Conv block and the block's ``forward`` restored (and the ``full`` placement's blocks as they were).
    Returns ``model``."""
    unplace(model)
    for parent in list(model.modules()):
        for cname, q in list(parent.named_children()):
            if isinstance(q, QConvBn2d):
                conv, bn = q.to_float()
                if cname == "conv" and callable(getattr(parent, "forward_fuse", None)):
                    parent.conv, parent.bn = conv, bn
                    parent.__dict__.pop("forward", None)  # back to the class's forward: act(bn(conv(x)))
                else:
                    setattr(parent, cname, nn.Sequential(conv, bn))
            elif isinstance(q, (QConv2d, QLinear)):
                setattr(parent, cname, q.to_float())
    return model


def is_qat(model) -> bool:
    """True if ``model`` (any object) is an nn.Module holding gor_det quantizers."""
    return isinstance(model, nn.Module) and any(isinstance(m, (FakeQuantizer, QuantModule)) for m in model.modules())


def freeze_bn(model: nn.Module) -> nn.Module:
    """Freeze the BN statistics of every :class:`QConvBn2d` (train forward == deploy forward from then on)."""
    for m in model.modules():
        if isinstance(m, QConvBn2d):
            m.freeze_bn()
    return model


def set_quant_enabled(model: nn.Module, weights: bool = True, acts: bool = True) -> nn.Module:
    """Switch fake quantization of weights / activations on (True) or off (identity) in every quantizer."""
    wq = {id(m.weight_q) for m in quant_modules(model).values()}
    for q in model.modules():
        if isinstance(q, FakeQuantizer):
            q.enabled = bool(weights) if id(q) in wq else bool(acts)
    return model


def quant_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The quantizer tensors only (``*.log_scale``, ``*.zero_point``, ``*.initialized``), cloned."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, FakeQuantizer):
            for k, v in m.state_dict().items():
                out[_join(name, k)] = v.detach().clone()
    return out


def quant_scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``log_scale`` Parameters of every quantizer (for an own optimizer group without weight decay)."""
    return [m.log_scale for m in model.modules() if isinstance(m, FakeQuantizer)]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
