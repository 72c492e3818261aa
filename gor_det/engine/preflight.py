"""Every check that can fail the start of a run, done before Ultralytics touches the run folder.

Ultralytics' ``BaseTrainer.__init__`` creates ``project/name``, writes ``args.yaml`` there and, for a new run, deletes
that folder's ``results.csv``; a bad teacher or dataset only surfaces later (model setup, dataloader build), by which
time a previous run's results in the same folder (``exist_ok: true``) are gone. :func:`preflight` resolves the run's
arguments the way the trainer will and checks them first, each problem as one :class:`ConfigError` line naming the
problem and the fix; it writes nothing and leaves the random state alone (teachers built from a YAML are only
checked, not built: building one draws random weights).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ultralytics.cfg import get_cfg
from ultralytics.utils import DEFAULT_CFG

from gor_det.config import ConfigError, GorCfg

IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}


@dataclass
class Checked:
    """What :func:`preflight` resolved: the dataset dict (``check_det_dataset``) and, when every teacher is a
    checkpoint, the teachers already loaded and class-mapped (the trainer reuses them instead of loading them again)."""

    data: dict
    teachers: Any = None  # gor_det.engine.teachers.TeacherSet | None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def resolve_args(cfg=DEFAULT_CFG, overrides: dict | None = None):
    """The trainer's arguments (``get_cfg``), with Ultralytics' own type and range checks as one-line errors."""
    try:
        return get_cfg(cfg, dict(overrides or {}))
    except (TypeError, ValueError, SyntaxError, KeyError) as e:
        raise ConfigError(_first_line(e)) from None


def check_numbers(args) -> None:
    """``epochs`` and ``batch`` within what a training run can use (Ultralytics checks only their types)."""
    if not args.time and args.epochs < 1:
        raise ConfigError(f"epochs={args.epochs} is out of range; use >= 1 (the number of training epochs)")
    b = args.batch
    if not (b == -1 or 0 < b < 1 or (b >= 1 and float(b).is_integer())):
        raise ConfigError(f"batch={b} is out of range; use an integer >= 1 (images per batch), -1 (AutoBatch, "
                          "60% of GPU memory) or a fraction 0 < batch < 1 (AutoBatch at that share of GPU memory)")


def check_device(device) -> None:
    """A requested CUDA device exists (``select_device`` raises a multi-line ValueError otherwise)."""
    from ultralytics.utils.torch_utils import parse_device

    text = str(device if device is not None else "")
    if "-1" in text:  # auto-selects an idle GPU, or the CPU when there is none
        return
    d = parse_device(device)
    if d in {"", "cpu", "mps", "mps:0"} or d.startswith(("npu", "xpu")):
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    bad = [x for x in d.split(",") if not (x.isdigit() and int(x) < n)]
    if bad:
        have = f"CUDA GPUs 0..{n - 1}" if n else "no CUDA GPU (torch.cuda.is_available() is False)"
        fix = "device=cpu" + (f" or a GPU index below {n}" if n else "")
        raise ConfigError(f"device={device} asks for CUDA GPU {','.join(bad)}, but this machine has {have}: use {fix}")


def resolve_data_file(data: str) -> str:
    """A local dataset yaml, or one of Ultralytics' built-in dataset yamls (``coco.yaml``, ``coco8.yaml``: found
    in the installed ``ultralytics/cfg/datasets`` without any download)."""
    from ultralytics.utils.checks import check_file

    if "://" in data:
        raise ConfigError(f"data={data} is a URL; nothing is downloaded: pass a local dataset yaml")
    if Path(data).exists():
        return data
    cand = [data] if Path(data).suffix in {".yaml", ".yml"} else [f"{data}.yaml", f"{data}.yml"]
    for c in cand:
        try:
            found = check_file(c, hard=False)
        except Exception:
            found = ""
        if found and Path(found).exists():
            return data
    raise ConfigError(
        f"data not found: {data} (not a local file and not one of Ultralytics' built-in dataset yamls; nothing is "
        "downloaded: generate the synthetic set with `gor-det synth --preset demo --out "
        "datasets/synth_demo` or point data= at a local yaml)"
    )


def local_data_yaml(data: str | Path) -> Path:
    """A dataset yaml that gor_det's own readers (evaluation, calibration images) can take as it is: ``data`` when it
    is a local file; for one of Ultralytics' built-in names (``coco.yaml``) the yaml Ultralytics resolves, its
    ``path`` / ``train`` / ``val`` made absolute against ``yolo settings datasets_dir`` exactly as Ultralytics resolves
    them, written once to ``<Ultralytics config dir>/gor_det_data/<name>`` (nothing is downloaded). ConfigError (one
    line) when it is neither, or when its images are missing."""
    import yaml

    if Path(data).is_file():
        return Path(data)
    d = check_dataset(str(data))
    from ultralytics.utils import USER_CONFIG_DIR

    out = Path(USER_CONFIG_DIR) / "gor_det_data" / Path(str(data)).name
    out = out if out.suffix in (".yaml", ".yml") else out.with_suffix(".yaml")
    keep = {k: d[k] for k in ("path", "train", "val", "test", "names", "nc", "coco_json") if d.get(k) is not None}
    keep = {k: str(v) if isinstance(v, Path) else v for k, v in keep.items()}
    text = yaml.safe_dump(keep, sort_keys=False)
    if not out.is_file() or out.read_text() != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    return out


def _has_images(folder: Path) -> bool:
    for _root, _dirs, files in os.walk(folder):
        if any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files):
            return True
    return False


def check_dataset(data: str, split: str = "val") -> dict:
    """Ultralytics' dataset check without its download fallback, plus the train images (it checks only val)."""
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import DATASETS_DIR, SETTINGS_FILE

    resolve_data_file(str(data))
    settings = (f"relative dataset paths resolve against Ultralytics' datasets_dir {DATASETS_DIR} "
                f"(`yolo settings datasets_dir=/path/to/datasets`, {SETTINGS_FILE})")
    try:
        d = check_det_dataset(str(data), autodownload=False, split=split)
    except FileNotFoundError as e:
        raise ConfigError(f"{_first_line(e)} (nothing is downloaded: put the images there in Ultralytics' layout; "
                          f"{settings})") from None
    except Exception as e:
        raise ConfigError(f"dataset {data} is not a valid Ultralytics data yaml: {_first_line(e)}") from None
    for key in ("train", split):
        for p in d[key] if isinstance(d[key], list) else [d[key]]:
            p = Path(p)
            if not p.exists():
                raise ConfigError(f"dataset {data}: {key} images not found, missing path '{p}' (nothing is "
                                  f"downloaded: put the images there in Ultralytics' layout; {settings})")
            if p.is_dir() and not _has_images(p):
                raise ConfigError(f"dataset {data}: no images in {p} ({key} split; image suffixes: "
                                  f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return d


def check_checkpoint(path: str | Path, what: str) -> dict:
    """Load a ``.pt`` on the CPU (a text, empty or truncated file fails here, in one line); return its dict."""
    from ultralytics.utils.patches import torch_load

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p} (must be a local .pt; nothing is downloaded)")
    try:
        ckpt = torch_load(str(p), map_location="cpu")
    except Exception as e:
        raise ConfigError(f"{what} {p} could not be loaded ({type(e).__name__}: {_first_line(e)}): it is not a "
                          "complete PyTorch checkpoint (empty, truncated or another kind of file)") from None
    if not isinstance(ckpt, dict) or (ckpt.get("ema") is None and ckpt.get("model") is None):
        raise ConfigError(f"{what} {p} holds no model (expected an Ultralytics/gor_det checkpoint with 'model' or "
                          "'ema')")
    return ckpt


