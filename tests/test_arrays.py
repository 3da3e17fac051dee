"""The per-sample layout (exfiqa.store.arrays): paths, manifests, external arrays and their checks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from exfiqa.config import load_config
from exfiqa.extract import Models, extract
from exfiqa.readers import read_adience, read_bin, read_ijbc, read_xqlfw
from exfiqa.store import arrays
from exfiqa.store.arrays import (
    ArrayError,
    array_path,
    arrays_root,
    manifest_path,
    sample_keys,
    samples_digest,
)
from exfiqa.study import Study


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def own_config(tiny_world, tiny_config, tmp_path) -> Path:
    """The tiny world's config with a cache (hence a per-sample layout) of this test's own."""
    raw = yaml.safe_load(tiny_config.read_text())
    raw["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _extracted(cfg) -> Study:
    """A Study of ``cfg`` after its extraction (the Study reads arrays; it never extracts)."""
    extract(cfg, progress=False, log=lambda *_: None)
    return Study(cfg, progress=False)


def _unit_halves(n: int, e: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2, e))
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    return x.reshape(n, 2 * e).astype(np.float32)


def test_layout_paths_and_manifest_follow_the_documentation(own_config, tiny_world):
    cfg = load_config(own_config)
    study = _extracted(cfg)
    scores = study.exit_scores("lfw", "T")
    tag = hashlib.sha256(str(tiny_world).encode()).hexdigest()[:8]
    root = cfg.cache_dir / "arrays" / f"{tiny_world.name}-{tag}"  # the documented default
    assert arrays_root(cfg) == root
    npy = root / "lfw" / "exits-T.npy"
    m = json.loads((root / "lfw" / "exits-T.json").read_text())
    n = len(study.benchmark("lfw"))
    expected_keys = "\n".join(f"lfw.bin#{k}" for k in range(n))  # the .bin's name, #k
    assert m["samples_sha256"] == hashlib.sha256(expected_keys.encode()).hexdigest()
    assert m["n_samples"] == n and m["shape"] == [n, 12] and m["dtype"] == "float32"
    assert m["format"] == "exfiqa-arrays/1" and m["producer"] == "exfiqa" and m["complete"] is True
    assert (m["dataset"], m["kind"], m["name"]) == ("lfw", "exits", "T")
    assert m["sha256"] == _sha(npy)
    assert m["inputs"]["checkpoint"] == _sha(cfg.quality_models["T"].checkpoint)
    assert m["inputs"]["args"] == {"num_heads": 2}
    assert m["code_version"] == arrays.code_version("exits", "T")
    on_disk = np.load(npy)
    assert on_disk.dtype == np.float32 and on_disk.dtype.byteorder in "<="
    np.testing.assert_array_equal(on_disk, scores)
    assert not scores.flags.writeable  # memory-mapped, read-only
    emb = study.embeddings("lfw", "arcface")
    halves = emb.reshape(n, 2, -1)
    np.testing.assert_allclose(np.linalg.norm(halves, axis=2), 1, atol=1e-5)
    assert (root / "lfw" / "emb-arcface.json").is_file()
    assert study.baseline_scores("lfw", "sharpness").shape == (n,)
    assert json.loads((root / "lfw" / "baseline-sharpness.json").read_text())["shape"] == [n]
    assert not list(root.rglob("*.tmp"))


def test_arrays_dir_key_moves_the_layout(own_config, tmp_path):
    raw = yaml.safe_load(own_config.read_text())
    raw["arrays_dir"] = str(tmp_path / "elsewhere")
    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path).select(["lfw"], ["arcface"], ["T"])
    _extracted(cfg).exit_scores("lfw", "T")
    assert (tmp_path / "elsewhere" / "lfw" / "exits-T.npy").is_file()
    assert cfg.with_(arrays_dir=str(tmp_path / "x")).arrays_dir == tmp_path / "x"


def test_sample_keys_are_paths_relative_to_the_benchmark_root(tiny_world):
    b = tiny_world / "benchmarks"
    adience = read_adience(b / "adience")
    expect = sorted(str(p.relative_to(b / "adience")) for p in (b / "adience").rglob("*.jpg"))
    assert sample_keys(adience) == expect
    ijbc = read_ijbc(b / "ijbc")
    names = [line.split()[0] for line in (b / "ijbc" / "meta" / "ijbc_face_tid_mid.txt").read_text().splitlines()]
    assert sample_keys(ijbc) == [f"loose_crop/{n}" for n in names]
    xq = read_xqlfw(b / "xqlfw" / "images", b / "xqlfw" / "pairs.txt")
    assert all(k.count("/") == 1 and k.split("/")[1].startswith(k.split("/")[0] + "_") for k in sample_keys(xq))
    lfw = read_bin(b / "lfw.bin")
    assert sample_keys(lfw)[:2] == ["lfw.bin#0", "lfw.bin#1"]
    # the same files elsewhere give the same sample list
    copy = shutil.copytree(b / "adience", tiny_world.parent / f"adience-copy-{os.getpid()}")
    try:
        assert samples_digest(read_adience(copy)) == samples_digest(adience)
    finally:
        shutil.rmtree(copy)


def _write_by_hand(npy: Path, values: np.ndarray, manifest: dict) -> None:
    """What a user's own pipeline does: np.save and a JSON file, following the docstring."""
    npy.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy, values)
    manifest_path(npy).write_text(json.dumps(manifest))


