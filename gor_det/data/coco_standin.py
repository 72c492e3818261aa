"""A small COCO-shaped stand-in: real COCO's layout, file names, class list and category ids, with synthetic images.

It lets the COCO path of docs/getting-started.md (section 4) run as written, offline and in seconds: Ultralytics'
built-in ``coco.yaml`` (``path: coco``, ``train: train2017.txt``, ``val: val2017.txt``, 80 names) resolves it under
the ``datasets_dir`` of Ultralytics' settings exactly as it resolves a real COCO copy there. Layout under
``<datasets_dir>/coco``:

* ``images/{train2017,val2017}/<12-digit id>.jpg`` and ``labels/{train2017,val2017}/<id>.txt`` (Ultralytics' COCO
  layout; class indices 0..79 of ``coco.yaml``);
* ``train2017.txt``, ``val2017.txt``: one ``./images/<split>/<file>`` per line, as Ultralytics' COCO download has them;
* ``annotations/instances_val2017.json``: COCO's 91-id ``category_id`` of every class (``coco80_to_coco91``), COCO's
  80 category names, ``image_id = int(file stem)``.

The pictures are :mod:`gor_det.data.synthetic` scenes whose 12 shape classes are labelled as the first 12 COCO classes
(``person`` ... ``stop sign``); the other 68 classes have no instance. Only the data layout stands in for COCO, not
its content: mAPs on it say nothing about COCO.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from gor_det.data.synthetic import CLASSES, SynthSpec, _coco_dict, _split_ids, _stem, _yolo_line, render_image
from gor_det.eval.coco import coco80_to_coco91

#: COCO 2017's 80 detection category names, in the order of Ultralytics' ``coco.yaml`` (class index 0..79).
COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

SPLITS = {"train": "train2017", "val": "val2017"}


def make_coco_standin(datasets_dir: str | os.PathLike, n_train: int = 16, n_val: int = 8, imgsz: int = 128,
                      seed: int = 0) -> Path:
    """Write the stand-in to ``<datasets_dir>/coco`` (replacing one there); return that ``coco`` dir.

    ``n_train`` / ``n_val`` images of ``imgsz`` px (square), drawn as :func:`gor_det.data.synthetic.make_synthetic`
    draws them for the same seed and size."""
    spec = SynthSpec(n_train=n_train, n_val=n_val, imgsz=imgsz).validate()
    root = Path(datasets_dir).expanduser().resolve() / "coco"
    if root.exists():
        shutil.rmtree(root)
    (root / "annotations").mkdir(parents=True)
    c91 = coco80_to_coco91()
    for split, ids in _split_ids(spec).items():
        folder = SPLITS[split]
        img_dir, lbl_dir = root / "images" / folder, root / "labels" / folder
        img_dir.mkdir(parents=True)
        lbl_dir.mkdir(parents=True)
        records = []
        for j, image_id in enumerate(ids):
            rng = np.random.default_rng([int(seed), 1 if split == "train" else 2, image_id, spec.imgsz])
            img, objs = render_image(spec, rng, first_cls=j % len(CLASSES))
            if not cv2.imwrite(str(img_dir / f"{_stem(image_id)}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90]):
                raise OSError(f"cannot write {img_dir / _stem(image_id)}.jpg")
            (lbl_dir / f"{_stem(image_id)}.txt").write_text("".join(_yolo_line(o, spec.imgsz) + "\n" for o in objs))
            records.append((image_id, objs))
        (root / f"{folder}.txt").write_text("".join(f"./images/{folder}/{_stem(i)}.jpg\n" for i in ids))
        if split == "val":
            coco = _coco_dict(split, spec, records)
            for a in coco["annotations"]:
                a["category_id"] = c91[a["category_id"] - 1]  # shape class k is COCO class k: its 91-id
            coco["categories"] = [{"id": c91[i], "name": n, "supercategory": ""} for i, n in enumerate(COCO_NAMES)]
            coco["info"] = {"description": "gor_det COCO-shaped stand-in (synthetic images, COCO layout and ids)"}
            (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco, separators=(",", ":")))
    return root
