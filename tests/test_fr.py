"""Tests for exfiqa.models.fr: key layouts, checkpoint round trips, preprocessing, embeddings, templates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exfiqa.io import CheckpointError
from exfiqa.models import fr

TINY_IRES = {"layers": (1, 2, 1, 1), "widths": (4, 8, 8, 16), "embedding_size": 8}
TINY_IR = {"layers": (2, 1, 2, 1), "widths": (4, 6, 8, 12), "embedding_size": 8}


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BN statistics, so eval-mode outputs depend on every tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim > 1:
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / t[0].numel()) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if "weight" in name else 0))
    return model.eval()


def _faces(n: int, seed: int = 0, size: int = 112) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _tiny(name: str, seed: int = 0) -> fr.FRModel:
    arch, pre = fr.FR_MODELS[name]
    cfg = TINY_IR if arch == "curricularface" else TINY_IRES
    return fr.FRModel(name, _randomise(fr.build_fr(arch, **cfg), seed), pre, "cpu", arch=arch)


# ------------------------------------------------------------------ key layouts


def test_iresnet_tiny_keys_follow_arcface_torch_layout():
    sd = fr.build_fr("iresnet", **TINY_IRES).state_dict()
    for key in [
        "conv1.weight", "bn1.running_mean", "prelu.weight",
        "layer1.0.bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn2.bias", "layer1.0.prelu.weight",
        "layer1.0.conv2.weight", "layer1.0.bn3.running_var", "layer1.0.downsample.0.weight",
        "layer3.0.downsample.1.running_var", "layer2.1.conv2.weight",
        "bn2.weight", "fc.weight", "fc.bias", "features.weight", "features.running_var",
    ]:  # fmt: skip
        assert key in sd, key
    assert "layer2.1.downsample.0.weight" not in sd  # only the first block of a stage
    assert not any(k.startswith("dropout") for k in sd)
    assert sd["layer2.0.conv2.weight"].shape == (8, 8, 3, 3)
    assert sd["layer2.0.downsample.0.weight"].shape == (8, 4, 1, 1)
    assert sd["fc.weight"].shape == (8, 16 * 7 * 7)


def test_iresnet_batchnorm_facts_per_arch():
    arc = fr.build_fr("iresnet", **TINY_IRES)
    mag = fr.build_fr("magface", **TINY_IRES)
    assert arc.layer1[0].bn1.eps == 1e-5 and arc.features.eps == 1e-5 and arc.bn2.eps == 1e-5
    assert mag.layer1[0].bn1.eps == 2e-5 and mag.features.eps == 2e-5
    assert torch.all(arc.features.weight == 1.0) and not arc.features.weight.requires_grad
    assert mag.features.weight.requires_grad
    assert arc.layer2[0].conv2.stride == (2, 2) and arc.layer2[0].conv1.stride == (1, 1)


def test_r100_on_meta_device_matches_released_key_count_and_shapes():
    with torch.device("meta"):
        sd = fr.build_fr("iresnet").state_dict()
    # Hand count: per IBasicBlock 3 BN x 5 keys + 2 conv + prelu = 18; downsample adds 6 per stage;
    # stem conv+BN+prelu = 7; head bn2 (5) + fc (2) + features (5) = 12.
    assert len(sd) == 7 + (3 + 13 + 30 + 3) * 18 + 4 * 6 + 12 == 925
    assert sd["fc.weight"].shape == (512, 25088)
    assert sd["layer3.29.bn3.weight"].shape == (256,) and "layer3.30.bn1.weight" not in sd
    assert sd["layer4.0.downsample.0.weight"].shape == (512, 256, 1, 1)


def test_ir101_on_meta_device_matches_evolve_layout():
    with torch.device("meta"):
        sd = fr.build_fr("curricularface").state_dict()
    # Hand count: res_layer 2 BN x 5 + 2 conv + prelu = 13 per unit; conv shortcut (conv + BN) = 6
    # for the first unit of stages 2-4 (stage 1 uses MaxPool2d(1, 2)); input layer 7;
    # output layer BN2d 5 + Linear 2 + BN1d(affine=False) 3.
    assert len(sd) == 7 + 49 * 13 + 3 * 6 + 10 == 672
    assert sd["output_layer.3.weight"].shape == (512, 25088)
    assert sd["body.0.res_layer.4.weight"].shape == (64,)
    assert sd["body.3.shortcut_layer.0.weight"].shape == (128, 64, 1, 1)  # stage 2 starts at 3
    assert not any(k.startswith("body.0.shortcut_layer") for k in sd)  # MaxPool: no tensors
    assert "body.48.res_layer.3.weight" in sd and "body.49.res_layer.0.weight" not in sd
    assert "output_layer.4.running_var" in sd and "output_layer.4.weight" not in sd
    for key in ["input_layer.0.weight", "input_layer.1.running_mean", "input_layer.2.weight"]:
        assert key in sd


def test_ir_rejects_non_increasing_widths():
    with pytest.raises(ValueError, match="increase strictly"):
        fr.build_fr("curricularface", layers=(1, 1), widths=(8, 8))


def test_head_split_equals_forward_and_samples_dropout():
    for arch, cfg in [("iresnet", TINY_IRES), ("curricularface", TINY_IR)]:
        m = _randomise(fr.build_fr(arch, **cfg))
        x = torch.randn(2, 3, 112, 112)
        with torch.no_grad():
            feats = m.forward_features(x)
            assert feats.shape == (2, cfg["widths"][-1] * 7 * 7)
            torch.testing.assert_close(m.forward_head(feats), m(x))
            assert m(x).shape == (2, 8)
            torch.testing.assert_close(m.forward_head(feats, dropout_p=0.0), m(x))
            a, b = m.forward_head(feats, dropout_p=0.5), m.forward_head(feats, dropout_p=0.5)
            assert not torch.allclose(a, b)  # stochastic although the model is in eval mode
            assert not m.training


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("arcface", "plain"),
        ("elasticface", "dataparallel"),
        ("magface", "magface"),
        ("curricularface", "plain"),
        ("curricularface", "dataparallel"),
    ],
)
def test_save_load_round_trip_infers_architecture(tmp_path, name, layout):
    model = _tiny(name)
    path = fr.save_fr(model, tmp_path / f"{name}.pth", layout=layout)
    loaded = fr.load_fr(name, path, device="cpu")
    assert loaded.backbone.layers == model.backbone.layers
    assert loaded.backbone.widths == model.backbone.widths
    assert loaded.embedding_size == 8
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[k], v), k
    faces = _faces(3)
    np.testing.assert_array_equal(loaded.embed(faces), model.embed(faces))


def test_magface_file_has_released_layout_and_default(tmp_path):
    model = _tiny("magface")
    path = fr.save_fr(model, tmp_path / "mag.pth")  # default layout follows the name
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"state_dict"}
    assert all(k.startswith("features.module.") for k in obj["state_dict"])
    assert "features.module.features.weight" in obj["state_dict"]
    with pytest.raises(FileExistsError):
        fr.save_fr(model, path)


def test_magface_module_features_prefix_and_extra_head(tmp_path):
    model = _tiny("magface")
    sd = {"module.features." + k: v for k, v in model.backbone.state_dict().items()}
    sd["module.fc.weight"] = torch.randn(8, 5)  # MagLinear head of the training checkpoint
    path = tmp_path / "mag2.pth"
    torch.save({"state_dict": sd, "epoch": 25}, path)
    with pytest.warns(UserWarning, match="module.fc.weight"):
        loaded = fr.load_fr("magface", path, device="cpu")
    faces = _faces(2)
    np.testing.assert_array_equal(loaded.embed_raw(faces), model.embed_raw(faces))


def test_plain_arcface_features_key_is_not_taken_for_a_prefix():
    sd = {"conv1.weight": 0, "layer1.0.bn1.weight": 1, "features.weight": 2, "features.bias": 3}
    stripped, dropped = fr.strip_wrapper_prefixes(sd)
    assert stripped == sd and dropped == []
    wrapped = {"module." + k: v for k, v in sd.items()}  # DataParallel: module.features.weight
    assert fr.strip_wrapper_prefixes(wrapped) == (sd, [])


def test_missing_num_batches_tracked_is_accepted(tmp_path):
    model = _tiny("arcface")
    sd = {k: v for k, v in model.backbone.state_dict().items() if "num_batches" not in k}
    torch.save(sd, tmp_path / "old.pth")
    loaded = fr.load_fr("arcface", tmp_path / "old.pth", device="cpu")
    np.testing.assert_array_equal(loaded.embed(_faces(1)), model.embed(_faces(1)))


def test_wrong_key_is_named(tmp_path):
    sd = _tiny("arcface").backbone.state_dict()
    sd["layer2.1.bn3.wieght"] = sd.pop("layer2.1.bn3.weight")
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        fr.load_fr("arcface", tmp_path / "bad.pth", device="cpu")
    assert "layer2.1.bn3.weight" in str(exc.value) and "layer2.1.bn3.wieght" in str(exc.value)


def test_wrong_shape_is_named(tmp_path):
    sd = _tiny("curricularface").backbone.state_dict()
    sd["body.1.res_layer.2.weight"] = torch.ones(5)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"body\.1\.res_layer\.2\.weight.*\[5\].*\[4\]"):
        fr.load_fr("curricularface", tmp_path / "bad.pth", device="cpu")


def test_explicit_layers_that_disagree_name_shape_cause(tmp_path):
    path = fr.save_fr(_tiny("arcface"), tmp_path / "a.pth")
    with pytest.raises(
        CheckpointError, match=r"layer3\.0\.conv1\.weight: checkpoint \[8, 8.*infer"
    ):
        fr.load_fr("arcface", path, widths=(4, 8, 12, 16), device="cpu")


def test_cross_layout_gives_hint(tmp_path):
    ir_path = fr.save_fr(_tiny("curricularface"), tmp_path / "ir.pth")
    with pytest.raises(CheckpointError, match="face.evoLVe.*use arch='curricularface'"):
        fr.load_fr("arcface", ir_path, device="cpu")
    ires_path = fr.save_fr(_tiny("arcface"), tmp_path / "ires.pth")
    with pytest.raises(CheckpointError, match="arcface_torch iResNet"):
        fr.load_fr("curricularface", ires_path, device="cpu")


def test_vit_checkpoint_gives_hint(tmp_path):
    torch.save({"patch_embed.proj.weight": torch.zeros(2, 3, 9, 9)}, tmp_path / "vit.pt")
    with pytest.raises(CheckpointError, match="ViT-FIQA"):
        fr.load_fr("magface", tmp_path / "vit.pt", device="cpu")


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(fr.build_fr("iresnet", **TINY_IRES), path)
    with pytest.raises(CheckpointError, match="refused"):
        fr.load_fr("arcface", path, device="cpu")


def test_unknown_name_needs_arch_and_preprocess(tmp_path):
    path = fr.save_fr(_tiny("arcface"), tmp_path / "a.pth")
    with pytest.raises(ValueError, match="unknown FR model name 'adaface'"):
        fr.load_fr("adaface", path)
    m = fr.load_fr("adaface", path, arch="iresnet", preprocess=fr.ARCFACE, device="cpu")
    assert m.name == "adaface"


# ------------------------------------------------------------------ preprocessing & embeddings


def test_pure_red_per_model_preprocessing():
    red = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    arc = fr.ARCFACE(red)
    assert arc.shape == (1, 3, 4, 4) and arc.dtype == torch.float32
    assert torch.all(arc[0, 0] == 1.0) and torch.all(arc[0, 1:] == -1.0)
    mag = fr.MAGFACE(red)
    assert torch.all(mag[0, 2] == 1.0) and torch.all(mag[0, :2] == 0.0)
    cur = fr.CURRICULARFACE(red)
    assert torch.equal(cur, arc)


def test_preprocess_matches_numpy_formula():
    faces = _faces(2, size=8)
    for pre in [fr.ARCFACE, fr.MAGFACE]:
        x = faces[..., ::-1] if pre.channel_order == "BGR" else faces
        expect = (x / 255.0 - np.array(pre.mean)) / np.array(pre.std)
        np.testing.assert_allclose(pre(faces).numpy(), expect.transpose(0, 3, 1, 2), atol=1e-6)


def test_bad_images_are_refused():
    model = _tiny("arcface")
    with pytest.raises(TypeError, match="uint8"):
        model.embed(np.zeros((1, 112, 112, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        model.embed(np.zeros((1, 3, 112, 112), dtype=np.uint8))
    with pytest.raises(ValueError, match="112x112"):
        model.embed(np.zeros((1, 64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", ["magface", "curricularface"])
def test_flip_concat_embedding_equals_manual_computation(name):
    model = _tiny(name, seed=3)
    faces = _faces(4, seed=1)
    emb = model.embed(faces, batch_size=3)
    assert emb.shape == (4, 16) and emb.dtype == np.float32

    pre = model.preprocess
    x = faces[..., ::-1] if pre.channel_order == "BGR" else faces
    x = ((x / 255.0 - np.array(pre.mean)) / np.array(pre.std)).transpose(0, 3, 1, 2)
    with torch.no_grad():
        f = model.backbone(torch.tensor(x.copy(), dtype=torch.float32)).numpy()
        g = model.backbone(torch.tensor(x[..., ::-1].copy(), dtype=torch.float32)).numpy()
    manual = np.concatenate(
        [
            f / np.linalg.norm(f, axis=1, keepdims=True),
            g / np.linalg.norm(g, axis=1, keepdims=True),
        ],
        axis=1,
    )
    np.testing.assert_allclose(emb, manual, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb[:, :8], axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb[:, 8:], axis=1), 1.0, atol=1e-6)
    assert not np.allclose(emb[:, :8], emb[:, 8:], atol=1e-3)  # the flip really changes f
    np.testing.assert_allclose(model.embed_raw(faces), f, atol=1e-5)
    np.testing.assert_allclose(
        fr.magface_quality(model, faces), np.linalg.norm(f, axis=1), rtol=1e-5
    )
    np.testing.assert_allclose(model.embed(faces, flip=False), manual[:, :8], atol=1e-5)


def test_batching_and_iterables_do_not_change_embeddings():
    model = _tiny("arcface")
    faces = _faces(5)
    ref = model.embed(faces, batch_size=64)
    np.testing.assert_allclose(model.embed(faces, batch_size=2), ref, atol=1e-5)
    np.testing.assert_allclose(
        model.embed(iter([faces[:3], faces[3:]]), batch_size=2), ref, atol=1e-5
    )
    assert model.embed(faces[:0]).shape == (0, 16)


def test_embedding_of_a_flipped_face_swaps_halves():
    model = _tiny("arcface", seed=5)
    faces = _faces(2, seed=4)
    a = model.embed(faces)
    b = model.embed(np.ascontiguousarray(faces[:, :, ::-1]))
    np.testing.assert_allclose(b, np.concatenate([a[:, 8:], a[:, :8]], axis=1), atol=1e-5)


# ------------------------------------------------------------------ comparison & templates


def test_cosine_of_flip_concat_embeddings_is_half_the_dot():
    """Each half has unit norm, so ``|e| = sqrt(2)`` and ``cos(e_a, e_b) = dot / 2`` (the scale
    the comparisons use for sample embeddings)."""
    model = _tiny("elasticface")
    e = model.embed(_faces(4)).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 2**0.5, atol=1e-6)
    dot = np.sum(e[:2] * e[2:], axis=1)
    cos = dot / (np.linalg.norm(e[:2], axis=1) * np.linalg.norm(e[2:], axis=1))
    np.testing.assert_allclose(cos, dot / 2, atol=1e-6)


def test_template_embeddings_hand_case():
    emb = np.array([[1, 0], [0, 1], [0, 3], [3, 4], [0, -2]], dtype=np.float32)
    tids = np.array([7, 7, 7, 3, 3])
    mids = np.array([1, 2, 2, 5, 1])  # media 1 appears in both templates
    order = np.array([4, 2, 0, 3, 1])  # row order must not matter
    unique_t, feats = fr.template_embeddings(emb[order], tids[order], mids[order])
    # template 3: media 5 -> [3,4]; media 1 -> [0,-2]; sum [3,2]
    # template 7: media 1 -> [1,0]; media 2 -> mean([0,1],[0,3]) = [0,2]; sum [1,2]
    np.testing.assert_array_equal(unique_t, [3, 7])
    np.testing.assert_allclose(
        feats, [[3 / 13**0.5, 2 / 13**0.5], [1 / 5**0.5, 2 / 5**0.5]], atol=1e-6
    )


def test_template_embeddings_match_a_loop_implementation():
    rng = np.random.default_rng(0)
    n = 400
    emb = rng.normal(size=(n, 6))
    tids = rng.integers(0, 30, n)
    mids = rng.integers(0, 12, n)
    expect = {}
    for t in np.unique(tids):
        total = np.zeros(6)
        for m in np.unique(mids[tids == t]):
            total += emb[(tids == t) & (mids == m)].mean(axis=0)
        expect[t] = total / np.linalg.norm(total)
    unique_t, feats = fr.template_embeddings(emb, tids, mids)
    assert feats.dtype == np.float64
    np.testing.assert_allclose(feats, np.stack([expect[t] for t in unique_t]), atol=1e-12)
    with pytest.raises(ValueError, match="media_ids"):
        fr.template_embeddings(emb, tids, mids[:-1])


