"""What a score means on a reference set: quantiles and 0-100 percentile ranks.

``exfiqa calibrate`` writes the quantiles of each score column on reference images (a reference JSON);
``exfiqa score --reference`` ranks against them (same model only). Conventions:

* Quantiles: ``n_quantiles`` (default 1001) at ``p_i = i / (n_quantiles - 1)``, ``np.quantile`` linear.
* Percentile rank of ``x``: ``100 * p`` read off the table: 0 below the minimum, 100 above the maximum,
  linear between two quantiles, the middle ``(p_first + p_last) / 2`` of the quantiles it equals.
* Sigmoid (``--sigmoid``): OFIQ's form ``round(100 * sigmoid((x - x0) / w))`` clipped to [0, 100], ``x0``
  the reference median and ``w = (q95 - q05) / (2 ln 19)`` (:func:`fit_sigmoid`; ``w = 0`` maps below / at
  / above ``x0`` to 0 / 50 / 100). Not comparable with OFIQ's scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["REFERENCE_FORMAT", "REFERENCE_VERSION", "fit_sigmoid", "make_reference", "percentile_rank",
           "read_reference", "reference_quantiles", "sigmoid_score", "write_reference"]

REFERENCE_FORMAT = "exfiqa-reference"  # a reference JSON's ``format`` and ``version``
REFERENCE_VERSION = 1


def reference_quantiles(values: ArrayLike, n_quantiles: int = 1001) -> np.ndarray:
    """The ``n_quantiles`` quantiles (float64) of the finite ``values`` (module docstring)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if int(n_quantiles) != n_quantiles or n_quantiles < 2:
        raise ValueError(f"n_quantiles: an integer >= 2, got {n_quantiles!r}")
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError("values: need at least one value, all finite")
    return np.quantile(v, np.linspace(0.0, 1.0, int(n_quantiles)))


def percentile_rank(x: ArrayLike, quantiles: ArrayLike) -> np.ndarray:
    """The 0-100 rank of each ``x`` against an ascending quantile table (module docstring); NaN stays NaN."""
    q = np.asarray(quantiles, dtype=np.float64)
    if q.ndim != 1 or q.size < 2 or not np.isfinite(q).all() or np.any(np.diff(q) < 0):
        raise ValueError("quantiles: expected >= 2 finite values, ascending")
    xs = np.asarray(x, dtype=np.float64)
    p = np.linspace(0.0, 1.0, q.size)
    lo = np.searchsorted(q, xs, side="left")
    hi = np.searchsorted(q, xs, side="right")
    out = np.empty(xs.shape, dtype=np.float64)
    tied = hi > lo
    out[tied] = (p[lo[tied]] + p[hi[tied] - 1]) / 2
    below, above = (lo == 0) & ~tied, (lo == q.size) & ~tied
    out[below], out[above] = 0.0, 1.0
    mid = ~tied & ~below & ~above
    i = lo[mid]
    out[mid] = p[i - 1] + (xs[mid] - q[i - 1]) / (q[i] - q[i - 1]) * (p[i] - p[i - 1])
    out[np.isnan(xs)] = np.nan
    return 100.0 * out


def fit_sigmoid(quantiles: ArrayLike) -> tuple[float, float]:
    """``(x0, w)`` of the sigmoid mapping from a quantile table (module docstring)."""
    q = np.asarray(quantiles, dtype=np.float64)
    p = np.linspace(0.0, 1.0, q.size)
    q05, x0, q95 = np.interp([0.05, 0.5, 0.95], p, q)
    return float(x0), float((q95 - q05) / (2 * np.log(19.0)))


def sigmoid_score(x: ArrayLike, x0: float, w: float) -> np.ndarray:
    """``round(100 * sigmoid((x - x0) / w))`` clipped to [0, 100], as floats (NaN stays NaN)."""
    xs = np.asarray(x, dtype=np.float64)
    if w > 0:
        with np.errstate(over="ignore"):
            s = 100.0 / (1.0 + np.exp(-(xs - x0) / w))
    else:
        s = np.where(xs < x0, 0.0, np.where(xs > x0, 100.0, 50.0))
    out: np.ndarray = np.clip(np.floor(s + 0.5), 0.0, 100.0)
    out[np.isnan(xs)] = np.nan
    return out


def make_reference(
    columns: Mapping[str, ArrayLike], *, name: str, checkpoint: Mapping[str, str], n_quantiles: int = 1001
) -> dict[str, Any]:
    """The reference dict: ``format``, ``version``, ``name``, ``n_images``, ``checkpoint`` (``{"name", "sha256"}``),
    ``n_quantiles`` and ``columns`` (``{column: [quantile, ...]}``)."""
    sizes = {len(np.asarray(v).ravel()) for v in columns.values()}
    if len(sizes) != 1:
        raise ValueError(f"columns: expected one value per image in every column, got lengths {sorted(sizes)}")
    return {
        "format": REFERENCE_FORMAT, "version": REFERENCE_VERSION, "name": str(name), "n_images": sizes.pop(),
        "checkpoint": dict(checkpoint), "n_quantiles": int(n_quantiles),
        "columns": {c: reference_quantiles(v, n_quantiles).tolist() for c, v in columns.items()},
    }


def write_reference(ref: Mapping[str, Any], fh: Any) -> None:
    """Write ``ref`` as JSON to the text file ``fh``: one line per key and per column's quantiles."""
    head = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in ref.items() if k != "columns"]
    cols = [f"  {json.dumps(c)}: {json.dumps(q)}" for c, q in ref["columns"].items()]
    fh.write("{\n" + ",\n".join([*head, ' "columns": {\n' + ",\n".join(cols) + "\n }"]) + "\n}\n")


def read_reference(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A reference JSON, checked (``ValueError`` naming the file and key otherwise)."""
    try:
        with open(path, encoding="utf-8") as fh:
            ref = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read a reference JSON ({exc})") from None
    if not isinstance(ref, dict) or ref.get("format") != REFERENCE_FORMAT:
        raise ValueError(f"{path}: not an exfiqa reference (format {REFERENCE_FORMAT!r}); write one with `exfiqa calibrate`")
    if ref.get("version") != REFERENCE_VERSION:
        raise ValueError(f"{path}: reference version {ref.get('version')!r}, this exfiqa reads version {REFERENCE_VERSION}")
    cols = ref.get("columns")
    if not isinstance(cols, dict) or not cols:
        raise ValueError(f"{path}: key 'columns' must map each score column to its quantiles")
    for c, q in cols.items():
        try:
            percentile_rank([], q)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: columns.{c}: {exc}") from None
    return ref
