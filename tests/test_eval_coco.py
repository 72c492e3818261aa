"""gor_det.eval.coco: pycocotools mAP on a hand-computable toy set, category maps, annotation errors."""

import json

import pytest

import gor_det  # noqa: F401  (offline setup before anything imports ultralytics)
from gor_det.eval.coco import METRIC_NAMES, class_to_category_ids, coco80_to_coco91, coco_metrics, load_coco

# Two 100x100 images, three 10x10 GT boxes (area 100 < 32^2: all "small"), one per category.
GT = {
    "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100},
               {"id": 2, "file_name": "2.jpg", "width": 100, "height": 100}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [20, 30, 10, 10], "area": 100, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
}  # fmt: skip


def perfect(score=0.9):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
            for a in GT["annotations"]]  # fmt: skip


def test_perfect_and_empty(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(GT))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(perfect()))
    m = coco_metrics(ann, pred)  # paths
    assert set(METRIC_NAMES) <= set(m) and "Average Precision" in m["summary"]
    for k in ("mAP50-95", "mAP50", "mAP75", "mAP_small", "AR1", "AR10", "AR100", "AR_small"):
        assert m[k] == pytest.approx(1.0, abs=1e-12), k
    assert m["mAP_medium"] == -1 and m["mAP_large"] == -1  # pycocotools: no GT in that area range
    m0 = coco_metrics(GT, [])
    assert all(m0[k] == 0.0 for k in METRIC_NAMES)


def test_shifted_box_known_iou():
    # Class 3's box shifted 2 px in x: intersection 8*10 = 80, union 2*100 - 80 = 120, IoU = 2/3 = 0.667.
    # It matches at IoU thresholds 0.50, 0.55, 0.60, 0.65 (4 of 10): AP_c = (1+1+1+1+0*6)/10 = 0.4
    # (one GT, one TP: precision 1 at all 101 recall points where it matches, 0 where it does not).
    preds = perfect()
    preds[2]["bbox"] = [22, 30, 10, 10]
    m = coco_metrics(GT, preds)
    assert m["mAP50-95"] == pytest.approx((1 + 1 + 0.4) / 3, abs=1e-12)  # 0.8
    assert m["mAP50"] == pytest.approx(1.0, abs=1e-12)
    assert m["mAP75"] == pytest.approx(2 / 3, abs=1e-12)  # class c misses at 0.75
    assert m["mAP_small"] == pytest.approx(0.8, abs=1e-12)
    assert m["AR100"] == pytest.approx(0.8, abs=1e-12)  # recall 1 at 4/10 thresholds for c


def test_false_positive_order():
    # An FP of class a ranked BELOW the TP: precision envelope stays 1 at every recall -> AP unchanged.
    fp = {"image_id": 1, "category_id": 1, "bbox": [70, 10, 10, 10]}
    m = coco_metrics(GT, perfect(0.9) + [{**fp, "score": 0.5}])
    assert m["mAP50-95"] == pytest.approx(1.0, abs=1e-12)
    # Ranked ABOVE the TP: ranks (FP, TP) -> recall (0, 1), precision (0, 0.5); the interpolated precision is 0.5 at
    # all 101 recall points, so AP_a = 0.5 at every IoU threshold and mAP = (0.5 + 1 + 1) / 3.
    m = coco_metrics(GT, perfect(0.9) + [{**fp, "score": 0.95}])
    assert m["mAP50-95"] == pytest.approx(2.5 / 3, abs=1e-12)
    assert m["mAP50"] == pytest.approx(2.5 / 3, abs=1e-12)


def test_img_ids_subset():
    preds = [p for p in perfect() if p["image_id"] == 1]
    assert coco_metrics(GT, preds)["mAP50-95"] == pytest.approx(2 / 3, abs=1e-12)  # class c missed on image 2
    assert coco_metrics(GT, preds, img_ids=[1])["mAP50-95"] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="img_ids"):
        coco_metrics(GT, preds, img_ids=[99])
    with pytest.raises(ValueError, match="image_id"):
        coco_metrics(GT, [{**preds[0], "image_id": 42}])


def test_annotation_defaults_and_zero_ids():
    # No iscrowd/area and an annotation id 0 (COCOeval would treat a match with GT id 0 as unmatched).
    d = json.loads(json.dumps(GT))
    for a in d["annotations"]:
        a.pop("iscrowd"), a.pop("area")
        a["id"] -= 1
    assert coco_metrics(d, perfect())["mAP50-95"] == pytest.approx(1.0, abs=1e-12)


def test_bad_annotation_files(tmp_path):
    missing = tmp_path / "nope" / "instances_val.json"
    with pytest.raises(ValueError, match="not found") as e:
        load_coco(missing)
    assert str(missing) in str(e.value)
    bad = tmp_path / "corrupt.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="not valid JSON") as e:
        coco_metrics(bad, perfect())
    assert str(bad) in str(e.value)
    noann = tmp_path / "noann.json"
    noann.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match="annotations") as e:
        load_coco(noann)
    assert str(noann) in str(e.value)


def test_category_maps():
    from ultralytics.data.converter import coco80_to_coco91_class

    c91 = coco80_to_coco91()
    assert c91 == list(coco80_to_coco91_class()) and len(c91) == 80
    names = [f"n{i}" for i in range(80)]
    coco_like = {"images": [], "annotations": [],
                 "categories": [{"id": c, "name": n} for n, c in zip(names, c91)]}  # fmt: skip
    assert class_to_category_ids(coco_like, dict(enumerate(names))) == c91
    by_name = {"images": [], "annotations": [], "categories": [{"id": 5, "name": "dog"}, {"id": 9, "name": "Cat"}]}
    assert class_to_category_ids(by_name, ["cat", "dog"]) == [9, 5]
    assert class_to_category_ids(by_name, ["x", "y", "z"]) == [1, 2, 3]  # fallback: index + 1


def test_eval_does_not_import_ultralytics():
    import subprocess
    import sys

    code = "import sys, gor_det.eval; assert 'ultralytics' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
