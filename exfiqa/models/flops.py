"""Analytic compute cost of each exit, in FLOPs = 2 x multiply-accumulates (MACs), counted as in the paper.

Per block ``3ND^2 + 2N^2 D + ND^2 + 2NDH`` MACs (N tokens, D width, MLP hidden H; norms, softmax and
activations ignored), plus the patch embedding and the heads one exit reads (2 FLOPs per element for each
LayerNorm and BatchNorm). Full-size (C): exit 12 = 11.49 GFLOPs. The family methods
(``forward_exits(family=True)``) are counted as extra work over the all-exits pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from exfiqa.models.vitfiqa import ViTFIQAConfig


def patch_embed_flops(c: ViTFIQAConfig) -> float:
    """FLOPs of the patch embedding (and conv stem): one conv per output position."""
    macs = 0.0
    side, prev = c.img_size, 3
    for ch in c.stem_channels:
        side = (side + 1) // 2
        macs += side * side * ch * prev * 9
        prev = ch
    macs += c.num_patches * c.embed_dim * prev * c.patch_size**2
    return 2.0 * macs


def block_flops(c: ViTFIQAConfig) -> float:
    """FLOPs of one transformer block over ``c.num_tokens`` tokens."""
    n, d = c.num_tokens, c.embed_dim
    hidden = c.mlp_ratio * d
    macs = 3 * n * d * d + 2 * n * n * d + n * d * d + 2 * n * d * hidden
    return 2.0 * macs


def head_flops(c: ViTFIQAConfig) -> float:
    """FLOPs of the final LayerNorm plus heads that turn one exit's tokens into a score."""
    d, f = c.embed_dim, c.feature_dim
    if c.variant == "token":
        return 2.0 * d + 2.0 * d + 2.0 * d  # LN of the quality token, BN, Linear(D -> 1)
    macs = c.num_patches * d * f + f * f + f
    return 2.0 * macs + 2.0 * c.num_tokens * d + 2 * (2.0 * f) + 2.0 * f


@dataclass(frozen=True)
class ExitCost:
    """Cost of reading exit ``exit`` alone (a model truncated after ``exit`` blocks)."""

    exit: int
    gflops: float
    fraction_of_full: float

    @property
    def saving(self) -> float:
        """Fraction of the full model's FLOPs saved by stopping here."""
        return 1.0 - self.fraction_of_full


def exit_cost(c: ViTFIQAConfig, exit: int) -> ExitCost:
    """GFLOPs of the truncated model that runs ``exit`` blocks and the heads once."""
    if not 1 <= exit <= c.depth:
        raise ValueError(f"exit must lie in 1..{c.depth}, got {exit}")
    flops = patch_embed_flops(c) + exit * block_flops(c) + head_flops(c)
    full = patch_embed_flops(c) + c.depth * block_flops(c) + head_flops(c)
    return ExitCost(exit=exit, gflops=flops / 1e9, fraction_of_full=flops / full)


def exit_costs(c: ViTFIQAConfig) -> list[ExitCost]:
    """:func:`exit_cost` for every exit ``1..depth``."""
    return [exit_cost(c, k) for k in range(1, c.depth + 1)]


def fused_cost(c: ViTFIQAConfig, exits: int | None = None) -> float:
    """GFLOPs of fusing exits ``1..exits`` (default all): the blocks once, the heads per exit."""
    k = c.depth if exits is None else exits
    return (patch_embed_flops(c) + k * block_flops(c) + k * head_flops(c)) / 1e9


def attn_fiqa_flops(c: ViTFIQAConfig, attn_tokens: str = "all") -> float:
    """Extra FLOPs of ATTN-FIQA at one exit (``"all"`` tokens or ``"patches"`` only)."""
    if attn_tokens not in ("all", "patches"):
        raise ValueError(f"attn_tokens must be 'all' or 'patches', got {attn_tokens!r}")
    n = c.num_tokens if attn_tokens == "all" else c.num_patches
    d = c.embed_dim
    return 2.0 * n * d + 2.0 * d


def vitnt_fiqa_flops(c: ViTFIQAConfig, blocks: int | None = None) -> float:
    """Extra FLOPs of ViTNT-FIQA over blocks ``1..blocks`` (default all), both aggregations."""
    k = c.depth if blocks is None else blocks
    if not 2 <= k <= c.depth:
        raise ValueError(f"blocks must lie in 2..{c.depth}, got {k}")
    n, p, d, heads = c.num_tokens, c.num_patches, c.embed_dim, c.num_heads
    per_block = 3.0 * p * d + (2.0 * p * d if c.variant == "token" else 0.0)
    per_pair = 3.0 * p * d
    weights = 2.0 * n * n * d + 2.0 * heads * n * n
    return k * per_block + (k - 1) * per_pair + weights


def family_extra_flops(
    c: ViTFIQAConfig, exits: int | None = None, attn_tokens: str = "all", vitnt_blocks: int | None = None
) -> float:
    """Extra FLOPs of ``forward_exits(family=True)`` reading exits ``1..exits`` (default all): ATTN-FIQA
    at each and ViTNT-FIQA over ``1..vitnt_blocks`` (default ``exits``)."""
    e = c.depth if exits is None else exits
    if not 1 <= e <= c.depth:
        raise ValueError(f"exits must lie in 1..{c.depth}, got {e}")
    return e * attn_fiqa_flops(c, attn_tokens) + vitnt_fiqa_flops(c, e if vitnt_blocks is None else vitnt_blocks)
