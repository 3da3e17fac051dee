"""The rules every metric of :mod:`exfiqa.evaluation` follows: threshold rules, acceptance, the named
rule sets, input checks and the operating points they select (numpy only).

* Scores are similarities (higher = more alike), qualities higher = better (pair quality: the min).
  Two score sets: bob.measure's order ``nonmated_scores, mated_scores``; one labelled set:
  ``similarity, mated, quality`` (``mated``: bools or 0/1, True for mated comparisons).
* ``at_most`` (default): ``k = floor(fmr * n)`` over ``n`` non-mated scores (relative tolerance
  1e-9: 0.29 * 100 counts as 29); threshold ``nextafter(s_(k+1), inf)``, ``s_(k+1)`` the (k+1)-th
  largest non-mated score: the smallest threshold whose FMR does not exceed the target (ties make
  the achieved FMR lower, never higher). A mated comparison is a false non-match iff its similarity
  is ``<= s_(k+1)``. Thresholds are float64 and compared in float64, whatever the scores' dtype.
* ``closest`` (the CR-FIQA group's ``ERC/erc.py`` + ``ERC/roc.py``): the ROC has one point per
  distinct score of the set (no point at infinity) with FMR(t) = #non-mated ``>= t`` / n; the
  threshold is the point with the smallest float64 ``|FMR - target|``, the first in ascending
  threshold order on ties (``np.argmin``): the achieved FMR may exceed the target.
* FM-EDC (``error_type="fmr"``) mirrors both: ``at_most`` = the (k+1)-th smallest mated score,
  ``k = floor(fnmr * n_mated)``; ``closest`` = the ROC point with FNMR(t) = #mated ``< t`` / n_mated
  closest to the target, the last on ties (``get_fnmr_op`` of ``roc.py``).
* Acceptance ``similarity>=`` (default), or ``distance<``: accept ``arccos(clip(s, -1, 1)) / pi <
  threshold`` (float64, thresholds are angular distances); the rules then work on ``x = -distance``.
* ``compat="crfiqa"`` (:data:`COMPAT`) = ``closest`` + ``distance<``: with ``recompute`` it
  reproduces the scripts' FNMR counts exactly where pair qualities do not tie (:data:`TIE_ORDER_NOTE`).
* Levels: the scripts discard ``int(np.arange(0, 0.98, 0.05)[j] * N)`` comparisons at level j,
  exfiqa ``floor(j * N / 20)`` (:func:`level_starts`): equal for every N below 5e14.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_FMR_TARGETS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
"""The FMR targets of the paper's EDC figures and tables."""

N_LEVELS = 20
RECOMPUTE_DISCARD_FRACTIONS: np.ndarray = np.arange(N_LEVELS) / N_LEVELS
"""Nominal discard fractions of the ``recompute`` convention: 0, 0.05, ..., 0.95."""
RECOMPUTE_DISCARD_FRACTIONS.setflags(write=False)

_FMR_TOL = 1e-9
_E = TypeVar("_E", bound=Enum)


class Convention(str, Enum):
    """How an EDC is computed (:mod:`exfiqa.evaluation.edc`)."""

    FIXED = "fixed"
    RECOMPUTE = "recompute"


class ThresholdRule(str, Enum):
    """Which threshold an error-rate target selects (module docstring)."""

    AT_MOST = "at_most"
    CLOSEST = "closest"


class Acceptance(str, Enum):
    """When a comparison is declared a match (module docstring)."""

    SIMILARITY = "similarity>="
    DISTANCE = "distance<"


class ErrorType(str, Enum):
    """The error an EDC plots: FNMR at an FMR target (FNM-EDC) or FMR at an FNMR target (FM-EDC)."""

    FNMR = "fnmr"
    FMR = "fmr"


class BestCurve(str, Enum):
    """The theoretical best curve ``subtract_best`` subtracts (``fixed`` convention only)."""

    TRIANGLE = "triangle"
    """``max(0, e0 - f)`` integrated exactly (Schlett's ``edc.py``; the default when subtracting)."""
    STEPWISE = "stepwise"
    """``max(0, e0 - f) / (1 - f)`` stepwise on the finest discard grid ``i / n``."""


COMPAT: dict[str, dict[str, str]] = {
    "crfiqa": {"threshold_rule": ThresholdRule.CLOSEST.value, "acceptance": Acceptance.DISTANCE.value},
}
"""Named rule sets: ``crfiqa`` = the CR-FIQA group's ERC scripts (CR-FIQA, ViT-FIQA, EX-FIQA)."""

