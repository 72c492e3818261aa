#!/usr/bin/env python
"""Rewrite the benchmark tables in docs/ from the result.json files under bench/results/synthetic/ (no training).

    python bench/fill_docs.py            # after bench/reproduce.sh (or any subset of its rows)

Each table in DOCS is the block between ``<!-- results -->`` markers; it is replaced by :func:`run.table` over the
listed rows (every seed found), the command that regenerates it, the machine and the dates the rows were run. Rows
that have not been run are left out of the table. (Tables outside the markers, such as the earlier runs whose raw
results were not kept, are left alone.) In docs/gor.md it also rewrites the
block between ``<!-- gor-weights -->`` markers (the balance weights GoR and scheduled rows ended at), and in docs/quantization.md and
docs/gor.md the block between ``<!-- targets -->`` markers: the issues' accuracy targets as paired per-seed differences.
"""

from __future__ import annotations

import csv
import json
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from run import by_seed, load_suite, pairs, per_seed, table, targets_table  # noqa: E402  (bench/run.py)

OUT = ROOT / "bench/results/synthetic"  # committed: bench/run.py --results
SUITE = ROOT / "bench/suites/synthetic.yaml"  # the rows' definitions
REF = {"docs/quantization.md": "fp_v8n_ft", "docs/gor.md": "fp_v8n_ft"}  # paired-difference column against this row
DOCS = {
    "docs/synthetic-benchmark.md": ["teacher_v8s", "teacher_v11s", "fp_v8n"],
    "docs/quantization.md": ["fp_v8n", "fp_v8n_ft", "ptq_w8a8", "qat_w8a8", "ul_quantize8", "qat_w4a8", "ptq_w4a4",
                             "qat_w4a4"],
    "docs/gor.md": ["teacher_v8s", "teacher_v11s", "fp_v8n_ft", "qat_w8a8", "kd_fixed0.2_w8a8", "kd_fixed0.5_w8a8",
                    "kd_fixed1_w8a8", "kd_fixed2_w8a8", "kd_fixed8_w8a8", "kd_gor_w8a8", "kd_gorgrad_w8a8",
                    "kd_gorlook_w8a8", "kd_gorlooksplit_w8a8", "kd_gorgradslow_w8a8", "ekd_gorgrad_w8a8",
                    "ekd_gorgrad_mt_w8a8", "ekd_gorgrad_mtw_w8a8", "ekd_gorgrad_mtw_v8sfeat_w8a8",
                    "ekd_gorgrad_gtw_w8a8",
                    "ekd_fixed0.5_mtw_w8a8", "ul_distill_q8", "ul_distill_fp", "kd_gorgrad_fp", "qat_w4a4",
                    "kd_fixed0.5_w4a4", "kd_fixed1_w4a4", "kd_fixed2_w4a4", "kd_gorgrad_w4a4", "kd_fixedgor_w4a4",
                    "kd_gorgradslow_w4a4", "ekd_gorgrad_mtw_w4a4", "ekd_gorgradslow_mtw_v8sfeat_w8a8",
                    "ekd_gorgradslow_mtw_v8sfeat_w4a4", "kd_gorlooksplit_w4a4", "kd_fixed0.2_w4a4", "kd_fixedgor_w8a8",
                    "kd_gorlook_w4a4", "ekd_gorlook_mtw_v8sfeat_w8a8", "kd_fixed1to0.2_w8a8", "qat_w4a4_e8",
                    "kd_fixed0.2_w4a4_e8", "kd_fixed0.5_w4a4_e8", "kd_fixed1_w4a4_e8", "kd_gorlook_w4a4_e8"],
}


def rows_of(names: list[str]) -> tuple[list[dict], list[str]]:
    rows, days = [], set()
    for n in names:
        for f in sorted((OUT / n).glob("seed*/result.json")):
            rows.append(json.loads(f.read_text()))
            days.add(rows[-1]["date"])
    return rows, sorted(days)


