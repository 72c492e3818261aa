"""One pre/post-processing path for every backend, identical to Ultralytics 8.4 ``yolo val`` (rect=False).

A *backend* is any callable ``backend(images) -> raw`` with
``images``: float32 ``(B, 3, H, W)`` numpy array, RGB, values in [0, 1] (``H == W == imgsz``), and
``raw``: ``(B, 4 + nc, A)`` (numpy or torch; a tuple/list is reduced to its first element like Ultralytics does):
rows 0..3 are box centre x, centre y, width, height in input pixels, rows 4.. the class scores (after sigmoid),
i.e. the decoded output of an Ultralytics ``Detect`` head in eval mode.

Pipeline (what ``DetectionValidator`` does in 8.4.190):
1. read BGR (``cv2.imdecode``, IMREAD_COLOR); 2. :func:`letterbox`; 3. BGR->RGB, HWC->CHW, ``/255`` float32;
4. backend; 5. :func:`postprocess` (NMS, multi-label, conf 0.001, iou 0.7, max_det 300);
6. :func:`scale_boxes` to original pixels; 7. COCO result dicts (xywh, bbox rounded to 3 decimals, score to 5).

No Ultralytics import (``gor_det.engine`` calls this module).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from gor_det.eval.coco import _names_list, class_to_category_ids, coco_metrics, load_coco

#: Image suffixes Ultralytics accepts (``ultralytics.data.utils.IMG_FORMATS``).
IMG_FORMATS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic"}

Backend = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]


class DatasetMismatch(ValueError):
    """The model, the images and the annotation json do not belong together (class count, uncovered images)."""


def letterbox(img_bgr: np.ndarray, new_shape, stride: int = 32, auto: bool = False):
    """Resize and pad an image exactly like Ultralytics' val pipeline.

    Two steps, as in 8.4: ``BaseDataset.load_image`` resizes the long side to ``max(new_shape)``
    (``w, h = min(ceil(w0*r), s), min(ceil(h0*r), s)``, ``cv2.INTER_LINEAR``, also upscaling), then
    ``LetterBox(new_shape, scaleup=False, center=True, auto=auto)`` pads with 114 (only resizing again for a
    non-square ``new_shape``). ``auto=True`` pads to the smallest multiple of ``stride`` (predict mode).

    Args:
        img_bgr: ``(H0, W0, 3)`` uint8 BGR image.
        new_shape: int (square) or ``(h, w)`` target in pixels.

    Returns:
        ``img`` ``(h, w, 3)`` uint8 BGR; ``ratio`` ``(gain_h, gain_w)`` = letterboxed pixels per original pixel;
        ``pad`` ``(padw, padh)`` = left and top padding in pixels. (Ultralytics' ``ratio_pad`` is ``(ratio, pad)``.)
    """
    shape = (new_shape, new_shape) if isinstance(new_shape, int) else tuple(int(x) for x in new_shape)
    h0, w0 = img_bgr.shape[:2]
    img = img_bgr
    s = max(shape)
    r = s / max(h0, w0)
    if r != 1:  # load_image(rect_mode=True)
        w, h = min(math.ceil(w0 * r), s), min(math.ceil(h0 * r), s)
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    h1, w1 = img.shape[:2]
    r2 = min(shape[0] / h1, shape[1] / w1, 1.0)  # LetterBox(scaleup=False)
    new_unpad = max(round(w1 * r2), 1), max(round(h1 * r2), 1)
    dw, dh = shape[1] - new_unpad[0], shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    dw, dh = dw / 2, dh / 2
    if (w1, h1) != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    ratio = (h1 / h0 * r2, w1 / w0 * r2)
    return img, ratio, (left, top)


def _xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    wh = x[..., 2:] / 2
    y[..., :2] = x[..., :2] - wh
    y[..., 2:] = x[..., :2] + wh
    return y


def postprocess(
    raw,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    multi_label: bool = True,
    max_nms: int = 30000,
    max_wh: int = 7680,
) -> list[torch.Tensor]:
    """NMS on decoded head outputs, as ``ultralytics.utils.nms.non_max_suppression`` called by DetectionValidator.

    Candidates need a class score ``> conf``; with ``multi_label`` (Ultralytics val's setting, used when nc > 1) every
    (box, class) pair with score ``> conf`` is a candidate; the ``max_nms`` best are kept; class-aware NMS via a
    ``class * max_wh`` coordinate offset and ``torchvision.ops.nms`` at ``iou``; the first ``max_det`` are kept.

    Args:
        raw: ``(B, 4 + nc, A)`` numpy/torch (or a tuple/list whose first element is that): xywh in input pixels
            + class scores.

    Returns:
        per image a float32 ``(N, 6)`` tensor ``[x1, y1, x2, y2, score, class]`` (input pixels), score-descending.
    """
    if isinstance(raw, (list, tuple)):
        raw = raw[0]
    pred = (raw.detach() if isinstance(raw, torch.Tensor) else torch.as_tensor(np.asarray(raw))).float().cpu()
    if pred.ndim != 3 or pred.shape[1] < 5:
        raise ValueError(f"raw predictions must have shape (B, 4+nc, A), got {tuple(pred.shape)}")
    nc = pred.shape[1] - 4
    multi_label = multi_label and nc > 1
    xc = pred[:, 4:].amax(1) > conf
    pred = pred.transpose(-1, -2)
    out = []
    for xi, x in enumerate(pred):
        x = x[xc[xi]]
        x[:, :4] = _xywh2xyxy(x[:, :4])
        box, cls = x[:, :4], x[:, 4:]
        if multi_label:
            i, j = torch.where(cls > conf)
            x = torch.cat((box[i], x[i, 4 + j, None], j[:, None].float()), 1)
        else:
            score, j = cls.max(1, keepdim=True)
            x = torch.cat((box, score, j.float()), 1)[score.view(-1) > conf]
        if x.shape[0] > max_nms:
            x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        if not x.shape[0]:
            out.append(torch.zeros((0, 6)))
            continue
        c = x[:, 5:6] * (0 if agnostic else max_wh)
        keep = torchvision.ops.nms(x[:, :4] + c, x[:, 4], iou)[:max_det]
        out.append(x[keep])
    return out


def scale_boxes(boxes_xyxy, ratio, pad, orig_shape):
    """Map xyxy boxes from letterboxed input pixels back to original pixels and clip to the image.

    Same float32 operations as ``ultralytics.utils.ops.scale_boxes`` with ``ratio_pad=(ratio, pad)``.

    Args:
        boxes_xyxy: ``(N, 4)`` torch or numpy, input pixels.
        ratio: ``(gain_h, gain_w)`` from :func:`letterbox`.
        pad: ``(padw, padh)`` from :func:`letterbox`.
        orig_shape: ``(H0, W0)`` of the original image.

    Returns:
        ``(N, 4)`` xyxy in original pixels, same kind (torch/numpy) as the input, float32.
    """
    is_np = not isinstance(boxes_xyxy, torch.Tensor)
    b = torch.as_tensor(np.asarray(boxes_xyxy) if is_np else boxes_xyxy).float().clone()
    gain_y, gain_x = ratio
    pad_x, pad_y = pad
    b[..., 0] -= pad_x
    b[..., 1] -= pad_y
    b[..., 2] -= pad_x
    b[..., 3] -= pad_y
    b[..., 0] /= gain_x
    b[..., 1] /= gain_y
    b[..., 2] /= gain_x
    b[..., 3] /= gain_y
    h, w = orig_shape[:2]
    b[..., 0].clamp_(0, w)
    b[..., 1].clamp_(0, h)
    b[..., 2].clamp_(0, w)
    b[..., 3].clamp_(0, h)
    return b.numpy() if is_np else b


def _imread(path: Path) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return img


def _image_id_lookup(ann) -> dict[str, int]:
    if ann is None:
        return {}
    return {os.path.basename(im["file_name"]): int(im["id"]) for im in load_coco(ann).dataset["images"]}


def _image_id(path: Path, lookup: dict[str, int]) -> int:
    if path.name in lookup:
        return lookup[path.name]
    if path.stem.isnumeric():
        return int(path.stem)
    raise ValueError(f"image {path}: no numeric stem and no image with file_name '{path.name}' in the annotation json")


def split_image_ids(image_paths: Sequence[str | Path], ann) -> list[int]:
    """The annotation json's ``image_id`` of every image (by file name, else ``int(stem)``: :func:`predict_dataset`'s
    rule), in order.

    Raises:
        DatasetMismatch: some images have no image in the json (the message says how many and names one).
    """
    gt = load_coco(ann)
    lookup, known = _image_id_lookup(gt), set(gt.getImgIds())
    ids, missing = [], []
    for p in map(Path, image_paths):
        try:
            i = _image_id(p, lookup)
        except ValueError:
            i = None
        if i in known:
            ids.append(i)
        else:
            missing.append(p)
    if missing:
        raise DatasetMismatch(
            f"the annotation json {getattr(gt, 'src', '')} has no image for {len(missing)} of the "
            f"{len(ids) + len(missing)} images (e.g. {missing[0].name}; matched by file name, else numeric id)"
        )
    return ids


def _check_nc(raw, nc: int) -> None:
    out = raw[0] if isinstance(raw, (list, tuple)) else raw
    got = int(out.shape[1]) - 4 if getattr(out, "ndim", 0) == 3 else None
    if got is not None and got != nc:
        raise DatasetMismatch(f"the model predicts {got} classes but the dataset has {nc}")


def predict_dataset(
    backend: Backend,
    image_paths: Sequence[str | Path],
    imgsz: int,
    batch: int = 1,
    class_to_cat: Sequence[int] | None = None,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    ann_json=None,
    nc: int | None = None,
) -> list[dict]:
    """Run ``backend`` over images and return COCO result dicts (Ultralytics' ``predictions.json`` format).

    Args:
        backend: see the module docstring (float32 ``(B,3,imgsz,imgsz)`` RGB 0..1 -> ``(B, 4+nc, A)``).
        image_paths: image files.
        imgsz: square input size in pixels.
        batch: images per backend call (the last call may be smaller).
        class_to_cat: class index -> ``category_id``; default ``index + 1``.
        ann_json: optional annotation json; ``image_id`` is the id of the json image whose ``file_name`` has the same
            basename, else ``int(stem)`` for a numeric stem (Ultralytics' rule), else ValueError.
        nc: the dataset's class count; the first backend output must have ``4 + nc`` rows, else
            :class:`DatasetMismatch` (a model trained on other classes).

    Returns:
        ``[{"image_id": int, "category_id": int, "bbox": [x, y, w, h] (original pixels, 3 decimals),
        "score": float (5 decimals)}, ...]``.
    """
    lookup = _image_id_lookup(ann_json)
    paths = [Path(p) for p in image_paths]
    results: list[dict] = []
    for b0 in range(0, len(paths), batch):
        chunk = paths[b0 : b0 + batch]
        ims, metas = [], []
        for p in chunk:
            img0 = _imread(p)
            img, ratio, pad = letterbox(img0, imgsz)
            ims.append(img[..., ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
            metas.append((_image_id(p, lookup), ratio, pad, img0.shape[:2]))
        x = np.ascontiguousarray(np.stack(ims)).astype(np.float32) / 255
        raw = backend(x)
        if nc is not None and b0 == 0:
            _check_nc(raw, nc)
        dets = postprocess(raw, conf=conf, iou=iou, max_det=max_det)
        if len(dets) != len(chunk):
            raise ValueError(f"backend returned {len(dets)} images for a batch of {len(chunk)}")
        for (img_id, ratio, pad, shape0), d in zip(metas, dets):
            box = scale_boxes(d[:, :4], ratio, pad, shape0)
            xywh = torch.empty_like(box)  # Ultralytics: xyxy2xywh, then centre -> top-left (same float32 ops)
            xywh[:, 0] = (box[:, 0] + box[:, 2]) / 2
            xywh[:, 1] = (box[:, 1] + box[:, 3]) / 2
            xywh[:, 2] = box[:, 2] - box[:, 0]
            xywh[:, 3] = box[:, 3] - box[:, 1]
            xywh[:, :2] -= xywh[:, 2:] / 2
            for bb, s, c in zip(xywh.tolist(), d[:, 4].tolist(), d[:, 5].tolist()):
                c = int(c)
                if class_to_cat is not None and c >= len(class_to_cat):
                    raise ValueError(f"class index {c} has no category id (class_to_cat has {len(class_to_cat)})")
                results.append(
                    {
                        "image_id": img_id,
                        "category_id": int(class_to_cat[c]) if class_to_cat is not None else c + 1,
                        "bbox": [round(v, 3) for v in bb],
                        "score": round(s, 5),
                    }
                )
    return results


def _files_from(p: Path) -> list[str]:
    if p.is_dir():
        return [str(f) for f in p.rglob("*") if f.is_file()]
    if p.is_file() and p.suffix.lower() == ".txt":
        out = []
        for line in p.read_text(encoding="utf-8-sig").strip().splitlines():
            line = line.strip()
            if line.startswith("./"):
                out.append(str(p.parent / line[2:]))
            elif line and not Path(line).is_absolute() and not Path(line).exists():
                out.append(str(p.parent / line))  # Ultralytics keeps it cwd-relative; also accept txt-relative
            elif line:
                out.append(line)
        return out
    if p.is_file():
        return [str(p)]
    raise FileNotFoundError(f"{p} does not exist")


def image_files(source, split: str = "val") -> list[Path]:
    """Sorted image list, the way Ultralytics builds it, from a dataset yaml, a directory, a .txt list or a list.

    For a yaml: ``path`` (absolute, or relative to the cwd, else to the yaml's folder; default the yaml's folder)
    joined with ``split`` (a directory, a .txt list of images with ``./`` relative to the txt, or a list of those).
    """
    if isinstance(source, (list, tuple)):
        files = [f for s in source for f in _files_from(Path(s))]
    else:
        src = Path(source)
        if src.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            if not src.is_file():
                raise FileNotFoundError(f"dataset yaml not found: {src}")
            data = yaml.safe_load(src.read_text(encoding="utf-8")) or {}
            if not data.get(split):
                raise ValueError(f"dataset yaml {src} has no '{split}' entry")
            root = Path(data.get("path") or src.parent)
            if not root.is_absolute() and not root.exists():
                root = src.parent / root
            entries = data[split] if isinstance(data[split], list) else [data[split]]
            files = [f for e in entries for f in _files_from(root / e)]
        else:
            files = _files_from(src)
    ims = sorted(f for f in files if f.rpartition(".")[-1].lower() in IMG_FORMATS)
    if not ims:
        raise FileNotFoundError(f"no images found in {source}")
    return [Path(f) for f in ims]


def evaluate_backend(
    backend: Backend,
    data_yaml_or_image_dir,
    ann_json,
    imgsz: int,
    out_dir,
    names=None,
    batch: int = 1,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    split: str = "val",
) -> dict:
    """Predict every image of a dataset split with ``backend`` and score it with pycocotools.

    Writes ``out_dir/predictions.json`` (COCO results) and ``out_dir/metrics.json`` (metrics + settings).
    All images of the split are evaluated (images without detections count), not the whole annotation file.

    Args:
        names: class names (list or ``{index: name}``) used by :func:`class_to_category_ids`; default: the yaml's
            ``names``, else ``index + 1``.

    Returns:
        the :func:`coco_metrics` dict plus ``n_images`` and ``n_predictions``.

    Raises:
        DatasetMismatch: the json does not cover every image, or the backend's class count is not ``len(names)``.
    """
    gt = load_coco(ann_json)
    paths = image_files(data_yaml_or_image_dir, split)
    src = Path(data_yaml_or_image_dir) if isinstance(data_yaml_or_image_dir, (str, Path)) else None
    if names is None and src is not None and src.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        names = (yaml.safe_load(src.read_text(encoding="utf-8")) or {}).get("names")
    img_ids = split_image_ids(paths, gt)  # before any prediction: the json must cover every image of the split
    class_to_cat = class_to_category_ids(gt, names) if names else None
    preds = predict_dataset(
        backend, paths, imgsz, batch=batch, class_to_cat=class_to_cat, conf=conf, iou=iou, max_det=max_det,
        ann_json=gt, nc=len(_names_list(names)) if names else None,
    )  # fmt: skip
    metrics = coco_metrics(gt, preds, img_ids=img_ids)
    metrics.update(n_images=len(paths), n_predictions=len(preds))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(preds))
    settings = {"imgsz": imgsz, "batch": batch, "conf": conf, "iou": iou, "max_det": max_det, "multi_label": True}
    if names:
        settings["names"] = _names_list(names)
    (out / "metrics.json").write_text(json.dumps({**metrics, "settings": settings}, indent=2))
    return metrics
