"""Tables as CSV (full precision) + LaTeX (booktabs, fixed decimals), written atomically and byte-identically.
A pAUC table carries its protocol (CSV columns, LaTeX caption); unresolved cells are daggered in LaTeX.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exfiqa.evaluation.rules import rule_note
from exfiqa.io import atomic_write

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


def flag_unresolved(wide: pd.DataFrame, resolved: pd.DataFrame) -> pd.DataFrame:
    """``wide`` plus ``resolved`` (the row's cells all resolved) and ``unresolved_in`` (``"; "``-joined
    columns not), from booleans ``resolved`` on ``wide``'s index (missing cells: resolved)."""
    flags = resolved.reindex(index=wide.index).fillna(True).astype(bool)
    out = wide.copy()
    out["resolved"] = flags.all(axis=1).to_numpy()
    out["unresolved_in"] = ["; ".join(str(c) for c in flags.columns if not row[c]) for _, row in flags.iterrows()]
    return out


def _unresolved_cells(frame: pd.DataFrame) -> dict[str, list[bool]]:
    """Column -> per-row marks of the cells to dagger."""
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
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (pandas leaves captions unescaped)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_unescape(text: str) -> str:
    """Inverse of :func:`latex_escape` (to show a caption read back from a ``.tex`` file)."""
    for ch, esc in sorted(_LATEX_SPECIAL.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(esc, ch)
    return text


#: IEEE two-column paper (IEEEtran): text width and column width in pt.
TEXT_WIDTH = 516.0
COLUMN_WIDTH = 252.0
#: Body lines (rows and group headings) beyond which a table does not fit a float: CSV only.
MAX_FLOAT_LINES = 56
#: The packages every ``.tex`` needs (its first line names them).
REQUIRES = ("booktabs",)
#: LaTeX of the tables: font size and column separation (the width estimate follows them).
_SIZE, _TABCOLSEP, _SCALE = r"\footnotesize", 4.0, 0.84
#: What the width estimate leaves free (it errs by a few per cent).
_MARGIN = 10.0

#: Headers that are not just the column's words (``last_exit`` -> ``Last exit``).
HEADERS = {
    "fr_model": "FR model", "quality_model": "Model", "pauc": "pAUC", "fmr": "FMR", "fnmr": "FNMR", "eer": "EER",
    "subtract_best": "Best subtracted", "accuracy_10fold": "Acc. (10-fold)", "mean_pauc": "Mean pAUC",
    "delta_pauc": r"$\Delta$pAUC", "ci_low": "CI low", "ci_high": "CI high", "p_better": "P(better)",
    "n_boot": "Resamples", "n_units": "Units", "n_defined": "Defined", "gflops": "GFLOPs",
    "flop_saving": "FLOP saving", "ms_per_image": "ms/image", "ms_q25": "ms Q1", "ms_q75": "ms Q3",
    "ms_min": "ms min", "ms_max": "ms max", "pauc_exit_1": "pAUC exit 1", "pauc_last_exit": "pAUC last exit",
    "share_of_gain_by_exit_5": "Gain by exit 5", "share_of_gain_by_exit_8": "Gain by exit 8",
    "best_single_exit": "Best exit", "best exit pAUC": "Best exit pAUC", "entropy_mean": "Entropy",
    "entropy_std": "Entropy SD", "spread_mean": "Spread", "spread_std": "Spread SD",
    "normalised_entropy": "Norm. entropy", "max_min_ratio": "Max/min", "compute_saving": "Saving",
    "gate_agreement": "Gate agr.", "agreement_accept_all": "Agr. accept all",
    "agreement_reject_all": "Agr. reject all", "beats_trivial_gates": "Beats trivial",
    "pauc_adaptive": "pAUC adaptive", "pauc_fw_all_exits": "pAUC FW", "this_run_method": "This run's method",
    "chosen_on_evaluated_data": "Chosen on eval.", "reference_fitted_here": "Ref. fitted here", "n_chosen": "Chosen",
    "rho_chosen_mean": r"$\rho$ chosen", "rho_best_exit": r"$\rho$ best exit", "rho_with_it": r"$\rho$ with it",
    "stopped_at_exit": "Stopped at", "pseudo_label": "Pseudo-label", "comparisons_per_unit": "Comparisons/unit",
    "images_in_another_pair": "Shared images", "max_pairs_per_image": "Max pairs/image", "n": "n",
    "tied_methods": "Tied",
}
#: Cell values shown under the label the tables use elsewhere (the CSV keeps the value).
VALUE_LABELS = {
    "arcface": "ArcFace", "elasticface": "ElasticFace", "magface": "MagFace", "curricularface": "CurricularFace",
    "magface_norm": "MagFace (norm)", "serfiq": "SER-FIQ-style (re-impl.)", "sharpness": "Sharpness (Laplacian)",
}
#: Columns whose groups (consecutive rows) become group headings with rules; the first present.
GROUP_COLUMNS = ("group", "quality_model", "model", "fr_model")
_GROUP_NAMES = {"T": "ViT-FIQA (T)", "C": "ViT-FIQA (C)", "other methods": "Other methods"}


def value_label(text: str) -> str:
    """A cell's text as the tables show it: FR models and baselines by their labels, ``(C)``/``(T)``
    after a space (``EX-FIQA-11(C)`` -> ``EX-FIQA-11 (C)``)."""
    text = VALUE_LABELS.get(text, text)
    return re.sub(r"(?<=\S)\(([CT])\)$", r" (\1)", text)


def power_of_ten(value: float) -> str:
    """``$10^{-3}$`` (LaTeX/mathtext) for a power of ten, else ``0.002``."""
    if value > 0:
        exp = np.log10(value)
        if abs(exp - round(exp)) < 1e-9:
            return f"$10^{{{int(round(exp))}}}$"
    return f"{value:g}"


def header_tex(column: Any) -> str:
    """The LaTeX header of ``column`` (:data:`HEADERS`; ``fnmr@fmr=0.01`` -> ``FNMR@$10^{-2}$``)."""
    col = str(column)
    found = re.fullmatch(r"fnmr@fmr=([0-9.eE+-]+)", col)
    if found:
        return "FNMR@" + power_of_ten(float(found.group(1)))
    if col in HEADERS:
        text = HEADERS[col]
        return text if "$" in text else latex_escape(text)
    if col != col.lower() or " " in col or "-" in col:  # already a label (a dataset, a method)
        return latex_escape(value_label(col))
    words = col.replace("_", " ")
    return latex_escape(words[:1].upper() + words[1:])


_RATE = re.compile(r"fnmr|eer|accuracy|saving|share|agreement|p_better|normalised|images_in")
_CORR = re.compile(r"rho|correlation|spearman")


def _integral(values: np.ndarray) -> bool:
    return bool(len(values)) and bool(np.all(np.isclose(values, np.round(values), rtol=0, atol=1e-9))) and bool(
        np.all(np.abs(values) < 1e9))


def column_decimals(column: Any, values: pd.Series, pauc_scale: bool) -> int | None:
    """Decimals of ``column`` in the LaTeX file (None: an integer column): rates 4, correlations 3,
    GFLOPs and pAUC (``pauc_scale``: a table with a protocol) 2, others from the values' magnitude;
    raised until a typical value shows two significant digits."""
    name = str(column).lower()
    finite = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    if values.dtype.kind in "iu" or _integral(finite):
        return None
    base = 4 if _RATE.search(name) else 3 if _CORR.search(name) else 2 if "gflops" in name or pauc_scale else None
    if base is None:
        top = float(np.max(np.abs(finite))) if len(finite) else 0.0
        base = 1 if top >= 100 else 2 if top >= 10 else 3
    nonzero = np.abs(finite[np.abs(finite) > 1e-9])
    if len(nonzero):
        typical = float(np.median(nonzero))
        base = max(base, min(6, int(-np.floor(np.log10(typical))) + 1))
    return base


def format_cell(value: Any, decimals: int | None, column: Any = "") -> str:
    """One cell's LaTeX: ``--`` for a missing value, fixed ``decimals`` (no ``-0.00``), integers as
    integers, booleans yes/no, FMR as a power of ten, text escaped under its label."""
    blank = isinstance(value, (float, np.floating)) and np.isnan(value) or isinstance(value, str) and not value
    if value is None or value is pd.NA or blank:
        return "--"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if str(column).lower() == "fmr":
            return power_of_ten(float(value))
        if decimals is None:
            return str(int(round(float(value))))
        text = f"{float(value):.{decimals}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    if str(column) == "quality_model" and str(value) in _GROUP_NAMES:
        return latex_escape(_GROUP_NAMES[str(value)])
    return latex_escape(value_label(str(value)))


_CHAR_PT = {**dict.fromkeys("0123456789", 5.0), **dict.fromkeys(".,:;'!|", 2.8), **dict.fromkeys("()[]-/", 3.9),
            " ": 3.4, **dict.fromkeys("mwMW%", 8.4), **dict.fromkeys("ijlft", 3.0)}


def text_width(tex: str) -> float:
    """An estimate of ``tex``'s width in pt at the tables' font size (Computer Modern; the tests
    compile the tables to check it)."""
    plain = re.sub(r"\$\^\\dagger\$", "+", tex)
    plain = re.sub(r"\\(Delta|rho)", "D", plain)
    plain = re.sub(r"\\textbackslash\{\}|\\textasciitilde\{\}|\\textasciicircum\{\}", "~", plain)
    plain = re.sub(r"\^\{(-?\d+)\}", lambda m: "x" * len(m.group(1)), plain).replace("\\", "")
    plain = plain.replace("$", "").replace("{", "").replace("}", "")
    width = sum(_CHAR_PT.get(ch, 7.4 if ch.isupper() else 5.0) for ch in plain)
    return width * _SCALE


def _group_column(frame: pd.DataFrame) -> str | None:
    for col in GROUP_COLUMNS:
        if col in frame.columns:
            values = frame[col].astype(str).tolist()
            runs = [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]
            return col if 1 < len(runs) <= len(values) / 2 else None
    return None


def _wrap(widths: list[float], texts: list[list[str]], numeric: list[bool], room: float) -> list[float | None]:
    """Widths of ``p{}`` columns (None: not wrapped) so that the table fits ``room``: its text
    columns with cells of more than 16 characters wrap."""
    long = [i for i, col in enumerate(texts) if not numeric[i] and max((len(t) for t in col), default=0) > 16]
    wrapped: list[float | None] = [None] * len(widths)
    if not long or sum(widths) <= room:
        return wrapped
    fixed = sum(w for i, w in enumerate(widths) if i not in long)
    free = room - fixed - 2 * _TABCOLSEP * len(long)
    need = {i: widths[i] - 2 * _TABCOLSEP for i in long}
    total = sum(need.values())
    for i in long:
        wrapped[i] = max(48.0, float(np.floor(free * need[i] / total)))
    over = sum(w for w in wrapped if w is not None) - free
    if over > 0:  # the 48 pt floor took it from the widest
        widest = max(long, key=lambda i: wrapped[i] or 0.0)
        wrapped[widest] = float(np.floor((wrapped[widest] or 0.0) - over))
    return wrapped


def _header_lines(header: str, cells: list[str]) -> list[str]:
    """``header`` in two lines (at the space that makes the wider one narrowest) when it is wider
    than the column's cells; spaces inside math stay."""
    widest = max((text_width(c) for c in cells), default=0.0)
    spaces = [m.start() for m in re.finditer(" ", header) if header[:m.start()].count("$") % 2 == 0]
    if text_width(header) <= max(widest + 8, 30.0) or not spaces:
        return [header]
    best = min(spaces, key=lambda i: max(text_width(header[:i]), text_width(header[i + 1:])))
    return [header[:best], header[best + 1:]]


def _header_cell(lines: list[str], align: str) -> str:
    if len(lines) == 1:
        return lines[0]
    joined = " \\\\ ".join(lines)
    return f"\\begin{{tabular}}[b]{{@{{}}{align}@{{}}}}{joined}\\end{{tabular}}"


def _latex(shown: pd.DataFrame, caption: str, name: str, transpose: bool) -> str:
    """The LaTeX of a table whose cells are already formatted (strings)."""
    if transpose:  # rows become columns: the first column's cells are the new headers
        parts = [str(c).split(" / ") for c in shown.columns[1:]]
        depth = max(len(p) for p in parts)
        body = shown.set_index(shown.columns[0]).T
        header = [header_tex(c) for c in ("dataset", "fr_model")[:depth]] + list(body.columns)
        rows = [[latex_escape(value_label(x)) for x in (p + [""] * (depth - len(p)))] + list(r)
                for p, r in zip(parts, body.itertuples(index=False), strict=True)]
        labels = {f"c{i}": h for i, h in enumerate(header)}
        shown = pd.DataFrame(rows, columns=list(labels))
        if depth > 1:  # the FR model first, as the group column
            shown = shown[["c1", "c0", *shown.columns[2:]]].rename(columns={"c1": "fr_model"})
            labels["fr_model"] = labels["c1"]
    else:
        labels = {c: header_tex(c) for c in shown.columns}
    group = _group_column(shown)
    groups: list[str | None] = [None] * len(shown)
    if group is not None:
        groups = [_GROUP_NAMES.get(str(g), str(g)) for g in shown[group]]
        shown = shown.drop(columns=[group])
    cols = list(shown.columns)
    texts = [shown[c].tolist() for c in cols]
    numeric = [all(re.fullmatch(r"-?[\d.]+(\$\^\\dagger\$)?|--|\$10\^\{-?\d+\}\$", t) for t in col) for col in texts]
    heads = [_header_lines(labels[c], texts[i]) for i, c in enumerate(cols)]
    widths = [max(text_width(t) for t in [*heads[i], *texts[i]]) + 2 * _TABCOLSEP for i in range(len(cols))]
    room = TEXT_WIDTH - _MARGIN
    wrapped = _wrap(widths, texts, numeric, room)
    widths = [w if p is None else p + 2 * _TABCOLSEP for w, p in zip(widths, wrapped, strict=True)]

    def span(blocks: list[list[int]], size: int) -> float:
        return widths[0] + sum(max(widths[b[i]] for b in blocks if i < len(b)) for i in range(size))

    # too wide: the columns after the first in blocks stacked one under the other (same tabular)
    blocks, size = [list(range(1, len(cols)))], len(cols) - 1
    for k in range(1, len(cols)):
        size = -(-(len(cols) - 1) // k)
        blocks = [list(range(1 + j, min(len(cols), 1 + j + size))) for j in range(0, len(cols) - 1, size)]
        if span(blocks, size) <= room:
            break
    width = span(blocks, size)
    ragged = "\\raggedright\\arraybackslash"
    spec = ["l" if wrapped[0] is None else f">{{{ragged}}}p{{{wrapped[0]:g}pt}}"]
    for i in range(size):
        at = [b[i] for b in blocks if i < len(b)]
        if any(wrapped[j] is not None for j in at):
            spec.append(f">{{{ragged}}}p{{{max(wrapped[j] or 0 for j in at):g}pt}}")
        else:
            spec.append("r" if all(numeric[j] for j in at) else "l")
    requires = [*REQUIRES, *(["array"] if any(w is not None for w in wrapped) else [])]
    env = "table" if width <= COLUMN_WIDTH - _MARGIN else "table*"
    lines = [f"% requires: {', '.join(requires)}", f"% {name}.csv has every column at full precision.",
             f"\\begin{{{env}}}", "\\centering", _SIZE, f"\\setlength{{\\tabcolsep}}{{{_TABCOLSEP:g}pt}}",
             f"\\caption{{{caption}}}", f"\\label{{tab:{name}}}", f"\\begin{{tabular}}{{{''.join(spec)}}}", "\\toprule"]
    ncol = 1 + size
    for n, block in enumerate(blocks):
        if n:
            lines.append("\\midrule")
        cells = [_header_cell(heads[0], "l"), *(_header_cell(heads[j], "r" if numeric[j] else "l") for j in block)]
        cells += [""] * (size - len(block))
        lines += [" & ".join(cells) + " \\\\", "\\midrule"]
        last = object()
        for r in range(len(shown)):
            if groups[r] is not None and groups[r] != last:
                if last is not None and r:
                    lines.append("\\midrule")
                lines.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\emph{{{latex_escape(groups[r])}}}}} \\\\")
                last = groups[r]
            row = [texts[0][r], *(texts[j][r] for j in block)] + [""] * (size - len(block))
            lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", f"\\end{{{env}}}", ""]
    return "\n".join(lines)


