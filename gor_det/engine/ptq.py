"""Post-training quantization baseline: the same quant modules as QAT, calibrated only (no training).

It is the floor QAT must beat in the benchmark. The result is a regular gor_det QAT checkpoint, so evaluation and
export treat it exactly like a QAT student.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import torch

from gor_det.config import QuantCfg
from gor_det.engine.checkpoint import atomic_torch_save, deployable
from gor_det.engine.evaluate import load_model
from gor_det.quant import calibrate, prepare_qat


def calibration_loop(data: str | Path, imgsz: int, batch: int, n_batches: int):
    """A ``forward_loop(model)`` over ``n_batches`` train images with val transforms (letterbox, no augmentation)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    d = check_det_dataset(str(data))
    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch, "data": str(data), "workers": 0})
    ds = build_yolo_dataset(cfg, d["train"], batch, d, mode="val", rect=False, stride=32)
    loader = build_dataloader(ds, batch, workers=0, shuffle=False)

    def forward_loop(model):
        dev = next(model.parameters()).device
        for i, b in enumerate(loader):
            if i >= n_batches:
                break
            model(b["img"].to(dev).float() / 255)

    return forward_loop


def ptq(weights: str | Path, data: str | Path, qcfg: QuantCfg, imgsz: int, out: str | Path, batch: int = 16) -> Path:
    """Calibrate a float checkpoint into a quantized one (``gor.quant`` numerics); returns the saved ``.pt``."""
    model = deployable(load_model(weights))
    prepare_qat(model, qcfg)
    with torch.no_grad():
        calibrate(model, calibration_loop(data, imgsz, batch, qcfg.calib_batches), qcfg)
    ckpt = {
        "model": model,
        "train_args": {**dict(getattr(model, "args", {}) or {}), "imgsz": imgsz, "data": str(data)},
        "date": datetime.now().isoformat(),
        "gor_det": {"ptq": True, "source": str(weights)},
    }
    return atomic_torch_save(ckpt, out)
