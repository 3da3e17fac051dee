"""Tables as CSV + LaTeX (booktabs), written atomically and byte-identically.

Every pAUC table carries its convention, discard limit, FMR and scale so that a number can never
be read under the wrong protocol: the CSV as columns (``convention, limit, fmr, scale``), the
LaTeX file in its caption (constant protocol columns are dropped from the LaTeX body).

Unresolved FMR targets (:func:`exfiqa.evaluation.metrics.resolvable`): a tidy table flags them in a boolean
``resolved`` column, a wide one (datasets as columns) in ``resolved`` (every cell of the row) and
``unresolved_in`` (the columns whose cell is not, ``"; "``-separated; :func:`flag_unresolved`). The
LaTeX file marks those cells with a dagger and explains it in a footnote to the caption
(:data:`UNRESOLVED_NOTE`).

Numbers: the CSV keeps full precision (Python's shortest round-trip repr of each float); pAUC
values in every table are the raw area times ``scale`` (the config's ``pauc_scale``, 1000 by
default, as on the poster), and the ``scale`` column says so. The LaTeX file and the index
page show significant digits (``%.4g`` unless a table asks otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exfiqa.evaluation.metrics import rule_note
from exfiqa.io import atomic_write

__all__ = [
    "PROTOCOL_COLUMNS", "UNRESOLVED_NOTE", "flag_unresolved", "latex_escape", "latex_unescape", "pauc_per_exit", "protocol", "protocol_note", "save_table",
    "wide_pauc",
]

#: Columns that state how a pAUC was computed (see :func:`protocol`).
PROTOCOL_COLUMNS = ("fmr", "convention", "limit", "scale", "seed")


def protocol_note(convention: str, limit: float, fmr: float | None = None, scale: float = 1.0) -> str:
    """One line stating how pAUC numbers were computed, e.g. for captions and notebook prose."""
    parts = [f"pAUC-EDC up to discard {limit:g}", f"convention '{convention}'"]
    if fmr is not None:
        parts.append(f"FNMR@FMR={fmr:g}")
    if scale != 1.0:
        parts.append(f"pAUC x{scale:g}")
    return ", ".join(parts) + "; lower is better"


def protocol(
    convention: str, limit: float, fmr: float | None = None, scale: float = 1.0, seed: int | None = None
) -> dict[str, Any]:
    """The protocol columns a table's rows share (``fmr`` and ``seed`` only when given)."""
    out: dict[str, Any] = {"convention": convention, "limit": float(limit), "scale": float(scale)}
    if fmr is not None:
        out["fmr"] = float(fmr)
    if seed is not None:
        out["seed"] = int(seed)
    return out


def _note(proto: Mapping[str, Any]) -> str:
    text = protocol_note(proto["convention"], proto["limit"], proto.get("fmr"), proto.get("scale", 1.0))
    if "threshold_rule" in proto or "acceptance" in proto:
        text += "; " + rule_note(proto.get("threshold_rule", "at_most"), proto.get("acceptance", "similarity>="))
    return text + (f"; seed {proto['seed']}" if "seed" in proto else "")


#: The footnote of a LaTeX table with daggered (unresolved) cells.
UNRESOLVED_NOTE = (
    "FMR target not resolved: fewer than one expected false match at the threshold (FMR x non-mated "
    "comparisons below 1) for the whole set or, under 'recompute', at a discard level up to the limit; "
    "the value cannot tell this target from smaller ones."
)
#: Tidy tables: the value column a ``resolved`` flag marks (the first present).
RESOLVED_VALUE_COLUMNS = ("pauc", "this_run", "mean_pauc", "delta_pauc")
_DAGGER = "ZZUNRESOLVEDZZ"


def flag_unresolved(wide: pd.DataFrame, resolved: pd.DataFrame) -> pd.DataFrame:
    """``wide`` with the columns ``resolved`` (every flagged cell of the row resolved) and
    ``unresolved_in`` (the columns whose cell is not, ``"; "``-separated, empty if none).

    ``resolved``: booleans aligned with ``wide`` (same index; a subset of its columns; missing
    cells count as resolved).
    """
    flags = resolved.reindex(index=wide.index).fillna(True).astype(bool)
    out = wide.copy()
    out["resolved"] = flags.all(axis=1).to_numpy()
    out["unresolved_in"] = ["; ".join(str(c) for c in flags.columns if not row[c]) for _, row in flags.iterrows()]
    return out


