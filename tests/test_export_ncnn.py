"""gor_det.export NCNN: pnnx FP export vs torch, INT8 written from the QAT scales vs the fake-quant model, errors.

Same tiny model as test_export_onnx (random-init yolov8n, nc=4, 64 px, gor_det.quant + convert_for_export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import asymmetric_deploy_model, make_export_models

import gor_det  # noqa: F401  (offline environment before any ultralytics import)

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

IMGSZ = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from gor_det.export import export_ncnn, export_ncnn_int8

    fp, qat, dep = make_export_models(fmt="ncnn")
    root = tmp_path_factory.mktemp("ncnn")
    return dict(
        fp=fp,
        dep=dep,
        nfp=export_ncnn(fp, IMGSZ, root / "fp_ncnn_model"),
        n8=export_ncnn_int8(dep, IMGSZ, root / "int8_ncnn_model"),
    )


@pytest.fixture(scope="module")
def images():
    from gor_det.export import load_images

    return load_images(imgsz=IMGSZ)


def test_ncnn_fp_matches_torch(exported, images):
    from gor_det.export import NcnnBackend, TorchBackend, compare_backends

    nfp = exported["nfp"]
    assert nfp.param.name == "model.ncnn.param" and nfp.bin.is_file()
    be = NcnnBackend(nfp.param)  # fp32 (fp16 storage off)
    assert not be.int8
    rep = compare_backends(TorchBackend(exported["fp"]), be, images, cls_tol=1e-4, rel_l2_tol=1e-4, min_match=1.0)
    print("NCNN FP32 vs torch:", rep.summary())
    assert rep.ok, rep.summary()
    assert be(images).shape == (2, 8, 84)


def test_ncnn_int8_files(exported):
    from gor_det.export.ncnn_export import read_param

    dep, n8, nfp = exported["dep"], exported["n8"], exported["nfp"]
    n_q = sum(1 for m in dep.modules() if hasattr(m, "weight_int"))
    assert len(n8.quantized) == n_q == 56
    _, layers = read_param(n8.param)
    int8 = [la for la in layers if la.type == "Convolution" and la.params.get("8") == "2"]
    assert len(int8) == n_q
    names = dict(n8.quantized)
    assert "model.0.conv" not in names.values() and not any("dfl" in v for v in names.values())
    assert len(n8.float_layers) == 8  # first conv, DFL, 6 head output convs (quant.DEFAULT_SKIP)
    assert n8.bin.stat().st_size < 0.3 * nfp.bin.stat().st_size  # int8 weights (12.0 MB -> 3.1 MB here)
    lines = n8.table.read_text().splitlines()
    assert len(lines) == 2 * n_q and lines[0].split()[0].endswith("_param_0")
    # NCNN scale = 1 / step (inverse of ONNX's): check one conv
    lname, mname = n8.quantized[0]
    step = dep.get_submodule(mname).weight_scale.numpy()
    wline = next(ln for ln in lines if ln.startswith(f"{lname}_param_0 "))
    np.testing.assert_allclose(np.array(wline.split()[1:], np.float32), 1.0 / step, rtol=1e-6)


def test_ncnn_int8_conv_is_exact(exported, images):
    """The first INT8 conv's output equals the fake-quant conv's: the int8 weights/scales are read as intended."""
    import ncnn

    from gor_det.export import NcnnBackend
    from gor_det.export.ncnn_export import read_param

    dep, n8 = exported["dep"], exported["n8"]
    be = NcnnBackend(n8.param)
    assert be.int8
    _, layers = read_param(n8.param)
    by_name = {la.name: la for la in layers}
    outs = {}
    hooks = [
        dep.get_submodule(m).register_forward_hook(lambda mod, i, o, k=m: outs.__setitem__(k, o[0].numpy()))
        for _, m in n8.quantized[:3]
    ]
    with torch.no_grad():
        dep(torch.from_numpy(images[:1]))
    for h in hooks:
        h.remove()
    for lname, mname in n8.quantized[:3]:
        with be.net.create_extractor() as ex:
            ex.input(be.input_name, ncnn.Mat(np.ascontiguousarray(images[0])))
            ret, y = ex.extract(by_name[lname].tops[0])
        assert ret == 0
        err = np.abs(np.array(y) - outs[mname]).max()
        print(f"{lname} ({mname}) INT8 conv vs fake-quant conv: max |d| {err:.2e}")
        assert err < 1e-4


def test_ncnn_int8_matches_fake_quant(exported, images):
    from gor_det.export import NcnnBackend, TorchBackend, compare_backends

    dep, n8 = exported["dep"], exported["n8"]
    be = NcnnBackend(n8.param, threads=1)
    rep = compare_backends(TorchBackend(dep), be, images, cls_tol=5e-3, rel_l2_tol=1e-3)
    print("NCNN INT8 vs torch fake-quant:", rep.summary())
    assert rep.ok, rep.summary()
    quant_err = compare_backends(TorchBackend(exported["fp"]), TorchBackend(dep), images)
    print("(torch fake-quant vs FP, for scale:", quant_err.summary(), ")")
    assert rep.rel_l2 <= quant_err.rel_l2  # NCNN INT8 tracks the fake-quant model, not the FP one


def test_ncnn_options_apply_and_unknown_option_is_named(exported, images):
    from gor_det.export import NcnnBackend

    n8 = exported["n8"]
    ref = NcnnBackend(n8.param, threads=1)(images[:1])
    be = NcnnBackend(n8.param, threads=1, options={"use_winograd_convolution": False})
    assert be.net.opt.use_winograd_convolution is False
    np.testing.assert_allclose(be(images[:1]), ref, rtol=0, atol=5e-3)  # another conv algorithm, the same model
    with pytest.raises(ValueError, match="use_winograd_convlution"):
        NcnnBackend(n8.param, options={"use_winograd_convlution": False})


@pytest.mark.parametrize("cfg", ["yolo11n.yaml", "yolo26n.yaml"])
def test_ncnn_int8_yolo11_and_yolo26_students(cfg, images, tmp_path):
    """Other student families. YOLO26 (end-to-end head, reg_max 1): export runs the one-to-many branch, so the
    one-to-one branch's quantized convs are dead code that pnnx drops; the INT8 writer must not ask for them."""
    from gor_det.export import NcnnBackend, TorchBackend, compare_backends, export_ncnn_int8

    _, _, dep = make_export_models(cfg=cfg, fmt="ncnn", fuse=False)
    assert any("one2one" in n for n, _ in dep.named_modules()) == ("26" in cfg)
    n8 = export_ncnn_int8(dep, IMGSZ, tmp_path / "int8")
    names = [n for _, n in n8.quantized]
    assert len(names) > 40 and not any("one2one" in n for n in names)
    rep = compare_backends(TorchBackend(dep), NcnnBackend(n8.param, threads=1), images, cls_tol=5e-3, rel_l2_tol=1e-3)
    # raw outputs only: a random-init reg_max=1 head predicts near-zero-size boxes, so NMS matching by IoU is moot
    assert rep.cls_max_abs <= 5e-3 and rep.rel_l2 <= 1e-3, rep.summary()


