"""The student's loss with distillation: Ultralytics' detection loss + KD terms, balanced (GoR or fixed).

``KDCriterion`` replaces ``model.criterion``. Ultralytics calls it from inside ``model(batch)`` (so under DDP the
adapters and GoR scalars are used inside forward and their gradients are all-reduced) and from the validator as
``model.loss(batch, preds)``. Ultralytics nulls ``criterion`` before pickling a checkpoint, so nothing here is saved.

Returned loss dict (the keys are fixed on the first batch by the trainer, so every call returns all of them):
``box_loss, cls_loss, dfl_loss`` (Ultralytics' own, per image, gains applied: their sum is ``L_task``),
``kd_feat, kd_cls, kd_box`` (per image, already times their ``gor.distill`` weights; their sum is ``L_kd``),
``w_task, w_kd`` (the balance weights in force). The returned total is ``balancer(L_task, L_kd) * batch_size``,
following Ultralytics' convention of per-image losses times the batch size.
"""

from __future__ import annotations

import torch
from torch import nn

from gor_det.balance import GoRBalancer, gradient_norm, make_balancer, make_gor_params, restore_from_bits
from gor_det.config import BalanceCfg, GorCfg
from gor_det.distill import Distiller, HeadOutputs, build_adapters, head_outputs
from gor_det.engine.teachers import TeacherSet

KD_KEYS = ("kd_feat", "kd_cls", "kd_box")


class KDCriterion:
    """Wraps the model's own criterion.

    Args:
        base: the student's Ultralytics criterion (``model.init_criterion()``): ``base(preds, batch) -> (loss(3)*B, items)``.
        teachers: frozen teachers, called on ``batch["img"]``.
        kd: the student's ``model.kd`` ModuleDict (``adapters``, ``gor``); shared with the EMA copy through deepcopy.
        cfg: the run's gor cfg.
        reg_max: the student's DFL bins.
    """

    def __init__(self, base, teachers: TeacherSet, kd: nn.ModuleDict, cfg: GorCfg, reg_max: int):
        self.base = base
        self.teachers = teachers
        self.kd = kd
        self.cfg = cfg
        self.reg_max = int(reg_max)
        self.t_reg_max = teachers.reg_max()
        self.distiller = Distiller(cfg.distill)
        self.balancer = make_balancer(cfg.balance, kd["gor"] if "gor" in kd else None)
        self.wants_grad_norms = isinstance(self.balancer, GoRBalancer) and self.balancer.form == "gor_grad"
        self._steps, self._gnorms = 0, None  # gor_grad: training calls so far, last measured gradient norms

    def update(self):  # E2E losses anneal their one2one weight per epoch; forward it
        if hasattr(self.base, "update"):
            self.base.update()

    def kd_terms(self, preds, img: torch.Tensor) -> tuple[HeadOutputs, dict[str, torch.Tensor]]:
        """The student's head outputs in ``preds`` and its KD terms against the teachers run on ``img``:
        ``{"kd_feat", "kd_cls", "kd_box", "kd"}`` (per image, weighted; ``kd`` is their sum, ``L_kd``)."""
        student = head_outputs(preds, self.reg_max)
        t_outs = [head_outputs(y, r) for y, r in zip(self.teachers(img), self.t_reg_max)]
        return student, self.distiller(student, t_outs, self.kd["adapters"])

    def __call__(self, preds, batch):
        det_loss, det_items = self.base(preds, batch)
        img = batch["img"]
        bs = img.shape[0]
        task = det_loss.sum() / bs
        if torch.is_grad_enabled() or self.cfg.distill.val_kd:
            student, kd = self.kd_terms(preds, img)
        else:  # Ultralytics' validator (no_grad) with distill.val_kd off: no teacher forward
            zero = task.new_zeros(())
            kd = {k: zero for k in (*KD_KEYS, "kd")}
        losses = {"task": task, "kd": kd["kd"]}
        if self.wants_grad_norms and torch.is_grad_enabled():
            # gor_grad: the two losses' gradient norms on the Detect-head inputs (two backward passes through the head),
            # measured every grad_every training steps; the scalars use the last measurement in between
            if self._steps % self.cfg.balance.grad_every == 0 or self._gnorms is None:
                feats = [f for f in student.feats if f.requires_grad]
                self._gnorms = {"gnorm_task": gradient_norm(task, feats), "gnorm_kd": gradient_norm(kd["kd"], feats)}
            self._steps += 1
            losses.update(self._gnorms)
        total, weights = self.balancer(losses)
        items = dict(det_items)
        for k in KD_KEYS:
            items[k] = kd[k].detach().reshape(())
        for k in ("w_task", "w_kd"):
            items[k] = torch.as_tensor(weights[k], device=img.device, dtype=torch.float32).detach().reshape(())
        return total.reshape(1) * bs, items


def build_kd_modules(model: nn.Module, teachers: TeacherSet, balance: BalanceCfg) -> nn.ModuleDict:
    """The student's ``model.kd``: 1x1 adapters (student -> each teacher's P3-P5 channels, per teacher and level) and
    the two GoR scalars (initialised from ``balance.w_task`` / ``w_kd``), as plain torch modules. The student's
    channels are read off one tiny eval-mode forward (no BN statistics change)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        s_ch = head_outputs(model(torch.zeros(1, 3, 64, 64))).channels
    model.train(was_training)
    t_ch = teachers.feature_channels()
    for cfg, ch in zip(teachers.cfgs, t_ch):
        if len(ch) != len(s_ch):
            raise ValueError(f"teacher {cfg.model} has {len(ch)} detection levels, the student has {len(s_ch)}; "
                             "feature KD needs the same levels")
    return nn.ModuleDict({"adapters": build_adapters(s_ch, t_ch), "gor": make_gor_params(balance.w_task, balance.w_kd)})


def attach_kd_criterion(model: nn.Module, teachers: TeacherSet, cfg: GorCfg) -> KDCriterion:
    """Install a :class:`KDCriterion` as ``model.criterion`` (after restoring the GoR scalars from their exact bits)."""
    if "gor" in model.kd:
        restore_from_bits(model.kd["gor"])
    base = model.init_criterion()
    crit = KDCriterion(base, teachers, model.kd, cfg, reg_max=int(model.model[-1].reg_max))
    model.criterion = crit
    return crit
