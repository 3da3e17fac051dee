"""EX-FIQA-DC on a Study: the pseudo-label against a direct computation on every benchmark kind,
leave-one-dataset-out never reading the evaluated dataset, and the notebook's tables."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from exfiqa.config import ConfigError, load_config
from exfiqa.evaluation.edc import edc
from exfiqa.evaluation.fusion import DC_NAME, chosen_mean, depth_weights
from exfiqa.evaluation.pauc import pauc
from exfiqa.report.fusion_report import (
    calibration_datasets,
    calibration_set,
    choose_for,
    chosen_exits,
    chosen_exits_comparison,
    evaluated_datasets,
    mated_similarity_label,
)
from exfiqa.study import Study


@pytest.fixture(scope="module")
def study(tiny_config):
    cfg = load_config(tiny_config).with_(convention="fixed", discard_limit=0.25, fmr_targets=[0.02, 0.002], seed=3, pauc_scale=100.0)
    return Study(cfg.select(fr_models=["arcface"]), progress=False)


def _direct_label(study: Study, dataset: str) -> np.ndarray:
    """Mean cosine of each side's mated comparisons, from the embeddings, by a plain loop."""
    bench = study.benchmark(dataset)
    emb = np.asarray(study.embeddings(dataset, "arcface"), dtype=np.float64)
    comp = bench.comparisons
    if bench.level == "template":  # mean within media, sum over media, L2 (the group's protocol)
        s = bench.samples
        tids = np.unique(s["template_id"].to_numpy())
        feats = []
        for t in tids:
            rows = s.index[s["template_id"] == t].to_numpy()
            media = s.loc[rows, "media_id"].to_numpy()
            f = sum(emb[rows[media == m]].mean(axis=0) for m in np.unique(media))
            feats.append(f / np.linalg.norm(f))
        feats = np.array(feats)
        side = {t: i for i, t in enumerate(tids)}
        a, b = [side[t] for t in comp["a"]], [side[t] for t in comp["b"]]
    else:
        feats = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        a, b = comp["a"].to_numpy(), comp["b"].to_numpy()
    sums, counts = np.zeros(len(feats)), np.zeros(len(feats))
    for i, j, m in zip(a, b, comp["mated"].to_numpy(bool), strict=True):
        if m:
            sim = float(feats[i] @ feats[j])
            sums[[i, j]] += sim
            counts[[i, j]] += 1
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@pytest.mark.parametrize("dataset", ["lfw", "xqlfw", "adience", "ijbc"])
def test_mated_similarity_label_on_every_benchmark_kind(study, dataset):
    got = mated_similarity_label(study, dataset, "arcface")
    expect = _direct_label(study, dataset)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expect))
    np.testing.assert_allclose(got[~np.isnan(got)], expect[~np.isnan(expect)], rtol=1e-5, atol=1e-6)
    cal = calibration_set(study, dataset, "T", "arcface")
    side_exit12 = study._side_values(dataset, np.asarray(study.exit_scores(dataset, "T"))[:, -1])
    np.testing.assert_allclose(cal.side_values(cal.scores[:, -1]), side_exit12)  # the sides evaluation uses


def test_calibration_datasets_leave_the_evaluated_one_out():
    runs = ["a", "b", "c"]
    assert calibration_datasets(runs, "b") == ["a", "c"]
    assert calibration_datasets(runs, "a", ["c"]) == ["c"]
    assert evaluated_datasets(runs, ["c"]) == ["a", "b"]
    with pytest.raises(ConfigError, match="is a calibration dataset"):
        calibration_datasets(runs, "c", ["c"])
    with pytest.raises(ConfigError, match=r"calibrate_on \['z'\]"):
        calibration_datasets(runs, "a", ["z"])
    with pytest.raises(ConfigError, match="needs a second dataset"):
        calibration_datasets(["a"], "a")
    with pytest.raises(ConfigError, match="leaves no dataset"):
        evaluated_datasets(["a"], ["a"])


class _Spy:
    """Records the dataset of every per-dataset call a Study receives."""

    METHODS = ("benchmark", "exit_scores", "embeddings", "scores", "comparison_set", "features", "order_of")

    def __init__(self, study: Study, monkeypatch) -> None:
        self.seen: list[str] = []
        for name in self.METHODS:
            original = getattr(study, name)

            def spy(dataset, *args, _original=original, **kwargs):
                self.seen.append(dataset)
                return _original(dataset, *args, **kwargs)

            monkeypatch.setattr(study, name, spy)


