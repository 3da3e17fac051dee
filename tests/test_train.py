"""Training recipes: margin-loss logits and CR on hand cases, loops that learn and repeat
themselves, checkpoints that load back, and the CLI in one CPU process."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from exfiqa.io import file_digest
from exfiqa.models import fr
from exfiqa.models.vitfiqa import ViTFIQAConfig, build_vitfiqa, load_vitfiqa, to_tensor
from exfiqa.train.trainer import (
    VITFIQA_PREPROCESS,
    ArcFace,
    CosFace,
    CurricularFace,
    ElasticArcFace,
    FaceArrays,
    FaceFolder,
    MagFace,
    TrainConfig,
    _ViTFIQAObjective,
    build_margin_loss,
    certainty_ratio,
    certainty_ratio_from_cosine,
    main,
    train_fr,
    train_vitfiqa,
)

S = 64.0


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models train fastest (and least disturbed by a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _is_row_of(rows: torch.Tensor, reference: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """(N,) bool: whether each row of ``rows`` equals some row of ``reference``."""
    diff = (rows.flatten(1)[:, None] - reference.flatten(1)[None]).abs().amax(-1)
    return diff.min(dim=1).values < tol


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def _head_2d(head: torch.nn.Module, centre_angles: list[float], norms: list[float]) -> None:
    """Put class centres at given angles (with arbitrary norms: only directions may matter)."""
    with torch.no_grad():
        head.weight.copy_(
            torch.tensor(
                [[r * c for c in _unit(a)] for a, r in zip(centre_angles, norms, strict=True)]
            )
        )


def _emb(angle: float, norm: float = 7.0) -> torch.Tensor:
    return torch.tensor([[norm * c for c in _unit(angle)]], dtype=torch.float32)


def _loss(head: torch.nn.Module, emb: torch.Tensor, y: torch.Tensor) -> float:
    return float(head(emb, y).detach())


def _ce(logits: list[float], target: int) -> float:
    z = torch.tensor(logits, dtype=torch.float64)
    return float(torch.logsumexp(z, 0) - z[target])


# ----------------------------------------------------------------------------- margin losses

THETA = 0.6  # angle between the embedding and its class centre (class 0 at angle 0)


def test_cosface_logits_and_loss_hand_case():
    head = CosFace(2, 2)
    _head_2d(head, [0.0, math.pi / 2], [3.0, 0.5])
    emb, y = _emb(THETA), torch.tensor([0])
    expected = [S * (math.cos(THETA) - 0.4), S * math.sin(THETA)]
    assert head.logits(emb, y)[0].tolist() == pytest.approx(expected, abs=1e-4)
    assert (_loss(head, emb, y)) == pytest.approx(_ce(expected, 0), abs=1e-4)
    # cosine() is margin-free: the cosines to both centres
    assert head.cosine(emb)[0].tolist() == pytest.approx(
        [math.cos(THETA), math.sin(THETA)], abs=1e-6
    )


def test_arcface_logits_hand_cases_including_threshold_and_easy_margin():
    head = ArcFace(2, 2)
    _head_2d(head, [0.0, math.pi / 2], [1.0, 2.0])
    y = torch.tensor([0])
    expected = [S * math.cos(THETA + 0.5), S * math.sin(THETA)]
    assert head.logits(_emb(THETA), y)[0].tolist() == pytest.approx(expected, abs=1e-4)
    assert (_loss(head, _emb(THETA), y)) == pytest.approx(_ce(expected, 0), abs=1e-4)
    # theta + m > pi: the fall-back cos(theta) - m sin(pi - m), not the rising cos(theta + m)
    big = 2.9
    target = head.logits(_emb(big), y)[0, 0].item() / S
    assert target == pytest.approx(math.cos(big) - 0.5 * math.sin(math.pi - 0.5), abs=1e-5)
    assert target < math.cos(big)
    # easy margin: no margin where cos(theta) <= 0
    easy = ArcFace(2, 2, easy_margin=True)
    _head_2d(easy, [0.0, math.pi / 2], [1.0, 1.0])
    assert easy.logits(_emb(2.0), y)[0, 0].item() == pytest.approx(S * math.cos(2.0), abs=1e-4)
    assert easy.logits(_emb(1.0), y)[0, 0].item() == pytest.approx(S * math.cos(1.5), abs=1e-4)


def test_elasticface_margins_are_drawn_from_the_normal_in_training_only():
    torch.manual_seed(0)
    head = ElasticArcFace(2, 2)
    _head_2d(head, [0.0, math.pi / 2], [1.0, 1.0])
    n = 4000
    emb, y = _emb(THETA).repeat(n, 1), torch.zeros(n, dtype=torch.long)
    head.eval()
    assert head.logits(emb[:1], y[:1])[0, 0].item() == pytest.approx(
        S * math.cos(THETA + 0.5), abs=1e-4
    )
    head.train()
    logits = head.logits(emb, y).detach().double()
    margins = torch.arccos(logits[:, 0] / S) - THETA  # invert s * cos(theta + m_i)
    assert float(margins.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(margins.std()) == pytest.approx(0.05, abs=0.005)
    assert torch.allclose(
        logits[:, 1], torch.full((n,), S * math.sin(THETA), dtype=torch.float64), atol=1e-3
    )


def test_elasticface_plus_gives_the_largest_margin_to_the_farthest_sample():
    torch.manual_seed(1)
    head = ElasticArcFace(2, 2, plus=True)
    _head_2d(head, [0.0, math.pi / 2], [1.0, 1.0])
    angles = torch.linspace(0.2, 1.0, 32)
    emb = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    logits = head.train().logits(emb, torch.zeros(32, dtype=torch.long)).detach().double()
    margins = torch.arccos(logits[:, 0] / S) - angles.double()
    assert torch.all(margins[1:] >= margins[:-1] - 1e-5)  # farther (larger angle) -> larger margin
    assert float(margins.max() - margins.min()) > 0.05


def test_magface_adaptive_margin_and_regulariser_hand_case():
    head = MagFace(2, 2)
    _head_2d(head, [0.0, math.pi / 2], [1.0, 1.0])
    y = torch.tensor([0])
    a = 60.0
    m = 0.45 + (0.8 - 0.45) * (a - 10) / (110 - 10)  # 0.625
    expected = [S * math.cos(THETA + m), S * math.sin(THETA)]
    assert head.logits(_emb(THETA, a), y)[0].tolist() == pytest.approx(expected, abs=1e-4)
    g = a / 110**2 + 1 / a
    assert (_loss(head, _emb(THETA, a), y)) == pytest.approx(_ce(expected, 0) + 35 * g, abs=1e-4)
    # below l_a the magnitude is clamped: margin l_m, g(l_a)
    small = [S * math.cos(THETA + 0.45), S * math.sin(THETA)]
    assert head.logits(_emb(THETA, 5.0), y)[0].tolist() == pytest.approx(small, abs=1e-4)
    assert (_loss(head, _emb(THETA, 5.0), y)) == pytest.approx(
        _ce(small, 0) + 35 * (10 / 110**2 + 1 / 10), abs=1e-4
    )


def test_curricularface_hard_negatives_and_t_update_hand_case():
    head = CurricularFace(2, 3)
    # embedding at angle 0; own centre 1.2 rad away; class 1 only 0.4 rad away (hard: its cosine
    # beats cos(1.2 + 0.5)); class 2 2.0 rad away (easy: cos 2.0 < cos 1.7)
    _head_2d(head, [1.2, -0.4, 2.0], [1.0, 1.0, 1.0])
    emb, y = _emb(0.0), torch.tensor([0])
    c0, c1, c2 = math.cos(1.2), math.cos(0.4), math.cos(2.0)
    head.train()
    t1 = 0.01 * c0
    expected = [S * math.cos(1.7), S * c1 * (t1 + c1), S * c2]
    assert head.logits(emb, y)[0].tolist() == pytest.approx(expected, abs=1e-4)
    assert float(head.t) == pytest.approx(t1, abs=1e-7)
    t2 = 0.99 * t1 + 0.01 * c0
    assert (_loss(head, emb, y)) == pytest.approx(
        _ce([expected[0], S * c1 * (t2 + c1), expected[2]], 0), abs=1e-4
    )
    head.eval()
    head.logits(emb, y)
    assert float(head.t) == pytest.approx(t2, abs=1e-7)  # no update in eval mode


def test_losses_check_their_inputs():
    head = build_margin_loss("arcface", 4, 3)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        head(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"embeddings must be \(B, 4\)"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown loss"):
        build_margin_loss("sphereface", 4, 3)
    assert build_margin_loss("ElasticFace-Plus", 4, 3).plus


# ----------------------------------------------------------------------------- certainty ratio


def test_certainty_ratio_hand_case():
    centres = torch.tensor([[2 * c for c in _unit(a)] for a in (0.0, 1.0, 2.5)])
    emb = torch.cat([_emb(0.3), _emb(0.3, 0.1)])
    cr = certainty_ratio(emb, torch.tensor([0, 1]), centres)
    assert cr.tolist() == pytest.approx(
        [math.cos(0.3) / (math.cos(0.7) + 1 + 1e-9), math.cos(0.7) / (math.cos(0.3) + 1 + 1e-9)],
        abs=1e-6,
    )


def test_certainty_ratio_matches_a_loop_and_has_no_gradient():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 6, generator=g, requires_grad=True)
    centres = torch.randn(5, 6, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (10,), generator=g)
    cr = certainty_ratio(emb, labels, centres)
    assert not cr.requires_grad
    for i in range(10):
        e = emb[i].detach().double()
        cos = [
            float(e @ c.detach().double() / (e.norm() * c.detach().double().norm()))
            for c in centres
        ]
        own = cos[int(labels[i])]
        other = max(c for j, c in enumerate(cos) if j != int(labels[i]))
        assert float(cr[i]) == pytest.approx(own / (other + 1 + 1e-9), abs=1e-5)
    with pytest.raises(ValueError, match="C >= 2"):
        certainty_ratio_from_cosine(torch.ones(3, 1), torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------- FR training


def _toy_faces(classes: int = 8, per_class: int = 6, size: int = 16, seed: int = 0):
    """Each class a distinct random pattern, each image that pattern plus mild noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(classes, size, size, 3))
    noise = rng.integers(-20, 21, size=(classes, per_class, size, size, 3))
    images = np.clip(patterns[:, None] + noise, 0, 255).astype(np.uint8).reshape(-1, size, size, 3)
    return images, np.repeat(np.arange(classes), per_class)


