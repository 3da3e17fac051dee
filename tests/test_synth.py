"""SynthFace: determinism, geometry of the landmarks, degradations, identity cues."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from skimage.transform import SimilarityTransform, warp

from exfiqa.demo import synth as S

SPEC = S.WorldSpec(seed=11, n_identities=30, images_per_identity=4, degradation_prob=0.6)


@pytest.fixture(scope="module")
def clean_frontal() -> tuple[S.IdentityParams, np.ndarray, np.ndarray]:
    """24 identities (children included) rendered frontal with neutral light."""
    ids = S.sample_identities(24, seed=5, child_fraction=0.3)
    images, landmarks = S.render(ids, S.frontal_nuisance(len(ids)))
    return ids, images, landmarks


@pytest.fixture(scope="module")
def clean_batch() -> S.SynthBatch:
    return S.generate(SPEC, np.arange(6), 2, degraded=False)


# ------------------------------------------------------------------------------ containers


def test_batch_shapes_dtypes_and_ground_truth_fields() -> None:
    b = S.generate(SPEC, np.arange(8), 3)
    n = 24
    assert b.images.shape == (n, 112, 112, 3) and b.images.dtype == np.uint8
    assert b.landmarks.shape == (n, 5, 2) and b.landmarks.dtype == np.float32
    assert b.identity.tolist() == np.repeat(np.arange(8), 3).tolist()
    assert b.image_index.tolist() == np.tile(np.arange(3), 8).tolist()
    assert b.severity.dtype == np.float32 and np.all((b.severity >= 0) & (b.severity <= 1))
    clean = b.degradation == "none"
    assert 0 < clean.sum() < n  # with p = 0.6 both occur among 24
    assert np.all(b.severity[clean] == 0) and np.all(b.severity[~clean] > 0)
    for row, kinds, sev, total in zip(
        b.degradation, b.kinds, b.severities, b.severity, strict=True
    ):
        present = [k for k in kinds if k]
        assert row == ("+".join(present) or "none")
        assert all(k in S.DEGRADATIONS for k in present)
        assert len({S._GROUP[k] for k in present}) == len(present)  # two kinds: two groups
        assert total == pytest.approx(1 - np.prod(1 - sev), abs=1e-6)


def test_combined_severity_is_one_minus_product() -> None:
    got = S.combined_severity([[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [1.0, 0.3]])
    np.testing.assert_allclose(got, [0.0, 0.5, 0.75, 1.0], atol=1e-7)
    with pytest.raises(ValueError):
        S.combined_severity([1.5])


def test_worldspec_and_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="kinds"):
        S.WorldSpec(kinds=("blur_typo",))
    with pytest.raises(ValueError, match="degradation_prob"):
        S.WorldSpec(degradation_prob=1.5)
    with pytest.raises(ValueError, match="severity_range"):
        S.WorldSpec(severity_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="kind_weights"):
        S.WorldSpec(kinds=("jpeg", "mask"), kind_weights=(1.0,))
    with pytest.raises(ValueError, match="equal length"):
        S.generate_items(SPEC, [0, 1], [0])
    with pytest.raises(ValueError, match="non-negative"):
        S.generate_items(SPEC, [-1], [0])
    with pytest.raises(ValueError, match="no items"):
        S.generate_items(SPEC, [], [])


# ------------------------------------------------------------------------------ determinism


def test_degradation_plans_follow_the_spec_mix() -> None:
    spec = S.WorldSpec(
        degradation_prob=0.4,
        second_degradation_prob=0.5,
        kinds=("jpeg", "gaussian_blur", "mask", "pose"),
        kind_weights=(1.0, 1.0, 2.0, 0.0),
        severity_range=(0.2, 0.7),
    )
    plans = [S._draw_plan(spec, np.random.default_rng(j)) for j in range(3000)]
    degraded = [pl for pl in plans if pl]
    assert abs(len(degraded) / len(plans) - 0.4) < 0.04
    two = [pl for pl in degraded if len(pl) == 2]
    assert abs(len(two) / len(degraded) - 0.5) < 0.06
    first = [pl[0][0] for pl in degraded]
    assert "pose" not in first and {"jpeg", "gaussian_blur", "mask"} <= set(first)
    sev = np.array([s for pl in degraded for _, s in pl])
    assert sev.min() >= 0.2 and sev.max() <= 0.7
    for pl in two:  # group order: occlusion, then blur, then codec
        assert [S._GROUP[k] for k, _ in pl] == sorted(S._GROUP[k] for k, _ in pl)


def test_same_seed_same_bytes_other_seed_other_faces() -> None:
    a = S.generate(SPEC, [3, 4], 3)
    b = S.generate(SPEC, [3, 4], 3)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.landmarks.tobytes() == b.landmarks.tobytes()
    assert a.degradation.tolist() == b.degradation.tolist()
    other = S.generate(dataclasses.replace(SPEC, seed=12), [3, 4], 3)
    assert np.abs(a.images.astype(int) - other.images.astype(int)).mean() > 10


def test_item_does_not_depend_on_batch_composition_or_chunking() -> None:
    ids = np.array([0, 1, 2, 7, 7, 9, 2, 5, 5, 5])
    imgs = np.array([0, 3, 1, 0, 5, 2, 2, 1, 0, 4])
    whole = S.generate_items(SPEC, ids, imgs)
    order = np.array([9, 3, 0, 6, 1])
    part = S.generate_items(SPEC, ids[order], imgs[order], chunk_size=2)
    assert whole.images[order].tobytes() == part.images.tobytes()
    assert whole.landmarks[order].tobytes() == part.landmarks.tobytes()
    assert whole.degradation[order].tolist() == part.degradation.tolist()
    # Rendering in other batch groupings gives the same bytes (no cross-sample arithmetic).
    p = S.sample_identities(ids, SPEC.seed)
    nz = S.sample_nuisance(SPEC.seed, ids, imgs)
    full, _ = S.render(p, nz)
    singles = np.concatenate([S.render(p.take([j]), nz.take([j]))[0] for j in range(len(ids))])
    assert full.tobytes() == singles.tobytes()
    # The public pieces reproduce generate_items' clean items.
    clean = S.generate_items(SPEC, ids, imgs, degraded=False)
    assert clean.images.tobytes() == full.tobytes()


def test_two_workers_give_the_same_bytes_as_one() -> None:
    ids, imgs = np.repeat(np.arange(4), 3), np.tile(np.arange(3), 4)
    one = S.generate_items(SPEC, ids, imgs, workers=1)
    two = S.generate_items(SPEC, ids, imgs, workers=2, chunk_size=5)
    assert one.images.tobytes() == two.images.tobytes()
    assert one.landmarks.tobytes() == two.landmarks.tobytes()


def test_clean_reference_shares_pose_light_and_background(clean_batch: S.SynthBatch) -> None:
    degraded = S.generate(
        dataclasses.replace(SPEC, degradation_prob=1.0, kinds=("jpeg",)), np.arange(6), 2
    )
    assert np.all(degraded.degradation == "jpeg")
    np.testing.assert_array_equal(degraded.landmarks, clean_batch.landmarks)
    diff = np.abs(degraded.images.astype(int) - clean_batch.images.astype(int)).mean(axis=(1, 2, 3))
    assert np.all(diff < 12)  # same picture, only codec damage


# ------------------------------------------------------------------------------ landmarks


def test_frontal_landmarks_near_arcface_template(clean_frontal) -> None:
    ids, _, lm = clean_frontal
    err = np.linalg.norm(lm - S.ARCFACE_TEMPLATE[None], axis=-1)
    assert err.mean() < 2.5 and err.max() < 6.0
    assert ids.age_group.sum() > 0  # children are in the sample and also near the template


def _sclera_centre(img: np.ndarray, centre: np.ndarray, radius: float = 9.0) -> np.ndarray:
    """Centre of the bounding box of near-white, unsaturated pixels (sclera) in a disc around
    ``centre``. The sclera (an ellipse minus the centred iris) is centrally symmetric, so the box
    centre is the eye centre whatever the roll; the iris highlight lies inside the box."""
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    near = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < radius**2
    x = img.astype(int)
    white = (x.min(-1) > 185) & (x.max(-1) < 240) & (x.max(-1) - x.min(-1) < 12) & near
    assert white.sum() >= 6, "no sclera found near the landmark"
    xs, ys = xx[white], yy[white]
    return np.array([xs.min() + xs.max(), ys.min() + ys.max()]) / 2.0


def test_eye_landmarks_sit_on_the_rendered_eyes_under_roll_and_scale() -> None:
    """Independent check: the sclera pixels are centred on the returned eye landmarks."""
    n = 10
    ids = S.sample_identities(n, seed=3)
    nz = S.frontal_nuisance(n)
    rng = np.random.default_rng(0)
    nz = dataclasses.replace(
        nz,
        roll=rng.uniform(-20, 20, n),
        scale=rng.uniform(0.9, 1.1, n),
        shift=rng.uniform(-3, 3, (n, 2)),
    )
    images, lm = S.render(ids, nz)
    for img, pts in zip(images, lm, strict=True):
        for e in (0, 1):
            np.testing.assert_allclose(_sclera_centre(img, pts[e]), pts[e], atol=0.8)


def test_loose_crop_landmarks_align_back_to_the_aligned_render() -> None:
    ids, imgs = np.arange(6), np.arange(6) % 2
    aligned = S.generate_items(SPEC, ids, imgs, degraded=False)
    loose = S.loose_crop(SPEC, ids, imgs, size=160, degraded=False)
    assert loose.images.shape == (6, 160, 160, 3)
    for j in range(6):
        t = SimilarityTransform.from_estimate(
            loose.landmarks[j].astype(float), aligned.landmarks[j].astype(float)
        )
        np.testing.assert_allclose(t(loose.landmarks[j]), aligned.landmarks[j], atol=0.05)
        back = warp(loose.images[j], t.inverse, output_shape=(112, 112), preserve_range=True)
        face = (slice(35, 100), slice(28, 84))
        err = np.abs(back[face] - aligned.images[j][face]).mean()
        other = np.abs(back[face] - aligned.images[(j + 1) % 6][face]).mean()
        # Residual: resampling of the smaller crop face and independent sensor noise.
        assert err < 10.0 and err < other / 4
        # And 5-point alignment to the ArcFace template lands near it, as for aligned faces.
        t2 = SimilarityTransform.from_estimate(
            loose.landmarks[j].astype(float), S.ARCFACE_TEMPLATE.astype(float)
        )
        assert np.linalg.norm(t2(loose.landmarks[j]) - S.ARCFACE_TEMPLATE, axis=1).max() < 7.0
    # The crops are really unaligned: rotated, scaled and shifted versions.
    assert np.linalg.norm(loose.landmarks - aligned.landmarks, axis=-1).mean() > 10


# ------------------------------------------------------------------------------ degradations


def _laplacian_var(images: np.ndarray) -> float:
    g = images.astype(float).mean(-1)
    lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    return float(lap.var(axis=(1, 2)).mean())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)


def _sweep(batch: S.SynthBatch, kind: str) -> list[np.ndarray]:
    """The same images at rising severity, each with the same random draws."""
    return [
        S.degrade(batch.images, kind, s, np.random.default_rng(1), batch.landmarks) for s in LEVELS
    ]


def test_severity_zero_is_identity(clean_batch: S.SynthBatch) -> None:
    for kind in S.DEGRADATIONS:
        if kind == "pose":
            continue
        out = S.degrade(
            clean_batch.images, kind, 0.0, np.random.default_rng(0), clean_batch.landmarks
        )
        assert out.tobytes() == clean_batch.images.tobytes(), kind


@pytest.mark.parametrize("kind", ["gaussian_blur", "motion_blur", "low_resolution"])
def test_blur_severity_lowers_high_frequency_energy(clean_batch: S.SynthBatch, kind: str) -> None:
    energy = [_laplacian_var(clean_batch.images)] + [
        _laplacian_var(x) for x in _sweep(clean_batch, kind)
    ]
    assert all(a > b for a, b in zip(energy[:-1], energy[1:], strict=True)), energy
    assert energy[-1] < 0.25 * energy[0]


@pytest.mark.parametrize("kind", ["jpeg", "gaussian_noise"])
def test_codec_and_noise_severity_lower_psnr(clean_batch: S.SynthBatch, kind: str) -> None:
    psnr = [_psnr(x, clean_batch.images) for x in _sweep(clean_batch, kind)]
    assert all(a > b for a, b in zip(psnr[:-1], psnr[1:], strict=True)), psnr
    assert psnr[-1] < 25


def test_exposure_severity(clean_batch: S.SynthBatch) -> None:
    under = [x.astype(float).mean() for x in _sweep(clean_batch, "underexposure")]
    assert all(a > b for a, b in zip(under[:-1], under[1:], strict=True)) and under[-1] < 30
    over = [(x == 255).mean() for x in _sweep(clean_batch, "overexposure")]
    assert all(a < b for a, b in zip(over[:-1], over[1:], strict=True)) and over[-1] > 0.6


@pytest.mark.parametrize("kind", ["sunglasses", "mask", "blocks"])
def test_occlusion_grows_with_severity(clean_batch: S.SynthBatch, kind: str) -> None:
    changed = [(x != clean_batch.images).any(-1).mean() for x in _sweep(clean_batch, kind)]
    assert (
        all(a <= b for a, b in zip(changed[:-1], changed[1:], strict=True))
        and changed[-1] > changed[0]
    ), changed
    assert changed[-1] > 0.05


def test_strong_occlusions_cover_the_expected_region(clean_batch: S.SynthBatch) -> None:
    imgs, lm = clean_batch.images, clean_batch.landmarks
    rng = np.random.default_rng(2)

    def patch_diff(a: np.ndarray, b: np.ndarray, pts: np.ndarray, r: int = 2) -> np.ndarray:
        out = []
        for j, (x, y) in enumerate(np.rint(pts).astype(int)):
            da = a[j, y - r : y + r + 1, x - r : x + r + 1].astype(float)
            db = b[j, y - r : y + r + 1, x - r : x + r + 1].astype(float)
            out.append(np.abs(da - db).mean())
        return np.array(out)

    sun = S.degrade(imgs, "sunglasses", 1.0, rng, lm)
    for e in (0, 1):
        eye = np.rint(lm[:, e]).astype(int)
        lum = np.array(
            [sun[j, y - 2 : y + 3, x - 2 : x + 3].mean() for j, (x, y) in enumerate(eye)]
        )
        assert np.all(lum < 60)  # opaque dark lenses over both eyes
    mouth = lm[:, 3:].mean(axis=1) + np.array([0.0, 6.0])  # below the mouth line
    assert np.all(patch_diff(sun, imgs, mouth) == 0)
    mask = S.degrade(imgs, "mask", 1.0, rng, lm)
    for k in (2, 3, 4):  # nose tip and mouth corners hidden
        assert np.all(patch_diff(mask, imgs, lm[:, k], r=1) > 8)
    for e in (0, 1):  # eyes untouched
        assert np.all(patch_diff(mask, imgs, lm[:, e]) == 0)


def test_strong_pose_grows_with_severity() -> None:
    ids = S.sample_identities(8, seed=2)
    nz = S.sample_nuisance(2, np.arange(8), np.zeros(8, int))
    dev = []
    for s in (0.0, 0.3, 0.6, 1.0):
        posed = S.strong_pose(nz, s, [np.random.default_rng(j) for j in range(8)])
        assert np.all(np.abs(posed.yaw) >= np.abs(nz.yaw) - 1e-12)
        _, lm = S.render(ids, posed)
        dev.append(np.linalg.norm(lm - S.ARCFACE_TEMPLATE, axis=-1).mean())
    assert all(a < b for a, b in zip(dev[:-1], dev[1:], strict=True)), dev
    assert dev[-1] > 2.5 * dev[0] and dev[-1] > 8.0


def test_degrade_rejects_bad_input(clean_batch: S.SynthBatch) -> None:
    imgs, rng = clean_batch.images, np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown kind"):
        S.degrade(imgs, "fog", 0.5, rng)
    with pytest.raises(ValueError, match="render time"):
        S.degrade(imgs, "pose", 0.5, rng)
    with pytest.raises(ValueError, match="landmarks"):
        S.degrade(imgs, "sunglasses", 0.5, rng)
    with pytest.raises(ValueError, match="severity"):
        S.degrade(imgs, "jpeg", 1.2, rng)
    with pytest.raises(ValueError, match="uint8"):
        S.degrade(imgs.astype(float), "jpeg", 0.5, rng)


# ------------------------------------------------------------------------------ identity cues


def _nearest_centroid_accuracy(feat: np.ndarray, label: np.ndarray, gallery: np.ndarray) -> float:
    classes = np.unique(label)
    cent = np.stack([feat[gallery & (label == k)].mean(0) for k in classes])
    d = ((feat[~gallery][:, None, :] - cent[None]) ** 2).sum(-1)
    return float((classes[d.argmin(1)] == label[~gallery]).mean())


def test_identity_is_carried_by_geometry_and_texture_not_colour() -> None:
    k, m = 40, 6
    b = S.generate(S.WorldSpec(seed=7), np.arange(k), m, degraded=False)
    gallery = np.tile(np.arange(m), k) < m // 2
    x = b.images.astype(float)
    colour = x[:, 40:100, 30:82].mean(axis=(1, 2))  # mean RGB of the face centre
    g = x.mean(-1)[:, 20:110, 14:98]
    g = (g - g.mean(axis=(1, 2), keepdims=True)) / g.std(axis=(1, 2), keepdims=True)
    acc_colour = _nearest_centroid_accuracy(colour, b.identity, gallery)
    acc_pixels = _nearest_centroid_accuracy(g.reshape(len(g), -1), b.identity, gallery)
    assert acc_colour < 0.2  # shared palettes: colour alone barely identifies (chance 0.025)
    assert acc_pixels > acc_colour + 0.15
    p = S.sample_identities(k, seed=7)
    assert len(set(zip(p.skin_index.tolist(), p.hair_index.tolist(), strict=True))) < k / 2


def test_child_identities_have_child_proportions() -> None:
    p = S.sample_identities(400, seed=1, child_fraction=0.25)
    child = p.age_group == 1
    assert 0.18 < child.mean() < 0.32
    eye_ratio = p.eye_w / p.eye_dx
    assert eye_ratio[child].mean() > 1.15 * eye_ratio[~child].mean()  # larger eyes
    roundness = p.face_a / p.face_bb
    assert roundness[child].mean() > roundness[~child].mean()  # rounder faces
    assert not np.any(p.beard_kind[child])


def test_other_image_size_scales_the_aligned_frame() -> None:
    spec = dataclasses.replace(SPEC, image_size=64)
    small = S.generate_items(spec, [1, 2], [0, 0], degraded=False)
    big = S.generate_items(SPEC, [1, 2], [0, 0], degraded=False)
    assert small.images.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(small.landmarks, big.landmarks * (64 / 112), atol=1e-4)
