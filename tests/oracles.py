"""Test oracles: second implementations and materialised references the package does not need.

Each computes what a bounded or optimised path of :mod:`exfiqa.evaluation` computes, the plain way
(everything materialised as arrays), so tests can compare the two; :func:`comparison_table`
materialises one column per method of a study: the unbounded path, for small sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from exfiqa.evaluation.edc import EDCCurve, edc_curves
from exfiqa.evaluation.pairs import AllPairs
from exfiqa.evaluation.pauc import edc_rows, pauc_meta, pauc_rows
from exfiqa.evaluation.quality import pair_quality
from exfiqa.evaluation.rules import (
    Acceptance,
    BestCurve,
    Convention,
    ErrorType,
    ThresholdRule,
    as_convention,
    as_error_type,
    as_labels,
    as_vector,
    check_same_length,
    level_starts,
    resolvable,
)
from exfiqa.evaluation.scores import ArrayOrder, Comparisons
from exfiqa.study import Study


def pair_qualities(pairs: Any, side_values: ArrayLike) -> np.ndarray:
    """Pair quality of every comparison of a :class:`~exfiqa.evaluation.pairs.PairList` or
    :class:`~exfiqa.evaluation.pairs.AllPairs` (row-major), materialised: ``min(v[a], v[b])`` of
    the float32 side values (-0.0 counted as 0.0), as their orders see them."""
    v = np.asarray(side_values).astype(np.float32, copy=False) + np.float32(0)
    if isinstance(pairs, AllPairs):
        a, b, _ = pairs.materialise()
    else:
        a, b = pairs.a, pairs.b
    return pair_quality(v[a], v[b])


def gaps(plan: Any, total: int, rng: np.random.Generator | None) -> np.ndarray:
    """Resampled copies per gap of a bootstrap gap plan (``exfiqa.evaluation.bootstrap._GapPlan``):
    ``total`` pooled copies spread over every gap at once by gap size (multinomial), the draw the
    plan makes block by block."""
    if plan.rest == 0:
        return np.zeros(plan.gap_size.shape[0], dtype=np.int64)
    assert rng is not None
    return rng.multinomial(total, plan.gap_size / plan.rest)


def resolvable_levels(
    mated: ArrayLike,
    quality: ArrayLike,
    target: float,
    convention: Convention | str = Convention.RECOMPUTE,
    *,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> np.ndarray:
    """Per point of the EDC of ``quality``: whether ``target`` is :func:`resolvable` there.

    ``recompute``: one entry per level (:data:`RECOMPUTE_DISCARD_FRACTIONS`), counting the
    non-mated (FM-EDC: mated) comparisons left after discarding the ``floor(j * N / 20)`` of
    lowest pair quality (stable order, as the EDC). ``fixed``: the threshold is set once from the
    whole set, so every point (one per discarded quality-tie group) has the whole set's value.
    Equals :attr:`EDCCurve.resolved` of the same curve.
    """
    conv, e_type = as_convention(convention), as_error_type(error_type)
    n = as_labels(mated, np.asarray(mated).shape[0])
    q = as_vector(quality, "quality")
    check_same_length(q, "quality", n.shape[0], "mated")
    base_kind = ~n if e_type is ErrorType.FNMR else n
    if conv is Convention.FIXED:
        counted = q[n] if e_type is ErrorType.FNMR else q[~n]
        points = np.unique(counted).shape[0]
        return resolvable(target, np.full(points, int(base_kind.sum())))
    in_order = base_kind[np.argsort(q, kind="stable")]
    gone = np.concatenate(([0], np.cumsum(in_order)))[level_starts(n.shape[0])]
    return resolvable(target, int(base_kind.sum()) - gone)


def _frame_curves(
    similarity: ArrayLike,
    mated: ArrayLike,
    qualities: Mapping[str, ArrayLike],
    targets: Sequence[float] | None,
    convention: Convention | str,
    rules: Mapping[str, Any],
) -> dict[str, dict[float, EDCCurve]]:
    if not qualities:
        raise ValueError("qualities: no quality measure given")
    comp = Comparisons(similarity, mated)
    curves = {}
    for method, q in qualities.items():
        try:
            curves[method] = edc_curves(comp, ArrayOrder(comp.quality(q)), targets, convention, **rules)
        except ValueError as exc:
            raise ValueError(f"qualities[{method!r}]: {exc}") from None
    return curves


def edc_frame(
    similarity: ArrayLike,
    mated: ArrayLike,
    qualities: Mapping[str, ArrayLike],
    *,
    dataset: str,
    fr_model: str,
    targets: Sequence[float] | None = None,
    convention: Convention | str = Convention.RECOMPUTE,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> pd.DataFrame:
    """Plot-ready tidy EDCs of several quality measures on one comparison set.

    Args:
        similarity: Similarity of every comparison; ``mated``: True for mated comparisons.
        qualities: ``{method name: pair quality of every comparison}``.
        dataset: Dataset name written into every row; ``fr_model``: FR model name.
        targets: FMR targets (FM-EDC: FNMR targets); ``convention`` and the rules: :func:`edc`.

    Returns:
        One row per curve point, the columns of :func:`edc_rows`.
    """
    rules = {"threshold_rule": threshold_rule, "acceptance": acceptance, "error_type": error_type}
    frames = []
    for method, by_t in _frame_curves(similarity, mated, qualities, targets, as_convention(convention), rules).items():
        frames += edc_rows(method, dataset, fr_model, by_t)
    return pd.concat(frames, ignore_index=True)


def pauc_frame(
    similarity: ArrayLike,
    mated: ArrayLike,
    qualities: Mapping[str, ArrayLike],
    *,
    dataset: str,
    fr_model: str,
    targets: Sequence[float] | None = None,
    convention: Convention | str = Convention.RECOMPUTE,
    limit: float = 0.3,
    subtract_best: bool | BestCurve | str = False,
    scale: float = 1.0,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> pd.DataFrame:
    """Tidy pAUC-EDC table: one row per (method, target), the columns of :func:`pauc_rows`."""
    rules = {"threshold_rule": threshold_rule, "acceptance": acceptance, "error_type": error_type}
    meta = pauc_meta(convention, limit, subtract_best, scale, **rules)
    rows = []
    for method, by_t in _frame_curves(similarity, mated, qualities, targets, meta["convention"], rules).items():
        rows += pauc_rows(method, dataset, fr_model, by_t, meta)
    return pd.DataFrame(rows)

def pair(study: Study, dataset: str, values: NDArray[Any]) -> NDArray[np.float32]:
    """Pair quality (min, float32) of each comparison from per-sample values, (N,) or (N, K).

    Template benchmarks first take the min over each template's samples. Materialises one value
    per comparison (what :meth:`exfiqa.study.Study.order_of` avoids).
    """
    v = np.asarray(study._side_values(dataset, np.asarray(values, dtype=np.float32)))
    comp = study.comparison_set(dataset)
    if isinstance(comp, AllPairs):
        a, b = study._materialised_index(dataset)
    else:
        a, b = comp.a, comp.b
    paired: NDArray[np.float32] = pair_quality(v[a], v[b])  # float32 stays float32
    return paired


def comparison_table(study: Study, dataset: str, fr: str, quality: str) -> pd.DataFrame:
    """Comparison table: ``a, b, mated, similarity`` and the pair quality of every method
    (float32; one column per method, so for small sets)."""
    comp = study.benchmark(dataset).comparisons
    q = study.sample_quality(dataset, quality)
    out = pd.DataFrame({
        "a": comp["a"].to_numpy(), "b": comp["b"].to_numpy(), "mated": comp["mated"].to_numpy(bool),
        "similarity": study.similarity(dataset, fr),
    })
    pairs = pd.DataFrame({m: pair(study, dataset, q[m].to_numpy()) for m in q.columns})
    return pd.concat([out, pairs], axis=1)
