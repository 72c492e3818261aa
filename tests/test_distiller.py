"""gor_det.distill.Distiller with real tiny Ultralytics models (random init, imgsz 64)."""

import copy
import dataclasses

import pytest
import torch

import gor_det  # noqa: F401  (before ultralytics)
from gor_det.config import DistillCfg
from gor_det.distill import (
    KD_KEYS,
    Distiller,
    GroundTruth,
    agreement_shares,
    build_adapters,
    cls_kd_loss,
    cwd_loss,
    dfl_kd_loss,
    head_outputs,
    ltrb_kd_loss,
    teacher_confidence,
)

IMGSZ = 64


@pytest.fixture(scope="module")
def nets():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    teachers = [DetectionModel(y, nc=10, verbose=False) for y in ("yolov8s.yaml", "yolo26n.yaml")]
    for t in teachers:
        t.eval().requires_grad_(False)
    return student, teachers


def _x(b=2, size=IMGSZ):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1))


def _run(nets, x=None):
    student, teachers = nets
    x = _x() if x is None else x
    student.train()
    s = head_outputs(student(x), student.model[-1].reg_max)
    with torch.no_grad():
        ts = [head_outputs(t(x), t.model[-1].reg_max) for t in teachers]
    return s, ts


@pytest.mark.parametrize("ensemble", ["mean_loss", "mean_target"])
@pytest.mark.parametrize("feat_loss", ["cwd", "mse"])
def test_two_heterogeneous_teachers(nets, ensemble, feat_loss):
    student, teachers = nets
    s, ts = _run(nets)
    assert [t.channels for t in ts] == [[128, 256, 512], [64, 128, 256]] and [t.reg_max for t in ts] == [16, 1]
    adapters = build_adapters(s.channels, [t.channels for t in ts])
    cfg = DistillCfg(feat=0.5, cls=2.0, box=3.0, feat_loss=feat_loss, ensemble=ensemble)
    out = Distiller(cfg)(s, ts, adapters)
    assert tuple(out) == (*KD_KEYS, "kd")
    for k in KD_KEYS:
        assert (
            out[k].ndim == 0 and out[k].dtype == torch.float32 and torch.isfinite(out[k]) and float(out[k].detach()) > 0
        )
    torch.testing.assert_close(out["kd"], out["kd_feat"] + out["kd_cls"] + out["kd_box"])

    # values against the losses called by hand
    w = [teacher_confidence(t.scores) for t in ts]
    if feat_loss == "cwd":
        feat = (
            sum(
                cwd_loss(ad[level](s.feats[level]), t.feats[level]) for t, ad in zip(ts, adapters) for level in range(3)
            )
            / 6
        )
        torch.testing.assert_close(out["kd_feat"], 0.5 * feat)
    if ensemble == "mean_loss":
        cls = (cls_kd_loss(s.scores, ts[0].scores, 2.0, w[0]) + cls_kd_loss(s.scores, ts[1].scores, 2.0, w[1])) / 2
        box = (dfl_kd_loss(s.boxes, ts[0].boxes, 16, 1.0, w[0]) + ltrb_kd_loss(s.boxes, 16, ts[1].boxes, 1, w[1])) / 2
    else:
        wm = teacher_confidence([t.scores for t in ts])
        cls = cls_kd_loss(s.scores, [t.scores for t in ts], 2.0, wm)
        box = ltrb_kd_loss(s.boxes, 16, [t.boxes for t in ts], [16, 1], wm)  # reg_max differ: decoded mean
    torch.testing.assert_close(out["kd_cls"], 2.0 * cls)
    torch.testing.assert_close(out["kd_box"], 3.0 * box)

    # gradients: student and adapters yes, teachers never
    student.zero_grad()
    out["kd"].backward()
    assert float(student.model[0].conv.weight.grad.abs().sum()) > 0
    assert all(float(c.weight.grad.abs().sum()) > 0 for ad in adapters for c in ad)
    assert all(p.grad is None for t in teachers for p in t.parameters())


