"""Quality methods beside EX-FIQA that need no extra weights (higher = better quality).

- ``magface_norm``: MagFace's quality, the L2 norm of its unnormalised embedding.
- ``serfiq``: SER-FIQ-style robustness of stochastic embeddings (Terhorst et al., CVPR 2020):
  ``m`` forward passes of the FR head with dropout active on the flattened feature map,
  quality = ``2 * sigmoid(-2/m^2 * sum_{i<j} ||e_i - e_j||)`` over L2-normalised embeddings.
  The backbone part runs once; only the head is sampled.
- ``sharpness``: a classical image-quality baseline, ``log(1 + var(Laplacian(gray)))``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from .fr import FRModel

__all__ = ["BASELINES", "serfiq_quality", "sharpness"]

BASELINES = ("magface_norm", "serfiq", "sharpness")


def sharpness(images: NDArray[np.uint8]) -> NDArray[np.float64]:
    """``log1p`` of the variance of the Laplacian of the grey image (ITU-R BT.601 luma), per image."""
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected RGB images (N, H, W, 3), got {arr.shape}")
    gray = arr @ np.array([0.299, 0.587, 0.114])
    lap = np.stack([ndimage.laplace(g) for g in gray])
    return np.log1p(lap.reshape(len(lap), -1).var(axis=1))


def serfiq_quality(
    model: FRModel,
    batches: Iterable[NDArray[np.uint8]],
    passes: int = 20,
    p: float = 0.5,
    seed: int = 0,
) -> NDArray[np.float64]:
    """SER-FIQ-style quality; deterministic given ``seed``. Needs ``forward_features``/``forward_head``."""
    bb = model.backbone
    if bb is None or not hasattr(bb, "forward_features") or not hasattr(bb, "forward_head"):
        raise ValueError(f"{model.name}: SER-FIQ needs a backbone split into forward_features/forward_head")
    if passes < 2:
        raise ValueError(f"passes must be >= 2, got {passes}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: list[NDArray[np.float64]] = []
    bb.eval()
    with torch.inference_mode():
        for batch in batches:
            feats = bb.forward_features(model.to_tensor(batch))
            embs = []
            for _ in range(passes):
                keep = (torch.rand(feats.shape, generator=gen) >= p).to(feats.device, feats.dtype)
                x = feats * keep / (1 - p)
                x = bb.forward_head(x)  # eval mode: the model's own dropout is inactive
                embs.append(torch.nn.functional.normalize(x.float(), dim=1))
            e = torch.stack(embs, dim=1)  # (B, m, E)
            dist = torch.cdist(e, e)  # (B, m, m)
            total = dist.sum(dim=(1, 2)) / 2  # sum over i<j
            q = 2 * torch.sigmoid(-2.0 / passes**2 * total)
            out.append(q.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
