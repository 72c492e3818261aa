"""The ``gor:`` section of a run cfg, as dataclasses; loading, overrides and "did you mean" errors.

A run cfg is a YAML file: any Ultralytics train key at top level (``model``, ``data``, ``epochs``, ...) plus one ``gor:``
section with the subsections ``teachers``, ``distill``, ``balance``, ``quant`` and ``export``. Unknown keys in either
part fail with a :class:`ConfigError` that names the key and suggests the nearest valid one.

Standard library + yaml only: the valid Ultralytics keys are passed in by the caller (``gor_det.engine``), so this module
never imports ultralytics.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A bad cfg file, key or value. The message names the problem and the fix; tools print it as one line."""


# --------------------------------------------------------------------------------------------------------------------
# The gor: section
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class TeacherCfg:
    """One frozen teacher.

    ``model``: a local Ultralytics checkpoint (``.pt``), or a model YAML (random init; for tests) optionally with
    ``weights`` (a ``.pt`` whose matching tensors are loaded into it). ``names``: optional mapping
    ``{teacher_class_index: student_class_index}`` when the class sets differ in order or size. ``weight``: the
    teacher's share in an ensemble (EKD), relative to the other teachers' (normalised to sum 1): every mean over
    teachers (their KD losses, or their targets with ``distill.ensemble: mean_target``) is weighted by it.
    ``bench/teacher_ensemble.py`` scores fused teachers on held-out images to choose it. ``feat_weight``: its share
    in feature KD alone (default: ``weight``); 0 keeps the teacher out of feature KD (its head outputs still count),
    e.g. a teacher of another architecture whose neck maps the student's should not imitate.
    """

    model: str = ""
    weights: str | None = None
    names: dict[int, int] | None = None
    weight: float = 1.0
    feat_weight: float | None = None

    @property
    def feat_share(self) -> float:
        """The teacher's (relative) share in feature KD: ``feat_weight``, or ``weight`` when not given."""
        return self.weight if self.feat_weight is None else float(self.feat_weight)


@dataclass
class DistillCfg:
    """Which KD terms are used and how each is weighted before balancing (see docs/gor.md).

    Weights are applied inside ``L_kd = feat * kd_feat + cls * kd_cls + box * kd_box``; 0 turns a term off.
    """

    feat: float = 1.0  # weight of feature KD on the neck maps feeding the Detect head (P3-P5)
    feat_loss: str = "cwd"  # cwd (channel-wise distillation) | mse (teacher-score-weighted MSE)
    feat_tau: float = 1.0  # CWD temperature
    cls: float = 1.0  # weight of class-logit KD (per-class sigmoid KL at temperature cls_T)
    cls_T: float = 2.0
    box: float = 1.0  # weight of box KD (DFL-bin KL when reg_max matches, else L1 on decoded ltrb distances)
    box_T: float = 1.0
    conf_weight: bool = True  # weight head KD per anchor by teacher confidence (max class prob)
    ensemble: str = "mean_target"  # mean_target (distil towards the teachers' averaged predictions, weighted by
    # gor.teachers[].weight) | mean_loss (average the per-teacher KD losses) | gt_weighted (mean_target with each
    # teacher's share scaled per anchor by its agreement with the labels); docs/gor.md, Results
    val_kd: bool = True  # also run the teachers on validation batches to log val/kd_*; false saves a teacher forward
    # per val image (COCO val2017: 5000 images) and logs val/kd_* as 0