@pytest.mark.parametrize("ensemble", ["mean_loss", "mean_target"])
def test_teacher_weights(nets, ensemble):
    """gor.teachers[i].weight: every mean over teachers is the weighted one (shares 3/4, 1/4 here)."""
    s, ts = _run(nets)
    adapters = build_adapters(s.channels, [t.channels for t in ts])
    cfg = DistillCfg(feat=0.5, cls=2.0, box=3.0, ensemble=ensemble)
    out = Distiller(cfg)(s, ts, adapters, teacher_weights=[3.0, 1.0])
    feat = [sum(cwd_loss(ad[lv](s.feats[lv]), t.feats[lv]) for lv in range(3)) / 3 for t, ad in zip(ts, adapters)]
    torch.testing.assert_close(out["kd_feat"], 0.5 * (0.75 * feat[0] + 0.25 * feat[1]))
    if ensemble == "mean_loss":
        w = [teacher_confidence(t.scores) for t in ts]
        cls = 0.75 * cls_kd_loss(s.scores, ts[0].scores, 2.0, w[0]) + 0.25 * cls_kd_loss(s.scores, ts[1].scores, 2.0, w[1])
        box = 0.75 * dfl_kd_loss(s.boxes, ts[0].boxes, 16, 1.0, w[0]) + 0.25 * ltrb_kd_loss(s.boxes, 16, ts[1].boxes, 1, w[1])
    else:
        wm = teacher_confidence([t.scores for t in ts], [0.75, 0.25])
        cls = cls_kd_loss(s.scores, [t.scores for t in ts], 2.0, wm, teacher_weights=[0.75, 0.25])
        box = ltrb_kd_loss(s.boxes, 16, [t.boxes for t in ts], [16, 1], wm, teacher_weights=[0.75, 0.25])
    torch.testing.assert_close(out["kd_cls"], 2.0 * cls)
    torch.testing.assert_close(out["kd_box"], 3.0 * box)
    # equal weights of any scale are the default; the weights change the result
    plain, equal = Distiller(cfg)(s, ts, adapters), Distiller(cfg)(s, ts, adapters, teacher_weights=[2.0, 2.0])
    for k in KD_KEYS:
        torch.testing.assert_close(equal[k], plain[k])
    # (the random-init teachers' class scores are nearly alike: only the feature terms surely differ)
    assert float(out["kd_feat"].detach()) != float(plain["kd_feat"].detach())
    with pytest.raises(ValueError, match="1 teacher weights for 2 teachers"):
        Distiller(cfg)(s, ts, adapters, teacher_weights=[1.0])


@pytest.mark.parametrize("ensemble", ["mean_loss", "mean_target"])
def test_feat_weights(nets, ensemble):
    """feat_weights (gor.teachers[i].feat_weight): the shares of feature KD alone; a teacher at 0 is left out of it
    (its adapters get no gradient) while the head terms keep teacher_weights."""
    s, ts = _run(nets)
    adapters = build_adapters(s.channels, [t.channels for t in ts])
    cfg = DistillCfg(feat=0.5, cls=2.0, box=3.0, ensemble=ensemble)
    out = Distiller(cfg)(s, ts, adapters, teacher_weights=[3.0, 1.0], feat_weights=[1.0, 0.0])
    ref = Distiller(cfg)(s, ts, adapters, teacher_weights=[3.0, 1.0])
    feat0 = sum(cwd_loss(adapters[0][lv](s.feats[lv]), ts[0].feats[lv]) for lv in range(3)) / 3
    torch.testing.assert_close(out["kd_feat"], 0.5 * feat0)
    for k in ("kd_cls", "kd_box"):
        torch.testing.assert_close(out[k], ref[k])
    out["kd"].backward()
    assert all(c.weight.grad is None for c in adapters[1]) and all(c.weight.grad is not None for c in adapters[0])
    with pytest.raises(ValueError, match="one of them positive"):
        Distiller(cfg)(s, ts, adapters, feat_weights=[0.0, 0.0])


def test_mean_target_same_reg_max_uses_mean_bins(nets):
    student, teachers = nets
    s, ts = _run(nets)
    t0 = ts[0]
    t_alt = dataclasses.replace(t0, scores=t0.scores.flip(-1), boxes=t0.boxes.flip(-1))
    cfg = DistillCfg(feat=0.0, ensemble="mean_target", conf_weight=False, box_T=2.0)
    out = Distiller(cfg)(s, [t0, t_alt], None)
    torch.testing.assert_close(out["kd_box"], dfl_kd_loss(s.boxes, [t0.boxes, t_alt.boxes], 16, 2.0))
    torch.testing.assert_close(out["kd_cls"], cls_kd_loss(s.scores, [t0.scores, t_alt.scores], 2.0))
    # with one teacher both ensemble modes agree
    ad = build_adapters(s.channels, [t0.channels])
    a = Distiller(DistillCfg(ensemble="mean_target"))(s, [t0], ad)
    b = Distiller(DistillCfg(ensemble="mean_loss"))(s, [t0], ad)
    for k in KD_KEYS:
        torch.testing.assert_close(a[k], b[k])


