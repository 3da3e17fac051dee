"""Early exit at run time: a fixed exit that runs only its blocks, and the adaptive exit that stops
each face inside a batch as soon as its decision is settled.

Adaptive rule (that of :func:`exfiqa.report.early_exit.adaptive_exit`, operation for operation): after
exit ``l`` (1-based), the running EX-FIQA-FW score ``r_l = sum_{j<=l} j s_j / sum_{j<=l} j`` (float64,
numerator accumulated as ``np.cumsum`` does) is compared with ``threshold``; a face stops at the first
``l >= min_exit`` with ``|r_l - threshold| > margin``, else at the last exit; its result is ``(l, r_l)``.
Faces that stop leave the batch (``index_select``), so a face stopping at exit ``l`` costs ``l`` blocks
and heads. The runtime's exit scores equal a full pass's up to float32 rounding only (float32 kernels sum
in an order that depends on the batch size), so a face within an ulp of ``threshold +- margin`` may stop
one exit apart from a simulation on full-pass scores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from exfiqa.evaluation.fusion import depth_ramp
from exfiqa.models.inference import run_batches
from exfiqa.models.vitfiqa import ViTFIQA

__all__ = ["AdaptiveOutput", "adaptive_forward", "adaptive_scores", "check_rule", "fixed_exit_scores"]


@dataclass(frozen=True)
class AdaptiveOutput:
    """Result of :func:`adaptive_forward` for a batch of B faces.

    Attributes:
        exit_used: (B,) int64, the 1-based exit at which each face stopped.
        score: (B,) float64, the running EX-FIQA-FW score at that exit (the gate's score).
        exit_scores: (B, depth) float32 exit scores computed; NaN after a face's stopping exit.
        batch_per_block: faces in the batch that ran block ``l`` (index ``l - 1``); blocks never run
            are absent (the list ends at the deepest exit any face reached).
    """

    exit_used: NDArray[np.int64]
    score: NDArray[np.float64]
    exit_scores: NDArray[np.float32]
    batch_per_block: list[int]


def check_rule(threshold: float, margin: float, min_exit: int, depth: int) -> None:
    """Refuse an adaptive rule that cannot work, naming the parameter (ValueError)."""
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    if not (np.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if isinstance(min_exit, bool) or not isinstance(min_exit, (int, np.integer)) or not 1 <= min_exit <= depth:
        raise ValueError(f"min_exit must be an integer in 1..{depth}, got {min_exit!r}")


def adaptive_forward(
    model: ViTFIQA, x: torch.Tensor, threshold: float, margin: float, min_exit: int = 1
) -> AdaptiveOutput:
    """Adaptive early exit over one batch ``x`` (B, 3, H, W) of normalised faces (see the module
    docstring for the rule). The heads must be in eval mode (``model.eval()``)."""
    model._check_heads_eval()
    depth = model.depth
    check_rule(threshold, margin, min_exit, depth)
    ramp = depth_ramp(depth)
    ramp_sum = np.cumsum(ramp)
    b = x.shape[0]
    exit_used = np.full(b, depth, dtype=np.int64)
    score = np.zeros(b, dtype=np.float64)
    scores = np.full((b, depth), np.nan, dtype=np.float32)
    numer = np.zeros(b, dtype=np.float64)
    rows = np.arange(b)  # original index of each face still in the batch
    counts: list[int] = []
    h = model.tokens(x)
    for level, block in enumerate(model.blocks, start=1):
        if not len(rows):
            break
        counts.append(len(rows))
        h = block(h)
        s = model.exit_head(model.norm(h))[0].float().cpu().numpy()
        scores[rows, level - 1] = s
        term = s.astype(np.float64) * ramp[level - 1]
        numer[rows] = term if level == 1 else numer[rows] + term  # np.cumsum's order and first value
        running = numer[rows] / ramp_sum[level - 1]
        if level == depth:
            stop = np.ones(len(rows), dtype=bool)
        elif level >= min_exit:
            stop = np.abs(running - threshold) > margin
        else:
            continue
        exit_used[rows[stop]] = level
        score[rows[stop]] = running[stop]
        if stop.any() and not stop.all():
            keep = np.flatnonzero(~stop)
            h = h.index_select(0, torch.from_numpy(keep).to(h.device))
        rows = rows[~stop]
    return AdaptiveOutput(exit_used, score, scores, counts)


def fixed_exit_scores(
    model: ViTFIQA, batches: Iterable[NDArray[np.uint8]], exit: int, total: int | None = None,
    device: str | torch.device = "cpu", progress: bool = True, desc: str = "quality",
) -> NDArray[np.float32]:
    """Exit ``exit``'s scores (N,) float32 for uint8 RGB batches (B, 112, 112, 3), running only
    blocks ``1..exit`` (:meth:`~exfiqa.models.vitfiqa.ViTFIQA.score_at_exit`); images keep their order."""
    model._check_exits([exit])

    def step(m: ViTFIQA, x: torch.Tensor) -> list[np.ndarray]:
        return [m.score_at_exit(x, exit).float().cpu().numpy()]

    return run_batches(model, batches, step, [np.zeros(0, dtype=np.float32)], total, device, progress, desc)[0]


def adaptive_scores(
    model: ViTFIQA, batches: Iterable[NDArray[np.uint8]], threshold: float, margin: float, min_exit: int = 1,
    total: int | None = None, device: str | torch.device = "cpu", progress: bool = True, desc: str = "quality",
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """:func:`adaptive_forward` over uint8 RGB batches: (stopping exit (N,), running FW score at
    the stop (N,)); images keep their order."""
    check_rule(threshold, margin, min_exit, model.depth)

    def step(m: ViTFIQA, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        out = adaptive_forward(m, x, threshold, margin, min_exit)
        return out.exit_used, out.score

    empty = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)]
    exits, scores = run_batches(model, batches, step, empty, total, device, progress, desc)
    return exits, scores
