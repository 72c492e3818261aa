"""Shared fixtures: an offline environment, the tiny synthetic dataset, tiny trainer overrides."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

import gor_det  # noqa: E402,F401  (offline env before ultralytics is imported anywhere)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """data.yaml of the tiny synthetic preset (made once per session)."""
    from gor_det.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth_tiny"), preset="tiny", seed=0)


def tiny_overrides(data, project, name, **kw):
    """Ultralytics overrides for a seconds-long CPU run on the tiny set."""
    o = dict(model="yolov8n.yaml", data=str(data), imgsz=64, epochs=1, batch=8, nbs=8, workers=0, device="cpu",
             plots=False, val=True, seed=0, deterministic=True, project=str(project), name=name, exist_ok=True,
             close_mosaic=0, warmup_epochs=0, amp=False, verbose=False)
    o.update(kw)
    return o


def make_export_models(nc: int = 4, imgsz: int = 64, seed: int = 0, fmt: str = "onnx", cfg: str = "yolov8n.yaml",
                       fuse: bool = True, placement: str = "conv"):
    """(fp fused export-mode model, QAT model, convert_for_export model) of a yolov8n (or ``cfg``) with non-trivial
    weights; end-to-end heads (YOLO26) export their one-to-many branch, as gor_det's export does. ``fuse=False``
    leaves the QAT model unfused (as tools/export_det.py does: YOLO26 then keeps both head branches). ``placement``:
    gor.quant.placement (conv | full)."""
    import copy

    import torch
    from torch import nn
    from ultralytics.nn.tasks import DetectionModel

    from gor_det.config import QuantCfg
    from gor_det.quant import convert_for_export, prepare_qat

    torch.manual_seed(seed)
    m = DetectionModel(cfg, nc=nc, verbose=False)
    for mod in m.modules():  # default init decays to ~constant outputs; make activations O(1)
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            if mod.bias is not None:
                nn.init.uniform_(mod.bias, -0.5, 0.5)
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.uniform_(mod.weight, 0.5, 1.0)
            nn.init.uniform_(mod.bias, -0.3, 0.3)
    if hasattr(m.model[-1].dfl, "conv"):  # reg_max 16 (YOLO26: reg_max 1, no DFL conv)
        m.model[-1].dfl.conv.weight.data[:] = torch.arange(16.0).view(1, 16, 1, 1)
    m.eval()
    fp = copy.deepcopy(m).fuse()
    calib = torch.rand(4, 3, imgsz, imgsz)
    prepare_qat(m, QuantCfg(calib="minmax", placement=placement), forward_loop=lambda mm: mm(calib))
    if fuse:
        m.fuse()
    for mm in (fp, m):
        for mod in mm.modules():
            if type(mod).__name__ == "Detect":
                mod.export, mod.format, mod.end2end = True, fmt, False
    return fp, m, convert_for_export(m)


def asymmetric_deploy_model():
    """A yolov8n (nc=4) QAT'd with asymmetric activations, in deploy form (not valid for TensorRT / NCNN INT8)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from gor_det.config import QuantCfg
    from gor_det.quant import convert_for_export, prepare_qat

    torch.manual_seed(0)
    m = DetectionModel("yolov8n.yaml", nc=4, verbose=False).eval()
    prepare_qat(m, QuantCfg(calib="minmax", a_symmetric=False), forward_loop=lambda mm: mm(torch.rand(2, 3, 64, 64)))
    m.fuse()
    m.model[-1].export = True
    return convert_for_export(m)
