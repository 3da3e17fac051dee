"""Operating points on an EDC (exfiqa.evaluation.operating, `exfiqa operating-point`).

Hand-computed cases on a tiny pairs set, the ``fixed`` EDC they must sit on, the unit bootstrap
against an explicit resampling (second implementation), the CLI on a pairs CSV and on the demo world.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from exfiqa.cli import main
from exfiqa.evaluation.edc import edc
from exfiqa.evaluation.operating import operating_point_pairs
from exfiqa.evaluation.rules import allowed_errors

# 6 mated, 10 non-mated comparisons. At FMR 0.1, k = 1 false match is allowed: the threshold is
# just above the 2nd highest non-mated score, 0.5; a mated score <= 0.5 is a false non-match.
NM = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6]
MATED = [0.3, 0.45, 0.9, 0.5, 0.8, 0.7]  # errors: 0.3, 0.45, 0.5
QA = [0.1, 0.5, 0.2, 0.6, 0.9, 0.95]
QB = [0.9, 0.2, 0.8, 0.7, 0.9, 0.7]  # pair quality (min): 0.1, 0.2, 0.2, 0.6, 0.9, 0.7
# Mated by pair quality: 0.1 (err), 0.2 (err), 0.2 (ok), 0.6 (err), 0.7 (ok), 0.9 (ok). Points
# (discard, FNMR, quality threshold): (0, 3/6, 0.1), (1/6, 2/5, 0.2), (3/6, 1/3, 0.6),
# (4/6, 0, 0.7), (5/6, 0, 0.9); the two comparisons of quality 0.2 go together.


def _pairs(mated_scores=MATED):
    sim = np.array(list(mated_scores) + NM)
    mated = np.array([True] * 6 + [False] * 10)
    qa = np.array(QA + [0.5] * 10)  # non-mated qualities: ignored by the fixed FNM-EDC
    qb = np.array(QB + [0.4] * 10)
    return sim, mated, qa, qb


@pytest.mark.parametrize(("kw", "frac", "fnmr", "q"), [
    ({"discard": 0.0}, 0.0, 0.5, 0.1),
    ({"discard": 0.2}, 1 / 6, 0.4, 0.2),
    ({"discard": 0.49}, 1 / 6, 0.4, 0.2),  # 2/6 is not a point: the tie group of 0.2 goes whole
    ({"discard": 0.5}, 0.5, 1 / 3, 0.6),
    ({"fnmr": 0.45}, 1 / 6, 0.4, 0.2),
    ({"fnmr": 0.35}, 0.5, 1 / 3, 0.6),
    ({"fnmr": 0.01}, 4 / 6, 0.0, 0.7),
])
def test_hand_computed_operating_points(kw, frac, fnmr, q):
    r = operating_point_pairs(*_pairs(), fmr=0.1, n_boot=50, **kw)
    assert r.reached
    assert r.discard_fraction == pytest.approx(frac) and r.fnmr == pytest.approx(fnmr)
    assert r.quality_threshold == pytest.approx(q)
    assert 0.5 < r.comparison_threshold < 0.5 + 1e-12  # next above the 2nd highest non-mated score
    assert (r.n_mated, r.n_nonmated, r.unit, r.n_units) == (6, 10, "comparison", 16)
    assert r.resolved  # 0.1 * 10 non-mated = 1 expected false match


def test_an_unreachable_fnmr_target_is_said_and_the_lowest_fnmr_reported():
    # at FMR 0.01 (k = 0) the threshold is just above 0.6, and the best mated comparison (quality
    # 0.9) now scores 0.55: FNMR by point 4/6, 3/5, 2/3, 1/2, 1 -> the lowest is 1/2 at discard 4/6
    r = operating_point_pairs(*_pairs([0.3, 0.45, 0.9, 0.5, 0.55, 0.7]), fmr=0.01, fnmr=0.1, n_boot=50)
    assert not r.reached and not r.resolved  # 0.01 * 10 < 1
    assert (r.discard_fraction, r.fnmr, r.quality_threshold) == (pytest.approx(4 / 6), 0.5, pytest.approx(0.7))


def test_points_lie_on_the_projects_fixed_edc():
    rng = np.random.default_rng(3)
    n = 600
    mated = rng.random(n) < 0.2
    sim = np.where(mated, rng.normal(0.6, 0.2, n), rng.normal(0.1, 0.1, n)).astype(np.float32)
    qa, qb = np.round(rng.random(n), 2), np.round(rng.random(n), 2)  # many ties
    curve = edc(sim, mated, np.minimum(qa, qb), 0.01, "fixed")
    q_m = np.sort(np.minimum(qa, qb)[mated])
    for d in (0.0, 0.1, 0.33, 0.5):
        r = operating_point_pairs(sim, mated, qa, qb, discard=d, fmr=0.01, n_boot=20)
        i = np.flatnonzero(curve.discard_fraction <= d + 1e-12)[-1]
        assert (r.discard_fraction, r.fnmr) == (curve.discard_fraction[i], curve.error[i])
        assert r.quality_threshold == q_m[int(round(r.discard_fraction * mated.sum()))]
        assert np.mean(np.minimum(qa, qb)[mated] < r.quality_threshold) == pytest.approx(r.discard_fraction)
        assert r.comparison_threshold == curve.thresholds[0]


def _explicit_unit_boot(sim, mated, q, subjects, q_t, fmr, n_boot, seed):
    """Second implementation: resample units, expand every comparison into its copies, recompute."""
    units, codes = np.unique(subjects, return_inverse=True)
    codes = codes.reshape(subjects.shape)
    rng = np.random.default_rng(seed)
    disc, err = [], []
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, units.size, units.size), minlength=units.size)
        a, b = codes[:, 0], codes[:, 1]
        copies = np.where(a == b, w[a], w[a] * w[b])
        nm = np.repeat(sim[~mated], copies[~mated])
        m_sim, m_q = np.repeat(sim[mated], copies[mated]), np.repeat(q[mated], copies[mated])
        keep = m_q >= q_t
        if nm.size == 0 or not keep.any():
            disc.append(np.nan)
            err.append(np.nan)
            continue
        stat = np.sort(nm)[::-1][int(allowed_errors(fmr, nm.size))]
        disc.append(1 - keep.sum() / keep.size)
        err.append(np.mean(m_sim[keep] <= stat))
    return np.array(disc), np.array(err)


def test_the_unit_bootstrap_matches_explicit_resampling_and_is_reproducible():
    rng = np.random.default_rng(7)
    n_subj, per = 12, 3
    subj = np.repeat(np.arange(n_subj), per)
    qs = rng.random(subj.size)
    ia, ib = np.triu_indices(subj.size, 1)
    mated = subj[ia] == subj[ib]
    sim = np.where(mated, rng.normal(0.5, 0.2, ia.size), rng.normal(0.0, 0.15, ia.size))
    subjects = np.stack((subj[ia], subj[ib]), axis=1) + 100  # any integer labels
    kw = {"discard": 0.25, "fmr": 0.01, "n_boot": 300, "seed": 11}
    r = operating_point_pairs(sim, mated, qs[ia], qs[ib], subjects, **kw)
    assert r == operating_point_pairs(sim, mated, qs[ia], qs[ib], subjects, **kw)  # a seed reproduces it
    assert r != operating_point_pairs(sim, mated, qs[ia], qs[ib], subjects, **{**kw, "seed": 12})
    assert (r.unit, r.n_units) == ("subject", n_subj)
    d, e = _explicit_unit_boot(sim, mated, np.minimum(qs[ia], qs[ib]), subjects, r.quality_threshold, 0.01, 300, 11)
    ok = np.isfinite(e)
    assert r.n_valid == ok.sum()
    np.testing.assert_allclose(r.discard_interval, np.quantile(d[ok], [0.025, 0.975]), rtol=1e-12)
    np.testing.assert_allclose(r.fnmr_interval, np.quantile(e[ok], [0.025, 0.975]), rtol=1e-12)
    assert r.discard_interval[0] <= r.discard_fraction <= r.discard_interval[1]
    assert r.fnmr_interval[0] <= r.fnmr <= r.fnmr_interval[1]
    assert r.fnmr_interval[1] > r.fnmr_interval[0]


def test_bad_requests_are_errors():
    with pytest.raises(ValueError, match="exactly one of discard= and fnmr="):
        operating_point_pairs(*_pairs(), discard=0.1, fnmr=0.1)
    with pytest.raises(ValueError, match=r"discard: a fraction in \[0, 1\)"):
        operating_point_pairs(*_pairs(), discard=1.0)
    with pytest.raises(ValueError, match="threshold_rule"):
        operating_point_pairs(*_pairs(), discard=0.1, threshold_rule="closest")


def test_cli_on_a_pairs_csv(tmp_path, capsys):
    sim, mated, qa, qb = _pairs()
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"sample_a": range(16), "score": sim, "mated": mated.astype(int), "quality_a": qa,
                  "quality_b": qb}).to_csv(path, index=False)
    assert main(["operating-point", "--pairs", str(path), "--discard", "0.5", "--fmr", "0.1", "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    assert "6 mated, 10 non-mated comparisons" in out
    assert "keep pair quality >= 0.6 " in out and "discard 0.5000 [95% CI" in out and "FNMR 0.3333 [95% CI" in out
    assert "units (comparison)" in out
    assert main(["operating-point", "--pairs", str(path), "--fnmr", "0.001", "--fmr", "0.01", "--n-boot", "20"]) == 0
    # with subjects, and an FNMR target that cannot be reached: exit 1, said
    table = pd.read_csv(path).assign(subject_a=[f"s{i % 5}" for i in range(16)], subject_b="s9",
                                     score=list(_pairs([0.3, 0.45, 0.9, 0.5, 0.55, 0.7])[0]))
    table.to_csv(path, index=False)
    capsys.readouterr()
    assert main(["operating-point", "--pairs", str(path), "--fnmr", "0.1", "--fmr", "0.01", "--n-boot", "20"]) == 1
    out = capsys.readouterr().out
    assert "CANNOT BE REACHED" in out and "units (subject)" in out and "keep pair quality >= 0.7 " in out
    assert "FMR 0.01 is not resolvable on 10 non-mated comparisons" in out


def test_cli_pairs_csv_errors_name_the_file_and_column(tmp_path, capsys):
    path = tmp_path / "p.csv"
    pd.DataFrame({"score": [0.1], "mated": [1], "quality_a": [0.2]}).to_csv(path, index=False)
    assert main(["operating-point", "--pairs", str(path), "--discard", "0.1"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "missing column(s) ['quality_b']" in err
    pd.DataFrame({"score": [0.1], "mated": ["maybe"], "quality_a": [0.2], "quality_b": [0.3]}).to_csv(path, index=False)
    assert main(["operating-point", "--pairs", str(path), "--discard", "0.1"]) == 2
    assert "column 'mated' must be 1/0 or true/false, got 'maybe'" in capsys.readouterr().err
    assert main(["operating-point", "--discard", "0.1"]) == 2
    assert "--pairs PAIRS.csv, or --config CONFIG with --dataset NAME" in capsys.readouterr().err


def test_cli_on_the_demo_world_uses_the_study_and_its_subjects(tiny_config, capsys):
    from exfiqa.config import load_config
    from exfiqa.evaluation.operating import operating_point
    from exfiqa.study import Study

    argv = ["operating-point", "--config", str(tiny_config), "--dataset", "adience", "--discard", "0.3", "--n-boot", "50"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    study = Study(load_config(tiny_config), progress=False)
    units, unit, n_units = study.subjects("adience")
    fr, q = next(iter(study.config.fr_models)), next(iter(study.config.quality_models))  # the CLI's defaults
    assert f"FR {fr}, quality {q} EX-FIQA-FW" in out
    r = operating_point(study.scores("adience", fr), study.ordering("adience", q, "EX-FIQA-FW"), units,
                        discard=0.3, n_boot=50, unit=unit, **study.rules())
    assert f"keep pair quality >= {r.quality_threshold:.9g} " in out
    assert f"discard {r.discard_fraction:.4f} [95% CI {r.discard_interval[0]:.4f}, {r.discard_interval[1]:.4f}]" in out
    assert f"of 50 resamples of {n_units} units (subject)" in out
    assert main([*argv[:-4], "--method", "Nope", "--discard", "0.3"]) == 2
    assert "unknown quality method 'Nope'" in capsys.readouterr().err
