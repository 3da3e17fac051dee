"""The evaluation of the tiny demo world's extracted arrays, checked against direct computations
(the wide comparison table of tests/oracles.py)."""

from __future__ import annotations

import numpy as np
import oracles as O
import pandas as pd
import pytest
from oracles import comparison_table, pair

from exfiqa.config import ConfigError, load_config
from exfiqa.extract import extract
from exfiqa.models.fr import load_fr
from exfiqa.models.inference import exit_scores
from exfiqa.models.vitfiqa import load_vitfiqa
from exfiqa.study import Study, exit_names, read_method_csv


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
    table = comparison_table(study, "lfw", "arcface", "T")
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
    table = comparison_table(study, "ijbc", "arcface", "C")
    q = study.exit_scores("ijbc", "C")[:, -1]
    tids = bench.samples["template_id"].to_numpy()
    for a, b, got in table[["a", "b", "Exit 12"]].head(5).itertuples(index=False):
        expect = min(q[tids == a].min(), q[tids == b].min())
        assert got == pytest.approx(expect, abs=1e-5)
    assert table["mated"].any() and (~table["mated"]).any()
    assert np.all(np.abs(table["similarity"]) <= 1 + 1e-6)


def _count_exit_passes(monkeypatch) -> list[str]:
    """Record each batch the extraction runs through a ViT-FIQA model (its array label)."""
    import exfiqa.extract.stage as extract

    calls: list[str] = []
    real = extract._Exits.run
    monkeypatch.setattr(extract._Exits, "run", lambda self, *a, **k: calls.append(self.labels[0]) or real(self, *a, **k))
    return calls


def test_exit_scores_are_recomputed_when_a_checkpoint_benchmark_byte_or_source_changes(tiny_world, tiny_config, tmp_path, monkeypatch):
    """Exit scores are reused until the checkpoint, a benchmark byte or the model's source changes."""
    import shutil

    import torch
    import yaml

    from exfiqa.store import arrays

    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    raw = yaml.safe_load(tiny_config.read_text())
    raw.update(data_root=str(world), cache_dir=str(tmp_path / "cache"), baselines=[])
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(raw))
    calls = _count_exit_passes(monkeypatch)

    def run() -> tuple[np.ndarray, list[str]]:
        calls.clear()
        cfg = load_config(path).select(["adience"], ["arcface"], ["T"])
        extract(cfg, progress=False, log=lambda *_: None)
        study = Study(cfg, progress=False)
        return np.array(study.exit_scores("adience", "T")), sorted(set(calls))

    first, c = run()
    assert c == ["exits-T"]
    again, c = run()
    assert c == [] and np.array_equal(again, first)
    ckpt = world / "vitfiqa" / "vitfiqa_token.pt"  # a checkpoint: one weight changes
    state = torch.load(ckpt, weights_only=True)
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"] + 0.05
    torch.save(state, ckpt)
    changed, c = run()
    assert c == ["exits-T"] and not np.allclose(changed, first)
    assert run()[1] == []
    img = sorted((world / "benchmarks" / "adience").rglob("*.jpg"))[-1]  # a benchmark byte
    img.write_bytes(img.read_bytes() + b"\0")
    assert run()[1] == ["exits-T"]
    source = tmp_path / "vitfiqa.py"  # the model's source file
    real_files = arrays.code_files
    shutil.copy(next(p for p in real_files("exits", "T") if p.name == "vitfiqa.py"), source)
    monkeypatch.setattr(arrays, "code_files", lambda kind, name: [source if p.name == "vitfiqa.py" else p for p in real_files(kind, name)])
    assert run()[1] == []
    source.write_text(source.read_text() + "\n# changed\n")
    assert run()[1] == ["exits-T"]
    assert run()[1] == []
    assert len(list((tmp_path / "cache").rglob("exits-T.npy"))) == 1  # replaced in place, atomically
    assert not list((tmp_path / "cache").rglob("*.tmp*")) and not list((tmp_path / "cache").rglob(".shards/*/*"))


