"""Shared fixtures: an offline environment, the tiny synthetic dataset, tiny trainer overrides."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gor_det  # noqa: E402,F401  (offline env before ultralytics is imported anywhere)
import pytest  # noqa: E402


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