def block(names: list[str], ref: str | None) -> str:
    rows, days = rows_of(names)
    import torch
    import ultralytics

    seeds = sorted({r.get("seed", 0) for r in rows})
    cmd = ("python bench/run.py --suite bench/suites/synthetic.yaml --table-only --seeds " + " ".join(map(str, seeds))
           + (f" --ref {ref}" if ref else "") + " --only " + " ".join(names))
    return (table(rows, names, ref) + "\nRows made by `sh bench/reproduce.sh`; this table: `python bench/fill_docs.py` "
            f"(= `{cmd}`)  \nMachine: {platform.machine()}, 2-core VM, torch {torch.__version__}, ultralytics "
            f"{ultralytics.__version__}  \nDate: rows run on {', '.join(days)}")


GOR_W8A8, GOR_W4A4 = "kd_gorlook_w8a8", "kd_gorlook_w4a4"  # GoR as it ships: gor_lookahead (next), scalar lr 0.01
EKD_W8A8 = "ekd_gorlook_mtw_v8sfeat_w8a8"  # EKD-GoR as recommended: the same balance, 3:1 head targets, v8s features
GRAD_W8A8, GRAD_W4A4 = "kd_gorgradslow_w8a8", "kd_gorgradslow_w4a4"  # gor_grad at lr 0.001: the default until 2026-11-30
FIXED_W8A8 = ["kd_fixed0.2_w8a8", "kd_fixed0.5_w8a8", "kd_fixed1_w8a8", "kd_fixed2_w8a8",
              "kd_fixed8_w8a8"]  # the fixed-weight sweep
FIXED_W4A4 = ["kd_fixed0.2_w4a4", "kd_fixed0.5_w4a4", "kd_fixed1_w4a4", "kd_fixed2_w4a4"]  # the W4A4 sweep
GOR_W4A4_E8 = "kd_gorlook_w4a4_e8"  # W4A4 with 8 fine-tuning epochs instead of 4: GoR as it ships, and its sweep
FIXED_W4A4_E8 = ["kd_fixed0.2_w4a4_e8", "kd_fixed0.5_w4a4_e8", "kd_fixed1_w4a4_e8"]
# each fixed-weight sweep's leave-one-seed-out row (:func:`cross_validated_fixed`, computed here, never run): the GoR
# row it is compared with and the sweep's rows
SWEEPS = {"kd_fixed_cv_w8a8": (GOR_W8A8, FIXED_W8A8), "kd_fixed_cv_w4a4": (GOR_W4A4, FIXED_W4A4),
          "kd_fixed_cv_w4a4_e8": (GOR_W4A4_E8, FIXED_W4A4_E8)}
TARGET_DOCS = ("docs/quantization.md", "docs/gor.md")  # the docs with a targets block


def sweep_maps(rows: list[dict], ref: str = GOR_W8A8,
               fixed: list[str] = FIXED_W8A8) -> tuple[dict[str, dict[int, float]], set[int]]:
    """``{row: {seed: mAP}}`` of the sweep rows compared and the seeds they are compared on (the same seeds for
    each, so a pick is not decided by which seeds a row happens to have). Of the rows of ``fixed`` that ran, the
    subset whose common seeds (within those ``ref``, the GoR row they are compared with, ran; all if it ran none)
    hold the most results, rows x seeds, the more seeds on a tie: a weight run at fewer seeds (``kd_fixed8_w8a8``, two
    seeds) is left out rather than shrink every comparison to its seeds, and a seed only one weight ran besides GoR
    is left out rather than drop the other weights."""
    ran = {n: by_seed(rows, n) for n in fixed if by_seed(rows, n)}
    allowed = set(by_seed(rows, ref)) or {k for m in ran.values() for k in m}
    best, best_seeds = [], set()
    for mask in range(1, 2 ** len(ran)):  # at most a handful of weights: every subset
        names = [n for i, n in enumerate(ran) if mask >> i & 1]
        seeds = allowed.intersection(*(ran[n].keys() for n in names))
        if (len(names) * len(seeds), len(seeds)) > (len(best) * len(best_seeds), len(best_seeds)):
            best, best_seeds = names, seeds
    return {n: ran[n] for n in best}, best_seeds


def best_fixed(rows: list[dict], ref: str = GOR_W8A8, fixed: list[str] = FIXED_W8A8) -> str:
    """The row of the fixed-weight sweep (``fixed``; W8A8 by default) with the highest mean mAP over the seeds the
    whole sweep has run (:func:`sweep_maps`)."""
    m, seeds = sweep_maps(rows, ref, fixed)
    if not m:  # no row of the sweep has run yet: name its first row (the table then shows it as missing)
        return fixed[0]
    return max(m, key=lambda n: sum(m[n][s] for s in seeds))


