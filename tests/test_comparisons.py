"""Bounded comparison sets against the materialised computation (exfiqa.evaluation.pairs)."""

from __future__ import annotations

import itertools

import numpy as np
import oracles as O
import pytest

from exfiqa.evaluation import bootstrap as B
from exfiqa.evaluation import pairs as C
from exfiqa.evaluation import scores as SC
from exfiqa.evaluation.edc import edc_curves, edc_many
from exfiqa.evaluation.rules import level_starts
from exfiqa.evaluation.scores import ArrayOrder, Comparisons
from exfiqa.evaluation.verification import eer, fnmr_at_fmr, verification_accuracy
from exfiqa.readers import benchmark
from exfiqa.readers import folders as ds

TARGETS = (0.01, 0.05, 0.2)
#: Every threshold rule x acceptance x error type (FM-EDC targets are FNMR targets).
RULES = [
    {"threshold_rule": r, "acceptance": a, "error_type": e}
    for r, a, e in itertools.product(("at_most", "closest"), ("similarity>=", "distance<"), ("fnmr", "fmr"))
]
RULE_IDS = ["-".join(r.values()) for r in RULES]


def assert_same_curves(got: dict, ref: dict) -> None:
    assert got.keys() == ref.keys()
    for t in ref:
        for field in ("discard_fraction", "error", "thresholds"):
            np.testing.assert_array_equal(getattr(got[t], field), getattr(ref[t], field), err_msg=f"{t} {field}")
        for field in ("n_mated", "n_nonmated", "convention", "error_type", "threshold_rule", "acceptance"):
            assert getattr(got[t], field) == getattr(ref[t], field), field


def stable_ranks(q: np.ndarray) -> np.ndarray:
    order = np.argsort(q, kind="stable")
    pos = np.empty(q.size, np.int64)
    pos[order] = np.arange(q.size)
    return pos


def grid_features(rng, n, d=8):
    """Features on a 1/4 grid: every dot product is exact in float32 (and many tie)."""
    return rng.integers(-2, 3, size=(n, d)).astype(np.float32) / 4


def random_groups(rng, max_groups=30, max_size=6):
    sizes = rng.integers(1, max_size + 1, size=rng.integers(4, max_groups))
    return np.repeat(np.arange(sizes.size), sizes)


# ----------------------------------------------------------------------------- similarity


@pytest.mark.parametrize("tile, dense", [(2048, 1 / 32), (4, 0.0), (4, 2.0), (3, 0.3)])
def test_pair_similarity_tiles_and_gathers_agree_with_float64(monkeypatch, tile, dense):
    monkeypatch.setattr(C, "TILE", tile)
    monkeypatch.setattr(C, "DENSE", dense)
    monkeypatch.setattr(C, "CHUNK", 7)
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 16)).astype(np.float32)
    a = rng.integers(0, 12, 300)  # a dense block (12 x 28) and scattered pairs
    b = rng.integers(12, 40, 300)
    got = C.pair_similarity(f, a, b, scale=0.5)
    ref = 0.5 * np.einsum("ij,ij->i", f[a].astype(np.float64), f[b].astype(np.float64))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(f).sum(1).max() ** 2)
    g = grid_features(rng, 40)
    np.testing.assert_array_equal(C.pair_similarity(g, a, b), (g[a] * g[b]).sum(1))  # exact on the grid


