"""Structural speed report of an exported INT8 model: which ops run in INT8, how many INT8<->float boundaries remain,
and the share of conv MACs in INT8, read from the exported graph alone (any machine, no runtime, no GPU).

It is a structural estimate of what the runtime will fuse, not a profiler: a boundary is a place where the runtime
must convert between INT8 and float (TensorRT inserts a reformat layer or leaves a Q/DQ unfused), each one costs a
memory pass; the numbers are comparable between exports of one model, not a latency.

Rules per format (``fmt``):

* ``onnx_qdq`` (TensorRT explicit quantization; TensorRT Developer Guide, "Explicit Quantization": "Q/DQ
  Propagation", "Q/DQ Fusion", "Q/DQ Layer-Placement Recommendations"). A weight is a DequantizeLinear (DQ) of a
  constant. An activation DQ's output is INT8 data, and so is the output of a *commuting* op (MaxPool, Resize /
  Upsample ``nearest``, Slice, Split, Reshape, Transpose, Squeeze, Unsqueeze, Flatten, and Concat when all its inputs
  share one scale) whose data inputs are all INT8 data (DQ forward propagation). A Conv / ConvTranspose / Gemm /
  MatMul runs INT8 when its data input is INT8 data and its weight is a DQ. Its *fusion group* extends over a chain of
  single-consumer pointwise epilogues: an activation (Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish, Tanh),
  SiLU as ``Sigmoid(x) * x``, an Add whose other input is INT8 data (the quantized residual). A tensor *ends in Q* when
  it is no graph output and every consumer is a QuantizeLinear (Q), directly or through commuting ops, all with one
  scale. The epilogues run INT8 (fused with the conv and its output Q) when the group's output ends in Q, float
  otherwise; a commuting op runs INT8 on INT8 data, or when its output ends in Q and its inputs can be produced in
  INT8 at that Q's scale (Q backward propagation; a DQ'd input of another scale cannot); Add / Sub / Mul /
  AveragePool / GlobalAveragePool with all data inputs INT8 and an output ending in Q run INT8 (quantized
  element-wise / pooling). A **float->int8 boundary** is an activation Q whose input cannot be produced in INT8 (its
  producer is a float op or a graph input, or the tensor also feeds a float op or a Q of another scale); an
  **int8->float boundary** is an activation DQ whose data reaches a float op or a graph output.
* ``onnx_ort_int8`` (ONNX Runtime QDQ format, CPU EP; onnxruntime docs "Quantize ONNX models" > QDQ format: a node
  unit ``DQ -> op -> Q`` becomes a ``QLinear*`` kernel, or runs on INT8 data with its Q/DQ dropped). An op of
  :data:`ORT_INT8` runs INT8 when every data input is an activation DQ output, its weights are DQs, and every output
  ends in Q directly (no propagation, no epilogue fusion). Boundaries: an activation Q whose input is not produced by
  an INT8 op or a DQ; an activation DQ with a consumer that does not run INT8 (or a graph output).
* ``ncnn_int8`` (NCNN .param, gor_det.export.ncnn_export): a Convolution / ConvolutionDepthWise with ``8=`` (the
  int8 scale term) 1 or 2 runs INT8; it quantizes its float input and dequantizes its output itself, so each one is
  two boundaries (``8=`` above 100, requantized output, would be one). The layer names carry no module paths, so
  the backbone+neck split is None.

Region: ONNX node names of the torch exporter (and ONNX Runtime's Q/DQ named after them) carry module paths like
``/model.22/cv2.0/...``; the Detect head is the largest ``model.N`` index, backbone+neck the smaller ones. A Q/DQ
with no path takes its consumer's (then producer's). Conv MACs: ``prod(weight shape) * prod(output spatial size)``,
shapes from ``onnx.shape_inference`` (NCNN: propagated from ``imgsz`` through Convolution / Pooling / Interp).

URLs: https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html ,
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html .

CLI: ``python -m gor_det.export.structure model.onnx [--format onnx_qdq|onnx_ort_int8|ncnn_int8] [--imgsz 640]``.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np

FORMATS = ("onnx_qdq", "onnx_ort_int8", "ncnn_int8")
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
COMMUTING = {"MaxPool", "Resize", "Upsample", "Concat", "Slice", "Split", "Reshape", "Transpose", "Squeeze",
             "Unsqueeze", "Flatten"}
EPILOGUE = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh"}
TRT_QUANTIZABLE = {"Add", "Sub", "Mul", "AveragePool", "GlobalAveragePool"}
ORT_INT8 = {"Conv", "MatMul", "Gemm", "Add", "Mul", "Sigmoid", "LeakyRelu", "Concat", "AveragePool",
            "GlobalAveragePool", "Softmax", "MaxPool", "Resize", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
            "Flatten", "Slice", "Split", "Gather"}
NOT_OPS = {"QuantizeLinear", "DequantizeLinear", "Constant", "Identity"}
NCNN_NOT_OPS = {"Input", "Split", "Noop", "MemoryData"}


def _index(name: str) -> int | None:
    m = re.search(r"model\.(\d+)", name or "")
    return int(m.group(1)) if m else None


def structure_report(path, fmt: str = "onnx_qdq", imgsz=None) -> dict:
    """The structural report of the model at ``path`` (an ONNX file, or an NCNN .param / its folder) for ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    return _ncnn(path, imgsz) if fmt == "ncnn_int8" else _onnx(path, trt=fmt == "onnx_qdq")


