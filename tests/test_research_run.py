"""Tests of the benchmark harness's tables (bench/run.py): paired differences, their standard error, target verdicts."""

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).resolve().parents[1] / "bench/run.py")
bench_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_run)
_spec = importlib.util.spec_from_file_location("fill_docs", Path(__file__).resolve().parents[1] / "bench/fill_docs.py")
fill_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fill_docs)


def rows(name, maps):
    """result.json rows of run ``name``: {seed: mAP50-95}."""
    return [{"name": name, "seed": s, "mAP50-95": m} for s, m in maps.items()]


ROWS = (rows("a", {0: 0.300, 1: 0.310, 2: 0.320, 3: 0.330})
        + rows("b", {0: 0.295, 1: 0.312, 2: 0.310})       # no seed 3: pairs only over seeds 0-2
        + rows("c", {0: 0.280, 1: 0.290, 2: 0.300, 3: 0.310}))


def test_paired_differences_in_points_over_shared_seeds():
    assert bench_run.paired(ROWS, "a", "b") == pytest.approx([0.5, -0.2, 1.0])
    assert bench_run.paired(ROWS, "a", "c") == pytest.approx([2.0, 2.0, 2.0, 2.0])
    assert bench_run.paired(ROWS, "a", "missing") == []


def test_mean_and_standard_error():
    m, se = bench_run.mean_se([0.5, -0.2, 1.0])
    assert m == pytest.approx(1.3 / 3)
    sd = math.sqrt(sum((x - 1.3 / 3) ** 2 for x in [0.5, -0.2, 1.0]) / 2)
    assert se == pytest.approx(sd / math.sqrt(3))
    assert math.isnan(bench_run.mean_se([1.0])[1])


def test_targets_table_verdicts():
    text = bench_run.targets_table(ROWS, [("A>=B", "a", "b", 0.0), ("A>=C+3", "a", "c", 3.0),
                                          ("A>=B+0.6", "a", "b", 0.6), ("gone", "a", "missing", 0.0)])
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 3  # header, rule, three targets (no row for a pair without shared seeds)
    a_b, a_c, a_b6 = lines[2:]
    # mean +0.43, s.e. 0.35: above 0 by more than 1 s.e.
    assert "+0.50 / -0.20 / +1.00" in a_b and "+0.43 ± 0.35" in a_b and "2 of 3" in a_b and a_b.endswith("| met |")
    # 95% interval with Student's t at 2 degrees of freedom (4.303), not the normal 1.96: -1.06 to +1.93
    assert "| -1.06 to +1.93 |" in a_b and "| +2.00 to +2.00 |" in a_c
    # constant +2.00 (s.e. 0): clearly below +3
    assert "+2.00 ± 0.00" in a_c and "0 of 4" in a_c and a_c.endswith("| not met |")
    # mean +0.43 vs +0.6: short by less than its s.e.
    assert "1 of 3" in a_b6 and a_b6.endswith("| not met (inside 1 s.e.) |")


def test_interval95_uses_student_t():
    se = 0.35
    lo, hi = bench_run.interval95(0.43, se, 3)
    assert (hi - lo) / 2 == pytest.approx(4.302653 * se, rel=1e-6)  # t(0.975, df=2)
    lo, hi = bench_run.interval95(-0.04, 0.06, 5)
    assert lo == pytest.approx(-0.04 - 2.776445 * 0.06, rel=1e-6) and hi == pytest.approx(-0.04 + 2.776445 * 0.06)
    assert all(math.isnan(x) for x in bench_run.interval95(0.5, float("nan"), 1))
    # stdlib quantile against published t(0.975, df) values, odd and even df and the df = 1 closed form
    for df, q in [(1, 12.706205), (2, 4.302653), (3, 3.182446), (6, 2.446912), (7, 2.364624), (30, 2.042272)]:
        assert bench_run.t_quantile975(df) == pytest.approx(q, rel=1e-6)
    one_seed = [{"name": "x", "seed": 0, "mAP50-95": 0.31}, {"name": "y", "seed": 0, "mAP50-95": 0.30}]
    assert "| +1.00 ± nan | - | 1 of 1 |" in bench_run.targets_table(one_seed, [("X>=Y", "x", "y", 0.0)])


