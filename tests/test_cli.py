"""`exfiqa score` end to end on generated images and a small saved checkpoint."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from exfiqa.cli import main
from exfiqa.fusion import ex_fiqa_f, ex_fiqa_fw
from exfiqa.images import read_face, to_tensor
from exfiqa.model import build_vitfiqa, load_vitfiqa, save_vitfiqa


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
    assert list(table.columns) == ["path"] + [f"exit_{k}" for k in range(1, 13)] + ["ex_fiqa_f", "ex_fiqa_fw"]
    expected_paths = sorted(str(p) for p in [faces / "b.png", faces / "a_gray.png", faces / "sub/c.png", faces / "sub/d.jpg"])
    assert table["path"].tolist() == expected_paths
    assert "resized to 112x112" in capsys.readouterr().err
    model = load_vitfiqa(ckpt, num_heads=2)
    imgs = np.stack([read_face(p) for p in expected_paths])
    with torch.no_grad():
        ref = model.forward_exits(to_tensor(imgs)).scores.numpy()
    np.testing.assert_allclose(table[[f"exit_{k}" for k in range(1, 13)]].to_numpy(), ref, atol=2e-6)
    np.testing.assert_allclose(table["ex_fiqa_fw"], ex_fiqa_fw(ref), atol=1e-5)
    np.testing.assert_allclose(table["ex_fiqa_f"], ex_fiqa_f(ref), atol=1e-5)

    # refuses to overwrite; with --overwrite the file is byte-identical (batch size does not matter)
    first = out.read_bytes()
    assert main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(out), "--num-heads", "2", "--quiet", "--overwrite", "--batch-size", "3"]) == 0
    assert out.read_bytes() == first


def test_exit_subset_keeps_fusion_over_all_exits(world):
    root, ckpt, faces = world
    out = root / "subset.csv"
    assert main(["score", str(faces / "b.png"), "--checkpoint", str(ckpt), "--out", str(out), "--exits", "12,1,6", "--num-heads", "2", "--quiet"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "exit_1", "exit_6", "exit_12", "ex_fiqa_f", "ex_fiqa_fw"]
    full = pd.read_csv(root / "scores.csv").set_index("path").loc[str(faces / "b.png")]
    assert table["ex_fiqa_fw"].iloc[0] == pytest.approx(full["ex_fiqa_fw"], abs=1e-6)
    with pytest.raises(SystemExit, match="outside 1..12"):
        main(["score", str(faces), "--checkpoint", str(ckpt), "--out", str(root / "x.csv"), "--exits", "13", "--num-heads", "2"])


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
