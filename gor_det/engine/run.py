"""Library entry points behind ``tools/train_det.py``: resolve a run cfg, check inputs, train."""

from __future__ import annotations

import time
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
    """Fail early, in one line, on what the command line lacks; the trainer's preflight
    (:mod:`gor_det.engine.preflight`) checks everything else before the run folder is touched."""
    u = run.ultralytics
    balancer_class(run.gor.balance.method).check(run.gor.balance)
    if u.get("resume"):
        return
    if not u.get("data"):
        raise ConfigError("no 'data' given: set data: path/to/data.yaml (make one with tools/make_synthetic.py)")
    if not u.get("model"):
        raise ConfigError("no 'model' given: set model: yolov8n.yaml (random init) or a local .pt checkpoint")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`; its message says what of the run is saved and how to go on (one line)."""


def train(run: RunCfg):
    """Train one run; returns the trainer (``trainer.best``, ``trainer.metrics``, ``trainer.save_dir``).

    Ctrl-C raises :class:`Interrupted` with what is true about the checkpoints (:func:`interrupt_message`)."""
    trainer, started = None, time.time()
    try:
        trainer = make_trainer_class(run.gor)(overrides=dict(run.ultralytics))
        trainer.train()
    except KeyboardInterrupt:
        raise Interrupted(interrupt_message(trainer, started)) from None
    return trainer


def interrupt_message(trainer, started: float) -> str:
    """What an interrupted run leaves: a resumable ``weights/last.pt`` of this run (written after ``started``, or the
    one a resumed run started from), or nothing to resume."""
    from ultralytics.utils.patches import torch_load

    if trainer is None:
        return "interrupted before training started: nothing was saved"
    epochs = getattr(trainer, "epochs", "?")
    where = (f"in epoch {trainer.epoch + 1}/{epochs}" if hasattr(trainer, "epoch")
             else "during training" if getattr(trainer, "ddp", False) else "while setting up training")
    last = Path(trainer.last)
    ckpt = None
    if last.is_file() and (trainer.resume or last.stat().st_mtime >= started):
        try:
            ckpt = torch_load(str(last), map_location="cpu")
        except Exception:
            ckpt = None
    if isinstance(ckpt, dict) and ckpt.get("optimizer") is not None:
        done = int(ckpt.get("epoch", -1)) + 1
        return (f"interrupted {where}: epochs 1-{done} are saved in {last}; continue with "
                f"`python tools/train_det.py resume={last}`")
    if isinstance(ckpt, dict):
        return f"interrupted after the last epoch (final validation): the trained weights are in {last.parent}"
    note = f" ({last} is an earlier run's)" if last.is_file() else ""
    return (f"interrupted {where}, before any epoch of this run completed: nothing was saved and there is no "
            f"checkpoint to resume{note}; start the run again (each completed epoch writes a resumable "
            f"weights/last.pt)")