def test_table_paired_column_uses_the_reference_seeds():
    text = bench_run.table(ROWS, ["a", "b"], ref="b")
    a_line = next(ln for ln in text.splitlines() if ln.startswith("| a |"))
    assert "+0.50 / -0.20 / +1.00 (mean +0.43)" in a_line


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
    row = bench_run.run_one(run, suite, [], {"out": str(out), "seed": 3}, out, res, tiny_data)
    saved = json.loads((res / "ptq_w8a8/seed3/result.json").read_text())
    assert json.dumps(saved) == json.dumps(row) and saved["seed"] == 3  # (dumps: s_per_it is NaN for PTQ) and 0 <= saved["mAP50-95"] <= 1
    assert saved["date"] and "torch" in saved["machine"]
    assert f"({torch.backends.cpu.get_cpu_capability()} kernels)" in saved["machine"]  # numerics differ by ISA
    assert (out / "ptq_w8a8/seed3/weights/best.pt").exists() and not list(res.rglob("*.pt"))
    (tmp_path / "fp.pt").unlink()  # nothing left to run from: the archived row must be what comes back
    again = bench_run.run_one(run, suite, [], {"out": str(out), "seed": 3}, out, res, tiny_data)
    assert json.dumps(again) == json.dumps(saved)


def test_prerequisites_are_the_rows_a_run_reads():
    names = ["teacher_v8s", "fp_v8n", "fp_v8n_ft", "kd"]
    out = Path("bench/out/synthetic")
    kd = {"name": "kd", "overrides": {"model": "{out}/fp_v8n/seed{seed}/weights/best.pt",
                                      "gor": {"teachers": ["{out}/teacher_v8s/seed0/weights/best.pt"]}}}
    assert bench_run.prerequisites(kd, 3, names, out) == {("fp_v8n", 3), ("teacher_v8s", 0)}
    assert bench_run.prerequisites({"name": "fp_v8n", "cfg": "x.yaml"}, 1, names, out) == set()
    # "fp_v8n" is a prefix of "fp_v8n_ft": a path of the one is not a path of the other
    ft = {"name": "q", "overrides": {"model": "{out}/fp_v8n_ft/seed{seed}/weights/best.pt"}}
    assert bench_run.prerequisites(ft, 0, names, out) == {("fp_v8n_ft", 0)}


def test_merged_merges_mappings_and_replaces_the_rest():
    base = {"epochs": 4, "gor": {"quant": {"w_bits": 8, "a_bits": 8}, "teachers": ["a.pt", "b.pt"]}}
    over = {"epochs": 8, "gor": {"quant": {"w_bits": 4}, "teachers": ["c.pt"]}}
    assert bench_run.merged(base, over) == {"epochs": 8, "gor": {"quant": {"w_bits": 4, "a_bits": 8},
                                                                  "teachers": ["c.pt"]}}
    assert base["gor"]["quant"] == {"w_bits": 8, "a_bits": 8}  # the base row is not changed


def test_resolve_bases_through_a_chain_in_any_order():
    runs = [{"name": "e8", "base": "w4", "overrides": {"epochs": 8}},  # its base is defined further down
            {"name": "w8", "cfg": "ft.yaml", "seeds": [0],
             "overrides": {"model": "m.pt", "gor": {"quant": {"w_bits": 8}}}},
            {"name": "w4", "base": "w8", "overrides": {"gor": {"quant": {"w_bits": 4}}}}]
    e8, w8, w4 = bench_run.resolve_bases(runs)
    assert w8 == runs[1]
    assert w4 == {"name": "w4", "cfg": "ft.yaml", "seeds": [0],
                  "overrides": {"model": "m.pt", "gor": {"quant": {"w_bits": 4}}}}
    assert e8 == {**w4, "name": "e8", "overrides": {**w4["overrides"], "epochs": 8}}
    # the scheduler reads what a row inherits: e8 waits for the FP student its base fine-tunes
    kd = bench_run.resolve_bases([{"name": "kd", "overrides": {"model": "{out}/fp/seed{seed}/w.pt"}},
                                  {"name": "kd_e8", "base": "kd", "overrides": {"epochs": 8}}])[1]
    assert bench_run.prerequisites(kd, 2, ["fp", "kd", "kd_e8"], Path("o")) == {("fp", 2)}


