"""Tests for the exfiqa.readers modules: format round trips, pair tables, alignment, unsafe pickles."""

from __future__ import annotations

import io
import itertools
import os
import pathlib
import pickle
import re
import struct

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.measure import label, regionprops
from skimage.transform import SimilarityTransform, warp

import exfiqa.readers as ds
from exfiqa.evaluation.pairs import AllPairs
from exfiqa.readers import (
    ARCFACE_TEMPLATE,
    BinFormatError,
    DatasetFormatError,
    align_face,
    load_benchmark,
    read_adience,
    read_bin,
    read_ijbc,
    read_xqlfw,
    write_bin,
    write_identity_folders,
    write_ijbc,
    write_xqlfw,
)


def _faces(n: int, seed: int = 0, size: tuple[int, int] = (112, 112)) -> list[np.ndarray]:
    """Smooth random RGB images (upsampled 8x8 noise), so JPEG stays close to the original."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        big = Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC)
        out.append(np.asarray(big, dtype=np.uint8).copy())
    return out


def _all_images(bench: ds.Benchmark) -> np.ndarray:
    return np.concatenate([imgs for _, imgs in bench.iter_images(batch_size=4)])


def _red_png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (112, 112), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------ .bin


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_bin_round_trip(tmp_path: pathlib.Path, fmt: str) -> None:
    imgs = _faces(8, seed=1)
    issame = [True, False, False, True]
    path = tmp_path / "lfw.bin"
    write_bin(path, imgs, issame, fmt=fmt)
    bench = read_bin(path)
    assert bench.name == "lfw" and bench.level == "sample" and len(bench) == 8
    got = _all_images(bench)
    assert got.dtype == np.uint8 and got.shape == (8, 112, 112, 3)
    diff = np.abs(got.astype(int) - np.stack(imgs).astype(int))
    if fmt == "png":
        assert diff.max() == 0
    else:
        assert diff.mean() < 3.0
    expected = pd.DataFrame(
        {"a": [0, 2, 4, 6], "b": [1, 3, 5, 7], "mated": [True, False, False, True]}
    )
    pd.testing.assert_frame_equal(
        bench.comparisons.reset_index(drop=True), expected, check_dtype=False
    )


def test_bin_file_is_protocol2_tuple_of_lists(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.bin"
    write_bin(path, _faces(2), [True], fmt="png")
    raw = path.read_bytes()
    assert raw[:2] == b"\x80\x02"
    bins, issame = pickle.loads(raw)  # our own trusted file
    assert isinstance(bins, list) and all(isinstance(b, bytes) for b in bins)
    assert issame == [True]


def _py2_style_pickle(items: list[bytes], labels: list[bool]) -> bytes:
    """Hand-assembled protocol-2 pickle as Python 2 wrote it: images as (SHORT_)BINSTRING."""
    out = bytearray(b"\x80\x02]")  # PROTO 2, EMPTY_LIST
    out += b"("  # MARK
    for item in items:
        if len(item) < 256:
            out += b"U" + bytes([len(item)]) + item  # SHORT_BINSTRING
        else:
            out += b"T" + struct.pack("<i", len(item)) + item  # BINSTRING
    out += b"e]("  # APPENDS, EMPTY_LIST, MARK
    out += b"".join(b"\x88" if v else b"\x89" for v in labels)  # NEWTRUE / NEWFALSE
    out += b"e\x86."  # APPENDS, TUPLE2, STOP
    return bytes(out)


def test_bin_python2_file_reads_as_bytes(tmp_path: pathlib.Path) -> None:
    imgs = _faces(4, seed=2)
    encoded = []
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(_py2_style_pickle(encoded, [False, True]))
    # Without encoding="bytes" such a file fails to load (non-ASCII str bytes).
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(path.read_bytes())
    bench = read_bin(path)
    np.testing.assert_array_equal(_all_images(bench), np.stack(imgs))
    assert bench.comparisons["mated"].tolist() == [False, True]


@pytest.mark.parametrize("old_numpy_name", [False, True])
def test_bin_numpy_arrays_accepted(tmp_path: pathlib.Path, old_numpy_name: bool) -> None:
    imgs = _faces(4, seed=3)
    bins = np.empty(4, dtype=object)
    bins[:] = [np.frombuffer(ds.encode_image(im, "png"), dtype=np.uint8) for im in imgs]
    # object arrays of uint8 arrays are what some converted files hold
    raw = pickle.dumps((list(bins), np.array([True, False])), protocol=2)
    if old_numpy_name:
        assert b"numpy._core.multiarray" in raw
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(raw)
    bench = read_bin(path)
    np.testing.assert_array_equal(_all_images(bench), np.stack(imgs))
    assert bench.comparisons["mated"].tolist() == [True, False]


class _TouchViaSystem:
    def __init__(self, target: pathlib.Path) -> None:
        self.target = str(target)

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.target}",))


class _TouchViaPath:
    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (pathlib.Path.touch, (self.target,))


class _Custom:
    pass


@pytest.mark.parametrize(
    ("payload_cls", "refused"),
    [(_TouchViaSystem, r"posix\.system"), (_TouchViaPath, r"getattr|pathlib\.Path\.touch")],
)
def test_bin_malicious_pickle_refused(
    tmp_path: pathlib.Path, payload_cls: type, refused: str
) -> None:
    # Control: an unrestricted unpickler really would create the file.
    control = tmp_path / "control_pwned"
    pickle.loads(pickle.dumps(([payload_cls(control)], []), protocol=4))
    assert control.exists()

    target = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    for proto in (2, 4):
        path.write_bytes(pickle.dumps(([payload_cls(target)], []), protocol=proto))
        with pytest.raises(BinFormatError) as err:
            read_bin(path)
        # protocol 2 reaches Path.touch through builtins.getattr; either global is refused
        assert str(path) in str(err.value) and re.search(refused, str(err.value))
        assert not target.exists()


def test_bin_custom_class_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "custom.bin"
    path.write_bytes(pickle.dumps(([b"x", b"y"], [_Custom()]), protocol=2))
    with pytest.raises(BinFormatError, match="_Custom"):
        read_bin(path)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (([b"a", b"b", b"c", b"d"], [True]), "4 images and 1 issame"),
        (([b"a", b"b", b"c"], [True]), "3 images"),
        (([b"a", b"b"], [True], [False]), "2-tuple"),
        ([b"a", b"b", b"c"], "2-tuple"),
        ({"bins": [], "issame": []}, "2-tuple"),
        (([b"a", 5], [True]), r"bins\[1\]"),
        (([b"a", b"b"], ["yes"]), r"issame_list\[0\]"),
        ((b"ab", [True]), "bins is bytes"),
    ],
)
def test_bin_wrong_structure_raises(tmp_path: pathlib.Path, obj: object, match: str) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(BinFormatError, match=match) as err:
        read_bin(path)
    assert str(path) in str(err.value)


def test_bin_not_a_pickle(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(BinFormatError, match="junk.bin"):
        read_bin(path)


def test_bin_refuses_overwrite(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lfw.bin"
    write_bin(path, _faces(2), [True], fmt="png")
    with pytest.raises(FileExistsError):
        write_bin(path, _faces(2), [False], fmt="png")
    assert read_bin(path).comparisons["mated"].tolist() == [True]
    write_bin(path, _faces(2), [False], fmt="png", overwrite=True)
    assert read_bin(path).comparisons["mated"].tolist() == [False]


def test_channel_order_red_in_bin(tmp_path: pathlib.Path) -> None:
    red = _red_png_bytes()
    path = tmp_path / "red.bin"
    path.write_bytes(pickle.dumps(([red, red], [True]), protocol=2))
    img = read_bin(path).image(0)
    assert img.shape == (112, 112, 3)
    assert (img == np.array([255, 0, 0], np.uint8)).all()


# ------------------------------------------------------------------------------------ XQLFW


def _xqlfw_world(tmp_path: pathlib.Path, fmt: str = "png"):
    faces = _faces(6, seed=4)
    images = {"Alice": faces[:3], "Bob": faces[3:5], "Carol": faces[5:]}
    pairs = [("Alice", 1, 3), ("Bob", 2, 1), ("Alice", 2, "Carol", 1), ("Bob", 1, "Alice", 1)]
    root, pairs_path = tmp_path / "xqlfw_aligned_112", tmp_path / "xqlfw_pairs.txt"
    write_xqlfw(root, pairs_path, images, pairs, fmt=fmt)
    return root, pairs_path, images


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_xqlfw_round_trip_and_pairs(tmp_path: pathlib.Path, fmt: str) -> None:
    root, pairs_path, images = _xqlfw_world(tmp_path, fmt)
    ext = ".png" if fmt == "png" else ".jpg"
    assert (root / "Alice" / f"Alice_0003{ext}").is_file()
    assert pairs_path.read_text().splitlines()[0].split() == ["1", "4"]
    bench = read_xqlfw(root, pairs_path)
    # samples: distinct referenced images sorted by (identity, index)
    expected_keys = [("Alice", 1), ("Alice", 2), ("Alice", 3), ("Bob", 1), ("Bob", 2), ("Carol", 1)]
    got_keys = list(zip(bench.samples["identity"], bench.samples["image_index"], strict=True))
    assert got_keys == expected_keys
    assert bench.samples["sample_id"].tolist() == list(range(6))
    # pairs in file order, as sample ids
    assert bench.comparisons["a"].tolist() == [0, 4, 1, 3]
    assert bench.comparisons["b"].tolist() == [2, 3, 5, 0]
    assert bench.comparisons["mated"].tolist() == [True, True, False, False]
    got = _all_images(bench)
    want = np.stack([images[n][i - 1] for n, i in expected_keys])
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() == 0 if fmt == "png" else diff.mean() < 3.0


def _write_pairs(path: pathlib.Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "bad",
    ["Alice 1", "Alice 1 Bob 2 3", "Alice 1 x", "Alice one Bob 2"],
)
def test_xqlfw_malformed_line_names_file_and_line(tmp_path: pathlib.Path, bad: str) -> None:
    root, _, _ = _xqlfw_world(tmp_path)
    pairs = tmp_path / "bad_pairs.txt"
    _write_pairs(pairs, ["10\t300", "Alice 1 2", bad, "Bob 1 2"])
    with pytest.raises(DatasetFormatError) as err:
        read_xqlfw(root, pairs)
    assert f"{pairs}:3" in str(err.value)


def test_xqlfw_missing_image_names_path(tmp_path: pathlib.Path) -> None:
    root, _, _ = _xqlfw_world(tmp_path)
    pairs = tmp_path / "p.txt"
    _write_pairs(pairs, ["header", "Alice 1 7"])
    with pytest.raises(FileNotFoundError) as err:
        read_xqlfw(root, pairs)
    assert str(root / "Alice" / "Alice_0007") in str(err.value)


def test_xqlfw_header_is_skipped_and_blank_lines_ignored(tmp_path: pathlib.Path) -> None:
    root, _, _ = _xqlfw_world(tmp_path)
    pairs = tmp_path / "p.txt"
    # a header that would itself parse as a mated pair must still be skipped
    _write_pairs(pairs, ["Bob 1 2", "", "Alice 1 2", ""])
    bench = read_xqlfw(root, pairs)
    assert len(bench.comparisons) == 1 and len(bench) == 2
    assert bench.samples["identity"].tolist() == ["Alice", "Alice"]


def test_channel_order_red_and_size_check_in_folder(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "r"
    (root / "Red").mkdir(parents=True)
    Image.new("RGB", (112, 112), (255, 0, 0)).save(root / "Red" / "Red_0001.png")
    Image.new("RGB", (112, 112), (255, 0, 0)).save(root / "Red" / "Red_0002.jpg", quality=95)
    Image.new("RGB", (100, 112), (0, 0, 255)).save(root / "Red" / "Red_0003.png")
    pairs = tmp_path / "p.txt"
    _write_pairs(pairs, ["h", "Red 1 2", "Red 1 3"])
    bench = read_xqlfw(root, pairs)
    assert (bench.image(0) == [255, 0, 0]).all()
    assert np.abs(bench.image(1).astype(int) - [255, 0, 0]).max() <= 2
    with pytest.raises(DatasetFormatError, match="Red_0003.png"):
        bench.image(2)


# ------------------------------------------------------------------------------------ Adience


def test_adience_round_trip_and_all_pairs(tmp_path: pathlib.Path) -> None:
    faces = _faces(6, seed=5)
    # written out of name order on purpose; samples are sorted by identity then file
    images = {"u2_f1": faces[3:5], "u1_f7": faces[:3], "u3_f2": faces[5:]}
    written = write_identity_folders(tmp_path / "adience", images, fmt="png")
    bench = read_adience(tmp_path / "adience")
    assert written[0] == tmp_path / "adience" / "u2_f1" / "0000.png"  # identity then index order
    assert sorted(map(str, written)) == sorted(bench.samples["path"])
    assert bench.samples["identity"].tolist() == ["u1_f7"] * 3 + ["u2_f1"] * 2 + ["u3_f2"]
    np.testing.assert_array_equal(_all_images(bench), np.stack(faces))
    mated = {(0, 1), (0, 2), (1, 2), (3, 4)}
    all_pairs = [(a, b) for a in range(6) for b in range(a + 1, 6)]
    got = list(zip(bench.comparisons["a"], bench.comparisons["b"], strict=True))
    assert got == all_pairs
    assert bench.comparisons["mated"].tolist() == [p in mated for p in all_pairs]


def test_netpbm_faces_are_read_by_the_folder_readers_and_found_by_score(tmp_path: pathlib.Path) -> None:
    """One list of image suffixes (exfiqa.readers.IMAGE_EXTENSIONS): the folder readers read the
    .ppm / .pgm faces that ``exfiqa score``'s file discovery (find_images) finds."""
    from exfiqa.readers import IMAGE_EXTENSIONS, find_images

    assert {".ppm", ".pgm", ".jpg", ".png"} <= set(IMAGE_EXTENSIONS)
    faces = _faces(3, seed=11)
    gray = faces[2][:, :, 0]
    for ident, name, arr in (("a", "0.ppm", faces[0]), ("a", "1.PPM", faces[1]), ("b", "0.pgm", gray)):
        (tmp_path / "ids" / ident).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(tmp_path / "ids" / ident / name, format="PPM")
    bench = read_adience(tmp_path / "ids")
    assert bench.samples["path"].tolist() == find_images([tmp_path / "ids"])
    assert bench.samples["identity"].tolist() == ["a", "a", "b"]
    np.testing.assert_array_equal(_all_images(bench), np.stack([faces[0], faces[1], np.repeat(gray[:, :, None], 3, 2)]))
    (tmp_path / "lfw" / "x").mkdir(parents=True)
    Image.fromarray(faces[0]).save(tmp_path / "lfw" / "x" / "x_0001.ppm")
    Image.fromarray(faces[1]).save(tmp_path / "lfw" / "x" / "x_0002.ppm")
    (tmp_path / "pairs.txt").write_text("1\t1\nx\t1\t2\n")
    xq = read_xqlfw(tmp_path / "lfw", tmp_path / "pairs.txt")
    assert xq.samples["path"].tolist() == find_images([tmp_path / "lfw"])
    np.testing.assert_array_equal(xq.image(1), faces[1])


