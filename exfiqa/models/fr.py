"""Face-recognition (FR) model zoo and embedding extraction.

Conventions:
- Input images: aligned faces as ``uint8`` numpy arrays ``(N, H, W, 3)`` in **RGB** order
  (112x112 for the released models), or an iterable of such batches. Every model declares its own
  :class:`Preprocess` (channel order and normalisation) and applies it itself, so callers always
  pass raw RGB pixels.
- Embedding used everywhere (the paper's protocol): ``e = [L2norm(f(x)), L2norm(f(hflip(x)))]``,
  shape ``(N, 2E)`` (``E`` = 512 for the released models). Each half has unit norm, so ``e`` has
  norm sqrt(2) and the cosine similarity of two such embeddings is ``dot(e_a, e_b) / 2``.
- Comparison score: cosine similarity, higher = more similar (mated pairs high), computed by
  :mod:`exfiqa.evaluation.pairs`; the metrics' ``distance<`` rule reads it as the angular distance
  ``arccos(cos) / pi`` in [0, 1], lower = more similar.
- IJB-C templates: embeddings averaged within each media, summed over the media of a template,
  L2-normalised (:func:`template_embeddings`); template quality = min over its images
  (:func:`exfiqa.evaluation.metrics.template_quality`).

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

Device-side batches (what extraction calls): :meth:`Preprocess.tensor` turns a uint8 NHWC RGB
tensor into the float32 NCHW input on the same device; :meth:`FRModel.embed_batch` runs ONE
forward over ``cat([x, hflip(x)])`` and returns the flip-concatenated embedding and, optionally,
the unnormalised ``f(x)``. ``embed`` / ``embed_raw`` are built on it, so both paths agree exactly.

Config entries (``fr_models`` in a run config; :func:`load_fr_entry`): a checkpoint ending in
``.onnx`` is an ONNX model (onnxruntime) and must state its preprocessing, any name is accepted::

    fr_models:
      sface:                              # OpenCV Zoo SFace, 128-d
        checkpoint: fr/face_recognition_sface_2021dec.onnx
        preprocess: {channel_order: RGB, scale: 1, mean: [0, 0, 0], std: [1, 1, 1]}
        providers: [CPUExecutionProvider] # optional; default CPU, CUDA first when device is cuda

Torch entries may give ``preprocess`` too (it overrides the released model's). The preprocessing
is part of the entry's ``ModelSpec.args``, hence of the per-sample array key;
:func:`effective_preprocess` states the one really used, default included. ONNX graphs with a
fixed batch dimension and graphs listing their weights as inputs are handled (:class:`OnnxFRModel`).
"""

from __future__ import annotations

import logging
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

from exfiqa.io import CheckpointError, atomic_path, load_state_dict, state_dict_report