@pytest.mark.parametrize("runs, message", [
    ([{"name": "a", "cfg": "x.yaml"}, {"name": "b", "base": "qat_w8"}], "base 'qat_w8' is not a row"),
    ([{"name": "qat_w8a8"}, {"name": "b", "base": "qat_w8"}], "(did you mean 'qat_w8a8'?)"),
    ([{"name": "a", "base": "b"}, {"name": "b", "base": "a"}], "cycle of bases: a -> b -> a"),
    ([{"name": "a", "base": "a"}], "cycle of bases: a -> a"),
    ([{"name": "a"}, {"name": "a"}], "repeated: a"),
])
def test_resolve_bases_rejects_bad_suites(runs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        bench_run.resolve_bases(runs)


def test_load_suite_names_the_file_of_a_bad_base(tmp_path):
    from gor_det.config import ConfigError

    f = tmp_path / "s.yaml"
    f.write_text("data: {preset: tiny}\nruns:\n  - {name: a, cfg: x.yaml}\n  - {name: b, base: c}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{f}: suite row 'b': base 'c' is not a row")):
        bench_run.load_suite(f)


def test_fixed_weight_picked_on_the_other_seeds():
    """Leave one seed out: at each seed, the sweep weight with the best mean over the other seeds, scored at that seed."""
    sweep = (rows("kd_fixed0.5_w8a8", {0: 0.30, 1: 0.40, 2: 0.31})
             + rows("kd_fixed2_w8a8", {0: 0.32, 1: 0.33, 2: 0.33, 3: 0.5}))  # seed 3: not in the whole sweep
    cv = fill_docs.cross_validated_fixed(sweep)
    # seed 0: others {1, 2} -> 0.5 (0.71 vs 0.66); seed 1: others {0, 2} -> 2 (0.65 vs 0.61); seed 2: others {0, 1} -> 0.5
    assert [(r["seed"], r["pick"], r["mAP50-95"]) for r in cv] == [
        (0, "kd_fixed0.5_w8a8", 0.30), (1, "kd_fixed2_w8a8", 0.33), (2, "kd_fixed0.5_w8a8", 0.31)]
    assert fill_docs.best_fixed(sweep) == "kd_fixed0.5_w8a8"  # in hindsight, on the same seeds: 1.01 vs 0.98
    # a weight run at fewer seeds is left out of the pick rather than shrinking it to its seeds
    sweep += rows("kd_fixed8_w8a8", {0: 0.9, 1: 0.9}) + rows(fill_docs.GOR_W8A8, {0: 0.3, 1: 0.3, 2: 0.3})
    assert list(fill_docs.sweep_maps(sweep)[0]) == ["kd_fixed0.5_w8a8", "kd_fixed2_w8a8"]
    assert fill_docs.best_fixed(sweep) == "kd_fixed0.5_w8a8"
    assert [r["seed"] for r in fill_docs.cross_validated_fixed(sweep)] == [0, 1, 2]
    # the W4A4 sweep is picked among its own rows, on the seeds its GoR row ran
    w4 = (rows("kd_fixed0.5_w4a4", {0: 0.26, 1: 0.25}) + rows("kd_fixed2_w4a4", {0: 0.25, 1: 0.27})
          + rows("kd_gorgrad_w4a4", {0: 0.2, 1: 0.2}))
    assert fill_docs.best_fixed(sweep + w4, "kd_gorgrad_w4a4", fill_docs.FIXED_W4A4) == "kd_fixed2_w4a4"
    # ... and so is its leave-one-seed-out pick: seed 0 scored with the pick of seed 1 (2), seed 1 with seed 0's (0.5)
    cv4 = fill_docs.cross_validated_fixed(sweep + w4, "kd_gorgrad_w4a4", fill_docs.FIXED_W4A4, "cv4")
    assert [(r["name"], r["seed"], r["pick"], r["mAP50-95"]) for r in cv4] == [
        ("cv4", 0, "kd_fixed2_w4a4", 0.25), ("cv4", 1, "kd_fixed0.5_w4a4", 0.25)]
    # a seed that the GoR row and one weight alone ran is left out rather than drop the other weights (W4A4 8 epochs:
    # seed 5 of GoR and w_kd 0.2 trained on stage-1 models that could not be re-made for the others)
    e8 = (rows("kd_fixed0.2_w4a4_e8", {0: 0.27, 1: 0.26, 2: 0.27}) + rows("kd_fixed0.5_w4a4_e8", {0: 0.28, 1: 0.27})
          + rows("kd_fixed1_w4a4_e8", {0: 0.26, 1: 0.26}) + rows(fill_docs.GOR_W4A4_E8, {0: 0.3, 1: 0.3, 2: 0.3}))
    m, seeds = fill_docs.sweep_maps(e8, fill_docs.GOR_W4A4_E8, fill_docs.FIXED_W4A4_E8)
    assert list(m) == fill_docs.FIXED_W4A4_E8 and seeds == {0, 1}
    assert fill_docs.best_fixed(e8, fill_docs.GOR_W4A4_E8, fill_docs.FIXED_W4A4_E8) == "kd_fixed0.5_w4a4_e8"
    # none ran: the sweep's first row (the table then shows it as missing)
    assert fill_docs.best_fixed(sweep, "kd_gorgrad_w4a4", fill_docs.FIXED_W4A4) == fill_docs.FIXED_W4A4[0]


