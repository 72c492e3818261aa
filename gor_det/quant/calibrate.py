"""Post-training calibration of the step sizes (the starting point of QAT).

``calibrate(model, forward_loop, qcfg)``:

1. every weight quantizer is initialised from the weight it quantizes (for QConvBn2d the BN-folded weight with the
   current running statistics), with method ``qcfg.calib``;
2. every activation quantizer is switched to *observing* (pass-through: the network runs with float activations and
   quantized weights) and ``forward_loop(model)`` is called once, in eval mode, under ``torch.no_grad``;
   ``forward_loop`` is the caller's: it runs up to ``qcfg.calib_batches`` batches (this package imports no data);
3. every activation quantizer that saw data gets ``init_scale(qcfg.calib)``; all go back to quantizing.

An activation quantizer that saw nothing keeps its state (if never initialised it will initialise itself from the first
tensor it quantizes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gor_det.quant.modules import quant_modules
from gor_det.quant.numerics import FakeQuantizer


@torch.no_grad()
def calibrate(model: nn.Module, forward_loop: Callable[[nn.Module], object], qcfg) -> nn.Module:
    """Initialise all step sizes of a prepared model from its weights and ``forward_loop(model)``'s activations."""
    mods = list(quant_modules(model).values())
    for m in mods:
        m.weight_q.percentile = float(qcfg.percentile)
        m.init_weight_scale(qcfg.calib)
    weights = {id(m.weight_q) for m in mods}
    acts = [q for q in model.modules() if isinstance(q, FakeQuantizer) and id(q) not in weights]  # each step size once
    for q in acts:
        q.reset_observer()
        q.percentile = float(qcfg.percentile)
        q.observing = True
    was_training = model.training
    model.eval()  # BN running statistics (deploy form) and no BN statistics update during calibration
    try:
        forward_loop(model)
        for q in acts:
            if q._obs is not None:
                q.init_scale(qcfg.calib)
    finally:
        for q in acts:
            q.observing = False
            q.reset_observer()
        model.train(was_training)
    return model
