"""gor_det.cli: the installed ``gor-det`` command (``python -m gor_det``), its key=value options, the tools aliases."""

import subprocess
import sys
from pathlib import Path

import pytest

from gor_det.cli import main
from gor_det.commands import COMMANDS, translate

ROOT = Path(__file__).resolve().parents[1]


def test_key_value_options_become_flags():
    from gor_det.commands import val

    p = val.build_parser("gor-det val")
    assert translate(["model=a.pt,b.onnx", "data=d.yaml", "ultralytics=true", "--imgsz", "64"], p) == [
        "--model", "a.pt", "b.onnx", "--data", "d.yaml", "--ultralytics", "--imgsz", "64"]
    assert translate(["ultralytics=false", "gor.quant.w_bits=4"], p) == ["gor.quant.w_bits=4"]  # not an option
    with pytest.raises(SystemExit, match="a switch takes true or false"):
        translate(["ultralytics=maybe"], p)


def test_dispatch_help_and_unknown_command(capsys):
    assert main([]) == 2 and "commands:" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert main(["trian"]) == 2 and "did you mean 'train'" in capsys.readouterr().err
    assert set(COMMANDS) == {"train", "val", "export", "ptq", "synth"}
    for _, _, alias in COMMANDS.values():
        assert (ROOT / alias).is_file(), alias


def test_installed_command_runs_with_shipped_cfg_names(tmp_path):
    """``python -m gor_det`` (what the console script runs) from another directory: synth with key=value, and train
    with cfg=<a template's name> (a pip-installed gor_det finds its templates) reaching the cfg check."""
    run = lambda *a: subprocess.run([sys.executable, "-m", "gor_det", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=tmp_path, timeout=300)
    out = run("synth", f"out={tmp_path / 'd'}", "preset=tiny")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "d" / "data.yaml").is_file()
    out = run("train", "cfg=demo_teacher.yaml", "epocs=3")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: unknown key 'epocs' in the run cfg"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