def test_step_time_ratio_per_shared_seed():
    rs = [{"name": "q", "seed": 0, "s_per_it": 1.2}, {"name": "q", "seed": 1, "s_per_it": 1.5},
          {"name": "q", "seed": 2, "s_per_it": None}, {"name": "f", "seed": 0, "s_per_it": 1.0},
          {"name": "f", "seed": 1, "s_per_it": 1.0}, {"name": "f", "seed": 2, "s_per_it": 1.0}]
    assert fill_docs.step_time_ratio(rs, "q", "f") == pytest.approx([1.2, 1.5])  # seed 2: no step time, left out
    assert "1.20 / 1.50, mean 1.35x: not met" in fill_docs.step_time_line(rs, "q", "f", 1.3)
    assert "met" in fill_docs.step_time_line(rs, "q", "f", 1.4) and "not met" not in fill_docs.step_time_line(rs, "q", "f", 1.4)


def test_schedule_starts_rows_whose_inputs_are_trained():
    fp0, fp1, t = ("fp", 0), ("fp", 1), ("teacher", 0)
    deps = {fp1: set(), ("ft", 0): {fp0}, ("ft", 1): {fp1}, ("kd", 0): {fp0, t}}
    pending = [fp1, ("ft", 0), ("ft", 1), ("kd", 0)]
    done = {fp0}

    def sched(pending, running, trained, started, n=2):
        return bench_run.schedule(pending, running, deps, trained.__contains__, started.__contains__, n)

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


def test_teacher_ensemble_fusion_rules():
    """bench/teacher_ensemble.py's per-anchor fusion of decoded outputs (B, 4 + nc, A): mean, confidence-weighted,
    fixed shares (exact on hand values)."""
    import torch

    spec = importlib.util.spec_from_file_location(
        "teacher_ensemble", Path(__file__).resolve().parents[1] / "bench/teacher_ensemble.py")
    te = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(te)
    # one image, 4 box rows + 2 classes, 2 anchors
    a = torch.tensor([[[10.0, 20.0], [10.0, 20.0], [4.0, 4.0], [4.0, 4.0], [0.9, 0.1], [0.0, 0.2]]])
    b = torch.tensor([[[14.0, 20.0], [10.0, 24.0], [4.0, 8.0], [4.0, 4.0], [0.3, 0.1], [0.1, 0.6]]])
    torch.testing.assert_close(te.fuse([a, b], "mean"), (a + b) / 2)
    # confidences: anchor 0: 0.9 vs 0.3 -> shares 0.75 / 0.25; anchor 1: 0.2 vs 0.6 -> 0.25 / 0.75
    w_a = torch.tensor([0.75, 0.25])
    torch.testing.assert_close(te.fuse([a, b], "conf"), w_a * a + (1 - w_a) * b)
    torch.testing.assert_close(te.fuse([a, b], "static", [3.0, 1.0]), 0.75 * a + 0.25 * b)


