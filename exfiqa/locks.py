"""Locks (POSIX ``flock``, released however the holder ends), owned temporary files (locked by their
writer, so unlocked ones are killed runs') and disk space reserved before a file is memory-mapped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class NoSpaceError(OSError):
    """No room on the disk for a file about to be written; the message names folder and sizes."""


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@contextlib.contextmanager
def run_lock(path: str | os.PathLike[str], what: str, log: Callable[[str], Any] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, waiting (``log`` told whom for) while another holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                holder = ""
                with contextlib.suppress(OSError):
                    holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
                log(f"{what}: {path} is held by {holder or 'another process'}; waiting for it to finish ...")
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            if log is not None:
                log(f"{what}: the other run finished after {time.monotonic() - t0:.0f} s; going on")
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _is_file_of(fd: int, path: str | os.PathLike[str]) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def discard_owned(fd: int, path: str | os.PathLike[str]) -> None:
    """Remove ``path`` if it is still the file of ``fd`` (an owned temporary file not renamed)."""
    with contextlib.suppress(FileNotFoundError):
        if _is_file_of(fd, path):
            os.unlink(path)


def create_owned(path: str | os.PathLike[str]) -> int:
    """Create ``path`` (absent, or a dead run's) and return a descriptor holding its lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # a dead run's (its pid reused): removed, else another run's
            if not _remove_if_dead(path) and path.exists():
                raise FileExistsError(f"{path} is being written by another process") from None
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits while a cleaner holds it, then checks it is still ours
        if _is_file_of(fd, path):
            return fd
        os.close(fd)  # removed by remove_dead_temps between our create and our lock: again


def remove_dead_temps(folder: str | os.PathLike[str], pattern: str) -> list[Path]:
    """Remove and return the files matching ``pattern`` under ``folder`` (recursively) that no process holds."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return [path for path in sorted(root.rglob(pattern)) if _remove_if_dead(path)]


def _remove_if_dead(path: Path) -> bool:
    """Remove ``path`` if no process holds its lock (True if removed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _is_file_of(fd, path):
            path.unlink()
            return True
    except OSError:  # held by a live writer, or gone meanwhile
        pass
    finally:
        os.close(fd)
    return False


def reserve(fd: int, size: int, path: str | os.PathLike[str]) -> None:
    """Allocate the first ``size`` bytes of ``fd`` (``path``); :class:`NoSpaceError` if there is no room."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # a file system without allocation: writes still report ENOSPC, mapped pages may not
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            folder = Path(path).parent
            try:
                free = f", {_human(shutil.disk_usage(folder).free)} free"
            except OSError:
                free = ""
            raise NoSpaceError(
                exc.errno, f"no space left in {folder}: {Path(path).name} needs {_human(size)}{free}; free some space "
                "and run again (finished parts are kept)"
            ) from None
        raise


def no_space_message(exc: OSError) -> str | None:
    """One line for an out-of-space error (``None`` for any other error)."""
    if isinstance(exc, NoSpaceError):
        return exc.strerror
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" in {Path(exc.filename).parent}" if exc.filename else ""
        return f"no space left{where} ({exc.strerror}); free some space and run again (finished parts are kept)"
    return None
