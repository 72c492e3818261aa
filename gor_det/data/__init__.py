"""gor_det.data: datasets (the offline synthetic COCO-like benchmark)."""

from gor_det.data.synthetic import CLASSES, PRESETS, SynthSpec, is_complete, make_synthetic

__all__ = ["CLASSES", "PRESETS", "SynthSpec", "is_complete", "make_synthetic"]
