"""SynthFace: the procedural face world that lets the whole study run offline.

What is rendered. Cartoon-like but structured faces, 112x112 RGB uint8, aligned like the ArcFace
crops: eye centres, nose tip and mouth corners near the ArcFace 5-point template. Each image is
drawn with vectorised soft-edged shapes (numpy only): background (colour ramp, an edge, sensor
noise), shoulders, hair (back volume and fringe with a hairline), ears, neck, face oval with jaw
taper and shading, optional beard, brows, eyes (lash line, sclera, iris, pupil, highlight), nose
(bridge and under-nose shading, nostrils) and lips (smile, open mouth, teeth). The five landmarks
actually rendered (after pose and expression) are returned with every image.

What carries identity. A parameter vector drawn from (world seed, identity index): face shape (oval
axes, jaw taper), eye spacing/height/size/shape/tilt, brow shape, nose and mouth geometry, hair
style and hairline, ears, beard, age group (child faces are rounder with larger eyes, smaller nose
and mouth, a higher forehead) and a per-identity skin texture (moles, freckles, pigment blobs,
scars, birthmarks at identity-specific places). Skin, hair, iris and lip colours come from small
shared palettes, so many identities share colours and per-image illumination shifts them further:
colour alone does not identify; geometry and texture do.

Nuisance per image. Small in-plane rotation (about 1 degree), small yaw-like shift and
foreshortening of the features, scale and shift (under 2% and 1 px), expression (smile, open
mouth, raised brows, eye openness, rare blinks), mild illumination (brightness +-10%, a faint colour
cast and directional gradient), background and sensor noise. Large pose and bad light are
degradations (below), with a severity, not nuisance.

Degradations. Each has a ground-truth severity in [0, 1] (0 = clean, effect monotone in severity):
``gaussian_blur`` (sigma up to 5 px), ``motion_blur`` (up to 25 px), ``low_resolution``
(down to 10 px and back), ``jpeg`` (quality 90 down to 5), ``gaussian_noise`` (sigma up to 60/255),
``underexposure``, ``overexposure``, occlusions (``sunglasses``, ``mask``, ``blocks``) and ``pose``
(strong yaw and roll, applied at render time). A degraded image carries one or two of them; its
combined severity is ``1 - prod(1 - s_i)``.

Reproducibility. Everything derives from ``numpy.random.SeedSequence(seed, spawn_key=...)`` keyed
by identity and image index, and the batched renderer uses element-wise arithmetic only, so image
``i`` of identity ``k`` is byte-identical whatever the batch composition or worker count.

This world exists to exercise the pipeline (training small FR and FIQA models, EDC curves,
early-exit analysis) without any download. Numbers measured on it are not the paper's numbers and
say nothing about real face images.

Conventions: pixel centres are at integer coordinates (x = column, y = row), as in the ArcFace
template and in ``skimage.transform``; landmarks are (x, y) float32 in the order left eye, right
eye, nose tip, left mouth corner, right mouth corner (image left/right).
"""

from __future__ import annotations

import dataclasses
import io
import math
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from exfiqa.readers.align import ARCFACE_TEMPLATE  # the one template (re-exported here)

__all__ = [
    "ARCFACE_TEMPLATE",
    "DEGRADATIONS",
    "IdentityParams",
    "Nuisance",
    "SynthBatch",
    "WorldSpec",
    "combined_severity",
    "degrade",
    "frontal_nuisance",
    "generate",
    "generate_items",
    "loose_crop",
    "render",
    "sample_identities",
    "sample_nuisance",
    "strong_pose",
]

DEGRADATIONS: tuple[str, ...] = (
    "gaussian_blur",
    "motion_blur",
    "low_resolution",
    "jpeg",
    "gaussian_noise",
    "underexposure",
    "overexposure",
    "sunglasses",
    "mask",
    "blocks",
    "pose",
)
"""All degradation kinds. ``pose`` is applied at render time; the others by :func:`degrade`."""

# Two degradations of one image come from different groups; they are applied in this group order
# (a camera-like pipeline: scene, optics, exposure, sensor, codec).
_GROUP = {
    "pose": 0,
    "sunglasses": 1,
    "mask": 1,
    "blocks": 1,
    "gaussian_blur": 2,
    "motion_blur": 2,
    "low_resolution": 2,
    "underexposure": 3,
    "overexposure": 3,
    "gaussian_noise": 4,
    "jpeg": 5,
}

# Seed-sequence spawn-key tags: (tag, identity[, image]).
# A sample's generator yields, in order: its nuisance (a fixed number of draws), its degradation
# plan (a fixed number of draws), then the random parts of its degradations.
_TAG_IDENTITY, _TAG_SAMPLE, _TAG_CROP = 0, 1, 2

_F32 = np.float32
_TEX = 112  # texture maps cover the canonical 112x112 frame ...
_TEX_RES = 2  # ... at two texels per pixel, looked up nearest-neighbour
_CANON_CENTRE = np.array([56.0, 62.0])  # centre of in-plane rotation and scaling (canonical)

# Shared palettes (sRGB in [0, 1]). Few entries on purpose: colour must not identify.
SKIN_PALETTE = np.array(
    [
        [0.93, 0.78, 0.67],
        [0.86, 0.67, 0.53],
        [0.74, 0.54, 0.40],
        [0.56, 0.39, 0.27],
        [0.38, 0.26, 0.18],
    ]
)
HAIR_PALETTE = np.array(
    [
        [0.07, 0.06, 0.06],
        [0.24, 0.15, 0.09],
        [0.45, 0.31, 0.18],
        [0.78, 0.64, 0.40],
    ]
)
_HAIR_WEIGHTS = np.array([0.4, 0.3, 0.18, 0.12])
_IRIS_PALETTE = np.array(
    [[0.30, 0.18, 0.10], [0.14, 0.09, 0.06], [0.30, 0.45, 0.62], [0.33, 0.45, 0.28]]
)
_LIP_TINT = np.array([[0.62, 0.26, 0.28], [0.70, 0.36, 0.36], [0.52, 0.22, 0.25]])


# --------------------------------------------------------------------------------------------
# Specification and data containers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldSpec:
    """Parameters of a SynthFace world.

    Attributes:
        seed: world seed; identities and images derive from it.
        n_identities: identities that :func:`generate` renders by default (ids 0..n-1); any
            non-negative id can be rendered, e.g. held-out identities n, n+1, ...
        images_per_identity: default number of images drawn per identity.
        degradation_prob: probability that an image carries at least one degradation.
        second_degradation_prob: probability of a second degradation (of another group) given one.
        kinds: degradation kinds that may be drawn (subset of :data:`DEGRADATIONS`).
        kind_weights: relative weights of ``kinds`` (None = uniform).
        severity_range: (low, high) of the uniform severity draw, within [0, 1].
        child_fraction: fraction of child identities.
        image_size: side of the aligned images (the renderer's canonical frame is 112; other sizes
            scale it).
    """

    seed: int = 0
    n_identities: int = 200
    images_per_identity: int = 20
    degradation_prob: float = 0.5
    second_degradation_prob: float = 0.25
    kinds: tuple[str, ...] = DEGRADATIONS
    kind_weights: tuple[float, ...] | None = None
    severity_range: tuple[float, float] = (0.05, 1.0)
    child_fraction: float = 0.15
    image_size: int = 112

    def __post_init__(self) -> None:
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"WorldSpec.seed must be a non-negative int, got {self.seed!r}")
        if self.n_identities < 1 or self.images_per_identity < 1:
            raise ValueError(
                "WorldSpec.n_identities and images_per_identity must be >= 1, got "
                f"{self.n_identities}, {self.images_per_identity}"
            )
        for name in ("degradation_prob", "second_degradation_prob", "child_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"WorldSpec.{name} must be in [0, 1], got {value}")
        unknown = [k for k in self.kinds if k not in DEGRADATIONS]
        if unknown or not self.kinds:
            raise ValueError(
                f"WorldSpec.kinds must be a non-empty subset of {DEGRADATIONS}, unknown: {unknown}"
            )
        if self.kind_weights is not None and (
            len(self.kind_weights) != len(self.kinds)
            or min(self.kind_weights) < 0
            or sum(self.kind_weights) <= 0
        ):
            raise ValueError(
                "WorldSpec.kind_weights must be non-negative, not all zero, one per kind "
                f"({len(self.kinds)}), got {self.kind_weights}"
            )
        lo, hi = self.severity_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(
                f"WorldSpec.severity_range must satisfy 0 <= lo <= hi <= 1, got {lo, hi}"
            )
        if self.image_size < 32:
            raise ValueError(f"WorldSpec.image_size must be >= 32, got {self.image_size}")


_R = TypeVar("_R", bound="_Rows")


class _Rows:
    """Mixin for struct-of-arrays dataclasses: length, row selection, concatenation."""

    def __len__(self) -> int:
        return len(getattr(self, dataclasses.fields(self)[0].name))  # type: ignore[arg-type]

    def take(self: _R, index: ArrayLike) -> _R:
        """Rows ``index`` (an int array or a boolean mask) as a new instance."""
        idx = np.asarray(index)
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields})  # type: ignore[type-var]

    @classmethod
    def concat(cls: type[_R], parts: Sequence[_R]) -> _R:
        """Concatenate instances row-wise."""
        if not parts:
            raise ValueError(f"{cls.__name__}.concat needs at least one part")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields})


@dataclass(frozen=True)
class IdentityParams(_Rows):
    """Identity parameters, one row per identity (struct of arrays).

    Geometry is in canonical coordinates: pixels of a frontal, upright, aligned 112x112 face.
    Colours are sRGB in [0, 1]. ``age_group`` is 0 for adults and 1 for children.
    """

    identity: NDArray[np.int64]
    age_group: NDArray[np.int8]
    skin_index: NDArray[np.int8]
    hair_index: NDArray[np.int8]
    skin: NDArray[np.float64]  # (K, 3)
    hair: NDArray[np.float64]  # (K, 3)
    iris: NDArray[np.float64]  # (K, 3)
    lip: NDArray[np.float64]  # (K, 3)
    face_cx: NDArray[np.float64]
    face_cy: NDArray[np.float64]
    face_a: NDArray[np.float64]  # half width
    face_bt: NDArray[np.float64]  # half height above the centre
    face_bb: NDArray[np.float64]  # half height below the centre
    jaw: NDArray[np.float64]  # taper of the lower face, 0 = ellipse
    ear_y: NDArray[np.float64]
    ear_a: NDArray[np.float64]
    ear_b: NDArray[np.float64]
    neck_w: NDArray[np.float64]
    hair_style: NDArray[np.int8]  # 0 bald, 1 short, 2 side part, 3 long, 4 bangs
    hair_w: NDArray[np.float64]  # extra width of the hair volume
    hair_top: NDArray[np.float64]  # extra height of the hair volume
    hair_len: NDArray[np.float64]  # lowest row of the side hair
    hairline: NDArray[np.float64]  # hairline row at the centre
    hairline_curv: NDArray[np.float64]
    hairline_part: NDArray[np.float64]
    ears_covered: NDArray[np.float64]
    eye_cx: NDArray[np.float64]
    eye_dx: NDArray[np.float64]  # half the inter-eye distance
    eye_y: NDArray[np.float64]
    eye_dy: NDArray[np.float64]  # left eye lower by eye_dy, right eye higher
    eye_w: NDArray[np.float64]  # half width of the eye opening
    eye_h: NDArray[np.float64]  # half height of the eye opening
    eye_tilt: NDArray[np.float64]  # radians, outer corners up if positive
    iris_r: NDArray[np.float64]
    brow_gap: NDArray[np.float64]
    brow_w: NDArray[np.float64]
    brow_th: NDArray[np.float64]
    brow_arch: NDArray[np.float64]
    brow_slope: NDArray[np.float64]
    brow_out: NDArray[np.float64]
    brow_density: NDArray[np.float64]
    nose_x: NDArray[np.float64]
    nose_y: NDArray[np.float64]
    nose_w: NDArray[np.float64]
    nostril_a: NDArray[np.float64]
    nostril_b: NDArray[np.float64]
    mouth_x: NDArray[np.float64]
    mouth_y: NDArray[np.float64]
    mouth_w: NDArray[np.float64]  # half width (corner to centre)
    lip_up: NDArray[np.float64]
    lip_lo: NDArray[np.float64]
    beard_kind: NDArray[np.int8]  # 0 none, 1 stubble, 2 moustache, 3 goatee, 4 full
    beard_density: NDArray[np.float64]
    tex_seed: NDArray[np.uint64]


