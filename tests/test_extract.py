"""Extraction (exfiqa.extract.stage): one read per image feeds every model, resumable shards, torchrun.

Independent expectations: the arrays equal the models run directly on the benchmark's images
(exfiqa.models.inference.exit_scores, FRModel.embed, the baselines' own functions); a killed run
resumed, a 2-process torchrun (gloo) and a run with DataLoader workers give the same bytes as one
uninterrupted process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from exfiqa.config import load_config
from exfiqa.extract import Models, extract
from exfiqa.extract.stage import SHARDS, shard_ranges, wanted_arrays
from exfiqa.store.arrays import ArrayError, arrays_root
from exfiqa.study import Study

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ["lfw", "ijbc"]  # a .bin benchmark and the aligned IJB-C loose crops


def _config(tiny_config: Path, folder: Path, **overrides) -> Path:
    raw = yaml.safe_load(tiny_config.read_text())
    raw["datasets"] = {k: v for k, v in raw["datasets"].items() if k in DATASETS}
    raw.update({"cache_dir": str(folder / "cache"), "results_dir": str(folder / "results"), "workers": 0, **overrides})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _arrays(cfg_path: Path) -> dict[str, bytes]:
    """Every array of the run's layout: ``dataset/file`` -> bytes (manifests aside)."""
    root = arrays_root(load_config(cfg_path))
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/*.npy"))}


#: Every run compared byte for byte uses one torch thread: CPU float32 kernels split their work
#: by thread count, and torchrun gives each CPU rank one thread (OMP_NUM_THREADS=1).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cmd(cfg_path: Path, *extra: str, launcher: tuple[str, ...] = ()) -> list[str]:
    cmd = [*launcher] if launcher else [sys.executable, "-m"]
    return cmd + ["exfiqa.extract", "--config", str(cfg_path), "--no-progress", *extra]


def _run(cfg_path: Path, *extra: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(cfg_path, *extra, launcher=launcher), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tiny_config, tmp_path_factory) -> Path:
    """One uninterrupted extraction, one process (shards of 8, batches of 4)."""
    path = _config(tiny_config, tmp_path_factory.mktemp("ref"), shard_size=8, batch_size=4)
    done = _run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    return path


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_shard_ranges_cover_every_sample_once():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(8, 4) == [(0, 4), (4, 8)]
    assert shard_ranges(0, 4) == []
    with pytest.raises(ValueError, match="shard_size"):
        shard_ranges(3, 0)


def _serfiq_direct(model, batches, seed):
    """SER-FIQ of the batches in order, run directly: the backbone's features, then serfiq_features."""
    import torch

    from exfiqa.models.baselines import serfiq_features

    out, first = [], 0
    model.backbone.eval()
    with torch.inference_mode():
        for batch in batches:
            feats = model.backbone.forward_features(model.to_tensor(batch))
            out.append(serfiq_features(model, feats, first, seed=seed).double().cpu().numpy())
            first += len(batch)
    return np.concatenate(out)


def test_arrays_equal_the_models_run_directly(reference, one_thread):
    """Every array equals its model run on the decoded images (batches of 4 from sample 0: the
    shards of 8 hold whole batches, so the float32 kernels see the same shapes)."""
    import torch

    from exfiqa.models.baselines import sharpness
    from exfiqa.models.fr import magface_quality
    from exfiqa.models.inference import exit_scores
    from exfiqa.models.vitfiqa import to_tensor

    cfg = load_config(reference)
    study = Study(cfg, progress=False)
    models = Models(cfg)
    for ds in DATASETS:
        bench = study.benchmark(ds)
        imgs = np.concatenate([b for _, b in bench.iter_images(4)])
        batches = [imgs[i : i + 4] for i in range(0, len(imgs), 4)]
        for q in cfg.quality_models:
            direct = exit_scores(models.quality_model(q), batches, progress=False)
            np.testing.assert_array_equal(study.exit_scores(ds, q), direct)
            with torch.inference_mode():  # the family from the same pass
                outs = [models.quality_model(q).forward_exits(to_tensor(b), family=True) for b in batches]
            np.testing.assert_array_equal(study.array(ds, "attn", q), np.concatenate([o.attn_fiqa.numpy() for o in outs]))
            np.testing.assert_array_equal(study.array(ds, "vitnt", q), np.concatenate([o.vitnt_fiqa.numpy() for o in outs]))
        for fr in cfg.fr_models:
            model = models.fr_model(fr)
            np.testing.assert_array_equal(study.embeddings(ds, fr), model.embed(imgs, batch_size=4))
            if bench.level == "template" and cfg.template_protocol == "insightface":  # [|f(x)|, |f(flip x)|] of the same forward
                with torch.inference_mode():
                    ys = [model.forward_pair(torch.from_numpy(b)) for b in batches]
                norms = np.concatenate([torch.linalg.vector_norm(y, dim=1).view(2, -1).T.numpy() for y in ys])
                np.testing.assert_array_equal(study.array(ds, "norms", fr), norms)
        np.testing.assert_array_equal(study.baseline_scores(ds, "sharpness"), sharpness(imgs).astype(np.float32))
        # MagFace's norm comes from the [x, flip x] forward of the embeddings: the same values up
        # to the float32 kernels of a twice larger batch
        np.testing.assert_allclose(study.baseline_scores(ds, "magface_norm"),
                                   magface_quality(models.fr_model("magface"), imgs, 4), rtol=1e-5)
        np.testing.assert_allclose(study.baseline_scores(ds, "serfiq"),
                                   _serfiq_direct(models.fr_model("arcface"), batches, cfg.seed), rtol=1e-5, atol=1e-7)


def test_one_read_feeds_every_model_and_a_rerun_reads_nothing(tiny_config, tmp_path, monkeypatch):
    from exfiqa.readers import Benchmark

    reads: list[tuple[str, int]] = []
    original = Benchmark.image

    def counting(self, sample_id):
        reads.append((self.name, int(sample_id)))
        return original(self, sample_id)

    monkeypatch.setattr(Benchmark, "image", counting)
    cfg = load_config(_config(tiny_config, tmp_path))
    reports = extract(cfg, progress=False, log=lambda *_: None)
    n = {r.dataset: r.n_samples for r in reports}
    assert sorted(reads) == sorted((ds, i) for ds in DATASETS for i in range(n[ds]))  # each image once
    # 2 x 3 ViT-FIQA arrays, 4 FR embeddings, 3 baselines; no output norms under the default
    # template protocol (group), which never reads them
    assert all(len(r.computed) == len(wanted_arrays(cfg, "template" if r.dataset == "ijbc" else "sample"))
               == 13 for r in reports)
    assert not any(name.startswith("norms-") for r in reports for name in r.computed)
    assert len(wanted_arrays(cfg.with_(template_protocol="insightface"), "template")) == 17
    assert all(r.images_read == n[r.dataset] for r in reports)
    reads.clear()
    again = extract(cfg, progress=False, log=lambda *_: None)
    assert reads == [] and all(r.computed == [] and r.images_read == 0 for r in again)


def test_workers_give_the_same_bytes(reference, tmp_path, tiny_config):
    path = _config(tiny_config, tmp_path, shard_size=8, batch_size=4, workers=2)
    done = _run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _arrays(path) == _arrays(reference)


def test_the_decoding_dataset_pickles_for_spawned_workers(tiny_config):
    """A DataLoader started by ``spawn`` (no fork: Windows, macOS) pickles the dataset: it must
    travel without the benchmark and reopen it, giving the same items."""
    import functools
    import pickle

    from exfiqa.extract.stage import ImageSet, reopen_benchmark

    cfg = load_config(tiny_config)
    ds = next(iter(cfg.datasets))
    here = ImageSet(reopen_benchmark(cfg, ds), functools.partial(reopen_benchmark, cfg, ds), sharpness=True,
                    crops=None, shard_size=cfg.shard_size)
    there = pickle.loads(pickle.dumps(here))
    for k in (0, len(reopen_benchmark(cfg, ds)) - 1):
        for a, b in zip(here[k], there[k], strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigkill_mid_run_resumes_to_the_same_bytes(reference, tiny_config, tmp_path):
    """Kill the extraction (SIGKILL) as soon as its first shards are on disk, twice, then let it
    finish: the arrays equal the uninterrupted run's byte for byte and shards were reused."""
    path = _config(tiny_config, tmp_path, shard_size=4, batch_size=4)
    root = arrays_root(load_config(path))
    kills = 0
    for seen_before in (0, 20):  # in a shard's files (13-17 arrays per shard), then a few shards later
        proc = subprocess.Popen(_cmd(path), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if len(list(root.glob(f"*/{SHARDS}/*/[0-9]*-[0-9]*.npy"))) >= seen_before + 1:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.005)
        proc.wait()
    assert kills == 2, "the run finished before it could be killed"
    ref = _arrays(reference)
    assert len(_arrays(path)) < len(ref)  # killed before every array was merged
    done = _run(path)
    assert done.returncode == 0, done.stderr
    resumed = re.findall(r"shards, (\d+) resumed", done.stdout)
    assert len(resumed) == len(DATASETS) and sum(map(int, resumed)) >= 1, done.stdout
    got = _arrays(path)
    assert got.keys() == ref.keys()
    assert [k for k in ref if got[k] != ref[k]] == []
    assert not list(root.glob(f"*/{SHARDS}/*/*.npy"))  # merged shards are removed


def test_torchrun_two_processes_equal_one(reference, tiny_config, tmp_path):
    """torchrun --nproc_per_node=2 (gloo on CPU): ranks take alternate shards, rank 0 merges."""
    path = _config(tiny_config, tmp_path, shard_size=8, batch_size=4)
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m")
    done = _run(path, launcher=launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[extract]") == len(DATASETS)  # rank 0 reports, once per dataset
    assert _arrays(path) == _arrays(reference)


def test_bf16_is_part_of_the_key_and_close_to_fp32(reference, tiny_config, tmp_path):
    import torch

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no CPU bf16 autocast here")
    path = _config(tiny_config, tmp_path, shard_size=8, batch_size=4, precision="bf16")
    extract(load_config(path), progress=False, log=lambda *_: None)
    bf, fp = Study(load_config(path)), Study(load_config(reference))
    for ds in DATASETS:
        a, b = bf.exit_scores(ds, "T"), fp.exit_scores(ds, "T")
        assert not np.array_equal(a, b)  # computed in other arithmetic, not reused
        assert np.abs(a - b).max() < 0.05 * (np.abs(b).max() + 1e-6)
        ea, eb = bf.embeddings(ds, "arcface"), fp.embeddings(ds, "arcface")
        half = ea.shape[1] // 2
        cos = (ea[:, :half] * eb[:, :half]).sum(1)
        assert cos.min() > 0.99
    manifest = yaml.safe_load((arrays_root(load_config(path)) / "lfw" / "exits-T.json").read_text())
    assert manifest["inputs"]["precision"] == "bf16"
    # the fp32 arrays of the same folder are not these: asking for fp32 recomputes
    fp32 = Study(load_config(path).with_(precision="fp32"))
    with pytest.raises(ArrayError, match="precision changed"):
        fp32.exit_scores("lfw", "T")


def test_crop_cache_skips_decoding_and_keeps_the_bytes(reference, tiny_config, tmp_path):
    path = _config(tiny_config, tmp_path, shard_size=8, batch_size=4, crop_cache=True)
    done = _run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    reads = [int(n.replace(",", "")) for n in re.findall(r"arrays from ([\d,]+) image reads", done.stdout)]
    assert reads == [44, 40]  # ijbc, lfw (the config's datasets, sorted)
    crops = list((load_config(path).cache_dir / "crops").glob("*/[0-9]*.npy"))
    assert len(crops) == len(shard_ranges(44, 8)) + len(shard_ranges(40, 8))
    assert _arrays(path) == _arrays(reference)
    # another precision recomputes every array, from the cached crops: nothing is decoded
    second = extract(load_config(path).with_(precision="bf16"), progress=False, log=lambda *_: None)
    assert all(len(r.computed) == 12 and r.reused == ["baseline-sharpness"]
               and r.images_read == 0 for r in second)


