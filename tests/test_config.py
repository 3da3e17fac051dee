"""Run configs: validation errors name the file and key; selection and overrides."""

from __future__ import annotations

import dataclasses
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


# ------------------------------------------------------------------------------ no coercion

WRONG_VALUES = [
    # (key, value, what the message says after "c.yaml: ")
    ("fmr_targets", 0.001, r"fmr_targets must be a non-empty list of distinct numbers in \(0, 1\), got 0.001 \(float\)"),
    ("fmr_targets", [0.01, True], r"fmr_targets must be .*True \(bool\)"),
    ("fmr_targets", [0.01, "0.001"], r"fmr_targets must be .*'0.001' \(str\)"),
    ("fmr_targets", [0.01, 0.01], r"fmr_targets must be a non-empty list of distinct"),
    ("discard_limit", "0.3", r"discard_limit must be a number in \(0, 1\], got '0.3' \(str\)"),
    ("discard_limit", True, r"discard_limit must be a number .*True \(bool\)"),
    ("batch_size", "64", r"batch_size must be an integer >= 1, got '64' \(str\)"),
    ("batch_size", 2.7, r"batch_size must be an integer >= 1, got 2.7 \(float\)"),
    ("batch_size", True, r"batch_size must be an integer >= 1, got True \(bool\)"),
    ("seed", "1", r"seed must be an integer >= 0, got '1' \(str\)"),
    ("seed", 1.9, r"seed must be an integer >= 0, got 1.9 \(float\)"),
    ("seed", True, r"seed must be an integer >= 0, got True \(bool\)"),
    ("seed", -1, r"seed must be an integer >= 0, got -1 \(int\)"),
    ("datasets", ["lfw"], r"datasets must be a mapping of name: entry, got \['lfw'\] \(list\)"),
    ("fr_models", ["arcface"], r"fr_models must be a mapping of name: entry, got \['arcface'\] \(list\)"),
    ("quality_models", ["T"], r"quality_models must be a mapping"),
    ("external_methods", ["mine"], r"external_methods must be a mapping"),
    ("headline", ["ijbc", "arcface"], r"headline must be a mapping"),
    ("baselines", "magface_norm", r"baselines must be a list of names from \['magface_norm', 'serfiq', 'sharpness'\], got 'magface_norm' \(str\)"),
    ("baselines", ["brisque"], r"baselines: unknown \['brisque'\]; known: \['magface_norm', 'serfiq', 'sharpness'\]"),
    ("baselines", ["serfiq", "serfiq"], r"baselines lists a name twice"),
    ("run_name", 5, r"run_name must be a non-empty name .*got 5 \(int\)"),
    ("run_name", "a/b", r"run_name must be a non-empty name without '/'"),
    ("convention", ["fixed"], r"convention must be one of \['fixed', 'recompute'\], got \['fixed'\] \(list\)"),
    ("device", "gpu", r"device must be 'cpu', 'cuda', 'cuda:N' \(N >= 0\) or 'auto', got 'gpu' \(str\)"),
    ("device", "cuda:-1", r"device must be .*'cuda:-1'"),
    ("device", "cuda:x", r"device must be .*'cuda:x'"),
    ("device", 0, r"device must be .*got 0 \(int\)"),
    ("demo", 0, r"demo must be false, true, 'default' or 'tiny', got 0 \(int\)"),
    ("data_root", 3, r"data_root must be a non-empty string, got 3 \(int\)"),
    ("results_dir", ["results"], r"results_dir must be a non-empty string"),
    ("cache_dir", None, r"cache_dir must be a non-empty string, got None"),
]


@pytest.mark.parametrize(("key", "value", "message"), WRONG_VALUES, ids=[f"{k}={v!r}" for k, v, _ in WRONG_VALUES])
def test_a_wrong_type_is_an_error_naming_the_file_and_the_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=r"c\.yaml: " + message):
        load_config(_write(tmp_path, **{key: value}), cwd=tmp_path)


