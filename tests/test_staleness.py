"""Never stale: the digest index, a run's input digests, and exactly-the-dependent recomputation."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from exfiqa.config import load_config
from exfiqa.extract import extract
from exfiqa.store import arrays, digests
from exfiqa.store.arrays import array_path, arrays_root
from exfiqa.store.digests import DigestIndex
from exfiqa.store.run import input_digests, input_files
from exfiqa.study import Study


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """Every file the digest index (or a fingerprint without one) reads, in order."""
    import exfiqa.readers.benchmark as benchmarks

    calls: list[str] = []
    real = digests.file_digest
    for module in (digests, benchmarks):  # both hash with exfiqa.io.file_digest
        monkeypatch.setattr(module, "file_digest", lambda p: calls.append(os.fspath(p)) or real(p))
    return calls


@pytest.fixture
def later(monkeypatch) -> None:
    """Hashing happens 10 s after the files were written (none is 'racy')."""
    monkeypatch.setattr(digests, "_now_ns", lambda: time.time_ns() + 10**10)


# ------------------------------------------------------------------------------ the digest index


def test_unchanged_files_are_not_hashed_again(tmp_path, hashed, later):
    files = [tmp_path / f"f{k}.bin" for k in range(3)]
    for k, f in enumerate(files):
        f.write_bytes(bytes([k]) * (1000 + k))
    db = tmp_path / "cache" / "digests.sqlite"
    first = DigestIndex(db).digests(files)
    assert first == [_sha(f) for f in files] and len(hashed) == 3
    again = DigestIndex(db).digests([str(f) for f in files])  # a new process: only the index file
    assert again == first and len(hashed) == 3
    assert DigestIndex(db).digest(files[1]) == first[1] and len(hashed) == 3


def test_touched_or_rewritten_files_are_hashed_again(tmp_path, hashed, later):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"x" * 5000)
    b.write_bytes(b"y" * 5000)
    db = tmp_path / "digests.sqlite"
    da, db_ = DigestIndex(db).digests([a, b])
    hashed.clear()
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched, same content
    assert DigestIndex(db).digests([a, b]) == [da, db_] and hashed == [str(a)]
    hashed.clear()
    st = b.stat()
    b.write_bytes(b"z" * 5000)  # same size, mtime put back: the change time still shows it
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert DigestIndex(db).digests([a, b]) == [da, hashlib.sha256(b"z" * 5000).hexdigest()]
    assert hashed == [str(b)]
    copy = tmp_path / "sub" / "copy.jpg"
    copy.parent.mkdir()
    shutil.copy2(a, copy)
    assert DigestIndex(db).digest(copy) == da  # same content, same digest, wherever it lies


def test_racy_files_are_hashed_again_by_the_next_process(tmp_path, hashed):
    f = tmp_path / "fresh.jpg"
    f.write_bytes(b"a" * 100)  # written just now: a same-size rewrite in this tick would keep its stat
    db = tmp_path / "digests.sqlite"
    DigestIndex(db).digest(f)
    DigestIndex(db).digest(f)
    assert len(hashed) == 2
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0


def test_corrupt_index_is_rebuilt_and_missing_files_are_named(tmp_path, hashed, later, caplog):
    f = tmp_path / "f.jpg"
    f.write_bytes(b"q" * 10)
    db = tmp_path / "digests.sqlite"
    db.write_bytes(b"this is not an sqlite file" * 100)
    with caplog.at_level(logging.WARNING, logger="exfiqa.store.digests"):
        assert DigestIndex(db).digest(f) == _sha(f)
    assert any("corrupt" in r.message for r in caplog.records)
    assert (tmp_path / "digests.sqlite.corrupt").is_file()
    DigestIndex(db).digest(f)
    assert len(hashed) == 1
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        DigestIndex(db).digests([f, tmp_path / "nope.jpg"])


def test_an_index_locked_by_another_process_is_waited_for_never_discarded(tmp_path, hashed, later, caplog, monkeypatch):
    """Another process holds the index locked (BEGIN EXCLUSIVE) past the wait: this process says
    it waits, then works without the index; the index keeps its file, inode and entries (the old
    code declared it corrupt after 60 s, moved it aside and re-hashed everything). Released
    within the wait, it is used."""
    import subprocess
    import sys

    monkeypatch.setattr(digests, "LOCK_NOTICE_S", 0.2)
    monkeypatch.setattr(digests, "LOCK_WAIT_S", 1.5)
    f = tmp_path / "f.jpg"
    f.write_bytes(b"q" * 10)
    db = tmp_path / "digests.sqlite"
    DigestIndex(db).digest(f)
    assert len(hashed) == 1
    inode, content = db.stat().st_ino, db.read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sqlite3, sys, time; con = sqlite3.connect({str(db)!r}, isolation_level=None); "
         "con.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.readline(); con.execute('COMMIT')"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with caplog.at_level(logging.WARNING, logger="exfiqa.store.digests"):
            t0 = time.monotonic()
            assert DigestIndex(db).digest(f) == _sha(f)
            waited = time.monotonic() - t0
        messages = [r.getMessage() for r in caplog.records]
        assert any("locked by another process; waiting" in m for m in messages), messages
        assert any("goes on without it" in m for m in messages), messages
        assert not any("corrupt" in m for m in messages) and 1.5 <= waited < 10
        assert not (tmp_path / "digests.sqlite.corrupt").exists()
        assert db.stat().st_ino == inode and db.read_bytes() == content
        # released during the wait: the index is used (f is not hashed again)
        before = len(hashed)
        monkeypatch.setattr(digests, "LOCK_WAIT_S", 30.0)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert DigestIndex(db).digest(f) == _sha(f)
        assert len(hashed) == before
    finally:
        holder.kill()
        holder.wait()


def test_in_memory_index_and_fingerprint_reuse(tmp_path, hashed, later, tiny_world):
    from exfiqa.readers import read_adience

    root = tmp_path / "adience"
    shutil.copytree(tiny_world / "benchmarks" / "adience", root)
    db = tmp_path / "digests.sqlite"
    plain = read_adience(root).fingerprint(DigestIndex(None))  # an index in memory only: every file read
    n = len(read_adience(root))
    assert len(hashed) == n
    assert read_adience(root).fingerprint(DigestIndex(db)) == plain and len(hashed) == 2 * n
    assert read_adience(root).fingerprint(DigestIndex(db)) == plain and len(hashed) == 2 * n  # stat only


# ------------------------------------------------------------------------------ a run's inputs


def _own_world(tiny_world: Path, tiny_config: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny world (to be changed by the test) and its config with its own cache."""
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    raw = yaml.safe_load(tiny_config.read_text())
    raw.update(data_root=str(world), cache_dir=str(tmp_path / "cache"))
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(raw))
    return world, path


