"""Evaluate any artefact (FP .pt, QAT .pt, ONNX, NCNN, TensorRT engine) by one protocol: gor_det.eval (pycocotools).

Loading is here because a ``.pt`` needs Ultralytics' ``load_checkpoint``; the runtimes for exported files come from
``gor_det.export`` (imported lazily); the pre/post-processing and scoring are ``gor_det.eval``'s, shared by all.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import nn

from gor_det.config import ConfigError
from gor_det.eval import DatasetMismatch, evaluate_backend, image_files, load_coco, split_image_ids

_TRT_SUFFIXES = (".engine", ".plan", ".trt")  # TensorRT engines (gor_det.export.load_backend)


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


def default_device() -> str:
    """Ultralytics' default: the first GPU (``"0"``) when torch sees one, else ``"cpu"``."""
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def torch_device(spec) -> str:
    """An Ultralytics-style device (``cpu``, ``0``, ``0,1``, ``cuda:1``, ``mps``) as a torch device string
    (``cpu``, ``cuda:0``, ...; evaluation runs on the first of several GPUs). A GPU that is not there is a ConfigError."""
    import torch

    s = str(spec).strip().lower()
    if s in ("cpu", "mps"):
        return s
    idx = (s.partition(":")[2] or "0") if s.startswith("cuda") else s.split(",")[0].strip()
    if not idx.isdigit():
        raise ConfigError(f"device {spec!r} is not a device: use cpu, 0 (the first GPU), 0,1 or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asks for a GPU, but torch sees no CUDA device here: use --device cpu")
    if int(idx) >= torch.cuda.device_count():
        raise ConfigError(f"device {spec!r}: there is no GPU {idx} (torch sees {torch.cuda.device_count()}); "
                          f"use 0..{torch.cuda.device_count() - 1}")
    return f"cuda:{idx}"


def backend_for(path: str | Path, device: str = "cpu"):
    """Pick the runtime from the artefact: ``.pt`` (PyTorch on ``device``, a torch device string), ``.onnx`` (ONNX
    Runtime, CPU), an NCNN folder or ``.param`` (ncnn, CPU; INT8 when the param marks int8 convs), ``.engine``
    (TensorRT, on ``device`` when that is a GPU, else GPU 0).

    Returns ``(backend, names or None, imgsz)``: ``imgsz`` is the size the artefact was trained or exported at
    (:func:`imgsz_of`; a ``.pt`` is loaded once for both)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"model file not found: {p}")
    from gor_det.export.runtimes import TorchBackend, load_backend

    if p.suffix == ".pt":
        model = load_model(p)
        return TorchBackend(model.to(device), device), getattr(model, "names", None), train_imgsz(model)
    kwargs = {"device": int(device.partition(":")[2] or 0)} if p.suffix in _TRT_SUFFIXES and "cuda" in device else {}
    try:
        return load_backend(p, **kwargs), None, imgsz_of(p)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None


def coco_json_of(data_yaml: str | Path) -> Path | None:
    """The ``coco_json`` entry of a dataset yaml (gor_det's synthetic sets) resolved against its ``path`` (the
    images' rule, :func:`gor_det.eval.image_files`: absolute, or relative to the cwd, else to the yaml's folder)."""
    data = yaml.safe_load(Path(data_yaml).read_text()) or {}
    if not data.get("coco_json"):
        return None
    root = Path(data.get("path") or Path(data_yaml).parent)
    if not root.is_absolute() and not root.exists():
        root = Path(data_yaml).parent / root
    return (root / data["coco_json"]).resolve()


@dataclass
class EvalSet:
    """A checked evaluation split: its images, their COCO annotation (a loaded ``pycocotools.COCO`` covering every
    image) and the dataset's class names (None for an image folder)."""

    data: Path
    ann: Path
    gt: object
    images: list[Path]
    names: list[str] | None
    split: str = "val"


def _load_data_yaml(data: Path) -> dict:
    try:
        d = yaml.safe_load(data.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"dataset yaml {data} is not valid YAML ({first}); pass an Ultralytics dataset yaml") from None
    if not isinstance(d, dict):
        raise ConfigError(f"dataset yaml {data} must hold a mapping (path, train, val, names), got {type(d).__name__}")
    return d


def data_names(d: dict) -> list[str] | None:
    """The class names of a dataset yaml mapping (``names`` as a list or ``{index: name}``; else ``nc`` numbers)."""
    names = d.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    return [str(i) for i in range(int(d["nc"]))] if isinstance(d.get("nc"), int) else None


