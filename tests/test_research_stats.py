"""Tests of the paired per-seed statistics (research/stats.py)."""

import math

import pytest

from research import stats


def rows(name, maps):
    """result.json rows of run ``name``: {seed: mAP50-95}."""
    return [{"name": name, "seed": s, "mAP50-95": m} for s, m in maps.items()]


ROWS = (rows("a", {0: 0.300, 1: 0.310, 2: 0.320, 3: 0.330})
        + rows("b", {0: 0.295, 1: 0.312, 2: 0.310})       # no seed 3: pairs only over seeds 0-2
        + rows("c", {0: 0.280, 1: 0.290, 2: 0.300, 3: 0.310}))


def test_paired_differences_in_points_over_shared_seeds():
    assert stats.paired(ROWS, "a", "b") == pytest.approx([0.5, -0.2, 1.0])
    assert stats.paired(ROWS, "a", "c") == pytest.approx([2.0, 2.0, 2.0, 2.0])
    assert stats.paired(ROWS, "a", "missing") == []


def test_mean_and_standard_error():
    m, se = stats.mean_se([0.5, -0.2, 1.0])
    assert m == pytest.approx(1.3 / 3)
    sd = math.sqrt(sum((x - 1.3 / 3) ** 2 for x in [0.5, -0.2, 1.0]) / 2)
    assert se == pytest.approx(sd / math.sqrt(3))
    assert math.isnan(stats.mean_se([1.0])[1])


def test_interval95_uses_student_t():
    pytest.importorskip("scipy", reason="the report's intervals need scipy (pip install -e .[bench])")
    se = 0.35
    lo, hi = stats.interval95(0.43, se, 3)
    assert (hi - lo) / 2 == pytest.approx(4.302653 * se, rel=1e-6)  # t(0.975, df=2), not the normal 1.96
    lo, hi = stats.interval95(-0.04, 0.06, 5)
    assert lo == pytest.approx(-0.04 - 2.776445 * 0.06, rel=1e-6) and hi == pytest.approx(-0.04 + 2.776445 * 0.06)
    assert all(math.isnan(x) for x in stats.interval95(0.5, float("nan"), 1))
    for df, q in [(1, 12.706205), (2, 4.302653), (3, 3.182446), (6, 2.446912), (7, 2.364624), (30, 2.042272)]:
        assert stats.t_quantile975(df) == pytest.approx(q, rel=1e-6)  # published t(0.975, df) values


def test_mean_std_and_per_seed_formats():
    assert stats.mean_std([0.3, 0.32, float("nan")]) == "0.31 ± 0.014"
    assert stats.mean_std([0.31]) == "0.31" and stats.mean_std([float("nan")]) == "-"
    assert stats.per_seed([0.5, float("nan"), -0.25], "+.2f") == "+0.50 / - / -0.25"