def test_cosine_similarity_of_normalised_rows():
    """The package's one row-wise cosine: the dot product of already L2-normalised rows (float64
    reference by angle), in the inputs' dtype, and the gathered path of :func:`pair_similarity`."""
    rng = np.random.default_rng(1)
    theta = rng.uniform(0, np.pi, 200)
    u = np.stack((np.cos(theta), np.sin(theta)), axis=1)  # unit rows at angle theta to (1, 0)
    e1 = np.tile([1.0, 0.0], (200, 1))
    np.testing.assert_allclose(C.cosine_similarity(u, e1), np.cos(theta), rtol=0, atol=1e-15)
    f = rng.normal(size=(300, 16)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    a, b = rng.integers(0, 300, 500), rng.integers(0, 300, 500)
    cos = C.cosine_similarity(f[a], f[b])
    assert cos.dtype == np.float32
    ref = (f[a].astype(np.float64) * f[b].astype(np.float64)).sum(1)
    np.testing.assert_allclose(cos, ref, rtol=0, atol=1e-6)
    assert np.all(np.abs(cos) <= 1 + 1e-6)
    flip = np.concatenate((f, f[::-1]), axis=1)  # two unit halves: norm sqrt(2), cosine = dot / 2
    halves = (ref + (f[::-1][a].astype(np.float64) * f[::-1][b].astype(np.float64)).sum(1)) / 2
    np.testing.assert_allclose(C.cosine_similarity(flip[a], flip[b]) / 2, halves, rtol=0, atol=1e-6)
    g = grid_features(rng, 300, d=16)
    np.testing.assert_array_equal(C.cosine_similarity(g[a], g[b]), (g[a] * g[b]).sum(1))  # exact on the grid
    dense_off = C._TilePlan.build(a, b)
    dense_off.bounds, dense_off.sparse = [], np.arange(a.size)  # every comparison gathered
    np.testing.assert_array_equal(C.pair_similarity(f, a, b, 0.5, dense_off), cos * np.float32(0.5))
    with pytest.raises(ValueError, match="cosine_similarity: expected two \\(N, D\\) arrays"):
        C.cosine_similarity(f[:3], f[:4])
    with pytest.raises(ValueError, match="cosine_similarity"):
        C.cosine_similarity(f[0], f[1])


def test_pair_list_rejects_bad_indices_and_features():
    with pytest.raises(ValueError, match="side b indexes outside"):
        C.PairList(np.array([0]), np.array([5]), np.array([True]), 3)
    pl = C.PairList(np.array([0, 1]), np.array([1, 2]), np.array([True, False]), 3)
    with pytest.raises(ValueError, match=r"features: expected shape \(3, D\)"):
        pl.similarity(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN or inf"):
        pl.similarity(np.full((3, 2), np.nan))


# ----------------------------------------------------------------------------- explicit pairs


@pytest.mark.parametrize("seed", range(6))
def test_min_pair_order_equals_the_stable_sort_of_pair_qualities(seed):
    rng = np.random.default_rng(seed)
    n_sides, n = 50, 700
    a, b = rng.integers(0, n_sides, n), rng.integers(0, n_sides, n)
    v = rng.integers(0, 6 if seed % 2 else 1000, n_sides).astype(np.float32)  # heavy ties or few
    if seed == 5:
        v[::3] = -0.0  # -0.0 and 0.0 are one value
        v[1::3] = 0.0
    pl = C.PairList(a, b, rng.random(n) < 0.2, n_sides)
    order = pl.order(v)
    q = np.minimum(v[a], v[b])
    pos = stable_ranks(q)
    refs = np.arange(n)
    np.testing.assert_array_equal(order.ranks(refs), pos)
    np.testing.assert_array_equal(order.levels(refs), np.searchsorted(level_starts(n), pos, side="right") - 1)
    np.testing.assert_array_equal(order.quality(refs), q)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("convention", ["fixed", "recompute"])
def test_pair_list_curves_identical_to_materialised(seed, convention):
    rng = np.random.default_rng(seed)
    n_sides, n = 60, 2000
    f = grid_features(rng, n_sides) if seed % 2 else rng.normal(size=(n_sides, 8)).astype(np.float32)
    a, b = rng.integers(0, n_sides, n), rng.integers(0, n_sides, n)
    mated = rng.random(n) < 0.15
    v = rng.integers(0, 40, n_sides).astype(np.float32)
    pl = C.PairList(a, b, mated, n_sides)
    scores = pl.scores(f, 0.5)
    ref = edc_many(scores.sim, mated, O.pair_qualities(pl, v), TARGETS, convention)
    assert_same_curves(edc_curves(scores, pl.order(v), TARGETS, convention), ref)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("convention", ["fixed", "recompute"])
@pytest.mark.parametrize("rules", RULES, ids=RULE_IDS)
def test_pair_list_rules_identical_to_materialised(seed, convention, rules, monkeypatch):
    """Every rule and error type through the bounded path equals the small-set functions."""
    monkeypatch.setattr(SC, "MIN_CANDIDATES", 1)  # few candidates: the growth paths run
    rng = np.random.default_rng(10 + seed)
    n_sides, n = 50, 1500
    f = grid_features(rng, n_sides) if seed != 1 else rng.normal(size=(n_sides, 8)).astype(np.float32)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-3)  # cosines in [-1, 1] (distance<)
    a, b = rng.integers(0, n_sides, n), rng.integers(0, n_sides, n)
    mated = rng.random(n) < 0.2
    v = rng.integers(0, 12, n_sides).astype(np.float32)
    if seed == 2:  # high quality where non-mated scores are low: candidates run out
        v = -np.asarray(f.sum(1), np.float32)
    pl = C.PairList(a, b, mated, n_sides)
    scores = pl.scores(f)
    ref = edc_many(scores.sim, mated, O.pair_qualities(pl, v), TARGETS, convention, **rules)
    assert_same_curves(edc_curves(scores, pl.order(v), TARGETS, convention, **rules), ref)


def test_orders_count_each_pair_quality():
    """value_counts (the FM-EDC's tie groups) against np.unique of the materialised pair qualities."""
    rng = np.random.default_rng(4)
    n_sides = 40
    v = rng.integers(0, 9, n_sides).astype(np.float32)
    a, b = rng.integers(0, n_sides, 700), rng.integers(0, n_sides, 700)
    pl = C.PairList(a, b, rng.random(700) < 0.3, n_sides)
    ap = C.AllPairs.from_codes(random_groups(rng))
    w = rng.integers(0, 7, ap.n_samples).astype(np.float32)
    for (values, counts), q in ((pl.order(v).value_counts(), O.pair_qualities(pl, v)),
                                (ap.order(w).value_counts(), O.pair_qualities(ap, w))):
        uniq, n = np.unique(q, return_counts=True)
        np.testing.assert_array_equal(values, uniq)
        np.testing.assert_array_equal(counts, n)


# ----------------------------------------------------------------------------- all-vs-all


@pytest.mark.parametrize("sizes", [[1], [2, 1, 4, 3], [5], [1, 1, 1], [3, 7, 1, 2, 6]])
def test_all_pairs_structure_matches_the_reader(sizes):
    groups = np.repeat(np.arange(len(sizes)), sizes)
    ap = C.AllPairs.from_codes(groups)
    a, b, mated = ap.materialise()
    brute = [(x, y, groups[x] == groups[y]) for x, y in itertools.combinations(range(groups.size), 2)]
    assert list(zip(a.tolist(), b.tolist(), mated.tolist(), strict=True)) == brute
    assert a.dtype == b.dtype == np.int32 and mated.dtype == bool
    assert (ap.n, ap.n_m) == (len(a), int(mated.sum()))
    np.testing.assert_array_equal(ap.position(a, b), np.arange(len(a)))
    i, j = ap.mated_pairs()
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(x, y) for x, y, m in zip(a, b, mated, strict=True) if m]
    with pytest.raises(ValueError, match="sorted"):
        C.AllPairs.from_codes(np.array([1, 0]))