def _hand_manifest(bench, kind: str, values: np.ndarray) -> dict:
    keys = "\n".join(sample_keys(bench))
    return {
        "format": "exfiqa-arrays/1", "dataset": bench.name, "kind": kind, "name": "arcface",
        "producer": "external", "n_samples": len(bench),
        "samples_sha256": hashlib.sha256(keys.encode()).hexdigest(),
        "shape": list(values.shape), "dtype": "float32",
    }


def test_external_arrays_are_evaluated_without_the_model(own_config, monkeypatch):
    cfg = load_config(own_config).select(["adience"], ["arcface"], ["T"])
    study = Study(cfg, progress=False)
    bench = study.benchmark("adience")
    n = len(bench)
    emb = _unit_halves(n, 8)
    npy = array_path(arrays_root(cfg), "adience", "emb", "arcface")
    _write_by_hand(npy, emb, _hand_manifest(bench, "emb", emb))  # no sha256: optional for external
    monkeypatch.setattr(Models, "fr_model", lambda *a: pytest.fail("the FR model was loaded"))
    got = study.embeddings("adience", "arcface")
    np.testing.assert_array_equal(got, emb)
    comp = bench.comparisons
    a, b = comp["a"].to_numpy(), comp["b"].to_numpy()
    expect = (emb[a].astype(np.float64) * emb[b]).sum(1) / 2  # flip-concatenated: dot / 2
    np.testing.assert_allclose(study.similarity("adience", "arcface"), expect, atol=1e-5)
    # written through the store, the manifest carries the array's digest and the benchmark's content
    other = Study(cfg, progress=False)
    path = other.arrays.write(bench, "adience", "emb", "arcface", emb[::-1], producer="external", overwrite=True)
    m = json.loads(manifest_path(path).read_text())
    assert m["sha256"] == _sha(path) and m["producer"] == "external" and m["complete"] is True
    np.testing.assert_array_equal(other.embeddings("adience", "arcface"), emb[::-1])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        other.arrays.write(bench, "adience", "emb", "arcface", emb, producer="external")