@dataclass(frozen=True)
class Nuisance(_Rows):
    """Per-image nuisance parameters (struct of arrays, one row per image).

    ``roll`` is in degrees (positive = counter-clockwise on screen), ``yaw`` in [-1, 1] (positive =
    the face turns toward image right), ``shift`` in output pixels, ``mouth_open``/``brow_raise``/
    ``hairline_shift`` in canonical pixels, ``smile`` in about [-0.3, 1], ``eye_open`` a factor,
    ``brightness``/``cast`` multiplicative gains, ``light_angle`` in radians, ``bg_color`` and
    ``bg_gradient`` a linear colour ramp over the canvas, ``bg_edge`` (offset, angle, strength of a
    straight edge in the background) with colour change ``bg_edge_color``, ``noise_sigma`` on the
    [0, 1] scale, ``cloth_color`` the colour of the shoulders.
    """

    roll: NDArray[np.float64]
    yaw: NDArray[np.float64]
    scale: NDArray[np.float64]
    shift: NDArray[np.float64]  # (N, 2)
    mouth_open: NDArray[np.float64]
    smile: NDArray[np.float64]
    brow_raise: NDArray[np.float64]
    eye_open: NDArray[np.float64]
    hairline_shift: NDArray[np.float64]
    brightness: NDArray[np.float64]
    cast: NDArray[np.float64]  # (N, 3)
    light_angle: NDArray[np.float64]
    light_strength: NDArray[np.float64]
    bg_color: NDArray[np.float64]  # (N, 3) at the canvas centre
    bg_gradient: NDArray[np.float64]  # (N, 2, 3): change per half canvas along x, along y
    bg_edge: NDArray[np.float64]  # (N, 3): offset in [-1, 1], angle (rad), strength in [0, 1]
    bg_edge_color: NDArray[np.float64]  # (N, 3)
    noise_sigma: NDArray[np.float64]
    noise_seed: NDArray[np.uint64]
    cloth_color: NDArray[np.float64]  # (N, 3)


@dataclass(frozen=True)
class SynthBatch(_Rows):
    """Rendered images with their ground truth.

    Attributes:
        images: (N, H, W, 3) uint8 RGB.
        landmarks: (N, 5, 2) float32 (x, y) of the rendered landmarks in image coordinates.
        identity: (N,) int64 identity index; image_index: (N,) int64 index within the identity.
        age_group: (N,) int8, 0 adult, 1 child.
        degradation: (N,) str: "none", a kind, or two kinds joined by "+" (in application order).
        kinds: (N, 2) str, the one or two kinds ("" where absent); severities: (N, 2) float32.
        severity: (N,) float32 combined severity ``1 - prod(1 - s_i)``; 0 for clean images.
        yaw: (N,) float32 in [-1, 1]; roll: (N,) float32 degrees (as rendered, strong pose included).
        crop_transform: (N, 2, 3) float32 map from aligned 112-frame coordinates to image
            coordinates (identity-like for aligned images, the loose-crop similarity otherwise).

    The full nuisance of an item (expression, light, background) is
    ``sample_nuisance(spec.seed, identity, image_index)``; strong pose changes only yaw and roll,
    which are recorded here as rendered.
    """

    images: NDArray[np.uint8]
    landmarks: NDArray[np.float32]
    identity: NDArray[np.int64]
    image_index: NDArray[np.int64]
    age_group: NDArray[np.int8]
    degradation: NDArray[np.str_]
    kinds: NDArray[np.str_]
    severities: NDArray[np.float32]
    severity: NDArray[np.float32]
    yaw: NDArray[np.float32]
    roll: NDArray[np.float32]
    crop_transform: NDArray[np.float32]


def combined_severity(severities: ArrayLike) -> NDArray[np.float32]:
    """Combined severity ``1 - prod(1 - s_i)`` over the last axis (0 = clean, 1 = destroyed)."""
    s = np.asarray(severities, dtype=np.float64)
    if s.size and (np.nanmin(s) < 0 or np.nanmax(s) > 1):
        raise ValueError("severities must lie in [0, 1]")
    return (1.0 - np.prod(1.0 - s, axis=-1)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Random parameters
# --------------------------------------------------------------------------------------------


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key))
    )