def test_adience_channel_order(tmp_path: pathlib.Path) -> None:
    for ident in ("a", "b"):
        (tmp_path / ident).mkdir()
        Image.new("RGB", (112, 112), (255, 0, 0)).save(tmp_path / ident / "x.png")
    bench = read_adience(tmp_path)
    for _, imgs in bench.iter_images():
        assert (imgs == np.array([255, 0, 0], np.uint8)).all()
    assert bench.comparisons["mated"].tolist() == [False]


def _brute_force_pairs(groups: np.ndarray) -> tuple[set, set]:
    mated, non = set(), set()
    for a, b in itertools.combinations(range(len(groups)), 2):
        (mated if groups[a] == groups[b] else non).add((a, b))
    return mated, non


@pytest.mark.parametrize("sizes", [[1], [2, 1, 4, 3], [5], [1, 1, 1], [3, 7, 1, 2, 6]])
def test_all_pairs_matches_brute_force(sizes: list[int]) -> None:
    groups = np.repeat(np.arange(len(sizes)), sizes)
    mated, non = _brute_force_pairs(groups)
    a, b, m = AllPairs.from_codes(groups).materialise(None, 0)
    pairs = list(zip(a.tolist(), b.tolist(), strict=True))
    assert pairs == sorted(mated | non)
    assert {p for p, mm in zip(pairs, m, strict=True) if mm} == mated

    k = len(non) // 2
    a, b, m = AllPairs.from_codes(groups).materialise(k, seed=3)
    pairs = list(zip(a.tolist(), b.tolist(), strict=True))
    assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs)
    assert {p for p, mm in zip(pairs, m, strict=True) if mm} == mated
    sub_non = {p for p, mm in zip(pairs, m, strict=True) if not mm}
    assert len(sub_non) == k and sub_non <= non
    a2, b2, _ = AllPairs.from_codes(groups).materialise(k, seed=3)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)


