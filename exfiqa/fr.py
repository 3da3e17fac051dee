"""Face-recognition (FR) model zoo and embedding extraction.

Conventions:
- Input images: aligned faces as ``uint8`` numpy arrays ``(N, H, W, 3)`` in **RGB** order
  (112x112 for the released models), or an iterable of such batches. Every model declares its own
  :class:`Preprocess` (channel order and normalisation) and applies it itself, so callers always
  pass raw RGB pixels.
- Embedding used everywhere (the paper's protocol): ``e = [L2norm(f(x)), L2norm(f(hflip(x)))]``,
  shape ``(N, 2E)`` (``E`` = 512 for the released models). Each half has unit norm, so ``e`` has
  norm sqrt(2) and the cosine similarity of two such embeddings is ``dot(e_a, e_b) / 2``.
- Comparison score: cosine similarity, higher = more similar (mated pairs high). The angular
  distance ``arccos(cos) / pi`` lies in [0, 1], lower = more similar.
- IJB-C templates: embeddings averaged within each media, summed over the media of a template,
  L2-normalised (:func:`template_embeddings`); template quality = min over its images
  (:func:`template_min`).

Architectures and their released key layouts (no code taken from the original repositories; the
key names and hyper-parameters below are facts read from them):

- ``"iresnet"`` (ArcFace, ElasticFace-Arc; insightface ``arcface_torch/backbones/iresnet.py``):
  ``conv1`` 3x3 (no bias), ``bn1``, ``prelu``, ``layer1..layer4`` of ``IBasicBlock``
  (``bn1, conv1 3x3, bn2, prelu, conv2 3x3 with the stage stride, bn3``; first block of each stage
  has ``downsample.0`` conv1x1 + ``downsample.1`` BN), ``bn2`` (BatchNorm2d), ``dropout``, ``fc``
  (Linear ``C*7*7 -> 512``), ``features`` (BatchNorm1d whose affine weight is frozen at 1.0).
  All BatchNorm eps = 1e-5. Stage strides 2 (112 -> 56 -> 28 -> 14 -> 7); r100 = [3, 13, 30, 3].
- ``"magface"`` (IrvingMeng/MagFace ``models/iresnet.py``): the same key names, BatchNorm
  eps = 2e-5 and the ``features`` weight trainable; the released checkpoint is
  ``{"state_dict": {...}}`` with keys prefixed ``features.module.`` (or ``module.features.``), and
  may hold the MagLinear head as ``fc.weight`` outside that prefix (ignored, with a warning).
  MagFace's code also sets BatchNorm ``momentum=0.9`` and uses ``Dropout2d(0.4)`` before the
  flatten; both only act in training, so they are not reproduced (``bn_momentum`` and ``dropout``
  can be set).
- ``"curricularface"`` (HuangYG123/CurricularFace ``backbone/model_irse.py``, the face.evoLVe
  IR layout): ``input_layer`` (Conv 3x3 64 no bias, BN, PReLU), ``body.k`` ``bottleneck_IR`` units
  with ``shortcut_layer`` (``MaxPool2d(1, stride)`` when in == out channels, else Conv1x1 + BN) and
  ``res_layer`` (BN, Conv3x3, PReLU, Conv3x3 with the stride, BN), ``output_layer`` (BN2d, Dropout,
  Flatten, Linear ``512*7*7 -> 512``, BatchNorm1d **affine=False**). BatchNorm eps = 1e-5.
  IR-101 = [3, 13, 30, 3] units per stage.

Preprocessing per released model (what each model's own evaluation code feeds):

- ArcFace / ElasticFace: RGB, ``(x/255 - 0.5) / 0.5`` (arcface_torch ``eval_ijbc.py`` and
  ``verification.py``; ElasticFace reuses them).
- MagFace: **BGR in [0, 1]**, no mean/std: ``inference/gen_feat.py`` reads with ``cv2.imread``
  (BGR) and applies ``ToTensor()`` + ``Normalize(mean=0, std=1)``.
- CurricularFace: RGB, ``(x/255 - 0.5) / 0.5``: ``config.py`` ``RGB_MEAN = RGB_STD = 0.5``, the
  training set is read with PIL ``.convert("RGB")``; in ``util/utils.py::perform_val`` the stored
  validation arrays (written BGR by the InsightFace_Pytorch ``load_bin``) are swapped back with
  ``[:, [2, 1, 0]]`` before the backbone.

SER-FIQ-style stochastic embeddings: both backbones split into ``forward_features`` (everything up
to the flattened final feature map) and ``forward_head`` (dropout, fc, BatchNorm1d), so the
expensive part runs once and the head can be sampled with dropout active.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .io import CheckpointError, atomic_path, load_state_dict

__all__ = [
    "ARCFACE",
    "CURRICULARFACE",
    "ELASTICFACE",
    "FR_MODELS",
    "MAGFACE",
    "FRModel",
    "IBasicBlock",
    "IRBackbone",
    "IResNet",
    "BottleneckIR",
    "OnnxFRModel",
    "Preprocess",
    "angular_distance",
    "build_fr",
    "cosine_similarity",
    "cosine_to_angular",
    "detect_layout",
    "infer_architecture",
    "load_fr",
    "load_onnx_fr",
    "magface_quality",
    "save_fr",
    "strip_wrapper_prefixes",
    "template_embeddings",
    "template_min",
]

Arch = Literal["iresnet", "magface", "curricularface"]
SaveLayout = Literal["plain", "magface", "dataparallel"]

# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


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

    def __call__(
        self, images: np.ndarray, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Apply to a uint8 RGB ``(N, H, W, 3)`` batch; returns float32 NCHW on ``device``."""
        x = torch.from_numpy(np.ascontiguousarray(_check_images(images))).to(device)
        if self.channel_order == "BGR":
            x = x.flip(-1)
        x = x.permute(0, 3, 1, 2).to(torch.float32) * self.scale
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()