def test_ints_are_accepted_where_numbers_are_and_floats_read_as_yaml_1_2(tmp_path):
    cfg = load_config(_write(tmp_path, convention="fixed", discard_limit=1, seed=3), cwd=tmp_path)
    assert cfg.discard_limit == 1.0 and isinstance(cfg.discard_limit, float) and cfg.seed == 3
    p = tmp_path / "e.yaml"
    p.write_text(_write(tmp_path).read_text().replace("fmr_targets:\n- 0.01\n- 0.001\n- 0.0001", "fmr_targets: [1e-2, 1e-3]"))
    assert load_config(p, cwd=tmp_path).fmr_targets == (0.01, 0.001)  # PyYAML alone reads 1e-3 as a string


def test_dataset_entries_take_exactly_their_readers_arguments(tmp_path):
    def ds(**entry):
        return _write(tmp_path, datasets={"x": entry}, headline={})

    with pytest.raises(ConfigError, match=r"datasets\.x: unknown key\(s\) \['root'\]; allowed: \['kind', 'label', 'path'\]"):
        load_config(ds(kind="bin", path="a.bin", root="b"))
    with pytest.raises(ConfigError, match=r"datasets\.x: unknown key\(s\) \['max_nonmated'\]"):
        load_config(ds(kind="ijbc", root="IJB_C", max_nonmated=10))
    with pytest.raises(ConfigError, match=r"datasets\.x: unknown key\(s\) \['name'\]"):
        load_config(ds(kind="bin", path="a.bin", name="y"))  # the entry's key is the name
    with pytest.raises(ConfigError, match=r"datasets\.x \(kind xqlfw\) needs \['pairs_file'\]"):
        load_config(ds(kind="xqlfw", root="imgs"))
    with pytest.raises(ConfigError, match=r"datasets\.x\.max_nonmated must be an integer or null, got '10' \(str\)"):
        load_config(ds(kind="adience", root="a", max_nonmated="10"))
    with pytest.raises(ConfigError, match=r"datasets\.x\.seed must be an integer, got True \(bool\)"):
        load_config(ds(kind="adience", root="a", seed=True))
    with pytest.raises(ConfigError, match=r"datasets\.x\.path must be a non-empty string, got 5 \(int\)"):
        load_config(ds(kind="bin", path=5))
    with pytest.raises(ConfigError, match=r"datasets\.x\.label must be a non-empty string"):
        load_config(ds(kind="bin", path="a.bin", label=["X"]))
    with pytest.raises(ConfigError, match=r"datasets\.x needs a 'kind'"):
        load_config(_write(tmp_path, datasets={"x": "a.bin"}, headline={}))
    cfg = load_config(ds(kind="adience", root="a", max_nonmated=None, seed=3, label="A"), cwd=tmp_path)
    assert cfg.datasets["x"].args == {"name": "x", "root": cfg.data_root / "a", "max_nonmated": None, "seed": 3}


