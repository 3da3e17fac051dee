"""Face-recognition (FR) model zoo and embedding extraction.

Modules: :mod:`~exfiqa.models.fr.iresnet` (the torch backbones), :mod:`~exfiqa.models.fr.model`
(:class:`Preprocess`, :class:`FRModel`), :mod:`~exfiqa.models.fr.onnx` (ONNX models),
:mod:`~exfiqa.models.fr.load` (checkpoints and config entries), :mod:`~exfiqa.evaluation.templates`
(IJB-C template features). The names callers use are importable from here; the backbones' building
blocks from their modules.

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
  (:func:`exfiqa.evaluation.quality.template_quality`).

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

from exfiqa.evaluation.templates import insightface_template_embeddings, template_embeddings
from exfiqa.models.fr.iresnet import (
    Arch,
    PointwiseConv,
    build_fr,
)
from exfiqa.models.fr.load import (
    TORCH_ENTRY_ARGS,
    detect_layout,
    effective_preprocess,
    infer_architecture,
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
    "detect_layout",
    "effective_preprocess",
    "infer_architecture",
    "insightface_template_embeddings",
    "load_fr",
    "load_fr_entry",
    "load_onnx_fr",
    "magface_quality",
    "save_fr",
    "strip_wrapper_prefixes",
    "template_embeddings",
]