def cross_validated_fixed(rows: list[dict], ref: str = GOR_W8A8, fixed: list[str] = FIXED_W8A8,
                          name: str = "kd_fixed_cv_w8a8") -> list[dict]:
    """Rows ``name``: at each seed, the mAP of the sweep weight (``fixed``, over the seeds ``ref`` ran) with the best
    mean over the *other* seeds (leave one seed out). It is what tuning the weight by a sweep on other runs gives on a
    new run; the best weight picked on the same seeds it is scored on (:func:`best_fixed`) also profits from that
    pick's luck (the maximum of several noisy means is biased upwards)."""
    m, seeds = sweep_maps(rows, ref, fixed)
    out = []
    for s in sorted(seeds):
        others = seeds - {s}
        if others:
            pick = max(m, key=lambda n: sum(m[n][t] for t in others))
            out.append({"name": name, "seed": s, "mAP50-95": m[pick][s], "pick": pick})
    return out


def each_fixed_vs(prefix: str, fixed: list[str], other: str) -> list[tuple[str, str, str, float]]:
    """One check per row of the sweep ``fixed``: "<prefix>KD at fixed w_kd W >= QAT without KD" against ``other``;
    W is read from the row name (``kd_fixed<W>_...``)."""
    return [(f"{prefix}KD at fixed w_kd {n[len('kd_fixed'):].split('_')[0]} >= QAT without KD", n, other, 0.0)
            for n in fixed]


