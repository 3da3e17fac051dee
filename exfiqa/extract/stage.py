"""Extraction: every per-sample array of a run from one read of each image.

Each uint8 batch feeds every model. Shards of ``shard_size`` samples (``torchrun`` rank r runs shards r, r + W,
...) go to ``<arrays_dir>/<dataset>/.shards/<kind>-<name>-<key>/*.npy`` by atomic rename, so a killed run
resumes to the same bytes; rank 0 merges them holding ``<dataset>/.extract.lock``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import importlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from numpy.typing import NDArray
from tqdm import tqdm

from exfiqa.config import Config, ConfigError, load_config
from exfiqa.extract.models import Models, run_device
from exfiqa.locks import (
    create_owned,
    discard_owned,
    no_space_message,
    remove_dead_temps,
    reserve,
    run_lock,
)
from exfiqa.models.vitfiqa import vit_input
from exfiqa.readers import READER_MODULES, Benchmark, load_benchmark
from exfiqa.store.arrays import BASELINE_FR, code_version, modules_version, wanted_arrays
from exfiqa.store.run import Run

__all__ = ["SHARDS", "DatasetReport", "ImageSet", "Job", "extract", "loader", "main", "parser", "plan",
           "reopen_benchmark", "run", "shard_ranges", "wanted_arrays"]

_log = logging.getLogger(__name__)

SHARDS = ".shards"
CROPS = "crops"


@dataclass(frozen=True)
class Job:
    """One per-sample array to compute: its place in the layout and its content key."""

    dataset: str
    kind: str
    name: str
    inputs: dict[str, Any]
    code: str

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.name}"

    @property
    def key(self) -> str:
        """16 hex digits of the SHA-256 of ``inputs`` and ``code``: the shard folder's suffix."""
        text = json.dumps({"inputs": self.inputs, "code": self.code}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class DatasetReport:
    """What :func:`extract` did for one dataset."""

    dataset: str
    n_samples: int
    computed: list[str] = field(default_factory=list)  # "kind-name" of the arrays written
    reused: list[str] = field(default_factory=list)  # arrays already current (or external)
    seconds: float = 0.0
    images_read: int = 0  # images decoded by this process's run (0 when all arrays were current)
    shards_total: int = 0
    shards_resumed: int = 0  # shards found finished by an earlier, interrupted run

    def line(self) -> str:
        if not self.computed:
            return f"{self.dataset}: all {len(self.reused)} arrays current, nothing read"
        rate = self.images_read / self.seconds if self.seconds > 0 else float("nan")
        return (f"{self.dataset}: {len(self.computed)} arrays from {self.images_read:,} image reads "
                f"({self.n_samples:,} samples, {self.shards_total} shards, {self.shards_resumed} resumed) "
                f"in {self.seconds:.1f} s ({rate:.1f} img/s)")


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each shard of ``n`` samples (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"shard_size must be >= 1, got {size}")
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def plan(run: Run, dataset: str) -> tuple[list[Job], list[str]]:
    """The arrays of ``dataset`` to compute (missing or stale; a stale one is logged with its reason)
    and the labels of those to reuse (external arrays are reused as they are)."""
    bench = run.benchmark(dataset)
    jobs, reused = [], []
    for kind, name in run.wanted(dataset):
        inputs = run.array_inputs(dataset, kind, name)
        code = code_version(kind, name)
        found, reason = run.arrays.current(bench, dataset, kind, name, inputs, code)
        if found is not None:
            reused.append(f"{kind}-{name}")
            continue
        if reason != "missing":
            _log.warning("%s: recomputing (%s)", run.arrays.path(dataset, kind, name), reason)
        jobs.append(Job(dataset, kind, name, inputs, code))
    return jobs, reused


class ImageSet(torch.utils.data.Dataset):
    """Sample i as ``(i, uint8 (112, 112, 3) tensor, sharpness or NaN, decoded)`` (``decoded`` False for a
    cached crop). Pickled without the benchmark, which each worker reopens."""

    def __init__(self, bench: Benchmark, reopen: Callable[[], Benchmark], sharpness: bool = False,
                 crops: dict[int, Path] | None = None, shard_size: int = 1) -> None:
        self.bench = bench
        self.reopen = reopen
        self.want_sharpness = sharpness
        self.crops = crops or {}  # shard start -> cached crops (.npy, uint8)
        self.shard_size = shard_size
        self._open: dict[int, NDArray[np.uint8]] = {}

    def __len__(self) -> int:
        return len(self.bench)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "bench": None, "_open": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, bench=state["reopen"]())

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, float, bool]:
        from exfiqa.models.baselines import sharpness

        i = int(i)
        start = (i // self.shard_size) * self.shard_size
        if start in self.crops:
            if start not in self._open:
                self._open[start] = np.load(self.crops[start], mmap_mode="r", allow_pickle=False)
            img, decoded = np.array(self._open[start][i - start]), False
        else:
            img, decoded = self.bench.image(i), True
        sharp = float(sharpness(img[None])[0]) if self.want_sharpness else float("nan")
        return i, torch.from_numpy(img), sharp, decoded


def _worker_init(_: int) -> None:
    """One torch thread per decoding worker. Not ``cv2.setNumThreads``: in a worker forked after
    OpenCV's thread pool started (face detection ran first) it hangs forever."""
    torch.set_num_threads(1)


def loader(images: ImageSet, batches: list[list[int]], workers: int, pin: bool) -> torch.utils.data.DataLoader:
    """``batches`` (lists of sample ids) in order, decoded by ``workers`` processes (fork where available)."""
    fork = "fork" in multiprocessing.get_all_start_methods()
    extra: dict[str, Any] = {"worker_init_fn": _worker_init, "prefetch_factor": 4,
                             "multiprocessing_context": "fork" if fork else None} if workers > 0 else {}
    return torch.utils.data.DataLoader(images, batch_sampler=batches, num_workers=workers, pin_memory=pin, **extra)


class _Exits:
    """One ViT-FIQA model: every exit's score and, from the same pass, ATTN-FIQA and ViTNT-FIQA."""

    def __init__(self, model: Any, exits: str | None, attn: str | None, vitnt: str | None) -> None:
        self.model, self.exits, self.attn, self.vitnt = model, exits, attn, vitnt
        self.labels = tuple(x for x in (exits, attn, vitnt) if x is not None)

    def run(self, x: torch.Tensor, first: int, want: set[str]) -> dict[str, NDArray[np.float32]]:
        out = self.model.forward_exits(vit_input(x), family=self.attn in want or self.vitnt in want)
        got: dict[str | None, Any] = {self.exits: out.scores, self.attn: out.attn_fiqa, self.vitnt: out.vitnt_fiqa}
        return {k: v.float().cpu().numpy() for k, v in got.items() if k in want}


class _FR:
    """One FR model: its embeddings, their norms and its baselines (MagFace norm from the same forward, SER-FIQ)."""

    def __init__(self, model: Any, emb: str | None, norms: str | None, magface: str | None,
                 serfiq: str | None, seed: int) -> None:
        self.model, self.emb, self.norms, self.magface, self.serfiq, self.seed = model, emb, norms, magface, serfiq, seed
        self.labels = tuple(x for x in (emb, norms, magface, serfiq) if x is not None)

    def run(self, x: torch.Tensor, first: int, want: set[str]) -> dict[str, NDArray[np.float32]]:
        out: dict[str, NDArray[np.float32]] = {}
        if want & {self.emb, self.norms, self.magface}:
            n = x.shape[0]
            y = self.model.forward_pair(x)  # [f(x); f(hflip x)], one forward
            if self.emb in want:
                e = torch.nn.functional.normalize(y, dim=1)
                out[self.emb] = torch.cat([e[:n], e[n:]], dim=1).cpu().numpy()
            norm = torch.linalg.vector_norm(y, dim=1)
            if self.norms in want:
                out[self.norms] = torch.stack([norm[:n], norm[n:]], dim=1).cpu().numpy()
            if self.magface in want:
                out[self.magface] = norm[:n].cpu().numpy()
        if self.serfiq in want:
            from exfiqa.models.baselines import serfiq_features

            bb = self.model.backbone
            feats = bb.forward_features(self.model.preprocess.tensor(x, memory_format=torch.channels_last))
            out[self.serfiq] = serfiq_features(self.model, feats, first, seed=self.seed).float().cpu().numpy()
        return out


def _heads(run: Run, models: Models, jobs: Sequence[Job]) -> list[_Exits | _FR]:
    """The forwards that produce ``jobs`` (FR baselines join their FR model's forward)."""
    by = {(j.kind, j.name): j.label for j in jobs}
    heads: list[_Exits | _FR] = []
    for q in dict.fromkeys(j.name for j in jobs if j.kind in ("exits", "attn", "vitnt")):
        heads.append(_Exits(models.quality_model(q).eval(), *(by.get((k, q)) for k in ("exits", "attn", "vitnt"))))
    fr_names = list(dict.fromkeys(j.name for j in jobs if j.kind in ("emb", "norms")))
    fr_names += [fr for b, fr in BASELINE_FR.items() if ("baseline", b) in by and fr not in fr_names]
    for fr in fr_names:
        norm = by.get(("baseline", "magface_norm")) if BASELINE_FR["magface_norm"] == fr else None
        serfiq = by.get(("baseline", "serfiq")) if BASELINE_FR["serfiq"] == fr else None
        heads.append(_FR(models.fr_model(fr), by.get(("emb", fr)), by.get(("norms", fr)), norm, serfiq, run.config.seed))
    return heads


def shard_dir(run: Run, job: Job) -> Path:
    return run.arrays.root / job.dataset / SHARDS / f"{job.label}-{job.key}"


def shard_name(start: int, stop: int) -> str:
    return f"{start:010d}-{stop:010d}.npy"


class _ShardWriter:
    """Rows of one shard's array, into a memory-mapped temporary ``.npy`` (owned by this process, its
    blocks reserved: a full disk is a ``NoSpaceError``, not a SIGBUS) renamed when full."""

    def __init__(self, target: Path, n_rows: int, dtype: Any = np.float32) -> None:
        self.target, self.n_rows, self.dtype = target, n_rows, dtype
        self.tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.npy")
        self.arr: np.memmap | None = None
        self.fd: int | None = None

    def put(self, offset: int, rows: NDArray[Any]) -> None:
        if self.arr is None:
            self.fd = create_owned(self.tmp)
            try:
                self.arr = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype,
                                                     shape=(self.n_rows, *rows.shape[1:]))
                reserve(self.fd, os.path.getsize(self.tmp), self.tmp)
            except BaseException:
                self.abort()
                raise
        self.arr[offset : offset + len(rows)] = rows

    def close(self) -> None:
        assert self.arr is not None and self.fd is not None, f"{self.target}: no rows written"
        self.arr.flush()
        self.arr = None
        os.fsync(self.fd)
        os.replace(self.tmp, self.target)
        os.close(self.fd)
        self.fd = None

    def abort(self) -> None:
        """Drop the unfinished shard (after an error): its temporary file goes."""
        self.arr = None
        if self.fd is not None:
            discard_owned(self.fd, self.tmp)
            os.close(self.fd)
            self.fd = None


