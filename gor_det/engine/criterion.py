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

from gor_det.balance import GradientProbe, make_balancer
from gor_det.config import BalanceCfg, GorCfg
from gor_det.distill import KD_KEYS, Distiller, GroundTruth, HeadOutputs, build_adapters, head_outputs
from gor_det.engine.teachers import TeacherSet


class KDCriterion:
    """Wraps the model's own criterion.

    Args:
        base: the student's Ultralytics criterion (``model.init_criterion()``): ``base(preds, batch) -> (loss(3)*B, items)``.
        teachers: frozen teachers, called on ``batch["img"]``.
        kd: the student's ``model.kd`` ModuleDict (``adapters``, ``gor``: the balancer's state); shared with the EMA
            copy through deepcopy.
        cfg: the run's gor cfg.
        reg_max: the student's DFL bins.
        head_params: the parameters of the layers producing the Detect-head inputs and of the head
            (:func:`head_region_parameters`), where a balancer's :class:`GradientProbe` takes gradients.
    """

    def __init__(self, base, teachers: TeacherSet, kd: nn.ModuleDict, cfg: GorCfg, reg_max: int,
                 head_params: list[nn.Parameter] | None = None):
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
        self.head_params = list(head_params or [])
        self.grad_scaler = None  # the trainer's AMP GradScaler (set by the trainer): the probe's measuring scale

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
        """The AMP GradScaler's current scale as a device tensor (no host sync), or None without AMP. Gradient
        measurements back-propagate through the fp16 graph like the training backward, so they are taken at the same
        scale: unscaled, small fp16 gradients flush to zero (KD terms, means over B x C or B x anchors, more than the
        task loss), which would bias what a balancer measures."""
        scaler = self.grad_scaler
        if scaler is None or not scaler.is_enabled():
            return None
        return scaler.scale(torch.ones((), device=like.device, dtype=torch.float32))

    def _probe(self, task, l_kd, preds, batch, student, t_outs) -> GradientProbe:
        """The batch's :class:`GradientProbe` (gradients computed only if the balancer asks)."""
        bs = batch["img"].shape[0]

        def halves():  # (task, kd) of the two halves of the batch, on the same forward
            if bs < 2:
                return None
            out = []
            for rows in (slice(0, bs // 2), slice(bs // 2, bs)):
                n, half = rows.stop - rows.start, batch_rows(batch, rows)
                task_h = self.base(select_rows(preds, rows, bs), half)[0].sum() / n
                kd_h = self._distill(student.select(rows), [t.select(rows) for t in t_outs], half)["kd"]
                out.append((task_h, kd_h))
            return out

        return GradientProbe(task, l_kd, student.feats, self.head_params, self._loss_scale(task), halves)

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
        probe = None
        if self.balancer.wants_probe and torch.is_grad_enabled():
            probe = self._probe(task, kd["kd"], preds, batch, student, t_outs)
        total, weights = self.balancer(task, kd["kd"], probe)
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
    the balancer's state (``gor``), as plain torch modules. The student's channels are read off one tiny eval-mode
    forward (no BN statistics change)."""
    from gor_det.balance import balancer_class

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
    state = balancer_class(balance.method).make_state(balance)
    return nn.ModuleDict({"adapters": build_adapters(s_ch, t_ch), "gor": state})


def head_region_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the layers whose outputs feed the Detect head (P3-P5) and of the head itself: where a
    balancer's probe takes gradients (those with ``requires_grad`` when it does). Every KD term reaches them (feature
    KD through the head inputs, head KD through the head), and one backward through the last neck blocks and the head
    is cheap."""
    head = model.model[-1]
    modules = [model.model[i] for i in head.f] + [head]
    return [p for m in modules for p in m.parameters()]


def attach_kd_criterion(model: nn.Module, teachers: TeacherSet, cfg: GorCfg) -> KDCriterion:
    """Install a :class:`KDCriterion` as ``model.criterion``; its balancer's state is restored from its exact bits
    (``after_load``)."""
    crit = KDCriterion(model.init_criterion(), teachers, model.kd, cfg, reg_max=int(model.model[-1].reg_max),
                       head_params=head_region_parameters(model))
    crit.balancer.after_load()
    model.criterion = crit
    return crit
