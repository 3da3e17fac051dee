"""Notebook 03, fusion of exits: F and FW against the exits, weights searched on one dataset,
further strategies, and exits chosen on held-out data (EX-FIQA-DC)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from exfiqa.config import ConfigError
from exfiqa.evaluation import fusion
from exfiqa.evaluation.bootstrap import bootstrap_samples
from exfiqa.evaluation.exits import exit_label, exit_labels
from exfiqa.evaluation.fusion import (
    DC_NAME,
    CalibrationSet,
    choose_exits,
    chosen_mean,
    ex_fiqa_f,
    ex_fiqa_fw,
)
from exfiqa.evaluation.pairs import AllPairs
from exfiqa.report.bootstrap_tables import _diff_interval, bootstrap_units
from exfiqa.report.frames import best_text, is_tie, tied_best, variant_tags
from exfiqa.report.tables import flag_unresolved
from exfiqa.study import Study


def fusion_wins(pauc: pd.DataFrame, challenger: str, reference: str) -> pd.DataFrame:
    """Per (quality model, FR model, FMR): on how many datasets ``challenger`` has a lower pAUC.

    Returns columns ``quality_model, fr_model, fmr, wins, n, unresolved, summary``. Point
    estimates, no intervals (a tie, :func:`is_tie`, is no win): whether a difference is resolved,
    the paired bootstrap says (:func:`paired_vs_reference`, :func:`paper_findings`). With a
    ``resolved`` column, datasets where either pAUC rests on an FMR target the data cannot
    resolve are left out of ``n`` and counted in ``unresolved``.
    """
    keys = ["quality_model", "fr_model", "fmr", "dataset"]
    both = pauc[pauc["method"].isin([challenger, reference])]
    wide = both.pivot_table(index=keys, columns="method", values="pauc")
    a, b = wide[challenger], wide[reference]
    counted = (both.groupby(keys)["resolved"].all().reindex(wide.index).astype(bool) if "resolved" in both.columns
               else pd.Series(True, index=wide.index))
    tie = np.array([is_tie(x, y) for x, y in zip(a, b, strict=True)], dtype=bool)
    flags = pd.DataFrame({"win": (a < b) & ~tie & counted, "counted": counted})
    out = flags.groupby(level=[0, 1, 2]).agg(wins=("win", "sum"), n=("counted", "sum"), total=("counted", "size")).reset_index()
    out["wins"], out["n"] = out["wins"].astype(int), out["n"].astype(int)
    out["unresolved"] = (out.pop("total") - out["n"]).astype(int)
    out["summary"] = [f"{challenger} has a lower pAUC (point estimate) than {reference} on {w} of {n}"
                      + (f" ({u} more left out: FMR target not resolvable)" if u else "")
                      for w, n, u in zip(out["wins"], out["n"], out["unresolved"], strict=True)]
    return out


def search_fusion_weights(
    study: Study, quality: str, fr: str, dataset: str, fmr: float, n_candidates: int = 200, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Weights (non-negative, summing to 1) with the lowest pAUC on ``dataset``: random search.

    Candidates: the uniform and depth weights, every one-hot exit and ``n_candidates`` Dirichlet
    draws (concentration 0.5); the first candidate with the lowest pAUC wins. Returns the best
    weights and their pAUC on ``dataset``; apply them to other datasets to test whether learned
    fusion transfers. Bounded: one candidate's fused per-sample scores (float32) and order at a
    time, against the Study's scores.

    Why a random search: pAUC depends on the weights only through the order of the fused scores,
    so it is a step function of the weights (zero gradient almost everywhere, jumps where two
    samples swap). scikit-learn's (and scipy's) gradient-based or least-squares fitters optimise
    a smooth surrogate loss against a target, not the pAUC of a discard curve, so they do not
    apply; a derivative-free search over the simplex optimises the criterion itself.
    """
    scores = study.exit_scores(dataset, quality).astype(np.float64)
    depth = scores.shape[1]
    rng = np.random.default_rng(seed)
    cands = [fusion.uniform_weights(depth), fusion.depth_weights(depth), *np.eye(depth)]
    cands += list(rng.dirichlet(np.full(depth, 0.5), size=n_candidates))
    best_w, best_p = cands[0], np.inf
    for w in cands:
        p = study.pauc_of(dataset, fr, scores @ w, (fmr,))[float(fmr)][0]
        if p < best_p:
            best_w, best_p = w, p
    return np.asarray(best_w), float(best_p)