@dataclass
class BalanceCfg:
    """How L_task and L_kd are combined (docs/gor.md): ``fixed``, ``L_task + w_kd L_kd`` with a hand-set ``w_kd``
    (constant, or moving to ``w_kd_end``); ``gor``, two learnable scalars that balance the two losses' gradients
    (GoR). Each key applies to the methods its comment names.
    """

    method: str = "gor"  # gor (two learned scalars, gor_det.balance.gor) | fixed (a hand-set w_kd; 0: no KD)
    w_kd: float = 1.0  # fixed: the KD weight (0: no KD); gor: the KD weight the scalars start from (task weight 1)
    w_kd_end: float | None = None  # fixed: the KD weight at the end of training, reached from w_kd along
    # `schedule` over the training batches (null: w_kd throughout)
    schedule: str = "linear"  # fixed with w_kd_end: linear (in the weight) | exp (the same factor per batch, i.e.
    # linear in log w_kd; needs w_kd, w_kd_end > 0)
    lr: float | str | None = "auto"  # gor: the scalars' own lr (they are log-weights, on no scale of the network's);
    # auto: the balancer's benchmarked lr (gor: 0.01, ~400 steps to its balance); null: the trainer's lr
    grad_every: int = 4  # gor: measure the two losses' gradients every N training steps (two backward passes
    # through the head region each, ~half a QAT step on CPU); the last measurement is used in between

    def validate(self, where: str = "gor.balance") -> None:
        """Raise a :class:`ConfigError` naming the key for a value out of range."""
        if isinstance(self.lr, str) and self.lr != "auto":
            raise ConfigError(f"{where}.lr={self.lr!r} must be a number, auto (the balancer's benchmarked lr) or "
                              "null (the trainer's lr)")
        if isinstance(self.lr, float) and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"{where}.lr={self.lr} must be a positive number (e.g. 0.01), auto or null")
        if not (math.isfinite(self.w_kd) and self.w_kd >= 0):
            raise ConfigError(f"{where}.w_kd={self.w_kd} must be a number >= 0 (0: no KD)")
        if self.w_kd_end is not None:
            if not (math.isfinite(self.w_kd_end) and self.w_kd_end >= 0):
                raise ConfigError(f"{where}.w_kd_end={self.w_kd_end} must be a number >= 0 (the KD weight at the end)")
            if self.schedule == "exp" and not (self.w_kd > 0 and self.w_kd_end > 0):
                raise ConfigError(f"{where}.schedule=exp needs w_kd > 0 and w_kd_end > 0 (got {self.w_kd} -> "
                                  f"{self.w_kd_end}); use schedule=linear to reach 0")
        if self.grad_every < 1:
            raise ConfigError(f"{where}.grad_every={self.grad_every} must be >= 1 (1: measure every step)")


# gor.balance.method -> the dataclass of its keys. The product's two; gor_det.balance.register adds a plug-in's.
_BALANCE_CFGS: dict[str, type] = {"fixed": BalanceCfg, "gor": BalanceCfg}


def register_balance_cfg(method: str, cfg: type = BalanceCfg) -> None:
    """Accept ``gor.balance.method: method`` with the keys of ``cfg`` (a :class:`BalanceCfg` subclass)."""
    if not (isinstance(cfg, type) and issubclass(cfg, BalanceCfg)):
        raise TypeError(f"the cfg of balancer {method!r} must be a BalanceCfg subclass, got {cfg!r}")
    _BALANCE_CFGS[method] = cfg


def balance_methods() -> list[str]:
    """The accepted ``gor.balance.method`` values."""
    return sorted(_BALANCE_CFGS)


@dataclass
class QuantCfg:
    """Quantization-aware training of the student (see docs/quantization.md).

    Present in the cfg (``gor.quant: {...}``) means on, unless ``enabled: false``.
    """

    enabled: bool = True
    w_bits: int = 8  # 2..8, per-output-channel symmetric weights
    a_bits: int = 8  # 2..8, per-tensor activations (conv inputs)
    a_symmetric: bool = True  # signed symmetric activations (TensorRT); false: asymmetric unsigned
    calib: str = "mse"  # minmax | percentile | mse: how the step sizes are initialised
    calib_batches: int = 8
    percentile: float = 99.99
    learn_scales: bool = True  # LSQ: step sizes are trained (with LSQ gradient scaling)
    fold_bn: bool = True  # fold BN into the quantized weight during training (deploy-exact)
    freeze_bn_epoch: int = -1  # from this epoch on BN statistics are frozen (-1: never)
    start_epoch: int = 0  # fake quantization from this epoch on (calibrated then); earlier epochs fine-tune in float
    skip: list[str] | None = None  # glob patterns of conv module names kept in float; None: the YOLO defaults
    placement: str = "conv"  # conv: conv inputs only | full: also residual Add and Concat inputs, tied scales (INT8 graph)
    scale_lr: float | None = None  # lr of the step sizes (None: the trainer's)


