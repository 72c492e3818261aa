"""Plots of a run's results.csv (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path


def read_results(csv_path: str | Path) -> dict[str, list[float]]:
    """Ultralytics results.csv -> {column: values} (header names stripped)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            try:
                cols.setdefault(k.strip(), []).append(float(v))
            except (TypeError, ValueError):
                pass
    return cols


def plot_gor_curves(csv_path: str | Path, out_png: str | Path) -> Path:
    """Two panels over epochs: the balance weights (w_task, w_kd) and the loss terms (det and each KD term)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = read_results(csv_path)
    ep = cols.get("epoch", list(range(1, len(next(iter(cols.values()))) + 1)))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for k in ("train/w_task", "train/w_kd"):
        if k in cols:
            a.plot(ep, cols[k], marker="o", label=k.split("/")[1])
    a.set_xlabel("epoch"), a.set_ylabel("weight"), a.set_title("GoR balance weights"), a.legend()
    det = [sum(v) for v in zip(*(cols[k] for k in ("train/box_loss", "train/cls_loss", "train/dfl_loss") if k in cols))]
    if det:
        b.plot(ep, det, marker="o", label="det (box+cls+dfl)")
    for k in ("train/kd_feat", "train/kd_cls", "train/kd_box"):
        if k in cols:
            b.plot(ep, cols[k], marker="o", label=k.split("/")[1])
    b.set_xlabel("epoch"), b.set_ylabel("loss per image"), b.set_yscale("log"), b.set_title("loss terms"), b.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)
