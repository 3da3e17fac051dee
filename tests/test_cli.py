"""`exfiqa score` end to end on generated images and a small saved checkpoint."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from exfiqa.cli import main
from exfiqa.evaluation.fusion import ex_fiqa_f, ex_fiqa_fw
from exfiqa.models.vitfiqa import build_vitfiqa, load_vitfiqa, save_vitfiqa, to_tensor
from exfiqa.readers.images import read_face


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = build_vitfiqa(variant="crfiqa", embed_dim=32, num_heads=2, feature_dim=16)
    ckpt = root / "small.pt"
    save_vitfiqa(model, ckpt)
    faces = root / "faces"
    (faces / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(faces / "b.png")
    Image.fromarray(rng.integers(0, 255, (112, 112), dtype=np.uint8)).save(faces / "a_gray.png")
    Image.fromarray(rng.integers(0, 255, (112, 112, 4), dtype=np.uint8)).save(faces / "sub" / "c.png")
    Image.fromarray(rng.integers(0, 255, (120, 100, 3), dtype=np.uint8)).save(faces / "sub" / "d.jpg")
    (root / "notes.txt").write_text("not an image")
    return root, ckpt, faces


def test_score_writes_sorted_rows_and_matches_the_model(world, capsys):
    root, ckpt, faces = world
    out = root / "scores.csv"
    assert main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["path"] + [f"exit_{k}" for k in range(1, 13)] + ["ex_fiqa_f", "ex_fiqa_fw", "attn_fiqa", "vitnt_fiqa"]
    expected_paths = sorted(str(p) for p in [faces / "b.png", faces / "a_gray.png", faces / "sub/c.png", faces / "sub/d.jpg"])
    assert table["path"].tolist() == expected_paths
    assert "resized to 112x112" in capsys.readouterr().err
    model = load_vitfiqa(ckpt, num_heads=2)
    imgs = np.stack([read_face(p) for p in expected_paths])
    with torch.no_grad():
        ref = model.forward_exits(to_tensor(imgs)).scores.numpy()
        fam = model.forward_exits(to_tensor(imgs), exits=[12], family=True)
    np.testing.assert_allclose(table[[f"exit_{k}" for k in range(1, 13)]].to_numpy(), ref, atol=2e-6)
    # ATTN-FIQA of the last block, ViTNT-FIQA over all 12 blocks with the mean over tokens
    np.testing.assert_allclose(table["attn_fiqa"], fam.attn_fiqa[:, 0].numpy(), atol=2e-6)
    np.testing.assert_allclose(table["vitnt_fiqa"], fam.vitnt_fiqa[:, 0].numpy(), atol=2e-6)
    assert fam.vitnt_blocks == 12 and table["vitnt_fiqa"].between(0, 1).all()
    np.testing.assert_allclose(table["ex_fiqa_fw"], ex_fiqa_fw(ref), atol=1e-5)
    np.testing.assert_allclose(table["ex_fiqa_f"], ex_fiqa_f(ref), atol=1e-5)

    # refuses to overwrite; with --overwrite and the same options the file is byte-identical
    first = out.read_bytes()
    assert main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet", "--overwrite"]) == 0
    assert out.read_bytes() == first


def _values(path) -> tuple[list[str], np.ndarray]:
    """Paths and the written values (float64 as parsed)."""
    lines = path.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    return [r[0] for r in rows], np.array([[float(v) for v in r[1:]] for r in rows])


@pytest.mark.parametrize("batch_size", ["1", "3"])
def test_another_batch_size_agrees_within_a_few_float32_ulps(world, batch_size):
    """Another --batch-size may change float32 kernels (e.g. on AVX-512), not the scores' meaning.

    The scores of this model are below 1 in magnitude, where float32 spacing is <= 6e-8; another
    summation order moves each score by a few ulps (< 1e-6 even compounded over 12 blocks and the
    fusions), and the file keeps every float32 exactly. 1e-6 keeps a margin while still catching
    any real change (wrong rows, wrong order).
    """
    root, ckpt, faces = world
    ref, other = root / f"bs32_{batch_size}.csv", root / f"bs{batch_size}.csv"
    base = ["score", str(faces), "--checkpoint", str(ckpt), "--num-heads", "2", "--quiet"]
    assert main([*base, "--out", str(ref)]) == 0
    assert main([*base, "--out", str(other), "--batch-size", batch_size]) == 0
    ref_paths, ref_values = _values(ref)
    paths, values = _values(other)
    assert paths == ref_paths and values.shape == ref_values.shape == (4, 16)
    assert other.read_text().splitlines()[0] == ref.read_text().splitlines()[0]
    assert np.abs(values - ref_values).max() <= 1e-6


def test_written_values_round_trip_to_float32_exactly(world, monkeypatch, capsys):
    """Values near 0 (ATTN-FIQA is often of order 1e-5) keep all their float32 digits: 6 fixed
    decimals would write 1.234567e-5 as 0.000012."""
    import exfiqa.models.inference

    root, ckpt, faces = world
    tiny = np.array([1.234567e-5, -9.876543e-7, 3.3333333e-9, 0.1, 123.45678, 7.0e-30], np.float32)

    def fake(model, batches, **kwargs):  # the model's outputs replaced by chosen float32 values
        n = sum(len(b) for b in batches)
        scores = np.resize(tiny, (n, model.depth)).astype(np.float32)
        attn = np.resize(tiny[::-1], (n, model.depth)).astype(np.float32)
        vitnt = np.resize(tiny, (n, 2)).astype(np.float32)
        return scores, attn, vitnt

    monkeypatch.setattr(exfiqa.models.inference, "family_scores", fake)
    out = root / "tiny_values.csv"
    assert main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet"]) == 0
    capsys.readouterr()
    table = pd.read_csv(out)
    n = len(table)
    want = np.resize(tiny, (n, 12)).astype(np.float32)
    got = table[[f"exit_{k}" for k in range(1, 13)]].to_numpy()
    assert np.array_equal(got.astype(np.float32), want)  # bit for bit after the float32 cast
    assert np.array_equal(table["attn_fiqa"].to_numpy().astype(np.float32), np.resize(tiny[::-1], (n, 12))[:, -1])
    assert np.array_equal(table["vitnt_fiqa"].to_numpy().astype(np.float32), np.resize(tiny, (n, 2))[:, 0])
    assert "1.23456703e-05" in out.read_text()  # float32(1.234567e-5) to 9 significant digits
    np.testing.assert_allclose(table["ex_fiqa_fw"], ex_fiqa_fw(want), rtol=5e-9, atol=0)


def test_exit_subset_keeps_fusion_over_all_exits(world, capsys):
    root, ckpt, faces = world
    out = root / "subset.csv"
    assert main(["score", str(faces / "b.png"), "--checkpoint", str(ckpt), "--out", str(out), "--exits", "12,1,6", "--num-heads", "2", "--quiet"]) == 0
    capsys.readouterr()
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "exit_1", "exit_6", "exit_12", "ex_fiqa_f", "ex_fiqa_fw", "attn_fiqa", "vitnt_fiqa"]
    full = pd.read_csv(root / "scores.csv").set_index("path").loc[str(faces / "b.png")]
    for column in ("ex_fiqa_fw", "attn_fiqa", "vitnt_fiqa"):  # always over the whole depth
        assert table[column].iloc[0] == pytest.approx(full[column], abs=1e-6)
    assert main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(root / "x.csv"), "--exits", "13", "--num-heads", "2"]) == 2
    _one_line_naming(capsys.readouterr().err, "--exits", "outside 1..12")


def _no_work(monkeypatch, *, model_too: bool = True):
    """Make reading an image (and loading the model) fail the test if it happens."""
    import exfiqa.models.vitfiqa
    import exfiqa.readers.images

    def fail(*args, **kwargs):
        pytest.fail(f"called with {args}: the error should come before any work")

    monkeypatch.setattr(exfiqa.readers.images, "read_face", fail)
    if model_too:
        monkeypatch.setattr(exfiqa.models.vitfiqa, "load_vitfiqa", fail)


def _one_line_naming(err: str, *names: str) -> None:
    assert err.count("\n") == 1 and err.startswith("exfiqa score: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)


@pytest.mark.parametrize(
    ("option", "value", "model_too"),
    [
        ("--exits", "0,13", True),
        ("--exits", "a,b", True),
        ("--exits", "", True),
        ("--exits", "13", False),  # the upper bound needs the model's depth
        ("--batch-size", "0", True),
        ("--num-heads", "0", True),
        ("--device", "nonsense", True),
    ],
)
def test_usage_errors_exit_2_with_one_line_naming_the_option(world, capsys, monkeypatch, option, value, model_too):
    root, ckpt, faces = world
    _no_work(monkeypatch, model_too=model_too)
    args = ["score", str(faces), "--checkpoint", str(ckpt), "--out", str(root / "usage.csv"), "--num-heads", "2", "--quiet"]
    assert main([*args, option, value]) == 2
    _one_line_naming(capsys.readouterr().err, option)
    assert not (root / "usage.csv").exists()
    # argparse's own errors exit 2 as well
    with pytest.raises(SystemExit) as exc:
        main([*args, "--batch-size", "three"])
    assert exc.value.code == 2


def _unwritable_outs(root):
    a_file = root / "a_file.txt"
    a_file.write_text("I am a file")
    (root / "folder_out").mkdir(exist_ok=True)
    (root / "skip.csv.skipped").mkdir(exist_ok=True)
    cases = [
        ("folder", root / "folder_out", []),
        ("folder, --overwrite", root / "folder_out", ["--overwrite"]),
        ("trailing slash", f"{root / 'new_folder'}/", []),
        ("under a file", a_file / "scores.csv", []),
        ("deep under a file", a_file / "sub" / "deeper" / "scores.csv", []),
        ("OUT.skipped is a folder", root / "skip.csv", []),
    ]
    sys_dir = Path("/sys")
    if sys_dir.is_dir():  # read-only even for root (chmod does not stop root)
        try:
            fd, probe = tempfile.mkstemp(dir=sys_dir)
        except OSError:
            cases.append(("read-only folder", sys_dir / "scores.csv", []))
        else:
            os.close(fd)
            os.unlink(probe)
    return cases


def test_unwritable_out_is_one_line_before_any_work(world, capsys, monkeypatch):
    root, ckpt, faces = world
    _no_work(monkeypatch)
    for what, out, extra in _unwritable_outs(root):
        before = sorted(root.rglob("*"))
        rc = main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet", *extra])
        assert rc == 2, what
        _one_line_naming(capsys.readouterr().err, str(out).rstrip("/"))
        assert sorted(root.rglob("*")) == before, f"{what}: something was created"


def test_oversized_image_is_an_error_or_skipped(world, capsys):
    """A 20000x20000 PNG of 48 kB: refused from its header, listed in OUT.skipped with --skip-bad."""
    from test_images import png_bomb

    root, ckpt, faces = world
    folder = root / "bombs"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(png_bomb(20000, 20000))
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(folder / "ok.png")
    out = root / "bombs.csv"
    base = ["score", str(folder), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "bomb.png" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*base, "--skip-bad"]) == 0
    assert pd.read_csv(out)["path"].tolist() == [str(folder / "ok.png")]
    skipped = (root / "bombs.csv.skipped").read_text()
    assert skipped.startswith(f"{folder / 'bomb.png'}\t") and "pixels" in skipped


def test_16bit_face_scores_as_its_8bit_high_byte(world):
    from test_images import png16

    root, ckpt, faces = world
    folder = root / "deep"
    folder.mkdir()
    g16 = np.random.default_rng(5).integers(0, 65536, (112, 112), dtype=np.uint16)
    (folder / "a16.png").write_bytes(png16(g16))
    Image.fromarray((g16 >> 8).astype(np.uint8)).save(folder / "b8.png")
    out = root / "deep.csv"
    assert main(["score", str(folder), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet"]) == 0
    rows = out.read_text().splitlines()[1:]
    assert [r.split(",", 1)[0] for r in rows] == [str(folder / "a16.png"), str(folder / "b8.png")]
    assert rows[0].split(",", 1)[1] == rows[1].split(",", 1)[1]


def test_netpbm_faces_are_found_and_scored(world):
    """.ppm / .pgm files are found in a folder (the readers' IMAGE_EXTENSIONS) and score as the PNG."""
    root, ckpt, faces = world
    folder = root / "netpbm"
    folder.mkdir()
    rgb = np.random.default_rng(6).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    for name in ("a.png", "b.ppm"):
        Image.fromarray(rgb).save(folder / name)
    for name in ("c.png", "d.pgm"):
        Image.fromarray(rgb[:, :, 1]).save(folder / name)
    out = root / "netpbm.csv"
    assert main(["score", str(folder), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet"]) == 0
    rows = out.read_text().splitlines()[1:]
    assert [r.split(",", 1)[0] for r in rows] == [str(folder / n) for n in ("a.png", "b.ppm", "c.png", "d.pgm")]
    assert rows[0].split(",", 1)[1] == rows[1].split(",", 1)[1] and rows[2].split(",", 1)[1] == rows[3].split(",", 1)[1]


def test_bad_image_is_an_error_or_skipped(world, capsys):
    root, ckpt, faces = world
    bad_dir = root / "mixed"
    bad_dir.mkdir()
    (bad_dir / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(bad_dir / "ok.png")
    out = root / "mixed.csv"
    assert main(["score", str(bad_dir), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet"]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert not out.exists()
    assert main(["score", str(bad_dir), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet", "--skip-bad"]) == 0
    assert pd.read_csv(out)["path"].tolist() == [str(bad_dir / "ok.png")]
    assert "broken.jpg" in (root / "mixed.csv.skipped").read_text()
    # the same --out again, now with nothing to skip: the earlier list no longer describes it
    (bad_dir / "broken.jpg").unlink()
    assert main(["score", str(bad_dir), "--checkpoint", str(ckpt), "--out", str(out), "--quiet", "--skip-bad", "--overwrite"]) == 0
    assert not (root / "mixed.csv.skipped").exists()


def test_an_existing_skipped_list_is_kept_without_overwrite(world, capsys):
    """OUT.skipped is an output like OUT: without --overwrite a run neither replaces it (images to
    skip) nor deletes it (nothing to skip), it refuses with one line naming it."""
    root, ckpt, faces = world
    bad_dir = root / "keep_skipped"
    bad_dir.mkdir()
    (bad_dir / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(bad_dir / "ok.png")
    out = root / "keep.csv"
    listing = root / "keep.csv.skipped"
    listing.write_text("the user's own list\n")
    base = ["score", str(bad_dir), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet"]
    assert main([*base, "--skip-bad"]) == 2  # would replace it
    _one_line_naming(capsys.readouterr().err, str(listing))
    (bad_dir / "broken.jpg").unlink()
    assert main(base) == 2  # would delete it
    _one_line_naming(capsys.readouterr().err, str(listing))
    assert listing.read_text() == "the user's own list\n" and not out.exists()
    assert main([*base, "--overwrite"]) == 0  # allowed: the stale list goes
    assert not listing.exists() and out.is_file()


def test_missing_inputs_are_named(world, capsys):
    root, ckpt, faces = world
    assert main(["score", str(root / "nope"), "--checkpoint", str(ckpt), "--out", str(root / "y.csv")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["score", str(faces), "--checkpoint", str(root / "missing.pt"), "--out", str(root / "y.csv")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_to_tensor_convention():
    red = np.zeros((1, 2, 2, 3), np.uint8)
    red[..., 0] = 255
    t = to_tensor(red)
    assert t.shape == (1, 3, 2, 2)
    assert t[0, 0].eq(1).all() and t[0, 1].eq(-1).all() and t[0, 2].eq(-1).all()
