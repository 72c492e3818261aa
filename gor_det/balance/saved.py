"""Run cfgs saved by gor_det versions with more balance methods in the product, read in today's terms.

Their balance section names ``transfer`` and ``w_task`` (every saved ``gor_cfg.yaml`` and checkpoint ``gor_cfg`` does,
since all keys were saved). :func:`todays_balance` maps it: ``gor_lookahead`` with ``transfer: next`` is ``gor``,
``none`` is ``fixed`` with ``w_kd: 0``; the forms that left the product are the research plug-ins
(``research/balancers.py``): ``gor`` on loss values is ``gor_loss``, ``gor_norm`` is ``gor_loss_norm``, ``gor_grad``
keeps its name, ``gor_lookahead`` with ``transfer: split`` is ``gor_split``, ``fixed`` with ``w_task != 1`` is
``fixed_task``.
"""

from __future__ import annotations

from gor_det.config import ConfigError

_NOW = {"gor_lookahead": "gor", "gor": "gor_loss", "gor_norm": "gor_loss_norm", "gor_grad": "gor_grad",
        "fixed": "fixed", "none": "fixed"}
PRODUCT = ("fixed", "gor")


def is_saved_format(section) -> bool:
    return isinstance(section, dict) and "transfer" in section


def todays_balance(section: dict) -> dict:
    """The saved balance ``section`` (``is_saved_format``) as today's section (unchanged otherwise)."""
    if not is_saved_format(section):
        return section
    b = dict(section)
    old = b.get("method", "gor_lookahead")
    transfer, w_task = b.pop("transfer"), b.pop("w_task", 1.0)
    method = "gor_split" if old == "gor_lookahead" and transfer == "split" else _NOW.get(old, old)
    if old == "none":
        b["w_kd"] = 0.0
    if method == "fixed" and w_task != 1:
        method = "fixed_task"
    if method not in PRODUCT:
        b["w_task"] = w_task
    elif w_task != 1:
        raise ConfigError(f"gor.balance.w_task={w_task} (a saved run cfg): gor starts the task weight at 1 and only "
                          "w_kd sets the balance; drop w_task")
    if method == "gor" and b.get("w_kd_end") is not None:
        b.pop("w_kd_end")
    b["method"] = method
    return b


def todays_gor(section: dict | None) -> dict | None:
    """A saved ``gor:`` section with its balance part in today's terms."""
    if isinstance(section, dict) and is_saved_format(section.get("balance")):
        return {**section, "balance": todays_balance(section["balance"])}
    return section
