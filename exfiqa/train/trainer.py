"""Training recipes: margin losses, CR-FIQA's certainty ratio, FR and ViT-FIQA training.

Conventions:
- Images enter as **uint8 RGB** ``(N, H, W, 3)``; each model's own preprocessing turns a batch into
  its input tensor on the fly: FR models use their :class:`exfiqa.models.fr.Preprocess` (ArcFace,
  ElasticFace, CurricularFace: RGB ``(x/255 - 0.5)/0.5``; MagFace: **BGR in [0, 1]**); ViT-FIQA
  uses RGB ``(x/255 - 0.5)/0.5`` (:data:`VITFIQA_PREPROCESS`, equal to
  :func:`exfiqa.models.vitfiqa.to_tensor`). Augmentation: random horizontal flip with p = 0.5.
- Margin losses hold the class centres ``W`` (C, D) as a parameter. ``cos_j = <e/|e|, W_j/|W_j|>``
  (no margin) is what :meth:`MarginLoss.cosine` returns; :meth:`MarginLoss.logits` applies the
  margin to the target class (CurricularFace also re-weights hard non-target classes) and the
  scale ``s``; the loss is cross-entropy on those logits (MagFace adds its magnitude regulariser).
- Certainty ratio (CR-FIQA): ``CR = CCS / (NNCCS + 1 + 1e-9)`` with CCS the cosine to the own class
  centre and NNCCS the largest cosine to any other centre, both without margin and gradient.
  Higher CR = more certain = better quality.
- ViT-FIQA loss: ``CosFace(m=0.4, s=64)(embedding) + 10 * SmoothL1(beta=0.5)(score, CR)`` with CR
  from the CosFace head's centres; AdamW lr 1e-3, wd 0.05; token masking 0.1 in training only;
  drop path comes from the model's :class:`~exfiqa.models.vitfiqa.ViTFIQAConfig`.
- Determinism: :func:`train_fr` / :func:`train_vitfiqa` seed torch with ``seed + rank`` and draw
  the batch order from ``DistributedSampler(seed=seed)``, so the same seed, data, model init and
  thread count give identical weights on the CPU (CUDA kernels may add non-determinism).
- Distributed data parallel: when ``torch.distributed`` is initialised (``torchrun``; see
  :func:`main`), each process trains on its shard with ``batch_size`` images per step and the
  objective (backbone + margin head, the class centres replicated on every GPU) is wrapped in
  ``DistributedDataParallel``. Model-parallel partial FC (centres sharded over GPUs) is out of
  scope. Only rank 0 writes checkpoints and logs.

Command line (one CPU process when ``WORLD_SIZE`` is unset; ``torchrun`` for several GPUs)::

    python -m exfiqa.train vitfiqa --data faces_root --out vitfiqa_token.pt --variant token
    torchrun --nproc_per_node=8 -m exfiqa.train fr --model arcface --data ms1mv2 --out r100.pt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from exfiqa.io import atomic_write
from exfiqa.models.fr import FR_MODELS, Preprocess, build_fr, save_fr
from exfiqa.models.vitfiqa import ViTFIQA, ViTFIQAConfig, build_vitfiqa, save_vitfiqa
from exfiqa.readers.images import IMAGE_EXTENSIONS, read_face

__all__ = [
    "LOSS_NAMES",
    "VITFIQA_PREPROCESS",
    "ArcFace",
    "CosFace",
    "CurricularFace",
    "ElasticArcFace",
    "FaceArrays",
    "FaceFolder",
    "MagFace",
    "MarginLoss",
    "TrainConfig",
    "TrainHistory",
    "additive_angular_target",
    "as_face_dataset",
    "build_margin_loss",
    "certainty_ratio",
    "certainty_ratio_from_cosine",
    "main",
    "train_fr",
    "train_vitfiqa",
]

#: ViT-FIQA's input: RGB, ``(x/255 - 0.5) / 0.5`` (the same numbers as ``vitfiqa.to_tensor``).
VITFIQA_PREPROCESS = Preprocess("RGB", source="ViT-FIQA: RGB, (x/255 - 0.5)/0.5")

_SQRT_EPS = 1e-12  # floor under 1 - cos^2 so sin(theta) has a finite gradient at cos = +-1
_CR_EPS = 1e-9  # CR-FIQA: CCS / (NNCCS + 1 + 1e-9)


# ============================================================================ margin losses


def additive_angular_target(
    cos_t: torch.Tensor, margin: float | torch.Tensor, easy_margin: bool = False
) -> torch.Tensor:
    """``cos(theta + m)`` for target cosines, with ArcFace's handling where ``theta + m > pi``.

    Beyond ``theta > pi - m`` the shifted cosine would rise again; there the target becomes
    ``cos(theta) - m * sin(pi - m)`` (monotone, continuous at ``theta = pi - m``). With
    ``easy_margin`` the margin is applied only where ``cos(theta) > 0`` (MagFace's default).

    Args:
        cos_t: (B,) cosines to the target centre.
        margin: scalar or (B,) margins in radians.
    """
    m = torch.as_tensor(margin, dtype=cos_t.dtype, device=cos_t.device)
    sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(_SQRT_EPS))
    shifted = cos_t * torch.cos(m) - sin_t * torch.sin(m)
    if easy_margin:
        return torch.where(cos_t > 0, shifted, cos_t)
    threshold = torch.cos(math.pi - m)
    return torch.where(cos_t > threshold, shifted, cos_t - torch.sin(math.pi - m) * m)


def _gather_target(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return cos.gather(1, labels.unsqueeze(1)).squeeze(1)


def _put_target(cos: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return cos.scatter(1, labels.unsqueeze(1), target.unsqueeze(1).to(cos.dtype))


class MarginLoss(nn.Module):
    """Base of the margin-based softmax losses: class centres, cosines, cross-entropy.

    Args:
        embedding_size: dimension D of the embeddings.
        num_classes: number of identities C (>= 2).
        s: logit scale.

    The centres ``weight`` (C, D) are normalised on use. Cosines and logits are computed in
    float32 even under autocast.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        if num_classes < 2:
            raise ValueError(
                f"num_classes must be >= 2 (a margin loss needs rivals), got {num_classes}"
            )
        self.s = float(s)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def embedding_size(self) -> int:
        return int(self.weight.shape[1])

    def centres(self) -> torch.Tensor:
        """L2-normalised class centres (C, D)."""
        return F.normalize(self.weight.float(), dim=1)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosines (B, C) between the embeddings and every class centre, without margin."""
        self._check_embeddings(embeddings)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            emb = F.normalize(embeddings.float(), dim=1)
            return (emb @ self.centres().T).clamp(-1.0, 1.0)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits (B, C) with the margin applied (what the cross-entropy sees)."""
        labels = self._check_labels(labels, embeddings.shape[0])
        return self._margin_logits(self.cosine(embeddings), labels, embeddings)

    def loss_and_cosine(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss, detached cosines (B, C) without margin) in one pass."""
        labels = self._check_labels(labels, embeddings.shape[0])
        cos = self.cosine(embeddings)
        logits = self._margin_logits(cos, labels, embeddings)
        loss = F.cross_entropy(logits, labels) + self._regulariser(embeddings)
        return loss, cos.detach()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss for embeddings (B, D) and integer labels (B,) in ``0..C-1``."""
        return self.loss_and_cosine(embeddings, labels)[0]

    def _margin_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def _regulariser(self, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), device=embeddings.device)

    def _check_embeddings(self, embeddings: torch.Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"{type(self).__name__}: embeddings must be (B, {self.embedding_size}), got "
                f"{tuple(embeddings.shape)}"
            )

    def _check_labels(self, labels: torch.Tensor, batch: int) -> torch.Tensor:
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        labels = labels.long()
        # Range check on the CPU only: on CUDA it would sync every step, and gather/scatter
        # already fail loudly (device-side assert) on an out-of-range label.
        if batch and labels.device.type == "cpu":
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"labels must lie in 0..{self.num_classes - 1}, got range {lo}..{hi}"
                )
        return labels


