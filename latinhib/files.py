"""Files in DST that are whole or absent: atomic writes (a hidden temporary name in the
destination folder, then rename), byte-for-byte copies, output paths that mirror SRC, and
the cleanup of temporaries a killed job left. Rename is atomic on POSIX file systems, so a
process killed at any moment leaves no partial file under a final name.

A write that fails because the folder can take no more (a full disk or quota, a read-only
file system) raises :class:`DestinationUnusable` instead of the OSError: every later
write there would fail the same way, so the job stops at the first (``pipeline``) rather
than failing each remaining file with the same message.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from .links import temp_name

__all__ = [
    "DestinationUnusable",
    "UNUSABLE_ERRNOS",
    "atomic_write",
    "atomic_write_bytes",
    "copy_file",
    "mask_path",
    "output_path",
    "remove_stale_temps",
    "temp_path",
    "write_all",
]

TEMP_MARK = ".latinhib-"
#: errno values after which nothing more can be written to a folder: no space left, quota
#: exceeded, read-only file system (a disk that failed is often remounted read-only).
UNUSABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class DestinationUnusable(Exception):
    """Writing ``path`` failed with one of :data:`UNUSABLE_ERRNOS`. Not an OSError, so no
    handler of one file's write error takes it for that file's failure; the cause is
    chained (``__cause__``)."""

    def __init__(self, path: Path, error: OSError):
        self.path = Path(path)
        self.errno = error.errno
        self.strerror = error.strerror or os.strerror(error.errno)
        super().__init__(f"{self.path}: {self.strerror}")


def output_path(dst: Path, rel: str) -> Path:
    """``DST/<rel>``: same relative path, file name and extension as the input."""
    return dst / rel


def mask_path(folder: Path, rel: str) -> Path:
    """``DIR/<rel>.png`` (``cat/001.jpg`` -> ``cat/001.jpg.png``: no clash between
    ``a.jpg`` and ``a.png``)."""
    return folder / f"{rel}.png"


def temp_path(path: Path) -> Path:
    """A hidden temporary name next to ``path``: the process id (for stale-file cleanup),
    then the process's random token and a counter (``links.temp_name``), unique across
    threads and across machines that share DST (two hosts can run processes with the same
    pid; two writers of one temporary file would rename a mix of both)."""
    return path.with_name(temp_name(path.name))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``; the temporary file is removed
    if ``write`` fails, so only complete files ever carry a final name (and a full disk
    gets back the space the half-written file took). Raises :class:`DestinationUnusable`
    for a full disk or quota, or a read-only file system."""
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:  # never created, or the file system is read-only now
            pass
        if isinstance(exc, OSError) and exc.errno in UNUSABLE_ERRNOS:
            raise DestinationUnusable(path, exc) from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)

    atomic_write(path, write)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (a write may take only part of
    it). Every byte the job writes into a file goes through here or ``links.copy_data``
    (the tests simulate a full disk at these two places)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def remove_stale_temps(folder: Path) -> int:
    """Delete the temporary files (``.name.latinhib-<pid>-<token>.tmp``) that a killed job
    left under ``folder``; returns how many. They never carry a final name, so this is
    tidying, not correctness. Files of a live process (this one, or another latinhib still
    writing here) are left alone. Only for runs that own the whole folder (not shards)."""
    pattern = re.compile(r"^\..+" + re.escape(TEMP_MARK) + r"(\d+)-[0-9a-f]+\.tmp$")  # token: hex, or a thread id
    removed = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            match = pattern.match(name)
            if match is None or _alive(int(match.group(1))):
                continue
            try:
                os.unlink(os.path.join(dirpath, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def copy_file(src: Path, dst: Path) -> None:
    """Byte-for-byte copy, atomically (no decoding)."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
