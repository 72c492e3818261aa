"""gor_det.engine.run and its preflight (gor_det.engine.preflight): every bad input is one line before the run folder
is touched, Ctrl-C says what is saved, and the CLI (tools/train_det.py) prints each as one line."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_overrides

from gor_det.config import ConfigError, GorCfg, RunCfg, parse_gor
from gor_det.engine.trainer import GorDetectionTrainer, make_trainer_class

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "tools/train_det.py", *args] if cwd == ROOT else
                          [sys.executable, str(ROOT / "tools" / "train_det.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def one_error_line(out) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    return lines[0]


def student_pt(path, names, nc=None, epoch=None, optimizer=None, train_args=None):
    """An Ultralytics-format checkpoint of a random yolov8n (``epoch``/``optimizer`` as in a run's last.pt)."""
    from ultralytics.nn.tasks import DetectionModel

    m = DetectionModel("yolov8n.yaml", nc=nc or len(names), verbose=False)
    m.names = names
    ck = {"model": None, "ema": m.half(), "train_args": train_args or {}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if epoch is not None:
        ck.update(epoch=epoch, optimizer=optimizer)
    torch.save(ck, path)
    return path


@pytest.fixture(scope="module")
def names(tiny_data):
    return yaml.safe_load(open(tiny_data))["names"]


@pytest.fixture()
def previous_run(tmp_path):
    """A run folder holding a finished run's results (what exist_ok: true would start a new run in)."""
    run = tmp_path / "runs" / "r"
    (run / "weights").mkdir(parents=True)
    files = {"results.csv": "epoch,time\n1,2\n", "args.yaml": "epochs: 1\n", "gor_cfg.yaml": "threads: 1\n",
             "weights/best.pt": "weights"}
    for k, v in files.items():
        (run / k).write_text(v)
    return run, files


def bad_pt(kind: str, tmp_path, names) -> str:
    p = tmp_path / f"{kind}.pt"
    if kind == "text":
        p.write_text("this is not a checkpoint\n")
    elif kind == "empty":
        p.write_bytes(b"")
    else:  # truncated: the first half of a real checkpoint
        student_pt(p, names)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    return str(p)


@pytest.mark.parametrize("kind", ["text", "empty", "truncated"])
def test_bad_teacher_fails_before_the_run_folder_is_touched(kind, tiny_data, tmp_path, previous_run, names):
    run, files = previous_run
    teacher = bad_pt(kind, tmp_path, names)
    ov = tiny_overrides(tiny_data, run.parent, run.name)
    with pytest.raises(ConfigError, match=f"teacher checkpoint {teacher} could not be loaded") as e:
        make_trainer_class(parse_gor({"teachers": [teacher]}))(overrides=ov)
    assert "\n" not in str(e.value)
    assert {k: (run / k).read_text() for k in files} == files  # results.csv, args.yaml, gor_cfg.yaml untouched
    assert sorted(p.name for p in run.rglob("*")) == sorted(Path(k).name for k in files) + ["weights"]


def test_teacher_class_mismatch_fails_before_the_run_folder_is_touched(tiny_data, tmp_path, previous_run):
    run, files = previous_run
    teacher = student_pt(tmp_path / "t.pt", {0: "apple", 1: "pear"})
    with pytest.raises(ConfigError, match="classes do not match"):
        make_trainer_class(parse_gor({"teachers": [str(teacher)]}))(
            overrides=tiny_overrides(tiny_data, run.parent, run.name))
    assert {k: (run / k).read_text() for k in files} == files


def test_checked_teachers_are_reused_not_loaded_twice(tiny_data, tmp_path, names, monkeypatch):
    from gor_det.engine import teachers as teachers_mod

    teacher = student_pt(tmp_path / "t.pt", names)
    loads = []
    real = teachers_mod.load_detection_model
    monkeypatch.setattr(teachers_mod, "load_detection_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    trainer = make_trainer_class(parse_gor({"teachers": [str(teacher)]}))(
        overrides=tiny_overrides(tiny_data, tmp_path, "reuse"))
    assert trainer.teachers.models and len(loads) == 1


def test_finished_run_resume_is_one_line_and_rewrites_nothing(tiny_data, tmp_path, previous_run, names):
    run, files = previous_run
    last = student_pt(run / "weights" / "last.pt", names, epoch=-1, optimizer=None,
                      train_args=tiny_overrides(tiny_data, run.parent, run.name, epochs=2))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"is a finished run \(2 epochs trained.*nothing to resume.*model=") as e:
        GorDetectionTrainer(overrides={"resume": str(last)})
    assert "yolo train" not in str(e.value) and "\n" not in str(e.value)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_corrupt_resume_checkpoint_says_so(tmp_path, names):
    last = bad_pt("truncated", tmp_path, names)
    with pytest.raises(ConfigError, match="could not be loaded .*not a complete PyTorch checkpoint") as e:
        GorDetectionTrainer(overrides={"resume": last})
    assert "not found" not in str(e.value)


def refused(overrides: dict, gor=None) -> str:
    """The one-line ConfigError a trainer start gives (tools/ print it as ``error: <it>``, exit 2)."""
    with pytest.raises(ConfigError) as e:
        make_trainer_class(gor or GorCfg())(overrides=overrides)
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


@pytest.mark.parametrize("override, message", [
    ({"epochs": "abc"}, "'epochs=abc' is of invalid type str"),
    ({"batch": "abc"}, "'batch=abc' is of invalid type str"),
    ({"epochs": 0}, "'epochs=0' is an invalid value. 'epochs' must be >= 1"),
    ({"batch": 0}, "batch=0 is out of range; use an integer >= 1"),
    ({"batch": 2.5}, "batch=2.5 is out of range; use an integer >= 1"),
])
def test_bad_numbers_are_one_line(override, message, tiny_data, tmp_path):
    assert refused(tiny_overrides(tiny_data, tmp_path, "n", **override)).startswith(message)
    assert not (tmp_path / "n").exists()


def test_epochs_below_one_refused_by_preflight_itself():
    from types import SimpleNamespace

    from gor_det.engine.preflight import check_numbers

    with pytest.raises(ConfigError, match="epochs=0 is out of range; use >= 1"):
        check_numbers(SimpleNamespace(time=None, epochs=0, batch=8))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_one_line(tiny_data, tmp_path):
    out = cli("--cfg", "cfg/demo_student_fp.yaml", f"data={tiny_data}", f"project={tmp_path}", "device=0")
    line = one_error_line(out)
    assert line.startswith("error: device=0 asks for CUDA GPU 0, but this machine has no CUDA GPU") and "device=cpu" in line


def test_cuda_device_beyond_the_count_is_one_line(monkeypatch):
    from gor_det.engine.preflight import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("0,1")
    check_device("cpu")
    with pytest.raises(ConfigError, match="device=0,3 asks for CUDA GPU 3, but this machine has CUDA GPUs 0..1"):
        check_device("0,3")


@pytest.mark.parametrize("missing", ["train", "val", "empty_train"])
def test_missing_image_folder_is_one_line(missing, tiny_data, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(Path(tiny_data).parent, root)
    text = Path(tiny_data).read_text().replace(str(Path(tiny_data).parent), str(root))
    (root / "data.yaml").write_text(text)
    split = "val" if missing == "val" else "train"
    shutil.rmtree(root / "images" / split)
    if missing == "empty_train":
        (root / "images" / "train").mkdir()
    line = refused(tiny_overrides(root / "data.yaml", tmp_path, "m"))
    if missing == "empty_train":
        assert line.startswith(f"dataset {root / 'data.yaml'}: no images in {root / 'images' / 'train'}"), line
    else:
        assert f"missing path '{root / 'images' / split}'" in line and "nothing is downloaded" in line, line
        assert "datasets_dir" in line
    assert not (tmp_path / "m").exists()


def test_resume_errors(tiny_data, tmp_path, names):
    last = student_pt(tmp_path / "weights" / "last.pt", names, epoch=-1, optimizer=None,
                      train_args=tiny_overrides(tiny_data, tmp_path, "x", epochs=3))
    assert "is a finished run (3 epochs trained" in one_error_line(cli(f"resume={last}"))  # the CLI's one line
    broken = bad_pt("text", tmp_path, names)
    assert "could not be loaded" in refused({"resume": broken})
    from gor_det.engine.run import resolve_run_cfg

    with pytest.raises(ConfigError, match="resume checkpoint not found"):
        resolve_run_cfg(None, [f"resume={tmp_path / 'nope.pt'}"])


# ----------------------------------------------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------------------------------------------
def interrupt_in_epoch(epoch: int):
    def step(self):
        if self.epoch >= epoch:
            raise KeyboardInterrupt
        return super(GorDetectionTrainer, self).optimizer_step()

    return step


def test_ctrl_c_in_epoch_one_says_nothing_was_saved(tiny_data, tmp_path, previous_run, monkeypatch):
    from gor_det.engine.run import Interrupted, train

    run, _ = previous_run
    (run / "weights" / "last.pt").write_text("an earlier run's")
    monkeypatch.setattr(GorDetectionTrainer, "optimizer_step", interrupt_in_epoch(0))
    with pytest.raises(Interrupted) as e:
        train(RunCfg(tiny_overrides(tiny_data, run.parent, run.name, epochs=2), GorCfg(threads=1)))
    msg = str(e.value)
    assert msg.startswith("interrupted in epoch 1/2, before any epoch of this run completed: nothing was saved")
    assert "is an earlier run's" in msg and "resume=" not in msg


def test_ctrl_c_in_epoch_two_points_at_a_checkpoint_that_resumes(tiny_data, tmp_path, monkeypatch):
    from gor_det.engine.preflight import check_resume
    from gor_det.engine.run import Interrupted, train

    monkeypatch.setattr(GorDetectionTrainer, "optimizer_step", interrupt_in_epoch(1))
    with pytest.raises(Interrupted) as e:
        train(RunCfg(tiny_overrides(tiny_data, tmp_path, "c", epochs=3), GorCfg(threads=1)))
    last = tmp_path / "c" / "weights" / "last.pt"
    assert str(e.value) == (f"interrupted in epoch 2/3: epochs 1-1 are saved in {last}; continue with "
                            f"`python tools/train_det.py resume={last}`")
    assert check_resume(last)["epochs"] == 3


def test_run_cli_prints_the_interrupt_message_as_one_line():
    code = ("from gor_det.engine.cli import run_cli\nfrom gor_det.engine.run import Interrupted\n"
            "def main():\n    raise Interrupted('interrupted in epoch 1/2: nothing was saved')\nrun_cli(main)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 130 and out.stderr.strip() == "interrupted in epoch 1/2: nothing was saved"
    assert "weights/last.pt" not in out.stderr
