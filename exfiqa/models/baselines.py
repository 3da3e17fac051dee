"""Quality methods beside EX-FIQA that need no extra weights (higher = better quality).

- ``magface_norm``: MagFace's quality, the L2 norm of its unnormalised embedding.
- ``serfiq``: SER-FIQ-style robustness of stochastic embeddings (Terhorst et al., CVPR 2020):
  ``m`` forward passes of the FR head with dropout active on the flattened feature map,
  quality = ``2 * sigmoid(-2/m^2 * sum_{i<j} ||e_i - e_j||)`` over L2-normalised embeddings.
  The backbone part runs once; only the head is sampled.
- ``sharpness``: a classical image-quality baseline, ``log(1 + var(Laplacian(gray)))``.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from exfiqa.models.fr import FRModel

__all__ = ["BASELINES", "serfiq_features", "sharpness"]

BASELINES = ("magface_norm", "serfiq", "sharpness")


def sharpness(images: NDArray[np.uint8]) -> NDArray[np.float64]:
    """``log1p`` of the variance of the Laplacian of the grey image (ITU-R BT.601 luma), per image."""
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected RGB images (N, H, W, 3), got {arr.shape}")
    gray = arr @ np.array([0.299, 0.587, 0.114])
    lap = np.stack([ndimage.laplace(g) for g in gray])
    return np.log1p(lap.reshape(len(lap), -1).var(axis=1))


def serfiq_features(
    model: FRModel,
    feats: torch.Tensor,
    first_index: int,
    passes: int = 20,
    p: float = 0.5,
    seed: int = 0,
) -> torch.Tensor:
    """SER-FIQ quality (B,) float32 from the feature maps of samples ``first_index ..``.

    Sample i's ``passes`` dropout masks come from its own generator, seeded with
    ``seed * 2**32 + i`` on the features' device: the values do not depend on the batching,
    the extraction shards or the number of processes (only on the device's generator).
    """
    bb = model.backbone
    if bb is None or not hasattr(bb, "forward_features") or not hasattr(bb, "forward_head"):
        raise ValueError(f"{model.name}: SER-FIQ needs a backbone split into forward_features/forward_head")
    if passes < 2:
        raise ValueError(f"passes must be >= 2, got {passes}")
    gen = torch.Generator(device=feats.device)
    keep = torch.empty((feats.shape[0], passes, *feats.shape[1:]), device=feats.device)
    for k in range(feats.shape[0]):
        gen.manual_seed(seed * 2**32 + first_index + k)
        keep[k] = (torch.rand((passes, *feats.shape[1:]), generator=gen, device=feats.device) >= p)
    x = feats.unsqueeze(1) * keep.to(feats.dtype) / (1 - p)  # (B, m, ...)
    y = bb.forward_head(x.flatten(0, 1))  # eval mode: the model's own dropout is inactive
    e = torch.nn.functional.normalize(y.float(), dim=1).view(feats.shape[0], passes, -1)
    total = torch.cdist(e, e).sum(dim=(1, 2)) / 2  # sum over i<j
    return 2 * torch.sigmoid(-2.0 / passes**2 * total)

