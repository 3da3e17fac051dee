"""Early exit at run time: a fixed exit that runs only its blocks, and the adaptive exit that stops
each face inside a batch as soon as its decision is settled.

Conventions:
- Exits are 1-based (``1..depth``); exit ``l`` = blocks ``1..l``, the shared final LayerNorm, the
  unchanged heads (:meth:`exfiqa.models.vitfiqa.ViTFIQA.exit_head`).
- Adaptive rule (the same as the simulation :func:`exfiqa.report.early_exit.adaptive_exit`): after
  exit ``l``, the running EX-FIQA-FW score ``r_l = sum_{j<=l} j s_j / sum_{j<=l} j`` (float64, the
  float32 exit scores cast up, the numerator accumulated exit by exit as ``np.cumsum`` does) is
  compared with ``threshold``; a face stops at the first ``l >= min_exit`` with
  ``|r_l - threshold| > margin`` (an absolute margin, in score units), else at the last exit. Its
  result is ``(l, r_l)``.
- Runtime: the blocks run one after another; after each exit the faces that stopped leave the batch
  and the others continue in a compacted batch (``index_select`` on the tokens), so a face that stops
  at exit ``l`` costs ``l`` blocks and ``l`` heads.
- Exactness: the decision is the simulation's, operation for operation, so the runtime's stopping
  exit and score equal :func:`~exfiqa.report.early_exit.adaptive_exit` applied to the exit scores
  the runtime computed (:attr:`AdaptiveOutput.exit_scores`) bit for bit (tests/test_early_exit.py).
  Those exit scores equal a full pass's (``forward_exits``) up to float32 rounding, not always bit for
  bit: every op is per sample, but PyTorch's float32 matrix-vector kernels (the heads' width-1
  projection, any head on a few rows) sum in an order that depends on the number of rows (measured on
  an AVX-512 CPU: a few scores in a hundred move by 1 ulp when the batch shrinks from 64 to 14). A
  face whose running score lies within such an ulp of ``threshold +- margin`` may then stop one exit
  apart from a simulation on full-pass scores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm

from exfiqa.evaluation.fusion import depth_ramp
from exfiqa.models.vitfiqa import ViTFIQA, to_tensor

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


def _run(model: ViTFIQA, device: str | torch.device) -> tuple[ViTFIQA, torch.device]:
    dev = torch.device(device)
    return model.to(dev).eval(), dev


def fixed_exit_scores(
    model: ViTFIQA, batches: Iterable[NDArray[np.uint8]], exit: int, total: int | None = None,
    device: str | torch.device = "cpu", progress: bool = True, desc: str = "quality",
) -> NDArray[np.float32]:
    """Exit ``exit``'s scores (N,) float32 for uint8 RGB batches (B, 112, 112, 3), running only
    blocks ``1..exit`` (:meth:`~exfiqa.models.vitfiqa.ViTFIQA.score_at_exit`); images keep their order."""
    model, dev = _run(model, device)
    model._check_exits([exit])
    parts: list[NDArray[np.float32]] = []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    with torch.inference_mode():
        for batch in batches:
            parts.append(model.score_at_exit(to_tensor(batch).to(dev), exit).float().cpu().numpy())
            bar.update(len(batch))
    bar.close()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def adaptive_scores(
    model: ViTFIQA, batches: Iterable[NDArray[np.uint8]], threshold: float, margin: float, min_exit: int = 1,
    total: int | None = None, device: str | torch.device = "cpu", progress: bool = True, desc: str = "quality",
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """:func:`adaptive_forward` over uint8 RGB batches: (stopping exit (N,), running FW score at
    the stop (N,)); images keep their order."""
    model, dev = _run(model, device)
    check_rule(threshold, margin, min_exit, model.depth)
    exits: list[NDArray[np.int64]] = []
    scores: list[NDArray[np.float64]] = []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    with torch.inference_mode():
        for batch in batches:
            out = adaptive_forward(model, to_tensor(batch).to(dev), threshold, margin, min_exit)
            exits.append(out.exit_used)
            scores.append(out.score)
            bar.update(len(batch))
    bar.close()
    if not exits:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    return np.concatenate(exits), np.concatenate(scores)