def test_second_study_reads_the_cache(tiny_config, study, monkeypatch):
    study.exit_scores("cfp_fp", "C")
    calls = _count_exit_passes(monkeypatch)
    extract(load_config(tiny_config), progress=False, log=lambda *_: None)  # current: nothing to compute
    fresh = Study(load_config(tiny_config), progress=False)
    np.testing.assert_array_equal(fresh.exit_scores("cfp_fp", "C"), study.exit_scores("cfp_fp", "C"))
    assert calls == []


def test_the_study_never_extracts(tiny_config, tmp_path, monkeypatch):
    """Without the arrays the Study refuses, naming the file and the command that makes them; it
    runs no model and writes no array (the extraction, run first, does)."""
    import yaml

    from exfiqa.store.arrays import ArrayError

    raw = yaml.safe_load(tiny_config.read_text())
    raw.update(cache_dir=str(tmp_path / "cache"))
    path = tmp_path / "fresh.yaml"
    path.write_text(yaml.safe_dump(raw))
    calls = _count_exit_passes(monkeypatch)
    study = Study(load_config(path), progress=False)
    assert not hasattr(study, "quality_model") and not hasattr(study, "compute")
    with pytest.raises(ArrayError, match=r"exits-T\.npy: missing: .*run `exfiqa extract --config .*fresh\.yaml` first"):
        study.exit_scores("lfw", "T")
    assert calls == [] and not list((tmp_path / "cache").rglob("*.npy"))


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
    extract(cfg, progress=False, log=lambda *_: None)
    study = Study(cfg, progress=False)
    table = comparison_table(study, "lfw", "elasticface", "T")
    assert {"magface_norm", "serfiq"} <= set(table.columns)
    assert list(cfg.fr_models) == ["elasticface"]


def test_open_study_gives_a_study_whose_out_dir_and_card_are_fields(tiny_config, tmp_path):
    """The notebooks' entry point lives with Study: ``out_dir`` and ``card`` are declared fields
    (default None), not attributes patched onto the instance; the card is the one written to
    ``out_dir/run_card.json``."""
    import dataclasses

    import exfiqa.paper
    from exfiqa.store.runcard import RunCard, run_card
    from exfiqa.study import CARD, open_study

    declared = {f.name: f.default for f in dataclasses.fields(Study)}
    assert declared["out_dir"] is None and declared["card"] is None
    plain = Study(load_config(tiny_config), progress=False)
    assert plain.out_dir is None and plain.card is None
    assert not hasattr(exfiqa.paper, "open_study")  # one home: exfiqa.study
    out = tmp_path / "nb"
    study = open_study(str(tiny_config), '["lfw"]', out_dir=str(out), progress=False)
    assert isinstance(study, Study)
    assert study.out_dir == out and (out / "figures").is_dir() and (out / "tables").is_dir()
    assert isinstance(study.card, RunCard) and study.card.datasets == ("lfw",)
    assert RunCard.from_json((out / CARD).read_text()) == study.card
    # the digests reuse the Study's opened benchmarks: the same card as the config's own
    # (the code digest and git state move only if someone edits the tree meanwhile)
    assert set(study.card.differences(run_card(study.config))) <= {"code_sha256", "git"}
    adhoc = open_study(str(tiny_config), '["lfw"]', progress=False)
    assert adhoc.out_dir == study.config.results_dir / "tiny-adhoc" and (adhoc.out_dir / CARD).is_file()


# ----------------------------------------------------------------------------- bounded evaluation


def _reference_pauc(study, ds, fr, q, conv, scale=1.0, **rules):
    """The unbounded computation: the wide table's columns through the oracle pauc_frame (tests/oracles.py)."""

    cfg = study.config
    table = comparison_table(study, ds, fr, q)
    methods = study.methods(q, ds)
    return O.pauc_frame(
        table["similarity"], table["mated"], {m: table[m].to_numpy() for m in methods}, dataset=cfg.datasets[ds].label,
        fr_model=fr, targets=cfg.fmr_targets, convention=conv, limit=cfg.discard_limit, scale=scale, **rules,
    )