@dataclass
class ExportCfg:
    """Defaults for ``tools/export_det.py``."""

    formats: list[str] = field(default_factory=lambda: ["onnx_qdq", "onnx", "ncnn", "onnx_ort_int8"])
    imgsz: int | None = None  # None: the training imgsz
    parity_images: list[str] | None = None  # None: Ultralytics' bundled bus.jpg and zidane.jpg
    calib_images: int = 32  # onnx_ort_int8: training images calibrating the ranges QAT did not learn (with --data)


@dataclass
class GorCfg:
    """The whole ``gor:`` section. ``teachers`` empty and ``quant`` None means stock Ultralytics training."""

    teachers: list[TeacherCfg] = field(default_factory=list)
    distill: DistillCfg = field(default_factory=DistillCfg)
    balance: BalanceCfg = field(default_factory=BalanceCfg)
    quant: QuantCfg | None = None
    export: ExportCfg = field(default_factory=ExportCfg)
    threads: int | None = None  # torch CPU threads (None: all cores up to 8; Ultralytics alone uses cores-1)

    @property
    def distilling(self) -> bool:
        return bool(self.teachers)

    @property
    def quantizing(self) -> bool:
        return self.quant is not None and self.quant.enabled

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "distill.feat_loss": ("cwd", "mse"),
    "distill.ensemble": ("mean_target", "mean_loss", "gt_weighted"),
    "balance.schedule": ("linear", "exp"),
    "quant.calib": ("minmax", "percentile", "mse"),
    "quant.placement": ("conv", "full"),
}


