"""The subject (unit) bootstrap: exact against materialised resamples, the all-vs-all closed form
against the explicit engine, units per benchmark, and interval coverage on clustered data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import oracles as O
import pandas as pd
import pytest

from exfiqa.evaluation import bootstrap as B
from exfiqa.evaluation.edc import edc
from exfiqa.evaluation.pairs import AllPairs
from exfiqa.evaluation.pauc import pauc
from exfiqa.evaluation.scores import ArrayOrder, Comparisons
from exfiqa.evaluation.subjects import (
    ExplicitUnits,
    draw_unit_weights,
    mated_components,
    repeated_images,
)

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_coverage", ROOT / "bench" / "bench_coverage.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_coverage"] = mod
    spec.loader.exec_module(mod)
    return mod


def _brute(s, q, conv, n_boot, seed, subtract_best=False):
    """pAUC of each resample materialised: every comparison repeated as often as the units say."""
    units = ExplicitUnits(s["subjects"])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        w = draw_unit_weights(units.n_units, rng)
        copies = w[units.ua] * w[units.ub]
        same = units.ua == units.ub
        copies[same] = w[units.ua[same]]
        curve = edc(np.repeat(s["sim"], copies), np.repeat(s["mated"], copies), np.repeat(q, copies), 1e-2, conv)
        out.append(pauc(curve, 0.3, subtract_best))
    return np.array(out)


@pytest.fixture(scope="module")
def small():
    return _bench().study(14, np.random.default_rng(3))


@pytest.mark.parametrize("conv,best", [("recompute", False), ("fixed", False), ("fixed", "stepwise"), ("fixed", "triangle")])
def test_unit_bootstrap_equals_materialised_resamples(small, conv, best):
    r = B.bootstrap_pauc(small["sim"], small["mated"], small["qa"], 1e-2, conv, 0.3, 25, 11,
                         subjects=small["subjects"], subtract_best=best)
    np.testing.assert_allclose(r.samples, _brute(small, small["qa"], conv, 25, 11, best), rtol=0, atol=1e-12)
    assert r.estimate == pytest.approx(pauc(edc(small["sim"], small["mated"], small["qa"], 1e-2, conv), 0.3,
                                                    best))


@pytest.mark.parametrize("conv", ["recompute", "fixed"])
def test_paired_unit_bootstrap_is_the_difference_of_the_singles(small, conv):
    args = (1e-2, conv, 0.3, 30, 5)
    p = B.paired_bootstrap(small["sim"], small["mated"], small["qa"], small["qb"], *args, subjects=small["subjects"])
    a = B.bootstrap_pauc(small["sim"], small["mated"], small["qa"], *args, subjects=small["subjects"])
    b = B.bootstrap_pauc(small["sim"], small["mated"], small["qb"], *args, subjects=small["subjects"])
    np.testing.assert_array_equal(p.samples, a.samples - b.samples)
    assert p.difference == pytest.approx(a.estimate - b.estimate)


def test_pairs_as_units_resample_comparisons_with_replacement(small):
    """subjects[c] = (c, c): each comparison's copies are its own draw count (plain resampling)."""
    n = small["sim"].shape[0]
    units = ExplicitUnits(np.repeat(np.arange(n)[:, None], 2, axis=1))
    w = draw_unit_weights(units.n_units, np.random.default_rng(0))
    np.testing.assert_array_equal(units.weights(w, np.arange(n)), w)
    assert units.total(w) == n


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("conv", ["recompute", "fixed"])
def test_all_pairs_closed_form_equals_the_explicit_engine(conv, ties):
    rng = np.random.default_rng(1)
    ident = np.repeat(np.arange(20), 5)
    f = np.repeat(rng.normal(size=(20, 12)), 5, axis=0) * 0.8 + rng.normal(size=(100, 12))
    f = (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)
    q1, q2 = rng.normal(size=100).astype(np.float32), rng.normal(size=100).astype(np.float32)
    if ties:
        q1 = np.round(q1, 1)
    units = ident * 7 % 9  # coarser than identity, scrambled: same-unit non-mated pairs exist
    ap = AllPairs.from_codes(ident)
    a, b, mated = ap.materialise()
    implicit = B.bootstrap_samples(ap.scores(f, 1.0, initial_m=64), [ap.order(q1), ap.order(q2)], 1e-2, conv, 0.3, 30, 2,
                                   subjects=units)
    comp = Comparisons(ap.similarity(f, 1.0), mated)
    orders = [ArrayOrder(O.pair_qualities(ap, q)) for q in (q1, q2)]
    explicit = B.bootstrap_samples(comp, orders, 1e-2, conv, 0.3, 30, 2, subjects=np.stack((units[a], units[b]), 1))
    for x, y in zip(implicit, explicit, strict=True):
        np.testing.assert_array_equal(x, y)


