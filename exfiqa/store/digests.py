"""Content digests (SHA-256 hex, :func:`exfiqa.io.file_digest`) of the files a run reads, remembered
across runs in an sqlite index (``<cache_dir>/digests.sqlite``): one ``stat`` per unchanged file.

- Entries are keyed by the absolute path (symlinks not resolved) and the file's size, ``mtime_ns``,
  ``ctime_ns`` and inode; any change re-hashes it. A file modified less than :data:`RACY_SECONDS`
  before it was hashed is not recorded (as git treats "racily clean" entries).
- Writes are committed in batches, so a killed run keeps what it hashed; processes may share the
  index. A corrupt index is moved aside and rebuilt; one another process keeps locked is waited
  for up to :data:`LOCK_WAIT_S`, then this process goes on without it (a warning).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

from exfiqa.io import chunked, file_digest

INDEX_NAME = "digests.sqlite"  # inside ``cache_dir``
RACY_SECONDS = 2.0  # files modified this recently before hashing are hashed again next time
LOCK_NOTICE_S = 5.0  # seconds waited for a locked index before saying so
LOCK_WAIT_S = 60.0  # seconds waited in all; then this process works without the index

_SCHEMA_VERSION = 1
_PROGRESS_MIN_FILES = 200  # a progress bar when at least this many files need hashing
_BATCH = 5000  # rows per commit while hashing
_QUERY = 900  # paths per SELECT ... IN (...)
_LOOKUP = 16384  # paths looked up and compared at a time

_log = logging.getLogger(__name__)

Stat = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def index_key(path: str | os.PathLike[str]) -> str:
    """The index key: the absolute path (made absolute only when it is not, which is costly)."""
    text = os.fspath(path)
    return text if os.path.isabs(text) else os.path.abspath(text)


def _stat(path: str) -> Stat:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"input file not found: {path}") from None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


_now_ns = time.time_ns


class DigestIndex:
    """SHA-256 of files, re-hashed only when their stat changed. ``path``: the sqlite file (None: in
    memory only); ``progress``: a tqdm bar for many files; ``workers``: hashing threads."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, progress: bool = True, workers: int | None = None
    ) -> None:
        self.path = None if path is None else Path(path)
        self.progress = progress
        self.workers = workers or min(8, 2 * (os.cpu_count() or 1))
        self._memo: dict[str, tuple[Stat, str]] = {}  # the index itself when there is no file
        self._read_only = False

    def __repr__(self) -> str:
        return f"DigestIndex({str(self.path) if self.path else None!r})"

    def digest(self, path: str | os.PathLike[str]) -> str:
        """SHA-256 of one file (see :meth:`digests`)."""
        return self.digests([path])[0]

    def digests(self, paths: Sequence[str | os.PathLike[str]], desc: str = "hashing") -> list[str]:
        """SHA-256 of each file, in order (a missing file: FileNotFoundError naming it)."""
        keys = [index_key(p) for p in paths]
        out: list[str | None] = [None] * len(keys)
        todo: list[tuple[int, Stat]] = []
        for start in range(0, len(keys), _LOOKUP):  # bounded memory at any size
            chunk = keys[start : start + _LOOKUP]
            known = self._lookup(chunk)
            for i, key in enumerate(chunk, start):
                stat = _stat(key)
                hit = known.get(key)
                if hit is not None and hit[0] == stat:
                    out[i] = hit[1]
                else:
                    todo.append((i, stat))
        if todo:
            self._hash(keys, todo, out, desc)
        return cast("list[str]", out)

    def record(self, path: str | os.PathLike[str], digest: str) -> None:
        """Remember the digest of a file this process has just written and renamed into place (no
        racy-time rule: a later change comes with a new inode or size)."""
        key = index_key(path)
        self._store([(key, *_stat(key), digest)])

    # ------------------------------------------------------------------ internals

    def _hash(self, keys: list[str], todo: list[tuple[int, Stat]], out: list[str | None], desc: str) -> None:
        from tqdm.auto import tqdm

        show = self.progress and len(todo) >= _PROGRESS_MIN_FILES
        rows: list[tuple[str, int, int, int, int, str]] = []
        with tqdm(total=len(todo), desc=desc, unit="file", disable=not show, leave=False) as bar:
            for (i, before), digest in zip(todo, self._map_hash([keys[i] for i, _ in todo]), strict=True):
                out[i] = digest
                bar.update(1)
                after = _stat(keys[i])
                if after != before or _now_ns() - max(after[1], after[2]) < RACY_SECONDS * 1e9:
                    continue  # changed while read, or too recent to trust its stat next time
                rows.append((keys[i], *after, digest))
                if len(rows) >= _BATCH:
                    self._store(rows)
                    rows = []
        self._store(rows)

    def _map_hash(self, paths: list[str]) -> Iterator[str]:
        """:func:`exfiqa.io.file_digest` of each path in order, on worker threads (a bounded number in flight)."""
        if len(paths) < 4 or self.workers < 2:
            yield from (file_digest(p) for p in paths)
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for chunk in chunked(paths, 64 * self.workers):
                yield from pool.map(file_digest, chunk)

    def _connect(self) -> sqlite3.Connection | None:
        """The index database (created if absent); a corrupt file is moved aside and rebuilt."""
        if self.path is None:
            return None
        for attempt in (0, 1):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                con = self._open_waiting(self.path)
                if con is None:
                    return None
                if con.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                    with con:
                        con.execute("DROP TABLE IF EXISTS files")
                        con.execute(
                            "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                            " ctime_ns INTEGER, ino INTEGER, sha256 TEXT) WITHOUT ROWID"
                        )
                        con.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                return con
            except sqlite3.DatabaseError as exc:
                busy = _busy(exc)  # locked by another process: never a reason to discard it
                if not busy and not attempt and self.path.is_file():
                    aside = self.path.with_name(self.path.name + ".corrupt")
                    _log.warning("digest index %s is corrupt (%s); moved to %s and rebuilt", self.path, exc, aside)
                    os.replace(self.path, aside)
                    continue
                _log.warning("digest index %s is locked by another process (%s); this run goes on without it" if busy
                             else "digest index %s unusable (%s); digests are not remembered", self.path, exc)
            except OSError as exc:
                _log.warning("digest index %s cannot be opened (%s); digests are not remembered", self.path, exc)
            self.path = None
            return None
        return None

    def _open_waiting(self, path: Path) -> sqlite3.Connection | None:
        """A connection that has read the index, waiting while it is locked (None after :data:`LOCK_WAIT_S`)."""
        t0 = time.monotonic()
        noticed = False
        while True:
            left = LOCK_WAIT_S - (time.monotonic() - t0)
            con = sqlite3.connect(path, timeout=max(0.0, min(left, LOCK_NOTICE_S)))
            try:
                con.execute("PRAGMA user_version").fetchone()
                con.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}")  # later statements
                return con
            except sqlite3.DatabaseError as exc:
                con.close()
                if not _busy(exc):
                    raise
            if time.monotonic() - t0 >= LOCK_WAIT_S:
                _log.warning("digest index %s has been locked by another process for %.0f s; this run goes on "
                             "without it (its digests are not remembered)", path, LOCK_WAIT_S)
                self.path = None
                return None
            if not noticed:
                _log.warning("digest index %s is locked by another process; waiting up to %.0f s ...", path, LOCK_WAIT_S)
                noticed = True

    def _lookup(self, keys: list[str]) -> dict[str, tuple[Stat, str]]:
        memo = {k: self._memo[k] for k in keys if k in self._memo} if self._memo else {}
        con = self._connect()
        if con is None:
            return memo
        found: dict[str, tuple[Stat, str]] = {}
        try:
            for chunk in chunked(keys, _QUERY):
                marks = ",".join("?" * len(chunk))
                for row in con.execute(
                    f"SELECT path, size, mtime_ns, ctime_ns, ino, sha256 FROM files WHERE path IN ({marks})", chunk
                ):
                    found[row[0]] = ((row[1], row[2], row[3], row[4]), row[5])
        except sqlite3.DatabaseError as exc:
            _log.warning("digest index %s unreadable (%s); hashing again", self.path, exc)
        finally:
            con.close()
        return {**found, **memo}

    def _store(self, rows: list[tuple[str, int, int, int, int, str]]) -> None:
        if not rows:
            return
        con = None if self._read_only else self._connect()
        if con is not None:
            try:
                with con:
                    con.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)
                return
            except sqlite3.DatabaseError as exc:  # e.g. a read-only index: keep reading it, stop writing
                _log.warning("digest index %s not updated (%s); new digests are kept in memory only", self.path, exc)
                self._read_only = True
            finally:
                con.close()
        self._memo.update((r[0], ((r[1], r[2], r[3], r[4]), r[5])) for r in rows)


def _busy(exc: sqlite3.DatabaseError) -> bool:
    """True for sqlite's "database is locked" / "busy" errors (another process holds the file)."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


