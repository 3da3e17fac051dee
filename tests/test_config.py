"""Run configs: validation errors name the file and key; selection and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from exfiqa.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, **changes):
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw.update(changes)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_shipped_configs_load_and_resolve_paths(tmp_path):
    for name in ("demo.yaml", "paper.yaml"):
        cfg = load_config(ROOT / "configs" / name, cwd=tmp_path)
        assert set(cfg.datasets) >= {"lfw", "xqlfw", "adience", "ijbc"}
        assert set(cfg.fr_models) == {"arcface", "elasticface", "magface", "curricularface"}
        assert set(cfg.quality_models) == {"T", "C"}
        assert cfg.datasets["lfw"].args["path"].is_relative_to(cfg.data_root)
        assert cfg.data_root.is_relative_to(tmp_path)
    assert load_config(ROOT / "configs" / "paper.yaml").datasets.keys() >= {"agedb_30", "calfw", "cplfw", "cfp_fp"}


def test_unknown_keys_and_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['fmr_target'\]"):
        load_config(_write(tmp_path, fmr_target=[0.1]))
    with pytest.raises(ConfigError, match="convention must be one of"):
        load_config(_write(tmp_path, convention="trapezoid"))
    with pytest.raises(ConfigError, match="datasets.x.kind 'zip'"):
        load_config(_write(tmp_path, datasets={"x": {"kind": "zip", "path": "a"}}))
    with pytest.raises(ConfigError, match="fmr_targets"):
        load_config(_write(tmp_path, fmr_targets=[0.0]))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_select_and_overrides(tmp_path):
    cfg = load_config(ROOT / "configs" / "demo.yaml", cwd=tmp_path)
    sub = cfg.select(["lfw"], ["magface"], ["C"])
    assert list(sub.datasets) == ["lfw"] and list(sub.fr_models) == ["magface"] and list(sub.quality_models) == ["C"]
    assert cfg.select().datasets == cfg.datasets
    with pytest.raises(ConfigError, match=r"unknown datasets \['nope'\]"):
        cfg.select(["nope"])
    over = cfg.with_(discard_limit=0.2, fmr_targets=[1e-3], device=None)
    assert over.discard_limit == 0.2 and over.fmr_targets == (1e-3,) and over.device == cfg.device
    with pytest.raises(ConfigError, match="discard_limit"):
        cfg.with_(discard_limit=1.5)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['colour'\]"):
        cfg.with_(colour="red")


def test_missing_files_are_named_with_a_hint(tmp_path):
    cfg = load_config(ROOT / "configs" / "demo.yaml", cwd=tmp_path, data_root=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"dataset 'lfw': path .*lfw.bin does not exist \(build the demo world with `make demo`\)"):
        cfg.check_paths()
    real = load_config(ROOT / "configs" / "paper.yaml", cwd=tmp_path)
    with pytest.raises(ConfigError, match="data/README.md"):
        real.check_paths()
