"""Frozen YOLO teachers held outside the student's module tree.

A :class:`TeacherSet` is what the KD criterion calls. It is deliberately *not* an ``nn.Module`` and not reachable from
the student: Ultralytics' trainer would otherwise set ``requires_grad=True`` on every teacher tensor, put them in the
optimizer, flip them to train mode, deep-copy them into the EMA and pickle them into every checkpoint (see
shared notes, "Teacher registered as a sub-module"). Here ``deepcopy`` returns the same object and pickling keeps only
the cfg, so EMA copies, checkpoints and DDP workers never carry teacher weights; they are (re)loaded lazily.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gor_det.config import ConfigError, TeacherCfg


def _names_list(names) -> list[str]:
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names]


def load_detection_model(cfg: TeacherCfg, nc: int | None = None) -> nn.Module:
    """Load one teacher (a local ``.pt``, or a model YAML with optional ``weights``) in float32 eval mode, frozen."""
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    path = Path(cfg.model)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file() and not _is_builtin_yaml(cfg.model):
            raise ConfigError(f"teacher model YAML not found: {cfg.model}")
        model = DetectionModel(cfg.model, nc=nc, verbose=False)
        model.names = None  # placeholder names of a YAML build: the classes are the student's (checked by count)
        if cfg.weights:
            if not Path(cfg.weights).is_file():
                raise ConfigError(f"teacher weights not found: {cfg.weights} (gor.teachers[].weights)")
            weights, _ = load_checkpoint(cfg.weights)
            model.load(weights, verbose=False)
    else:
        if not path.is_file():
            raise ConfigError(
                f"teacher checkpoint not found: {cfg.model} (gor.teachers[].model must be a local .pt; "
                "nothing is downloaded - train one first, e.g. `python tools/train_det.py --cfg cfg/demo_teacher.yaml`)"
            )
        try:
            model, _ = load_checkpoint(str(path))
        except Exception as e:  # a corrupt file must not end in a deep stack trace
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(f"teacher checkpoint {cfg.model} could not be loaded: {type(e).__name__}: {first}") from None
    head = model.model[-1]
    if not hasattr(head, "reg_max") or not hasattr(head, "stride"):
        raise ConfigError(f"teacher {cfg.model} has no Detect head (got {type(head).__name__}); use a detection model")
    model = model.float().eval()
    model.requires_grad_(False)
    return model


def _is_builtin_yaml(name: str) -> bool:
    try:
        from ultralytics.nn.tasks import yaml_model_load

        yaml_model_load(name)
        return True
    except Exception:
        return False


class TeacherSet:
    """The frozen teachers of one run, with the class-index map from each teacher to the student.

    Args:
        cfgs: the ``gor.teachers`` entries.
        student_names: class names of the student (``{i: name}`` or list), used to check/map classes.
    """

    def __init__(self, cfgs: list[TeacherCfg], student_names):
        self.cfgs = list(cfgs)
        self.student_names = _names_list(student_names)
        self._models: list[nn.Module] | None = None
        self._class_index: list[torch.Tensor | None] = []

    # deepcopy (EMA) and pickling (checkpoints, DDP) never copy teacher weights
    def __deepcopy__(self, memo):
        return self

    def __getstate__(self):
        return {"cfgs": self.cfgs, "student_names": self.student_names, "_models": None, "_class_index": []}

    @property
    def models(self) -> list[nn.Module]:
        if self._models is None:
            self._models, self._class_index = [], []
            for cfg in self.cfgs:
                m = load_detection_model(cfg, nc=len(self.student_names))
                self._class_index.append(self._map_classes(cfg, m))
                self._models.append(m)
        return self._models

    def _map_classes(self, cfg: TeacherCfg, model: nn.Module) -> torch.Tensor | None:
        """Return the teacher class index for each student class (None when identical), or raise ConfigError."""
        s_names = self.student_names
        if getattr(model, "names", None) is None:
            if model.model[-1].nc != len(s_names):
                raise ConfigError(f"teacher {cfg.model} has {model.model[-1].nc} classes, the student {len(s_names)}")
            return None
        t_names = _names_list(model.names)
        if cfg.names:
            idx = [None] * len(s_names)
            for t_i, s_i in cfg.names.items():
                if not (0 <= t_i < len(t_names) and 0 <= s_i < len(s_names)):
                    raise ConfigError(f"teacher {cfg.model}: names mapping {t_i}->{s_i} is out of range")
                idx[s_i] = t_i
            missing = [s_names[i] for i, v in enumerate(idx) if v is None]
            if missing:
                raise ConfigError(f"teacher {cfg.model}: names mapping leaves student classes unmapped: {missing}")
            return torch.tensor(idx)
        if t_names == s_names:
            return None
        if set(s_names) <= set(t_names):  # e.g. a COCO teacher for a student on a subset of COCO classes
            return torch.tensor([t_names.index(n) for n in s_names])
        raise ConfigError(
            f"teacher {cfg.model} classes do not match the student's.\n  teacher ({len(t_names)}): {t_names}\n"
            f"  student ({len(s_names)}): {s_names}\n  fix: use a teacher trained on the same data, or give "
            "gor.teachers[].names: {teacher_index: student_index, ...}"
        )

    def feature_channels(self, imgsz: int = 64) -> list[list[int]]:
        """Channels of the maps feeding each teacher's Detect head (P3..P5), read off one tiny forward pass."""
        x = torch.zeros(1, 3, imgsz, imgsz)
        return [[int(f.shape[1]) for f in _feats(y)] for y in self(x)]

    def reg_max(self) -> list[int]:
        return [int(m.model[-1].reg_max) for m in self.models]

    @torch.no_grad()
    def __call__(self, img: torch.Tensor) -> list:
        """Run every teacher on ``img`` (B,3,H,W in 0..1) under no_grad (not inference_mode: the outputs are used in
        losses that autograd records). Returns the raw Ultralytics outputs (eval mode: ``(decoded, dict)``) with the
        class axis already mapped to the student's classes."""
        outs = []
        for m, idx in zip(self.models, self._class_index):
            p = next(m.parameters())
            if p.device != img.device:
                m.to(img.device)
            y = m(img.to(p.dtype))
            if idx is not None:
                y = _select_classes(y, idx.to(img.device))
            outs.append(y)
        return outs


def _feats(y) -> list[torch.Tensor]:
    d = y[1] if isinstance(y, tuple) else y
    d = d.get("one2many", d)
    return d["feats"]


def _select_classes(y, idx: torch.Tensor):
    """Reorder the class axis of every ``scores`` tensor in a Detect output to the student's class order."""
    if isinstance(y, tuple):
        return (y[0], _select_classes(y[1], idx))
    if isinstance(y, dict):
        return {k: (v.index_select(1, idx) if k == "scores" else _select_classes(v, idx) if isinstance(v, dict) else v)
                for k, v in y.items()}
    return y