TINY_FR = {"layers": (1, 1), "widths": (8, 16), "embedding_size": 16, "input_size": 16}


@pytest.mark.parametrize(
    ("loss", "model"),
    [("cosface", "arcface"), ("arcface", "arcface"), ("elasticface", "elasticface"),
     ("magface", "magface"), ("curricularface", "curricularface")],
)  # fmt: skip
def test_each_fr_loss_reduces_the_loss_on_a_separable_toy_problem(loss, model):
    images, labels = _toy_faces()
    arch, pre = fr.FR_MODELS[model]
    torch.manual_seed(0)
    backbone = fr.build_fr(arch, **TINY_FR)
    hist = train_fr(backbone, loss, (images, labels), pre, epochs=8, batch_size=16, lr=0.05,
                    progress=False, schedule="constant")  # fmt: skip
    assert len(hist.loss) == 8 * 3 and hist.steps_per_epoch == 3
    assert np.mean(hist.loss[-3:]) < 0.5 * np.mean(hist.loss[:3])
    assert not backbone.training


class _Recorder(torch.nn.Module):
    """A linear 'FR model' that keeps every input batch it sees."""

    embedding_size = 4

    def __init__(self, size: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * size * size, 4)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def test_fr_training_feeds_the_models_own_preprocessing_and_flips():
    images, labels = _toy_faces(classes=4, per_class=4, size=8)
    rec = _Recorder(8)
    train_fr(
        rec,
        "arcface",
        (images, labels),
        "magface",
        epochs=1,
        batch_size=16,
        progress=False,
        flip=False,
    )
    bgr01 = torch.from_numpy(images[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255.0
    seen = torch.cat(rec.seen)
    assert seen.shape == bgr01.shape and float(seen.min()) >= 0 and float(seen.max()) <= 1
    assert torch.all(_is_row_of(seen, bgr01))  # every input is one of the images, BGR in [0, 1]
    rec.seen.clear()
    train_fr(rec, "arcface", (images, labels), fr.MAGFACE, epochs=2, batch_size=16, progress=False)
    seen = torch.cat(rec.seen)
    plain, mirrored = _is_row_of(seen, bgr01), _is_row_of(seen, bgr01.flip(-1))
    assert torch.all(plain | mirrored) and plain.any() and mirrored.any()


def test_vitfiqa_preprocess_equals_to_tensor():
    images, _ = _toy_faces(classes=2, per_class=2, size=8)
    assert torch.allclose(VITFIQA_PREPROCESS(images, "cpu"), to_tensor(images), atol=1e-6)


def test_training_settings_are_validated():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")  # type: ignore[arg-type]
    images, labels = _toy_faces(classes=2, per_class=3, size=16)
    with pytest.raises(ValueError, match="no full batch"):
        train_fr(fr.build_fr("iresnet", **TINY_FR), "arcface", (images, labels), "arcface",
                 batch_size=16, progress=False)  # fmt: skip


# ----------------------------------------------------------------------------- ViT-FIQA training

TINY_VIT = ViTFIQAConfig(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                         feature_dim=16, stem_channels=(8,), drop_path_rate=0.1)  # fmt: skip


def _train_tiny_vit(seed: int, variant: str = "token", mask_ratio: float = 0.25, noise: int = 0):
    """Same initial weights every time; ``noise`` scrambles torch's global RNG before training, so
    only train_vitfiqa's own seeding can make two runs agree."""
    images, labels = _toy_faces()
    torch.manual_seed(123)
    model = build_vitfiqa(TINY_VIT, variant=variant)
    torch.manual_seed(1000 + noise)
    hist = train_vitfiqa(model, FaceArrays(images, labels), epochs=2, batch_size=16, seed=seed,
                         mask_ratio=mask_ratio, progress=False)  # fmt: skip
    return model, hist, images


def test_vitfiqa_loss_is_cosface_plus_ten_smooth_l1_to_the_certainty_ratio():
    torch.manual_seed(0)
    model = build_vitfiqa(TINY_VIT, variant="crfiqa").eval()
    head = CosFace(16, 8)
    images, labels = _toy_faces()
    x, y = to_tensor(images[:12]), torch.as_tensor(labels[:12])
    total, parts = _ViTFIQAObjective(model, head, mask_ratio=0.0, quality_weight=10.0)(x, y)
    with torch.no_grad():
        emb, score = model.forward_train(x)
        cr = certainty_ratio(emb, y, head.weight)
        diff = (score - cr).abs()
        smooth = torch.where(diff < 0.5, 0.5 * diff**2 / 0.5, diff - 0.25).mean()
        fr_loss = F.cross_entropy(head.logits(emb, y), y)
    assert float(parts["quality_loss"]) == pytest.approx(float(smooth), rel=1e-5)
    assert float(total.detach()) == pytest.approx(float(fr_loss + 10 * smooth), rel=1e-5)


def test_train_vitfiqa_is_deterministic_and_the_checkpoint_round_trips(tmp_path):
    model_a, hist_a, images = _train_tiny_vit(seed=7)
    model_b, hist_b, _ = _train_tiny_vit(seed=7, noise=1)
    model_c, _, _ = _train_tiny_vit(seed=8)
    sd_a, sd_b, sd_c = model_a.state_dict(), model_b.state_dict(), model_c.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert hist_a.loss == hist_b.loss and len(hist_a.loss) == 2 * 3
    assert set(hist_a.parts) == {"fr_loss", "quality_loss"}
    assert not all(torch.equal(sd_a[k], sd_c[k]) for k in sd_a)  # the seed matters
    torch.manual_seed(123)
    init = build_vitfiqa(TINY_VIT)
    assert not torch.equal(init.mask_token, model_a.mask_token)  # masking trained the mask token
    path = tmp_path / "tiny.pt"
    from exfiqa.models.vitfiqa import save_vitfiqa

    save_vitfiqa(model_a, path)
    loaded = load_vitfiqa(path, num_heads=2, img_size=16)
    x = to_tensor(images[:10])
    with torch.no_grad():
        assert torch.equal(loaded(x), model_a.eval()(x))


def test_without_masking_the_mask_token_stays_untouched():
    model, _, _ = _train_tiny_vit(seed=0, variant="crfiqa", mask_ratio=0.0)
    torch.manual_seed(123)
    init = build_vitfiqa(TINY_VIT, variant="crfiqa")
    assert torch.equal(init.mask_token, model.mask_token)
    assert not torch.equal(init.head_qs[1].weight, model.head_qs[1].weight)


def test_each_entry_point_records_every_training_setting_it_takes():
    # every TrainConfig field but momentum and log_every is a parameter of both entry points
    import inspect
    from dataclasses import fields

    taken = {f.name for f in fields(TrainConfig)} - {"momentum", "log_every"}
    for entry in (train_fr, train_vitfiqa):
        assert taken <= set(inspect.signature(entry).parameters), entry.__name__
    given = {"epochs": 2, "batch_size": 8, "lr": 0.07, "weight_decay": 1e-4, "seed": 9, "optimizer": "adamw",
             "schedule": "constant", "warmup_epochs": 0.5, "flip": False, "num_workers": 0, "num_threads": 1,
             "grad_clip": 2.0, "amp": False, "channels_last": True}
    assert set(given) == taken
    expect = TrainConfig(epochs=2, batch_size=8, lr=0.07, weight_decay=1e-4, optimizer="adamw", momentum=0.9,
                         schedule="constant", warmup_epochs=0.5, seed=9, flip=False, num_workers=0, num_threads=1,
                         grad_clip=2.0, amp=False, channels_last=True, log_every=10)  # fmt: skip
    images, labels = _toy_faces(classes=4, per_class=4, size=8)
    hist = train_fr(_Recorder(8), "cosface", (images, labels), "arcface", progress=False, **given)
    assert hist.config == expect
    vit_images, vit_labels = _toy_faces(classes=4, per_class=4)
    vit = build_vitfiqa(TINY_VIT)
    assert train_vitfiqa(vit, (vit_images, vit_labels), progress=False, **given).config == expect
    # left out, each entry point's own defaults (ViT-FIQA: AdamW, lr 1e-3, weight decay 0.05)
    assert train_vitfiqa(vit, (vit_images, vit_labels), batch_size=16, progress=False).config == TrainConfig(
        batch_size=16, lr=1e-3, weight_decay=0.05, optimizer="adamw")
    assert train_fr(_Recorder(8), "cosface", (images, labels), "arcface", batch_size=8, progress=False).config == (
        TrainConfig(batch_size=8, lr=0.1, weight_decay=5e-4, optimizer="sgd"))


# ----------------------------------------------------------------------------- data + CLI


def _write_folder(root, classes: int = 4, per_class: int = 6, size: int = 16):
    images, labels = _toy_faces(classes, per_class, size)
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        d = root / f"id_{lab:03d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:04d}.png")
    (root / "id_zzz_empty").mkdir()
    return images, labels


def test_face_folder_reads_identities_in_sorted_order(tmp_path):
    images, labels = _write_folder(tmp_path / "data")
    data = FaceFolder(tmp_path / "data", image_size=16)
    assert data.num_classes == 4 and len(data) == 24  # the empty folder is no class
    assert data.classes == ["id_000", "id_001", "id_002", "id_003"]
    got, got_labels = data[[0, 7, 23]]
    assert np.array_equal(got, images[[0, 7, 23]]) and got_labels.tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="no images"):
        FaceFolder(tmp_path / "data" / "id_zzz_empty")