def test_ncnn_int8_rejects_float_model(exported, tmp_path):
    from gor_det.export import export_ncnn_int8

    with pytest.raises(ValueError, match="convert_for_export"):
        export_ncnn_int8(exported["fp"], IMGSZ, tmp_path / "x")


def test_ncnn_backend_missing_and_corrupt(exported, tmp_path):
    from gor_det.export import ModelFileError, NcnnBackend

    with pytest.raises(FileNotFoundError, match="model file not found"):
        NcnnBackend(tmp_path / "nope.param")
    src = exported["nfp"]
    (tmp_path / "a.param").write_text("hello\nworld\n")
    (tmp_path / "a.bin").write_bytes(src.bin.read_bytes())
    with pytest.raises(ModelFileError, match="not a valid NCNN .param"):
        NcnnBackend(tmp_path / "a.param")
    (tmp_path / "b.param").write_text(src.param.read_text())
    (tmp_path / "b.bin").write_bytes(src.bin.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="corrupt|truncated"):
        NcnnBackend(tmp_path / "b.param")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        NcnnBackend(src.param, bin=tmp_path / "missing.bin")


def test_ncnn_int8_keeps_asymmetric_layers_float(tmp_path):
    """NCNN INT8 is signed symmetric: asymmetric activation quantizers stay float (with a warning), never wrong."""

    from gor_det.export import NcnnBackend, export_ncnn_int8

    dep = asymmetric_deploy_model()
    with pytest.warns(UserWarning, match="stay float"):
        res = export_ncnn_int8(dep, IMGSZ, tmp_path / "asym_ncnn_model")
    assert res.quantized == [] and len(res.float_layers) == 64
    be = NcnnBackend(res.param)
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, IMGSZ, IMGSZ)).astype(np.float32)
    with torch.no_grad():
        ref = dep(torch.from_numpy(x)).numpy()
    assert not be.int8 and np.abs(be(x)[:, 4:] - ref[:, 4:]).max() < 0.05  # float NCNN vs fake-quant torch


def testunused_modules_are_those_not_reaching_the_output():
    """The dead-code filter behind the YOLO26 case: a conv computed but not returned is unused; one on the output path
    is not (so a genuinely unmatched conv still raises in export_ncnn_int8)."""
    from torch import nn

    from gor_det.export.ncnn_export import unused_modules

    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.dead = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            self.dead(x)  # computed, not returned (like the one-to-one head branch in export mode)
            return self.used(x)

    m = TwoBranches()
    assert unused_modules(m, {"used", "dead"}, 16) == {"dead"}
    assert unused_modules(m, {"dead"}, 16) == {"dead"}
    assert unused_modules(m, {"used"}, 16) == set()
    assert m.used.weight.grad is None  # worked on a copy


def test_ncnn_int8_of_the_full_placement(images, tmp_path):
    """gor.quant.placement: full. NCNN has no INT8 Add / Concat: the placement's points become identities, the convs
    still get their (tied) learned input steps, and the model stays within the INT8 parity gate."""
    from gor_det.export import NcnnBackend, TorchBackend, compare_backends, export_ncnn_int8

    _, qat, dep = make_export_models(fmt="ncnn", placement="full")
    n8 = export_ncnn_int8(dep, IMGSZ, tmp_path / "int8")
    assert len(n8.quantized) == 56
    rep = compare_backends(TorchBackend(qat), NcnnBackend(n8.param, threads=1), images)
    assert rep.ok, rep.summary()
