"""IJB-C template features from per-image embeddings: the group's protocol
(:func:`template_embeddings`) and insightface's (:func:`insightface_template_embeddings`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from exfiqa.evaluation.pairs import release_pages


def _group_ids(name: str, ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n:
        raise ValueError(f"{name} must be 1-D with one entry per image ({n}), got {ids.shape}")
    return ids


def _template_sums(
    n: int, dim: int, template_ids: np.ndarray, media_ids: np.ndarray, rows: Any, source: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per template: sum over its media of the mean of the media's image rows; L2-normalised.

    ``rows(r0, r1)``: the float64 image features of rows ``r0:r1``, read a block at a time (``source``'s
    pages released after each). A media id shared by several templates is averaged within each.
    """
    from scipy import sparse  # only here: scipy takes a while to import

    tids = _group_ids("template_ids", template_ids, n)
    mids = _group_ids("media_ids", media_ids, n)
    unique_t, t_inv = np.unique(tids, return_inverse=True)
    _, m_inv = np.unique(mids, return_inverse=True)
    group_key = t_inv.astype(np.int64) * (int(m_inv.max(initial=0)) + 1) + m_inv
    _, g_inv, g_count = np.unique(group_key, return_inverse=True, return_counts=True)
    w = sparse.csc_matrix((1.0 / g_count[g_inv], (t_inv, np.arange(n))), shape=(len(unique_t), n))
    feats = np.zeros((len(unique_t), dim), dtype=np.float64)
    step = max(1, (1 << 22) // max(source.shape[1], 1))  # rows per chunk: 4M float64 values (32 MB)
    for r0 in range(0, n, step):
        chunk = rows(r0, r0 + step)
        if not np.isfinite(chunk).all():
            raise ValueError("embeddings contain NaN or inf")
        feats += w[:, r0 : r0 + step] @ chunk
        release_pages(source, r0, r0 + step)  # memory-mapped embeddings: read once, not kept resident
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    if np.any(norms == 0):
        bad = unique_t[np.flatnonzero(norms[:, 0] == 0)]
        raise ValueError(f"templates with a zero feature sum: {bad[:10].tolist()}")
    feats /= norms
    return unique_t, feats


def template_embeddings(
    embeddings: np.ndarray, template_ids: np.ndarray, media_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """IJB-C template features (the group's protocol): mean within each media, sum over media,
    L2-normalise (in float64), of the stored per-image embeddings ``[L2(f(x)), L2(f(flip x))]``.

    Returns ``(sorted unique template ids (T,), features (T, D))``, float32 unless the input is float64.
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {emb.shape}")
    n, dim = emb.shape
    unique_t, feats = _template_sums(n, dim, template_ids, media_ids, lambda r0, r1: emb[r0:r1].astype(np.float64), emb)
    return unique_t, feats if emb.dtype == np.float64 else feats.astype(np.float32)


def insightface_template_embeddings(
    embeddings: np.ndarray, det_scores: np.ndarray, template_ids: np.ndarray, media_ids: np.ndarray,
    norms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """IJB-C template features of insightface's ``arcface_torch/eval_ijbc.py`` (flip test, norm score
    and detector score on): image feature ``g = (f(x) + f(flip x)) * det_score`` with ``f`` the
    unnormalised FR output; per template the media means are summed and L2-normalised (in float64).

    ``embeddings``: (N, 2E), the unnormalised ``[f(x), f(flip x)]``, or with ``norms`` (N, 2)
    ``[||f(x)||, ||f(flip x)||]`` the stored ``[L2(f(x)), L2(f(flip x))]``. Returns ``(sorted unique
    template ids (T,), features (T, E) float32)``.
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[1] % 2:
        raise ValueError(f"embeddings must be (N, 2E) flip-concatenated, got shape {emb.shape}")
    n, half = emb.shape[0], emb.shape[1] // 2
    det = np.asarray(det_scores, dtype=np.float64)
    if det.shape != (n,) or not np.isfinite(det).all():
        raise ValueError(f"det_scores must be {n} finite detector scores, got shape {det.shape}")
    scale = np.ones((n, 2))
    if norms is not None:
        scale = np.asarray(norms, dtype=np.float64)
        if scale.shape != (n, 2) or not np.isfinite(scale).all() or np.any(scale <= 0):
            raise ValueError(f"norms must be (N, 2) = ({n}, 2) positive finite norms, got shape {scale.shape}")

    def rows(r0: int, r1: int) -> np.ndarray:
        chunk, s = emb[r0:r1].astype(np.float64), scale[r0:r1]
        return (chunk[:, :half] * s[:, :1] + chunk[:, half:] * s[:, 1:]) * det[r0:r1, None]

    unique_t, feats = _template_sums(n, half, template_ids, media_ids, rows, emb)
    return unique_t, feats.astype(np.float32)