def test_adience_max_nonmated_changes_fingerprint(tmp_path: pathlib.Path) -> None:
    write_identity_folders(tmp_path, {"x": _faces(3, 6), "y": _faces(3, 7)}, fmt="png")
    full, sub = read_adience(tmp_path), read_adience(tmp_path, max_nonmated=4, seed=1)
    assert (~full.comparisons["mated"]).sum() == 9 and (~sub.comparisons["mated"]).sum() == 4
    assert full.fingerprint() != sub.fingerprint()


# ------------------------------------------------------------------------------------ alignment


def _gaussian_dots(shape: tuple[int, int], points: np.ndarray, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.clip(img * 255, 0, 255)


def test_align_face_identity_is_exact() -> None:
    img = _faces(1, seed=8)[0]
    np.testing.assert_array_equal(align_face(img, ARCFACE_TEMPLATE), img)


@pytest.mark.parametrize(
    ("scale", "rotation_deg", "translation"),
    [(1.7, 25.0, (40.0, 15.0)), (0.8, -10.0, (5.0, 30.0)), (2.3, 170.0, (230.0, 260.0))],
)
def test_align_face_brings_landmarks_onto_template(
    scale: float, rotation_deg: float, translation: tuple[float, float]
) -> None:
    # 1. a 112x112 image with bright dots at the template landmarks
    face = _gaussian_dots((112, 112), ARCFACE_TEMPLATE, sigma=1.5)
    # 2. move it into a larger "loose crop" with a known similarity S (template -> crop)
    S = SimilarityTransform(scale=scale, rotation=np.deg2rad(rotation_deg), translation=translation)
    crop_gray = warp(face, S.inverse, output_shape=(300, 280), order=1, preserve_range=True)
    crop = np.repeat(np.clip(np.rint(crop_gray), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    landmarks = S(ARCFACE_TEMPLATE)
    # 3. align back and locate the dots
    aligned = align_face(crop, landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    gray = aligned[:, :, 0].astype(float)
    regions = regionprops(label(gray > 40), intensity_image=gray)
    assert len(regions) == 5
    centroids = np.array([r.centroid_weighted[::-1] for r in regions])  # (x, y)
    for point in ARCFACE_TEMPLATE:
        assert np.min(np.linalg.norm(centroids - point, axis=1)) < 1.0


def test_align_face_is_bilinear_and_scales_the_right_way() -> None:
    img = np.random.default_rng(14).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    # landmarks half a pixel to the right: output(x, y) = input(x + 0.5, y), the mean of the
    # two horizontal neighbours under bilinear interpolation (nearest neighbour would not be)
    out = align_face(img, ARCFACE_TEMPLATE + [0.5, 0.0]).astype(float)
    expected = (img[:, :-1].astype(float) + img[:, 1:]) / 2
    assert np.abs(out[:, :-1] - expected).max() <= 0.5 + 1e-6
    # a crop at twice the size: output(x, y) = input(2x, 2y), exactly on the pixel grid
    big = np.random.default_rng(15).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align_face(big, 2 * ARCFACE_TEMPLATE), big[::2, ::2])


def test_align_face_rejects_bad_landmarks() -> None:
    img = _faces(1)[0]
    with pytest.raises(ValueError, match="landmarks5"):
        align_face(img, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="RGB uint8"):
        align_face(img.astype(np.float32), ARCFACE_TEMPLATE)


# ------------------------------------------------------------------------------------ IJB-C


def _ijbc_world(tmp_path: pathlib.Path, fmt: str = "png"):
    rng = np.random.default_rng(9)
    crops, lmks = [], []
    for k in range(7):
        h, w = 150 + 10 * k, 130 + 7 * k
        crops.append(_faces(1, seed=20 + k, size=(h, w))[0])
        s = rng.uniform(0.9, 1.3)
        S = SimilarityTransform(
            scale=s, rotation=rng.uniform(-0.3, 0.3), translation=(w / 2 - 56 * s, h / 2 - 56 * s)
        )
        lmks.append(S(ARCFACE_TEMPLATE))
    tids = [1, 1, 1, 2, 2, 3, 3]
    mids = [10, 10, 11, 20, 21, 30, 30]
    pairs = [(1, 2), (1, 3), (2, 3)]
    labels = [1, 0, 0]
    root = tmp_path / "IJBC"
    write_ijbc(root, crops, np.array(lmks), tids, mids, pairs, labels, fmt=fmt)
    return root, crops, np.array(lmks), tids, mids, pairs, labels


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_ijbc_round_trip(tmp_path: pathlib.Path, fmt: str) -> None:
    root, crops, lmks, tids, mids, pairs, labels = _ijbc_world(tmp_path, fmt)
    ext = ".png" if fmt == "png" else ".jpg"
    assert (root / "loose_crop" / f"1{ext}").is_file()
    first = (root / "meta" / "ijbc_face_tid_mid.txt").read_text().splitlines()[0]
    assert first.split() == [f"1{ext}", "1", "10"]
    bench = read_ijbc(root)
    assert bench.level == "template" and len(bench) == 7
    assert bench.samples["template_id"].tolist() == tids
    assert bench.samples["media_id"].tolist() == mids
    got_lmk = bench.samples[[f"{c}{j}" for j in range(1, 6) for c in "xy"]].to_numpy()
    np.testing.assert_array_equal(got_lmk.reshape(-1, 5, 2), lmks)
    assert bench.comparisons["a"].tolist() == [1, 1, 2]
    assert bench.comparisons["b"].tolist() == [2, 3, 3]
    assert bench.comparisons["mated"].tolist() == [True, False, False]
    got = _all_images(bench)
    want = np.stack([align_face(c, lm) for c, lm in zip(crops, lmks, strict=True)])
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() == 0 if fmt == "png" else diff.mean() < 3.0


def test_ijbc_landmarks_joined_by_name_when_order_differs(tmp_path: pathlib.Path) -> None:
    root, crops, lmks, *_ = _ijbc_world(tmp_path)
    pts = root / "meta" / "ijbc_name_5pts_score.txt"
    lines = pts.read_text().splitlines()
    pts.write_text("\n".join(lines[::-1]) + "\n")
    bench = read_ijbc(root)
    np.testing.assert_array_equal(bench.image(2), align_face(crops[2], lmks[2]))


@pytest.mark.parametrize(
    ("meta", "line", "replacement", "match"),
    [
        ("ijbc_template_pair_label.txt", 1, "1 2", "ijbc_template_pair_label.txt:2"),
        ("ijbc_template_pair_label.txt", 2, "1 x 0", "ijbc_template_pair_label.txt:3"),
        ("ijbc_template_pair_label.txt", 0, "1 2 2", "ijbc_template_pair_label.txt:1"),
        ("ijbc_template_pair_label.txt", 0, "1 99 0", "template 99"),
        ("ijbc_face_tid_mid.txt", 3, "4.png 2 20 5", "ijbc_face_tid_mid.txt:4"),
        ("ijbc_name_5pts_score.txt", 0, "1.png 1 2 3", "ijbc_name_5pts_score.txt:1"),
        ("ijbc_name_5pts_score.txt", 0, "9.png" + " 1.0" * 11, "no landmarks for image '1.png'"),
    ],
)
def test_ijbc_malformed_meta_raises(
    tmp_path: pathlib.Path, meta: str, line: int, replacement: str, match: str
) -> None:
    root, *_ = _ijbc_world(tmp_path)
    path = root / "meta" / meta
    lines = path.read_text().splitlines()
    lines[line] = replacement
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=match):
        read_ijbc(root)


def test_ijbc_missing_crop_names_path(tmp_path: pathlib.Path) -> None:
    root, *_ = _ijbc_world(tmp_path)
    (root / "loose_crop" / "5.png").unlink()
    bench = read_ijbc(root)
    with pytest.raises(FileNotFoundError, match="5.png"):
        bench.image(4)


# ------------------------------------------------------------------------------------ common


def test_iter_images_every_sample_once_in_order(tmp_path: pathlib.Path) -> None:
    imgs = _faces(10, seed=11)
    write_bin(tmp_path / "t.bin", imgs, [True] * 5, fmt="png")
    bench = read_bin(tmp_path / "t.bin")
    for workers in (1, 3):
        batches = list(bench.iter_images(batch_size=3, workers=workers))
        assert [ids.tolist() for ids, _ in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
        assert all(ids.dtype == np.int64 for ids, _ in batches)
        got = np.concatenate([b for _, b in batches])
        np.testing.assert_array_equal(got, np.stack(imgs))
    with pytest.raises(ValueError, match="batch_size"):
        next(bench.iter_images(batch_size=0))


def test_fingerprint_is_content_based(tmp_path: pathlib.Path) -> None:
    images = {"a": _faces(2, 12), "b": _faces(2, 13)}
    write_identity_folders(tmp_path / "one", images, fmt="png")
    write_identity_folders(tmp_path / "two", images, fmt="png")
    fp1 = read_adience(tmp_path / "one").fingerprint()
    assert fp1 == read_adience(tmp_path / "two").fingerprint()  # location-independent
    f = tmp_path / "two" / "a" / "0000.png"
    os.utime(f, (1, 1))
    assert read_adience(tmp_path / "two").fingerprint() == fp1  # mtime plays no part
    changed = images["a"][0].copy()
    changed[0, 0, 0] ^= 1
    f.write_bytes(ds.encode_image(changed, "png"))
    bench = read_adience(tmp_path / "two")
    assert bench.fingerprint() != fp1
    assert bench.fingerprint() == bench.fingerprint()


def test_folder_writers_refuse_overwrite(tmp_path: pathlib.Path) -> None:
    images = {"a": _faces(2)}
    write_identity_folders(tmp_path, images, fmt="png")
    with pytest.raises(FileExistsError):
        write_identity_folders(tmp_path, images, fmt="png")
    write_identity_folders(tmp_path, images, fmt="png", overwrite=True)
    root, pairs_path, xq_images = _xqlfw_world(tmp_path / "xq")
    with pytest.raises(FileExistsError):
        write_xqlfw(root, pairs_path, xq_images, [("Alice", 1, 2)], fmt="png")


def test_load_benchmark_dispatch(tmp_path: pathlib.Path) -> None:
    write_bin(tmp_path / "calfw.bin", _faces(2), [False], fmt="png")
    bench = load_benchmark("bin", path=tmp_path / "calfw.bin")
    assert bench.name == "calfw" and bench.comparisons["mated"].tolist() == [False]
    root, pairs_path, _ = _xqlfw_world(tmp_path)
    assert len(load_benchmark("xqlfw", root=root, pairs_file=pairs_path).comparisons) == 4
    with pytest.raises(ValueError) as err:
        load_benchmark("megaface", root=tmp_path)
    for kind in ("bin", "xqlfw", "adience", "ijbc"):
        assert kind in str(err.value)
    with pytest.raises(TypeError, match="adience"):
        load_benchmark("adience", folder=tmp_path)


def test_ijbc_error_line_number_counts_blank_lines(tmp_path: pathlib.Path) -> None:
    root, *_ = _ijbc_world(tmp_path)
    path = root / "meta" / "ijbc_template_pair_label.txt"
    path.write_text("1 2 1\n\n1 3 0\n2 3 7\n")
    with pytest.raises(DatasetFormatError, match=r"ijbc_template_pair_label.txt:4: label 7"):
        read_ijbc(root)


@pytest.fixture
def readers():
    """exfiqa.readers.READERS, restored after the test (kinds registered in it are dropped)."""
    saved = dict(ds.READERS)
    yield ds.READERS
    ds.READERS.clear()
    ds.READERS.update(saved)


def _read_bin_reversed(path, name: str = "reversed") -> ds.Benchmark:
    """A registered reader for the tests: a ``.bin`` with its comparisons in reverse order."""
    bench = read_bin(path, name=name)
    return ds.Benchmark(
        name=bench.name, level="sample", samples=bench.samples,
        comparisons=bench.comparisons.iloc[::-1].reset_index(drop=True),
        _decode=bench.image, _files=bench._files, _protocol="reversed",
    )


def test_register_reader_refuses_bad_kinds_and_readers(readers) -> None:
    before = dict(readers)
    for kind in ("pairs-csv", "", "1st", None, 3):
        with pytest.raises(ValueError, match=r"register_reader: kind must be an identifier, got"):
            ds.register_reader(kind, _read_bin_reversed)
    with pytest.raises(TypeError, match=r"register_reader\('mine'\): reader must be callable, got str"):
        ds.register_reader("mine", "read_bin")
    with pytest.raises(TypeError, match=r"register_reader\('mine'\): .*<lambda> must take a 'name' argument"):
        ds.register_reader("mine", lambda path: read_bin(path))
    # a built-in kind, or a registered one, is not taken over by another function
    with pytest.raises(ValueError, match=r"benchmark kind 'bin' is already read by exfiqa\.readers\.bin\.read_bin"):
        ds.register_reader("bin", _read_bin_reversed)
    assert readers == before
    ds.register_reader("reversed_bin", _read_bin_reversed)
    ds.register_reader("reversed_bin", _read_bin_reversed)  # the same function again: no change
    with pytest.raises(ValueError, match=rf"'reversed_bin' is already read by {re.escape(__name__)}\._read_bin_reversed"):
        ds.register_reader("reversed_bin", read_bin)
    assert readers == {**before, "reversed_bin": _read_bin_reversed}


def test_a_registered_kind_is_read_through_load_benchmark(readers, tmp_path: pathlib.Path) -> None:
    write_bin(tmp_path / "four.bin", _faces(8), [True, False, False, True], fmt="png")
    with pytest.raises(ValueError, match="unknown benchmark kind 'reversed_bin'"):
        load_benchmark("reversed_bin", path=tmp_path / "four.bin")
    ds.register_reader("reversed_bin", _read_bin_reversed)
    bench = load_benchmark("reversed_bin", path=tmp_path / "four.bin", name="rev")
    plain = read_bin(tmp_path / "four.bin")
    assert bench.name == "rev" and len(bench) == len(plain) == 8
    comp, want = bench.comparisons, plain.comparisons.iloc[::-1]
    assert comp["a"].tolist() == want["a"].tolist() == [6, 4, 2, 0]
    assert comp["mated"].tolist() == [True, False, False, True][::-1]
    np.testing.assert_array_equal(bench.image(7), plain.image(7))
    # the protocol string is part of the fingerprint: same files, another benchmark
    assert bench.fingerprint() != plain.fingerprint()
    with pytest.raises(TypeError, match=r"load_benchmark\(kind='reversed_bin'\)"):
        load_benchmark("reversed_bin", root=tmp_path)
    # the registered kind is listed with the built-ins; its source is this file, theirs none
    with pytest.raises(ValueError) as err:
        load_benchmark("megaface", root=tmp_path)
    for kind in (*ds.BENCHMARK_KINDS, "reversed_bin"):
        assert kind in str(err.value)
    assert ds.reader_source("reversed_bin") == pathlib.Path(__file__)
    assert all(ds.reader_source(kind) is None for kind in ds.BENCHMARK_KINDS)
    with pytest.raises(ValueError, match=r"unknown benchmark kind 'megaface'; valid kinds: .*reversed_bin"):
        ds.reader_source("megaface")
