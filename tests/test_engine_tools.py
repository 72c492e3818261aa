"""tools/val_det.py, tools/export_det.py and the PTQ baseline end to end on tiny models (CLI level)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    for k in ("onnx_qdq", "onnx_ort_int8", "ncnn_int8"):  # the structural speed report of each INT8 artefact
        st = rep["exports"][k]["structure"]
        assert st["format"] == k and st["ops_int8"] > 0 and st["int8_conv_share"] > 0.9, (k, st)
        assert f"[structure {k}]" in out.stdout
    assert "trtexec --onnx=" in rep["exports"]["engine"]["trtexec"]
    assert "mAP50-95" in out.stdout and (tmp_path / "exp" / "eval" / "ncnn_int8" / "metrics.json").exists()


def test_structure_report_failure_is_recorded_not_raised(tmp_path, capsys):
    from gor_det.engine.exporting import add_structure

    entry = add_structure({"ok": True}, tmp_path / "missing.onnx", "onnx_qdq", 64)
    assert entry["ok"] and "structure" not in entry and entry["structure_error"]
    assert "structure report FAILED" in capsys.readouterr().out


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


# --------------------------------------------------------------------------------------------------------------------
# TensorRT through a fake `tensorrt` module (the real one needs a GPU): a failed build is a report entry, a built
# engine is checked and scored like every other artefact.
# --------------------------------------------------------------------------------------------------------------------
def load_tool(name):
    """tools/<name>.py as a module (its main() returns the exit code instead of calling sys.exit)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_tensorrt(parse_ok: bool):
    """A ``tensorrt`` module with the API gor_det uses. Its "engine" is the parsed ONNX (run by ONNX Runtime in the
    test), so a built engine scores exactly like the Q/DQ ONNX it came from."""
    import types

    import numpy as np

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.calls = []
    ns = types.SimpleNamespace
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    trt.NetworkDefinitionCreationFlag = ns(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    trt.MemoryPoolType = ns(WORKSPACE=0)
    trt.BuilderFlag = ns(INT8="INT8", FP16="FP16")
    trt.TensorIOMode = ns(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: np.float32

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse(self, model_bytes):
            if not parse_ok:
                self.errors = ["In node 12 (importConv): INVALID_NODE: fake parser error"]
                return False
            self.network.onnx = model_bytes
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Config:
        def __init__(self):
            self.flags = set()

        def set_memory_pool_limit(self, pool, size):
            pass

        def set_flag(self, flag):
            self.flags.add(flag)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return ns(onnx=None)

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            trt.calls.append(("build", sorted(config.flags)))
            return network.onnx

    class Engine:
        def __init__(self, onnx_bytes):
            import onnxruntime as ort

            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            self.io = [self.session.get_inputs()[0], self.session.get_outputs()[0]]
            self.num_io_tensors = 2

        def get_tensor_name(self, i):
            return self.io[i].name

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == self.io[0].name else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return tuple(next(t.shape for t in self.io if t.name == name))

        def create_execution_context(self):
            return ns()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            trt.calls.append(("deserialize", len(data)))
            return Engine(data)

    trt.OnnxParser, trt.Builder, trt.Runtime = OnnxParser, Builder, Runtime
    return trt


@pytest.fixture
def fake_trt_gpu(monkeypatch):
    """Install a fake tensorrt (``fake_trt_gpu(parse_ok)``) and a visible "GPU"; engine inference runs the engine's
    ONNX on the CPU (the only part of TensorRTBackend that needs a real GPU)."""
    from gor_det.export.runtimes import TensorRTBackend

    def install(parse_ok):
        trt = fake_tensorrt(parse_ok)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

        def run(self, images):
            return np.concatenate([self.engine.session.run(None, {self.inputs[0]: x[None]})[0] for x in images])

        monkeypatch.setattr(TensorRTBackend, "__call__", run)
        return trt

    return install


def test_tensorrt_parse_error_is_a_report_entry_and_exit_1(fp_and_ptq, tiny_data, tmp_path, monkeypatch, fake_trt_gpu,
                                                             capsys):
    _, q = fp_and_ptq
    fake_trt_gpu(parse_ok=False)
    out = tmp_path / "exp"
    monkeypatch.setattr(sys, "argv", ["export_det.py", "--model", str(q), "--out", str(out), "--formats", "engine",
                                      "onnx_qdq", "onnx", "--imgsz", "64", "--data", str(tiny_data)])
    assert load_tool("export_det").main() == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: export failed for engine (TensorRT could not parse") and "\n" not in err, err
    assert "fake parser error" in err and "2 other(s) written and checked (onnx_qdq, onnx)" in err
    rep = json.loads((out / "export.json").read_text())["exports"]
    eng = rep["engine"]
    assert eng["ok"] is False and "fake parser error" in eng["error"] and "path" not in eng
    assert eng["trtexec"].startswith("trtexec --onnx=") and eng["onnx"].endswith("_qdq.onnx")
    for k in ("onnx", "onnx_qdq"):  # the other formats: written, checked and scored
        assert rep[k]["ok"] and Path(rep[k]["path"]).is_file() and "mAP50-95" in rep[k], (k, rep[k])
        assert (out / "eval" / k / "metrics.json").is_file()


def test_tensorrt_engine_that_builds_is_checked_and_evaluated(fp_and_ptq, tiny_data, tmp_path, monkeypatch,
                                                               fake_trt_gpu):
    _, q = fp_and_ptq
    trt = fake_trt_gpu(parse_ok=True)
    out = tmp_path / "exp"
    monkeypatch.setattr(sys, "argv", ["export_det.py", "--model", str(q), "--out", str(out), "--formats", "engine",
                                      "--imgsz", "64", "--data", str(tiny_data)])
    assert not load_tool("export_det").main()
    rep = json.loads((out / "export.json").read_text())["exports"]
    eng = rep["engine"]
    assert eng["ok"] and eng["path"].endswith("ptq_int8.engine") and Path(eng["path"]).is_file(), eng
    assert eng["precision"] == "int8" and "parity OK" in eng["parity"]
    assert ("build", ["FP16", "INT8"]) in trt.calls and any(c[0] == "deserialize" for c in trt.calls)
    # the engine went through evaluate_artifact -> TensorRTBackend -> gor_det.eval, like every artefact
    m = json.loads((out / "eval" / "engine" / "metrics.json").read_text())
    assert m["n_images"] == 12 and m["mAP50-95"] == eng["mAP50-95"]
    # its ONNX (not asked for) was written for the build; the engine scores exactly like it
    from gor_det.engine.evaluate import evaluate_artifact

    ref = evaluate_artifact(eng["onnx"], tiny_data, 64, tmp_path / "onnx_eval")
    assert ref["n_predictions"] == m["n_predictions"] > 0 and ref["mAP50-95"] == m["mAP50-95"]
    assert (tmp_path / "onnx_eval" / "predictions.json").read_text() == \
        (out / "eval" / "engine" / "predictions.json").read_text()


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, and nothing exported before it is found
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def tool(monkeypatch, capsys):
    """``tool("export_det", *args)``: run tools/<name>.py in this process, as its ``__main__`` does (run_cli), and
    return ``(returncode, stdout, stderr)`` like subprocess (no interpreter start: these tests are quick)."""
    from gor_det.engine.cli import run_cli

    def run(name, *args):
        monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, args)])
        main = load_tool(name).main
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_cli(main)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, e.value.code, out.out, out.err)

    return run


