"""ViT-FIQA on timm's VisionTransformer, with every early exit in one forward pass.

Conventions:
- Input: aligned faces (B, 3, 112, 112), **RGB**, normalised ``(x/255 - 0.5)/0.5`` (:func:`to_tensor`).
  Higher score = better quality.
- Exit ``l`` (1-based, ``1..depth``) = ``l`` blocks, the **shared final LayerNorm** ``norm``, then the
  **unchanged** heads; exit ``depth`` is the plain ViT-FIQA score.
- Variant ``"token"`` (T): a learnable quality token (timm's class token, saved as ``qs_token``) is
  prepended; score = ``head_qs(norm(x)[:, 0])``; the FR embedding is ``feature(patch tokens)``.
- Variant ``"crfiqa"`` (C): no token; embedding = ``feature(flatten(norm(x)))``, score = ``head_qs(embedding)``.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal, cast

import numpy as np
import torch
from numpy.typing import NDArray
from timm.layers.attention import Attention
from timm.layers.patch_embed import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from exfiqa.io import CheckpointError, atomic_path
from exfiqa.models.checkpoints import load_state_dict_with_metadata, state_dict_report

__all__ = [
    "ConvStemPatchEmbed", "ExitOutput", "VITNT_COLUMNS", "attn_fiqa_from_qk", "check_vitnt_blocks",
    "qk_from_qkv", "received_attention", "vitnt_token_quality", "ViTFIQA", "ViTFIQAConfig",
    "capture_attention", "attention_grid", "build_vitfiqa", "load_vitfiqa", "released_state_dict",
    "save_vitfiqa", "to_tensor", "vit_input",
]

Variant = Literal["token", "crfiqa"]


@dataclass(frozen=True)
class ViTFIQAConfig:
    """Architecture of a ViT-FIQA model (defaults: the released one); ``stem_channels``: 3x3 stride-2
    conv + BN + ReLU layers before the patch projection."""

    variant: Variant = "token"
    img_size: int = 112
    patch_size: int = 9
    embed_dim: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    feature_dim: int = 512
    stem_channels: tuple[int, ...] = ()
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.variant not in ("token", "crfiqa"):
            raise ValueError(f"variant must be 'token' or 'crfiqa', got {self.variant!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.grid_size < 1:
            raise ValueError(
                f"patch_size={self.patch_size} too large for img_size={self.img_size} "
                f"with a {len(self.stem_channels)}-layer stem"
            )

    @property
    def grid_size(self) -> int:
        """Patches per side (112 // 9 = 12); each stem layer halves the image first."""
        return (self.img_size // (1 << len(self.stem_channels))) // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.variant == "token" else 0

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens


class ConvStemPatchEmbed(PatchEmbed):
    """timm ``PatchEmbed`` after a conv stem (keys ``patch_embed.stem.{3k}.weight`` conv, ``.{3k+1}.*`` BN)."""

    def __init__(self, img_size: int, stem_channels: Sequence[int], in_chans: int = 3, **kwargs: Any) -> None:
        super().__init__(img_size=img_size // 2 ** len(stem_channels), in_chans=stem_channels[-1], **kwargs)
        layers: list[nn.Module] = []
        for c_in, c_out in zip((in_chans, *stem_channels), stem_channels, strict=False):
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.stem = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # timm's PatchEmbed.forward is unannotated; it maps (B, C, H, W) to (B, N, D) tokens
        project = cast(Callable[[torch.Tensor], torch.Tensor], super().forward)
        return project(self.stem(x))


@dataclass
class ExitOutput:
    """Outputs of :meth:`ViTFIQA.forward_exits`; column ``j`` of each per-exit field is ``exits[j]``."""

    exits: list[int]  # 1-based, ascending, distinct
    scores: torch.Tensor  # (B, E)
    embeddings: torch.Tensor | None = None  # (B, E, feature_dim), if requested
    attn_fiqa: torch.Tensor | None = None  # (B, E) float32 (family=True)
    vitnt_fiqa: torch.Tensor | None = None  # (B, 2) float32, columns VITNT_COLUMNS (family=True)
    vitnt_blocks: int | None = None  # k of ViTNT-FIQA's range 1..k


AttnTokens = Literal["all", "patches"]

VITNT_COLUMNS = ("mean", "attention")  # columns of ExitOutput.vitnt_fiqa and of vitnt-<q>.npy
VITNT_SHARPNESS = 8.0  # ViTNT-FIQA's token quality 2 / (1 + exp(VITNT_SHARPNESS * d))


class ViTFIQA(VisionTransformer):
    """ViT-FIQA: timm's VisionTransformer plus the ``feature`` and ``head_qs`` heads."""

    def __init__(self, config: ViTFIQAConfig) -> None:
        stem = partial(ConvStemPatchEmbed, stem_channels=config.stem_channels)
        super().__init__(
            img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
            depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=False,
            act_layer=nn.ReLU6, norm_layer=partial(nn.LayerNorm, eps=1e-5), class_token=config.variant == "token",
            global_pool="", num_classes=0, drop_path_rate=config.drop_path_rate,
            embed_layer=stem if config.stem_channels else PatchEmbed,
        )
        self.config = config
        d, f = config.embed_dim, config.feature_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.feature = nn.Sequential(
            nn.Linear(config.num_patches * d, f, bias=False), nn.BatchNorm1d(f, eps=2e-5),
            nn.Linear(f, f, bias=False), nn.BatchNorm1d(f, eps=2e-5),
        )
        head_in = d if config.variant == "token" else f
        self.head_qs = nn.Sequential(nn.BatchNorm1d(head_in, eps=2e-5), nn.Linear(head_in, 1, bias=False))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def tokens(self, x: torch.Tensor, mask_ratio: float = 0.0) -> torch.Tensor:
        """Input of block 1 (patch embedding, quality token, position); ``mask_ratio``: training masking."""
        x = self.patch_embed(x)
        if mask_ratio > 0:
            b, n, _ = x.shape
            n_mask = int(round(mask_ratio * n))
            if n_mask:
                idx = torch.rand(b, n, device=x.device).argsort(dim=1)[:, :n_mask]
                mask = torch.zeros(b, n, dtype=torch.bool, device=x.device).scatter_(1, idx, True)
                x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        out: torch.Tensor = self.norm_pre(self.patch_drop(self._pos_embed(x)))
        return out

    def exit_head(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Heads on LayerNorm-ed tokens (B, N, D) -> ``(score (B,), embedding (B, F) or None)``
        ((T): None, see :meth:`embedding`)."""
        if self.config.variant == "token":
            return self.head_qs(normed[:, 0]).squeeze(-1), None
        emb: torch.Tensor = self.feature(normed.flatten(1))
        return self.head_qs(emb).squeeze(-1), emb

    def embedding(self, normed: torch.Tensor) -> torch.Tensor:
        """FR embedding (B, F) from LayerNorm-ed tokens: ``feature`` on the flattened patch tokens."""
        emb: torch.Tensor = self.feature(normed[:, self.num_prefix_tokens :].flatten(1))
        return emb

    def _check_heads_eval(self) -> None:
        """Refuse heads whose BatchNorm is in training mode (see :meth:`forward_exits`)."""
        training = [f"{head}.{name}" for head, module in (("feature", self.feature), ("head_qs", self.head_qs))
                    for name, bn in module.named_modules() if isinstance(bn, _BatchNorm) and bn.training]
        if training:
            raise RuntimeError(
                f"forward_exits needs the heads in eval mode, but the BatchNorm layers {training} "
                f"are in training mode: all requested exits go through the heads as one batch, "
                f"which equals calling them exit by exit only with running statistics. Call "
                f"model.eval() first (training uses forward_train, the last exit)."
            )

    def forward_exits(
        self, x: torch.Tensor, exits: Sequence[int] | None = None, return_embeddings: bool = False,
        family: bool = False, attn_tokens: AttnTokens = "all", vitnt_blocks: int | Sequence[int] | None = None,
    ) -> ExitOutput:
        """Scores of ``exits`` (1-based; default all; sorted, de-duplicated) in one pass of ``max(exits)``
        blocks; the heads must be in eval mode (RuntimeError). ``family``: also ATTN-FIQA at every exit
        (queries/keys: ``attn_tokens`` "all" as the authors, or "patches") and ViTNT-FIQA over blocks
        ``1..k`` (``vitnt_blocks``: ``k`` or ``[1, ..., k]``, k >= 2, default ``max(exits)``), both
        float32, scores unchanged bit for bit.

        ViTNT-FIQA: each block's normed tokens, L2-normalised ((T): patches only); ``d_p`` = mean over
        ``t < k`` of ``||x_{t+1,p} - x_{t,p}||``; ``q_p = 2 / (1 + exp(8 d_p))``; columns: mean ``q_p``
        and ``sum_p w_p q_p``, ``w_p`` the softmax attention block ``k`` gives token ``p``.
        """
        self._check_heads_eval()
        exits = self._check_exits(exits)
        if attn_tokens not in ("all", "patches"):
            raise ValueError(f"attn_tokens must be 'all' or 'patches', got {attn_tokens!r}")
        h = self.tokens(x)
        normed: list[torch.Tensor] = []
        attn_fiqa = vitnt = None
        last: int | None = None
        if family:
            last = check_vitnt_blocks(vitnt_blocks, exits[-1], self.depth)
            normed, attn_fiqa, vitnt = self._family_pass(h, exits, attn_tokens, last)
        elif vitnt_blocks is not None:
            raise ValueError("vitnt_blocks is a ViTNT-FIQA option: it needs family=True")
        else:
            for i, block in enumerate(self.blocks[: exits[-1]], start=1):
                h = block(h)
                if i in exits:
                    normed.append(self.norm(h))
        # One batched call of the heads over all exits (E*B, N, D): eval BatchNorm is per-sample.
        stacked = torch.cat(normed, dim=0)
        scores, emb = self.exit_head(stacked)
        embeddings = None
        if return_embeddings:
            emb = self.embedding(stacked) if emb is None else emb
            embeddings = emb.view(len(exits), x.shape[0], -1).transpose(0, 1).contiguous()
        scores = scores.view(len(exits), x.shape[0]).T.contiguous()
        return ExitOutput(exits, scores, embeddings, attn_fiqa, vitnt, last)

    def _family_pass(
        self, h: torch.Tensor, exits: list[int], attn_tokens: AttnTokens, last: int
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Block loop of ``forward_exits(family=True)`` -> (normed exits, attn_fiqa, vitnt_fiqa); q, k
        come from a hook on each qkv projection; one (B, H, N, N) softmax is formed, at block ``last``."""
        p0 = self.num_prefix_tokens
        a0 = p0 if attn_tokens == "patches" else 0
        normed: list[torch.Tensor] = []
        attn_cols: list[torch.Tensor] = []
        prev: torch.Tensor | None = None
        dist_sum: torch.Tensor | None = None
        weights: torch.Tensor | None = None
        taps: list[torch.Tensor] = []
        blocks = list(self.blocks)[: max(exits[-1], last)]
        attns = [_block_attention(blk) for blk in blocks]
        handles = [attn.qkv.register_forward_hook(lambda _m, _inp, out: taps.append(out)) for attn in attns]
        try:
            for i, (block, attn) in enumerate(zip(blocks, attns, strict=True), start=1):
                h = block(h)
                if len(taps) != 1:
                    raise RuntimeError(f"block {i}: expected one qkv projection call, saw {len(taps)}")
                q, k = qk_from_qkv(attn, taps.pop())
                n = self.norm(h)
                if i in exits:
                    normed.append(n)
                    attn_cols.append(attn_fiqa_from_qk(q, k, attn.scale, start=a0))
                if i <= last:
                    cur = nn.functional.normalize(n[:, p0:].float(), dim=-1)
                    if prev is None:
                        dist_sum = torch.zeros(cur.shape[:2], device=cur.device)
                    else:
                        dist_sum = dist_sum + torch.linalg.vector_norm(cur - prev, dim=-1)
                    prev = cur
                if i == last:
                    weights = received_attention(q, k, attn.scale, start=p0)
        finally:
            for handle in handles:
                handle.remove()
        assert dist_sum is not None and weights is not None
        quality = vitnt_token_quality(dist_sum / (last - 1))
        vitnt = torch.stack([quality.mean(dim=1), (quality * weights).sum(dim=1)], dim=1)
        return normed, torch.stack(attn_cols, dim=1), vitnt

    def score_at_exit(self, x: torch.Tensor, exit: int) -> torch.Tensor:
        """Truncated model: runs only the first ``exit`` blocks and returns (B,) scores."""
        return self.forward_exits(x, [exit]).scores[:, 0]

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """Plain ViT-FIQA score (B,) (the last exit); ``attn_mask``/``is_causal`` go to timm."""
        return self.exit_head(self.forward_features(x, attn_mask=attn_mask, is_causal=is_causal))[0]

    def forward_train(self, x: torch.Tensor, mask_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: (FR embedding (B, F), quality score (B,)) at the last exit."""
        h = self.norm(self.blocks(self.tokens(x, mask_ratio)))
        score, emb = self.exit_head(h)
        return self.embedding(h) if emb is None else emb, score

    def _check_exits(self, exits: Sequence[int] | None) -> list[int]:
        if exits is None:
            return list(range(1, self.depth + 1))
        out = sorted({int(e) for e in exits})
        if not out or out[0] < 1 or out[-1] > self.depth:
            raise ValueError(f"exits must lie in 1..{self.depth}, got {list(exits)}")
        return out


def build_vitfiqa(config: ViTFIQAConfig | None = None, **overrides: Any) -> ViTFIQA:
    """Build a randomly initialised ViT-FIQA (``config`` fields may be overridden by keyword)."""
    return ViTFIQA(replace(config or ViTFIQAConfig(), **overrides))


def check_vitnt_blocks(blocks: int | Sequence[int] | None, default: int, depth: int) -> int:
    """ViTNT-FIQA's block range ``1..k`` -> ``k`` (None -> ``default``). ValueError unless 2 <= k <= depth,
    or for a list other than ``[1, 2, ..., k]`` (the reference code silently skips blocks of such a list)."""
    if isinstance(blocks, bool):
        raise ValueError(f"vitnt_blocks must be an int k or the list [1, ..., k], got {blocks!r}")
    if blocks is None:
        k = int(default)
        if not 2 <= k <= depth:  # nothing was passed: say what the default came from
            fix = (f"request an exit >= 2 or pass vitnt_blocks=k with 2 <= k <= {depth}" if depth >= 2
                   else "a model of depth 1 has no pair of consecutive blocks: use family=False")
            raise ValueError(
                f"family=True also computes ViTNT-FIQA over blocks 1..k, by default k = max(exits) "
                f"= {k}, but ViTNT-FIQA needs k >= 2 (at least one pair of consecutive blocks): {fix}"
            )
    elif isinstance(blocks, int):
        k = blocks
    else:
        listed = [int(b) for b in blocks]
        if listed != list(range(1, len(listed) + 1)):
            raise ValueError(
                f"vitnt_blocks must be a prefix [1, 2, ..., k] of the blocks (ViTNT-FIQA averages "
                f"the change between consecutive blocks), got {list(blocks)}"
            )
        k = len(listed)
    if not 2 <= k <= depth:
        raise ValueError(
            f"vitnt_blocks: ViTNT-FIQA needs blocks 1..k with 2 <= k <= {depth} (at least one pair "
            f"of consecutive blocks), got k={k}"
        )
    return k


def _block_attention(block: nn.Module) -> Attention:
    """A block's timm ``Attention``; TypeError for another class (its q/k would be read wrongly)."""
    attn = block.attn
    if not isinstance(attn, Attention):
        raise TypeError(f"expected a timm Attention in every block, got {type(attn).__name__}")
    return attn


def qk_from_qkv(attn: Attention, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k, (B, heads, N, head_dim) each, from the output (B, N, 3*heads*head_dim) of a timm
    ``Attention``'s ``qkv`` projection, split and normalised (``q_norm``/``k_norm``) as timm does."""
    b, n, _ = qkv.shape
    q, k, _v = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q), attn.k_norm(k)


def attn_fiqa_from_qk(q: torch.Tensor, k: torch.Tensor, scale: float, start: int = 0) -> torch.Tensor:
    """ATTN-FIQA (B,) float32: mean over heads, queries, keys ``start:`` of ``scale * q_i . k_j`` (no (N, N))."""
    q_mean = q[:, :, start:].mean(dim=2, dtype=torch.float32)
    k_mean = k[:, :, start:].mean(dim=2, dtype=torch.float32)
    return (q_mean * k_mean).sum(dim=-1).mean(dim=-1) * scale


def received_attention(q: torch.Tensor, k: torch.Tensor, scale: float, start: int = 0) -> torch.Tensor:
    """Softmax attention each key token receives (B, N - start) float32: ``softmax(scale * q k^T)``
    averaged over heads, summed over queries, restricted to keys ``start:``, renormalised to sum 1."""
    logits = (q.float() * scale) @ k.float().transpose(-2, -1)
    received = logits.softmax(dim=-1).mean(dim=1).sum(dim=1)[:, start:]
    return received / received.sum(dim=-1, keepdim=True)


def vitnt_token_quality(mean_distance: torch.Tensor) -> torch.Tensor:
    """``2 / (1 + exp(8 d))`` elementwise, computed as ``2 * sigmoid(-8 d)`` (no overflow)."""
    return 2.0 * torch.sigmoid(-VITNT_SHARPNESS * mean_distance)


@contextlib.contextmanager
def capture_attention(model: ViTFIQA) -> Iterator[list[torch.Tensor]]:
    """Collect each block's softmax attention (B, heads, N, N), one tensor per block run, in order (fused
    attention is off inside: scores unchanged up to rounding)."""
    maps: list[torch.Tensor] = []
    attns = [_block_attention(blk) for blk in model.blocks]
    saved = [attn.fused_attn for attn in attns]
    handles = [a.attn_drop.register_forward_hook(lambda _m, inp, _out: maps.append(inp[0].detach())) for a in attns]
    try:
        for attn in attns:  # timm marks fused_attn Final (for TorchScript); we switch it per instance
            attn.fused_attn = False  # type: ignore[misc]
        yield maps
    finally:
        for h in handles:
            h.remove()
        for attn, fused in zip(attns, saved, strict=True):
            attn.fused_attn = fused  # type: ignore[misc]  # restores the Final flag set above


def attention_grid(attn: torch.Tensor, variant: Variant, grid_size: int) -> torch.Tensor:
    """Head-averaged attention over the patch grid (B, grid, grid): (T) the quality token's row
    (query 0) over the patch keys; (C) the mean attention each patch receives over all queries."""
    row = attn[:, :, 0, 1:].mean(dim=1) if variant == "token" else attn.mean(dim=(1, 2))
    return row.reshape(attn.shape[0], grid_size, grid_size)


_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
_STEM_KEY = re.compile(r"^patch_embed\.stem\.(\d+)\.weight$")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "model.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _looks_like(state: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("layer1.") for k in state) or "conv1.weight" in state:
        return " It looks like an iResNet face-recognition checkpoint, not ViT-FIQA."
    if any(k.startswith(("body.", "input_layer")) for k in state):
        return " It looks like a face.evoLVe IR (CurricularFace) checkpoint, not ViT-FIQA."
    return " It does not look like a ViT-FIQA checkpoint (expected pos_embed, blocks.*, head_qs.*)."


def config_from_state_dict(
    state: dict[str, torch.Tensor], num_heads: int = 8, img_size: int = 112, source: str = "state_dict"
) -> ViTFIQAConfig:
    """Infer a :class:`ViTFIQAConfig` from released key names and tensor shapes (the variant from
    ``qs_token``/``cls_token``); CheckpointError with the likely cause when they do not fit."""
    required = ("pos_embed", "patch_embed.proj.weight", "norm.weight", "head_qs.1.weight", "feature.0.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{source}: missing keys {missing}." + _looks_like(state))
    dims = {"pos_embed": 3, "patch_embed.proj.weight": 4, "norm.weight": 1, "head_qs.1.weight": 2,
            "feature.0.weight": 2, "blocks.0.mlp.fc1.weight": 2}  # the dimensions read below
    dims.update({k: 4 for k in state if _STEM_KEY.match(k) and state[k].dim() != 1})
    for key, ndim in dims.items():
        if key in state and (state[key].dim() != ndim or 0 in state[key].shape):
            raise CheckpointError(
                f"{source}: {key} has shape {list(state[key].shape)}, expected {ndim} non-zero dimensions."
                + _looks_like(state)
            )
    variant: Variant = "token" if ("qs_token" in state or "cls_token" in state) else "crfiqa"
    pos = state["pos_embed"]
    embed_dim = int(pos.shape[-1])
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))), default=-1)
    if depth < 1:
        raise CheckpointError(f"{source}: no transformer blocks (blocks.N.*) found." + _looks_like(state))
    stem_idx = sorted(int(m.group(1)) for k in state if (m := _STEM_KEY.match(k)))
    stem = tuple(int(state[f"patch_embed.stem.{i}.weight"].shape[0]) for i in stem_idx if state[f"patch_embed.stem.{i}.weight"].dim() == 4)
    hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in state else 4 * embed_dim
    config = ViTFIQAConfig(
        variant=variant, img_size=img_size, patch_size=int(state["patch_embed.proj.weight"].shape[-1]),
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=hidden / embed_dim,
        feature_dim=int(state["feature.0.weight"].shape[0]), stem_channels=stem,
    )
    if int(pos.shape[1]) != config.num_tokens:
        other = "crfiqa" if variant == "token" else "token"
        raise CheckpointError(
            f"{source}: pos_embed has {int(pos.shape[1])} tokens but a {variant!r} model with a "
            f"{config.grid_size}x{config.grid_size} patch grid needs {config.num_tokens}. Wrong "
            f"variant (expected {other!r}?), a missing/extra qs_token, or a different img_size."
        )
    return config


def _to_internal(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {("cls_token" if k == "qs_token" else k): v for k, v in state.items()}
    for key in [k for k in out if k.endswith(".running_var")]:
        # Older PyTorch BN state_dicts lack the counter; it is not a weight.
        out.setdefault(key.replace(".running_var", ".num_batches_tracked"), torch.tensor(0))
    if "mask_token" not in out and "pos_embed" in out:
        out["mask_token"] = torch.zeros(1, 1, out["pos_embed"].shape[-1])
    return out


def released_state_dict(model: ViTFIQA) -> dict[str, torch.Tensor]:
    """The model's state_dict under the released key names (``cls_token`` -> ``qs_token``)."""
    return {("qs_token" if k == "cls_token" else k): v.detach().cpu() for k, v in model.state_dict().items()}


METADATA_KEY = "exfiqa"  # _metadata entry {"num_heads": int}: pickled with the dict, invisible to load_state_dict
NUM_HEADS_KEY = "exfiqa_num_heads"  # legacy 0-d int tensor key of the head count: read, no longer written

RELEASED_HEAD_DIM = 64


def _num_heads(state: dict[str, torch.Tensor], metadata: dict[str, Any], num_heads: int | None, source: str) -> int:
    """The head count the file records (legacy key popped from ``state``), else ``num_heads``, else 8."""
    found: list[int] = []
    legacy = state.pop(NUM_HEADS_KEY, None)
    if legacy is not None:
        if legacy.dim() != 0 or legacy.is_floating_point() or int(legacy) < 1:
            raise CheckpointError(f"{source}: {NUM_HEADS_KEY} must be a positive integer scalar, got {legacy!r}")
        found.append(int(legacy))
    entry = metadata.get(METADATA_KEY)
    if entry is not None:
        heads = entry.get("num_heads") if isinstance(entry, dict) else None
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise CheckpointError(
                f"{source}: _metadata[{METADATA_KEY!r}] must be a dict with a positive int 'num_heads', got {entry!r}"
            )
        found.append(heads)
    if len(set(found)) > 1:
        raise CheckpointError(f"{source}: {NUM_HEADS_KEY}={found[0]} contradicts _metadata[{METADATA_KEY!r}] num_heads={found[1]}")
    if not found:
        return 8 if num_heads is None else int(num_heads)
    if num_heads is not None and num_heads != found[0]:
        raise CheckpointError(
            f"{source}: the checkpoint records num_heads={found[0]} but num_heads={num_heads} was "
            f"asked for (config entry or --num-heads); drop the setting or make it {found[0]}"
        )
    return found[0]


def load_vitfiqa(
    path: str | os.PathLike[str], num_heads: int | None = None, img_size: int = 112, device: str | torch.device = "cpu"
) -> ViTFIQA:
    """Load a released ViT-FIQA state_dict (either variant; ``module.`` etc. prefixes stripped;
    architecture from shapes; heads as recorded, else ``num_heads``, else 8) strictly, in eval mode.
    CheckpointError: unsafe file, non-finite weights, key/shape mismatch, contradicting ``num_heads``."""
    raw, metadata = load_state_dict_with_metadata(path)
    state = _strip_prefixes(raw)
    heads = _num_heads(state, metadata, num_heads, str(path))
    config = config_from_state_dict(state, num_heads=heads, img_size=img_size, source=str(path))
    if config.embed_dim == 512 and config.embed_dim // heads != RELEASED_HEAD_DIM:
        warnings.warn(
            f"{path}: width 512 as the released ViT-FIQA but num_heads={heads} gives head dim "
            f"{config.embed_dim // heads}; the released models use {512 // RELEASED_HEAD_DIM} heads of "
            f"{RELEASED_HEAD_DIM}. Scores will be wrong unless this checkpoint was trained so.",
            stacklevel=2,
        )
    model = ViTFIQA(config)
    internal = _to_internal(state)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    report = state_dict_report(expected, {k: v.shape for k, v in internal.items()}, str(path))
    if report is not None:
        hint = f" Detected variant {config.variant!r}, depth {config.depth}, width {config.embed_dim}."
        if sum(k not in internal for k in expected) > 10:
            hint += _looks_like(state)
        raise CheckpointError(report + "." + hint)
    model.load_state_dict(internal, strict=True)
    return model.to(device).eval()


def save_vitfiqa(model: ViTFIQA, path: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Save ``model`` atomically as a released-format state_dict, the head count in ``_metadata``."""
    state = OrderedDict(released_state_dict(model))
    versions = getattr(model.state_dict(), "_metadata", {})
    state._metadata = {**versions, METADATA_KEY: {"num_heads": int(model.config.num_heads)}}  # type: ignore[attr-defined]
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:  # a file object: the archive is not named after the temp file
            torch.save(state, fh)


def to_tensor(batch: NDArray[np.uint8] | Sequence[NDArray[np.uint8]]) -> torch.Tensor:
    """uint8 RGB (B, H, W, 3) array -> ViT-FIQA's input float32 (B, 3, H, W) ``(x/255 - 0.5)/0.5``."""
    arr = np.asarray(batch)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images (B, H, W, 3), got {arr.dtype} {arr.shape}")
    return vit_input(torch.from_numpy(np.ascontiguousarray(arr)))


def vit_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC RGB tensor -> float32 NCHW ``(x/255 - 0.5)/0.5`` on x's device."""
    return (x.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
