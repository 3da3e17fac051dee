"""ViT-FIQA core: a plain-torch float64 oracle of the published architecture (ViT-FIQA, Atzori et
al., arXiv 2508.13957, as the EX-FIQA paper arXiv 2604.22842 uses it), written without timm, must
agree with the timm-based model on every exit."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from exfiqa.io import CheckpointError
from exfiqa.models.vitfiqa import (
    ViTFIQAConfig,
    attention_grid,
    build_vitfiqa,
    capture_attention,
    load_vitfiqa,
    released_state_dict,
    save_vitfiqa,
)

SMALL = dict(embed_dim=64, num_heads=4, feature_dim=32)


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere, incl. LayerNorm affine and BN running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype == torch.long:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("norm1.weight", "norm2.weight", "norm.weight")) or (
                name.endswith(".weight") and t.dim() == 1
            ):
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.05 * torch.randn(t.shape, generator=g))


# ----------------------------------------------------------------------------- the oracle


def _ln(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * sd[f"{key}.weight"] + sd[f"{key}.bias"]


def _bn(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    return (x - sd[f"{key}.running_mean"]) / torch.sqrt(sd[f"{key}.running_var"] + 2e-5) * sd[
        f"{key}.weight"
    ] + sd[f"{key}.bias"]


def oracle(sd: dict, x: torch.Tensor, heads: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Released-key state_dict + input -> (per-exit scores, per-exit attention) in float64."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    w = sd["patch_embed.proj.weight"]
    p = w.shape[-1]
    t = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=p)  # (B, D, g, g)
    b, d = t.shape[:2]
    t = t.flatten(2).transpose(1, 2)  # row-major patches
    token = "qs_token" in sd
    if token:
        t = torch.cat([sd["qs_token"].expand(b, -1, -1), t], dim=1)
    t = t + sd["pos_embed"]
    n = t.shape[1]
    dh = d // heads
    scores, attns = [], []
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        pre = f"blocks.{i}"
        h = _ln(t, sd, f"{pre}.norm1")
        qkv = h @ sd[f"{pre}.attn.qkv.weight"].T
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        q, k, v = (z.reshape(b, n, heads, dh).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1)
        attns.append(a)
        o = (a @ v).transpose(1, 2).reshape(b, n, d)
        t = t + o @ sd[f"{pre}.attn.proj.weight"].T + sd[f"{pre}.attn.proj.bias"]
        h = _ln(t, sd, f"{pre}.norm2")
        h = torch.clamp(h @ sd[f"{pre}.mlp.fc1.weight"].T + sd[f"{pre}.mlp.fc1.bias"], 0, 6)
        t = t + h @ sd[f"{pre}.mlp.fc2.weight"].T + sd[f"{pre}.mlp.fc2.bias"]
        z = _ln(t, sd, "norm")
        if token:
            q_in = z[:, 0]
        else:
            f = z.flatten(1) @ sd["feature.0.weight"].T
            f = _bn(f, sd, "feature.1") @ sd["feature.2.weight"].T
            q_in = _bn(f, sd, "feature.3")
        scores.append((_bn(q_in, sd, "head_qs.0") @ sd["head_qs.1.weight"].T)[:, 0])
    return scores, attns


@pytest.fixture(scope="module", params=["token", "crfiqa"])
def small_model(request):
    torch.manual_seed(0)
    m = build_vitfiqa(variant=request.param, **SMALL)
    randomise(m, seed=1)
    return m.eval()


@pytest.fixture(scope="module")
def faces():
    return torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(2))


def test_every_exit_matches_plain_torch_oracle(small_model, faces):
    with torch.no_grad():
        out = small_model.forward_exits(faces)
    ref, _ = oracle(released_state_dict(small_model), faces, heads=4)
    assert out.scores.shape == (3, 12)
    for k in range(12):
        torch.testing.assert_close(out.scores[:, k].double(), ref[k], rtol=1e-4, atol=1e-4)


def test_last_exit_is_plain_forward_and_timm_intermediates(small_model, faces):
    with torch.no_grad():
        all_exits = small_model.forward_exits(faces).scores
        plain = small_model(faces)
        # timm's own intermediate path, after the final norm, through the same heads
        inter = small_model.forward_intermediates(
            faces, norm=True, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
        )
    torch.testing.assert_close(all_exits[:, -1], plain, rtol=1e-5, atol=1e-5)
    for k, item in enumerate(inter):
        tokens = torch.cat([item[1], item[0]], dim=1) if isinstance(item, tuple) else item
        expect = small_model.exit_head(tokens)[0]
        torch.testing.assert_close(all_exits[:, k], expect, rtol=1e-5, atol=1e-5)


def test_truncated_exit_runs_only_k_blocks_and_matches_column(small_model, faces):
    with torch.no_grad():
        full = small_model.forward_exits(faces).scores
    calls: list[int] = []
    hooks = [
        blk.register_forward_hook(lambda *_a, i=i: calls.append(i))
        for i, blk in enumerate(small_model.blocks)
    ]
    try:
        for k in (1, 5, 12):
            calls.clear()
            with torch.no_grad():
                s = small_model.score_at_exit(faces, k)
            assert calls == list(range(k))
            torch.testing.assert_close(s, full[:, k - 1], rtol=1e-5, atol=1e-5)
    finally:
        for h in hooks:
            h.remove()


def test_exit_subset_and_embeddings(small_model, faces):
    with torch.no_grad():
        full = small_model.forward_exits(faces)
        sub = small_model.forward_exits(faces, [12, 3, 7], return_embeddings=True)
    assert sub.exits == [3, 7, 12]
    torch.testing.assert_close(sub.scores, full.scores[:, [2, 6, 11]])
    assert sub.embeddings is not None and sub.embeddings.shape == (3, 3, 32)
    with pytest.raises(ValueError, match="exits must lie in 1..12"):
        small_model.forward_exits(faces, [0])


def test_attention_capture_matches_oracle_and_leaves_scores(small_model, faces):
    with torch.no_grad():
        before = small_model.forward_exits(faces).scores
        with capture_attention(small_model) as maps:
            during = small_model.forward_exits(faces).scores
    assert len(maps) == 12
    assert all(blk.attn.fused_attn == small_model.blocks[0].attn.fused_attn for blk in small_model.blocks)
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-5)
    _, ref = oracle(released_state_dict(small_model), faces, heads=4)
    for got, want in zip(maps, ref, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    grid = attention_grid(maps[0], small_model.config.variant, 12)
    assert grid.shape == (3, 12, 12)
    if small_model.config.variant == "token":
        # the quality token's row over the patches, averaged over heads
        torch.testing.assert_close(grid[1, 2, 5], maps[0][1, :, 0, 1 + 2 * 12 + 5].mean())


def test_full_size_checkpoint_round_trip_matches_oracle(tmp_path, faces):
    m = build_vitfiqa(variant="token")
    randomise(m, seed=3)
    sd = released_state_dict(m)
    assert {"qs_token", "mask_token", "feature.0.weight", "head_qs.1.weight"} <= set(sd)
    assert sd["pos_embed"].shape == (1, 145, 512)
    assert sd["blocks.0.attn.qkv.weight"].shape == (1536, 512)
    assert sd["feature.0.weight"].shape == (512, 73728)
    assert sd["patch_embed.proj.weight"].shape == (512, 3, 9, 9)
    assert 75e6 < sum(v.numel() for k, v in sd.items() if "running" not in k) < 77e6
    path = tmp_path / "vitfiqa_token.pt"
    torch.save({"module." + k: v for k, v in sd.items()}, path)  # DataParallel prefix
    loaded = load_vitfiqa(path)
    assert loaded.config == ViTFIQAConfig(variant="token")
    with torch.no_grad():
        got = loaded.forward_exits(faces[:2]).scores
    ref, _ = oracle(sd, faces[:2], heads=8)
    for k in (0, 5, 11):
        torch.testing.assert_close(got[:, k].double(), ref[k], rtol=1e-4, atol=2e-4)


def test_loader_infers_small_and_stem_configs(tmp_path):
    for cfg in (
        ViTFIQAConfig(variant="crfiqa", embed_dim=48, depth=12, num_heads=4, feature_dim=16),
        ViTFIQAConfig(
            variant="token", embed_dim=32, num_heads=2, patch_size=4, stem_channels=(8, 16), feature_dim=16
        ),
    ):
        m = build_vitfiqa(cfg)
        randomise(m)
        path = tmp_path / f"{cfg.variant}.pt"
        save_vitfiqa(m, path)
        with pytest.raises(FileExistsError):
            save_vitfiqa(m, path)
        loaded = load_vitfiqa(path, num_heads=cfg.num_heads)
        assert loaded.config == cfg
        x = torch.randn(2, 3, 112, 112)
        with torch.no_grad():
            torch.testing.assert_close(loaded.forward_exits(x).scores, m.eval().forward_exits(x).scores)


def _small_sd(variant: str = "token") -> dict[str, torch.Tensor]:
    return released_state_dict(build_vitfiqa(variant=variant, **SMALL))


def test_loader_accepts_missing_mask_token(tmp_path):
    sd = _small_sd()
    del sd["mask_token"]
    torch.save(sd, tmp_path / "a.pt")
    assert load_vitfiqa(tmp_path / "a.pt", num_heads=4).config.variant == "token"


def test_loader_errors_name_keys_and_cause(tmp_path):
    sd = _small_sd()
    del sd["blocks.3.mlp.fc2.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(
        CheckpointError,
        match=r"bad\.pt: missing keys \(1\): \['blocks\.3\.mlp\.fc2\.weight'\]; unexpected keys \(1\): "
        r"\['extra\.weight'\]\. Detected variant 'token', depth 12, width 64\.",
    ):
        load_vitfiqa(tmp_path / "bad.pt", num_heads=4)

    sd = _small_sd("token")
    del sd["qs_token"]  # a (T) file without its quality token looks like (C) with one token too many
    torch.save(sd, tmp_path / "variant.pt")
    with pytest.raises(CheckpointError, match="Wrong variant"):
        load_vitfiqa(tmp_path / "variant.pt", num_heads=4)

    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "layer1.0.bn1.weight": torch.ones(64)}, tmp_path / "fr.pt")
    with pytest.raises(CheckpointError, match="iResNet"):
        load_vitfiqa(tmp_path / "fr.pt")

    sd = _small_sd("crfiqa")
    sd["head_qs.1.weight"] = torch.zeros(1, 7)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): \['head_qs\.1\.weight: checkpoint \[1, 7\] vs model \[1, 32\]'\]"):
        load_vitfiqa(tmp_path / "shape.pt", num_heads=4)

    with pytest.raises(FileNotFoundError):
        load_vitfiqa(tmp_path / "absent.pt")


class _Payload:
    """Unpickling this would create a file: the loader must refuse before that happens."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_unsafe_checkpoint_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"pos_embed": _Payload(marker)}, fh)
    with pytest.raises(CheckpointError, match="refused"):
        load_vitfiqa(path)
    assert not marker.exists()

    torch.save(build_vitfiqa(variant="token", **SMALL), tmp_path / "module.pt")  # a pickled nn.Module
    with pytest.raises(CheckpointError, match="refused"):
        load_vitfiqa(tmp_path / "module.pt")