log = logging.getLogger(__name__)

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
    "build_fr",
    "TORCH_ENTRY_ARGS",
    "detect_layout",
    "effective_preprocess",
    "infer_architecture",
    "OnnxModelError",
    "is_onnx_checkpoint",
    "load_fr",
    "load_fr_entry",
    "load_onnx_fr",
    "magface_quality",
    "save_fr",
    "strip_wrapper_prefixes",
    "template_embeddings",
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
        return self.tensor(x)

    def tensor(
        self, x: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
    ) -> torch.Tensor:
        """Apply to a uint8 RGB ``(N, H, W, 3)`` tensor on any device; float32 NCHW on that device.

        Elementwise in float32: ``(x * scale - mean) / std`` after the channel reordering, so the
        result does not depend on the device's batch composition or on ``memory_format`` (the
        layout of the returned tensor: ``torch.contiguous_format`` or ``torch.channels_last``).
        """
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"Preprocess.tensor needs uint8 RGB pixels (N, H, W, 3), got {x.dtype} "
                f"{tuple(x.shape)}"
            )
        if self.channel_order == "BGR":
            x = x.flip(-1)
        x = x.permute(0, 3, 1, 2).to(torch.float32) * self.scale
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=memory_format)


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
    "vit": "a ViT layout (patch_embed, blocks.k): a ViT-FIQA checkpoint? load it with exfiqa.models.vitfiqa",
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
    cfg = {a: getattr(model, a, None) for a in ("layers", "widths", "embedding_size")}
    report = state_dict_report(
        {k: v.shape for k, v in own.items()},
        {k: v.shape for k, v in state_dict.items()},
        f"{where} does not match arch {arch!r} (model {cfg})",
        optional={k for k in own if k.endswith("num_batches_tracked")},
    )
    if report is not None:
        parts = [report]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = any(k in own and tuple(v.shape) != tuple(own[k].shape) for k, v in state_dict.items())
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
        return self._input(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))

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
        """One forward over ``cat([x, hflip(x)])`` of a uint8 RGB NHWC batch on the model's device.

        Returns ``([L2norm(f(x)), L2norm(f(hflip(x)))]`` float32 (B, 2E), and with ``raw`` the
        unnormalised ``f(x)`` float32 (B, E), else None)``, on ``x``'s device. No
        ``torch.inference_mode`` / autocast inside: the caller chooses them.
        """
        n = x.shape[0]
        y = self.forward_pair(x)
        e = F.normalize(y, dim=1)
        return torch.cat([e[:n], e[n:]], dim=1), (y[:n] if raw else None)

    def forward_pair(self, x: torch.Tensor) -> torch.Tensor:
        """The unnormalised outputs ``[f(x); f(hflip(x))]`` float32 (2B, E) of one forward over
        ``cat([x, hflip(x)])`` (uint8 RGB NHWC on the model's device): what :meth:`embed_batch`
        normalises, and what the extraction also takes the norms of."""
        return self._forward(self._input(torch.cat([x, x.flip(2)]))).float()

    def _run(self, images: ImageBatches, batch_size: int, mode: str) -> np.ndarray:
        """``mode``: ``flip`` (embed), ``plain`` (embed without flip) or ``raw`` (embed_raw)."""
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for batch in _iter_batches(images, batch_size):
                x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
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
        """Embeddings for comparison: ``[L2norm(f(x)), L2norm(f(hflip(x)))]``, float32 (N, 2E).

        With ``flip=False``: ``L2norm(f(x))``, (N, E). Cosine similarity of two flip-concatenated
        embeddings = dot / 2 (each has norm sqrt(2)). ``images``: uint8 RGB (N, H, W, 3) or an
        iterable of such batches. Runs in eval mode under ``torch.inference_mode``, through
        :meth:`embed_batch` (so it equals what extraction computes batch for batch).
        """
        return self._run(images, batch_size, "flip" if flip else "plain")

    def embed_raw(self, images: ImageBatches, batch_size: int = 64) -> np.ndarray:
        """Unnormalised ``f(x)`` (no flip), float32 (N, E): MagFace's quality is its L2 norm.

        Computed by :meth:`embed_batch` (``raw=True``), i.e. in the same ``[x, hflip(x)]`` forward
        as the embeddings, so it equals the norm extraction takes from the embedding pass.
        """
        return self._run(images, batch_size, "raw")


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


class OnnxModelError(ValueError):
    """An ONNX FR model exfiqa cannot run; the message says why and what to do, on one line."""