ARCFACE = Preprocess("RGB", source="insightface arcface_torch eval: RGB, (x/255 - 0.5)/0.5")
ELASTICFACE = Preprocess(
    "RGB", source="ElasticFace (arcface_torch pipeline): RGB, (x/255 - 0.5)/0.5"
)
MAGFACE = Preprocess(
    "BGR",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    source="MagFace inference/gen_feat.py: cv2.imread (BGR), ToTensor, Normalize(0, 1)",
)
CURRICULARFACE = Preprocess(
    "RGB",
    source="CurricularFace config.py RGB_MEAN=RGB_STD=0.5; perform_val swaps stored BGR to RGB",
)

#: Released FR models: name -> (architecture, preprocessing).
FR_MODELS: dict[str, tuple[Arch, Preprocess]] = {
    "arcface": ("iresnet", ARCFACE),
    "elasticface": ("iresnet", ELASTICFACE),
    "magface": ("magface", MAGFACE),
    "curricularface": ("curricularface", CURRICULARFACE),
}


def _check_images(images: Any) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------


def _bn2d(channels: int, eps: float, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class PointwiseConv(nn.Conv2d):
    """A bias-free 1x1 convolution with stride ``s``, computed as a stride-1 1x1 convolution of
    ``x[:, :, ::s, ::s]``.

    Same parameters, state_dict keys and result as ``nn.Conv2d(cin, cout, 1, stride=s, bias=False)``
    (a 1x1 kernel without padding reads exactly the pixels the subsampling keeps). Why not the plain
    module: torch 2.14's CPU backward of a *strided* 1x1 convolution in ``channels_last`` with at
    most 8 input channels segfaults on AVX-512 CPUs (oneDNN kernel), which the demo's narrow
    iResNets hit in their first stage. A stride-1 1x1 convolution takes another kernel on every
    CPU, so this avoids the crashing configuration everywhere instead of detecting the CPU.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if sh != 1 or sw != 1:
            x = x[:, :, ::sh, ::sw]
        return F.conv2d(x, self.weight, self.bias)


def _halve(size: int, times: int) -> int:
    """Spatial size after ``times`` stride-2 convolutions (k3, p1) or MaxPool2d(1, 2)."""
    for _ in range(times):
        size = (size - 1) // 2 + 1
    return size


def _check_stages(layers: Sequence[int], widths: Sequence[int], input_size: int) -> None:
    if len(layers) == 0 or len(layers) != len(widths):
        raise ValueError(
            f"layers and widths need the same non-zero length, got layers={list(layers)}, "
            f"widths={list(widths)}"
        )
    if any(int(n) < 1 for n in layers) or any(int(w) < 1 for w in widths):
        raise ValueError(f"layers and widths must be positive, got {list(layers)}, {list(widths)}")
    if input_size < 2 ** len(layers):
        raise ValueError(f"input_size={input_size} too small for {len(layers)} stride-2 stages")


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class IBasicBlock(nn.Module):
    """arcface_torch residual unit: BN, conv3x3, BN, PReLU, conv3x3(stride), BN (+ shortcut)."""

    def __init__(
        self, cin: int, cout: int, stride: int, bn_eps: float = 1e-5, bn_momentum: float = 0.1
    ) -> None:
        super().__init__()
        self.bn1 = _bn2d(cin, bn_eps, bn_momentum)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = _bn2d(cout, bn_eps, bn_momentum)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = _bn2d(cout, bn_eps, bn_momentum)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                PointwiseConv(cin, cout, stride),
                _bn2d(cout, bn_eps, bn_momentum),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """iResNet with the arcface_torch key layout (also MagFace's, after prefix stripping).

    Args:
        layers: blocks per stage; r100 = (3, 13, 30, 3), r50 = (3, 4, 14, 3), r18 = (2, 2, 2, 2).
        widths: channels per stage; the stem has ``widths[0]`` channels.
        embedding_size: output dimension of ``fc`` / ``features``.
        dropout: dropout probability before ``fc`` (active only in training mode).
        input_size: square input side; the final map is ``input_size`` halved once per stage.
        bn_eps, bn_momentum: BatchNorm settings (arcface_torch: 1e-5; MagFace: 2e-5).
        freeze_features_weight: arcface_torch fixes the ``features`` BN1d weight at 1.0.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 13, 30, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding_size: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        freeze_features_weight: bool = True,
    ) -> None:
        super().__init__()
        _check_stages(layers, widths, input_size)
        self.layers = tuple(int(n) for n in layers)
        self.widths = tuple(int(w) for w in widths)
        self.embedding_size = int(embedding_size)
        self.input_size = int(input_size)
        self.conv1 = _conv3x3(3, self.widths[0])
        self.bn1 = _bn2d(self.widths[0], bn_eps, bn_momentum)
        self.prelu = nn.PReLU(self.widths[0])
        self._stage_names: list[str] = []
        cin = self.widths[0]
        for i, (n, w) in enumerate(zip(self.layers, self.widths, strict=True)):
            blocks = [IBasicBlock(cin, w, 2, bn_eps, bn_momentum)]
            blocks += [IBasicBlock(w, w, 1, bn_eps, bn_momentum) for _ in range(n - 1)]
            name = f"layer{i + 1}"
            setattr(self, name, nn.Sequential(*blocks))
            self._stage_names.append(name)
            cin = w
        side = _halve(self.input_size, len(self.layers))
        self.bn2 = _bn2d(cin, bn_eps, bn_momentum)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(cin * side * side, self.embedding_size)
        self.features = nn.BatchNorm1d(self.embedding_size, eps=bn_eps, momentum=bn_momentum)
        _init_weights(self)
        nn.init.ones_(self.features.weight)
        if freeze_features_weight:
            self.features.weight.requires_grad_(False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and final BN2d; returns the flattened map ``(N, C*h*w)``."""
        x = self.prelu(self.bn1(self.conv1(x)))
        for name in self._stage_names:
            x = getattr(self, name)(x)
        return torch.flatten(self.bn2(x), 1)

    def forward_head(self, x: torch.Tensor, dropout_p: float | None = None) -> torch.Tensor:
        """Dropout, ``fc`` and ``features`` BN1d; returns the unnormalised embedding.

        ``dropout_p`` (e.g. 0.5 for SER-FIQ) applies that dropout even in eval mode instead of the
        module's own ``dropout``; BatchNorm layers keep their eval behaviour.
        """
        x = self.dropout(x) if dropout_p is None else F.dropout(x, dropout_p, training=True)
        return self.features(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class BottleneckIR(nn.Module):
    """face.evoLVe ``bottleneck_IR``: ``res_layer(x) + shortcut_layer(x)``."""

    def __init__(
        self, cin: int, cout: int, stride: int, bn_eps: float = 1e-5, bn_momentum: float = 0.1
    ) -> None:
        super().__init__()
        if cin == cout:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                PointwiseConv(cin, cout, stride),
                _bn2d(cout, bn_eps, bn_momentum),
            )
        self.res_layer = nn.Sequential(
            _bn2d(cin, bn_eps, bn_momentum),
            _conv3x3(cin, cout),
            nn.PReLU(cout),
            _conv3x3(cout, cout, stride),
            _bn2d(cout, bn_eps, bn_momentum),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(nn.Module):
    """IR network with the face.evoLVe key layout (CurricularFace IR-101 by default).

    ``widths`` must increase strictly from stage to stage: the layout only marks a stage start by
    a convolutional shortcut (channel change), which is how :func:`infer_architecture` reads it.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 13, 30, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding_size: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        _check_stages(layers, widths, input_size)
        if any(b <= a for a, b in zip(widths[:-1], widths[1:], strict=False)):
            raise ValueError(
                f"curricularface (face.evoLVe IR) widths must increase strictly per stage, got "
                f"{list(widths)}: equal widths would give a stage without a conv shortcut"
            )
        self.layers = tuple(int(n) for n in layers)
        self.widths = tuple(int(w) for w in widths)
        self.embedding_size = int(embedding_size)
        self.input_size = int(input_size)
        w0 = self.widths[0]
        self.input_layer = nn.Sequential(
            _conv3x3(3, w0), _bn2d(w0, bn_eps, bn_momentum), nn.PReLU(w0)
        )
        units: list[nn.Module] = []
        cin = w0
        for n, w in zip(self.layers, self.widths, strict=True):
            units.append(BottleneckIR(cin, w, 2, bn_eps, bn_momentum))
            units += [BottleneckIR(w, w, 1, bn_eps, bn_momentum) for _ in range(n - 1)]
            cin = w
        self.body = nn.Sequential(*units)
        side = _halve(self.input_size, len(self.layers))
        self.output_layer = nn.Sequential(
            _bn2d(cin, bn_eps, bn_momentum),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(cin * side * side, self.embedding_size),
            nn.BatchNorm1d(self.embedding_size, eps=bn_eps, momentum=bn_momentum, affine=False),
        )
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input layer, body and final BN2d; returns the flattened map ``(N, C*h*w)``."""
        x = self.body(self.input_layer(x))
        return torch.flatten(self.output_layer[0](x), 1)

    def forward_head(self, x: torch.Tensor, dropout_p: float | None = None) -> torch.Tensor:
        """Dropout, Linear and BN1d; returns the unnormalised embedding.

        ``dropout_p`` applies that dropout even in eval mode instead of the module's own one.
        """
        drop = self.output_layer[1]
        x = drop(x) if dropout_p is None else F.dropout(x, dropout_p, training=True)
        return self.output_layer[4](self.output_layer[3](x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "iresnet": {"bn_eps": 1e-5, "freeze_features_weight": True},
    "magface": {"bn_eps": 2e-5, "freeze_features_weight": False},
    "curricularface": {"bn_eps": 1e-5},
}
_ARCH_LAYOUT = {"iresnet": "iresnet", "magface": "iresnet", "curricularface": "evolve_ir"}


def build_fr(
    arch: Arch,
    layers: Sequence[int] | None = None,
    widths: Sequence[int] | None = None,
    embedding_size: int = 512,
    dropout: float = 0.0,
    input_size: int = 112,
    bn_eps: float | None = None,
    bn_momentum: float = 0.1,
) -> IResNet | IRBackbone:
    """Build an FR backbone with random weights.

    Args:
        arch: ``"iresnet"`` (ArcFace, ElasticFace), ``"magface"`` (iResNet, BN eps 2e-5, trainable
            ``features`` weight) or ``"curricularface"`` (face.evoLVe IR).
        layers: units per stage; default (3, 13, 30, 3) = iResNet-100 / IR-101.
        widths: channels per stage; default (64, 128, 256, 512).
        bn_eps: default per arch (1e-5, MagFace 2e-5).
    """
    if arch not in _ARCH_DEFAULTS:
        raise ValueError(f"arch must be one of {sorted(_ARCH_DEFAULTS)}, got {arch!r}")
    kwargs = dict(_ARCH_DEFAULTS[arch])
    if bn_eps is not None:
        kwargs["bn_eps"] = bn_eps
    common = {
        "layers": tuple(layers) if layers is not None else (3, 13, 30, 3),
        "widths": tuple(widths) if widths is not None else (64, 128, 256, 512),
        "embedding_size": embedding_size,
        "dropout": dropout,
        "input_size": input_size,
        "bn_momentum": bn_momentum,
    }
    if arch == "curricularface":
        return IRBackbone(**common, **kwargs)
    return IResNet(**common, **kwargs)


# --------------------------------------------------------------------------------------------
# Checkpoint keys: prefixes, layout detection, architecture inference
# --------------------------------------------------------------------------------------------

_WRAPPER_PREFIXES = (
    "features.module.",
    "module.features.",
    "module.backbone.",
    "backbone.module.",
    "module.",
    "backbone.",
    "model.",
)
_ANCHOR_KEYS = ("conv1.weight", "input_layer.0.weight")


def strip_wrapper_prefixes(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove a training-wrapper prefix (``module.``, ``features.module.``, ...).

    The prefix is the first of ``features.module.``, ``module.features.``, ``module.backbone.``,
    ``backbone.module.``, ``module.``, ``backbone.``, ``model.`` under which a backbone stem key
    (``conv1.weight`` or ``input_layer.0.weight``) exists. Keys outside that prefix (e.g.
    MagFace's ``fc.weight`` head) are dropped and returned as the second element.
    A plain arcface_torch state_dict (whose own BN1d is called ``features``) is left unchanged.
    """
    keys = set(state_dict)
    for prefix in _WRAPPER_PREFIXES:
        if any(prefix + anchor in keys for anchor in _ANCHOR_KEYS):
            kept = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            dropped = sorted(k for k in state_dict if not k.startswith(prefix))
            return kept, dropped
    return dict(state_dict), []


def detect_layout(keys: Iterable[str]) -> str | None:
    """Name the key layout: ``"iresnet"`` (arcface_torch / MagFace), ``"evolve_ir"``
    (face.evoLVe / CurricularFace), ``"vit"`` (ViT-FIQA or another ViT) or None."""
    keys = set(keys)
    if "input_layer.0.weight" in keys or any(
        k.startswith("body.") and ".res_layer." in k for k in keys
    ):
        return "evolve_ir"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "iresnet"
    if "patch_embed.proj.weight" in keys or any(
        k.startswith("blocks.") and ".attn." in k for k in keys
    ):
        return "vit"
    return None


_LAYOUT_TEXT = {
    "iresnet": "the arcface_torch iResNet layout (conv1, layer1.., fc, features)",
    "evolve_ir": "the face.evoLVe IR layout (input_layer, body.k.res_layer, output_layer)",
    "vit": "a ViT layout (patch_embed, blocks.k): a ViT-FIQA checkpoint? load it with exfiqa.model",
}
_LAYOUT_USE = {
    "iresnet": "use arch='iresnet' (name 'arcface' / 'elasticface') or arch='magface'",
    "evolve_ir": "use arch='curricularface'",
    "vit": "it is not an FR backbone of this zoo",
}


def _layout_hint(found: str | None, arch: str) -> str:
    expected = _ARCH_LAYOUT[arch]
    if found is None:
        return f"the keys match no known FR layout; arch={arch!r} expects {_LAYOUT_TEXT[expected]}"
    if found != expected:
        return (
            f"this looks like {_LAYOUT_TEXT[found]}, but arch={arch!r} expects "
            f"{_LAYOUT_TEXT[expected]}: {_LAYOUT_USE[found]}"
        )
    return ""


def infer_architecture(state_dict: Mapping[str, torch.Tensor], arch: Arch) -> dict[str, Any]:
    """Read ``layers``, ``widths``, ``embedding_size`` and ``input_size`` from checkpoint keys.

    iResNet: blocks per stage = number of ``layer{s}.{j}`` indices, width = out channels of
    ``layer{s}.0.conv1``. face.evoLVe IR: a stage starts at ``body.0`` and at every unit with a
    convolutional shortcut; width = out channels of ``res_layer.1``. ``input_size`` is the
    smallest size whose final map matches the Linear layer (``side * 2**stages``).

    Raises:
        CheckpointError: a key needed for the inference is missing or inconsistent.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise CheckpointError(f"cannot infer the {arch!r} architecture: key {key!r} missing")
        return tuple(state_dict[key].shape)

    if _ARCH_LAYOUT[arch] == "iresnet":
        blocks: dict[int, set[int]] = {}
        for key in state_dict:
            m = re.match(r"layer(\d+)\.(\d+)\.", key)
            if m:
                blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        stages = sorted(blocks)
        if not stages or stages != list(range(1, len(stages) + 1)):
            raise CheckpointError(
                f"cannot infer the iResNet stages: found layer indices {stages} (expected 1..n)"
            )
        layers = []
        for s in stages:
            idx = sorted(blocks[s])
            if idx != list(range(len(idx))):
                raise CheckpointError(f"cannot infer the iResNet stages: layer{s} has blocks {idx}")
            layers.append(len(idx))
        widths = [shape(f"layer{s}.0.conv1.weight")[0] for s in stages]
        fc = shape("fc.weight")
        stem = shape("conv1.weight")[0]
        if stem != widths[0]:
            raise CheckpointError(
                f"stem width {stem} (conv1.weight) differs from the first stage width "
                f"{widths[0]}; this zoo builds the stem with widths[0] channels"
            )
    else:
        units = sorted(
            {int(m.group(1)) for k in state_dict if (m := re.match(r"body\.(\d+)\.", k))}
        )
        if not units or units != list(range(len(units))):
            raise CheckpointError(f"cannot infer the IR units: found body indices {units[:10]}...")
        starts = [0] + [u for u in units[1:] if f"body.{u}.shortcut_layer.0.weight" in state_dict]
        ends = starts[1:] + [len(units)]
        layers = [e - s for s, e in zip(starts, ends, strict=True)]
        widths = [shape(f"body.{s}.res_layer.1.weight")[0] for s in starts]
        fc = shape("output_layer.3.weight")
    embedding_size, fc_in = fc[0], fc[1]
    area, rem = divmod(fc_in, widths[-1])
    side = math.isqrt(area)
    if rem or side * side != area:
        raise CheckpointError(
            f"fc input size {fc_in} is not {widths[-1]} channels times a square map"
        )
    return {
        "layers": tuple(layers),
        "widths": tuple(widths),
        "embedding_size": embedding_size,
        "input_size": side * 2 ** len(layers),
    }


def _strict_load(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str, arch: str
) -> None:
    """Load with every key and shape checked; BN ``num_batches_tracked`` may be absent."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"{where} does not match arch {arch!r}"]
        cfg = {a: getattr(model, a, None) for a in ("layers", "widths", "embedding_size")}
        parts.append(f"model {cfg}")
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:10]}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {mismatched[:10]}")
        hint = _layout_hint(detect_layout(state_dict), arch)
        if not hint and any(".res_layer.5." in k for k in unexpected):
            hint = "an IR-SE checkpoint (squeeze-excitation units) is not supported"
        elif not hint and mismatched:
            hint = (
                "layers/widths/embedding_size/input_size differ from the checkpoint: leave them "
                "None to infer them from the keys"
            )
        if hint:
            parts.append(f"likely cause: {hint}")
        raise CheckpointError("; ".join(parts))
    full = dict(state_dict)
    for k in own:
        full.setdefault(k, own[k])
    model.load_state_dict(full, strict=True)


