"""The README's layout table cannot drift from the tree.

Checked (:func:`layout_problems`): every module of ``exfiqa/`` (``__init__``/``__main__`` aside, sub-
packages included, each sub-package also as ``exfiqa/<name>/``) has a row; every path the table
names exists; every top-level folder that git does not ignore, and the files a contributor
needs (Makefile, environment.yml, CONTRIBUTING.md, ...), are in it; the core rows come in the
order data flows (readers -> models -> extraction -> Study -> metrics -> outputs -> runners) and
the demo wing and ``train`` come after the core. The package docstring lists the modules in the
table's order. The checks are exercised on mutated copies of the table and on a fake tree, so a
missing or extra module is known to fail them.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Layout"
#: Top-level files the table must name (folders not ignored by git are required anyway).
TOP_FILES = ("Makefile", "environment.yml", "pyproject.toml", "requirements-ci.txt", "CONTRIBUTING.md",
             "data/README.md", ".ci/run")
#: The data flow the core rows follow (each a module stem; the table may hold others between them).
FLOW = ("images", "datasets", "model", "fr", "extract", "arrays", "config", "pipeline", "metrics",
        "bootstrap", "fusion", "analysis", "plots", "tables", "paper", "cli")
#: Apart from the core: listed after every core row.
APART = ("demo", "train")


def layout_table(readme: str) -> str:
    """The markdown table of the README's Layout section."""
    assert SECTION + "\n" in readme, f"README.md has no {SECTION!r} section"
    body = readme.split(SECTION + "\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    assert len(rows) > 2, "the Layout section has no table"
    return "\n".join(rows)


def table_rows(table: str) -> list[list[str]]:
    """The backticked paths of each row's first cell (header and rule skipped)."""
    rows = []
    for line in table.splitlines()[2:]:
        first = line.strip().strip("|").split("|", 1)[0]
        rows.append(re.findall(r"`([^`]+)`", first))
    return rows


def package_modules(root: Path) -> list[str]:
    """``exfiqa/x.py`` for every module and ``exfiqa/sub/`` for every sub-package, sorted."""
    pkg = root / "exfiqa"
    out = [p.relative_to(root).as_posix() for p in pkg.rglob("*.py")
           if p.name not in ("__init__.py", "__main__.py") and "__pycache__" not in p.parts]
    out += [f"{p.parent.relative_to(root).as_posix()}/" for p in pkg.rglob("__init__.py") if p.parent != pkg]
    return sorted(out)


def _ignored(root: Path) -> list[str]:
    gitignore = root / ".gitignore"
    lines = gitignore.read_text().splitlines() if gitignore.is_file() else []
    return [ln.strip().strip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def top_folders(root: Path) -> list[str]:
    """Top-level folders a checkout has: not hidden (``.ci`` aside), not ignored by ``.gitignore``."""
    ignored = _ignored(root)
    return sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and (not p.name.startswith(".") or p.name == ".ci")
        and not any(fnmatch.fnmatch(p.name, pat) for pat in ignored)
    )


def _stem(path: str) -> str | None:
    """The top-level module name a table path stands for (``exfiqa/demo/world.py`` -> ``demo``)."""
    if not path.startswith("exfiqa/"):
        return None
    return Path(path.removeprefix("exfiqa/")).parts[0].removesuffix(".py")


def table_modules(table: str) -> list[str]:
    """Top-level module names of the table's ``exfiqa/`` paths, in row order, each once."""
    out: list[str] = []
    for row in table_rows(table):
        for path in row:
            stem = _stem(path)
            if stem is not None and stem not in out:
                out.append(stem)
    return out


def layout_problems(table: str, root: Path) -> list[str]:
    """What is wrong with ``table`` for the tree at ``root`` (empty: nothing)."""
    problems = []
    paths = [p for row in table_rows(table) for p in row]
    for p in paths:
        if not (root / p).exists():
            problems.append(f"{p}: in the table, not in the tree")
    named = set(paths)
    for m in package_modules(root):
        if m not in named:
            problems.append(f"{m}: in the tree, not in the table")
    for f in TOP_FILES:
        if f not in named:
            problems.append(f"{f}: not in the table")
    for d in top_folders(root):
        if not any(p == f"{d}/" or p.startswith(f"{d}/") for p in paths):
            problems.append(f"{d}/: a top-level folder not in the table")
    order = table_modules(table)
    flow = [m for m in order if m in FLOW]
    if flow != [m for m in FLOW if m in order]:
        problems.append(f"core rows out of data-flow order: {flow}, expected {[m for m in FLOW if m in order]}")
    core = [i for i, m in enumerate(order) if m not in APART]
    for m in APART:
        if m in order and core and order.index(m) < core[-1]:
            problems.append(f"{m}: listed among the core modules; it belongs after them")
    return problems


@pytest.fixture(scope="module")
def table() -> str:
    return layout_table((ROOT / "README.md").read_text())


def test_layout_table_matches_the_tree(table: str) -> None:
    assert layout_problems(table, ROOT) == []


def test_a_missing_or_extra_module_fails_the_check(table: str) -> None:
    assert "`exfiqa/evaluation/fusion.py`" in table and "`exfiqa/demo/world.py`" in table
    dropped = table.replace("`exfiqa/evaluation/fusion.py`", "fusion")
    assert layout_problems(dropped, ROOT) == ["exfiqa/evaluation/fusion.py: in the tree, not in the table"]
    dropped = table.replace("`exfiqa/demo/world.py`, ", "")
    assert layout_problems(dropped, ROOT) == ["exfiqa/demo/world.py: in the tree, not in the table"]
    head, rule, *rows = table.splitlines()
    extra = "\n".join([head, rule, "| `exfiqa/ghost.py` | a module that is not there |", *rows])
    assert layout_problems(extra, ROOT) == ["exfiqa/ghost.py: in the table, not in the tree"]
    no_contrib = "\n".join(ln for ln in table.splitlines() if "`CONTRIBUTING.md`" not in ln)
    assert layout_problems(no_contrib, ROOT) == ["CONTRIBUTING.md: not in the table"]
    no_tests = "\n".join(ln for ln in table.splitlines() if not ln.startswith("| `tests/`"))
    assert layout_problems(no_tests, ROOT) == ["tests/: a top-level folder not in the table"]


def test_the_order_check_catches_a_moved_row(table: str) -> None:
    lines = table.splitlines()
    metrics = next(i for i, ln in enumerate(lines) if ln.startswith("| `exfiqa/evaluation/metrics.py`"))
    moved = lines[:2] + [lines[metrics]] + [ln for i, ln in enumerate(lines[2:], 2) if i != metrics]
    assert any("data-flow order" in p for p in layout_problems("\n".join(moved), ROOT))
    train = next(i for i, ln in enumerate(lines) if ln.startswith("| `exfiqa/train/trainer.py`"))
    early = lines[:2] + [lines[train]] + [ln for i, ln in enumerate(lines[2:], 2) if i != train]
    assert layout_problems("\n".join(early), ROOT) == ["train: listed among the core modules; it belongs after them"]


def test_a_module_added_to_the_tree_fails_the_check(table: str, tmp_path: Path) -> None:
    """A fake tree holding every path of the table, then one module more (and a sub-package)."""
    for p in [p for row in table_rows(table) for p in row]:
        target = tmp_path / p
        if p.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("")
    for sub in {Path(p).parent for p in package_modules(ROOT) if p.count("/") > 1}:
        (tmp_path / sub / "__init__.py").write_text("")
    (tmp_path / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    assert layout_problems(table, tmp_path) == []
    (tmp_path / "exfiqa" / "newthing.py").write_text("")
    (tmp_path / "exfiqa" / "wing").mkdir()
    (tmp_path / "exfiqa" / "wing" / "__init__.py").write_text("")
    (tmp_path / "results").mkdir()  # git-ignored: not required
    (tmp_path / "scratch").mkdir()
    assert layout_problems(table, tmp_path) == [
        "exfiqa/newthing.py: in the tree, not in the table",
        "exfiqa/wing/: in the tree, not in the table",
        "scratch/: a top-level folder not in the table",
    ]


def test_package_docstring_lists_the_modules_in_table_order(table: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / "exfiqa" / "__init__.py").read_text())) or ""
    named = re.findall(r"``([a-z_]+)``", doc)  # module names (``Study``, ``make paper`` are not)
    assert named == table_modules(table), "exfiqa/__init__.py's docstring and the README's layout table disagree"
