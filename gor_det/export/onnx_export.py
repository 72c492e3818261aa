"""ONNX export of a prepared detection ``nn.Module`` (FP32) and of a ``quant.convert_for_export`` model (Q/DQ).

The caller (engine layer) hands over a module in export mode (Ultralytics ``Detect.export = True``, fused), whose
forward returns one ``(B, 4 + nc, A)`` tensor. Input/output are named ``images`` / ``output0`` like Ultralytics.
Both functions use the TorchScript exporter (``dynamo=False``): it maps ``torch.fake_quantize_per_{tensor,channel}
_affine`` to ``QuantizeLinear``/``DequantizeLinear`` at opset 13..17 (deployment-facts; dynamo stays at opset 18).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from gor_det.export._deps import imgsz_hw, require


def _dummy(model: torch.nn.Module, imgsz, batch: int) -> torch.Tensor:
    h, w = imgsz_hw(imgsz)
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), torch.zeros(()))
    return torch.zeros(batch, 3, h, w, device=p.device)


def _torch_export(model, im, path: Path, opset: int, dynamic: bool) -> None:
    dyn = None
    if dynamic:
        dyn = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    heads = [m for m in model.modules() if hasattr(m, "export") and hasattr(m, "dynamic")]  # Detect-like heads
    saved = [m.dynamic for m in heads]
    for m in heads:  # dynamic shapes: the head must rebuild anchors from the input shape inside the graph
        m.dynamic = dynamic or m.dynamic
    try:
        _trace_export(model, im, path, opset, dyn)
    finally:
        for m, d in zip(heads, saved):
            m.dynamic = d


def _trace_export(model, im, path: Path, opset: int, dyn) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter DeprecationWarning, TracerWarnings of the Detect head
        model(im)  # dry run (as Ultralytics' exporter): Detect caches anchors/strides for this shape
        torch.onnx.export(
            model,
            im,
            str(path),
            opset_version=opset,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes=dyn,
            do_constant_folding=True,
            dynamo=False,
        )


def _slim(proto):
    """onnxslim when installed, else the model unchanged (with a warning)."""
    try:
        import onnxslim
    except ImportError:
        warnings.warn("onnxslim not installed: ONNX model left unsimplified", stacklevel=3)
        return proto
    return onnxslim.slim(proto)


def export_onnx(
    model: torch.nn.Module, imgsz, path, opset: int = 17, dynamic: bool = False, simplify: bool = True, batch: int = 1
) -> Path:
    """Export an FP model to ONNX (``images`` -> ``output0``); returns the path. ``imgsz``: int or (h, w)."""
    onnx = require("onnx")
    path = Path(path)
    _torch_export(model, _dummy(model, imgsz, batch), path, opset, dynamic)
    if simplify:
        proto = _slim(onnx.load(str(path)))
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return path


def export_onnx_qdq(
    deploy_model: torch.nn.Module,
    imgsz,
    path,
    opset: int = 17,
    dynamic: bool = False,
    simplify: bool = True,
    strict: bool = True,
    batch: int = 1,
) -> Path:
    """Export a ``convert_for_export`` model to a TensorRT-style Q/DQ ONNX; returns the path.

    Post-pass: each weight ``FP32 initializer -> QuantizeLinear -> DequantizeLinear`` is folded into an INT8
    initializer feeding the ``DequantizeLinear`` (per-channel scales on axis 0, int8 zero points), constants become
    initializers, then onnxslim runs when ``simplify`` (it may merge identical Q/DQ pairs on one tensor; its result is
    kept only if every weighted op stays quantized). ``imgsz``: int or (h, w).

    With ``strict`` (default) the result must pass :func:`gor_det.export.check_qdq` (TensorRT rules), else
    ``ValueError`` with the report; ``strict=False`` for graphs meant for ONNX Runtime only (e.g. asymmetric
    activations, exported as uint8 Q/DQ).
    """
    if opset < 13:
        raise ValueError("per-channel Q/DQ needs opset >= 13")
    onnx = require("onnx")
    from gor_det.export.qdq import count_ops, fold_qdq_weights

    path = Path(path)
    _torch_export(deploy_model, _dummy(deploy_model, imgsz, batch), path, opset, dynamic)
    proto = onnx.load(str(path))
    if count_ops(proto)["QuantizeLinear"] == 0:
        raise ValueError("no QuantizeLinear in the exported graph: is this a quant.convert_for_export() model?")
    fold_qdq_weights(proto)
    if simplify:  # onnxslim may merge identical Q/DQ pairs (same tensor, same scale): compare what matters
        from gor_det.export.check_qdq import check_qdq

        key = lambda r: (r.ok, r.stats["weight_dq"], r.stats["weighted_quantized"])  # noqa: E731
        slim = _slim(proto)
        before, after = check_qdq(proto), check_qdq(slim)
        if key(after) == key(before):
            proto = slim
        else:
            warnings.warn(
                f"onnxslim changed the quantization ({before.stats} -> {after.stats}); kept the unslimmed graph",
                stacklevel=2,
            )
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    if strict:
        from gor_det.export.check_qdq import check_qdq

        report = check_qdq(proto)
        if not report.ok:
            raise ValueError(f"Q/DQ export of {path} breaks TensorRT rules:\n{report.summary()}")
    return path