def targets(doc: str, rows: list[dict]) -> list[tuple[str, str, str, float]]:
    """The issues' accuracy targets checked in ``doc``, and in docs/gor.md the comparisons its prose draws between
    balance forms and ensembles: (label, a, b, threshold) for ``a - b >= threshold``."""
    if doc == "docs/quantization.md":
        return [("QAT W8A8 within 0.5 of FP", "qat_w8a8", "fp_v8n_ft", -0.5),
                ("QAT W8A8 above PTQ", "qat_w8a8", "ptq_w8a8", 0.0),
                ("QAT W8A8 above Ultralytics quantize=8", "qat_w8a8", "ul_quantize8", 0.0)]
    best8, best4 = best_fixed(rows), best_fixed(rows, GOR_W4A4, FIXED_W4A4)
    best4_e8 = best_fixed(rows, GOR_W4A4_E8, FIXED_W4A4_E8)
    # GOR_*, EKD_*: GoR as it ships (gor_lookahead, transfer next, scalar lr auto = 0.01; the default since
    # 2026-11-30); GRAD_*: gor_grad at scalar lr 0.001 (the default before); kd_gorgrad_* and the other GoR rows: 0.01
    return [("GoR (default) >= the best fixed weight (picked on the same seeds)", GOR_W8A8, best8, 0.0),
            ("GoR (default) >= the fixed weight a sweep on the other seeds picks", GOR_W8A8,
             "kd_fixed_cv_w8a8", 0.0),
            ("W8A8 GoR (default) >= FP without KD", GOR_W8A8, "fp_v8n_ft", 0.0),
            ("W8A8 GoR (default) >= QAT without KD", GOR_W8A8, "qat_w8a8", 0.0),
            ("GoR (default) >= fixed w_kd 1", GOR_W8A8, "kd_fixed1_w8a8", 0.0),
            ("GoR (default) >= fixed w_kd 0.2", GOR_W8A8, "kd_fixed0.2_w8a8", 0.0),
            ("GoR (default) >= fixed w_kd 2", GOR_W8A8, "kd_fixed2_w8a8", 0.0),
            ("GoR (default) >= fixed w_kd 8", GOR_W8A8, "kd_fixed8_w8a8", 0.0),
            ("GoR (default) >= Ultralytics KD + 1 (W8A8)", GOR_W8A8, "ul_distill_q8", 1.0),
            ("EKD-GoR (default; 3:1 in the head terms, features from YOLOv8s) >= single-teacher GoR (default)",
             EKD_W8A8, GOR_W8A8, 0.0),
            ("EKD-GoR (default, as above) >= the same ensemble with gor_grad, scalar lr 0.001", EKD_W8A8,
             "ekd_gorgradslow_mtw_v8sfeat_w8a8", 0.0),
            ("EKD-GoR (default, as above) >= the best fixed weight with one teacher (same seeds)", EKD_W8A8, best8,
             0.0),
            ("GoR (default) >= gor_grad, scalar lr 0.001 (the default before)", GOR_W8A8, GRAD_W8A8, 0.0),
            ("W4A4: GoR (default) >= the best fixed weight (same seeds)", GOR_W4A4, best4, 0.0),
            ("W4A4: GoR (default) >= the fixed weight a sweep on the other seeds picks", GOR_W4A4,
             "kd_fixed_cv_w4a4", 0.0),
            ("W4A4: GoR (default) >= fixed w_kd 0.5", GOR_W4A4, "kd_fixed0.5_w4a4", 0.0),
            ("W4A4: GoR (default) >= QAT without KD", GOR_W4A4, "qat_w4a4", 0.0),
            ("W4A4: GoR (default) >= gor_grad, scalar lr 0.001", GOR_W4A4, GRAD_W4A4, 0.0),
            ("W4A4, 8 epochs: GoR (default) >= the best fixed weight (same seeds)", GOR_W4A4_E8, best4_e8, 0.0),
            ("W4A4, 8 epochs: GoR (default) >= the fixed weight a sweep on the other seeds picks", GOR_W4A4_E8,
             "kd_fixed_cv_w4a4_e8", 0.0),
            ("W4A4, 8 epochs: GoR (default) >= QAT without KD", GOR_W4A4_E8, "qat_w4a4_e8", 0.0),
            *each_fixed_vs("W4A4, 8 epochs: ", FIXED_W4A4_E8, "qat_w4a4_e8"),
            ("W4A4: QAT without KD, 8 epochs >= 4 epochs", "qat_w4a4_e8", "qat_w4a4", 0.0),
            ("W4A4: GoR (default), 8 epochs >= 4 epochs", GOR_W4A4_E8, GOR_W4A4, 0.0),
            ("W4A4: fixed w_kd 1 >= fixed w_kd 0.5 (does the W4A4 sweep separate its two best weights?)",
             "kd_fixed1_w4a4", "kd_fixed0.5_w4a4", 0.0),
            ("W8A8: fixed w_kd 0.5 >= fixed w_kd 1 (does the W8A8 sweep?)", "kd_fixed0.5_w8a8", "kd_fixed1_w8a8",
             0.0),
            ("gor_grad, scalar lr 0.001, >= the best fixed weight (same seeds)", GRAD_W8A8, best8, 0.0),
            ("gor_grad, scalar lr 0.001, >= the fixed weight a sweep on the other seeds picks", GRAD_W8A8,
             "kd_fixed_cv_w8a8", 0.0),
            ("W8A8 gor_grad, scalar lr 0.001, >= FP without KD", GRAD_W8A8, "fp_v8n_ft", 0.0),
            ("gor_grad, scalar lr 0.001, >= Ultralytics KD + 1 (W8A8)", GRAD_W8A8, "ul_distill_q8", 1.0),
            ("W8A8: gor_grad, scalar lr 0.001, >= fixed at the weights it settles at (do the learned weights' "
             "movements cost?)", GRAD_W8A8, "kd_fixedgor_w8a8", 0.0),
            ("W8A8: fixed at the weights gor_grad settles at >= fixed w_kd 0.5 (is gor_grad's shortfall where it "
             "settles?)", "kd_fixedgor_w8a8", "kd_fixed0.5_w8a8", 0.0),
            ("W8A8: fixed w_kd falling 1 -> 0.2 (exp; mean 0.50) >= fixed w_kd 0.5 (does a falling KD weight beat the "
             "best constant?)", "kd_fixed1to0.2_w8a8", "kd_fixed0.5_w8a8", 0.0),
            ("GoR (default) >= fixed w_kd falling 1 -> 0.2 (is GoR's gain its falling path?)", GOR_W8A8,
             "kd_fixed1to0.2_w8a8", 0.0),
            ("EKD-GoR with gor_grad, scalar lr 0.001 (3:1 in the head terms, features from YOLOv8s) >= "
             "single-teacher gor_grad, lr 0.001", "ekd_gorgradslow_mtw_v8sfeat_w8a8", GRAD_W8A8, 0.0),
            ("EKD-GoR with gor_grad (as above), scalar lr 0.001 >= lr 0.01", "ekd_gorgradslow_mtw_v8sfeat_w8a8",
             "ekd_gorgrad_mtw_v8sfeat_w8a8", 0.0),
            ("W4A4: gor_grad, scalar lr 0.001, >= the best fixed weight (same seeds)", GRAD_W4A4, best4, 0.0),
            ("W4A4: gor_grad, scalar lr 0.001, >= QAT without KD", GRAD_W4A4, "qat_w4a4", 0.0),
            ("W4A4: GoR lookahead, split-batch transfer, >= the best fixed weight (same seeds)",
             "kd_gorlooksplit_w4a4", best4, 0.0),
            ("W4A4: GoR lookahead, split-batch transfer, >= next-batch transfer (default)", "kd_gorlooksplit_w4a4",
             GOR_W4A4, 0.0),
            ("W4A4: GoR lookahead, split-batch transfer, >= gor_grad, scalar lr 0.001", "kd_gorlooksplit_w4a4",
             GRAD_W4A4, 0.0),
            ("W4A4: fixed w_kd 0.2 (where a held-out-transfer form would settle) >= fixed w_kd 0.5",
             "kd_fixed0.2_w4a4", "kd_fixed0.5_w4a4", 0.0),
            ("W4A4: fixed w_kd 0.2 >= gor_grad, scalar lr 0.001", "kd_fixed0.2_w4a4", GRAD_W4A4, 0.0),
            ("W4A4: EKD-GoR with gor_grad, scalar lr 0.001 (as above) >= single-teacher gor_grad, lr 0.001",
             "ekd_gorgradslow_mtw_v8sfeat_w4a4", GRAD_W4A4, 0.0),
            ("W4A4: EKD-GoR with gor_grad, scalar lr 0.001 (as above) >= the best fixed weight (same seeds)",
             "ekd_gorgradslow_mtw_v8sfeat_w4a4", best4, 0.0),
            ("W4A4: EKD-GoR with gor_grad, scalar lr 0.001 (as above) >= EKD-GoR 3:1, features from both, scalar "
             "lr 0.01", "ekd_gorgradslow_mtw_v8sfeat_w4a4", "ekd_gorgrad_mtw_w4a4", 0.0),
            ("GoR, scalar lr 0.01, >= the best fixed weight (same seeds)", "kd_gorgrad_w8a8", best8, 0.0),
            ("GoR (default) >= gor_grad, scalar lr 0.01", GOR_W8A8, "kd_gorgrad_w8a8", 0.0),
            ("GoR lookahead, split-batch transfer, >= the best fixed weight (same seeds)", "kd_gorlooksplit_w8a8",
             best8, 0.0),
            ("GoR lookahead, split-batch transfer, >= the cross-validated fixed weight", "kd_gorlooksplit_w8a8",
             "kd_fixed_cv_w8a8", 0.0),
            ("GoR lookahead, split-batch >= next-batch transfer (default)", "kd_gorlooksplit_w8a8", GOR_W8A8, 0.0),
            ("GoR lookahead, split-batch transfer, >= gor_grad, scalar lr 0.001", "kd_gorlooksplit_w8a8", GRAD_W8A8,
             0.0),
            ("GoR lookahead, split-batch transfer, >= gor_grad, scalar lr 0.01", "kd_gorlooksplit_w8a8",
             "kd_gorgrad_w8a8", 0.0),
            ("gor_grad, scalar lr 0.001 >= lr 0.01", GRAD_W8A8, "kd_gorgrad_w8a8", 0.0),
            ("GoR gradient-norm form >= loss-value form", "kd_gorgrad_w8a8", "kd_gor_w8a8", 0.0),
            ("W8A8 GoR, scalar lr 0.01, >= FP without KD", "kd_gorgrad_w8a8", "fp_v8n_ft", 0.0),
            ("EKD-GoR >= single-teacher GoR", "ekd_gorgrad_w8a8", "kd_gorgrad_w8a8", 0.0),
            ("EKD-GoR, averaged targets, >= single-teacher GoR", "ekd_gorgrad_mt_w8a8", "kd_gorgrad_w8a8", 0.0),
            ("EKD-GoR, averaged targets >= averaged losses", "ekd_gorgrad_mt_w8a8", "ekd_gorgrad_w8a8", 0.0),
            ("EKD-GoR, targets averaged 3:1, >= single-teacher GoR", "ekd_gorgrad_mtw_w8a8", "kd_gorgrad_w8a8", 0.0),
            ("EKD-GoR, targets averaged 3:1 >= averaged 1:1", "ekd_gorgrad_mtw_w8a8", "ekd_gorgrad_mt_w8a8", 0.0),
            ("EKD 3:1 at fixed w_kd 0.5 >= one teacher at fixed w_kd 0.5", "ekd_fixed0.5_mtw_w8a8", "kd_fixed0.5_w8a8",
             0.0),
            ("EKD 3:1 at fixed w_kd 0.5 >= EKD 3:1 with GoR", "ekd_fixed0.5_mtw_w8a8", "ekd_gorgrad_mtw_w8a8", 0.0),
            ("GoR, scalar lr 0.01, >= Ultralytics KD + 1 (FP)", "kd_gorgrad_fp", "ul_distill_fp", 1.0),
            ("GoR, scalar lr 0.01, >= Ultralytics KD + 1 (W8A8)", "kd_gorgrad_w8a8", "ul_distill_q8", 1.0),
            ("EKD-GoR, targets weighted per anchor by agreement with the labels, >= single-teacher GoR",
             "ekd_gorgrad_gtw_w8a8", "kd_gorgrad_w8a8", 0.0),
            ("EKD-GoR, per-anchor agreement shares >= fixed shares 3:1", "ekd_gorgrad_gtw_w8a8", "ekd_gorgrad_mtw_w8a8",
             0.0),
            ("EKD-GoR, 3:1 in the head terms, features from YOLOv8s only, >= single-teacher GoR",
             "ekd_gorgrad_mtw_v8sfeat_w8a8", "kd_gorgrad_w8a8", 0.0),
            ("EKD-GoR 3:1, features from YOLOv8s only >= from both teachers", "ekd_gorgrad_mtw_v8sfeat_w8a8",
             "ekd_gorgrad_mtw_w8a8", 0.0),
            ("W4A4: GoR, scalar lr 0.01, >= the best fixed weight (same seeds)", "kd_gorgrad_w4a4", best4, 0.0),
            *each_fixed_vs("W4A4: ", FIXED_W4A4, "qat_w4a4"),
            ("W4A4: GoR, scalar lr 0.01, >= QAT without KD", "kd_gorgrad_w4a4", "qat_w4a4", 0.0),
            ("W4A4: GoR, scalar lr 0.01, >= fixed at the weights it settles at", "kd_gorgrad_w4a4", "kd_fixedgor_w4a4",
             0.0),
            ("W4A4: gor_grad, scalar lr 0.001, >= fixed at the weights gor_grad (lr 0.01) settles at", GRAD_W4A4,
             "kd_fixedgor_w4a4", 0.0),
            ("W4A4: gor_grad with scalar lr 0.001 >= with lr 0.01", GRAD_W4A4, "kd_gorgrad_w4a4", 0.0),
            ("W4A4: EKD-GoR (3:1, features from both), scalar lr 0.01, >= single-teacher GoR", "ekd_gorgrad_mtw_w4a4",
             "kd_gorgrad_w4a4", 0.0),
            ("W4A4: EKD-GoR (3:1, features from both), scalar lr 0.01, >= single-teacher gor_grad, lr 0.001",
             "ekd_gorgrad_mtw_w4a4", GRAD_W4A4, 0.0)]


