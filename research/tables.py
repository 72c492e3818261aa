"""Markdown tables of benchmark rows: the rows themselves, the compares a suite declares, the learned weights.

Rows are ``result.json`` dicts (:mod:`research.run`); differences are paired per seed (:mod:`research.stats`).
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from research.stats import by_seed, interval95, mean_se, mean_std, paired, pairs, per_seed
from research.suite import Compare, Sweep


def table(rows: list[dict], names: list[str], ref: str | None = None) -> str:
    """Markdown table, one line per run name: mean ± std over seeds, the per-seed mAP50-95 and s/iteration (seed
    order; s/iteration per seed because rows may have run under different conditions), and with ``ref`` the paired
    per-seed difference ``run - ref`` and its mean, in mAP50-95 points (x100). Runs without rows are left out."""
    head = "| run | seeds | mAP50-95 (pycocotools) | per seed |" + (f" vs {ref} (points, paired) |" if ref else "")
    head += " mAP50 | Ultralytics val mAP50-95 | wall time (s) | s/iteration |\n"
    head += "|---|---|---|---|" + ("---|" if ref else "") + "---|---|---|---|\n"
    lines = []
    for n in names:
        rs = sorted((r for r in rows if r["name"] == n), key=lambda r: r.get("seed", 0))
        if not rs:
            continue

        def col(k, rs=rs):
            return mean_std([r.get(k, float("nan")) for r in rs])

        delta = ""
        if ref:
            d = paired(rows, n, ref)
            mean = f" (mean {statistics.mean(d):+.2f})" if len(d) > 1 else ""
            delta = f" {per_seed(d, '+.2f')}{mean} |" if d else " - |"
        lines.append(f"| {n} | {len(rs)} | {col('mAP50-95')} | {per_seed([r['mAP50-95'] for r in rs], '.4f')} |{delta} "
                     f"{col('mAP50')} | {col('ul_mAP50-95')} | {col('wall_s')} | "
                     f"{per_seed([r.get('s_per_it', float('nan')) for r in rs], '.3f')} |")
    return head + "\n".join(lines) + "\n"


def summary_table(rows: list[dict], names: list[str], ref: str, what: dict[str, str]) -> str:
    """One line per run: what it is (``what``), seeds, mean ± std mAP50-95, the mean paired difference to ``ref``
    ± its standard error with its 95% interval (points), and the median s/iteration over the seeds."""
    lines = [f"| run | what | seeds | mAP50-95 | vs {ref} (points, paired: mean ± s.e.) | 95% interval | s/iteration |",
             "|---|---|---|---|---|---|---|"]
    for n in names:
        rs = [r for r in rows if r["name"] == n]
        if not rs:
            continue
        d = paired(rows, n, ref)
        m, se = mean_se(d) if d else (float("nan"), float("nan"))
        lo, hi = interval95(m, se, len(d))
        vs = "-" if not d or n == ref else f"{m:+.2f}" + ("" if se != se else f" ± {se:.2f}")
        ci = "-" if lo != lo or n == ref else f"{lo:+.2f} to {hi:+.2f}"
        steps = [r["s_per_it"] for r in rs if r.get("s_per_it") is not None and r["s_per_it"] == r["s_per_it"]]
        s_it = f"{statistics.median(steps):.2f}" if steps else "-"
        lines.append(f"| {n} | {what.get(n, '')} | {len(rs)} | {mean_std([r['mAP50-95'] for r in rs])} | {vs} | {ci} | "
                     f"{s_it} |")
    return "\n".join(lines) + "\n"


def compare_table(rows: list[dict], checks: list[tuple[str, str, str, float]]) -> str:
    """Markdown table of checks ``(label, a, b, threshold)``: target ``a - b >= threshold`` (points). Verdict on the
    mean of the paired per-seed differences; "(inside 1 s.e.)" flags a mean closer to the threshold than its
    standard error, i.e. a verdict the seeds run do not resolve. The 95% interval says how far either way the true
    difference may lie, given those seeds. Checks whose rows share no seed are left out."""
    lines = ["| target | a - b >= | per seed (points) | mean ± s.e. | 95% interval | seeds meeting it "
             "| verdict on the mean |",
             "|---|---|---|---|---|---|---|"]
    for label, a, b, thr in checks:
        d = paired(rows, a, b)
        if not d:
            continue
        m, se = mean_se(d)
        verdict = "met" if m >= thr else "not met"
        if se == se and abs(m - thr) < se:
            verdict += " (inside 1 s.e.)"
        lo, hi = interval95(m, se, len(d))
        ci = "-" if lo != lo else f"{lo:+.2f} to {hi:+.2f}"  # one seed: no interval
        lines.append(f"| {label}: `{a}` - `{b}` | {thr:+.1f} | {per_seed(d, '+.2f')} | {m:+.2f} ± {se:.2f} | {ci} | "
                     f"{sum(x >= thr for x in d)} of {len(d)} | {verdict} |")
    return "\n".join(lines) + "\n"


def step_time_ratio(rows: list[dict], a: str, b: str) -> list[float]:
    """Per-seed ratio of s/iteration ``a / b`` over the seeds both rows have (seed order); seeds where either row
    lacks a step time are left out."""
    return [x / y for x, y in pairs(rows, a, b, "s_per_it") if x and y]


def step_time_line(rows: list[dict], a: str, b: str, max_ratio: float) -> str:
    """One sentence: the target ``s/it(a) <= max_ratio * s/it(b)`` checked on the per-seed ratios ("" without any)."""
    r = step_time_ratio(rows, a, b)
    if not r:
        return ""
    m = statistics.mean(r)
    verdict = "met" if m <= max_ratio else "not met"
    return (f"\nStep time, target `{a}` within {max_ratio}x of `{b}` (s/iteration ratio per seed): "
            f"{per_seed(r, '.2f')}, mean {m:.2f}x: {verdict}.\n")


def sweep_maps(rows: list[dict], sweep: Sweep) -> tuple[dict[str, dict[int, float]], set[int]]:
    """``{row: {seed: mAP}}`` of the sweep rows compared and the seeds they are compared on (the same seeds for
    each, so a pick is not decided by which seeds a row happens to have). Of the rows of the sweep that ran, the
    subset whose common seeds (within those its ``gor`` row ran; all if it ran none) hold the most results, rows x
    seeds, the more seeds on a tie: a weight run at fewer seeds is left out rather than shrink every comparison to its
    seeds, and a seed only one weight ran besides GoR is left out rather than drop the other weights."""
    ran = {n: by_seed(rows, n) for n in sweep.rows if by_seed(rows, n)}
    allowed = set(by_seed(rows, sweep.gor)) or {k for m in ran.values() for k in m}
    best, best_seeds = [], set()
    for mask in range(1, 2 ** len(ran)):  # at most a handful of weights: every subset
        names = [n for i, n in enumerate(ran) if mask >> i & 1]
        seeds = allowed.intersection(*(ran[n].keys() for n in names))
        if (len(names) * len(seeds), len(seeds)) > (len(best) * len(best_seeds), len(best_seeds)):
            best, best_seeds = names, seeds
    return {n: ran[n] for n in best}, best_seeds


def best_fixed(rows: list[dict], sweep: Sweep) -> str:
    """The row of ``sweep`` with the highest mean mAP over the seeds the whole sweep has run (:func:`sweep_maps`);
    the sweep's first row when none has run (the compare is then left out)."""
    m, seeds = sweep_maps(rows, sweep)
    if not m:
        return sweep.rows[0]
    return max(m, key=lambda n: sum(m[n][s] for s in seeds))


