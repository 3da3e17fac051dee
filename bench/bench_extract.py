"""Extraction at scale, measured side by side in one run (issue "Extraction at IJB-C scale").

Prints, for the demo world's datasets (or any config):

1. image reads per dataset and wall/CPU seconds to compute every per-sample array: the old path
   (``Study`` of commit ``--old-rev``: one pass over the images per model and baseline) vs
   ``exfiqa.extract.stage`` (one pass feeding every model), each in a fresh cache, each in its own
   process with the same thread count;
2. decode + align throughput of IJB-C-like loose crops (250x250 JPEGs with 5 landmarks) through
   the extraction's DataLoader with 0 (in the main process), 1 and 2 worker processes;
3. kill-and-resume overhead: an extraction killed (SIGKILL) half-way, then resumed, vs one
   uninterrupted run.

Usage: ``python bench/bench_extract.py [--config configs/demo.yaml] [--datasets lfw ijbc]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

_COUNTING = r"""
import json, resource, sys, time
from exfiqa.config import load_config
from exfiqa.readers import Benchmark
reads = {}
real = Benchmark.image
def counting(self, i):
    reads[self.name] = reads.get(self.name, 0) + 1
    return real(self, i)
Benchmark.image = counting
cfg = load_config(sys.argv[1])
t0, c0 = time.perf_counter(), time.process_time()
"""
_RESULT = """
out = {"reads": reads, "wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
       "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
"""

# the old path: one pass over the images per array
_OLD = _COUNTING + r"""
from exfiqa.study import Study
study = Study(cfg, progress=False)
for ds in cfg.datasets:
    for q in cfg.quality_models: study.exit_scores(ds, q)
    for f in cfg.fr_models: study.embeddings(ds, f)
    for b in cfg.baselines: study.baseline_scores(ds, b)
""" + _RESULT + "print(json.dumps(out))\n"

# extraction: one pass per dataset (its own count of the reads, made in its workers too)
_NEW = _COUNTING + r"""
from exfiqa.extract.stage import extract
reports = extract(cfg, progress=False, log=lambda *_: None)
""" + _RESULT + """out["reported_reads"] = {r.dataset: r.images_read for r in reports}
print(json.dumps(out))
"""

_DECODE = r"""
import json, sys, time, torch
from exfiqa.config import load_config
from exfiqa.extract.stage import ImageSet, loader, reopen_benchmark
from exfiqa.study import Study
cfg = load_config(sys.argv[1]); ds = sys.argv[2]; workers = int(sys.argv[3]); rounds = int(sys.argv[4])
bench = Study(cfg, progress=False).benchmark(ds)
n = len(bench)
images = ImageSet(bench, lambda: reopen_benchmark(cfg, ds))
ids = [i % n for i in range(rounds * n)]  # the set read `rounds` times: enough work to amortise the workers' start
batches = [ids[s : s + 64] for s in range(0, len(ids), 64)]
t0 = time.perf_counter()
seen = sum(len(ids) for ids, *_ in loader(images, batches, workers, pin=False))
print(json.dumps({"images": seen, "wall": time.perf_counter() - t0}))
"""


def _write_config(base: dict, folder: Path, **extra) -> Path:
    raw = dict(base, cache_dir=str(folder / "cache"), results_dir=str(folder / "results"), **extra)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _json_run(code: str, *args: str, pythonpath: Path, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([PY, "-c", code, *args], cwd=pythonpath, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"failed ({pythonpath}):\n{done.stderr[-4000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["children_cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return out


def _old_tree(rev: str, into: Path) -> Path:
    """The package as of ``rev`` (before extraction existed), as a folder to put on PYTHONPATH."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "exfiqa", "configs"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _kill_resume(cfg_path: Path, threads: int, fraction: float, total_shards: int) -> tuple[float, float]:
    """Seconds until the kill (after ``fraction`` of the shard files exist) and of the resumed run."""
    from exfiqa.config import load_config
    from exfiqa.store.arrays import arrays_root

    root = arrays_root(load_config(cfg_path))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    cmd = [PY, "-m", "exfiqa.extract", "--config", str(cfg_path), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        if len(list(root.glob("*/.shards/*/[0-9]*-[0-9]*.npy"))) >= fraction * total_shards:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    killed = time.perf_counter() - t0
    t1 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return killed, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--datasets", nargs="*", default=["lfw", "ijbc"])
    ap.add_argument("--old-rev", default="6685937", help="the commit whose Study computed one array per pass")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every run (OMP_NUM_THREADS)")
    ap.add_argument("--old-tree", default=None, help="a folder holding the old exfiqa/ (instead of --old-rev)")
    ap.add_argument("--skip-old", action="store_true")
    ap.add_argument("--parts", nargs="*", type=int, default=[1, 2, 3], help="which of the three measurements")
    ap.add_argument("--decode-rounds", type=int, default=20, help="times the IJB-C-like set is read in part 2")
    args = ap.parse_args()
    base = yaml.safe_load(Path(args.config).read_text())
    base["data_root"] = str((Path(args.config).parent.parent / base["data_root"]).resolve()) if not Path(base["data_root"]).is_absolute() else base["data_root"]
    base["datasets"] = {k: v for k, v in base["datasets"].items() if k in args.datasets}
    base.pop("headline", None)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    avx = "avx512f" in open("/proc/cpuinfo").read()
    print(f"bench_extract: {cpu} ({os.cpu_count()} cores, avx512f: {'yes' if avx else 'no'}), {args.threads} torch threads")
    with tempfile.TemporaryDirectory(prefix="bench_extract.") as tmp:
        work = Path(tmp)
        new_cfg = _write_config(base, work / "new", workers=0)
        if 1 in args.parts:
            _part1(args, base, work, new_cfg)
        if 2 in args.parts and "ijbc" in base["datasets"]:
            _part2(args, new_cfg)
        if 3 in args.parts:
            _part3(args, base, work)


def _part1(args: argparse.Namespace, base: dict, work: Path, new_cfg: Path) -> None:
    """Reads and time: the old path vs extraction."""
    new = _json_run(_NEW, str(new_cfg), pythonpath=ROOT, threads=args.threads)
    rows = [("extract (1 pass, workers 0)", new)]
    new2_cfg = _write_config(base, work / "new2", workers=2)
    rows.append(("extract (1 pass, workers 2)", _json_run(_NEW, str(new2_cfg), pythonpath=ROOT, threads=args.threads)))
    if not args.skip_old:
        old_root = Path(args.old_tree) if args.old_tree else _old_tree(args.old_rev, work / "old")
        old_cfg = _write_config(base, work / "oldrun")
        rows.insert(0, (f"Study of {args.old_rev} (a pass per array)", _json_run(_OLD, str(old_cfg), pythonpath=old_root, threads=args.threads)))
    print("\n1. every per-sample array of", ", ".join(args.datasets), "(old: 9 arrays per dataset, 2 ViT-FIQA, 4 FR, 3 baselines; extract: 13, ATTN-FIQA and ViTNT-FIQA of each ViT-FIQA besides)")
    print(f"   {'path':40s} {'image reads':>24s} {'wall s':>8s} {'cpu s':>8s} {'peak MB':>8s}")
    for label, r in rows:
        counted = r.get("reported_reads") or r["reads"]  # workers decode in other processes: their own count
        reads = ", ".join(f"{k} {v:,}" for k, v in sorted(counted.items()))
        print(f"   {label:40s} {reads:>24s} {r['wall']:8.1f} {r['cpu'] + r['children_cpu']:8.1f} {r['peak_mb']:8.0f}")
    if not args.skip_old:
        print(f"   wall ratio old / extract (workers 0): {rows[0][1]['wall'] / rows[1][1]['wall']:.2f}")


def _part2(args: argparse.Namespace, new_cfg: Path) -> None:
    """Decode + align through the DataLoader."""
    print("\n2. decode + align of the IJB-C-like loose crops through the extraction's DataLoader (batches of 64)")
    rates = {}
    for w in (0, 1, 2):
        r = _json_run(_DECODE, str(new_cfg), "ijbc", str(w), str(args.decode_rounds), pythonpath=ROOT, threads=1)
        rates[w] = r["images"] / r["wall"]
        print(f"   workers {w}: {r['images']:,} images in {r['wall']:.2f} s = {rates[w]:.0f} img/s")
    print(f"   ratio 2 workers / 1 worker: {rates[2] / rates[1]:.2f}; 2 workers / in-process: {rates[2] / rates[0]:.2f}")


def _part3(args: argparse.Namespace, base: dict, work: Path) -> None:
    """Kill and resume."""
    kr_cfg = _write_config(base, work / "kill", workers=0, shard_size=16, batch_size=16)
    from exfiqa.config import load_config
    from exfiqa.extract.stage import shard_ranges, wanted_arrays
    from exfiqa.study import Study

    st = Study(load_config(kr_cfg), progress=False)
    total = sum(len(shard_ranges(len(st.benchmark(d)), 16)) * len(wanted_arrays(st.config, st.benchmark(d).level))
                for d in base["datasets"])
    full_cfg = _write_config(base, work / "full", workers=0, shard_size=16, batch_size=16)
    t0 = time.perf_counter()
    subprocess.run([PY, "-m", "exfiqa.extract", "--config", str(full_cfg), "--no-progress"], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    full = time.perf_counter() - t0
    killed, resumed = _kill_resume(kr_cfg, args.threads, 0.5, total)
    print(f"\n3. kill at half the shards (shards of 16) and resume: {killed:.1f} s + {resumed:.1f} s = "
          f"{killed + resumed:.1f} s vs {full:.1f} s uninterrupted (overhead {killed + resumed - full:+.1f} s, "
          f"{(killed + resumed) / full - 1:+.0%}; start-up of the second process included)")


if __name__ == "__main__":
    main()