def step_time_ratio(rows: list[dict], a: str, b: str) -> list[float]:
    """Per-seed ratio of s/iteration ``a / b`` over the seeds both rows have (seed order); seeds where either row
    lacks a step time are left out."""
    return [x / y for x, y in pairs(rows, a, b, "s_per_it") if x and y]


def step_time_line(rows: list[dict], a: str, b: str, max_ratio: float) -> str:
    """One sentence: the target ``s/it(a) <= max_ratio * s/it(b)`` checked on the per-seed ratios."""
    r = step_time_ratio(rows, a, b)
    if not r:
        return ""
    m = statistics.mean(r)
    verdict = "met" if m <= max_ratio else "not met"
    return (f"\nStep time, target `{a}` within {max_ratio}x of `{b}` (s/iteration ratio per seed): "
            f"{per_seed(r, '.2f')}, mean {m:.2f}x: {verdict}.\n")


def distinct(checks: list[tuple[str, str, str, float]]) -> list[tuple[str, str, str, float]]:
    """``checks`` without the lines that compare the same rows at the same threshold as an earlier line (e.g. "GoR >=
    fixed w_kd 0.5" once the sweep's best weight, resolved by :func:`best_fixed`, is 0.5): the first label stays."""
    seen = set()
    return [c for c in checks if c[1:] not in seen and not seen.add(c[1:])]