class CosFace(MarginLoss):
    """CosFace / large-margin cosine loss: target logit ``s * (cos(theta) - m)``."""

    def __init__(
        self, embedding_size: int, num_classes: int, m: float = 0.4, s: float = 64.0
    ) -> None:
        super().__init__(embedding_size, num_classes, s)
        self.m = float(m)

    def _margin_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor
    ) -> torch.Tensor:
        return self.s * _put_target(cos, labels, _gather_target(cos, labels) - self.m)


class ArcFace(MarginLoss):
    """ArcFace / additive angular margin: target logit ``s * cos(theta + m)``.

    Where ``theta + m > pi`` the target is ``cos(theta) - m sin(pi - m)`` (or, with
    ``easy_margin``, the margin applies only where ``cos(theta) > 0``); see
    :func:`additive_angular_target`.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: float = 0.5,
        s: float = 64.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, s)
        self.m = float(m)
        self.easy_margin = bool(easy_margin)

    def _margin_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor
    ) -> torch.Tensor:
        target = additive_angular_target(_gather_target(cos, labels), self.m, self.easy_margin)
        return self.s * _put_target(cos, labels, target)


class ElasticArcFace(MarginLoss):
    """ElasticFace-Arc: ArcFace with a margin drawn per sample from ``N(m, sigma)`` at each step.

    In eval mode (or with ``sigma = 0``) the margin is the mean ``m``. ``plus=True`` is
    ElasticFace+: the drawn margins are sorted and handed out by the target cosine, the largest
    margin to the sample farthest from its centre (smallest ``cos(theta)``). Margins are drawn
    from torch's global generator (seeded by the training functions).
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: float = 0.5,
        sigma: float = 0.05,
        s: float = 64.0,
        plus: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, s)
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.m = float(m)
        self.sigma = float(sigma)
        self.plus = bool(plus)

    def sample_margins(self, cos_t: torch.Tensor) -> torch.Tensor:
        """Per-sample margins (B,) for target cosines (B,)."""
        if not self.training or self.sigma == 0:
            return torch.full_like(cos_t, self.m)
        margins = torch.normal(self.m, self.sigma, size=cos_t.shape, device=cos_t.device)
        if self.plus:
            order = torch.argsort(cos_t.detach(), descending=True)  # nearest to centre first
            assigned = torch.empty_like(margins)
            assigned[order] = torch.sort(margins).values  # ... gets the smallest margin
            margins = assigned
        return margins.to(cos_t.dtype)

    def _margin_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor
    ) -> torch.Tensor:
        cos_t = _gather_target(cos, labels)
        target = additive_angular_target(cos_t, self.sample_margins(cos_t))
        return self.s * _put_target(cos, labels, target)


