"""Shared fixtures: a seconds-sized demo world (same code paths as `make demo`) and its config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    from exfiqa.demo import DemoSpec, build_demo

    root = tmp_path_factory.mktemp("tinyworld")
    build_demo(root, DemoSpec.tiny(), log=lambda *_: None)
    return root


@pytest.fixture(scope="session")
def tiny_raw_config(tiny_world, tmp_path_factory) -> Path:
    """configs/demo.yaml pointed at the tiny world, with its own cache and results folders (no
    array extracted yet)."""
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    work = tmp_path_factory.mktemp("tinyrun")
    raw.update(
        run_name="tiny", demo="tiny", data_root=str(tiny_world), cache_dir=str(work / "cache"),
        results_dir=str(work / "results"),
    )
    for q in raw["quality_models"].values():
        q["num_heads"] = 2
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def tiny_config(tiny_raw_config) -> Path:
    """:func:`tiny_raw_config` with every per-sample array extracted (the evaluation, a Study,
    reads them and never extracts: as ``make paper``, extraction runs first)."""
    from exfiqa.config import load_config
    from exfiqa.extract import extract

    extract(load_config(tiny_raw_config), progress=False, log=lambda *_: None)
    return tiny_raw_config
