"""Trainer callbacks: side effects only (threads, KD criterion install, the balancer's hooks, QAT schedule, BN
freeze, DDP buffer sync, the GoR plot).

Module-level functions taking the trainer, never bound methods or closures: Ultralytics pickles ``trainer.callbacks``
for its DDP workers.
"""

from __future__ import annotations

import os
from functools import partial

import torch
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model


def default_threads() -> int:
    """Torch intra-op threads for CPU training: all cores up to 8.

    Ultralytics' ``select_device`` sets ``min(8, cpu_count - 1)`` threads, i.e. 1 on a 2-core machine, where 2 threads
    train 1.4-2x faster (measured: shared notes, CPU speed table)."""
    return max(1, min(8, os.cpu_count() or 1))


_threads: list[int] = []  # the count chosen at train start, re-applied on validation


def set_threads(trainer) -> None:
    """On train start: ``gor.threads`` (default: all cores up to 8) torch threads for CPU training."""
    if trainer.device.type == "cpu":
        _threads[:] = [trainer.gor.threads or default_threads()]
        torch.set_num_threads(_threads[0])


def reapply_threads(validator) -> None:
    """On every validation: the final eval builds an AutoBackend, whose select_device resets the count to cores-1."""
    if _threads:
        torch.set_num_threads(_threads[0])


def attach_kd(trainer) -> None:
    """Install the KD criterion on the student and on its EMA copy (after the optimizer, EMA and resume exist)."""
    if not trainer.gor.distilling:
        return
    from gor_det.engine.criterion import attach_kd_criterion

    model = unwrap_model(trainer.model)
    model.args = trainer.args
    attach_kd_criterion(model, trainer.teachers, trainer.gor).grad_scaler = trainer.scaler  # AMP: the probe's scale
    if trainer.ema is not None:
        trainer.ema.ema.args = trainer.args
        attach_kd_criterion(trainer.ema.ema, trainer.teachers, trainer.gor)


def freeze_bn_stats(trainer) -> None:
    """From ``gor.quant.freeze_bn_epoch`` on, folded BN uses its running statistics (train output == deploy output)."""
    q = trainer.gor.quant
    if trainer.gor.quantizing and q.freeze_bn_epoch >= 0 and trainer.epoch >= q.freeze_bn_epoch:
        from gor_det.quant import freeze_bn

        freeze_bn(unwrap_model(trainer.model))
        if trainer.ema is not None:
            freeze_bn(trainer.ema.ema)


def quant_schedule(trainer) -> None:
    """``gor.quant.start_epoch`` > 0: quantizers off (float fine-tuning) before it; at it, calibrate and switch them on.

    Set at every epoch start (the on/off switch is a Python attribute, not checkpoint state, so a resumed run gets it
    from its epoch). Resuming after ``start_epoch`` keeps the step sizes the checkpoint holds."""
    q = trainer.gor.quant
    if not trainer.gor.quantizing or q.start_epoch <= 0:
        return
    if q.start_epoch >= trainer.epochs:
        from gor_det.config import ConfigError

        raise ConfigError(f"gor.quant.start_epoch={q.start_epoch} >= epochs={trainer.epochs}: no epoch would train "
                          f"with quantization; use a start_epoch below {trainer.epochs}")
    from gor_det.quant import set_quant_enabled

    live = trainer.epoch >= q.start_epoch
    if trainer.epoch == q.start_epoch:
        trainer.start_quantization()
    for m in (unwrap_model(trainer.model), trainer.ema.ema if trainer.ema is not None else None):
        if m is not None:
            set_quant_enabled(m, weights=live, acts=live)


def _balancers(trainer):
    """The balancers of the student's and the EMA's KD criterion (none before ``attach_kd`` or without teachers)."""
    for m in (unwrap_model(trainer.model), trainer.ema.ema if trainer.ema is not None else None):
        balancer = getattr(getattr(m, "criterion", None), "balancer", None)
        if balancer is not None:
            yield m, balancer


def balance_hook(hook: str, trainer) -> None:
    """The balancer's side of training, one hook per event (``functools.partial(balance_hook, hook)``):

    * ``after_step`` (the trainer's ``optimizer_step``): the scalars' exact bits, and the raw state copied into the
      EMA's (Ultralytics resumes from the EMA, which would hold an EMA-lagged value);
    * ``epoch_start``: the state from its exact bits (a no-op in normal training; after Ultralytics' NaN recovery,
      which loads the fp16 checkpoint's EMA, the scalars hold fp16-rounded values while the bits came back exact), and
      the epoch's batch count from 0 (a redone epoch, NaN recovery or OOM restart, runs again under its number);
    * ``batch_start``: the training progress ``p = (epoch + batches done / batches per epoch) / epochs`` for balancers
      with ``wants_progress`` (exact on resume: a resumed run starts at an epoch boundary).
    """
    balancers = list(_balancers(trainer))
    if hook == "after_step":
        if balancers:
            (_, b), ema = balancers[0], balancers[1:]
            b.after_step()
            for m, _ in ema:
                m.kd["gor"].load_state_dict(b.state.state_dict())
    elif hook == "epoch_start":
        trainer.gor_batches_done = 0
        for _, b in balancers:
            b.after_load()
    elif hook == "batch_start":
        moving = [b for _, b in balancers if b.wants_progress]
        if moving:
            done = getattr(trainer, "gor_batches_done", 0)
            trainer.gor_batches_done = done + 1
            p = (trainer.epoch + done / max(len(trainer.train_loader), 1)) / max(trainer.epochs, 1)
            for b in moving:
                b.set_progress(p)
    else:
        raise ValueError(f"unknown balance hook {hook!r}")


def plot_gor(trainer) -> None:
    """Save ``gor_curves.png``: the two balance weights and the loss terms per epoch (from results.csv)."""
    if RANK not in {-1, 0} or not trainer.gor.distilling or not trainer.csv.exists():
        return
    try:
        from gor_det.engine.plots import plot_gor_curves

        plot_gor_curves(trainer.csv, trainer.save_dir / "gor_curves.png")
    except Exception as e:  # a plot must never fail a finished training run
        LOGGER.warning(f"gor_det: could not plot GoR curves: {e}")


def sync_accumulating_buffers(trainer) -> None:
    """On every training batch start, when several batches accumulate into one optimizer step: BN statistics and
    other buffers synced over the DDP ranks (the optimizer step syncs them otherwise), so every rank's forward folds
    BN with the same statistics."""
    if getattr(trainer, "accumulate", 1) > 1:
        from gor_det.engine.ddp import sync_buffers

        sync_buffers(unwrap_model(trainer.model))


TRAINER_CALLBACKS = [  # (event, callback) in the order they run
    ("on_pretrain_routine_end", attach_kd),
    ("on_train_start", set_threads),
    ("on_val_start", reapply_threads),
    ("on_train_epoch_start", partial(balance_hook, "epoch_start")),
    ("on_train_epoch_start", quant_schedule),
    ("on_train_epoch_start", freeze_bn_stats),
    ("on_train_batch_start", partial(balance_hook, "batch_start")),
    ("on_train_batch_start", sync_accumulating_buffers),
    ("on_train_end", plot_gor),
]