class OnnxFRModel(FRModel):
    """An FR model run by onnxruntime; same ``embed`` / ``embed_batch`` interface as FRModel.

    The graph's image input is its one 4-D float input that is not an initializer (weights that
    a graph also lists as inputs keep their stored values); inputs that no node reads are pruned
    when the graph is loaded (:func:`load_onnx_fr`); its first output is the unnormalised
    embedding. A fixed batch dimension ``k`` in the graph is honoured by running ``k`` rows at a
    time (the last chunk padded by repeating its last row, the padded outputs dropped); a symbolic
    one gets the whole batch in one run. Inputs and outputs stay on the torch ``device`` (the
    session itself runs where its providers run).
    """

    def __init__(
        self,
        name: str,
        session: Any,
        preprocess: Preprocess,
        initializers: Iterable[str] = (),
        device: torch.device | str = "cpu",
        where: str = "ONNX model",
    ) -> None:
        super().__init__(name, None, preprocess, device=device, arch=None)
        self.session = session
        inp = _onnx_image_input(session, set(initializers), where)
        self._input_name = inp.name
        shape = list(getattr(inp, "shape", None) or [])
        batch = shape[0] if shape else None
        self.fixed_batch: int | None = batch if isinstance(batch, int) and batch > 0 else None
        side = shape[2] if len(shape) == 4 else None
        self._input_size = side if isinstance(side, int) else None
        out_shape = list(getattr(session.get_outputs()[0], "shape", None) or [])
        dim = out_shape[-1] if out_shape else None
        self._embedding_size = dim if isinstance(dim, int) else None

    def __repr__(self) -> str:
        return (
            f"OnnxFRModel(name={self.name!r}, input={self._input_name!r}, "
            f"fixed_batch={self.fixed_batch}, device={self.device})"
        )

    @property
    def input_size(self) -> int | None:
        return self._input_size

    @property
    def embedding_size(self) -> int | None:
        return self._embedding_size

    def to(self, device: torch.device | str) -> OnnxFRModel:
        """Where inputs are preprocessed and outputs returned; the session keeps its providers."""
        self.device = torch.device(device)
        return self

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        k = self.fixed_batch
        if k is None:
            y = self._run_session(rows)
        else:
            parts = []
            for start in range(0, len(rows), k):
                chunk = rows[start : start + k]
                n = len(chunk)
                if n < k:  # pad with copies of the last row; their outputs are dropped
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], k - n, axis=0)])
                parts.append(self._run_session(chunk)[:n])
            y = np.concatenate(parts) if parts else np.zeros((0, self._embedding_size or 0), np.float32)
        return torch.from_numpy(y).to(x.device)

    def _run_session(self, rows: np.ndarray) -> np.ndarray:
        (y, *_) = self.session.run(None, {self._input_name: rows})
        return np.asarray(y, dtype=np.float32).reshape(len(rows), -1)


def _onnx_image_input(session: Any, initializers: set[str], where: str) -> Any:
    """The one 4-D float graph input that is not an initializer (the image); else a clear error."""
    overridable = getattr(session, "get_overridable_initializers", None)
    if callable(overridable):
        initializers = initializers | {i.name for i in overridable()}
    inputs = [i for i in session.get_inputs() if i.name not in initializers]

    def is_image(i: Any) -> bool:
        shape = getattr(i, "shape", None)
        kind = getattr(i, "type", "tensor(float)")
        return shape is not None and len(shape) == 4 and kind == "tensor(float)"

    images = [i for i in inputs if is_image(i)]
    described = [f"{i.name} {getattr(i, 'type', '?')} {list(getattr(i, 'shape', None) or [])}" for i in inputs]
    if len(images) != 1:
        raise OnnxModelError(
            f"{where}: an FR model takes one NCHW float image as its only fed input, and this graph has "
            f"{len(images)} 4-D float inputs among those it needs fed {described[:8]}"
            f"{' ...' if len(described) > 8 else ''}; export the model with one image input (N, 3, H, W)"
        )
    others = [d for i, d in zip(inputs, described, strict=True) if i is not images[0]]
    if others:
        raise OnnxModelError(
            f"{where}: besides the image {images[0].name!r} its nodes read inputs exfiqa cannot feed "
            f"{others[:8]}{' ...' if len(others) > 8 else ''}; export the model with the image as its only "
            "input (constants as initializers)"
        )
    return images[0]


def _prune_unread_inputs(path: Path) -> tuple[bytes | None, set[str], list[str]]:
    """``(model bytes or None, initializer names, pruned inputs)``: the graph inputs that no node
    (nor a subgraph) reads and that are not initializers are removed (onnxruntime would want them
    fed; OpenCV Zoo's SFace declares 29 such). None: nothing pruned, load the file itself. Without
    the ``onnx`` package nothing is pruned."""
    try:
        import onnx
    except ImportError:
        return None, set(), []
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a protobuf parse error of a file that is not an ONNX model
        raise OnnxModelError(f"ONNX model {path}: not a readable ONNX file ({type(exc).__name__}); "
                             "check the file (a complete .onnx export)") from None
    initializers = {t.name for t in model.graph.initializer}
    read: set[str] = set()

    def walk(graph: Any) -> None:
        for node in graph.node:
            read.update(node.input)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    read.update(o.name for o in model.graph.output)  # an input passed straight to an output is read
    unread = [i.name for i in model.graph.input if i.name not in read and i.name not in initializers]
    if not unread:
        return None, initializers, []
    keep = [i for i in model.graph.input if i.name not in set(unread)]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    if any(t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(path.parent))
    return model.SerializeToString(), initializers, unread


