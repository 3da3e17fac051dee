"""Fusion strategies against hand-computed weights and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from exfiqa.fusion import (
    depth_weights,
    ex_fiqa_f,
    ex_fiqa_fw,
    exponential_weights,
    fit_weights,
    fuse,
    last_k_weights,
    uniform_weights,
    zscore_fuse,
)


def test_paper_weights_by_hand():
    w = depth_weights(12)
    np.testing.assert_allclose(w, np.arange(1, 13) / 78)
    np.testing.assert_allclose(uniform_weights(12), np.full(12, 1 / 12))
    np.testing.assert_allclose(depth_weights(3), [1 / 6, 2 / 6, 3 / 6])
    np.testing.assert_allclose(last_k_weights(4, 2), [0, 0, 0.5, 0.5])
    e = exponential_weights(3, rate=np.log(2))
    np.testing.assert_allclose(e, [2 / 14, 4 / 14, 8 / 14])


def test_fused_scores_by_hand():
    s = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, 0.0]])
    np.testing.assert_allclose(ex_fiqa_f(s), [2.0, 1.0])
    np.testing.assert_allclose(ex_fiqa_fw(s), [(1 + 4 + 9) / 6, 3 / 6])
    # constant rows fuse to the constant under any normalised weights
    c = np.full((5, 12), 2.5)
    np.testing.assert_allclose(ex_fiqa_fw(c), 2.5)


def test_zscore_fusion_ignores_per_exit_affine_scales():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(50, 4))
    scaled = s * np.array([1.0, 10.0, 0.1, 3.0]) + np.array([0.0, 5.0, -2.0, 1.0])
    np.testing.assert_allclose(zscore_fuse(s), zscore_fuse(scaled), atol=1e-12)


def test_fit_weights_recovers_a_known_combination():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(400, 5))
    z = (s - s.mean(0)) / s.std(0)
    true = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    w = fit_weights(s, z @ true, l2=1e-8)
    np.testing.assert_allclose(w, true, atol=1e-4)
    assert w.min() >= 0 and np.isclose(w.sum(), 1)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="weights must have shape"):
        fuse(np.ones((2, 3)), [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\(N, L\) matrix"):
        ex_fiqa_fw(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        ex_fiqa_f(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="k must lie"):
        last_k_weights(3, 4)
