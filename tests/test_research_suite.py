"""Tests of the suite format (research/suite.py): bases, per-row seeds, the report section, and the committed suite
against its committed results."""

import json
import re
from pathlib import Path

import pytest

from research.suite import load_suite, merged, report_of, resolve_bases, run_seeds

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "research/suites/synthetic.yaml"
RESULTS = ROOT / "research/results/synthetic"


def test_merged_merges_mappings_and_replaces_the_rest():
    base = {"epochs": 4, "gor": {"quant": {"w_bits": 8, "a_bits": 8}, "teachers": ["a.pt", "b.pt"]}}
    over = {"epochs": 8, "gor": {"quant": {"w_bits": 4}, "teachers": ["c.pt"]}}
    assert merged(base, over) == {"epochs": 8, "gor": {"quant": {"w_bits": 4, "a_bits": 8}, "teachers": ["c.pt"]}}
    assert base["gor"]["quant"] == {"w_bits": 8, "a_bits": 8}  # the base row is not changed


def test_resolve_bases_through_a_chain_in_any_order():
    runs = [{"name": "e8", "base": "w4", "overrides": {"epochs": 8}},  # its base is defined further down
            {"name": "w8", "cfg": "ft.yaml", "seeds": [0], "tables": ["t"], "sweep": "s", "what": "W8",
             "overrides": {"model": "m.pt", "gor": {"quant": {"w_bits": 8}}}},
            {"name": "w4", "base": "w8", "overrides": {"gor": {"quant": {"w_bits": 4}}}}]
    e8, w8, w4 = resolve_bases(runs)
    assert w8 == runs[1]
    # what a row says about itself (its seeds, tables, sweep, what) is not inherited
    assert w4 == {"name": "w4", "cfg": "ft.yaml", "overrides": {"model": "m.pt", "gor": {"quant": {"w_bits": 4}}}}
    assert e8 == {**w4, "name": "e8", "overrides": {**w4["overrides"], "epochs": 8}}


def test_a_row_runs_at_its_own_seeds():
    suite = {"seeds": [0, 1]}
    assert run_seeds({"name": "a", "seeds": [0, 1, 2, 3]}, suite) == [0, 1, 2, 3]
    assert run_seeds({"name": "b"}, suite) == [0, 1]  # the suite's
    assert run_seeds({"name": "a", "seeds": [0, 1, 2, 3]}, suite, [1, 3, 5]) == [1, 3]  # --seeds keeps those given


@pytest.mark.parametrize("runs, message", [
    ([{"name": "a", "cfg": "x.yaml"}, {"name": "b", "base": "qat_w8"}], "base 'qat_w8' is not a row"),
    ([{"name": "qat_w8a8"}, {"name": "b", "base": "qat_w8"}], "(did you mean 'qat_w8a8'?)"),
    ([{"name": "a", "base": "b"}, {"name": "b", "base": "a"}], "cycle of bases: a -> b -> a"),
    ([{"name": "a", "base": "a"}], "cycle of bases: a -> a"),
    ([{"name": "a"}, {"name": "a"}], "repeated: a"),
])
def test_resolve_bases_rejects_bad_suites(runs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_bases(runs)


def test_load_suite_names_the_file_of_a_bad_base(tmp_path):
    from gor_det.config import ConfigError

    f = tmp_path / "s.yaml"
    f.write_text("data: {preset: tiny}\nruns:\n  - {name: a, cfg: x.yaml}\n  - {name: b, base: c}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{f}: suite row 'b': base 'c' is not a row")):
        load_suite(f)


def _suite(**report):
    runs = [{"name": "fp", "tables": ["t"]}, {"name": "qat_w8a8", "tables": ["t"]},
            {"name": "kd_fixed0.5", "tables": ["t"], "sweep": "w8"}, {"name": "kd_gor", "tables": ["t"]}]
    return {"runs": runs, "report": {"sweeps": {"w8": {"gor": "kd_gor", "cv": "kd_cv"}},
                                     "tables": {"t": {"ref": "fp", **report}}}}