def test_model_entries_take_only_their_loaders_arguments(tmp_path):
    def fr(**entry):
        return _write(tmp_path, fr_models={"arcface": {"checkpoint": "a.pt", **entry}, "magface": {"checkpoint": "m.pt"}})

    def q(**entry):
        return _write(tmp_path, quality_models={"T": {"checkpoint": "t.pt", **entry}})

    with pytest.raises(ConfigError, match=r"fr_models\.arcface: unknown key\(s\) \['num_heads'\]; allowed: \['arch', 'checkpoint', "):
        load_config(fr(num_heads=4))
    with pytest.raises(ConfigError, match=r"fr_models\.arcface\.arch must be one of \['iresnet', 'magface', 'curricularface'\], got 'vit'"):
        load_config(fr(arch="vit"))
    with pytest.raises(ConfigError, match=r"fr_models\.arcface\.layers must be a non-empty list of integers >= 1"):
        load_config(fr(layers=3))
    with pytest.raises(ConfigError, match=r"quality_models\.T: unknown key\(s\) \['arch'\]; allowed: \['checkpoint', 'img_size', 'label', 'num_heads'\]"):
        load_config(q(arch="iresnet"))
    with pytest.raises(ConfigError, match=r"quality_models\.T\.num_heads must be an integer >= 1, got '4' \(str\)"):
        load_config(q(num_heads="4"))
    with pytest.raises(ConfigError, match=r"quality_models\.T needs a 'checkpoint'"):
        load_config(_write(tmp_path, quality_models={"T": "t.pt"}))
    cfg = load_config(fr(arch="iresnet", layers=[1, 1, 1, 1], name="arcface"), cwd=tmp_path)
    assert cfg.fr_models["arcface"].args == {"arch": "iresnet", "layers": [1, 1, 1, 1], "name": "arcface"}
    assert load_config(q(num_heads=2, img_size=112)).quality_models["T"].args == {"num_heads": 2, "img_size": 112}


def test_the_hand_listed_names_match_the_code_they_stand_for():
    """config.py does not import torch; these lists must still follow the loaders and baselines."""
    import inspect
    import typing

    from exfiqa import config as c
    from exfiqa.models.baselines import BASELINES
    from exfiqa.models.fr import TORCH_ENTRY_ARGS, Arch, Preprocess, load_fr, load_onnx_fr
    from exfiqa.models.vitfiqa import load_vitfiqa
    from exfiqa.readers import BENCHMARK_KINDS

    assert set(c._BASELINES) == set(BASELINES)
    assert set(c._READERS) == set(BENCHMARK_KINDS)
    assert c._FR_ARCHS == typing.get_args(Arch)
    fr_params = set(inspect.signature(load_fr).parameters) - {"checkpoint_path", "device"}
    onnx_params = set(inspect.signature(load_onnx_fr).parameters) - {"path", "device"}
    # exfiqa.models.fr.load_fr_entry takes `name`, turns `preprocess` into a Preprocess and passes the rest on
    assert c._FR_ARGS == fr_params | onnx_params
    assert c._FR_TORCH_ARGS == c._FR_ARGS - onnx_params == TORCH_ENTRY_ARGS  # keys an ONNX entry refuses
    assert c._PREPROCESS_KEYS == tuple(f.name for f in dataclasses.fields(Preprocess) if f.name != "source")
    assert c._QUALITY_ARGS == set(inspect.signature(load_vitfiqa).parameters) - {"path", "device"}


def test_baselines_headline_and_external_methods_refer_to_known_entries(tmp_path):
    with pytest.raises(ConfigError, match=r"baselines: magface_norm runs on fr_models\.magface, which this config lacks"):
        load_config(_write(tmp_path, fr_models={"arcface": {"checkpoint": "a.pt"}}, headline={}))
    load_config(_write(tmp_path, fr_models={"arcface": {"checkpoint": "a.pt"}}, headline={}, baselines=["serfiq", "sharpness"]))
    with pytest.raises(ConfigError, match=r"headline: unknown key\(s\) \['fr'\]"):
        load_config(_write(tmp_path, headline={"fr": "arcface"}))
    with pytest.raises(ConfigError, match=r"headline\.dataset 'nope' is not one of"):
        load_config(_write(tmp_path, headline={"dataset": "nope"}))
    with pytest.raises(ConfigError, match=r"headline\.fmr must be a number in \(0, 1\), got 'often' \(str\)"):
        load_config(_write(tmp_path, headline={"fmr": "often"}))
    with pytest.raises(ConfigError, match=r"external_methods\.mine: unknown dataset\(s\) \['nope'\]"):
        load_config(_write(tmp_path, external_methods={"mine": {"nope": "mine.csv"}}))
    with pytest.raises(ConfigError, match=r"external_methods\.mine\.lfw must be a non-empty string"):
        load_config(_write(tmp_path, external_methods={"mine": {"lfw": 3}}))