def test_input_digests_cover_every_file_the_run_reads(tiny_world, tiny_config, tmp_path, hashed, later, monkeypatch):
    world, path = _own_world(tiny_world, tiny_config, tmp_path)
    cfg = load_config(path)
    got = input_digests(cfg)
    bench_files = {p for p in (world / "benchmarks").rglob("*") if p.is_file() and "xqlfw" not in p.parts}
    xq = world / "benchmarks" / "xqlfw"  # XQLFW: the pairs file and the images its pairs name
    refs = set()
    for line in (xq / "pairs.txt").read_text().splitlines()[1:]:
        f = line.split()
        refs |= {(f[0], int(f[1])), (f[0], int(f[2]))} if len(f) == 3 else {(f[0], int(f[1])), (f[2], int(f[3]))}
    bench_files |= {xq / "pairs.txt"} | {next((xq / "images" / n).glob(f"{n}_{i:04d}.*")) for n, i in refs}
    checkpoints = {p for d in ("fr", "vitfiqa") for p in (world / d).glob("*.pt")}  # all four FR, T, C
    attention = {s.path for s in cfg.attention_samples.values() if s.path is not None}
    expected = bench_files | checkpoints | attention
    assert set(got) == {str(p) for p in expected}
    assert all(got[str(p)] == _sha(p) for p in expected)
    assert len(hashed) == len(expected)
    assert input_digests(cfg) == got and len(hashed) == len(expected)  # rerun: one stat per file
    # a run narrowed to one dataset and model reads less; external CSVs and arrays count
    narrow = cfg.select(["adience"], ["arcface"], ["T"]).with_(baselines=["sharpness"])
    files = set(map(str, input_files(narrow)))
    assert str(world / "fr" / "magface.pt") not in files and str(world / "fr" / "arcface.pt") in files
    assert not any("lfw.bin" in f for f in files)
    study = Study(narrow, progress=False)
    bench = study.benchmark("adience")
    emb = np.tile(np.eye(1, 16, dtype=np.float32), (len(bench), 2))
    npy = study.arrays.write(bench, "adience", "emb", "arcface", emb, producer="external")
    files = set(map(str, input_files(narrow)))
    assert {str(npy), str(npy.with_suffix(".json"))} <= files
    import exfiqa.readers

    with monkeypatch.context() as m:
        m.setattr(exfiqa.readers, "load_benchmark", lambda *a, **k: pytest.fail("read again"))
        assert set(map(str, input_files(narrow, {"adience": bench}))) == files  # a Study's benchmarks
    # one benchmark byte: that file's digest changes, no other
    img = sorted((world / "benchmarks" / "adience").rglob("*.jpg"))[0]
    img.write_bytes(img.read_bytes() + b"\0")
    changed = input_digests(cfg)
    assert {k for k in got if changed[k] != got[k]} == {str(img)}


# ------------------------------------------------------------------------------ exactly the dependent arrays

ARRAYS = [
    ("lfw", "exits", "T"), ("lfw", "exits", "C"), ("lfw", "emb", "arcface"), ("lfw", "baseline", "sharpness"),
    ("lfw", "baseline", "magface_norm"), ("adience", "exits", "T"), ("adience", "emb", "arcface"),
    ("adience", "baseline", "sharpness"),
]


