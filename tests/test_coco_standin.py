"""gor_det.data.coco_standin: COCO's layout, names and category ids, as Ultralytics and pycocotools read real COCO."""

import json

from gor_det.data.coco_standin import COCO_NAMES, make_coco_standin
from gor_det.eval.coco import class_to_category_ids, coco80_to_coco91, load_coco


def test_layout_names_and_category_ids(tmp_path):
    from ultralytics.utils import YAML, checks

    root = make_coco_standin(tmp_path, n_train=3, n_val=2, imgsz=64)
    assert root == tmp_path / "coco"
    for split, n in (("train2017", 3), ("val2017", 2)):
        lines = (root / f"{split}.txt").read_text().splitlines()
        assert len(lines) == n and all(ln.startswith(f"./images/{split}/0000") for ln in lines)
        assert all((root / ln).is_file() for ln in lines)
        assert len(list((root / "labels" / split).glob("*.txt"))) == n
    builtin = YAML.load(checks.check_yaml("coco.yaml"))
    assert [builtin["names"][i] for i in range(80)] == list(COCO_NAMES)  # Ultralytics' coco.yaml class order
    ann = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    assert [c["id"] for c in ann["categories"]] == coco80_to_coco91()
    assert {a["category_id"] for a in ann["annotations"]} <= set(coco80_to_coco91()[:12])
    assert [im["id"] for im in ann["images"]] == [4, 5] and ann["images"][0]["file_name"] == "000000000004.jpg"
    # gor_det's evaluation maps the 80 model classes to COCO's 91 ids, as for real COCO
    assert class_to_category_ids(load_coco(root / "annotations" / "instances_val2017.json"),
                                 {i: n for i, n in enumerate(COCO_NAMES)}) == coco80_to_coco91()
