"""The cached comparison table on the tiny demo world, checked against direct computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from exfiqa.config import ConfigError, load_config
from exfiqa.fr import load_fr
from exfiqa.inference import exit_scores
from exfiqa.model import load_vitfiqa
from exfiqa.pipeline import Cache, Study, exit_names, read_method_csv


@pytest.fixture(scope="module")
def study(tiny_config):
    return Study(load_config(tiny_config), progress=False)


def test_sample_table_matches_direct_computation(study):
    cfg = study.config
    bench = study.benchmark("lfw")
    images = np.concatenate([b for _, b in bench.iter_images(7)])
    model = load_vitfiqa(cfg.quality_models["T"].checkpoint, num_heads=2)
    ref = exit_scores(model, [images], progress=False)
    np.testing.assert_allclose(study.exit_scores("lfw", "T"), ref, rtol=1e-5, atol=1e-5)
    fr = load_fr("arcface", cfg.fr_models["arcface"].checkpoint, device="cpu")
    emb = fr.embed(images)
    table = study.table("lfw", "arcface", "T")
    a, b = table["a"].to_numpy(), table["b"].to_numpy()
    # pair k of a .bin compares images 2k and 2k+1
    np.testing.assert_array_equal(a, np.arange(0, len(images), 2))
    cos = np.sum(emb[a] * emb[b], 1) / (np.linalg.norm(emb[a], axis=1) * np.linalg.norm(emb[b], axis=1))
    np.testing.assert_allclose(table["similarity"], cos, atol=1e-5)
    np.testing.assert_allclose(table["Exit 4"], np.minimum(ref[a, 3], ref[b, 3]), atol=1e-5)
    fw = ref @ (np.arange(1, 13) / 78)
    np.testing.assert_allclose(table["EX-FIQA-FW"], np.minimum(fw[a], fw[b]), atol=1e-5)
    assert list(table.columns[:4]) == ["a", "b", "mated", "similarity"]
    assert set(exit_names(12)) <= set(table.columns)
    assert {"magface_norm", "serfiq", "sharpness"} <= set(table.columns)


def test_template_table_uses_min_quality_and_template_embeddings(study):
    bench = study.benchmark("ijbc")
    assert bench.level == "template"
    table = study.table("ijbc", "arcface", "C")
    q = study.exit_scores("ijbc", "C")[:, -1]
    tids = bench.samples["template_id"].to_numpy()
    for a, b, got in table[["a", "b", "Exit 12"]].head(5).itertuples(index=False):
        expect = min(q[tids == a].min(), q[tids == b].min())
        assert got == pytest.approx(expect, abs=1e-5)
    assert table["mated"].any() and (~table["mated"]).any()
    assert np.all(np.abs(table["similarity"]) <= 1 + 1e-6)


def test_cache_is_reused_and_keyed_by_content(tmp_path):
    cache = Cache(tmp_path)
    calls = []
    value = cache.get("x", {"a": 1}, lambda: calls.append(1) or np.arange(3))
    again = cache.get("x", {"a": 1}, lambda: calls.append(1) or np.arange(5))
    np.testing.assert_array_equal(value, again)
    assert calls == [1]
    other = cache.get("x", {"a": 2}, lambda: np.arange(5))
    assert len(other) == 5 and len(list(tmp_path.glob("*.npy"))) == 2
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave nothing behind


def test_second_study_reads_the_cache(tiny_config, study, monkeypatch):
    study.exit_scores("cfp_fp", "C")
    fresh = Study(load_config(tiny_config), progress=False)
    import exfiqa.inference as inf

    monkeypatch.setattr(inf, "exit_scores", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    np.testing.assert_array_equal(fresh.exit_scores("cfp_fp", "C"), study.exit_scores("cfp_fp", "C"))


def test_external_method_csv(study, tmp_path):
    bench = study.benchmark("adience")
    scores = np.linspace(0, 1, len(bench))
    good = tmp_path / "m.csv"
    pd.DataFrame({"path": bench.samples["path"], "score": scores}).to_csv(good, index=False)
    np.testing.assert_allclose(read_method_csv(good, bench, "mine"), scores)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"path": bench.samples["path"][1:], "score": scores[1:]}).to_csv(bad, index=False)
    with pytest.raises(ConfigError, match="no score for 1 samples"):
        read_method_csv(bad, bench, "mine")
    tm = tmp_path / "t.csv"
    pd.DataFrame({"template_id": [1], "score": [0.5]}).to_csv(tm, index=False)
    with pytest.raises(ConfigError, match="sample-level"):
        read_method_csv(tm, bench, "mine")
    ij = study.benchmark("ijbc")
    per_t = pd.DataFrame({"template_id": np.unique(ij.samples["template_id"]), "score": 1.0})
    per_t.to_csv(tm, index=False)
    assert read_method_csv(tm, ij, "mine").shape == (len(ij),)


def test_unknown_names_are_errors(study):
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        study.benchmark("nope")
    with pytest.raises(ConfigError, match="unknown baseline"):
        study.baseline_scores("lfw", "brisque")


def test_baselines_work_when_their_fr_model_is_not_selected(tiny_config):
    """A notebook run with fr_models=["elasticface"] still has the MagFace and SER-FIQ baselines."""
    cfg = load_config(tiny_config).select(["lfw"], ["elasticface"], ["T"])
    study = Study(cfg, progress=False)
    table = study.table("lfw", "elasticface", "T")
    assert {"magface_norm", "serfiq"} <= set(table.columns)
    assert list(cfg.fr_models) == ["elasticface"]