@pytest.mark.parametrize("sizes", [[1], [2, 1, 4, 3], [5], [1, 1, 1], [3, 7, 1, 2, 6]])
def test_all_pairs_materialise_subsamples_the_nonmated(sizes):
    """``max_nonmated``: every mated pair and a seeded uniform subset of the non-mated ones, sorted."""
    groups = np.repeat(np.arange(len(sizes)), sizes)
    ap = C.AllPairs.from_codes(groups)
    a, b, mated = ap.materialise()
    full = list(zip(a.tolist(), b.tolist(), strict=True))
    mated_set = {p for p, m in zip(full, mated, strict=True) if m}
    non = {p for p, m in zip(full, mated, strict=True) if not m}
    for k in (0, len(non) // 2, len(non), len(non) + 3):
        sa, sb, sm = ap.materialise(k, seed=3)
        pairs = list(zip(sa.tolist(), sb.tolist(), strict=True))
        assert pairs == sorted(set(pairs)) and sa.dtype == np.int32
        assert {p for p, m in zip(pairs, sm, strict=True) if m} == mated_set
        sub = {p for p, m in zip(pairs, sm, strict=True) if not m}
        assert len(sub) == min(k, len(non)) and sub <= non
        again = ap.materialise(k, seed=3)
        assert all(np.array_equal(x, y) for x, y in zip((sa, sb, sm), again, strict=True))
    if non:
        with pytest.raises(ValueError, match="max_nonmated"):
            ap.materialise(-1)


@pytest.mark.parametrize("seed", range(8))
def test_all_pairs_order_ranks_and_levels_are_those_of_the_stable_sort(seed):
    rng = np.random.default_rng(seed)
    groups = random_groups(rng)
    ap = C.AllPairs.from_codes(groups)
    v = rng.integers(0, 3 if seed % 3 == 0 else 500, groups.size).astype(np.float32)
    a, b, _ = ap.materialise()
    refs = np.stack((a, b), axis=1)
    q = np.minimum(v[a], v[b])
    pos = stable_ranks(q)
    order = ap.order(v)
    np.testing.assert_array_equal(order.ranks(refs), pos)
    np.testing.assert_array_equal(order.levels(refs), np.searchsorted(level_starts(q.size), pos, side="right") - 1)
    np.testing.assert_array_equal(order.quality(refs), q)


def test_all_pairs_similarity_is_the_upper_triangle_of_the_gram_matrix():
    rng = np.random.default_rng(1)
    groups = random_groups(rng)
    ap = C.AllPairs.from_codes(groups)
    f = grid_features(rng, groups.size)
    a, b, _ = ap.materialise()
    np.testing.assert_array_equal(ap.similarity(f, 0.5), 0.5 * (f[a] * f[b]).sum(1))


@pytest.mark.parametrize("m", [1, 5, 37, 10**6])
def test_all_pairs_top_candidates_with_ties(m, monkeypatch):
    monkeypatch.setattr(C, "GRAM_ROWS", 3)  # many row blocks, pruning across them
    rng = np.random.default_rng(2)
    groups = random_groups(rng)
    ap = C.AllPairs.from_codes(groups)
    f = grid_features(rng, groups.size, d=3)  # few distinct similarities: ties at every cutoff
    sim = ap.similarity(f)
    a, b, mated = ap.materialise()
    scores = ap.scores(f, initial_m=1)
    vals, refs = scores.top_nonmated(m)
    neg = np.sort(sim[~mated])[::-1]
    k = min(m, neg.size)
    assert vals.size >= k and np.all(vals[:-1] >= vals[1:])
    assert vals[-1] == neg[k - 1] and np.count_nonzero(neg >= vals[-1]) == vals.size  # all ties kept
    pos = ap.position(refs[:, 0], refs[:, 1])
    np.testing.assert_array_equal(sim[pos], vals)
    assert not mated[pos].any()
    ref = Comparisons(sim, mated).top_nonmated(m)
    np.testing.assert_array_equal(vals, ref[0])
    np.testing.assert_array_equal(pos, ref[1])  # the same order among ties: comparison position
    np.testing.assert_array_equal(scores.sim_m, sim[mated])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("convention", ["fixed", "recompute"])
def test_all_pairs_curves_identical_to_materialised(seed, convention, monkeypatch):
    monkeypatch.setattr(SC, "MIN_CANDIDATES", 1)  # few candidates: the growth paths run
    rng = np.random.default_rng(seed)
    groups = random_groups(rng, max_groups=45)
    ap = C.AllPairs.from_codes(groups)
    f = grid_features(rng, groups.size) if seed % 2 else rng.normal(size=(groups.size, 6)).astype(np.float32)
    a, b, mated = ap.materialise()
    sim = ap.similarity(f, 0.5)
    v = rng.integers(0, 4 if seed < 3 else 10**6, groups.size).astype(np.float32)
    if seed == 5:  # high quality where non-mated scores are low: candidates run out
        v = -np.asarray(f.sum(1), np.float32)
    scores = ap.scores(f, 0.5, initial_m=1)
    ref = edc_many(sim, mated, np.minimum(v[a], v[b]), TARGETS, convention)
    assert_same_curves(edc_curves(scores, ap.order(v), TARGETS, convention), ref)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("convention", ["fixed", "recompute"])
@pytest.mark.parametrize("rules", RULES, ids=RULE_IDS)
def test_all_pairs_rules_identical_to_materialised(seed, convention, rules, monkeypatch):
    monkeypatch.setattr(SC, "MIN_CANDIDATES", 1)
    rng = np.random.default_rng(20 + seed)
    groups = random_groups(rng, max_groups=40)
    ap = C.AllPairs.from_codes(groups)
    f = grid_features(rng, groups.size) if seed else rng.normal(size=(groups.size, 6)).astype(np.float32)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-3)
    a, b, mated = ap.materialise()
    sim = ap.similarity(f)
    v = rng.integers(0, 5, groups.size).astype(np.float32) if seed else -np.asarray(f.sum(1), np.float32)
    ref = edc_many(sim, mated, np.minimum(v[a], v[b]), TARGETS, convention, **rules)
    assert_same_curves(edc_curves(ap.scores(f, initial_m=1), ap.order(v), TARGETS, convention, **rules), ref)


