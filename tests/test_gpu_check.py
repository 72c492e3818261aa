"""bench/gpu_check.py: the prepared GPU check runs end to end as a CPU dry run (the same code, toy sizes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_gpu_check_dry_run(tiny_data, tmp_path):
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    r = subprocess.run([sys.executable, str(script), "--dry-run", "--out", str(tmp_path), "--data-root",
                        str(Path(tiny_data).parent)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    runs = {x["run"]: x for x in report["runs"]}
    assert set(runs) == {"stock", "gor_det", "ultralytics_quantize8", "w_kd amp", "w_kd fp32"}
    assert all(runs[k]["final_eval"] == "pass" for k in ("stock", "gor_det", "w_kd amp", "w_kd fp32"))
    assert report["network_attempts"] == []
    assert runs["gor_det"]["steps"] == 3 and len(runs["w_kd amp"]["w_kd"]) == 3
    assert "s_per_it" in report["ratios"] and "w_kd_final_amp_vs_fp32" in report["ratios"]
    assert "| gor_det | 8 x 64 |" in (tmp_path / "gpu_check.md").read_text()