def _onnx(path, trt: bool) -> dict:
    import onnx

    from gor_det.export.qdq import attr, constants

    model = onnx.load(str(path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (no shapes: MACs are reported unknown)
        pass
    g = model.graph
    vals = constants(g)
    shapes = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
              for v in [*g.input, *g.output, *g.value_info]}
    const = {i.name: list(i.dims) for i in g.initializer}  # constant tensor -> shape when known
    for i in g.initializer:
        shapes.setdefault(i.name, list(i.dims))
    outputs = {o.name for o in g.output}
    nodes = _toposort(g.node, {i.name for i in g.input} | set(const))
    prod, cons, wdq = {}, {}, set()
    for n in nodes:
        ins = [i for i in n.input if i]
        if all(i in const for i in ins):  # constant folded: not an op (a DQ of a constant is a weight)
            const.update({o: shapes.get(ins[0]) if ins else None for o in n.output})
            if n.op_type == "DequantizeLinear":
                wdq.update(n.output)
            continue
        for o in n.output:
            prod[o] = n
        for i in ins:
            cons.setdefault(i, []).append(n)
    nodes = [n for n in nodes if n.output and n.output[0] in prod]

    def data(n):
        return [i for i in n.input if i and i not in const]

    def scale(n):
        return tuple(np.ravel(vals.get(n.input[1], np.nan)).tolist()) if len(n.input) > 1 else None

    def commutes(n):
        return n.op_type in COMMUTING and (n.op_type not in ("Resize", "Upsample")
                                           or attr(n, "mode", b"nearest") in (b"nearest", "nearest"))

    s8 = {}  # INT8 data tensor -> its scale
    for n in nodes:
        ins = data(n)
        if n.op_type == "DequantizeLinear":
            s8[n.output[0]] = scale(n)
        elif trt and commutes(n) and ins and all(i in s8 for i in ins) and len({s8[i] for i in ins}) == 1:
            s8.update(dict.fromkeys(n.output, s8[ins[0]]))

    @cache
    def q_scales(t):  # frozenset of the Q scales t ends in, None when some consumer is not a Q
        cs = cons.get(t, [])
        if t in outputs or not cs:
            return None
        out = set()
        for c in cs:
            if c.op_type == "QuantizeLinear":
                out.add(scale(c))
            elif trt and commutes(c):
                for o in c.output:
                    s = q_scales(o)
                    if s is None:
                        return None
                    out |= s
            else:
                return None
        return frozenset(out)

    def ends_in_q(t):
        s = q_scales(t)
        return s is not None and len(s) == 1

    int8, group_of, group_out = set(), {}, {}
    for n in nodes:
        ins = data(n)
        w_ok = len(n.input) > 1 and (n.input[1] in wdq or n.input[1] in s8)
        if n.op_type in WEIGHTED and ins and ins[0] in s8 and w_ok and (trt or all(map(ends_in_q, n.output))):
            int8.add(id(n))
            if trt:
                t, members = n.output[0], []
                while True:
                    cs = cons.get(t, [])
                    ops = sorted(c.op_type for c in cs)
                    if t in outputs:
                        break
                    if ops == ["Mul", "Sigmoid"]:
                        sig, mul = sorted(cs, key=lambda c: c.op_type != "Sigmoid")
                        if sorted(mul.input) != sorted([t, sig.output[0]]) or len(cons.get(sig.output[0], [])) != 1:
                            break
                        members += [sig, mul]
                        t = mul.output[0]
                    elif len(cs) == 1 and (cs[0].op_type in EPILOGUE or cs[0].op_type == "Add" and all(
                            i == t or i in s8 for i in data(cs[0]))):
                        members.append(cs[0])
                        t = cs[0].output[0]
                    else:
                        break
                group_out[t] = n
                for m in members:
                    group_of[id(m)] = n
                if members and ends_in_q(t):
                    int8.update(id(m) for m in members)

    @cache
    def can8(t):  # t can be produced in INT8 (an output Q on it fuses into its producer)
        if t in s8:
            return True
        p = prod.get(t)
        if p is None or not ends_in_q(t):
            return False
        if t in group_out and id(group_out[t]) in int8:
            return True
        if trt and p.op_type in TRT_QUANTIZABLE and id(p) not in group_of:
            return all(i in s8 for i in data(p))
        if trt and commutes(p):
            return back8(p)
        return not trt and id(p) in int8

    def back8(n):  # Q backward propagation: n's outputs end in one Q scale its inputs can be produced in
        qs = {s for o in n.output if ends_in_q(o) for s in q_scales(o)}
        return len(qs) == 1 and all(map(ends_in_q, n.output)) and all(
            can8(i) and (i not in s8 or s8[i] in qs) for i in data(n))

    for n in nodes:
        ins = data(n)  # the ops outside conv groups
        if id(n) in int8 or n.op_type in NOT_OPS or id(n) in group_of:
            continue
        if trt and commutes(n):
            ok = n.output[0] in s8 or back8(n)
        elif trt:
            ok = n.op_type in TRT_QUANTIZABLE and all(i in s8 for i in ins) and all(map(ends_in_q, n.output))
        else:
            ok = n.op_type in ORT_INT8 and all(i in prod and prod[i].op_type == "DequantizeLinear" for i in ins) and \
                all(map(ends_in_q, n.output))
        if ok:
            int8.add(id(n))

    def to_float(t):  # INT8 data t reaches a float op or a graph output
        if t in outputs:
            return True
        for c in cons.get(t, []):
            if c.op_type == "QuantizeLinear":
                continue
            if id(c) not in int8:
                return True
            if trt and commutes(c) and c.output[0] in s8 and any(to_float(o) for o in c.output):
                return True
        return False

    head = max((i for n in nodes if (i := _index(n.name)) is not None), default=None)

    def region(n):
        for name in [n.name, *n.output, *(c.name for c in cons.get(n.output[0], [])), *n.input,
                     *(prod[i].name for i in n.input if i in prod)]:
            if (i := _index(name)) is not None:
                return i
        return None

    f2i = [n for n in nodes if n.op_type == "QuantizeLinear" and not can8(n.input[0])]
    i2f = [n for n in nodes if n.op_type == "DequantizeLinear" and to_float(n.output[0])]
    bounds = f2i + i2f
    regions = [region(n) for n in bounds]
    ops = [n for n in nodes if n.op_type not in NOT_OPS]
    convs = []
    for n in ops:
        if n.op_type in ("Conv", "ConvTranspose"):
            w = const.get(n.input[1]) or shapes.get(n.input[1])
            o = shapes.get(n.output[0] if n.op_type == "Conv" else n.input[0])  # MACs per input pixel if transposed
            macs = int(np.prod(w) * np.prod(o[2:])) if w and o and None not in w + o[2:] else None
            convs.append((macs, id(n) in int8))
    return _finish({
        "format": "onnx_qdq" if trt else "onnx_ort_int8", "ops": len(ops),
        "ops_int8": sum(id(n) in int8 for n in ops),
        "int8_by_op": dict(Counter(n.op_type for n in ops if id(n) in int8)),
        "float_by_op": dict(Counter(n.op_type for n in ops if id(n) not in int8)),
        "boundaries": len(bounds), "boundaries_float_to_int8": len(f2i), "boundaries_int8_to_float": len(i2f),
        "boundaries_backbone_neck": None if head is None else sum(r is not None and r < head for r in regions),
        "boundaries_head": None if head is None else sum(r == head for r in regions), "head_index": head,
        "boundary_nodes": [n.name or n.output[0] for n in bounds],
    }, convs)


def _toposort(nodes, available) -> list:
    done, out, pending = set(available) | {""}, [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in done for i in n.input):
                out.append(n)
                done.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or an input from nowhere: keep the file's order
            return out + rest
        pending = rest
    return out


def _finish(rep: dict, convs) -> dict:
    known = [(m, q) for m, q in convs if m is not None]
    total, q = sum(m for m, _ in known), sum(m for m, q in known if q)
    rep.update(convs=len(convs), convs_int8=sum(q for _, q in convs), convs_without_shape=len(convs) - len(known),
               conv_macs=total, conv_macs_int8=q, int8_conv_share=round(q / total, 4) if total else None)
    return rep


def _ncnn(path, imgsz) -> dict:
    from gor_det.export.ncnn_export import CONV_TYPES, read_param

    p = Path(path)
    p = next(iter(sorted(p.glob("*.param"))), p) if p.is_dir() else p
    _, layers = read_param(p)
    hw = {}
    for la in layers:  # the input size: imgsz, else the Input layer's 1=h 0=w
        if la.type == "Input":
            h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz or (la.i(1), la.i(0))
            hw.update(dict.fromkeys(la.tops, (int(h), int(w)) if h and w else None))
    ops, convs, int8 = [], [], []
    for la in layers:
        if la.type == "Input":
            continue
        src = hw.get(la.bottoms[0]) if la.bottoms else None
        out = src
        if src and la.type in (*CONV_TYPES, "Pooling"):
            # (kernel_w, kernel_h, stride_w, stride_h, pad_left, pad_top, pad_right, pad_bottom) param ids
            k = (1, 11, 3, 13, 4, 14, 15, 16) if la.type in CONV_TYPES else (1, 11, 2, 12, 3, 13, 14, 15)
            kw = la.i(k[0], 1)
            kh, sw = la.i(k[1], kw), la.i(k[2], 1)
            sh, pl = la.i(k[3], sw), la.i(k[4], 0)
            pt = la.i(k[5], pl)
            pr, pb = la.i(k[6], pl), la.i(k[7], pt)
            dw = la.i(2, 1) if la.type in CONV_TYPES else 1
            dh = la.i(12, dw) if la.type in CONV_TYPES else 1
            if la.type == "Pooling" and la.i(4, 0):  # global pooling
                out = (1, 1)
            elif pl < 0:  # -233 / -234: SAME padding
                out = (-(-src[0] // sh), -(-src[1] // sw))
            else:
                out = ((src[0] + pt + pb - dh * (kh - 1) - 1) // sh + 1, (src[1] + pl + pr - dw * (kw - 1) - 1) // sw + 1)
        elif src and la.type == "Interp":
            out = (la.i(3, 0) or int(src[0] * float(la.params.get("1", 1))),
                   la.i(4, 0) or int(src[1] * float(la.params.get("2", 1))))
        elif la.type in ("Reshape", "Permute", "Flatten", "InnerProduct", "Softmax"):
            out = None
        hw.update(dict.fromkeys(la.tops, out))
        if la.type in NCNN_NOT_OPS:
            continue
        ops.append(la)
        if la.type in CONV_TYPES:
            q = la.i(8, 0) > 0
            int8 += [la] if q else []
            convs.append((la.i(6, 0) * out[0] * out[1] if out else None, q))
    bounds = sum(1 if la.i(8) > 100 else 2 for la in int8)
    return _finish({
        "format": "ncnn_int8", "ops": len(ops), "ops_int8": len(int8), "int8_by_op": dict(Counter(la.type for la in int8)),
        "float_by_op": dict(Counter(la.type for la in ops if la not in int8)), "boundaries": bounds,
        "boundaries_float_to_int8": len(int8), "boundaries_int8_to_float": sum(la.i(8) <= 100 for la in int8),
        "boundaries_backbone_neck": None, "boundaries_head": None, "head_index": None,
        "boundary_nodes": [la.name for la in int8]}, convs)


def summary(rep: dict) -> str:
    """A few lines: ops in INT8 (by type), boundaries (backbone+neck / head), the INT8 share of conv MACs."""
    by = ", ".join(f"{k} {v}" for k, v in sorted(rep["int8_by_op"].items(), key=lambda kv: -kv[1]))
    where = "" if rep["boundaries_backbone_neck"] is None else \
        f"; {rep['boundaries_backbone_neck']} in backbone+neck, {rep['boundaries_head']} in the head"
    share = "unknown" if rep["int8_conv_share"] is None else f"{100 * rep['int8_conv_share']:.1f}%"
    lines = [f"[structure {rep['format']}] ops {rep['ops']}, INT8 {rep['ops_int8']} ({by or 'none'})",
             f"  INT8<->float boundaries {rep['boundaries']} (float->int8 {rep['boundaries_float_to_int8']}, "
             f"int8->float {rep['boundaries_int8_to_float']}){where}",
             f"  conv MACs {rep['conv_macs'] / 1e6:.2f} M, {share} in INT8 ({rep['convs_int8']} of {rep['convs']} "
             f"convs INT8{f', {n} without shape' if (n := rep['convs_without_shape']) else ''})",
             "  (a structural estimate from the graph, not a profile: rules in gor_det.export.structure)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m gor_det.export.structure", description=summary.__doc__)
    ap.add_argument("file", help="an ONNX file or an NCNN .param (or its folder)")
    ap.add_argument("--format", default=None, choices=FORMATS, help="default: ncnn_int8 for a .param or folder, "
                    "onnx_ort_int8 for a file named *ort*, else onnx_qdq")
    ap.add_argument("--imgsz", type=int, default=None, help="input size (NCNN MACs)")
    a = ap.parse_args(argv)
    p = Path(a.file)
    fmt = a.format or ("ncnn_int8" if p.is_dir() or p.suffix == ".param" else
                       "onnx_ort_int8" if "ort" in p.name else "onnx_qdq")
    print(summary(structure_report(p, fmt, a.imgsz)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
