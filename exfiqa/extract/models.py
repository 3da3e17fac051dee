"""The models of a run config, loaded once each: ``Models(cfg).quality_model("T")``,
``Models(cfg).fr_model("arcface")`` (the extraction, attention maps, latency; the Study loads none)."""

from __future__ import annotations

import torch

from exfiqa.config import Config, ConfigError
from exfiqa.models.device import resolve_device
from exfiqa.models.fr import FRModel, OnnxModelError, load_fr_entry
from exfiqa.models.vitfiqa import ViTFIQA, load_vitfiqa


def run_device(config: Config) -> torch.device:
    """The config's ``device`` resolved (``auto``: CUDA if torch sees a GPU, else CPU); ConfigError if unusable."""
    try:
        return resolve_device(config.device)
    except ValueError as exc:
        raise ConfigError(f"device: {exc}") from None


class Models:
    """The quality and FR models of ``config``, each loaded on first use (eval mode, on its device) and kept."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.device = str(run_device(config))  # "auto" -> "cuda" or "cpu", once
        self._quality: dict[str, ViTFIQA] = {}
        self._fr: dict[str, FRModel] = {}

    def quality_model(self, name: str) -> ViTFIQA:
        """The ViT-FIQA model of entry ``quality_models.<name>``."""
        if name not in self._quality:
            spec = self.config.quality_models.get(name)
            if spec is None:
                raise ConfigError(f"unknown quality_model {name!r}; known: {sorted(self.config.quality_models)}")
            self._quality[name] = load_vitfiqa(spec.checkpoint, device=self.device, **spec.args)
        return self._quality[name]

    def fr_model(self, name: str) -> FRModel:
        """The FR model (torch or ONNX) of entry ``fr_models.<name>`` or of one a baseline runs on."""
        if name not in self._fr:
            spec = self.config.fr_models.get(name) or self.config.support_fr_models.get(name)
            if spec is None:
                raise ConfigError(f"unknown fr_model {name!r}; known: {sorted(self.config.fr_models)}")
            try:
                self._fr[name] = load_fr_entry(name, spec.checkpoint, self.device, spec.args)
            except OnnxModelError as exc:  # one line (exit 2 in the commands), not a traceback
                raise ConfigError(f"fr_models.{name}: {exc}") from None
        return self._fr[name]
