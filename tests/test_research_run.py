"""Tests of the benchmark harness (research/run.py): a finished row is archived and reused, rows start when the rows
they read are trained."""

import subprocess
import sys
from pathlib import Path

import pytest

from research import run as research_run


def test_run_one_archives_the_row_and_reuses_it(tiny_data, tmp_path):
    """A finished row's result.json (numbers, date, machine) lands in the committed results dir, apart from the
    weights; a second call reads it back instead of running the row again."""
    import json

    import torch
    import yaml
    from ultralytics.nn.tasks import DetectionModel

    m = DetectionModel("yolov8n.yaml", nc=len(yaml.safe_load(open(tiny_data))["names"]), verbose=False)
    torch.save({"model": m.half(), "train_args": {"imgsz": 64}}, tmp_path / "fp.pt")
    run = {"name": "ptq_w8a8", "kind": "ptq", "weights": str(tmp_path / "fp.pt"), "quant": {"calib_batches": 1}}
    suite = {"common": {"imgsz": 64}}
    out, res = tmp_path / "out", tmp_path / "results"
    row = research_run.run_one(run, suite, [], {"out": str(out), "seed": 3}, out, res, tiny_data)
    saved = json.loads((res / "ptq_w8a8/seed3/result.json").read_text())
    assert json.dumps(saved) == json.dumps(row) and saved["seed"] == 3  # (dumps: s_per_it is NaN for PTQ) and 0 <= saved["mAP50-95"] <= 1
    assert saved["date"] and "torch" in saved["machine"]
    assert f"({torch.backends.cpu.get_cpu_capability()} kernels)" in saved["machine"]  # numerics differ by ISA
    assert (out / "ptq_w8a8/seed3/weights/best.pt").exists() and not list(res.rglob("*.pt"))
    (tmp_path / "fp.pt").unlink()  # nothing left to run from: the archived row must be what comes back
    again = research_run.run_one(run, suite, [], {"out": str(out), "seed": 3}, out, res, tiny_data)
    assert json.dumps(again) == json.dumps(saved)


def test_prerequisites_are_the_rows_a_run_reads():
    names = ["teacher_v8s", "fp_v8n", "fp_v8n_ft", "kd"]
    out = Path("research/out/synthetic")
    kd = {"name": "kd", "overrides": {"model": "{out}/fp_v8n/seed{seed}/weights/best.pt",
                                      "gor": {"teachers": ["{out}/teacher_v8s/seed0/weights/best.pt"]}}}
    assert research_run.prerequisites(kd, 3, names, out) == {("fp_v8n", 3), ("teacher_v8s", 0)}
    assert research_run.prerequisites({"name": "fp_v8n", "cfg": "x.yaml"}, 1, names, out) == set()
    # "fp_v8n" is a prefix of "fp_v8n_ft": a path of the one is not a path of the other
    ft = {"name": "q", "overrides": {"model": "{out}/fp_v8n_ft/seed{seed}/weights/best.pt"}}
    assert research_run.prerequisites(ft, 0, names, out) == {("fp_v8n_ft", 0)}


def test_schedule_starts_rows_whose_inputs_are_trained():
    fp0, fp1, t = ("fp", 0), ("fp", 1), ("teacher", 0)
    deps = {fp1: set(), ("ft", 0): {fp0}, ("ft", 1): {fp1}, ("kd", 0): {fp0, t}}
    pending = [fp1, ("ft", 0), ("ft", 1), ("kd", 0)]
    done = {fp0}

    def sched(pending, running, trained, started, n=2):
        return research_run.schedule(pending, running, deps, trained.__contains__, started.__contains__, n)

    # the teacher is trained by another process (its dir exists): it takes one of the two slots
    assert sched(pending, set(), done, done | {t, fp1}) == [fp1]
    # fp seed 1 is a job of this scheduler (a stale dir of a killed run is no "elsewhere"): two free slots
    assert sched(pending, set(), done, done | {fp1}) == [fp1, ("ft", 0)]
    assert sched(pending[1:], {fp1}, done, done | {fp1}) == [("ft", 0)]  # ft seed 1 waits for fp seed 1
    assert sched(pending[1:], {fp1, ("ft", 0)}, done, done | {fp1}) == []  # no free slot
    with pytest.raises(RuntimeError, match="teacher seed 0, which nothing is training"):
        sched([("kd", 0)], set(), done, done)
    # one free slot: fp seed 1, which ft seed 1 waits for, goes before ft seed 0 (queued first, awaited by nothing)
    assert sched([("ft", 0), fp1, ("ft", 1)], set(), done, done, n=1) == [fp1]