# --------------------------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------------------------
def suggest(key: str, valid) -> str:
    """``" (did you mean 'x'?)"`` for the closest valid key, or ``""``."""
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown(key: str, where: str, valid) -> ConfigError:
    listing = f"; valid keys: {', '.join(sorted(valid))}" if len(valid) <= 16 else ""
    return ConfigError(f"unknown key '{key}' in {where}{suggest(key, valid)}{listing}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` (dataclasses recursively); raise ConfigError on mismatch."""
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        if tp is type(None) or type(None) in args:
            return None
        raise ConfigError(f"{where} must not be empty (null)")
    if args and type(None) in args:  # Optional[X] (or X | Y | None) with a value: the first of X, Y that takes it
        inner = [a for a in args if a is not type(None)]
        for tp_i in inner[:-1]:
            try:
                return _coerce(value, tp_i, where)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], where)
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and tp is TeacherCfg and isinstance(value, str):
            value = {"model": value}
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {_coerce(k, args[0], where): _coerce(v, args[1], where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
        if tp is int and float(value) != out:
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return out
    if tp is str:
        return str(value)
    return value


def check_choices(obj, where: str) -> None:
    """Raise a :class:`ConfigError` for a field of the cfg dataclass ``obj`` (the section ``where``, e.g.
    ``gor.distill``) whose value is not one of its :data:`CHOICES`."""
    prefix = where.split(".", 1)[1] if "." in where else ""
    for f in fields(obj):
        choices = CHOICES.get(f"{prefix}.{f.name}" if prefix else f.name)
        val = getattr(obj, f.name)
        if choices and val not in choices:
            raise ConfigError(f"{where}.{f.name}={val!r} is not one of {', '.join(choices)}{suggest(val, choices)}")


def _build(cls, data: dict, where: str):
    hints = get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    kwargs = {}
    for k, v in data.items():
        if k not in valid:
            raise _unknown(k, where, valid)
        kwargs[k] = _coerce(v, hints[k], f"{where}.{k}")
    obj = cls(**kwargs)
    check_choices(obj, where)
    return obj


def _build_balance(section) -> BalanceCfg:
    """The ``gor.balance`` section with the keys of its method (:func:`register_balance_cfg`), validated."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"gor.balance must be a mapping, got {section!r}")
    method = str(section.get("method", BalanceCfg.method))
    if method not in _BALANCE_CFGS:
        names = balance_methods()
        raise ConfigError(f"gor.balance.method={method!r} is not one of {', '.join(names)}{suggest(method, names)}")
    cfg = _build(_BALANCE_CFGS[method], section, "gor.balance")
    cfg.validate()
    return cfg


# (dotted key, low, high, low inclusive, high inclusive, what the value is) of the bounded numbers of the gor:
# section outside gor.balance (BalanceCfg.validate checks its own); None leaves that side open. Checked by
# parse_gor; an optional value left at None is not checked.
RANGES: tuple[tuple[str, float | None, float | None, bool, bool, str], ...] = (
    ("distill.feat", 0, None, True, False, "weight of feature KD in L_kd; 0 turns it off"),
    ("distill.feat_tau", 0, None, False, False, "CWD temperature, e.g. 1"),
    ("distill.cls", 0, None, True, False, "weight of class-logit KD in L_kd; 0 turns it off"),
    ("distill.cls_T", 0, None, False, False, "class-logit KD temperature, e.g. 2"),
    ("distill.box", 0, None, True, False, "weight of box KD in L_kd; 0 turns it off"),
    ("distill.box_T", 0, None, False, False, "box KD temperature, e.g. 1"),
    ("quant.calib_batches", 1, None, True, False, "training batches that initialise the step sizes, e.g. 8"),
    ("quant.percentile", 50, 100, False, True, "percent of |x| kept inside the range by calib=percentile, e.g. 99.99"),
    ("quant.freeze_bn_epoch", -1, None, True, False, "-1: never freeze BN statistics"),
    ("quant.scale_lr", 0, None, False, False, "lr of the step sizes; null: the trainer's lr"),
    ("export.imgsz", 32, None, True, False, "export image size in pixels; null: the training imgsz"),
    ("threads", 1, None, True, False, "torch CPU threads; null: all cores up to 8"),
)


def _range_text(lo, hi, lo_incl: bool, hi_incl: bool) -> str:
    """``> 0``, ``>= 1``, ``50 < x <= 100``."""
    if hi is None:
        return f"{'>=' if lo_incl else '>'} {lo}"
    if lo is None:
        return f"{'<=' if hi_incl else '<'} {hi}"
    return f"{lo} {'<=' if lo_incl else '<'} x {'<=' if hi_incl else '<'} {hi}"


def _check_ranges(cfg: GorCfg) -> None:
    """One ConfigError line for the first value outside :data:`RANGES`: key, bad value and the valid range."""
    for dotted, lo, hi, lo_incl, hi_incl, what in RANGES:
        *path, name = dotted.split(".")
        holder = cfg
        for part in path:
            holder = getattr(holder, part)
        if holder is None:  # gor.quant absent: nothing to check there
            continue
        v = getattr(holder, name)
        if v is None or isinstance(v, str):
            continue
        ok = math.isfinite(v)
        ok = ok and (lo is None or (v >= lo if lo_incl else v > lo)) and (hi is None or (v <= hi if hi_incl else v < hi))
        if not ok:
            raise ConfigError(f"gor.{dotted}={v} is out of range; use {_range_text(lo, hi, lo_incl, hi_incl)} ({what})")


def parse_gor(section: dict | None) -> GorCfg:
    """Build a :class:`GorCfg` from the ``gor:`` mapping (None or {} gives the defaults: plain training)."""
    section = dict(section or {})
    if isinstance(section.get("quant"), bool):  # "quant: true" is a shorthand for the defaults
        section["quant"] = {} if section["quant"] else {"enabled": False}
    if "teachers" in section and section["teachers"] is None:
        section["teachers"] = []
    balance = _build_balance(section.pop("balance", None))
    cfg = _build(GorCfg, section, "gor")
    cfg.balance = balance
    for i, t in enumerate(cfg.teachers):
        if not (math.isfinite(t.weight) and t.weight > 0):
            raise ConfigError(f"gor.teachers[{i}].weight={t.weight} must be a positive number (its share in the "
                              "ensemble; remove the teacher to leave it out)")
        if not (math.isfinite(t.feat_share) and t.feat_share >= 0):
            raise ConfigError(f"gor.teachers[{i}].feat_weight={t.feat_weight} must be a number >= 0 (its share in "
                              "feature KD; 0 leaves it out of feature KD)")
    if cfg.teachers and cfg.distill.feat and not any(t.feat_share > 0 for t in cfg.teachers):
        raise ConfigError("every gor.teachers[].feat_weight is 0 but gor.distill.feat > 0: give one teacher a "
                          "positive feat_weight, or set gor.distill.feat: 0 to switch feature KD off")
    _check_ranges(cfg)
    if cfg.export.calib_images < 1:
        raise ConfigError(f"gor.export.calib_images={cfg.export.calib_images} must be >= 1 (e.g. 32)")
    q = cfg.quant
    if q is not None:
        for name in ("w_bits", "a_bits"):
            if not 2 <= getattr(q, name) <= 8:
                raise ConfigError(f"gor.quant.{name}={getattr(q, name)} is out of range; use 2..8")
        if q.start_epoch < 0:
            raise ConfigError(f"gor.quant.start_epoch={q.start_epoch} must be >= 0 (0: quantize from the first epoch)")
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Run cfg = Ultralytics keys + gor:
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class RunCfg:
    """A resolved run: Ultralytics train overrides (a plain dict) and the gor section."""

    ultralytics: dict[str, Any]
    gor: GorCfg

    def to_dict(self) -> dict[str, Any]:
        return {**self.ultralytics, "gor": self.gor.to_dict()}


def parse_value(text: str) -> Any:
    """Parse a ``key=value`` override value the way YAML would (``3`` -> int, ``false`` -> bool, ``[a,b]`` -> list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = {} if nxt is None else nxt
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{dotted}': '{p}' is not a section")
            d[p] = nxt
        d = nxt
    d[parts[-1]] = value


#: the run cfg templates gor_det ships (package data; ``cfg/`` in a source checkout links here)
CFG_DIR = Path(__file__).resolve().parent / "cfg"


def shipped_cfgs() -> list[str]:
    """Names of the shipped run cfg templates, relative to :data:`CFG_DIR` (``demo_student.yaml``, ...)."""
    return sorted(str(p.relative_to(CFG_DIR)) for p in CFG_DIR.rglob("*.yaml"))


def resolve_cfg_path(path: str | Path) -> Path:
    """A local cfg file, else the shipped template of that name (``demo_student.yaml``, ``cfg/demo_student.yaml``,
    ``coco_student_qat_kd.yaml``): a pip-installed gor_det finds its templates from any directory."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.as_posix().removeprefix("cfg/")
    if not p.is_absolute() and (CFG_DIR / name).is_file():
        return CFG_DIR / name
    raise ConfigError(f"cfg file not found: {p} (pass an existing YAML, or a shipped template: "
                      f"{', '.join(shipped_cfgs())})")


def load_yaml(path: str | Path) -> dict:
    p = resolve_cfg_path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cfg file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cfg file {p} must hold a mapping of keys, got {type(data).__name__}")
    return data


def load_run_cfg(
    path: str | Path | None,
    overrides: list[str] | dict | None = None,
    valid_ultralytics_keys=None,
) -> RunCfg:
    """Load a run cfg YAML, apply ``key=value`` overrides (``epochs=3``, ``gor.balance.method=fixed``) and validate.

    ``valid_ultralytics_keys``: the Ultralytics train keys (``DEFAULT_CFG_DICT``); None skips that check.
    """
    data = load_yaml(path) if path else {}
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for ov in overrides or []:
            if "=" not in ov:
                raise ConfigError(f"override '{ov}' must look like key=value (e.g. epochs=3 or gor.quant.w_bits=4)")
            k, v = ov.split("=", 1)
            items.append((k.strip(), parse_value(v)))
    for k, v in items:
        if k == "gor" and isinstance(v, dict):
            data["gor"] = {**(data.get("gor") or {}), **v}
        else:
            _set_dotted(data, k, v)
    gor_section = data.pop("gor", None)
    if valid_ultralytics_keys is not None:
        valid = set(valid_ultralytics_keys) | {"gor"}
        for k in data:
            if k not in valid:
                raise _unknown(k, "the run cfg (Ultralytics keys + 'gor')", valid)
    return RunCfg(ultralytics=data, gor=parse_gor(gor_section))