VIT_ARGS = ["--epochs", "1", "--batch-size", "8", "--image-size", "16", "--patch-size", "4",
            "--embed-dim", "16", "--depth", "2", "--num-heads", "2", "--feature-dim", "16",
            "--stem-channels", "8", "--workers", "0", "--device", "cpu", "--no-progress"]  # fmt: skip


def test_cli_vitfiqa_one_epoch_single_process_and_overwrite_guard(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _write_folder(tmp_path / "data")
    out = tmp_path / "ckpt" / "vit.pt"
    argv = ["vitfiqa", "--data", str(tmp_path / "data"), "--out", str(out), *VIT_ARGS]
    assert main(argv) == 0
    assert not torch.distributed.is_initialized()
    model = load_vitfiqa(out, num_heads=2, img_size=16)
    assert model.config.variant == "token" and model.config.stem_channels == (8,)
    log = json.loads((tmp_path / "ckpt" / "vit.pt.history.json").read_text())
    assert log["num_classes"] == 4 and len(log["loss"]) == 3 and log["world_size"] == 1
    digest = file_digest(out)
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err and file_digest(out) == digest
    assert main([*argv, "--overwrite", "--seed", "1"]) == 0
    assert file_digest(out) != digest


def test_cli_fr_magface_writes_the_released_layout(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _write_folder(tmp_path / "data")
    out = tmp_path / "mag.pt"
    argv = ["fr", "--model", "magface", "--data", str(tmp_path / "data"), "--out", str(out),
            "--layers", "1,1", "--widths", "8,16", "--embedding-size", "16", *VIT_ARGS[:6],
            "--workers", "0", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    raw = torch.load(out, weights_only=True)
    assert set(raw) == {"state_dict"} and all(
        k.startswith("features.module.") for k in raw["state_dict"]
    )
    loaded = fr.load_fr("magface", out, device="cpu")
    assert loaded.backbone.layers == (1, 1) and loaded.backbone.input_size == 16
    log = json.loads(out.with_name("mag.pt.history.json").read_text())
    assert log["model"] == "magface" and log["loss_name"] == "magface" and len(log["loss"]) == 3


def test_epoch_callback_sees_each_epoch_in_eval_mode():
    images, labels = _toy_faces(classes=4, per_class=4, size=8)
    rec, calls = _Recorder(8), []

    def callback(epoch, hist):
        calls.append((epoch, len(hist.epoch_loss), rec.training))

    hist = train_fr(rec, "cosface", (images, labels), "arcface", epochs=3, batch_size=8,
                    progress=False, on_epoch_end=callback)  # fmt: skip
    assert calls == [(0, 1, False), (1, 2, False), (2, 3, False)]
    assert len(hist.loss) == 3 * 2 and len(hist.lr) == 6


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_lr_schedules_with_linear_warmup(schedule):
    images, labels = _toy_faces(classes=4, per_class=4, size=8)
    hist = train_fr(_Recorder(8), "cosface", (images, labels), "arcface", epochs=4, batch_size=8,
                    lr=0.2, warmup_epochs=1, schedule=schedule, progress=False)  # fmt: skip
    steps = 8  # 2 steps per epoch, 1 warm-up epoch = 2 steps
    expected = [0.1, 0.2]
    for k in range(2, steps):
        progress = (k - 2) / (steps - 2)
        expected.append(0.2 if schedule == "constant" else 0.1 * (1 + math.cos(math.pi * progress)))
    assert hist.lr == pytest.approx(expected, abs=1e-9)


def test_channels_last_trains_the_same_and_returns_default_layout_weights():
    images, labels = _toy_faces()
    runs = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        backbone = fr.build_fr("iresnet", **TINY_FR)
        hist = train_fr(backbone, "arcface", (images, labels), "arcface", epochs=2, batch_size=16,
                        progress=False, channels_last=channels_last)  # fmt: skip
        runs.append(hist.loss)
        assert backbone.conv1.weight.is_contiguous()
    # The first step sees the same weights and batch in both layouts: only kernel rounding differs.
    assert runs[1][0] == pytest.approx(runs[0][0], rel=1e-5)
    # Later steps compound that rounding through the optimiser (on AVX-512 CPUs the NHWC kernels
    # round differently: 1.7e-3 apart after 4 steps was measured), so the curves agree to 1%.
    assert runs[1] == pytest.approx(runs[0], rel=1e-2)