# --------------------------------------------------------------------------------------------
# The uniform FR wrapper
# --------------------------------------------------------------------------------------------

ImageBatches = np.ndarray | Iterable[np.ndarray]


def _iter_batches(images: ImageBatches, batch_size: int) -> Iterator[np.ndarray]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [images] if isinstance(images, np.ndarray) else images
    for chunk in chunks:
        chunk = _check_images(chunk)
        for start in range(0, len(chunk), batch_size):
            yield chunk[start : start + batch_size]


def _default_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FRModel:
    """An FR model with its preprocessing: raw uint8 RGB faces in, embeddings out.

    Args:
        name: model name (``arcface``, ``elasticface``, ``magface``, ``curricularface`` or any).
        backbone: an :class:`IResNet` / :class:`IRBackbone` (any module mapping the preprocessed
            NCHW tensor to ``(N, E)``).
        preprocess: the model's :class:`Preprocess`.
        device: torch device; None = CUDA if available, else CPU.
        arch: architecture name, used by :func:`save_fr` (None for custom modules).
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
        self.device = _default_device(device)
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
        images = _check_images(images)
        size = self.input_size
        if size is not None and images.shape[1:3] != (size, size):
            raise ValueError(
                f"{self.name}: expected {size}x{size} aligned faces, got {images.shape[1]}x"
                f"{images.shape[2]}"
            )
        return self.preprocess(images, self.device).contiguous(memory_format=torch.channels_last)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.backbone is not None
        self.backbone.eval()
        return self.backbone(x)

    def _run(self, images: ImageBatches, batch_size: int, flip: bool | None) -> np.ndarray:
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for batch in _iter_batches(images, batch_size):
                x = self.to_tensor(batch)
                if flip is None:
                    out.append(self._forward(x).float().cpu().numpy())
                    continue
                n = x.shape[0]
                y = self._forward(torch.cat([x, x.flip(3)]) if flip else x).float()
                y = F.normalize(y, dim=1)
                emb = torch.cat([y[:n], y[n:]], dim=1) if flip else y
                out.append(emb.cpu().numpy())
        if not out:
            dim = (self.embedding_size or 0) * (2 if flip else 1)
            return np.zeros((0, dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed(self, images: ImageBatches, batch_size: int = 64, flip: bool = True) -> np.ndarray:
        """Embeddings for comparison: ``[L2norm(f(x)), L2norm(f(hflip(x)))]``, float32 (N, 2E).

        With ``flip=False``: ``L2norm(f(x))``, (N, E). Cosine similarity of two flip-concatenated
        embeddings = dot / 2 (each has norm sqrt(2)). ``images``: uint8 RGB (N, H, W, 3) or an
        iterable of such batches. Runs in eval mode under ``torch.inference_mode``.
        """
        return self._run(images, batch_size, flip=flip)

    def embed_raw(self, images: ImageBatches, batch_size: int = 64) -> np.ndarray:
        """Unnormalised ``f(x)`` (no flip), float32 (N, E): MagFace's quality is its L2 norm."""
        return self._run(images, batch_size, flip=None)


