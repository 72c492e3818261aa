"""Tests of gor_det.data.synthetic (the offline COCO-like synthetic benchmark) and tools/make_synthetic.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

import gor_det  # noqa: F401  (offline env before ultralytics)
from gor_det.data import synthetic
from gor_det.data.synthetic import CLASSES, PRESETS, STAMP_NAME, SynthSpec, is_complete, make_synthetic, render_image

REPO = Path(__file__).resolve().parents[1]
NC = len(CLASSES)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("tiny") / "ds", "tiny", seed=0)


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != STAMP_NAME and p.suffix != ".cache":
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _labels(root: Path, split: str) -> dict[int, np.ndarray]:
    out = {}
    for p in sorted((root / "labels" / split).glob("*.txt")):
        out[int(p.stem)] = np.loadtxt(p, ndmin=2).reshape(-1, 5)
    return out


def test_presets_and_layout(tiny):
    assert {"tiny", "demo", "bench"} <= set(PRESETS) and NC >= 10
    root = tiny.parent
    spec = PRESETS["tiny"]
    data = yaml.safe_load(tiny.read_text())
    assert data["path"] == str(root) and Path(data["path"]).is_absolute()
    assert data["train"] == "images/train" and data["val"] == "images/val"
    assert data["names"] == dict(enumerate(CLASSES)) and data["nc"] == NC
    assert data["coco_json"] == "annotations/instances_val.json" and (root / data["coco_json"]).is_file()
    stems = {}
    for split, n in (("train", spec.n_train), ("val", spec.n_val)):
        imgs = sorted((root / "images" / split).glob("*.jpg"))
        lbls = sorted((root / "labels" / split).glob("*.txt"))
        assert len(imgs) == len(lbls) == n
        assert [p.stem for p in imgs] == [p.stem for p in lbls]
        assert all(len(p.stem) == 12 and p.stem.isdigit() and int(p.stem) > 0 for p in imgs)
        stems[split] = {p.stem for p in imgs}
    assert not stems["train"] & stems["val"]


def test_determinism_and_seed(tiny, tmp_path):
    again = make_synthetic(tmp_path / "again", "tiny", seed=0)
    a, b = _files(tiny.parent), _files(again.parent)
    a.pop("data.yaml"), b.pop("data.yaml")  # holds the absolute root
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)  # labels, json and images byte-identical
    other = make_synthetic(tmp_path / "seed1", "tiny", seed=1)
    assert (other.parent / "labels/train/000000000001.txt").read_bytes() != a["labels/train/000000000001.txt"]


def test_images_independent_of_generation_order(tiny, tmp_path):
    # fewer train images: train image k is still drawn from its own sub-seed
    small = make_synthetic(tmp_path / "small", "tiny", seed=0, n_train=5, n_val=1)
    for k in range(1, 6):
        name = f"{k:012d}"
        assert (small.parent / f"labels/train/{name}.txt").read_bytes() == (
            tiny.parent / f"labels/train/{name}.txt"
        ).read_bytes()
        assert (small.parent / f"images/train/{name}.jpg").read_bytes() == (
            tiny.parent / f"images/train/{name}.jpg"
        ).read_bytes()


def test_labels_valid_and_balanced(tiny):
    root = tiny.parent
    for split in ("train", "val"):
        labels = _labels(root, split)
        allc = np.concatenate(list(labels.values()))
        assert all(1 <= len(v) <= PRESETS["tiny"].max_objects for v in labels.values())
        cls, xywh = allc[:, 0], allc[:, 1:]
        assert np.all(cls == cls.round()) and cls.min() >= 0 and cls.max() < NC
        assert np.all((xywh >= 0) & (xywh <= 1)) and np.all(xywh[:, 2:] > 0)
        assert np.all(xywh[:, :2] - xywh[:, 2:] / 2 >= -1e-6) and np.all(xywh[:, :2] + xywh[:, 2:] / 2 <= 1 + 1e-6)
        assert set(cls.astype(int)) == set(range(NC)), f"every class must appear in tiny/{split}"
        # several sizes: COCO-small objects and large ones
        side = xywh[:, 2:].max(1) * PRESETS["tiny"].imgsz
        assert side.min() < 16 and side.max() > 40


def test_yolo_and_coco_agree(tiny):
    root = tiny.parent
    s = PRESETS["tiny"].imgsz
    for split in ("train", "val"):
        coco = json.loads((root / f"annotations/instances_{split}.json").read_text())
        assert [c["id"] for c in coco["categories"]] == list(range(1, NC + 1))
        assert [c["name"] for c in coco["categories"]] == list(CLASSES)
        images = {im["id"]: im for im in coco["images"]}
        labels = _labels(root, split)
        assert set(images) == set(labels)
        for im in images.values():
            assert im["file_name"] == f"{im['id']:012d}.jpg" and im["width"] == im["height"] == s
            assert (root / "images" / split / im["file_name"]).is_file()
        by_img: dict[int, list] = {k: [] for k in images}
        for a in coco["annotations"]:
            assert a["iscrowd"] == 0 and a["area"] > 0 and 0 < a["area"] <= a["bbox"][2] * a["bbox"][3]
            by_img[a["image_id"]].append(a)
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        for iid, anns in by_img.items():
            lab = labels[iid]
            assert len(lab) == len(anns)
            for row, a in zip(lab, anns):
                assert int(row[0]) + 1 == a["category_id"]
                cx, cy, w, h = row[1:] * s
                np.testing.assert_allclose([cx - w / 2, cy - h / 2, w, h], a["bbox"], atol=1e-3)


def test_pycocotools_self_eval_is_perfect(tiny, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann = tiny.parent / yaml.safe_load(tiny.read_text())["coco_json"]
    gt = COCO(str(ann))
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt.dataset["annotations"]
    ]
    pred = tmp_path / "predictions.json"
    pred.write_text(json.dumps(dets))
    ev = COCOeval(gt, gt.loadRes(str(pred)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)


def test_ultralytics_accepts_offline(tiny, monkeypatch):
    attempts = []

    def no_net(*a, **k):
        attempts.append(a)
        raise OSError("network disabled in test")

    monkeypatch.setattr(socket.socket, "connect", no_net)
    monkeypatch.setattr(socket, "getaddrinfo", no_net)
    monkeypatch.setattr(socket, "create_connection", no_net)
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(tiny))
    assert attempts == []
    assert data["nc"] == NC and data["names"] == dict(enumerate(CLASSES))
    assert Path(data["train"]) == tiny.parent / "images/train" and Path(data["val"]) == tiny.parent / "images/val"


def test_idempotent_and_interrupted(tmp_path):
    root = tmp_path / "ds"
    y = make_synthetic(root, "tiny", seed=3, n_train=4, n_val=2)
    stamp = json.loads((root / STAMP_NAME).read_text())
    assert stamp["complete"] and stamp["preset"] == "tiny" and stamp["seed"] == 3 and stamp["spec"]["n_train"] == 4
    assert is_complete(root, "tiny", 3, n_train=4, n_val=2) and not is_complete(root, "tiny", 4, n_train=4, n_val=2)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert make_synthetic(root, "tiny", seed=3, n_train=4, n_val=2) == y
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes  # nothing rewritten
    # an interrupted run (stamp not complete) or a missing file is not mistaken for complete
    (root / "labels/train/000000000002.txt").unlink()
    assert not is_complete(root, "tiny", 3, n_train=4, n_val=2)
    make_synthetic(root, "tiny", seed=3, n_train=4, n_val=2)
    assert (root / "labels/train/000000000002.txt").is_file()
    (root / STAMP_NAME).write_text(json.dumps({**stamp, "complete": False}))
    assert not is_complete(root, "tiny", 3, n_train=4, n_val=2)
    # other parameters regenerate in place (and drop Ultralytics' stale label caches)
    (root / "labels/train.cache").write_bytes(b"stale")
    make_synthetic(root, "tiny", seed=3, n_train=3, n_val=2)
    assert len(list((root / "images/train").glob("*.jpg"))) == 3 and not (root / "labels/train.cache").exists()
    assert is_complete(root, "tiny", 3, n_train=3, n_val=2)


def test_generation_waits_for_another_process(tmp_path, monkeypatch):
    """Two runs started together on one root: the second waits on the lock, then finds the dataset complete and
    rewrites nothing (before the lock, it deleted images the first one was training on)."""
    root = tmp_path / "ds"
    root.mkdir()
    held = synthetic._exclusive(root / synthetic.LOCK_NAME)  # the first process, generating
    held.__enter__()
    got = {}
    waiter = threading.Thread(target=lambda: got.update(y=make_synthetic(root, "tiny", seed=1, n_train=3, n_val=2)))
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive()  # blocked on the lock, not generating
    synthetic._generate(root, "tiny", 1, synthetic._resolve_spec("tiny", {"n_train": 3, "n_val": 2}))
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    monkeypatch.setattr(synthetic, "_generate", lambda *a: pytest.fail("generated twice"))
    held.__exit__(None, None, None)
    waiter.join(30)
    assert not waiter.is_alive() and got["y"] == root / "data.yaml"
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        make_synthetic(tmp_path / "x", "huge")
    with pytest.raises(TypeError, match="unknown override"):
        make_synthetic(tmp_path / "x", "tiny", n_imgs=3)
    with pytest.raises(ValueError):
        make_synthetic(tmp_path / "x", "tiny", n_val=0)
    foreign = tmp_path / "foreign"
    (foreign / "images/train").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        make_synthetic(foreign, "tiny")
    assert not (foreign / "data.yaml").exists()


def test_objects_visible_and_tight():
    spec = SynthSpec(imgsz=96, max_objects=12)
    for i in range(6):
        img, objs = render_image(spec, np.random.default_rng([9, i]), first_cls=i)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert objs and objs[0].cls == i
        for o in objs:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            assert o.visible >= spec.min_visible and 0 < o.area <= (x1 - x0) * (y1 - y0)


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "tools/make_synthetic.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_cli(tmp_path):
    r = _cli("--out", str(tmp_path / "d"), "--preset", "tiny", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == (tmp_path / "d" / "data.yaml").resolve()
    r = _cli("--out", str(tmp_path / "d"), "--preset", "nope")
    assert r.returncode == 2 and "unknown preset" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    (tmp_path / "f").write_text("")
    r = _cli("--out", str(tmp_path / "new" / "nested" / "d"))  # parents are created (a fresh clone has no datasets/)
    assert r.returncode == 0 and (tmp_path / "new" / "nested" / "d" / "data.yaml").exists(), r.stderr
    for out in (tmp_path / "f" / "d", tmp_path / "f"):
        r = _cli("--out", str(out))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
