"""The GPU training path measured on CPU: what AMP keeps for the backward, and how many host syncs a step makes.

    python bench/amp_probe.py                         # YOLOv8n, 2 x 128 x 128 and 4 x 320 x 320
    python bench/amp_probe.py --imgsz 640 --batch 2

A CUDA training step takes gor_det's ``plain`` kernels (``GOR_DET_FQ_KERNEL=plain`` forces them on CPU) under fp16
autocast; both are reproduced here on CPU (``torch.autocast('cpu', dtype=torch.float16)``), so the two counts that
decide memory and speed on a GPU can be measured, and tested, without one:

* **saved bytes**: the storages autograd keeps for the backward of one forward (``saved_tensors_hooks``), each
  storage counted once, the model's own parameters and buffers not counted (they are resident anyway); the stock FP
  model vs the QAT model of the same weights. This is the activation memory of a training step.
* **host syncs**: ``aten::_local_scalar_dense`` (``.item()``, ``float()``, ``bool()`` of a tensor: a device-to-host
  copy that blocks the CPU on a GPU) counted by the profiler, in one forward + backward of the QAT model.

``bench/gpu_check.py`` measures the same things on a real GPU (``max_memory_allocated``, ``set_sync_debug_mode``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
from datetime import date

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SYNC_OPS = ("aten::_local_scalar_dense",)  # what .item() / float() / bool() / tolist() of a device tensor run


def saved_tensor_bytes(fn, model=None) -> tuple[int, object]:
    """``(bytes, fn())``: the storages autograd saves for the backward while ``fn`` runs, each counted once; the
    storages of ``model``'s parameters and buffers are not counted (resident anyway)."""
    import torch

    resident = set()
    if model is not None:
        resident = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in resident:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def host_syncs(fn) -> int:
    """Number of host syncs (:data:`SYNC_OPS`, as the profiler records them, nested calls included) while ``fn``
    runs."""
    from torch.profiler import ProfilerActivity, profile

    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    return sum(e.name in SYNC_OPS for e in p.events())


@contextlib.contextmanager
def kernel(mode: str):
    """``GOR_DET_FQ_KERNEL=mode`` inside the block."""
    old = os.environ.get("GOR_DET_FQ_KERNEL")
    os.environ["GOR_DET_FQ_KERNEL"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GOR_DET_FQ_KERNEL", None)
        else:
            os.environ["GOR_DET_FQ_KERNEL"] = old


def amp_forward(model, img):
    """One fp16-autocast training forward of ``model`` on ``img`` (CPU autocast standing in for CUDA's)."""
    import torch

    with torch.autocast("cpu", dtype=torch.float16):
        return model(img)


def output_sum(y):
    """A scalar of every tensor of a training-mode Detect output (to back-propagate through all of it)."""
    import torch

    if isinstance(y, torch.Tensor):
        return y.float().sum()
    if isinstance(y, dict):
        return sum(output_sum(v) for v in y.values())
    return sum(output_sum(v) for v in y)


def students(imgsz: int, cfg: str = "yolov8n.yaml"):
    """``(stock FP model, W8A8 QAT model of the same weights)``, random init, train mode."""
    import torch
    from steps import NC, build_student

    from gor_det.config import QuantCfg

    calib = torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    return build_student(cfg, NC, calib), build_student(cfg, NC, calib, QuantCfg())


def measure(imgsz: int, batch: int, cfg: str = "yolov8n.yaml") -> dict:
    """Saved bytes (stock, QAT on the plain and on PyTorch's kernels) under fp16 autocast, and host syncs of a QAT
    forward + backward on each path."""
    import torch

    fp, qat = students(imgsz, cfg)
    img = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    row = {"imgsz": imgsz, "batch": batch, "stock": saved_tensor_bytes(lambda: amp_forward(fp, img), fp)[0]}
    for mode in ("plain", "torch"):
        with kernel(mode):
            row[f"qat_{mode}"] = saved_tensor_bytes(lambda: amp_forward(qat, img), qat)[0]
            row[f"syncs_{mode}"] = host_syncs(lambda: output_sum(amp_forward(qat, img)).backward())
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, nargs="+", default=[128, 320])
    ap.add_argument("--batch", type=int, nargs="+", default=[2, 4], help="one per --imgsz")
    ap.add_argument("--cfg", default="yolov8n.yaml")
    a = ap.parse_args()
    import torch

    import gor_det  # noqa: F401  (offline env first)

    torch.set_num_threads(2)
    mib = 2**20
    print(f"{a.cfg}, fp16 autocast on CPU (the CUDA path's stand-in); {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {date.today()}\n")
    print("| input | stock FP saved | QAT saved, plain kernels (GPU path) | ratio | QAT saved, PyTorch's ops | ratio "
          "| host syncs / fwd+bwd, plain | host syncs, PyTorch's ops |")
    print("|---|---|---|---|---|---|---|---|")
    for imgsz, batch in zip(a.imgsz, a.batch):
        r = measure(imgsz, batch, a.cfg)
        print(f"| {batch} x {imgsz} x {imgsz} | {r['stock'] / mib:.1f} MiB | {r['qat_plain'] / mib:.1f} MiB | "
              f"{r['qat_plain'] / r['stock']:.2f}x | {r['qat_torch'] / mib:.1f} MiB | {r['qat_torch'] / r['stock']:.2f}x "
              f"| {r['syncs_plain']} | {r['syncs_torch']} |")


if __name__ == "__main__":
    main()