def test_report_rows_come_from_the_rows_tags():
    tables, sweeps = report_of(_suite(compare=[{"label": "GoR >= best", "a": "kd_gor", "b": "best:w8", "min": 0},
                                               {"a": "kd_gor", "b": "kd_cv", "min": 0},
                                               {"a": "qat_w8a8", "b": "fp", "max_ratio": 1.3}]))
    t = tables["t"]
    assert t.rows == ["fp", "qat_w8a8", "kd_fixed0.5", "kd_gor"] and t.docs == ["research/REPORT.md"]
    assert sweeps["w8"].rows == ["kd_fixed0.5"]
    assert [(c.label, c.a, c.b, c.min, c.max_ratio) for c in t.compare] == [
        ("GoR >= best", "kd_gor", "best:w8", 0, None), ("kd_gor >= kd_cv", "kd_gor", "kd_cv", 0, None),
        ("qat_w8a8 >= fp", "qat_w8a8", "fp", None, 1.3)]


@pytest.mark.parametrize("report, message", [
    ({"compare": [{"a": "qat_w8a", "b": "fp", "min": 0}]}, "compare[0].a: 'qat_w8a' is not a row of table t, a "
                                                           "sweep's cv row or best:<sweep> (did you mean 'qat_w8a8'?)"),
    ({"compare": [{"a": "kd_gor", "b": "best:w4", "min": 0}]}, "compare[0].b: 'best:w4'"),
    ({"compare": [{"a": "kd_gor", "b": "fp"}]}, "give exactly one of min"),
    ({"compare": [{"a": "kd_gor", "b": "fp", "min": 0, "max_ratio": 1}]}, "give exactly one of min"),
    ({"ref": "fp_ft"}, "report.tables.t.ref: 'fp_ft' is not a row of table t"),
    ({"format": "wide"}, "format='wide': one of full, summary"),
    ({"rows": ["fp"]}, "unknown key 'rows'"),
])
def test_report_of_names_the_wrong_entry(report, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        report_of(_suite(**report))


def test_a_rows_unknown_table_or_sweep_is_named():
    s = _suite()
    s["runs"][1]["tables"] = ["tt"]
    with pytest.raises(ValueError, match=re.escape("suite row 'qat_w8a8', tables: 'tt' is not a table of "
                                                   "report.tables (did you mean 't'?)")):
        report_of(s)
    s = _suite()
    s["runs"][2]["sweep"] = "w4"
    with pytest.raises(ValueError, match=re.escape("suite row 'kd_fixed0.5', sweep: 'w4' is not a sweep")):
        report_of(s)


def test_every_reported_row_has_committed_results_at_exactly_its_seeds():
    """The suite is the one place that names a row and its seeds: what research/reproduce.sh runs and what
    research/report.py tabulates are read off it. Its reported rows' seeds must be those of the committed results,
    and no committed result may belong to a row or seed the suite does not run."""
    suite = load_suite(SUITE)
    runs = {r["name"]: r for r in suite["runs"]}
    committed = {d.name: sorted(int(f.parent.name[4:]) for f in d.glob("seed*/result.json"))
                 for d in RESULTS.iterdir()}
    assert set(committed) <= set(runs), f"results of rows the suite lacks: {sorted(set(committed) - set(runs))}"
    for name, run in runs.items():
        if run.get("tables"):
            assert committed.get(name) == run_seeds(run, suite), f"{name}: committed seeds {committed.get(name)}"
        else:
            assert name not in committed, f"{name} has committed results but no table shows it"
    for name, seeds in committed.items():
        for s in seeds:
            row = json.loads((RESULTS / name / f"seed{s}" / "result.json").read_text())
            assert (row["name"], row["seed"]) == (name, s)


def test_every_rows_balance_parses_with_the_research_balancers():
    """Each row's gor.balance section (the product's `fixed` / `gor`, the research forms once research.balancers has
    registered them) is accepted by gor_det's config, so every committed row still runs."""
    pytest.importorskip("research.balancers", reason="research/balancers.py registers the research forms")
    from gor_det.config import parse_gor

    for run in load_suite(SUITE)["runs"]:
        balance = ((run.get("overrides") or {}).get("gor") or {}).get("balance")
        if balance is not None:
            parse_gor({"balance": balance})
