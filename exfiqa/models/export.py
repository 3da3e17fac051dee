"""ONNX export of a ViT-FIQA exit (``exfiqa export``; TorchScript exporter, opset :data:`OPSET`).

Input ``images``: uint8 RGB (B, 112, 112, 3), dynamic batch, normalised inside the graph as
:func:`exfiqa.models.vitfiqa.to_tensor` does. Outputs: for one exit, ``quality`` (B,) float32 (the graph
holds only its blocks); for all, ``exits`` (B, depth) and the float32 fusions ``ex_fiqa_f``, ``ex_fiqa_fw`` (B,).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from exfiqa.evaluation.fusion import depth_weights, uniform_weights
from exfiqa.io import atomic_path
from exfiqa.models.vitfiqa import ViTFIQA

__all__ = ["OPSET", "ExitGraph", "export_onnx", "output_names"]

OPSET = 17


class ExitGraph(nn.Module):
    """uint8 RGB (B, H, W, 3) -> the scores of exit ``exit`` (B,), or with ``exit=None`` the tuple
    (all exits (B, depth), EX-FIQA-F (B,), EX-FIQA-FW (B,)): the module that is exported."""

    w_f: torch.Tensor
    w_fw: torch.Tensor

    def __init__(self, model: ViTFIQA, exit: int | None) -> None:
        super().__init__()
        self.model = model.eval()
        self.exit = None if exit is None else model._check_exits([exit])[0]
        for name, weights in (("w_f", uniform_weights), ("w_fw", depth_weights)):
            self.register_buffer(name, torch.tensor(weights(model.depth), dtype=torch.float32), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (images.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
        if self.exit is not None:
            return self.model.score_at_exit(x, self.exit)
        scores = self.model.forward_exits(x).scores
        return scores, scores @ self.w_f, scores @ self.w_fw


def output_names(exit: int | None) -> list[str]:
    """The graph's output names for one exit (``exit``) or all (None)."""
    return ["quality"] if exit is not None else ["exits", "ex_fiqa_f", "ex_fiqa_fw"]


def export_onnx(model: ViTFIQA, out: str | os.PathLike[str], exit: int | None, overwrite: bool = False) -> Path:
    """Write the ONNX graph of exit ``exit`` (all: None) to ``out`` atomically; FileExistsError, ValueError."""
    graph = ExitGraph(copy.deepcopy(model).cpu().float(), exit).eval()  # the caller's model is untouched
    names = output_names(graph.exit)
    dummy = torch.zeros(2, model.config.img_size, model.config.img_size, 3, dtype=torch.uint8)
    axes = {name: {0: "batch"} for name in ["images", *names]}
    with atomic_path(out, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(graph, (dummy,), str(tmp), input_names=["images"], output_names=names, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    return Path(out)