def save_table(
    frame: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    name: str,
    caption: str = "",
    index: bool = False,
    protocol: Mapping[str, Any] | None = None,
    decimals: Mapping[str, int] | int | None = None,
    tex_drop: Sequence[str] = (),
    transpose: bool = False,
) -> list[Path]:
    """Write ``name.csv`` (full precision) and ``name.tex`` (booktabs, caption) atomically; returns both paths.

    ``protocol``: added as CSV columns where missing, stated in the caption. ``decimals``: for every
    float column or per column (else :func:`column_decimals`). ``tex_drop``: columns (with
    ``transpose``, also rows) left out of the LaTeX; over :data:`MAX_FLOAT_LINES` lines it typesets nothing.
    """
    out = Path(out_dir)
    if protocol:
        frame = frame.assign(**{key: value for key, value in protocol.items() if key not in frame.columns})
        caption = f"{caption} {_note(protocol)}." if caption else f"{_note(protocol)}."
    csv_path, tex_path = out / f"{name}.csv", out / f"{name}.tex"
    with atomic_write(csv_path, overwrite=True) as fh:
        frame.to_csv(fh, index=index, lineterminator="\n")
    shown = frame.reset_index() if index else frame
    if protocol:
        constant = [c for c in PROTOCOL_COLUMNS if c in frame.columns and frame[c].nunique(dropna=False) <= 1]
        shown = shown.drop(columns=constant)
    marks = _unresolved_cells(shown)
    shown = shown.drop(columns=["resolved", "unresolved_in"], errors="ignore")  # daggers say it
    dropped = [c for c in tex_drop if c in shown.columns]
    shown = shown.drop(columns=dropped)
    if transpose:  # rows by their first cell
        first = shown.iloc[:, 0].astype(str).tolist()
        rows = [v for v in first if v in {str(d) for d in tex_drop}]
        shown = shown[[v not in rows for v in first]].reset_index(drop=True)
        marks = {c: [m for m, v in zip(ms, first, strict=True) if v not in rows]
                 for c, ms in marks.items()}
        dropped += rows
    tex_caption = latex_escape(caption) if caption else ""
    if dropped:
        tex_caption += " " + latex_escape(f"In the CSV only: {', '.join(str(c) for c in dropped)}.")
    cells: dict[Any, list[str]] = {}
    for col in shown.columns:
        if isinstance(decimals, Mapping) and col in decimals:
            dec: int | None = decimals[col]
        elif isinstance(decimals, int) and shown[col].dtype.kind == "f":
            dec = decimals
        else:
            dec = column_decimals(col, shown[col], bool(protocol))
        cells[col] = [format_cell(v, dec, col) for v in shown[col]]
        if col in marks:
            cells[col] = [f"{v}$^\\dagger$" if m else v for v, m in zip(cells[col], marks[col], strict=True)]
    if marks:
        tex_caption = f"{tex_caption} $^\\dagger${latex_escape(UNRESOLVED_NOTE)}".strip()
    text = pd.DataFrame(cells, columns=shown.columns)
    group = _group_column(text)
    if (len(text.columns) if transpose else len(text) + (text[group].nunique() if group else 0)) > MAX_FLOAT_LINES:
        note = latex_escape(f"CSV only ({len(frame)} rows, too long for a float): {name}.csv.")
        latex = "\n".join([
            f"% CSV only: {name}.csv has {len(frame)} rows, too many for a float; this file typesets nothing.",
            "% The caption, for tools that read it:", "\\iffalse", f"\\caption{{{tex_caption} {note}}}", "\\fi", ""])
    else:
        latex = _latex(text, tex_caption, name, transpose)
    with atomic_write(tex_path, overwrite=True) as fh:
        fh.write(latex)
    return [csv_path, tex_path]


def pauc_per_exit(pauc: pd.DataFrame, quality_model: str, fmr: float, order: Sequence[str]) -> pd.DataFrame:
    """One quality model's pAUCs at ``fmr``: a row per method (in ``order``), a column per
    ``dataset / fr_model``; with a ``resolved`` column, the flags of :func:`flag_unresolved` follow."""
    part = pauc[(pauc["quality_model"] == quality_model) & np.isclose(pauc["fmr"], fmr)]
    if part.empty:
        raise ValueError(f"no pAUC rows for quality model {quality_model!r} at FMR {fmr:g}")

    def pivot(values: str) -> pd.DataFrame:
        out = part.pivot_table(index="method", columns=["dataset", "fr_model"], values=values, aggfunc="first", sort=False)
        out = out.reindex([o for o in order if o in out.index])
        out.columns = [" / ".join(str(c) for c in col) for col in out.columns]
        return out

    wide = pivot("pauc")
    if "resolved" in part.columns:
        wide = flag_unresolved(wide, pivot("resolved").astype(bool))
    return wide.reset_index()
