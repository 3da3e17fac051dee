"""Notebook 03, the comparison tables: the poster's layout filled with this run's methods, the
poster's headline table beside this run, and a second, transcribed reference for plain ViT-FIQA (T)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from exfiqa.evaluation.exits import exit_label, exit_labels, exit_numbers
from exfiqa.report.frames import Headline
from exfiqa.report.tables import flag_unresolved

#: The poster's headline table as printed: pAUC-EDC x10^3 at FNMR@FMR=1e-3, ArcFace, IJB-C, discard
#: 0..0.3 (EX-FIQA poster, IEEE FG 2026; paper arXiv 2604.22842), transcribed by this project.
PAPER_HEADLINE: tuple[tuple[str, float], ...] = (
    ("BRISQUE", 8.75), ("RankIQA", 8.70), ("DeepIQA", 8.78), ("SER-FIQ", 6.53), ("CR-FIQA(L)", 6.58),
    ("DifFIQA(R)", 6.48), ("eDifFIQA(L)", 6.47), ("GraFIQs(L)", 6.86), ("CLIB-FIQA", 6.60),
    ("ViT-FIQA(C)", 6.60), ("ViT-FIQA(T)", 6.56), ("EX-FIQA-11(C)", 6.67), ("EX-FIQA-FW(C)", 6.50),
    ("EX-FIQA-10(T)", 6.38), ("EX-FIQA-FW(T)", 6.36),
)
PAPER_HEADLINE_SCALE = 1000.0
#: Variant tag -> the early exit the poster reports (11 for (C), 10 for (T)).
_POSTER_EXITS = {m[2]: int(m[1]) for name, _ in PAPER_HEADLINE if (m := re.fullmatch(r"EX-FIQA-(\d+)\((T|C)\)", name))}
#: Config key of the poster's headline dataset; NIST no longer distributes IJB-C (configs/paper-no-ijbc.yaml).
PAPER_HEADLINE_DATASET = "ijbc"

SECONDARY_SOURCE = "PreFIQs (secondary transcription)"
#: ViT-FIQA (T) (= exit 12 (T)), :data:`SECONDARY_PROTOCOL`, per benchmark (config dataset key), as
#: reported in the PreFIQs paper (Kolf et al., CVPR 2026 Workshops, arXiv 2605.13396) and
#: **transcribed by a secondary source**, not read from the paper here. IJB-C agrees with the poster.
SECONDARY_VITFIQA_T: dict[str, float] = {
    "adience": 9.948, "agedb_30": 8.234, "cfp_fp": 3.568, "cplfw": 20.531, "ijbc": 6.563,
}
SECONDARY_PROTOCOL = "ArcFace, FNMR@FMR=1e-3, pAUC-EDC up to discard 0.3, x10^3"

#: Table labels of the built-in baselines (SER-FIQ is this package's re-implementation, not the authors' code).
_METHOD_LABELS = {"magface_norm": "MagFace (norm)", "serfiq": "SER-FIQ-style (re-impl.)", "sharpness": "Sharpness (Laplacian)"}

#: ``selection`` of an early-exit row of :func:`poster_table` and :func:`headline_vs_paper`.
SELECTED_ON_DATA = "best early exit: lowest mean pAUC over the evaluated datasets (chosen on the evaluated data)"
SELECTED_BY_POSTER = "the early exit the poster reports"
SELECTED_BY_BOTH = "the early exit the poster reports; also the best on the evaluated data"


def best_early_exit(rows: pd.DataFrame, quality: str, depth: int) -> str:
    """The early exit (1..depth-1) of ``quality`` with the lowest mean pAUC over the datasets of
    ``rows`` (pAUC rows at one FR model and FMR), the lowest on ties: chosen on the evaluated data."""
    mean = rows[rows["quality_model"] == quality].groupby("method")["pauc"].mean()
    return min(exit_labels(depth)[:-1], key=lambda m: mean[m])


def _early_exit_rows(rows: pd.DataFrame, tags: dict[str, tuple[str, int]]) -> dict[str, list[tuple[int, str, bool]]]:
    """Per quality model: (exit, selection, chosen on the evaluated data) of the poster's early
    exit (where the model has it) and of :func:`best_early_exit` (once if they coincide)."""
    out = {}
    for q, (tag, depth) in tags.items():
        best, k = exit_numbers(depth)[best_early_exit(rows, q, depth)], _POSTER_EXITS.get(tag, depth)
        out[q] = ([(best, SELECTED_ON_DATA, True)] if k >= depth else [(best, SELECTED_BY_BOTH, False)] if k == best
                  else [(k, SELECTED_BY_POSTER, False), (best, SELECTED_ON_DATA, True)])
    return out


def is_exfiqa(method: str, depth: int) -> bool:
    """``method`` is one of exits ``1..depth`` or a fusion of them (``EX-FIQA-F``, ``-FW``, ``-DC``)."""
    return method.startswith("EX-FIQA") or method in exit_numbers(depth)


def _deepest(tags: dict[str, tuple[str, int]]) -> int:
    return max((depth for _, depth in tags.values()), default=0)


def poster_table(head: pd.DataFrame, tags: dict[str, tuple[str, int]], dataset_order: Sequence[str]) -> pd.DataFrame:
    """The poster's comparison layout for one FR model at one FMR (``head``: its pAUC rows): the
    other methods, then per quality model plain ViT-FIQA (= last exit), the poster's early exit and
    :func:`best_early_exit`, and EX-FIQA-FW; columns ``group, method``, ``dataset_order`` (labels)
    and their mean, ``selection, chosen_on_evaluated_data``; flagged where ``head`` has ``resolved``.
    """
    rows, flags = [], []
    q0 = next(iter(tags))
    with_flags = "resolved" in head.columns

    def add(row: dict, part: pd.DataFrame, method: str) -> None:
        vals = part[part["method"] == method].set_index("dataset")
        rows.append({**row, **vals["pauc"].to_dict()})
        if with_flags:
            flags.append(vals["resolved"].astype(bool).to_dict())

    for m in [m for m in head["method"].unique() if not is_exfiqa(m, _deepest(tags))]:
        add({"group": "other methods", "method": _METHOD_LABELS.get(m, m), "selection": "", "chosen_on_evaluated_data": False},
            head[head["quality_model"] == q0], m)
    early = _early_exit_rows(head, tags)
    for q, (tag, depth) in tags.items():
        part = head[head["quality_model"] == q]
        add({"group": "ViT-FIQA", "method": f"ViT-FIQA ({tag})", "selection": "the last exit", "chosen_on_evaluated_data": False},
            part, exit_label(depth))
        for k, selection, on_data in early[q]:
            add({"group": "EX-FIQA", "method": f"EX-FIQA-{k} ({tag})", "selection": selection,
                 "chosen_on_evaluated_data": on_data}, part, exit_label(k))
        add({"group": "EX-FIQA", "method": f"EX-FIQA-FW ({tag})", "selection": "fixed rule (depth weights)",
             "chosen_on_evaluated_data": False}, part, "EX-FIQA-FW")
    out = pd.DataFrame(rows)[["group", "method", *dataset_order, "selection", "chosen_on_evaluated_data"]]
    out.insert(2 + len(dataset_order), "mean", out[list(dataset_order)].mean(axis=1))
    if with_flags:
        ok = pd.DataFrame(flags, index=out.index).reindex(columns=list(dataset_order)).fillna(True).astype(bool)
        ok["mean"] = ok.all(axis=1)
        out = flag_unresolved(out, ok)
    return out


def headline_note(head: Headline) -> str:
    """``""`` when the headline dataset is IJB-C, else a sentence saying which dataset stands in for it."""
    if head.dataset == PAPER_HEADLINE_DATASET:
        return ""
    return (f"This run's headline dataset is {head.label}, not IJB-C (NIST no longer distributes IJB-C): "
            f"it stands in for IJB-C in the headline table and in the paper's IJB-C findings, and the "
            f"poster's IJB-C values beside it are a reference, not the same benchmark.")


def _norm_name(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _poster_method(name: str, tags: dict[str, tuple[str, int]], others: Sequence[str]) -> tuple[str, str] | None:
    """(quality model, run method) that a poster row corresponds to in this run, or None."""
    by_tag = {tag: (q, depth) for q, (tag, depth) in tags.items() if tag in ("T", "C")}
    if name == "SER-FIQ" and "serfiq" in others:
        return next(iter(tags)), "serfiq"
    for m in others:  # external methods named as on the poster
        if _norm_name(m) == _norm_name(name):
            return next(iter(tags)), m
    for tag, (q, depth) in by_tag.items():
        run = {f"ViT-FIQA({tag})": exit_label(depth), f"EX-FIQA-FW({tag})": "EX-FIQA-FW",
               **{f"EX-FIQA-{k}({tag})": exit_label(k) for k in range(1, depth + 1)}}
        if name in run:
            return q, run[name]
    return None


def headline_vs_paper(
    pauc_table: pd.DataFrame, head: Headline, tags: dict[str, tuple[str, int]], scale: float
) -> pd.DataFrame:
    """The poster's headline table (:data:`PAPER_HEADLINE`) beside this run's values at the
    headline dataset, FR model and FMR, both at ``scale``; then this run's methods the poster lacks
    (among them each variant's :func:`best_early_exit`). NaN where one side lacks a method;
    ``resolved`` (where ``pauc_table`` has it) is NA without a value of this run. Column
    :data:`SECONDARY_SOURCE`: :data:`SECONDARY_VITFIQA_T` on the headline dataset, ViT-FIQA(T) row only.
    """
    at = pauc_table[(pauc_table["fr_model"] == head.fr_model) & np.isclose(pauc_table["fmr"], head.fmr)]
    part = at[at["dataset"] == head.label]
    value = {(r.quality_model, r.method): float(r.pauc) for r in part.itertuples()}
    ok = ({(r.quality_model, r.method): bool(r.resolved) for r in part.itertuples()} if "resolved" in part.columns else None)
    others = [m for m in part["method"].unique() if not is_exfiqa(m, _deepest(tags))]
    early = _early_exit_rows(at, tags)
    how = {(q, exit_label(k)): (sel, on_data) for q, rows in early.items() for k, sel, on_data in rows}
    depth_of = {q: depth for q, (_, depth) in tags.items()}
    rows, used = [], set()

    def label_of(q: str, m: str) -> str:
        return _METHOD_LABELS.get(m, m) if m in others else f"{m} ({tags[q][0]})"

    def add(name: str, paper: float, key: tuple[str, str] | None) -> None:
        sel, on_data = how.get(key, ("", False))
        rows.append({"method": name, "paper": paper, "this_run": value.get(key, float("nan")),
                     "this_run_method": label_of(*key) if key else "(not in this run)", "selection": sel,
                     "chosen_on_evaluated_data": on_data, **({} if ok is None else {"resolved": ok.get(key, pd.NA)})})

    for name, paper_value in PAPER_HEADLINE:
        match = _poster_method(name, tags, others)
        if match:
            used.add(match)
        add(name, float(f"{paper_value * scale / PAPER_HEADLINE_SCALE:.12g}"), match)  # as printed, at this run's scale
    chosen = [(q, exit_label(k)) for q, rows_q in early.items() for k, _, on_data in rows_q if on_data]
    extra = [(q, m) for (q, m) in value if (q, m) not in used
             and (m not in exit_numbers(depth_of.get(q, 0)) or (q, m) in chosen)
             and (is_exfiqa(m, depth_of.get(q, 0)) or q == next(iter(tags)))]
    for q, m in extra:
        add(label_of(q, m), float("nan"), (q, m))
    out = pd.DataFrame(rows)
    if ok is not None:
        out["resolved"] = out["resolved"].astype("boolean")
    out.insert(2, "dataset", head.label)
    out.insert(3, "fr_model", head.fr_model)
    out.insert(4, "paper_dataset", "IJB-C")
    # the second reference for one poster row: ViT-FIQA(T) on the headline dataset, as transcribed
    second = SECONDARY_VITFIQA_T.get(head.dataset, float("nan")) * scale / PAPER_HEADLINE_SCALE
    out.insert(2, SECONDARY_SOURCE, np.where(out["method"] == "ViT-FIQA(T)", float(f"{second:.12g}"), np.nan))
    return out


def secondary_reference(
    pauc_table: pd.DataFrame, labels: dict[str, str], tags: dict[str, tuple[str, int]], head: Headline, scale: float
) -> pd.DataFrame:
    """This run's plain ViT-FIQA (T) (its last exit) beside :data:`SECONDARY_VITFIQA_T` per
    reference benchmark (matched by config key; ``labels``: key -> this run's label), at the
    headline FR model and FMR, both at ``scale``; NaN where the run lacks the benchmark or a (T) model.
    """
    q_t = next((q for q, (tag, _) in tags.items() if tag == "T"), None)
    method = exit_label(tags[q_t][1]) if q_t is not None else ""
    part = pauc_table[(pauc_table["quality_model"] == q_t) & (pauc_table["method"] == method)
                      & (pauc_table["fr_model"] == head.fr_model) & np.isclose(pauc_table["fmr"], head.fmr)]
    value = dict(zip(part["dataset"], part["pauc"].astype(float), strict=True))
    rows = []
    for key, ref in SECONDARY_VITFIQA_T.items():
        label = labels.get(key)
        rows.append({
            "benchmark": key, "dataset": label if label is not None else "(not in this run)",
            SECONDARY_SOURCE: float(f"{ref * scale / PAPER_HEADLINE_SCALE:.12g}"),
            "this_run": value.get(label, float("nan")),
            "this_run_method": f"{method} (T)" if method else "(no (T) model)",
            "fr_model": head.fr_model, "reference_protocol": SECONDARY_PROTOCOL,
        })
    return pd.DataFrame(rows)
