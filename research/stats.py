"""Paired per-seed statistics of benchmark rows (``result.json`` dicts with ``name``, ``seed`` and metrics).

Rows of one seed start from the same FP student and train on the same batches, so two rows are compared by their
per-seed differences: the pairing removes the seed-to-seed spread they share. Intervals use Student's t
(``scipy.stats.t``, the ``bench`` extra): with 2-7 seeds its quantile is 12.7-2.4, where the normal one, 1.96, would
claim too much.
"""

from __future__ import annotations

import statistics


def by_seed(rows: list[dict], name: str, key: str = "mAP50-95") -> dict[int, float]:
    """``{seed: row[key]}`` of run ``name`` (``None`` where a row lacks ``key``)."""
    return {r.get("seed", 0): r.get(key) for r in rows if r["name"] == name}


def pairs(rows: list[dict], a: str, b: str, key: str = "mAP50-95") -> list[tuple[float, float]]:
    """``(a[key], b[key])`` per seed, seed order, over the seeds both runs have."""
    xa, xb = by_seed(rows, a, key), by_seed(rows, b, key)
    return [(xa[s], xb[s]) for s in sorted(xa.keys() & xb.keys())]


def paired(rows: list[dict], a: str, b: str) -> list[float]:
    """Per-seed differences ``a - b`` in mAP50-95 points (x100), seed order, over the seeds both runs have."""
    return [100 * (x - y) for x, y in pairs(rows, a, b)]


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n); NaN for n < 2)."""
    m = statistics.mean(xs)
    return m, (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan"))


def t_quantile975(df: int) -> float:
    """t(0.975, df), the half-width factor of a two-sided 95% interval (12.706 at df 1, 4.303 at 2, 2.447 at 6)."""
    from scipy.stats import t  # the bench extra: only the report's intervals need it

    return float(t.ppf(0.975, df))


def interval95(mean: float, se: float, n: int) -> tuple[float, float]:
    """Two-sided 95% confidence interval of a mean of ``n`` paired differences: ``mean ± t(0.975, n-1) * se``.
    NaN for n < 2."""
    if n < 2 or se != se:
        return float("nan"), float("nan")
    half = t_quantile975(n - 1) * se
    return mean - half, mean + half


def mean_std(xs: list[float]) -> str:
    """``mean ± std`` over the non-NaN values (4 and 2 significant digits), the value alone for one, "-" for none."""
    xs = [x for x in xs if x == x]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.4g}"
    return f"{statistics.mean(xs):.4g} ± {statistics.stdev(xs):.2g}"


def per_seed(xs: list[float], fmt: str) -> str:
    """``a / b / ...`` in seed order ("-" for a missing value)."""
    return " / ".join("-" if x != x else format(x, fmt) for x in xs)