def test_token_masking_only_changes_training_forward():
    """``forward_train(x, mask_ratio)`` (train mode) feeds block 1 the tokens with
    ``round(ratio * 144)`` patch tokens per image, never the quality token, replaced by
    ``mask_token + pos_embed``; seeded, it repeats exactly. The eval paths never mask."""
    torch.manual_seed(0)
    m = build_vitfiqa(variant="token", **SMALL)
    randomise(m, seed=4)
    x = torch.randn(4, 3, 112, 112, generator=torch.Generator().manual_seed(6))
    seen: list[torch.Tensor] = []
    hook = m.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            clean = m.eval().tokens(x)  # patch embedding + position embedding, nothing masked
            seen.clear()
            m.train()
            runs = []
            for seed in (7, 7, 8):
                torch.manual_seed(seed)
                runs.append(m.forward_train(x, mask_ratio=0.1))
            unmasked = m.forward_train(x)
            m.eval()
            torch.manual_seed(7)
            eval_runs = [m.forward_exits(x).scores, m(x)]
            torch.manual_seed(8)
            eval_runs += [m.forward_exits(x).scores, m(x)]
    finally:
        hook.remove()
    masked_in, again_in, other_in, unmasked_in = seen[:4]
    changed = (masked_in != clean).any(-1)
    assert not changed[:, 0].any()  # the quality token is never masked
    assert changed.sum(1).tolist() == [round(0.1 * 144)] * 4
    expect = (m.mask_token[0, 0] + m.pos_embed[0]).expand_as(clean)
    torch.testing.assert_close(masked_in[changed], expect[changed], rtol=0, atol=0)
    assert torch.equal(masked_in[~changed], clean[~changed])
    assert torch.equal(again_in, masked_in) and not torch.equal(other_in, masked_in)  # seeded
    assert torch.equal(unmasked_in, clean)
    # the training output: the same for the same seed, changed by the mask
    (emb, score), (emb2, score2), _ = runs
    assert torch.equal(emb, emb2) and torch.equal(score, score2)
    assert not torch.allclose(emb, unmasked[0]) and not torch.allclose(score, unmasked[1])
    # eval: every block-1 input is the clean tokens, outputs do not depend on the RNG
    assert all(torch.equal(t, clean) for t in seen[4:]) and len(seen) == 4 + 4
    assert torch.equal(eval_runs[0], eval_runs[2]) and torch.equal(eval_runs[1], eval_runs[3])


