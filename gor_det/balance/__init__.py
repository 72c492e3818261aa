"""gor_det.balance: how the task loss and the distillation loss are combined (pure torch; never imports ultralytics).

* :mod:`~gor_det.balance.base`: the :class:`Balancer` interface, :func:`register`, :func:`make_balancer`.
* :mod:`~gor_det.balance.fixed`: ``fixed``, a hand-set KD weight (constant, or moving along a schedule).
* :mod:`~gor_det.balance.gor`: ``gor``, two learnable scalars balancing the losses' gradients (GoR).
* :mod:`~gor_det.balance.probe`: :class:`GradientProbe`, the gradients a balancer may ask for.
* :mod:`~gor_det.balance.state`: the scalars' storage, exact through fp16 checkpoints and the EMA.

Other balancers register themselves when their module is imported (``research/balancers.py``).
"""

from gor_det.balance.base import Balancer, balancer_class, make_balancer, register, registered
from gor_det.balance.fixed import FixedBalancer
from gor_det.balance.gor import GoRBalancer, MeasuringBalancer, TransferMeter, gradient_game
from gor_det.balance.probe import GradientProbe, flat_gradient, gradient_norm
from gor_det.balance.state import has_scalars, make_scalars, restore_from_bits, scalar_values, sync_bits

__all__ = [
    "Balancer",
    "FixedBalancer",
    "GoRBalancer",
    "GradientProbe",
    "MeasuringBalancer",
    "TransferMeter",
    "balancer_class",
    "flat_gradient",
    "gradient_game",
    "gradient_norm",
    "has_scalars",
    "make_balancer",
    "make_scalars",
    "register",
    "registered",
    "restore_from_bits",
    "scalar_values",
    "sync_bits",
]
