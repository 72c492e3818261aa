"""Post-training quantization baseline: the same quant modules as QAT, calibrated only (no training).

It is the floor QAT must beat in the benchmark, and the way to INT8-export a float checkpoint
(``tools/ptq_det.py``). The result is a regular gor_det QAT checkpoint, so evaluation and export treat it exactly
like a QAT student.
"""

from __future__ import annotations

import shlex
from datetime import datetime
from pathlib import Path

import torch

from gor_det.config import ConfigError, QuantCfg, parse_gor, parse_value
from gor_det.engine.checkpoint import atomic_torch_save, deployable
from gor_det.engine.evaluate import load_model, run_data, train_imgsz
from gor_det.quant import calibrate, is_qat, prepare_qat


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


def default_ptq_out(weights: str | Path) -> Path:
    """``runs/x/weights/best.pt`` -> ``runs/x/weights/best_ptq.pt``."""
    p = Path(weights)
    return p.with_name(f"{p.stem}_ptq.pt")


def ptq_command(weights: str | Path, data: str | Path | None) -> str:
    """The ``tools/ptq_det.py`` line that PTQs ``weights`` on ``data`` (``DATA.yaml`` where it is unknown)."""
    args = ["python", "tools/ptq_det.py", "--model", str(weights), "--data", str(data or "DATA.yaml")]
    return " ".join(shlex.quote(a) for a in args)


def quant_cfg(overrides=()) -> QuantCfg:
    """``["w_bits=4", "calib=percentile"]`` (``gor.quant.`` prefix optional) -> a checked :class:`QuantCfg`."""
    section = {}
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"argument '{ov}' must look like key=value (a gor.quant key, e.g. w_bits=4)")
        k, v = ov.split("=", 1)
        section[k.strip().removeprefix("gor.quant.")] = parse_value(v)
    q = parse_gor({"quant": section}).quant
    if not q.enabled:
        raise ConfigError("enabled=false leaves nothing to quantize: drop it")
    return q


def run_ptq(weights: str | Path, data: str | Path, out: str | Path | None = None, imgsz: int | None = None,
            batch: int = 16, overrides=()) -> Path:
    """``tools/ptq_det.py``: check every argument, then :func:`ptq` ``weights`` on ``data``'s train images.
    ``out`` defaults to :func:`default_ptq_out`, ``imgsz`` to the checkpoint's training size."""
    from gor_det.eval import image_files

    qcfg = quant_cfg(overrides)
    model = load_model(weights)
    if is_qat(deployable(model)):
        raise ConfigError(f"{weights} is already quantized (a QAT or PTQ checkpoint): export or evaluate it as it is")
    if not Path(data).is_file():
        from gor_det.engine.preflight import local_data_yaml

        try:
            data = local_data_yaml(data)  # Ultralytics' built-in names (coco.yaml) under its datasets_dir
        except ConfigError:
            pass
    data = Path(data)
    if not data.is_file():
        trained = run_data(model)
        hint = f" (it was trained on {trained})" if trained else ""
        raise ConfigError(f"data not found: {data}: pass the dataset yaml whose train images calibrate{hint}")
    try:
        n = len(image_files(data, "train"))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"no train images to calibrate on in {data} ({e}): check its path: and train: entries") from None
    out = Path(out) if out else default_ptq_out(weights)
    if out.resolve() == Path(weights).resolve():
        raise ConfigError(f"--out {out} is the input checkpoint: pass another path")
    imgsz = int(imgsz or train_imgsz(model))
    if imgsz <= 0 or batch <= 0:
        raise ConfigError(f"--imgsz {imgsz} and --batch {batch} must be positive")
    print(f"PTQ of {weights}: W{qcfg.w_bits}A{qcfg.a_bits}, calib={qcfg.calib}, "
          f"{min(qcfg.calib_batches * batch, n)} of the {n} train images of {data} at {imgsz} px")
    return ptq(weights, data, qcfg, imgsz, out, batch=batch)
