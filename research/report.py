#!/usr/bin/env python
"""Rewrite the generated blocks of research/REPORT.md and of the docs/ pages that show a table, from the committed
result files (no training).

    python research/report.py            # after research/reproduce.sh (or any subset of its rows)
    python research/report.py --check    # exit 1 naming the files that are out of date; writes nothing

What is written comes from the suite's ``report`` section (:mod:`research.suite`): for each table ``<id>``, the block
between ``<!-- table:<id> -->`` and ``<!-- /table:<id> -->`` in each of its ``docs`` (the rows tagged with it, with the
command, the machine and the dates the rows ran), and in research/REPORT.md the block ``compare:<id>`` (its compares,
as paired per-seed differences) and ``weights:<id>`` (where the balance of each of its rows with moving weights
ended). Everything outside the markers is left as it is. Rows that have not been run are left out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from research.suite import REPORT_DOC, Table, load_suite, report_of  # noqa: E402
from research.tables import (  # noqa: E402
    compare_table,
    cross_validated_fixed,
    resolved_checks,
    step_time_line,
    summary_table,
    table,
    weights_table,
)

SUITE = ROOT / "research/suites/synthetic.yaml"
MARKER = re.compile(r"<!-- (table|compare|weights):([\w.-]+) -->")


def results_of(suite: dict, res_root: Path) -> list[dict]:
    """Every committed ``result.json`` of the suite's rows (suite order, then seed order)."""
    rows = []
    for run in suite["runs"]:
        files = (res_root / run["name"]).glob("seed*/result.json")
        rows += [json.loads(f.read_text()) for f in sorted(files, key=lambda p: int(p.parent.name[4:]))]
    return rows


def footer(rows: list[dict], names: list[str], res_dir: str, cmd: str = "python research/report.py") -> str:
    """Where a table's numbers come from: the command, the machines and the days its rows ran."""
    mine = [r for r in rows if r["name"] in names]
    machines = sorted({r.get("machine", "unknown machine") for r in mine})
    days = sorted({r["date"] for r in mine})
    return (f"\nRows: `sh research/reproduce.sh` (result files under {res_dir}/); this table: "
            f"`{cmd}`  \nMachine: {'; '.join(machines)}  \nDate: rows run on {', '.join(days)}")


def table_block(t: Table, rows: list[dict], suite: dict, res_dir: str, cmd: str = "python research/report.py") -> str:
    if t.format == "summary":
        what = {r["name"]: r.get("what", "") for r in suite["runs"]}
        body = summary_table(rows, t.rows, t.ref, what)
    else:
        body = table(rows, t.rows, t.ref)
    return body + footer(rows, t.rows, res_dir, cmd)


def blocks(suite: dict, res_root: Path, cmd: str = "python research/report.py") -> dict[str, dict[str, str]]:
    """``{doc: {tag: body}}``: every generated block of every doc the suite's report writes."""
    tables, sweeps = report_of(suite)
    rows = results_of(suite, res_root)
    for sweep in sweeps.values():
        rows += cross_validated_fixed(rows, sweep)
    res_dir = res_root.resolve().relative_to(ROOT) if res_root.resolve().is_relative_to(ROOT) else res_root
    out: dict[str, dict[str, str]] = {REPORT_DOC: {}}
    for t in tables.values():
        for doc in t.docs:
            out.setdefault(doc, {})[f"table:{t.id}"] = table_block(t, rows, suite, str(res_dir), cmd)
        if REPORT_DOC not in t.docs:  # compares and weights go to the report, for the tables it shows
            continue
        checks = resolved_checks(rows, t.compare, sweeps)
        steps = "".join(step_time_line(rows, c.a, c.b, c.max_ratio) for c in t.compare if c.max_ratio is not None)
        if checks or steps:
            out[REPORT_DOC][f"compare:{t.id}"] = (compare_table(rows, checks) + steps + "\nFrom the rows of the table "
                                                  "above; this table: `python research/report.py`")
        weights = weights_table(res_root, t.rows)
        if weights:
            out[REPORT_DOC][f"weights:{t.id}"] = (
                weights + "\nLast epoch of each run's `results.csv` (train columns; `per epoch`: w_kd / w_task of "
                "each epoch's means, and their mean); this table: `python research/report.py`")
    return out


def replace_between(text: str, tag: str, body: str, doc: str) -> str:
    start, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    if start not in text or end not in text:
        raise SystemExit(f"error: {doc} lacks the block {start} ... {end}: add the two lines where it goes")
    a, b = text.index(start) + len(start), text.index(end)
    return text[:a] + "\n" + body + "\n" + text[b:]


def render(suite_path: Path = SUITE, res_root: Path | None = None, root: Path = ROOT) -> dict[str, str]:
    """``{doc: new text}`` of every doc the report writes (paths relative to ``root``). A doc holding a generated
    block's markers that the suite no longer makes is an error: its content would go stale."""
    suite = load_suite(suite_path)
    res_root = res_root or root / "research/results" / Path(suite_path).stem
    out = {}
    cmd = "python research/report.py" + ("" if Path(suite_path).resolve() == SUITE.resolve() else
                                         f" --suite research/suites/{Path(suite_path).name}")
    for doc, made in blocks(suite, res_root, cmd).items():
        if not made:  # (a suite whose tables write no report block leaves research/REPORT.md to the others)
            continue
        text = (root / doc).read_text()
        stale = {f"{k}:{v}" for k, v in MARKER.findall(text)} - set(made)
        if stale:
            raise SystemExit(f"error: {doc} holds the block(s) {', '.join(sorted(stale))}, which the suite's report "
                             "no longer makes: remove them or add the table to the suite")
        for tag, body in made.items():
            text = replace_between(text, tag, body, doc)
        out[doc] = text
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default=str(SUITE))
    ap.add_argument("--results", help="result files (default research/results/<suite name>)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    a = ap.parse_args()
    from gor_det.config import ConfigError

    try:
        texts = render(Path(a.suite), Path(a.results) if a.results else None)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    stale = [doc for doc, text in texts.items() if (ROOT / doc).read_text() != text]
    if a.check:
        if stale:
            sys.exit(f"out of date: {', '.join(stale)} (run python research/report.py)")
        print("up to date: " + ", ".join(texts))
        return
    for doc in stale:
        (ROOT / doc).write_text(texts[doc])
    print(f"rewritten: {', '.join(stale) or 'nothing (up to date)'}")


if __name__ == "__main__":
    main()
