#!/usr/bin/env python
"""Benchmark harness: run the rows of a suite (research/suite.py) at their seeds; write a markdown table and JSON.

    python research/run.py --suite research/suites/synthetic.yaml --jobs 2 --reported -- gor.threads=1  # the report
    python research/run.py --suite research/suites/synthetic.yaml --seeds 0 1 --only fp_v8n qat_w8a8
    python research/run.py --suite research/suites/synthetic.yaml --only qat_w8a8 epochs=5  # extra overrides

Each row runs at its own ``seeds`` (else the suite's); ``--seeds`` keeps those of them given. A row whose
``result.json`` exists is not re-run, so an interrupted benchmark continues where it stopped.

Weights and training logs go to ``--out`` (default ``research/out/<suite>``, not tracked by git); each finished row's
``result.json`` (the numbers, the date and the machine) and its Ultralytics ``results.csv`` are also written to
``--results`` (default ``research/results/<suite>``), which is committed: research/REPORT.md and the tables in docs/
are regenerated from it (``python research/report.py``) on any checkout, without the weights.

Every row is scored the same way: pycocotools mAP on the val split of the best checkpoint (gor_det.eval), next to
Ultralytics' own val mAP from the trainer; wall time covers the whole run; s/it is the median interval between
consecutive training batches (forward, backward, optimizer step, EMA and data loading), epoch 1 excluded.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gor_det  # noqa: E402,F401
from gor_det.engine.evaluate import machine  # noqa: E402
from research.suite import fmt, load_suite, run_seeds  # noqa: E402
from research.tables import table  # noqa: E402


class IterTimer:
    """Median seconds between consecutive ``on_train_batch_start`` events, skipping the first epoch."""

    def __init__(self):
        self.t = []
        self.last = None
        self.epoch = -1

    def __call__(self, trainer):
        now = time.perf_counter()
        if trainer.epoch != self.epoch:
            self.epoch, self.last = trainer.epoch, None
        if self.last is not None and (trainer.epoch > 0 or trainer.epochs == 1):
            self.t.append(now - self.last)
        self.last = now

    @property
    def s_per_it(self):
        return statistics.median(self.t) if self.t else float("nan")


def train_row(run: dict, common: dict, extra: list[str], key: dict, out_dir: Path) -> dict:
    from ultralytics.utils import DEFAULT_CFG_DICT

    import research.balancers  # noqa: F401  (registers the research balancers the suite's rows use)
    from gor_det.config import load_run_cfg
    from gor_det.engine.run import absolute_project, check_inputs
    from gor_det.engine.trainer import make_trainer_class

    ov = {k: fmt(v, key) for k, v in {**common, **(run.get("overrides") or {})}.items()}
    ov.update(project=str(out_dir.parent.resolve()), name=out_dir.name, exist_ok=True, seed=key["seed"])
    cfg = load_run_cfg(run["cfg"], [*(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in ov.items()),
                                    *extra], DEFAULT_CFG_DICT.keys())
    check_inputs(cfg)
    absolute_project(cfg)
    if run.get("kind") == "ultralytics":
        from ultralytics.models.yolo.detect import DetectionTrainer as cls
    else:
        cls = make_trainer_class(cfg.gor)
    trainer = cls(overrides=dict(cfg.ultralytics))
    timer = IterTimer()
    trainer.add_callback("on_train_batch_start", timer)
    if run.get("kind") == "ultralytics":
        from gor_det.engine.callbacks import set_threads

        trainer.gor = cfg.gor  # same thread count as gor_det runs: a fair time comparison
        trainer.add_callback("on_train_start", set_threads)
    trainer.train()
    m = trainer.metrics or {}
    weights = Path(trainer.best if trainer.best.exists() else trainer.last).resolve()
    if weights.is_relative_to(Path.cwd()):  # result.json is committed: no machine-specific prefix
        weights = weights.relative_to(Path.cwd())
    return {"weights": str(weights), "s_per_it": timer.s_per_it,
            "ul_mAP50-95": float(m.get("metrics/mAP50-95(B)", float("nan"))),
            "ul_mAP50": float(m.get("metrics/mAP50(B)", float("nan"))),
            "imgsz": int(cfg.ultralytics.get("imgsz", 640)), "epochs": int(cfg.ultralytics.get("epochs", 0))}


def ptq_row(run: dict, common: dict, key: dict, out_dir: Path, data: Path) -> dict:
    from gor_det.config import parse_gor
    from gor_det.engine.evaluate import imgsz_of
    from gor_det.engine.ptq import ptq

    q = parse_gor({"quant": run.get("quant") or {}}).quant
    weights = fmt(run["weights"], key)
    imgsz = int(common.get("imgsz") or imgsz_of(weights))  # the source model's training size, not a default 640
    path = ptq(weights, data, q, imgsz, out_dir / "weights" / "best.pt")
    return {"weights": str(path), "s_per_it": float("nan"), "imgsz": imgsz, "epochs": 0}


def run_one(run, suite, extra, key, out_root: Path, res_root: Path, data: Path) -> dict:
    out_dir = out_root / run["name"] / f"seed{key['seed']}"
    res_dir = res_root / run["name"] / f"seed{key['seed']}"
    done = res_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    from gor_det.engine.evaluate import evaluate_artifact, write_json

    trained = out_dir / "train.json"  # training finished; only the evaluation is left (an interrupted eval)
    if trained.exists():
        row = json.loads(trained.read_text())
    else:
        t0 = time.time()
        common = {**suite.get("common", {}), "data": str(data)}
        if run.get("kind") == "ptq":
            row = ptq_row(run, common, key, out_dir, data)
        else:
            row = train_row(run, common, extra, key, out_dir)
        row["wall_s"] = time.time() - t0
        write_json(row, trained)
    m = evaluate_artifact(row["weights"], data, row["imgsz"], out_dir / "coco_eval")
    row.update({"name": run["name"], "seed": key["seed"], "mAP50-95": m["mAP50-95"], "mAP50": m["mAP50"],
                "date": date.today().isoformat(), "machine": machine()})
    if (out_dir / "results.csv").exists():  # the per-epoch log (losses, GoR weights), kept with the numbers
        res_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out_dir / "results.csv", res_dir / "results.csv")
    write_json(row, done)
    return row


def prerequisites(run: dict, seed: int, names: list[str], out_root: Path) -> set[tuple[str, int]]:
    """The ``(row, seed)`` whose outputs ``run`` reads at ``seed``: every ``{out}/<row>/seed<k>/`` in its strings
    (e.g. ``model: "{out}/fp_v8n/seed{seed}/weights/best.pt"`` -> ``("fp_v8n", seed)``)."""
    text = json.dumps(fmt(run, {"out": str(out_root), "seed": seed}))
    return {(n, int(k)) for n in names for k in re.findall(re.escape(f"{out_root}/{n}/seed") + r"(\d+)/", text)}


def schedule(pending: list, running: set, deps: dict, trained, started, n_jobs: int) -> list:
    """The jobs of ``pending`` (``(row, seed)``, in order) to start now: those whose prerequisites ``deps[job]`` are
    all ``trained``, while fewer than ``n_jobs`` run here (``running``) or elsewhere (a prerequisite that is
    ``started`` but not trained and not a job of this scheduler is being trained by another process: it takes a
    slot). Ready jobs that other pending jobs wait for start first (e.g. the next seed's FP student before the last
    fine-tuning rows of this seed), so a slot is not left idle later while everything waits for them. Raises
    ``RuntimeError`` naming the missing rows when nothing runs anywhere and jobs are still blocked."""
    mine = set(pending) | set(running)
    awaited = {d for job in pending for d in deps[job]}
    blocked = {d for d in awaited if not trained(d)}
    elsewhere = {d for d in blocked if started(d) and d not in mine}
    ready = [job for job in pending if not deps[job] & blocked]
    ready.sort(key=lambda job: job not in awaited)  # stable: otherwise in the given order
    if pending and not ready and not running and not elsewhere:  # nothing will ever unblock them
        missing = ", ".join(f"{n} seed {k}" for n, k in sorted(blocked - mine))
        raise RuntimeError(f"rows wait for {missing}, which nothing is training: add them to --only / --seeds")
    return ready[:max(n_jobs - len(running) - len(elsewhere), 0)]


def run_parallel(jobs: list[tuple[dict, int]], names: list[str], argv: list[str], out_root: Path, res_root: Path,
                 n_jobs: int) -> None:
    """Run ``(run, seed)`` jobs as ``n_jobs`` concurrent ``research/run.py --only <row> --seeds <k>`` processes (logs in
    ``<out>/logs/``), each started once the rows it reads have finished training (:func:`prerequisites`,
    :func:`schedule`)."""
    runs = {r["name"]: r for r, _ in jobs}
    pending = [(r["name"], k) for r, k in jobs if not (res_root / r["name"] / f"seed{k}" / "result.json").exists()]
    deps = {job: prerequisites(runs[job[0]], job[1], names, out_root) for job in pending}
    (out_root / "logs").mkdir(parents=True, exist_ok=True)
    running: dict = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))  # SystemExit: the finally below runs
    try:
        _run_queue(pending, running, deps, argv, out_root, n_jobs)
    finally:  # interrupted: stop the rows still training (else they go on unattended, and a re-run starts them again)
        for proc in running:
            proc.terminate()


def _run_queue(pending: list, running: dict, deps: dict, argv: list[str], out_root: Path, n_jobs: int) -> None:
    import subprocess

    while pending or running:
        for proc in [p for p in running if p.poll() is not None]:
            name, k = running.pop(proc)
            print(f"bench: {name} seed {k} {'done' if proc.returncode == 0 else f'FAILED ({proc.returncode})'}", flush=True)
        try:
            start = schedule(pending, set(running.values()), deps,
                             trained=lambda d: (out_root / d[0] / f"seed{d[1]}" / "train.json").exists(),
                             started=lambda d: (out_root / d[0] / f"seed{d[1]}").exists(), n_jobs=n_jobs)
        except RuntimeError as e:
            sys.exit(f"error: {e}")
        for name, k in start:
            pending.remove((name, k))
            log = out_root / "logs" / f"{name}_seed{k}.log"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--seeds", str(k), *argv]
            running[subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)] = (name, k)
            print(f"bench: {name} seed {k} started (log: {log})", flush=True)
        time.sleep(5)


def select(runs: list[dict], only: list[str] | None, reported: bool) -> set[str]:
    """The names of the rows to run: those in ``only`` (all when not given), with ``reported`` only those a table of
    the report shows (their ``tables``)."""
    return {r["name"] for r in runs if (not only or r["name"] in only) and (not reported or r.get("tables"))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True)
    ap.add_argument("--seeds", type=int, nargs="*", help="run only these of each row's seeds")
    ap.add_argument("--ref", help="add a column: paired per-seed difference to this run (e.g. fp_v8n_ft)")
    ap.add_argument("--only", nargs="*", help="run names to (re)run; others are read from their result.json if present")
    ap.add_argument("--reported", action="store_true", help="only the rows a table of the suite's report shows")
    ap.add_argument("--out", help="weights and logs (default research/out/<suite name>)")
    ap.add_argument("--results", help="result.json + results.csv per row, committed (default research/results/<suite name>)")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: tabulate the finished rows (those in --only, in that order; else all, in suite order)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="rows run at once, each in its own process, started when the rows it reads are trained")
    ap.add_argument("overrides", nargs="*", help="key=value applied to every training run")
    a = ap.parse_args()
    from gor_det.config import ConfigError

    try:
        suite = load_suite(a.suite)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    from gor_det.data.synthetic import make_synthetic

    d = suite["data"]
    data = make_synthetic(d.get("root", f"datasets/synth_{d['preset']}"), preset=d["preset"], seed=d.get("seed", 0))
    out_root = Path(a.out or Path("research/out") / Path(a.suite).stem)
    res_root = Path(a.results or Path("research/results") / Path(a.suite).stem)
    names = [r["name"] for r in suite["runs"]]
    selected = select(suite["runs"], a.only, a.reported)
    if a.jobs > 1 and not a.table_only:
        jobs = [(run, seed) for run in suite["runs"] if run["name"] in selected
                for seed in run_seeds(run, suite, a.seeds)]
        jobs.sort(key=lambda j: j[1])  # seed-major: the rows of one seed finish together (paired comparisons)
        argv = ["--suite", a.suite, "--out", str(out_root), "--results", str(res_root), "--", *a.overrides]
        run_parallel(jobs, names, argv, out_root, res_root, a.jobs)
        a.table_only = True  # tabulate what the workers wrote
    rows = []
    for run in suite["runs"]:
        for seed in run_seeds(run, suite, a.seeds):
            key = {"out": str(out_root), "seed": seed}
            done = res_root / run["name"] / f"seed{seed}" / "result.json"
            if a.table_only or run["name"] not in selected:
                if done.exists():
                    rows.append(json.loads(done.read_text()))
                continue
            print(f"\n=== bench: {run['name']} seed {seed} ===", flush=True)
            try:
                rows.append(run_one(run, suite, a.overrides, key, out_root, res_root, data))
            except ConfigError as e:  # a row's cfg: one line naming it, not a stack trace
                sys.exit(f"error: suite row {run['name']!r}: {e}")
    if a.table_only and a.only:  # the rows asked for, in the order asked
        names = [n for n in a.only if n in names]
    md = table(rows, names, a.ref)
    cmd = "python research/run.py " + " ".join(sys.argv[1:])
    meta = f"\nCommand: `{cmd}`  \nMachine: {machine()}  \nDate: {date.today()}\n"
    if not a.table_only:
        out_root.mkdir(parents=True, exist_ok=True)
        (out_root / "results.md").write_text(md + meta)
        (out_root / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n" + md + meta)


if __name__ == "__main__":
    main()
