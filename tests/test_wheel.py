"""The built wheel works without the repository.

The wheel is built from a copy of the package sources (``pip wheel --no-deps --no-build-isolation``;
nothing is written into the checkout), installed with ``--no-deps --no-index`` into a fresh venv
whose dependencies come from this interpreter's site-packages through a ``.pth`` file (so nothing
is downloaded, and the checkout's editable install is not seen: a path listed in a ``.pth`` file
has its own ``.pth`` files ignored). The commands then run from another folder with no
``PYTHONPATH``: ``exfiqa score --detect``, ``exfiqa align``, ``exfiqa calibrate`` (when this
branch has it), ``exfiqa extract`` on a small config, and the package data (the index page's
template) is read from the installed package.

Photo: ``skimage.data.astronaut()`` (NASA; public domain) and ``skimage.data.coffee()`` (CC0,
Rachel Michetti).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
import yaml
from PIL import Image

from exfiqa.models.vitfiqa import build_vitfiqa, save_vitfiqa

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with only the built wheel installed (dependencies: this interpreter's)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "exfiqa", src / "exfiqa", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, cwd=tmp)
    (wheel,) = dist.glob("exfiqa-*.whl")
    v = tmp / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(v)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(v / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, cwd=tmp)
    site = Path(subprocess.run([str(v / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return v


def _run(v: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: val for k, val in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{v / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_installed_package_is_the_wheels_and_carries_its_data(venv, tmp_path):
    out = _run(venv, tmp_path, str(venv / "bin" / "python"), "-c",
               "import exfiqa, importlib.resources as r; print(exfiqa.__file__); "
               "print(len(r.files('exfiqa.report').joinpath('templates/index.html.j2').read_text()))")
    assert out.returncode == 0, out.stderr
    path, size = out.stdout.split()
    assert Path(path).resolve().is_relative_to(venv.resolve()) and int(size) > 100
    assert not Path(path).resolve().is_relative_to(ROOT)


def test_commands_work_outside_the_checkout(venv, tmp_path, tiny_world):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(photos / "astronaut.png")
    Image.fromarray(skimage.data.coffee()).save(photos / "coffee.jpg")
    torch.manual_seed(0)
    save_vitfiqa(build_vitfiqa(variant="crfiqa", embed_dim=32, num_heads=2, feature_dim=16), tmp_path / "small.pt")
    exe = str(venv / "bin" / "exfiqa")

    out = _run(venv, tmp_path, exe, "score", "--detect", "photos", "--checkpoint", "small.pt", "--out", "s.csv",
               "--num-heads", "2", "--quiet")
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(tmp_path / "s.csv")
    assert list(table["status"]) == ["ok", "no_face"] and np.isfinite(table.loc[0, "ex_fiqa_fw"])

    out = _run(venv, tmp_path, exe, "align", "photos", "aligned")
    assert out.returncode == 0, out.stderr
    assert np.asarray(Image.open(tmp_path / "aligned" / "astronaut.png")).shape == (112, 112, 3)
    assert (tmp_path / "aligned" / "align-report.csv").is_file()

    commands = _run(venv, tmp_path, exe, "--help").stdout
    if "calibrate" in commands:  # added on another branch
        out = _run(venv, tmp_path, exe, "calibrate", "--help")
        assert out.returncode == 0, out.stderr

    out = _run(venv, tmp_path, exe, "extract", "--help")
    assert out.returncode == 0 and "--config" in out.stdout
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw.update(run_name="wheel", demo="tiny", data_root=str(tiny_world), cache_dir=str(tmp_path / "cache"),
               results_dir=str(tmp_path / "results"))
    raw["datasets"] = {"lfw": raw["datasets"]["lfw"]}
    raw["fr_models"] = {"arcface": raw["fr_models"]["arcface"]}
    raw["quality_models"] = {"T": {**raw["quality_models"]["T"], "num_heads": 2}}
    raw["baselines"] = ["sharpness"]
    raw["headline"] = {"dataset": "lfw", "fr_model": "arcface", "fmr": 0.001}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    out = _run(venv, tmp_path, exe, "extract", "--config", "run.yaml", "--no-progress", "--workers", "0")
    assert out.returncode == 0, out.stderr
    exits = list((tmp_path / "cache").rglob("exits-T.npy"))
    assert len(exits) == 1 and np.load(exits[0]).shape[1] == 12