def check_resume(path) -> dict:
    """A resumable checkpoint: loadable, with optimizer state and epochs left; return its ``train_args``."""
    if path is True or str(path).lower() == "true":
        raise ConfigError("resume=True needs the checkpoint: pass resume=runs/<name>/weights/last.pt")
    ckpt = check_checkpoint(path, "resume checkpoint")
    args = dict(ckpt.get("train_args") or {})
    epochs = int(args.get("epochs") or 0)
    start = int(ckpt.get("epoch", -1)) + 1
    if ckpt.get("optimizer") is None or not 0 < start < epochs:
        done = "finished" if ckpt.get("optimizer") is None or start >= epochs else "not resumable"
        raise ConfigError(
            f"{path} is a {done} run ({epochs} epochs trained; a finished run's checkpoint keeps no optimizer "
            f"state), nothing to resume: to train it further start a new run from it, "
            f"`python tools/train_det.py --cfg <your run cfg> model={path} epochs=<more>`"
        )
    return args


def check_model(model: str) -> None:
    """The student: a loadable local ``.pt`` or a model YAML (local or bundled with Ultralytics)."""
    if not model:
        raise ConfigError("no 'model' given: set model: yolov8n.yaml (random init) or a local .pt checkpoint")
    if model.endswith(".pt"):
        check_checkpoint(model, "student model")
    elif model.endswith((".yaml", ".yml")) and not Path(model).is_file():
        from gor_det.engine.teachers import _is_builtin_yaml

        if not _is_builtin_yaml(model):
            raise ConfigError(f"student model YAML not found: {model} (a local file or one bundled with Ultralytics, "
                              "e.g. yolov8n.yaml)")