TIE_ORDER_NOTE = (
    "The authors' ERC scripts order pair qualities with numpy's default (unstable) argsort, so where "
    "pair qualities tie, which comparisons a 5% discard level removes depends on the sort kernel of "
    "their machine's CPU (it moved their pAUC by up to 3.8% with AVX-512 switched off); exfiqa breaks "
    "such ties by comparison position (a stable sort) and reproduces their rule exactly otherwise, so "
    "where qualities tie the published numbers cannot be matched to the last digit."
)
"""One sentence for notebooks and captions on why tied qualities make the authors' numbers machine-dependent."""

RULE_DESCRIPTIONS: dict[tuple[ThresholdRule, ErrorType], str] = {
    (ThresholdRule.AT_MOST, ErrorType.FNMR): "smallest threshold whose FMR does not exceed the target",
    (ThresholdRule.AT_MOST, ErrorType.FMR): "largest threshold whose FNMR does not exceed the target",
    (ThresholdRule.CLOSEST, ErrorType.FNMR): "ROC point whose FMR is closest to the target (lowest such threshold)",
    (ThresholdRule.CLOSEST, ErrorType.FMR): "ROC point whose FNMR is closest to the target (highest such threshold)",
}
"""Which threshold a rule selects for a target of an EDC of an error type, in words."""

PAUC_META: dict[Convention, dict[str, str]] = {
    Convention.FIXED: {
        "threshold": "fixed once from all non-mated comparisons",
        "discard_base": "mated comparisons; equal qualities discarded together",
        "area_rule": "stepwise (value holds until the next discard point)",
    },
    Convention.RECOMPUTE: {
        "threshold": "recomputed on the remaining non-mated comparisons at each level",
        "discard_base": "all comparisons; grid 0, 0.05, ..., 0.95; stable sort by quality",
        "area_rule": "trapezoid, linear interpolation at the limit",
    },
}
"""Static description of each convention (FNM-EDC), stored beside any pAUC number by :func:`pauc_meta`."""


