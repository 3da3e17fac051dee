"""The run's tidy frames every notebook section reads (EDC points and pAUCs with an ``exit``
column), the headline operating point, table protocols, variant tags and ties between pAUCs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from exfiqa.config import ConfigError
from exfiqa.evaluation.exits import exit_numbers
from exfiqa.report.tables import protocol
from exfiqa.study import Study


def _available(study: Study, quality: str, dataset: str, methods: Sequence[str] | None) -> list[str]:
    """``methods`` (default: all of the run's) that have scores on ``dataset``."""
    have = study.methods(quality, dataset)
    return have if methods is None else [m for m in methods if m in have]


def with_exit_column(frame: pd.DataFrame, depth: int) -> pd.DataFrame:
    """``frame`` with an ``Int64`` ``exit`` column after ``method`` (k for ``Exit k``, else NA), in place."""
    if "method" in frame.columns:
        number = exit_numbers(depth)
        frame.insert(frame.columns.get_loc("method") + 1, "exit",
                     pd.array([number.get(m, pd.NA) for m in frame["method"]], dtype="Int64"))
    return frame


def edc_all(study: Study, quality: str, fr: str, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy EDC points (:meth:`Study.edc_frame`) of every method and dataset, with an ``exit`` column."""
    frames = [with_exit_column(study.edc_frame(ds, fr, quality, _available(study, quality, ds, methods)), study.depth(quality, ds))
              for ds in study.config.datasets]
    return pd.concat(frames, ignore_index=True)


def pauc_all(study: Study, methods: Sequence[str] | None = None, scale: float = 1.0) -> pd.DataFrame:
    """Tidy pAUC (:meth:`Study.pauc_frame`) of every method x dataset x FR x quality model x target,
    with an ``exit`` column."""
    cfg = study.config
    frames = []
    for q in cfg.quality_models:
        for fr in cfg.fr_models:
            for ds in cfg.datasets:
                f = with_exit_column(study.pauc_frame(ds, fr, q, _available(study, q, ds, methods), scale=scale), study.depth(q, ds))
                f.insert(0, "quality_model", q)
                frames.append(f)
    return pd.concat(frames, ignore_index=True)


def unresolved(pauc: pd.DataFrame) -> pd.DataFrame:
    """The rows of a tidy pAUC table whose ``resolved`` is False (findings leave them out)."""
    if "resolved" not in pauc.columns:
        raise ValueError("pauc: no 'resolved' column (a table from exfiqa.evaluation.pauc.pauc_rows / exfiqa.report.frames.pauc_all has one)")
    return pauc[~pauc["resolved"].astype(bool)].reset_index(drop=True)


@dataclass(frozen=True)
class Headline:
    """The headline operating point: dataset (config key and label), FR model and FMR target."""

    dataset: str
    label: str
    fr_model: str
    fmr: float


def headline(cfg, fmr: float | None = None) -> Headline:
    """The config's ``headline`` dataset and FR model (else the run's first) and FMR: ``fmr``, else
    ``headline.fmr``, else 1e-3 if a target, else the first target; it must be a target."""
    h = cfg.headline
    ds = h["dataset"] if h.get("dataset") in cfg.datasets else next(iter(cfg.datasets))
    fr = h["fr_model"] if h.get("fr_model") in cfg.fr_models else next(iter(cfg.fr_models))
    if fmr is not None:
        value, source = fmr, "parameter headline_fmr"
    elif "fmr" in h:
        value, source = h["fmr"], "headline.fmr of the config"
    else:
        value = 1e-3 if any(np.isclose(1e-3, f) for f in cfg.fmr_targets) else cfg.fmr_targets[0]
        source = "the default"
    target = _as_target(cfg, value)
    if target is None:
        raise ConfigError(
            f"headline FMR {value!r} ({source}) is not one of fmr_targets {list(cfg.fmr_targets)}; "
            "set headline.fmr in the config or pass -p headline_fmr"
        )
    return Headline(ds, cfg.datasets[ds].label, fr, target)


def _as_target(cfg, value) -> float | None:
    """The FMR target ``value`` equals (None: a non-number or no target)."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    match = [f for f in cfg.fmr_targets if number and np.isclose(value, f)]
    return float(match[0]) if match else None


def fmr_target(cfg, value: float | None, name: str) -> float:
    """A notebook's FMR parameter: ``value`` if given (must be a target), else the smallest target."""
    if value is None:
        return float(min(cfg.fmr_targets))
    target = _as_target(cfg, value)
    if target is None:
        raise ConfigError(f"{name} {value!r} is not one of fmr_targets {list(cfg.fmr_targets)}")
    return target


def table_protocol(cfg, fmr: float | None = None, seed: bool = False) -> dict:
    """The protocol columns of a table of this run (:func:`exfiqa.report.tables.protocol`)."""
    out = protocol(cfg.convention, cfg.discard_limit, fmr, cfg.pauc_scale, cfg.seed if seed else None)
    for key, default in (("threshold_rule", "at_most"), ("acceptance", "similarity>=")):
        if getattr(cfg, key, default) != default:  # stated where it differs from the default only
            out[key] = getattr(cfg, key)
    return out


def variant_tags(study: Study) -> dict[str, tuple[str, int]]:
    """Quality model name -> (:meth:`Study.variant_tag`, :meth:`Study.depth`)."""
    return {q: (study.variant_tag(q), study.depth(q)) for q in study.config.quality_models}


TIE_RTOL = 1e-9  # two pAUCs within this relative distance tie


def is_tie(a: float, b: float, rtol: float = TIE_RTOL) -> bool:
    """``a`` and ``b`` are equal to a relative ``rtol`` (NaN ties with nothing)."""
    return bool(a == b or abs(a - b) <= rtol * max(abs(a), abs(b)))


def tied_best(values: pd.Series, rtol: float = TIE_RTOL) -> list[str]:
    """The labels of ``values`` tying (:func:`is_tie`) with the minimum (lower = better), in order."""
    v = pd.to_numeric(values, errors="coerce").astype(np.float64)
    finite = v[np.isfinite(v)]
    if finite.empty:
        return []
    lo = float(finite.min())
    return [str(k) for k, x in finite.items() if is_tie(float(x), lo, rtol)]


def best_text(values: pd.Series, rtol: float = TIE_RTOL) -> str:
    """The best (lowest) of ``values`` in words, naming every tied label: ``"Exit 8"`` or
    ``"Exit 9, Exit 10, Exit 11 (tie)"``."""
    best = tied_best(values, rtol)
    return ", ".join(best) + (" (tie)" if len(best) > 1 else "")


def study_models(study: Study) -> Any:
    """The :class:`exfiqa.extract.Models` of ``study``'s config, kept on it (torch imported only here)."""
    models = vars(study).get("_report_models")
    if models is None:
        from exfiqa.extract.models import Models

        models = vars(study).setdefault("_report_models", Models(study.config))
    return models
