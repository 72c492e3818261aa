"""gor_det.eval: COCO mAP (pycocotools, official protocol) with one pre/post-processing path for every backend.

No Ultralytics import: ``gor_det.engine`` loads checkpoints and calls this package.
"""

from gor_det.eval.coco import METRIC_NAMES, class_to_category_ids, coco80_to_coco91, coco_metrics, load_coco
from gor_det.eval.predict import (
    DatasetMismatch,
    evaluate_backend,
    image_files,
    letterbox,
    postprocess,
    predict_dataset,
    scale_boxes,
    split_image_ids,
)

__all__ = [
    "METRIC_NAMES",
    "DatasetMismatch",
    "class_to_category_ids",
    "coco80_to_coco91",
    "coco_metrics",
    "evaluate_backend",
    "image_files",
    "letterbox",
    "load_coco",
    "postprocess",
    "predict_dataset",
    "scale_boxes",
    "split_image_ids",
]
