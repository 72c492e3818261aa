"""COCO box mAP by the official protocol (pycocotools ``COCOeval``, ``iouType="bbox"``).

Every backend (PyTorch FP, fake-quant QAT, ONNX Runtime, NCNN, TensorRT) writes a COCO results list through
``gor_det.eval.predict`` and is scored here, so the numbers are comparable. Ultralytics 8.4 itself scores
``predictions.json`` with faster-coco-eval (not installed here) and otherwise reports its own mAP, which can differ
slightly from pycocotools; the numbers of this module are the pycocotools ones.

No Ultralytics import (``gor_det.engine`` calls this module).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

#: The 12 numbers of ``COCOeval.summarize()``, in pycocotools' order. ``-1`` means "no ground truth in that range"
#: (pycocotools' convention, e.g. ``mAP_large`` on a set without large objects).
METRIC_NAMES = (
    "mAP50-95",
    "mAP50",
    "mAP75",
    "mAP_small",
    "mAP_medium",
    "mAP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)

_COCO80_TO_91 = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip


def coco80_to_coco91() -> list[int]:
    """The standard map from the 80 contiguous COCO class indices (0..79) to the 91-id COCO ``category_id`` (1..90)."""
    return list(_COCO80_TO_91)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None


def _check_dataset(d: Any, src: str) -> dict:
    """Validate a COCO annotation dict and return a normalised copy (``iscrowd``/``area`` filled, ann ids >= 1)."""
    if not isinstance(d, dict):
        raise ValueError(f"COCO annotation {src} must hold a JSON object, got {type(d).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(d.get(k), list)]
    if missing:
        raise ValueError(f"COCO annotation {src} has no list '{missing[0]}' (needs images, annotations, categories)")
    d = copy.deepcopy(d)
    try:
        img_ids = {int(im["id"]) for im in d["images"]}
        for a in d["annotations"]:
            x, y, w, h = (float(v) for v in a["bbox"])
            a.setdefault("iscrowd", 0)
            a.setdefault("area", w * h)  # pycocotools' area ranges use this field
            if int(a["image_id"]) not in img_ids:
                raise ValueError(f"annotation {a.get('id')} refers to unknown image_id {a['image_id']}")
        for c in d["categories"]:
            int(c["id"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"COCO annotation {src} is malformed: {type(e).__name__}: {e}") from None
    ids = [a.get("id") for a in d["annotations"]]
    # COCOeval marks a match by storing the GT id, so an id of 0 would count as "unmatched"; ids must be unique too.
    if any(not isinstance(i, int) or i < 1 for i in ids) or len(set(ids)) != len(ids):
        for k, a in enumerate(d["annotations"], 1):
            a["id"] = k
    d.setdefault("info", {})
    d.setdefault("licenses", [])
    return d


def load_coco(ann: str | Path | dict | Any):
    """Load a COCO annotation json (path, dict, or an existing ``pycocotools.coco.COCO``) into a ``COCO`` object.

    Missing ``iscrowd`` defaults to 0 and missing ``area`` to ``w*h`` of the bbox; annotation ids that are missing,
    < 1 or duplicated are renumbered 1..N (ids are internal to the evaluation).

    Raises:
        ValueError: the file is missing, not JSON, or not a COCO detection annotation (the message names the file).
    """
    from pycocotools.coco import COCO

    if isinstance(ann, COCO):
        return ann
    if isinstance(ann, dict):
        d, src = _check_dataset(ann, "<dict>"), "<dict>"
    else:
        p = Path(ann)
        d = _check_dataset(_read_json(p, "COCO annotation file"), str(p))
        src = str(p)
    coco = COCO()
    coco.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    coco.src = src
    return coco


def _names_list(names) -> list[str]:
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names]


def class_to_category_ids(ann, names) -> list[int]:
    """Map model class index -> ``category_id`` of the annotation json.

    * Real COCO (80 names, equal to the json's category names taken in 91-id order): ``coco80_to_coco91()``.
    * Otherwise, if every name is a category name of the json (case-insensitive): the matching category id.
    * Otherwise ``index + 1`` (Ultralytics' ``class_map`` for non-COCO sets; the synthetic set is written this way).

    Args:
        ann: annotation json path / dict / ``COCO``.
        names: class names as a list or Ultralytics' ``{index: name}`` dict.
    """
    coco = load_coco(ann)
    names = _names_list(names)
    by_id = {int(c["id"]): str(c.get("name", "")).strip().lower() for c in coco.dataset["categories"]}
    low = [n.strip().lower() for n in names]
    c91 = coco80_to_coco91()
    if len(low) == 80 and all(by_id.get(c91[i]) == low[i] for i in range(80)):
        return c91
    by_name: dict[str, int] = {}
    for cid, n in sorted(by_id.items()):
        by_name.setdefault(n, cid)
    if low and len(set(low)) == len(low) and all(n in by_name for n in low):
        return [by_name[n] for n in low]
    return list(range(1, len(names) + 1))


def _load_predictions(predictions) -> list[dict]:
    if isinstance(predictions, (str, Path)):
        p = Path(predictions)
        preds = _read_json(p, "predictions file")
        if not isinstance(preds, list):
            raise ValueError(f"predictions file {p} must hold a JSON list of COCO result dicts")
        return preds
    return list(predictions)


def coco_metrics(ann_json, predictions, img_ids=None) -> dict:
    """Score COCO box predictions with pycocotools ``COCOeval(iouType="bbox")``.

    Args:
        ann_json: ground-truth COCO json (path, dict or ``COCO``).
        predictions: COCO results (path to a json list, or the list) of
            ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h] (original pixels), "score": float}``.
        img_ids: evaluate only these image ids (e.g. the images that were predicted, including those with no
            detection); default: all images of the annotation file.

    Returns:
        ``{name: float for name in METRIC_NAMES}`` plus ``"summary"`` (pycocotools' printed table). With no
        predictions at all every number is 0.0 (pycocotools cannot load an empty result list).
    """
    from pycocotools.cocoeval import COCOeval

    gt = load_coco(ann_json)
    preds = _load_predictions(predictions)
    all_ids = set(gt.getImgIds())
    if img_ids is not None:
        img_ids = sorted({int(i) for i in img_ids})
        unknown = sorted(set(img_ids) - all_ids)
        if unknown:
            raise ValueError(f"img_ids {unknown[:5]} are not images of {getattr(gt, 'src', 'the annotation')}")
    if not preds:
        out = dict.fromkeys(METRIC_NAMES, 0.0)
        out["summary"] = "no predictions: all metrics are 0"
        return out
    unknown = sorted({p.get("image_id") for p in preds} - all_ids, key=str)
    if unknown:
        raise ValueError(
            f"predictions refer to image_id {unknown[:5]} not in {getattr(gt, 'src', 'the annotation')} "
            "(image_id must be the json's image id)"
        )
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        dt = gt.loadRes(copy.deepcopy(preds))  # loadRes mutates the dicts (adds area, id, iscrowd)
        ev = COCOeval(gt, dt, iouType="bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.summarize()
    stats = np.asarray(ev.stats, dtype=float)
    out = {k: float(v) for k, v in zip(METRIC_NAMES, stats)}
    out["summary"] = buf.getvalue()
    return out
