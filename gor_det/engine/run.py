"""Library entry points behind ``tools/train_det.py``: resolve a run cfg, check inputs, train."""

from __future__ import annotations

from pathlib import Path

import yaml
from ultralytics.utils import DEFAULT_CFG_DICT

from gor_det.balance import balancer_class
from gor_det.balance.saved import todays_gor
from gor_det.config import ConfigError, RunCfg, load_run_cfg, parse_gor
from gor_det.engine.trainer import make_trainer_class, run_dir_of


def resolve_run_cfg(cfg_path: str | None, overrides: list[str] | None = None) -> RunCfg:
    """Load and validate a run cfg (Ultralytics keys checked against ``DEFAULT_CFG_DICT``).

    ``resume=path/to/last.pt`` without ``--cfg`` restores the run's own ``gor_cfg.yaml``."""
    run = load_run_cfg(cfg_path, overrides, valid_ultralytics_keys=DEFAULT_CFG_DICT.keys())
    resume = run.ultralytics.get("resume")
    if resume and not cfg_path:
        last = Path(str(resume))
        if not last.is_file():
            raise ConfigError(f"resume checkpoint not found: {resume} (pass resume=runs/<name>/weights/last.pt)")
        saved = run_dir_of(last) / "gor_cfg.yaml"
        if saved.is_file():
            run.gor = parse_gor(todays_gor(yaml.safe_load(saved.read_text())))
    check_inputs(run)
    absolute_project(run)
    return run


def absolute_project(run: RunCfg) -> None:
    """Make a relative ``project`` relative to the current directory, as a user reading ``project: runs/demo`` expects
    (Ultralytics would put it under its settings' runs_dir/<task>/, e.g. runs/detect/runs/demo)."""
    project = run.ultralytics.get("project")
    if project and not Path(str(project)).is_absolute():
        run.ultralytics["project"] = str(Path(str(project)).resolve())


def check_inputs(run: RunCfg) -> None:
    """Fail early, in one line, on the mistakes that otherwise end deep inside Ultralytics or in a download attempt."""
    u = run.ultralytics
    balancer_class(run.gor.balance.method).check(run.gor.balance)
    if u.get("resume"):
        return
    data = u.get("data")
    if not data:
        raise ConfigError("no 'data' given: set data: path/to/data.yaml (make one with tools/make_synthetic.py)")
    if not Path(str(data)).exists():
        raise ConfigError(
            f"data not found: {data} (nothing is downloaded; generate the synthetic set with "
            "`python tools/make_synthetic.py --preset demo --out datasets/synth_demo` or point data= at a local yaml)"
        )
    model = str(u.get("model") or "")
    if not model:
        raise ConfigError("no 'model' given: set model: yolov8n.yaml (random init) or a local .pt checkpoint")
    if model.endswith(".pt") and not Path(model).is_file():
        raise ConfigError(f"student model not found: {model} (must be a local .pt; nothing is downloaded)")
    for i, t in enumerate(run.gor.teachers):
        if not t.model:
            raise ConfigError(f"gor.teachers[{i}] has no 'model' (a local .pt, or a YAML with weights)")
        if t.model.endswith(".pt") and not Path(t.model).is_file():
            raise ConfigError(f"teacher checkpoint not found: {t.model} (gor.teachers[{i}].model must be a local .pt)")


def train(run: RunCfg):
    """Train one run; returns the trainer (``trainer.best``, ``trainer.metrics``, ``trainer.save_dir``)."""
    trainer = make_trainer_class(run.gor)(overrides=dict(run.ultralytics))
    trainer.train()
    return trainer
