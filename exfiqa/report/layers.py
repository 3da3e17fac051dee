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
    rho = np.atleast_2d(spearmanr(sample_quality[list(methods)].to_numpy()).statistic)
    return pd.DataFrame(rho, index=list(methods), columns=list(methods))


def fr_sanity(study: Study) -> pd.DataFrame:
    """Per dataset x FR model, no discarding: 10-fold verification accuracy, EER and FNMR at each
    FMR target (an all-vs-all set exactly, without materialising its similarities)."""
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
    """Per quality model (``depths``: -> depth): mean pAUC over datasets and FR models of exit 1
    and the last exit, the share (pAUC(1) - pAUC(k)) / (pAUC(1) - pAUC(last)) of the change reached
    by exit 5 and 8, the best single exit (ties all named)."""
    rows = []
    for q, depth in depths.items():
        part = pauc_table[(pauc_table["quality_model"] == q) & np.isclose(pauc_table["fmr"], fmr)]
        if part.empty:  # e.g. every dataset left out (unresolvable FMR target)
            continue
        mean = part.groupby("method")["pauc"].mean()
        first, last = mean[exit_label(1)], mean[exit_label(depth)]
        s5, s8 = (float((first - mean[exit_label(min(k, depth))]) / (first - last)) if first - last else float("nan")
                  for k in (5, 8))
        rows.append({"quality_model": q, "pauc_exit_1": float(first), "pauc_last_exit": float(last), "last_exit": depth,
                     "share_of_gain_by_exit_5": s5, "share_of_gain_by_exit_8": s8,
                     "best_single_exit": best_text(mean[exit_labels(depth)])})
    return pd.DataFrame(rows)


def exit_scores_long(sample_quality: pd.DataFrame, depth: int) -> pd.DataFrame:
    """Per-sample exit scores as a tidy ``exit, score`` frame (for the violin plot)."""
    number = exit_numbers(depth)
    tidy = sample_quality[list(number)].melt(var_name="exit", value_name="score")
    tidy["exit"] = tidy["exit"].map(number)
    return tidy