@pytest.mark.parametrize("dataset", ["lfw", "xqlfw", "adience", "ijbc"])
def test_bounded_evaluation_equals_the_wide_table(study, dataset):
    from exfiqa.evaluation.edc import edc
    from exfiqa.evaluation.pauc import pauc

    cfg = study.config
    table = comparison_table(study, dataset, "arcface", "C")
    assert table["similarity"].dtype == np.float32 and table["Exit 3"].dtype == np.float32
    methods = study.methods("C", dataset)
    for conv in ("fixed", "recompute"):
        got = study.pauc_frame(dataset, "arcface", "C", methods, scale=1000, convention=conv)
        pd.testing.assert_frame_equal(got, _reference_pauc(study, dataset, "arcface", "C", conv, 1000))
        ref_edc = O.edc_frame(
            table["similarity"], table["mated"], {m: table[m].to_numpy() for m in methods},
            dataset=cfg.datasets[dataset].label, fr_model="arcface", targets=cfg.fmr_targets, convention=conv,
        )
        pd.testing.assert_frame_equal(study.edc_frame(dataset, "arcface", "C", methods, convention=conv), ref_edc)
    fused = study.exit_scores(dataset, "C").astype(np.float64) @ np.linspace(1, 2, 12)
    ref = pauc(edc(table["similarity"], table["mated"], pair(study, dataset, fused), 1e-3, cfg.convention))
    assert study.pauc_of(dataset, "arcface", fused, (1e-3,))[1e-3][0] == ref


@pytest.mark.parametrize("dataset", ["xqlfw", "adience", "ijbc"])
def test_the_authors_rules_and_fm_edc_through_the_study(tiny_config, study, dataset):
    """compat crfiqa (config rules), FM-EDC and the triangle subtraction: bounded Study frames equal
    the small-set functions on the wide table."""
    from exfiqa.evaluation.rules import compat_rules

    cfg = study.config.with_(threshold_rule="closest", acceptance="distance<", convention="fixed", subtract_best=True)
    rules = Study(cfg, progress=False, run=study.run)  # the same run: benchmarks and arrays
    table = comparison_table(study, dataset, "arcface", "T")
    methods = ["Exit 3", "EX-FIQA-FW"]
    quals = {m: table[m].to_numpy() for m in methods}
    kw = {"dataset": cfg.datasets[dataset].label, "fr_model": "arcface", "limit": cfg.discard_limit, "scale": 1000}
    got = rules.pauc_frame(dataset, "arcface", "T", methods, scale=1000)
    ref = O.pauc_frame(table["similarity"], table["mated"], quals, targets=cfg.fmr_targets, convention="fixed",
                             subtract_best="triangle", **compat_rules("crfiqa"), **kw)
    pd.testing.assert_frame_equal(got, ref)
    assert set(got.threshold_rule) == {"closest"} and set(got.best_curve) == {"triangle"}
    got = rules.pauc_frame(dataset, "arcface", "T", methods, scale=1000, convention="recompute", subtract_best=False,
                           error_type="fmr", targets=(0.1, 0.3))
    ref = O.pauc_frame(table["similarity"], table["mated"], quals, targets=(0.1, 0.3), convention="recompute",
                             error_type="fmr", **compat_rules("crfiqa"), **kw)
    pd.testing.assert_frame_equal(got, ref)
    with pytest.raises(ValueError, match="targets: an FM-EDC"):
        rules.edc(dataset, "arcface", "T", "Exit 3", error_type="fmr")


def test_adience_is_evaluated_without_materialising_its_pairs(tiny_config, study, monkeypatch):
    import exfiqa.readers.benchmark as ds

    assert study.benchmark("adience").all_pairs is not None
    expect = study.pauc_frame("adience", "arcface", "T")
    monkeypatch.setattr(ds, "MATERIALISE_LIMIT", 5)
    fresh = Study(load_config(tiny_config), progress=False)
    with pytest.raises(ValueError, match="not materialised"):
        comparison_table(fresh, "adience", "arcface", "T")
    with pytest.raises(ValueError, match="not materialised"):
        fresh.similarity("adience", "arcface")
    pd.testing.assert_frame_equal(fresh.pauc_frame("adience", "arcface", "T"), expect)


