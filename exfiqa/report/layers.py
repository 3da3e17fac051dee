"""Notebook 01, layer analysis: the FR models' sanity check, how pAUC changes along the depth,
and how much the exits agree (rank correlation, score distributions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from exfiqa.evaluation.exits import exit_label, exit_labels, exit_numbers
from exfiqa.evaluation.pairs import AllPairs, all_pairs_sanity
from exfiqa.evaluation.verification import eer, fnmr_at_fmr, verification_accuracy
from exfiqa.report.frames import best_text
from exfiqa.study import Study


def rank_correlation(sample_quality: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Spearman rank correlation between the per-sample scores of ``methods`` (a square frame)."""
    rho = spearmanr(sample_quality[list(methods)].to_numpy()).statistic
    rho = np.atleast_2d(rho)
    return pd.DataFrame(rho, index=list(methods), columns=list(methods))


def fr_sanity(study: Study) -> pd.DataFrame:
    """Per dataset x FR model: 10-fold verification accuracy, EER and FNMR@FMR (no discarding).

    A check that the FR models and readers behave before any quality analysis is read. Uses the
    Study's scores (float32 similarities); an all-vs-all set is evaluated without materialising
    its similarities (:func:`exfiqa.evaluation.pairs.all_pairs_sanity`, exact).
    """
    cfg = study.config
    rows = []
    for fr in cfg.fr_models:
        for ds in cfg.datasets:
            comp = study.comparison_set(ds)
            row = {"dataset": cfg.datasets[ds].label, "fr_model": fr, "comparisons": comp.n}
            if isinstance(comp, AllPairs):
                stats = all_pairs_sanity(study.scores(ds, fr), cfg.fmr_targets)
                row.update(mated=comp.n_m, accuracy_10fold=stats["accuracy_10fold"], eer=stats["eer"])
                fnmr = stats["fnmr"]
            else:
                sim, mated = study.similarity(ds, fr), comp.mated
                acc = verification_accuracy(sim, mated, n_folds=min(10, len(sim)))
                row.update(mated=int(mated.sum()), accuracy_10fold=acc.mean, eer=eer(sim[~mated], sim[mated]))
                fnmr = np.atleast_1d(fnmr_at_fmr(sim[~mated], sim[mated], cfg.fmr_targets))
            for f, v in zip(cfg.fmr_targets, fnmr, strict=True):
                row[f"fnmr@fmr={f:g}"] = float(v)
            rows.append(row)
    return pd.DataFrame(rows)


def depth_summary(pauc_table: pd.DataFrame, depths: dict[str, int], fmr: float) -> pd.DataFrame:
    """Per quality model: mean pAUC (over datasets and FR models) of exit 1 and the last exit,
    the share of the exit-1-to-last change reached by exit 5 and by exit 8, the best single exit
    (every exit tied for best named, :func:`best_text`).

    ``depths``: quality model -> depth. Share = (pAUC(1) - pAUC(k)) / (pAUC(1) - pAUC(last)).
    """
    rows = []
    for q, depth in depths.items():
        part = pauc_table[(pauc_table["quality_model"] == q) & np.isclose(pauc_table["fmr"], fmr)]
        if part.empty:  # e.g. every dataset left out (unresolvable FMR target)
            continue
        mean = part.groupby("method")["pauc"].mean()
        first, last = mean[exit_label(1)], mean[exit_label(depth)]
        total = first - last

        def share(k: int, first=first, total=total, mean=mean, depth=depth) -> float:
            return float((first - mean[exit_label(min(k, depth))]) / total) if total else float("nan")

        best = best_text(mean[exit_labels(depth)])
        rows.append({
            "quality_model": q, "pauc_exit_1": float(first), "pauc_last_exit": float(last), "last_exit": depth,
            "share_of_gain_by_exit_5": share(5), "share_of_gain_by_exit_8": share(8), "best_single_exit": best,
        })
    return pd.DataFrame(rows)


def exit_scores_long(sample_quality: pd.DataFrame, depth: int) -> pd.DataFrame:
    """Per-sample exit scores as a tidy ``exit, score`` frame (for the violin plot)."""
    number = exit_numbers(depth)
    tidy = sample_quality[list(number)].melt(var_name="exit", value_name="score")
    tidy["exit"] = tidy["exit"].map(number)
    return tidy