def magface_quality(model: FRModel, images: ImageBatches, batch_size: int = 64) -> np.ndarray:
    """MagFace quality = L2 norm of the unnormalised embedding; higher = better quality."""
    return np.linalg.norm(model.embed_raw(images, batch_size), axis=1)


def load_fr(
    name: str,
    checkpoint_path: str | os.PathLike[str],
    arch: Arch | None = None,
    layers: Sequence[int] | None = None,
    widths: Sequence[int] | None = None,
    embedding_size: int | None = None,
    input_size: int | None = None,
    device: torch.device | str | None = None,
    preprocess: Preprocess | None = None,
) -> FRModel:
    """Load a released (or :func:`save_fr`-written) FR checkpoint safely and strictly.

    Args:
        name: ``arcface``, ``elasticface``, ``magface``, ``curricularface`` (arch and
            preprocessing follow from it), or any name with ``arch`` and ``preprocess`` given.
        arch: override the architecture (``iresnet``, ``magface``, ``curricularface``).
        layers, widths, embedding_size, input_size: None = read from the checkpoint keys.
        device: None = CUDA if available, else CPU.

    Wrapper prefixes (``module.``, ``features.module.``, ``module.features.``, ``backbone.``)
    are stripped; a ``{"state_dict": ...}`` wrapper is unwrapped. Only tensors are unpickled.

    Raises:
        CheckpointError: unsafe or unreadable file, missing/unexpected keys, shape mismatches
            (the message names them and the likely cause).
    """
    if name in FR_MODELS:
        default_arch, default_pre = FR_MODELS[name]
    elif arch is None or preprocess is None:
        raise ValueError(
            f"unknown FR model name {name!r} (known: {sorted(FR_MODELS)}); for another name pass "
            f"both arch= and preprocess="
        )
    else:
        default_arch, default_pre = arch, preprocess
    arch = arch or default_arch
    if arch not in _ARCH_LAYOUT:
        raise ValueError(f"arch must be one of {sorted(_ARCH_LAYOUT)}, got {arch!r}")
    where = f"checkpoint {os.fspath(checkpoint_path)}"
    raw = load_state_dict(checkpoint_path)
    state_dict, dropped = strip_wrapper_prefixes(raw)
    if dropped:
        warnings.warn(
            f"{where}: ignored {len(dropped)} keys outside the backbone prefix (e.g. a training "
            f"head): {dropped[:5]}",
            stacklevel=2,
        )
    found = detect_layout(state_dict)
    if found != _ARCH_LAYOUT[arch]:
        raise CheckpointError(f"{where}: {_layout_hint(found, arch)}")
    inferred = infer_architecture(state_dict, arch)
    config = {
        "layers": layers if layers is not None else inferred["layers"],
        "widths": widths if widths is not None else inferred["widths"],
        "embedding_size": embedding_size or inferred["embedding_size"],
        "input_size": input_size or inferred["input_size"],
    }
    backbone = build_fr(arch, **config)
    _strict_load(backbone, state_dict, where, arch)
    return FRModel(name, backbone, preprocess or default_pre, device=device, arch=arch)


