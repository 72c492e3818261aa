"""check_qdq on hand-built graphs (each TensorRT rule broken once), TensorRT helpers, parity metrics."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gor_det.export import check_qdq, compare_outputs, trtexec_command  # noqa: E402


def qdq_graph(
    act_zp=0,
    act_zp_dtype=np.int8,
    w_min=-127,
    act_scale=0.02,
    act_scale_shape=(),
    w_scale_len=4,
    w_axis=0,
    drop_input_dq=False,
    output_qdq=False,
    opset=17,
    with_zp=True,
    residual=False,
):
    """images -> Q -> DQ -> Conv(DQ(int8 W)) [-> Q -> DQ] -> Sigmoid -> output0."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    w.flat[0] = w_min
    ws = np.full(w_scale_len, 0.01, np.float32)
    inits = [
        numpy_helper.from_array(np.full(act_scale_shape, act_scale, np.float32), "act_s"),
        numpy_helper.from_array(np.full(act_scale_shape, act_zp, act_zp_dtype), "act_zp"),
        numpy_helper.from_array(w, "conv.weight_int8"),
        numpy_helper.from_array(ws, "conv.weight_scale"),
        numpy_helper.from_array(np.zeros(w_scale_len, np.int8), "w_zp"),
        numpy_helper.from_array(np.zeros(4, np.float32), "conv.bias"),
    ]
    zp = ["act_zp"] if with_zp else []
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "act_s", *zp], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "act_s", *zp], ["xdq"], name="dq_in"),
        helper.make_node(
            "DequantizeLinear", ["conv.weight_int8", "conv.weight_scale", "w_zp"], ["w"], name="dq_w", axis=w_axis
        ),
        helper.make_node(
            "Conv", ["images" if drop_input_dq else "xdq", "w", "conv.bias"], ["y"], name="conv", pads=[1, 1, 1, 1]
        ),
    ]
    y = "y"
    if output_qdq:
        nodes += [
            helper.make_node("QuantizeLinear", ["y", "act_s", "act_zp"], ["yq"], name="q_out"),
            helper.make_node("DequantizeLinear", ["yq", "act_s", "act_zp"], ["ydq"], name="dq_out"),
        ]
        y = "ydq"
    if residual:  # SiLU then a residual Add with an unquantized input
        nodes += [
            helper.make_node("Sigmoid", [y], ["ys"], name="sig"),
            helper.make_node("Mul", [y, "ys"], ["silu"], name="mul"),
            helper.make_node("Relu", ["y"], ["res"], name="relu"),
            helper.make_node("Add", ["silu", "res"], ["output0"], name="add"),
        ]
    else:
        nodes.append(helper.make_node("Sigmoid", [y], ["output0"], name="sig"))
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_valid_graph_passes_and_runs():
    m = qdq_graph()
    onnx.checker.check_model(m)
    rep = check_qdq(m)
    assert rep.ok, rep.summary()
    assert rep.stats["weight_dq"] == 1 and rep.stats["weighted_quantized"] == 1
    assert "OK" in rep.summary()


@pytest.mark.parametrize(
    "kwargs, rule, node",
    [
        (dict(act_zp=3), "zero_point", "q_in"),
        (dict(act_zp=128, act_zp_dtype=np.uint8), "zero_point", "q_in"),
        (dict(with_zp=False), "zero_point", "q_in"),
        (dict(w_min=-128), "weight_range", "dq_w"),
        (dict(drop_input_dq=True), "weighted_op_input", "conv"),
        (dict(act_scale_shape=(3,)), "scale", "q_in"),
        (dict(act_scale=-0.5), "scale", "q_in"),
        (dict(w_scale_len=2), "scale", "dq_w"),
        (dict(w_axis=1, w_scale_len=3), "scale", "dq_w"),
        (dict(output_qdq=True), "weighted_op_output", "q_out"),
        (dict(opset=12), "opset", "model"),
    ],
)
def test_checker_flags_broken_graph(kwargs, rule, node):
    rep = check_qdq(qdq_graph(**kwargs))
    assert not rep.ok
    assert rule in rep.rules(), rep.summary()
    assert node in rep.nodes, rep.summary()
    assert node in rep.summary()


def test_checker_cli_and_path(tmp_path, capsys):
    from gor_det.export.check_qdq import main

    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(qdq_graph(), str(good))
    onnx.save(qdq_graph(act_zp=1, w_min=-128), str(bad))
    assert check_qdq(good).ok
    assert main([str(good)]) == 0
    assert main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "weight_range" in out
    with pytest.raises(FileNotFoundError, match="model file not found"):
        check_qdq(tmp_path / "missing.onnx")


def test_unquantized_residual_add_is_a_warning():
    m = qdq_graph(residual=True)
    onnx.checker.check_model(m)
    rep = check_qdq(m)
    assert rep.ok and [w.node for w in rep.warnings if w.rule == "residual_add"] == ["add"], rep.summary()


def test_per_tensor_weight_scale_is_a_warning():
    rep = check_qdq(qdq_graph(w_scale_len=1))
    assert rep.ok and any(w.rule == "scale" for w in rep.warnings)


def test_trtexec_command():
    cmd = trtexec_command("m_qdq.onnx", "m.engine")
    assert cmd.startswith("trtexec --onnx=m_qdq.onnx --int8 --fp16 --saveEngine=m.engine")
    assert (
        "--dumpLayerInfo" in cmd and "--exportLayerInfo=layers.json" in cmd and "--profilingVerbosity=detailed" in cmd
    )
    st = trtexec_command("m_qdq.onnx", "m.engine", strongly_typed=True, layer_info=None)
    assert st == "trtexec --onnx=m_qdq.onnx --stronglyTyped --saveEngine=m.engine"


