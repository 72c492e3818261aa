"""ONNX for INT8 inference on CPU with ONNX Runtime: the learned scales, plus the quantization points ORT's integer
kernels need.

Why a second INT8 ONNX: the TensorRT-style Q/DQ graph (:func:`gor_det.export.export_onnx_qdq`) quantizes only what
the QAT model quantizes (conv inputs and weights); ONNX Runtime's CPU execution provider turns
``DequantizeLinear -> Conv -> QuantizeLinear`` into its integer ``QLinearConv`` only when the conv *output* is
quantized too, and otherwise runs the float conv on dequantized tensors, slower than FP32 (docs/evaluation.md). This
graph has a Q/DQ pair on every tensor between the first and the last quantized conv, so ORT fuses each conv, sigmoid,
mul (SiLU), add, concat and pool into its ``QLinear*`` kernels:

* tensors that the QAT model quantizes take the **learned** step sizes: each quantized conv's weight (int8,
  per-channel, zero point 0: the deployed integers exactly) and its input (uint8; a signed symmetric quantizer maps
  to zero point 128, the same grid shifted, so ``(q - 128) * s`` equals the trained ``q_int8 * s``);
* the other tensors (conv outputs before SiLU, sigmoid outputs, adds, concats, pools) get uint8 ranges **calibrated**
  by ONNX Runtime's quantizer on ``calib_images`` (min-max): these roundings were not in training, so this model is
  not bit-exact to the fake-quant model. Its parity and mAP are measured (``tools/export_det.py --data``);
* with the ``full`` placement (``gor.quant.placement: full``) the residual Add and Concat inputs take their
  **learned** step sizes too (:func:`take_learned_points`), so only the conv outputs before their activation and the
  activation internals are left to calibration;
* the convs the QAT model keeps in float (``gor.quant.skip``: first conv, head outputs, DFL) stay float, and so does
  everything after the float head-output convs (the box decode).

The integer kernels are ``u8 x s8`` (MLAS). On x86 CPUs with AVX-512 VNNI / AVX-VNNI they are exact; on AVX2-only CPUs
the ``u8 x s8`` multiply-add may saturate in int16 (ONNX Runtime's quantization docs: use ``reduce_range`` or 7-bit
weights there; with gor_det, train ``gor.quant.w_bits: 7``). The parity check after export shows whether it matters.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from gor_det.export._deps import require

# ONNX Runtime's QDQ quantizer gives the output of these ops the quantization parameters of their input
# (onnxruntime/quantization/registry.py: QDQDirect8BitOp and kin), so an override on their output is not honoured.
TIED_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Resize", "MaxPool", "AveragePool", "Slice", "Pad",
            "Split", "Gather", "GatherElements", "TopK"}


def _graph_maps(graph):
    """``consumers``: tensor -> nodes reading it; ``producer``: tensor -> node writing it."""
    consumers, producer = {}, {}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
        for t in n.output:
            producer[t] = n
    return consumers, producer


def _closure(start: list, step) -> set[str]:
    """Names of the nodes reached from ``start`` (nodes) by repeatedly applying ``step(node) -> nodes``."""
    seen, stack = set(), list(start)
    while stack:
        n = stack.pop()
        for m in step(n):
            if m.name not in seen:
                seen.add(m.name)
                stack.append(m)
    return seen


def take_learned_points(graph) -> dict[str, tuple[float, int]]:
    """Remove the Q/DQ pairs of the ``full`` placement's points from the float graph (in place) and return their
    learned ``{tensor: (step, uint8 zero point)}``, each on the tensor ORT quantizes for it (above ``TIED_OPS``, whose
    output ORT gives its input's parameters). A signed step maps to zero point 128 (the same grid)."""
    from gor_det.export.qdq import constants, rewire

    consts = constants(graph)
    consumers, producer = _graph_maps(graph)
    learned, drop, rename = {}, set(), {}
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in consts:
            continue
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        zp = np.asarray(consts[q.input[2]]) if len(q.input) > 2 and q.input[2] in consts else np.zeros((), np.uint8)
        step = float(np.asarray(consts[q.input[1]], np.float32).reshape(()))
        src = q.input[0]
        while src in rename:  # a point on a tensor that an earlier pair quantized (Q/DQ/Q/DQ with one step)
            src = rename[src]
        t = src
        while t in producer and producer[t].op_type in TIED_OPS:
            t = producer[t].input[0]
        zp_u8 = 128 + int(zp.reshape(())) if zp.dtype == np.int8 else int(zp.reshape(()))
        if learned.setdefault(t, (step, zp_u8)) != (step, zp_u8):
            raise ValueError(f"ORT INT8: tensor {t} carries two learned steps ({learned[t][0]:.6g}, {step:.6g})")
        drop.add(q.output[0])
        for d in dqs:
            drop.add(d.output[0])
            rename[d.output[0]] = src
    rewire(graph, [n for n in graph.node if n.output[0] not in drop], rename)
    return learned


def plan_quantization(graph, info: dict, learned: dict | None = None) -> tuple[dict, list[str], dict[str, str]]:
    """Match the float ONNX graph of ``dequantized_copy`` to the QAT model's quantizers (edits ``graph`` in place).

    Returns ``(overrides, exclude, matched)``: ONNX Runtime ``TensorQuantOverrides`` (learned weight and input scales
    of every matched conv), the node names to keep in float, and ``{conv node: module name}``. Convs are matched by
    their weight array (the dequantized weight), which survives renaming. Kept float: unmatched convs and the nodes
    downstream of a float conv from which no quantized conv is reachable (head outputs, box decode).

    A conv input reached through ops ORT ties to their input's parameters (``TIED_OPS``: C2f's Slice/Split, pools,
    Resize) takes its learned step on the tensor above them; the other readers of that tensor (C2f's Concat) then
    see it rounded on that step before their own requantization, a rounding training did not have. A tensor read by
    several quantized convs with different learned steps (a neck output feeding both head branches and the next
    stage) gets an ``Identity`` per conv, each quantized with its conv's own step as in training, and its producer
    stays float (quantizing it too would round twice). ``learned``: the ranges of :func:`take_learned_points`."""
    from gor_det.export.qdq import constants

    consts = constants(graph)
    by_weight: dict[bytes, list[str]] = {}
    for name, q in info.items():
        by_weight.setdefault(q["weight"].tobytes(), []).append(name)
    overrides, matched, float_convs, used, wants = {}, {}, [], set(), {}
    for n in graph.node:
        if n.op_type != "Conv":
            continue
        w = consts.get(n.input[1])
        names = by_weight.get(np.asarray(w, np.float32).tobytes(), []) if w is not None else []
        cand = [m for m in names if m not in used] or names
        if not cand:
            float_convs.append(n)
            continue
        mname = cand[0]
        used.add(mname)
        q = info[mname]
        matched[n.name] = mname
        ws = [{"scale": np.array(s, np.float32), "zero_point": np.array(0, np.int8)} for s in q["weight_scale"]]
        ws[0]["axis"] = 0
        overrides[n.input[1]] = ws
        if q["act_signed"] and q["act_zero_point"] != 0:
            raise ValueError(f"{mname}: signed activation quantizer with a zero point is not representable in uint8")
        zp = 128 if q["act_signed"] else int(round(q["act_zero_point"]))  # int8 grid q == uint8 grid q + 128
        wants.setdefault(n.input[0], []).append((n, float(np.float32(q["act_scale"])), zp))
    _, producer = _graph_maps(graph)
    groups: dict[str, list] = {}  # tensor whose quantization a conv input inherits -> [(conv, scale, zp, tied ops)]
    for x, convs in wants.items():
        t, tied = x, []
        while t in producer and producer[t].op_type in TIED_OPS:  # ORT gives these ops' output their input's params
            tied.append(producer[t])
            t = producer[t].input[0]
        for conv, scale, zp in convs:
            groups.setdefault(t, []).append((conv, scale, zp, tied))
    keep_float = set()
    for t, (scale, zp) in (learned or {}).items():
        overrides[t] = _act_override(scale, zp)
    for t, convs in groups.items():
        if len({(sc, z) for _, sc, z, _ in convs} | ({learned[t]} if t in (learned or {}) else set())) == 1:
            _, scale, zp, _ = convs[0]
            overrides[t] = _act_override(scale, zp)
            continue
        for conv, scale, zp, tied in convs:  # one quantizer per conv, as in training; ``t`` itself stays float
            x = conv.input[0]
            xc = f"{x}__to_{conv.name}"
            graph.node.insert(list(graph.node).index(conv), _identity(x, xc, f"{conv.name}/input_split"))
            conv.input[0] = xc
            overrides[xc] = _act_override(scale, zp)
            keep_float |= {n.name for n in tied}
        if t in producer and t not in (learned or {}):  # a learned point keeps ``t`` quantized for its other readers
            keep_float.add(producer[t].name)
    consumers, producer = _graph_maps(graph)
    quant_nodes = [n for n in graph.node if n.name in matched]
    feeds_quant = {n.name for n in quant_nodes} | _closure(
        quant_nodes, lambda n: [producer[t] for t in n.input if t in producer])
    tail_seeds = [n for n in float_convs if n.name not in feeds_quant]
    tail = _closure(tail_seeds, lambda n: [c for t in n.output for c in consumers.get(t, [])])
    exclude = sorted({n.name for n in float_convs} | tail | keep_float)
    return overrides, exclude, matched


def _act_override(scale: float, zp: int) -> list[dict]:
    from onnxruntime.quantization import QuantType

    return [{"quant_type": QuantType.QUInt8, "scale": np.array(scale, np.float32), "zero_point": np.array(zp, np.uint8)}]


def _identity(src: str, dst: str, name: str):
    from onnx import helper

    return helper.make_node("Identity", [src], [dst], name=name)


def export_onnx_ort_int8(deploy_model: torch.nn.Module, imgsz, path, calib_images: np.ndarray, opset: int = 17) -> Path:
    """Write the ONNX Runtime CPU INT8 model of a ``quant.convert_for_export`` model (module docstring); returns the
    path. ``calib_images``: float32 ``(N, 3, H, W)`` RGB 0..1, letterboxed like evaluation (e.g. 16-64 training
    images) for the ranges the QAT model did not learn. ``ValueError`` when the model has no quantized conv."""
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from gor_det.export.ncnn_export import dequantized_copy, unused_modules
    from gor_det.export.onnx_export import export_onnx

    float_model, info = dequantized_copy(deploy_model, keep_points=True)
    if not info:
        raise ValueError("no quantized conv in the model: pass the output of gor_det.quant.convert_for_export")
    if len(calib_images) == 0:
        raise ValueError("calib_images is empty: the non-learned ranges need calibration images")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    class Images(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib_images)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"images": np.ascontiguousarray(x[None], np.float32)}

    with tempfile.TemporaryDirectory(prefix="gor_det_ort_") as tmp:
        fp = export_onnx(float_model, imgsz, Path(tmp) / "fp.onnx", opset=opset)
        proto = onnx.load(str(fp))
        learned = take_learned_points(proto.graph)
        overrides, exclude, matched = plan_quantization(proto.graph, info, learned)
        onnx.save(proto, str(fp))
        missing = set(info) - set(matched.values())
        if missing:  # dead code the exporter drops is not missing (YOLO26's one-to-one branch)
            missing = sorted(missing - unused_modules(float_model, missing, imgsz))
        if missing:
            raise ValueError(f"ORT INT8: no ONNX conv matches the weights of {missing[:5]} ({len(missing)} total)")
        quantize_static(
            str(fp), str(path), Images(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=exclude,
            extra_options={"TensorQuantOverrides": overrides, "QDQDisableWeightAdjustForInt32Bias": True},
        )
    onnx.checker.check_model(str(path))
    return path