@pytest.mark.parametrize("convention", ["fixed", "recompute"])
def test_all_pairs_bootstrap_identical_to_materialised(convention):
    rng = np.random.default_rng(3)
    groups = random_groups(rng, max_groups=40)
    ap = C.AllPairs.from_codes(groups)
    f = rng.normal(size=(groups.size, 6)).astype(np.float32)
    a, b, mated = ap.materialise()
    sim = ap.similarity(f)
    v1 = rng.integers(0, 30, groups.size).astype(np.float32)
    v2 = v1 + rng.integers(0, 3, groups.size)
    got = B.bootstrap_samples(ap.scores(f), [ap.order(v1), ap.order(v2)], 0.05, convention, n_boot=40, seed=7)
    comp = Comparisons(sim, mated)
    orders = [ArrayOrder(np.minimum(v[a], v[b])) for v in (v1, v2)]
    ref = B.bootstrap_samples(comp, orders, 0.05, convention, n_boot=40, seed=7)
    for x, y in zip(got, ref, strict=True):
        np.testing.assert_array_equal(x, y)
    paired = B.paired_bootstrap(sim, mated, *(np.minimum(v[a], v[b]) for v in (v1, v2)), 0.05, convention, n_boot=40, seed=7)
    np.testing.assert_allclose(paired.samples, ref[0] - ref[1])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("bits", [3, 7, 16])