def test_target_lines_comparing_the_same_rows_are_listed_once():
    checks = [("best", "gor", "fixed0.5", 0.0), ("w 0.5", "gor", "fixed0.5", 0.0), ("w 1", "gor", "fixed1", 0.0),
              ("+1", "gor", "fixed0.5", 1.0)]  # another threshold: another check
    assert fill_docs.distinct(checks) == [checks[0], checks[2], checks[3]]


def test_moving_balance_rows_come_from_the_suite():
    """The GoR-weights table lists the rows whose suite entry distils with a GoR form (default method included) or
    with a scheduled fixed weight."""
    runs = [{"name": "fixed", "overrides": {"gor": {"teachers": ["t.pt"], "balance": {"method": "fixed"}}}},
            {"name": "look", "overrides": {"gor": {"teachers": ["t.pt"], "balance": {"method": "gor_lookahead"}}}},
            {"name": "default", "overrides": {"gor": {"teachers": ["t.pt"]}}},  # BalanceCfg's method: gor_lookahead
            {"name": "falling", "overrides": {"gor": {"teachers": ["t.pt"],
                                                      "balance": {"method": "fixed", "w_kd_end": 0.2}}}},
            {"name": "qat", "overrides": {"gor": {"quant": {"w_bits": 8}}}},  # no teacher: nothing to balance
            {"name": "ul", "kind": "ultralytics"}]
    names = ["ul", "default", "qat", "look", "fixed", "falling", "absent"]
    assert fill_docs.moving_balance(names, runs) == ["default", "look", "falling"]


def test_tables_need_only_the_core_install():
    """The harness's tables run where only the core and dev extras are installed (CI): neither scipy nor the bench
    extra (ModelOpt brings scipy in) may be imported by them. A stale dev venv with the extras cannot hide that."""
    code = (
        "import sys, importlib.abc, importlib.util\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('scipy', 'modelopt', 'huggingface_hub'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"spec = importlib.util.spec_from_file_location('r', {str(Path(bench_run.__file__))!r})\n"
        "r = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)\n"
        "rows = [{'name': n, 'seed': s, 'mAP50-95': 0.3 + 0.01 * s + (0.002 if n == 'x' else 0)}\n"
        "        for n in ('x', 'y') for s in range(3)]\n"
        "print(r.targets_table(rows, [('X>=Y', 'x', 'y', 0.0)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "+0.20 to +0.20" in out.stdout  # constant difference: zero-width interval


def reproduce_sh_rows() -> set[str]:
    """Every row named after ``--only`` in bench/reproduce.sh (continued lines joined)."""
    import re

    text = (fill_docs.ROOT / "bench/reproduce.sh").read_text().replace("\\\n", " ")
    return {n for line in re.findall(r"--only (.*?) --", text) for n in line.split()}


def test_docs_rows_are_suite_rows_that_reproduce_sh_runs():
    """A benchmark row is named in four places (the suite, fill_docs.DOCS, the targets, bench/reproduce.sh): every row
    a docs table or target quotes must be defined in the suite and run by reproduce.sh, so `sh bench/reproduce.sh &&
    python bench/fill_docs.py` rebuilds every number docs/ quote."""
    suite = {r["name"] for r in bench_run.load_suite(fill_docs.SUITE)["runs"]}
    made = reproduce_sh_rows()
    assert made <= suite, f"reproduce.sh runs rows the suite lacks: {sorted(made - suite)}"
    derived = set(fill_docs.SWEEPS)  # the cross-validated rows: computed by fill_docs, never run
    for doc, names in fill_docs.DOCS.items():
        assert set(names) <= suite, f"{doc} quotes rows the suite lacks: {sorted(set(names) - suite)}"
        assert set(names) <= made, f"{doc} quotes rows reproduce.sh never runs: {sorted(set(names) - made)}"
    for doc in fill_docs.TARGET_DOCS:
        names = fill_docs.DOCS[doc]
        quoted = {n for _, a, b, _ in fill_docs.targets(doc, []) for n in (a, b)} - derived
        assert quoted <= set(names), f"{doc}: targets compare rows its table lacks: {sorted(quoted - set(names))}"