def one_error_line(out):
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stdout[-2000:] + out.stderr
    return lines[0]


def test_int8_export_of_a_float_model_fails_with_the_ptq_command_that_fixes_it(fp_and_ptq, tiny_data, tmp_path, tool):
    import re
    import shlex

    fp, _ = fp_and_ptq
    src = tmp_path / "fp.pt"
    src.write_bytes(fp.read_bytes())
    line = one_error_line(tool("export_det", "--model", src, "--formats", "onnx_qdq", "--out",
                              str(tmp_path / "exp"), "--data", str(tiny_data)))
    assert "onnx_qdq needs a quantized model" in line and not (tmp_path / "exp").exists()
    cmd = re.search(r"PTQ it first: (python tools/ptq_det\.py .*?) \(writes (\S+);", line)
    assert cmd, line
    args = shlex.split(cmd.group(1))
    assert args[:2] == ["python", "tools/ptq_det.py"]
    ptq = tool("ptq_det", *args[2:], "--batch", "8", "calib_batches=1", "calib=minmax")  # the command, made quicker
    assert ptq.returncode == 0, ptq.stderr[-2000:]
    assert Path(cmd.group(2)) == tmp_path / "fp_ptq.pt" and (tmp_path / "fp_ptq.pt").is_file()
    exp = tool("export_det", "--model", cmd.group(2), "--formats", "onnx_qdq", "--out", tmp_path / "exp")
    assert exp.returncode == 0, exp.stderr[-2000:]
    assert json.loads((tmp_path / "exp" / "export.json").read_text())["exports"]["onnx_qdq"]["ok"]


