"""Batched inference: every exit's quality score for many images, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm

from .images import to_tensor
from .model import ViTFIQA

__all__ = ["exit_scores", "resolve_device"]


def resolve_device(device: str | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None``/``"auto"`` (CUDA when available)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available here")
    return dev


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
    dev = torch.device(device)
    model = model.to(dev).eval()
    out: list[NDArray[np.float32]] = []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    with torch.inference_mode():
        for batch in batches:
            scores = model.forward_exits(to_tensor(batch).to(dev)).scores
            out.append(scores.float().cpu().numpy())
            bar.update(len(batch))
    bar.close()
    if not out:
        return np.zeros((0, model.depth), dtype=np.float32)
    return np.concatenate(out, axis=0)


def chunked(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of ``items`` of length ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for i in range(0, len(items), size):
        yield items[i : i + size]