class MagFace(MarginLoss):
    """MagFace: angular margin growing with the feature magnitude, plus a magnitude regulariser.

    With ``a = clamp(|e|, l_a, u_a)`` (the raw, unnormalised embedding's L2 norm):
    ``m(a) = l_m + (u_m - l_m) (a - l_a) / (u_a - l_a)``, target logit ``s * cos(theta + m(a))``,
    and ``loss = CE + lambda_g * mean(g(a))`` with ``g(a) = a / u_a^2 + 1 / a``. ``easy_margin``
    defaults to True as in MagFace's released trainer (margin only where ``cos(theta) > 0``).
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        l_margin: float = 0.45,
        u_margin: float = 0.8,
        l_a: float = 10.0,
        u_a: float = 110.0,
        lambda_g: float = 35.0,
        easy_margin: bool = True,
    ) -> None:
        super().__init__(embedding_size, num_classes, s)
        if not 0 < l_a < u_a:
            raise ValueError(f"need 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        self.l_margin, self.u_margin = float(l_margin), float(u_margin)
        self.l_a, self.u_a = float(l_a), float(u_a)
        self.lambda_g = float(lambda_g)
        self.easy_margin = bool(easy_margin)

    def magnitude(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Feature magnitude ``a`` (B,), clamped to ``[l_a, u_a]``."""
        return embeddings.float().norm(dim=1).clamp(self.l_a, self.u_a)

    def margin(self, a: torch.Tensor) -> torch.Tensor:
        """Adaptive margin ``m(a)``: linear from ``l_margin`` (at ``l_a``) to ``u_margin``."""
        slope = (self.u_margin - self.l_margin) / (self.u_a - self.l_a)
        return self.l_margin + slope * (a - self.l_a)

    def g(self, a: torch.Tensor) -> torch.Tensor:
        """Magnitude regulariser ``g(a) = a / u_a^2 + 1 / a`` (minimal at ``a = u_a``)."""
        return a / self.u_a**2 + 1.0 / a

    def _margin_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor
    ) -> torch.Tensor:
        m = self.margin(self.magnitude(embeddings))
        target = additive_angular_target(_gather_target(cos, labels), m, self.easy_margin)
        return self.s * _put_target(cos, labels, target)

    def _regulariser(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.lambda_g * self.g(self.magnitude(embeddings)).mean()


class CurricularFace(MarginLoss):
    """CurricularFace: ArcFace target plus curriculum re-weighting of hard non-target classes.

    Target: ``cos(theta_y + m)`` (threshold handling as ArcFace). A non-target class j is hard when
    ``cos_j > cos(theta_y + m)``; its logit becomes ``cos_j * (t + cos_j)``. In training mode ``t``
    (a buffer, starting at 0) is first updated as ``t <- 0.01 * mean(cos(theta_y)) + 0.99 * t``
    over the batch, then used. Everything is finally scaled by ``s``.
    """

    t: torch.Tensor

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: float = 0.5,
        s: float = 64.0,
        t_momentum: float = 0.01,
    ) -> None:
        super().__init__(embedding_size, num_classes, s)
        self.m = float(m)
        self.t_momentum = float(t_momentum)
        self.register_buffer("t", torch.zeros(()))

    def _margin_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor
    ) -> torch.Tensor:
        cos_t = _gather_target(cos, labels)
        sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(_SQRT_EPS))
        shifted = cos_t * math.cos(self.m) - sin_t * math.sin(self.m)  # cos(theta_y + m)
        target = additive_angular_target(cos_t, self.m)
        if self.training:
            with torch.no_grad():
                mean_t = cos_t.detach().mean().to(self.t.dtype)
                self.t.mul_(1.0 - self.t_momentum).add_(self.t_momentum * mean_t)
        hard = cos > shifted.detach().unsqueeze(1)
        modulated = torch.where(hard, cos * (self.t.to(cos.dtype) + cos), cos)
        return self.s * _put_target(modulated, labels, target)


_LOSSES: dict[str, tuple[type[MarginLoss], dict[str, Any]]] = {
    "cosface": (CosFace, {}),
    "arcface": (ArcFace, {}),
    "elasticface": (ElasticArcFace, {}),
    "elasticface_plus": (ElasticArcFace, {"plus": True}),
    "magface": (MagFace, {}),
    "curricularface": (CurricularFace, {}),
}
#: Names accepted by :func:`build_margin_loss` (``elasticface`` = ElasticFace-Arc).
LOSS_NAMES = tuple(_LOSSES)
#: The loss each released FR model was trained with.
_DEFAULT_LOSS = {
    "arcface": "arcface",
    "elasticface": "elasticface",
    "magface": "magface",
    "curricularface": "curricularface",
}


def build_margin_loss(
    name: str, embedding_size: int, num_classes: int, **kwargs: Any
) -> MarginLoss:
    """Margin loss by name (``cosface``, ``arcface``, ``elasticface``, ``elasticface_plus``,
    ``magface``, ``curricularface``) with the papers' defaults; ``kwargs`` override them."""
    key = name.lower().replace("-", "_")
    if key not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSS_NAMES)}")
    cls, defaults = _LOSSES[key]
    return cls(embedding_size, num_classes, **{**defaults, **kwargs})


# ============================================================================ certainty ratio