def test_analyses_equal_the_unbounded_computation(study):
    from exfiqa.evaluation import bootstrap
    from exfiqa.evaluation.verification import eer, verification_accuracy
    from exfiqa.report.bootstrap_tables import paired_vs_reference
    from exfiqa.report.frames import pauc_all
    from exfiqa.report.layers import fr_sanity

    cfg = study.config
    got = pauc_all(study, scale=1000)
    ref = []
    for q in cfg.quality_models:
        for fr in cfg.fr_models:
            for ds in cfg.datasets:
                f = _reference_pauc(study, ds, fr, q, cfg.convention, 1000)
                f.insert(0, "quality_model", q)
                ref.append(f)
    exits = {f"Exit {k}": k for k in range(1, 13)}  # the integer exit of each exit row, missing elsewhere
    assert got["exit"].astype(object).where(got["exit"].notna(), None).tolist() == [exits.get(m) for m in got["method"]]
    pd.testing.assert_frame_equal(got.drop(columns="exit"), pd.concat(ref, ignore_index=True))
    for unit in ("subject", "comparison"):  # the bounded engines against paired_bootstrap on the materialised table
        boot = paired_vs_reference(study, "T", "arcface", ["EX-FIQA-F", "EX-FIQA-FW"], "Exit 12", 1e-2, n_boot=40,
                                            unit=unit)
        for row in boot.itertuples():
            ds = next(d for d in cfg.datasets if cfg.datasets[d].label == row.dataset)
            t = comparison_table(study, ds, "arcface", "T")
            subj = None
            if unit == "subject":
                units, name, n_units = study.subjects(ds)
                assert (row.unit, row.n_units) == (name, n_units)
                if hasattr(units, "ua"):
                    subj = np.stack((units.ua, units.ub), axis=1)
                else:  # all-vs-all: the table lists its pairs row-major, as the sample units' pairs
                    comp = study.benchmark(ds).comparisons
                    subj = np.stack((units.u[comp["a"].to_numpy()], units.u[comp["b"].to_numpy()]), axis=1)
            r = bootstrap.paired_bootstrap(t["similarity"], t["mated"], t[row.method], t["Exit 12"], 1e-2, cfg.convention,
                                           cfg.discard_limit, n_boot=40, seed=cfg.seed, subjects=subj)
            assert (row.delta_pauc, row.ci_low, row.ci_high, row.p_better) == pytest.approx(
                (r.difference, r.lower, r.upper, r.frac_a_below_b), abs=1e-15), (unit, row.dataset)
    sanity = fr_sanity(study).set_index(["dataset", "fr_model"])
    for fr in cfg.fr_models:
        for ds in cfg.datasets:
            s, y = study.similarity(ds, fr), study.benchmark(ds).comparisons["mated"].to_numpy(bool)
            row = sanity.loc[(cfg.datasets[ds].label, fr)]
            assert row["accuracy_10fold"] == verification_accuracy(s, y, min(10, len(s))).mean
            assert row["eer"] == eer(s[~y], s[y])
            assert row["comparisons"] == len(s) and row["mated"] == y.sum()


def test_fusion_search_is_the_minimum_over_its_candidates(study):
    from exfiqa.evaluation.edc import edc
    from exfiqa.evaluation.pauc import pauc
    from exfiqa.report.fusion_report import search_fusion_weights

    cfg = study.config
    w, p = search_fusion_weights(study, "T", "arcface", "xqlfw", 1e-3, n_candidates=6, seed=3)
    scores = study.exit_scores("xqlfw", "T").astype(np.float64)
    rng = np.random.default_rng(3)
    cands = [np.full(12, 1 / 12), np.arange(1, 13) / 78, *np.eye(12), *rng.dirichlet(np.full(12, 0.5), size=6)]
    t = comparison_table(study, "xqlfw", "arcface", "T")
    areas = [pauc(edc(t["similarity"], t["mated"], pair(study, "xqlfw", scores @ c), 1e-3, cfg.convention), cfg.discard_limit)
             for c in cands]
    assert p == min(areas)
    np.testing.assert_array_equal(w, cands[int(np.argmin(areas))])
