"""Tests of the report's tables (research/tables.py): compare verdicts, sweeps (best weight, leave one seed out),
step time, the summary table and the learned-weights table read off results.csv."""

import pytest

from research import tables
from research.suite import Compare, Sweep


def rows(name, maps):
    """result.json rows of run ``name``: {seed: mAP50-95}."""
    return [{"name": name, "seed": s, "mAP50-95": m} for s, m in maps.items()]


ROWS = (rows("a", {0: 0.300, 1: 0.310, 2: 0.320, 3: 0.330})
        + rows("b", {0: 0.295, 1: 0.312, 2: 0.310})       # no seed 3: pairs only over seeds 0-2
        + rows("c", {0: 0.280, 1: 0.290, 2: 0.300, 3: 0.310}))
W8 = Sweep("w8a8", "kd_gorlook_w8a8", "kd_fixed_cv_w8a8", ["kd_fixed0.5_w8a8", "kd_fixed2_w8a8", "kd_fixed8_w8a8"])


def test_compare_table_verdicts():
    pytest.importorskip("scipy", reason="the report's intervals need scipy (pip install -e .[bench])")
    text = tables.compare_table(ROWS, [("A>=B", "a", "b", 0.0), ("A>=C+3", "a", "c", 3.0),
                                       ("A>=B+0.6", "a", "b", 0.6), ("gone", "a", "missing", 0.0)])
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 3  # header, rule, three checks (no line for a pair without shared seeds)
    a_b, a_c, a_b6 = lines[2:]
    # mean +0.43, s.e. 0.35: above 0 by more than 1 s.e.
    assert "+0.50 / -0.20 / +1.00" in a_b and "+0.43 ± 0.35" in a_b and "2 of 3" in a_b and a_b.endswith("| met |")
    # 95% interval with Student's t at 2 degrees of freedom (4.303), not the normal 1.96: -1.06 to +1.93
    assert "| -1.06 to +1.93 |" in a_b and "| +2.00 to +2.00 |" in a_c
    # constant +2.00 (s.e. 0): clearly below +3
    assert "+2.00 ± 0.00" in a_c and "0 of 4" in a_c and a_c.endswith("| not met |")
    # mean +0.43 vs +0.6: short by less than its s.e.
    assert "1 of 3" in a_b6 and a_b6.endswith("| not met (inside 1 s.e.) |")
    one_seed = [{"name": "x", "seed": 0, "mAP50-95": 0.31}, {"name": "y", "seed": 0, "mAP50-95": 0.30}]
    assert "| +1.00 ± nan | - | 1 of 1 |" in tables.compare_table(one_seed, [("X>=Y", "x", "y", 0.0)])


def test_table_paired_column_uses_the_reference_seeds():
    text = tables.table(ROWS, ["a", "b", "absent"], ref="b")
    a_line = next(ln for ln in text.splitlines() if ln.startswith("| a |"))
    assert "+0.50 / -0.20 / +1.00 (mean +0.43)" in a_line
    assert "absent" not in text  # a row that has not run is left out


def test_summary_table_one_line_per_run():
    pytest.importorskip("scipy", reason="the report's intervals need scipy (pip install -e .[bench])")
    rs = [{**r, "s_per_it": 1.0 + r["seed"]} for r in ROWS]
    text = tables.summary_table(rs, ["b", "a", "absent"], "b", {"a": "QAT + KD"})
    b_line, a_line = text.strip().splitlines()[2:]
    assert a_line == "| a | QAT + KD | 4 | 0.315 ± 0.013 | +0.43 ± 0.35 | -1.06 to +1.93 | 2.50 |"
    assert b_line == "| b |  | 3 | 0.3057 ± 0.0093 | - | - | 2.00 |"  # the reference: no difference to itself