def targets_block(doc: str) -> str:
    rows, _ = rows_of(DOCS[doc])
    for cv, (ref, fixed) in SWEEPS.items():
        rows += cross_validated_fixed(rows, ref, fixed, cv)
    steps = step_time_line(rows, "qat_w8a8", "fp_v8n_ft", 1.3) if doc == "docs/quantization.md" else ""
    return (targets_table(rows, distinct(targets(doc, rows))) + steps + "\nFrom the rows of the table above; this "
            "table: `python bench/fill_docs.py`")


def moving_balance(names: list[str], runs: list[dict]) -> list[str]:
    """The rows of ``names`` (in that order) whose suite entry (``runs``: the suite's resolved ``runs``) distils with
    weights that move over training: teachers set and ``gor.balance.method`` (default: BalanceCfg's) one of the GoR
    forms, or ``fixed`` with a schedule (``w_kd_end``)."""
    from gor_det.balance import GoRBalancer
    from gor_det.config import BalanceCfg

    gor = {r["name"]: (r.get("overrides") or {}).get("gor") or {} for r in runs}

    def moves(balance: dict) -> bool:
        return (balance.get("method", BalanceCfg().method) in GoRBalancer.FORMS
                or balance.get("w_kd_end") is not None)

    return [n for n in names if gor.get(n, {}).get("teachers") and moves(gor[n].get("balance", {}))]