def test_prerequisites_of_an_inherited_path():
    """The scheduler reads what a row inherits: a row based on a fine-tuning row waits for the FP student its base
    fine-tunes."""
    from research.suite import resolve_bases

    kd = resolve_bases([{"name": "kd", "overrides": {"model": "{out}/fp/seed{seed}/w.pt"}},
                        {"name": "kd_e8", "base": "kd", "overrides": {"epochs": 8}}])[1]
    assert research_run.prerequisites(kd, 2, ["fp", "kd", "kd_e8"], Path("o")) == {("fp", 2)}


def test_the_harness_needs_no_scipy():
    """research/run.py and its row table run where only the core and dev extras are installed (CI): scipy (the bench
    extra) is imported by the report's intervals alone. A venv with the extras cannot hide that."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('scipy', 'modelopt', 'huggingface_hub'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from research import run\n"
        "rows = [{'name': n, 'seed': s, 'mAP50-95': 0.3 + 0.01 * s + (0.002 if n == 'x' else 0)}\n"
        "        for n in ('x', 'y') for s in range(3)]\n"
        "print(run.table(rows, ['x', 'y'], 'y'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "+0.20 / +0.20 / +0.20 (mean +0.20)" in out.stdout


def test_select_the_reported_rows():
    runs = [{"name": "fp", "tables": ["stage1"]}, {"name": "ablation"}, {"name": "kd", "tables": ["distillation"]}]
    assert research_run.select(runs, None, reported=True) == {"fp", "kd"}  # the ablation has no committed results
    assert research_run.select(runs, ["ablation", "kd"], reported=False) == {"ablation", "kd"}
    assert research_run.select(runs, ["ablation", "kd"], reported=True) == {"kd"}
    assert research_run.select(runs, None, reported=False) == {"fp", "ablation", "kd"}


@pytest.mark.slow
def test_the_harness_trains_a_row_with_a_research_balancer(tiny_data, tmp_path):
    """`research/run.py --reported` in a fresh process (where nothing has imported research.balancers yet) trains a
    suite row whose balance is a research form for one epoch and archives its numbers and per-epoch log."""
    import json

    import yaml
    from conftest import tiny_overrides
    from test_engine_kd import save_teacher

    names = yaml.safe_load(open(tiny_data))["names"]
    teacher = save_teacher(tmp_path / "teacher.pt", nc=len(names), names=names)
    cfg = {k: v for k, v in tiny_overrides(tiny_data, tmp_path, "x").items() if k not in ("project", "name", "seed")}
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(cfg))
    suite = {"data": {"preset": "tiny", "root": str(Path(tiny_data).parent)}, "seeds": [0],
             "runs": [{"name": "kd_split", "cfg": str(tmp_path / "student.yaml"), "tables": ["t"],
                       "overrides": {"gor": {"teachers": [str(teacher)], "threads": 1,
                                             "balance": {"method": "gor_split", "lr": 0.05, "grad_every": 1}}}},
                      {"name": "not_reported", "cfg": "missing.yaml"}],  # no table: --reported leaves it out
             "report": {"tables": {"t": {"title": "T"}}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    out = subprocess.run([sys.executable, str(Path(research_run.__file__)), "--suite", str(tmp_path / "s.yaml"),
                          "--reported", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "res")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    row = json.loads((tmp_path / "res/kd_split/seed0/result.json").read_text())
    assert row["name"] == "kd_split" and row["epochs"] == 1 and 0 <= row["mAP50-95"] <= 1
    assert "train/w_kd" in (tmp_path / "res/kd_split/seed0/results.csv").read_text().splitlines()[0]
    assert not (tmp_path / "res/not_reported").exists()


def test_a_rows_bad_balance_is_one_error_line(tiny_data, tmp_path):
    """A row naming a balancer nobody registers (a name from before the rename) stops the harness with one line
    naming the row and the registered balancers, not a stack trace."""
    import yaml
    from conftest import tiny_overrides

    cfg = {k: v for k, v in tiny_overrides(tiny_data, tmp_path, "x").items() if k not in ("project", "name", "seed")}
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(cfg))
    suite = {"data": {"preset": "tiny", "root": str(Path(tiny_data).parent)}, "seeds": [0],
             "runs": [{"name": "old", "cfg": str(tmp_path / "student.yaml"),
                       "overrides": {"gor": {"balance": {"method": "gor_lookahead"}}}}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    out = subprocess.run([sys.executable, str(Path(research_run.__file__)), "--suite", str(tmp_path / "s.yaml"),
                          "--out", str(tmp_path / "out"), "--results", str(tmp_path / "res")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        "error: suite row 'old': gor.balance.method='gor_lookahead' is not one of fixed, fixed_task, gor, ")
