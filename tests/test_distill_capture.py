"""gor_det.distill.capture and adapters on real (tiny, random-init) Ultralytics models."""

import copy
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import gor_det  # noqa: F401  (before ultralytics)
from gor_det.distill import (
    FeatureCapture,
    HeadOutputs,
    anchor_weight_to_levels,
    build_adapters,
    decode_ltrb,
    head_outputs,
)

IMGSZ = 64


@pytest.fixture(scope="module")
def models():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return {y: DetectionModel(f"{y}.yaml", nc=10, verbose=False) for y in ("yolov8n", "yolo11n", "yolo26n")}


def _x(b=2):
    torch.manual_seed(1)
    return torch.rand(b, 3, IMGSZ, IMGSZ)


def test_no_ultralytics_import():
    code = "import sys, gor_det.distill, gor_det.balance; assert 'ultralytics' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n", "yolo26n"])
def test_head_outputs_train_and_eval(models, name):
    m = models[name]
    head = m.model[-1]
    x = _x()
    m.train()
    preds = m(x)
    ho = head_outputs(preds, head.reg_max)
    raw = preds["one2many"] if "one2many" in preds else preds
    assert ho.scores is raw["scores"] and ho.boxes is raw["boxes"] and ho.feats[0] is raw["feats"][0]
    assert ho.reg_max == head.reg_max == (1 if name == "yolo26n" else 16)
    assert ho.scores.shape == (2, 10, 84) and ho.boxes.shape == (2, 4 * head.reg_max, 84)
    assert ho.channels == [64, 128, 256] and ho.level_sizes == [(8, 8), (4, 4), (2, 2)]
    assert ho.scores.requires_grad
    assert head_outputs(preds).reg_max == head.reg_max  # inferred
    assert head_outputs(ho) is ho

    m.eval()
    with torch.no_grad():
        y, raw_eval = m(x)
    ho = head_outputs((y, raw_eval), head.reg_max)
    raw = raw_eval["one2many"] if "one2many" in raw_eval else raw_eval
    assert ho.scores is raw["scores"]
    # Layout check against Ultralytics' own decode: our ltrb decode + row-major anchors per level reproduce `y`.
    ltrb = decode_ltrb(ho.boxes, ho.reg_max)  # (B, 4, A) grid units
    pts, strides = [], []
    for (h, w), s in zip(ho.level_sizes, head.stride.tolist()):
        gy, gx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        pts.append(torch.stack([gx.flatten(), gy.flatten()]))
        strides.append(torch.full((h * w,), s))
    pts, strides = torch.cat(pts, 1)[None], torch.cat(strides)
    lt, rb = ltrb[:, :2], ltrb[:, 2:]
    xy = (pts + (rb - lt) / 2) * strides
    wh = (lt + rb) * strides
    torch.testing.assert_close(torch.cat([xy, wh], 1), y[:, :4], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ho.scores.sigmoid(), y[:, 4:])
    m.train()


def test_head_outputs_errors(models):
    m = models["yolov8n"].train()
    preds = m(_x(1))
    with pytest.raises(ValueError, match="4 \\* reg_max"):
        head_outputs(preds, reg_max=8)
    with pytest.raises(ValueError, match="export mode"):
        head_outputs((torch.zeros(1, 14, 84),))
    with pytest.raises(ValueError, match="lacks"):
        head_outputs({"scores": preds["scores"]})
    d = HeadOutputs(preds["feats"], preds["scores"], preds["boxes"], 16).detach()
    assert not d.scores.requires_grad and not d.feats[0].requires_grad


def test_anchor_weight_to_levels_row_major():
    sizes = [(4, 4), (2, 3)]
    w = torch.arange(2 * 22, dtype=torch.float32).view(2, 22)
    lv = anchor_weight_to_levels(w, sizes)
    assert lv[0].shape == (2, 4, 4) and lv[1].shape == (2, 2, 3)
    assert lv[0][1, 2, 3] == w[1, 2 * 4 + 3] and lv[1][0, 1, 2] == w[0, 16 + 1 * 3 + 2]
    with pytest.raises(ValueError):
        anchor_weight_to_levels(w, [(4, 4)])


def test_feature_capture_hooks_pickle_deepcopy(models):
    m = copy.deepcopy(models["yolov8n"]).train()
    idx = m.model[-1].f  # the layers feeding Detect (15, 18, 21)
    cap = FeatureCapture([m.model[i] for i in idx])
    m._gor_capture = cap  # a plain attribute, as an integrator might keep it
    preds = m(_x())
    assert all(o is f for o, f in zip(cap.outputs, preds["feats"]))
    assert cap.outputs[0].requires_grad
    # graph-carrying outputs stored: deepcopy (Ultralytics' EMA) and pickle (checkpoints) must still work
    m2 = copy.deepcopy(m)
    assert m2._gor_capture is not cap and m2._gor_capture.outputs == [None] * 3
    assert cap.outputs[0] is not None  # the original keeps its storage
    m2(_x())
    assert m2._gor_capture.outputs[0] is not None and cap.outputs[0] is preds["feats"][0]
    m3 = pickle.loads(pickle.dumps(m))
    assert m3._gor_capture.outputs == [None] * 3
    m3(_x())
    assert m3._gor_capture.outputs[2].shape == (2, 256, 2, 2)
    # remove / context manager
    cap.remove()
    cap.remove()
    assert all(len(m.model[i]._forward_hooks) == 0 for i in idx) and cap.outputs == [None] * 3
    with FeatureCapture([m.model[0]], detach=True) as c:
        m(_x(1))
        assert c.outputs[0].shape[0] == 1 and not c.outputs[0].requires_grad
    assert len(m.model[0]._forward_hooks) == 0


def test_build_adapters():
    ad = build_adapters([64, 128, 256], [[64, 128, 256], [128, 256, 512], [32, 64, 128]])
    assert isinstance(ad, nn.ModuleList) and len(ad) == 3 and all(len(a) == 3 for a in ad)
    for a in ad.modules():  # plain torch classes only (loadable without gor_det)
        assert type(a).__module__.startswith("torch.nn")
    assert b"gor_det" not in pickle.dumps(ad)
    x = torch.randn(2, 64, 8, 8)
    conv = ad[0][0]
    assert conv.kernel_size == (1, 1) and conv.bias is not None
    torch.testing.assert_close(conv(x), x)  # identity where channels match
    up, down = ad[1][0], ad[2][0]
    assert up.weight.shape == (128, 64, 1, 1) and down.weight.shape == (32, 64, 1, 1)
    wu = up.weight.view(128, 64)
    torch.testing.assert_close(wu.T @ wu, 2.0 * torch.eye(64), atol=1e-5, rtol=0)  # gain sqrt(128/64)^2
    wd = down.weight.view(32, 64)
    torch.testing.assert_close(wd @ wd.T, torch.eye(32), atol=1e-5, rtol=0)
    assert float(up.bias.detach().abs().sum()) == 0.0
    with pytest.raises(ValueError, match="levels"):
        build_adapters([64, 128, 256], [[64, 128]])