def _crop_dir(run: Run, dataset: str) -> Path:
    """Where ``dataset``'s aligned crops are cached: keyed by content, decoding code and shard size."""
    text = json.dumps({"data": run.benchmark(dataset).fingerprint(run.digests), "code": modules_version(READER_MODULES),
                       "shard_size": run.config.shard_size}, sort_keys=True)
    return run.config.cache_dir / CROPS / f"{dataset}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _remove_dead_temps(run: Run, dataset: str, log: Callable[[str], Any]) -> None:
    """Remove the temporary shard, crop and merge files of ``dataset`` that killed runs left."""
    crops = [d for d in (run.config.cache_dir / CROPS).glob(f"{dataset}-*") if d.is_dir()]
    for folder in [run.arrays.root / dataset / SHARDS, *crops]:
        gone = remove_dead_temps(folder, ".*.tmp.npy")
        if gone:
            log(f"[extract] {dataset}: removed {len(gone)} temporary file(s) of killed runs in {folder}")
    # final arrays and manifests (io.atomic_path: ``.NAME.XXXX.tmp``) are written under the caller's lock only
    final = [p for p in (run.arrays.root / dataset).glob(".*.tmp") if p.is_file()]
    for p in final:
        p.unlink(missing_ok=True)
    if final:
        log(f"[extract] {dataset}: removed {len(final)} unfinished array file(s) of killed runs")


