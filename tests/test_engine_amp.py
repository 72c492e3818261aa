"""gor_det.engine.amp and the trainer's AMP setup: no download, the check runs on the student itself."""

import socket
import urllib.request

import pytest
import torch
from conftest import tiny_overrides
from torch import nn

from gor_det.config import QuantCfg, parse_gor
from gor_det.engine.amp import amp_check, autocast_matches
from gor_det.engine.trainer import make_trainer_class


class Stop(Exception):
    pass


def stop(trainer):
    raise Stop


class SeenOnAGpu(nn.Module):
    """What Ultralytics' check_amp sees of a model on an accelerator: its first parameter is not on the CPU (the meta
    device stands in for CUDA, so the check goes on to load yolo26n.pt, as it does on a GPU)."""

    def __init__(self, model):
        super().__init__()
        self.stride = model.stride
        self.p = nn.Parameter(torch.empty(0, device="meta"))


def test_gpu_setup_makes_no_network_attempt(tiny_data, tmp_path, monkeypatch):
    """amp=True (Ultralytics' default) on the GPU path: Ultralytics' check_amp would download yolo26n.pt (a network
    attempt, YOLO_OFFLINE or not); gor_det's setup never calls it, so nothing reaches the network."""
    import requests
    from ultralytics.engine import trainer as ul_trainer
    from ultralytics.utils import checks

    attempts = []

    def refuse(*a, **k):
        attempts.append(a[:2])
        raise requests.ConnectionError("no network in tests")

    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    real = checks.check_amp
    monkeypatch.setattr(ul_trainer, "check_amp", lambda model: real(SeenOnAGpu(model)))

    gor = parse_gor({"quant": {"calib_batches": 1}})
    trainer = make_trainer_class(gor)(overrides=tiny_overrides(tiny_data, tmp_path, "amp", amp=True))
    trainer.add_callback("on_train_start", stop)
    with pytest.raises(Stop):
        trainer.train()
    assert attempts == []
    assert trainer.amp is False and not trainer.scaler.is_enabled()  # CPU: float32, and the log says why
    assert trainer.args.amp is True  # the run's args (and its checkpoints) keep what the user asked for


def test_amp_check_runs_on_the_model_being_trained():
    """The comparison itself, on CPU autocast: a QAT student's fp16 predictions match FP32; a model whose fp16
    forward overflows does not (a float model: quantizers clip); on a CPU device no check is run (AMP is for accelerators)."""
    from ultralytics.nn.tasks import DetectionModel

    from gor_det.quant import prepare_qat

    torch.manual_seed(0)
    m = DetectionModel("yolov8n.yaml", nc=4, verbose=False)
    images = torch.rand(2, 3, 64, 64)
    prepare_qat(m, QuantCfg(calib="minmax"), forward_loop=lambda mm: mm(images))
    ok, why = autocast_matches(m, images, "cpu")
    assert ok, why
    assert m.training  # the model itself is untouched (a copy is run in eval mode)

    fp = DetectionModel("yolov8n.yaml", nc=4, verbose=False)
    with torch.no_grad():
        fp.model[0].conv.weight.mul_(1e5)  # fp16 overflows (> 65504) from the first conv on
    ok, why = autocast_matches(fp, images, "cpu")
    assert not ok and ("non-finite" in why or "differ" in why), why
    assert amp_check(m, 64, torch.device("cpu")) == (False, "AMP is used on CUDA devices only; training on cpu runs "
                                                            "in float32")
