"""GorDetectionTrainer without a gor section: stock-identical training, DDP re-construction, atomic checkpoints,
one-line CLI errors."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from gor_det.config import GorCfg, parse_gor
from gor_det.engine.trainer import GorDetectionTrainer, make_trainer_class

ROOT = Path(__file__).resolve().parents[1]


def first_losses(trainer_cls, overrides):
    seen = []
    trainer = trainer_cls(overrides=overrides)
    trainer.add_callback("on_train_batch_end", lambda t: seen.append(t.loss.detach().clone()))
    trainer.train()
    return trainer, torch.stack(seen[:2])


def test_plain_run_is_stock_ultralytics(tiny_data, tmp_path):
    from ultralytics.models.yolo.detect import DetectionTrainer

    _, stock = first_losses(DetectionTrainer, tiny_overrides(tiny_data, tmp_path, "stock"))
    trainer, ours = first_losses(make_trainer_class(GorCfg(threads=1)), tiny_overrides(tiny_data, tmp_path, "ours"))
    assert torch.equal(stock, ours), (stock, ours)
    # run dir: resolved gor cfg, checkpoints written atomically (no temp files left behind)
    assert parse_gor(__import__("yaml").safe_load((trainer.save_dir / "gor_cfg.yaml").read_text())) == GorCfg(threads=1)
    assert trainer.last.exists() and not list(trainer.wdir.glob("*.tmp"))


def test_ddp_worker_rebuilds_trainer_with_gor_cfg(tiny_data, tmp_path):
    """Ultralytics' DDP launcher pickles type(trainer) + vars(args) + model + callbacks with cloudpickle and rebuilds
    the trainer from them in each worker: the gor cfg must arrive intact."""
    from ultralytics.utils.dist import generate_ddp_file

    gor = parse_gor({"balance": {"method": "fixed", "w_kd": 2.0}, "quant": {"w_bits": 4}, "threads": 1})
    trainer = make_trainer_class(gor)(overrides=tiny_overrides(tiny_data, tmp_path, "ddp"))
    script = Path(generate_ddp_file(trainer))
    state = script.with_suffix(".pt")
    try:
        code = textwrap.dedent(f"""
            import gor_det, yaml
            from ultralytics.utils import DEFAULT_CFG_DICT
            from ultralytics.utils.patches import torch_load
            state = torch_load({str(state)!r}, map_location="cpu")
            cfg = DEFAULT_CFG_DICT.copy(); cfg.update(save_dir="")
            trainer = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"])
            import json; print("GOR" + json.dumps(trainer.gor.to_dict()) + "END")
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        script.unlink(missing_ok=True)
        state.unlink(missing_ok=True)
    assert out.returncode == 0, out.stderr[-3000:]
    got = __import__("json").loads(out.stdout.split("GOR", 1)[1].split("END", 1)[0])
    assert parse_gor(got) == gor
    assert issubclass(type(trainer), GorDetectionTrainer)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cfg", "nope.yaml"], "error: cfg file not found: nope.yaml"),
        (["--cfg", "cfg/demo_teacher.yaml", "epocs=3"], "error: unknown key 'epocs' in the run cfg"),
        (["--cfg", "cfg/demo_teacher.yaml", "data=missing/data.yaml"], "error: data not found: missing/data.yaml"),
        (["--cfg", "cfg/demo_student.yaml", "data=cfg/demo_teacher.yaml", "model=yolov8n.yaml",
          "gor.teachers=[no/teacher.pt]"], "error: teacher checkpoint not found: no/teacher.pt"),
    ],
)
def test_cli_bad_input_one_line(args, message):
    out = subprocess.run([sys.executable, "tools/train_det.py", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr[-2000:]


def test_resume_without_cfg_restores_the_runs_gor_cfg(tmp_path):
    import yaml

    from gor_det.config import ConfigError
    from gor_det.engine.run import resolve_run_cfg

    gor = parse_gor({"balance": {"method": "fixed", "w_kd": 3.0}, "quant": {"w_bits": 4}})
    (tmp_path / "weights").mkdir()
    last = tmp_path / "weights" / "last.pt"
    last.write_bytes(b"x")
    (tmp_path / "gor_cfg.yaml").write_text(yaml.safe_dump(gor.to_dict()))
    assert resolve_run_cfg(None, [f"resume={last}"]).gor == gor
    with pytest.raises(ConfigError, match="resume checkpoint not found"):
        resolve_run_cfg(None, [f"resume={tmp_path / 'nope.pt'}"])


def test_relative_project_is_relative_to_cwd(tiny_data, tmp_path, monkeypatch):
    from gor_det.engine.run import resolve_run_cfg

    monkeypatch.chdir(tmp_path)
    run = resolve_run_cfg(None, [f"data={tiny_data}", "model=yolov8n.yaml", "project=runs/x"])
    assert run.ultralytics["project"] == str(tmp_path / "runs" / "x")
