"""Verification and quality-assessment metrics: FNMR@FMR, ROC, EER, accuracy, EDC, pAUC.

numpy only; pandas is imported lazily by the tidy-frame helpers.

Vocabulary and conventions (every function in this module)
-----------------------------------------------------------
* Comparison scores are **similarities: higher = more alike**. By default a comparison is
  *accepted* (declared a match) when ``similarity >= threshold`` (see "Acceptance" below).
* A *mated* (genuine) comparison compares two samples of the same subject; a *non-mated*
  (impostor) comparison compares samples of different subjects.
* ``FMR(t)`` = fraction of non-mated comparisons accepted at ``t``; ``FNMR(t)`` = fraction of
  mated comparisons not accepted.
* Argument names and order: functions of two score sets take bob.measure's order
  ``nonmated_scores, mated_scores`` (negatives, positives; :func:`error_rates`,
  :func:`fnmr_at_fmr`, :func:`fmr_at_fnmr`, :func:`roc`, :func:`eer`). Functions of one labelled
  comparison set take ``similarity, mated, quality`` (curves, frames, accuracy, and those of
  :mod:`exfiqa.evaluation.bootstrap`), with ``mated`` always the boolean (or 0/1) labels, True for mated
  comparisons; frames take a mapping ``qualities`` in the place of ``quality``. Every convention
  argument defaults to ``recompute``, as the paper and the configs.
* **Quality**: higher = better. Pair quality = min of the two sample qualities
  (:func:`pair_quality`); an IJB-C template's quality = min over its samples
  (:func:`template_quality`).

Threshold rules (``threshold_rule``)
------------------------------------
``at_most`` (default). For an FMR target ``fmr`` over ``n`` non-mated scores,
``k = floor(fmr * n)`` (computed with a relative tolerance of 1e-9, so that 0.29 * 100 counts as
29) is the largest number of accepted non-mated comparisons the target allows. With ``s_(k+1)``
the (k+1)-th largest non-mated score, the threshold is the smallest float64 strictly above it,
``np.nextafter(s_(k+1), inf)``: the smallest threshold whose FMR does not exceed the target. It
accepts ``#{non-mated > s_(k+1)} <= k`` non-mated comparisons, while any lower threshold accepts
at least ``k + 1``. Discreteness and ties are never resolved by exceeding the target: with several
non-mated scores tied at ``s_(k+1)`` the achieved FMR is below the target. A mated comparison is
then a false non-match exactly when its similarity is ``<= s_(k+1)``. Scores may be float32 or
float64. Thresholds are float64 and every comparison against one is made in float64 (under
NumPy 2 a Python-float threshold would be compared with float32 scores in float32, rounding
``nextafter(s, inf)`` back to ``s`` and accepting the score ``s``; :func:`error_rates` casts).
(MagFace's ``eval/eval_quality/eval_quality.py`` takes the ``(idx + 1)``-th smallest non-mated
distance with ``idx = (n - 1) // 1000`` (``n - 1`` divided by 10 three times) and accepts
``distance < threshold``, so it allows ``(n - 1) // 1000`` false matches at FMR 1e-3 where
``at_most`` allows ``n // 1000``: one fewer whenever ``n`` is a multiple of 1000.)

``closest``: the CR-FIQA group's ERC scripts (``ERC/erc.py`` with ``ERC/roc.py`` of CR-FIQA, also
used for ViT-FIQA and EX-FIQA). The ROC has one point per distinct score of the comparison set
(mated and non-mated; no point at infinity), with the ROC's own FMR(t) = #non-mated ``>= t`` / n
(as ``calculate_roc`` counts it, whatever the acceptance). The threshold is the point whose
``|FMR - target|``, computed in float64 as the scripts do, is smallest; on a tie, the first in
ascending threshold order (the higher FMR: ``np.argmin``). Among the thresholds with that FMR it is
the lowest, i.e. the smallest score above the highest rejected non-mated one (a mated score where
one lies in between). The achieved FMR can exceed the target: with 2,999 non-mated comparisons at
FMR 1e-3, ``closest`` accepts 3 of them (3/2999 is nearer 1e-3 than 2/2999), ``at_most`` 2.

FM-EDC (``error_type="fmr"``) mirrors both: ``at_most`` is the largest threshold whose FNMR does
not exceed the FNMR target (the (k+1)-th smallest mated score, ``k = floor(fnmr * n_mated)``);
``closest`` is the ROC point with FNMR(t) = #mated ``< t`` / n_mated closest to the target, the last
on ties (the higher threshold: ``get_fnmr_op`` of the same ``roc.py``).

Acceptance (``acceptance``)
---------------------------
``similarity>=`` (default): accept ``similarity >= threshold``; thresholds are similarities.
``distance<``: the scripts' rule, accept ``arccos(clip(similarity, -1, 1)) / pi < threshold``
(float64); thresholds are angular distances and a comparison exactly at the threshold is a
non-match, mated and non-mated alike. The rules then work on ``x = -distance`` (ties are those of
the distance: float64 cosines that ``arccos`` maps to one float64 distance tie; distinct float32
similarities never do). Under ``at_most`` the acceptance changes only the reported threshold (the
(k+1)-th smallest non-mated distance instead of ``nextafter(s_(k+1), inf)``), not which
comparisons are errors; under ``closest`` a mated comparison at the chosen ROC point is a false
non-match with ``distance<`` and a match with ``similarity>=``.

``compat="crfiqa"`` (:data:`COMPAT`, :func:`compat_rules`; config key ``compat``) = ``closest`` +
``distance<``. With the ``recompute`` convention it reproduces the scripts exactly given their
similarities: measured against ``ERC/erc.py`` + ``ERC/roc.py`` (run after two patches that only
make them run: a missing comma in ``perform_1v1_quality_eval`` and ``np.int``), the FNMR counts of
all 20 levels at FMR 1e-2, 1e-3, 1e-4 are identical where pair qualities do not tie (6,000 pairs)
and, with their quality argsort made stable, also where they tie (6,000 and 20,000 pairs with
qualities rounded to 0 or 1 decimals).

**Tie order.** The scripts sort pair qualities with numpy's default (unstable) ``argsort``,
whose order among equal qualities depends on the sort kernel of the CPU (AVX-512 or not); exfiqa
sorts stably (ties in comparison order), which reproduces the scripts exactly where qualities tie
whenever their sort happens to be stable, and cannot reproduce a machine's unstable order
otherwise (:data:`TIE_ORDER_NOTE`, one sentence for notebooks).

**Level boundaries.** The scripts discard ``int(np.arange(0, 0.98, 0.05)[j] * N)`` comparisons at
level j, exfiqa ``floor(j * N / 20)``. They are equal: every ``u_j = np.arange(0, 0.98, 0.05)[j]``
is ``>= j / 20`` exactly, the rounded product never falls below the integer ``floor(j * N / 20)``
(rounding to nearest keeps a representable integer), and it could only reach the next integer if
``(u_j - j / 20) * N`` (``u_j - j / 20 <= 9e-17``) reached 1/20, i.e. for N beyond 5e14. The tests
check every N up to 2,000,000.

EDC (error-versus-discard characteristic, "ERC" in older papers) and pAUC
--------------------------------------------------------------------------
Comparisons are discarded lowest pair quality first and an error rate at a fixed operating
point is plotted against the discarded fraction: the FNMR at an FMR target (FNM-EDC, the
default) or the FMR at an FNMR target (FM-EDC, Schlett et al.'s second error type;
:class:`ErrorType`). Two conventions exist (:class:`Convention`); every pAUC this package writes
carries its convention, limit, scale and, where they differ from the defaults, its rules
(:func:`pauc_meta`, :data:`PAUC_META`, the columns of :func:`pauc_rows`).

``fixed`` (Schlett et al., "Considerations on the evaluation of biometric quality assessment
algorithms", IEEE T-BIOM 2023; reference ``edc.py`` in dasec/quality-assessment-evaluation):
    * The threshold is set **once**, before discarding, from **all** comparisons (rules above).
    * Only the comparisons the error is counted on are discarded and counted: **mated** ones for
      FNM-EDC (once the threshold is fixed, non-mated comparisons cannot change an FNMR),
      **non-mated** ones for FM-EDC. ``discard_fraction`` = discarded / all of them. The
      qualities of the other kind are ignored (but still validated).
    * Comparisons with equal pair quality are discarded together: the curve has a point at 0 and
      after each quality-tie group except the last (after which no comparison is left and the
      error is undefined; Schlett's code appends a plotting point (1, 0) there, which changes no
      area up to a limit <= 1).
    * pAUC is the **stepwise** area: the error at a discard point holds until the next discard
      point (right-continuous step), the last point's error holds up to the limit, and the step
      that contains the limit is cut there.
    * ``subtract_best`` subtracts the area under a theoretical best curve (:class:`BestCurve`),
      ``e0`` being the error at 0 discard and ``f`` the discard fraction. ``triangle`` (the
      default when subtracting, ``True``; Schlett's ``compute_edc_area_under_theoretical_best``):
      ``max(0, e0 - f)`` integrated exactly, ``e0**2 / 2 - max(0, e0 - limit)**2 / 2``.
      ``stepwise``: the curve of a quality that discards the errors first,
      ``max(0, e0 - f) / (1 - f)``, integrated with the same stepwise rule on the finest discard
      grid ``f = i / n``, i = 0 .. n - 1 (n = the comparisons counted): exactly the pAUC of such a
      perfect quality with distinct values, independent of the tie structure of the quality
      evaluated. ``pAUC - best >= 0`` for every quality under both (the stepwise best lies above
      the triangle). Both depend on ``e0`` and n only, which no quality changes: for one FR model
      and target the two subtractions differ by a constant, and no ranking of qualities moves.

``recompute`` (the CR-FIQA group's ERC scripts, used by CR-FIQA, ViT-FIQA and EX-FIQA):
    * Nominal discard fractions ``0, 0.05, ..., 0.95`` of **all** comparisons (mated and non-mated
      together). At level j the ``floor(j * N / 20)`` comparisons of lowest pair quality are
      discarded, using a **stable** sort by quality (ties broken by input position; the scripts'
      boundaries are the same, their tie order is not: see above).
    * At each level the threshold is **recomputed** from the remaining comparisons (rules above)
      and the error is measured on the remaining mated (FNM-EDC) or non-mated (FM-EDC, our
      extension: the scripts compute FNM-EDCs only) comparisons. A level without remaining mated
      or non-mated comparisons has error NaN.
    * pAUC is the **trapezoid** area over the points with discard fraction <= limit (default 0.3);
      a limit between grid points ends the area at a linearly interpolated point. (The scripts
      pass all 20 points to ``sklearn.metrics.auc``, i.e. a limit of 0.95; the papers' figures shade
      0 to 0.3.) ``subtract_best`` is not defined for this convention and raises.

Where the two conventions must agree: at discard 0 both give the plain error at the operating
point over all comparisons (:func:`fnmr_at_fmr`, :func:`fmr_at_fnmr`); and when every comparison
that a ``recompute`` level discards is mated (all non-mated comparisons have higher quality), the
recomputed FNM-EDC threshold equals the fixed one and the ``recompute`` FNMR at that level equals
the ``fixed`` FNMR after discarding the same mated comparisons. Otherwise they differ:
``recompute`` also discards the other kind, moving the threshold, and measures the discard
fraction over all comparisons.

Resolvable targets
------------------
A target rate needs at least one expected error at its threshold to mean what it says: an FMR
target ``fmr`` over ``n`` non-mated comparisons is *resolvable* when ``fmr * n >= 1``
(:func:`resolvable`; FM-EDC: the FNMR target over the mated comparisons). Below that the rules
above admit no false match at all, so every smaller target gives the same threshold and curve
(300 non-mated comparisons: FMR 1e-3 and 1e-4 give identical EDCs). Under ``fixed`` the whole
set decides; under ``recompute`` the threshold is recomputed from the comparisons left at each
level, so each level counts its own (:func:`resolvable_levels`, :attr:`EDCCurve.resolved`). A pAUC
is resolved when every point its area reads is (:func:`pauc_resolved`); tidy frames carry this as
the boolean column ``resolved`` (:func:`pauc_rows`, :func:`edc_rows`). The value is still computed
and written: the flag says it cannot separate the targets below that count.

Bootstrap intervals of these pAUCs (single and paired) live in :mod:`exfiqa.evaluation.bootstrap`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "COMPAT",
    "DEFAULT_FMR_TARGETS",
    "PAUC_META",
    "RECOMPUTE_DISCARD_FRACTIONS",
    "TIE_ORDER_NOTE",
    "Acceptance",
    "BestCurve",
    "Convention",
    "EDCCurve",
    "ErrorType",
    "ThresholdRule",
    "VerificationAccuracy",
    "compat_rules",
    "edc",
    "edc_curves",
    "edc_frame",
    "edc_many",
    "edc_rows",
    "eer",
    "error_rates",
    "fmr_at_fnmr",
    "fnmr_at_fmr",
    "pair_quality",
    "pauc",
    "pauc_frame",
    "pauc_meta",
    "pauc_resolved",
    "pauc_rows",
    "resolvable",
    "resolvable_levels",
    "resolved_for",
    "roc",
    "rule_note",
    "template_quality",
    "threshold_at_fmr",
    "verification_accuracy",
]

DEFAULT_FMR_TARGETS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
"""The FMR targets of the paper's EDC figures and tables."""

