"""Evaluate any artefact (FP .pt, QAT .pt, ONNX, NCNN, TensorRT engine) by one protocol: gor_det.eval (pycocotools).

Loading is here because a ``.pt`` needs Ultralytics' ``load_checkpoint``; the runtimes for exported files come from
``gor_det.export`` (imported lazily); the pre/post-processing and scoring are ``gor_det.eval``'s, shared by all.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from torch import nn

from gor_det.config import ConfigError
from gor_det.eval import evaluate_backend


def load_model(path: str | Path) -> nn.Module:
    """Load an Ultralytics/gor_det checkpoint as a float32 eval-mode module (QAT fake quant stays active)."""
    from ultralytics.nn.tasks import load_checkpoint

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model file not found: {p}")
    try:
        model, _ = load_checkpoint(str(p))
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"{p} is not a loadable Ultralytics/gor_det checkpoint: {type(e).__name__}: {first}") from None
    return model.float().eval()


def backend_for(path: str | Path, device: str = "cpu"):
    """Pick the runtime from the artefact: ``.pt`` (PyTorch), ``.onnx`` (ONNX Runtime), an NCNN folder or ``.param``
    (ncnn; INT8 when the param marks int8 convs), ``.engine`` (TensorRT).

    Returns ``(backend, names or None, imgsz)``: ``imgsz`` is the size the artefact was trained or exported at
    (:func:`imgsz_of`; a ``.pt`` is loaded once for both)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"model file not found: {p}")
    from gor_det.export.runtimes import TorchBackend, load_backend

    if p.suffix == ".pt":
        model = load_model(p)
        return TorchBackend(model.to(device), device), getattr(model, "names", None), train_imgsz(model)
    try:
        return load_backend(p), None, imgsz_of(p)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None


def coco_json_of(data_yaml: str | Path) -> Path | None:
    """The ``coco_json`` entry of a dataset yaml (gor_det's synthetic sets) resolved against its ``path``."""
    data = yaml.safe_load(Path(data_yaml).read_text()) or {}
    if not data.get("coco_json"):
        return None
    root = Path(data.get("path") or Path(data_yaml).parent)
    return (root / data["coco_json"]).resolve()


def evaluate_artifact(
    model_path: str | Path,
    data: str | Path,
    imgsz: int | None,
    out_dir: str | Path,
    ann_json: str | Path | None = None,
    batch: int = 8,
    device: str = "cpu",
) -> dict:
    """COCO metrics of one artefact on ``data``'s val split; writes predictions.json and metrics.json to out_dir.
    ``imgsz=None``: the artefact's own training/export size (:func:`imgsz_of`). The returned dict has ``imgsz``."""
    data = Path(data)
    if not data.exists():
        raise ConfigError(f"data not found: {data}")
    ann = Path(ann_json) if ann_json else coco_json_of(data)
    if ann is None or not ann.is_file():
        raise ConfigError(f"no COCO annotation json: pass --ann (e.g. annotations/instances_val2017.json); got {ann}")
    backend, names, own_imgsz = backend_for(model_path, device)
    imgsz = imgsz or own_imgsz
    if names is None:
        names = (yaml.safe_load(data.read_text()) or {}).get("names") if data.suffix in (".yaml", ".yml") else None
    # exported models have a fixed batch of 1; PyTorch batches freely
    b = batch if Path(model_path).suffix == ".pt" else 1
    metrics = evaluate_backend(backend, data, ann, imgsz, out_dir, names=names, batch=b)
    metrics["model"], metrics["imgsz"] = str(model_path), int(imgsz)
    return metrics


def ultralytics_val(model_path: str | Path, data: str | Path, imgsz: int, out_dir: str | Path) -> dict:
    """Ultralytics' own val on the same model and data (its metric code, not pycocotools), for the cross-check."""
    from ultralytics import YOLO

    r = YOLO(str(model_path)).val(data=str(data), imgsz=imgsz, batch=8, device="cpu", plots=False, verbose=False,
                                  project=str(Path(out_dir).parent), name=Path(out_dir).name, exist_ok=True)
    return {"mAP50-95": float(r.box.map), "mAP50": float(r.box.map50)}


def write_json(obj, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2))


def train_imgsz(model, default: int = 640) -> int:
    """The imgsz a loaded model was trained at (``model.args``, set from the checkpoint's ``train_args``)."""
    args = getattr(model, "args", None) or {}
    sz = args.get("imgsz", default) if isinstance(args, dict) else getattr(args, "imgsz", default)
    return int(sz[0] if isinstance(sz, (list, tuple)) else sz)


def imgsz_of(model_path: str | Path, default: int = 640) -> int:
    """The imgsz an artefact was trained/exported at: a .pt's train_args, else the export folder's ``export.json``."""
    p = Path(model_path)
    if p.suffix == ".pt" and p.is_file():
        try:
            return train_imgsz(load_model(p), default)
        except ConfigError:
            return default
    side = p.parent / "export.json"
    if side.is_file():
        return int(json.loads(side.read_text()).get("imgsz", default))
    return default


def results_table(rows: list[dict], command: str) -> str:
    """Markdown table of evaluate_artifact results, with the command, machine and date that produced it."""
    import os
    import platform
    from datetime import date

    lines = ["| model | imgsz | mAP50-95 | mAP50 | mAP75 | AR100 | Ultralytics val mAP50-95 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ul = r.get("ultralytics", {}).get("mAP50-95")
        lines.append(f"| {r['model']} | {r['imgsz']} | {r['mAP50-95']:.4f} | {r['mAP50']:.4f} | {r['mAP75']:.4f} | "
                     f"{r['AR100']:.4f} | {'-' if ul is None else f'{ul:.4f}'} |")
    lines += ["", f"Command: `{command}`  ", f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores  ",
              f"Date: {date.today()}", ""]
    return "\n".join(lines)
