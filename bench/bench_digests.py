"""The persistent digest index at IJB-C size: first run (hash every file) vs rerun (one stat each).

Builds a flat folder of 469,375 hard links to a small JPEG (IJB-C's ``loose_crop/`` count; hard
links cost no disk; one identical copy per 60,000 links, ext4's limit per inode), then times
:meth:`exfiqa.store.digests.DigestIndex.digests` three times, each with a fresh index object on the
same sqlite file (what a new process sees): the first run hashes every file, the others only
``stat`` each file and look it up. Removes the tree afterwards.

    python bench/bench_digests.py [--files 469375] [--dir /tmp/exfiqa-digest-bench]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from exfiqa.store.digests import RACY_SECONDS, DigestIndex

_LINKS_PER_INODE = 60_000  # ext4 allows 65,000 links per inode


def _jpeg() -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((112, 112))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=469_375)
    ap.add_argument("--dir", default="/tmp/exfiqa-digest-bench")
    ap.add_argument("--keep", action="store_true", help="keep the tree (default: remove it)")
    args = ap.parse_args(argv)
    root = Path(args.dir)
    if root.exists():
        shutil.rmtree(root)
    crops = root / "loose_crop"
    crops.mkdir(parents=True)
    try:
        data = _jpeg()
        t0 = time.perf_counter()
        paths = [crops / f"{k}.jpg" for k in range(1, args.files + 1)]
        for k, p in enumerate(paths):
            if k % _LINKS_PER_INODE == 0:
                source = root / f"source{k // _LINKS_PER_INODE}.jpg"
                source.write_bytes(data)
            os.link(source, p)
        print(f"tree: {args.files:,} hard links to {len(data):,}-byte copies of one JPEG in "
              f"{time.perf_counter() - t0:.1f} s")
        time.sleep(RACY_SECONDS + 0.5)  # linking changes the shared inode's ctime: let it settle
        db = root / "digests.sqlite"
        for label in ("first run (hash every file)", "second run (stat only)", "third run (stat only)"):
            index = DigestIndex(db, progress=sys.stderr.isatty())
            t0 = time.perf_counter()
            digests = index.digests(paths)
            dt = time.perf_counter() - t0
            assert len(set(digests)) == 1 and len(digests) == args.files
            print(f"{label}: {dt:.2f} s ({dt / args.files * 1e6:.1f} us/file)")
        print(f"index file: {db.stat().st_size / 2**20:.0f} MiB; peak RSS {_rss_mb():.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
