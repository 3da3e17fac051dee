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


def _decode_aligned(path: Path) -> np.ndarray:
    return decode_image(path, size=(IMAGE_SIZE, IMAGE_SIZE))


def _write_images(targets: Mapping[Path, np.ndarray], fmt: ImageFormat, quality: int, overwrite: bool) -> None:
    for target, im in targets.items():
        write_bytes(target, encode_image(im, fmt, quality), overwrite)


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
        if len(fields) not in (3, 4):
            raise DatasetFormatError(
                f"{pairs_file}:{lineno}: expected 3 fields (name n1 n2, mated) or 4 fields "
                f"(name1 n1 name2 n2, non-mated), got {len(fields)}: {line!r}"
            )
        name1, name2 = fields[0], fields[-2 if len(fields) == 4 else 0]
        try:
            i1, i2 = int(fields[1]), int(fields[-1])
        except ValueError:
            raise DatasetFormatError(f"{pairs_file}:{lineno}: image index is not an integer: {line!r}") from None
        if min(i1, i2) < 1:
            raise DatasetFormatError(f"{pairs_file}:{lineno}: image indices start at 1: {line!r}")
        out.append((name1, i1, name2, i2))
    return out


def read_xqlfw(
    root: str | os.PathLike[str], pairs_file: str | os.PathLike[str], name: str = "xqlfw"
) -> Benchmark:
    """Read XQLFW (or any LFW-style benchmark of already aligned 112x112 images).

    Layout: ``root/<name>/<name>_<nnnn>.<ext>`` (index from 1) and a pairs file with a header
    line, then ``name n1 n2`` (mated) or ``name1 n1 name2 n2`` (non-mated) per line. Samples are
    the images the pairs name, sorted by (identity, index); comparisons keep the file's order.

    Raises:
        DatasetFormatError: a malformed pairs line (message names file and line number).
        FileNotFoundError: a referenced image is missing (message names the path).
    """
    root_p, pairs_p = Path(root), Path(pairs_file)
    pairs = _parse_lfw_pairs(pairs_p)
    keys = sorted({(n, i) for n1, i1, n2, i2 in pairs for n, i in ((n1, i1), (n2, i2))})
    index = {k: sid for sid, k in enumerate(keys)}
    paths = [_lfw_image_path(root_p, n, i) for n, i in keys]
    samples = pd.DataFrame({
        "sample_id": np.arange(len(keys), dtype=np.int64), "path": [str(p) for p in paths],
        "identity": [n for n, _ in keys], "image_index": np.array([i for _, i in keys], dtype=np.int64),
    })
    comparisons = pd.DataFrame({
        "a": np.array([index[(n1, i1)] for n1, i1, _, _ in pairs], dtype=np.int64),
        "b": np.array([index[(n2, i2)] for _, _, n2, i2 in pairs], dtype=np.int64),
        "mated": np.array([n1 == n2 for n1, _, n2, _ in pairs], dtype=bool),
    })
    files = ((pairs_p.name, pairs_p), *((str(p.relative_to(root_p)), p) for p in paths))
    return Benchmark(name=name, level="sample", samples=samples, comparisons=comparisons,
                     _decode=lambda k: _decode_aligned(paths[k]), _files=files, _protocol="xqlfw")


