"""Early exit at run time: a fixed exit that runs only its blocks, and the adaptive exit.

Adaptive rule (that of :func:`exfiqa.report.early_exit.adaptive_exit`, operation for operation): a face
stops at the first exit ``l >= min_exit`` whose running EX-FIQA-FW score ``r_l`` (float64, accumulated as
``np.cumsum`` does) has ``|r_l - threshold| > margin``, else at the last exit, and leaves the batch. Exit
scores equal a full pass's only up to float32 rounding (kernels sum in a batch-size-dependent order).
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
    """:func:`adaptive_forward` for B faces: 1-based ``exit_used`` and running FW ``score`` at the stop (B,);
    ``exit_scores`` (B, depth) float32, NaN after the stop; ``batch_per_block``, faces per block run."""

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


def adaptive_forward(model: ViTFIQA, x: torch.Tensor, threshold: float, margin: float,
                     min_exit: int = 1) -> AdaptiveOutput:
    """Adaptive early exit (module docstring) over one normalised batch ``x`` (B, 3, H, W); heads in eval mode."""
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
        if level < min_exit and level < depth:
            continue
        stop = (np.abs(running - threshold) > margin) | (level == depth)
        exit_used[rows[stop]] = level
        score[rows[stop]] = running[stop]
        if stop.any() and not stop.all():
            h = h.index_select(0, torch.from_numpy(np.flatnonzero(~stop)).to(h.device))
        rows = rows[~stop]
    return AdaptiveOutput(exit_used, score, scores, counts)


def fixed_exit_scores(
    model: ViTFIQA, batches: Iterable[NDArray[np.uint8]], exit: int, total: int | None = None,
    device: str | torch.device = "cpu", progress: bool = True, desc: str = "quality",
) -> NDArray[np.float32]:
    """Exit ``exit``'s scores (N,) float32 for uint8 RGB batches (B, 112, 112, 3), running blocks ``1..exit`` only."""
    model._check_exits([exit])

    def step(m: ViTFIQA, x: torch.Tensor) -> list[np.ndarray]:
        return [m.score_at_exit(x, exit).float().cpu().numpy()]

    return run_batches(model, batches, step, [np.zeros(0, dtype=np.float32)], total, device, progress, desc)[0]


def adaptive_scores(
    model: ViTFIQA, batches: Iterable[NDArray[np.uint8]], threshold: float, margin: float, min_exit: int = 1,
    total: int | None = None, device: str | torch.device = "cpu", progress: bool = True, desc: str = "quality",
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """:func:`adaptive_forward` over uint8 RGB batches: (stopping exit (N,), running FW score there (N,))."""
    check_rule(threshold, margin, min_exit, model.depth)

    def step(m: ViTFIQA, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        out = adaptive_forward(m, x, threshold, margin, min_exit)
        return out.exit_used, out.score

    empty = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)]
    exits, scores = run_batches(model, batches, step, empty, total, device, progress, desc)
    return exits, scores