def fusion_vs_exits(head: pd.DataFrame, depths: dict[str, int]) -> pd.DataFrame:
    """Per quality model, FR model and dataset (``head``: pAUC rows at one FMR): the last exit,
    the best single exit (chosen with hindsight; every tied exit named, :func:`best_text`),
    EX-FIQA-F and EX-FIQA-FW; with a ``resolved`` column in ``head``, the flags of
    :func:`exfiqa.report.tables.flag_unresolved` follow."""
    rows, flags = [], []
    for (q, fr, ds), part in head.groupby(["quality_model", "fr_model", "dataset"], sort=False):
        p = part.set_index("method")["pauc"]
        depth = depths[q]
        exits = p[exit_labels(depth)]
        rows.append({
            "quality_model": q, "fr_model": fr, "dataset": ds, "last exit": float(p[exit_label(depth)]),
            "best single exit": best_text(exits), "best exit pAUC": float(exits.min()), "EX-FIQA-F": float(p["EX-FIQA-F"]),
            "EX-FIQA-FW": float(p["EX-FIQA-FW"]),
        })
        if "resolved" in part.columns:
            r = part.set_index("method")["resolved"].astype(bool)
            flags.append({"last exit": r[exit_label(depth)], "best exit pAUC": bool(r[tied_best(exits)].all()), "EX-FIQA-F": r["EX-FIQA-F"],
                          "EX-FIQA-FW": r["EX-FIQA-FW"]})
    out = pd.DataFrame(rows)
    return flag_unresolved(out, pd.DataFrame(flags, index=out.index)) if flags else out


@dataclass(frozen=True)
class StrategyResult:
    """Fusion strategies on every dataset: ``tidy`` rows, the ``wide`` table (datasets as
    columns, plus their mean) and the ``learned`` weights per quality model."""

    tidy: pd.DataFrame
    wide: pd.DataFrame
    learned: dict[str, np.ndarray]


def strategy_table(study: Study, fr: str, fmr: float, learn_on: str, n_candidates: int = 200) -> StrategyResult:
    """pAUC of the last exit, every :func:`exfiqa.evaluation.fusion.strategies` entry and weights learned on
    ``learn_on`` (:func:`search_fusion_weights`), on each dataset, for FR model ``fr``."""
    cfg = study.config
    rows, learned = [], {}
    for q, (_, depth) in variant_tags(study).items():
        w, _ = search_fusion_weights(study, q, fr, learn_on, fmr, n_candidates=n_candidates, seed=cfg.seed)
        learned[q] = w
        strategies = [fusion.Strategy(exit_label(depth), weights=np.eye(depth)[-1]),
                      *fusion.strategies(depth).values(), fusion.Strategy("learned", weights=w)]
        for ds in cfg.datasets:
            scores = study.exit_scores(ds, q).astype(np.float64)
            fused = np.stack([s.apply(scores) for s in strategies], axis=1)
            values = study.pauc_of(ds, fr, fused, (fmr,))[fmr] * cfg.pauc_scale
            ok = study.resolved_of(ds, fr, fused, fmr)
            for s, v, r in zip(strategies, values, ok, strict=True):
                rows.append({"quality_model": q, "dataset": cfg.datasets[ds].label, "strategy": s.name, "pauc": float(v),
                             "fitted_here": s.name == "learned" and ds == learn_on, "resolved": bool(r)})
    tidy = pd.DataFrame(rows)
    return StrategyResult(tidy, _wide_with_mean(tidy, "strategy"), learned)


def _wide_with_mean(tidy: pd.DataFrame, rows: str) -> pd.DataFrame:
    """``pauc`` by (quality model, ``rows``) x dataset plus the datasets' mean, with the flags of
    :func:`exfiqa.report.tables.flag_unresolved` (the mean is unresolved where any of its cells is)."""
    keys = ["quality_model", rows]
    wide = tidy.pivot_table(index=keys, columns="dataset", values="pauc", sort=False)
    wide["mean"] = wide.mean(axis=1)
    ok = tidy.pivot_table(index=keys, columns="dataset", values="resolved", aggfunc="all", sort=False).astype(bool)
    ok["mean"] = ok.all(axis=1)
    wide = flag_unresolved(wide, ok).reset_index()
    wide.columns.name = None
    return wide


# --- data-chosen exits (EX-FIQA-DC)