def test_all_pairs_sanity_equals_the_materialised_metrics(seed, bits):
    rng = np.random.default_rng(seed)
    groups = random_groups(rng, max_groups=35, max_size=7)
    ap = C.AllPairs.from_codes(groups)
    f = grid_features(rng, groups.size) if seed % 2 else rng.normal(size=(groups.size, 8)).astype(np.float32)
    f[groups % 3 == 0] += 0.4
    a, b, mated = ap.materialise()
    sim = ap.similarity(f, 0.5)
    n_folds = min(10, sim.size)
    got = C.all_pairs_sanity(ap.scores(f, 0.5), (0.01, 0.1), n_folds=n_folds, bits=bits)
    acc = verification_accuracy(sim, mated, n_folds)
    np.testing.assert_array_equal(got["folds"], acc.folds)
    assert got["accuracy_10fold"] == acc.mean
    assert got["eer"] == eer(sim[~mated], sim[mated])
    np.testing.assert_array_equal(got["fnmr"], fnmr_at_fmr(sim[~mated], sim[mated], (0.01, 0.1)))


def test_release_pages_keeps_a_mapped_array_readable(tmp_path):
    x = np.arange(50_000, dtype=np.float32).reshape(5000, 10)
    np.save(tmp_path / "x.npy", x)
    mapped = np.asarray(np.load(tmp_path / "x.npy", mmap_mode="r"))
    assert mapped.sum() == x.sum()
    assert C.release_pages(mapped, 100, 4000) and C.release_pages(mapped)
    np.testing.assert_array_equal(mapped, x)  # read back from the file
    assert not C.release_pages(x)  # not a file mapping: nothing to do


def test_benchmark_keeps_all_pairs_implicit_and_materialises_small_ones(tmp_path, monkeypatch):
    faces = [np.full((112, 112, 3), k * 20, np.uint8) for k in range(5)]
    ds.write_identity_folders(tmp_path, {"x": faces[:3], "y": faces[3:]}, fmt="png")
    bench = ds.read_adience(tmp_path)
    assert bench.all_pairs is not None and bench.n_comparisons == 10
    expect = [(i, j) for i, j in itertools.combinations(range(5), 2)]
    assert list(zip(bench.comparisons["a"], bench.comparisons["b"], strict=True)) == expect
    monkeypatch.setattr(benchmark, "MATERIALISE_LIMIT", 9)
    fresh = ds.read_adience(tmp_path)
    with pytest.raises(ValueError, match="not materialised.*max_nonmated"):
        _ = fresh.comparisons
    assert ds.read_adience(tmp_path, max_nonmated=2).all_pairs is None