def test_subjects_shape_errors_name_the_parameter(small):
    with pytest.raises(ValueError, match="subjects"):
        B.bootstrap_pauc(small["sim"], small["mated"], small["qa"], subjects=small["subjects"][:-1])
    with pytest.raises(ValueError, match="subjects"):
        B.bootstrap_pauc(small["sim"], small["mated"], small["qa"], subjects=small["subjects"][:, 0])


def test_mated_components_by_hand():
    # templates 0-1-2 joined by mated pairs, 3-4 joined, 5 alone; non-mated pairs join nothing
    a = np.array([0, 1, 3, 0, 2, 5])
    b = np.array([1, 2, 4, 3, 5, 4])
    mated = np.array([True, True, True, False, False, False])
    np.testing.assert_array_equal(mated_components(a, b, mated, 6), [0, 0, 0, 1, 1, 2])


def test_repeated_images_by_hand():
    # pairs (x, y), (x, z), (w, w'): x is in two pairs -> two of three pairs share an image
    r = repeated_images(np.array(["x", "y", "x", "z", "w", "v"]))
    assert r == {"images": 6, "distinct": 5, "shared_pairs": pytest.approx(2 / 3), "max_uses": 2}


def test_study_units_per_benchmark(tiny_config, tiny_world):
    """IJB-C-like: the mated components recover the known subjects (never mixing two);
    identity benchmarks use the identity; .bin sets the pair."""
    from exfiqa.config import load_config
    from exfiqa.study import Study

    study = Study(load_config(tiny_config), progress=False)
    units, name, n_units = study.subjects("ijbc")
    assert name.startswith("subject")
    truth = pd.read_csv(tiny_world / "ground_truth" / "ijbc.csv")
    ident_of_template = truth.groupby("template_id")["identity"].first()
    comp = study.comparison_set("ijbc")
    tids = np.unique(study.benchmark("ijbc").samples["template_id"].to_numpy())
    ia, ib = ident_of_template[tids[comp.a]].to_numpy(), ident_of_template[tids[comp.b]].to_numpy()
    same_unit = units.ua == units.ub
    assert np.all(ia[same_unit] == ib[same_unit])  # a unit never spans two subjects
    assert np.all(same_unit[ia == ib])  # every subject compared with itself is one unit here
    side = pd.DataFrame({"unit": np.concatenate((units.ua, units.ub)), "identity": np.concatenate((ia, ib))})
    assert (side.groupby("unit")["identity"].nunique() == 1).all()  # units are pure (finer, never coarser)
    assert n_units >= side["identity"].nunique()  # templates in no mated comparison are their own units
    _, name, n = study.subjects("lfw")
    assert (name, n) == ("pair", len(study.benchmark("lfw").comparisons))
    _, name, n = study.subjects("adience")
    assert (name, n) == ("subject", study.benchmark("adience").samples["identity"].nunique())


def test_the_fusion_table_says_what_was_resampled(tiny_config):
    from exfiqa.config import load_config
    from exfiqa.report.bootstrap_tables import fusion_bootstrap
    from exfiqa.study import Study

    study = Study(load_config(tiny_config).select(["xqlfw", "lfw"], ["arcface"], ["T"]), progress=False)
    boot = fusion_bootstrap(study, "arcface", 1e-2, 20)
    assert set(boot["unit"]) == {"subject", "pair"}
    assert (boot["n_units"] > 0).all() and (boot["n_boot"] == 20).all()
    plain = fusion_bootstrap(study, "arcface", 1e-2, 20, unit="comparison")
    assert set(plain["unit"]) == {"comparison"}
    np.testing.assert_allclose(plain["delta_pauc"], boot["delta_pauc"])  # same estimate, other interval
    with pytest.raises(ValueError, match="unit"):
        fusion_bootstrap(study, "arcface", 1e-2, 20, unit="image")


def test_coverage_small_version():
    """bench/bench_coverage.py in small (40 studies of 64 subjects, 80 resamples; the bench runs
    200 studies at two sizes and both conventions): the subject bootstrap covers the population
    value about as often as it should, the comparison bootstrap much less often for one pAUC."""
    bc = _bench()
    true_a, true_d = bc.truth("recompute", 400, 2, 0)
    r = bc.coverage(64, "recompute", 40, 80, true_a, true_d, seed=1, progress=False)
    assert r["cover_unit_single"] >= 0.85 and r["cover_unit_paired"] >= 0.85
    assert 0.7 <= r["sd_ratio_unit_single"] <= 1.4
    assert r["sd_ratio_comp_single"] <= 0.65  # comparisons resampled as if independent: far too narrow
    assert r["cover_comp_single"] < r["cover_unit_single"]