def _corrupt(kind: str, npy: Path, bench, emb: np.ndarray) -> None:
    m = _hand_manifest(bench, "emb", emb)
    if kind == "other sample list":
        keys = "\n".join(reversed(sample_keys(bench)))
        m["samples_sha256"] = hashlib.sha256(keys.encode()).hexdigest()
        _write_by_hand(npy, emb, m)
    elif kind == "wrong length":
        _write_by_hand(npy, emb[:-1], {**m, "shape": [len(emb) - 1, emb.shape[1]]})
    elif kind == "manifest length":
        _write_by_hand(npy, emb[:-1], {**m, "n_samples": len(emb) - 1, "shape": [len(emb) - 1, emb.shape[1]]})
    elif kind == "nan":
        bad = emb.copy()
        bad[3, 1] = np.nan
        _write_by_hand(npy, bad, m)
    elif kind == "inf":
        bad = emb.copy()
        bad[0, 0] = np.inf
        _write_by_hand(npy, bad, m)
    elif kind == "float64":
        _write_by_hand(npy, emb.astype(np.float64), m)
    elif kind == "missing manifest":
        npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy, emb)
    elif kind == "one-dimensional":
        _write_by_hand(npy, emb[:, 0].copy(), {**m, "shape": [len(emb)]})
    elif kind == "not normalised":
        _write_by_hand(npy, emb * 2, m)
    elif kind == "sha256":
        _write_by_hand(npy, emb, {**m, "sha256": "0" * 64})
    elif kind == "incomplete":
        _write_by_hand(npy, emb, {**m, "complete": False})
    elif kind == "not json":
        _write_by_hand(npy, emb, m)
        manifest_path(npy).write_text("{ not json")
    elif kind == "other benchmark content":
        _write_by_hand(npy, emb, {**m, "inputs": {"data": "0" * 64}})
    elif kind == "shape not a list":
        _write_by_hand(npy, emb, {**m, "shape": 40})
    elif kind == "shape of strings":
        _write_by_hand(npy, emb, {**m, "shape": ["12", "16"]})
    elif kind == "inputs not an object":
        _write_by_hand(npy, emb, {**m, "inputs": "x"})
    elif kind == "n_samples a boolean":
        _write_by_hand(npy, emb, {**m, "n_samples": True})
    elif kind == "deep json":
        _write_by_hand(npy, emb, m)
        manifest_path(npy).write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "control characters":
        _write_by_hand(npy, emb, {**m, "producer": "\x1b[2J\n" + "x" * 10**6})
    elif kind == "too wide":
        wide = _unit_halves(len(emb), arrays.MAX_EMBEDDING_WIDTH // 2 + 1)
        _write_by_hand(npy, wide, _hand_manifest(bench, "emb", wide))


@pytest.mark.parametrize("kind, message", [
    ("other sample list", "another sample list"),
    ("wrong length", r"shape \(11, 16\)|rows"),
    ("manifest length", "manifest says"),
    ("nan", r"NaN/inf values, the first in row 3 \(sample_id 3\)"),
    ("inf", "NaN/inf values, the first in row 0"),
    ("float64", "float32"),
    ("missing manifest", "no manifest"),
    ("one-dimensional", r"expected \(N, 2E\)"),
    ("not normalised", "L2-normalised"),
    ("sha256", "sha256"),
    ("incomplete", "incomplete"),
    ("not json", "unreadable manifest"),
    ("other benchmark content", "other benchmark content"),
    ("shape not a list", r"shape is 40 \(int\), expected a JSON list"),
    ("shape of strings", r"shape \[\"12\", \"16\"\] is not a list of non-negative integers"),
    ("inputs not an object", r"inputs is \"x\" \(str\), expected a JSON object"),
    ("n_samples a boolean", r"n_samples is true \(bool\), expected a JSON integer"),
    ("deep json", r"unreadable manifest \(JSON nested too deeply\)"),
    ("control characters", r"producer '\\x1b\[2J\\nxxx.*\.\.\. is not 'exfiqa'"),
    ("too wide", r"width 16,386, more than 16,384"),
])
def test_external_array_mismatch_is_an_error_naming_the_file(own_config, monkeypatch, kind, message):
    cfg = load_config(own_config).select(["adience"], ["arcface"], ["T"])
    study = Study(cfg, progress=False)
    bench = study.benchmark("adience")
    emb = _unit_halves(len(bench), 8)
    npy = array_path(arrays_root(cfg), "adience", "emb", "arcface")
    _corrupt(kind, npy, bench, emb)
    before = {p.name: _sha(p) for p in npy.parent.glob("[!.]*")}
    monkeypatch.setattr(Models, "fr_model", lambda *a: pytest.fail("recomputed an external array"))
    readers = [lambda: extract(cfg, progress=False)]
    if kind != "other benchmark content":  # the evaluation takes inputs.data as it is (it reads no image)
        readers.append(lambda: study.embeddings("adience", "arcface"))
    for read in readers:
        with pytest.raises(ArrayError, match=message) as err:  # the extraction and the evaluation alike
            read()
    assert str(npy.parent) in str(err.value) and "emb-arcface" in str(err.value)
    assert len(str(err.value)) < 500 and "\x1b" not in str(err.value) and "\n" not in str(err.value)
    assert {p.name: _sha(p) for p in npy.parent.glob("[!.]*")} == before  # never replaced (the extraction's lock aside)


def test_damaged_exfiqa_array_is_recomputed(own_config, caplog):
    cfg = load_config(own_config).select(["lfw"], ["arcface"], ["T"])
    first = _extracted(cfg).exit_scores("lfw", "T").copy()
    npy = array_path(arrays_root(cfg), "lfw", "exits", "T")
    raw = bytearray(npy.read_bytes())
    raw[-4:] = np.float32(np.nan).tobytes()  # same size; the stored sha256 no longer matches
    os.replace(_tmp_with(npy, bytes(raw)), npy)
    with pytest.raises(ArrayError, match=r"exits-T\.npy: .*sha256.*run `exfiqa extract"):
        Study(cfg, progress=False).exit_scores("lfw", "T")  # the evaluation refuses it ...
    with caplog.at_level(logging.WARNING, logger="exfiqa.store.arrays"):
        again = _extracted(cfg).exit_scores("lfw", "T")  # ... the extraction replaces it
    np.testing.assert_allclose(again, first, rtol=1e-6)
    assert any("recomputing" in r.message and str(npy) in r.message and "sha256" in r.message for r in caplog.records)
    assert json.loads(manifest_path(npy).read_text())["sha256"] == _sha(npy)


def _tmp_with(target: Path, data: bytes) -> Path:
    tmp = target.with_name(target.name + ".new")
    tmp.write_bytes(data)
    return tmp


def test_interrupted_writes_are_recomputed_not_trusted(own_config, monkeypatch, caplog):
    cfg = load_config(own_config).select(["lfw"], ["arcface"], ["T"])
    npy = array_path(arrays_root(cfg), "lfw", "exits", "T")
    import exfiqa.extract.stage as stage

    calls = []
    real = stage._Exits.run
    monkeypatch.setattr(stage._Exits, "run", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))

    class Killed(BaseException):
        pass

    # killed while the array is written: nothing is renamed into place, the manifest says incomplete
    real_save = np.save

    def half_save(fh, arr, **kw):
        fh.write(b"\x93NUMPY partial")
        raise Killed

    monkeypatch.setattr(arrays.np, "save", half_save)
    with pytest.raises(Killed):
        _extracted(cfg)
    monkeypatch.setattr(arrays.np, "save", real_save)
    assert not npy.exists() and json.loads(manifest_path(npy).read_text())["complete"] is False
    assert not [p for p in npy.parent.iterdir() if p.name.endswith(".tmp")]
    # killed after the rename, before the final manifest: the array is there, never vouched for
    real_json = arrays._write_json
    writes = []

    def second_fails(path, data):
        writes.append(data.get("complete"))
        if len(writes) == 2:
            raise Killed
        real_json(path, data)

    monkeypatch.setattr(arrays, "_write_json", second_fails)
    with pytest.raises(Killed):
        _extracted(cfg)
    monkeypatch.setattr(arrays, "_write_json", real_json)
    assert writes == [False, True] and npy.is_file()
    assert json.loads(manifest_path(npy).read_text())["complete"] is False
    with caplog.at_level(logging.WARNING, logger="exfiqa.store.arrays"):
        _extracted(cfg).exit_scores("lfw", "T")
    assert any("incomplete" in r.message for r in caplog.records)
    # the model ran once: the later runs merged the finished extraction shards again
    assert len(calls) == 1
    final = _extracted(cfg).exit_scores("lfw", "T")
    assert len(calls) == 1 and json.loads(manifest_path(npy).read_text())["complete"] is True
    fresh = load_config(own_config).select(["lfw"], ["arcface"], ["T"]).with_(cache_dir=str(npy.parents[4] / "fresh"))
    np.testing.assert_array_equal(final, _extracted(fresh).exit_scores("lfw", "T"))


