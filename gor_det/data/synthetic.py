"""GoR-Shapes: an offline, seed-deterministic synthetic detection benchmark laid out exactly like COCO.

Every image is drawn from scratch with NumPy + OpenCV, so the benchmark needs no download and the same code serves
users of real COCO (YOLO ``labels/*.txt`` for Ultralytics, ``annotations/instances_val.json`` for pycocotools).

**Classes (12)**: ``circle, triangle, square, star, cross, ring, hexagon, arrow, crescent, heart, letter_T,
letter_H``. No class is a rotation or a stretch of another, and each class also varies in shape (star depth, ring
thickness, arm/bar widths, crescent cut), so the detector must learn shape, not a template.

**Nuisances**:

* colour: every object gets a random colour (at least a fixed RGB distance from the background under it), an
  optional brightness gradient, optional stripes and an optional outline; colour never identifies a class;
* scale from COCO-small (longest side 8 px) to large (half the image side), a log-uniform / uniform mix: in the bench
  preset the median box side is 32 px and about 55% of the boxes are COCO-"small" (< 32^2 px);
* full 360 degree rotation and aspect-ratio jitter (about 0.7..1.4);
* 1..12 objects per image with partial occlusion between them and truncation by the image border, both capped so
  that every labelled object keeps at least ``min_visible`` (50%) of its drawn pixels;
* unlabelled clutter that belongs to no class: irregular blobs, noise patches, lines, scribbles and arcs below the
  objects, thin lines and scribbles above them;
* textured backgrounds (flat, gradients, stripes, checkers, low-frequency colour clouds, often two blended), pixel
  noise, occasional blur and JPEG compression (quality 70..95).

**Boxes** are the tight axis-aligned boxes of each object's *visible* drawn pixels (modal boxes, as in COCO: pixels
hidden by later objects, by clutter drawn on top or by the image border are excluded; a pixel counts when the object's
anti-aliased coverage is >= 50%). YOLO labels and the COCO json hold the same integer pixel boxes:
COCO ``bbox = [x0, y0, x1 - x0, y1 - y0]`` and YOLO ``cx = (x0 + x1) / 2 / W`` ..., ``area`` = visible pixel count.

**Presets** (``PRESETS``; any field can be overridden through ``make_synthetic(..., **overrides)``):

========  =======  =====  ======  ========================================================
preset    train    val    imgsz   use
========  =======  =====  ======  ========================================================
tiny      24       12     128     unit tests (generated in well under a second)
demo      320      80     160     README demo (min_size 12, <= 8 objects, <= 4 clutter items): minutes on CPU
bench     1500     300    192     benchmark: mAP differences between FP / QAT / KD runs show
========  =======  =====  ======  ========================================================

**Layout** under ``root`` (COCO conventions so that Ultralytics' ``predictions.json`` matches the ground truth):
``images/{train,val}/<12-digit id>.jpg``, ``labels/{train,val}/<id>.txt`` (``cls cx cy w h``, normalised),
``annotations/instances_{train,val}.json`` (``image_id == int(stem)``, ids unique across splits and starting at 1;
``category_id == class index + 1``, the ``class_map`` Ultralytics uses for non-COCO data), ``data.yaml`` (``path``
absolute, ``train``, ``val``, ``nc``, ``names``, ``coco_json``) and ``.synthetic_stamp.json`` (marked complete last;
a root whose complete stamp matches the request is returned untouched).

**Determinism**: the image with id ``i`` (train ids ``1..n_train``, val ids follow) of split ``s`` is drawn from
``numpy.random.default_rng([seed, s, i, imgsz])`` alone, so it does not depend on generation order; the same seed and
preset give byte-identical labels and json, and identical images for the same OpenCV build.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "PRESETS",
    "STAMP_NAME",
    "SynthSpec",
    "SyntheticObject",
    "is_complete",
    "make_synthetic",
    "render_image",
]

GENERATOR_VERSION = 1
STAMP_NAME = ".synthetic_stamp.json"
LOCK_NAME = ".synthetic.lock"  # held while generating (make_synthetic)
CLASSES: tuple[str, ...] = (
    "circle",
    "triangle",
    "square",
    "star",
    "cross",
    "ring",
    "hexagon",
    "arrow",
    "crescent",
    "heart",
    "letter_T",
    "letter_H",
)
SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 1, "val": 2}


@dataclass(frozen=True)
class SynthSpec:
    """Everything that defines a synthetic dataset (with the seed). Sizes are in pixels of the square image."""

    n_train: int = 24
    n_val: int = 12
    imgsz: int = 128
    min_objects: int = 1
    max_objects: int = 12
    min_size: float = 8.0  # longest side of the (unrotated) object, pixels
    max_size_frac: float = 0.5  # ... up to this fraction of imgsz
    min_visible: float = 0.5  # fraction of an object's drawn pixels that must stay visible
    max_distractors: int = 8  # unlabelled clutter items per image (0..max)
    jpeg_quality: tuple[int, int] = (70, 95)

    def validate(self) -> SynthSpec:
        if self.n_train < 1 or self.n_val < 1:
            raise ValueError("n_train and n_val must be >= 1")
        if not 32 <= self.imgsz <= 4096:
            raise ValueError(f"imgsz must be in 32..4096, got {self.imgsz}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if not 4 <= self.min_size <= self.max_size_frac * self.imgsz:
            raise ValueError("need 4 <= min_size <= max_size_frac * imgsz")
        if not 0.0 < self.min_visible <= 1.0:
            raise ValueError("min_visible must be in (0, 1]")
        q0, q1 = self.jpeg_quality
        if not 1 <= q0 <= q1 <= 100:
            raise ValueError("jpeg_quality must be (lo, hi) with 1 <= lo <= hi <= 100")
        return self


PRESETS: dict[str, SynthSpec] = {
    "tiny": SynthSpec(n_train=24, n_val=12, imgsz=128),
    # the demo trains from scratch for a few minutes: somewhat larger, fewer objects and less clutter
    "demo": SynthSpec(n_train=320, n_val=80, imgsz=160, min_size=12.0, max_objects=8, max_distractors=4),
    "bench": SynthSpec(n_train=1500, n_val=300, imgsz=192),
}


@dataclass
class SyntheticObject:
    """One labelled object: class index and visible box ``(x0, y0, x1, y1)`` in pixel edges (x1, y1 exclusive)."""

    cls: int
    box: tuple[int, int, int, int]
    area: int  # visible pixels
    visible: float  # visible / drawn pixels


# ----------------------------------------------------------------------------------------------------------------------
# Shapes: each returns a list of (polygon (N, 2) float in about [-1, 1]^2, fill) drawn in order (fill 0 carves a hole).


def _ngon(n: int, r: float = 1.0, phase: float = 0.0, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * (2 * np.pi / n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _shape(cls: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    name = CLASSES[cls]
    if name == "circle":
        return [(_ngon(48), 1)]
    if name == "triangle":
        return [(_ngon(3, phase=-np.pi / 2), 1)]
    if name == "square":
        return [(_rect(-1, -1, 1, 1), 1)]
    if name == "star":
        r_in = rng.uniform(0.36, 0.5)
        pts = _ngon(10, phase=-np.pi / 2)
        pts[1::2] *= r_in
        return [(pts, 1)]
    if name == "cross":
        a = rng.uniform(0.22, 0.34)
        return [(_rect(-1, -a, 1, a), 1), (_rect(-a, -1, a, 1), 1)]
    if name == "ring":
        return [(_ngon(48), 1), (_ngon(40, r=rng.uniform(0.45, 0.65)), 0)]
    if name == "hexagon":
        return [(_ngon(6), 1)]
    if name == "arrow":
        a, hx = rng.uniform(0.16, 0.26), rng.uniform(0.0, 0.3)
        return [(np.array([[-1, -a], [hx, -a], [hx, -0.7], [1, 0], [hx, 0.7], [hx, a], [-1, a]], dtype=np.float64), 1)]
    if name == "crescent":
        d = rng.uniform(0.4, 0.6)
        return [(_ngon(48), 1), (_ngon(48, r=rng.uniform(0.85, 0.95), cx=d), 0)]
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1)
        pts -= (pts.min(0) + pts.max(0)) / 2
        return [(pts / np.abs(pts).max(), 1)]
    if name == "letter_T":
        a = rng.uniform(0.17, 0.27)
        return [(_rect(-1, -1, 1, -1 + 2 * a), 1), (_rect(-a, -1, a, 1), 1)]
    if name == "letter_H":
        a = rng.uniform(0.17, 0.27)
        return [(_rect(-1, -1, -1 + 2 * a, 1), 1), (_rect(1 - 2 * a, -1, 1, 1), 1), (_rect(-1, -a, 1, a), 1)]
    raise AssertionError(name)


# ----------------------------------------------------------------------------------------------------------------------
# Drawing helpers

_SHIFT = 4  # sub-pixel bits for cv2 polygons
_ONE = 1 << _SHIFT


def _fix(pts: np.ndarray) -> np.ndarray:
    return np.round(pts * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _rand_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _contrasting_color(rng: np.random.Generator, under: np.ndarray, min_dist: float = 90.0) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(12):
        c = _rand_color(rng)
        d = float(np.linalg.norm(c - under))
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    far = np.where(under < 128, 255.0, 0.0)  # the farthest corner of the RGB cube
    return 0.5 * (best + far)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return x, y


def _pattern(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    """A float32 (h, w, 3) texture in 0..255."""
    c1, c2 = _rand_color(rng), _rand_color(rng)
    if kind == "flat":
        return np.broadcast_to(c1.astype(np.float32), (h, w, 3)).copy()
    if kind == "cloud":
        g = int(rng.integers(2, 9))
        small = rng.uniform(0, 255, (g, g, 3)).astype(np.float32)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255)
    x, y = _grid(h, w)
    phi = rng.uniform(0, np.pi)
    u = x * np.cos(phi) + y * np.sin(phi)
    if kind == "gradient":
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif kind == "stripes":
        period = rng.uniform(3.0, max(4.0, 0.35 * max(h, w)))
        s = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
        t = (s > 0).astype(np.float32) if rng.random() < 0.5 else 0.5 + 0.5 * s
    else:  # checker
        v = -x * np.sin(phi) + y * np.cos(phi)
        period = rng.uniform(4.0, max(5.0, 0.3 * max(h, w)))
        t = ((np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)) > 0).astype(np.float32)
    t = t[..., None].astype(np.float32)
    return (c1 * (1 - t) + c2 * t).astype(np.float32)


_BG_KINDS = ("flat", "gradient", "stripes", "checker", "cloud")


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _pattern(rng, s, s, _BG_KINDS[int(rng.integers(len(_BG_KINDS)))])
    if rng.random() < 0.5:
        a = rng.uniform(0.25, 0.6)
        img = (1 - a) * img + a * _pattern(rng, s, s, _BG_KINDS[int(rng.integers(len(_BG_KINDS)))])
    sigma = rng.uniform(0, 12)
    if sigma > 0.5:
        img = img + rng.normal(0, sigma, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.float32)


def _composite(canvas: np.ndarray, x0: int, y0: int, alpha: np.ndarray, look: np.ndarray) -> None:
    """Blend ``look`` (h, w, 3) into ``canvas`` at (x0, y0) with coverage ``alpha`` (h, w) uint8."""
    h, w = alpha.shape
    a = alpha.astype(np.float32)[..., None] * (1.0 / 255.0)
    region = canvas[y0 : y0 + h, x0 : x0 + w]
    region *= 1.0 - a
    region += a * look


def _clip_patch(alpha: np.ndarray, x0: int, y0: int, s: int) -> tuple[np.ndarray, int, int]:
    """Clip a patch placed at (x0, y0) to the s x s image; returns (alpha, x0, y0) possibly empty."""
    h, w = alpha.shape
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + w, s), min(y0 + h, s)
    if cx1 <= cx0 or cy1 <= cy0:
        return alpha[:0, :0], 0, 0
    return alpha[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0], cx0, cy0


def _raster(polys: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int, int]:
    """Rasterise pixel-space polygons (anti-aliased) into an unclipped patch; returns (alpha uint8, x0, y0)."""
    allp = np.concatenate([p for p, f in polys if f])
    x0, y0 = (np.floor(allp.min(0)) - 2).astype(int)
    x1, y1 = (np.ceil(allp.max(0)) + 2).astype(int)
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    off = np.array([x0, y0], dtype=np.float64)
    for p, f in polys:
        cv2.fillPoly(alpha, [_fix(p - off)], 255 if f else 0, lineType=cv2.LINE_AA, shift=_SHIFT)
    return alpha, int(x0), int(y0)


def _object_look(rng: np.random.Generator, alpha: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Appearance of an object patch: colour, optional gradient, stripes and outline."""
    h, w = alpha.shape
    look = np.broadcast_to(color.astype(np.float32), (h, w, 3)).copy()
    if rng.random() < 0.6:  # brightness gradient
        x, y = _grid(h, w)
        phi = rng.uniform(0, 2 * np.pi)
        u = (x - w / 2) * np.cos(phi) + (y - h / 2) * np.sin(phi)
        u = u / max(float(np.abs(u).max()), 1.0)
        look *= (1.0 + rng.uniform(0.1, 0.35) * u)[..., None]
    if rng.random() < 0.2 and min(h, w) >= 10:  # stripes in a second colour
        x, y = _grid(h, w)
        phi = rng.uniform(0, np.pi)
        period = rng.uniform(3.0, max(3.5, 0.4 * max(h, w)))
        t = (np.sin(2 * np.pi * (x * np.cos(phi) + y * np.sin(phi)) / period) > 0).astype(np.float32)[..., None]
        c2 = color + rng.uniform(-90, 90, 3)
        look = look * (1 - 0.6 * t) + 0.6 * t * c2.astype(np.float32)
    if rng.random() < 0.3 and min(h, w) >= 8:  # outline
        m = (alpha >= 128).astype(np.uint8)
        edge = m - cv2.erode(m, np.ones((3, 3), np.uint8))
        oc = np.where(color < 128, color * 0.35 + 150, color * 0.35).astype(np.float32)
        look[edge.astype(bool)] = oc
    return np.clip(look, 0, 255)


