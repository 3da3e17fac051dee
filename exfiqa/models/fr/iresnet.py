"""The torch FR backbones: arcface_torch's iResNet (ArcFace, ElasticFace, MagFace) and face.evoLVe's
IR (CurricularFace), with the released key names (see :mod:`exfiqa.models.fr`), and :func:`build_fr`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

Arch = Literal["iresnet", "magface", "curricularface"]


def _bn2d(channels: int, eps: float, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class PointwiseConv(nn.Conv2d):
    """``nn.Conv2d(cin, cout, 1, stride=s, bias=False)`` (same keys and result) computed as a stride-1
    1x1 convolution of ``x[:, :, ::s, ::s]``: torch's CPU backward of a strided 1x1 convolution in
    channels_last with at most 8 input channels segfaults on AVX-512 CPUs (oneDNN), which the demo's
    narrow iResNets hit."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if sh != 1 or sw != 1:
            x = x[:, :, ::sh, ::sw]
        return F.conv2d(x, self.weight, self.bias)


def _halve(size: int, times: int) -> int:
    """Spatial size after ``times`` stride-2 convolutions (k3, p1) or MaxPool2d(1, 2): ceil(size / 2**times)."""
    return -(-size // 2**times)


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
            self.downsample = nn.Sequential(PointwiseConv(cin, cout, stride), _bn2d(cout, bn_eps, bn_momentum))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """iResNet with the arcface_torch key layout (also MagFace's, after prefix stripping).

    ``layers``: blocks per stage (r100 = (3, 13, 30, 3), r50 = (3, 4, 14, 3)); ``widths``: channels
    per stage (the stem has ``widths[0]``); ``dropout`` acts before ``fc`` in training mode only;
    ``freeze_features_weight``: arcface_torch fixes the ``features`` BN1d weight at 1.0.
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
        """Dropout, ``fc`` and ``features`` BN1d; returns the unnormalised embedding. ``dropout_p``
        (e.g. 0.5 for SER-FIQ) replaces the module's dropout and applies even in eval mode."""
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
            self.shortcut_layer = nn.Sequential(PointwiseConv(cin, cout, stride), _bn2d(cout, bn_eps, bn_momentum))
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
    """IR network with the face.evoLVe key layout (CurricularFace IR-101 by default); ``widths`` must
    increase strictly, as only a conv shortcut marks a stage start (:func:`infer_architecture`)."""

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
        self.input_layer = nn.Sequential(_conv3x3(3, w0), _bn2d(w0, bn_eps, bn_momentum), nn.PReLU(w0))
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
        """Dropout, Linear and BN1d; returns the unnormalised embedding (``dropout_p`` as IResNet's)."""
        drop = self.output_layer[1]
        x = drop(x) if dropout_p is None else F.dropout(x, dropout_p, training=True)
        return self.output_layer[4](self.output_layer[3](x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


#: Architecture -> its BatchNorm settings.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "iresnet": {"bn_eps": 1e-5, "freeze_features_weight": True},
    "magface": {"bn_eps": 2e-5, "freeze_features_weight": False},
    "curricularface": {"bn_eps": 1e-5},
}
#: Architecture -> its checkpoint key layout (:func:`exfiqa.models.fr.load.detect_layout`).
ARCH_LAYOUT = {"iresnet": "iresnet", "magface": "iresnet", "curricularface": "evolve_ir"}


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
    """Build an FR backbone with random weights: ``arch`` ``"iresnet"`` (ArcFace, ElasticFace),
    ``"magface"`` or ``"curricularface"`` (face.evoLVe IR); default layers (3, 13, 30, 3) =
    iResNet-100 / IR-101, widths (64, 128, 256, 512), ``bn_eps`` per arch (1e-5, MagFace 2e-5)."""
    if arch not in ARCH_DEFAULTS:
        raise ValueError(f"arch must be one of {sorted(ARCH_DEFAULTS)}, got {arch!r}")
    kwargs = dict(ARCH_DEFAULTS[arch], embedding_size=embedding_size, dropout=dropout, input_size=input_size,
                  bn_momentum=bn_momentum)
    if bn_eps is not None:
        kwargs["bn_eps"] = bn_eps
    backbone = IRBackbone if arch == "curricularface" else IResNet
    return backbone(tuple(layers) if layers is not None else (3, 13, 30, 3),
                    tuple(widths) if widths is not None else (64, 128, 256, 512), **kwargs)
