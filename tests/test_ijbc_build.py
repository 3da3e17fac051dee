"""exfiqa.readers.ijbc_build / ``exfiqa ijbc-meta``: a NIST-like IJB-C release -> the insightface layout.

The release is made here from real photos shipped in scikit-image: ``astronaut()`` (NASA, public
domain) and ``coffee()`` (Rachel Michetti, CC0; no face).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2")
data = pytest.importorskip("skimage.data")

from exfiqa.cli import main  # noqa: E402
from exfiqa.readers import read_ijbc  # noqa: E402
from exfiqa.readers.benchmark import DatasetFormatError  # noqa: E402
from exfiqa.readers.ijbc_build import REPORT_NAME, build_ijbc_meta, loose_box  # noqa: E402

HEADER = ["TEMPLATE_ID", "SUBJECT_ID", "FILENAME", "SIGHTING_ID", "FACE_X", "FACE_Y", "FACE_WIDTH",
          "FACE_HEIGHT", "FRAME_NUM"]
# noted by hand on astronaut() (512x512): her face box and her eye centres (x, y)
FACE = (170.0, 65.0, 100.0, 125.0)
EYES = np.array([[201.0, 102.0], [247.0, 103.0]])


def _paste(offset: tuple[int, int], size: tuple[int, int] = (700, 640)) -> np.ndarray:
    """The astronaut on a grey canvas (width, height = size) with her top-left corner at ``offset``."""
    canvas = np.full((size[1], size[0], 3), 128, dtype=np.uint8)
    ox, oy = offset
    canvas[oy:oy + 512, ox:ox + 512] = data.astronaut()
    return canvas


def _box(offset: tuple[int, int]) -> list[str]:
    return [str(FACE[0] + offset[0]), str(FACE[1] + offset[1]), str(FACE[2]), str(FACE[3])]


OFFSETS = {"img/1.jpg": (100, 50), "frames/5.png": (20, 90), "frames/6.png": (30, 90), "img/2.jpg": (150, 10),
           "img/4.jpg": (0, 0)}


def _release(root: Path, drop_column: str | None = None) -> Path:
    """A NIST-like release: G1 template 1 (subject 10: a still and a 2-frame video), G2 template 2
    (subject 20: a still and the coffee photo), probe template 3 (subject 10), probe template 4
    (subject 20, the coffee photo only); 4 pairs."""
    (root / "images" / "img").mkdir(parents=True)
    (root / "images" / "frames").mkdir()
    (root / "protocols").mkdir()
    for name, off in OFFSETS.items():
        Image.fromarray(_paste(off)).save(root / "images" / name, quality=95)
    Image.fromarray(data.coffee()).save(root / "images" / "img" / "3.jpg", quality=95)
    coffee_box = ["200", "100", "150", "150"]
    rows = {
        "ijbc_1N_gallery_G1.csv": [[1, 10, "img/1.jpg", 100, *_box(OFFSETS["img/1.jpg"]), ""],
                                   [1, 10, "frames/5.png", 101, *_box(OFFSETS["frames/5.png"]), "5"],
                                   [1, 10, "frames/6.png", 101, *_box(OFFSETS["frames/6.png"]), "6"]],
        "ijbc_1N_gallery_G2.csv": [[2, 20, "img/2.jpg", 200, *_box(OFFSETS["img/2.jpg"]), ""],
                                   [2, 20, "img/3.jpg", 201, *coffee_box, ""]],
        "ijbc_1N_probe_mixed.csv": [[3, 10, "img/1.jpg", 100, *_box(OFFSETS["img/1.jpg"]), ""],
                                    [3, 10, "img/4.jpg", 300, *_box(OFFSETS["img/4.jpg"]), ""],
                                    [4, 20, "img/3.jpg", 201, *coffee_box, ""]],
    }
    for name, body in rows.items():
        header = [h for h in HEADER if h != drop_column] if name.endswith("G2.csv") else HEADER
        keep = [HEADER.index(h) for h in header]
        with open(root / "protocols" / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows([[r[i] for i in keep] for r in body])
    (root / "protocols" / "ijbc_11_G1_G2_matches.csv").write_text("1,3\n1,2\n2,3\n2,4\n")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = _release(tmp_path_factory.mktemp("nist"))
    dst = tmp_path_factory.mktemp("out") / "IJB_C"
    summary = build_ijbc_meta(root, dst, progress=None)
    return root, dst, summary


def test_meta_reads_back_with_hand_computed_templates_and_pairs(built):
    _, dst, summary = built
    bench = read_ijbc(dst)
    s = bench.samples
    # written rows: G1's three, G2's still (coffee left out), probe's two (coffee left out)
    assert s["image_name"].tolist() == [f"{k}.jpg" for k in range(1, 7)]
    assert s["template_id"].tolist() == [1, 1, 1, 2, 3, 3]
    assert s["media_id"].tolist() == [100, 101, 101, 200, 100, 300]
    c = bench.comparisons
    # pair (2, 4) is left out: template 4's only row has no face
    assert list(zip(c["a"], c["b"], c["mated"], strict=True)) == [(1, 3, True), (1, 2, False), (2, 3, False)]
    assert (summary.rows, summary.images, summary.skipped_rows) == (8, 6, 2)
    assert (summary.templates, summary.pairs, summary.mated, summary.skipped_pairs) == (3, 3, 1, 1)
    assert bench.image(0).shape == (112, 112, 3)


def test_landmarks_lie_in_the_crop_near_the_hand_noted_eyes(built):
    _, dst, _ = built
    s = read_ijbc(dst).samples
    names = ["img/1.jpg", "frames/5.png", "frames/6.png", "img/2.jpg", "img/1.jpg", "img/4.jpg"]
    for k, name in enumerate(names):
        with Image.open(dst / "loose_crop" / f"{k + 1}.jpg") as im:
            w, h = im.size
        off = OFFSETS[name]
        x0, y0, x1, y1 = loose_box(tuple(float(v) for v in _box(off)), (640, 700))
        assert (x1 - x0, y1 - y0) == (w, h)
        pts = s.loc[k, [f"{a}{j}" for j in range(1, 6) for a in "xy"]].to_numpy(float).reshape(5, 2)
        assert np.all((pts >= 0) & (pts < [w, h]))
        eyes = EYES + np.array(off) - [x0, y0]  # the hand-noted eyes in crop pixels
        assert np.abs(pts[:2] - eyes).max() < 8, (name, pts[:2], eyes)
        assert 0.5 < s.loc[k, "det_score"] <= 1


def test_loose_box_margin_and_clipping():
    assert loose_box((100.0, 50.0, 40.0, 60.0), (400, 400), 0.5) == (80, 20, 160, 140)
    assert loose_box((10.5, 5.0, 20.0, 20.0), (30, 35), 0.5) == (0, 0, 35, 30)
    assert loose_box((500.0, 0.0, 20.0, 20.0), (100, 100), 0.5) is None


def test_a_photo_without_a_face_is_reported(built):
    _, dst, _ = built
    with open(dst / REPORT_NAME, newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = [(r["file"], r["line"], r["template_id"], r["filename"], r["status"]) for r in rows]
    assert got == [("ijbc_1N_gallery_G2.csv", "3", "2", "img/3.jpg", "no_face"),
                   ("ijbc_1N_probe_mixed.csv", "4", "4", "img/3.jpg", "no_face"),
                   ("ijbc_11_G1_G2_matches.csv", "4", "4", "", "pair_without_image")]


def test_a_missing_column_names_the_file_and_column(tmp_path):
    root = _release(tmp_path / "nist", drop_column="FACE_WIDTH")
    with pytest.raises(DatasetFormatError, match=r"ijbc_1N_gallery_G2\.csv: no column FACE_WIDTH"):
        build_ijbc_meta(root, tmp_path / "out", progress=None)
    assert not (tmp_path / "out" / "loose_crop").exists()  # headers are checked before any image


def test_cli_refuses_a_non_empty_dst_and_builds_with_force(built, tmp_path, capsys):
    root, _, _ = built
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "old.txt").write_text("x")
    assert main(["ijbc-meta", str(root), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("exfiqa ijbc-meta:") and "not empty" in err and "--force" in err
    assert not (dst / "meta").exists()
    assert main(["ijbc-meta", str(root), str(dst), "--force"]) == 0
    assert "6 crops of 8 rows" in capsys.readouterr().err
    assert len(read_ijbc(dst).samples) == 6
    with pytest.raises(SystemExit) as exc:  # options are never abbreviated
        main(["ijbc-meta", str(root), str(tmp_path / "d2"), "--marg", "0.3"])
    assert exc.value.code == 2


def test_rows_without_a_usable_image_or_box_and_faces_off_the_box_are_reported(tmp_path):
    root = _release(tmp_path / "nist")
    with open(root / "protocols" / "ijbc_1N_probe_mixed.csv", "a", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([3, 10, "img/missing.jpg", 301, "10", "10", "50", "50", ""])
        w.writerow([3, 10, "img/4.jpg", 302, "", "", "", "", ""])
        w.writerow([3, 10, "img/4.jpg", 303, "900", "900", "50", "50", ""])
        w.writerow([3, 10, "../protocols/ijbc_11_G1_G2_matches.csv", 304, "0", "0", "5", "5", ""])
    summary = build_ijbc_meta(root, tmp_path / "out", progress=None)
    with open(tmp_path / "out" / REPORT_NAME, newline="") as fh:
        statuses = [(r["line"], r["status"]) for r in csv.DictReader(fh) if r["file"] == "ijbc_1N_probe_mixed.csv"]
    assert statuses == [("4", "no_face"), ("5", "unreadable"), ("6", "bad_box"), ("7", "bad_box"), ("8", "unreadable")]
    assert (summary.images, summary.skipped_rows) == (6, 6)
    # a detected face must overlap the NIST box: at IoU >= 0.99 none of the astronaut rows counts
    off = build_ijbc_meta(root, tmp_path / "strict", min_iou=0.99, progress=None)
    assert off.images == 0 and off.templates == 0 and off.pairs == 0 and off.skipped_pairs == 4
    with open(tmp_path / "strict" / REPORT_NAME, newline="") as fh:
        assert sum(r["status"] == "no_match" for r in csv.DictReader(fh)) == 6


def test_inconsistent_protocols_are_errors_naming_file_and_line(tmp_path):
    root = _release(tmp_path / "a")
    (root / "protocols" / "ijbc_11_G1_G2_matches.csv").write_text("1,3\n1,99\n")
    with pytest.raises(DatasetFormatError, match=r"ijbc_11_G1_G2_matches\.csv:2: template 99 is in no protocol file"):
        build_ijbc_meta(root, tmp_path / "out_a", progress=None)
    assert not (tmp_path / "out_a" / "meta" / "ijbc_face_tid_mid.txt").exists()  # meta files are atomic
    root = _release(tmp_path / "b")
    with open(root / "protocols" / "ijbc_1N_probe_mixed.csv", "a", newline="") as fh:
        csv.writer(fh).writerow([3, 20, "img/4.jpg", 300, *_box(OFFSETS["img/4.jpg"]), ""])
    with pytest.raises(DatasetFormatError, match=r"ijbc_1N_probe_mixed\.csv:5: template 3 has SUBJECT_ID 20"):
        build_ijbc_meta(root, tmp_path / "out_b", progress=None)
