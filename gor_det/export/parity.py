"""Parity between two backends (e.g. PyTorch fake-quant vs NCNN INT8, ONNX FP vs TensorRT) on real images.

Raw max-abs on the ``(B, 4 + nc, A)`` output means little for INT8: one flipped DFL bin moves a decoded box edge by
a stride, so the box rows dominate (deployment-facts). :func:`compare_outputs` therefore reports

* ``cls_max_abs``: max |score difference| over all anchors and classes (the scores are sigmoid probabilities);
* ``rel_l2``: ``||test - ref|| / ||ref||`` over the whole output;
* detections after NMS: detections of the two are matched greedily (same class, IoU >= ``match_iou``);
  ``match_rate = matched / max(n_ref, n_test)`` and the IoU of the matched boxes.

``ParityReport.ok`` applies the stated tolerances (all parameters). Default images: Ultralytics' bundled
``assets/bus.jpg`` and ``assets/zidane.jpg`` (located without importing ultralytics).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_IMAGES = ("bus.jpg", "zidane.jpg")


def default_images() -> list[Path]:
    """Paths of ``bus.jpg`` and ``zidane.jpg`` shipped in the ultralytics wheel."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ultralytics is not installed: pass images explicitly")
    assets = Path(list(spec.submodule_search_locations)[0]) / "assets"
    paths = [assets / n for n in DEFAULT_IMAGES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"bundled images not found: {missing}")
    return paths


def letterbox(img_bgr: np.ndarray, imgsz, pad_value: int = 114) -> np.ndarray:
    """The evaluation letterbox (:func:`gor_det.eval.predict.letterbox`, Ultralytics' val) -> float32 (3, H, W) RGB
    in 0..1, so parity images are preprocessed exactly like the images mAP is measured on."""
    from gor_det.eval.predict import letterbox as eval_letterbox
    from gor_det.export._deps import imgsz_hw

    im, _, _ = eval_letterbox(img_bgr, imgsz_hw(imgsz))
    return np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1), dtype=np.float32) / 255.0


def load_images(paths=None, imgsz=640) -> np.ndarray:
    """Read and letterbox images (default: bus.jpg, zidane.jpg) -> float32 (N, 3, H, W) RGB 0..1."""
    import cv2

    out = []
    for p in paths or default_images():
        im = cv2.imread(str(p))
        if im is None:
            raise FileNotFoundError(f"image not found or unreadable: {p}")
        out.append(letterbox(im, imgsz))
    return np.stack(out)


def nms(pred: np.ndarray, nc: int, conf: float = 0.25, iou: float = 0.7, max_det: int = 300):
    """One image's ``(4 + nc, A)`` prediction -> ``(xyxy (n, 4), score (n,), cls (n,))``: the evaluation NMS
    (:func:`gor_det.eval.predict.postprocess`) with one label per box, at a display-like confidence."""
    from gor_det.eval.predict import postprocess

    p = np.ascontiguousarray(pred[None, : 4 + nc], dtype=np.float32)
    d = postprocess(p, conf=conf, iou=iou, max_det=max_det, multi_label=False)[0].numpy()
    return d[:, :4], d[:, 4], d[:, 5]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes ``(n, 4)`` x ``(m, 4)``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)


@dataclass
class ParityReport:
    """Numbers of :func:`compare_outputs`; ``ok`` when all are within ``tolerances``."""

    cls_max_abs: float
    rel_l2: float
    box_max_abs: float
    n_ref: int
    n_test: int
    matched: int
    mean_iou: float
    min_iou: float
    tolerances: dict = field(default_factory=dict)
    borderline_ref: int = 0  # unmatched detections scored just above conf (see compare_outputs)
    borderline_test: int = 0

    @property
    def match_rate(self) -> float:
        n = max(self.n_ref - self.borderline_ref, self.n_test - self.borderline_test)
        return 1.0 if n <= 0 else min(1.0, self.matched / n)

    @property
    def ok(self) -> bool:
        t = self.tolerances
        return (
            self.cls_max_abs <= t.get("cls_tol", np.inf)
            and self.rel_l2 <= t.get("rel_l2_tol", np.inf)
            and self.match_rate >= t.get("min_match", 0.0)
            and (self.matched == 0 or self.mean_iou >= t.get("min_mean_iou", 0.0))
        )

    def summary(self) -> str:
        t = self.tolerances
        return (
            f"parity {'OK' if self.ok else 'FAILED'}: class-score max|d| {self.cls_max_abs:.3g} "
            f"(tol {t.get('cls_tol')}), rel-L2 {self.rel_l2:.3g} (tol {t.get('rel_l2_tol')}), "
            f"box max|d| {self.box_max_abs:.3g} px (info); detections ref {self.n_ref} / test {self.n_test}, "
            f"matched {self.matched} ({self.match_rate:.0%}, min {t.get('min_match')}"
            + (f"; {self.borderline_ref}/{self.borderline_test} unmatched just above conf not counted"
               if self.borderline_ref or self.borderline_test else "") + "), "
            f"IoU mean {self.mean_iou:.3f} min {self.min_iou:.3f} (min mean {t.get('min_mean_iou')})"
            + ("; no detections above conf: NMS comparison is vacuous" if max(self.n_ref, self.n_test) == 0 else "")
        )

    def __str__(self) -> str:
        return self.summary()


