"""Shared pieces of the step-time benchmarks (qat_step_time, kd_overhead, profile_qat_step): a random batch, a
random-init student, one training step. Imported as a sibling module (bench/ is sys.path[0] when a script runs)."""

from __future__ import annotations

import os

NC = 12  # classes of the random student (the synthetic bench preset's)


def fake_batch(batch: int, imgsz: int, nc: int, per_image: int = 4) -> dict:
    """A random Ultralytics training batch: ``img`` (batch, 3, imgsz, imgsz) in [0, 1], ``per_image`` boxes each."""
    import torch

    n = per_image * batch
    return {"img": torch.rand(batch, 3, imgsz, imgsz), "batch_idx": torch.arange(batch).repeat_interleave(per_image).float(),
            "cls": torch.randint(0, nc, (n, 1)).float(), "bboxes": torch.rand(n, 4) * 0.5 + 0.25}


def build_student(cfg: str, nc: int, calib_images, quant=None):
    """A random-init Ultralytics DetectionModel in train mode, with Ultralytics' default hyperparameters (for its loss);
    with a ``QuantCfg``, prepared for QAT and calibrated on ``calib_images``."""
    import torch
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace

    from gor_det.quant import calibrate, prepare_qat

    torch.manual_seed(0)
    m = DetectionModel(cfg, nc=nc, verbose=False)
    m.args = IterableSimpleNamespace(**DEFAULT_CFG_DICT)
    if quant is not None:
        prepare_qat(m, quant)
        calibrate(m.eval(), lambda mm: mm(calib_images), quant)
    return m.train()


def stepper(m, batch: dict, kernel: str):
    """One training step of ``m`` on ``batch`` (forward + loss + backward + AdamW step) with the fake-quant kernels
    chosen by ``kernel`` (``GOR_DET_FQ_KERNEL``: ``torch`` or ``auto``)."""
    import torch

    opt = torch.optim.AdamW(m.parameters(), lr=1e-5)

    def step():
        os.environ["GOR_DET_FQ_KERNEL"] = kernel
        loss, _ = m(batch)
        loss.sum().backward()
        opt.step()
        opt.zero_grad()

    return step
