"""ATTN-FIQA and ViTNT-FIQA from the one pass of ``forward_exits(family=True)`` against a plain
re-implementation written from the formulas: every block's hidden state kept (a manual loop over
the blocks), the explicit (B, H, N, N) pre-softmax scores from ``block.attn.qkv`` reshaped as timm
does, an explicit softmax, all in float64 on a copy of the model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_model import randomise

from exfiqa.models.flops import attn_fiqa_flops, family_extra_flops, fused_cost, vitnt_fiqa_flops
from exfiqa.models.vitfiqa import ViTFIQAConfig, attn_fiqa_from_qk, build_vitfiqa

SMALL = dict(embed_dim=48, num_heads=4, feature_dim=16, depth=5)


@pytest.fixture(scope="module", params=["token", "crfiqa"])
def model(request):
    torch.manual_seed(0)
    m = build_vitfiqa(variant=request.param, **SMALL)
    randomise(m, seed=3)
    with torch.no_grad():  # larger q, k: peaked attention, so the attention weighting matters
        for blk in m.blocks:
            blk.attn.qkv.weight.mul_(4)
    return m.eval()


@pytest.fixture(scope="module")
def faces():
    return torch.randn(4, 3, 112, 112, generator=torch.Generator().manual_seed(1))


def reference(model, x, attn_tokens="all", k=None):
    """(attn (B, depth), vitnt (B, 2) over blocks 1..k) straight from the definitions, float64."""
    m = copy.deepcopy(model).double()
    x = x.double()
    p0 = m.num_prefix_tokens
    s0 = p0 if attn_tokens == "patches" else 0
    k = m.depth if k is None else k
    with torch.no_grad():
        h = m.tokens(x)
        b, n, d = h.shape
        attn_cols, softmaxes, hidden = [], [], []
        for blk in m.blocks:
            a = blk.attn
            qkv = a.qkv(blk.norm1(h)).reshape(b, n, 3, a.num_heads, d // a.num_heads).permute(2, 0, 3, 1, 4)
            q, kk, _ = qkv.unbind(0)
            scores = q @ kk.transpose(-2, -1) * (d // a.num_heads) ** -0.5  # (B, H, N, N)
            attn_cols.append(scores[:, :, s0:, s0:].mean(dim=(1, 2, 3)))
            softmaxes.append(torch.exp(scores) / torch.exp(scores).sum(-1, keepdim=True))
            h = blk(h)
            hidden.append(F.normalize(m.norm(h)[:, p0:], dim=-1))  # every block kept
        dist = torch.stack([(hidden[t + 1] - hidden[t]).norm(dim=-1) for t in range(k - 1)]).mean(0)
        quality = 2 / (1 + torch.exp(8 * dist))
        received = softmaxes[k - 1].mean(dim=1).sum(dim=1)[:, p0:]
        w = received / received.sum(dim=1, keepdim=True)
        vitnt = torch.stack([quality.mean(1), (quality * w).sum(1)], dim=1)
    return torch.stack(attn_cols, dim=1).float(), vitnt.float()


def test_mean_of_scores_identity_against_explicit_matrix():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 4, 145, 16, generator=g), torch.randn(3, 4, 145, 16, generator=g) + 0.3
    for start in (0, 1):
        explicit = (q[:, :, start:] @ k[:, :, start:].transpose(-2, -1) * 0.25).mean(dim=(1, 2, 3))
        torch.testing.assert_close(attn_fiqa_from_qk(q, k, 0.25, start=start), explicit, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attn_tokens", ["all", "patches"])
def test_one_pass_agrees_with_the_plain_reimplementation(model, faces, attn_tokens):
    ref_attn, ref_vitnt = reference(model, faces, attn_tokens)
    with torch.no_grad():
        out = model.forward_exits(faces, family=True, attn_tokens=attn_tokens)
    assert out.attn_fiqa.shape == (4, model.depth) and out.vitnt_fiqa.shape == (4, 2)
    assert out.attn_fiqa.dtype == out.vitnt_fiqa.dtype == torch.float32 and out.vitnt_blocks == model.depth
    torch.testing.assert_close(out.attn_fiqa, ref_attn, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.vitnt_fiqa, ref_vitnt, rtol=1e-5, atol=1e-6)
    # the weights are non-trivial: the values spread over images and the two columns differ
    assert ref_vitnt[:, 0].std() > 1e-3 and ref_attn.std(dim=0).min() > 1e-4
    assert (ref_vitnt[:, 0] - ref_vitnt[:, 1]).abs().max() > 1e-4
    assert ((ref_vitnt > 0) & (ref_vitnt < 1)).all()


def test_subset_of_exits_reads_those_blocks_and_ends_the_range_at_the_last(model, faces):
    ref_attn, ref_vitnt = reference(model, faces, k=4)
    with torch.no_grad():
        out = model.forward_exits(faces, [4, 2, 2], family=True)
    assert out.exits == [2, 4] and out.vitnt_blocks == 4
    torch.testing.assert_close(out.attn_fiqa, ref_attn[:, [1, 3]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.vitnt_fiqa, ref_vitnt, rtol=1e-5, atol=1e-6)


def test_family_leaves_the_ex_fiqa_outputs_bit_identical(model, faces):
    with torch.no_grad():
        for exits in (None, [1, 3]):
            plain = model.forward_exits(faces, exits, return_embeddings=True)
            fam = model.forward_exits(faces, exits, return_embeddings=True, family=True, vitnt_blocks=5)
            assert torch.equal(plain.scores, fam.scores) and torch.equal(plain.embeddings, fam.embeddings)
            assert plain.exits == fam.exits
            assert plain.attn_fiqa is None and plain.vitnt_fiqa is None and plain.vitnt_blocks is None
    for blk in model.blocks:  # the taps are gone
        assert not blk.attn.qkv._forward_hooks


def test_block_range_is_a_prefix(model, faces):
    with torch.no_grad():
        by_int = model.forward_exits(faces, [1], family=True, vitnt_blocks=3)
        by_list = model.forward_exits(faces, [1], family=True, vitnt_blocks=[1, 2, 3])
        _, ref_vitnt = reference(model, faces, k=3)
        torch.testing.assert_close(by_list.vitnt_fiqa, by_int.vitnt_fiqa, rtol=0, atol=0)
        torch.testing.assert_close(by_int.vitnt_fiqa, ref_vitnt, rtol=1e-5, atol=1e-6)
        assert by_int.scores.shape == (4, 1) and by_int.vitnt_blocks == 3
        for bad in ([1, 3], [2, 3], [2, 1], [1, 1, 2]):
            with pytest.raises(ValueError, match=r"vitnt_blocks must be a prefix \[1, 2, \.\.\., k\]"):
                model.forward_exits(faces, family=True, vitnt_blocks=bad)
        for bad in (1, [1], model.depth + 1, 0):
            with pytest.raises(ValueError, match="vitnt_blocks: ViTNT-FIQA needs blocks 1..k"):
                model.forward_exits(faces, family=True, vitnt_blocks=bad)
        with pytest.raises(ValueError, match=r"vitnt_blocks must be an int k or the list \[1, \.\.\., k\], got True"):
            model.forward_exits(faces, family=True, vitnt_blocks=True)  # a bool is no block count
        # exits=[1] -> default range 1..1: the message blames the exits, not an unset vitnt_blocks
        with pytest.raises(ValueError, match=r"by default k = max\(exits\) = 1, but ViTNT-FIQA needs k >= 2 .*: "
                           rf"request an exit >= 2 or pass vitnt_blocks=k with 2 <= k <= {model.depth}$"):
            model.forward_exits(faces, [1], family=True)
        with pytest.raises(ValueError, match="needs family=True"):
            model.forward_exits(faces, vitnt_blocks=3)
        with pytest.raises(ValueError, match="attn_tokens"):
            model.forward_exits(faces, family=True, attn_tokens="quality")


def test_patches_only_differs_for_token_variant_only(model, faces):
    with torch.no_grad():
        every = model.forward_exits(faces, family=True).attn_fiqa
        patches = model.forward_exits(faces, family=True, attn_tokens="patches").attn_fiqa
    if model.config.variant == "token":
        assert (every - patches).abs().min() > 0
    else:
        assert torch.equal(every, patches)


def test_bf16_model_gives_float32_family_values(model, faces):
    m = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        out = m.forward_exits(faces.to(torch.bfloat16), family=True)
    assert out.attn_fiqa.dtype == out.vitnt_fiqa.dtype == torch.float32
    assert torch.isfinite(out.attn_fiqa).all() and torch.isfinite(out.vitnt_fiqa).all()


def test_extra_flops_by_hand():
    t, c = ViTFIQAConfig(variant="token"), ViTFIQAConfig(variant="crfiqa")
    assert attn_fiqa_flops(t) == 2 * 145 * 512 + 2 * 512
    assert attn_fiqa_flops(t, "patches") == attn_fiqa_flops(c) == 2 * 144 * 512 + 2 * 512
    weights_t = 2 * 145**2 * 512 + 2 * 8 * 145**2
    assert vitnt_fiqa_flops(t) == 12 * 5 * 144 * 512 + 11 * 3 * 144 * 512 + weights_t
    assert vitnt_fiqa_flops(c, 3) == 3 * 3 * 144 * 512 + 2 * 3 * 144 * 512 + 2 * 144**2 * 512 + 2 * 8 * 144**2
    assert family_extra_flops(t) == 12 * attn_fiqa_flops(t) + vitnt_fiqa_flops(t)
    assert family_extra_flops(t, exits=6) == 6 * attn_fiqa_flops(t) + vitnt_fiqa_flops(t, 6)
    for cfg in (t, c):  # well under 1% of the all-exits pass
        assert family_extra_flops(cfg) / 1e9 / fused_cost(cfg) < 0.003
    with pytest.raises(ValueError):
        vitnt_fiqa_flops(t, 1)
    with pytest.raises(ValueError):
        attn_fiqa_flops(t, "quality")


def test_family_on_a_one_block_model_says_why_it_cannot_run():
    one = build_vitfiqa(variant="token", embed_dim=32, num_heads=2, depth=1, feature_dim=16).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"max\(exits\) = 1, .*a model of depth 1 has no pair of consecutive blocks: use family=False"):
        one.forward_exits(torch.zeros(1, 3, 112, 112), family=True)
