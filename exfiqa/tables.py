"""Tables as CSV + LaTeX (booktabs), written atomically and byte-identically.

Every pAUC table carries its convention, discard limit and scale, either as columns or as a
caption line, so that a number can never be read under the wrong protocol.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .io import atomic_write

__all__ = ["protocol_note", "save_table", "wide_pauc"]


def protocol_note(convention: str, limit: float, fmr: float | None = None, scale: float = 1.0) -> str:
    """One line stating how pAUC numbers were computed, e.g. for captions and notebook prose."""
    parts = [f"pAUC-EDC up to discard {limit:g}", f"convention '{convention}'"]
    if fmr is not None:
        parts.append(f"FNMR@FMR={fmr:.0e}")
    if scale != 1.0:
        parts.append(f"values x{scale:g}")
    return ", ".join(parts) + "; lower is better"


def save_table(
    frame: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    name: str,
    caption: str = "",
    float_format: str = "%.4f",
    index: bool = False,
) -> list[Path]:
    """Write ``name.csv`` and ``name.tex`` (booktabs, caption) atomically; returns the paths."""
    out = Path(out_dir)
    csv_path, tex_path = out / f"{name}.csv", out / f"{name}.tex"
    with atomic_write(csv_path, overwrite=True) as fh:
        frame.to_csv(fh, index=index, float_format=float_format, lineterminator="\n")
    latex = frame.to_latex(
        index=index,
        float_format=lambda v: float_format % v,
        caption=caption or None,
        label=f"tab:{name}",
        escape=True,
    )
    with atomic_write(tex_path, overwrite=True) as fh:
        fh.write(latex)
    return [csv_path, tex_path]


def wide_pauc(
    pauc: pd.DataFrame, rows: str = "method", columns: Sequence[str] = ("dataset",), order: Sequence[str] | None = None
) -> pd.DataFrame:
    """Pivot a tidy pAUC frame (``method, dataset, fr_model, fmr, pauc``) to rows x columns."""
    wide = pauc.pivot_table(index=rows, columns=list(columns), values="pauc", aggfunc="first", sort=False)
    if order is not None:
        wide = wide.reindex([o for o in order if o in wide.index])
    if isinstance(wide.columns, pd.MultiIndex):
        wide.columns = [" / ".join(str(c) for c in col) for col in wide.columns]
    wide.columns.name = None
    return wide.reset_index()
