"""gor_det.export.structure: exact counts on hand-built graphs (TensorRT Q/DQ, ONNX Runtime QDQ, NCNN), one exported
YOLOv8n, the CLI, and the lazy onnx import."""

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gor_det.export.structure import structure_report, summary  # noqa: E402


class G:
    """A tiny ONNX graph builder: per-tensor int8 activation Q/DQ, per-channel int8 conv weights."""

    def __init__(self):
        self.nodes, self.inits, self.inputs, self.outputs, self.k = [], [], [], [], 0

    def name(self, p):
        self.k += 1
        return f"{p}_{self.k}"

    def const(self, arr, p="c"):
        n = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def node(self, op, ins, mod="", n_out=1, **kw):
        outs = [self.name(f"{mod}/{op}_out") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, ins, outs, name=self.name(f"{mod}/{op}"), **kw))
        return outs[0] if n_out == 1 else outs

    def input(self, shape):
        n = self.name("in")
        self.inputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, shape))
        return n

    def q(self, x, s, mod=""):
        return self.node("QuantizeLinear", [x, self.const(np.float32(s)), self.const(np.int8(0))], mod)

    def dq(self, x, s, mod=""):
        return self.node("DequantizeLinear", [x, self.const(np.float32(s)), self.const(np.int8(0))], mod)

    def qdq(self, x, s, mod=""):
        return self.dq(self.q(x, s, mod), s, mod)

    def conv(self, x, cout, cin, k, mod="", quant=True, stride=1):
        w = np.ones((cout, cin, k, k), np.int8 if quant else np.float32)
        w = self.const(w, "w")
        if quant:
            w = self.node("DequantizeLinear", [w, self.const(np.full(cout, 0.01, np.float32)),
                                               self.const(np.zeros(cout, np.int8))], mod, axis=0)
        return self.node("Conv", [x, w], mod, pads=[k // 2] * 4, strides=[stride] * 2)

    def silu(self, x, mod=""):
        return self.node("Mul", [x, self.node("Sigmoid", [x], mod)], mod)

    def save(self, path, *outs):
        vi = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs]
        g = helper.make_graph(self.nodes, "g", self.inputs, vi, self.inits)
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path


def report(g, tmp_path, *outs, fmt="onnx_qdq"):
    return structure_report(g.save(tmp_path / "m.onnx", *outs), fmt)


def pick(r, *keys):
    return {k: r[k] for k in keys}


@pytest.mark.parametrize("float_tap", [False, True])
def test_trt_conv_silu_q_conv_fuses(tmp_path, float_tap):
    """Q/DQ -> Conv -> Sigmoid*Mul -> Q/DQ -> Conv: all INT8, one boundary (the input Q); a float consumer of the
    SiLU output (float_tap) keeps the SiLU float and leaves its Q unfused."""
    g = G()
    x = g.input([1, 3, 8, 8])
    a = g.silu(g.conv(g.qdq(x, 0.1, "/model.0"), 8, 3, 3, "/model.0"), "/model.0")
    y = g.conv(g.qdq(a, 0.05, "/model.1"), 4, 8, 1, "/model.1")
    outs = [y, g.node("Relu", [a], "/model.0")] if float_tap else [y]
    r = report(g, tmp_path, *outs)
    if float_tap:
        assert pick(r, "ops", "ops_int8", "boundaries", "boundaries_float_to_int8", "boundaries_backbone_neck",
                    "boundaries_head") == dict(ops=5, ops_int8=2, boundaries=2, boundaries_float_to_int8=2,
                                               boundaries_backbone_neck=1, boundaries_head=1)
        assert r["int8_by_op"] == {"Conv": 2} and r["float_by_op"] == {"Sigmoid": 1, "Mul": 1, "Relu": 1}
    else:
        assert pick(r, "ops", "ops_int8", "boundaries", "boundaries_float_to_int8", "boundaries_int8_to_float",
                    "boundaries_backbone_neck", "boundaries_head", "head_index") == dict(
            ops=4, ops_int8=4, boundaries=1, boundaries_float_to_int8=1, boundaries_int8_to_float=0,
            boundaries_backbone_neck=1, boundaries_head=0, head_index=1)
        assert r["int8_by_op"] == {"Conv": 2, "Sigmoid": 1, "Mul": 1}
    # MACs: 8*3*3*3 * 8*8 + 4*8*1*1 * 8*8
    assert pick(r, "convs", "convs_int8", "conv_macs", "conv_macs_int8", "int8_conv_share") == dict(
        convs=2, convs_int8=2, conv_macs=13824 + 2048, conv_macs_int8=13824 + 2048, int8_conv_share=1.0)
    assert "boundaries 1" in summary(r) or float_tap


@pytest.mark.parametrize("equal", [True, False])
def test_trt_concat_commutes_only_with_one_scale(tmp_path, equal):
    g = G()
    a, b = g.input([1, 4, 8, 8]), g.input([1, 4, 8, 8])
    c = g.node("Concat", [g.qdq(a, 0.1), g.qdq(b, 0.1 if equal else 0.2)], axis=1)
    y = g.conv(g.qdq(c, 0.1), 2, 8, 1)
    r = report(g, tmp_path, y)
    if equal:  # Concat on INT8 data: only the two input Qs convert
        assert pick(r, "ops_int8", "boundaries", "boundaries_float_to_int8", "boundaries_int8_to_float") == dict(
            ops_int8=2, boundaries=2, boundaries_float_to_int8=2, boundaries_int8_to_float=0)
    else:  # float Concat: both DQs and the Q after it convert too
        assert pick(r, "ops_int8", "boundaries", "boundaries_float_to_int8", "boundaries_int8_to_float") == dict(
            ops_int8=1, boundaries=5, boundaries_float_to_int8=3, boundaries_int8_to_float=2)
        assert r["float_by_op"] == {"Concat": 1}
    assert r["boundaries_backbone_neck"] is None  # no module paths in the names


@pytest.mark.parametrize("residual_q", [False, True])
def test_trt_float_add_island_vs_quantized_residual(tmp_path, residual_q):
    g = G()
    x, res = g.input([1, 4, 8, 8]), g.input([1, 4, 8, 8])
    a = g.conv(g.qdq(x, 0.1), 4, 4, 3)
    s = g.node("Add", [a, g.qdq(res, 0.1) if residual_q else res])
    y = g.conv(g.qdq(s, 0.1), 2, 4, 1)
    r = report(g, tmp_path, y)
    if residual_q:  # Conv + Add(quantized residual) + Q fuse
        assert r["int8_by_op"] == {"Conv": 2, "Add": 1} and r["boundaries"] == 2  # the two graph-input Qs
    else:  # the Add runs float: its Q is a float->int8 boundary
        assert r["int8_by_op"] == {"Conv": 2} and r["float_by_op"] == {"Add": 1}
        assert pick(r, "boundaries", "boundaries_float_to_int8") == dict(boundaries=2, boundaries_float_to_int8=2)
    assert r["ops"] == 3


def test_trt_maxpool_backward_propagation(tmp_path):
    """Conv -> SiLU -> MaxPool -> Q: the Q moves before the MaxPool and fuses with the conv."""
    g = G()
    a = g.silu(g.conv(g.qdq(g.input([1, 3, 8, 8]), 0.1), 4, 3, 3))
    p = g.node("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2])
    r = report(g, tmp_path, g.conv(g.qdq(p, 0.1), 2, 4, 1))
    assert r["int8_by_op"] == {"Conv": 2, "Sigmoid": 1, "Mul": 1, "MaxPool": 1} and r["boundaries"] == 1
    assert r["conv_macs"] == 4 * 3 * 9 * 64 + 2 * 4 * 16


@pytest.mark.parametrize("float_tail", [False, True])
def test_ort_qdq_node_units(tmp_path, float_tail):
    """ONNX Runtime QDQ: DQ -> Conv -> Q, DQ -> Sigmoid -> Q, DQ -> Mul -> Q are INT8 kernels; the graph input's Q and
    the last DQ (into a graph output or a float op) are the boundaries."""
    g = G()
    c = g.dq(g.q(g.conv(g.qdq(g.input([1, 3, 8, 8]), 0.1), 4, 3, 3), 0.2), 0.2)
    sg = g.qdq(g.node("Sigmoid", [c]), 1 / 255)
    m = g.dq(g.q(g.node("Mul", [c, sg]), 0.1), 0.1)
    out = g.node("Softplus", [m]) if float_tail else m
    r = report(g, tmp_path, out, fmt="onnx_ort_int8")
    assert r["int8_by_op"] == {"Conv": 1, "Sigmoid": 1, "Mul": 1}
    assert pick(r, "ops", "ops_int8", "boundaries", "boundaries_float_to_int8", "boundaries_int8_to_float") == dict(
        ops=3 + float_tail, ops_int8=3, boundaries=2, boundaries_float_to_int8=1, boundaries_int8_to_float=1)
    assert r["int8_conv_share"] == 1.0


def test_ncnn_param(tmp_path):
    (tmp_path / "m.ncnn.param").write_text(
        "7767517\n7 8\n"
        "Input            in0      0 1 in0 0=8 1=8 2=3\n"
        "Convolution      conv_0   1 1 in0 1 0=8 1=3 11=3 3=1 13=1 4=1 14=1 5=1 6=216\n"
        "Swish            silu_0   1 1 1 2\n"
        "Convolution      conv_1   1 1 2 3 0=4 1=1 11=1 3=2 13=2 4=0 5=1 6=32 8=2\n"
        "Split            split_0  1 2 3 4 5\n"
        "Pooling          pool_0   1 1 4 6 0=0 1=2 11=2 2=2 12=2 3=0\n"
        "ConvolutionDepthWise dw_0 1 1 6 7 0=4 1=3 11=3 3=1 13=1 4=1 5=1 6=36 7=4 8=1\n")
    r = structure_report(tmp_path, "ncnn_int8")  # the folder; input size from the Input layer
    assert pick(r, "ops", "ops_int8", "boundaries", "boundaries_backbone_neck", "convs", "convs_int8") == dict(
        ops=5, ops_int8=2, boundaries=4, boundaries_backbone_neck=None, convs=3, convs_int8=2)
    assert r["int8_by_op"] == {"Convolution": 1, "ConvolutionDepthWise": 1}
    # 216*8*8 float; 32*4*4 and 36*2*2 int8
    assert (r["conv_macs"], r["conv_macs_int8"]) == (13824 + 512 + 144, 512 + 144)
    assert structure_report(tmp_path / "m.ncnn.param", "ncnn_int8", imgsz=16)["conv_macs"] == 4 * (13824 + 512 + 144)


def test_cli_and_bad_format(tmp_path):
    g = G()
    p = g.save(tmp_path / "m.onnx", g.conv(g.qdq(g.input([1, 3, 8, 8]), 0.1), 2, 3, 1))
    out = subprocess.run([sys.executable, "-m", "gor_det.export.structure", str(p)], capture_output=True, text=True)
    assert out.returncode == 0 and "[structure onnx_qdq] ops 1, INT8 1 (Conv 1)" in out.stdout, out.stderr
    with pytest.raises(ValueError, match="unknown format"):
        structure_report(p, "tflite")


def test_import_gor_det_does_not_import_onnx():
    code = "import sys, gor_det, gor_det.export.structure; assert 'onnx' not in sys.modules, 'onnx imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_exported_yolov8n_qdq(tmp_path):
    """Today's conv-only Q/DQ placement: every conv but the skipped ones (first conv, DFL, 6 head outputs) INT8;
    boundaries remain where a conv's output also feeds a float op (C2f split/shortcut, concat of other scales)."""
    from conftest import make_export_models

    from gor_det.export import export_onnx_qdq

    _, _, deploy = make_export_models(imgsz=64)
    r = structure_report(export_onnx_qdq(deploy, 64, tmp_path / "qdq.onnx"), "onnx_qdq")
    print(summary(r))
    assert r["head_index"] == 22 and r["convs"] == 64 and r["convs_int8"] == 56 and r["convs_without_shape"] == 0
    assert r["int8_conv_share"] > 0.9 and r["int8_by_op"]["Conv"] == 56
    assert r["boundaries"] > 0 and r["boundaries_backbone_neck"] > 0
    assert r["boundaries_backbone_neck"] + r["boundaries_head"] == r["boundaries"]
    assert r["boundaries"] == r["boundaries_float_to_int8"] + r["boundaries_int8_to_float"] == len(r["boundary_nodes"])