_N_LEVELS = 20
RECOMPUTE_DISCARD_FRACTIONS: np.ndarray = np.arange(_N_LEVELS) / _N_LEVELS
"""Nominal discard fractions of the ``recompute`` convention: 0, 0.05, ..., 0.95."""
RECOMPUTE_DISCARD_FRACTIONS.setflags(write=False)

_FMR_TOL = 1e-9
_E = TypeVar("_E", bound=Enum)
_MIN_CANDIDATES = 4096  # fewest top non-mated scores kept for the ``recompute`` order statistics


class Convention(str, Enum):
    """How an EDC is computed; see the module docstring for the full definitions."""

    FIXED = "fixed"
    """Schlett et al. (T-BIOM 2023): threshold fixed once, mated discards, stepwise pAUC."""
    RECOMPUTE = "recompute"
    """CR-FIQA's ERC scripts: 5 % grid of all comparisons, threshold recomputed, trapezoid pAUC."""


class ThresholdRule(str, Enum):
    """Which threshold an error-rate target selects (module docstring, "Threshold rules")."""

    AT_MOST = "at_most"
    """The threshold with the other error lowest among those whose rate does not exceed the target."""
    CLOSEST = "closest"
    """The ROC point whose rate is closest to the target (the CR-FIQA group's ERC scripts)."""


class Acceptance(str, Enum):
    """When a comparison is declared a match (module docstring, "Acceptance")."""

    SIMILARITY = "similarity>="
    """``similarity >= threshold`` (thresholds are similarities)."""
    DISTANCE = "distance<"
    """``arccos(clip(similarity, -1, 1)) / pi < threshold`` (thresholds are angular distances)."""


class ErrorType(str, Enum):
    """The error an EDC plots (Schlett et al.'s two EDC types)."""

    FNMR = "fnmr"
    """FNM-EDC: FNMR of the mated comparisons at a threshold set for an FMR target."""
    FMR = "fmr"
    """FM-EDC: FMR of the non-mated comparisons at a threshold set for an FNMR target."""


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

_DESCRIBE_RULE = {
    (ThresholdRule.AT_MOST, ErrorType.FNMR): "smallest threshold whose FMR does not exceed the target",
    (ThresholdRule.AT_MOST, ErrorType.FMR): "largest threshold whose FNMR does not exceed the target",
    (ThresholdRule.CLOSEST, ErrorType.FNMR): "ROC point whose FMR is closest to the target (lowest such threshold)",
    (ThresholdRule.CLOSEST, ErrorType.FMR): "ROC point whose FNMR is closest to the target (highest such threshold)",
}

PAUC_META: dict[Convention, dict[str, str]] = {
    Convention.FIXED: {
        "threshold": "fixed once from all non-mated comparisons",
        "discard_base": "mated comparisons; equal qualities discarded together",
        "area_rule": "stepwise (value holds until the next discard point)",
        "best_curve": "triangle max(0, e0 - f), or stepwise max(0, e0 - f) / (1 - f) on the grid i / n_mated",
    },
    Convention.RECOMPUTE: {
        "threshold": "recomputed on the remaining non-mated comparisons at each level",
        "discard_base": "all comparisons; grid 0, 0.05, ..., 0.95; stable sort by quality",
        "area_rule": "trapezoid, linear interpolation at the limit",
        "best_curve": "not defined",
    },
}
"""Static description of each convention (FNM-EDC), stored beside any pAUC number by :func:`pauc_meta`."""


# ----------------------------------------------------------------------------- validation


