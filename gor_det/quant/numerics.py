"""Fake-quantization numerics: integer grids, the LSQ fake quantizer and its calibration.

Integer grids (``b`` bits, 2 <= b <= 8):

* weights, per output channel ``c`` (axis 0), symmetric *narrow* range, zero point 0::

      qmin = -(2^(b-1) - 1),  qmax = 2^(b-1) - 1          (int8: [-127, 127], what TensorRT accepts)

* activations, per tensor, symmetric signed (default, TensorRT)::

      qmin = -2^(b-1),  qmax = 2^(b-1) - 1,  z = 0         (int8: [-128, 127])

  or asymmetric unsigned (``a_symmetric: false``) with an integer zero point ``z`` in ``[qmin, qmax]``::

      qmin = 0,  qmax = 2^b - 1                            (uint8: [0, 255])

Forward, step size ``s > 0`` (float32, ``s = exp(log_scale)``), round half to even::

    q(x)  = clamp(round(x / s) + z, qmin, qmax)            (the integer code)
    Q(x)  = s * (q(x) - z)                                 (the fake-quantized value, same units as x)

Backward (LSQ, Esser et al. 2020: straight-through estimator for x, exact derivative of Q for s)::

    dQ/dx = 1                 if qmin <= round(x/s) + z <= qmax, else 0
    dQ/ds = round(x/s) - x/s  inside the grid
          = qmin - z          clipped below
          = qmax - z          clipped above
    the step-size gradient is multiplied by g = 1 / sqrt(N * qmax),  N = number of elements sharing that step size
    (for activations N counts the whole batch tensor), and by the chain rule d/dlog_scale = s * d/ds.

These are exactly the definitions of PyTorch's ``torch._fake_quantize_learnable_per_{tensor,channel}_affine``
(``grad_factor`` = g), which :class:`FakeQuantizer` calls; ``tests/test_quant_numerics.py`` checks forward and both
gradients against a float64 reference written from the formulas above.

Training, both go through :func:`gor_det.quant.kernels.lsq_fake_quant` instead (compiled on CPU, plain torch with
no host sync on a GPU): the same forward and input gradient bit for bit, the step-size gradient up to float summation
order, in fewer passes (see that module).

Calibration (initial step sizes from observed values; ``a``/``b`` the clipping range, ``amax = max(-a, b)``)::

    symmetric:   s = amax / qmax                           z = 0
    asymmetric:  s = (b - a) / (qmax - qmin)               z = clamp(round(qmin - a / s), qmin, qmax)
                 with a <= 0 <= b enforced (0 must be exactly representable: zero padding)

    minmax:      a, b = min(x), max(x)                     (exact running values over all observed batches)
    percentile:  amax = P_p(|x|) (symmetric) or a, b = P_(100-p)(x), P_p(x) (asymmetric), p = qcfg.percentile
    mse:         a, b = r* (min, max),  r* = argmin_r mean((Q_r(x) - x)^2),  r in {0.05, 0.10, ..., 1} refined by
                 +-0.04 in steps of 0.01 around the best (0.01 <= r <= 1)

so an ``mse`` clipping range never exceeds the ``minmax`` one. Per-channel quantizers do all of this per row
(output channel). Percentile and mse use a bounded random sample of the observed values (at most
``SAMPLES_PER_CALL`` per ``observe`` call, ``MAX_SAMPLES`` in total per row).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gor_det.quant.kernels import lsq_fake_quant

SCALE_MIN = 1e-8  # floor of a calibrated step size (an all-zero channel must not give log(0))
SAMPLES_PER_CALL = 2**14  # values kept per observe() call and row, for percentile / mse
MAX_SAMPLES = 2**17  # values kept in total per row
MSE_COARSE = torch.arange(1, 21, dtype=torch.float64) / 20  # clipping ratios searched by "mse", then refined by 0.01
METHODS = ("minmax", "percentile", "mse")


def qrange(bits: int, symmetric: bool = True, narrow: bool = False) -> tuple[int, int]:
    """Integer grid ``(qmin, qmax)`` of a ``bits``-bit quantizer (see the module docstring)."""
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits={bits} is out of range; use 2..8")
    if symmetric:
        half = 2 ** (bits - 1)
        return (-(half - 1) if narrow else -half), half - 1
    if narrow:
        raise ValueError("narrow range is defined for symmetric quantizers only")
    return 0, 2**bits - 1


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Plain (non-learnable) ``Q(x) = s * (clamp(round(x/s) + z, qmin, qmax) - z)``; ``scale``/``zero_point`` broadcast
    against ``x``. Used by the mse search; training uses the PyTorch kernels."""
    return (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale


class Float32Module(nn.Module):
    """Base class: ``.half()``, ``.double()``, ``.to(dtype)`` leave this module's floating tensors (and its children's) in
    float32; device moves still apply.

    Why: Ultralytics saves checkpoints with ``deepcopy(ema).half()`` and loads them with ``.half()`` (AutoBackend, the
    in-training validator). Step sizes rounded to fp16 would change every quantized value on resume (and
    ``torch._fake_quantize_*`` reject fp16 scales), so quantizer state and the weights it was fitted to must stay exact.
    Outside autocast, inputs are cast to float32 inside ``forward`` and outputs back to the input dtype.

    The conversion ``fn`` is probed per tensor, on an empty tensor of that tensor's device and dtype: a dtype-only
    conversion (``.half()``) leaves every tensor on its own device, a device move (``.cuda()``, ``.to('cpu',
    torch.float16)``) moves every tensor and keeps the floating ones float32.
    """

    def _apply(self, fn, recurse=True):
        inner = fn

        def fn(t):  # noqa: F811 - the same conversion, with floating tensors kept in float32
            if not t.is_floating_point():
                return inner(t)
            probe = inner(t.new_empty(0))
            if not isinstance(probe, torch.Tensor) or not probe.is_floating_point() or probe.dtype == torch.float32:
                return inner(t)
            return t.to(device=probe.device, dtype=torch.float32)

        return super()._apply(fn, recurse)


class FakeQuantizer(Float32Module):
    """LSQ fake quantizer, per tensor (``channels=None``, scale shape ``()``) or per channel on axis 0 (``(C,)``).

    Args:
        bits: 2..8. symmetric: signed grid with z = 0, else unsigned with a zero point. narrow: drop the most negative
        code (weights; TensorRT). channels: None or the number of channels (axis 0). learn_scale: train the step size.
        calib: default method of :meth:`init_scale` (minmax | percentile | mse). percentile: for ``percentile``, in %.

    State (all float32): Parameter ``log_scale`` and buffers ``zero_point`` (integer values; float because the PyTorch
    learnable kernels take a float zero point) and ``initialized`` (0. or 1.; a float, not a bool, so that Ultralytics'
    EMA, which lerps floating entries only, carries it into its copy together with ``log_scale``).
    Attributes ``enabled`` (False: identity) and ``observing`` (True: record statistics, return x unchanged).

    A quantizer that was never calibrated initialises itself from the first tensor it sees (method ``calib``).
    """

    def __init__(
        self,
        bits: int = 8,
        *,
        symmetric: bool = True,
        narrow: bool = False,
        channels: int | None = None,
        learn_scale: bool = True,
        calib: str = "minmax",
        percentile: float = 99.99,
    ):
        super().__init__()
        self.bits, self.symmetric, self.narrow, self.channels = int(bits), bool(symmetric), bool(narrow), channels
        self.qmin, self.qmax = qrange(self.bits, self.symmetric, self.narrow)
        if calib not in METHODS:
            raise ValueError(f"calib={calib!r} is not one of {', '.join(METHODS)}")
        self.calib, self.percentile = calib, float(percentile)
        shape = () if channels is None else (int(channels),)
        # The step size is stored as its logarithm. Adam/AdamW move a parameter by about lr per step whatever the
        # gradient's magnitude; step sizes span orders of magnitude (1e-4 for weights .. 1e-1 for activations), so an
        # absolute step on s would wipe out small scales, while a step on log(s) is a relative change (lr=1e-3 ->
        # ~0.1%) for every layer alike; and exp() keeps s > 0 without clamping.
        self.log_scale = nn.Parameter(torch.zeros(shape), requires_grad=learn_scale)
        self.learn_scale = bool(learn_scale)
        self.register_buffer("zero_point", torch.zeros(shape))
        self.register_buffer("initialized", torch.zeros(()))
        self._initialized_cache = False
        self.enabled = True
        self.observing = False
        self._obs: dict | None = None

    # ----------------------------------------------------------------------------------------------------------------
    @classmethod
    def for_weights(cls, channels: int, qcfg) -> FakeQuantizer:
        """Per-output-channel symmetric narrow-range weight quantizer from a :class:`~gor_det.config.QuantCfg`."""
        return cls(
            qcfg.w_bits,
            symmetric=True,
            narrow=True,
            channels=channels,
            learn_scale=qcfg.learn_scales,
            calib=qcfg.calib,
            percentile=qcfg.percentile,
        )

    @classmethod
    def for_acts(cls, qcfg) -> FakeQuantizer:
        """Per-tensor activation quantizer (signed symmetric, or unsigned with zero point) from a ``QuantCfg``."""
        return cls(
            qcfg.a_bits,
            symmetric=qcfg.a_symmetric,
            narrow=False,
            channels=None,
            learn_scale=qcfg.learn_scales,
            calib=qcfg.calib,
            percentile=qcfg.percentile,
        )

    @property
    def scale(self) -> torch.Tensor:
        """Step size ``exp(log_scale)``, shape ``()`` or ``(C,)``, in the units of the quantized tensor."""
        return self.log_scale.exp()

    @property
    def is_initialized(self) -> bool:
        # cached once true: reading the buffer is a device sync (on a GPU, twice per quantized layer and forward)
        if not getattr(self, "_initialized_cache", False):
            self._initialized_cache = bool(self.initialized > 0)
        return self._initialized_cache

    def _load_from_state_dict(self, *args, **kwargs):
        self._initialized_cache = False  # the loaded ``initialized`` buffer decides again
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        kind = "per-tensor" if self.channels is None else f"per-channel({self.channels})"
        return (
            f"bits={self.bits}, q=[{self.qmin}, {self.qmax}], {kind}, learn_scale={self.learn_scale}, "
            f"enabled={self.enabled}"
        )

    # ----------------------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, multiplier: torch.Tensor | None = None) -> torch.Tensor:
        """Fake-quantize ``x`` (any shape; axis 0 = channels when per-channel), or ``x * multiplier`` (per channel,
        ``multiplier`` (C,): a BN fold factor). Returns ``x``'s dtype."""
        if multiplier is not None and (self.observing or not self.enabled or not self.is_initialized):
            x, multiplier = x * multiplier.reshape(-1, *([1] * (x.dim() - 1))), None
        if self.observing:
            self.observe(x)
            return x
        if not self.enabled:
            return x
        if not self.is_initialized:
            with torch.no_grad():
                self.observe(x)
                self.init_scale()
        return self.quantize(x, multiplier)

    def quantize(self, x: torch.Tensor, multiplier: torch.Tensor | None = None) -> torch.Tensor:
        """``Q(x)`` (or ``Q(x * multiplier)``, per channel) with the LSQ gradients, regardless of ``enabled`` /
        ``observing``. Returns ``x``'s dtype (computed in float32; an fp16 input under AMP is neither copied to float32
        nor saved as float32 for the backward)."""
        # detach when fixed: the trainer may switch requires_grad back on; a detached scale never gets a gradient
        s = self.scale if self.learn_scale else self.scale.detach()
        n = x.numel() // max(1, s.numel())
        g = 1.0 / math.sqrt(max(1, n) * self.qmax)  # LSQ gradient scale
        per_channel = self.channels is not None
        s, z = (s, self.zero_point) if per_channel else (s.reshape(1), self.zero_point.reshape(1))
        return lsq_fake_quant(x, s, z, self.qmin, self.qmax, g, per_channel, multiplier)

    def int_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes ``q(x) - z`` of ``x`` as a float32 tensor (what deploy stores), recovered from the kernel's
        output so they are exactly the values training used."""
        with torch.no_grad():
            y = self.quantize(x.float())
            s = self.scale.reshape(-1, *([1] * (x.dim() - 1))) if self.channels is not None else self.scale
            return torch.round(y / s)

    # ----------------------------------------------------------------------------------------------------------------
    # Calibration
    # ----------------------------------------------------------------------------------------------------------------
    def reset_observer(self) -> None:
        self._obs = None

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        return x.reshape(1, -1) if self.channels is None else x.reshape(x.shape[0], -1)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Accumulate running min/max (per row) and a bounded random sample of ``x`` (for percentile / mse)."""
        rows = self._rows(x)
        lo, hi = rows.amin(1), rows.amax(1)
        obs = self._obs
        if obs is None:
            obs = self._obs = {"min": lo, "max": hi, "samples": [], "kept": 0, "calls": 0}
        else:
            obs["min"], obs["max"] = torch.minimum(obs["min"], lo), torch.maximum(obs["max"], hi)
        if obs["kept"] < MAX_SAMPLES:
            k = min(rows.shape[1], SAMPLES_PER_CALL, MAX_SAMPLES - obs["kept"])
            if k < rows.shape[1]:  # private generator: calibration must not move the training RNG
                gen = torch.Generator(device=rows.device).manual_seed(1234 + obs["calls"])
                idx = torch.randint(rows.shape[1], (k,), generator=gen, device=rows.device)
                rows = rows[:, idx]
            obs["samples"].append(rows.clone())
            obs["kept"] += k
        obs["calls"] += 1

    def _qparams(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step size and zero point (float64, per row) for the clipping range ``[a, b]`` (see module docstring)."""
        a, b = a.double(), b.double()
        if self.symmetric:
            s = torch.maximum(-a, b).clamp_min(0) / self.qmax
            return s.clamp_min(SCALE_MIN), torch.zeros_like(s)
        a, b = a.clamp_max(0), b.clamp_min(0)
        s = ((b - a) / (self.qmax - self.qmin)).clamp_min(SCALE_MIN)
        z = torch.clamp(torch.round(self.qmin - a / s), self.qmin, self.qmax)
        return s, z

    @torch.no_grad()
    def init_scale(self, method: str | None = None) -> None:
        """Set ``log_scale`` and ``zero_point`` from what :meth:`observe` collected; clears the observations."""
        method = method or self.calib
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not one of {', '.join(METHODS)}")
        obs = self._obs
        if obs is None:
            raise RuntimeError("init_scale() before observe(): nothing was observed")
        lo, hi = obs["min"], obs["max"]
        if method == "minmax":
            a, b = lo, hi
        else:
            x = torch.cat(obs["samples"], 1).double()
            if method == "percentile":
                p = min(max(self.percentile, 0.0), 100.0) / 100
                if self.symmetric:
                    b = torch.quantile(x.abs(), p, dim=1)
                    a = -b
                else:
                    a, b = torch.quantile(x, 1 - p, dim=1), torch.quantile(x, p, dim=1)
            else:
                a, b = self._mse_range(x, lo.double(), hi.double())
        s, z = self._qparams(a, b)
        self.set_qparams(s.reshape(self.log_scale.shape), z.reshape(self.zero_point.shape))
        self._obs = None

    def _mse_range(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the clipping range ``r * [min, max]`` with the smallest quantization MSE: ``r`` on the coarse grid
        MSE_COARSE, then refined in steps of 0.01 around the best coarse value (29 evaluations instead of 100)."""
        x = x.float()
        best_err = torch.full_like(lo, float("inf"))
        best_r = torch.ones_like(lo)

        def search(ratios: torch.Tensor) -> None:  # ratios: (R, rows)
            nonlocal best_err, best_r
            for r in ratios:
                s, z = self._qparams(lo * r, hi * r)
                err = (fake_quant(x, s[:, None].float(), z[:, None].float(), self.qmin, self.qmax) - x).pow(2)
                err = err.mean(1, dtype=torch.float64)
                better = err < best_err
                best_err, best_r = torch.where(better, err, best_err), torch.where(better, r, best_r)

        search(MSE_COARSE[:, None].to(lo).expand(-1, lo.numel()))
        fine = (best_r[None] + torch.arange(-4, 5, dtype=lo.dtype, device=lo.device)[:, None] / 100).clamp(0.01, 1.0)
        search(fine)
        return lo * best_r, hi * best_r

    @torch.no_grad()
    def init_from(self, x: torch.Tensor, method: str | None = None) -> None:
        """Calibrate directly from one tensor (weights): ``observe(x)`` then ``init_scale(method)``."""
        self.reset_observer()
        self.observe(x)
        self.init_scale(method)

    @torch.no_grad()
    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> None:
        """Set the step size (> 0, clamped to SCALE_MIN) and zero point; marks the quantizer initialised."""
        scale = torch.as_tensor(scale, dtype=torch.float64, device=self.log_scale.device)
        self.log_scale.copy_(scale.clamp_min(SCALE_MIN).log().to(torch.float32).expand_as(self.log_scale))
        if zero_point is not None:
            self.zero_point.copy_(torch.as_tensor(zero_point, dtype=torch.float32).expand_as(self.zero_point))
        self.initialized.fill_(1.0)
        self._initialized_cache = True
