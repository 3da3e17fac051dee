"""Checkpoints: non-finite weights are refused, the head count travels with exfiqa-written files
(outside the released keys, so they load strictly into the released layout), one key/shape report
for every loader."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from exfiqa.io import CheckpointError
from exfiqa.models import fr as frmod
from exfiqa.models.checkpoints import state_dict_report
from exfiqa.models.vitfiqa import (
    METADATA_KEY,
    NUM_HEADS_KEY,
    build_vitfiqa,
    load_vitfiqa,
    released_state_dict,
    save_vitfiqa,
)


def _small_vit(num_heads: int = 2, embed_dim: int = 32):
    torch.manual_seed(0)
    return build_vitfiqa(variant="token", embed_dim=embed_dim, num_heads=num_heads, depth=2, feature_dim=16)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_vitfiqa_with_non_finite_weights_is_refused_naming_file_and_tensor(tmp_path, bad):
    state = released_state_dict(_small_vit())
    state["blocks.1.attn.qkv.weight"][3, 4] = bad
    path = tmp_path / "diverged.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"diverged\.pt: refused to load: non-finite weights .*blocks\.1\.attn\.qkv\.weight \(1 of"):
        load_vitfiqa(path, num_heads=2)


def test_fr_checkpoint_with_nan_is_refused(tmp_path):
    net = frmod.build_fr("iresnet", layers=(1, 1, 1, 1), widths=(8, 16, 24, 32), embedding_size=16)
    path = tmp_path / "arcface.pt"
    frmod.save_fr(frmod.FRModel("arcface", net, frmod.ARCFACE, device="cpu", arch="iresnet"), path)
    state = torch.load(path, weights_only=True)
    state["fc.weight"].fill_(float("nan"))
    state["bn1.running_var"][0] = float("inf")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"arcface\.pt: .*non-finite.*bn1\.running_var \(1 of 8\).*fc\.weight"):
        frmod.load_fr("arcface", path, layers=(1, 1, 1, 1))


def test_saved_head_count_is_recorded_and_used(tmp_path):
    model = _small_vit(num_heads=4)
    path = tmp_path / "four_heads.pt"
    save_vitfiqa(model, path)
    raw = torch.load(path, weights_only=True)
    assert NUM_HEADS_KEY not in raw and raw._metadata[METADATA_KEY] == {"num_heads": 4}
    loaded = load_vitfiqa(path)  # no num_heads given: read from the file, not the released 8
    assert loaded.config.num_heads == 4 and loaded.blocks[0].attn.num_heads == 4
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_exits(x).scores, model.eval().forward_exits(x).scores)
    assert load_vitfiqa(path, num_heads=4).config.num_heads == 4
    with pytest.raises(CheckpointError, match=r"four_heads\.pt: the checkpoint records num_heads=4 but num_heads=2"):
        load_vitfiqa(path, num_heads=2)


def test_released_layout_without_record_defaults_to_eight_heads(tmp_path):
    path = tmp_path / "released.pt"
    torch.save(released_state_dict(_small_vit(num_heads=2)), path)  # as the authors' files: no record
    assert load_vitfiqa(path).config.num_heads == 8
    assert load_vitfiqa(path, num_heads=2).config.num_heads == 2


def test_released_width_with_odd_head_dim_warns(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(released_state_dict(_small_vit(num_heads=8, embed_dim=512)), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_vitfiqa(path)  # 8 heads of 64: the released shape, silent
    with pytest.warns(UserWarning, match=r"num_heads=4 gives head dim 128; the released models use 8 heads of 64"):
        load_vitfiqa(path, num_heads=4)


def test_state_dict_report_hand_case():
    model = {"a": (2, 3), "b": torch.Size([4]), "n": (), "d": (1,)}
    same = {"d": [1], "n": torch.Size([]), "b": (4,), "a": torch.Size([2, 3])}  # any order, any int sequence
    assert state_dict_report(model, same, "f.pt") is None
    ckpt = {"a": torch.Size([3, 2]), "c": (1,), "b": [4], "e": (5, 5)}
    assert state_dict_report(model, ckpt, "ckpt/f.pt") == (
        "ckpt/f.pt: missing keys (2): ['n', 'd']; unexpected keys (2): ['c', 'e']; "
        "shape mismatches (1): ['a: checkpoint [3, 2] vs model [2, 3]']"
    )
    assert state_dict_report(model, ckpt, "f.pt", optional={"n"}, limit=1) == (
        "f.pt: missing keys (1): ['d']; unexpected keys (2): ['c', ...]; "
        "shape mismatches (1): ['a: checkpoint [3, 2] vs model [2, 3]']"
    )
    assert state_dict_report(model, {k: v for k, v in model.items() if k != "n"}, "f.pt", optional={"n"}) is None


def test_both_loaders_report_keys_with_counts_and_the_file(tmp_path):
    """ViT-FIQA and FR checkpoints go through the same report: file, counts, first keys."""
    state = released_state_dict(_small_vit())
    block0 = [k for k in state if k.startswith("blocks.0.")]
    assert len(block0) == 11
    for k in block0:
        del state[k]
    path = tmp_path / "short.pt"
    torch.save(state, path)
    with pytest.raises(
        CheckpointError,
        match=rf"{re.escape(str(path))}: missing keys \(11\): \['blocks\.0\.norm1\.weight', [^]]*, \.\.\.\]\. "
        r"Detected variant 'token', depth 2, width 32\. It does not look like a ViT-FIQA checkpoint",
    ):
        load_vitfiqa(path, num_heads=2)
    net = frmod.build_fr("iresnet", layers=(1, 1, 1, 1), widths=(8, 16, 24, 32), embedding_size=16)
    fr_path = tmp_path / "arcface.pt"
    frmod.save_fr(frmod.FRModel("arcface", net, frmod.ARCFACE, device="cpu", arch="iresnet"), fr_path)
    fr_state = torch.load(fr_path, weights_only=True)
    fr_state["extra.weight"] = torch.zeros(2)
    torch.save(fr_state, fr_path)
    with pytest.raises(CheckpointError, match=rf"checkpoint {re.escape(str(fr_path))} does not match arch 'iresnet' \(model .*\): unexpected keys \(1\): \['extra\.weight'\]"):
        frmod.load_fr("arcface", fr_path, layers=(1, 1, 1, 1))


# -- files that are not checkpoints: one clean error naming the file -------------------------------


def _tiny_checkpoint(path):
    torch.manual_seed(0)
    model = build_vitfiqa(variant="token", embed_dim=16, depth=2, num_heads=2, feature_dim=8, patch_size=28)
    save_vitfiqa(model, path)
    return path.read_bytes()


def test_fuzzed_checkpoints_load_or_fail_cleanly(tmp_path):
    import random

    data = _tiny_checkpoint(tmp_path / "good.pth")
    rng = random.Random(0)
    outcomes = {"ok": 0, "refused": 0}
    for k in range(60):
        b = bytearray(data)
        # the structure (zip headers, the pickle) is at the start and the end; the middle is weights
        pos = rng.choice([rng.randrange(4096), len(b) - 1 - rng.randrange(6000)])
        if k % 3 == 0:
            b = b[:pos]
        elif k % 3 == 1:
            b[pos] ^= 1 << rng.randrange(8)
        else:
            b[pos] = rng.randrange(256)
        path = tmp_path / f"fuzz{k}.pth"
        path.write_bytes(bytes(b))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                load_vitfiqa(path)
                outcomes["ok"] += 1
            except CheckpointError as exc:
                assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc) and len(str(exc)) < 2000, exc
                outcomes["refused"] += 1
    assert outcomes["refused"] > 20, outcomes


@pytest.mark.parametrize("name, shape", [("pos_embed", ()), ("pos_embed", (0,)), ("patch_embed.proj.weight", (3,)),
                                         ("feature.0.weight", ()), ("blocks.0.mlp.fc1.weight", (0,))])
def test_weights_of_the_wrong_rank_are_refused(tmp_path, name, shape):
    _tiny_checkpoint(tmp_path / "good.pth")
    state = torch.load(tmp_path / "good.pth", weights_only=True)
    state[name] = torch.zeros(shape)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=rf"bad\.pth: {re.escape(name)} has shape \[.*\], expected \d non-zero dimensions"):
        load_vitfiqa(tmp_path / "bad.pth")


@pytest.mark.parametrize("content", [b"x", b"root:x:0:0:root:/root:/bin/bash\n", b"PK\x03\x04" + b"\0" * 40, b""])
def test_non_checkpoints_are_one_line_and_exit_2_in_the_cli(tmp_path, content):
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(ckpt))}: "):
        load_vitfiqa(ckpt)
    Image.new("RGB", (112, 112)).save(tmp_path / "face.png")
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "exfiqa.cli", "score", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o.csv"), str(tmp_path / "face.png")],
        capture_output=True, text=True, cwd=root, timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and str(ckpt) in run.stderr and "Traceback" not in run.stderr, run.stderr


class _Block(nn.Module):
    """A pre-norm ViT block under the released names, in plain torch (no timm, no exfiqa)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn.proj = nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)


