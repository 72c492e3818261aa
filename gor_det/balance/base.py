"""The balancer interface and its registry.

A balancer combines the task loss ``L_t`` and the distillation loss ``L_k`` of a batch into what is back-propagated:
``balancer(L_t, L_k, probe) -> (total, {"w_task": w_t, "w_kd": w_k})`` (the weights in force, detached float32
scalars, for logs). It is a small class registered by name (:func:`register`), built by :func:`make_balancer` from
the ``gor.balance`` section, with

* ``make_state(cfg)``: its persistent state, a *plain* ``nn.Module`` of Parameters and exact-bits buffers
  (:mod:`gor_det.balance.state`) that lives in the student as ``model.kd.gor``, so the optimizer, the EMA and
  checkpoints carry it and a checkpoint still loads in stock Ultralytics;
* ``wants_probe``: whether it queries a :class:`~gor_det.balance.probe.GradientProbe` (gradients of the two losses,
  computed only for balancers that ask);
* ``after_step()`` (after each optimizer step: exact bits of the scalars), ``after_load()`` (after a checkpoint or
  NaN-recovery load: the exact scalars back from their bits), ``set_progress(p)`` (the fraction of training done,
  for balancers with ``wants_progress``), ``log_values()`` (end-of-epoch values for results.csv);
* ``default_lr``: the learning rate of its state's Parameters when ``gor.balance.lr`` is ``auto``.

Adding a balancer touches one file: a subclass with ``@register("name")`` (``cfg=`` a :class:`gor_det.config.BalanceCfg`
subclass when it takes keys the product's section has not). The product registers ``fixed`` and ``gor``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from gor_det.balance.probe import GradientProbe
from gor_det.balance.state import has_scalars, restore_from_bits, scalar_values, sync_bits
from gor_det.config import BalanceCfg, ConfigError, balance_methods, register_balance_cfg, suggest

_REGISTRY: dict[str, type[Balancer]] = {}


class Balancer:
    """Base class (see the module docstring). ``state`` is this balancer's ``model.kd.gor`` module."""

    name: ClassVar[str] = ""
    wants_probe: ClassVar[bool] = False
    default_lr: ClassVar[float] = 0.001

    def __init__(self, cfg: BalanceCfg, state: nn.Module):
        self.cfg, self.state = cfg, state

    @classmethod
    def make_state(cls, cfg: BalanceCfg) -> nn.Module:
        """A fresh state for ``cfg`` (an empty module: nothing to learn)."""
        return nn.Module()

    @classmethod
    def check(cls, cfg: BalanceCfg) -> None:
        """Raise a :class:`ConfigError` (one line, naming the key and the fix) for a cfg this balancer cannot use."""

    @classmethod
    def scalar_lr(cls, cfg: BalanceCfg) -> float | None:
        """The lr of the state's Parameters: ``cfg.lr``, :attr:`default_lr` for ``auto``, None (the trainer's)."""
        return cls.default_lr if cfg.lr == "auto" else cfg.lr

    @property
    def wants_progress(self) -> bool:
        return False

    def __call__(self, l_task: torch.Tensor, l_kd: torch.Tensor, probe: GradientProbe | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_step(self) -> None:
        if has_scalars(self.state):
            sync_bits(self.state)

    def after_load(self) -> None:
        if has_scalars(self.state):
            restore_from_bits(self.state)

    def set_progress(self, p: float) -> None:
        pass

    def log_values(self) -> dict[str, float]:
        return scalar_values(self.state) if has_scalars(self.state) else {}


def register(name: str, cfg: type[BalanceCfg] = BalanceCfg):
    """Class decorator: register a :class:`Balancer` subclass as ``gor.balance.method: name`` (its cfg keys:
    ``cfg``)."""

    def deco(cls: type[Balancer]) -> type[Balancer]:
        cls.name = name
        _REGISTRY[name] = cls
        register_balance_cfg(name, cfg)
        return cls

    return deco


def balancer_class(method: str) -> type[Balancer]:
    """The balancer registered as ``method``; a ConfigError naming the registered ones otherwise."""
    if method not in _REGISTRY:
        names = sorted(_REGISTRY)
        raise ConfigError(f"gor.balance.method={method!r} is not one of {', '.join(names)}{suggest(method, names)}")
    return _REGISTRY[method]


def make_balancer(cfg: BalanceCfg | None = None, state: nn.Module | None = None) -> Balancer:
    """The balancer for ``gor.balance`` with ``state`` (the model's ``model.kd.gor``; None: a fresh one, reachable as
    ``balancer.state``, which must then be registered for optimization)."""
    cfg = cfg if cfg is not None else BalanceCfg()
    cfg.validate()
    cls = balancer_class(cfg.method)
    cls.check(cfg)
    return cls(cfg, state if state is not None else cls.make_state(cfg))


def registered() -> list[str]:
    """The registered balancer names (the product's and any an imported plug-in added)."""
    assert set(_REGISTRY) <= set(balance_methods()), "every balancer registers its cfg"
    return sorted(_REGISTRY)
