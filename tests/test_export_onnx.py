"""gor_det.export ONNX: FP export vs torch, Q/DQ export (folded INT8 weights, TensorRT rules, ORT vs fake-quant),
runtime errors, lazy imports. Tiny random-init yolov8n (nc=4) at 64 px, QAT via gor_det.quant + convert_for_export."""

from __future__ import annotations

import subprocess
import sys

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
def images():
    from gor_det.export import load_images

    return load_images(imgsz=IMGSZ)  # ultralytics' bus.jpg + zidane.jpg, letterboxed


def test_import_is_lazy():
    code = (
        "import sys, gor_det.export\n"
        "bad = [m for m in ('onnx', 'onnxruntime', 'onnxslim', 'ncnn', 'pnnx', 'tensorrt', 'ultralytics') "
        "if m in sys.modules]\nprint(bad)\nassert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fp_onnx_matches_torch(models, images, tmp_path):
    import onnx

    from gor_det.export import OnnxBackend, TorchBackend, compare_backends, export_onnx

    fp, _, _ = models
    p = export_onnx(fp, IMGSZ, tmp_path / "fp.onnx")
    g = onnx.load(str(p)).graph
    assert [i.name for i in g.input] == ["images"] and [o.name for o in g.output] == ["output0"]
    rep = compare_backends(TorchBackend(fp), OnnxBackend(p), images, cls_tol=1e-4, rel_l2_tol=1e-4, min_match=1.0)
    print(rep.summary())
    assert rep.ok, rep.summary()


def test_qdq_onnx_folded_checked_and_matches_fake_quant(models, images, tmp_path):
    import onnx

    from gor_det.export import OnnxBackend, TorchBackend, check_qdq, compare_backends, export_onnx_qdq

    fp, qat, dep = models
    n_q = sum(1 for m in dep.modules() if hasattr(m, "weight_int"))
    p = export_onnx_qdq(dep, IMGSZ, tmp_path / "qdq.onnx")
    model = onnx.load(str(p))
    g = model.graph
    int8_w = [i for i in g.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_w) == n_q, "every quantized conv weight must be an INT8 initializer"
    inits = {i.name for i in g.initializer}
    assert not [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in inits], "unfolded weight Q"
    for n in g.node:  # per-channel axis-0 weight DQ, int8 zero points
        if n.op_type == "DequantizeLinear" and n.input[0] in {i.name for i in int8_w}:
            assert next(a.i for a in n.attribute if a.name == "axis") == 0
    fp_size = sum(p_.numel() for p_ in fp.parameters()) * 4
    assert p.stat().st_size < 0.4 * fp_size  # ~3.2 MB vs 12 MB
    rep = check_qdq(model)
    print(rep.summary())
    assert rep.ok and rep.stats["weighted_quantized"] == n_q
    par = compare_backends(TorchBackend(dep), OnnxBackend(p), images, cls_tol=5e-3, rel_l2_tol=1e-3)
    print("ORT Q/DQ vs torch deploy:", par.summary())
    assert par.ok, par.summary()
    assert compare_backends(TorchBackend(qat), TorchBackend(dep), images, cls_tol=1e-5, rel_l2_tol=1e-5).ok


def test_qdq_export_rejects_float_model(models, tmp_path):
    from gor_det.export import export_onnx_qdq

    with pytest.raises(ValueError, match="QuantizeLinear"):
        export_onnx_qdq(models[0], IMGSZ, tmp_path / "x.onnx")


def test_onnx_backend_missing_and_corrupt(tmp_path):
    from gor_det.export import ModelFileError, OnnxBackend

    with pytest.raises(FileNotFoundError, match="model file not found"):
        OnnxBackend(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelFileError, match="is not a valid ONNX model"):
        OnnxBackend(bad)


def test_asymmetric_activations_are_not_tensorrt(tmp_path, images):
    """a_symmetric=False exports uint8 Q/DQ: strict (TensorRT) export refuses it, strict=False runs in ORT."""

    from gor_det.export import OnnxBackend, TorchBackend, compare_backends, export_onnx_qdq

    dep = asymmetric_deploy_model()
    with pytest.raises(ValueError, match="zero_point"):
        export_onnx_qdq(dep, IMGSZ, tmp_path / "a.onnx")
    p = export_onnx_qdq(dep, IMGSZ, tmp_path / "a.onnx", strict=False)
    rep = compare_backends(TorchBackend(dep), OnnxBackend(p), images, cls_tol=5e-3, rel_l2_tol=1e-3)
    assert rep.ok, rep.summary()


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_full_placement_qdq_has_no_float_islands(cfg, images, tmp_path):
    """gor.quant.placement: full. The TensorRT rules pass with 0 warnings (no unquantized residual Add, every Concat on
    one scale, no requantization), the graph matches the fake-quant model, and the conv-only graph of the same model
    is the one that warns."""
    from gor_det.export import OnnxBackend, TorchBackend, check_qdq, compare_backends, export_onnx_qdq
    from gor_det.export.structure import structure_report

    reports = {}
    for placement in ("conv", "full"):
        _, _, dep = make_export_models(cfg=cfg, fuse="26" not in cfg, placement=placement)
        p = export_onnx_qdq(dep, IMGSZ, tmp_path / f"{placement}.onnx")
        reports[placement] = check_qdq(p), structure_report(p, "onnx_qdq")
        if placement == "full":
            par = compare_backends(TorchBackend(dep), OnnxBackend(p), images, cls_tol=5e-3, rel_l2_tol=1e-3)
            assert par.cls_max_abs <= 5e-3 and par.rel_l2 <= 1e-3, par.summary()
    (conv_rules, conv_s), (full_rules, full_s) = reports["conv"], reports["full"]
    assert full_rules.ok and not full_rules.warnings, full_rules.summary()
    assert {"residual_add", "concat_scale"} <= {w.rule for w in conv_rules.warnings}
    assert full_s["boundaries_backbone_neck"] < conv_s["boundaries_backbone_neck"], (conv_s, full_s)
    assert full_s["ops_int8"] > conv_s["ops_int8"]
