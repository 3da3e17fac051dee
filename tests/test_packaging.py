"""environment.yml (conda users) must list what pyproject.toml declares, with the same bounds."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _split(spec: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    assert m, spec
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_split(s) for s in project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, []
    for item in env["dependencies"]:
        if isinstance(item, dict):
            pip += item["pip"]
            continue
        name, bound = _split(item.replace("=", "==", 1) if re.match(r"^python=", item) else item)
        conda[CONDA_NAMES.get(name, name)] = bound
    conda.pop("python"), conda.pop("pip")
    from_pip = dict(_split(item.split("#")[0]) for item in pip if item != "-e .")
    assert not set(conda) & set(from_pip), "a package listed twice"
    assert conda | from_pip == wanted
    assert "-e ." in pip
    assert "conda-forge" in env["channels"]


def test_ci_pins_cover_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "requirements-ci.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name = _split(spec)[0]
        assert name in pins, f"{name} is not pinned in requirements-ci.txt"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
