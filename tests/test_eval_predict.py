"""gor_det.eval.predict: letterbox/NMS/scaling equal to Ultralytics val, and an end-to-end mAP 1.0 run."""

import json

import cv2
import numpy as np
import pytest
import torch

import gor_det  # noqa: F401  (offline setup before anything imports ultralytics)
from gor_det.eval.predict import evaluate_backend, image_files, letterbox, postprocess, predict_dataset, scale_boxes

SHAPES = [(48, 64), (100, 37), (96, 96), (200, 150), (61, 203)]  # (h, w): up-/down-scale, exact, odd ratios


def test_letterbox_matches_ultralytics_val_dataset(tmp_path):
    from ultralytics.cfg import get_cfg
    from ultralytics.data import YOLODataset

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SHAPES):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        (tmp_path / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ds = YOLODataset(img_path=str(tmp_path / "images"), imgsz=96, augment=False, hyp=get_cfg(), rect=False,
                     batch_size=1, stride=32, pad=0.5, data={"names": {0: "a"}, "channels": 3})  # fmt: skip
    assert len(ds) == len(SHAPES)
    for i in range(len(ds)):
        s = ds[i]
        img, ratio, pad = letterbox(cv2.imread(s["im_file"]), 96)
        rgb_chw = np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))
        assert np.array_equal(rgb_chw, s["img"].numpy()), s["im_file"]
        assert (tuple(ratio), tuple(pad)) == (tuple(s["ratio_pad"][0]), tuple(s["ratio_pad"][1]))


def test_letterbox_scale_boxes_round_trip():
    from ultralytics.utils.ops import scale_boxes as ul_scale_boxes

    rng = np.random.default_rng(1)
    # Exact case: 1280x960 -> 640 (ratio 0.5, pad 80 top/bottom); integer boxes survive bit-exactly.
    img, ratio, pad = letterbox(np.zeros((960, 1280, 3), np.uint8), 640)
    assert img.shape == (640, 640, 3) and ratio == (0.5, 0.5) and pad == (0, 80)
    assert (img[:80] == 114).all() and (img[80:560] == 0).all() and (img[560:] == 114).all()
    b0 = np.array([[0, 0, 1280, 960], [100, 200, 300, 500]], np.float32)
    fwd = b0 * 0.5 + np.array([0, 80, 0, 80], np.float32)
    assert np.array_equal(scale_boxes(fwd, ratio, pad, (960, 1280)), b0)
    # Generic shapes: forward map then back within float32 precision, and equal to Ultralytics' scale_boxes.
    for h, w in SHAPES:
        _, (gh, gw), (pw, ph) = letterbox(np.zeros((h, w, 3), np.uint8), 96)
        xy = rng.uniform(0, 1, (20, 4)) * [w, h, w, h]
        b = np.concatenate([np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])], 1).astype(np.float32)
        fwd = (b * [gw, gh, gw, gh] + [pw, ph, pw, ph]).astype(np.float32)
        back = scale_boxes(fwd, (gh, gw), (pw, ph), (h, w))
        np.testing.assert_allclose(back, b, atol=1e-3)
        ref = ul_scale_boxes((96, 96), torch.from_numpy(fwd.copy()), (h, w), ratio_pad=((gh, gw), (pw, ph)))
        assert torch.equal(scale_boxes(torch.from_numpy(fwd), (gh, gw), (pw, ph), (h, w)), ref)


def test_postprocess_synthetic():
    # 4 anchors, 2 classes: a0/a1 overlap (IoU 0.81) in class 0 -> a1 suppressed; a2 overlaps a0 but is class 1
    # -> kept (class-aware); a3 is below conf.
    raw = np.zeros((1, 6, 4), np.float32)
    raw[0, :4] = np.array([[50, 50, 20, 20], [51, 50, 20, 20], [50, 50, 20, 20], [10, 10, 4, 4]], np.float32).T
    raw[0, 4:] = np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.0005, 0.0]], np.float32).T
    (d,) = postprocess(raw)
    expect = torch.tensor([[40, 40, 60, 60, 0.9, 0], [40, 40, 60, 60, 0.7, 1]], dtype=torch.float32)
    assert torch.allclose(d, expect)
    (d,) = postprocess(raw, agnostic=True)  # class-agnostic: a2 is suppressed by a0
    assert d.shape[0] == 1
    # multi-label (Ultralytics val): the lone box a3 with two classes above conf gives two detections
    raw2 = raw.copy()
    raw2[0, 4:, 3] = [0.5, 0.4]
    assert postprocess(raw2)[0].shape[0] == 4
    assert postprocess(raw2, multi_label=False)[0].shape[0] == 3


@pytest.mark.parametrize("nc,kw", [(3, {}), (3, {"multi_label": False}), (3, {"agnostic": True}), (1, {})])
def test_postprocess_matches_ultralytics_nms(nc, kw):
    from ultralytics.utils.nms import non_max_suppression

    g = torch.Generator().manual_seed(nc + len(kw))
    B, A = 2, 600
    ctr = torch.rand(B, 2, 1, generator=g) * 200 + 60  # boxes clustered so NMS has work to do
    xy = ctr + torch.randn(B, 2, A, generator=g) * 25
    wh = torch.rand(B, 2, A, generator=g) * 60 + 5
    scores = torch.rand(B, nc, A, generator=g) ** 3
    raw = torch.cat([xy, wh, scores], 1)
    ours = postprocess(raw.numpy(), conf=0.001, iou=0.7, max_det=300, **kw)
    ref = non_max_suppression(raw.clone(), 0.001, 0.7, multi_label=kw.get("multi_label", True),
                              agnostic=kw.get("agnostic", False), max_det=300)  # fmt: skip
    for a, b in zip(ours, ref):
        assert a.shape[0] > 20 and torch.equal(a, b)


