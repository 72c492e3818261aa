"""Check a Q/DQ ONNX graph against the TensorRT explicit-quantization rules gor_det relies on.

``onnx.checker``, polygraphy lint and ONNX Runtime all accept graphs TensorRT rejects or runs slowly, hence this checker.
Rules and their sources (NVIDIA TensorRT documentation):

* ``opset``: per-channel (per-axis) Q/DQ needs ONNX opset >= 13 (onnx-tensorrt ``docs/operators.md``;
  TensorRT Developer Guide, "Explicit Quantization" > "ONNX Support").
* ``zero_point``: TensorRT quantization is signed symmetric INT8: zero points present, int8 and equal to 0
  ("Working with Quantized Types" > "Introduction to Quantization": "TensorRT uses a symmetric quantization scheme";
  TensorRT Operators "Quantize"/"Dequantize": "The zero_point must only contain zero-valued coefficients";
  onnx-tensorrt operators.md: "QuantizeLinear ... ``y_zero_point`` must be 0"). A missing zero point means a
  **uint8** output in ONNX, so it is a violation too.
* ``scale``: build-time constant, positive and finite; activations per-tensor (scalar scale); weights per-channel,
  1-D of length Cout on axis 0 (axis 1 for ConvTranspose) (TensorRT Operators "Quantize": "Its dimensions must be a
  scalar for per-tensor quantization, a 1-D tensor for per-channel quantization"; Developer Guide, "Explicit
  Quantization" > "Quantized Weights" and "Q/DQ Layer-Placement Recommendations"). Per-tensor weights are legal in
  TensorRT and only reported as a warning.
* ``weight_range``: INT8 weights lie in [-127, 127] (Developer Guide 8.x, "Working with INT8" > "Introduction to
  Quantization": weight scale ``s = max(|x_min|, |x_max|) / 127``; "Working with Quantized Networks": INT8 weights
  in [-127, 127], activations in [-128, 127]).
* ``weighted_op_input``: "Quantize all inputs of weighted operations (Convolution, Transposed Convolution and GEMM)"
  (Developer Guide, "Q/DQ Layer-Placement Recommendations"): a weighted op with a DQ on one input but not on the
  other runs in float (or fails to fuse).
* ``weighted_op_output``: "By default, do not quantize the outputs of weighted operations" (same section): a
  ``Conv -> Q -> DQ`` whose DQ feeds an op TensorRT would fuse into the conv (an activation, a residual Add) breaks
  that fusion (a known cause of a QAT engine slower than PTQ). ``Conv -> Q -> DQ`` into a Conv, or into ops that
  keep the INT8 values (MaxPool, Concat, Resize, Slice: a conv without activation feeding SPPF's pools) is the conv's
  fused INT8 output and accepted.
* ``qdq_pair``: every activation DequantizeLinear is fed by a QuantizeLinear with the same scale and zero point.
* ``concat_scale`` (warning only): a Concat on an INT8 path (its output is quantized, directly or through ops Q/DQ
  commute with) whose inputs are not all DequantizeLinear outputs of one scale: TensorRT then runs the Concat in
  float and inserts reformats around it (NVIDIA yolo_deepstream ``yolov7_qat``: one scale for all inputs of a Concat).
* ``requantize`` (warning only): a DequantizeLinear whose tensor reaches a QuantizeLinear of another scale through
  ops Q/DQ commute with only (Reshape, Transpose, Slice, Split, MaxPool, Resize, Concat, Identity): an INT8 tensor is
  dequantized only to be requantized, a reformat a shared scale avoids.
* ``residual_add`` (warning only): an ``Add`` after a quantized conv (through its activation) whose other input has
  no Q/DQ runs as a separate float kernel; quantizing that residual input lets TensorRT fuse it ("Q/DQ
  Layer-Placement Recommendations": quantize the residual input of element-wise addition).

URLs: https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html ,
https://docs.nvidia.com/deeplearning/tensorrt/operators/docs/Quantize.html ,
https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md .

CLI: ``python -m gor_det.export.check_qdq model.onnx`` (exit code 1 on violations).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gor_det.export.qdq import attr, constants

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
EPILOGUE_OPS = ("Sigmoid", "Mul", "Relu", "LeakyRelu", "Clip", "HardSwish", "HardSigmoid", "Tanh", "Add", "Sub",
                "Elu", "Selu", "Softplus", "Gelu", "Div")  # ops TensorRT fuses into a conv's epilogue
COMMUTING = ("Reshape", "Transpose", "Slice", "Split", "MaxPool", "Resize", "Concat", "Identity", "Squeeze", "Unsqueeze")


@dataclass
class Violation:
    """One broken rule: ``rule`` id, offending ``node`` name, human ``message``."""

    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


@dataclass
class QdqReport:
    """Result of :func:`check_qdq`: ``ok`` is True when there is no violation (warnings do not count)."""

    violations: list[Violation] = field(default_factory=list)
    warnings: list[Violation] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def nodes(self) -> list[str]:
        """Names of the nodes with a violation (deduplicated, in order)."""
        return list(dict.fromkeys(v.node for v in self.violations))

    def rules(self) -> set[str]:
        return {v.rule for v in self.violations}

    def summary(self, max_lines: int = 30) -> str:
        s = self.stats
        head = (
            f"Q/DQ check: {'OK' if self.ok else 'FAILED'} - {len(self.violations)} violation(s), "
            f"{len(self.warnings)} warning(s); opset {s.get('opset')}, {s.get('quantize', 0)} Q, "
            f"{s.get('dequantize', 0)} DQ ({s.get('weight_dq', 0)} on weights), "
            f"{s.get('weighted_quantized', 0)}/{s.get('weighted', 0)} weighted ops quantized"
        )
        lines = [head]
        for kind, items in (("violation", self.violations), ("warning", self.warnings)):
            for v in items[:max_lines]:
                lines.append(f"  {kind}: {v}")
            if len(items) > max_lines:
                lines.append(f"  ... {len(items) - max_lines} more {kind}s")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _name(n) -> str:
    return n.name or f"{n.op_type}({n.output[0]})"


def _expected_weight_axis(op, node, w_ndim: int) -> int:
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    if op == "MatMul":
        return w_ndim - 1
    return 0


def check_qdq(model, quantized_ops=WEIGHTED_OPS, require_all: bool = False, skip=()) -> QdqReport:
    """Walk ``model`` (path or ``onnx.ModelProto``) and report TensorRT Q/DQ rule violations.

    A weighted op (``quantized_ops``) is "meant to be quantized" when any of its inputs comes from a
    DequantizeLinear, or, with ``require_all``, always unless its name contains one of ``skip``.
    """
    from gor_det.export._deps import existing_file, require

    onnx = require("onnx")
    if not hasattr(model, "graph"):
        model = onnx.load(str(existing_file(model)))
    g = model.graph
    rep = QdqReport()

    def vio(rule, n, msg):
        rep.violations.append(Violation(rule, n if isinstance(n, str) else _name(n), msg))

    def warn(rule, n, msg):
        rep.warnings.append(Violation(rule, n if isinstance(n, str) else _name(n), msg))

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    vals = constants(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def src(t):  # producer through Identity
        n = producer.get(t)
        while n is not None and n.op_type == "Identity":
            n = producer.get(n.input[0])
        return n

    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in g.node if n.op_type == "DequantizeLinear"]
    rep.stats.update(opset=opset, quantize=len(qs), dequantize=len(dqs))
    if opset < 13:
        vio("opset", "model", f"opset {opset} < 13: per-channel Q/DQ is not available")

    weight_dq = set()
    for n in qs + dqs:
        x, s = n.input[0], n.input[1]
        zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
        is_weight = x in vals
        if n.op_type == "DequantizeLinear" and is_weight:
            weight_dq.add(n.output[0])
        # scale
        if s not in vals:
            vio("scale", n, "scale is not a build-time constant")
            sv = None
        else:
            sv = np.asarray(vals[s], np.float64)
            if not np.all(np.isfinite(sv)) or np.any(sv <= 0):
                vio("scale", n, f"scale must be positive and finite (min {np.nanmin(sv):.3g})")
        # zero point
        if zp is None:
            vio("zero_point", n, "no zero point: ONNX then means uint8; TensorRT needs an int8 zero point of 0")
        elif zp not in vals:
            vio("zero_point", n, "zero point is not a constant")
        else:
            zv = np.asarray(vals[zp])
            if zv.dtype != np.int8:
                vio("zero_point", n, f"zero point dtype {zv.dtype}, TensorRT needs int8 (signed symmetric)")
            if np.any(zv != 0):
                vio("zero_point", n, f"zero point {zv.ravel()[:4].tolist()} != 0 (TensorRT is symmetric)")
            if sv is not None and zv.shape != sv.shape:
                vio("zero_point", n, f"zero point shape {zv.shape} != scale shape {sv.shape}")
        # per-tensor activations
        if not is_weight and sv is not None and sv.size != 1:
            vio("scale", n, f"activation scale must be per-tensor (scalar), got shape {sv.shape}")
        # weight values
        if is_weight and sv is not None:
            w = np.asarray(vals[x])
            if n.op_type == "DequantizeLinear" and w.dtype == np.int8:
                if w.size and w.min() < -127:
                    vio("weight_range", n, f"int8 weight value {int(w.min())} outside [-127, 127]")
            elif n.op_type == "QuantizeLinear" and zp in vals and np.asarray(vals[zp]).dtype == np.int8:
                from gor_det.export.qdq import quantize_np

                q = quantize_np(w, vals[s], vals[zp], axis=attr(n, "axis", 1))
                if q.size and q.min() < -127:
                    vio("weight_range", n, f"weight quantizes to {int(q.min())}, outside [-127, 127]")
        # activation DQ must come from a matching Q
        if n.op_type == "DequantizeLinear" and not is_weight:
            q = src(x)
            if q is None or q.op_type != "QuantizeLinear":
                vio("qdq_pair", n, "activation DequantizeLinear is not fed by a QuantizeLinear")
            elif s in vals and q.input[1] in vals:
                same_s = np.array_equal(vals[q.input[1]], vals[s])
                qzp = q.input[2] if len(q.input) > 2 else None
                same_z = (zp is None and qzp is None) or (
                    zp in vals and qzp in vals and np.array_equal(vals[qzp], vals[zp])
                )
                if not (same_s and same_z):
                    vio("qdq_pair", n, f"scale/zero point differ from its QuantizeLinear {_name(q)}")
    rep.stats["weight_dq"] = len(weight_dq)

    n_w = n_wq = 0
    for n in g.node:
        if n.op_type not in quantized_ops:
            continue
        n_w += 1
        ins = [i for i in n.input[:2] if i]
        from_dq = [(src(i) is not None and src(i).op_type == "DequantizeLinear") for i in ins]
        meant = any(from_dq) or (require_all and not any(s_ in _name(n) for s_ in skip))
        if meant:
            n_wq += 1
            roles = ("input", "weight") if n.op_type != "MatMul" else ("input A", "input B")
            for role, i, ok in zip(roles, ins, from_dq):
                if not ok:
                    vio("weighted_op_input", n, f"{role} '{i}' has no DequantizeLinear: the op cannot run in INT8")
            # weight DQ shape / axis
            if len(ins) > 1 and from_dq[1]:
                dq = src(ins[1])
                if dq.input[0] in vals and dq.input[1] in vals:
                    w = np.asarray(vals[dq.input[0]])
                    sv = np.asarray(vals[dq.input[1]])
                    ax = _expected_weight_axis(n.op_type, n, w.ndim)
                    if sv.size == 1 and sv.ndim <= 1:
                        warn(
                            "scale",
                            dq,
                            "per-tensor weight scale (TensorRT accepts it; per-channel is gor_det's default)",
                        )
                    elif sv.ndim != 1 or sv.size != w.shape[ax] or (attr(dq, "axis", 1) % w.ndim) != ax:
                        vio(
                            "scale",
                            dq,
                            f"weight scale shape {sv.shape} axis {attr(dq, 'axis', 1)}: expected 1-D length "
                            f"{w.shape[ax]} on axis {ax} for {n.op_type}",
                        )
        # outputs: Conv -> Q -> DQ -> non-weighted op
        for o in n.output:
            for q in consumers.get(o, []):
                if q.op_type != "QuantizeLinear":
                    continue
                for dq in consumers.get(q.output[0], []):
                    bad = [c for c in consumers.get(dq.output[0], []) if c.op_type in EPILOGUE_OPS]
                    if bad:
                        vio(
                            "weighted_op_output",
                            q,
                            f"Q/DQ on the output of {n.op_type} {_name(n)} feeds {bad[0].op_type}: blocks fusion",
                        )
    rep.stats.update(weighted=n_w, weighted_quantized=n_wq)

    # residual Add after a quantized conv (through its activation) whose other input has no Q/DQ: TensorRT then runs
    # the Add separately instead of fusing it into the conv (performance only, hence a warning)
    def from_qconv(t, depth=4):
        n = src(t)
        while n is not None and depth > 0:
            if n.op_type in quantized_ops:
                w = n.input[1] if len(n.input) > 1 else ""
                return src(w) is not None and src(w).op_type == "DequantizeLinear"
            if n.op_type not in ("Mul", "Sigmoid", "Relu", "LeakyRelu", "Clip", "HardSwish", "HardSigmoid"):
                return False
            n = next((src(i) for i in n.input if i not in vals and src(i) is not None), None)
            depth -= 1
        return False

    def scale_of(n):
        return None if n.input[1] not in vals else np.asarray(vals[n.input[1]], np.float32).reshape(-1)[0]

    def reached_qs(t, seen=None):  # the QuantizeLinear nodes ``t`` reaches through COMMUTING ops only
        seen = set() if seen is None else seen
        out = []
        for c in consumers.get(t, []):
            if c.op_type == "QuantizeLinear":
                out.append(c)
            elif c.op_type in COMMUTING and c.output and c.output[0] not in seen:
                seen.add(c.output[0])
                for o in c.output:
                    out += reached_qs(o, seen)
        return out

    def dq_above(t):  # the producer of ``t`` above single-input ops Q/DQ commute with (a pooled DQ is still INT8)
        p = src(t)
        while p is not None and p.op_type in COMMUTING and p.op_type != "Concat":
            p = src(p.input[0])
        return p

    for n in g.node:
        if n.op_type == "Concat" and reached_qs(n.output[0]):
            srcs = [dq_above(i) for i in n.input]
            scales = {scale_of(p) for p in srcs if p is not None and p.op_type == "DequantizeLinear"}
            if any(p is None or p.op_type != "DequantizeLinear" for p in srcs) or len(scales) != 1:
                warn("concat_scale", n, "inputs are not all dequantized with one scale: TensorRT runs this Concat "
                                        "in float, with reformats around it")
        elif n.op_type == "DequantizeLinear" and n.input[0] not in vals:
            s0 = scale_of(n)
            other = sorted({_name(q) for q in reached_qs(n.output[0]) if s0 is not None and scale_of(q) != s0})
            if other:
                warn("requantize", n, f"dequantized only to be requantized with another scale by {other[0]}")

    for n in g.node:
        if n.op_type != "Add" or len(n.input) != 2 or any(i in vals for i in n.input):
            continue
        srcs = [src(i) for i in n.input]
        if any(p is not None and p.op_type == "DequantizeLinear" for p in srcs):
            continue
        if any(from_qconv(i) for i in n.input):
            warn("residual_add", n, "residual input not quantized: TensorRT cannot fuse this Add into the INT8 conv")
    return rep


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m gor_det.export.check_qdq model.onnx [...]")
        return 2
    rc = 0
    for p in argv:
        rep = check_qdq(Path(p))
        print(f"{p}\n{rep.summary()}")
        rc |= int(not rep.ok)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