def test_notebooks_study_reads_only_extracted_arrays(tiny_config, tmp_path):
    path = _config(tiny_config, tmp_path)
    study = Study(load_config(path), progress=False)
    with pytest.raises(ArrayError, match=r"missing: no folder .*exfiqa extract --config"):
        study.exit_scores("lfw", "T")


def test_cli_reports_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("precision: fp16\ndatasets: {}\n")
    done = _run(bad)
    assert done.returncode == 2 and "precision must be one of ['fp32', 'bf16']" in done.stderr


def test_insightface_templates_use_the_extracted_norms(reference):
    """template_protocol insightface: (f(x) + f(flip x)) * det_score from the stored unit halves
    and norms equals the computation from the raw outputs."""
    import torch

    from exfiqa.models.fr import template_embeddings

    cfg = load_config(reference).with_(template_protocol="insightface")
    # the default protocol (group) extracted no norms; insightface's adds them, nothing else
    reports = extract(cfg, progress=False, log=lambda *_: None)
    assert sorted(n for r in reports for n in r.computed) == sorted(f"norms-{f}" for f in cfg.fr_models)
    study = Study(cfg, progress=False)
    bench = study.benchmark("ijbc")
    model = Models(cfg).fr_model("arcface")
    imgs = np.concatenate([b for _, b in bench.iter_images(4)])
    with torch.inference_mode():
        y = torch.cat([model.forward_pair(torch.from_numpy(imgs[i : i + 4])).view(2, -1, model.embedding_size).sum(0)
                       for i in range(0, len(imgs), 4)]).double().numpy()
    det = bench.samples["det_score"].to_numpy(np.float64)
    _, expected = template_embeddings(y * det[:, None], bench.samples["template_id"].to_numpy(),
                                      bench.samples["media_id"].to_numpy())  # media mean, sum, L2
    feats, scale = study.features("ijbc", "arcface")
    assert scale == 1.0
    np.testing.assert_allclose(feats, expected, atol=2e-6)
    for f in cfg.fr_models:  # the module's reference is the default protocol's again
        npy = study.arrays.path("ijbc", "norms", f)
        npy.unlink()
        npy.with_suffix(".json").unlink()