def test_device_is_checked_and_auto_resolved_where_a_model_runs(tmp_path, monkeypatch):
    import torch

    from exfiqa.extract.models import Models, run_device

    assert load_config(_write(tmp_path, device="cuda:1")).device == "cuda:1"  # not checked for presence
    cfg = load_config(_write(tmp_path, device="auto"))
    assert cfg.device == "auto" and cfg.with_(seed=1).device == "auto"  # as written: reading needs no torch
    for available, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda a=available: a)
        assert str(run_device(cfg)) == expected and Models(cfg).device == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device: device='cuda:0' requested but CUDA is not available"):
        run_device(cfg.with_(device="cuda:0"))
    with pytest.raises(ConfigError, match=r"device must be 'cpu', 'cuda', 'cuda:N' \(N >= 0\) or 'auto', got 'gpu'"):
        cfg.with_(device="gpu")


def test_config_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from exfiqa.config import load_config; load_config('configs/demo.yaml'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_discard_limit_stops_at_the_last_level_of_its_convention(tmp_path):
    from exfiqa.config import max_discard_limit
    from exfiqa.evaluation.rules import RECOMPUTE_DISCARD_FRACTIONS

    assert max_discard_limit("recompute") == RECOMPUTE_DISCARD_FRACTIONS[-1] == 0.95
    assert max_discard_limit("fixed") == 1.0
    with pytest.raises(ConfigError, match=r"c\.yaml: discard_limit must be at most 0\.95 \(the last discard level of the 'recompute' convention\), got 0\.97"):
        load_config(_write(tmp_path, discard_limit=0.97))
    fixed = load_config(_write(tmp_path, convention="fixed", discard_limit=0.97))
    assert fixed.discard_limit == 0.97
    with pytest.raises(ConfigError, match="at most 0.95"):
        fixed.with_(convention="recompute")
    assert fixed.with_(convention="recompute", discard_limit=0.95).discard_limit == 0.95
    recompute = load_config(_write(tmp_path))
    with pytest.raises(ConfigError, match="at most 0.95"):
        recompute.with_(discard_limit=0.97)
    assert recompute.with_(convention="fixed", discard_limit=1).discard_limit == 1.0


def test_with_checks_types_like_the_file(tmp_path):
    cfg = load_config(_write(tmp_path))
    for override, message in [
        ({"batch_size": "64"}, r"batch_size must be an integer >= 1, got '64' \(str\)"),
        ({"batch_size": 2.7}, r"batch_size must be an integer >= 1, got 2.7"),
        ({"seed": True}, r"seed must be an integer >= 0, got True \(bool\)"),
        ({"fmr_targets": 0.001}, r"fmr_targets must be a non-empty list"),
        ({"fmr_targets": "[0.001]"}, r"fmr_targets must be a non-empty list"),  # open_study parses strings
        ({"discard_limit": "0.2"}, r"discard_limit must be a number"),
        ({"convention": "trapezoid"}, r"convention must be one of"),
        ({"baselines": "sharpness"}, r"baselines must be a list of names"),
        ({"datasets": {}}, r"setting\(s\) \['datasets'\] cannot be overridden"),
    ]:
        with pytest.raises(ConfigError, match=message):
            cfg.with_(**override)
    over = cfg.with_(fmr_targets=(0.1,), seed=2, batch_size=8, results_dir=tmp_path / "r", convention="", device="")
    assert (over.fmr_targets, over.seed, over.batch_size, over.results_dir) == ((0.1,), 2, 8, tmp_path / "r")
    assert over.convention == cfg.convention and over.device == cfg.device  # "" keeps


def test_yaml_errors_name_the_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("run_name: x\nfmr_targets: [0.01, 0.001\nseed: 0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3:5: not valid YAML: while parsing a flow sequence.*began at line 2"):
        load_config(p)
    p.write_text("run_name: x\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2:7: not valid YAML: mapping values are not allowed here"):
        load_config(p)
    p.write_text("- run_name: x\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: the top level must be a mapping of settings, got list"):
        load_config(p)
    p.write_text("just words\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: the top level must be a mapping of settings, got str"):
        load_config(p)
    p.write_text("seed: 1\nbatch_size: 8\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line 3: key 'seed' is given twice"):
        load_config(p)


def test_list_parameters_from_papermill_strings():
    from exfiqa.config import list_parameter

    assert list_parameter("fr_models", '["elasticface"]') == ["elasticface"]
    assert list_parameter("fr_models", "[elasticface, arcface]") == ["elasticface", "arcface"]
    assert list_parameter("fr_models", ("arcface",)) == ["arcface"]
    assert list_parameter("datasets", "[]") == [] and list_parameter("datasets", []) == []
    assert list_parameter("fmr_targets", "[1e-3, 0.01]", "numbers") == [0.001, 0.01]
    with pytest.raises(ConfigError, match=r"""parameter fr_models must be a list of names, e.g. -p fr_models '\["elasticface"\]'; got the string 'elasticface'"""):
        list_parameter("fr_models", "elasticface")
    with pytest.raises(ConfigError, match=r"parameter fr_models: '\[elasticface' is not a JSON/YAML list"):
        list_parameter("fr_models", "[elasticface")
    with pytest.raises(ConfigError, match=r"parameter datasets must be a list of names.*got \[1\] \(list\)"):
        list_parameter("datasets", "[1]")
    with pytest.raises(ConfigError, match=r"parameter fmr_targets must be a list of numbers.*got \['a'\]"):
        list_parameter("fmr_targets", "[a]", "numbers")
    with pytest.raises(ConfigError, match=r"parameter fmr_targets must be a list of numbers.*got the string '0.001'"):
        list_parameter("fmr_targets", "0.001", "numbers")


@pytest.fixture
def readers():
    """exfiqa.readers.READERS, restored after the test; ``exfiqa_testplugin_*`` modules unloaded."""
    import sys

    from exfiqa.readers import READERS

    saved = dict(READERS)
    yield READERS
    READERS.clear()
    READERS.update(saved)
    for name in [m for m in sys.modules if m.startswith("exfiqa_testplugin_")]:
        del sys.modules[name]


def _read_pairs_folder(root, pairs_file, max_pairs: int | None = None, name: str = "pairs"):
    """A reader's signature (the config reads only that): two path arguments and an optional integer."""
    raise AssertionError("load_config must not call a reader")


def _write_datasets(tmp_path, **changes):
    """configs/demo.yaml with other datasets (and no headline, which names the shipped ones)."""
    return _write(tmp_path, headline=None, **changes)


def test_a_registered_kind_is_a_dataset_kind_of_the_config(tmp_path, readers):
    from exfiqa import config as c
    from exfiqa.readers import register_reader

    assert c._READERS is readers
    entry = {"kind": "pairs_folder", "root": "mine/images", "pairs_file": "mine/pairs.csv", "label": "Mine"}
    with pytest.raises(ConfigError, match=r"datasets\.mine\.kind 'pairs_folder' is not one of \['bin', 'xqlfw', 'adience', 'ijbc'\]"):
        load_config(_write_datasets(tmp_path, data_root=str(tmp_path), datasets={"mine": entry}))
    register_reader("pairs_folder", _read_pairs_folder)
    cfg = load_config(_write_datasets(tmp_path, data_root=str(tmp_path), datasets={"mine": entry}))
    spec = cfg.datasets["mine"]
    assert (spec.kind, spec.label) == ("pairs_folder", "Mine")
    assert spec.args == {"name": "mine", "root": tmp_path / "mine/images", "pairs_file": tmp_path / "mine/pairs.csv"}
    # its other arguments: integers, or null where the reader's default is None
    for value in (10, None):
        cfg = load_config(_write_datasets(tmp_path, datasets={"mine": {**entry, "max_pairs": value}}))
        assert cfg.datasets["mine"].args["max_pairs"] == value
    with pytest.raises(ConfigError, match=r"datasets\.mine\.max_pairs must be an integer or null, got 'ten' \(str\)"):
        load_config(_write_datasets(tmp_path, datasets={"mine": {**entry, "max_pairs": "ten"}}))
    with pytest.raises(ConfigError, match=r"datasets\.mine \(kind pairs_folder\) needs \['pairs_file'\]"):
        load_config(_write_datasets(tmp_path, datasets={"mine": {"kind": "pairs_folder", "root": "r"}}))
    with pytest.raises(ConfigError, match=r"datasets\.mine: unknown key\(s\) \['path'\]; allowed: \['kind', 'label', 'max_pairs', 'pairs_file', 'root'\]"):
        load_config(_write_datasets(tmp_path, datasets={"mine": {**entry, "path": "x.bin"}}))
    # an unknown kind lists the registered ones with the built-ins
    with pytest.raises(ConfigError, match=r"datasets\.x\.kind 'zip' is not one of \['bin', 'xqlfw', 'adience', 'ijbc', 'pairs_folder'\]"):
        load_config(_write_datasets(tmp_path, datasets={"x": {"kind": "zip", "path": "a"}}))


_PLUGIN_A = '''
from exfiqa.readers import read_bin, register_reader


def read_bin_again(path, name: str = "again"):
    """The .bin reader under a kind of its own."""
    return read_bin(path, name=name)


register_reader("bin_again", read_bin_again)
'''

_PLUGIN_B = '''
from exfiqa.readers import READERS

SAW_A = "bin_again" in READERS  # imported after exfiqa_testplugin_a?
'''


def test_plugins_are_imported_in_order_before_the_datasets_are_checked(tmp_path, readers, monkeypatch):
    import sys

    import numpy as np

    from exfiqa.readers import load_benchmark, read_bin, write_bin

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "exfiqa_testplugin_a.py").write_text(_PLUGIN_A)
    (lib / "exfiqa_testplugin_b.py").write_text(_PLUGIN_B)
    monkeypatch.syspath_prepend(str(lib))
    rng = np.random.default_rng(0)
    write_bin(tmp_path / "two.bin", list(rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)), [True, False], fmt="png")
    datasets = {"again": {"kind": "bin_again", "path": "two.bin"}}
    with pytest.raises(ConfigError, match=r"datasets\.again\.kind 'bin_again' is not one of"):
        load_config(_write_datasets(tmp_path, data_root=str(tmp_path), datasets=datasets))
    assert "exfiqa_testplugin_a" not in sys.modules

    plugins = ["exfiqa_testplugin_a", "exfiqa_testplugin_b"]
    cfg = load_config(_write_datasets(tmp_path, data_root=str(tmp_path), datasets=datasets, plugins=plugins))
    assert cfg.plugins == tuple(plugins)
    assert sys.modules["exfiqa_testplugin_b"].SAW_A is True
    assert readers["bin_again"] is sys.modules["exfiqa_testplugin_a"].read_bin_again
    spec = cfg.datasets["again"]
    assert spec.args == {"name": "again", "path": tmp_path / "two.bin"}
    bench, plain = load_benchmark(spec.kind, **spec.args), read_bin(tmp_path / "two.bin")
    assert bench.name == "again" and bench.comparisons.equals(plain.comparisons)
    assert load_config(_write(tmp_path)).plugins == ()