def test_leave_one_out_never_reads_the_evaluated_dataset(tiny_config, monkeypatch):
    fresh = Study(load_config(tiny_config).select(fr_models=["arcface"]), progress=False)
    spy = _Spy(fresh, monkeypatch)
    choice = choose_for(fresh, "T", "arcface", "ijbc")
    others = [d for d in fresh.config.datasets if d != "ijbc"]
    assert "ijbc" not in spy.seen and set(spy.seen) == set(others)
    assert choice.calibration == tuple(others)
    spy.seen.clear()
    named = choose_for(fresh, "T", "arcface", "lfw", calibrate_on=["adience"])
    assert set(spy.seen) == {"adience"} and named.calibration == ("adience",)
    # the choice equals choose_exits on the other datasets' own calibration sets
    from exfiqa.evaluation.fusion import choose_exits

    again = choose_exits([calibration_set(fresh, d, "T", "arcface") for d in others])
    assert again == choice


def test_chosen_exits_table_and_comparison(study):
    cfg = study.config
    chosen = chosen_exits(study, "arcface")
    sel = chosen.selection
    labels = {d: s.label for d, s in cfg.datasets.items()}
    assert len(sel) == len(cfg.quality_models) * len(cfg.datasets)
    for r in sel.itertuples():
        cal = r.calibrated_on.split("; ")
        assert r.dataset not in cal and sorted(cal) == sorted(v for v in labels.values() if v != r.dataset)
        c = chosen.choices[(r.quality_model, next(d for d, v in labels.items() if v == r.dataset))]
        assert r.chosen_exits == ", ".join(map(str, c.chosen)) and r.best_single_exit == c.ranking[0]
    learned = {q: depth_weights(12)[::-1] for q in cfg.quality_models}  # any fixed weights will do
    out = chosen_exits_comparison(study, chosen, 0.002, n_boot=20, learned=learned, learn_on="lfw")
    tidy = out.tidy.set_index(["quality_model", "dataset", "method"])["pauc"]
    # every cell from first principles: cosine of embeddings, min-paired values, edc
    bench = study.benchmark("lfw")
    a, b = bench.comparisons["a"].to_numpy(), bench.comparisons["b"].to_numpy()
    emb = np.asarray(study.embeddings("lfw", "arcface"), dtype=np.float64)
    sim = np.einsum("ij,ij->i", emb[a], emb[b]) / np.linalg.norm(emb[a], axis=1) / np.linalg.norm(emb[b], axis=1)
    scores = np.asarray(study.exit_scores("lfw", "T"), dtype=np.float64)

    def direct(values: np.ndarray) -> float:
        v = np.asarray(values, dtype=np.float32)
        curve = edc(sim, bench.comparisons["mated"].to_numpy(bool), np.minimum(v[a], v[b]), 0.002, cfg.convention)
        return pauc(curve, cfg.discard_limit) * cfg.pauc_scale

    exits = chosen.choices[("T", "lfw")].chosen
    for m, values in ((DC_NAME, chosen_mean(scores, exits)), ("EX-FIQA-FW", scores @ depth_weights(12)),
                      ("learned", scores @ learned["T"]), ("Exit 12", scores[:, -1])):
        assert tidy[("T", labels["lfw"], m)] == pytest.approx(direct(values), rel=1e-6, abs=1e-9)
    boot = out.bootstrap
    assert set(boot["reference"]) == {"EX-FIQA-F", "EX-FIQA-FW", "learned", "Exit 12"} and set(boot["method"]) == {DC_NAME}
    for r in boot.itertuples():
        assert r.delta_pauc == pytest.approx(tidy[(r.quality_model, r.dataset, DC_NAME)] - tidy[(r.quality_model, r.dataset, r.reference)])
        assert r.ci_low <= r.ci_high and r.reference_fitted_here == (r.reference == "learned" and r.dataset == labels["lfw"])
    wide = out.wide.set_index(["quality_model", "method"])
    assert wide.loc[("C", DC_NAME), "mean"] == pytest.approx(np.mean([tidy[("C", v, DC_NAME)] for v in labels.values()]))


def test_chosen_exits_tables_are_byte_identical_on_a_rerun(tiny_config):
    def run() -> list[bytes]:
        cfg = load_config(tiny_config).with_(seed=5)
        fresh = Study(cfg.select(fr_models=["arcface"], quality_models=["C"]), progress=False)
        chosen = chosen_exits(fresh, "arcface", calibrate_on=["cfp_fp", "adience"])
        out = chosen_exits_comparison(fresh, chosen, 0.001, 30, {"C": np.full(12, 1 / 12)}, "lfw")
        assert "CFP-FP-like" not in set(out.wide.columns) and len(chosen.selection) == 3
        return [f.to_csv(index=False).encode() for f in (chosen.selection, out.wide, out.bootstrap)]

    first = run()
    assert run() == first
    assert pd.read_csv(io.BytesIO(first[0]))["calibrated_on"].eq("CFP-FP-like; Adience-like").all()
