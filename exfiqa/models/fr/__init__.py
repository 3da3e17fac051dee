"""Face-recognition (FR) models: :mod:`.iresnet` (torch backbones, :func:`build_fr`), :mod:`.model`
(:class:`Preprocess`, :class:`FRModel`), :mod:`.onnx` (ONNX models), :mod:`.load` (checkpoints, config
entries); IJB-C template features come from :mod:`exfiqa.evaluation.templates`.

Conventions:
- Input: aligned faces as ``uint8`` ``(N, H, W, 3)`` **RGB** (112x112 for the released models), or an
  iterable of such batches; each model applies its own :class:`Preprocess`, so callers pass raw pixels.
- Embedding: ``e = [L2norm(f(x)), L2norm(f(hflip(x)))]``, ``(N, 2E)`` (``E`` = 512 released), norm
  sqrt(2), so the cosine similarity of two embeddings is ``dot(e_a, e_b) / 2`` (higher = more similar).
- IJB-C templates: media-averaged embeddings summed per template, L2-normalised
  (:func:`template_embeddings`); template quality = min over its images.

Architectures (key names and hyper-parameters read from the released code, no code taken from it):
``"iresnet"`` (ArcFace, ElasticFace; insightface arcface_torch, BN eps 1e-5, ``features`` BN1d weight
frozen at 1), ``"magface"`` (the same keys, BN eps 2e-5, trainable ``features`` weight; released as
``{"state_dict": ...}`` under ``features.module.``, MagLinear head ignored with a warning) and
``"curricularface"`` (face.evoLVe IR: ``input_layer``, ``body.k`` ``bottleneck_IR`` units,
``output_layer`` ending in an affine-free BN1d). Both backbones split into ``forward_features`` and
``forward_head`` (dropout, fc, BN1d) for SER-FIQ-style stochastic embeddings.

Preprocessing of the released models (what their own evaluation code feeds): ArcFace, ElasticFace and
CurricularFace: RGB ``(x/255 - 0.5) / 0.5``; MagFace: **BGR in [0, 1]** (cv2.imread + ToTensor).

Config entries (``fr_models``; :func:`load_fr_entry`): a checkpoint ending in ``.onnx`` is run by
onnxruntime and must state its preprocessing; torch entries may override the released one::

    fr_models:
      sface:                              # OpenCV Zoo SFace, 128-d
        checkpoint: fr/face_recognition_sface_2021dec.onnx
        preprocess: {channel_order: RGB, scale: 1, mean: [0, 0, 0], std: [1, 1, 1]}
        providers: [CPUExecutionProvider] # optional; default CPU, CUDA first when device is cuda
"""

from exfiqa.evaluation.templates import insightface_template_embeddings, template_embeddings
from exfiqa.models.fr.iresnet import Arch, PointwiseConv, build_fr
from exfiqa.models.fr.load import (
    TORCH_ENTRY_ARGS,
    effective_preprocess,
    load_fr,
    load_fr_entry,
    save_fr,
    strip_wrapper_prefixes,
)
from exfiqa.models.fr.model import (
    ARCFACE,
    CURRICULARFACE,
    FR_MODELS,
    MAGFACE,
    FRModel,
    Preprocess,
    magface_quality,
)
from exfiqa.models.fr.onnx import OnnxFRModel, OnnxModelError, load_onnx_fr

__all__ = [
    "ARCFACE",
    "CURRICULARFACE",
    "FR_MODELS",
    "MAGFACE",
    "TORCH_ENTRY_ARGS",
    "Arch",
    "FRModel",
    "OnnxFRModel",
    "OnnxModelError",
    "PointwiseConv",
    "Preprocess",
    "build_fr",
    "effective_preprocess",
    "insightface_template_embeddings",
    "load_fr",
    "load_fr_entry",
    "load_onnx_fr",
    "magface_quality",
    "save_fr",
    "strip_wrapper_prefixes",
    "template_embeddings",
]
