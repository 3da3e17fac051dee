"""Benchmarks of aligned image files in folders: XQLFW / LFW-style pairs, and identity folders
compared all-vs-all (Adience).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exfiqa.evaluation.pairs import AllPairs
from exfiqa.io import atomic_write
from exfiqa.readers.benchmark import (
    Benchmark,
    DatasetFormatError,
    ImageFormat,
    decode_image,
    encode_image,
    image_suffix,
    refuse_existing,
    write_bytes,
)
from exfiqa.readers.images import IMAGE_EXTENSIONS, IMAGE_SIZE

__all__ = ["read_adience", "read_xqlfw", "write_identity_folders", "write_xqlfw"]

# --------------------------------------------------------------------------------------------
# XQLFW (LFW-style folders + pairs file)
# --------------------------------------------------------------------------------------------


def _lfw_image_path(root: Path, name: str, index: int) -> Path:
    stem = root / name / f"{name}_{index:04d}"
    for ext in IMAGE_EXTENSIONS:
        for cand in (stem.with_name(stem.name + ext), stem.with_name(stem.name + ext.upper())):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"image not found: {stem}.<ext> (tried {', '.join(IMAGE_EXTENSIONS)})")


def _parse_lfw_pairs(pairs_file: Path) -> list[tuple[str, int, str, int]]:
    """Parse an LFW/XQLFW pairs file into (name1, n1, name2, n2) tuples (header line skipped)."""
    try:
        lines = pairs_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"pairs file not found: {pairs_file}") from None
    out: list[tuple[str, int, str, int]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 3:
            name1, n1, n2 = fields
            name2 = name1
        elif len(fields) == 4:
            name1, n1, name2, n2 = fields
        else:
            raise DatasetFormatError(
                f"{pairs_file}:{lineno}: expected 3 fields (name n1 n2, mated) or 4 fields "
                f"(name1 n1 name2 n2, non-mated), got {len(fields)}: {line!r}"
            )
        try:
            i1, i2 = int(n1), int(n2)
        except ValueError:
            raise DatasetFormatError(
                f"{pairs_file}:{lineno}: image index is not an integer: {line!r}"
            ) from None
        if min(i1, i2) < 1:
            raise DatasetFormatError(f"{pairs_file}:{lineno}: image indices start at 1: {line!r}")
        out.append((name1, i1, name2, i2))
    return out


def read_xqlfw(
    root: str | os.PathLike[str], pairs_file: str | os.PathLike[str], name: str = "xqlfw"
) -> Benchmark:
    """Read XQLFW (or any LFW-style benchmark of already aligned 112x112 images).

    Layout: ``root/<name>/<name>_<nnnn>.<ext>`` (4-digit index from 1, any common image
    extension) and a pairs file whose first line is a header (skipped); each further line is
    ``name n1 n2`` (mated) or ``name1 n1 name2 n2`` (non-mated).

    Samples are the distinct images referenced by the pairs, sorted by (identity, index), with
    columns ``sample_id``, ``path``, ``identity``, ``image_index``. Comparisons follow the pairs
    file order. Images decode to RGB uint8 (112, 112, 3).

    Raises:
        DatasetFormatError: a malformed pairs line (message names file and line number).
        FileNotFoundError: a referenced image is missing (message names the path).
    """
    root_p, pairs_p = Path(root), Path(pairs_file)
    pairs = _parse_lfw_pairs(pairs_p)
    keys = sorted({(n, i) for n1, i1, n2, i2 in pairs for n, i in ((n1, i1), (n2, i2))})
    index = {k: sid for sid, k in enumerate(keys)}
    paths = [_lfw_image_path(root_p, n, i) for n, i in keys]
    samples = pd.DataFrame(
        {
            "sample_id": np.arange(len(keys), dtype=np.int64),
            "path": [str(p) for p in paths],
            "identity": [n for n, _ in keys],
            "image_index": np.array([i for _, i in keys], dtype=np.int64),
        }
    )
    comparisons = pd.DataFrame(
        {
            "a": np.array([index[(n1, i1)] for n1, i1, _, _ in pairs], dtype=np.int64),
            "b": np.array([index[(n2, i2)] for _, _, n2, i2 in pairs], dtype=np.int64),
            "mated": np.array([n1 == n2 for n1, _, n2, _ in pairs], dtype=bool),
        }
    )
    return Benchmark(
        name=name,
        level="sample",
        samples=samples,
        comparisons=comparisons,
        _decode=lambda k: decode_image(paths[k], size=(IMAGE_SIZE, IMAGE_SIZE)),
        _files=(
            (pairs_p.name, pairs_p),
            *((str(p.relative_to(root_p)), p) for p in paths),
        ),
        _protocol="xqlfw",
    )


def write_xqlfw(
    root: str | os.PathLike[str],
    pairs_path: str | os.PathLike[str],
    images_by_name: Mapping[str, Sequence[np.ndarray]],
    pairs: Sequence[tuple[Any, ...]],
    overwrite: bool = False,
    fmt: ImageFormat = "jpeg",
    quality: int = 95,
) -> None:
    """Write an XQLFW/LFW-style benchmark: ``root/<name>/<name>_<nnnn>.jpg|png`` + pairs file.

    Args:
        root: Image folder.
        pairs_path: Pairs file; first line header ``1<TAB><number of pairs>``.
        images_by_name: identity -> list of aligned RGB uint8 images; list position p is
            written as index p + 1.
        pairs: ``(name, n1, n2)`` (mated) or ``(name1, n1, name2, n2)`` (non-mated), 1-based.
        overwrite: Replace existing files (otherwise refused before anything is written).
    """
    root_p, pairs_p = Path(root), Path(pairs_path)
    lines = [f"1\t{len(pairs)}"]
    for k, pair in enumerate(pairs):
        if len(pair) == 3:
            n1, i1, i2 = pair
            refs = [(n1, i1), (n1, i2)]
        elif len(pair) == 4:
            n1, i1, n2, i2 = pair
            refs = [(n1, i1), (n2, i2)]
        else:
            raise ValueError(f"pairs[{k}] has {len(pair)} fields, expected 3 or 4")
        for n, i in refs:
            if n not in images_by_name or not 1 <= int(i) <= len(images_by_name[n]):
                raise ValueError(f"pairs[{k}] refers to {n} #{i}, which is not in images_by_name")
            if any(ch.isspace() for ch in n):
                raise ValueError(f"identity name {n!r} contains whitespace")
        lines.append("\t".join(str(x) for x in pair))
    suffix = image_suffix(fmt)
    targets = {
        root_p / n / f"{n}_{p + 1:04d}{suffix}": im
        for n, ims in images_by_name.items()
        for p, im in enumerate(ims)
    }
    refuse_existing([*targets, pairs_p], overwrite)
    for target, im in targets.items():
        write_bytes(target, encode_image(im, fmt, quality), overwrite)
    with atomic_write(pairs_p, overwrite=overwrite) as fh:
        fh.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# Adience-like identity folders, all-vs-all
# --------------------------------------------------------------------------------------------


def _all_pairs(
    identity_codes: np.ndarray, max_nonmated: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every mated pair (a < b) of samples sorted by identity, and all non-mated pairs or a uniform
    sample of ``max_nonmated`` of them (``seed``), sorted by (a, b).

    The pairs of :class:`exfiqa.evaluation.pairs.AllPairs`: row i's non-mated partners are
    ``group_end[i]..n-1``; the k-th non-mated pair in row-major order is found from the
    cumulative counts per row.
    """
    pairs = AllPairs.from_codes(identity_codes)
    n, end = pairs.n_samples, pairs.group_end
    mated_a, mated_b = pairs.mated_pairs()
    idx_dtype = mated_a.dtype
    n_non_row = n - end
    total_non = pairs.n_nm
    if max_nonmated is None or max_nonmated >= total_non:
        lin = np.arange(total_non, dtype=np.int64)
    else:
        if max_nonmated < 0:
            raise ValueError(f"max_nonmated must be >= 0, got {max_nonmated}")
        rng = np.random.default_rng(seed)
        lin = np.sort(rng.choice(total_non, size=max_nonmated, replace=False))
    cum = np.cumsum(n_non_row)
    non_a = np.searchsorted(cum, lin, side="right").astype(np.int64)
    non_b = end[non_a] + (lin - (cum[non_a] - n_non_row[non_a]))

    a = np.concatenate([mated_a, non_a.astype(idx_dtype)])
    b = np.concatenate([mated_b, non_b.astype(idx_dtype)])
    mated = np.concatenate([np.ones(len(mated_a), bool), np.zeros(len(non_a), bool)])
    order = np.lexsort((b, a))
    return a[order], b[order], mated[order]


