"""research/report.py: research/REPORT.md and the docs/ tables are what the committed result files give."""

import json
import re
from pathlib import Path

import pytest

from research import report

ROOT = Path(__file__).resolve().parents[1]


def test_committed_report_and_docs_tables_regenerate_from_the_results():
    """Rebuilt from research/results/ and the suite, every generated block of research/REPORT.md, docs/gor.md and
    docs/quantization.md is what is committed: a changed result file, suite row or table code shows here."""
    pytest.importorskip("scipy", reason="the report's intervals need scipy (pip install -e .[bench])")
    texts = report.render()
    assert set(texts) == {"research/REPORT.md", "docs/gor.md", "docs/quantization.md"}
    for doc, text in texts.items():
        assert text == (ROOT / doc).read_text(), f"{doc} is out of date: run python research/report.py"


def _tree(tmp_path, doc_text: str) -> Path:
    """A repository with one suite (two rows, seeds 0-1), their results and ``research/REPORT.md`` = ``doc_text``."""
    (tmp_path / "research/suites").mkdir(parents=True)
    (tmp_path / "research/suites/s.yaml").write_text(
        "data: {preset: tiny}\nseeds: [0, 1]\nruns:\n  - {name: fp, cfg: x.yaml, tables: [t]}\n"
        "  - {name: qat, cfg: x.yaml, tables: [t]}\n"
        "report:\n  tables:\n    t: {title: T, ref: fp}\n")
    for name, base in (("fp", 0.30), ("qat", 0.31)):
        for seed in (0, 1):
            d = tmp_path / f"research/results/s/{name}/seed{seed}"
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps({"name": name, "seed": seed, "mAP50-95": base + seed / 100,
                                                       "date": f"2026-0{seed + 1}-01", "machine": "m"}))
    (tmp_path / "research/REPORT.md").write_text(doc_text)
    return tmp_path / "research/suites/s.yaml"


def test_only_the_marked_blocks_are_rewritten(tmp_path):
    suite = _tree(tmp_path, "# R\nkept\n<!-- table:t -->\nold\n<!-- /table:t -->\nkept too\n")
    text = report.render(suite, root=tmp_path)["research/REPORT.md"]
    assert text.startswith("# R\nkept\n<!-- table:t -->\n| run | seeds |") and text.endswith("<!-- /table:t -->\nkept too\n")
    assert "| qat | 2 | 0.315 ± 0.0071 | 0.3100 / 0.3200 | +1.00 / +1.00 (mean +1.00) |" in text
    assert "Machine: m  \nDate: rows run on 2026-01-01, 2026-02-01" in text  # from the rows, not from this machine


def test_a_missing_or_stale_block_is_an_error_naming_it(tmp_path):
    suite = _tree(tmp_path, "# R\n")
    with pytest.raises(SystemExit, match=re.escape("research/REPORT.md lacks the block <!-- table:t --> ... "
                                                   "<!-- /table:t -->: add the two lines where it goes")):
        report.render(suite, root=tmp_path)
    suite = _tree(tmp_path / "b", "<!-- table:t -->\n<!-- /table:t -->\n<!-- table:gone -->\n<!-- /table:gone -->\n")
    with pytest.raises(SystemExit, match="holds the block.s. table:gone, which the suite's report no longer makes"):
        report.render(suite, root=tmp_path / "b")


def test_placement_suite_table_regenerates_from_its_results():
    """research/suites/placement.yaml writes only its table in docs/evaluation.md (the synthetic suite's
    research/REPORT.md is left alone), rebuilt from research/results/placement/ exactly as committed."""
    pytest.importorskip("scipy", reason="the report's intervals need scipy (pip install -e .[bench])")
    texts = report.render(ROOT / "research/suites/placement.yaml")
    assert set(texts) == {"docs/evaluation.md"}
    assert texts["docs/evaluation.md"] == (ROOT / "docs/evaluation.md").read_text(), \
        "docs/evaluation.md is out of date: run python research/report.py --suite research/suites/placement.yaml"