def _real(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` checked to hold finite real numbers (float32 and float64 kept, other numbers -> float64)."""
    if a.dtype == np.bool_ or not (
        np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    ):
        raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):  # NaN propagates: no (N,) mask
        bad = np.flatnonzero(~np.isfinite(a))
        at = bad[0] if a.ndim == 1 else tuple(int(i) for i in np.unravel_index(bad[0], a.shape))
        raise ValueError(
            f"{name}: {bad.size} non-finite value(s) (NaN or inf), first at index {at} "
            f"({a.reshape(-1)[bad[0]]})"
        )
    return a


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    """A finite, non-empty 1-D float array (float32 and float64 kept, other numbers -> float64)."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: is empty")
    return _real(a, name)


def _values(x: ArrayLike, name: str) -> np.ndarray:
    """Finite per-item values, (N,) or (N, K) for K measures, possibly empty (dtypes as :func:`_real`)."""
    a = np.asarray(x)
    if a.ndim not in (1, 2):
        raise ValueError(f"{name}: expected shape (N,) or (N, K), got shape {a.shape}")
    return _real(a, name)


def _same_length(a: np.ndarray, name: str, n: int, ref: str) -> None:
    if a.shape[0] != n:
        raise ValueError(f"{name}: length {a.shape[0]} does not match {ref} length {n}")


def _labels(mated: ArrayLike, n: int, name: str = "mated") -> np.ndarray:
    """A boolean array of length ``n`` from bools or 0/1 numbers."""
    a = np.asarray(mated)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    _same_length(a, name, n, "similarity")
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: expected booleans or 0/1, got dtype {a.dtype}")
    bad = np.flatnonzero((a != 0) & (a != 1))
    if bad.size:
        raise ValueError(f"{name}: expected booleans or 0/1, got {a[bad[0]]!r} at index {bad[0]}")
    return a.astype(bool)


def _fmr_value(fmr: Any, name: str = "fmr") -> float:
    try:
        v = float(fmr)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number in (0, 1), got {fmr!r}") from None
    if not (0.0 < v < 1.0):
        raise ValueError(f"{name}: must lie in the open interval (0, 1), got {fmr!r}")
    return v


def _fmr_targets(fmr_targets: float | Sequence[float], name: str = "fmr_targets") -> list[float]:
    seq: list[Any]  # checked and converted by _fmr_value
    if np.isscalar(fmr_targets):
        seq = [fmr_targets]
    else:  # np.isscalar does not narrow the union for the type checker: not a scalar is a sequence here
        seq = list(cast(Sequence[float], fmr_targets))
    if not seq:
        raise ValueError(f"{name}: no FMR target given")
    return [_fmr_value(t, name) for t in seq]


def _limit_value(limit: float) -> float:
    try:
        v = float(limit)
    except (TypeError, ValueError):
        raise ValueError(f"limit: expected a number in [0, 1], got {limit!r}") from None
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"limit: the discard-fraction limit must lie in [0, 1], got {limit!r}")
    return v


def _convention(convention: Convention | str) -> Convention:
    try:
        return Convention(convention)
    except ValueError:
        raise ValueError(
            f"convention: expected one of {[c.value for c in Convention]}, got {convention!r}"
        ) from None


def _kmax(fmr: float, n: int | np.ndarray) -> np.ndarray:
    """Largest number of accepted non-mated comparisons that FMR <= ``fmr`` allows among ``n``."""
    n = np.asarray(n)
    k = np.floor(fmr * n * (1.0 + _FMR_TOL)).astype(np.int64)
    return np.asarray(np.minimum(k, np.maximum(n - 1, 0)), dtype=np.int64)


def _above(x: np.ndarray | float) -> np.ndarray:
    """The smallest float64 strictly above ``x``: the threshold that rejects ``x``."""
    return np.nextafter(np.asarray(x, dtype=np.float64), np.inf)


def _choice(enum: type[_E], value: Any, name: str) -> _E:
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{name}: expected one of {[e.value for e in enum]}, got {value!r}") from None


def _rule(threshold_rule: ThresholdRule | str) -> ThresholdRule:
    return _choice(ThresholdRule, threshold_rule, "threshold_rule")


def _acceptance(acceptance: Acceptance | str) -> Acceptance:
    return _choice(Acceptance, acceptance, "acceptance")


def _error_type(error_type: ErrorType | str) -> ErrorType:
    return _choice(ErrorType, error_type, "error_type")


def _best_curve(subtract_best: bool | BestCurve | str | None) -> BestCurve | None:
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
    rule, acc, err = _rule(threshold_rule), _acceptance(acceptance), _error_type(error_type)
    name = next((k for k, v in COMPAT.items() if v == {"threshold_rule": rule.value, "acceptance": acc.value}), None)
    text = f"threshold {rule.value} ({_DESCRIBE_RULE[rule, err]}), accept {acc.value}"
    return text + (f" (= compat {name})" if name else "")


def _strict(acceptance: Acceptance | str) -> bool:
    return _acceptance(acceptance) is Acceptance.DISTANCE


# ----------------------------------------------------------------------------- qualities


def pair_quality(
    q_a: ArrayLike,
    q_b: ArrayLike,
    reducer: Callable[[np.ndarray, np.ndarray], np.ndarray] = np.minimum,
) -> np.ndarray:
    """Pair quality of each comparison from the qualities of its two sides.

    The package's convention (the paper, Schlett et al.): a comparison's quality is the
    **minimum** of its two sides' qualities (samples, or IJB-C templates: :func:`template_quality`),
    higher = better. Every pair quality exfiqa materialises is computed here
    (:mod:`exfiqa.evaluation.pairs`, :class:`exfiqa.study.Study`).

    Args:
        q_a: Quality of the first side of each comparison: (N,), or (N, K) for K measures.
        q_b: Quality of the second side, same shape.
        reducer: Elementwise combination (default ``np.minimum``).

    Returns:
        The pair qualities, shape of ``q_a``; float32 inputs stay float32.
    """
    a = _values(q_a, "q_a")
    b = _values(q_b, "q_b")
    if b.shape != a.shape:
        raise ValueError(f"q_b: shape {b.shape} does not match q_a's shape {a.shape}")
    out = np.asarray(reducer(a, b))
    if out.shape != a.shape:
        raise ValueError(f"reducer: returned shape {out.shape}, expected {a.shape}")
    return out


def template_quality(
    sample_quality: ArrayLike, template_ids: ArrayLike, reducer: str = "min"
) -> tuple[np.ndarray, np.ndarray]:
    """Quality of each template from the qualities of its samples.

    The package's convention (IJB-C): a template's quality is the **minimum** over its samples
    (``reducer="min"``, the default; ``"mean"`` and ``"max"`` for comparison).

    Args:
        sample_quality: Quality of each sample (higher = better): (N,), or (N, K) for K measures.
        template_ids: Template id of each sample, (N,) (any sortable dtype).
        reducer: ``"min"`` (the paper), ``"mean"`` or ``"max"``.

    Returns:
        ``(ids, quality)``: the sorted unique template ids (T,) and their qualities, (T,) or
        (T, K); ``min``/``max`` keep a float32 input's dtype, ``mean`` is float64.
    """
    q = _values(sample_quality, "sample_quality")
    ids = np.asarray(template_ids)
    if ids.ndim != 1:
        raise ValueError(f"template_ids: expected a 1-D array, got shape {ids.shape}")
    _same_length(ids, "template_ids", q.shape[0], "sample_quality")
    if reducer not in ("min", "mean", "max"):
        raise ValueError(f"reducer: expected 'min', 'mean' or 'max', got {reducer!r}")
    if ids.shape[0] == 0:
        return np.unique(ids), q.astype(np.float64) if reducer == "mean" else q.copy()
    order = np.argsort(ids, kind="stable")
    ids_s, q_s = ids[order], q[order]
    starts = np.concatenate(([0], np.flatnonzero(ids_s[1:] != ids_s[:-1]) + 1))
    if reducer == "min":
        vals = np.minimum.reduceat(q_s, starts, axis=0)
    elif reducer == "max":
        vals = np.maximum.reduceat(q_s, starts, axis=0)
    else:
        counts = np.diff(np.append(starts, q_s.shape[0]))
        vals = np.add.reduceat(q_s.astype(np.float64), starts, axis=0) / counts.reshape((-1,) + (1,) * (q.ndim - 1))
    return ids_s[starts], vals


# ----------------------------------------------------------------------------- verification


def _scores(nonmated_scores: ArrayLike, mated_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    return _vector(nonmated_scores, "nonmated_scores"), _vector(mated_scores, "mated_scores")


def _neg_distance(similarity: np.ndarray) -> np.ndarray:
    """``-arccos(clip(s, -1, 1)) / pi`` in float64: higher = more alike, as the similarity (``distance<``)."""
    return -(np.arccos(np.clip(np.asarray(similarity, dtype=np.float64), -1.0, 1.0)) / np.pi)


def _x(scores: np.ndarray, strict: bool) -> np.ndarray:
    """The scores in the domain the rules work in: similarities, or negated angular distances."""
    return _neg_distance(scores) if strict else scores


def _desc_order_stats(values: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """The (k+1)-th largest of ``values`` for each k in ``ks`` (0 <= k < len(values))."""
    pos = values.shape[0] - 1 - np.asarray(ks, dtype=np.int64)
    part = np.partition(values, np.unique(pos))
    out: np.ndarray = part[pos]
    return out


class _Point(NamedTuple):
    """An operating point in the rules' domain ``x`` (similarity, or minus the angular distance).

    ``e``: FNM-EDC: a mated comparison is a false non-match iff ``x <= e``; FM-EDC: a non-mated
    one is a false match iff ``x >= e``. ``threshold``: as reported (a similarity accepted with
    ``>=``, or an angular distance accepted with ``<``).
    """

    e: float
    threshold: float


def _fnm_point(
    nm_desc: np.ndarray, complete: bool, n_nm: int, mated_x: np.ndarray, target: float,
    rule: ThresholdRule, strict: bool,
) -> _Point | None:
    """The threshold for an FMR ``target`` among ``n_nm`` non-mated scores (FNM-EDC).

    ``nm_desc``: the highest non-mated scores, descending (all of them when ``complete``; else
    every one left out is strictly lower); ``mated_x``: the mated scores of the same comparison
    set (the ``closest`` rule's ROC holds every score). None when ``nm_desc`` is too short.
    """
    if rule is ThresholdRule.AT_MOST:
        k = int(_kmax(target, n_nm))
        if k >= nm_desc.shape[0]:
            return None
        stat = nm_desc[k]
        return _Point(stat, -float(stat) if strict else float(_above(stat)))
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
    return _Point(t, -t) if strict else _Point(stat, t)


def _fm_point(
    mated_asc: np.ndarray, max_nm: float | None, n_m: int, target: float, rule: ThresholdRule, strict: bool
) -> _Point | None:
    """The threshold for an FNMR ``target`` among the mated scores ``mated_asc`` (ascending; FM-EDC).

    ``max_nm``: the highest non-mated score of the same set (the ``closest`` rule's ROC point
    with FNMR 1 needs it); None when unknown (then None for ``closest``).
    """
    if rule is ThresholdRule.AT_MOST:
        e = mated_asc[int(_kmax(target, n_m))]  # FNMR = #mated < e <= k
        return _Point(e, -float(np.nextafter(e, -np.inf)) if strict else float(e))
    if max_nm is None:
        return None
    starts = np.concatenate(([0], np.flatnonzero(mated_asc[1:] != mated_asc[:-1]) + 1))
    counts, values = starts, mated_asc[starts].astype(np.float64)  # FNMR count #mated < u at each value u
    if max_nm > mated_asc[-1]:  # a ROC point with FNMR 1 exists (the highest score)
        counts, values = np.append(counts, n_m), np.append(values, max_nm)
    dist = np.abs(counts / n_m - target)
    t = float(values[np.flatnonzero(dist == dist.min())[-1]])  # ROC order = ascending: last minimum
    return _Point(float(np.nextafter(t, np.inf)), -t) if strict else _Point(t, t)


def threshold_at_fmr(
    nonmated_scores: ArrayLike,
    fmr: float,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    mated_scores: ArrayLike | None = None,
) -> float:
    """The threshold for an FMR target under a rule (module docstring, "Threshold rules").

    Args:
        nonmated_scores: Non-mated similarity scores.
        fmr: FMR target in (0, 1).
        threshold_rule: ``at_most`` (default): ``np.nextafter(s_(k+1), inf)`` with
            ``k = floor(fmr * len(nonmated_scores))``; ``closest``: the ROC point of all scores whose
            FMR is closest to ``fmr`` (needs ``mated_scores``).
        acceptance: ``similarity>=`` (the threshold is a similarity) or ``distance<`` (an angular
            distance).
        mated_scores: Mated similarity scores (required by ``closest``).
    """
    neg = _vector(nonmated_scores, "nonmated_scores")
    f, rule, strict = _fmr_value(fmr), _rule(threshold_rule), _strict(acceptance)
    if rule is ThresholdRule.AT_MOST and not strict:
        k = _kmax(f, neg.shape[0])
        return float(_above(_desc_order_stats(neg, np.atleast_1d(k))[0]))
    if rule is ThresholdRule.CLOSEST and mated_scores is None:
        raise ValueError("mated_scores: the 'closest' rule picks a point of the ROC of all scores; pass them")
    pos = np.zeros(0) if mated_scores is None else _vector(mated_scores, "mated_scores")
    x_neg = -np.sort(-_x(neg, strict))
    point = _fnm_point(x_neg, True, neg.shape[0], _x(pos, strict), f, rule, strict)
    assert point is not None
    return point.threshold


def error_rates(
    nonmated_scores: ArrayLike,
    mated_scores: ArrayLike,
    threshold: float,
    *,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
) -> tuple[float, float]:
    """``(FMR, FNMR)`` at ``threshold``: accept when ``similarity >= threshold`` (default) or, for
    ``distance<``, when ``arccos(clip(similarity, -1, 1)) / pi < threshold``.

    The comparison is made in float64 whatever the scores' dtype (a float32 score equal to a
    float64 threshold is accepted exactly when it is not below it).
    """
    neg, pos = _scores(nonmated_scores, mated_scores)
    t = np.float64(threshold)  # a numpy float64 (not a Python float): compared in float64 (NEP 50)
    if math.isnan(t):
        raise ValueError("threshold: is NaN")
    if _strict(acceptance):
        d_neg, d_pos = -_neg_distance(neg), -_neg_distance(pos)
        return float(np.count_nonzero(d_neg < t) / neg.size), float(np.count_nonzero(d_pos >= t) / pos.size)
    neg64, pos64 = neg.astype(np.float64, copy=False), pos.astype(np.float64, copy=False)
    return float(np.count_nonzero(neg64 >= t) / neg.size), float(np.count_nonzero(pos64 < t) / pos.size)


def fnmr_at_fmr(
    nonmated_scores: ArrayLike,
    mated_scores: ArrayLike,
    fmr_targets: float | Sequence[float] = DEFAULT_FMR_TARGETS,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
) -> np.ndarray | float:
    """FNMR at the threshold of each FMR target (a float for a scalar target, else an array)."""
    neg, pos = _scores(nonmated_scores, mated_scores)
    targets = _fmr_targets(fmr_targets)
    rule, strict = _rule(threshold_rule), _strict(acceptance)
    if rule is ThresholdRule.AT_MOST and not strict:
        ks = np.array([_kmax(t, neg.shape[0]) for t in targets])
        stats = _desc_order_stats(neg, ks)
        out = np.array([np.count_nonzero(pos <= s) / pos.size for s in stats])
    else:
        x_neg, x_pos = -np.sort(-_x(neg, strict)), _x(pos, strict)
        es = [_fnm_point(x_neg, True, neg.shape[0], x_pos, t, rule, strict) for t in targets]
        out = np.array([np.count_nonzero(x_pos <= p.e) / pos.size for p in es if p is not None])
    return float(out[0]) if np.isscalar(fmr_targets) else out


def fmr_at_fnmr(
    nonmated_scores: ArrayLike,
    mated_scores: ArrayLike,
    fnmr_targets: float | Sequence[float],
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
) -> np.ndarray | float:
    """FMR at the threshold of each FNMR target (FM-EDC's operating point; a float for a scalar target).

    ``at_most``: the largest threshold whose FNMR does not exceed the target, i.e. the
    (k+1)-th smallest mated score with ``k = floor(fnmr * n_mated)``; ``closest``: the ROC point
    whose FNMR is closest to the target (the highest such threshold, as ``get_fnmr_op`` of the
    group's ``roc.py``).
    """
    neg, pos = _scores(nonmated_scores, mated_scores)
    targets = _fmr_targets(fnmr_targets, "fnmr_targets")
    rule, strict = _rule(threshold_rule), _strict(acceptance)
    x_neg, x_pos = _x(neg, strict), np.sort(_x(pos, strict))
    points = [_fm_point(x_pos, float(x_neg.max()), pos.shape[0], t, rule, strict) for t in targets]
    out = np.array([np.count_nonzero(x_neg >= p.e) / neg.size for p in points if p is not None])
    return float(out[0]) if np.isscalar(fnmr_targets) else out


def roc(nonmated_scores: ArrayLike, mated_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC at every distinct score, plus ``+inf``.

    Returns:
        ``(fmr, fnmr, thresholds)`` with thresholds ascending: the sorted distinct scores of both
        sets followed by ``inf``. The first point (threshold = lowest score) has FMR 1 and FNMR 0;
        the last (``inf``) has FMR 0 and FNMR 1.
    """
    neg, pos = _scores(nonmated_scores, mated_scores)
    neg_s, pos_s = np.sort(neg), np.sort(pos)
    thr = np.append(np.unique(np.concatenate((neg_s, pos_s)).astype(np.float64)), np.inf)
    fmr = (neg_s.size - np.searchsorted(neg_s, thr, side="left")) / neg_s.size
    fnmr = np.searchsorted(pos_s, thr, side="left") / pos_s.size
    return fmr, fnmr, thr


def eer(nonmated_scores: ArrayLike, mated_scores: ArrayLike) -> float:
    """Equal error rate: ``(FMR + FNMR) / 2`` at the ROC threshold minimising ``|FMR - FNMR|``."""
    fmr, fnmr, _ = roc(nonmated_scores, mated_scores)
    i = int(np.argmin(np.abs(fmr - fnmr)))
    return float((fmr[i] + fnmr[i]) / 2)


class VerificationAccuracy(NamedTuple):
    """LFW-style accuracy: mean and (population) standard deviation over the test folds."""

    mean: float
    std: float
    folds: np.ndarray


def _best_cut(u: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.float64:
    """Threshold maximising accuracy given the training counts ``pos``/``neg`` at each value ``u``.

    ``u``: the distinct training scores, ascending; cuts are ``u`` and ``inf`` (accept
    ``s >= cut``). The lowest cut wins a tie; the threshold is the cut's score for the lowest cut,
    ``nextafter(u[-1], inf)`` for ``inf``, else the float64 midpoint of the two scores around the
    cut (exact for float32 scores, and never equal to either of them).
    """
    pos_ge = pos.sum() - np.concatenate(([0], np.cumsum(pos)))  # positives >= u[k], k = 0..U
    neg_lt = np.concatenate(([0], np.cumsum(neg)))  # negatives < u[k]
    i = int(np.argmax(pos_ge + neg_lt))
    if i == 0:
        return np.float64(u[0])
    if i == u.size:
        return np.float64(_above(u[-1]))
    return (np.float64(u[i - 1]) + np.float64(u[i])) / 2


def verification_accuracy(
    similarity: ArrayLike, mated: ArrayLike, n_folds: int = 10
) -> VerificationAccuracy:
    """LFW-protocol verification accuracy by cross-validation over contiguous folds.

    The pairs are split into ``n_folds`` contiguous blocks in input order (``np.array_split``, as
    the LFW/insightface protocol with an unshuffled KFold). For each fold the threshold that
    maximises the accuracy on the other folds (the lowest such cut, placed midway between the two
    training scores that bracket it) is applied to the held-out fold.

    Returns:
        Mean and standard deviation (ddof = 0) of the fold accuracies, and the fold accuracies.
    """
    s = _vector(similarity, "similarity")
    y = _labels(mated, s.shape[0])
    if int(n_folds) != n_folds or not (2 <= n_folds <= s.shape[0]):
        raise ValueError(f"n_folds: expected an integer in [2, {s.shape[0]}], got {n_folds!r}")
    # One sort of all scores; a fold's training counts are the totals minus the fold's own.
    u, inverse = np.unique(s, return_inverse=True)
    inv = inverse.astype(np.int32 if u.size < 2**31 else np.int64).ravel()
    pos_all = np.bincount(inv[y], minlength=u.size)
    neg_all = np.bincount(inv[~y], minlength=u.size)
    q_, r_ = divmod(s.shape[0], int(n_folds))  # the contiguous folds of np.array_split
    edges = np.cumsum([0] + [q_ + 1] * r_ + [q_] * (int(n_folds) - r_))
    acc = np.empty(int(n_folds))
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inv_f, y_f = inv[lo:hi], y[lo:hi]
        pos = pos_all - np.bincount(inv_f[y_f], minlength=u.size)
        neg = neg_all - np.bincount(inv_f[~y_f], minlength=u.size)
        keep = (pos + neg) > 0  # the distinct scores of the training folds
        t = _best_cut(u[keep], pos[keep], neg[keep])
        acc[i] = np.mean((s[lo:hi] >= t) == y_f)
    return VerificationAccuracy(float(acc.mean()), float(acc.std()), acc)


# ----------------------------------------------------------------------------- EDC


@dataclass(frozen=True, eq=False)
class EDCCurve:
    """One EDC: an error rate at a fixed operating point against the discarded fraction.

    Attributes:
        discard_fraction: Discarded fraction at each point, ascending, starting at 0 (``fixed``:
            of the comparisons the error is counted on, mated for FNM-EDC and non-mated for
            FM-EDC; ``recompute``: nominal fraction of all comparisons).
        error: The error at each point (NaN where undefined): FNMR of the remaining mated
            comparisons (FNM-EDC) or FMR of the remaining non-mated ones (FM-EDC).
        thresholds: Threshold used at each point (constant under ``fixed``), in the units of
            ``acceptance``: a similarity (``similarity>=``) or an angular distance (``distance<``).
        target: The fixed rate of the operating point: an FMR (FNM-EDC) or an FNMR (FM-EDC).
        convention: The :class:`Convention` that produced the curve.
        n_mated: Number of mated comparisons before discarding.
        n_nonmated: Number of non-mated comparisons before discarding.
        error_type, threshold_rule, acceptance: The rules that produced it.
        n_target_base: At each point, the comparisons the target rate is a fraction of: the
            non-mated comparisons (FNM-EDC; mated for FM-EDC) the threshold is set from. Under
            ``fixed`` the whole set's count at every point; under ``recompute`` those left at
            each level. None (a hand-made curve): the whole set's count, ``fixed`` only.

    ``fnmr`` and ``fmr`` (the error and the target of an FNM-EDC) remain as read-only aliases.
    :attr:`resolved` says where the target is resolvable (:func:`resolvable`).
    """

    discard_fraction: np.ndarray
    error: np.ndarray
    thresholds: np.ndarray
    target: float
    convention: Convention
    n_mated: int
    n_nonmated: int = 0
    error_type: ErrorType = ErrorType.FNMR
    threshold_rule: ThresholdRule = ThresholdRule.AT_MOST
    acceptance: Acceptance = Acceptance.SIMILARITY
    n_target_base: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("discard_fraction", "error", "thresholds"):
            a = np.array(getattr(self, name), dtype=np.float64)
            if a.ndim != 1:
                raise ValueError(f"EDCCurve.{name}: expected a 1-D array, got shape {a.shape}")
            a.setflags(write=False)
            arrays[name] = a
        n = arrays["discard_fraction"].shape[0]
        for name, a in arrays.items():
            if a.shape[0] != n:
                raise ValueError(f"EDCCurve.{name}: length {a.shape[0]} != discard_fraction {n}")
            object.__setattr__(self, name, a)
        f = arrays["discard_fraction"]
        if n == 0 or f[0] != 0 or np.any(np.diff(f) < 0) or f[-1] > 1:
            raise ValueError("EDCCurve.discard_fraction: must start at 0, ascend and stay <= 1")
        object.__setattr__(self, "convention", _convention(self.convention))
        object.__setattr__(self, "target", _fmr_value(self.target, "EDCCurve.target"))
        object.__setattr__(self, "error_type", _error_type(self.error_type))
        object.__setattr__(self, "threshold_rule", _rule(self.threshold_rule))
        object.__setattr__(self, "acceptance", _acceptance(self.acceptance))
        if int(self.n_mated) < 1:
            raise ValueError(f"EDCCurve.n_mated: must be >= 1, got {self.n_mated}")
        if self.error_type is ErrorType.FMR and int(self.n_nonmated) < 1:
            raise ValueError(f"EDCCurve.n_nonmated: an FM-EDC needs >= 1, got {self.n_nonmated}")
        if self.n_target_base is not None:
            base = np.array(self.n_target_base, dtype=np.int64)
            if base.shape != (n,):
                raise ValueError(f"EDCCurve.n_target_base: expected shape ({n},), got {base.shape}")
            base.setflags(write=False)
            object.__setattr__(self, "n_target_base", base)

    @property
    def resolved(self) -> np.ndarray:
        """Per point: whether the target is resolvable there (:func:`resolvable` of the target
        and :attr:`n_target_base`)."""
        base = self.n_target_base
        if base is None:
            if self.convention is Convention.RECOMPUTE:
                raise ValueError("EDCCurve.resolved: a 'recompute' curve needs n_target_base (the counts left per level)")
            base = np.full(self.discard_fraction.shape, int(self.n_nonmated if self.error_type is ErrorType.FNMR else self.n_mated))
        return resolvable(self.target, base)

    @property
    def fnmr(self) -> np.ndarray:
        """The FNMR at each point of an FNM-EDC (``error``)."""
        if self.error_type is not ErrorType.FNMR:
            raise AttributeError("EDCCurve.fnmr: this is an FM-EDC; its FMR is .error, its FNMR target .target")
        return self.error

    @property
    def fmr(self) -> float:
        """The FMR target of an FNM-EDC (``target``)."""
        if self.error_type is not ErrorType.FNMR:
            raise AttributeError("EDCCurve.fmr: this is an FM-EDC; its FMR is .error, its FNMR target .target")
        return self.target

    @property
    def n_counted(self) -> int:
        """Comparisons the error is counted on before discarding (mated, or non-mated for FM-EDC)."""
        return int(self.n_mated if self.error_type is ErrorType.FNMR else self.n_nonmated)


class _Comparisons:
    """Validated similarity/mated arrays plus a cache of the highest non-mated scores.

    The explicit implementation of the comparison-scores interface the EDC and bootstrap engines
    use (see :func:`edc_curves`): ``n``, ``n_m``, ``n_nm``, ``sim_m`` (mated similarities in
    comparison order), ``mated_refs`` (their references; here positions) and
    :meth:`top_nonmated`. References are whatever the matching order's methods accept.
    """

    def __init__(self, similarity: ArrayLike, mated: ArrayLike) -> None:
        self.sim = _vector(similarity, "similarity")
        self.mated = _labels(mated, self.sim.shape[0])
        self.n = int(self.sim.shape[0])
        self.idx_m = np.flatnonzero(self.mated)
        self.n_m = int(self.idx_m.shape[0])
        self.n_nm = self.n - self.n_m
        if self.n_m == 0:
            raise ValueError("mated: there are no mated comparisons (all False)")
        if self.n_nm == 0:
            raise ValueError("mated: there are no non-mated comparisons (all True)")
        self.sim_m = self.sim[self.idx_m]
        self.mated_refs = self.idx_m
        self._top_vals: np.ndarray | None = None
        self._top_idx: np.ndarray | None = None

    def quality(self, quality: ArrayLike, name: str = "quality") -> np.ndarray:
        q = _vector(quality, name)
        _same_length(q, name, self.n, "similarity")
        return q

    def top_nonmated(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """At least ``min(m, n_nm)`` highest non-mated scores, descending, with their indices.

        Every non-mated score not returned is strictly below every score returned; ties keep
        input order.
        """
        m = int(min(max(m, 1), self.n_nm))
        if self._top_vals is None or self._top_vals.shape[0] < m:
            nonmated = ~self.mated
            if m >= self.n_nm:
                idx = np.flatnonzero(nonmated)
            else:
                neg = self.sim[nonmated]
                cutoff = np.partition(neg, self.n_nm - m)[self.n_nm - m]
                del neg
                idx = np.flatnonzero(nonmated & (self.sim >= cutoff))
            vals = self.sim[idx]
            order = np.argsort(-vals, kind="stable")
            self._top_vals, self._top_idx = vals[order], idx[order]
        assert self._top_vals is not None and self._top_idx is not None
        return self._top_vals, self._top_idx


class _ArrayOrder:
    """The stable quality order of an explicit per-comparison quality array.

    The explicit implementation of the order interface (see :func:`edc_curves`):
    ``levels(refs)`` (the ``recompute`` level of each referenced comparison: the largest j with
    ``floor(j * n / 20) <= stable rank``), ``ranks(refs)`` (the stable rank itself) and
    ``quality(refs)`` and ``value_counts()`` (the FM-EDC's tie groups). Levels need no full sort
    (:func:`_levels_of`); ranks sort once.
    """

    def __init__(self, q: np.ndarray) -> None:
        self.q = q
        self.n = int(q.shape[0])
        self.d = _level_starts(self.n)
        self._bounds: np.ndarray | None = None
        self._position: np.ndarray | None = None

    def levels(self, refs: np.ndarray) -> np.ndarray:
        if self._bounds is None:
            self._bounds = _level_bounds(self.q, self.d)
        return _levels_of(self.q, self._bounds, refs, self.d)

    def ranks(self, refs: np.ndarray) -> np.ndarray:
        if self._position is None:
            order = np.argsort(self.q, kind="stable")
            self._position = np.empty(self.n, dtype=np.int64)
            self._position[order] = np.arange(self.n)
        out: np.ndarray = self._position[refs]
        return out

    def quality(self, refs: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.q[refs]
        return out

    def value_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct pair qualities, ascending, and how many comparisons have each."""
        return np.unique(self.q, return_counts=True)


def _top(comp: Any, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``m`` non-mated of ``comp`` and their ties, even when more are cached.

    A prefix of the descending list, cut after the last value equal to the m-th: every
    non-mated score left out is strictly below every one kept.
    """
    vals, refs = comp.top_nonmated(m)
    if vals.shape[0] > m:
        keep = int(np.searchsorted(-vals, -vals[m - 1], side="right"))
        vals, refs = vals[:keep], refs[:keep]
    return vals, refs


class _DistanceView:
    """A scores object seen in the ``distance<`` domain ``x = -arccos(clip(s, -1, 1)) / pi`` (float64).

    The transform is monotone, so the highest similarities are the highest ``x``; it may merge
    neighbouring float64 similarities (never float32 ones), so the lowest group of a partial
    candidate list is dropped: every non-mated ``x`` left out stays strictly below every one kept.
    """

    def __init__(self, base: Any) -> None:
        self.base = base
        self.n, self.n_m, self.n_nm = base.n, base.n_m, base.n_nm
        self.mated_refs = base.mated_refs
        self.sim_m = _neg_distance(base.sim_m)
        self._vals: np.ndarray | None = None
        self._refs: np.ndarray | None = None

    def top_nonmated(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        m = int(min(max(m, 1), self.n_nm))
        if self._vals is None or self._vals.shape[0] < m:
            ask = m
            while True:
                vals, refs = self.base.top_nonmated(ask)
                x = _neg_distance(vals)
                if vals.shape[0] < self.n_nm:
                    keep = int(np.searchsorted(-x, -x[-1], side="left"))
                    x, refs = x[:keep], refs[:keep]
                if x.shape[0] >= m:
                    break
                ask = min(self.n_nm, max(2 * ask, vals.shape[0] + 1))
            self._vals, self._refs = x, refs
        assert self._vals is not None and self._refs is not None
        return self._vals, self._refs


def _view(scores: Any, strict: bool) -> Any:
    """``scores`` in the rules' domain: unchanged for ``similarity>=``, a :class:`_DistanceView` else."""
    if not strict:
        return scores
    if isinstance(scores, _DistanceView):
        return scores
    cache = getattr(scores, "_distance_view", None)  # one view per scores object: its candidates are reused
    if cache is None:
        cache = _DistanceView(scores)
        try:
            scores._distance_view = cache
        except AttributeError:  # pragma: no cover - a scores object without a __dict__
            pass
    return cache


def _reported(stat: np.ndarray | float, strict: bool) -> np.ndarray:
    """``at_most`` FNM-EDC thresholds from the order statistics (NaN stays NaN)."""
    return -np.asarray(stat, dtype=np.float64) if strict else _above(stat)


def _curve(comp: Any, frac: np.ndarray, err: np.ndarray, thr: np.ndarray, t: float, conv: Convention,
           e_type: ErrorType, rule: ThresholdRule, strict: bool, base: np.ndarray) -> EDCCurve:
    acc = Acceptance.DISTANCE if strict else Acceptance.SIMILARITY
    return EDCCurve(frac, err, thr, t, conv, comp.n_m, comp.n_nm, e_type, rule, acc, base)


def _fnm_candidates(comp: Any, targets: list[float], rule: ThresholdRule, strict: bool, m: int) -> list[_Point]:
    """The fixed operating points of an FNM-EDC from all comparisons (candidates grown as needed)."""
    while True:
        top_vals, _ = comp.top_nonmated(m)
        complete = top_vals.shape[0] >= comp.n_nm
        points = [_fnm_point(top_vals, complete, comp.n_nm, comp.sim_m, t, rule, strict) for t in targets]
        found = [p for p in points if p is not None]
        if len(found) == len(points):
            return found
        m = min(comp.n_nm, 4 * max(m, top_vals.shape[0]))


def _fixed_curves(
    comp: Any, order: Any, targets: list[float], rule: ThresholdRule = ThresholdRule.AT_MOST,
    strict: bool = False, e_type: ErrorType = ErrorType.FNMR,
) -> dict[float, EDCCurve]:
    if e_type is ErrorType.FMR:
        return _fixed_fm_curves(comp, order, targets, rule, strict)
    ks = [int(_kmax(t, comp.n_nm)) for t in targets]
    if rule is ThresholdRule.AT_MOST:
        top_vals, _ = comp.top_nonmated(max(ks) + 1)
        points = [_Point(top_vals[k], np.nan) for k in ks]
    else:
        points = _fnm_candidates(comp, targets, rule, strict, max(ks) + 2)
    q_m = order.quality(comp.mated_refs)
    o = np.argsort(q_m, kind="stable")
    qs, ss = q_m[o], comp.sim_m[o]
    discarded = np.concatenate(([0], np.flatnonzero(qs[1:] != qs[:-1]) + 1))
    frac = discarded / comp.n_m
    out = {}
    for t, p in zip(targets, points, strict=True):
        stat = p.e
        cum_err = np.concatenate(([0], np.cumsum(ss <= stat)))
        fnmr = (cum_err[-1] - cum_err[discarded]) / (comp.n_m - discarded)
        reported = _reported(stat, strict) if rule is ThresholdRule.AT_MOST else p.threshold
        thr = np.full(frac.shape, reported)
        out[t] = _curve(comp, frac, fnmr, thr, t, Convention.FIXED, ErrorType.FNMR, rule, strict, np.full(frac.shape, comp.n_nm))
    return out


def _fm_errors(comp: Any, es: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The top non-mated candidates, grown until every one with ``x >= min(es)`` is held."""
    need = float(np.nanmin(es)) if np.isfinite(es).any() else np.inf
    m = _MIN_CANDIDATES
    while True:
        vals, refs = _top(comp, m)
        if vals.shape[0] >= comp.n_nm or vals[-1] < need:
            return vals, refs
        m = min(comp.n_nm, 4 * max(m, vals.shape[0]))


def _fixed_fm_curves(
    comp: Any, order: Any, targets: list[float], rule: ThresholdRule, strict: bool
) -> dict[float, EDCCurve]:
    """FM-EDCs: threshold fixed from all mated comparisons, non-mated discarded (ties together)."""
    mated_asc = np.sort(comp.sim_m)
    max_nm = float(comp.top_nonmated(1)[0][0])
    maybe = [_fm_point(mated_asc, max_nm, comp.n_m, t, rule, strict) for t in targets]
    points = [p for p in maybe if p is not None]
    assert len(points) == len(maybe)  # _fm_point is None only when max_nm is unknown
    vals, refs = _fm_errors(comp, np.array([p.e for p in points], dtype=np.float64))
    uniq, counts = order.value_counts()
    q_m = np.asarray(order.quality(comp.mated_refs))
    nm_counts = counts - np.bincount(np.searchsorted(uniq, q_m), minlength=uniq.shape[0])
    keep = nm_counts > 0
    groups, nm_counts = uniq[keep], nm_counts[keep]
    discarded = np.cumsum(nm_counts) - nm_counts
    frac = discarded / comp.n_nm
    out = {}
    for t, p in zip(targets, points, strict=True):
        sel = vals >= p.e
        g = np.searchsorted(groups, np.asarray(order.quality(refs[sel])))
        per_group = np.bincount(g, minlength=groups.shape[0])
        left = per_group.sum() - (np.cumsum(per_group) - per_group)
        fmr = left / (comp.n_nm - discarded)
        out[t] = _curve(comp, frac, fmr, np.full(frac.shape, p.threshold), t, Convention.FIXED, ErrorType.FMR, rule, strict,
                        np.full(frac.shape, comp.n_m))
    return out


def _level_starts(n: int) -> np.ndarray:
    """Discarded count at each ``recompute`` level: floor(j * n / 20)."""
    return (np.arange(_N_LEVELS, dtype=np.int64) * n) // _N_LEVELS


def _level_bounds(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Quality at each level boundary d[1:] of the stable quality order (one ``np.partition``)."""
    bounds = d[1:]
    out: np.ndarray = np.partition(q, np.unique(bounds))[bounds]
    return out


def _levels_of(q: np.ndarray, v: np.ndarray, sel: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Level (chunk) of the comparisons ``sel``: the largest j with d[j] <= stable rank.

    The stable rank is the position in ``np.argsort(q, kind="stable")``; it is found without a
    full sort. ``v`` (from :func:`_level_bounds`) holds the qualities at the boundaries: a
    comparison whose quality differs from all of them lies after exactly the boundaries with a
    lower value; one whose quality equals a boundary value gets its exact rank from the count of
    lower qualities and its position (by index) among the equal ones.
    """
    x = q[sel]
    lo = np.searchsorted(v, x, side="left")
    hi = np.searchsorted(v, x, side="right")
    level: np.ndarray = lo.astype(np.int64)
    tied = np.flatnonzero(lo != hi)
    if tied.size:
        for u in np.unique(x[tied]):
            members = tied[x[tied] == u]
            n_lower = np.count_nonzero(q < u)
            equal = np.flatnonzero(q == u)
            ranks = n_lower + np.searchsorted(equal, sel[members])
            level[members] = np.searchsorted(d, ranks, side="right") - 1
    return level


def _left_per_level(comp: Any, order: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``recompute``: which mated comparisons remain at each level (L, n_m), and how many mated
    and non-mated comparisons are left per level (from the levels of the mated ones only)."""
    d = _level_starts(comp.n)
    level_m = np.asarray(order.levels(comp.mated_refs))
    remaining_m = level_m[None, :] >= np.arange(_N_LEVELS)[:, None]  # (L, n_m)
    n_m_j = remaining_m.sum(axis=1)
    return remaining_m, n_m_j, (comp.n - d) - n_m_j


def _recompute_curves(
    comp: Any, order: Any, targets: list[float], rule: ThresholdRule = ThresholdRule.AT_MOST,
    strict: bool = False, e_type: ErrorType = ErrorType.FNMR,
) -> dict[float, EDCCurve]:
    remaining_m, n_m_j, n_nm_j = _left_per_level(comp, order)
    if e_type is ErrorType.FMR:
        return _recompute_fm_curves(comp, order, targets, rule, strict, remaining_m, n_m_j, n_nm_j)
    k_max = int(_kmax(max(targets), comp.n_nm))
    m = max(4 * (k_max + 1), _MIN_CANDIDATES)
    while True:
        top_vals, top_refs = _top(comp, m)
        level_top = np.asarray(order.levels(top_refs))
        stats = np.full((len(targets), _N_LEVELS), np.nan)
        thr = np.full((len(targets), _N_LEVELS), np.nan)
        complete = top_vals.shape[0] >= comp.n_nm or m >= comp.n_nm
        short = False
        for j in range(_N_LEVELS):
            if n_nm_j[j] == 0:
                continue
            pos = np.flatnonzero(level_top >= j)
            if rule is ThresholdRule.AT_MOST:
                for i, t in enumerate(targets):
                    k = int(_kmax(t, n_nm_j[j]))
                    if k < pos.shape[0]:
                        stats[i, j] = top_vals[pos[k]]
                    else:
                        short = True
                continue
            nm_desc, mated_x = top_vals[pos], comp.sim_m[remaining_m[j]]
            for i, t in enumerate(targets):
                p = _fnm_point(nm_desc, complete, int(n_nm_j[j]), mated_x, t, rule, strict)
                if p is None:
                    short = True
                else:
                    stats[i, j], thr[i, j] = p
        if not short or complete:
            break
        m *= 4
    out = {}
    for i, t in enumerate(targets):
        with np.errstate(invalid="ignore", divide="ignore"):
            err = (remaining_m & (comp.sim_m[None, :] <= stats[i][:, None])).sum(axis=1)
            fnmr = np.where((n_m_j > 0) & (n_nm_j > 0), err / n_m_j, np.nan)
        reported = _reported(stats[i], strict) if rule is ThresholdRule.AT_MOST else thr[i]
        out[t] = _curve(comp, RECOMPUTE_DISCARD_FRACTIONS, fnmr, reported, t, Convention.RECOMPUTE,
                        ErrorType.FNMR, rule, strict, n_nm_j)
    return out


def _recompute_fm_curves(
    comp: Any, order: Any, targets: list[float], rule: ThresholdRule, strict: bool,
    remaining_m: np.ndarray, n_m_j: np.ndarray, n_nm_j: np.ndarray,
) -> dict[float, EDCCurve]:
    """FM-EDCs on the ``recompute`` grid: the threshold recomputed from the remaining mated
    comparisons at each level, the FMR counted on the remaining non-mated ones."""
    live = [j for j in range(_N_LEVELS) if n_m_j[j] > 0 and n_nm_j[j] > 0]
    mated = {j: np.sort(comp.sim_m[remaining_m[j]]) for j in live}
    m = _MIN_CANDIDATES
    while True:
        top_vals, top_refs = _top(comp, m)
        level_top = np.asarray(order.levels(top_refs))
        complete = top_vals.shape[0] >= comp.n_nm or m >= comp.n_nm
        es = np.full((len(targets), _N_LEVELS), np.nan)
        thr = np.full((len(targets), _N_LEVELS), np.nan)
        short = False
        for j in live:
            first = np.flatnonzero(level_top >= j)[:1]
            if first.size:
                max_nm: float | None = float(top_vals[first[0]])
            else:  # every remaining non-mated score lies below the candidates
                max_nm = -np.inf if complete or top_vals[-1] <= mated[j][-1] else None
            for i, t in enumerate(targets):
                p = _fm_point(mated[j], max_nm, int(n_m_j[j]), t, rule, strict)
                if p is None:
                    short = True
                    continue
                es[i, j], thr[i, j] = p
                if not complete and p.e <= top_vals[-1]:
                    short = True  # scores below the candidates could be false matches
        if not short or complete:
            break
        m *= 4
    remaining_c = level_top[None, :] >= np.arange(_N_LEVELS)[:, None]  # (L, K)
    out = {}
    for i, t in enumerate(targets):
        with np.errstate(invalid="ignore", divide="ignore"):
            err = (remaining_c & (top_vals[None, :] >= es[i][:, None])).sum(axis=1)
            fmr = np.where((n_m_j > 0) & (n_nm_j > 0), err / n_nm_j, np.nan)
        out[t] = _curve(comp, RECOMPUTE_DISCARD_FRACTIONS, fmr, thr[i], t, Convention.RECOMPUTE,
                        ErrorType.FMR, rule, strict, n_m_j)
    return out


def _targets(targets: float | Sequence[float] | None, e_type: ErrorType) -> list[float]:
    if targets is None:
        if e_type is ErrorType.FMR:
            raise ValueError("targets: an FM-EDC needs its FNMR targets (there is no default)")
        targets = DEFAULT_FMR_TARGETS
    return _fmr_targets(targets, "targets")


def edc_curves(
    scores: Any,
    order: Any,
    targets: float | Sequence[float] | None = None,
    convention: Convention | str = Convention.RECOMPUTE,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> dict[float, EDCCurve]:
    """EDCs from prepared comparison scores and a prepared quality order (bounded evaluation).

    The engine behind :func:`edc_many`, for comparison sets that are not held as arrays
    (:mod:`exfiqa.evaluation.pairs`: template pair lists, implicit all-vs-all). ``scores`` provides
    ``n``, ``n_m``, ``n_nm``, ``sim_m`` (mated similarities in comparison order), ``mated_refs``
    and ``top_nonmated(m)`` (at least ``min(m, n_nm)`` highest non-mated similarities, descending,
    ties in comparison order, with their references; every other non-mated similarity strictly
    lower). ``order`` provides ``levels(refs)``, ``ranks(refs)`` and ``quality(refs)`` of the
    stable pair-quality order (ties broken by comparison position), and ``value_counts()`` (FM-EDC
    under ``fixed``). Only the mated and the top non-mated comparisons are touched, so the results
    are those of :func:`edc_many` on the materialised arrays, exactly.

    ``targets``: FMR targets of an FNM-EDC (default :data:`DEFAULT_FMR_TARGETS`) or FNMR targets
    of an FM-EDC (required); keyed by target. ``threshold_rule``, ``acceptance``: module docstring.
    """
    conv, rule, e_type = _convention(convention), _rule(threshold_rule), _error_type(error_type)
    strict = _strict(acceptance)
    tg = _targets(targets, e_type)
    comp = _view(scores, strict)
    if conv is Convention.FIXED:
        return _fixed_curves(comp, order, tg, rule, strict, e_type)
    return _recompute_curves(comp, order, tg, rule, strict, e_type)


def _edc_prepared(
    comp: _Comparisons,
    quality: ArrayLike,
    targets: float | Sequence[float] | None,
    convention: Convention | str,
    **rules: Any,
) -> dict[float, EDCCurve]:
    return edc_curves(comp, _ArrayOrder(comp.quality(quality)), targets, convention, **rules)


def edc(
    similarity: ArrayLike,
    mated: ArrayLike,
    quality: ArrayLike,
    target: float = 1e-3,
    convention: Convention | str = Convention.RECOMPUTE,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> EDCCurve:
    """The EDC of one quality measure: by default FNMR at an FMR target against the discarded fraction.

    Args:
        similarity: Similarity score of every comparison (higher = more alike).
        mated: True for mated comparisons, same length.
        quality: Pair quality of every comparison (higher = better), same length.
        target: FMR target in (0, 1) (FNM-EDC), or the FNMR target of an FM-EDC.
        convention: ``"recompute"`` (default, as the paper) or ``"fixed"`` (module docstring).
        threshold_rule, acceptance: How the target selects the threshold and what is accepted
            (module docstring); :func:`compat_rules` names the authors' scripts' rules.
        error_type: ``"fnmr"`` (FNM-EDC, default) or ``"fmr"`` (FM-EDC).
    """
    rules = {"threshold_rule": threshold_rule, "acceptance": acceptance, "error_type": error_type}
    return edc_many(similarity, mated, quality, (target,), convention, **rules)[_fmr_value(target, "target")]


def edc_many(
    similarity: ArrayLike,
    mated: ArrayLike,
    quality: ArrayLike,
    targets: Sequence[float] | None = None,
    convention: Convention | str = Convention.RECOMPUTE,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> dict[float, EDCCurve]:
    """EDCs at several targets sharing one pass over the data; keyed by target (see :func:`edc`)."""
    rules = {"threshold_rule": threshold_rule, "acceptance": acceptance, "error_type": error_type}
    return _edc_prepared(_Comparisons(similarity, mated), quality, targets, convention, **rules)


def resolvable(target: float, n: int | ArrayLike) -> np.ndarray:
    """Whether a target rate can be resolved on ``n`` comparisons: at least one expected error at
    the threshold, ``target * n >= 1`` (with the threshold rules' relative tolerance of 1e-9).

    ``n``: the comparisons the target is a fraction of (non-mated for an FMR target, mated for an
    FNMR target); a count or an array of counts (one per discard level). Below it the target
    means "no error at all" and every smaller target gives the same threshold and curve: with
    300 non-mated comparisons FMR 1e-2 is resolved (3 expected false matches), 1e-3 and 1e-4 are
    not (both admit none).
    """
    t = _fmr_value(target, "target")
    counts = np.asarray(n)
    if counts.size and (not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0):
        raise ValueError(f"n: expected non-negative integer counts, got {n!r}")
    return np.asarray(np.floor(t * counts * (1.0 + _FMR_TOL)) >= 1)


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
    conv, e_type = _convention(convention), _error_type(error_type)
    n = _labels(mated, np.asarray(mated).shape[0])
    q = _vector(quality, "quality")
    _same_length(q, "quality", n.shape[0], "mated")
    base_kind = ~n if e_type is ErrorType.FNMR else n
    if conv is Convention.FIXED:
        counted = q[n] if e_type is ErrorType.FNMR else q[~n]
        points = np.unique(counted).shape[0]
        return resolvable(target, np.full(points, int(base_kind.sum())))
    in_order = base_kind[np.argsort(q, kind="stable")]
    gone = np.concatenate(([0], np.cumsum(in_order)))[_level_starts(n.shape[0])]
    return resolvable(target, int(base_kind.sum()) - gone)


def _area_points(curve: EDCCurve, limit: float) -> np.ndarray:
    """The points an area up to ``limit`` reads: those at or below it, and under ``recompute``
    the next one when the limit falls between grid points (the interpolated end point)."""
    frac = curve.discard_fraction
    inside = frac <= limit + 1e-12
    if curve.convention is Convention.RECOMPUTE:
        i = int(inside.sum())
        if frac[i - 1] < limit - 1e-12 and i < frac.shape[0]:
            inside[i] = True
    return inside


def resolved_for(
    scores: Any,
    order: Any,
    target: float,
    convention: Convention | str = Convention.RECOMPUTE,
    limit: float = 0.3,
    *,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> bool:
    """:func:`pauc_resolved` of the EDC of prepared ``scores`` and ``order`` (the interface of
    :func:`edc_curves`) without computing the curve: the counts left per level follow from the
    levels of the mated comparisons alone (bounded at any size)."""
    conv, e_type = _convention(convention), _error_type(error_type)
    if conv is Convention.FIXED:
        return bool(resolvable(target, int(scores.n_nm if e_type is ErrorType.FNMR else scores.n_m)))
    _, n_m_j, n_nm_j = _left_per_level(scores, order)
    base = n_nm_j if e_type is ErrorType.FNMR else n_m_j
    curve = EDCCurve(RECOMPUTE_DISCARD_FRACTIONS, np.zeros(_N_LEVELS), np.zeros(_N_LEVELS), target, conv,
                     max(int(scores.n_m), 1), int(scores.n_nm), n_target_base=base)
    return pauc_resolved(curve, limit)


def pauc_resolved(curve: EDCCurve, limit: float = 0.3) -> bool:
    """Whether every point a :func:`pauc` up to ``limit`` reads has a resolvable target
    (:attr:`EDCCurve.resolved`): the whole set, and under ``recompute`` each level up to the limit."""
    return bool(curve.resolved[_area_points(curve, _limit_value(limit))].all())


def _stepwise_area(frac: np.ndarray, err: np.ndarray, limit: float) -> np.ndarray:
    """Area under right-continuous steps along the last axis, the last step held to ``limit``."""
    nxt = np.concatenate((frac[..., 1:], np.full(frac.shape[:-1] + (1,), np.inf)), axis=-1)
    width = np.minimum(nxt, limit) - np.minimum(frac, limit)
    return np.asarray(np.where(width > 0, err * width, 0.0).sum(axis=-1))


def _trapezoid_area(frac: np.ndarray, err: np.ndarray, limit: float) -> float:
    if limit > frac[-1] + 1e-12:
        raise ValueError(
            f"limit: {limit} lies beyond the last discard fraction of the curve ({frac[-1]})"
        )
    inside = frac <= limit + 1e-12
    x, y = frac[inside], err[inside]
    if x[-1] < limit - 1e-12:
        i = x.shape[0]
        y_lim = err[i - 1] + (err[i] - err[i - 1]) * (limit - frac[i - 1]) / (frac[i] - frac[i - 1])
        x, y = np.append(x, limit), np.append(y, y_lim)
    if np.isnan(y).any():
        raise ValueError(
            "curve: the error is undefined (NaN, no mated or non-mated comparisons left) at a discard "
            f"fraction <= limit {limit}"
        )
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def _best_area(n_errors: int, n_counted: int, limit: float) -> float:
    """Stepwise area of max(0, e0 - f) / (1 - f) on the grid f = i / n_counted, up to ``limit``."""
    k = np.arange(min(n_errors, math.ceil(limit * n_counted)), dtype=np.float64)
    if k.size == 0:
        return 0.0
    height = (n_errors - k) / (n_counted - k)
    width = np.minimum((k + 1) / n_counted, limit) - k / n_counted
    return float(np.sum(height * np.maximum(width, 0.0)))


def _triangle_area(e0: float | np.ndarray, limit: float) -> float | np.ndarray:
    """Area under max(0, e0 - f) from 0 to ``limit`` (Schlett's ``compute_edc_area_under_theoretical_best``)."""
    e0 = np.asarray(e0, dtype=np.float64)
    return e0**2 / 2 - np.maximum(e0 - limit, 0.0) ** 2 / 2


def pauc(curve: EDCCurve, limit: float = 0.3, subtract_best: bool | BestCurve | str = False) -> float:
    """Partial area under an EDC from discard fraction 0 to ``limit`` (lower is better).

    ``fixed``: stepwise area; ``subtract_best`` subtracts the area under the theoretical best
    curve (module docstring): ``True`` or ``"triangle"`` the reference's triangle, ``"stepwise"``
    the stepwise best on the finest grid. ``recompute``: trapezoid area, linearly interpolated at
    the limit; ``subtract_best`` raises. Unscaled (multiply for printing and record the factor,
    see :func:`pauc_meta`).
    """
    lim = _limit_value(limit)
    best = _best_curve(subtract_best)
    if lim == 0.0:
        return 0.0
    if curve.convention is Convention.FIXED:
        if np.isnan(curve.error).any():
            raise ValueError("curve: the error contains NaN")
        area = float(_stepwise_area(curve.discard_fraction, curve.error, lim))
        if best is BestCurve.STEPWISE:
            area -= _best_area(int(round(curve.error[0] * curve.n_counted)), curve.n_counted, lim)
        elif best is BestCurve.TRIANGLE:
            area -= float(_triangle_area(curve.error[0], lim))
        return area
    if best is not None:
        raise ValueError(
            "subtract_best: the theoretical best curve is defined for the 'fixed' convention only"
        )
    return _trapezoid_area(curve.discard_fraction, curve.error, lim)


# ----------------------------------------------------------------------------- metadata, frames


def pauc_meta(
    convention: Convention | str,
    limit: float = 0.3,
    subtract_best: bool | BestCurve | str = False,
    scale: float = 1.0,
    *,
    threshold_rule: ThresholdRule | str = ThresholdRule.AT_MOST,
    acceptance: Acceptance | str = Acceptance.SIMILARITY,
    error_type: ErrorType | str = ErrorType.FNMR,
) -> dict[str, Any]:
    """Everything needed to read a pAUC number: store it beside every pAUC written.

    Args:
        convention: The EDC convention.
        limit: Upper discard-fraction limit of the area.
        subtract_best: Whether (and which) theoretical best curve was subtracted: ``False``,
            ``True`` (= ``"triangle"``), ``"triangle"`` or ``"stepwise"``.
        scale: Factor the printed numbers were multiplied by (e.g. 100 for the poster's table).
        threshold_rule, acceptance, error_type: The rules (module docstring).

    Returns:
        ``metric, convention, limit, subtract_best`` (bool), ``best_curve`` (its name or
        ``"none"``), ``scale, threshold_rule, acceptance, error_type``, the descriptions
        ``threshold, discard_base, area_rule`` and ``tie_order`` (:data:`TIE_ORDER_NOTE` where ties
        matter: ``recompute``).
    """
    conv, rule, acc, e_type = _convention(convention), _rule(threshold_rule), _acceptance(acceptance), _error_type(error_type)
    best = _best_curve(subtract_best)
    if best is not None and conv is Convention.RECOMPUTE:
        raise ValueError("subtract_best: is defined for the 'fixed' convention only")
    static = dict(PAUC_META[conv])
    fm = e_type is ErrorType.FMR
    if fm:
        static["threshold"] = static["threshold"].replace("non-mated", "mated")
        if conv is Convention.FIXED:
            static["discard_base"] = "non-mated comparisons; equal qualities discarded together"
    static["threshold"] += f"; {_DESCRIBE_RULE[rule, e_type]}; accept {acc.value}"
    static.pop("best_curve")
    return {
        "metric": "pAUC-EDC (FMR at fixed FNMR vs discarded fraction)" if fm
        else "pAUC-EDC (FNMR at fixed FMR vs discarded fraction)",
        "convention": conv.value,
        "limit": _limit_value(limit),
        "subtract_best": best is not None,
        "best_curve": best.value if best is not None else "none",
        "scale": float(scale),
        "threshold_rule": rule.value,
        "acceptance": acc.value,
        "error_type": e_type.value,
        **static,
        "tie_order": TIE_ORDER_NOTE if conv is Convention.RECOMPUTE else "none: equal qualities are discarded together",
    }


def _extra_columns(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Protocol columns beyond today's defaults: present only when a rule differs from them."""
    out: dict[str, Any] = {}
    if meta["threshold_rule"] != ThresholdRule.AT_MOST.value or meta["acceptance"] != Acceptance.SIMILARITY.value:
        out.update(threshold_rule=meta["threshold_rule"], acceptance=meta["acceptance"])
    if meta["error_type"] != ErrorType.FNMR.value:
        out["error_type"] = meta["error_type"]
    return out


def _rate_columns(error_type: str) -> tuple[str, str]:
    """(target column, error column): ``("fmr", "fnmr")`` for FNM-EDC, swapped for FM-EDC."""
    return ("fmr", "fnmr") if error_type == ErrorType.FNMR.value else ("fnmr", "fmr")


def pauc_rows(
    method: str, dataset: str, fr_model: str, curves: Mapping[float, EDCCurve], meta: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Rows of a tidy pAUC table for one method's curves (one per target) under ``meta`` (:func:`pauc_meta`).

    Columns ``method, dataset, fr_model, fmr, convention, limit, subtract_best, scale``, then
    ``best_curve`` when subtracting, ``threshold_rule, acceptance`` when either differs from the
    default, ``error_type`` for FM-EDCs (whose target column is ``fnmr``), ``pauc`` (times ``scale``)
    and ``resolved`` (:func:`pauc_resolved`: False where the target is below what the comparisons
    resolve, for the whole set or at a level up to the limit).
    """
    target_col, _ = _rate_columns(meta["error_type"])
    extra = ({"best_curve": meta["best_curve"]} if meta["subtract_best"] else {}) | _extra_columns(meta)
    best = meta["best_curve"] if meta["subtract_best"] else False
    rows = []
    for t, c in curves.items():
        rows.append({
            "method": method, "dataset": dataset, "fr_model": fr_model, target_col: t,
            "convention": meta["convention"], "limit": meta["limit"], "subtract_best": meta["subtract_best"],
            "scale": meta["scale"], **extra, "pauc": pauc(c, meta["limit"], best) * meta["scale"],
            "resolved": pauc_resolved(c, meta["limit"]),
        })
    return rows


def edc_rows(method: str, dataset: str, fr_model: str, curves: Mapping[float, EDCCurve]) -> list[pd.DataFrame]:
    """Tidy EDC points of one method's curves: columns ``method, dataset, fr_model, fmr, convention``,
    the rule columns of :func:`pauc_rows` where they differ from the defaults, ``discard_fraction, fnmr``
    (FM-EDC: ``fnmr`` is the target and ``fmr`` the error) and ``resolved`` (:attr:`EDCCurve.resolved`
    of the point)."""
    import pandas as pd

    frames = []
    for t, c in curves.items():
        meta = {"threshold_rule": c.threshold_rule.value, "acceptance": c.acceptance.value,
                "error_type": c.error_type.value}
        target_col, error_col = _rate_columns(c.error_type.value)
        n = c.discard_fraction.shape[0]
        cols: dict[str, Any] = {
            "method": [method] * n, "dataset": [dataset] * n, "fr_model": [fr_model] * n,
            target_col: np.full(n, t), "convention": [c.convention.value] * n,
        }
        cols.update({k: [v] * n for k, v in _extra_columns(meta).items()})
        cols.update({"discard_fraction": c.discard_fraction, error_col: c.error, "resolved": c.resolved})
        frames.append(pd.DataFrame(cols))
    return frames


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
    comp = _Comparisons(similarity, mated)
    curves = {}
    for method, q in qualities.items():
        try:
            curves[method] = _edc_prepared(comp, q, targets, convention, **rules)
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
    import pandas as pd

    rules = {"threshold_rule": threshold_rule, "acceptance": acceptance, "error_type": error_type}
    frames = []
    for method, by_t in _frame_curves(similarity, mated, qualities, targets, _convention(convention), rules).items():
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
    import pandas as pd

    rules = {"threshold_rule": threshold_rule, "acceptance": acceptance, "error_type": error_type}
    meta = pauc_meta(convention, limit, subtract_best, scale, **rules)
    rows = []
    for method, by_t in _frame_curves(similarity, mated, qualities, targets, meta["convention"], rules).items():
        rows += pauc_rows(method, dataset, fr_model, by_t, meta)
    return pd.DataFrame(rows)
