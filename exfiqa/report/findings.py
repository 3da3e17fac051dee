"""Notebook 03, the paper's findings computed from this run, each with a verdict that holds:
ties are named, wins need a paired interval, unresolvable FMR targets are left out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from exfiqa.evaluation.exits import exit_label, exit_labels
from exfiqa.report.comparison import PAPER_HEADLINE_DATASET, is_exfiqa
from exfiqa.report.frames import Headline, best_text, is_tie, tied_best
from exfiqa.report.layers import depth_summary

VERDICTS = ("agrees", "differs", "tie", "not resolved", "not computable in this run")
FINDINGS_COLUMNS = ("finding", "paper", "this_run", "verdict", "difference", "ci_low", "ci_high", "criterion")
#: The columns read from a paired bootstrap table (:func:`exfiqa.report.bootstrap_tables.paired_vs_reference`).
PAIRED_COLUMNS = ("quality_model", "dataset", "fr_model", "fmr", "method", "reference", "delta_pauc", "ci_low", "ci_high")
_NA = VERDICTS[-1]
_DEPTH_CLAIM = "largest gains from exit 1 to exit 5, little change after exit 8"
#: Finding -> the paper's claim, in table order (after one "depth gains (<tag>)" per variant).
_CLAIMS = {
    "middle exits best on IJB-C (C)": "exits 7-9 are the best single exits of (C) on IJB-C",
    "FW beats the last exit (C)": "EX-FIQA-FW (C) beats exit 12 on 5 of 8 datasets",
    "FW (T) best mean pAUC": "EX-FIQA-FW (T) has the best mean pAUC",
    "FW (T) top-1 on IJB-C": "EX-FIQA-FW (T) is top-1 on IJB-C for all four FR models",
    "FW (C) best on Adience": "EX-FIQA-FW (C) is the best method on Adience",
}


def _pool(part: pd.DataFrame, tags: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """pAUC rows with a run-wide method name: ``"Exit 7 (C)"``, ``"EX-FIQA-FW (T)"``, baselines
    once (they do not depend on the quality model)."""
    q0 = next(iter(tags))
    depth_of = {q: depth for q, (_, depth) in tags.items()}
    ours = np.array([is_exfiqa(m, depth_of.get(q, 0)) for q, m in zip(part["quality_model"], part["method"], strict=True)], dtype=bool)
    keep = part[ours | (part["quality_model"] == q0).to_numpy()].copy()
    keep["name"] = [f"{m} ({tags[q][0]})" if is_exfiqa(m, depth_of.get(q, 0)) else m
                    for q, m in zip(keep["quality_model"], keep["method"], strict=True)]
    return keep


def _best_verdict(values: pd.Series, target: str) -> tuple[str, float]:
    """Verdict of "``target`` is the best of ``values``" (tied for best: ``tie``) and
    pAUC(target) - best other (< 0: it is)."""
    if target not in values.index or not np.isfinite(values[target]):
        return _NA, float("nan")
    others = values.drop(target)
    margin = float(values[target] - others.min()) if others.notna().any() else float("nan")
    best = tied_best(values)
    verdict = "differs" if target not in best else ("agrees" if len(best) == 1 else "tie")
    return verdict, margin


def _paired_rows(paired: pd.DataFrame | None, quality: str, method: str, reference: str, fr: str, fmr: float) -> pd.DataFrame:
    """Rows of the paired bootstrap table for one comparison, indexed by dataset label."""
    if paired is None:
        return pd.DataFrame(columns=list(PAIRED_COLUMNS)).set_index("dataset")
    missing = [c for c in PAIRED_COLUMNS if c not in paired.columns]
    if missing:
        raise ValueError(f"paper_findings: the paired bootstrap table (paired=) lacks the columns {missing}; "
                         "pass the table of bootstrap_tables.fusion_bootstrap / depth_bootstrap")
    sel = paired[(paired["quality_model"] == quality) & (paired["method"] == method) & (paired["reference"] == reference)
                 & (paired["fr_model"] == fr) & np.isclose(paired["fmr"].astype(float), fmr)]
    if sel["dataset"].duplicated().any():
        raise ValueError(f"paper_findings: the paired bootstrap table (paired=) has several rows for {method} - {reference} "
                         f"({quality}, {fr}, FMR {fmr:g}) on one dataset")
    return sel.set_index("dataset")


def _paired_detail(
    finding: str, paper: str, label: str, ds: str, a: float, b: float, boot: pd.DataFrame
) -> dict:
    """One comparison pAUC(a) - pAUC(b) on dataset ``ds`` (``label`` names a and b: "FW - Exit 12"):
    ``agrees`` when its 95% paired interval lies below 0 (a is better), ``differs`` above 0,
    ``tie`` when a and b are equal, ``not resolved`` otherwise or without an interval."""
    diff = a - b
    lo = hi = float("nan")
    if ds in boot.index:
        row = boot.loc[ds]
        lo, hi = float(row["ci_low"]), float(row["ci_high"])
        if not np.isclose(float(row["delta_pauc"]), diff, rtol=1e-6, atol=1e-9 * max(abs(a), abs(b))):
            raise ValueError(
                f"paper_findings: paired= gives delta_pauc {float(row['delta_pauc']):.6g} for {label} on {ds}, "
                f"the pAUC table {diff:.6g}: the two tables differ in scale or protocol")
    verdict = "tie" if is_tie(a, b) else "agrees" if hi < 0 else "differs" if lo > 0 else "not resolved"
    ci = f"95% paired interval [{lo:.4g}, {hi:.4g}]" if np.isfinite(lo) else "no paired interval"
    return {
        "finding": f"{finding}: {ds}", "paper": paper,
        "this_run": f"{label} = {a:.6g} - {b:.6g} = {diff:+.4g}, {ci}", "verdict": verdict,
        "difference": diff, "ci_low": lo, "ci_high": hi,
        "criterion": f"{label} < 0 with a 95% paired bootstrap interval below 0: agrees; above 0: differs; "
                     "interval containing 0 (or none): not resolved; equal pAUC: tie",
    }


def paper_findings(
    pauc_table: pd.DataFrame, tags: dict[str, tuple[str, int]], head: Headline, adience: str | None = None,
    paired: pd.DataFrame | None = None, min_change: float = 0.05,
) -> pd.DataFrame:
    """Each finding of the paper (arXiv 2604.22842) and its poster, computed from this run at the
    headline FMR (and FR model, comparing two methods on a dataset), with a verdict (:data:`VERDICTS`),
    the pAUC ``difference`` it rests on (< 0: the claim's method better) and the ``criterion``.

    The headline dataset stands in for IJB-C (``this_run`` says so when it is not ``ijbc``).
    ``paired`` (:data:`PAIRED_COLUMNS`, at the scale of ``pauc_table``): FW vs the last exit and the
    last exit vs exit 1, one row per compared dataset; without it wins and depth changes are not
    resolved, or rest on ``min_change`` alone. Dataset x FR model pairs with an unresolvable pAUC
    (``resolved`` column) are left out of every finding and named in a last row.
    """
    at = pauc_table[np.isclose(pauc_table["fmr"], head.fmr)]
    left_out: list[tuple[str, str]] = []
    if "resolved" in at.columns:
        bad = at[~at["resolved"].astype(bool)]
        left_out = sorted(set(zip(bad["dataset"], bad["fr_model"], strict=True)))
        at = at[~pd.Series(list(zip(at["dataset"], at["fr_model"], strict=True)), index=at.index).isin(left_out)]
    by_tag = {tag: q for q, (tag, _) in tags.items()}
    claims = {f"depth gains ({tag})": _DEPTH_CLAIM for tag, _ in tags.values()} | _CLAIMS
    nan = float("nan")
    rows: list[dict] = []
    stand_in = "" if head.dataset == PAPER_HEADLINE_DATASET else f"on {head.label} in place of IJB-C: "
    no_fmr = f"no dataset with a resolvable FMR {head.fmr:g}"

    def add(finding: str, this_run: str, verdict: str = _NA, criterion: str = "", difference: float = nan) -> None:
        if "on IJB-C" in finding and stand_in:
            this_run = stand_in + this_run
        rows.append({"finding": finding, "paper": claims.get(finding, f"(FMR {head.fmr:g})"), "this_run": this_run,
                     "verdict": verdict, "difference": difference, "ci_low": nan, "ci_high": nan,
                     "criterion": criterion})

    def finish() -> pd.DataFrame:
        if left_out:
            names = "; ".join(f"{ds} with {fr}" for ds, fr in left_out)
            add("left out: unresolvable FMR target", names, _NA, "" if at.empty else (
                "a dataset x FR model on which some pAUC at the headline FMR rests on fewer than one expected false "
                "match (the 'resolved' column) is left out of every finding above"))
        return pd.DataFrame(rows, columns=list(FINDINGS_COLUMNS))

    if at.empty and left_out:  # nothing resolvable at the headline FMR: every finding says so
        for finding in claims:
            add(finding, no_fmr)
        return finish()

    def details(q: str, finding: str, a_name: str, b_name: str, label: str) -> tuple[list[dict], dict]:
        """Per dataset, :func:`_paired_detail` of a vs b, and how many rows have each verdict."""
        part = at[(at["quality_model"] == q) & (at["fr_model"] == head.fr_model)]
        wide = part.pivot_table(index="dataset", columns="method", values="pauc", sort=False)
        boot = _paired_rows(paired, q, a_name, b_name, head.fr_model, head.fmr)
        det = [_paired_detail(finding, claims[finding], label, str(ds), float(r[a_name]), float(r[b_name]), boot)
               for ds, r in wide.iterrows()]
        return det, {v: sum(d["verdict"] == v for d in det) for v in VERDICTS[:4]}

    summary = depth_summary(at, {q: d for q, (_, d) in tags.items()}, head.fmr)
    for q in [q for q in tags if q not in set(summary.get("quality_model", []))]:
        add(f"depth gains ({tags[q][0]})", no_fmr)
    for r in summary.itertuples():
        tag, depth = tags[r.quality_model]
        name = f"depth gains ({tag})"
        s5, s8 = r.share_of_gain_by_exit_5, r.share_of_gain_by_exit_8
        first, last = float(r.pauc_exit_1), float(r.pauc_last_exit)
        change = last - first
        rel = change / first if first else nan
        shape = bool(np.isfinite(s5) and first > last and s5 >= max(s8 - s5, 1 - s8) and 1 - s8 <= 0.2)
        last_vs_1 = f"{exit_label(depth)} - {exit_label(1)}"
        det, n = details(r.quality_model, name, exit_label(depth), exit_label(1), last_vs_1)
        with_ci = sum(np.isfinite(d["ci_low"]) for d in det)
        resolved = n["agrees"] + n["differs"]
        text = (f"mean pAUC exit 1 -> exit {depth}: {first:.4g} -> {last:.4g} (change {change:+.4g}, {rel:+.1%}); "
                f"{s5:.0%} of it by exit 5, {s8:.0%} by exit 8 (mean over datasets and FR models)")
        if with_ci:
            text += f"; the change's 95% paired interval excludes 0 on {resolved} of {len(det)} datasets ({head.fr_model})"
        unresolved = not (np.isfinite(rel) and abs(rel) >= min_change) or (with_ci and 2 * resolved <= len(det))
        verdict = "tie" if is_tie(first, last) else "not resolved" if unresolved else "agrees" if shape else "differs"
        add(name, text, verdict,
            f"resolved if the change exit 1 -> last is at least {min_change:.0%} of exit 1's pAUC and "
            + ("its paired interval excludes 0 on more than half of the datasets; " if with_ci else "(no paired intervals given); ")
            + "then agrees if exit 1->5 is the largest of the three segments 1->5, 5->8, 8->last, and at most 20% of "
              "the change comes after exit 8", change)
        if paired is not None:  # one row per compared dataset
            rows.extend(det)
    hp = at[(at["dataset"] == head.label) & (at["fr_model"] == head.fr_model)]
    if "C" not in by_tag or hp[hp["quality_model"] == by_tag["C"]].empty:
        why = ("no (C) model in this run" if "C" not in by_tag
               else f"FMR {head.fmr:g} is not resolvable on {head.label} with {head.fr_model}")
        add("middle exits best on IJB-C (C)", why)
        add("FW beats the last exit (C)", why)
    else:
        q = by_tag["C"]
        depth = tags[q][1]
        p = hp[hp["quality_model"] == q].set_index("method")["pauc"]
        exits = pd.Series({m: float(p[m]) for m in exit_labels(depth)})
        lo, hi = round(7 * depth / 12), round(9 * depth / 12)
        middle_labels = [exit_label(k) for k in range(lo, hi + 1)]
        best = tied_best(exits)
        inside = [m for m in best if m in middle_labels]
        verdict = "agrees" if len(inside) == len(best) else ("differs" if not inside else "tie")
        middle = exits[middle_labels]
        rest = exits.drop(middle.index)
        margin = float(middle.min() - rest.min()) if len(rest) else nan
        add("middle exits best on IJB-C (C)",
            f"best single exit of (C) on {head.label} with {head.fr_model}: {best_text(exits)} (pAUC {exits.min():.6g}); "
            f"best of exits {lo}..{hi} minus best of the others: {margin:+.4g}", verdict,
            f"the best single exit lies in {lo}..{hi} (7..9 of 12, scaled to depth {depth}); exits tied for best "
            "inside and outside that range: tie; point estimates, no interval", margin)
        name = "FW beats the last exit (C)"
        det, n = details(q, name, "EX-FIQA-FW", exit_label(depth), f"FW - {exit_label(depth)}")
        total = len(det)
        point = sum(d["difference"] < 0 and d["verdict"] != "tie" for d in det)
        verdict = ("agrees" if 2 * n["agrees"] > total
                   else "differs" if 2 * (n["agrees"] + n["not resolved"] + n["tie"]) <= total
                   else "tie" if 2 * (n["agrees"] + n["not resolved"]) <= total else "not resolved")
        text = (f"FW better on {n['agrees']} of {total} datasets with {head.fr_model} (95% paired interval below 0), "
                f"worse on {n['differs']}, not resolved on {n['not resolved']}"
                + (f", tied on {n['tie']}" if n["tie"] else "") + f"; lower pAUC (point estimate) on {point} of {total}")
        if not any(np.isfinite(d["ci_low"]) for d in det):
            text += "; no paired intervals given"
        add(name, text, verdict,
            "FW (C) beats the last exit (95% paired interval below 0) on more than half of the datasets (5 of 8 is): "
            "agrees; cannot be more than half even if every unresolved dataset were a win: differs; only tied "
            "datasets could make it: tie; otherwise not resolved")
        if paired is not None:  # one row per compared dataset
            rows.extend(det)
    pool = _pool(at, tags)
    ties_rule = "; tied for best with another method: tie; point estimates, no interval"
    mean = pool.groupby("name")["pauc"].mean().sort_index()
    verdict, margin = _best_verdict(mean, "EX-FIQA-FW (T)")
    add("FW (T) best mean pAUC",
        f"best mean pAUC over datasets and FR models: {best_text(mean)} ({mean.min():.4g})", verdict,
        "EX-FIQA-FW (T) has the lowest mean pAUC of all methods of the run" + ties_rule, margin)
    on_head = pool[pool["dataset"] == head.label]
    per_fr = {fr: part.set_index("name")["pauc"].sort_index() for fr, part in on_head.groupby("fr_model", sort=False)}
    verdicts = {fr: _best_verdict(v, "EX-FIQA-FW (T)") for fr, v in per_fr.items()}
    n_fw = sum(v == "agrees" for v, _ in verdicts.values())
    n_tie = sum(v == "tie" for v, _ in verdicts.values())
    if any(v == _NA for v, _ in verdicts.values()) or not verdicts:
        verdict = _NA
    else:
        verdict = "agrees" if n_fw == len(verdicts) else ("tie" if n_fw + n_tie == len(verdicts) else "differs")
    add("FW (T) top-1 on IJB-C",
        f"top-1 on {head.label} for {n_fw} of {len(per_fr)} FR models" + (f", tied for top-1 for {n_tie}" if n_tie else "")
        + " (" + "; ".join(f"{fr}: {best_text(v)}" for fr, v in per_fr.items()) + ")", verdict,
        "EX-FIQA-FW (T) has the lowest pAUC on the headline dataset for every FR model of the run" + ties_rule
        + "; difference: the largest over FR models", max((m for _, m in verdicts.values()), default=nan))
    if adience is None:
        add("FW (C) best on Adience", "no Adience dataset in this run")
    else:
        part = pool[(pool["dataset"] == adience) & (pool["fr_model"] == head.fr_model)].set_index("name")["pauc"].sort_index()
        verdict, margin = _best_verdict(part, "EX-FIQA-FW (C)")
        add("FW (C) best on Adience", f"best on {adience} with {head.fr_model}: {best_text(part)}", verdict,
            "EX-FIQA-FW (C) has the lowest pAUC on the Adience dataset with the headline FR model" + ties_rule, margin)
    return finish()