def test_gt_weighted_is_mean_target_with_per_anchor_agreement_shares(nets):
    """ensemble: gt_weighted: the head losses are mean_target's with the per-anchor shares of agreement_shares (the
    teachers' fixed shares scaled by their agreement with the labels); feature KD keeps the fixed shares."""
    s, ts = _run(nets)
    adapters = build_adapters(s.channels, [t.channels for t in ts])
    gt = GroundTruth(torch.tensor([0, 1]), torch.tensor([3, 7]), torch.tensor([[4.0, 6.0, 40.0, 50.0], [20, 20, 60, 44]]),
                     (IMGSZ, IMGSZ))
    cfg = DistillCfg(feat=0.5, cls=2.0, box=3.0, ensemble="gt_weighted")
    out = Distiller(cfg)(s, ts, adapters, teacher_weights=[3.0, 1.0], gt=gt)
    mt = Distiller(dataclasses.replace(cfg, ensemble="mean_target"))(s, ts, adapters, teacher_weights=[3.0, 1.0])
    torch.testing.assert_close(out["kd_feat"], mt["kd_feat"])
    w = agreement_shares(ts, gt, [3.0, 1.0])
    assert not torch.allclose(w[0], torch.full_like(w[0], 0.75))  # the agreement moves the shares
    wm = teacher_confidence([t.scores for t in ts], w)
    torch.testing.assert_close(out["kd_cls"], 2.0 * cls_kd_loss(s.scores, [t.scores for t in ts], 2.0, wm,
                                                                teacher_weights=w))
    torch.testing.assert_close(out["kd_box"], 3.0 * ltrb_kd_loss(s.boxes, 16, [t.boxes for t in ts], [16, 1], wm,
                                                                 teacher_weights=w))
    with pytest.raises(ValueError, match="gt_weighted needs the batch's ground truth"):
        Distiller(cfg)(s, ts, adapters)
    one = Distiller(cfg)(s, ts[:1], adapters[:1])  # one teacher: nothing to weigh, no labels needed
    ref = Distiller(dataclasses.replace(cfg, ensemble="mean_loss"))(s, ts[:1], adapters[:1])
    for k in KD_KEYS:
        torch.testing.assert_close(one[k], ref[k])


@pytest.mark.parametrize("feat_loss", ["cwd", "mse"])
def test_zero_when_student_equals_teacher(nets, feat_loss):
    student, _ = nets
    s, _ = _run(nets)
    t = s.detach()
    out = Distiller(DistillCfg(feat_loss=feat_loss))(s, [t, t], build_adapters(s.channels, [t.channels] * 2))
    for k in KD_KEYS:
        assert abs(float(out[k].detach())) < 1e-6, (k, float(out[k].detach()))


def test_weights_zero_keep_keys(nets):
    s, ts = _run(nets)
    adapters = build_adapters(s.channels, [t.channels for t in ts])
    for feat, cls, box in [(0, 1, 1), (1, 0, 0), (0, 0, 0)]:
        out = Distiller(DistillCfg(feat=feat, cls=cls, box=box))(s, ts, adapters if feat else None)
        assert tuple(out) == (*KD_KEYS, "kd")
        for k, wgt in (("kd_feat", feat), ("kd_cls", cls), ("kd_box", box)):
            assert (float(out[k].detach()) == 0.0) == (wgt == 0)
        torch.testing.assert_close(out["kd"], out["kd_feat"] + out["kd_cls"] + out["kd_box"])


def test_conf_weight_toggle(nets):
    s, ts = _run(nets)
    on = Distiller(DistillCfg(feat=0, conf_weight=True))(s, ts[:1], None)
    off = Distiller(DistillCfg(feat=0, conf_weight=False))(s, ts[:1], None)
    torch.testing.assert_close(off["kd_cls"], cls_kd_loss(s.scores, ts[0].scores, 2.0))
    assert float(on["kd_cls"].detach()) != float(off["kd_cls"].detach())


def test_errors(nets):
    from ultralytics.nn.tasks import DetectionModel

    student, teachers = nets
    s, ts = _run(nets)
    t80 = DetectionModel("yolov8n.yaml", nc=80, verbose=False).eval()
    with torch.no_grad():
        h80 = head_outputs(t80(_x()))
        h96 = head_outputs(teachers[0](_x(size=96)))
    adapters = build_adapters(s.channels, [ts[0].channels, h80.channels])
    with pytest.raises(ValueError, match="teacher 1 has 80 classes, student has 10"):
        Distiller()(s, [ts[0], h80], adapters)
    with pytest.raises(ValueError, match="teacher 0 has 189 anchors.*student has 84"):
        Distiller()(s, [h96], adapters[:1])
    with pytest.raises(ValueError, match="one adapter list per teacher"):
        Distiller()(s, ts, adapters[:1])
    with pytest.raises(ValueError, match="adapter \\[0\\]\\[0\\] maps 64->64"):
        Distiller()(s, ts[:1], build_adapters(s.channels, [s.channels]))
    with pytest.raises(ValueError, match="no teacher"):
        Distiller()(s, [], None)
    with pytest.raises(ValueError, match="feat_loss"):
        Distiller(DistillCfg(feat_loss="l2"))
    # a deepcopy of the config object is not required, but the distiller must not mutate it
    cfg = DistillCfg()
    before = copy.deepcopy(cfg)
    Distiller(cfg)(s, ts[:1], adapters[:1])
    assert cfg == before