def test_ptq_det_bad_input_is_one_line(fp_and_ptq, tiny_data, tool):
    fp, q = fp_and_ptq
    assert "did you mean 'w_bits'" in one_error_line(tool("ptq_det", "--model", fp, "--data", tiny_data, "w_bit=4"))
    assert "already quantized" in one_error_line(tool("ptq_det", "--model", q, "--data", tiny_data))


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    """A 3-class yolov8n checkpoint (trained, it says, on another dataset)."""
    from ultralytics.nn.tasks import DetectionModel

    m = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    m.names = {0: "a", 1: "b", 2: "c"}
    p = tmp_path_factory.mktemp("three") / "three.pt"
    torch.save({"model": m.half(), "train_args": {"imgsz": 64, "data": "three.yaml"}}, p)
    return p


def test_class_count_mismatch_is_refused(three_class, tiny_data, tmp_path, tool):
    line = one_error_line(tool("val_det", "--model", three_class, "--data", tiny_data, "--device", "cpu"))
    assert "predicts 3 classes" in line and "has 12" in line and "three.yaml" in line, line
    line = one_error_line(tool("export_det", "--model", three_class, "--formats", "onnx", "--data", tiny_data,
                               "--out", tmp_path / "exp"))
    assert "predicts 3 classes" in line and not (tmp_path / "exp").exists()


def test_class_count_mismatch_of_an_exported_model(three_class, tiny_data, tmp_path):
    """An exported model has no names: its output rows are checked on the first batch."""
    from gor_det.config import ConfigError
    from gor_det.engine.evaluate import evaluate_artifact, load_model
    from gor_det.engine.exporting import float_model
    from gor_det.export import export_onnx

    p = export_onnx(float_model(load_model(three_class)), 64, tmp_path / "three.onnx")
    with pytest.raises(ConfigError, match="predicts 3 classes but the dataset has 12"):
        evaluate_artifact(p, tiny_data, 64, tmp_path / "eval")


def test_export_det_takes_ann_and_checks_it_before_exporting(tiny_data, fp_and_ptq, tmp_path, tool):
    import yaml

    fp, _ = fp_and_ptq
    d = yaml.safe_load(open(tiny_data))
    ann = Path(d["path"]) / d.pop("coco_json")
    no_json = tmp_path / "coco_like.yaml"  # a real dataset yaml names no annotation json
    no_json.write_text(yaml.safe_dump(d))
    line = one_error_line(tool("export_det", "--model", fp, "--formats", "onnx", "--data", no_json,
                               "--out", tmp_path / "exp"))
    assert "pass --ann" in line and not (tmp_path / "exp").exists(), line
    out = tool("export_det", "--model", fp, "--formats", "onnx", "--data", no_json, "--ann", ann,
               "--out", tmp_path / "exp")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[onnx] mAP50-95" in out.stdout
    assert "mAP50-95" in json.loads((tmp_path / "exp" / "export.json").read_text())["exports"]["onnx"]


