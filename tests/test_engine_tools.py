"""tools/val_det.py, tools/export_det.py and the PTQ baseline end to end on tiny models (CLI level)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gor_det.config import QuantCfg

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def fp_and_ptq(tiny_data, tmp_path_factory):
    """A random-init FP yolov8n checkpoint and its PTQ (W8A8) version (a regular gor_det QAT checkpoint)."""
    import yaml
    from ultralytics.nn.tasks import DetectionModel

    from gor_det.engine.ptq import ptq

    d = tmp_path_factory.mktemp("tools")
    names = yaml.safe_load(open(tiny_data))["names"]
    m = DetectionModel("yolov8n.yaml", nc=len(names), verbose=False)
    m.names = names
    fp = d / "fp.pt"
    torch.save({"model": m.half(), "train_args": {"imgsz": 64}}, fp)
    q = ptq(fp, tiny_data, QuantCfg(calib_batches=1), imgsz=64, out=d / "ptq.pt", batch=4)
    return fp, q


def test_ptq_checkpoint_is_qat_and_loads(fp_and_ptq):
    from gor_det.engine.evaluate import load_model
    from gor_det.quant import is_qat

    fp, q = fp_and_ptq
    assert not is_qat(load_model(fp)) and is_qat(load_model(q))


def test_val_det_all_artifacts_and_table(fp_and_ptq, tiny_data, tmp_path):
    fp, q = fp_and_ptq
    out = cli("tools/val_det.py", "--model", str(fp), str(q), "--data", str(tiny_data), "--imgsz", "64",
              "--out", str(tmp_path / "val"), "--table", str(tmp_path / "t.md"), "--ultralytics")
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "t.md").read_text()
    assert "fp.pt" in table and "ptq.pt" in table and "Command: `python tools/val_det.py" in table
    m = json.loads((tmp_path / "val" / "fp_pt" / "metrics.json").read_text())
    assert {"mAP50-95", "mAP50", "AR100"} <= set(m) and "mAP50-95" in m["ultralytics"]
    assert (tmp_path / "val" / "ptq_pt" / "predictions.json").exists()


def test_evaluate_artifact_uses_the_checkpoints_own_imgsz(fp_and_ptq, tiny_data, tmp_path):
    from gor_det.engine.evaluate import evaluate_artifact, load_model, train_imgsz

    fp, _ = fp_and_ptq
    own = train_imgsz(load_model(fp), default=-1)
    assert own > 0
    m = evaluate_artifact(fp, tiny_data, None, tmp_path / "own")
    assert m["imgsz"] == own and json.loads((tmp_path / "own" / "metrics.json").read_text())["settings"]["imgsz"] == own


def test_export_det_qat_then_val_exports(fp_and_ptq, tiny_data, tmp_path):
    _, q = fp_and_ptq
    out = cli("tools/export_det.py", "--model", str(q), "--out", str(tmp_path / "exp"), "--formats", "onnx_qdq",
              "onnx", "ncnn", "onnx_ort_int8", "engine", "--imgsz", "64", "--data", str(tiny_data))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rep = json.loads((tmp_path / "exp" / "export.json").read_text())
    for k in ("onnx", "onnx_qdq", "ncnn_fp32", "ncnn_int8", "onnx_ort_int8"):
        assert rep["exports"][k]["ok"], (k, rep["exports"][k])
    assert rep["exports"]["onnx_ort_int8"]["calibration"] == f"24 train images of {tiny_data}"  # all 24 of tiny
    assert rep["exports"]["onnx_qdq"]["qdq_rules_ok"]
    assert "trtexec --onnx=" in rep["exports"]["engine"]["trtexec"]
    assert "mAP50-95" in out.stdout and (tmp_path / "exp" / "eval" / "ncnn_int8" / "metrics.json").exists()


def test_calibration_images_from_data_then_run_data_then_parity_images(tiny_data, tmp_path):
    from types import SimpleNamespace

    from gor_det.engine.exporting import calibration_images

    trained_on = SimpleNamespace(args={"data": str(tiny_data)})
    ims, src = calibration_images(trained_on, None, 5, 32)
    assert ims.shape == (5, 3, 32, 32) and src == f"5 train images of {tiny_data}"
    ims, src = calibration_images(SimpleNamespace(args={"data": "gone.yaml"}), tiny_data, 100, 32)
    assert len(ims) == 24 and src.startswith("24 train images")  # --data first; fewer images than asked: all
    with pytest.warns(UserWarning, match="pass --data"):
        ims, src = calibration_images(SimpleNamespace(args={}), None, 5, 32)
    assert len(ims) == 2 and "bus.jpg" in src


@pytest.mark.parametrize("kind", ["missing", "corrupt_pt", "corrupt_onnx"])
def test_bad_model_file_is_one_line_error(kind, tiny_data, tmp_path):
    path = tmp_path / ("m.onnx" if kind == "corrupt_onnx" else "m.pt")
    if kind != "missing":
        path.write_bytes(b"\x00not a model" * 10)
    for tool in ("tools/val_det.py", "tools/export_det.py"):
        args = ["--model", str(path)] + (["--data", str(tiny_data)] if tool.endswith("val_det.py") else [])
        out = cli(tool, *args)
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (tool, out.stderr[-2000:])
        assert ("not found" in lines[0]) == (kind == "missing"), lines[0]
