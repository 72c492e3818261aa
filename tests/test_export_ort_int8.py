"""gor_det.export.ort_int8: ONNX Runtime CPU INT8 export. The learned scales are kept exactly, ORT fuses every
quantized conv into its integer QLinearConv, the float convs and the box decode stay float, outputs match the
fake-quant model. Tiny random-init yolov8n (nc=4) at 64 px, QAT via gor_det.quant + convert_for_export."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import asymmetric_deploy_model, make_export_models

import gor_det  # noqa: F401  (offline environment before any ultralytics import)

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

IMGSZ = 64


@pytest.fixture(scope="module")
def models():
    return make_export_models()


@pytest.fixture(scope="module")
def calib():
    return np.random.default_rng(0).random((4, 3, IMGSZ, IMGSZ), dtype=np.float32)


@pytest.fixture(scope="module")
def exported(models, calib, tmp_path_factory):
    from gor_det.export import export_onnx_ort_int8

    return export_onnx_ort_int8(models[2], IMGSZ, tmp_path_factory.mktemp("ort") / "m.onnx", calib)


def deploy_convs(deploy):
    from gor_det.export.ncnn_export import is_deploy_conv

    return {n: m for n, m in deploy.named_modules() if is_deploy_conv(m)}


def optimized_ops(path, tmp_path) -> Counter:
    """Op types of the graph ONNX Runtime actually runs (after its CPU graph transformers)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)


def test_learned_weights_and_input_scales_are_kept_exactly(models, exported):
    import onnx
    import torch

    from gor_det.export.qdq import constants

    g = onnx.load(str(exported)).graph
    vals = constants(g)
    producer = {o: n for n in g.node for o in n.output}
    convs = deploy_convs(models[2])
    by_int = {m.weight_int.to(torch.int8).numpy().tobytes(): m for m in convs.values()}
    seen = 0
    for n in g.node:
        if n.op_type != "Conv" or n.input[1] not in producer:
            continue
        wdq = producer[n.input[1]]
        assert wdq.op_type == "DequantizeLinear"
        w_int = vals[wdq.input[0]]
        m = by_int.get(np.asarray(w_int, np.int8).tobytes())
        assert m is not None, f"{n.name}: int8 weights differ from every deployed conv's integers"
        np.testing.assert_array_equal(vals[wdq.input[1]], m.weight_scale.float().reshape(-1).numpy())
        xdq = producer[n.input[0]]  # the conv input: DQ(u8) with the learned step, zero point 128 (= signed grid)
        assert xdq.op_type == "DequantizeLinear"
        assert float(vals[xdq.input[1]]) == pytest.approx(float(m.act_scale), rel=1e-7)
        assert vals[xdq.input[2]].dtype == np.uint8 and int(vals[xdq.input[2]]) == 128
        seen += 1
    assert seen == len(convs)


def test_ort_runs_integer_kernels_and_keeps_float_convs_float(models, exported, tmp_path):
    ops = optimized_ops(exported, tmp_path)
    n_quant = len(deploy_convs(models[2]))
    n_conv_fp = sum(1 for m in models[0].modules() if type(m).__name__ == "Conv2d")
    assert ops["QLinearConv"] == n_quant  # every quantized conv became an integer conv
    assert ops["Conv"] == n_conv_fp - n_quant  # first conv, head outputs, DFL: float as in training
    assert ops["QLinearMul"] > 0 and ops["QLinearSigmoid"] > 0  # SiLU in the integer domain too
    assert "QLinearSoftmax" not in ops  # the DFL softmax / box decode after the float head convs stay float


def test_matches_fake_quant_model(models, exported):
    from gor_det.export import OnnxBackend, TorchBackend, compare_backends, load_images

    images = load_images(imgsz=IMGSZ)
    rep = compare_backends(TorchBackend(models[1]), OnnxBackend(exported), images, cls_tol=0.1, rel_l2_tol=0.05,
                           min_match=0.8, min_mean_iou=0.8)
    print(rep.summary())
    assert rep.ok, rep.summary()


def test_asymmetric_activations_keep_their_zero_points(calib, tmp_path):
    import onnx

    from gor_det.export import export_onnx_ort_int8
    from gor_det.export.qdq import constants

    deploy = asymmetric_deploy_model()
    p = export_onnx_ort_int8(deploy, IMGSZ, tmp_path / "asym.onnx", calib)
    g = onnx.load(str(p)).graph
    vals = constants(g)
    producer = {o: n for n in g.node for o in n.output}
    expected = {round(float(m.act_zero_point)) for m in deploy_convs(deploy).values()}
    quantized = [n for n in g.node if n.op_type == "Conv" and n.input[1] in producer]  # int8 weight -> DQ -> Conv
    zps = {int(vals[producer[n.input[0]].input[2]]) for n in quantized}
    assert len(expected) > 1 and zps == expected  # the learned zero points, not the symmetric 128


def test_bad_inputs_are_clear_errors(models, calib, tmp_path):
    from gor_det.export import export_onnx_ort_int8

    with pytest.raises(ValueError, match="convert_for_export"):
        export_onnx_ort_int8(models[0], IMGSZ, tmp_path / "fp.onnx", calib)
    with pytest.raises(ValueError, match="calib_images is empty"):
        export_onnx_ort_int8(models[2], IMGSZ, tmp_path / "x.onnx", calib[:0])


def test_full_placement_ranges_are_learned_not_calibrated(calib, tmp_path):
    """gor.quant.placement: full. The residual Add and Concat inputs take the learned steps (the Q/DQ pairs of the
    placement become ORT overrides on the tensors ORT quantizes), every Add and Concat of the backbone and neck runs
    in QLinear kernels, and the model matches the fake-quant model."""
    import onnx

    from gor_det.export import OnnxBackend, TorchBackend, compare_backends, export_onnx_ort_int8, load_images
    from gor_det.export.ncnn_export import dequantized_copy
    from gor_det.export.onnx_export import export_onnx
    from gor_det.export.ort_int8 import take_learned_points

    _, qat, dep = make_export_models(placement="full")
    points = [m for m in dep.modules() if hasattr(m, "export_range")]
    float_model, _ = dequantized_copy(dep, keep_points=True)
    proto = onnx.load(str(export_onnx(float_model, IMGSZ, tmp_path / "fp.onnx")))
    learned = take_learned_points(proto.graph)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    scales = {round(float(m.scale), 9) for m in points}
    assert learned and {round(s, 9) for s, _ in learned.values()} <= scales
    assert all(zp == 128 for _, zp in learned.values())  # signed steps on the uint8 grid
    p = export_onnx_ort_int8(dep, IMGSZ, tmp_path / "full.onnx", calib)
    ops = optimized_ops(p, tmp_path)
    assert ops["QLinearAdd"] >= 6 and ops["QLinearConcat"] >= 13, ops
    rep = compare_backends(TorchBackend(qat), OnnxBackend(p), load_images(imgsz=IMGSZ), cls_tol=0.1, rel_l2_tol=0.05,
                           min_match=0.8, min_mean_iou=0.8)
    assert rep.ok, rep.summary()
