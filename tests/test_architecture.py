"""docs/architecture.md describes the code as it is: every module and name its tables list exists, and every public
module of the package is listed."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
ROW = re.compile(r"^\| `([^`]+)` \|(.*)$")


def _rows() -> list[tuple[str, list[str], str]]:
    """``(path, names, rest of the row)`` for every table row whose first cell is a backticked path."""
    rows = []
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            cells = m.group(2).split("|")
            names = re.findall(r"`([^`]+)`", cells[0]) if len(cells) > 2 else []
            rows.append((m.group(1), names, m.group(2)))
    return rows


def _resolve(module, dotted: str):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_listed_module_and_name_exists():
    missing = []
    for path, names, _ in _rows():
        if not (ROOT / path).exists():
            missing.append(path)
            continue
        if not path.startswith("gor_det/") or not path.endswith(".py"):
            continue
        module = importlib.import_module(path[:-3].replace("/", "."))
        for name in names:
            try:
                _resolve(module, name)
            except AttributeError:
                missing.append(f"{path}: {name}")
    assert not missing, f"docs/architecture.md names what the code does not have: {missing}"


def test_every_public_module_is_listed():
    listed = {path for path, _, _ in _rows()}
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "gor_det").rglob("*.py")
                     if not p.name.startswith("_") or p.parts[-2] == "commands" and p.name == "__init__.py")
    unlisted = [m for m in modules if m not in listed]
    assert not unlisted, f"docs/architecture.md does not describe these modules: {unlisted}"


def test_files_named_outside_the_package_exist():
    for path, _, rest in _rows():
        if path.startswith(("bench/", "research/")) and path.endswith("/"):
            for script in re.findall(r"`([\w]+\.py)`", rest):
                assert (ROOT / path / script).exists(), f"docs/architecture.md: {path}{script} does not exist"