def _real(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` checked to hold finite real numbers (float32 and float64 kept, other numbers -> float64)."""
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):  # NaN propagates: no (N,) mask
        bad = np.flatnonzero(~np.isfinite(a))
        at = bad[0] if a.ndim == 1 else tuple(int(i) for i in np.unravel_index(bad[0], a.shape))
        raise ValueError(f"{name}: {bad.size} non-finite value(s) (NaN or inf), first at index {at} "
                         f"({a.reshape(-1)[bad[0]]})")
    return a


def as_vector(x: ArrayLike, name: str) -> np.ndarray:
    """A finite, non-empty 1-D float array (float32 and float64 kept, other numbers -> float64)."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: is empty")
    return _real(a, name)


def as_values(x: ArrayLike, name: str) -> np.ndarray:
    """Finite per-item values, (N,) or (N, K) for K measures, possibly empty (dtypes as :func:`_real`)."""
    a = np.asarray(x)
    if a.ndim not in (1, 2):
        raise ValueError(f"{name}: expected shape (N,) or (N, K), got shape {a.shape}")
    return _real(a, name)


def check_same_length(a: np.ndarray, name: str, n: int, ref: str) -> None:
    """Raise naming ``name`` and ``ref`` unless ``a`` has ``n`` entries (the length of ``ref``)."""
    if a.shape[0] != n:
        raise ValueError(f"{name}: length {a.shape[0]} does not match {ref} length {n}")


def as_labels(mated: ArrayLike, n: int, name: str = "mated") -> np.ndarray:
    """A boolean array of length ``n`` from bools or 0/1 numbers."""
    a = np.asarray(mated)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    check_same_length(a, name, n, "similarity")
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: expected booleans or 0/1, got dtype {a.dtype}")
    bad = np.flatnonzero((a != 0) & (a != 1))
    if bad.size:
        raise ValueError(f"{name}: expected booleans or 0/1, got {a[bad[0]]!r} at index {bad[0]}")
    return a.astype(bool)


def check_rate(fmr: Any, name: str = "fmr") -> float:
    """A target rate (FMR or FNMR) as a float in the open interval (0, 1); raises naming ``name``."""
    try:
        v = float(fmr)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number in (0, 1), got {fmr!r}") from None
    if not (0.0 < v < 1.0):
        raise ValueError(f"{name}: must lie in the open interval (0, 1), got {fmr!r}")
    return v


def check_rates(fmr_targets: float | Sequence[float], name: str = "fmr_targets") -> list[float]:
    """One target or a non-empty sequence of them, each checked by :func:`check_rate`, as a list."""
    seq = [fmr_targets] if np.isscalar(fmr_targets) else list(cast(Sequence[float], fmr_targets))
    if not seq:
        raise ValueError(f"{name}: no FMR target given")
    return [check_rate(t, name) for t in seq]


def check_limit(limit: float) -> float:
    """A pAUC's discard-fraction limit as a float in [0, 1]."""
    try:
        v = float(limit)
    except (TypeError, ValueError):
        raise ValueError(f"limit: expected a number in [0, 1], got {limit!r}") from None
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"limit: the discard-fraction limit must lie in [0, 1], got {limit!r}")
    return v


def as_convention(convention: Convention | str) -> Convention:
    """The :class:`Convention` named by ``convention`` (raises listing the valid names)."""
    return _choice(Convention, convention, "convention")


def allowed_errors(fmr: float, n: int | np.ndarray) -> np.ndarray:
    """Largest number of accepted non-mated comparisons that FMR <= ``fmr`` allows among ``n``."""
    n = np.asarray(n)
    k = np.floor(fmr * n * (1.0 + _FMR_TOL)).astype(np.int64)
    return np.asarray(np.minimum(k, np.maximum(n - 1, 0)), dtype=np.int64)


def next_above(x: np.ndarray | float) -> np.ndarray:
    """The smallest float64 strictly above ``x``: the threshold that rejects ``x``."""
    return np.nextafter(np.asarray(x, dtype=np.float64), np.inf)


def _choice(enum: type[_E], value: Any, name: str) -> _E:
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{name}: expected one of {[e.value for e in enum]}, got {value!r}") from None


def as_rule(threshold_rule: ThresholdRule | str) -> ThresholdRule:
    """The :class:`ThresholdRule` named by ``threshold_rule``."""
    return _choice(ThresholdRule, threshold_rule, "threshold_rule")


def as_acceptance(acceptance: Acceptance | str) -> Acceptance:
    """The :class:`Acceptance` named by ``acceptance``."""
    return _choice(Acceptance, acceptance, "acceptance")


def as_error_type(error_type: ErrorType | str) -> ErrorType:
    """The :class:`ErrorType` named by ``error_type``."""
    return _choice(ErrorType, error_type, "error_type")


def as_best_curve(subtract_best: bool | BestCurve | str | None) -> BestCurve | None:
    """``False``/``None``/``"none"`` -> no subtraction; ``True`` -> the reference's triangle."""
    if subtract_best is None or subtract_best is False or subtract_best == "none":
        return None
    if subtract_best is True:
        return BestCurve.TRIANGLE
    try:
        return BestCurve(subtract_best)
    except ValueError:
        raise ValueError(
            f"subtract_best: expected False, True, {[b.value for b in BestCurve]}, got {subtract_best!r}"
        ) from None


def compat_rules(name: str) -> dict[str, str]:
    """The ``threshold_rule`` and ``acceptance`` of a named rule set (:data:`COMPAT`), as keyword arguments."""
    if name not in COMPAT:
        raise ValueError(f"compat: expected one of {sorted(COMPAT)}, got {name!r}")
    return dict(COMPAT[name])


def rule_note(
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> str:
    """One line stating the threshold rule and acceptance, e.g. for captions and run cards."""
    rule, acc, err = as_rule(threshold_rule), as_acceptance(acceptance), as_error_type(error_type)
    name = next((k for k, v in COMPAT.items() if v == {"threshold_rule": rule.value, "acceptance": acc.value}), None)
    text = f"threshold {rule.value} ({RULE_DESCRIPTIONS[rule, err]}), accept {acc.value}"
    return text + (f" (= compat {name})" if name else "")


def is_strict(acceptance: Acceptance | str) -> bool:
    """Whether ``acceptance`` is ``distance<``: the rules then work on ``x = -distance`` (:func:`neg_distance`)."""
    return as_acceptance(acceptance) is Acceptance.DISTANCE


def neg_distance(similarity: np.ndarray) -> np.ndarray:
    """``-arccos(clip(s, -1, 1)) / pi`` in float64: higher = more alike, as the similarity (``distance<``)."""
    return -(np.arccos(np.clip(np.asarray(similarity, dtype=np.float64), -1.0, 1.0)) / np.pi)


class OperatingPoint(NamedTuple):
    """A point in the rules' domain ``x``: FNM-EDC: a mated comparison is a false non-match iff
    ``x <= e``; FM-EDC: a non-mated one is a false match iff ``x >= e``; ``threshold`` as reported."""

    e: float
    threshold: float


def fnm_point(
    nm_desc: np.ndarray, complete: bool, n_nm: int, mated_x: np.ndarray, target: float,
    rule: ThresholdRule, strict: bool,
) -> OperatingPoint | None:
    """The point for an FMR ``target`` among ``n_nm`` non-mated scores, from the highest ones
    ``nm_desc`` (descending; all of them when ``complete``) and the set's mated scores ``mated_x``
    (the ``closest`` ROC holds every score). None when ``nm_desc`` is too short to decide."""
    if rule is ThresholdRule.AT_MOST:
        k = int(allowed_errors(target, n_nm))
        if k >= nm_desc.shape[0]:
            return None
        stat = nm_desc[k]
        return OperatingPoint(stat, -float(stat) if strict else float(next_above(stat)))
    ends = np.flatnonzero(nm_desc[1:] != nm_desc[:-1]) + 1  # #non-mated >= each distinct value but the last
    counts = np.append(ends, nm_desc.shape[0]) if complete else ends
    if mated_x.size and nm_desc.size and mated_x.max() > nm_desc[0]:  # a ROC point with FMR 0 exists
        counts = np.concatenate(([0], counts))
    if not complete and (counts.size == 0 or counts[-1] / n_nm < target):
        return None  # a count beyond the candidates could be closer
    dist = np.abs(counts / n_nm - target)
    i = int(counts[::-1][np.argmin(dist[::-1])])  # ROC order = descending count: first minimum
    stat = nm_desc[i] if i < n_nm else -np.inf  # the highest rejected non-mated score
    above = mated_x[mated_x > stat]
    t = min(float(nm_desc[i - 1]) if i > 0 else np.inf, float(above.min()) if above.size else np.inf)
    return OperatingPoint(t, -t) if strict else OperatingPoint(stat, t)


def fm_point(
    mated_asc: np.ndarray, max_nm: float | None, n_m: int, target: float, rule: ThresholdRule, strict: bool
) -> OperatingPoint | None:
    """The point for an FNMR ``target`` among the mated scores ``mated_asc`` (ascending); ``max_nm``:
    the set's highest non-mated score, None when unknown (then None for ``closest``)."""
    if rule is ThresholdRule.AT_MOST:
        e = mated_asc[int(allowed_errors(target, n_m))]  # FNMR = #mated < e <= k
        return OperatingPoint(e, -float(np.nextafter(e, -np.inf)) if strict else float(e))
    if max_nm is None:
        return None
    starts = np.concatenate(([0], np.flatnonzero(mated_asc[1:] != mated_asc[:-1]) + 1))
    counts, values = starts, mated_asc[starts].astype(np.float64)  # FNMR count #mated < u at each value u
    if max_nm > mated_asc[-1]:  # a ROC point with FNMR 1 exists (the highest score)
        counts, values = np.append(counts, n_m), np.append(values, max_nm)
    dist = np.abs(counts / n_m - target)
    t = float(values[np.flatnonzero(dist == dist.min())[-1]])  # ROC order = ascending: last minimum
    return OperatingPoint(float(np.nextafter(t, np.inf)), -t) if strict else OperatingPoint(t, t)


def level_starts(n: int) -> np.ndarray:
    """Discarded count at each ``recompute`` level: floor(j * n / 20)."""
    return (np.arange(N_LEVELS, dtype=np.int64) * n) // N_LEVELS


def resolvable(target: float, n: int | ArrayLike) -> np.ndarray:
    """Whether ``target * n >= 1`` (tolerance 1e-9), ``n`` the count(s) the target is a fraction of
    (non-mated for an FMR target): at least one error allowed; below it, smaller targets change nothing."""
    t = check_rate(target, "target")
    counts = np.asarray(n)
    if counts.size and (not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0):
        raise ValueError(f"n: expected non-negative integer counts, got {n!r}")
    return np.asarray(np.floor(t * counts * (1.0 + _FMR_TOL)) >= 1)