TASK, KD = ("box_loss", "cls_loss", "dfl_loss"), ("kd_feat", "kd_cls", "kd_box")


def gor_weights_block() -> str:
    """Balance weights and per-image losses of the last epoch of every GoR row and scheduled fixed row
    (``results.csv``): where the balance ended, the ratio it amounts to, and that ratio (epoch means) over the
    epochs."""
    lines = ["| run | seed | w_task | w_kd | w_kd / w_task | per epoch | L_task | L_kd | L_task / L_kd |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in moving_balance(DOCS["docs/gor.md"], load_suite(SUITE)["runs"]):
        for f in sorted((OUT / n).glob("seed*/results.csv")):
            with open(f) as fh:
                epochs = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
            last = epochs[-1]
            w_t, w_k = last["train/w_task"], last["train/w_kd"]
            ratios = [e["train/w_kd"] / e["train/w_task"] for e in epochs]
            trend = " / ".join(f"{r:.2f}" for r in ratios) + f" (mean {statistics.mean(ratios):.2f})"
            l_t, l_k = (sum(last[f"train/{k}"] for k in keys) for keys in (TASK, KD))
            lines.append(f"| {n} | {f.parent.name[4:]} | {w_t:.3f} | {w_k:.3f} | {w_k / w_t:.2f} | {trend} | "
                         f"{l_t:.2f} | {l_k:.3f} | {l_t / l_k:.2f} |")
    return "\n".join(lines) + ("\n\nLast epoch of each run's `results.csv` (train columns; `per epoch`: w_kd / w_task "
                               "of each epoch's means, and their mean); this table: `python bench/fill_docs.py`")


def replace_between(text: str, tag: str, body: str) -> str:
    start, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    a, b = text.index(start) + len(start), text.index(end)
    return text[:a] + "\n" + body + "\n" + text[b:]


def main():
    gor = ROOT / "docs/gor.md"
    gor.write_text(replace_between(gor.read_text(), "gor-weights", gor_weights_block()))
    for doc in TARGET_DOCS:
        p = ROOT / doc
        p.write_text(replace_between(p.read_text(), "targets", targets_block(doc)))
    for doc, names in DOCS.items():
        p = ROOT / doc
        p.write_text(replace_between(p.read_text(), "results", block(names, REF.get(doc))))
        print(f"{doc}: table of {len(names)} runs rewritten")


if __name__ == "__main__":
    main()
