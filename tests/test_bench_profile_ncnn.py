"""bench/profile_ncnn.py: per-layer-type estimate on a tiny FP32 and INT8 NCNN model (yolov8n, nc=4, 64 px)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import make_export_models

import gor_det  # noqa: F401  (offline environment before any ultralytics import)

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

IMGSZ = 64


def _module():
    path = Path(__file__).resolve().parents[1] / "bench" / "profile_ncnn.py"
    spec = importlib.util.spec_from_file_location("profile_ncnn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from gor_det.export import export_ncnn, export_ncnn_int8

    fp, _, dep = make_export_models(fmt="ncnn")
    root = tmp_path_factory.mktemp("ncnn_prof")
    return export_ncnn(fp, IMGSZ, root / "fp"), export_ncnn_int8(dep, IMGSZ, root / "int8")


@pytest.mark.parametrize("method", ["prefix", "incremental"])
@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_profile_ncnn(models, which, method):
    from gor_det.export.ncnn_export import read_param

    prof = _module()
    m = models[which == "int8"]
    res = prof.profile(m.dir, threads=1, runs=2, warmup=1, imgsz=IMGSZ, method=method)
    _, layers = read_param(m.param)
    table = res["table"]
    assert {k.split()[0] for k in table} == {la.type for la in layers}
    assert sum(n for _, _, n in table.values()) == len(layers)
    assert sum(sh for _, sh, _ in table.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(ms >= 0 for ms, _, _ in table.values()) and res["full_ms"] > 0 and res["sum_ms"] > 0
    assert all(ms >= 0 for _, _, ms in res["layers"])
    n_int8 = sum(1 for la in layers if la.type.startswith("Convolution") and la.i(8))
    if which == "int8":
        assert res["int8"] and n_int8 > 0
        assert sum(n for k, (_, _, n) in table.items() if k.endswith(" int8")) == n_int8
    else:
        assert not res["int8"] and n_int8 == 0 and not any(k.endswith(" int8") for k in table)
        assert "Convolution fp32" in table
    md = prof.markdown(res, top=3)
    assert md.startswith("| layer type |") and "full net" in md and "other (" in md