def _default_providers(ort: Any, device: torch.device) -> list[str]:
    available = set(ort.get_available_providers()) if hasattr(ort, "get_available_providers") else set()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_onnx_fr(
    path: str | os.PathLike[str],
    preprocess: Preprocess,
    name: str = "onnx",
    providers: Sequence[str] | None = None,
    device: torch.device | str | None = "cpu",
) -> OnnxFRModel:
    """Load an ONNX FR model (e.g. an insightface or OpenCV Zoo release) through onnxruntime.

    Args:
        preprocess: what the model was trained on; there is no default because a wrong one
            silently ruins the embeddings (SFace: ``Preprocess("RGB", 1.0, (0,) * 3, (1,) * 3)``,
            RGB 0..255; insightface ArcFace: ``Preprocess("RGB")``, ``(x/255 - 0.5)/0.5``).
        providers: onnxruntime execution providers; None = CPUExecutionProvider, or
            CUDAExecutionProvider first when ``device`` is CUDA and onnxruntime offers it.
        device: the torch device inputs are preprocessed on and outputs returned on
            (None = CUDA if available, else CPU).

    Graph inputs that no node reads and that are not initializers are pruned (logged). A
    requested provider that this onnxruntime does not offer is refused (onnxruntime itself would
    fall back to the CPU with a warning only).

    Raises:
        ImportError: onnxruntime is not installed (``pip install exfiqa[onnx]``).
        FileNotFoundError: ``path`` does not exist.
        OnnxModelError: the graph has no single image input (see :class:`OnnxFRModel`), is not
            an ONNX file, or a requested provider is not available.
    """
    if not isinstance(preprocess, Preprocess):
        raise TypeError(f"preprocess must be an exfiqa.models.fr.Preprocess, got {type(preprocess).__name__}")
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
    dev = _default_device(device)
    available = list(ort.get_available_providers()) if hasattr(ort, "get_available_providers") else []
    absent = [x for x in providers or () if available and x not in available]
    if absent:
        raise OnnxModelError(
            f"ONNX model {p}: providers {absent} are not available in this onnxruntime {ort.__version__} "
            f"(available: {available}); install the matching onnxruntime build (e.g. onnxruntime-gpu for "
            "CUDAExecutionProvider) or list only available providers"
        )
    chosen = list(providers) if providers else _default_providers(ort, dev)
    pruned_bytes, initializers, pruned = _prune_unread_inputs(p)
    if pruned:
        log.info("ONNX model %s: %d graph inputs no node reads are ignored: %s", p, len(pruned), pruned[:8])
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: not one warning per weight listed as an input
    try:
        session = ort.InferenceSession(pruned_bytes if pruned_bytes is not None else str(p), sess_options=options,
                                       providers=chosen)
    except Exception as exc:  # onnxruntime's own errors (invalid graph, unsupported operator)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise OnnxModelError(f"ONNX model {p}: onnxruntime cannot load it ({first}); check the export "
                             f"(opset, operators) against onnxruntime {ort.__version__}") from None
    return OnnxFRModel(name, session, preprocess, initializers, device=dev, where=f"ONNX model {p}")


# --------------------------------------------------------------------------------------------
# Config entries (exfiqa.config's fr_models)
# --------------------------------------------------------------------------------------------

#: Keys of a config entry that only torch checkpoints take (an ONNX graph fixes its architecture).
TORCH_ENTRY_ARGS = frozenset({"arch", "layers", "widths", "embedding_size", "input_size"})

_PREPROCESS_HELP = (
    "give preprocess: {channel_order: RGB|BGR, scale: S, mean: [m, m, m], std: [s, s, s]} "
    "(input = (pixel * scale - mean) / std in that channel order), e.g. OpenCV Zoo's SFace "
    "takes RGB 0..255 (scale 1, mean [0, 0, 0], std [1, 1, 1]) and insightface ArcFace "
    "(x/255 - 0.5)/0.5 (RGB, scale 0.00392156862745098, mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5])"
)


def is_onnx_checkpoint(checkpoint: str | os.PathLike[str]) -> bool:
    """An FR config entry is an ONNX model when its checkpoint ends in ``.onnx``."""
    return os.fspath(checkpoint).lower().endswith(".onnx")