def save_fr(
    model: FRModel | nn.Module,
    path: str | os.PathLike[str],
    layout: SaveLayout | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a backbone's weights in a released checkpoint layout, atomically.

    Layouts: ``"plain"`` = flat state_dict (ArcFace, ElasticFace, CurricularFace releases);
    ``"magface"`` = ``{"state_dict": {"features.module." + key: tensor}}`` (MagFace release);
    ``"dataparallel"`` = flat with ``module.`` prefixes. Default: ``"magface"`` for an
    :class:`FRModel` whose arch or name is magface, else ``"plain"``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    backbone = model.backbone if isinstance(model, FRModel) else model
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"save_fr needs an FRModel with a torch backbone or a module: {model!r}")
    if layout is None:
        is_mag = isinstance(model, FRModel) and "magface" in (model.arch, model.name)
        layout = "magface" if is_mag else "plain"
    sd = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    if layout == "plain":
        obj: dict[str, Any] = sd
    elif layout == "magface":
        obj = {"state_dict": {"features.module." + k: v for k, v in sd.items()}}
    elif layout == "dataparallel":
        obj = {"module." + k: v for k, v in sd.items()}
    else:
        raise ValueError(f"layout must be 'plain', 'magface' or 'dataparallel', got {layout!r}")
    target = Path(path)
    with atomic_path(target, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:  # a file object: the archive is not named after the temp file
            torch.save(obj, fh)
    return target


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------


class OnnxFRModel(FRModel):
    """An FR model run by onnxruntime; same ``embed`` / ``embed_raw`` interface as FRModel.

    The ONNX graph takes the preprocessed float32 NCHW tensor (its first input) and returns the
    unnormalised embedding (its first output).
    """

    def __init__(self, name: str, session: Any, preprocess: Preprocess) -> None:
        super().__init__(name, None, preprocess, device="cpu", arch=None)
        self.session = session
        inp = session.get_inputs()[0]
        self._input_name = inp.name
        in_shape = list(getattr(inp, "shape", []) or [])
        side = in_shape[2] if len(in_shape) == 4 else None
        self._input_size = side if isinstance(side, int) else None
        out_shape = list(getattr(session.get_outputs()[0], "shape", []) or [])
        dim = out_shape[-1] if out_shape else None
        self._embedding_size = dim if isinstance(dim, int) else None

    @property
    def input_size(self) -> int | None:
        return self._input_size

    @property
    def embedding_size(self) -> int | None:
        return self._embedding_size

    def to(self, device: torch.device | str) -> OnnxFRModel:
        """ONNX models run where their session's providers run; the torch side stays on CPU."""
        return self

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self._input_name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        (y, *_) = self.session.run(None, feed)
        return torch.from_numpy(np.asarray(y, dtype=np.float32))


def load_onnx_fr(
    path: str | os.PathLike[str],
    preprocess: Preprocess = ARCFACE,
    name: str = "onnx",
    providers: Sequence[str] | None = None,
) -> OnnxFRModel:
    """Load an ONNX FR model (e.g. an insightface release) through onnxruntime.

    Raises:
        ImportError: onnxruntime is not installed (``pip install exfiqa[onnx]``).
        FileNotFoundError: ``path`` does not exist.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(
            "ONNX FR models need onnxruntime, which is not installed: pip install 'exfiqa[onnx]' "
            "(or pip install onnxruntime)"
        ) from exc
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX model not found: {p}")
    session = ort.InferenceSession(str(p), providers=list(providers or ["CPUExecutionProvider"]))
    return OnnxFRModel(name, session, preprocess)


# --------------------------------------------------------------------------------------------
# Comparison and templates
# --------------------------------------------------------------------------------------------


def cosine_similarity(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays, float64 (N,), clipped to [-1, 1].

    Higher = more similar. For flip-concatenated embeddings this equals ``dot / 2``.
    """
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (N, D) arrays of equal shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        bad = np.flatnonzero((norms == 0) | ~np.isfinite(norms))
        raise ValueError(f"zero or non-finite embeddings at rows {bad[:10].tolist()}")
    return np.clip(np.einsum("ij,ij->i", a, b) / norms, -1.0, 1.0)


def cosine_to_angular(cos: np.ndarray) -> np.ndarray:
    """Angular distance ``arccos(cos) / pi`` in [0, 1]; lower = more similar."""
    return np.arccos(np.clip(np.asarray(cos, dtype=np.float64), -1.0, 1.0)) / np.pi


def angular_distance(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Row-wise angular distance ``arccos(cosine) / pi`` in [0, 1]; lower = more similar."""
    return cosine_to_angular(cosine_similarity(emb_a, emb_b))


def _group_ids(name: str, ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n:
        raise ValueError(f"{name} must be 1-D with one entry per image ({n}), got {ids.shape}")
    return ids


def template_embeddings(
    embeddings: np.ndarray, template_ids: np.ndarray, media_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """IJB-C template features: mean within each media, sum over media, L2-normalise.

    A media id shared by several templates is averaged separately within each template.

    Returns:
        ``(unique_template_ids (T,) sorted, features (T, D))``; features float32 unless the input
        is float64. Sums and norms are accumulated in float64 over a block of embedding rows at a
        time, so the temporary memory stays a small fraction of the embeddings' (469k x 1024
        float32 embeddings: 1.9 GB in, 32 MB row chunks).
    """
    from scipy import sparse

    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {emb.shape}")
    n, dim = emb.shape
    tids = _group_ids("template_ids", template_ids, n)
    mids = _group_ids("media_ids", media_ids, n)
    unique_t, t_inv = np.unique(tids, return_inverse=True)
    _, m_inv = np.unique(mids, return_inverse=True)
    group_key = t_inv.astype(np.int64) * (int(m_inv.max(initial=0)) + 1) + m_inv
    _, g_inv, g_count = np.unique(group_key, return_inverse=True, return_counts=True)
    w = sparse.csc_matrix((1.0 / g_count[g_inv], (t_inv, np.arange(n))), shape=(len(unique_t), n))
    feats = np.zeros((len(unique_t), dim), dtype=np.float64)
    step = max(1, (1 << 22) // max(dim, 1))  # rows per chunk: 4M float64 values (32 MB)
    from .comparisons import release_pages

    for r0 in range(0, n, step):
        chunk = emb[r0 : r0 + step].astype(np.float64)
        if not np.isfinite(chunk).all():
            raise ValueError("embeddings contain NaN or inf")
        feats += w[:, r0 : r0 + step] @ chunk
        release_pages(emb, r0, r0 + step)  # memory-mapped embeddings: read once, not kept resident
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    if np.any(norms == 0):
        bad = unique_t[np.flatnonzero(norms[:, 0] == 0)]
        raise ValueError(f"templates with a zero feature sum: {bad[:10].tolist()}")
    feats /= norms
    return unique_t, feats if emb.dtype == np.float64 else feats.astype(np.float32)


def template_min(values: np.ndarray, template_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-template minimum (IJB-C template quality = min over its images).

    Args:
        values: (N,) or (N, L) per-image values (e.g. quality scores per exit).

    Returns:
        ``(unique_template_ids (T,) sorted, minima (T,) or (T, L))``.
    """
    v = np.asarray(values)
    tids = _group_ids("template_ids", template_ids, v.shape[0] if v.ndim else -1)
    if len(v) == 0:
        return np.unique(tids), v.copy()
    order = np.argsort(tids, kind="stable")
    sorted_t = tids[order]
    starts = np.flatnonzero(np.r_[True, sorted_t[1:] != sorted_t[:-1]])
    return sorted_t[starts], np.minimum.reduceat(v[order], starts, axis=0)
