"""The README's layout table names every module of the tree, and nothing that is not there.

The layering itself is import-linter's (``make lint``, tests/test_layering.py); this only keeps the
table a reader starts from in step with ``ls``. A row's first cell names a folder or module
(`exfiqa/readers/`) and, after a colon, the modules in it (`images.py`, `fr/` (`iresnet.py`, ...)).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Layout"
#: Top-level files the table must name (folders git does not ignore are required anyway).
TOP_FILES = ("Makefile", "environment.yml", "pyproject.toml", "requirements-ci.txt", "CONTRIBUTING.md",
             "data/README.md", ".ci/run")


def table_paths(readme: str) -> set[str]:
    """Every path the Layout table's first column names: ``exfiqa/readers/bin.py`` for `bin.py` in
    the row of `exfiqa/readers/`, and `exfiqa/models/fr/onnx.py` for `fr/` (`onnx.py`)."""
    body = readme.split(SECTION + "\n", 1)[1].split("\n## ", 1)[0]
    out: set[str] = set()
    for line in body.splitlines():
        if not line.startswith("| `"):
            continue  # text around the table, its header and rule
        first = line.strip().strip("|").split(" | ", 1)[0]
        folders = [""]  # the folder a bare name is in; a nested folder opens with "(" after it
        last = ""
        for i, token in enumerate(re.findall(r"`[^`]+`|\(|\)", first)):
            if token == "(":
                folders.append(last if last.endswith("/") else folders[-1])
            elif token == ")":
                folders.pop()
            else:
                name = token.strip("`")
                last = name if i == 0 or "/" in name.rstrip("/") else folders[-1] + name
                if i == 0 and name.startswith("exfiqa/") and name.endswith("/"):
                    folders[0] = name
                out.add(last)
    return out


def tree_paths(root: Path) -> set[str]:
    """Every module and sub-package of ``exfiqa/`` (``__init__``/``__main__`` aside), each top-level
    folder git does not ignore, and the :data:`TOP_FILES`."""
    pkg = root / "exfiqa"
    out = {p.relative_to(root).as_posix() for p in pkg.rglob("*.py")
           if p.name not in ("__init__.py", "__main__.py") and "__pycache__" not in p.parts}
    out |= {f"{p.parent.relative_to(root).as_posix()}/" for p in pkg.rglob("__init__.py") if p.parent != pkg}
    folders = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    ignored = subprocess.run(["git", "check-ignore", *folders], cwd=root, capture_output=True, text=True).stdout.split()
    out |= {f"{f}/" for f in folders if f not in ignored and f != "exfiqa"}
    return out | set(TOP_FILES)


def problems(readme: str, root: Path) -> list[str]:
    named, present = table_paths(readme), tree_paths(root)
    named_modules = {p for p in named if p.startswith("exfiqa/")}
    missing = {p for p in present - named if not (p.endswith("/") and any(n.startswith(p) for n in named))}
    out = [f"{p}: in the tree, not in the table" for p in sorted(missing)]
    out += [f"{p}: in the table, not in the tree" for p in sorted(named_modules) if not (root / p).exists()]
    return out


def test_the_table_matches_the_tree() -> None:
    assert problems((ROOT / "README.md").read_text(), ROOT) == []


def test_a_missing_or_extra_module_is_reported() -> None:
    readme = (ROOT / "README.md").read_text()
    assert problems(readme.replace("`bin.py`, ", ""), ROOT) == ["exfiqa/readers/bin.py: in the tree, not in the table"]
    assert problems(readme.replace("`onnx.py`)", "`onnx.py`, `ghost.py`)"), ROOT) == [
        "exfiqa/models/fr/ghost.py: in the table, not in the tree"]
    assert problems(readme.replace("| `CONTRIBUTING.md` |", "| CONTRIBUTING |"), ROOT) == [
        "CONTRIBUTING.md: in the tree, not in the table"]