def _clean_stale_shards(run: Run, dataset: str, jobs: Sequence[Job]) -> None:
    """Remove shard folders of this dataset's arrays left under another key (inputs or code changed)."""
    keep, labels = {shard_dir(run, j).name for j in jobs}, {j.label for j in jobs}
    for d in (run.arrays.root / dataset / SHARDS).glob("*"):
        if d.is_dir() and d.name not in keep and d.name.rsplit("-", 1)[0] in labels:
            _log.info("%s: removing shards of an earlier run with other inputs or code", d)
            shutil.rmtree(d, ignore_errors=True)


def _run_shards(run: Run, models: Models, dataset: str, jobs: Sequence[Job], rank: int, world: int,
                report: DatasetReport, progress: bool) -> None:
    """Compute this rank's missing shards of ``jobs``."""
    cfg = run.config
    bench = run.benchmark(dataset)
    ranges = shard_ranges(len(bench), cfg.shard_size)
    report.shards_total = len(ranges)
    missing: dict[tuple[int, int], set[str]] = {}
    for s, e in ranges[rank::world]:
        todo = {j.label for j in jobs if not (shard_dir(run, j) / shard_name(s, e)).is_file()}
        if todo:
            missing[(s, e)] = todo
        if len(todo) < len(jobs):  # finished, for some arrays at least, by an interrupted run
            report.shards_resumed += 1
    if not missing:
        return
    crops = _crop_dir(run, dataset) if cfg.crop_cache else None
    cached = {s: crops / shard_name(s, e) for s, e in missing if crops and (crops / shard_name(s, e)).is_file()}
    sharp = any(j.label == "baseline-sharpness" for j in jobs)
    images = ImageSet(bench, functools.partial(reopen_benchmark, cfg, dataset), sharpness=sharp, crops=cached, shard_size=cfg.shard_size)
    starts = [(b, (s, e)) for s, e in missing for b in range(s, e, cfg.batch_size)]
    batches = [list(range(b, min(b + cfg.batch_size, e))) for b, (_, e) in starts]
    dev = run_device(cfg)
    heads = _heads(run, models, jobs)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    batches_in = loader(images, batches, cfg.workers or 0, pin=dev.type == "cuda")
    writers: dict[str, _ShardWriter] = {}  # label -> this shard's writer (CROPS: its crops)
    current: tuple[int, int] | None = None
    bar = tqdm(total=sum(e - s for s, e in missing), desc=f"extract {dataset}", unit="img", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, mininterval=1.0)

    try:
        with torch.inference_mode(), autocast:
            for k, (ids, imgs, sharps, decoded) in enumerate(batches_in):
                if starts[k][1] != current:
                    for w in writers.values():
                        w.close()
                    current = starts[k][1]
                    s, e = current
                    want = missing[current]
                    writers = {j.label: _ShardWriter(shard_dir(run, j) / shard_name(s, e), e - s)
                               for j in jobs if j.label in want}
                    if crops is not None and s not in cached:
                        writers[CROPS] = _ShardWriter(crops / shard_name(s, e), e - s, np.uint8)
                first = int(ids[0])
                offset = first - current[0]
                report.images_read += int(decoded.sum())
                x = imgs.to(dev, non_blocking=True)
                for head in heads:
                    if set(head.labels) & want:
                        for label, rows in head.run(x, first, want).items():
                            writers[label].put(offset, rows)
                if "baseline-sharpness" in want:
                    writers["baseline-sharpness"].put(offset, sharps.numpy().astype(np.float32))
                if CROPS in writers:
                    writers[CROPS].put(offset, imgs.numpy())
                bar.update(len(ids))
            for w in writers.values():
                w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()