def test_forward_exits_refuses_heads_in_training_mode(small_model, faces):
    """All exits go through the BatchNorm heads as one batch: only right with running statistics."""
    m = copy.deepcopy(small_model).train()
    with pytest.raises(RuntimeError, match=r"forward_exits needs the heads in eval mode.*head_qs\.0"):
        m.forward_exits(faces)
    with pytest.raises(RuntimeError, match="eval mode"):
        m.score_at_exit(faces, 3)
    with pytest.raises(RuntimeError, match="eval mode"):
        m.forward_exits(faces, family=True)
    # the blocks may train (no dropout here); the heads in eval mode give the eval numbers
    m.feature.eval()
    m.head_qs.eval()
    with torch.no_grad():
        assert torch.equal(m.forward_exits(faces).scores, small_model.forward_exits(faces).scores)
    # why: with batch statistics one call over all exits is not the exit-by-exit result
    m.train()
    with torch.no_grad():
        h = m.tokens(faces)
        normed = []
        for blk in m.blocks[:2]:
            h = blk(h)
            normed.append(m.norm(h))
        batched = m.exit_head(torch.cat(normed))[0].view(2, -1).T
        per_exit = torch.stack([m.exit_head(n)[0] for n in normed], dim=1)
    assert not torch.allclose(batched, per_exit)
