"""``GorDetectionTrainer``: Ultralytics' DetectionTrainer with QAT, teacher distillation and GoR balancing.

Only public hooks are overridden (``get_model``, ``build_optimizer``, ``optimizer_step``, ``save_model``,
``save_metrics``) plus callbacks for side effects; nothing in ultralytics is copied or patched. With an empty ``gor:``
section every override falls through to the stock behaviour, so training is identical to plain Ultralytics.

Where each piece lives (see docs/architecture.md):

* QAT modules replace the student's convs in ``get_model`` (before the optimizer and EMA exist); the step sizes are
  calibrated in ``build_optimizer``, the first hook that has both the model and the dataset, and runs before
  ``ModelEMA`` copies the model, so the EMA starts calibrated; calibration reads a loader of its own and leaves the
  random state as it found it, so training sees the batches an FP run sees. Resume restores the step sizes from the
  checkpoint instead.
* ``model.kd`` (adapters + the two GoR scalars) is added in ``get_model``; teachers stay in a ``TeacherSet`` outside the
  module tree. The KD criterion is installed on the model and the EMA by the ``on_pretrain_routine_end`` callback.
* The gor cfg is a class attribute of a per-run subclass made by :func:`make_trainer_class`: Ultralytics' DDP launcher
  rebuilds the trainer in each worker from ``type(trainer)`` pickled with cloudpickle (a dynamic class travels by
  value, attributes included) plus ``vars(args)``, so constructor arguments would be lost there.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from copy import copy
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from gor_det.balance import balancer_class
from gor_det.config import GorCfg
from gor_det.engine import callbacks as gcb
from gor_det.engine.amp import amp_check
from gor_det.engine.criterion import build_kd_modules
from gor_det.engine.ddp import broadcast_state, sync_buffers, world_size
from gor_det.engine.teachers import TeacherSet
from gor_det.quant import FakeQuantizer, calibrate, is_qat, prepare_qat, quant_scale_parameters


@contextmanager
def preserved_rng():
    """Restore the Python, NumPy and torch (CPU, and CUDA when initialised) random states on exit."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class GorDetectionTrainer(DetectionTrainer):
    """Detection trainer with gor_det's QAT + KD + GoR. Use :func:`make_trainer_class` to bind a gor cfg."""

    gor_cfg: GorCfg | None = None  # bound per run by make_trainer_class (travels to DDP workers with the class)

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
        super().__init__(cfg, overrides, _callbacks)
        self.gor = self.gor_cfg or GorCfg()
        self.teachers = TeacherSet(self.gor.teachers, self.data["names"]) if self.gor.distilling else None
        self._needs_calibration = False
        self._resumed_scaler_state = None  # the checkpoint's GradScaler state (resume), for the AMP scaler
        for event, fn in gcb.TRAINER_CALLBACKS:
            self.add_callback(event, fn)
        if RANK in {-1, 0}:
            (self.save_dir / "gor_cfg.yaml").write_text(yaml.safe_dump(self.gor.to_dict(), sort_keys=False))

    # ---------------------------------------------------------------------------------------------------------------
    # Setup: AMP checked on the student itself
    # ---------------------------------------------------------------------------------------------------------------
    def _amp_requested(self) -> bool:
        """fp16 AMP asked for (``amp: true``, Ultralytics' default), on a device Ultralytics makes a GradScaler for."""
        return self.args.amp not in {False, "fp32", "bf16"} and self.device.type != "npu"

    def _setup_train(self):
        """Stock setup, with the AMP check run by gor_det (:func:`gor_det.engine.amp.amp_check`) on the student
        instead of Ultralytics' ``check_amp``, which downloads and checks ``yolo26n.pt``: Ultralytics' setup runs with
        ``amp`` off (so it makes no check), then AMP and its GradScaler (with a resumed run's scaler state) are
        switched on here if the check passes. Every rank takes rank 0's answer."""
        if not self._amp_requested():
            return super()._setup_train()
        amp = self.args.amp
        self.args.amp = False
        try:
            super()._setup_train()
        finally:
            self.args.amp = amp
        use, why = amp_check(unwrap_model(self.model), self.args.imgsz, self.device) if RANK in {-1, 0} else (False, "")
        if world_size() > 1:
            flag = torch.tensor(int(use), device=self.device)
            torch.distributed.broadcast(flag, src=0)
            use = bool(flag)
        if RANK in {-1, 0}:
            (LOGGER.info if use else LOGGER.warning)(f"gor_det AMP: {'on' if use else 'off'}: {why}")
        self.amp = use
        self.scaler = torch.amp.GradScaler("xpu" if self.device.type == "xpu" else "cuda", enabled=use)
        if use and self._resumed_scaler_state:
            self.scaler.load_state_dict(self._resumed_scaler_state)
        crit = getattr(unwrap_model(self.model), "criterion", None)
        if hasattr(crit, "grad_scaler"):  # the KD criterion measures GoR's gradients at this scaler's scale
            crit.grad_scaler = self.scaler

    def resume_training(self, ckpt):
        """Stock resume; keeps the checkpoint's GradScaler state for the AMP scaler built after the AMP check."""
        self._resumed_scaler_state = (ckpt or {}).get("scaler") if self.resume else None
        super().resume_training(ckpt)

    # ---------------------------------------------------------------------------------------------------------------
    # Model
    # ---------------------------------------------------------------------------------------------------------------
    def get_model(self, cfg=None, weights=None, verbose=True):
        """Build the student; with ``gor.quant`` insert QAT modules, with teachers add ``model.kd``.

        FP weights load before ``prepare_qat`` (BN is folded from them); a checkpoint that already holds QAT modules,
        adapters or GoR scalars (resume, or fine-tuning a QAT student) loads after they exist, so nothing is dropped.
        """
        g = self.gor
        qat_weights = weights is not None and is_qat(weights)
        model = super().get_model(cfg=cfg, weights=None if qat_weights else weights, verbose=verbose)
        if g.quantizing:
            prepare_qat(model, g.quant)  # calibrated later, in build_optimizer, once the dataset is known
            # with start_epoch > 0 the step sizes are calibrated at that epoch (start_quantization), not now
            self._needs_calibration = not qat_weights and not self.args.resume and g.quant.start_epoch == 0
        if g.distilling:
            model.kd = build_kd_modules(model, self.teachers, g.balance)
        if weights is not None and (g.quantizing or g.distilling):
            model.load(weights, verbose=False)  # second pass: QAT state, adapters and scalars where present
        if g.quantizing and not g.quant.learn_scales:
            for p in quant_scale_parameters(model):
                p.requires_grad_(False)
        model.gor_cfg = g.to_dict()  # plain dict: records the run cfg in every checkpoint, loadable anywhere
        return model

    # ---------------------------------------------------------------------------------------------------------------
    # Optimizer: calibration first (see module docstring), then own groups for GoR scalars and step sizes
    # ---------------------------------------------------------------------------------------------------------------
    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        if self._needs_calibration:
            self._calibrate(unwrap_model(model))
            self._needs_calibration = False
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        m = unwrap_model(model)
        base_lr = optimizer.param_groups[0]["lr"]
        extra = []
        if self.gor.distilling and hasattr(m, "kd"):
            b = self.gor.balance
            extra.append(("gor", list(m.kd["gor"].parameters()), balancer_class(b.method).scalar_lr(b)))
        if self.gor.quantizing:
            extra.append(("quant_scale", [p for p in quant_scale_parameters(m) if p.requires_grad],
                          self.gor.quant.scale_lr))
        moved = {id(p) for _, ps, _ in extra for p in ps}
        if moved:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in moved]
            template = {k: v for k, v in optimizer.param_groups[0].items() if k not in ("params", "param_group")}
            for gname, params, glr in extra:
                if params:  # no weight decay: it would pull the log-scalars and log-step-sizes towards 0 (= scale 1)
                    group = {**template, "params": params, "weight_decay": 0.0, "lr": glr or base_lr,
                             "param_group": gname}
                    if "use_muon" in template:
                        group["use_muon"] = False
                    optimizer.add_param_group(group)
        return optimizer

    def _calibrate(self, model: nn.Module) -> None:
        """Initialise every quantizer's step size from ``calib_batches`` training batches (``gor.quant.calib``).

        The batches come from a loader of their own (same images, augmentation and batch size as training), and the
        Python / NumPy / torch random states are restored afterwards: the training loader, its sampler and the
        augmentation stream are left exactly as an FP run with the same seed sees them, so a QAT run and its FP
        counterpart train on the same batches (a paired comparison measures the quantization, not a reshuffle)."""
        n = self.gor.quant.calib_batches
        cache, self.args.cache = self.args.cache, False  # a second RAM/disk image cache would be wasted work
        try:
            with preserved_rng():
                loader = self.get_dataloader(self.data["train"], self.batch_size // max(self.world_size, 1), -1, "train")
                epoch = getattr(self, "epoch", 0)  # unset before the first epoch (calibration in build_optimizer)
                if self.args.close_mosaic and epoch >= self.epochs - self.args.close_mosaic:
                    loader.dataset.close_mosaic(hyp=copy(self.args))  # this epoch trains without mosaic: same here

                def forward_loop(m):
                    for i, batch in enumerate(loader):
                        if i >= n:
                            break
                        m(self.preprocess_batch(batch)["img"])

                LOGGER.info(f"gor_det: calibrating quantizers ({self.gor.quant.calib}, {n} batches)")
                was_training = model.training
                model.eval()
                calibrate(model, forward_loop, self.gor.quant)
                model.train(was_training)
                if hasattr(loader, "close"):
                    loader.close()
        finally:
            self.args.cache = cache
        # every rank starts from rank 0's step sizes and zero points
        broadcast_state([q for q in model.modules() if isinstance(q, FakeQuantizer)])

    def start_quantization(self) -> None:
        """``gor.quant.start_epoch``: calibrate the step sizes on the weights the float epochs trained, copy them into
        the EMA, and restart the best-checkpoint race (``best.pt`` must be a quantization-trained model)."""
        from gor_det.quant import quant_state_dict, set_quant_enabled

        m = unwrap_model(self.model)
        set_quant_enabled(m)
        self._calibrate(m)
        if self.ema is not None:
            self.ema.ema.load_state_dict(quant_state_dict(m), strict=False)
        self.best_fitness = None
        LOGGER.info(f"gor_det: quantization-aware training from epoch {self.epoch + 1} (gor.quant.start_epoch)")

    def optimizer_step(self):
        """Buffers synced over DDP ranks (:func:`gor_det.engine.ddp.sync_buffers`: the EMA update and checkpoints see
        the same state on every rank), the stock step, then the balancer's ``after_step`` hook (the exact bits of its
        scalars, its raw state copied into the EMA's: :func:`gor_det.engine.callbacks.balance_hook`)."""
        sync_buffers(unwrap_model(self.model))
        super().optimizer_step()
        gcb.balance_hook("after_step", self)

    # ---------------------------------------------------------------------------------------------------------------
    # Checkpoints and logs
    # ---------------------------------------------------------------------------------------------------------------
    def save_model(self):
        """Stock checkpoint content, written atomically: to ``*.tmp`` first, then ``os.replace`` (no torn last.pt)."""
        final = (self.last, self.best)
        tmp = tuple(p.with_name(p.name + ".tmp") for p in final)
        self.last, self.best = tmp
        try:
            ok = super().save_model()
        finally:
            self.last, self.best = final
        for t, f in zip(tmp, final):
            if t.exists():
                os.replace(t, f)
        return ok

    def save_metrics(self, metrics):
        """Add the balancer's exact end-of-epoch values, e.g. GoR's ``gor/s_task``, ``gor/s_kd`` (the ``train/w_*``
        columns are epoch means)."""
        balancer = getattr(getattr(unwrap_model(self.model), "criterion", None), "balancer", None)
        if balancer is not None:
            metrics = {**metrics, **{f"gor/{k}": v for k, v in balancer.log_values().items()}}
        super().save_metrics(metrics)


def make_trainer_class(gor: GorCfg, base: type = GorDetectionTrainer) -> type:
    """A per-run subclass carrying ``gor`` as a class attribute (survives Ultralytics' DDP re-launch)."""
    return type(base.__name__, (base,), {"gor_cfg": gor, "__module__": __name__, "__qualname__": f"{base.__name__}[run]"})


def run_dir_of(weights: str | Path) -> Path:
    """``runs/x/weights/last.pt`` -> ``runs/x``."""
    return Path(weights).resolve().parent.parent
