#!/usr/bin/env python
"""Benchmark harness: run a suite of cfgs on the synthetic bench preset with N seeds; write a markdown table and JSON.

    python bench/run.py --suite bench/suites/qat.yaml                 # all runs, the suite's seeds
    python bench/run.py --suite bench/suites/qat.yaml --seeds 0 1 --only fp_v8n qat_w8a8
    python bench/run.py --suite bench/suites/qat.yaml epochs=5        # extra Ultralytics/gor overrides for every run

A suite YAML holds ``data`` (synthetic preset, generated when missing), ``common`` (overrides for every training run),
``seeds``, and ``runs``: each with ``name`` and either ``cfg`` (+ ``overrides``) for a training run, ``kind: ptq``
(calibrate ``weights`` only) or ``kind: ultralytics`` (stock Ultralytics trainer with its own args, e.g. the built-in
``distill_model``). Strings may use ``{out}`` (the suite's output dir) and ``{seed}``. A run with ``base: <row>``
is that row with the run's own fields on top, nested mappings merged key by key (:func:`resolve_bases`), so a row
names only what it changes. A run whose ``result.json`` exists is not re-run, so an interrupted benchmark continues
where it stopped.

Weights and training logs go to ``--out`` (default ``bench/out/<suite>``, not tracked by git); each finished row's
``result.json`` (the numbers, the date and the machine) and its Ultralytics ``results.csv`` are also written to
``--results`` (default ``bench/results/<suite>``), which is committed: the tables in docs/ are regenerated from it
(``bench/fill_docs.py``) on any checkout, without the weights.

Every row is scored the same way: pycocotools mAP on the val split of the best checkpoint (gor_det.eval), next to
Ultralytics' own val mAP from the trainer; wall time covers the whole run; s/it is the median interval between
consecutive training batches (forward, backward, optimizer step, EMA and data loading), epoch 1 excluded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
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


def fmt(v, key):
    """Fill ``{out}`` / ``{seed}`` in strings, recursively through lists and dicts."""
    if isinstance(v, str):
        return v.format(**key)
    if isinstance(v, list):
        return [fmt(x, key) for x in v]
    if isinstance(v, dict):
        return {k: fmt(x, key) for k, x in v.items()}
    return v


def merged(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merged key by key, recursively; anything else (lists, scalars) replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_bases(runs: list[dict]) -> list[dict]:
    """The suite's ``runs`` with each ``base: <row>`` resolved: that row's fields (its own base resolved first; all
    but ``name``) :func:`merged` under the run's own. E.g. ``{name: kd_fixed0.5_w8a8, base: kd_fixed0.2_w8a8,
    overrides: {gor: {balance: {w_kd: 0.5}}}}`` keeps the base row's model, quantization and teacher. Raises
    ``ValueError`` on a repeated row name, an unknown base (naming the nearest rows) or a cycle of bases."""
    from gor_det.config import suggest

    names = [r["name"] for r in runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"suite rows must have distinct names; repeated: {', '.join(repeated)}")
    by_name, done = {r["name"]: r for r in runs}, {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict:
        if name not in done:
            run = by_name[name]
            if "base" in run:
                b = run["base"]
                if b not in by_name:
                    raise ValueError(f"suite row {name!r}: base {b!r} is not a row of the suite{suggest(b, names)}")
                if b in chain + (name,):
                    raise ValueError(f"suite rows form a cycle of bases: {' -> '.join(chain + (name, b))}")
                parent = {k: v for k, v in resolve(b, chain + (name,)).items() if k != "name"}
                run = merged(parent, {k: v for k, v in run.items() if k != "base"})
            done[name] = run
        return done[name]

    return [resolve(n, ()) for n in names]


def load_suite(path: str | Path) -> dict:
    """The suite YAML at ``path`` with its runs' bases resolved (:func:`resolve_bases`); ``ConfigError`` when the
    file is missing or invalid."""
    from gor_det.config import ConfigError, load_yaml

    suite = load_yaml(path)
    try:
        suite["runs"] = resolve_bases(suite.get("runs") or [])
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    return suite


def train_row(run: dict, common: dict, extra: list[str], key: dict, out_dir: Path) -> dict:
    from ultralytics.utils import DEFAULT_CFG_DICT

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


def machine() -> str:
    """``x86_64 AMD EPYC (AVX2 kernels), 2 CPU cores, torch 2.14.1+cu130, ultralytics 8.4.190``: where a row ran.
    The CPU and the vector ISA torch's kernels use are named because float results, hence trained weights, differ
    between them (stage 1 re-trained on an AVX2 VM on 2026-12-01 did not reproduce the committed models; rows from
    different machines do not pair)."""
    import torch
    import ultralytics

    return (f"{platform.machine()} {cpu_model()} ({torch.backends.cpu.get_cpu_capability()} kernels), "
            f"{os.cpu_count()} CPU cores, torch {torch.__version__}, ultralytics {ultralytics.__version__}")


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; elsewhere ``platform.processor()``), or ``unknown CPU``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def mean_std(xs):
    xs = [x for x in xs if x == x]  # drop NaN
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.4g}"
    return f"{statistics.mean(xs):.4g} ± {statistics.stdev(xs):.2g}"


def per_seed(xs: list[float], fmt: str) -> str:
    """``a / b / ...`` in seed order ("-" for a missing value)."""
    return " / ".join("-" if x != x else format(x, fmt) for x in xs)


def by_seed(rows: list[dict], name: str, key: str = "mAP50-95") -> dict[int, float]:
    """``{seed: row[key]}`` of run ``name`` (``None`` where a row lacks ``key``)."""
    return {r.get("seed", 0): r.get(key) for r in rows if r["name"] == name}


def pairs(rows: list[dict], a: str, b: str, key: str = "mAP50-95") -> list[tuple[float, float]]:
    """``(a[key], b[key])`` per seed, seed order, over the seeds both runs have."""
    xa, xb = by_seed(rows, a, key), by_seed(rows, b, key)
    return [(xa[s], xb[s]) for s in sorted(xa.keys() & xb.keys())]


def paired(rows: list[dict], a: str, b: str) -> list[float]:
    """Per-seed differences ``a - b`` in mAP50-95 points (x100), seed order, over the seeds both runs have: same seed
    = same FP starting point, so the pairing removes the seed-to-seed spread the two runs share."""
    return [100 * (x - y) for x, y in pairs(rows, a, b)]


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n); NaN for n < 2)."""
    m = statistics.mean(xs)
    return m, (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan"))


def _t_two_sided(x: float, df: int) -> float:
    """P(|T| < x) for Student's t with integer ``df`` >= 1: the closed-form finite series (Abramowitz & Stegun 26.7.3
    and 26.7.4, theta = atan(x / sqrt(df))). Stdlib only: scipy is not a dependency of the harness."""
    theta = math.atan(x / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:  # sin(theta) * (1 + c2/2 + 1*3 c2^2/(2*4) + ... up to c2^((df-2)/2))
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = math.cos(theta)  # (2/pi) * (theta + sin(theta) * (cos + 2/3 cos^3 + ... up to cos^(df-2)))
    total = term
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + s * total)


def t_quantile975(df: int) -> float:
    """t(0.975, df): the half-width factor of a two-sided 95% interval, by bisection on :func:`_t_two_sided`
    (to 1e-10; 12.706 at df 1, 4.303 at df 2, 2.447 at df 6)."""
    lo, hi = 0.0, 1000.0
    while hi - lo > 1e-10:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def interval95(mean: float, se: float, n: int) -> tuple[float, float]:
    """Two-sided 95% confidence interval of a mean of ``n`` paired differences: ``mean ± t(0.975, n-1) * se`` (Student
    t: with 2-7 seeds its quantile is 12.7-2.4, where the normal one, 1.96, would claim too much). NaN for n < 2."""
    if n < 2 or se != se:
        return float("nan"), float("nan")
    half = t_quantile975(n - 1) * se
    return mean - half, mean + half


def targets_table(rows: list[dict], targets: list[tuple[str, str, str, float]]) -> str:
    """Markdown table of target checks ``(label, a, b, threshold)``: target ``a - b >= threshold`` (points). Verdict
    on the mean of the paired per-seed differences; "(inside 1 s.e.)" flags a mean closer to the threshold than its
    standard error, i.e. a verdict the seeds run do not resolve. The 95% interval (:func:`interval95`) says how far
    either way the true difference may lie, given those seeds."""
    lines = ["| target | a - b >= | per seed (points) | mean ± s.e. | 95% interval | seeds meeting it "
             "| verdict on the mean |",
             "|---|---|---|---|---|---|---|"]
    for label, a, b, thr in targets:
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


def table(rows: list[dict], names: list[str], ref: str | None = None) -> str:
    """Markdown table, one line per run name: mean ± std over seeds, the per-seed mAP50-95 and s/iteration (seed
    order; s/iteration per seed because rows may have run under different conditions), and with ``ref`` the paired
    per-seed difference ``run - ref`` (:func:`paired`) and its mean, in mAP50-95 points (x100)."""
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
    """Run ``(run, seed)`` jobs as ``n_jobs`` concurrent ``bench/run.py --only <row> --seeds <k>`` processes (logs in
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True)
    ap.add_argument("--seeds", type=int, nargs="*")
    ap.add_argument("--ref", help="add a column: paired per-seed difference to this run (e.g. fp_v8n_ft)")
    ap.add_argument("--only", nargs="*", help="run names to (re)run; others are read from their result.json if present")
    ap.add_argument("--out", help="weights and logs (default bench/out/<suite name>)")
    ap.add_argument("--results", help="result.json + results.csv per row, committed (default bench/results/<suite name>)")
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
    out_root = Path(a.out or Path("bench/out") / Path(a.suite).stem)
    res_root = Path(a.results or Path("bench/results") / Path(a.suite).stem)
    seeds = a.seeds if a.seeds else suite.get("seeds", [0])
    names = [r["name"] for r in suite["runs"]]
    if a.jobs > 1 and not a.table_only:
        jobs = [(run, seed) for run in suite["runs"] if not a.only or run["name"] in a.only
                for seed in (run.get("seeds", seeds) if not a.seeds else [s for s in seeds if s in run.get("seeds", seeds)])]
        jobs.sort(key=lambda j: j[1])  # seed-major: the rows of one seed finish together (paired comparisons)
        argv = ["--suite", a.suite, "--out", str(out_root), "--results", str(res_root), "--", *a.overrides]
        run_parallel(jobs, names, argv, out_root, res_root, a.jobs)
        a.table_only = True  # tabulate what the workers wrote
    rows = []
    for run in suite["runs"]:
        run_seeds = run.get("seeds", seeds) if not a.seeds else [s for s in seeds if s in run.get("seeds", seeds)]
        for seed in run_seeds:
            key = {"out": str(out_root), "seed": seed}
            done = res_root / run["name"] / f"seed{seed}" / "result.json"
            if a.table_only or (a.only and run["name"] not in a.only):
                if done.exists():
                    rows.append(json.loads(done.read_text()))
                continue
            print(f"\n=== bench: {run['name']} seed {seed} ===", flush=True)
            rows.append(run_one(run, suite, a.overrides, key, out_root, res_root, data))
    if a.table_only and a.only:  # the rows asked for, in the order asked (bench/fill_docs.py's tables)
        names = [n for n in a.only if n in names]
    md = table(rows, names, a.ref)
    cmd = "python bench/run.py " + " ".join(sys.argv[1:])
    meta = f"\nCommand: `{cmd}`  \nMachine: {machine()}  \nDate: {date.today()}\n"
    if not a.table_only:
        out_root.mkdir(parents=True, exist_ok=True)
        (out_root / "results.md").write_text(md + meta)
        (out_root / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n" + md + meta)


if __name__ == "__main__":
    main()
