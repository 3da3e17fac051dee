"""Verification and quality-assessment metrics: FNMR@FMR, ROC, EER, accuracy, EDC, pAUC.

One import for the metrics' public names, defined in focused modules (numpy only):

* :mod:`exfiqa.evaluation.rules`: vocabulary and conventions, threshold rules, acceptance, the
  named rule sets (:data:`COMPAT`), the enums, input checks and resolvable targets;
* :mod:`exfiqa.evaluation.quality`: pair and template qualities;
* :mod:`exfiqa.evaluation.verification`: error rates, FNMR@FMR, FMR@FNMR, ROC, EER, accuracy;
* :mod:`exfiqa.evaluation.edc`: the EDC conventions (``fixed``, ``recompute``) and their engines;
* :mod:`exfiqa.evaluation.pauc`: pAUC, whether it is resolved, its metadata and tidy rows;
* :mod:`exfiqa.evaluation.scores`: the scores and order interfaces the engines read.

Bootstrap intervals of these pAUCs (single and paired) live in :mod:`exfiqa.evaluation.bootstrap`.
"""

from __future__ import annotations

from exfiqa.evaluation.edc import EDCCurve, edc, edc_curves, edc_many
from exfiqa.evaluation.pauc import edc_rows, pauc, pauc_meta, pauc_resolved, pauc_rows, resolved_for
from exfiqa.evaluation.quality import pair_quality, template_quality
from exfiqa.evaluation.rules import (
    COMPAT,
    DEFAULT_FMR_TARGETS,
    PAUC_META,
    RECOMPUTE_DISCARD_FRACTIONS,
    TIE_ORDER_NOTE,
    Acceptance,
    BestCurve,
    Convention,
    ErrorType,
    ThresholdRule,
    compat_rules,
    resolvable,
    rule_note,
)
from exfiqa.evaluation.verification import (
    VerificationAccuracy,
    eer,
    error_rates,
    fmr_at_fnmr,
    fnmr_at_fmr,
    roc,
    threshold_at_fmr,
    verification_accuracy,
)

__all__ = [
    "COMPAT",
    "DEFAULT_FMR_TARGETS",
    "PAUC_META",
    "RECOMPUTE_DISCARD_FRACTIONS",
    "TIE_ORDER_NOTE",
    "Acceptance",
    "BestCurve",
    "Convention",
    "EDCCurve",
    "ErrorType",
    "ThresholdRule",
    "VerificationAccuracy",
    "compat_rules",
    "edc",
    "edc_curves",
    "edc_many",
    "edc_rows",
    "eer",
    "error_rates",
    "fmr_at_fnmr",
    "fnmr_at_fmr",
    "pair_quality",
    "pauc",
    "pauc_meta",
    "pauc_resolved",
    "pauc_rows",
    "resolvable",
    "resolved_for",
    "roc",
    "rule_note",
    "template_quality",
    "threshold_at_fmr",
    "verification_accuracy",
]