def check_teachers(gor: GorCfg, names):
    """Every teacher: a checkpoint is loaded and its classes mapped to the student's (returned as a loaded
    TeacherSet when all teachers are checkpoints); a YAML teacher's file and weights are checked, not built."""
    from gor_det.engine.teachers import TeacherSet, _is_builtin_yaml

    is_yaml = [Path(t.model).suffix in (".yaml", ".yml") for t in gor.teachers]
    for i, (t, y) in enumerate(zip(gor.teachers, is_yaml)):
        where = f"gor.teachers[{i}].model"
        if not t.model:
            raise ConfigError(f"gor.teachers[{i}] has no 'model' (a local .pt, or a YAML with weights)")
        if y:
            if not Path(t.model).is_file() and not _is_builtin_yaml(t.model):
                raise ConfigError(f"teacher model YAML not found: {t.model} ({where})")
            if t.weights:
                check_checkpoint(t.weights, f"teacher weights (gor.teachers[{i}].weights)")
        elif not Path(t.model).is_file():
            raise ConfigError(f"teacher checkpoint not found: {t.model} ({where} must be a local .pt; nothing is "
                              "downloaded - train one first, e.g. `python tools/train_det.py --cfg cfg/demo_teacher.yaml`)")
        elif any(is_yaml):  # mixed with YAML teachers: the trainer loads the set itself, check this one alone
            check_checkpoint(t.model, "teacher checkpoint")
    if any(is_yaml):
        return None
    teachers = TeacherSet(gor.teachers, names)
    teachers.models  # noqa: B018  (loads every teacher and maps its classes: one ConfigError line on a bad one)
    return teachers


def preflight(gor: GorCfg, cfg=DEFAULT_CFG, overrides: dict | None = None) -> Checked:
    """Check a run's inputs as the trainer will resolve them; raise ConfigError (one line) on the first problem."""
    overrides = dict(overrides or {})
    args = resolve_args(cfg, overrides)
    if args.resume:  # the run continues with its checkpoint's arguments (Ultralytics' check_resume)
        ckpt_args = check_resume(args.resume)
        for k in ("data", "device", "batch", "imgsz", "workers"):
            if overrides.get(k) is not None:
                ckpt_args[k] = overrides[k]
        args = resolve_args({k: v for k, v in ckpt_args.items() if k != "resume"})
    else:
        check_model(str(args.model or ""))
    check_numbers(args)
    check_device(args.device)
    if not args.data:
        raise ConfigError("no 'data' given: set data: path/to/data.yaml (make one with tools/make_synthetic.py)")
    data = check_dataset(str(args.data), split=args.split or "val")
    names = {0: "item"} if args.single_cls else data["names"]
    teachers = check_teachers(gor, names) if gor.distilling else None
    return Checked(data=data, teachers=teachers)