def mated_similarity_label(study: Study, dataset: str, fr: str) -> np.ndarray:
    """EX-FIQA-DC's pseudo-label: each side's **mean mated similarity** under FR model ``fr``.

    A side is what a comparison pairs: a sample (pair lists, Adience all-vs-all) or a template
    (IJB-C). Its label is the mean similarity of the mated comparisons it takes part in, exactly
    as evaluated (:meth:`Study.scores`: float32 similarities, averaged in float64), NaN for a
    side in no mated comparison (left out of the correlations). Well-defined on every benchmark
    kind and O(sides + mated comparisons) in memory. A certainty ratio (mated / max non-mated)
    was not chosen: sparse pair lists give most samples one or two non-mated comparisons, and
    all-vs-all would need every non-mated similarity per sample (one more full scan).
    """
    comp = study.comparison_set(dataset)
    scores = study.scores(dataset, fr)
    refs = np.asarray(scores.mated_refs)
    if isinstance(comp, AllPairs):
        i, j, n = refs[:, 0], refs[:, 1], comp.n_samples
    else:
        i, j, n = comp.a[refs], comp.b[refs], comp.n_sides
    sim = np.asarray(scores.sim_m, dtype=np.float64)
    total = np.bincount(i, sim, minlength=n) + np.bincount(j, sim, minlength=n)
    count = np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def calibration_set(study: Study, dataset: str, quality: str, fr: str):
    """:class:`exfiqa.evaluation.fusion.CalibrationSet` of ``dataset``: the exit scores of ``quality``, the
    :func:`mated_similarity_label` under ``fr``, and (templates) each sample's template, in the
    sorted template order the comparisons use."""
    bench = study.benchmark(dataset)
    sides = None
    if bench.level == "template":
        _, sides = np.unique(bench.samples["template_id"].to_numpy(), return_inverse=True)
        sides = sides.ravel()
    return CalibrationSet(np.asarray(study.exit_scores(dataset, quality)), mated_similarity_label(study, dataset, fr), sides, dataset)


def calibration_datasets(datasets: Sequence[str], evaluated: str, calibrate_on: Sequence[str] = ()) -> list[str]:
    """The datasets EX-FIQA-DC's exits are chosen on when it is evaluated on ``evaluated``.

    ``calibrate_on`` empty: leave-one-dataset-out, every other dataset of the run. Otherwise the
    named datasets, which must be the run's and are then not evaluated. Never ``evaluated``.
    """
    if not calibrate_on:
        out = [d for d in datasets if d != evaluated]
        if not out:
            raise ConfigError(f"EX-FIQA-DC on {evaluated!r}: leave-one-dataset-out needs a second dataset; "
                              "add one to the run or name a calibration dataset (calibrate_on)")
        return out
    unknown = [d for d in calibrate_on if d not in datasets]
    if unknown:
        raise ConfigError(f"calibrate_on {unknown} are not datasets of the run {list(datasets)}")
    if evaluated in calibrate_on:
        raise ConfigError(f"EX-FIQA-DC: {evaluated!r} is a calibration dataset (calibrate_on) and cannot be evaluated")
    return list(dict.fromkeys(calibrate_on))


def evaluated_datasets(datasets: Sequence[str], calibrate_on: Sequence[str] = ()) -> list[str]:
    """The datasets EX-FIQA-DC is evaluated on: all but those named in ``calibrate_on``."""
    out = [d for d in datasets if d not in set(calibrate_on)]
    if not out:
        raise ConfigError(f"calibrate_on {list(calibrate_on)} leaves no dataset of the run to evaluate EX-FIQA-DC on")
    return out


def choose_for(
    study: Study, quality: str, fr: str, evaluated: str, calibrate_on: Sequence[str] = (), cache: dict | None = None
):
    """:func:`exfiqa.evaluation.fusion.choose_exits` of ``quality`` for evaluation on ``evaluated``, on the
    :func:`calibration_datasets` (pseudo-label under ``fr``); reads nothing of ``evaluated``.
    ``cache``: calibration sets by ``(dataset, quality, fr)``, shared between calls."""
    cache = {} if cache is None else cache
    sets = []
    for d in calibration_datasets(list(study.config.datasets), evaluated, calibrate_on):
        if (d, quality, fr) not in cache:
            cache[(d, quality, fr)] = calibration_set(study, d, quality, fr)
        sets.append(cache[(d, quality, fr)])
    return choose_exits(sets)


def _exits_text(exits: Sequence[int]) -> str:
    return ", ".join(str(k) for k in exits)


@dataclass(frozen=True)
class ChosenExits:
    """EX-FIQA-DC on a run: the :class:`exfiqa.evaluation.fusion.ExitChoice` per ``(quality model, dataset
    key)`` evaluated, the pseudo-label's FR model, and the ``selection`` table (one row each)."""

    choices: dict
    fr_model: str
    selection: pd.DataFrame