def _temps(*folders: Path) -> list[Path]:
    return [p for f in folders if f.is_dir() for p in f.rglob(".*.tmp*")]


def test_two_extractions_at_once_both_finish_with_the_same_bytes(reference, tiny_config, tmp_path):
    """A second `exfiqa extract` of the same config while the first runs (crop cache on): it
    waits for the first, naming it, then finds the arrays current; both exit 0 without a
    traceback, the arrays are the uninterrupted run's, and no temporary file is left (the old
    code: a FileNotFoundError traceback and temporary shards left for good).

    The first run is paused (SIGSTOP) once it writes shards and resumed when the second says it
    waits, so the overlap does not depend on how fast either starts."""
    path = _config(tiny_config, tmp_path, shard_size=4, batch_size=4, crop_cache=True)
    cfg = load_config(path)
    root, crops = arrays_root(cfg), cfg.cache_dir / "crops"
    first = subprocess.Popen(_cmd(path), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(root.glob(f"*/{SHARDS}/*/[0-9]*.npy")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.01)
    assert first.poll() is None, "the first run finished before the second started"
    os.kill(first.pid, signal.SIGSTOP)
    said: list[str] = []
    try:
        second = subprocess.Popen(_cmd(path), cwd=ROOT, env={**ENV, "PYTHONUNBUFFERED": "1"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert second.stdout is not None
        for line in second.stdout:  # until it says whom it waits for (or ends)
            said.append(line)
            if "waiting for it to finish" in line:
                break
    finally:
        os.kill(first.pid, signal.SIGCONT)
    rest, second_err = second.communicate(timeout=600)
    second_out = "".join(said) + rest
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, (err[-2000:], second_err[-2000:])
    assert "Traceback" not in err + second_err
    assert re.search(rf"held by pid {first.pid} on \S+ since .*; waiting for it to finish", second_out), second_out
    assert len(re.findall(r"all \d+ arrays current, nothing read", second_out)) == len(DATASETS), second_out
    assert _arrays(path) == _arrays(reference)
    assert _temps(root, crops) == []


def test_temporary_files_of_a_killed_run_are_removed_by_the_next(reference, tiny_config, tmp_path):
    """SIGKILL while shard and crop files are being written leaves their temporary files; the next
    run removes them (their writer is dead: nobody holds their lock), finishes and leaves none.
    A temporary file whose writer lives is not touched."""
    from exfiqa.locks import remove_dead_temps

    path = _config(tiny_config, tmp_path, shard_size=4, batch_size=4, crop_cache=True)
    cfg = load_config(path)
    root, crops = arrays_root(cfg), cfg.cache_dir / "crops"
    proc = subprocess.Popen(_cmd(path), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if _temps(crops) and _temps(root):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    left = _temps(root, crops)
    assert proc.returncode == -signal.SIGKILL and left, "the run was not killed while writing"
    # a live writer's temporary file stays
    live = crops / "lfw-live" / ".0000000000-0000000004.999.tmp.npy"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time; from exfiqa.locks import create_owned; create_owned({str(live)!r}); "
         "print('held', flush=True); time.sleep(600)"],
        cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = _run(path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "temporary file(s) of killed runs" in done.stdout
        assert _temps(root, crops) == [live]
    finally:
        holder.kill()
        holder.wait()
    assert remove_dead_temps(crops, ".*.tmp.npy") == [live]
    assert _arrays(path) == _arrays(reference)


def test_no_space_for_a_shard_is_one_line_and_the_rerun_resumes(reference, tiny_config, tmp_path, monkeypatch, capsys, one_thread):
    """posix_fallocate failing with ENOSPC (a full disk) in the third shard (18 files a shard): one
    line naming the folder and the bytes needed, exit 1; the rerun resumes to the same bytes."""
    import errno

    from exfiqa.extract.stage import main

    path = _config(tiny_config, tmp_path, shard_size=4, batch_size=4, crop_cache=True)
    calls = []
    real = os.posix_fallocate

    def full(fd, offset, size):
        calls.append(size)
        if len(calls) > 40:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, offset, size)

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert main(["--config", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.fullmatch(r"exfiqa extract: no space left in (\S+): \S+ needs [\d.]+ k?B, .* free; free some space and run again.*\n", err), err
    folder = Path(err.split("no space left in ")[1].split(":")[0])
    assert folder.is_dir() and folder.is_relative_to(tmp_path)
    cfg = load_config(path)
    assert _temps(arrays_root(cfg), cfg.cache_dir / "crops") == []  # the unfinished shard's files went
    monkeypatch.setattr(os, "posix_fallocate", real)
    assert main(["--config", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert sum(map(int, re.findall(r"shards, (\d+) resumed", out))) >= 1, out
    assert _arrays(path) == _arrays(reference)


def test_a_full_tmpfs_is_one_line_not_sigbus(reference, tiny_config, tmp_path):
    """A real full disk: the crop cache on a 1 MB tmpfs (root only). The old code died of SIGBUS
    (exit -7/135, nothing on stderr); now exit 1 with one line, and after the space is freed
    (remount bigger) the rerun resumes to the same bytes."""
    path = _config(tiny_config, tmp_path, shard_size=8, batch_size=4, crop_cache=True)
    crops = load_config(path).cache_dir / "crops"
    crops.mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(crops)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        done = _run(path)
        assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"exfiqa extract: no space left in {crops}/"), done.stderr
        subprocess.run(["mount", "-o", "remount,size=20m", str(crops)], check=True)
        done = _run(path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert _arrays(path) == _arrays(reference)
    finally:
        subprocess.run(["umount", "-l", str(crops)], check=False)


def test_unfinished_final_array_files_of_a_killed_run_are_removed(reference, tiny_config, tmp_path):
    """A run killed while writing a final array through io.atomic_path leaves ``.NAME.XXXX.tmp``
    beside the arrays; the next extraction (holding the dataset's lock) removes it."""
    path = _config(tiny_config, tmp_path)
    assert _run(path).returncode == 0
    cfg = load_config(path)
    stale = arrays_root(cfg) / "lfw" / ".exits-T.npy.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 64)
    done = _run(path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not stale.exists() and "unfinished array file(s) of killed runs" in done.stdout