def effective_preprocess(name: str, args: Mapping[str, Any]) -> Preprocess:
    """The preprocessing the config entry ``name`` (with its ``ModelSpec.args``) really uses.

    The entry's ``preprocess`` if given (ONNX entries must give it), else the released model's
    default for ``args["name"]`` / ``name`` (:data:`FR_MODELS`).

    Raises:
        ValueError: neither is there (the message says what to write).
    """
    model_name = args.get("name", name)
    given = args.get("preprocess")
    if given is not None:
        if isinstance(given, Preprocess):
            return given
        try:
            return Preprocess(
                given["channel_order"], float(given["scale"]), tuple(given["mean"]),
                tuple(given["std"]), source=f"config fr_models.{name}.preprocess",
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"fr_models.{name}.preprocess: {exc}; {_PREPROCESS_HELP}") from None
    if model_name in FR_MODELS:
        return FR_MODELS[model_name][1]
    raise ValueError(
        f"fr_models.{name}: no preprocessing known for model name {model_name!r} (released "
        f"defaults: {sorted(FR_MODELS)}); {_PREPROCESS_HELP}"
    )


def load_fr_entry(
    name: str, checkpoint: str | os.PathLike[str], device: torch.device | str | None, args: Mapping[str, Any]
) -> FRModel:
    """Load the FR model of config entry ``fr_models.<name>`` (``args`` = its ``ModelSpec.args``).

    A checkpoint ending in ``.onnx`` goes to :func:`load_onnx_fr` (``preprocess`` required,
    optional ``providers``); any other to :func:`load_fr` (``arch``, ``layers``, ... and an
    optional ``preprocess`` overriding the released model's). ``args["name"]`` (default: the
    entry's key) names the model.
    """
    where = f"fr_models.{name}"
    args = dict(args)
    model_name = args.pop("name", name)
    providers = args.pop("providers", None)
    given_pre = args.pop("preprocess", None)
    if is_onnx_checkpoint(checkpoint):
        if given_pre is None:
            raise ValueError(f"{where} (ONNX {os.fspath(checkpoint)}) needs 'preprocess': {_PREPROCESS_HELP}")
        if args:
            raise ValueError(
                f"{where}: {sorted(args)} apply to torch checkpoints only; an ONNX graph fixes "
                f"its architecture"
            )
        pre = effective_preprocess(name, {"preprocess": given_pre})
        return load_onnx_fr(checkpoint, pre, name=model_name, providers=providers, device=device)
    if providers is not None:
        raise ValueError(f"{where}.providers: onnxruntime providers apply to .onnx checkpoints only")
    pre = None if given_pre is None else effective_preprocess(name, {"preprocess": given_pre})
    if model_name not in FR_MODELS and ("arch" not in args or pre is None):
        raise ValueError(
            f"{where}: unknown FR model name {model_name!r} (known: {sorted(FR_MODELS)}); another "
            f"torch model needs 'arch' ({list(_ARCH_LAYOUT)}) and 'preprocess': {_PREPROCESS_HELP}"
        )
    return load_fr(model_name, checkpoint, device=device, preprocess=pre, **args)


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


