"""Batched inference: every exit's quality score for many images, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm

from exfiqa.models.vitfiqa import ViTFIQA, to_tensor


def run_batches(
    model: ViTFIQA, batches: Iterable[NDArray[np.uint8]], step: Callable[[ViTFIQA, torch.Tensor], Sequence[np.ndarray]],
    empty: Sequence[np.ndarray], total: int | None, device: str | torch.device, progress: bool, desc: str,
) -> list[np.ndarray]:
    """``step(model, x)`` (numpy outputs) on each uint8 RGB batch, in inference and eval mode, concatenated."""
    dev = torch.device(device)
    model = model.to(dev).eval()
    parts: list[list[np.ndarray]] = [[] for _ in empty]
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in batches:
            for part, value in zip(parts, step(model, to_tensor(batch).to(dev)), strict=True):
                part.append(value)
            bar.update(len(batch))
    return [np.concatenate(p, axis=0) if p else e for p, e in zip(parts, empty, strict=True)]


def _numpy(*tensors: torch.Tensor) -> list[NDArray[np.float32]]:
    return [t.float().cpu().numpy() for t in tensors]


def exit_scores(
    model: ViTFIQA, batches: Iterable[NDArray[np.uint8]], total: int | None = None,
    device: str | torch.device = "cpu", progress: bool = True, desc: str = "quality",
) -> NDArray[np.float32]:
    """Scores of all exits, (N, depth) float32, for uint8 RGB batches (B, 112, 112, 3), in order."""
    empty = [np.zeros((0, model.depth), dtype=np.float32)]
    return run_batches(model, batches, lambda m, x: _numpy(m.forward_exits(x).scores), empty, total, device,
                       progress, desc)[0]


def family_scores(
    model: ViTFIQA, batches: Iterable[NDArray[np.uint8]], total: int | None = None,
    device: str | torch.device = "cpu", progress: bool = True, desc: str = "quality",
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """One pass: exit scores (N, depth), ATTN-FIQA of every block (N, depth), ViTNT-FIQA (N, 2), float32."""

    def step(m: ViTFIQA, x: torch.Tensor) -> list[NDArray[np.float32]]:
        out = m.forward_exits(x, family=True)
        return _numpy(out.scores, out.attn_fiqa, out.vitnt_fiqa)

    empty = [np.zeros((0, w), dtype=np.float32) for w in (model.depth, model.depth, 2)]
    scores, attn, vitnt = run_batches(model, batches, step, empty, total, device, progress, desc)
    return scores, attn, vitnt
