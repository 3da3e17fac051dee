"""ONNX FR models run by onnxruntime (:func:`load_onnx_fr`): the same interface as :class:`FRModel`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exfiqa.models.device import resolve_device
from exfiqa.models.fr.model import FRModel, Preprocess

log = logging.getLogger(__name__)


class OnnxModelError(ValueError):
    """An ONNX FR model exfiqa cannot run; the message says why and what to do, on one line."""


class OnnxFRModel(FRModel):
    """An FR model run by onnxruntime; same ``embed`` / ``embed_batch`` interface as FRModel.

    Input: the graph's one 4-D float input that is not an initializer; output: its first (the
    unnormalised embedding). A fixed batch dimension ``k`` is run ``k`` rows at a time (the last
    chunk padded with its last row, whose outputs are dropped). Tensors stay on ``device``.
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
        batch, _, side, _ = inp.shape  # 4-D: checked by _onnx_image_input
        self.fixed_batch: int | None = batch if isinstance(batch, int) and batch > 0 else None
        self._input_size = side if isinstance(side, int) else None
        dim = (getattr(session.get_outputs()[0], "shape", None) or [None])[-1]
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

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        n, k = len(rows), self.fixed_batch
        if k is None:
            y = self._run_session(rows)
        elif n == 0:
            y = np.zeros((0, self._embedding_size or 0), np.float32)
        else:  # pad to a multiple of k with copies of the last row; their outputs are dropped
            rows = np.pad(rows, [(0, -n % k)] + [(0, 0)] * (rows.ndim - 1), mode="edge")
            y = np.concatenate([self._run_session(rows[i : i + k]) for i in range(0, n, k)])[:n]
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
    images = [i for i in inputs if len(getattr(i, "shape", None) or ()) == 4
              and getattr(i, "type", "tensor(float)") == "tensor(float)"]
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
    """``(model bytes or None, initializer names, pruned inputs)``: graph inputs that are no
    initializer and that no node (nor subgraph) reads are removed (OpenCV Zoo's SFace declares 29).
    None: nothing pruned (or no ``onnx`` package), load the file itself."""
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

    ``preprocess`` has no default, a wrong one silently ruins the embeddings (SFace:
    ``Preprocess("RGB", 1.0, (0,) * 3, (1,) * 3)``; insightface ArcFace: ``Preprocess("RGB")``).
    ``providers`` None = CPU, CUDA first when ``device`` (where tensors live; None = CUDA if
    available) is CUDA and offered; a requested provider this onnxruntime lacks is refused.

    Raises:
        ImportError: no onnxruntime. FileNotFoundError: no ``path``.
        OnnxModelError: not an ONNX file, no single image input, or a provider not available.
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
    dev = resolve_device(device)
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