@pytest.mark.parametrize("bad", ["not_json", "partial", "no_images"])
def test_bad_eval_input_is_one_line_before_anything_runs(bad, tiny_data, fp_and_ptq, tmp_path, tool):
    import yaml

    fp, _ = fp_and_ptq
    d = yaml.safe_load(open(tiny_data))
    gt = json.loads((Path(d["path"]) / d["coco_json"]).read_text())
    data, ann = tiny_data, tmp_path / "ann.json"
    if bad == "not_json":
        ann.write_text("<html>404 Not Found</html>")
    elif bad == "partial":
        keep = {im["id"] for im in gt["images"][:8]}
        gt["images"] = gt["images"][:8]
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
        ann.write_text(json.dumps(gt))
    else:
        ann = Path(d["path"]) / d["coco_json"]
        data = tmp_path / "data.yaml"
        data.write_text(yaml.safe_dump({**d, "val": "images/missing_val"}))
    for name in ("val_det", "export_det"):
        extra = ["--formats", "onnx", "--out", tmp_path / "exp"] if name == "export_det" else ["--device", "cpu"]
        line = one_error_line(tool(name, "--model", fp, "--data", data, "--ann", ann, *extra))
        want = {"not_json": ("is not valid JSON", "--ann"), "partial": ("no image for 4 of the 12 images", "--ann"),
                "no_images": ("no val images", "val: entries")}[bad]
        assert all(w in line for w in want), (name, line)
    assert not (tmp_path / "exp").exists()


def test_unknown_format_gets_did_you_mean(fp_and_ptq, tmp_path):
    from gor_det.config import ConfigError
    from gor_det.engine.exporting import export_student

    with pytest.raises(ConfigError, match=r"unknown export format 'onx' \(did you mean 'onnx'\?\)"):
        export_student(fp_and_ptq[0], tmp_path / "exp", formats=["onnx_qdq", "onx"])
    assert not (tmp_path / "exp").exists()


def test_val_det_help_example_has_no_stray_spaces(capsys, monkeypatch):
    import re

    monkeypatch.setattr(sys, "argv", ["val_det.py", "--help"])
    with pytest.raises(SystemExit):
        load_tool("val_det").main()
    text = capsys.readouterr().out
    assert "--data coco.yaml \\\n        --ann " in text and not re.search(r"\S {2,}--", text), text


@pytest.mark.parametrize("cuda", [True, False])
def test_val_det_device_defaults_to_the_gpu_when_there_is_one(cuda, monkeypatch, tiny_data, fp_and_ptq):
    from gor_det.engine import evaluate

    class Called(Exception):
        pass

    def fake_eval(*args, **kw):
        raise Called(kw["device"])

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
    monkeypatch.setattr(evaluate, "evaluate_artifact", fake_eval)
    monkeypatch.setattr(sys, "argv", ["val_det.py", "--model", str(fp_and_ptq[0]), "--data", str(tiny_data)])
    with pytest.raises(Called) as e:
        load_tool("val_det").main()
    assert str(e.value) == ("0" if cuda else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_val_det_gpu_device_without_cuda_is_one_line(fp_and_ptq, tiny_data, tool):
    line = one_error_line(tool("val_det", "--model", fp_and_ptq[0], "--data", tiny_data, "--device", "0"))
    assert "no CUDA device" in line and "--device cpu" in line


def test_checkpoint_with_a_saved_balance_section_evaluates_and_exports(fp_and_ptq, tiny_data, tmp_path):
    """A QAT checkpoint whose recorded run cfg has the saved, longer balance section (``transfer`` / ``w_task``, a
    method that is now a research plug-in) and GoR scalars in ``model.kd`` still evaluates and exports: those read
    only what they need (the export section), in a process that never imported the research package."""
    _, q = fp_and_ptq
    ck = torch.load(q, weights_only=False)
    from torch import nn

    from gor_det.balance import make_scalars

    model = ck["model"]
    model.kd = nn.ModuleDict({"adapters": nn.ModuleList(), "gor": make_scalars()})
    model.gor_cfg = {"balance": {"method": "gor_grad", "w_task": 1.0, "w_kd": 1.0, "transfer": "next", "lr": "auto",
                                 "grad_every": 4, "w_kd_end": None, "schedule": "linear"},
                     "export": {"formats": ["onnx_qdq"], "imgsz": 64}}
    old = tmp_path / "old.pt"
    torch.save(ck, old)
    code = (f"import sys; sys.argv = ['export_det', '--model', {str(old)!r}, '--out', {str(tmp_path / 'x')!r}]; "
            "import runpy; runpy.run_path('tools/export_det.py', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert (tmp_path / "x" / "old_qdq.onnx").exists()
    val = cli("tools/val_det.py", "--model", str(old), "--data", str(tiny_data), "--imgsz", "64", "--out",
              str(tmp_path / "v"))
    assert val.returncode == 0, val.stderr[-3000:]
