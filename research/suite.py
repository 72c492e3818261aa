"""A benchmark suite: its rows (what to run, at which seeds) and its report (which tables show them, what they compare).

A suite YAML holds ``data`` (a synthetic preset, generated when missing), ``common`` (overrides for every training
run), ``seeds`` (the default seeds of a row), ``runs`` and ``report``.

Each run is a row, named once, here: ``name`` and either ``cfg`` (+ ``overrides``) for a training run, ``kind: ptq``
(calibrate ``weights`` only) or ``kind: ultralytics`` (stock Ultralytics trainer with its own args). Strings may use
``{out}`` (the suite's output dir) and ``{seed}``. ``base: <row>`` makes the row that row with its own fields on top,
nested mappings merged key by key (:func:`resolve_bases`), so a row names only what it changes. What a row says about
itself is not inherited: ``seeds`` (the seeds it runs at; else the suite's), ``tables`` (the report tables that show
it), ``sweep`` (the fixed-weight sweep it belongs to) and ``what`` (a few words for summary tables).

``report`` declares, as data, what :mod:`research.report` writes::

    report:
      sweeps: {w8a8: {gor: kd_gorlook_w8a8, cv: kd_fixed_cv_w8a8}}   # rows tagged `sweep: w8a8` are its weights
      tables:
        quantization:
          title: Quantization
          ref: fp_v8n_ft                          # paired-difference column against this row
          docs: [research/REPORT.md, docs/quantization.md]   # where the table is written (default: the report)
          format: full                            # full (every column, per seed) | summary (one line of means)
          compare:                                # the checks below the table (research/REPORT.md)
            - {label: QAT W8A8 within 0.5 of FP, a: qat_w8a8, b: fp_v8n_ft, min: -0.5}     # a - b >= min (points)
            - {label: QAT step time, a: qat_w8a8, b: fp_v8n_ft, max_ratio: 1.3}            # s/it a / b <= max_ratio

A compare's ``a`` / ``b`` is a row of its table, a sweep's ``cv`` row (at each seed, the sweep weight a sweep on the
other seeds picks) or ``best:<sweep>`` (the sweep weight with the best mean, picked on the same seeds).
:func:`load_suite` checks every name against the rows and says which one is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPORT_DOC = "research/REPORT.md"
OWN_KEYS = ("name", "seeds", "tables", "sweep", "what")  # a row's own: never inherited through `base`
FORMATS = ("full", "summary")


@dataclass
class Compare:
    """One check: ``a - b >= min`` on the paired per-seed mAP50-95 differences (points), or, with ``max_ratio``,
    ``s/it(a) / s/it(b) <= max_ratio``."""

    label: str
    a: str
    b: str
    min: float | None = None
    max_ratio: float | None = None


@dataclass
class Table:
    id: str
    title: str
    rows: list[str]  # the suite's rows tagged with this table, in suite order
    ref: str | None = None
    docs: list[str] = field(default_factory=lambda: [REPORT_DOC])
    format: str = "full"
    compare: list[Compare] = field(default_factory=list)


@dataclass
class Sweep:
    id: str
    gor: str  # the learned-balance row the sweep is compared with (its seeds bound the sweep's)
    cv: str  # the name of the derived leave-one-seed-out row
    rows: list[str]  # the fixed-weight rows tagged `sweep: <id>`, in suite order


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
    but :data:`OWN_KEYS`) :func:`merged` under the run's own. E.g. ``{name: kd_fixed0.5_w8a8, base: kd_fixed0.2_w8a8,
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
                parent = {k: v for k, v in resolve(b, chain + (name,)).items() if k not in OWN_KEYS}
                run = merged(parent, {k: v for k, v in run.items() if k != "base"})
            done[name] = run
        return done[name]

    return [resolve(n, ()) for n in names]


def load_suite(path: str | Path) -> dict:
    """The suite YAML at ``path`` with its runs' bases resolved (:func:`resolve_bases`) and its report checked
    (:func:`report_of`); ``ConfigError`` naming the file when it is missing or invalid."""
    from gor_det.config import ConfigError, load_yaml

    suite = load_yaml(path)
    try:
        suite["runs"] = resolve_bases(suite.get("runs") or [])
        report_of(suite)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    return suite


def run_seeds(run: dict, suite: dict, only_seeds: list[int] | None = None) -> list[int]:
    """The seeds ``run`` runs at: its own ``seeds`` (else the suite's), within ``only_seeds`` when given."""
    seeds = run.get("seeds", suite.get("seeds", [0]))
    return [s for s in seeds if s in only_seeds] if only_seeds else list(seeds)


def report_of(suite: dict) -> tuple[dict[str, Table], dict[str, Sweep]]:
    """The suite's report section as :class:`Table` / :class:`Sweep` objects, every name in it checked: a row's
    ``tables`` / ``sweep`` must be declared, a table's ``ref`` and a compare's rows must be rows of that table (or a
    sweep's derived row). Raises ``ValueError`` naming the entry and the nearest valid name."""
    from gor_det.config import suggest

    runs = suite["runs"]
    rep = suite.get("report") or {}
    names = [r["name"] for r in runs]

    def check(name, valid, where, what):
        if name not in valid:
            raise ValueError(f"{where}: {name!r} is not {what}{suggest(name, valid)}")

    sweeps = {}
    for sid, s in (rep.get("sweeps") or {}).items():
        check(s.get("gor"), names, f"report.sweeps.{sid}.gor", "a row of the suite")
        if not s.get("cv"):
            raise ValueError(f"report.sweeps.{sid}: needs cv, the name of its leave-one-seed-out row")
        sweeps[sid] = Sweep(sid, s["gor"], s["cv"], [r["name"] for r in runs if r.get("sweep") == sid])
    tables = {}
    for tid, t in (rep.get("tables") or {}).items():
        unknown = set(t) - {"title", "ref", "docs", "format", "compare"}
        if unknown:
            raise ValueError(f"report.tables.{tid}: unknown key {sorted(unknown)[0]!r} (title, ref, docs, format, "
                             "compare)")
        rows = [r["name"] for r in runs if tid in (r.get("tables") or [])]
        if t.get("format", "full") not in FORMATS:
            raise ValueError(f"report.tables.{tid}.format={t['format']!r}: one of {', '.join(FORMATS)}")
        if t.get("ref") is not None:
            check(t["ref"], rows, f"report.tables.{tid}.ref", f"a row of table {tid}")
        table = Table(tid, t.get("title", tid), rows, t.get("ref"), list(t.get("docs", [REPORT_DOC])),
                      t.get("format", "full"))
        derived = {s.cv for s in sweeps.values()} | {f"best:{sid}" for sid in sweeps}
        for i, c in enumerate(t.get("compare") or []):
            where = f"report.tables.{tid}.compare[{i}]"
            if ("min" in c) == ("max_ratio" in c):
                raise ValueError(f"{where}: give exactly one of min (a - b >= min, points) or max_ratio (s/it)")
            for k in ("a", "b"):
                check(c.get(k), rows + sorted(derived), f"{where}.{k}",
                      f"a row of table {tid}, a sweep's cv row or best:<sweep>")
            table.compare.append(Compare(c.get("label", f"{c['a']} >= {c['b']}"), c["a"], c["b"], c.get("min"),
                                         c.get("max_ratio")))
        tables[tid] = table
    for r in runs:
        for tid in r.get("tables") or []:
            check(tid, list(tables), f"suite row {r['name']!r}, tables", "a table of report.tables")
        if "sweep" in r:
            check(r["sweep"], list(sweeps), f"suite row {r['name']!r}, sweep", "a sweep of report.sweeps")
    return tables, sweeps
