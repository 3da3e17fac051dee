"""`make lint`'s layering contracts (import-linter, in pyproject.toml) hold, and would catch a breach.

The contracts themselves are the rule; these tests check that they pass on the tree and that a
breach of each kind (an import inside a function included) makes ``lint-imports`` fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e .[dev])")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "exfiqa", tmp_path / "exfiqa", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # an upward import hidden inside a function still counts
        ("exfiqa/evaluation/fusion.py", "def _breach():\n    from exfiqa.study import Study\n", "layers"),
        ("exfiqa/study.py", "def _breach():\n    import exfiqa.extract\n", "layers"),
        ("exfiqa/evaluation/fusion.py", "import torch\n", "import no torch"),
        ("exfiqa/readers/__init__.py", "def _breach():\n    import exfiqa.demo\n", "stay apart"),
    ],
)
def test_a_breach_fails_the_lint(tmp_path: Path, module: str, line: str, contract: str) -> None:
    root = _copy(tmp_path)
    target = root / module
    target.write_text(target.read_text() + "\n\n" + line)
    out = _lint(root)
    assert out.returncode != 0, f"lint-imports accepted {line!r} in {module}"
    assert _verdict(out.stdout, contract) == "BROKEN", out.stdout


def _verdict(report: str, fragment: str) -> str:
    """KEPT or BROKEN: the verdict printed after the contract whose name holds ``fragment``."""
    summary = " ".join(report.split())  # rich wraps long contract names over lines
    at = summary.index(fragment)
    return re.search(r"\b(KEPT|BROKEN)\b", summary[at:]).group(1)  # type: ignore[union-attr]