_WRITER = textwrap.dedent("""
    import sys, numpy as np, pandas as pd
    from exfiqa.store.arrays import ArrayStore
    from exfiqa.readers import Benchmark
    from exfiqa.store.digests import DigestIndex
    n = 200_000
    bench = Benchmark("big", "sample", pd.DataFrame({"sample_id": np.arange(n), "path": [f"/x/{k}.jpg" for k in range(n)]}),
                      pd.DataFrame({"a": [0], "b": [1], "mated": [True]}), _decode=lambda k: None)
    store = ArrayStore(sys.argv[1], DigestIndex(None))
    print("ready", flush=True)
    for k in range(1000):
        store.write(bench, "big", "exits", "T", np.full((n, 12), k, np.float32), producer="external", overwrite=True)
""")


def test_sigkill_at_any_moment_never_leaves_a_manifest_vouching_for_a_partial_array(tmp_path):
    """A writer killed at random moments: the manifest is absent, incomplete, or matches the array."""
    rng = np.random.default_rng(0)
    npy = tmp_path / "big" / "exits-T.npy"
    seen = set()
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not manifest_path(npy).exists():
            seen.add("absent")
            continue
        m = json.loads(manifest_path(npy).read_text())
        if m["complete"] is False:
            seen.add("incomplete")
            continue
        seen.add("complete")
        assert m["sha256"] == _sha(npy)
        values = np.load(npy, mmap_mode="r")
        assert values.shape == (200_000, 12) and values[0, 0] == values[-1, -1]
    assert seen  # every state reached is consistent


@pytest.mark.parametrize("kind", ["exits", "attn"])
@pytest.mark.parametrize("delta", [-1, 1])
def test_external_exit_arrays_need_one_column_per_block(own_config, kind, delta):
    cfg = load_config(own_config).select(["adience"], ["arcface"], ["T"])
    study = _extracted(cfg)
    bench = study.benchmark("adience")
    depth = Models(cfg).quality_model("T").depth
    values = np.random.default_rng(0).normal(size=(len(bench), depth + delta)).astype(np.float32)
    npy = array_path(arrays_root(cfg), "adience", kind, "T")
    _write_by_hand(npy, values, {**_hand_manifest(bench, kind, values), "name": "T"})
    with pytest.raises(ArrayError, match=rf"{kind}-T.*{depth + delta} columns, but quality model 'T' has {depth} blocks"):
        study.array("adience", kind, "T")
