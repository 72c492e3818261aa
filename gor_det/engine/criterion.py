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

from gor_det.balance import (
    GoRBalancer,
    TransferMeter,
    flat_gradient,
    gradient_norm,
    make_balancer,
    make_gor_params,
    restore_from_bits,
)
from gor_det.config import BalanceCfg, GorCfg
from gor_det.distill import Distiller, GroundTruth, HeadOutputs, build_adapters, head_outputs
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
        lookahead_params: ``gor_lookahead``: the parameters its gradients are taken on (the layers producing the
            Detect-head inputs and the head, :func:`lookahead_parameters`).
    """

    def __init__(self, base, teachers: TeacherSet, kd: nn.ModuleDict, cfg: GorCfg, reg_max: int,
                 lookahead_params: list[nn.Parameter] | None = None):
        self.base = base
        self.teachers = teachers
        self.kd = kd
        self.cfg = cfg
        self.reg_max = int(reg_max)
        self.t_reg_max = teachers.reg_max()
        self.teacher_weights = [c.weight for c in teachers.cfgs]  # gor.teachers[i].weight: shares in the ensemble
        self.feat_weights = [c.feat_share for c in teachers.cfgs]  # .feat_weight (default: weight): in feature KD
        self.distiller = Distiller(cfg.distill)
        self.balancer = make_balancer(cfg.balance, kd["gor"] if "gor" in kd else None)
        form = self.balancer.form if isinstance(self.balancer, GoRBalancer) else None
        self.wants_grad_norms = form in ("gor_grad", "gor_lookahead")
        self.meter = TransferMeter(kd["gor"]) if form == "gor_lookahead" else None
        self.lookahead_params = list(lookahead_params or [])
        self._steps, self._gnorms = 0, None  # gor_grad / lookahead: training calls so far, last measurement
        self.grad_scaler = None  # the trainer's AMP GradScaler (set by the attach_kd callback): measuring scale

    def update(self):  # E2E losses anneal their one2one weight per epoch; forward it
        if hasattr(self.base, "update"):
            self.base.update()

    def kd_terms(self, preds, batch: dict) -> tuple[HeadOutputs, dict[str, torch.Tensor]]:
        """The student's head outputs in ``preds`` and its KD terms against the teachers run on ``batch["img"]``:
        ``{"kd_feat", "kd_cls", "kd_box", "kd"}`` (per image, weighted; ``kd`` is their sum, ``L_kd``)."""
        student, t_outs = self._outputs(preds, batch["img"])
        return student, self._distill(student, t_outs, batch)

    def _outputs(self, preds, img: torch.Tensor) -> tuple[HeadOutputs, list[HeadOutputs]]:
        """The student's head outputs in ``preds`` and the teachers' on ``img``."""
        return head_outputs(preds, self.reg_max), [head_outputs(y, r) for y, r in zip(self.teachers(img), self.t_reg_max)]

    def _distill(self, student: HeadOutputs, t_outs: list[HeadOutputs], batch: dict) -> dict[str, torch.Tensor]:
        gt = GroundTruth.from_yolo_batch(batch) if self.cfg.distill.ensemble == "gt_weighted" else None
        return self.distiller(student, t_outs, self.kd["adapters"], self.teacher_weights, gt, self.feat_weights)

    def _loss_scale(self, like: torch.Tensor) -> torch.Tensor | None:
        """The AMP GradScaler's current scale as a device tensor (no host sync), or None without AMP. The gradient
        measurements back-propagate through the fp16 graph like the training backward, so they are taken at the same
        scale: unscaled, small fp16 gradients flush to zero (KD terms, means over B x C or B x anchors, more than the
        task loss), which biases the norms and transfers."""
        scaler = self.grad_scaler
        if scaler is None or not scaler.is_enabled():
            return None
        return scaler.scale(torch.ones((), device=like.device, dtype=torch.float32))

    def _measure(self, task, l_kd, preds, batch, student, t_outs) -> dict[str, torch.Tensor]:
        """What the gradient forms balance on: ``gor_grad``, the two losses' gradient norms on the Detect-head inputs
        (two backward passes through the head); ``gor_lookahead``, their gradients on the parameters that produce and
        read those inputs, through the :class:`TransferMeter` (norms and transfer ratio): of the whole batch
        (``transfer: next``), or of each half of it (``transfer: split``; a batch of one image keeps the last
        measurement). Under AMP at the GradScaler's scale (:meth:`_loss_scale`)."""
        scale = self._loss_scale(task)
        if self.meter is None:
            feats = [f for f in student.feats if f.requires_grad]
            return {"gnorm_task": gradient_norm(task, feats, scale), "gnorm_kd": gradient_norm(l_kd, feats, scale)}
        wrt = [p for p in self.lookahead_params if p.requires_grad]  # the DFL conv is frozen
        if not wrt:
            raise ValueError("gor_lookahead: no trainable parameter in the Detect head or the layers feeding it "
                             "(frozen by 'freeze='?); use gor.balance.method=gor_grad")
        if self.cfg.balance.transfer == "next":
            return self.meter.measure(flat_gradient(task, wrt, scale), flat_gradient(l_kd, wrt, scale))
        bs = batch["img"].shape[0]
        if bs < 2:
            return self._gnorms if self._gnorms is not None else self.meter.measure(
                flat_gradient(task, wrt, scale), flat_gradient(l_kd, wrt, scale))
        halves = []
        for rows in (slice(0, bs // 2), slice(bs // 2, bs)):
            n, half = rows.stop - rows.start, batch_rows(batch, rows)
            task_h = self.base(select_rows(preds, rows, bs), half)[0].sum() / n
            kd_h = self._distill(student.select(rows), [t.select(rows) for t in t_outs], half)["kd"]
            halves.append((flat_gradient(task_h, wrt, scale), flat_gradient(kd_h, wrt, scale)))
        return self.meter.measure_split(*halves)

    def __call__(self, preds, batch):
        det_loss, det_items = self.base(preds, batch)
        img = batch["img"]
        bs = img.shape[0]
        task = det_loss.sum() / bs
        if torch.is_grad_enabled() or self.cfg.distill.val_kd:
            student, t_outs = self._outputs(preds, img)
            kd = self._distill(student, t_outs, batch)
        else:  # Ultralytics' validator (no_grad) with distill.val_kd off: no teacher forward
            zero = task.new_zeros(())
            kd = {k: zero for k in (*KD_KEYS, "kd")}
        losses = {"task": task, "kd": kd["kd"]}
        if self.wants_grad_norms and torch.is_grad_enabled():
            # measured every grad_every training steps; the scalars use the last measurement in between
            if self._steps % self.cfg.balance.grad_every == 0 or self._gnorms is None:
                new = self._measure(task, kd["kd"], preds, batch, student, t_outs)
                if self._gnorms is not None:  # an fp16 overflow (AMP) keeps the last finite measurement
                    new = {k: torch.where(torch.isfinite(v), v, self._gnorms[k]) for k, v in new.items()}
                self._gnorms = new
            self._steps += 1
            losses.update(self._gnorms)
        total, weights = self.balancer(losses)
        items = dict(det_items)
        for k in KD_KEYS:
            items[k] = kd[k].detach().reshape(())
        for k in ("w_task", "w_kd"):
            items[k] = torch.as_tensor(weights[k], device=img.device, dtype=torch.float32).detach().reshape(())
        return total.reshape(1) * bs, items


def select_rows(preds, rows: slice, batch_size: int):
    """The images ``rows`` of a Detect head's raw training output (nested dicts / lists / tuples of tensors whose
    first axis is the batch), views with the graph kept; other values unchanged."""
    if isinstance(preds, torch.Tensor):
        return preds[rows] if preds.ndim and preds.shape[0] == batch_size else preds
    if isinstance(preds, dict):
        return {k: select_rows(v, rows, batch_size) for k, v in preds.items()}
    if isinstance(preds, (list, tuple)):
        return type(preds)(select_rows(v, rows, batch_size) for v in preds)
    return preds


def batch_rows(batch: dict, rows: slice) -> dict:
    """The images ``rows`` of an Ultralytics detection batch, with what its loss reads (``img``, ``batch_idx``
    renumbered from 0, ``cls``, ``bboxes``)."""
    idx = batch["batch_idx"]
    keep = (idx >= rows.start) & (idx < rows.stop)
    return {"img": batch["img"][rows], "batch_idx": idx[keep] - rows.start, "cls": batch["cls"][keep],
            "bboxes": batch["bboxes"][keep]}


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


def lookahead_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the layers whose outputs feed the Detect head (P3-P5) and of the head itself: where
    ``gor_lookahead`` measures its gradients (the criterion keeps those with ``requires_grad`` when it measures).
    Every KD term reaches them (feature KD through the head inputs, head KD through the head), and one backward
    through the last neck blocks and the head is cheap."""
    head = model.model[-1]
    modules = [model.model[i] for i in head.f] + [head]
    return [p for m in modules for p in m.parameters()]


def attach_kd_criterion(model: nn.Module, teachers: TeacherSet, cfg: GorCfg) -> KDCriterion:
    """Install a :class:`KDCriterion` as ``model.criterion`` (after restoring the GoR scalars from their exact bits)."""
    if "gor" in model.kd:
        gp = model.kd["gor"]
        if not hasattr(gp, "xfer_bits"):  # a checkpoint from before gor_lookahead: the buffer it keeps its state in
            gp.register_buffer("xfer_bits", torch.zeros(3, dtype=torch.int32, device=gp.bits.device))
        restore_from_bits(gp)
    base = model.init_criterion()
    crit = KDCriterion(base, teachers, model.kd, cfg, reg_max=int(model.model[-1].reg_max),
                       lookahead_params=lookahead_parameters(model))
    model.criterion = crit
    return crit
