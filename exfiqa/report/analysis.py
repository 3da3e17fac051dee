"""Study-level analyses the notebooks call, in one namespace: ``from exfiqa.report import analysis``.

Each lives in the module of the notebook section or concept it serves:

- :mod:`exfiqa.report.frames`: the run's tidy EDC and pAUC frames (with an integer ``exit``
  column), the headline, a table's protocol, the variant tags, ties between pAUCs;
- :mod:`exfiqa.report.layers` (01): the FR sanity check, pAUC along the depth, exit agreement;
- :mod:`exfiqa.report.attention` (02): attention maps and their statistics;
- :mod:`exfiqa.report.fusion_report` (03): F and FW against the exits, strategies, EX-FIQA-DC;
- :mod:`exfiqa.report.bootstrap_tables` (03): paired bootstrap tables and their units;
- :mod:`exfiqa.report.comparison` (03): the poster's tables beside this run;
- :mod:`exfiqa.report.findings` (03): the paper's findings with verdicts;
- :mod:`exfiqa.report.early_exit` (04): GFLOPs, latency, operating points, adaptive exit.
"""

from __future__ import annotations

from exfiqa.report.attention import (
    LOW_CONTRAST_ENTROPY,
    AttentionInputs,
    attention_contrast,
    attention_inputs,
    attention_maps,
    attention_statistics,
    attention_study,
    attention_unavailable,
)
from exfiqa.report.bootstrap_tables import (
    BOOTSTRAP_UNITS,
    bootstrap_units,
    depth_bootstrap,
    fusion_bootstrap,
    paired_vs_reference,
    unit_summary,
)
from exfiqa.report.comparison import (
    PAPER_HEADLINE,
    PAPER_HEADLINE_SCALE,
    SECONDARY_PROTOCOL,
    SECONDARY_SOURCE,
    SECONDARY_VITFIQA_T,
    SELECTED_BY_BOTH,
    SELECTED_BY_POSTER,
    SELECTED_ON_DATA,
    best_early_exit,
    headline_note,
    headline_vs_paper,
    paper_early_exits,
    poster_table,
    secondary_reference,
)
from exfiqa.report.early_exit import (
    AdaptiveResult,
    adaptive_cost_curve,
    adaptive_exit,
    adaptive_study,
    cost_table,
    latency_table,
    measure_latency,
    model_architecture,
    operating_points,
    pauc_cost_points,
    released_claims,
    released_gflops,
    study_costs,
)
from exfiqa.report.early_exit import _timed as _timed  # the latency tests time through it
from exfiqa.report.findings import (
    FINDINGS_COLUMNS,
    PAIRED_COLUMNS,
    VERDICTS,
    paper_findings,
)
from exfiqa.report.frames import (
    TIE_RTOL,
    Headline,
    best_text,
    edc_all,
    fmr_target,
    headline,
    is_tie,
    pauc_all,
    table_protocol,
    tied_best,
    unresolved,
    variant_tags,
    with_exit_column,
)
from exfiqa.report.fusion_report import (
    ChosenComparison,
    ChosenExits,
    StrategyResult,
    calibration_datasets,
    calibration_set,
    choose_for,
    chosen_exits,
    chosen_exits_comparison,
    evaluated_datasets,
    fusion_vs_exits,
    fusion_wins,
    mated_similarity_label,
    search_fusion_weights,
    strategy_table,
)
from exfiqa.report.layers import (
    depth_summary,
    exit_scores_long,
    fr_sanity,
    rank_correlation,
)

__all__ = [
    "AdaptiveResult", "AttentionInputs", "BOOTSTRAP_UNITS", "ChosenComparison", "ChosenExits", "FINDINGS_COLUMNS",
    "Headline", "LOW_CONTRAST_ENTROPY", "PAIRED_COLUMNS", "PAPER_HEADLINE", "PAPER_HEADLINE_SCALE",
    "SECONDARY_PROTOCOL", "SECONDARY_SOURCE", "SECONDARY_VITFIQA_T", "SELECTED_BY_BOTH", "SELECTED_BY_POSTER",
    "SELECTED_ON_DATA", "StrategyResult", "TIE_RTOL", "VERDICTS", "adaptive_cost_curve", "adaptive_exit",
    "adaptive_study", "attention_contrast", "attention_inputs", "attention_maps", "attention_statistics",
    "attention_study", "attention_unavailable", "best_early_exit", "best_text", "bootstrap_units",
    "calibration_datasets", "calibration_set", "choose_for", "chosen_exits", "chosen_exits_comparison", "cost_table",
    "depth_bootstrap", "depth_summary", "edc_all", "evaluated_datasets", "exit_scores_long", "fmr_target",
    "fr_sanity", "fusion_bootstrap", "fusion_vs_exits", "fusion_wins", "headline", "headline_note", "headline_vs_paper", "is_tie",
    "latency_table", "mated_similarity_label", "measure_latency", "model_architecture", "operating_points",
    "paired_vs_reference", "paper_early_exits", "paper_findings", "pauc_all", "pauc_cost_points", "poster_table",
    "rank_correlation", "released_claims", "released_gflops", "search_fusion_weights", "secondary_reference",
    "strategy_table", "study_costs", "table_protocol", "tied_best", "unit_summary", "unresolved", "variant_tags",
    "with_exit_column",
]
