"""gor_det: quantization-aware training + GoR-balanced distillation for Ultralytics YOLO detectors.

Importing gor_det makes the process offline by construction (see ``gor_det._offline``); it never imports
tensorrt, ncnn or onnx (those are imported lazily by ``gor_det.export``).
"""

from gor_det._offline import setup_offline

setup_offline()

__version__ = "0.1.0"
__all__ = ["__version__", "setup_offline"]
