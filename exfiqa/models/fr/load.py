"""Loading FR models: released checkpoints (key layouts, wrapper prefixes, architecture read from the
keys), :func:`save_fr` in the released layouts, and config entries (:func:`load_fr_entry`)."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from exfiqa.io import CheckpointError, atomic_path
from exfiqa.models.checkpoints import load_state_dict, state_dict_report
from exfiqa.models.fr.iresnet import ARCH_LAYOUT, Arch, build_fr
from exfiqa.models.fr.model import FR_MODELS, FRModel, Preprocess
from exfiqa.models.fr.onnx import load_onnx_fr

SaveLayout = Literal["plain", "magface", "dataparallel"]

_WRAPPER_PREFIXES = (
    "features.module.", "module.features.", "module.backbone.", "backbone.module.", "module.", "backbone.", "model."
)
_ANCHOR_KEYS = ("conv1.weight", "input_layer.0.weight")


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove the first training-wrapper prefix (``module.``, ``features.module.``, ...) under which
    a stem key (``conv1.weight``, ``input_layer.0.weight``) exists; returns ``(kept, dropped keys)``,
    the dropped ones outside the prefix (e.g. MagFace's ``fc.weight`` head)."""
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
    if "input_layer.0.weight" in keys or any(k.startswith("body.") and ".res_layer." in k for k in keys):
        return "evolve_ir"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "iresnet"
    if "patch_embed.proj.weight" in keys or any(k.startswith("blocks.") and ".attn." in k for k in keys):
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
    expected = ARCH_LAYOUT[arch]
    if found is None:
        return f"the keys match no known FR layout; arch={arch!r} expects {_LAYOUT_TEXT[expected]}"
    if found != expected:
        return (
            f"this looks like {_LAYOUT_TEXT[found]}, but arch={arch!r} expects "
            f"{_LAYOUT_TEXT[expected]}: {_LAYOUT_USE[found]}"
        )
    return ""