def chosen_exits(study: Study, fr: str, calibrate_on: Sequence[str] = ()) -> ChosenExits:
    """The exits EX-FIQA-DC chooses for every quality model and evaluated dataset.

    Pseudo-label: :func:`mated_similarity_label` under ``fr``. Calibration:
    :func:`calibration_datasets` of ``calibrate_on`` (dataset keys; a single key may be given as a
    string; empty: leave-one-dataset-out), correlations averaged over
    the calibration datasets (:func:`exfiqa.evaluation.fusion.choose_exits`). Table columns: the chosen
    exits (in order of addition) and their mean's correlation, the full ranking, the best
    single exit and the first exit that did not raise the correlation.
    """
    cfg = study.config
    calibrate_on = [calibrate_on] if isinstance(calibrate_on, str) and calibrate_on else list(calibrate_on or [])
    cache: dict = {}
    choices, rows = {}, []
    for q in cfg.quality_models:
        for ds in evaluated_datasets(list(cfg.datasets), calibrate_on):
            c = choose_for(study, q, fr, ds, calibrate_on, cache)
            choices[(q, ds)] = c
            rows.append({
                "quality_model": q, "dataset": cfg.datasets[ds].label,
                "calibrated_on": "; ".join(cfg.datasets[d].label for d in c.calibration),
                "pseudo_label": f"mean mated similarity ({fr})", "chosen_exits": _exits_text(c.chosen),
                "n_chosen": len(c.chosen), "rho_chosen_mean": c.trace[-1], "best_single_exit": c.ranking[0],
                "rho_best_exit": c.correlations[c.ranking[0] - 1], "stopped_at_exit": c.stopped_at or 0,
                "rho_with_it": float("nan") if c.stop_correlation is None else c.stop_correlation,
                "ranking": _exits_text(c.ranking),
            })
    return ChosenExits(choices, fr, pd.DataFrame(rows))


@dataclass(frozen=True)
class ChosenComparison:
    """EX-FIQA-DC against F, FW, the learned fusion and the last exit: ``tidy`` pAUC rows,
    the ``wide`` table (datasets as columns, plus their mean) and the paired ``bootstrap``."""

    tidy: pd.DataFrame
    wide: pd.DataFrame
    bootstrap: pd.DataFrame


def chosen_exits_comparison(
    study: Study, chosen: ChosenExits, fmr: float, n_boot: int, learned: dict, learn_on: str, unit: str = "subject"
) -> ChosenComparison:
    """pAUC (x ``pauc_scale``) of EX-FIQA-DC, F, FW, ``learned`` weights (fitted on ``learn_on``,
    as :func:`strategy_table`) and the last exit on each dataset DC is evaluated on, with the
    FR model of ``chosen``; and the paired bootstrap of pAUC(DC) - pAUC(each other), all five on
    the same resamples (:func:`exfiqa.evaluation.bootstrap.bootstrap_samples`, the run's seed; as
    :func:`paired_vs_reference`, resampling ``unit``). ``delta_pauc < 0``: DC is better."""
    cfg = study.config
    fr, scale = chosen.fr_model, cfg.pauc_scale
    rows, boot = [], []
    for (q, ds), c in chosen.choices.items():
        scores = np.asarray(study.exit_scores(ds, q), dtype=np.float64)
        depth = scores.shape[1]
        values = {DC_NAME: chosen_mean(scores, c.chosen), "EX-FIQA-F": ex_fiqa_f(scores), "EX-FIQA-FW": ex_fiqa_fw(scores),
                  "learned": scores @ np.asarray(learned[q], dtype=np.float64), exit_label(depth): scores[:, -1]}
        comp = study.scores(ds, fr)
        orders = [study.order_of(ds, v) for v in values.values()]
        est = [study.pauc_order(ds, fr, o, fmr) for o in orders]
        subjects, unit_name, n_units = bootstrap_units(study, ds, unit)
        res = [study.resolved(ds, fr, o, fmr) for o in orders]
        samples = bootstrap_samples(comp, orders, fmr, cfg.convention, cfg.discard_limit, n_boot, cfg.seed,
                                    subtract_best=cfg.subtract_best, subjects=subjects, **study.rules())
        label = cfg.datasets[ds].label
        for m, e, r in zip(values, est, res, strict=True):
            rows.append({"quality_model": q, "dataset": label, "fr_model": fr, "fmr": fmr, "method": m, "pauc": e * scale,
                         "fitted_here": m == "learned" and ds == learn_on, "resolved": bool(r)})
        for m, e, s, r in zip(list(values)[1:], est[1:], samples[1:], res[1:], strict=True):
            diff = samples[0] - s
            lo, hi, ok = _diff_interval(diff)
            boot.append({
                "quality_model": q, "dataset": label, "fr_model": fr, "fmr": fmr, "method": DC_NAME, "reference": m,
                "chosen_exits": _exits_text(c.chosen), "delta_pauc": (est[0] - e) * scale, "ci_low": lo * scale,
                "ci_high": hi * scale, "p_better": float(np.mean(samples[0][ok] < s[ok])),
                "reference_fitted_here": m == "learned" and ds == learn_on, "convention": cfg.convention,
                "limit": cfg.discard_limit, "scale": float(scale), "seed": int(cfg.seed), "n_boot": int(n_boot),
                "unit": unit_name, "n_units": n_units, "n_defined": int(ok.sum()), "resolved": bool(r and res[0]),
            })
    tidy = pd.DataFrame(rows)
    return ChosenComparison(tidy, _wide_with_mean(tidy, "method"), pd.DataFrame(boot))