def _write_set(root):
    """3 images (one non-numeric name) with GT boxes; returns (image dir, annotation dict, per-file GT)."""
    imgs = root / "images" / "val"
    imgs.mkdir(parents=True)
    spec = {  # file: (h, w, image_id, [(class, x, y, w, h), ...])
        "7.jpg": (120, 160, 7, [(0, 10, 20, 40, 30), (1, 100, 50, 30, 60)]),
        "12.png": (90, 60, 12, [(2, 5, 5, 50, 70)]),
        "cat.jpg": (64, 200, 3, [(1, 0, 0, 64, 64), (0, 150.5, 10.25, 40, 30)]),
    }
    rng = np.random.default_rng(2)
    images, anns = [], []
    for f, (h, w, iid, boxes) in spec.items():
        cv2.imwrite(str(imgs / f), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        images.append({"id": iid, "file_name": f, "height": h, "width": w})
        for c, *b in boxes:
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": c + 1, "bbox": b, "area": b[2] * b[3],
                         "iscrowd": 0})  # fmt: skip
    ann = {"images": images, "annotations": anns,
           "categories": [{"id": i + 1, "name": n} for i, n in enumerate(["person", "car", "dog"])]}  # fmt: skip
    return imgs, ann, spec


class GTBackend:
    """Fake backend: returns each image's GT (xywh in input pixels, one-hot scores) in Ultralytics' raw layout."""

    def __init__(self, files, spec, imgsz, nc=3, A=50):
        self.queue = [spec[f.name] for f in files]
        self.imgsz, self.nc, self.A = imgsz, nc, A
        self.calls = []

    def __call__(self, x):
        assert x.dtype == np.float32 and x.shape[1:] == (3, self.imgsz, self.imgsz) and 0 <= x.min() <= x.max() <= 1
        self.calls.append(x.shape[0])
        out = np.zeros((x.shape[0], 4 + self.nc, self.A), np.float32)
        for k in range(x.shape[0]):
            h, w, _, boxes = self.queue.pop(0)
            _, (gh, gw), (pw, ph) = letterbox(np.zeros((h, w, 3), np.uint8), self.imgsz)
            for a, (c, bx, by, bw, bh) in enumerate(boxes):
                out[k, :4, a] = [(bx + bw / 2) * gw + pw, (by + bh / 2) * gh + ph, bw * gw, bh * gh]
                out[k, 4 + c, a] = 0.9 - 0.1 * a
        return out


def test_predict_dataset_gt_backend_map_1(tmp_path):
    imgs, ann, spec = _write_set(tmp_path)
    files = sorted(imgs.iterdir())
    be = GTBackend(files, spec, 64)
    preds = predict_dataset(be, files, 64, batch=2, ann_json=ann)
    assert be.calls == [2, 1] and len(preds) == 5
    gt = {(a["image_id"], a["category_id"]): a["bbox"] for a in ann["annotations"]}
    for p in preds:
        assert set(p) == {"image_id", "category_id", "bbox", "score"}
        np.testing.assert_allclose(p["bbox"], gt[(p["image_id"], p["category_id"])], atol=0.01)
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\nval: images/val\nnames: [person, car, dog]\n")
    out = tmp_path / "eval"
    m = evaluate_backend(GTBackend(files, spec, 64), tmp_path / "data.yaml", ann, 64, out)
    assert m["mAP50-95"] == pytest.approx(1.0, abs=1e-12) and m["n_images"] == 3
    assert json.loads((out / "predictions.json").read_text()) == preds
    assert json.loads((out / "metrics.json").read_text())["mAP50"] == pytest.approx(1.0)
    # directory input, names given explicitly (matched by name)
    m = evaluate_backend(GTBackend(files, spec, 64), imgs, ann, 64, out, names={0: "person", 1: "car", 2: "dog"})
    assert m["mAP50-95"] == pytest.approx(1.0, abs=1e-12)


def test_image_files_sources(tmp_path):
    imgs, _, _ = _write_set(tmp_path)
    (imgs / "notes.txt").write_text("not an image")
    want = sorted(imgs / f for f in ("7.jpg", "12.png", "cat.jpg"))
    assert image_files(imgs) == want
    (tmp_path / "val.txt").write_text("./images/val/cat.jpg\n./images/val/7.jpg\n")
    assert image_files(tmp_path / "val.txt") == [imgs / "7.jpg", imgs / "cat.jpg"]
    (tmp_path / "d.yaml").write_text("val: val.txt\n")  # no path: the yaml's folder
    assert image_files(tmp_path / "d.yaml") == [imgs / "7.jpg", imgs / "cat.jpg"]
    with pytest.raises(FileNotFoundError):
        image_files(tmp_path / "missing")