def test_tensorrt_skips_cleanly_without_tensorrt(tmp_path):
    from gor_det.export import TensorRTBackend, TensorRTUnavailable, build_engine

    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    onnx.save(qdq_graph(), str(tmp_path / "m.onnx"))
    with pytest.raises(TensorRTUnavailable, match="skipped"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        TensorRTBackend(tmp_path / "missing.engine")
    (tmp_path / "x.engine").write_bytes(b"\0" * 16)
    with pytest.raises(RuntimeError, match="tensorrt"):
        TensorRTBackend(tmp_path / "x.engine")


def test_parity_metrics():
    rng = np.random.default_rng(0)
    a = np.zeros((1, 6, 50), np.float32)
    a[0, :2] = rng.uniform(10, 100, (2, 50))
    a[0, 2:4] = rng.uniform(5, 20, (2, 50))
    a[0, 4:] = rng.uniform(0, 0.5, (2, 50))
    a[0, 4, :3] = 0.9  # three confident class-0 anchors
    same = compare_outputs(a, a.copy())
    assert same.ok and same.cls_max_abs == 0 and same.matched == same.n_ref > 0 and same.mean_iou == pytest.approx(1)
    b = a.copy()
    b[0, 4:] += 0.2  # every score moves
    worse = compare_outputs(a, b)
    assert not worse.ok and worse.cls_max_abs == pytest.approx(0.2, abs=1e-6)
    c = a.copy()
    c[0, 0] += 300.0  # boxes moved away: no match
    moved = compare_outputs(a, c, cls_tol=1.0, rel_l2_tol=10.0)
    assert moved.matched == 0 and not moved.ok
    with pytest.raises(ValueError, match="shapes differ"):
        compare_outputs(a, a[:, :, :10])


def test_detections_at_the_confidence_threshold_do_not_fail_the_match():
    """A detection scored closer to conf than the class-score difference measured (within cls_tol) may vanish; one
    scored well above conf may not."""
    a = np.zeros((1, 6, 40), np.float32)
    a[0, 0], a[0, 1] = np.arange(40) * 30.0 + 20, 20.0  # 40 disjoint boxes in a row
    a[0, 2:4] = 10.0
    a[0, 4, :3] = 0.9  # three confident detections
    a[0, 4, 3] = 0.28  # one just above conf=0.25
    b = a.copy()
    b[0, 4, 3] = 0.2  # gone in the test backend: |d| 0.08 < cls_tol; 3 of 4 matched would be below min_match 0.8
    rep = compare_outputs(a, b, cls_tol=0.1)
    assert rep.ok and rep.n_ref == 4 and rep.matched == 3 and rep.borderline_ref == 1, rep.summary()
    assert "not counted" in rep.summary()
    c = b.copy()
    c[0, 0, :2] += 3000.0  # two confident detections moved away: unmatched, and not excused
    worse = compare_outputs(a, c, cls_tol=0.1, rel_l2_tol=10.0)
    assert not worse.ok and worse.matched == 1 and worse.borderline_ref == 1, worse.summary()


def test_default_images():
    from gor_det.export import default_images, load_images

    paths = default_images()
    assert [p.name for p in paths] == ["bus.jpg", "zidane.jpg"]
    x = load_images(imgsz=(64, 96))
    assert x.shape == (2, 3, 64, 96) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def concat_graph(s_a=0.1, s_b=0.1, s_out=0.1, float_b=False):
    """images -> Q/DQ(s_a) --------------------\\
       images -> Relu -> [Q/DQ(s_b) | float] --> Concat -> Q/DQ(s_out) -> MaxPool -> output0"""
    def qdq(x, s, name):
        return [helper.make_node("QuantizeLinear", [x, f"{name}_s", "zp"], [f"{name}_q"], name=f"q_{name}"),
                helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", "zp"], [f"{name}_dq"],
                                 name=f"dq_{name}")], numpy_helper.from_array(np.array(s, np.float32), f"{name}_s")

    inits = [numpy_helper.from_array(np.array(0, np.int8), "zp")]
    nodes, n_a = [], "a_dq"
    qa, ia = qdq("images", s_a, "a")
    nodes += qa + [helper.make_node("Relu", ["images"], ["r"], name="relu")]
    inits.append(ia)
    if float_b:
        b = "r"
    else:
        qb, ib = qdq("r", s_b, "b")
        nodes += qb
        inits.append(ib)
        b = "b_dq"
    nodes.append(helper.make_node("Concat", [n_a, b], ["cat"], name="cat", axis=1))
    qo, io = qdq("cat", s_out, "o")
    nodes += qo + [helper.make_node("MaxPool", ["o_dq"], ["output0"], name="pool", kernel_shape=[1, 1])]
    inits.append(io)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kwargs, expected", [
    (dict(), {}),
    (dict(s_b=0.2), {"concat_scale": ["cat"], "requantize": ["dq_b"]}),  # dq_b (0.2) feeds q_o (0.1)
    (dict(float_b=True), {"concat_scale": ["cat"]}),
    (dict(s_out=0.3), {"requantize": ["dq_a", "dq_b"]}),
])
def test_concat_scale_and_requantize_warnings(kwargs, expected):
    m = concat_graph(**kwargs)
    onnx.checker.check_model(m)
    rep = check_qdq(m)
    got = {}
    for w in rep.warnings:
        got.setdefault(w.rule, []).append(w.node)
    assert rep.ok and got == expected, rep.summary()