def compare_outputs(
    ref: np.ndarray,
    test: np.ndarray,
    nc: int | None = None,
    conf: float = 0.25,
    iou: float = 0.7,
    match_iou: float = 0.5,
    cls_tol: float = 0.05,
    rel_l2_tol: float = 0.05,
    min_match: float = 0.8,
    min_mean_iou: float = 0.8,
) -> ParityReport:
    """Compare two ``(B, 4 + nc, A)`` outputs (``nc`` defaults to ``C - 4``, i.e. a Detect head).

    Default tolerances suit INT8-runtime vs its PyTorch fake-quant model on real images; tighten them for FP vs FP
    (e.g. ``cls_tol=1e-4, rel_l2_tol=1e-4, min_match=1.0``). An unmatched detection scored below
    ``conf + min(cls_tol, max class-score difference)`` does not count against the match rate: the difference
    measured, within what the gate allows, can move it across the confidence threshold (a student with few
    detections on the parity images otherwise fails on one of them).
    """
    ref, test = np.asarray(ref, np.float32), np.asarray(test, np.float32)
    if ref.shape != test.shape:
        raise ValueError(f"output shapes differ: {ref.shape} vs {test.shape}")
    nc = ref.shape[1] - 4 if nc is None else nc
    d = test - ref
    cls_max = float(np.abs(d[:, 4 : 4 + nc]).max()) if nc else 0.0
    rel = float(np.linalg.norm(d) / max(np.linalg.norm(ref), 1e-12))
    box_max = float(np.abs(d[:, :4]).max())
    n_ref = n_test = matched = border_r = border_t = 0
    ious = []
    for r, t in zip(ref, test):
        br, sr, cr = nms(r, nc, conf, iou)
        bt, st, ct = nms(t, nc, conf, iou)
        n_ref, n_test = n_ref + len(br), n_test + len(bt)
        hit_r, hit_t = np.zeros(len(br), bool), np.zeros(len(bt), bool)
        if len(br) and len(bt):
            m = box_iou(br, bt)
            m[cr[:, None] != ct[None]] = 0.0
            for k in np.argsort(-sr):
                cand = np.where(~hit_t, m[k], 0.0)
                j = int(cand.argmax())
                if cand[j] >= match_iou:
                    hit_t[j] = hit_r[k] = True
                    matched += 1
                    ious.append(float(cand[j]))
        band = conf + min(cls_tol, cls_max)  # a score this close to conf can cross it by the difference measured
        border_r += int(np.sum(~hit_r & (np.asarray(sr) < band)))
        border_t += int(np.sum(~hit_t & (np.asarray(st) < band)))
    tol = dict(
        cls_tol=cls_tol,
        rel_l2_tol=rel_l2_tol,
        min_match=min_match,
        min_mean_iou=min_mean_iou,
        conf=conf,
        iou=iou,
        match_iou=match_iou,
    )
    return ParityReport(
        cls_max,
        rel,
        box_max,
        n_ref,
        n_test,
        matched,
        float(np.mean(ious)) if ious else 0.0,
        float(np.min(ious)) if ious else 0.0,
        tol,
        border_r,
        border_t,
    )


def compare_backends(ref, test, images=None, imgsz=640, **kwargs) -> ParityReport:
    """Run two backends (callables ``images -> (B, 4 + nc, A)``) on ``images`` and :func:`compare_outputs`.

    ``images``: an ``(N, 3, H, W)`` float32 array, a list of image paths (letterboxed to ``imgsz``), or ``None`` for
    Ultralytics' bus.jpg and zidane.jpg.
    """
    if images is None or not isinstance(images, np.ndarray):
        images = load_images(images, imgsz)
    return compare_outputs(np.asarray(ref(images)), np.asarray(test(images)), **kwargs)