def test_fixed_weight_picked_on_the_other_seeds():
    """Leave one seed out: at each seed, the sweep weight with the best mean over the other seeds, scored at that seed."""
    sweep = (rows("kd_fixed0.5_w8a8", {0: 0.30, 1: 0.40, 2: 0.31})
             + rows("kd_fixed2_w8a8", {0: 0.32, 1: 0.33, 2: 0.33, 3: 0.5}))  # seed 3: not in the whole sweep
    cv = tables.cross_validated_fixed(sweep, W8)
    # seed 0: others {1, 2} -> 0.5 (0.71 vs 0.66); seed 1: others {0, 2} -> 2 (0.65 vs 0.61); seed 2: others {0, 1} -> 0.5
    assert [(r["name"], r["seed"], r["pick"], r["mAP50-95"]) for r in cv] == [
        ("kd_fixed_cv_w8a8", 0, "kd_fixed0.5_w8a8", 0.30), ("kd_fixed_cv_w8a8", 1, "kd_fixed2_w8a8", 0.33),
        ("kd_fixed_cv_w8a8", 2, "kd_fixed0.5_w8a8", 0.31)]
    assert tables.best_fixed(sweep, W8) == "kd_fixed0.5_w8a8"  # in hindsight, on the same seeds: 1.01 vs 0.98
    # a weight run at fewer seeds is left out of the pick rather than shrinking it to its seeds
    sweep += rows("kd_fixed8_w8a8", {0: 0.9, 1: 0.9}) + rows(W8.gor, {0: 0.3, 1: 0.3, 2: 0.3})
    assert list(tables.sweep_maps(sweep, W8)[0]) == ["kd_fixed0.5_w8a8", "kd_fixed2_w8a8"]
    assert tables.best_fixed(sweep, W8) == "kd_fixed0.5_w8a8"
    assert [r["seed"] for r in tables.cross_validated_fixed(sweep, W8)] == [0, 1, 2]
    # a seed that the GoR row and one weight alone ran is left out rather than drop the other weights
    e8 = Sweep("e8", "gor_e8", "cv_e8", ["f0.2", "f0.5", "f1"])
    e8_rows = (rows("f0.2", {0: 0.27, 1: 0.26, 2: 0.27}) + rows("f0.5", {0: 0.28, 1: 0.27})
               + rows("f1", {0: 0.26, 1: 0.26}) + rows("gor_e8", {0: 0.3, 1: 0.3, 2: 0.3}))
    m, seeds = tables.sweep_maps(e8_rows, e8)
    assert list(m) == e8.rows and seeds == {0, 1}
    assert tables.best_fixed(e8_rows, e8) == "f0.5"
    # none ran: the sweep's first row (the compare then has no line)
    assert tables.best_fixed(ROWS, e8) == "f0.2"


def test_compares_resolve_the_best_weight_and_are_listed_once():
    sweep = rows("kd_fixed0.5_w8a8", {0: 0.30, 1: 0.31}) + rows("kd_fixed2_w8a8", {0: 0.29, 1: 0.30})
    compares = [Compare("best", "gor", "best:w8a8", 0.0), Compare("w 0.5", "gor", "kd_fixed0.5_w8a8", 0.0),
                Compare("w 2", "gor", "kd_fixed2_w8a8", 0.0), Compare("+1", "gor", "kd_fixed0.5_w8a8", 1.0),
                Compare("step", "gor", "kd_fixed2_w8a8", max_ratio=1.3)]  # not a paired-mAP check
    assert tables.resolved_checks(sweep, compares, {"w8a8": W8}) == [
        ("best", "gor", "kd_fixed0.5_w8a8", 0.0), ("w 2", "gor", "kd_fixed2_w8a8", 0.0),
        ("+1", "gor", "kd_fixed0.5_w8a8", 1.0)]  # another threshold: another check


def test_step_time_ratio_per_shared_seed():
    rs = [{"name": "q", "seed": 0, "s_per_it": 1.2}, {"name": "q", "seed": 1, "s_per_it": 1.5},
          {"name": "q", "seed": 2, "s_per_it": None}, {"name": "f", "seed": 0, "s_per_it": 1.0},
          {"name": "f", "seed": 1, "s_per_it": 1.0}, {"name": "f", "seed": 2, "s_per_it": 1.0}]
    assert tables.step_time_ratio(rs, "q", "f") == pytest.approx([1.2, 1.5])  # seed 2: no step time, left out
    assert "1.20 / 1.50, mean 1.35x: not met" in tables.step_time_line(rs, "q", "f", 1.3)
    line = tables.step_time_line(rs, "q", "f", 1.4)
    assert "met" in line and "not met" not in line
    assert tables.step_time_line(rs, "q", "absent", 1.3) == ""


def _csv(path, epochs):
    path.parent.mkdir(parents=True)
    keys = list(epochs[0])
    path.write_text(",".join(f"{k:>12}" for k in keys) + "\n"  # Ultralytics pads its column names
                    + "".join(",".join(str(e[k]) for k in keys) + "\n" for e in epochs))


def test_weights_table_lists_the_runs_whose_weights_moved(tmp_path):
    """Read off each run's results.csv: a learned balance or a scheduled fixed weight moves, a constant fixed weight
    (or no KD at all) does not; no method name is needed."""
    losses = {"train/box_loss": 1.0, "train/cls_loss": 2.0, "train/dfl_loss": 1.0, "train/kd_feat": 0.5,
              "train/kd_cls": 0.4, "train/kd_box": 0.1}
    _csv(tmp_path / "fixed/seed0/results.csv", [{**losses, "train/w_task": 1, "train/w_kd": 0.5}] * 3)
    _csv(tmp_path / "gor/seed1/results.csv", [{**losses, "train/w_task": 1.2, "train/w_kd": 0.6},
                                              {**losses, "train/w_task": 1.5, "train/w_kd": 0.3}])
    _csv(tmp_path / "qat/seed0/results.csv", [{"train/box_loss": 1.0}] * 2)
    text = tables.weights_table(tmp_path, ["qat", "fixed", "gor", "absent"])
    lines = text.strip().splitlines()
    assert lines[2:] == ["| gor | 1 | 1.500 | 0.300 | 0.20 | 0.50 / 0.20 (mean 0.35) | 4.00 | 1.000 | 4.00 |"]
    assert tables.weights_table(tmp_path, ["qat", "fixed"]) == ""