def check_eval_set(data: str | Path, ann_json: str | Path | None = None, split: str = "val") -> EvalSet:
    """Check everything an evaluation reads before any model runs: the dataset yaml (or image folder), its
    ``split`` images, the COCO annotation json (``ann_json``, else the yaml's ``coco_json``: present, JSON, COCO,
    covering every image). Each problem is a one-line ConfigError naming the fix."""
    if not Path(data).exists():  # Ultralytics' built-in names (coco.yaml) resolve under its datasets_dir
        from gor_det.engine.preflight import local_data_yaml

        data = local_data_yaml(data)
    data = Path(data)
    is_yaml = data.suffix.lower() in (".yaml", ".yml")
    d = _load_data_yaml(data) if is_yaml else {}
    if is_yaml and not d.get(split):
        raise ConfigError(f"dataset yaml {data} has no '{split}' entry: add one (e.g. {split}: images/{split})")
    try:
        images = image_files(data, split)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"no {split} images for {data} ({e}): check the yaml's path: and {split}: entries") from None
    ann = Path(ann_json) if ann_json else (coco_json_of(data) if is_yaml else None)
    if ann is None:
        raise ConfigError(f"no COCO annotation json for {data}: pass --ann (e.g. "
                          "datasets/coco/annotations/instances_val2017.json), or add coco_json: to the yaml")
    if not ann.is_file():
        raise ConfigError(f"annotation json not found: {ann} (pass the COCO json of the {split} images with --ann)")
    try:
        gt = load_coco(ann)
    except ValueError as e:
        raise ConfigError(f"{e}: pass the COCO annotation json of the {split} images with --ann") from None
    try:
        split_image_ids(images, gt)
    except DatasetMismatch as e:
        raise ConfigError(f"{e}: pass the annotation json of exactly these {split} images with --ann (COCO val2017: "
                          "annotations/instances_val2017.json)") from None
    return EvalSet(data, ann, gt, images, data_names(d) if is_yaml else None, split)


def check_classes(model_names, eval_set: EvalSet, model_path, trained_on=None) -> None:
    """A model whose class count differs from the dataset's cannot be scored on it: one-line ConfigError."""
    if model_names is None or eval_set.names is None:
        return
    n = len(model_names)
    if n != len(eval_set.names):
        on = f" (it was trained on {trained_on})" if trained_on else ""
        raise ConfigError(f"{model_path} predicts {n} classes but {eval_set.data} has {len(eval_set.names)}: evaluate "
                          f"it on the dataset it was trained on{on}, or pass a model trained on {eval_set.data}")


def run_data(model) -> str | None:
    """The dataset yaml a loaded checkpoint was trained on (``model.args['data']``), or None."""
    args = getattr(model, "args", None) or {}
    d = args.get("data") if isinstance(args, dict) else getattr(args, "data", None)
    return str(d) if d else None


def evaluate_artifact(
    model_path: str | Path,
    data: str | Path,
    imgsz: int | None,
    out_dir: str | Path,
    ann_json: str | Path | None = None,
    batch: int = 8,
    device: str = "cpu",
    eval_set: EvalSet | None = None,
) -> dict:
    """COCO metrics of one artefact on ``data``'s val split; writes predictions.json and metrics.json to out_dir.
    ``imgsz=None``: the artefact's own training/export size (:func:`imgsz_of`). The returned dict has ``imgsz``.
    ``device``: Ultralytics-style (``cpu``, ``0``, ``cuda:1``) for a ``.pt`` or ``.engine``. ``eval_set``: the
    :func:`check_eval_set` of ``data`` / ``ann_json`` when the caller has it (checked once for many artefacts)."""
    es = eval_set or check_eval_set(data, ann_json)
    dev = torch_device(device)
    backend, names, own_imgsz = backend_for(model_path, dev)
    if names is not None:
        names = list(names.values()) if isinstance(names, dict) else list(names)
        check_classes(names, es, model_path, run_data(backend.model))
    imgsz = imgsz or own_imgsz
    # exported models have a fixed batch of 1; PyTorch batches freely
    b = batch if Path(model_path).suffix == ".pt" else 1
    try:
        metrics = evaluate_backend(backend, es.images, es.gt, imgsz, out_dir, names=names or es.names, batch=b)
    except DatasetMismatch as e:
        raise ConfigError(f"{model_path} on {es.data}: {e}: evaluate it on the dataset it was trained on") from None
    metrics["model"], metrics["imgsz"] = str(model_path), int(imgsz)
    return metrics


def ultralytics_val(model_path: str | Path, data: str | Path, imgsz: int, out_dir: str | Path,
                    device: str = "cpu") -> dict:
    """Ultralytics' own val on the same model and data (its metric code, not pycocotools), for the cross-check."""
    from ultralytics import YOLO

    r = YOLO(str(model_path)).val(data=str(data), imgsz=imgsz, batch=8, device=device, plots=False, verbose=False,
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


def machine() -> str:
    """``x86_64 AMD EPYC (AVX2 kernels), 2 CPU cores, torch 2.14.1+cu130, ultralytics 8.4.190``: where a row ran.
    The CPU and the vector ISA torch's kernels use are named because float results, hence trained weights and
    timings, differ between them (research/README.md, "Reproducibility")."""
    import torch
    import ultralytics

    return (f"{platform.machine()} {cpu_model()} ({torch.backends.cpu.get_cpu_capability()} kernels), "
            f"{os.cpu_count()} CPU cores, torch {torch.__version__}, ultralytics {ultralytics.__version__}")


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; elsewhere ``platform.processor()``), or ``unknown CPU``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
