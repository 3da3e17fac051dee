"""Pair and template qualities: the package's conventions (higher = better; min of the sides)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from exfiqa.evaluation.rules import as_values, check_same_length


def pair_quality(
    q_a: ArrayLike, q_b: ArrayLike, reducer: Callable[[np.ndarray, np.ndarray], np.ndarray] = np.minimum
) -> np.ndarray:
    """Pair quality of each comparison: ``reducer`` (default: the **minimum**, the paper's convention)
    of its two sides' qualities ``q_a``, ``q_b``, (N,) or (N, K); float32 inputs stay float32.

    Every pair quality exfiqa materialises is computed here.
    """
    a = as_values(q_a, "q_a")
    b = as_values(q_b, "q_b")
    if b.shape != a.shape:
        raise ValueError(f"q_b: shape {b.shape} does not match q_a's shape {a.shape}")
    out = np.asarray(reducer(a, b))
    if out.shape != a.shape:
        raise ValueError(f"reducer: returned shape {out.shape}, expected {a.shape}")
    return out


def template_quality(
    sample_quality: ArrayLike, template_ids: ArrayLike, reducer: str = "min"
) -> tuple[np.ndarray, np.ndarray]:
    """Quality of each template: the **minimum** over its samples (``reducer="min"``, the paper's
    convention; ``"mean"`` or ``"max"`` for comparison) of ``sample_quality`` (N,) or (N, K), by
    ``template_ids`` (N,). Returns the sorted unique ids and their qualities; ``mean`` is float64."""
    q = as_values(sample_quality, "sample_quality")
    ids = np.asarray(template_ids)
    if ids.ndim != 1:
        raise ValueError(f"template_ids: expected a 1-D array, got shape {ids.shape}")
    check_same_length(ids, "template_ids", q.shape[0], "sample_quality")
    if reducer not in ("min", "mean", "max"):
        raise ValueError(f"reducer: expected 'min', 'mean' or 'max', got {reducer!r}")
    if ids.shape[0] == 0:
        return np.unique(ids), q.astype(np.float64) if reducer == "mean" else q.copy()
    order = np.argsort(ids, kind="stable")
    ids_s, q_s = ids[order], q[order]
    starts = np.concatenate(([0], np.flatnonzero(ids_s[1:] != ids_s[:-1]) + 1))
    if reducer != "mean":
        vals = (np.minimum if reducer == "min" else np.maximum).reduceat(q_s, starts, axis=0)
    else:
        counts = np.diff(np.append(starts, q_s.shape[0]))
        vals = np.add.reduceat(q_s.astype(np.float64), starts, axis=0) / counts.reshape((-1,) + (1,) * (q.ndim - 1))
    return ids_s[starts], vals