def test_plugins_errors_name_the_key(tmp_path, readers, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "exfiqa_testplugin_broken.py").write_text("import exfiqa_testplugin_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(lib))
    with pytest.raises(ConfigError, match=r"c\.yaml: plugins: cannot import 'exfiqa_testplugin_missing' \(No module named 'exfiqa_testplugin_missing'\); is it installed or on PYTHONPATH\?"):
        load_config(_write(tmp_path, plugins=["exfiqa_testplugin_missing"]))
    with pytest.raises(ConfigError, match=r"plugins: cannot import 'exfiqa_testplugin_broken' \(No module named 'exfiqa_testplugin_no_such_dependency'\)"):
        load_config(_write(tmp_path, plugins=["exfiqa_testplugin_broken"]))
    for value, shown in (("mylab.readers", r"'mylab\.readers' \(str\)"), ([1], r"\[1\] \(list\)"), ([""], r"\[''\] \(list\)"),
                         ({"mylab": 1}, r"\{'mylab': 1\} \(dict\)")):
        with pytest.raises(ConfigError, match=rf"c\.yaml: plugins must be a list of importable module names, got {shown}"):
            load_config(_write(tmp_path, plugins=value))


def test_plugins_run_only_after_the_rest_of_the_config_is_valid_and_are_announced(tmp_path, readers, monkeypatch, capsys):
    import sys

    lib = tmp_path / "lib"
    lib.mkdir()
    marker = tmp_path / "ran"
    (lib / "exfiqa_testplugin_marker.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(lib))
    for bad, message in (({"batch_size": "x"}, "batch_size"), ({"precision": "fp64"}, "precision"),
                         ({"fr_models": 5}, "fr_models"), ({"headline": 3}, "headline")):
        with pytest.raises(ConfigError, match=message):
            load_config(_write(tmp_path, plugins=["exfiqa_testplugin_marker"], **bad))
        assert not marker.exists() and "exfiqa_testplugin_marker" not in sys.modules, bad
    for name in ("../evil", "os;rm", ".relative", "a..b"):
        with pytest.raises(ConfigError, match="plugins must be a list of importable module names"):
            load_config(_write(tmp_path, plugins=[name]))
    capsys.readouterr()
    load_config(_write(tmp_path, plugins=["exfiqa_testplugin_marker"]))
    assert marker.exists()
    err = capsys.readouterr().err
    assert f"plugins: importing exfiqa_testplugin_marker ({lib / 'exfiqa_testplugin_marker.py'})" in err


def test_paper_crfiqa_config_is_paper_yaml_with_the_authors_rules_only(tmp_path):
    """configs/paper-crfiqa.yaml = configs/paper.yaml + ``compat: crfiqa`` (and its own run_name,
    so the two runs' results do not overwrite each other); the README names it."""
    paper = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    compat = yaml.safe_load((ROOT / "configs" / "paper-crfiqa.yaml").read_text())
    differs = {k for k in paper.keys() | compat.keys() if paper.get(k) != compat.get(k)}
    assert differs == {"run_name", "compat"} and compat["compat"] == "crfiqa"
    assert "threshold_rule" not in compat and "acceptance" not in compat  # the named set, not a copy of it
    a = load_config(ROOT / "configs" / "paper.yaml", cwd=tmp_path)
    b = load_config(ROOT / "configs" / "paper-crfiqa.yaml", cwd=tmp_path)
    assert (a.threshold_rule, a.acceptance) == ("at_most", "similarity>=")
    assert (b.threshold_rule, b.acceptance) == ("closest", "distance<") and b.convention == "recompute"
    fields = {f.name for f in dataclasses.fields(a)} - {"source"}  # source: the file's own path
    assert {f for f in fields if getattr(a, f) != getattr(b, f)} == {"run_name", "threshold_rule", "acceptance"}
    assert a.source.name == "paper.yaml" and b.source.name == "paper-crfiqa.yaml"
    readme = (ROOT / "README.md").read_text()
    assert "configs/paper-crfiqa.yaml" in readme and "compat: crfiqa" in readme