def write_xqlfw(
    root: str | os.PathLike[str], pairs_path: str | os.PathLike[str],
    images_by_name: Mapping[str, Sequence[np.ndarray]], pairs: Sequence[tuple[Any, ...]],
    overwrite: bool = False, fmt: ImageFormat = "jpeg", quality: int = 95,
) -> None:
    """Write ``root/<name>/<name>_<nnnn>.jpg|png`` (list position p as index p + 1) and the pairs
    file (header ``1<TAB><number of pairs>``; pairs ``(name, n1, n2)`` mated or ``(name1, n1, name2,
    n2)`` non-mated, 1-based). Existing files are refused before anything is written, unless
    ``overwrite``."""
    root_p, pairs_p = Path(root), Path(pairs_path)
    lines = [f"1\t{len(pairs)}"]
    for k, pair in enumerate(pairs):
        if len(pair) not in (3, 4):
            raise ValueError(f"pairs[{k}] has {len(pair)} fields, expected 3 or 4")
        for n, i in ((pair[0], pair[1]), (pair[-2 if len(pair) == 4 else 0], pair[-1])):
            if n not in images_by_name or not 1 <= int(i) <= len(images_by_name[n]):
                raise ValueError(f"pairs[{k}] refers to {n} #{i}, which is not in images_by_name")
            if any(ch.isspace() for ch in n):
                raise ValueError(f"identity name {n!r} contains whitespace")
        lines.append("\t".join(str(x) for x in pair))
    suffix = image_suffix(fmt)
    targets = {root_p / n / f"{n}_{p + 1:04d}{suffix}": im
               for n, ims in images_by_name.items() for p, im in enumerate(ims)}
    refuse_existing([*targets, pairs_p], overwrite)
    _write_images(targets, fmt, quality, overwrite)
    with atomic_write(pairs_p, overwrite=overwrite) as fh:
        fh.write("\n".join(lines) + "\n")


def read_adience(
    root: str | os.PathLike[str], max_nonmated: int | None = None, seed: int = 0, name: str = "adience"
) -> Benchmark:
    """Read aligned 112x112 faces arranged as ``root/<identity>/<file>``; all-vs-all pairs.

    Samples are sorted by (identity, file name). Every pair a < b is compared (mated within a
    folder), kept implicit (``Benchmark.all_pairs``: n(n-1)/2 pairs, 180M for 19k images) unless
    ``max_nonmated`` keeps all mated pairs and a uniform sample (``seed``) of the non-mated ones,
    sorted by (a, b) (a protocol other than the paper's). Real Adience: align each face of
    ``aligned/<user_id>/landmark_aligned_face.<face_id>.<image>.jpg`` with :func:`align_face` to
    ``root/<user_id>_<face_id>/`` (face ids are unique only within a user's album).

    Raises:
        DatasetFormatError: no identity folders or images found, or an image is not 112x112.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise FileNotFoundError(f"Adience root folder not found: {root_p}")
    identities: list[str] = []
    paths: list[Path] = []
    for d in sorted(p for p in root_p.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS)
        identities += [d.name] * len(files)
        paths += files
    if not paths:
        raise DatasetFormatError(f"{root_p}: no images found under <identity>/ subfolders")
    codes = np.unique(np.array(identities), return_inverse=True)[1].astype(np.int64)
    samples = pd.DataFrame({"sample_id": np.arange(len(paths), dtype=np.int64), "path": [str(p) for p in paths],
                            "identity": identities})
    pairs = AllPairs.from_codes(codes)
    if max_nonmated is None:  # all pairs: implicit, evaluated without materialising them
        comparisons, all_pairs = None, pairs
    else:
        a, b, mated = pairs.materialise(max_nonmated, seed)
        comparisons, all_pairs = pd.DataFrame({"a": a, "b": b, "mated": mated}), None
    files = tuple((str(p.relative_to(root_p)), p) for p in paths)
    return Benchmark(name=name, level="sample", samples=samples, comparisons=comparisons,
                     _decode=lambda k: _decode_aligned(paths[k]), _files=files,
                     _protocol=f"adience:max_nonmated={max_nonmated}:seed={seed}", all_pairs=all_pairs)


def write_identity_folders(
    root: str | os.PathLike[str], images_by_identity: Mapping[str, Sequence[np.ndarray]], overwrite: bool = False,
    fmt: ImageFormat = "jpeg", quality: int = 95,
) -> list[Path]:
    """Write ``root/<identity>/<nnnn>.jpg|png`` (index from 0) for :func:`read_adience`; returns the
    written paths, in identity then index order."""
    root_p = Path(root)
    suffix = image_suffix(fmt)
    targets: dict[Path, np.ndarray] = {}
    for ident, ims in images_by_identity.items():
        if not ident or "/" in ident or ident.startswith("."):
            raise ValueError(f"identity {ident!r} is not a valid folder name")
        for p, im in enumerate(ims):
            targets[root_p / ident / f"{p:04d}{suffix}"] = im
    refuse_existing(list(targets), overwrite)
    _write_images(targets, fmt, quality, overwrite)
    return list(targets)