def _unresolved_cells(frame: pd.DataFrame) -> dict[str, list[bool]]:
    """Column -> per-row marks of the cells to dagger (see the module docstring)."""
    if "unresolved_in" in frame.columns:
        lists = [set(v.split("; ")) if isinstance(v, str) and v else set() for v in frame["unresolved_in"]]
        return {c: [c in s for s in lists] for c in frame.columns if any(c in s for s in lists)}
    if "resolved" in frame.columns:
        col = next((c for c in RESOLVED_VALUE_COLUMNS if c in frame.columns), None)
        bad = [v is False or v is np.False_ for v in frame["resolved"].astype(object)]
        if col is not None and any(bad):
            return {col: bad}
    return {}


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (pandas leaves captions unescaped)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_unescape(text: str) -> str:
    """Inverse of :func:`latex_escape` (to show a caption read back from a ``.tex`` file)."""
    for ch, esc in sorted(_LATEX_SPECIAL.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(esc, ch)
    return text


def save_table(
    frame: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    name: str,
    caption: str = "",
    float_format: str = "%.4g",
    index: bool = False,
    protocol: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``name.csv`` (full precision) and ``name.tex`` (booktabs, caption) atomically.

    ``protocol`` (from :func:`protocol`): its entries become columns of the CSV where the frame
    lacks them, and the caption states them; protocol columns that are constant are left out
    of the LaTeX body (the caption carries them). ``float_format`` applies to the LaTeX file only.
    Cells flagged as unresolved (module docstring) get a dagger in the LaTeX file and the caption a
    footnote (:data:`UNRESOLVED_NOTE`); the flag columns are then left out of the LaTeX body.
    Returns the two paths.
    """
    out = Path(out_dir)
    frame = frame.copy()
    if protocol:
        for key, value in protocol.items():
            if key not in frame.columns:
                frame[key] = value
        caption = f"{caption} {_note(protocol)}." if caption else f"{_note(protocol)}."
    csv_path, tex_path = out / f"{name}.csv", out / f"{name}.tex"
    with atomic_write(csv_path, overwrite=True) as fh:
        frame.to_csv(fh, index=index, lineterminator="\n")
    shown = frame
    if protocol:
        constant = [c for c in PROTOCOL_COLUMNS if c in frame.columns and frame[c].nunique(dropna=False) <= 1]
        shown = frame.drop(columns=constant)
    marks = _unresolved_cells(shown)
    tex_caption = latex_escape(caption) if caption else ""
    if marks:
        shown = shown.drop(columns=[c for c in ("resolved", "unresolved_in") if c in shown.columns])
        for col, marked in marks.items():
            shown[col] = [("NaN" if pd.isna(v) else float_format % v) if isinstance(v, (float, np.floating)) else str(v)
                          for v in shown[col]]
            shown[col] = [f"{v}{_DAGGER}" if m else v for v, m in zip(shown[col], marked, strict=True)]
        tex_caption = f"{tex_caption} $^\\dagger${latex_escape(UNRESOLVED_NOTE)}".strip()
    latex = shown.to_latex(
        index=index,
        float_format=lambda v: float_format % v,
        caption=tex_caption or None,
        label=f"tab:{name}",
        escape=True,
    ).replace(_DAGGER, "$^\\dagger$")
    with atomic_write(tex_path, overwrite=True) as fh:
        fh.write(latex)
    return [csv_path, tex_path]


def wide_pauc(
    pauc: pd.DataFrame, rows: str = "method", columns: Sequence[str] = ("dataset",), order: Sequence[str] | None = None
) -> pd.DataFrame:
    """Pivot a tidy pAUC frame (``method, dataset, fr_model, fmr, pauc``) to rows x columns; with
    a ``resolved`` column, the flags of :func:`flag_unresolved` follow."""
    def pivot(values: str) -> pd.DataFrame:
        out = pauc.pivot_table(index=rows, columns=list(columns), values=values, aggfunc="first", sort=False)
        if order is not None:
            out = out.reindex([o for o in order if o in out.index])
        if isinstance(out.columns, pd.MultiIndex):
            out.columns = [" / ".join(str(c) for c in col) for col in out.columns]
        out.columns.name = None
        return out

    wide = pivot("pauc")
    if "resolved" in pauc.columns:
        wide = flag_unresolved(wide, pivot("resolved").astype(bool))
    return wide.reset_index()


def pauc_per_exit(pauc: pd.DataFrame, quality_model: str, fmr: float, order: Sequence[str]) -> pd.DataFrame:
    """One quality model's pAUCs at ``fmr``: a row per method (in ``order``), a column per
    ``dataset / fr_model``."""
    part = pauc[(pauc["quality_model"] == quality_model) & np.isclose(pauc["fmr"], fmr)]
    if part.empty:
        raise ValueError(f"no pAUC rows for quality model {quality_model!r} at FMR {fmr:g}")
    return wide_pauc(part, columns=("dataset", "fr_model"), order=order)
