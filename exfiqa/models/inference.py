"""Batched inference: every exit's quality score for many images, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm

from exfiqa.models.vitfiqa import ViTFIQA, to_tensor


def _passes(
    model: ViTFIQA, batches: Iterable[NDArray[np.uint8]], total: int | None, device: str | torch.device,
    progress: bool, desc: str, family: bool,
) -> list[NDArray[np.float32]]:
    """One pass over ``batches``: [scores (N, depth)] or, with ``family``, also ATTN-FIQA (N, depth)
    and ViTNT-FIQA (N, 2) (:meth:`exfiqa.models.vitfiqa.ViTFIQA.forward_exits`)."""
    dev = torch.device(device)
    model = model.to(dev).eval()
    parts: list[list[NDArray[np.float32]]] = [[], [], []] if family else [[]]
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    with torch.inference_mode():
        for batch in batches:
            out = model.forward_exits(to_tensor(batch).to(dev), family=family)
            got = (out.scores, out.attn_fiqa, out.vitnt_fiqa) if family else (out.scores,)
            for part, value in zip(parts, got, strict=True):
                part.append(value.float().cpu().numpy())
            bar.update(len(batch))
    bar.close()
    widths = (model.depth, model.depth, 2)
    return [np.concatenate(p, axis=0) if p else np.zeros((0, w), dtype=np.float32) for p, w in zip(parts, widths[: len(parts)], strict=True)]


def exit_scores(
    model: ViTFIQA,
    batches: Iterable[NDArray[np.uint8]],
    total: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "quality",
) -> NDArray[np.float32]:
    """Scores of all exits, (N, depth) float32, for uint8 RGB batches (B, 112, 112, 3).

    The model is moved to ``device`` and put in eval mode; images keep their order.
    """
    return _passes(model, batches, total, device, progress, desc, family=False)[0]


def family_scores(
    model: ViTFIQA,
    batches: Iterable[NDArray[np.uint8]],
    total: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "quality",
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """One pass: exit scores (N, depth), ATTN-FIQA of every block (N, depth) and ViTNT-FIQA
    (N, 2: mean, attention-weighted), float32, as :func:`exit_scores` handles batches."""
    scores, attn, vitnt = _passes(model, batches, total, device, progress, desc, family=True)
    return scores, attn, vitnt