def _group_ids(name: str, ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n:
        raise ValueError(f"{name} must be 1-D with one entry per image ({n}), got {ids.shape}")
    return ids


def _template_sums(
    n: int, dim: int, template_ids: np.ndarray, media_ids: np.ndarray, rows: Any, source: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per template: sum over its media of the mean of the media's image rows; L2-normalised.

    ``rows(r0, r1)`` gives the float64 image features of rows ``r0:r1``; they are read a block at
    a time (the temporary memory is a small fraction of ``source``'s, whose pages are released
    after each block). A media id shared by several templates is averaged within each template.
    """
    from scipy import sparse

    from exfiqa.evaluation.pairs import release_pages

    tids = _group_ids("template_ids", template_ids, n)
    mids = _group_ids("media_ids", media_ids, n)
    unique_t, t_inv = np.unique(tids, return_inverse=True)
    _, m_inv = np.unique(mids, return_inverse=True)
    group_key = t_inv.astype(np.int64) * (int(m_inv.max(initial=0)) + 1) + m_inv
    _, g_inv, g_count = np.unique(group_key, return_inverse=True, return_counts=True)
    w = sparse.csc_matrix((1.0 / g_count[g_inv], (t_inv, np.arange(n))), shape=(len(unique_t), n))
    feats = np.zeros((len(unique_t), dim), dtype=np.float64)
    step = max(1, (1 << 22) // max(source.shape[1], 1))  # rows per chunk: 4M float64 values (32 MB)
    for r0 in range(0, n, step):
        chunk = rows(r0, r0 + step)
        if not np.isfinite(chunk).all():
            raise ValueError("embeddings contain NaN or inf")
        feats += w[:, r0 : r0 + step] @ chunk
        release_pages(source, r0, r0 + step)  # memory-mapped embeddings: read once, not kept resident
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    if np.any(norms == 0):
        bad = unique_t[np.flatnonzero(norms[:, 0] == 0)]
        raise ValueError(f"templates with a zero feature sum: {bad[:10].tolist()}")
    feats /= norms
    return unique_t, feats


def template_embeddings(
    embeddings: np.ndarray, template_ids: np.ndarray, media_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """IJB-C template features (the group's protocol): mean within each media, sum over media,
    L2-normalise, of the stored per-image embeddings ``[L2(f(x)), L2(f(flip x))]``.

    A media id shared by several templates is averaged separately within each template.

    Returns:
        ``(unique_template_ids (T,) sorted, features (T, D))``; features float32 unless the input
        is float64. Sums and norms are accumulated in float64 over a block of embedding rows at a
        time, so the temporary memory stays a small fraction of the embeddings' (469k x 1024
        float32 embeddings: 1.9 GB in, 32 MB row chunks).
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {emb.shape}")
    n, dim = emb.shape
    unique_t, feats = _template_sums(
        n, dim, template_ids, media_ids, lambda r0, r1: emb[r0:r1].astype(np.float64), emb
    )
    return unique_t, feats if emb.dtype == np.float64 else feats.astype(np.float32)


def insightface_template_embeddings(
    embeddings: np.ndarray,
    det_scores: np.ndarray,
    template_ids: np.ndarray,
    media_ids: np.ndarray,
    norms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """IJB-C template features of insightface's evaluation (``arcface_torch/eval_ijbc.py`` with its
    defaults ``use_flip_test``, ``use_norm_score`` and ``use_detector_score`` all True).

    Exactly: image feature ``g = (f(x) + f(flip x)) * det_score`` with ``f`` the *unnormalised*
    FR output and ``det_score`` the detector score of ``ijbc_name_5pts_score.txt`` (the
    ``det_score`` column of :func:`exfiqa.readers.read_ijbc`); per template, the features of
    each media are averaged (a media with one image keeps its feature; media are grouped within
    the template), the media means are summed, and the sum is L2-normalised. Scores are dot
    products of these features (cosine). The sums are accumulated in float64 (insightface: the
    image features in float32, the template sums in float64).

    Args:
        embeddings: (N, 2E) per image: the unnormalised ``[f(x), f(flip x)]`` when ``norms`` is
            None, else the stored ``[L2(f(x)), L2(f(flip x))]`` (:meth:`FRModel.embed`).
        det_scores: (N,) detector scores.
        norms: (N, 2) ``[||f(x)||, ||f(flip x)||]``, which undo the stored normalisation
            (``f(x) = ||f(x)|| * L2(f(x))``); the per-sample embeddings alone cannot give ``f``.

    Returns:
        ``(unique_template_ids (T,) sorted, features (T, E) float32)``.
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[1] % 2:
        raise ValueError(f"embeddings must be (N, 2E) flip-concatenated, got shape {emb.shape}")
    n, half = emb.shape[0], emb.shape[1] // 2
    det = np.asarray(det_scores, dtype=np.float64)
    if det.shape != (n,) or not np.isfinite(det).all():
        raise ValueError(f"det_scores must be {n} finite detector scores, got shape {det.shape}")
    scale = np.ones((n, 2))
    if norms is not None:
        scale = np.asarray(norms, dtype=np.float64)
        if scale.shape != (n, 2) or not np.isfinite(scale).all() or np.any(scale <= 0):
            raise ValueError(f"norms must be (N, 2) = ({n}, 2) positive finite norms, got shape {scale.shape}")

    def rows(r0: int, r1: int) -> np.ndarray:
        chunk = emb[r0:r1].astype(np.float64)
        s = scale[r0:r1]
        g = chunk[:, :half] * s[:, :1] + chunk[:, half:] * s[:, 1:]
        return g * det[r0:r1, None]

    unique_t, feats = _template_sums(n, half, template_ids, media_ids, rows, emb)
    return unique_t, feats.astype(np.float32)
