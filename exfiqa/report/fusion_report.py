"""Notebook 03, fusion of exits: F and FW against the exits, weights searched on one dataset,
further strategies, and exits chosen on held-out data (EX-FIQA-DC)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from exfiqa.config import ConfigError
from exfiqa.evaluation import fusion
from exfiqa.evaluation.exits import exit_label, exit_labels
from exfiqa.evaluation.pairs import AllPairs
from exfiqa.report.bootstrap_tables import _paired, _resampled
from exfiqa.report.frames import best_text, is_tie, tied_best, variant_tags
from exfiqa.report.tables import flag_unresolved
from exfiqa.study import Study


def fusion_wins(pauc: pd.DataFrame, challenger: str, reference: str) -> pd.DataFrame:
    """Per (quality model, FR model, FMR): on how many datasets ``challenger`` has a lower pAUC
    (point estimates; a tie is no win). With a ``resolved`` column, datasets where either pAUC is
    unresolvable are left out of ``n`` and counted in ``unresolved``."""
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
    """Weights (non-negative, summing to 1) with the lowest pAUC on ``dataset``, and that pAUC: random
    search over the uniform and depth weights, every one-hot exit and ``n_candidates`` Dirichlet draws
    (concentration 0.5); the first lowest wins (pAUC is a step function of the weights: no gradient)."""
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
    the best single exit (with hindsight; ties all named), EX-FIQA-F and EX-FIQA-FW; flagged
    (:func:`exfiqa.report.tables.flag_unresolved`) where ``head`` has a ``resolved`` column."""
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
    """pAUC of the last exit, every :func:`exfiqa.evaluation.fusion.strategies` entry and weights
    learned on ``learn_on`` (:func:`search_fusion_weights`), on each dataset, for FR model ``fr``."""
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
    """``pauc`` by (quality model, ``rows``) x dataset plus the datasets' mean, flagged where
    unresolved (the mean where any of its cells is)."""
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
    """EX-FIQA-DC's pseudo-label: each side's (sample, or IJB-C template) mean similarity (float64
    over the float32 scores) in the mated comparisons it takes part in under ``fr``; NaN for a
    side in none."""
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
    """:class:`exfiqa.evaluation.fusion.CalibrationSet` of ``dataset``: the exit scores of ``quality``,
    the :func:`mated_similarity_label` under ``fr`` and (templates) each sample's template index."""
    bench = study.benchmark(dataset)
    template = bench.level == "template"
    sides = np.unique(bench.samples["template_id"].to_numpy(), return_inverse=True)[1].ravel() if template else None
    return fusion.CalibrationSet(np.asarray(study.exit_scores(dataset, quality)), mated_similarity_label(study, dataset, fr),
                                 sides, dataset)


def calibration_datasets(datasets: Sequence[str], evaluated: str, calibrate_on: Sequence[str] = ()) -> list[str]:
    """The datasets EX-FIQA-DC's exits are chosen on when it is evaluated on ``evaluated``: every
    other dataset of the run (``calibrate_on`` empty), else the named ones (never ``evaluated``)."""
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
    """:func:`exfiqa.evaluation.fusion.choose_exits` of ``quality`` for evaluation on ``evaluated``,
    on its :func:`calibration_datasets`; ``cache``: calibration sets by ``(dataset, quality, fr)``."""
    cache = {} if cache is None else cache
    sets = []
    for d in calibration_datasets(list(study.config.datasets), evaluated, calibrate_on):
        if (d, quality, fr) not in cache:
            cache[(d, quality, fr)] = calibration_set(study, d, quality, fr)
        sets.append(cache[(d, quality, fr)])
    return fusion.choose_exits(sets)


@dataclass(frozen=True)
class ChosenExits:
    """EX-FIQA-DC on a run: the :class:`exfiqa.evaluation.fusion.ExitChoice` per evaluated
    ``(quality model, dataset key)``, the pseudo-label's FR model and the ``selection`` table."""

    choices: dict
    fr_model: str
    selection: pd.DataFrame


def chosen_exits(study: Study, fr: str, calibrate_on: Sequence[str] = ()) -> ChosenExits:
    """The exits EX-FIQA-DC chooses for every quality model and evaluated dataset, calibrated on
    :func:`calibration_datasets` of ``calibrate_on`` (dataset keys, or one key as a string)."""
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
                "pseudo_label": f"mean mated similarity ({fr})", "chosen_exits": ", ".join(map(str, c.chosen)),
                "n_chosen": len(c.chosen), "rho_chosen_mean": c.trace[-1], "best_single_exit": c.ranking[0],
                "rho_best_exit": c.correlations[c.ranking[0] - 1], "stopped_at_exit": c.stopped_at or 0,
                "rho_with_it": float("nan") if c.stop_correlation is None else c.stop_correlation,
                "ranking": ", ".join(map(str, c.ranking)),
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
    """pAUC (x ``pauc_scale``) of EX-FIQA-DC, F, FW, ``learned`` weights (fitted on ``learn_on``)
    and the last exit on each dataset DC is evaluated on, with ``chosen``'s FR model, and the paired
    bootstrap of pAUC(DC) - pAUC(each other) on the same resamples (``delta_pauc < 0``: DC is better)."""
    cfg = study.config
    fr, scale = chosen.fr_model, cfg.pauc_scale
    rows, boot = [], []
    for (q, ds), c in chosen.choices.items():
        scores = np.asarray(study.exit_scores(ds, q), dtype=np.float64)
        depth = scores.shape[1]
        values = {fusion.DC_NAME: fusion.chosen_mean(scores, c.chosen), "EX-FIQA-F": fusion.ex_fiqa_f(scores),
                  "EX-FIQA-FW": fusion.ex_fiqa_fw(scores),
                  "learned": scores @ np.asarray(learned[q], dtype=np.float64), exit_label(depth): scores[:, -1]}
        orders = [study.order_of(ds, v) for v in values.values()]
        est, res, samples, unit_name, n_units = _resampled(study, ds, fr, orders, fmr, n_boot, unit)
        label = cfg.datasets[ds].label
        for m, e, r in zip(values, est, res, strict=True):
            rows.append({"quality_model": q, "dataset": label, "fr_model": fr, "fmr": fmr, "method": m, "pauc": e * scale,
                         "fitted_here": m == "learned" and ds == learn_on, "resolved": bool(r)})
        for m, e, s, r in zip(list(values)[1:], est[1:], samples[1:], res[1:], strict=True):
            delta, lo, hi, p_better, n_defined = _paired(est[0], e, samples[0], s)
            boot.append({
                "quality_model": q, "dataset": label, "fr_model": fr, "fmr": fmr, "method": fusion.DC_NAME,
                "reference": m, "chosen_exits": ", ".join(map(str, c.chosen)), "delta_pauc": delta * scale, "ci_low": lo * scale,
                "ci_high": hi * scale, "p_better": p_better, "reference_fitted_here": m == "learned" and ds == learn_on,
                "convention": cfg.convention, "limit": cfg.discard_limit, "scale": float(scale), "seed": int(cfg.seed),
                "n_boot": int(n_boot), "unit": unit_name, "n_units": n_units, "n_defined": n_defined,
                "resolved": bool(r and res[0]),
            })
    tidy = pd.DataFrame(rows)
    return ChosenComparison(tidy, _wide_with_mean(tidy, "method"), pd.DataFrame(boot))