def _identity_row(seed: int, k: int, child_fraction: float) -> dict[str, float]:
    """Draw the parameters of identity ``k`` (canonical 112 frame)."""
    r = _rng(seed, _TAG_IDENTITY, k)
    u = r.random(64)  # fixed-length draw: adding a parameter later does not shift the others
    n = r.standard_normal(24)
    child = bool(u[0] < child_fraction)

    def uni(i: int, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(u[i])

    def nrm(i: int, mean: float, sd: float, lim: float = 2.2) -> float:
        return mean + sd * float(np.clip(n[i], -lim, lim))

    skin_i = int(u[1] * len(SKIN_PALETTE))
    hair_i = int(np.searchsorted(np.cumsum(_HAIR_WEIGHTS), u[2] * _HAIR_WEIGHTS.sum(), "right"))
    hair_i = min(hair_i, len(HAIR_PALETTE) - 1)
    iris_i = int(u[3] * len(_IRIS_PALETTE))
    lip_i = int(u[4] * len(_LIP_TINT))
    skin = SKIN_PALETTE[skin_i]
    lip = 0.35 * skin + 0.65 * _LIP_TINT[lip_i]
    if child:
        style_p = np.array([0.0, 0.35, 0.2, 0.25, 0.2])
    else:
        style_p = np.array([0.07, 0.33, 0.25, 0.22, 0.13])
    style = int(np.searchsorted(np.cumsum(style_p), u[5], "right"))
    style = min(style, 4)

    row: dict[str, float] = {
        "identity": k,
        "age_group": int(child),
        "skin_index": skin_i,
        "hair_index": hair_i,
    }
    row.update(
        face_cx=nrm(0, 56.0, 0.7),
        eye_cx=nrm(1, 55.91, 0.6),
        eye_dy=nrm(2, 0.1, 0.5),
        nose_x=nrm(3, 56.03, 0.6),
        mouth_x=nrm(4, 56.14, 0.6),
    )
    if child:
        row.update(
            face_cy=nrm(5, 58.0, 1.5),
            face_a=uni(6, 42.0, 47.0),
            face_bt=uni(7, 56.0, 62.0),
            face_bb=uni(8, 46.0, 51.0),
            jaw=uni(9, 0.02, 0.15),
            eye_dx=nrm(6, 17.0, 1.0),
            eye_y=nrm(7, 53.0, 1.2),
            eye_w=uni(10, 6.6, 8.2),
            eye_h=uni(11, 3.3, 4.4),
            iris_r=uni(12, 3.7, 4.5),
            brow_gap=uni(13, 9.5, 13.0),
            brow_th=uni(14, 1.3, 2.2),
            brow_density=uni(15, 0.45, 0.7),
            nose_y=nrm(8, 71.0, 1.4),
            nose_w=uni(16, 3.0, 4.3),
            mouth_y=nrm(9, 90.5, 1.5),
            mouth_w=nrm(10, 12.3, 1.1),
            lip_up=uni(17, 1.8, 2.8),
            lip_lo=uni(18, 2.4, 3.6),
        )
    else:
        row.update(
            face_cy=nrm(5, 59.5, 1.8),
            face_a=uni(6, 37.0, 45.0),
            face_bt=uni(7, 49.0, 57.0),
            face_bb=uni(8, 48.0, 56.0),
            jaw=uni(9, 0.08, 0.42),
            eye_dx=nrm(6, 17.62, 1.2),
            eye_y=nrm(7, 51.6, 1.3),
            eye_w=uni(10, 5.4, 7.4),
            eye_h=uni(11, 2.5, 3.8),
            iris_r=uni(12, 2.9, 3.7),
            brow_gap=uni(13, 7.5, 11.5),
            brow_th=uni(14, 1.8, 3.8),
            brow_density=uni(15, 0.6, 0.95),
            nose_y=nrm(8, 71.74, 1.8),
            nose_w=uni(16, 3.6, 6.2),
            mouth_y=nrm(9, 92.28, 1.8),
            mouth_w=nrm(10, 14.59, 1.5),
            lip_up=uni(17, 2.0, 3.8),
            lip_lo=uni(18, 2.6, 5.0),
        )
    row.update(
        ear_y=row["eye_y"] + uni(19, 6.0, 13.0),
        ear_a=uni(20, 4.0, 6.5),
        ear_b=uni(21, 9.0, 13.0),
        neck_w=uni(22, 0.36, 0.5),
        eye_tilt=math.radians(uni(23, -7.0, 9.0)),
        brow_w=uni(24, 7.0, 10.5),
        brow_arch=uni(25, 0.3, 3.2),
        brow_slope=uni(26, -1.6, 1.6),
        brow_out=uni(27, -0.5, 2.5),
        nostril_a=uni(28, 1.5, 2.5),
        nostril_b=uni(29, 0.9, 1.5),
    )
    # Hair: style means, then continuous variation.
    top = row["face_cy"] - row["face_bt"]
    brow_y = row["eye_y"] - row["brow_gap"]
    hair_len = {
        0: 0.0,
        1: uni(30, 50, 62),
        2: uni(30, 58, 78),
        3: uni(30, 100, 140),
        4: uni(30, 60, 110),
    }
    hairline = {
        0: -50.0,
        1: top + uni(31, 8, 17),
        2: top + uni(31, 8, 16),
        3: top + uni(31, 7, 16),
        4: brow_y - uni(31, 3, 9),
    }
    row.update(
        hair_style=style,
        hair_w=uni(32, 1.0, 7.5) + (2.0 if style == 3 else 0.0),
        hair_top=uni(33, 2.0, 11.0),
        hair_len=hair_len[style],
        hairline=min(hairline[style], brow_y - 3.0),
        hairline_curv=uni(34, 3.0, 14.0) if style != 4 else uni(34, 0.0, 4.0),
        hairline_part=uni(35, -7.0, 7.0) if style == 2 else uni(35, -2.0, 2.0),
        ears_covered=float(style in (3, 4) and u[36] < 0.85),
    )
    beard_kind = 0
    if not child and u[37] < 0.25:
        beard_kind = 1 + int(u[38] * 4)
    row.update(
        beard_kind=beard_kind,
        beard_density=uni(39, 0.2, 0.35) if beard_kind == 1 else uni(39, 0.55, 0.95),
        tex_seed=int(r.integers(0, 2**63)),
    )
    row["_skin"] = skin  # type: ignore[assignment]
    row["_hair"] = HAIR_PALETTE[hair_i]  # type: ignore[assignment]
    row["_iris"] = _IRIS_PALETTE[iris_i]  # type: ignore[assignment]
    row["_lip"] = lip  # type: ignore[assignment]
    return row


def sample_identities(
    identities: int | ArrayLike, seed: int, *, child_fraction: float = 0.15
) -> IdentityParams:
    """Identity parameters drawn from the world seed.

    Args:
        identities: ``n`` for identities ``0..n-1``, or an array of identity indices.
        seed: world seed. Identity ``k`` depends only on ``(seed, k, child_fraction)``.
        child_fraction: probability that an identity is a child.
    """
    ids = (
        np.arange(identities)
        if isinstance(identities, (int, np.integer))
        else np.asarray(identities)
    )
    if ids.ndim != 1 or (ids.size and (ids.min() < 0 or not np.issubdtype(ids.dtype, np.integer))):
        raise ValueError(
            f"identities must be a count or a 1-d array of non-negative ints, got {ids!r}"
        )
    rows = [_identity_row(seed, int(k), child_fraction) for k in ids]
    out: dict[str, np.ndarray] = {}
    for f in dataclasses.fields(IdentityParams):
        key = "_" + f.name if f.name in ("skin", "hair", "iris", "lip") else f.name
        dtype = {
            "identity": np.int64,
            "age_group": np.int8,
            "skin_index": np.int8,
            "hair_index": np.int8,
            "hair_style": np.int8,
            "beard_kind": np.int8,
            "tex_seed": np.uint64,
        }.get(f.name, np.float64)
        vals = [row[key] for row in rows]
        out[f.name] = (
            np.asarray(vals, dtype=dtype)
            if vals
            else np.zeros((0, 3) if key[0] == "_" else 0, dtype)
        )
    return IdentityParams(**out)


def _nuisance_row(r: np.random.Generator) -> dict[str, object]:
    """One image's nuisance. Pose, framing and light vary only a little (as in aligned, mostly
    frontal collections): with the wide ranges of an earlier version, the small demo FR models
    spent their capacity on nuisance and failed on clean pairs at FMR 1e-3, so degradations could
    not be what separates good from bad samples."""
    u = r.random(24)
    n = r.standard_normal(4)
    base = r.random(3) * 0.8 + 0.1
    base = base.mean() + (base - base.mean()) * r.uniform(0.2, 0.8)  # muted colours
    slope = r.uniform(-0.15, 0.15, (2, 3))
    warm = -0.05 + 0.1 * u[8]
    tint = -0.008 + 0.016 * u[9]
    return {
        "roll": float(np.clip(1.0 * n[0], -2.4, 2.4)),
        "yaw": -0.07 + 0.14 * u[0],
        "scale": 0.984 + 0.032 * u[1],
        "shift": np.clip(0.3 * n[1:3], -0.7, 0.7),
        "mouth_open": 0.0 if u[2] < 0.65 else 0.3 + 2.7 * u[3],
        "smile": 0.0 if u[4] < 0.4 else -0.18 + 0.78 * u[5],
        "brow_raise": 0.0 if u[6] < 0.6 else 1.5 * u[7],
        "eye_open": 0.15 if u[10] < 0.03 else 0.8 + 0.3 * u[11],
        "hairline_shift": float(np.clip(1.5 * n[3], -3.0, 3.0)),
        "brightness": 0.9 + 0.2 * u[12],
        "cast": np.array([1 + warm, 1 + tint, 1 - warm]),
        "light_angle": 2 * math.pi * u[13],
        "light_strength": 0.09 * u[14],
        "bg_color": base,
        "bg_gradient": slope,
        "bg_edge": np.array([-0.8 + 1.6 * u[15], 2 * math.pi * u[16], float(u[17] < 0.5)]),
        "bg_edge_color": r.uniform(-0.3, 0.3, 3),
        "noise_sigma": (0.5 + 2.0 * u[18]) / 255.0,
        "noise_seed": int(r.integers(0, 2**63)),
        "cloth_color": r.random(3) * 0.8 + 0.1,
    }


def _stack_nuisance(rows: list[dict[str, object]]) -> Nuisance:
    out = {}
    for f in dataclasses.fields(Nuisance):
        dtype = np.uint64 if f.name == "noise_seed" else np.float64
        out[f.name] = np.asarray([row[f.name] for row in rows], dtype=dtype)
    return Nuisance(**out)


def sample_nuisance(seed: int, identity: ArrayLike, image: ArrayLike) -> Nuisance:
    """Nuisance of image ``image[j]`` of identity ``identity[j]`` (depends only on the triple)."""
    ids, imgs = _check_items(identity, image)
    return _stack_nuisance(
        [_nuisance_row(_rng(seed, _TAG_SAMPLE, k, i)) for k, i in zip(ids, imgs, strict=True)]
    )


def frontal_nuisance(n: int) -> Nuisance:
    """``n`` rows of canonical nuisance: frontal, neutral expression, even light, grey background,
    no sensor noise. Landmarks of such renders equal the identity's canonical landmarks."""
    row = {
        "roll": 0.0,
        "yaw": 0.0,
        "scale": 1.0,
        "shift": np.zeros(2),
        "mouth_open": 0.0,
        "smile": 0.0,
        "brow_raise": 0.0,
        "eye_open": 1.0,
        "hairline_shift": 0.0,
        "brightness": 1.0,
        "cast": np.ones(3),
        "light_angle": 0.0,
        "light_strength": 0.0,
        "bg_color": np.full(3, 0.5),
        "bg_gradient": np.zeros((2, 3)),
        "bg_edge": np.zeros(3),
        "bg_edge_color": np.zeros(3),
        "noise_sigma": 0.0,
        "noise_seed": 0,
        "cloth_color": np.full(3, 0.3),
    }
    return _stack_nuisance([row] * n)


def _check_items(identity: ArrayLike, image: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    ids = np.atleast_1d(np.asarray(identity))
    imgs = np.atleast_1d(np.asarray(image))
    if ids.shape != imgs.shape or ids.ndim != 1:
        raise ValueError(
            f"identity and image must be 1-d and equal length, got {ids.shape}, {imgs.shape}"
        )
    for name, a in (("identity", ids), ("image", imgs)):
        if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0):
            raise ValueError(f"{name} indices must be non-negative integers, got {a[:5]!r}...")
    return ids.astype(np.int64), imgs.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Identity texture maps (per identity, cached)
# --------------------------------------------------------------------------------------------

_TEX_CACHE: dict[tuple[float, ...], np.ndarray] = {}
# The parameters a texture depends on (its cache key).
_TEX_FIELDS = (
    "tex_seed",
    "face_cx",
    "face_cy",
    "face_a",
    "face_bt",
    "face_bb",
    "eye_cx",
    "eye_dx",
    "nose_x",
    "nose_y",
    "mouth_x",
    "mouth_y",
    "mouth_w",
    "lip_up",
    "lip_lo",
    "beard_kind",
    "beard_density",
)
_TEX_CACHE_MAX = 1024


class _Splatter:
    """Adds small Gaussian spots to a texture map, touching only the pixels near each spot."""

    def __init__(self, res: int) -> None:
        self.res = res  # texels per canonical pixel
        self.n = _TEX * res

    def add(self, arr: np.ndarray, x: float, y: float, radius: float, amp: float) -> None:
        """``arr += amp * exp(-d^2 / radius^2)`` around canonical (x, y)."""
        res = self.res
        reach = 3.0 * radius
        c0 = max(0, int(math.floor((x - reach) * res)))
        c1 = min(self.n, int(math.ceil((x + reach) * res)) + 1)
        r0 = max(0, int(math.floor((y - reach) * res)))
        r1 = min(self.n, int(math.ceil((y + reach) * res)) + 1)
        if c0 >= c1 or r0 >= r1:
            return
        gx = np.arange(c0, c1, dtype=_F32) * _F32(1.0 / res) - _F32(x)
        gy = np.arange(r0, r1, dtype=_F32)[:, None] * _F32(1.0 / res) - _F32(y)
        e = gx * gx + gy * gy
        e *= _F32(-1.0 / (radius * radius))
        np.exp(e, out=e)
        e *= _F32(amp)
        arr[r0:r1, c0:c1] += e


def _identity_texture(p: IdentityParams, j: int) -> np.ndarray:
    """Texture maps of row ``j``: (4, 2T, 2T) float32 = skin luminance, skin redness, hair
    modulation, beard alpha; texel (r, c) sits at canonical (c / 2, r / 2).

    Depends only on the row's parameters (deterministic).
    """
    key = tuple(float(getattr(p, name)[j]) for name in _TEX_FIELDS)
    hit = _TEX_CACHE.get(key)
    if hit is not None:
        return hit
    r = np.random.default_rng(int(p.tex_seed[j]))
    sp = _Splatter(_TEX_RES)
    n = sp.n
    g = np.arange(n, dtype=_F32) * _F32(1.0 / _TEX_RES)
    gx, gy = g[None, :], g[:, None]
    cx, cy, a = float(p.face_cx[j]), float(p.face_cy[j]), float(p.face_a[j])
    bt, bb = float(p.face_bt[j]), float(p.face_bb[j])
    lum = np.zeros((n, n), _F32)
    red = np.zeros((n, n), _F32)
    # Moles: small dark spots anywhere on the face.
    for _ in range(1 + min(r.poisson(2.5), 7)):
        x = cx + a * r.uniform(-0.8, 0.8)
        y = cy + r.uniform(-0.6 * bt, 0.75 * bb)
        sp.add(lum, x, y, r.uniform(0.6, 1.6), -r.uniform(0.25, 0.55))
    # Pigment blobs: large, faint, lighter or darker.
    for _ in range(r.integers(4, 8)):
        x = cx + a * r.uniform(-0.85, 0.85)
        y = cy + r.uniform(-0.8 * bt, 0.8 * bb)
        sp.add(lum, x, y, r.uniform(4.0, 14.0), r.uniform(-0.11, 0.11))
    # Freckles around nose and cheeks.
    if r.random() < 0.3:
        for _ in range(r.integers(15, 41)):
            x = p.nose_x[j] + r.normal(0, 15)
            y = p.nose_y[j] - 6 + r.normal(0, 5)
            sp.add(lum, x, y, r.uniform(0.5, 0.9), -r.uniform(0.08, 0.18))
    # Scar: a thin light line.
    if r.random() < 0.15:
        x0 = cx + a * r.uniform(-0.6, 0.6)
        y0 = cy + r.uniform(-0.5 * bt, 0.6 * bb)
        ang, length = r.uniform(0, math.pi), r.uniform(6, 15)
        dx, dy = math.cos(ang), math.sin(ang)
        t = np.clip((gx - x0) * dx + (gy - y0) * dy, 0, length)
        dist2 = (gx - x0 - t * dx) ** 2 + (gy - y0 - t * dy) ** 2
        lum += r.uniform(0.1, 0.2) * np.exp(-dist2 / 0.5)
    # Cheek blush and an occasional birthmark.
    blush = r.uniform(0.0, 0.1)
    for side in (-1, 1):
        sp.add(red, p.eye_cx[j] + side * p.eye_dx[j], p.nose_y[j] + 2, 10.0, blush)
    if r.random() < 0.1:
        x = cx + a * r.uniform(-0.7, 0.7)
        y = cy + r.uniform(-0.6 * bt, 0.6 * bb)
        strength = r.uniform(0.2, 0.35)
        for _ in range(3):
            rad = r.uniform(2.5, 6.0)
            sp.add(red, x + r.normal(0, 2), y + r.normal(0, 2), rad, strength / 2)
    np.minimum(red, 0.4, out=red)
    # Hair strands: oriented stripes with a slow wobble.
    phi = r.uniform(0, math.pi)
    lam1, lam2 = r.uniform(2.5, 5.0), r.uniform(10.0, 30.0)
    amp = r.uniform(0.08, 0.22)
    c_, s_ = math.cos(phi), math.sin(phi)
    proj = gx * _F32(c_) + gy * _F32(s_)
    wob = gy * _F32(c_) - gx * _F32(s_)
    phase = r.uniform(0, 6.3)
    hair = _F32(0.65 * amp) * np.sin(
        proj * _F32(2 * math.pi / lam1) + _F32(2.0) * np.sin(wob * _F32(2 * math.pi / lam2))
    )
    hair += _F32(0.35 * amp) * np.sin(proj * _F32(2 * math.pi / (lam1 * 2.7)) + _F32(phase))
    # Beard alpha.
    beard = np.zeros((n, n), _F32)
    kind = int(p.beard_kind[j])
    if kind:
        grain = _F32(0.65) + _F32(0.35) * r.random((n, n), dtype=_F32)
        mx, my, mw = float(p.mouth_x[j]), float(p.mouth_y[j]), float(p.mouth_w[j])
        ny = float(p.nose_y[j])

        def band(lo: np.ndarray | float, hi: np.ndarray | float, soft: float = 1.5) -> np.ndarray:
            return np.clip((gy - lo) / soft + 0.5, 0, 1) * np.clip((hi - gy) / soft + 0.5, 0, 1)

        tm = (gx - mx) / (mw + 2.0)
        low = my - float(p.lip_up[j]) + 0.6 + 2.5 * tm * tm
        thick = r.uniform(2.5, 5.0) * (1.0 - 0.6 * tm * tm)
        moustache = band(low - thick, low, soft=1.2) * np.clip(
            (1.0 - np.abs(tm)) * (mw + 2.0) / 1.5 + 0.5, 0, 1
        )
        chin = band(my + float(p.lip_lo[j]) + 1.0, 130.0) * np.clip(
            (0.85 * mw - np.abs(gx - mx)) / 1.5 + 0.5, 0, 1
        )
        full = band(ny + 2.0 + 0.12 * np.abs(gx - cx) ** 1.3 * 0.4, 130.0, soft=3.0)
        region = {1: full, 2: moustache, 3: np.maximum(moustache, chin), 4: full}[kind]
        beard = float(p.beard_density[j]) * region * grain
    tex = np.stack([lum, red, hair, beard]).astype(_F32)
    if len(_TEX_CACHE) >= _TEX_CACHE_MAX:
        _TEX_CACHE.clear()
    _TEX_CACHE[key] = tex
    return tex


# --------------------------------------------------------------------------------------------
# The batched renderer
# --------------------------------------------------------------------------------------------


def _col(a: ArrayLike) -> np.ndarray:
    """Per-sample scalars as float32 (B, 1, 1) for broadcasting over the pixel grid."""
    return np.asarray(a, dtype=_F32).reshape(-1, 1, 1)


def _rgb(a: ArrayLike) -> np.ndarray:
    """Per-sample colours (B, 3) as float32 (B, 3, 1, 1)."""
    return np.asarray(a, dtype=_F32).reshape(-1, 3, 1, 1)


def _cos(a: ArrayLike) -> np.ndarray:
    """Element-wise cosine through ``math`` (bit-stable whatever the array length)."""
    return np.array([math.cos(x) for x in np.ravel(a)], dtype=np.float64)


def _sin(a: ArrayLike) -> np.ndarray:
    """Element-wise sine through ``math`` (bit-stable whatever the array length)."""
    return np.array([math.sin(x) for x in np.ravel(a)], dtype=np.float64)


def _clip01(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0, out=x)


class _Canvas:
    """Float32 (B, 3, H, W) image plus per-sample canonical coordinates of every pixel."""

    def __init__(self, forward: np.ndarray, size: int) -> None:
        self.size = size
        self.forward = forward  # (B, 2, 3) canonical -> image
        lin = forward[:, :, :2]
        det = lin[:, 0, 0] * lin[:, 1, 1] - lin[:, 0, 1] * lin[:, 1, 0]
        self.px = np.sqrt(np.abs(det))  # output pixels per canonical pixel
        inv = np.empty_like(forward)
        inv[:, 0, 0] = lin[:, 1, 1] / det
        inv[:, 0, 1] = -lin[:, 0, 1] / det
        inv[:, 1, 0] = -lin[:, 1, 0] / det
        inv[:, 1, 1] = lin[:, 0, 0] / det
        t = forward[:, :, 2]
        inv[:, 0, 2] = -(inv[:, 0, 0] * t[:, 0] + inv[:, 0, 1] * t[:, 1])
        inv[:, 1, 2] = -(inv[:, 1, 0] * t[:, 0] + inv[:, 1, 1] * t[:, 1])
        g = np.arange(size, dtype=_F32)
        x, y = g[None, None, :], g[None, :, None]
        c = inv.astype(_F32)
        self.u = c[:, 0, 0, None, None] * x + (c[:, 0, 1, None, None] * y + c[:, 0, 2, None, None])
        self.v = c[:, 1, 0, None, None] * x + (c[:, 1, 1, None, None] * y + c[:, 1, 2, None, None])
        self.img = np.empty((len(forward), 3, size, size), dtype=_F32)
        self.scratch = np.empty_like(self.img)
        self.pxc = _col(self.px)

    def box(
        self, u0: np.ndarray, u1: np.ndarray, v0: np.ndarray, v1: np.ndarray
    ) -> tuple[slice, slice]:
        """Image rows and columns covering, for every sample, the canonical box [u0,u1]x[v0,v1].

        Shapes are evaluated inside such boxes only. Their coverage is exactly zero outside the
        canonical box, so a pixel's value does not depend on which samples share the batch.
        """
        f = self.forward
        xs, ys = [], []
        for cu in (u0, u1):
            for cv_ in (v0, v1):
                xs.append(f[:, 0, 0] * cu + f[:, 0, 1] * cv_ + f[:, 0, 2])
                ys.append(f[:, 1, 0] * cu + f[:, 1, 1] * cv_ + f[:, 1, 2])
        x, y = np.stack(xs), np.stack(ys)
        m = 2.0
        lo_x = int(min(self.size, max(0, math.floor(float(x.min()) - m))))
        hi_x = int(max(lo_x, min(self.size, math.ceil(float(x.max()) + m) + 1)))
        lo_y = int(min(self.size, max(0, math.floor(float(y.min()) - m))))
        hi_y = int(max(lo_y, min(self.size, math.ceil(float(y.max()) + m) + 1)))
        return slice(lo_y, hi_y), slice(lo_x, hi_x)

    def patch(self, u0: np.ndarray, u1: np.ndarray, v0: np.ndarray, v1: np.ndarray) -> _Patch:
        """A contiguous working copy of the image over :meth:`box` (commit it when done)."""
        return _Patch(self, *self.box(u0, u1, v0, v1))

    def blend(self, alpha: np.ndarray, color: np.ndarray) -> None:
        """Alpha-composite ``color`` ((B,3,1,1) or (B,3,H,W)) over the whole canvas."""
        img, tmp = self.img, self.scratch
        np.subtract(color, img, out=tmp)
        tmp *= alpha[:, None]
        img += tmp


class _Patch:
    """Contiguous copies of the canvas coordinates and image over a box (numpy runs several times
    faster on contiguous arrays than on strided views)."""

    def __init__(self, cv: _Canvas, rows: slice, cols: slice) -> None:
        self.cv, self.rows, self.cols = cv, rows, cols
        self.u = np.ascontiguousarray(cv.u[:, rows, cols])
        self.v = np.ascontiguousarray(cv.v[:, rows, cols])
        self.img = np.ascontiguousarray(cv.img[:, :, rows, cols])
        self.scratch = np.empty_like(self.img)
        self.pxc = cv.pxc
        self.px = cv.px

    def blend(self, alpha: np.ndarray, color: np.ndarray) -> None:
        img, tmp = self.img, self.scratch
        np.subtract(color, img, out=tmp)
        tmp *= alpha[:, None]
        img += tmp

    def commit(self) -> None:
        self.cv.img[:, :, self.rows, self.cols] = self.img


def _ellipse(
    u: np.ndarray,
    v: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    ax: np.ndarray,
    ay: np.ndarray,
    px: np.ndarray,
    angle: np.ndarray | None = None,
) -> np.ndarray:
    """Anti-aliased ellipse coverage in [0, 1] (about one output pixel of soft edge)."""
    du = u - _col(cx)
    dv = v - _col(cy)
    if angle is not None:
        c, s = _col(_cos(angle)), _col(_sin(angle))
        du, dv = du * c + dv * s, dv * c - du * s
    du *= _col(1.0 / ax)
    dv *= _col(1.0 / ay)
    d = np.sqrt(du * du + dv * dv)
    k = _col(np.minimum(ax, ay) * px)
    d *= -k
    d += k + 0.5
    return _clip01(d)


def _bump(
    u: np.ndarray, v: np.ndarray, cx: np.ndarray, cy: np.ndarray, rx: np.ndarray, ry: np.ndarray
) -> np.ndarray:
    """Smooth bump (1 - r^2)^2 on an elliptical support, for shading."""
    du = (u - _col(cx)) * _col(1.0 / rx)
    dv = (v - _col(cy)) * _col(1.0 / ry)
    q = 1.0 - (du * du + dv * dv)
    np.maximum(q, 0.0, out=q)
    return q * q


def _ramp(x: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Coverage of a signed distance ``x`` (canonical px, positive inside)."""
    return _clip01(x * px + 0.5)


def _geometry(p: IdentityParams, nz: Nuisance) -> dict[str, np.ndarray]:
    """Per-sample feature geometry in canonical coordinates after yaw and expression."""
    yaw = np.clip(nz.yaw, -1.0, 1.0)
    shift = 9.0 * yaw
    fcx = p.face_cx + 0.35 * shift

    def place(x: np.ndarray, depth: float = 1.0) -> np.ndarray:
        # Features move with the yaw and the far side foreshortens.
        rel = x - p.face_cx
        return fcx + depth * shift * 0.65 + rel * (1.0 - 0.28 * yaw * np.sign(rel))

    g: dict[str, np.ndarray] = {"yaw": yaw, "fcx": fcx}
    lx = place(p.eye_cx - p.eye_dx)
    rx = place(p.eye_cx + p.eye_dx)
    g["eye_x"] = np.stack([lx, rx])
    g["eye_y"] = np.stack([p.eye_y + p.eye_dy, p.eye_y - p.eye_dy])
    g["eye_w"] = np.stack([p.eye_w * (1 + 0.3 * yaw), p.eye_w * (1 - 0.3 * yaw)])
    g["eye_h"] = p.eye_h * nz.eye_open
    g["brow_x"] = np.stack(
        [place(p.eye_cx - p.eye_dx - p.brow_out), place(p.eye_cx + p.eye_dx + p.brow_out)]
    )
    g["brow_y"] = p.eye_y - p.brow_gap - nz.brow_raise
    g["brow_w"] = np.stack([p.brow_w * (1 + 0.3 * yaw), p.brow_w * (1 - 0.3 * yaw)])
    g["nose_x"] = place(p.nose_x, depth=1.55)
    g["nose_y"] = p.nose_y.copy()
    mouth_half = p.mouth_w * (1.0 + 0.08 * np.maximum(nz.smile, 0.0))
    g["mouth_l"] = place(p.mouth_x - mouth_half)
    g["mouth_r"] = place(p.mouth_x + mouth_half)
    g["mouth_cy"] = p.mouth_y - 1.6 * nz.smile  # corner height
    g["mouth_dip"] = 2.6 * nz.smile  # centre line below the corners by this much
    g["tex_shift"] = 0.8 * shift  # skin marks move with the surface, a little less than features
    return g


def _landmarks(g: dict[str, np.ndarray], p: IdentityParams) -> np.ndarray:
    """Canonical landmark positions (N, 5, 2) float64 from the geometry."""
    lm = np.empty((len(p), 5, 2))
    lm[:, 0] = np.stack([g["eye_x"][0], g["eye_y"][0]], -1)
    lm[:, 1] = np.stack([g["eye_x"][1], g["eye_y"][1]], -1)
    lm[:, 2] = np.stack([g["nose_x"], g["nose_y"]], -1)
    lm[:, 3] = np.stack([g["mouth_l"], g["mouth_cy"]], -1)
    lm[:, 4] = np.stack([g["mouth_r"], g["mouth_cy"]], -1)
    return lm


def _pose_forward(nz: Nuisance, size: int, transform: np.ndarray | None) -> np.ndarray:
    """(N, 2, 3) canonical -> image map: similarity (roll, scale, shift) then ``transform``."""
    th = nz.roll * (math.pi / 180.0)
    # Positive roll = counter-clockwise on screen (y points down).
    c, s = _cos(th) * nz.scale, _sin(th) * nz.scale
    f = np.zeros((len(nz), 2, 3))
    f[:, 0, 0], f[:, 0, 1] = c, s
    f[:, 1, 0], f[:, 1, 1] = -s, c
    c0 = _CANON_CENTRE
    f[:, 0, 2] = c0[0] + nz.shift[:, 0] - (c * c0[0] + s * c0[1])
    f[:, 1, 2] = c0[1] + nz.shift[:, 1] - (-s * c0[0] + c * c0[1])
    if transform is None:
        transform = np.tile(np.array([[size / 112.0, 0, 0], [0, size / 112.0, 0]]), (len(nz), 1, 1))
    m = np.asarray(transform, dtype=np.float64)
    out = np.empty_like(f)
    for i in range(2):
        for j in range(3):
            out[:, i, j] = m[:, i, 0] * f[:, 0, j] + m[:, i, 1] * f[:, 1, j]
        out[:, i, 2] += m[:, i, 2]
    return out


def _lookup_textures(p: IdentityParams, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Nearest-texel lookup of each sample's identity texture at canonical (u, v):
    (4, B, h, w) float32 (skin luminance, skin redness, hair modulation, beard alpha)."""
    n = _TEX * _TEX_RES
    x = u * _F32(_TEX_RES)
    x += 0.5
    np.floor(x, out=x)
    np.clip(x, 0, n - 1, out=x)
    y = v * _F32(_TEX_RES)
    y += 0.5
    np.floor(y, out=y)
    np.clip(y, 0, n - 1, out=y)
    idx = y.astype(np.int32)
    idx *= n
    idx += x.astype(np.int32)
    out = np.empty((4, *idx.shape), dtype=_F32)
    _, first, which = np.unique(p.tex_seed, return_index=True, return_inverse=True)
    which = which.reshape(-1)
    for q, j in enumerate(first):
        tex = _identity_texture(p, int(j)).reshape(4, -1)
        if len(first) == 1:
            for c in range(4):
                np.take(tex[c], idx, out=out[c])
        else:
            sel = np.flatnonzero(which == q)
            sub = idx[sel]
            for c in range(4):
                out[c, sel] = np.take(tex[c], sub)
    return out


def render(
    identity: IdentityParams,
    nuisance: Nuisance,
    *,
    size: int = 112,
    transform: ArrayLike | None = None,
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Render one image per row of (``identity``, ``nuisance``).

    Args:
        identity: N rows (repeat an identity's row for several images of it).
        nuisance: N rows.
        size: output side in pixels.
        transform: optional (N, 2, 3) affine map from the aligned 112 frame to output pixels
            (e.g. a loose-crop similarity); default scales the 112 frame to ``size``.

    Returns:
        images (N, size, size, 3) uint8 RGB and landmarks (N, 5, 2) float32 (x, y) in output pixels.
    """
    n = len(identity)
    if len(nuisance) != n:
        raise ValueError(f"render: identity has {n} rows but nuisance has {len(nuisance)}")
    if transform is not None:
        transform = np.asarray(transform, dtype=np.float64)
        if transform.shape != (n, 2, 3):
            raise ValueError(
                f"render: transform must have shape ({n}, 2, 3), got {transform.shape}"
            )
    if n == 0:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 5, 2), np.float32)
    img, lm = _render_float(identity, nuisance, size, transform)  # 0..255 + 0.5
    np.clip(img, 0.0, 255.0, out=img)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    np.copyto(out.transpose(0, 3, 1, 2), img, casting="unsafe")  # truncation = rounding
    return out, lm


_NOISE_FIELD: list[np.ndarray] = []
_NOISE_SIDE = 640


def _sensor_noise(nz: Nuisance, size: int) -> np.ndarray:
    """Per-sample sensor noise (B, size, size) on the 0..255 scale, plus the rounding offset 0.5.

    A fixed standard-normal field cut at a per-sample offset taken from ``noise_seed`` (cheaper
    than drawing fresh noise, and as reproducible).
    """
    if not _NOISE_FIELD:
        rng = np.random.default_rng(0x5EED)
        _NOISE_FIELD.append(rng.standard_normal((_NOISE_SIDE, _NOISE_SIDE), dtype=_F32))
    field = _NOISE_FIELD[0]
    if size > _NOISE_SIDE // 2:
        raise ValueError(f"render: size must be <= {_NOISE_SIDE // 2}, got {size}")
    span = _NOISE_SIDE - size
    out = np.empty((len(nz), size, size), dtype=_F32)
    for j in range(len(nz)):
        seed = int(nz.noise_seed[j])
        oy, ox = seed % span, (seed // span) % span
        np.multiply(
            field[oy : oy + size, ox : ox + size], _F32(nz.noise_sigma[j] * 255.0), out=out[j]
        )
    out += 0.5
    return out


def _render_float(
    p: IdentityParams, nz: Nuisance, size: int, transform: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Render on a float32 (B, 3, H, W) canvas on the 0..255 scale (+0.5 for rounding)."""
    b = len(p)
    fwd = _pose_forward(nz, size, transform)
    cv = _Canvas(fwd, size)
    g = _geometry(p, nz)
    px, pxc = cv.px, cv.pxc
    u, v = cv.u, cv.v
    yaw = g["yaw"]
    fcx, fcy = g["fcx"], p.face_cy
    skin = _rgb(p.skin)
    ones = np.ones(b)

    # Background: a colour with a linear gradient, plus one straight edge.
    gs = np.arange(size, dtype=_F32) * _F32(2.0 / size) - _F32(1.0)
    base = _rgb(nz.bg_color)
    grad_x = _rgb(nz.bg_gradient[:, 0])
    grad_y = _rgb(nz.bg_gradient[:, 1])
    np.add(grad_y * gs[:, None] + base, grad_x * gs, out=cv.img)
    ea = nz.bg_edge
    edge = _col(_cos(ea[:, 1])) * gs[None, None, :] + _col(_sin(ea[:, 1])) * gs[None, :, None]
    edge -= _col(ea[:, 0])
    edge = _clip01(edge * _F32(size / 2.0) + 0.5)
    edge *= _col(ea[:, 2])
    cv.img += edge[:, None] * _rgb(nz.bg_edge_color)
    _clip01(cv.img)

    # Identity textures, looked up in face coordinates (they follow the yaw shift).
    lum, red, hair_mod, beard = _lookup_textures(p, u - _col(g["tex_shift"]), v)
    hair_mod += 1.0
    hair_rgb = np.multiply(_rgb(p.hair), hair_mod[:, None], out=np.empty_like(cv.img))

    # Hair volume behind the head: an ellipse, plus side hair down to hair_len.
    has_hair = (p.hair_style > 0).astype(np.float64)
    hair_cy = fcy - 0.12 * p.face_bt
    hb = _ellipse(
        u,
        v,
        fcx,
        hair_cy - 0.5 * p.hair_top,
        p.face_a + p.hair_w,
        p.face_bt * 0.88 + p.hair_top,
        px,
    )
    side = _ramp(_col(p.face_a + p.hair_w - 1.0) - np.abs(u - _col(fcx)), pxc)
    side *= _ramp(_col(p.hair_len) - v, pxc)
    side *= _ramp(v - _col(hair_cy), pxc)
    np.maximum(hb, side, out=hb)
    hb *= _col(has_hair)
    cv.blend(hb, hair_rgb)

    # Ears (hidden under long hair) and neck.
    for sgn in (-1.0, 1.0):
        ex = fcx + sgn * p.face_a * (1.0 - 0.35 * yaw * sgn) * 0.97
        ea_ = np.maximum(p.ear_a * np.clip(1.0 - 1.1 * yaw * sgn, 0.0, 1.4), 0.3)
        pt = cv.patch(ex - ea_, ex + ea_, p.ear_y - p.ear_b, p.ear_y + p.ear_b)
        al = _ellipse(pt.u, pt.v, ex, p.ear_y, ea_, p.ear_b, px)
        al *= _col((1.0 - p.ears_covered) * (ea_ > 0.3))
        pt.blend(al, skin * _F32(0.9))
        pt.commit()
    neck_top = fcy + 0.3 * p.face_bb
    half = p.neck_w * p.face_a
    pt = cv.patch(fcx - half, fcx + half, neck_top, neck_top + 400.0)
    nk = _ramp(_col(half) - np.abs(pt.u - _col(fcx)), pxc) * _ramp(pt.v - _col(neck_top), pxc)
    pt.blend(nk, skin * _F32(0.78))
    pt.commit()
    # Shoulders (seen in loose crops; below the aligned frame unless the head is rolled).
    chin = fcy + p.face_bb
    pt = cv.patch(
        fcx - 1.9 * p.face_a, fcx + 1.9 * p.face_a, chin + 0.2 * p.face_a, chin + 1.7 * p.face_a
    )
    if pt.img.size:
        al = _ellipse(pt.u, pt.v, fcx, chin + 0.95 * p.face_a, 1.9 * p.face_a, 0.75 * p.face_a, px)
        pt.blend(al, _rgb(nz.cloth_color))
        pt.commit()

    # Face: an oval with asymmetric vertical axes, a tapered jaw and yaw foreshortening.
    du = u - _col(fcx)
    dv = v - _col(fcy)
    inv_a = np.where(
        du < 0, _col(1.0 / (p.face_a * (1 + 0.05 * yaw))), _col(1.0 / (p.face_a * (1 - 0.35 * yaw)))
    )
    q = dv * np.where(dv < 0, _col(1.0 / p.face_bt), _col(1.0 / p.face_bb))
    taper = np.maximum(q, 0.0)
    taper *= taper
    taper *= -_col(p.jaw)
    taper += 1.0
    taper[taper == 0.0] = 1e-6  # at q = 1/sqrt(jaw) > 1, far below the chin: outside the face anyway
    pn = du * inv_a
    pn /= taper
    d2 = pn * pn
    d2 += q * q
    face = _clip01((1.0 - np.sqrt(d2)) * _col(p.face_a * 0.8 * px) + 0.5)
    np.minimum(d2, 1.0, out=d2)
    d2 *= -0.24
    d2 += 1.0  # shading: darker toward the outline
    lum += 1.0
    d2 *= lum
    skin_map = np.multiply(skin, d2[:, None], out=np.empty_like(cv.img))
    skin_map[:, 0] += red * _F32(0.55)
    skin_map[:, 1] -= red * _F32(0.3)
    skin_map[:, 2] -= red * _F32(0.3)
    # Beard and hair fringe tint the face colour before the face is composited.
    if np.any(p.beard_kind > 0):
        rows_, _ = cv.box(fcx - p.face_a, fcx + p.face_a, p.nose_y, fcy + p.face_bb + 10.0)
        sub = skin_map[:, :, rows_]
        tmp = cv.scratch[:, :, rows_]
        np.multiply(hair_rgb[:, :, rows_], _F32(0.85), out=tmp)
        tmp -= sub
        tmp *= beard[:, rows_][:, None]
        sub += tmp
    hl_max = (
        p.hairline + nz.hairline_shift + p.hairline_curv * 1.6 + np.abs(p.hairline_part) * 1.3 + 2.0
    )
    rows_, _ = cv.box(fcx - 1.3 * p.face_a, fcx + 1.3 * p.face_a, fcy - 2.0 * p.face_bt, hl_max)
    t = du[:, rows_] * _col(1.0 / p.face_a)
    hl = (
        _col(p.hairline + nz.hairline_shift)
        + (_col(p.hairline_curv) * t + _col(p.hairline_part)) * t
    )
    fringe = _ramp(hl - v[:, rows_], pxc)
    fringe *= _col(has_hair)
    sub = skin_map[:, :, rows_]
    tmp = cv.scratch[:, :, rows_]
    np.subtract(hair_rgb[:, :, rows_], sub, out=tmp)
    tmp *= fringe[:, None]
    sub += tmp
    cv.blend(face, skin_map)

    # Brows and eyes.
    brow_rgb = _rgb(0.25 * p.skin + 0.75 * p.hair * 0.8)
    dark = _rgb(np.full((b, 3), 0.08))
    white = _rgb(np.full((b, 3), 0.9))
    black = _rgb(np.full((b, 3), 0.03))
    bright = _rgb(ones[:, None] * np.ones(3))
    for e, sgn in ((0, -1.0), (1, 1.0)):
        ex, ey, ew = g["eye_x"][e], g["eye_y"][e], g["eye_w"][e]
        eh = g["eye_h"]
        bx, by, bw = g["brow_x"][e], g["brow_y"], g["brow_w"][e]
        reach = np.maximum(ew * 1.6, bw) + 1.0
        pt = cv.patch(
            np.minimum(ex, bx) - reach,
            np.maximum(ex, bx) + reach,
            by - p.brow_arch - p.brow_th - np.abs(p.brow_slope) - 1.0,
            ey + eh * 2.2 + 2.5,
        )
        uu, vv = pt.u, pt.v
        # Brow: an arched band, thinner toward the tail.
        tb = (uu - _col(bx)) * _col(sgn / bw)
        centre = _col(by) - _col(p.brow_arch) * (1.0 - tb * tb) - _col(p.brow_slope) * tb
        half_b = _col(0.5 * p.brow_th) * (1.0 - 0.5 * np.maximum(tb, 0.0))
        al = _ramp(half_b - np.abs(vv - centre), pxc) * _ramp(_col(bw) * (1.0 - np.abs(tb)), pxc)
        al *= _col(p.brow_density)
        pt.blend(al, brow_rgb)
        tilt = -sgn * p.eye_tilt
        # Socket shading, lash line, sclera, iris, pupil, highlight.
        sh = _bump(uu, vv, ex, ey - 1.0, ew * 1.6, eh * 2.2 + 2.5)
        sh *= _F32(0.18)
        pt.blend(sh, skin * _F32(0.55))
        lash = _ellipse(uu, vv, ex, ey - 0.35 * eh, ew * 1.1, eh * 1.2 + 0.6, px, tilt)
        lash *= _F32(0.9)
        pt.blend(lash, dark)
        scl = _ellipse(uu, vv, ex, ey, ew, np.maximum(eh, 0.2), px, tilt)
        pt.blend(scl, white)
        ir = p.iris_r * np.clip(1.0 - 0.25 * np.abs(yaw), 0.5, 1.0)
        iris = _ellipse(uu, vv, ex, ey, ir, p.iris_r, px)
        iris *= scl
        pt.blend(iris, _rgb(p.iris))
        pup = _ellipse(uu, vv, ex, ey, 0.45 * ir, 0.45 * p.iris_r, px)
        pup *= scl
        pt.blend(pup, black)
        hi = _ellipse(
            uu, vv, ex + 0.35 * ir, ey - 0.4 * p.iris_r, 0.28 * ir + 0.3, 0.28 * p.iris_r + 0.3, px
        )
        hi *= scl
        hi *= _F32(0.85)
        pt.blend(hi, bright)
        pt.commit()

    # Nose: bridge shading on the side away from the light, under-nose shadow, tip highlight,
    # nostrils.
    nx, ny, nw = g["nose_x"], g["nose_y"], p.nose_w
    top_y = 0.5 * (g["eye_y"][0] + g["eye_y"][1]) + 2.0
    light_side = np.where(_cos(nz.light_angle) >= 0, -1.0, 1.0)
    off = nx + light_side * (0.6 * nw + 1.5) - 0.4 * yaw * nw
    reach = np.maximum(nw * (1.0 + 0.3 * np.abs(yaw)) + 3.0, np.abs(off - nx) + 3.0)
    pt = cv.patch(nx - reach, nx + reach, top_y - 1.5, ny + 5.5)
    uu, vv = pt.u, pt.v
    bridge = _bump(uu, vv, off, 0.5 * (top_y + ny), 2.8 * ones, 0.5 * (ny - top_y) + 1.0)
    bridge *= _F32(0.3)
    pt.blend(bridge, skin * _F32(0.6))
    under = _bump(uu, vv, nx, ny + 2.4, nw + 2.5, 3.0 * ones)
    under *= _F32(0.5)
    pt.blend(under, skin * _F32(0.5))
    tip = _bump(uu, vv, nx, ny - 1.0, 2.8 * ones, 2.2 * ones)
    tip *= _F32(0.16)
    pt.blend(tip, bright)
    for sgn in (-1.0, 1.0):
        na = p.nostril_a * np.clip(1.0 - 0.5 * yaw * sgn, 0.4, 1.3)
        ncx = nx + sgn * 0.58 * nw * (1 - 0.3 * yaw * sgn)
        al = _ellipse(uu, vv, ncx, ny + 1.8, na, p.nostril_b, px, sgn * -0.35 * ones)
        al *= _F32(0.85)
        pt.blend(al, skin * _F32(0.3))
    pt.commit()

    # Mouth: lips around a (smile-curved) centre line, optional opening with teeth.
    ml, mr = g["mouth_l"], g["mouth_r"]
    mcx, mhalf = 0.5 * (ml + mr), 0.5 * (mr - ml)
    mcy, dip = g["mouth_cy"], g["mouth_dip"]
    op = nz.mouth_open
    pt = cv.patch(
        mcx - mhalf - 1.0,
        mcx + mhalf + 1.0,
        mcy + np.minimum(dip, 0.0) - p.lip_up - 0.3 * op - 1.5,
        mcy + np.maximum(dip, 0.0) + p.lip_lo + op + 1.5,
    )
    uu, vv = pt.u, pt.v
    tm = (uu - _col(mcx)) * _col(1.0 / mhalf)
    tm2 = tm * tm
    env = np.sqrt(np.maximum(1.0 - tm2, 0.0))
    cl = _col(mcy) + _col(dip) * (1.0 - tm2)
    inside_x = _ramp(_col(mhalf) * (1.0 - np.abs(tm)), pxc)
    lips = _ramp(
        np.minimum(
            vv - (cl - _col(p.lip_up + 0.3 * op) * env), (cl + _col(p.lip_lo + op) * env) - vv
        ),
        pxc,
    )
    lips *= inside_x
    pt.blend(lips, _rgb(p.lip))
    gap_top = cl - _col(0.3 * op) * env
    gap_bot = cl + _col(op) * env
    opening = _ramp(np.minimum(vv - gap_top, gap_bot - vv) + 0.35, pxc)
    opening *= inside_x
    pt.blend(opening, _rgb(np.tile([0.22, 0.05, 0.06], (b, 1))))
    if np.any(op > 1.0):
        teeth = _ramp(
            np.minimum(vv - gap_top, gap_top + _col(np.minimum(op, 3.0) * 0.45) * env - vv), pxc
        )
        teeth *= inside_x
        teeth *= _col((op > 1.0) * 0.9)
        pt.blend(teeth, _rgb(np.tile([0.9, 0.88, 0.82], (b, 1))))
    pt.commit()

    # Illumination (brightness, colour cast, directional gradient) and sensor noise, on the
    # 0..255 scale with the +0.5 of rounding folded in.
    la = nz.light_angle
    gain = (
        _col(nz.light_strength * _cos(la)) * gs[None, None, :]
        + _col(nz.light_strength * _sin(la)) * gs[None, :, None]
    )
    gain += 1.0
    gain *= _col(nz.brightness)
    cv.img *= gain[:, None]
    cv.img *= _rgb(nz.cast * 255.0)
    cv.img += _sensor_noise(nz, size)[:, None]

    lm_c = _landmarks(g, p)
    return cv.img, _apply_affine(fwd, lm_c).astype(np.float32)


def _apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply per-sample (N, 2, 3) affine maps to (N, K, 2) points."""
    x, y = pts[..., 0], pts[..., 1]
    out = np.empty(pts.shape, dtype=np.float64)
    out[..., 0] = m[:, 0, 0, None] * x + m[:, 0, 1, None] * y + m[:, 0, 2, None]
    out[..., 1] = m[:, 1, 0, None] * x + m[:, 1, 1, None] * y + m[:, 1, 2, None]
    return out


# --------------------------------------------------------------------------------------------
# Degradations
# --------------------------------------------------------------------------------------------

_MASK_COLORS = np.array(
    [[0.55, 0.75, 0.92], [0.93, 0.93, 0.93], [0.10, 0.10, 0.12], [0.45, 0.55, 0.5]]
)


def strong_pose(
    nuisance: Nuisance,
    severity: ArrayLike,
    rng: np.random.Generator | Sequence[np.random.Generator],
) -> Nuisance:
    """Nuisance with strong pose of the given severity: ``|yaw|`` and ``|roll|`` grow with it.

    ``|yaw| = |yaw0| (1 - s) + 0.9 s`` and ``|roll| = |roll0| (1 - s) + R s`` with R drawn in
    [15, 30] degrees; signs follow the original pose (random where it is zero). Severity 0 returns
    the original pose.
    """
    n = len(nuisance)
    s = _check_severity(severity, n)
    rngs = _rng_list(rng, n)
    yaw = nuisance.yaw.copy()
    roll = nuisance.roll.copy()
    for j in range(n):
        r = rngs[j]
        sy = np.sign(yaw[j]) or (1.0 if r.random() < 0.5 else -1.0)
        sr = np.sign(roll[j]) or (1.0 if r.random() < 0.5 else -1.0)
        big_roll = r.uniform(15.0, 30.0)
        yaw[j] = sy * (abs(yaw[j]) * (1 - s[j]) + 0.9 * s[j])
        roll[j] = sr * (abs(roll[j]) * (1 - s[j]) + big_roll * s[j])
    return dataclasses.replace(nuisance, yaw=yaw, roll=roll)


def _check_severity(severity: ArrayLike, n: int) -> np.ndarray:
    s = np.broadcast_to(np.asarray(severity, dtype=np.float64), (n,)).copy()
    if s.size and (not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1):
        raise ValueError(
            f"severity must lie in [0, 1], got {s.min() if s.size else s}..{s.max() if s.size else s}"
        )
    return s


def _rng_list(
    rng: np.random.Generator | Sequence[np.random.Generator], n: int
) -> list[np.random.Generator]:
    if isinstance(rng, np.random.Generator):
        return [rng] * n
    rngs = list(rng)
    if len(rngs) != n or not all(isinstance(r, np.random.Generator) for r in rngs):
        raise ValueError(f"rng must be a numpy Generator or a sequence of {n} Generators")
    return rngs


def _eye_frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Unit vectors along the eye line and toward the chin, and the inter-eye distance."""
    d = lm[1] - lm[0]
    dist = float(np.hypot(*d))
    ex = d / dist
    ey = np.array([-ex[1], ex[0]])
    return ex, ey, dist


def _coverage(sd: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a signed distance in pixels (positive inside)."""
    return np.clip(sd + 0.5, 0.0, 1.0)


def _sunglasses(x: np.ndarray, s: float, r: np.random.Generator, lm: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    ex, ey, dist = _eye_frame(lm)
    yy, xx = np.mgrid[0:h, 0:w].astype(_F32)
    tint = (r.uniform(0.02, 0.14) + r.uniform(-0.03, 0.03, 3)).astype(_F32)
    grow = 0.8 + 0.35 * s
    la, lb = 0.36 * dist * grow, 0.27 * dist * grow
    lens = np.zeros((h, w), _F32)
    frame = np.zeros((h, w), _F32)
    for e in (0, 1):
        c = lm[e] + 0.06 * dist * ey
        a = (xx - c[0]) * ex[0] + (yy - c[1]) * ex[1]
        b = (xx - c[0]) * ey[0] + (yy - c[1]) * ey[1]
        rr = np.sqrt((a / la) ** 2 + (b / lb) ** 2)
        lens = np.maximum(lens, _coverage((1.0 - rr) * lb))
        frame = np.maximum(frame, _coverage(1.0 - np.abs(rr - 1.0) * lb))
        # Arm from the outer rim sideways.
        sgn = -1.0 if e == 0 else 1.0
        a_out = sgn * a - la
        arm = _coverage(np.minimum(a_out + 0.5, 0.5 * dist - a_out)) * _coverage(
            1.0 - np.abs(b + 0.2 * lb)
        )
        frame = np.maximum(frame, arm)
    mid = 0.5 * (lm[0] + lm[1]) + 0.06 * dist * ey
    a = (xx - mid[0]) * ex[0] + (yy - mid[1]) * ex[1]
    b = (xx - mid[0]) * ey[0] + (yy - mid[1]) * ey[1]
    bridge = _coverage(0.5 * dist - la - np.abs(a) + 1.0) * _coverage(1.0 - np.abs(b + 0.45 * lb))
    frame = np.maximum(frame, bridge)
    opacity = math.sqrt(s)
    alpha = np.maximum(lens * opacity, frame * min(1.0, 3.0 * s))[..., None]
    return x + alpha * (np.clip(tint, 0, 1) - x)


def _mask(x: np.ndarray, s: float, r: np.random.Generator, lm: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    ex, ey, dist = _eye_frame(lm)
    colour = (_MASK_COLORS[r.integers(len(_MASK_COLORS))] * r.uniform(0.75, 1.0)).astype(_F32)
    c = 0.5 * (lm[3] + lm[4])
    yy, xx = np.mgrid[0:h, 0:w].astype(_F32)
    a = (xx - c[0]) * ex[0] + (yy - c[1]) * ex[1]
    b = (xx - c[0]) * ey[0] + (yy - c[1]) * ey[1]
    half_w = 1.05 * dist
    top = dist * (0.78 - 1.45 * s) - 0.12 * dist * s * np.clip(1 - (a / half_w) ** 2, 0, 1)
    body = (a / half_w) ** 2 + (np.maximum(b - 0.2 * dist, 0.0) / (0.55 * dist)) ** 2
    cover = _coverage(b - top) * _coverage((1.0 - body) * 0.5 * dist)
    pleats = 1.0 - _F32(0.07) * (np.sin(b * _F32(2 * math.pi / (0.22 * dist))) > 0.6)
    fill = colour[None, None, :] * pleats[..., None]
    return x + cover[..., None] * (fill - x)


def _blocks(x: np.ndarray, s: float, r: np.random.Generator, lm: np.ndarray | None) -> np.ndarray:
    h, w = x.shape[:2]
    if lm is not None:
        _, _, dist = _eye_frame(lm)
        centre = lm.mean(axis=0)
    else:
        dist, centre = 0.31 * w, np.array([w / 2.0, h / 2.0], _F32)
    centres = (centre + r.uniform(-0.9, 0.9, (4, 2)) * dist).astype(_F32)
    aspect = r.uniform(0.7, 1.4, 4).tolist()
    colours = r.random((4, 3)).astype(_F32)
    textured = r.random(4) < 0.5
    noise = r.random((h, w, 3), dtype=_F32)
    count = 1 + min(3, int(4 * s))
    side = dist * 0.85 * s**0.7
    yy, xx = np.mgrid[0:h, 0:w].astype(_F32)
    out = x.copy()
    for k in range(count):
        hw, hh = 0.5 * side * aspect[k], 0.5 * side / aspect[k]
        cov = _coverage(
            np.minimum(hw - np.abs(xx - centres[k, 0]), hh - np.abs(yy - centres[k, 1]))
        )
        fill = noise if textured[k] else colours[k][None, None, :]
        out += cov[..., None] * (fill - out)
    return out


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    half = (length - 1.0) / 2.0
    rad = int(math.ceil(half))
    yy, xx = np.mgrid[-rad : rad + 1, -rad : rad + 1].astype(np.float64)
    dx, dy = math.cos(angle), math.sin(angle)
    t = np.clip(xx * dx + yy * dy, -half, half)
    dist = np.hypot(xx - t * dx, yy - t * dy)
    k = np.clip(1.0 - dist, 0.0, 1.0)
    return k / k.sum()


def _degrade_one(
    img: np.ndarray, kind: str, s: float, r: np.random.Generator, lm: np.ndarray | None
) -> np.ndarray:
    """One uint8 (H, W, 3) image degraded by ``kind`` at severity ``s`` (0 = unchanged copy)."""
    from PIL import Image
    from scipy import ndimage

    if s <= 0.0:
        return img.copy()
    h, w = img.shape[:2]
    if kind == "jpeg":
        quality = int(round(90 - 85 * s))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        return np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8).copy()
    if kind == "low_resolution":
        side = max(4, int(round(w / (1.0 + 10.0 * s))))
        side_h = max(4, int(round(h / (1.0 + 10.0 * s))))
        small = Image.fromarray(img).resize((side, side_h), Image.Resampling.BOX)
        return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8).copy()
    x = img.astype(_F32) * _F32(1.0 / 255.0)
    if kind == "gaussian_blur":
        x = ndimage.gaussian_filter(x, sigma=(5.0 * s, 5.0 * s, 0.0), mode="nearest", truncate=3.0)
    elif kind == "motion_blur":
        angle = r.uniform(0.0, math.pi)
        k = _motion_kernel(1.0 + 24.0 * s, angle).astype(_F32)
        x = ndimage.correlate(x, k[:, :, None], mode="nearest")
    elif kind == "gaussian_noise":
        x += _F32(60.0 / 255.0 * s) * r.standard_normal(x.shape, dtype=_F32)
    elif kind == "underexposure":
        # Less light: darker, crushed shadows, relatively more sensor noise.
        x = x ** _F32(1.0 + 1.2 * s) * _F32(1.0 - 0.85 * s)
        x += _F32(4.0 / 255.0 * s) * r.standard_normal(x.shape, dtype=_F32)
    elif kind == "overexposure":
        x = x * _F32(1.0 + 2.5 * s) + _F32(0.25 * s)
    elif kind in ("sunglasses", "mask"):
        if lm is None:
            raise ValueError(f"degrade: kind {kind!r} needs the landmarks of the images")
        x = (_sunglasses if kind == "sunglasses" else _mask)(x, s, r, lm.astype(_F32))
    elif kind == "blocks":
        x = _blocks(x, s, r, None if lm is None else lm.astype(_F32))
    elif kind == "pose":
        raise ValueError(
            "degrade: 'pose' is applied at render time; use strong_pose() on the nuisance"
        )
    else:
        raise ValueError(f"degrade: unknown kind {kind!r}; expected one of {DEGRADATIONS}")
    x = x * _F32(255.0) + _F32(0.5)
    return np.clip(x, 0.0, 255.0, out=x).astype(np.uint8)


def degrade(
    images: ArrayLike,
    kind: str,
    severity: ArrayLike,
    rng: np.random.Generator | Sequence[np.random.Generator],
    landmarks: ArrayLike | None = None,
) -> NDArray[np.uint8]:
    """Apply one degradation to a batch of images.

    Args:
        images: (N, H, W, 3) uint8 RGB.
        kind: one of :data:`DEGRADATIONS` except ``pose`` (see :func:`strong_pose`).
        severity: scalar or (N,) in [0, 1]; 0 leaves the image unchanged, larger is monotonically
            worse (blur sigma 5 s px, motion length 1 + 24 s px, resolution side / (1 + 10 s),
            JPEG quality 90 - 85 s, noise sigma 60 s / 255, exposure gain, occluded area/opacity).
        rng: a Generator drawn from image after image, or one Generator per image (reproducible
            per image whatever the batch).
        landmarks: (N, 5, 2) landmarks, required for ``sunglasses`` and ``mask`` and used to place
            ``blocks`` on the face.

    Returns:
        (N, H, W, 3) uint8 degraded copies.
    """
    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.dtype != np.uint8:
        raise ValueError(
            f"degrade: images must be (N, H, W, 3) uint8, got {imgs.shape} {imgs.dtype}"
        )
    if kind not in DEGRADATIONS:
        raise ValueError(f"degrade: unknown kind {kind!r}; expected one of {DEGRADATIONS}")
    n = len(imgs)
    s = _check_severity(severity, n)
    rngs = _rng_list(rng, n)
    lms = None
    if landmarks is not None:
        lms = np.asarray(landmarks, dtype=np.float64)
        if lms.shape != (n, 5, 2):
            raise ValueError(f"degrade: landmarks must have shape ({n}, 5, 2), got {lms.shape}")
    out = np.empty_like(imgs)
    for j in range(n):
        out[j] = _degrade_one(imgs[j], kind, float(s[j]), rngs[j], None if lms is None else lms[j])
    return out


# --------------------------------------------------------------------------------------------
# Worlds: items -> images with ground truth
# --------------------------------------------------------------------------------------------


def _draw_plan(spec: WorldSpec, r: np.random.Generator) -> list[tuple[str, float]]:
    """A sample's degradations: 0..2 (kind, severity), in group order (always 6 draws from r)."""
    u = r.random(6)
    if u[0] >= spec.degradation_prob:
        return []
    kinds = np.array(spec.kinds)
    w = np.ones(len(kinds)) if spec.kind_weights is None else np.asarray(spec.kind_weights, float)
    lo, hi = spec.severity_range

    def pick(weights: np.ndarray, x: float) -> int:
        c = np.cumsum(weights) / weights.sum()
        return int(min(np.searchsorted(c, x, "right"), len(c) - 1))

    first = kinds[pick(w, u[1])]
    plan = [(str(first), lo + (hi - lo) * float(u[2]))]
    if u[3] < spec.second_degradation_prob:
        w2 = w * np.array([_GROUP[kd] != _GROUP[first] for kd in kinds])
        if w2.sum() > 0:
            plan.append((str(kinds[pick(w2, u[4])]), lo + (hi - lo) * float(u[5])))
    plan.sort(key=lambda ks: _GROUP[ks[0]])
    return plan


def _loose_transform(seed: int, k: int, i: int, size: int) -> np.ndarray:
    """Aligned-112 -> loose-crop similarity: face smaller, rotated and off-centre (IJB-C-like)."""
    r = _rng(seed, _TAG_CROP, k, i)
    sc = r.uniform(0.72, 1.0) * size / 160.0
    th = math.radians(float(np.clip(r.normal(0.0, 10.0), -25.0, 25.0)))
    c, s = sc * math.cos(th), sc * math.sin(th)
    centre = size / 2.0 + r.uniform(-0.06, 0.06, 2) * size
    m = np.array([[c, s, 0.0], [-s, c, 0.0]])
    m[:, 2] = centre - m[:, :2] @ np.array([56.0, 56.0])
    return m


def _generate_chunk(
    spec: WorldSpec,
    ids: np.ndarray,
    imgs: np.ndarray,
    degraded: bool,
    loose: int | None,
    batch: int = 6,
) -> SynthBatch:
    """Render items (identity ``ids[j]``, image ``imgs[j]``) in render batches of ``batch``."""
    n = len(ids)
    uniq, inv = np.unique(ids, return_inverse=True)
    p = sample_identities(uniq, spec.seed, child_fraction=spec.child_fraction).take(inv.reshape(-1))
    apply_rngs = [
        _rng(spec.seed, _TAG_SAMPLE, int(k), int(i)) for k, i in zip(ids, imgs, strict=True)
    ]
    nz = _stack_nuisance([_nuisance_row(r) for r in apply_rngs])
    plans = [_draw_plan(spec, r) if degraded else [] for r in apply_rngs]
    pose_s = np.array([dict(pl).get("pose", 0.0) for pl in plans])
    posed = np.flatnonzero(pose_s > 0)
    if posed.size:
        moved = strong_pose(nz.take(posed), pose_s[posed], [apply_rngs[j] for j in posed])
        yaw, roll = nz.yaw.copy(), nz.roll.copy()
        yaw[posed], roll[posed] = moved.yaw, moved.roll
        nz = dataclasses.replace(nz, yaw=yaw, roll=roll)
    size = loose if loose is not None else spec.image_size
    if loose is not None:
        transform = np.stack(
            [
                _loose_transform(spec.seed, int(k), int(i), size)
                for k, i in zip(ids, imgs, strict=True)
            ]
        )
    else:
        transform = np.tile(np.array([[size / 112.0, 0, 0], [0, size / 112.0, 0]]), (n, 1, 1))
    images = np.empty((n, size, size, 3), np.uint8)
    landmarks = np.empty((n, 5, 2), np.float32)
    for a in range(0, n, batch):
        sl = slice(a, min(n, a + batch))
        images[sl], landmarks[sl] = render(
            p.take(np.arange(n)[sl]), nz.take(np.arange(n)[sl]), size=size, transform=transform[sl]
        )
    kinds = np.full((n, 2), "", dtype="<U14")
    sev = np.zeros((n, 2), np.float32)
    for j, plan in enumerate(plans):
        for slot, (kind, s) in enumerate(plan):
            kinds[j, slot] = kind
            sev[j, slot] = s
            if kind != "pose":
                images[j] = _degrade_one(
                    images[j], kind, s, apply_rngs[j], landmarks[j].astype(np.float64)
                )
    degradation = np.array(
        ["+".join(kd for kd in row if kd) or "none" for row in kinds], dtype="<U32"
    )
    return SynthBatch(
        images=images,
        landmarks=landmarks,
        identity=ids.astype(np.int64),
        image_index=imgs.astype(np.int64),
        age_group=p.age_group.copy(),
        degradation=degradation,
        kinds=kinds,
        severities=sev,
        severity=combined_severity(sev),
        yaw=nz.yaw.astype(np.float32),
        roll=nz.roll.astype(np.float32),
        crop_transform=transform.astype(np.float32),
    )


def _run_chunk(args: tuple) -> SynthBatch:
    return _generate_chunk(*args)


def generate_items(
    spec: WorldSpec,
    identity: ArrayLike,
    image: ArrayLike,
    *,
    degraded: bool = True,
    workers: int = 1,
    chunk_size: int = 256,
    loose_size: int | None = None,
    mp_context: str | None = None,
) -> SynthBatch:
    """Render image ``image[j]`` of identity ``identity[j]`` for every j.

    Each item depends only on ``(spec, identity[j], image[j], degraded, loose_size)``: the same
    bytes whatever the batch, chunk size or worker count. With ``degraded=False`` the item has the
    same pose, expression, light and background but no degradation (a clean reference).

    Args:
        spec: the world.
        identity, image: 1-d non-negative int arrays of equal length.
        degraded: draw degradations per ``spec``.
        workers: processes (``concurrent.futures.ProcessPoolExecutor``); 1 = in this process.
        chunk_size: items per task.
        loose_size: render an unaligned loose crop of this side instead of the aligned image.
        mp_context: multiprocessing start method for ``workers > 1``; default "fork" where the
            platform has it (cheap; the workers only run numpy, scipy and Pillow), else "spawn"
            (which re-imports the caller's main module: guard scripts with
            ``if __name__ == "__main__":``).
    """
    ids, imgs = _check_items(identity, image)
    if workers < 1 or chunk_size < 1:
        raise ValueError(f"workers and chunk_size must be >= 1, got {workers}, {chunk_size}")
    if loose_size is not None and loose_size < 32:
        raise ValueError(f"loose_size must be >= 32, got {loose_size}")
    if len(ids) == 0:
        raise ValueError("generate_items: no items requested (identity and image are empty)")
    tasks = [
        (spec, ids[a : a + chunk_size], imgs[a : a + chunk_size], degraded, loose_size)
        for a in range(0, len(ids), chunk_size)
    ]
    if workers == 1 or len(tasks) == 1:
        parts = [_run_chunk(t) for t in tasks]
    else:
        if mp_context is None:
            methods = multiprocessing.get_all_start_methods()
            mp_context = "fork" if "fork" in methods else "spawn"
        ctx = multiprocessing.get_context(mp_context)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            parts = list(ex.map(_run_chunk, tasks))
    return SynthBatch.concat(parts)


def generate(
    spec: WorldSpec,
    identities: ArrayLike | None = None,
    per_identity: int | None = None,
    *,
    degraded: bool = True,
    workers: int = 1,
    chunk_size: int = 256,
) -> SynthBatch:
    """Images ``0..per_identity-1`` of each identity, identity-major.

    Args:
        spec: the world.
        identities: identity indices (default: all ``spec.n_identities``).
        per_identity: images per identity (default ``spec.images_per_identity``).
        degraded, workers, chunk_size: as in :func:`generate_items`.
    """
    ids = np.arange(spec.n_identities) if identities is None else np.asarray(identities)
    m = spec.images_per_identity if per_identity is None else int(per_identity)
    if m < 1:
        raise ValueError(f"per_identity must be >= 1, got {m}")
    return generate_items(
        spec,
        np.repeat(ids, m),
        np.tile(np.arange(m), len(ids)),
        degraded=degraded,
        workers=workers,
        chunk_size=chunk_size,
    )


def loose_crop(
    spec: WorldSpec,
    identity: ArrayLike,
    image: ArrayLike,
    *,
    size: int = 160,
    degraded: bool = True,
    workers: int = 1,
) -> SynthBatch:
    """IJB-C-like unaligned crops: the face rendered smaller, rotated and off-centre on a
    ``size`` x ``size`` canvas, with its 5 landmarks in crop coordinates.

    ``crop_transform[j]`` maps the aligned 112 frame to the crop. A 5-point similarity alignment of
    the returned landmarks to the aligned landmarks of the same item recovers the aligned face.
    Pose, expression, light and degradations are those of the aligned item.
    """
    return generate_items(
        spec, identity, image, degraded=degraded, workers=workers, loose_size=size
    )
