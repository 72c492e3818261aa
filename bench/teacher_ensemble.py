"""How good is a teacher ensemble as a detector? COCO mAP of each teacher alone and of their fused head outputs.

EKD distils the student towards the teachers' *combined* prediction (``distill.ensemble: mean_target``) or towards
each of them (``mean_loss``). Whether a second teacher can help is bounded by whether the combination is a better
detector than the best teacher alone. This script scores, by the official protocol (pycocotools, gor_det.eval):

* each teacher alone;
* ``mean``: per anchor, the mean of the teachers' class probabilities and decoded boxes (what ``mean_target``
  distils to: the mean of DFL bin distributions has the mean expected distance);
* ``conf``: per anchor, weights proportional to each teacher's confidence ``max_c p_c`` (``distill.ensemble:
  conf_target``);
* ``static W``: fixed per-teacher weights ``W`` (e.g. ``--static 0.75``: 0.75 / 0.25 for two teachers).

All teachers must share the student's input size and strides (the same anchors), as the Distiller requires.

    python bench/teacher_ensemble.py --teachers research/out/synthetic/teacher_v8s/seed0/weights/best.pt \
        research/out/synthetic/teacher_v11s/seed0/weights/best.pt --data-seed 1 --static 0.75 0.6

``--data-seed K`` scores on a freshly generated split of the benchmark preset (seed K: images the teachers never
saw and the benchmark's val split does not contain), so choosing a fusion rule here does not look at the val set
the student rows are scored on. With real data, ``--data coco.yaml --ann instances_val2017.json`` (best: images that
neither the teachers trained on nor the student will be judged on). Prints a markdown table with the command,
machine and date.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gor_det.config import ConfigError  # noqa: E402
from gor_det.data.synthetic import make_synthetic  # noqa: E402
from gor_det.distill import ensemble_weights  # noqa: E402
from gor_det.engine.evaluate import coco_json_of, load_model, train_imgsz  # noqa: E402
from gor_det.eval import evaluate_backend  # noqa: E402


def fresh_split(seed: int, n_val: int = 300) -> Path:
    """``data.yaml`` of a freshly generated split of the bench preset (``seed``; its val split holds ``n_val``
    images, its train split one), under the temp dir; reused when already complete."""
    root = Path(tempfile.gettempdir()) / f"gor_det_synth_bench_seed{seed}_val{n_val}"
    return make_synthetic(root, preset="bench", seed=seed, n_train=1, n_val=n_val)


def fuse(decoded: list[torch.Tensor], rule: str, static: list[float] | None = None) -> torch.Tensor:
    """Fuse decoded head outputs ``(B, 4 + nc, A)`` (xywh pixels, class probabilities) of several teachers per anchor.

    ``mean``: plain mean; ``conf``: weights ``c_i / sum_j c_j`` with ``c_i = max_c p_i``; ``static``: the given
    per-teacher weights (normalised)."""
    y = torch.stack(decoded, 0)  # (T, B, 4 + nc, A)
    if rule == "mean":
        return y.mean(0)
    if rule == "conf":
        c = y[:, :, 4:].amax(2, keepdim=True)  # (T, B, 1, A)
        w = c / c.sum(0, keepdim=True).clamp_min(1e-12)
    elif rule == "static":
        w = torch.tensor(ensemble_weights(len(decoded), static), dtype=y.dtype).view(-1, 1, 1, 1)
    else:
        raise ValueError(rule)
    return (w * y).sum(0)


class EnsembleBackend:
    """gor_det.eval backend: runs every teacher, fuses their decoded outputs with :func:`fuse`."""

    def __init__(self, models, rule: str, static: list[float] | None = None):
        self.models, self.rule, self.static = models, rule, static

    @torch.no_grad()
    def __call__(self, images) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
        outs = [m(x)[0].float() for m in self.models]
        return fuse(outs, self.rule, self.static).numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teachers", nargs="+", required=True, help="teacher .pt checkpoints (same classes, same strides)")
    ap.add_argument("--data", default=None, help="a dataset yaml with coco_json (default: a fresh bench split)")
    ap.add_argument("--ann", default=None, help="COCO annotation json of --data's val split (default: the yaml's "
                    "coco_json, as gor_det's synthetic sets have)")
    ap.add_argument("--data-seed", type=int, default=1, help="seed of the generated split when --data is not given")
    ap.add_argument("--n-val", type=int, default=300, help="images of the generated split")
    ap.add_argument("--static", nargs="*", type=float, default=[], help="first teacher's weight(s) for 'static' rows")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = args.data if args.data is not None else fresh_split(args.data_seed, args.n_val)
    ann = args.ann or coco_json_of(data)
    if ann is None or not Path(ann).is_file():
        raise SystemExit(f"error: no COCO annotation json for {data}: pass --ann (e.g. instances_val2017.json)")
    try:
        models = [load_model(p) for p in args.teachers]
    except ConfigError as e:  # a missing or unloadable teacher: one line, not a stack trace
        raise SystemExit(f"error: {e}") from None
    imgsz = train_imgsz(models[0])
    names = models[0].names
    rows = []
    out = Path(tempfile.mkdtemp(prefix="teacher_ensemble_"))
    for i, (p, m) in enumerate(zip(args.teachers, models)):
        met = evaluate_backend(EnsembleBackend([m], "mean"), data, ann, imgsz, out / f"t{i}", names=names, batch=16)
        rows.append((f"teacher {i}: {p}", met))
    if len(models) > 1:
        rules = [("mean", None), ("conf", None)]
        if len(models) == 2:
            rules += [("static", [w, 1 - w]) for w in args.static]
        for rule, w in rules:
            met = evaluate_backend(EnsembleBackend(models, rule, w), data, ann, imgsz, out / f"{rule}{w}", names=names,
                                   batch=16)
            label = rule if w is None else f"static {w[0]:g} / {w[1]:g}"
            rows.append((f"ensemble: {label}", met))
    print("| model | mAP50-95 | mAP50 | AR100 |\n|---|---|---|---|")
    for label, met in rows:
        print(f"| {label} | {met['mAP50-95']:.4f} | {met['mAP50']:.4f} | {met['AR100']:.4f} |")
    print(f"\nCommand: `python bench/teacher_ensemble.py {' '.join(sys.argv[1:] if argv is None else argv)}`  ")
    print(f"Data: {data} ({args.n_val if args.data is None else 'given'} images)  ")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores  \nDate: {date.today()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