class _ReleasedLayout(nn.Module):
    """The released ViT-FIQA key layout (the keys and shapes of the released ``vitfiqa_token.pt`` /
    ``vitfiqa_crfiqa.pt``), built independently of exfiqa, standing in for the authors' model
    class: 112x112 input, 9x9 patches (144 of them)."""

    def __init__(self, variant: str, d: int, depth: int, f: int) -> None:
        super().__init__()
        if variant == "token":
            self.qs_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 144 + (variant == "token"), d))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, 9, 9)
        self.blocks = nn.ModuleList(_Block(d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.feature = nn.Sequential(nn.Linear(144 * d, f, bias=False), nn.BatchNorm1d(f), nn.Linear(f, f, bias=False), nn.BatchNorm1d(f))
        head_in = d if variant == "token" else f
        self.head_qs = nn.Sequential(nn.BatchNorm1d(head_in), nn.Linear(head_in, 1, bias=False))


@pytest.mark.parametrize("variant", ["token", "crfiqa"])
def test_exfiqa_checkpoint_loads_strictly_into_the_released_layout(tmp_path, variant):
    """What the authors' scripts do with a checkpoint: a strict load_state_dict of the file as it is."""
    torch.manual_seed(0)
    model = build_vitfiqa(variant=variant, embed_dim=32, num_heads=4, depth=2, feature_dim=16)
    path = tmp_path / f"vitfiqa_{variant}.pt"
    save_vitfiqa(model, path)
    raw = torch.load(path, weights_only=True)
    released = _ReleasedLayout(variant, d=32, depth=2, f=16)
    assert released.load_state_dict(raw, strict=True)  # no missing or unexpected key, every shape equal
    assert sorted(raw) == sorted(released.state_dict())  # exactly the released keys
    for key, value in released.state_dict().items():  # and their values, copied as they are
        torch.testing.assert_close(value, raw[key], rtol=0, atol=0)
    assert load_vitfiqa(path).config.num_heads == 4  # and exfiqa still finds its head count


def test_legacy_checkpoint_with_the_head_count_inside_still_loads(tmp_path):
    model = _small_vit(num_heads=4)
    state = released_state_dict(model)
    state[NUM_HEADS_KEY] = torch.tensor(4)  # how exfiqa wrote it before
    path = tmp_path / "legacy.pt"
    torch.save(state, path)
    loaded = load_vitfiqa(path)
    assert loaded.config.num_heads == 4
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"legacy\.pt: the checkpoint records num_heads=4 but num_heads=2"):
        load_vitfiqa(path, num_heads=2)


def test_head_count_records_that_disagree_or_are_malformed_are_refused(tmp_path):
    from collections import OrderedDict

    state = OrderedDict(released_state_dict(_small_vit(num_heads=4)))
    state[NUM_HEADS_KEY] = torch.tensor(4)
    state._metadata = {METADATA_KEY: {"num_heads": 2}}
    path = tmp_path / "both.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"both\.pt: exfiqa_num_heads=4 contradicts _metadata\['exfiqa'\] num_heads=2"):
        load_vitfiqa(path)
    del state[NUM_HEADS_KEY]
    state._metadata = {METADATA_KEY: {"num_heads": 0}}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"both\.pt: _metadata\['exfiqa'\] must be a dict with a positive int 'num_heads'"):
        load_vitfiqa(path)
