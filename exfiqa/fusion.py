"""Fusion of per-exit quality scores: pure functions from an (N, L) matrix to (N,) scores.

Column ``l-1`` holds exit ``l`` (1-based depth). Fused score ``s = sum_l w_l * s_l`` with weights
summing to 1. EX-FIQA-F: ``w_l = 1/L``. EX-FIQA-FW: ``w_l = l / (L(L+1)/2)`` (``l/78`` for 12
exits). As in the paper, no per-exit normalisation is applied unless a strategy says so.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "STRATEGIES",
    "depth_weights",
    "exponential_weights",
    "ex_fiqa_f",
    "ex_fiqa_fw",
    "fit_weights",
    "fuse",
    "last_k_weights",
    "uniform_weights",
    "zscore_fuse",
]


def _matrix(scores: ArrayLike) -> NDArray[np.float64]:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 1:
        raise ValueError(f"scores must be an (N, L) matrix of exit scores, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s


def uniform_weights(n_exits: int) -> NDArray[np.float64]:
    """EX-FIQA-F weights: ``1/L`` each."""
    return np.full(n_exits, 1.0 / n_exits)


def depth_weights(n_exits: int) -> NDArray[np.float64]:
    """EX-FIQA-FW weights: ``w_l`` proportional to ``l`` (1-based), summing to 1."""
    w = np.arange(1, n_exits + 1, dtype=np.float64)
    return w / w.sum()


def last_k_weights(n_exits: int, k: int) -> NDArray[np.float64]:
    """Uniform weights over the last ``k`` exits, zero before."""
    if not 1 <= k <= n_exits:
        raise ValueError(f"k must lie in 1..{n_exits}, got {k}")
    w = np.zeros(n_exits)
    w[-k:] = 1.0 / k
    return w


def exponential_weights(n_exits: int, rate: float = 0.3) -> NDArray[np.float64]:
    """``w_l`` proportional to ``exp(rate * l)``: deeper exits count exponentially more."""
    w = np.exp(rate * np.arange(1, n_exits + 1, dtype=np.float64))
    return w / w.sum()


def fuse(scores: ArrayLike, weights: ArrayLike) -> NDArray[np.float64]:
    """Weighted sum of exit scores: ``scores @ weights`` (weights are used as given)."""
    s = _matrix(scores)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (s.shape[1],):
        raise ValueError(f"weights must have shape ({s.shape[1]},), got {w.shape}")
    return s @ w


def ex_fiqa_f(scores: ArrayLike) -> NDArray[np.float64]:
    """EX-FIQA-F: mean of all exit scores."""
    s = _matrix(scores)
    return fuse(s, uniform_weights(s.shape[1]))


def ex_fiqa_fw(scores: ArrayLike) -> NDArray[np.float64]:
    """EX-FIQA-FW: depth-weighted mean, ``w_l`` proportional to ``l``."""
    s = _matrix(scores)
    return fuse(s, depth_weights(s.shape[1]))


def zscore_fuse(
    scores: ArrayLike, weights: ArrayLike | None = None, reference: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Fuse after standardising each exit (mean 0, std 1 over ``reference``, default ``scores``).

    Beyond the paper: exits live on different scales, so plain averaging lets the widest-spread
    exit dominate. Default weights are depth weights.
    """
    s = _matrix(scores)
    ref = s if reference is None else _matrix(reference)
    std = ref.std(axis=0)
    std[std == 0] = 1.0
    z = (s - ref.mean(axis=0)) / std
    return fuse(z, depth_weights(s.shape[1]) if weights is None else weights)


def fit_weights(
    scores: ArrayLike, target: ArrayLike, l2: float = 1e-3
) -> NDArray[np.float64]:
    """Non-negative weights summing to 1 that best predict ``target`` from standardised exits.

    Fitted by non-negative least squares (scipy) with a small ridge term; used to learn fusion
    weights on one dataset and apply them to others. ``target`` is a per-sample utility, e.g. the
    mated similarity or certainty ratio.
    """
    from scipy.optimize import nnls

    s = _matrix(scores)
    t = np.asarray(target, dtype=np.float64)
    if t.shape != (s.shape[0],):
        raise ValueError(f"target must have shape ({s.shape[0]},), got {t.shape}")
    z = (s - s.mean(axis=0)) / np.where(s.std(axis=0) > 0, s.std(axis=0), 1.0)
    a = np.vstack([z, np.sqrt(l2) * np.eye(s.shape[1])])
    b = np.concatenate([t - t.mean(), np.zeros(s.shape[1])])
    w, _ = nnls(a, b)
    if w.sum() == 0:
        return uniform_weights(s.shape[1])
    return w / w.sum()


STRATEGIES: dict[str, Callable[[NDArray[np.float64]], NDArray[np.float64]]] = {
    "EX-FIQA-F": ex_fiqa_f,
    "EX-FIQA-FW": ex_fiqa_fw,
}