class Run:
    """An extraction, then a fresh Study (a new process's view) that reads every array of ARRAYS,
    counting the extraction's passes over a dataset's images."""

    def __init__(self, config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import exfiqa.extract.stage as stage

        self.config = config
        self.passes: list[str] = []
        real = stage._run_shards

        def counted(run, models, dataset, *a, **k):
            self.passes.append(dataset)
            return real(run, models, dataset, *a, **k)

        monkeypatch.setattr(stage, "_run_shards", counted)

    def __call__(self) -> tuple[dict[tuple[str, str, str], np.ndarray], set[tuple[str, str, str]]]:
        cfg = load_config(self.config).select(["lfw", "adience"], ["arcface"], ["T", "C"])
        cfg = cfg.with_(baselines=["sharpness", "magface_norm"])
        paths = {key: array_path(arrays_root(cfg), *key) for key in ARRAYS}
        before = {key: _stamp(p) for key, p in paths.items()}
        self.passes.clear()
        extract(cfg, progress=False, log=lambda *_: None)
        study = Study(cfg, progress=False)
        get = {"exits": study.exit_scores, "emb": study.embeddings, "baseline": study.baseline_scores}
        values = {key: np.array(get[key[1]](key[0], key[2])) for key in ARRAYS}
        rewritten = {key for key, p in paths.items() if _stamp(p) != before[key]}
        # one pass over a dataset's images, whatever it recomputes there
        assert sorted(self.passes) == sorted({key[0] for key in rewritten})
        return values, rewritten


def _stamp(path: Path) -> tuple[int, int] | None:
    return (path.stat().st_ino, path.stat().st_mtime_ns) if path.exists() else None


def _perturb_checkpoint(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1 and "blocks.0" in k)
    state[key] = state[key] + 0.05
    torch.save(state, path)


def test_checkpoint_and_benchmark_changes_recompute_exactly_their_arrays(tiny_world, tiny_config, tmp_path, monkeypatch, caplog):
    world, path = _own_world(tiny_world, tiny_config, tmp_path)
    run = Run(path, monkeypatch)
    first, rewritten = run()
    assert rewritten == set(ARRAYS)
    again, rewritten = run()
    assert rewritten == set() and all(np.array_equal(again[k], first[k]) for k in ARRAYS)

    _perturb_checkpoint(world / "vitfiqa" / "vitfiqa_token.pt")  # quality model T
    with caplog.at_level(logging.WARNING, logger="exfiqa.store.arrays"):
        values, rewritten = run()
    assert rewritten == {("lfw", "exits", "T"), ("adience", "exits", "T")}
    assert not np.allclose(values[("lfw", "exits", "T")], first[("lfw", "exits", "T")])
    assert all(np.array_equal(values[k], first[k]) for k in set(ARRAYS) - rewritten)
    assert any("exits-T.npy: recomputing (checkpoint changed)" in r.message for r in caplog.records)

    img = sorted((world / "benchmarks" / "adience").rglob("*.jpg"))[0]
    img.write_bytes(img.read_bytes() + b"\0")  # one byte more (after the JPEG's end: decodes the same)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="exfiqa.store.arrays"):
        _, rewritten = run()
    assert rewritten == {k for k in ARRAYS if k[0] == "adience"}
    assert any("recomputing (benchmark content changed)" in r.message for r in caplog.records)
    assert run()[1] == set()


@pytest.mark.parametrize("module, dependent", [
    ("vitfiqa.py", {("lfw", "exits", "T"), ("lfw", "exits", "C"), ("adience", "exits", "T")}),
    ("iresnet.py", {("lfw", "emb", "arcface"), ("adience", "emb", "arcface"), ("lfw", "baseline", "magface_norm")}),
    ("baselines.py", {("lfw", "baseline", "sharpness"), ("adience", "baseline", "sharpness"), ("lfw", "baseline", "magface_norm")}),
    ("benchmark.py", set(ARRAYS)),
])
def test_a_source_change_recomputes_exactly_the_arrays_that_depend_on_it(
    tiny_world, tiny_config, tmp_path, monkeypatch, caplog, module, dependent
):
    _, path = _own_world(tiny_world, tiny_config, tmp_path)
    run = Run(path, monkeypatch)
    first, _ = run()
    copy = tmp_path / "src" / module  # the module's source, as the code digest sees it
    copy.parent.mkdir()
    real_files = arrays.code_files
    originals = {p.name: p for kind in arrays.KINDS for p in real_files(kind, "magface_norm")}
    shutil.copy(originals[module], copy)
    monkeypatch.setattr(arrays, "code_files", lambda kind, name: [copy if p.name == module else p for p in real_files(kind, name)])
    assert run()[1] == set()  # the same source elsewhere: the same code version
    copy.write_text(copy.read_text() + "\n# a change\n")
    with caplog.at_level(logging.WARNING, logger="exfiqa.store.arrays"):
        values, rewritten = run()
    assert rewritten == dependent
    warned = {key for key in ARRAYS for r in caplog.records
              if f"{key[0]}/{key[1]}-{key[2]}.npy: recomputing (code changed)" in r.message}
    assert warned == dependent
    assert all(np.array_equal(values[k], first[k]) for k in ARRAYS)  # same code in effect: same values
    assert run()[1] == set()