def _distractor(rng: np.random.Generator, s: int, top: bool) -> tuple[np.ndarray, int, int, np.ndarray]:
    """An unlabelled clutter item: (alpha patch unclipped, x0, y0, look). ``top`` ones are thin strokes only."""
    kind = (
        ("line", "scribble")[int(rng.integers(2))]
        if top
        else ("blob", "noise", "line", "scribble", "arc")[int(rng.integers(5))]
    )
    color = _rand_color(rng)
    if kind == "blob":
        r = rng.uniform(3, 0.22 * s)
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        rad = np.ones_like(t)
        for k in (2, 3, 4, 5):
            rad += rng.uniform(0.08, 0.22) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        rad = np.maximum(rad, 0.25)
        c = rng.uniform(0, s, 2)
        pts = c + r * np.stack([rad * np.cos(t), rad * np.sin(t) * rng.uniform(0.5, 1.0)], 1)
        alpha, x0, y0 = _raster([(pts, 1)])
        look = np.broadcast_to(color.astype(np.float32), (*alpha.shape, 3)).copy()
        return alpha, x0, y0, look
    if kind == "noise":
        w, h = (int(v) for v in rng.integers(5, max(6, int(0.3 * s)), 2))
        x0, y0 = (int(v) for v in rng.integers(-w // 2, s - w // 2, 2))
        alpha = np.full((h, w), 255, np.uint8)
        look = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        if rng.random() < 0.5:
            look = cv2.GaussianBlur(look, (0, 0), rng.uniform(0.6, 1.5))
        return alpha, x0, y0, look
    # strokes, drawn on a full-size canvas then cropped
    pad = 4
    alpha = np.zeros((s + 2 * pad, s + 2 * pad), np.uint8)
    thick = int(rng.integers(1, 3)) if top else int(rng.integers(1, 4))
    if kind == "line":
        p = rng.uniform(-0.1 * s, 1.1 * s, (2, 2)) + pad
        cv2.line(alpha, *[tuple(int(round(v * _ONE)) for v in q) for q in p], 255, thick, cv2.LINE_AA, _SHIFT)
    elif kind == "scribble":
        n = int(rng.integers(3, 7))
        p = np.cumsum(rng.normal(0, 0.12 * s, (n, 2)), 0) + rng.uniform(0, s, 2) + pad
        cv2.polylines(alpha, [_fix(p)], False, 255, thick, cv2.LINE_AA, _SHIFT)
    else:  # arc
        c = rng.uniform(0, s, 2) + pad
        ax = rng.uniform(4, 0.3 * s, 2)
        a0 = rng.uniform(0, 360)
        cv2.ellipse(
            alpha,
            (int(round(c[0])), int(round(c[1]))),
            (int(round(ax[0])), int(round(ax[1]))),
            rng.uniform(0, 180),
            a0,
            a0 + rng.uniform(40, 160),
            255,
            min(thick, 2),
            cv2.LINE_AA,
        )
    look = np.broadcast_to(color.astype(np.float32), (*alpha.shape, 3)).copy()
    return alpha, -pad, -pad, look


# ----------------------------------------------------------------------------------------------------------------------
# One image


class _Scene:
    """Tracks which layer owns every pixel, so occlusion can be capped before anything is committed."""

    def __init__(self, s: int, min_visible: float):
        self.s = s
        self.min_visible = min_visible
        self.owner = np.full((s, s), -1, np.int16)  # -1 background, -2 clutter on top, k >= 0 object k
        self.full: list[int] = []  # drawn pixels (inside or outside the image) per object
        self.vis: list[int] = []  # currently visible pixels per object
        self.rect: list[tuple[int, int, int, int]] = []  # clipped patch rect per object

    def _losses(self, m: np.ndarray, x0: int, y0: int) -> dict[int, int] | None:
        """Visible pixels each object would lose under mask ``m`` at (x0, y0); None if that breaks the cap."""
        h, w = m.shape
        under = self.owner[y0 : y0 + h, x0 : x0 + w][m]
        if under.size == 0:
            return {}
        ids, counts = np.unique(under[under >= 0], return_counts=True)
        out = {}
        for k, c in zip(ids.tolist(), counts.tolist()):
            if self.vis[k] - c < self.min_visible * self.full[k]:
                return None
            out[k] = c
        return out

    def try_add(self, m: np.ndarray, x0: int, y0: int, full: int, obj: bool) -> bool:
        if obj and (m.sum() < self.min_visible * full or full < 6):
            return False
        losses = self._losses(m, x0, y0)
        if losses is None:
            return False
        for k, c in losses.items():
            self.vis[k] -= c
        h, w = m.shape
        if obj:
            k = len(self.full)
            self.full.append(int(full))
            self.vis.append(int(m.sum()))
            self.rect.append((x0, y0, x0 + w, y0 + h))
            self.owner[y0 : y0 + h, x0 : x0 + w][m] = k
        else:
            self.owner[y0 : y0 + h, x0 : x0 + w][m] = -2
        return True

    def boxes(self) -> list[tuple[tuple[int, int, int, int], int]]:
        out = []
        for k, (x0, y0, x1, y1) in enumerate(self.rect):
            ys, xs = np.nonzero(self.owner[y0:y1, x0:x1] == k)
            out.append(
                ((x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1), len(xs))
            )
        return out


def render_image(
    spec: SynthSpec, rng: np.random.Generator, first_cls: int | None = None
) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Draw one image (BGR uint8, ``spec.imgsz`` square) and its labelled objects from ``rng``.

    ``first_cls`` forces the class of the first object (which is always placed); ``make_synthetic`` cycles it through
    the classes so every class appears in any split of at least ``len(CLASSES)`` images.
    """
    s = spec.imgsz
    canvas = _background(rng, s)
    scene = _Scene(s, spec.min_visible)

    for _ in range(int(rng.integers(0, spec.max_distractors + 1))):  # clutter below the objects
        alpha, x0, y0, look = _distractor(rng, s, top=False)
        a, cx0, cy0 = _clip_patch(alpha, x0, y0, s)
        if a.size:
            lk = look[cy0 - y0 : cy0 - y0 + a.shape[0], cx0 - x0 : cx0 - x0 + a.shape[1]]
            _composite(canvas, cx0, cy0, a, lk)

    n_obj = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    max_size = spec.max_size_frac * s
    classes: list[int] = []
    for i in range(n_obj):
        cls = first_cls if (i == 0 and first_cls is not None) else int(rng.integers(len(CLASSES)))
        polys0 = _shape(cls, rng)
        for attempt in range(12):
            if rng.random() < 0.6:  # log-uniform (many small objects) mixed with uniform (enough large ones)
                size = math.exp(rng.uniform(math.log(spec.min_size), math.log(max_size)))
            else:
                size = rng.uniform(spec.min_size, max_size)
            if attempt >= 6:  # crowded image: try smaller
                size = max(spec.min_size, size * 0.5)
            ar = math.exp(rng.uniform(-0.35, 0.35))
            th = rng.uniform(0, 2 * np.pi)
            rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
            sc = np.array([ar, 1.0 / ar]) / max(ar, 1.0 / ar) * (size / 2.0)
            ext = size / 2.0 * 1.4142
            if i == 0:  # the first object lies fully inside the image
                lo, hi = min(ext + 1, s / 2), max(s - ext - 1, s / 2)
            else:  # others may be cut by the border (the visibility cap still holds)
                lo, hi = 0.1 * size, s - 0.1 * size
            c = rng.uniform(lo, hi, 2)
            polys = [((p * sc) @ rot.T + c, f) for p, f in polys0]
            alpha, x0, y0 = _raster(polys)
            m_full = alpha >= 128
            full = int(m_full.sum())
            a, cx0, cy0 = _clip_patch(alpha, x0, y0, s)
            if a.size == 0:
                continue
            m = a >= 128
            if not scene.try_add(m, cx0, cy0, full, obj=True):
                continue
            under = canvas[cy0 : cy0 + a.shape[0], cx0 : cx0 + a.shape[1]][m].mean(0) if m.any() else np.full(3, 128.0)
            color = _contrasting_color(rng, under)
            _composite(canvas, cx0, cy0, a, _object_look(rng, a, color))
            classes.append(cls)
            break

    for _ in range(int(rng.integers(0, spec.max_distractors // 2 + 1))):  # thin clutter on top
        alpha, x0, y0, look = _distractor(rng, s, top=True)
        a, cx0, cy0 = _clip_patch(alpha, x0, y0, s)
        if a.size and scene.try_add(a >= 128, cx0, cy0, 0, obj=False):
            lk = look[cy0 - y0 : cy0 - y0 + a.shape[0], cx0 - x0 : cx0 - x0 + a.shape[1]]
            _composite(canvas, cx0, cy0, a, lk)

    # camera-ish nuisances
    if rng.random() < 0.3:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.4, 0.9))
    sigma = rng.uniform(0, 6)
    if sigma > 0.5:
        canvas = canvas + rng.normal(0, sigma, canvas.shape).astype(np.float32)
    img = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)

    objs = [
        SyntheticObject(cls=c, box=box, area=area, visible=area / full)
        for c, (box, area), full in zip(classes, scene.boxes(), scene.full)
    ]
    return img, objs


# ----------------------------------------------------------------------------------------------------------------------
# Dataset


def _stem(image_id: int) -> str:
    return f"{image_id:012d}"


def _split_ids(spec: SynthSpec) -> dict[str, range]:
    return {"train": range(1, spec.n_train + 1), "val": range(spec.n_train + 1, spec.n_train + spec.n_val + 1)}


def _yolo_line(o: SyntheticObject, s: int) -> str:
    x0, y0, x1, y1 = o.box
    return f"{o.cls} {(x0 + x1) / 2 / s:.6f} {(y0 + y1) / 2 / s:.6f} {(x1 - x0) / s:.6f} {(y1 - y0) / s:.6f}"


def _resolve_spec(preset: str, overrides: dict) -> SynthSpec:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    known = {f.name for f in fields(SynthSpec)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise TypeError(f"unknown override(s) {bad}; known: {sorted(known)}")
    if "jpeg_quality" in overrides:
        overrides = {**overrides, "jpeg_quality": tuple(overrides["jpeg_quality"])}
    return replace(PRESETS[preset], **overrides).validate()


def _stamp_payload(preset: str, seed: int, spec: SynthSpec) -> dict:
    return {
        "generator": "gor_det.data.synthetic",
        "version": GENERATOR_VERSION,
        "preset": preset,
        "seed": int(seed),
        "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()},
        "opencv": cv2.__version__,
    }


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_complete(root: str | os.PathLike, preset: str = "tiny", seed: int = 0, **overrides) -> bool:
    """True when ``root`` holds a finished dataset made with exactly this preset, seed and overrides."""
    root = Path(root)
    spec = _resolve_spec(preset, overrides)
    stamp = _read_stamp(root)
    want = _stamp_payload(preset, seed, spec)
    if not stamp or not stamp.get("complete"):
        return False
    if any(stamp.get(k) != want[k] for k in ("generator", "version", "preset", "seed", "spec")):
        return False
    if not (root / "data.yaml").is_file():
        return False
    for split, ids in _split_ids(spec).items():
        for d, ext in (("images", ".jpg"), ("labels", ".txt")):
            folder = root / d / split
            if len(ids) and not (folder / f"{_stem(ids[-1])}{ext}").is_file():
                return False
            if folder.is_dir() and sum(1 for _ in folder.glob(f"*{ext}")) != len(ids):
                return False
    return (root / "annotations" / "instances_val.json").is_file()


_MANAGED = ("images/train", "images/val", "labels/train", "labels/val", "annotations", "data.yaml")


def _coco_dict(split: str, spec: SynthSpec, records: list[tuple[int, list[SyntheticObject]]]) -> dict:
    images, anns = [], []
    for image_id, objs in records:
        images.append(
            {"id": image_id, "file_name": f"{_stem(image_id)}.jpg", "width": spec.imgsz, "height": spec.imgsz}
        )
        for o in objs:
            x0, y0, x1, y1 = o.box
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": o.cls + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": o.area,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"gor_det synthetic shapes ({split})", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
    }


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_synthetic(
    root: str | os.PathLike, preset: str = "tiny", seed: int = 0, *, force: bool = False, **overrides
) -> Path:
    """Generate (or reuse) the synthetic benchmark under ``root``; return the path of its ``data.yaml``.

    ``overrides`` replace fields of the preset's :class:`SynthSpec` (e.g. ``n_train=100, imgsz=256``). If ``root``
    already holds a complete dataset made with the same preset, seed and overrides (``.synthetic_stamp.json``), nothing
    is rewritten. Otherwise the stamp is marked incomplete, the managed paths (``images/{train,val}``,
    ``labels/{train,val}``, ``annotations``, ``data.yaml`` and Ultralytics' ``labels/*.cache``) are replaced, and the
    stamp is marked complete last, so an interrupted run is never taken for a finished one. A non-empty root that
    holds those paths but no stamp is refused (``FileExistsError``) unless ``force=True``; ``force`` also regenerates
    a complete dataset. Generation holds an exclusive lock on ``root/.synthetic.lock`` (POSIX ``flock``) and re-checks
    the stamp once it has the lock, so processes started together on one root (e.g. two bench runs) generate it once
    and never delete files another one is reading.

    Raises ``ValueError`` for an unknown preset or invalid spec, ``TypeError`` for unknown overrides and ``OSError``
    when ``root`` cannot be written.
    """
    spec = _resolve_spec(preset, overrides)
    root = Path(root).expanduser().resolve()
    data_yaml = root / "data.yaml"
    if not force and is_complete(root, preset, seed, **overrides):
        return data_yaml

    root.mkdir(parents=True, exist_ok=True)
    if not os.access(root, os.W_OK):
        raise PermissionError(f"{root} is not writable")
    if _read_stamp(root) is None and not force and any((root / p).exists() for p in _MANAGED):
        raise FileExistsError(
            f"{root} holds a dataset that gor_det did not generate; pass force=True (CLI: --force) to overwrite it"
        )

    with _exclusive(root / LOCK_NAME):
        if not force and is_complete(root, preset, seed, **overrides):  # another process made it while we waited
            return data_yaml
        _generate(root, preset, seed, spec)
    return data_yaml


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the ``with`` block; blocks until free.
    Where ``fcntl`` does not exist (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _generate(root: Path, preset: str, seed: int, spec: SynthSpec) -> None:
    """Replace the managed paths of ``root`` by the dataset of ``spec`` and ``seed``, stamp marked complete last."""
    stamp = _stamp_payload(preset, seed, spec)
    _write_text(root / STAMP_NAME, json.dumps({**stamp, "complete": False}, indent=1))
    for p in _MANAGED:
        q = root / p
        if q.is_dir():
            shutil.rmtree(q)
        elif q.exists():
            q.unlink()
    for cache in (root / "labels").glob("*.cache") if (root / "labels").is_dir() else ():
        cache.unlink()
    (root / "annotations").mkdir()

    nc = len(CLASSES)
    for split, ids in _split_ids(spec).items():
        img_dir, lbl_dir = root / "images" / split, root / "labels" / split
        img_dir.mkdir(parents=True)
        lbl_dir.mkdir(parents=True)
        records = []
        for j, image_id in enumerate(ids):
            rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], image_id, spec.imgsz])
            img, objs = render_image(spec, rng, first_cls=j % nc)
            q = int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1))
            if not cv2.imwrite(str(img_dir / f"{_stem(image_id)}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, q]):
                raise OSError(f"cannot write {img_dir / _stem(image_id)}.jpg")
            (lbl_dir / f"{_stem(image_id)}.txt").write_text("".join(_yolo_line(o, spec.imgsz) + "\n" for o in objs))
            records.append((image_id, objs))
        _write_text(
            root / "annotations" / f"instances_{split}.json",
            json.dumps(_coco_dict(split, spec, records), separators=(",", ":")),
        )

    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    _write_text(
        root / "data.yaml",
        f"# gor_det synthetic shapes benchmark: preset={preset} seed={seed} (gor_det.data.synthetic)\n"
        f"path: {json.dumps(str(root))}\n"
        "train: images/train\n"
        "val: images/val\n"
        f"nc: {nc}\n"
        f"names:\n{names}\n"
        "coco_json: annotations/instances_val.json\n",
    )
    _write_text(root / STAMP_NAME, json.dumps({**stamp, "complete": True}, indent=1))