@torch.no_grad()
def certainty_ratio_from_cosine(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CR (B,) from cosines (B, C) without margin: ``CCS / (NNCCS + 1 + 1e-9)``."""
    if cos.ndim != 2 or cos.shape[1] < 2:
        raise ValueError(f"cosines must be (B, C) with C >= 2, got {tuple(cos.shape)}")
    labels = labels.long().unsqueeze(1)
    ccs = cos.gather(1, labels).squeeze(1)
    others = cos.scatter(1, labels, float("-inf"))
    nnccs = others.max(dim=1).values
    return ccs / (nnccs + 1.0 + _CR_EPS)


@torch.no_grad()
def certainty_ratio(
    embeddings: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor
) -> torch.Tensor:
    """CR-FIQA certainty ratio (B,), computed without gradient.

    Args:
        embeddings: (B, D) FR embeddings (any norm).
        labels: (B,) class indices into ``centres``.
        centres: (C, D) class centres (any norm; e.g. a margin head's ``weight``).

    Returns:
        ``CCS / (NNCCS + 1 + 1e-9)``: CCS = cosine to the own centre, NNCCS = the largest cosine to
        any other centre. Higher = better quality.
    """
    if embeddings.ndim != 2 or centres.ndim != 2 or embeddings.shape[1] != centres.shape[1]:
        raise ValueError(
            f"embeddings (B, D) and centres (C, D) must share D, got {tuple(embeddings.shape)} "
            f"and {tuple(centres.shape)}"
        )
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(f"labels must be ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= centres.shape[0]):
        raise ValueError(f"labels must lie in 0..{centres.shape[0] - 1}")
    cos = F.normalize(embeddings.float(), dim=1) @ F.normalize(centres.float(), dim=1).T
    return certainty_ratio_from_cosine(cos.clamp(-1.0, 1.0), labels)


# ============================================================================ datasets


class FaceDataset(Protocol):
    """What the training loops read: indexed by a list of indices, a whole batch at once."""

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]: ...


class FaceArrays(Dataset):
    """In-memory training set: uint8 RGB faces (N, H, W, 3) and integer labels (N,) in 0..C-1.

    Indexing with a list of indices returns ``(images (B, H, W, 3) uint8, labels (B,) int64)``.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, num_classes: int | None = None
    ) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 RGB (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be integers of shape ({len(images)},), got {labels.dtype} "
                f"{labels.shape}"
            )
        if len(labels) and labels.min() < 0:
            raise ValueError(f"labels must be >= 0, got minimum {labels.min()}")
        found = int(labels.max()) + 1 if len(labels) else 0
        self.num_classes = found if num_classes is None else int(num_classes)
        if self.num_classes < found:
            raise ValueError(f"num_classes={num_classes} but labels reach {found - 1}")
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        return self.images[idx], self.labels[idx]


class FaceFolder(Dataset):
    """Image-folder training set ``root/<identity>/<image>``, decoded lazily (as RGB uint8).

    One class per identity folder holding at least one image (extensions of
    :data:`exfiqa.readers.images.IMAGE_EXTENSIONS`), labels ``0..C-1`` in sorted folder-name order (as
    torchvision's ``ImageFolder``). Images that are not ``image_size`` square are resized with a
    warning (alignment is the caller's job). MS1MV2's MXNet ``.rec`` is not read: unpack it into
    this layout first. Paths are held in one bytes array (no per-path Python objects), so
    DataLoader workers share it without copy-on-write growth.
    """

    def __init__(self, root: str | os.PathLike[str], image_size: int = 112) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"training data folder not found: {self.root}")
        self.image_size = int(image_size)
        self.classes: list[str] = []
        paths: list[str] = []
        labels: list[int] = []
        for name in sorted(e.name for e in os.scandir(self.root) if e.is_dir()):
            files = sorted(
                e.path
                for e in os.scandir(self.root / name)
                if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            )
            if files:
                labels += [len(self.classes)] * len(files)
                paths += files
                self.classes.append(name)
        if not paths:
            raise ValueError(
                f"{self.root}: no images found in the expected layout root/<identity>/<image> "
                f"(extensions {sorted(IMAGE_EXTENSIONS)}); MXNet .rec files must be unpacked first"
            )
        self._paths = np.array([os.fsencode(p) for p in paths])
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        """File path of image ``index``."""
        return os.fsdecode(self._paths[index])

    def __getitem__(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        images = np.stack([read_face(self.path(int(i)), self.image_size) for i in idx])
        return images, self.labels[idx]


def as_face_dataset(data: Any) -> FaceDataset:
    """A :class:`FaceArrays` / :class:`FaceFolder` as is; an ``(images, labels)`` pair as arrays."""
    if isinstance(data, (FaceArrays, FaceFolder)):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return FaceArrays(*data)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and hasattr(data, "num_classes"):
        return data  # type: ignore[no-any-return]
    raise TypeError(
        "dataset must be FaceArrays, FaceFolder or an (images uint8 (N, H, W, 3), labels (N,)) "
        f"tuple, got {type(data).__name__}"
    )


# ============================================================================ training loop


Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["cosine", "onecycle", "constant"]
PreprocessFn = Callable[[np.ndarray, torch.device], torch.Tensor]
EpochCallback = Callable[[int, "TrainHistory"], None]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by FR and ViT-FIQA training.

    ``batch_size`` is per process (the global batch is ``batch_size * world_size``); ``lr`` is not
    rescaled with the world size. ``warmup_epochs`` ramps the LR linearly from 0 (cosine and
    constant schedules); ``onecycle`` is torch's ``OneCycleLR`` with ``lr`` as its peak.
    ``channels_last`` trains convolutions in NHWC memory layout (about 1.35x faster for the tiny
    iResNets on this CPU); the weights are returned in the default layout.
    """

    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    optimizer: Optimizer = "sgd"
    momentum: float = 0.9
    schedule: Schedule = "cosine"
    warmup_epochs: float = 0.0
    seed: int = 0
    flip: bool = True
    num_workers: int = 0
    num_threads: int | None = None
    grad_clip: float | None = None
    amp: bool = False
    channels_last: bool = False
    log_every: int = 10

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 2,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "optimizer": self.optimizer in ("sgd", "adamw"),
            "schedule": self.schedule in ("cosine", "onecycle", "constant"),
            "warmup_epochs": 0 <= self.warmup_epochs <= self.epochs,
            "num_workers": self.num_workers >= 0,
            "num_threads": self.num_threads is None or self.num_threads >= 1,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "log_every": self.log_every >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            values = {k: getattr(self, k) for k in bad}
            raise ValueError(
                f"invalid training settings {values} (batch_size >= 2 because of BatchNorm; "
                f"optimizer sgd|adamw; schedule cosine|onecycle|constant)"
            )


@dataclass
class TrainHistory:
    """What a training run did (as seen by this process; under DDP, rank-local losses).

    ``loss``/``lr`` and each ``parts`` list have one entry per optimiser step; ``epoch_loss`` is
    the mean loss of each epoch.
    """

    config: TrainConfig
    num_images: int
    num_classes: int
    world_size: int = 1
    steps_per_epoch: int = 0
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)
    epoch_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Training throughput of this process."""
        steps = len(self.loss)
        return steps * self.config.batch_size / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (config, per-step and per-epoch values, throughput)."""
        out = asdict(self)
        out["images_per_second"] = self.images_per_second
        return out


def _train_config(arguments: Mapping[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of a training entry point's ``arguments`` (its ``locals()`` taken
    before it assigns anything): each TrainConfig field it takes as a parameter; the fields it
    does not take (``momentum``, ``log_every``) keep their defaults."""
    return TrainConfig(**{f.name: arguments[f.name] for f in fields(TrainConfig) if f.name in arguments})


def _dist_info() -> tuple[int, int]:
    """(world_size, rank) of an initialised process group, else (1, 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _seed(seed: int) -> None:
    """Seed torch (CPU and CUDA) with ``seed + rank``: ranks draw different flips and masks."""
    torch.manual_seed(seed + _dist_info()[1])


def _batch_sampler(n: int, cfg: TrainConfig) -> tuple[DistributedSampler, BatchSampler]:
    world, rank = _dist_info()
    indices: Any = range(n)  # the sampler only needs len()
    sampler = DistributedSampler(
        indices, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    batches = BatchSampler(sampler, cfg.batch_size, drop_last=True)
    if len(batches) == 0:
        raise ValueError(
            f"batch_size={cfg.batch_size} exceeds the {len(sampler)} images per process "
            f"({n} images, world size {world}): no full batch per epoch"
        )
    return sampler, batches


def _loader(dataset: FaceDataset, batches: BatchSampler, cfg: TrainConfig) -> DataLoader:
    """Whole batches from the dataset (one ``dataset[indices]`` call per batch)."""
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=None,
        sampler=batches,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
    )


def _optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    total = steps_per_epoch * cfg.epochs
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _random_hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each image (B, C, H, W) left-right with probability 0.5."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _wrap_ddp(objective: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    if _dist_info()[0] == 1:
        return objective
    from torch.nn.parallel import DistributedDataParallel

    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=find_unused)


def _fit(
    objective: nn.Module,
    dataset: FaceDataset,
    preprocess: PreprocessFn,
    cfg: TrainConfig,
    device: torch.device,
    progress: bool,
    desc: str,
    find_unused: bool = False,
    on_epoch_end: EpochCallback | None = None,
) -> TrainHistory:
    """The shared loop: sharded shuffled batches, preprocess, flip, step, schedule, record."""
    with _torch_threads(cfg.num_threads):
        return _fit_loop(
            objective, dataset, preprocess, cfg, device, progress, desc, find_unused, on_epoch_end
        )


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (nothing if None), restored afterwards."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_loop(
    objective: nn.Module,
    dataset: FaceDataset,
    preprocess: PreprocessFn,
    cfg: TrainConfig,
    device: torch.device,
    progress: bool,
    desc: str,
    find_unused: bool,
    on_epoch_end: EpochCallback | None,
) -> TrainHistory:
    from tqdm.auto import tqdm

    world, rank = _dist_info()
    sampler, batches = _batch_sampler(len(dataset), cfg)
    loader = _loader(dataset, batches, cfg)
    objective.to(device).train()
    if cfg.channels_last:
        objective.to(memory_format=torch.channels_last)
    net = _wrap_ddp(objective, device, find_unused)
    opt = _optimizer(objective, cfg)
    sched = _scheduler(opt, cfg, len(batches))
    hist = TrainHistory(cfg, len(dataset), dataset.num_classes, world, len(batches))
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        losses: list[torch.Tensor] = []
        parts: dict[str, list[torch.Tensor]] = {}
        name = f"{desc} {epoch + 1}/{cfg.epochs}"
        bar = tqdm(total=len(batches), desc=name, disable=not progress or rank != 0, leave=False)
        for step, (images, labels) in enumerate(loader):
            x = preprocess(np.asarray(images), device)
            y = torch.as_tensor(labels, device=device).long()
            hist.lr.append(opt.param_groups[0]["lr"])
            loss, step_parts = _train_step(net, objective, opt, x, y, cfg)
            sched.step()
            losses.append(loss)
            for k, v in step_parts.items():
                parts.setdefault(k, []).append(v.detach())
            bar.update(1)
            if (step + 1) % cfg.log_every == 0 or step + 1 == len(batches):
                bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        bar.close()
        _record_epoch(hist, losses, parts, name)
        hist.seconds = time.perf_counter() - start
        if progress and rank == 0:
            tqdm.write(f"{name}: loss {hist.epoch_loss[-1]:.4f}, lr {hist.lr[-1]:.3g}, "
                       f"{hist.seconds:.0f} s")  # fmt: skip
        if on_epoch_end is not None:
            objective.eval()
            on_epoch_end(epoch, hist)
            objective.train()
    objective.to(memory_format=torch.contiguous_format).eval()
    return hist


def _train_step(
    net: nn.Module,
    objective: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step (flip, forward under optional bf16 autocast, backward, clip, step)."""
    if cfg.flip:
        x = _random_hflip(x)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    use_amp = cfg.amp and x.device.type == "cuda"
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        loss, parts = net(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
    opt.step()
    return loss.detach(), parts


def _record_epoch(
    hist: TrainHistory,
    losses: list[torch.Tensor],
    parts: dict[str, list[torch.Tensor]],
    name: str,
) -> None:
    """Move an epoch's step values to the history (one device sync); refuse non-finite losses."""
    values = torch.stack(losses).float().cpu()
    if not torch.isfinite(values).all():
        raise FloatingPointError(
            f"{name}: non-finite loss at step {int((~torch.isfinite(values)).nonzero()[0])} of "
            f"the epoch (try a lower lr or a gradient clip)"
        )
    hist.loss += values.tolist()
    hist.epoch_loss.append(float(values.mean()))
    for k, vs in parts.items():
        hist.parts.setdefault(k, []).extend(torch.stack(vs).float().cpu().tolist())


class _FRObjective(nn.Module):
    """Backbone + margin head; one module so DDP replicates (and syncs) both."""

    def __init__(self, backbone: nn.Module, head: MarginLoss) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.head(self.backbone(x), labels), {}


class _ViTFIQAObjective(nn.Module):
    """ViT-FIQA: CosFace on the embedding + weight * SmoothL1(beta)(score, CR)."""

    def __init__(
        self,
        model: ViTFIQA,
        head: MarginLoss,
        mask_ratio: float,
        quality_weight: float,
        beta: float = 0.5,
    ) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.mask_ratio = mask_ratio
        self.quality_weight = quality_weight
        self.beta = beta

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        emb, score = self.model.forward_train(x, self.mask_ratio)
        fr_loss, cos = self.head.loss_and_cosine(emb, labels)
        cr = certainty_ratio_from_cosine(cos, labels)  # detached centres and embedding
        q_loss = F.smooth_l1_loss(score.float(), cr, beta=self.beta)
        total = fr_loss + self.quality_weight * q_loss
        return total, {"fr_loss": fr_loss.detach(), "quality_loss": q_loss.detach()}


def _resolve_preprocess(preprocess: Preprocess | str | PreprocessFn) -> PreprocessFn:
    if isinstance(preprocess, str):
        if preprocess not in FR_MODELS:
            raise ValueError(
                f"unknown preprocessing {preprocess!r}; use one of {sorted(FR_MODELS)} or pass a "
                f"Preprocess"
            )
        return FR_MODELS[preprocess][1]
    if not callable(preprocess):
        raise TypeError(
            f"preprocess must be a Preprocess, a model name or a callable, got {preprocess!r}"
        )
    return preprocess


def _embedding_size(model: nn.Module) -> int:
    size = getattr(model, "embedding_size", None)
    if not isinstance(size, int) or size < 1:
        raise ValueError(
            f"{type(model).__name__} has no integer attribute embedding_size; pass head= (a "
            f"MarginLoss) built for its embedding dimension"
        )
    return size


def train_fr(
    model: nn.Module,
    loss_name: str,
    dataset: FaceDataset | tuple[np.ndarray, np.ndarray],
    preprocess: Preprocess | str | PreprocessFn,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    *,
    optimizer: Optimizer = "sgd",
    schedule: Schedule = "cosine",
    warmup_epochs: float = 0.0,
    flip: bool = True,
    num_workers: int = 0,
    num_threads: int | None = None,
    grad_clip: float | None = None,
    amp: bool = False,
    channels_last: bool = False,
    loss_kwargs: Mapping[str, Any] | None = None,
    head: MarginLoss | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainHistory:
    """Train an FR backbone in place with a margin loss.

    Args:
        model: maps the preprocessed (B, 3, H, W) batch to embeddings (B, E); must have an
            ``embedding_size`` attribute unless ``head`` is given (fr.py's backbones do).
        loss_name: one of :data:`LOSS_NAMES` (ignored when ``head`` is given).
        dataset: :class:`FaceArrays`, :class:`FaceFolder` or ``(images uint8 RGB, labels)``.
        preprocess: the FR model's own input convention: a :class:`~exfiqa.models.fr.Preprocess`, a name
            of :data:`exfiqa.models.fr.FR_MODELS` (``"magface"`` = BGR in [0, 1]) or a callable
            ``(uint8 RGB (B, H, W, 3) numpy, device) -> float (B, 3, H, W)``.
        batch_size: images per step and process.
        seed: seeds the head's init, batch order, flips and elastic margins.
        num_threads: if given, ``torch.set_num_threads(num_threads)`` while training (restored
            afterwards; on a busy CPU, 1 thread is often fastest for tiny models).
        optimizer, schedule, warmup_epochs, flip, num_workers, grad_clip, amp, channels_last: see
            :class:`TrainConfig` (``amp``: bfloat16 autocast, CUDA only).
        loss_kwargs: overrides of the loss defaults (e.g. ``{"m": 0.35}``).
        head: a ready margin head (kept by the caller, e.g. to read its centres afterwards).
        on_epoch_end: called as ``f(epoch, history)`` after each epoch on every process, with the
            model in eval mode (e.g. to save a checkpoint on rank 0).

    Returns:
        The :class:`TrainHistory`; ``model`` is left trained, in eval mode.
    """
    cfg = _train_config(locals())
    data = as_face_dataset(dataset)
    pre = _resolve_preprocess(preprocess)
    _seed(seed)
    if head is None:
        head = build_margin_loss(
            loss_name, _embedding_size(model), data.num_classes, **dict(loss_kwargs or {})
        )
    _check_head(head, data.num_classes)
    objective = _FRObjective(model, head)
    desc = f"fr[{loss_name}]"
    return _fit(
        objective, data, pre, cfg, torch.device(device), progress, desc, on_epoch_end=on_epoch_end
    )


def _check_head(head: MarginLoss, num_classes: int) -> None:
    if head.num_classes < num_classes:
        raise ValueError(f"the head has {head.num_classes} classes, the dataset {num_classes}")


def train_vitfiqa(
    model: ViTFIQA,
    dataset: FaceDataset | tuple[np.ndarray, np.ndarray],
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    mask_ratio: float = 0.1,
    quality_weight: float = 10.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    *,
    margin: float = 0.4,
    scale: float = 64.0,
    optimizer: Optimizer = "adamw",
    schedule: Schedule = "cosine",
    warmup_epochs: float = 0.0,
    flip: bool = True,
    num_workers: int = 0,
    num_threads: int | None = None,
    grad_clip: float | None = None,
    amp: bool = False,
    channels_last: bool = False,
    head: CosFace | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainHistory:
    """Train ViT-FIQA in place: CosFace(m, s) + ``quality_weight`` * SmoothL1(0.5)(score, CR).

    CR is CR-FIQA's certainty ratio of the embedding against the CosFace head's centres (no
    gradient). ``mask_ratio`` of the patch tokens are replaced by ``mask_token`` in training only;
    drop path is the model config's ``drop_path_rate``. Images: uint8 RGB, normalised as
    :data:`VITFIQA_PREPROCESS`. History ``parts``: ``fr_loss`` and ``quality_loss`` per step.
    Other arguments as :func:`train_fr`.

    Returns:
        The :class:`TrainHistory`; ``model`` is left trained, in eval mode.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
    if quality_weight < 0:
        raise ValueError(f"quality_weight must be >= 0, got {quality_weight}")
    cfg = _train_config(locals())
    data = as_face_dataset(dataset)
    _seed(seed)
    if head is None:
        head = CosFace(model.config.feature_dim, data.num_classes, m=margin, s=scale)
    _check_head(head, data.num_classes)
    objective = _ViTFIQAObjective(model, head, mask_ratio, quality_weight)
    masks_tokens = int(round(mask_ratio * model.config.num_patches)) > 0
    return _fit(
        objective,
        data,
        VITFIQA_PREPROCESS,
        cfg,
        torch.device(device),
        progress,
        f"vitfiqa[{model.config.variant}]",
        find_unused=not masks_tokens,
        on_epoch_end=on_epoch_end,
    )


# ============================================================================ command line

_DESCRIPTION = """\
Train a face-recognition backbone (fr) or ViT-FIQA (vitfiqa) on an image folder
root/<identity>/<image> (aligned 112x112 faces; one identity per folder, read lazily).
MS1MV2's MXNet .rec/.idx files are not read: unpack them into that layout first.

One process on CPU or one GPU:   python -m exfiqa.train vitfiqa --data DIR --out vitfiqa.pt
Several GPUs (DDP, NCCL):        torchrun --nproc_per_node=8 -m exfiqa.train vitfiqa --data DIR ...
--batch-size is per process. The margin head's class centres are replicated on every GPU
(no model-parallel partial FC). Only rank 0 writes the checkpoint (released format: loadable
with exfiqa.models.vitfiqa.load_vitfiqa / exfiqa.models.fr.load_fr) and OUT's .history.json log.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keep the description's line breaks and show every default."""


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _add_common(p: argparse.ArgumentParser, lr: float, wd: float, opt: str, batch: int) -> None:
    p.add_argument("--data", required=True, help="image folder root/<identity>/<image>")
    p.add_argument("--out", required=True, help="checkpoint to write (released format)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--save-every",
        type=int,
        default=1,
        help="write --out every N epochs (0: only at the end); no resume: the margin "
        "head and optimiser state are not saved",
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=batch, help="images per step and process")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=wd)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default=opt)
    p.add_argument("--schedule", choices=["cosine", "onecycle", "constant"], default="cosine")
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=None, help="max gradient norm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=112, help="faces are resized to this")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (DDP: cuda:LOCAL_RANK)")
    p.add_argument("--workers", type=int, default=4, help="image-decoding worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--channels-last", action="store_true", help="NHWC convolutions")
    p.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m exfiqa.train`` argument parser (subcommands ``fr`` and ``vitfiqa``)."""
    parser = argparse.ArgumentParser(
        prog="python -m exfiqa.train",
        allow_abbrev=False,
        description=_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_fr = sub.add_parser(
        "fr",
        allow_abbrev=False,
        help="train an FR backbone with a margin loss",
        description=_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    _add_common(p_fr, lr=0.1, wd=5e-4, opt="sgd", batch=128)
    p_fr.add_argument(
        "--model",
        choices=sorted(FR_MODELS),
        default="arcface",
        help="sets the architecture, preprocessing, default loss and file layout",
    )
    p_fr.add_argument(
        "--loss",
        choices=list(LOSS_NAMES),
        default=None,
        help="default: the model's own (arcface, elasticface, magface, curricularface)",
    )
    p_fr.add_argument("--layers", type=_int_list, default=(3, 13, 30, 3))
    p_fr.add_argument("--widths", type=_int_list, default=(64, 128, 256, 512))
    p_fr.add_argument("--embedding-size", type=int, default=512)
    p_fr.add_argument("--dropout", type=float, default=0.0)
    p_fr.set_defaults(func=_cmd_fr)
    p_vit = sub.add_parser(
        "vitfiqa",
        allow_abbrev=False,
        help="train ViT-FIQA (CosFace + 10 * SmoothL1 to CR)",
        description=_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    _add_common(p_vit, lr=1e-3, wd=0.05, opt="adamw", batch=128)
    defaults = ViTFIQAConfig()
    p_vit.add_argument("--variant", choices=["token", "crfiqa"], default="token")
    p_vit.add_argument("--embed-dim", type=int, default=defaults.embed_dim)
    p_vit.add_argument("--depth", type=int, default=defaults.depth)
    p_vit.add_argument("--num-heads", type=int, default=defaults.num_heads)
    p_vit.add_argument("--patch-size", type=int, default=defaults.patch_size)
    p_vit.add_argument("--mlp-ratio", type=float, default=defaults.mlp_ratio)
    p_vit.add_argument("--feature-dim", type=int, default=defaults.feature_dim)
    p_vit.add_argument(
        "--stem-channels",
        type=_int_list,
        default=(),
        help="conv stem widths, e.g. 16,32 (empty: the released patch embedding)",
    )
    p_vit.add_argument("--drop-path", type=float, default=0.1)
    p_vit.add_argument("--mask-ratio", type=float, default=0.1)
    p_vit.add_argument("--quality-weight", type=float, default=10.0)
    p_vit.set_defaults(func=_cmd_vitfiqa)
    return parser


def _history_path(out: Path) -> Path:
    return out.with_name(out.name + ".history.json")


def _check_outputs(out: Path, overwrite: bool) -> None:
    for path in (out, _history_path(out)):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")


def _init_distributed(device_arg: str) -> torch.device:
    """Join the process group when ``WORLD_SIZE`` > 1 (torchrun); return this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        from exfiqa.models.device import resolve_device

        return resolve_device(device_arg)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_arg != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def _loop_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "progress": not args.no_progress,
        "optimizer": args.optimizer,
        "schedule": args.schedule,
        "warmup_epochs": args.warmup_epochs,
        "flip": not args.no_flip,
        "num_workers": args.workers,
        "num_threads": args.threads,
        "grad_clip": args.grad_clip,
        "amp": args.amp,
        "channels_last": args.channels_last,
    }


class _CheckpointWriter:
    """Rank 0 writes the released-format checkpoint and its history log every ``every`` epochs
    and after the last one; the first write honours ``--overwrite``, later ones replace it."""

    def __init__(
        self, args: argparse.Namespace, save: Callable[[Path, bool], None], extra: dict[str, Any]
    ) -> None:
        self.out = Path(args.out)
        self.every = args.save_every
        self.overwrite = bool(args.overwrite)
        self.save = save
        self.extra = extra

    def __call__(self, epoch: int, hist: TrainHistory) -> None:
        last = epoch + 1 == hist.config.epochs
        if _dist_info()[1] != 0 or not (last or (self.every and (epoch + 1) % self.every == 0)):
            return
        self.save(self.out, self.overwrite)
        record = {**hist.to_dict(), **self.extra, "epochs_done": epoch + 1}
        with atomic_write(_history_path(self.out), overwrite=self.overwrite) as fh:
            json.dump(record, fh, indent=1)
        self.overwrite = True  # this run's own file from now on


def _report(kind: str, out: Path, hist: TrainHistory) -> None:
    if _dist_info()[1] != 0:
        return
    print(
        f"{kind}: {hist.num_images} images, {hist.num_classes} identities, "
        f"{len(hist.loss)} steps x {hist.config.batch_size} x {hist.world_size} processes, "
        f"final epoch loss {hist.epoch_loss[-1]:.4f}, {hist.seconds:.1f} s "
        f"({hist.images_per_second:.0f} images/s per process) -> {out}"
    )


def _cmd_fr(args: argparse.Namespace, device: torch.device) -> None:
    arch, preprocess = FR_MODELS[args.model]
    loss = args.loss or _DEFAULT_LOSS[args.model]
    data = FaceFolder(args.data, args.image_size)
    torch.manual_seed(args.seed)  # same initial weights on every rank
    model = build_fr(
        arch,
        layers=args.layers,
        widths=args.widths,
        embedding_size=args.embedding_size,
        dropout=args.dropout,
        input_size=args.image_size,
    )
    layout = "magface" if arch == "magface" else "plain"
    extra = {
        "command": "fr",
        "model": args.model,
        "loss_name": loss,
        "arch": arch,
        "layers": list(args.layers),
        "widths": list(args.widths),
        "embedding_size": args.embedding_size,
        "data": str(args.data),
    }
    writer = _CheckpointWriter(
        args, lambda out, ow: save_fr(model, out, layout=layout, overwrite=ow), extra
    )
    hist = train_fr(
        model, loss, data, preprocess, device=device, on_epoch_end=writer, **_loop_options(args)
    )
    _report(f"fr[{args.model}/{loss}]", writer.out, hist)


def _cmd_vitfiqa(args: argparse.Namespace, device: torch.device) -> None:
    config = ViTFIQAConfig(
        variant=args.variant,
        img_size=args.image_size,
        patch_size=args.patch_size,
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=args.num_heads,
        mlp_ratio=args.mlp_ratio,
        feature_dim=args.feature_dim,
        stem_channels=tuple(args.stem_channels),
        drop_path_rate=args.drop_path,
    )
    data = FaceFolder(args.data, args.image_size)
    torch.manual_seed(args.seed)  # same initial weights on every rank
    model = build_vitfiqa(config)
    extra = {"command": "vitfiqa", "model_config": asdict(config), "data": str(args.data)}
    writer = _CheckpointWriter(args, lambda out, ow: save_vitfiqa(model, out, overwrite=ow), extra)
    hist = train_vitfiqa(
        model,
        data,
        mask_ratio=args.mask_ratio,
        quality_weight=args.quality_weight,
        device=device,
        on_epoch_end=writer,
        **_loop_options(args),
    )
    _report(f"vitfiqa[{args.variant}]", writer.out, hist)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m exfiqa.train {fr,vitfiqa}``; returns the exit status.

    Joins a ``torch.distributed`` process group when ``WORLD_SIZE`` > 1 (NCCL on GPUs, else gloo);
    otherwise runs as one process without any distributed initialisation.
    """
    args = build_parser().parse_args(argv)
    prog = f"exfiqa.train {args.command}"
    try:
        _check_outputs(Path(args.out), args.overwrite)  # every rank, before any work
        device = _init_distributed(args.device)
    except (FileExistsError, ValueError, RuntimeError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        args.func(args, device)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
