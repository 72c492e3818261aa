"""gor_det.quant: quantization-aware training for Ultralytics-style models (pure torch; never imports ultralytics).

* :mod:`~gor_det.quant.numerics`: integer grids, :class:`FakeQuantizer` (LSQ step sizes, calibration).
* :mod:`~gor_det.quant.modules`: :class:`QConvBn2d` (folded BN), :class:`QConv2d`, :class:`QLinear`.
* :mod:`~gor_det.quant.placement`: :func:`place_full` (quantized residual Adds and Concats, tied step sizes).
* :mod:`~gor_det.quant.transform`: :func:`prepare_qat` / :func:`strip_qat` and helpers.
* :mod:`~gor_det.quant.calibrate`: :func:`calibrate`.
* :mod:`~gor_det.quant.deploy`: :func:`convert_for_export` (ONNX Q/DQ-exportable form).
"""

from gor_det.quant.calibrate import calibrate
from gor_det.quant.deploy import DeployQConv2d, DeployQLinear, DeployQuant, convert_for_export
from gor_det.quant.modules import QConv2d, QConvBn2d, QLinear, QuantModule, quant_modules
from gor_det.quant.numerics import FakeQuantizer, fake_quant, qrange
from gor_det.quant.placement import PLACEMENTS, TiedQuantizer, is_placed, place_full, unplace
from gor_det.quant.transform import (
    DEFAULT_SKIP,
    freeze_bn,
    is_conv_block,
    is_qat,
    prepare_qat,
    quant_scale_parameters,
    quant_state_dict,
    set_quant_enabled,
    skip_filter,
    strip_qat,
)

__all__ = [
    "DEFAULT_SKIP",
    "DeployQConv2d",
    "DeployQLinear",
    "DeployQuant",
    "FakeQuantizer",
    "PLACEMENTS",
    "QConv2d",
    "QConvBn2d",
    "QLinear",
    "QuantModule",
    "TiedQuantizer",
    "calibrate",
    "convert_for_export",
    "fake_quant",
    "freeze_bn",
    "is_conv_block",
    "is_placed",
    "is_qat",
    "place_full",
    "prepare_qat",
    "qrange",
    "quant_modules",
    "quant_scale_parameters",
    "quant_state_dict",
    "set_quant_enabled",
    "skip_filter",
    "strip_qat",
    "unplace",
]
