"""FR models with their preprocessing: :class:`Preprocess`, the released models' settings
(:data:`FR_MODELS`), and :class:`FRModel`, raw uint8 RGB faces in, flip-concatenated embeddings out
(conventions: :mod:`exfiqa.models.fr`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from exfiqa.models.device import resolve_device
from exfiqa.models.fr.iresnet import Arch


@dataclass(frozen=True)
class Preprocess:
    """How a model turns uint8 RGB pixels into its input tensor.

    ``out[c] = (pixel[c'] * scale - mean[c]) / std[c]`` where ``c'`` walks the channels in
    ``channel_order`` (``"BGR"`` reverses the RGB input), so ``mean``/``std`` are given in the
    model's channel order. Output: float32 ``(N, 3, H, W)``.
    """

    channel_order: Literal["RGB", "BGR"]
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    source: str = ""

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values, got {self.mean!r}, {self.std!r}")
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must be non-zero, got {self.std!r}")

    def __call__(self, images: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        """Apply to a uint8 RGB ``(N, H, W, 3)`` batch; returns float32 NCHW on ``device``."""
        return self.tensor(_pixels(images, device))

    def tensor(self, x: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """Apply to a uint8 RGB ``(N, H, W, 3)`` tensor; float32 NCHW on its device, laid out in
        ``memory_format``. Elementwise in float32, so independent of batch composition and layout."""
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"Preprocess.tensor needs uint8 RGB pixels (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
        if self.channel_order == "BGR":
            x = x.flip(-1)
        x = x.permute(0, 3, 1, 2).to(torch.float32) * self.scale
        mean, std = (torch.tensor(v, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
                     for v in (self.mean, self.std))
        return ((x - mean) / std).contiguous(memory_format=memory_format)


ARCFACE = Preprocess("RGB", source="insightface arcface_torch eval: RGB, (x/255 - 0.5)/0.5")
ELASTICFACE = Preprocess("RGB", source="ElasticFace (arcface_torch pipeline): RGB, (x/255 - 0.5)/0.5")
MAGFACE = Preprocess("BGR", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                     source="MagFace inference/gen_feat.py: cv2.imread (BGR), ToTensor, Normalize(0, 1)")
CURRICULARFACE = Preprocess(
    "RGB", source="CurricularFace config.py RGB_MEAN=RGB_STD=0.5; perform_val swaps stored BGR to RGB"
)

#: Released FR models: name -> (architecture, preprocessing).
FR_MODELS: dict[str, tuple[Arch, Preprocess]] = {
    "arcface": ("iresnet", ARCFACE),
    "elasticface": ("iresnet", ELASTICFACE),
    "magface": ("magface", MAGFACE),
    "curricularface": ("curricularface", CURRICULARFACE),
}


def check_images(images: Any) -> np.ndarray:
    """``images`` as a numpy uint8 RGB (N, H, W, 3) batch (a tensor is copied to the CPU); else a clear error."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array (N, H, W, 3), got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(
            f"images must be uint8 RGB pixels in [0, 255], got dtype {images.dtype}; pass raw "
            f"pixels, each FR model applies its own normalisation"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3) (RGB, NHWC), got {images.shape}")
    return images


def _pixels(images: Any, device: torch.device | str | None) -> torch.Tensor:
    """Checked uint8 RGB ``(N, H, W, 3)`` pixels as a tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(check_images(images))).to(device)


ImageBatches = np.ndarray | Iterable[np.ndarray]


def iter_batches(images: ImageBatches, batch_size: int) -> Iterator[np.ndarray]:
    """Batches of at most ``batch_size`` checked images from an array or an iterable of arrays."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [images] if isinstance(images, np.ndarray) else images
    for chunk in chunks:
        chunk = check_images(chunk)
        for start in range(0, len(chunk), batch_size):
            yield chunk[start : start + batch_size]


class FRModel:
    """An FR model with its preprocessing: raw uint8 RGB faces in, embeddings out.

    ``backbone``: any module mapping the preprocessed NCHW tensor to ``(N, E)`` (an IResNet or
    IRBackbone); ``device`` None = CUDA if available, else CPU; ``arch`` is used by :func:`save_fr`.
    """

    def __init__(
        self,
        name: str,
        backbone: nn.Module | None,
        preprocess: Preprocess,
        device: torch.device | str | None = None,
        arch: str | None = None,
    ) -> None:
        self.name = name
        self.preprocess = preprocess
        self.device = resolve_device(device)
        self.arch = arch
        # channels_last: about 1.8x faster convolutions on CPU (measured on the demo iResNet)
        self.backbone = (
            None if backbone is None else backbone.to(self.device, memory_format=torch.channels_last).eval()
        )

    def __repr__(self) -> str:
        cfg = {a: getattr(self.backbone, a, None) for a in ("layers", "widths", "embedding_size")}
        return f"FRModel(name={self.name!r}, arch={self.arch!r}, {cfg}, device={self.device})"

    @property
    def input_size(self) -> int | None:
        """Expected square input side (None if unknown)."""
        return getattr(self.backbone, "input_size", None)

    @property
    def embedding_size(self) -> int | None:
        """Dimension ``E`` of ``f(x)`` (the flip-concatenated embedding has ``2E``)."""
        return getattr(self.backbone, "embedding_size", None)

    def to(self, device: torch.device | str) -> FRModel:
        """Move to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        if self.backbone is not None:
            self.backbone.to(self.device, memory_format=torch.channels_last)
        return self

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """Preprocess a uint8 RGB ``(N, H, W, 3)`` batch into the model's input on its device."""
        return self._input(_pixels(images, self.device))

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC RGB tensor -> the model's float32 NCHW input (channels_last), same device."""
        size = self.input_size
        if x.ndim == 4 and size is not None and tuple(x.shape[1:3]) != (size, size):
            raise ValueError(
                f"{self.name}: expected {size}x{size} aligned faces, got {x.shape[1]}x{x.shape[2]}"
            )
        return self.preprocess.tensor(x, memory_format=torch.channels_last)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.backbone is not None
        self.backbone.eval()
        return self.backbone(x)

    def embed_batch(
        self, x: torch.Tensor, raw: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward over ``cat([x, hflip(x)])`` of a uint8 RGB NHWC batch on the model's device:
        ``([L2norm(f(x)), L2norm(f(hflip(x)))]`` float32 (B, 2E), with ``raw`` the unnormalised
        ``f(x)`` (B, E) else None)``. No inference_mode / autocast inside: the caller chooses."""
        n = x.shape[0]
        y = self.forward_pair(x)
        e = F.normalize(y, dim=1)
        return torch.cat([e[:n], e[n:]], dim=1), (y[:n] if raw else None)

    def forward_pair(self, x: torch.Tensor) -> torch.Tensor:
        """The unnormalised ``[f(x); f(hflip(x))]`` float32 (2B, E) of one forward (uint8 RGB NHWC on
        the model's device): what :meth:`embed_batch` normalises and extraction takes norms of."""
        return self._forward(self._input(torch.cat([x, x.flip(2)]))).float()

    def _run(self, images: ImageBatches, batch_size: int, mode: str) -> np.ndarray:
        """``mode``: ``flip`` (embed), ``plain`` (embed without flip) or ``raw`` (embed_raw)."""
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for batch in iter_batches(images, batch_size):
                x = _pixels(batch, self.device)
                if mode == "plain":
                    y = F.normalize(self._forward(self._input(x)).float(), dim=1)
                else:
                    emb, f = self.embed_batch(x, raw=mode == "raw")
                    y = emb if f is None else f
                out.append(y.cpu().numpy())
        if not out:
            dim = (self.embedding_size or 0) * (2 if mode == "flip" else 1)
            return np.zeros((0, dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed(self, images: ImageBatches, batch_size: int = 64, flip: bool = True) -> np.ndarray:
        """``[L2norm(f(x)), L2norm(f(hflip(x)))]`` float32 (N, 2E) of uint8 RGB images (an array or
        batches), or with ``flip=False`` ``L2norm(f(x))`` (N, E); eval mode, inference_mode, through
        :meth:`embed_batch` (so equal to extraction's, batch for batch)."""
        return self._run(images, batch_size, "flip" if flip else "plain")

    def embed_raw(self, images: ImageBatches, batch_size: int = 64) -> np.ndarray:
        """Unnormalised ``f(x)`` float32 (N, E) (MagFace's quality is its norm), from the same
        ``[x, hflip(x)]`` forward as the embeddings (:meth:`embed_batch` with ``raw``)."""
        return self._run(images, batch_size, "raw")


def magface_quality(model: FRModel, images: ImageBatches, batch_size: int = 64) -> np.ndarray:
    """MagFace quality = L2 norm of the unnormalised embedding; higher = better quality."""
    return np.linalg.norm(model.embed_raw(images, batch_size), axis=1)
