"""The arrays alone are enough to evaluate: after extraction, the images and checkpoints may go.

A tiny world is extracted (LFW-like .bin and IJB-C-like loose crops), then a second data root is
made with only the benchmarks' protocol files (the .bin, IJB-C's meta/ files): no loose crop, no
checkpoint. The evaluation reads the same arrays (``arrays_dir``) and must give the same numbers,
with a run card that cites the images and checkpoints through the manifests.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from exfiqa.config import load_config
from exfiqa.store.arrays import ArrayError, arrays_root, sample_keys
from exfiqa.study import Study, open_study

DATASETS = ["lfw", "ijbc"]


@pytest.fixture(scope="module")
def extracted(tiny_config, tmp_path_factory) -> Path:
    """A config with LFW and IJB-C of the tiny world, every array extracted."""
    from exfiqa.extract import extract

    raw = yaml.safe_load(tiny_config.read_text())
    work = tmp_path_factory.mktemp("full")
    raw["datasets"] = {k: v for k, v in raw["datasets"].items() if k in DATASETS}
    raw.update(cache_dir=str(work / "cache"), results_dir=str(work / "results"), workers=0, batch_size=16)
    path = work / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    extract(load_config(path), progress=False, log=lambda *_: None)
    return path


@pytest.fixture(scope="module")
def arrays_only(extracted, tmp_path_factory) -> Path:
    """The same run on a data root holding only the protocol files; ``arrays_dir`` the extracted one."""
    cfg = load_config(extracted)
    raw = yaml.safe_load(extracted.read_text())
    root = tmp_path_factory.mktemp("protocol-only")
    src = Path(raw["data_root"])
    for spec in raw["datasets"].values():
        if spec["kind"] == "bin":
            (root / spec["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / spec["path"], root / spec["path"])
        else:
            shutil.copytree(src / spec["root"] / "meta", root / spec["root"] / "meta")
    raw.pop("demo", None)
    raw.update(data_root=str(root), arrays_dir=str(arrays_root(cfg)), cache_dir=str(root / "cache"),
               results_dir=str(root / "results"))
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert not list(root.rglob("*.pt")) and not list(root.rglob("loose_crop"))
    return path


def test_evaluation_needs_only_arrays_and_protocol_files(extracted, arrays_only, tmp_path, monkeypatch):
    import exfiqa.readers.benchmark as datasets
    import exfiqa.store.digests as digests

    hashed: list[str] = []
    original = digests.file_digest
    monkeypatch.setattr(digests, "file_digest", lambda p: hashed.append(str(p)) or original(p))
    monkeypatch.setattr(datasets.Benchmark, "image", lambda *a: pytest.fail("evaluation decoded an image"))
    study = open_study(str(arrays_only), out_dir=str(tmp_path / "out"), progress=False)
    full = Study(load_config(extracted), progress=False)
    assert not any(p.endswith((".pt", ".jpg", ".png")) for p in hashed), hashed  # nor the images nor the weights
    for ds in DATASETS:
        for q in study.config.quality_models:
            assert study.methods(q, ds) == full.methods(q, ds)  # the depth from the arrays
            got = study.pauc_frame(ds, "arcface", q)
            np.testing.assert_array_equal(got["pauc"], full.pauc_frame(ds, "arcface", q)["pauc"])
    assert study.variant_tag("T") == "T" and study.variant_tag("C") == "C"  # from the labels "ViT-FIQA (T)"
    # the card cites the images and checkpoints through the manifests, and the protocol files
    inputs = study.card.inputs
    manifest = json.loads((arrays_root(study.config) / "ijbc" / "exits-T.json").read_text())
    assert inputs["datasets.ijbc images (cited by the arrays)"] == manifest["inputs"]["data"]
    assert inputs["quality_models.T checkpoint (cited by the arrays)"] == manifest["inputs"]["checkpoint"]
    assert inputs["fr_models.magface checkpoint (cited by the arrays)"] == original(
        full.config.fr_models["magface"].checkpoint)  # magface_norm's model, cited by its baseline array too
    assert inputs["arrays.ijbc/exits-T"] == manifest["sha256"]
    meta = Path(study.config.datasets["ijbc"].args["root"]) / "meta"
    h = hashlib.sha256()  # in the reader's order: samples, pairs, landmarks
    for f in (meta / n for n in ("ijbc_face_tid_mid.txt", "ijbc_template_pair_label.txt", "ijbc_name_5pts_score.txt")):
        h.update(f"meta/{f.name}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    assert inputs["datasets.ijbc protocol (3 files)"] == h.hexdigest()
    bench = study.benchmark("ijbc")
    assert inputs[f"datasets.ijbc samples ({len(bench):,})"] == hashlib.sha256("\n".join(sample_keys(bench)).encode()).hexdigest()
    assert not any(k.startswith("other") for k in inputs)


def test_the_card_of_the_full_tree_equals_the_arrays_only_card(extracted, arrays_only, tmp_path):
    """Images and checkpoints present or gone, the evaluation cites the same inputs (the
    protocol files are the same bytes)."""
    a = open_study(str(extracted), out_dir=str(tmp_path / "a"), progress=False).card.inputs
    b = open_study(str(arrays_only), out_dir=str(tmp_path / "b"), progress=False).card.inputs
    assert a == b


def test_a_present_checkpoint_is_checked_against_the_manifest(extracted, arrays_only, tmp_path):
    raw = yaml.safe_load(arrays_only.read_text())
    fake = Path(raw["data_root"]) / yaml.safe_load(extracted.read_text())["quality_models"]["T"]["checkpoint"]
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_bytes(b"a placeholder, not the checkpoint the arrays were computed with\n")
    try:
        study = Study(load_config(arrays_only), progress=False)
        with pytest.raises(ArrayError, match="checkpoint changed"):
            study.exit_scores("ijbc", "T")
        assert study.embeddings("ijbc", "arcface").shape[0] == len(study.benchmark("ijbc"))  # absent: trusted
    finally:
        fake.unlink()


def test_a_misnamed_array_is_answered_with_what_is_there(arrays_only):
    cfg = load_config(arrays_only)
    study = Study(cfg.with_(), progress=False)
    root = arrays_root(cfg) / "ijbc"
    moved = [(root / f"exits-T{s}", root / f"exits-t{s}") for s in (".npy", ".json")]
    for a, b in moved:
        a.rename(b)
    try:
        with pytest.raises(ArrayError) as err:
            study.exit_scores("ijbc", "T")
        text = str(err.value)
        assert "no exits-T.npy in" in text and "exits-t.npy" in text and "exfiqa extract" in text
    finally:
        for a, b in moved:
            b.rename(a)


def test_samples_digest_mismatch_shows_the_expected_value(arrays_only, tmp_path):
    cfg = load_config(arrays_only)
    study = Study(cfg.with_(), progress=False)
    bench = study.benchmark("lfw")
    expected = hashlib.sha256("\n".join(sample_keys(bench)).encode()).hexdigest()
    # data/README's format: keys joined by newlines, no trailing newline
    assert expected == hashlib.sha256(("\n".join(sample_keys(bench)) + "\n").rstrip("\n").encode()).hexdigest()
    mpath = arrays_root(cfg) / "lfw" / "baseline-sharpness.json"
    saved = mpath.read_text()
    m = json.loads(saved)
    m["samples_sha256"] = hashlib.sha256(("\n".join(sample_keys(bench)) + "\n").encode()).hexdigest()
    mpath.write_text(json.dumps({**m, "producer": "external"}))
    try:
        with pytest.raises(ArrayError) as err:
            study.baseline_scores("lfw", "sharpness")
        assert expected in str(err.value) and m["samples_sha256"] in str(err.value)
    finally:
        mpath.write_text(saved)


def test_progress_false_shows_no_hashing_bar(arrays_only, tmp_path, capfd, monkeypatch):
    import exfiqa.store.digests as digests

    monkeypatch.setattr(digests, "_PROGRESS_MIN_FILES", 1)
    cache = Path(yaml.safe_load(arrays_only.read_text())["cache_dir"])
    shutil.rmtree(cache, ignore_errors=True)  # every protocol file is hashed again
    open_study(str(arrays_only), out_dir=str(tmp_path / "q"), progress=False)
    assert "hashing" not in capfd.readouterr().err
    shutil.rmtree(cache)
    open_study(str(arrays_only), out_dir=str(tmp_path / "p"), progress=True)
    assert "hashing" in capfd.readouterr().err  # the bar exists, and progress=False silenced it


def test_extraction_still_needs_its_checkpoints(arrays_only):
    """Only the evaluation goes without checkpoints: `exfiqa extract` names the missing one."""
    from exfiqa.config import ConfigError
    from exfiqa.extract import extract

    with pytest.raises(ConfigError, match=r"checkpoint .* does not exist"):
        extract(load_config(arrays_only), progress=False, log=lambda *_: None)