def read_adience(
    root: str | os.PathLike[str],
    max_nonmated: int | None = None,
    seed: int = 0,
    name: str = "adience",
) -> Benchmark:
    """Read aligned 112x112 faces arranged as ``root/<identity>/<file>``; all-vs-all pairs.

    Every unordered pair of images is compared: pairs within an identity folder are mated, pairs
    across identity folders are non-mated. ``max_nonmated`` keeps a uniform random subset
    (``seed``) of the non-mated pairs; all mated pairs are always kept. Comparisons are sorted
    by (a, b) with a < b. Samples are sorted by (identity, file name) and carry ``identity``.
    Note the size: n images give n(n-1)/2 comparisons (19k images: about 180M). Without
    ``max_nonmated`` they are kept implicit (``Benchmark.all_pairs``): the Study evaluates all
    of them exactly in bounded memory, and ``comparisons`` is materialised only on access (and
    only up to :data:`MATERIALISE_LIMIT` rows). ``max_nonmated`` is an explicit choice to
    evaluate a sample of the non-mated pairs instead (then the protocol differs from the paper's).

    Arranging the real Adience data: its ``aligned/<user_id>/landmark_aligned_face.<face_id>.
    <original_image>.jpg`` files are not 112x112 ArcFace crops. Detect 5 landmarks, align each
    face with :func:`align_face`, and save it under ``root/<user_id>_<face_id>/<file>``: the
    subject identity is the (user_id, face_id) combination, since face ids are only unique
    within one user's album. :func:`write_identity_folders` writes this layout.

    Raises:
        DatasetFormatError: no identity folders or images found, or an image is not 112x112.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise FileNotFoundError(f"Adience root folder not found: {root_p}")
    identities: list[str] = []
    paths: list[Path] = []
    for d in sorted(p for p in root_p.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f
            for f in d.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        identities += [d.name] * len(files)
        paths += files
    if not paths:
        raise DatasetFormatError(f"{root_p}: no images found under <identity>/ subfolders")
    codes = np.unique(np.array(identities), return_inverse=True)[1].astype(np.int64)
    samples = pd.DataFrame(
        {
            "sample_id": np.arange(len(paths), dtype=np.int64),
            "path": [str(p) for p in paths],
            "identity": identities,
        }
    )
    if max_nonmated is None:  # all pairs: implicit, evaluated without materialising them
        comparisons, all_pairs = None, AllPairs.from_codes(codes)
    else:
        a, b, mated = _all_pairs(codes, max_nonmated, seed)
        comparisons, all_pairs = pd.DataFrame({"a": a, "b": b, "mated": mated}), None
    return Benchmark(
        name=name,
        level="sample",
        samples=samples,
        comparisons=comparisons,
        all_pairs=all_pairs,
        _decode=lambda k: decode_image(paths[k], size=(IMAGE_SIZE, IMAGE_SIZE)),
        _files=tuple((str(p.relative_to(root_p)), p) for p in paths),
        _protocol=f"adience:max_nonmated={max_nonmated}:seed={seed}",
    )


def write_identity_folders(
    root: str | os.PathLike[str],
    images_by_identity: Mapping[str, Sequence[np.ndarray]],
    overwrite: bool = False,
    fmt: ImageFormat = "jpeg",
    quality: int = 95,
) -> list[Path]:
    """Write ``root/<identity>/<nnnn>.jpg|png`` (index from 0) for :func:`read_adience`.

    Returns:
        The written paths, in identity then index order.
    """
    root_p = Path(root)
    suffix = image_suffix(fmt)
    targets: dict[Path, np.ndarray] = {}
    for ident, ims in images_by_identity.items():
        if not ident or "/" in ident or ident.startswith("."):
            raise ValueError(f"identity {ident!r} is not a valid folder name")
        for p, im in enumerate(ims):
            targets[root_p / ident / f"{p:04d}{suffix}"] = im
    refuse_existing(list(targets), overwrite)
    for target, im in targets.items():
        write_bytes(target, encode_image(im, fmt, quality), overwrite)
    return list(targets)