def infer_architecture(state_dict: Mapping[str, torch.Tensor], arch: Arch) -> dict[str, Any]:
    """Read ``layers``, ``widths``, ``embedding_size`` and ``input_size`` (the smallest whose final
    map matches the Linear layer) from checkpoint keys; an IR stage starts at ``body.0`` and at
    every unit with a conv shortcut. Raises CheckpointError on a missing or inconsistent key."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise CheckpointError(f"cannot infer the {arch!r} architecture: key {key!r} missing")
        return tuple(state_dict[key].shape)

    if ARCH_LAYOUT[arch] == "iresnet":
        blocks: dict[int, set[int]] = {}
        for hit in filter(None, (re.match(r"layer(\d+)\.(\d+)\.", k) for k in state_dict)):
            blocks.setdefault(int(hit.group(1)), set()).add(int(hit.group(2)))
        stages = sorted(blocks)
        if not stages or stages != list(range(1, len(stages) + 1)):
            raise CheckpointError(
                f"cannot infer the iResNet stages: found layer indices {stages} (expected 1..n)"
            )
        for s in stages:
            if (idx := sorted(blocks[s])) != list(range(len(idx))):
                raise CheckpointError(f"cannot infer the iResNet stages: layer{s} has blocks {idx}")
        layers = [len(blocks[s]) for s in stages]
        widths = [shape(f"layer{s}.0.conv1.weight")[0] for s in stages]
        fc = shape("fc.weight")
        stem = shape("conv1.weight")[0]
        if stem != widths[0]:
            raise CheckpointError(
                f"stem width {stem} (conv1.weight) differs from the first stage width "
                f"{widths[0]}; this zoo builds the stem with widths[0] channels"
            )
    else:
        units = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"body\.(\d+)\.", k))})
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
        raise CheckpointError(f"fc input size {fc_in} is not {widths[-1]} channels times a square map")
    return {"layers": tuple(layers), "widths": tuple(widths), "embedding_size": embedding_size,
            "input_size": side * 2 ** len(layers)}


def _strict_load(model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str, arch: str) -> None:
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
        mismatched = any(k in own and tuple(v.shape) != tuple(own[k].shape) for k, v in state_dict.items())
        hint = _layout_hint(detect_layout(state_dict), arch)
        if not hint and any(".res_layer.5." in k and k not in own for k in state_dict):
            hint = "an IR-SE checkpoint (squeeze-excitation units) is not supported"
        elif not hint and mismatched:
            hint = (
                "layers/widths/embedding_size/input_size differ from the checkpoint: leave them "
                "None to infer them from the keys"
            )
        if hint:
            parts.append(f"likely cause: {hint}")
        raise CheckpointError("; ".join(parts))
    model.load_state_dict({**own, **state_dict}, strict=True)


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
    """Load a released (or :func:`save_fr`-written) FR checkpoint safely (only tensors unpickled)
    and strictly, wrapper prefixes stripped.

    ``name``: a released model (arch and preprocessing follow from it) or any name with ``arch``
    and ``preprocess``; ``layers`` ... ``input_size`` None = read from the keys; ``device`` None =
    CUDA if available. Raises CheckpointError: unsafe or unreadable file, missing/unexpected keys,
    shape mismatches (the message names them and the likely cause).
    """
    if name not in FR_MODELS and (arch is None or preprocess is None):
        raise ValueError(
            f"unknown FR model name {name!r} (known: {sorted(FR_MODELS)}); for another name pass "
            f"both arch= and preprocess="
        )
    default_arch, default_pre = FR_MODELS.get(name, (arch, preprocess))
    arch = arch or default_arch
    if arch not in ARCH_LAYOUT:
        raise ValueError(f"arch must be one of {sorted(ARCH_LAYOUT)}, got {arch!r}")
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
    if found != ARCH_LAYOUT[arch]:
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
    """Write a backbone's weights atomically in a released layout: ``"plain"`` (flat state_dict),
    ``"magface"`` (``{"state_dict": {"features.module." + key: tensor}}``; the default for an
    FRModel whose arch or name is magface) or ``"dataparallel"`` (``module.`` prefixes).
    Raises FileExistsError if ``path`` exists and not ``overwrite``."""
    backbone = model.backbone if isinstance(model, FRModel) else model
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"save_fr needs an FRModel with a torch backbone or a module: {model!r}")
    if layout is None:
        is_mag = isinstance(model, FRModel) and "magface" in (model.arch, model.name)
        layout = "magface" if is_mag else "plain"
    prefix = {"plain": "", "magface": "features.module.", "dataparallel": "module."}.get(layout)
    if prefix is None:
        raise ValueError(f"layout must be 'plain', 'magface' or 'dataparallel', got {layout!r}")
    obj: dict[str, Any] = {prefix + k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    if layout == "magface":
        obj = {"state_dict": obj}
    target = Path(path)
    with atomic_path(target, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:  # a file object: the archive is not named after the temp file
            torch.save(obj, fh)
    return target


#: Keys of a config entry that only torch checkpoints take (an ONNX graph fixes its architecture).
TORCH_ENTRY_ARGS = frozenset({"arch", "layers", "widths", "embedding_size", "input_size"})

PREPROCESS_HELP = (
    "give preprocess: {channel_order: RGB|BGR, scale: S, mean: [m, m, m], std: [s, s, s]} "
    "(input = (pixel * scale - mean) / std in that channel order), e.g. OpenCV Zoo's SFace "
    "takes RGB 0..255 (scale 1, mean [0, 0, 0], std [1, 1, 1]) and insightface ArcFace "
    "(x/255 - 0.5)/0.5 (RGB, scale 0.00392156862745098, mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5])"
)


def effective_preprocess(name: str, args: Mapping[str, Any]) -> Preprocess:
    """The preprocessing config entry ``name`` (``args`` = its ``ModelSpec.args``) really uses: its
    ``preprocess``, else the released default of ``args["name"]`` / ``name``; else ValueError."""
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
            raise ValueError(f"fr_models.{name}.preprocess: {exc}; {PREPROCESS_HELP}") from None
    if model_name in FR_MODELS:
        return FR_MODELS[model_name][1]
    raise ValueError(
        f"fr_models.{name}: no preprocessing known for model name {model_name!r} (released "
        f"defaults: {sorted(FR_MODELS)}); {PREPROCESS_HELP}"
    )


def load_fr_entry(
    name: str, checkpoint: str | os.PathLike[str], device: torch.device | str | None, args: Mapping[str, Any]
) -> FRModel:
    """Load the FR model of config entry ``fr_models.<name>`` (``args`` = its ``ModelSpec.args``): a
    checkpoint ending in ``.onnx`` by :func:`load_onnx_fr` (``preprocess`` required), any other by
    :func:`load_fr`. ``args["name"]`` (default: the entry's key) names the model."""
    where = f"fr_models.{name}"
    args = dict(args)
    model_name = args.pop("name", name)
    providers = args.pop("providers", None)
    given_pre = args.pop("preprocess", None)
    if os.fspath(checkpoint).lower().endswith(".onnx"):
        if given_pre is None:
            raise ValueError(f"{where} (ONNX {os.fspath(checkpoint)}) needs 'preprocess': {PREPROCESS_HELP}")
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
            f"torch model needs 'arch' ({list(ARCH_LAYOUT)}) and 'preprocess': {PREPROCESS_HELP}"
        )
    return load_fr(model_name, checkpoint, device=device, preprocess=pre, **args)