def cross_validated_fixed(rows: list[dict], sweep: Sweep) -> list[dict]:
    """Rows ``sweep.cv``: at each seed, the mAP of the sweep weight with the best mean over the *other* seeds (leave
    one seed out). It is what tuning the weight by a sweep on other runs gives on a new run; the best weight picked on
    the same seeds it is scored on (:func:`best_fixed`) also profits from that pick's luck (the maximum of several
    noisy means is biased upwards)."""
    m, seeds = sweep_maps(rows, sweep)
    out = []
    for s in sorted(seeds):
        others = seeds - {s}
        if others:
            pick = max(m, key=lambda n: sum(m[n][t] for t in others))
            out.append({"name": sweep.cv, "seed": s, "mAP50-95": m[pick][s], "pick": pick})
    return out


def resolved_checks(rows: list[dict], compares: list[Compare], sweeps: dict[str, Sweep]
                    ) -> list[tuple[str, str, str, float]]:
    """The ``min`` compares as ``(label, a, b, min)`` with ``best:<sweep>`` resolved (:func:`best_fixed`), without
    the lines that compare the same rows at the same threshold as an earlier line (e.g. "gor >= fixed w_kd 0.5" once
    the sweep's best weight is 0.5): the first label stays."""
    def name(x: str) -> str:
        return best_fixed(rows, sweeps[x[5:]]) if x.startswith("best:") else x

    seen, out = set(), []
    for c in compares:
        if c.min is None:
            continue
        check = (c.label, name(c.a), name(c.b), float(c.min))
        if check[1:] not in seen:
            seen.add(check[1:])
            out.append(check)
    return out


def results_csv(res_root: Path, name: str) -> dict[int, list[dict[str, float]]]:
    """``{seed: epochs}`` of run ``name``'s committed ``results.csv`` files, each epoch a dict of floats."""
    out = {}
    for f in sorted((res_root / name).glob("seed*/results.csv"), key=lambda p: int(p.parent.name[4:])):
        with open(f) as fh:
            out[int(f.parent.name[4:])] = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    return out


def moving_weights(epochs: list[dict[str, float]]) -> bool:
    """Whether the balance weights of a run changed over its epochs (a learned balance or a scheduled fixed
    weight), read off its logged ``train/w_task`` / ``train/w_kd`` columns."""
    return any(len({e.get(k) for e in epochs}) > 1 for k in ("train/w_task", "train/w_kd") if k in epochs[0])


TASK, KD = ("box_loss", "cls_loss", "dfl_loss"), ("kd_feat", "kd_cls", "kd_box")


def weights_table(res_root: Path, names: list[str]) -> str:
    """Balance weights and per-image losses of the last epoch of each run of ``names`` whose weights moved
    (:func:`moving_weights`; ``results.csv``): where the balance ended, the ratio it amounts to, and that ratio
    (epoch means) over the epochs. "" when no run's weights moved."""
    lines = ["| run | seed | w_task | w_kd | w_kd / w_task | per epoch | L_task | L_kd | L_task / L_kd |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        runs = results_csv(res_root, n)
        if not any(moving_weights(e) for e in runs.values()):
            continue
        for seed, epochs in runs.items():
            last = epochs[-1]
            w_t, w_k = last["train/w_task"], last["train/w_kd"]
            ratios = [e["train/w_kd"] / e["train/w_task"] for e in epochs]
            trend = " / ".join(f"{r:.2f}" for r in ratios) + f" (mean {statistics.mean(ratios):.2f})"
            l_t, l_k = (sum(last[f"train/{k}"] for k in keys) for keys in (TASK, KD))
            lines.append(f"| {n} | {seed} | {w_t:.3f} | {w_k:.3f} | {w_k / w_t:.2f} | {trend} | "
                         f"{l_t:.2f} | {l_k:.3f} | {l_t / l_k:.2f} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""