def reopen_benchmark(cfg: Config, dataset: str) -> Benchmark:
    """``dataset`` of ``cfg`` opened anew (as a spawned worker does), the config's ``plugins`` imported first."""
    for module in cfg.plugins:
        importlib.import_module(module)
    spec = cfg.datasets[dataset]
    return load_benchmark(spec.kind, **spec.args)


def _merge(run: Run, jobs: Sequence[Job]) -> None:
    """Rank 0: every job's shards, in order, into the layout; then the shard folder goes."""
    for job in jobs:
        bench = run.benchmark(job.dataset)
        folder = shard_dir(run, job)
        ranges = shard_ranges(len(bench), run.config.shard_size)
        parts = [folder / shard_name(s, e) for s, e in ranges]
        absent = [p.name for p in parts if not p.is_file()]
        if absent:
            raise RuntimeError(f"{folder}: shards {absent[:3]} missing after every rank finished; run extract again")
        first = np.load(parts[0], mmap_mode="r", allow_pickle=False)
        merged = _ShardWriter(folder / "merged.npy", len(bench))  # written to .merged.<pid>.tmp.npy
        try:
            for (s, e), p in zip(ranges, parts, strict=True):
                part = np.load(p, mmap_mode="r", allow_pickle=False)
                if part.shape != (e - s, *first.shape[1:]):
                    raise RuntimeError(f"{p}: shape {part.shape}, expected {(e - s, *first.shape[1:])}; delete {folder}")
                merged.put(s, part)
            assert merged.arr is not None  # parts is not empty
            merged.arr.flush()
            run.arrays.write(bench, job.dataset, job.kind, job.name, merged.arr, producer="exfiqa",
                             inputs=job.inputs, code=job.code)
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            merged.abort()


def _extract(run: Run, models: Models, dataset: str, progress: bool, rank: int, world: int,
             log: Callable[[str], Any]) -> DatasetReport:
    """One dataset; rank 0 plans, cleans and merges holding the dataset's lock (a second extraction waits)."""
    dist = torch.distributed
    t0 = time.perf_counter()
    lock = nullcontext() if rank else run_lock(run.arrays.root / dataset / ".extract.lock", f"[extract] {dataset}", log)
    with lock:
        jobs, reused = [], []
        if rank == 0:
            _remove_dead_temps(run, dataset, log)
            jobs, reused = plan(run, dataset)
            _clean_stale_shards(run, dataset, jobs)
        if world > 1:
            box: list[Any] = [(jobs, reused)]
            dist.broadcast_object_list(box, src=0)
            jobs, reused = box[0]
        report = DatasetReport(dataset, len(run.benchmark(dataset)), [j.label for j in jobs], list(reused))
        if jobs:
            _run_shards(run, models, dataset, jobs, rank, world, report, progress)
            if world > 1:
                dist.barrier()
            if rank == 0:
                _merge(run, jobs)
            if world > 1:
                dist.barrier()
    report.seconds = time.perf_counter() - t0
    return report


def extract(cfg: Config, datasets: Sequence[str] | None = None, progress: bool = True,
            log: Callable[[str], Any] = print) -> list[DatasetReport]:
    """Compute every missing or stale array of ``cfg`` (``datasets``: a subset); one report per dataset.
    Under ``torchrun`` every rank calls this."""
    on = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if on else (0, 1)
    names = list(datasets) if datasets else list(cfg.datasets)
    unknown = [d for d in names if d not in cfg.datasets]
    if unknown:
        raise ConfigError(f"unknown dataset(s) {unknown}; this config has {sorted(cfg.datasets)}")
    if run_device(cfg).type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg.check_paths()  # extraction reads the checkpoints (the evaluation's Study does not check them)
    run = Run(cfg, progress=progress and rank == 0, persistent_digests=rank == 0)
    models = Models(cfg)
    reports = []
    for ds in names:
        report = _extract(run, models, ds, progress and rank == 0, rank, world, log)
        if rank == 0:
            log(f"[extract] {report.line()}")
        reports.append(report)
    return reports


def parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The options of ``exfiqa extract`` / ``python -m exfiqa.extract``."""
    ap = argparse.ArgumentParser(prog="exfiqa extract", description=__doc__.split("\n\n")[0], add_help=add_help, allow_abbrev=False)
    ap.add_argument("--config", required=True, help="the run config (YAML)")
    ap.add_argument("--datasets", nargs="*", default=None, help="a subset of the config's datasets")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default: config)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: config")
    ap.add_argument("--shard-size", type=int, default=None, help="samples per shard (default: config)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: config")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N, auto (default: config)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the parsed command line, as one process or as one ``torchrun`` rank (exit code)."""
    from exfiqa.io import CheckpointError
    from exfiqa.readers import DatasetFormatError
    from exfiqa.readers.images import ImageReadError
    from exfiqa.store.arrays import ArrayError

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        cfg = load_config(args.config).with_(workers=args.workers, precision=args.precision, shard_size=args.shard_size,
                                             batch_size=args.batch_size, device=args.device)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if args.workers is None and local_world > 1:  # unless the config file sets them, the node's cores are shared
            if "workers" not in yaml.safe_load(Path(args.config).read_text(encoding="utf-8")):
                cfg = cfg.with_(workers=max(1, cfg.workers // local_world))
        if cfg.demo and rank == 0:
            from exfiqa.demo import ensure_demo

            ensure_demo(cfg.data_root, cfg.demo, log=print)
        if world > 1:
            cuda = run_device(cfg).type == "cuda"
            if cuda:
                cfg = cfg.with_(device=f"cuda:{local}")
                torch.cuda.set_device(local)
            torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=12))
        try:
            extract(cfg, args.datasets, progress=not args.no_progress)
        finally:
            if world > 1 and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
    except (ConfigError, CheckpointError, DatasetFormatError, ArrayError, ImageReadError) as exc:
        # a config, checkpoint, benchmark or array file that cannot be used: one line naming it
        print(f"exfiqa extract: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        message = no_space_message(exc)
        if message is None:
            raise
        print(f"exfiqa extract: {message}", file=sys.stderr)
        return 1
    return 0
