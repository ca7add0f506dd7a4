"""The advisory lock that keeps two jobs from writing into one DST at once.

POSIX record locks (``fcntl``) on byte ranges of one file, ``DST/latinhib-job.lock``.
The kernel drops a process's locks when it ends, however it ends (``kill -9`` included),
so a killed job never leaves DST locked; the file it may leave behind means nothing then,
and the next job reuses it. The last job to let go removes it.

What each job holds, and so what conflicts:

- byte ``JOB``: an unsharded job (and ``latinhib merge``) holds it exclusively, a shard job
  (``--shard I/N``, or a torchrun rank, which is shard R/W) shared. An unsharded job
  conflicts with every other job; shard jobs share it.
- byte ``COUNT_BASE + N``: shard jobs that split DST into N hold it shared; a shard job
  starts only when no other count is held. Shards of two different splits overlap (shard
  0/3 and shard 0/4 share a quarter of their files), and would redo each other's work.
- byte ``SHARD_BASE + N(N-1)/2 + I``: shard I/N holds it exclusively, so the same shard
  runs once.
- byte ``MUTEX``: held, waiting for it, for the microseconds of an acquisition or release,
  so that the checks, the holder records and the removal of the file never interleave.

The file holds one JSON line per holder (pid, host, shard, start time), only to name the
holder when a job is refused. Record locks belong to the process: the file must never be
opened a second time by a process holding it (closing any descriptor of a file drops all
of the process's locks on it), which is why only this module touches it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # no torch import at run time (``distributed`` imports it): merge starts fast
    from .distributed import Part

__all__ = ["LOCK_NAME", "DstBusy", "DstLock"]

LOCK_NAME = "latinhib-job.lock"
JOB, MUTEX = 0, 1
COUNT_BASE = 2
SHARD_BASE = 1 << 32
#: errno values meaning "this file system has no record locks" (some FUSE and NFS mounts).
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


class DstBusy(Exception):
    """Another job holds DST (or this shard of it): the message names DST and the holder."""


class DstLock:
    """The lock of one job on ``dst``: exclusive when ``shard`` is None, else shared with
    the other shards of the same split. :meth:`acquire` raises :class:`DstBusy`;
    :meth:`release` is safe to call more than once."""

    def __init__(self, dst: Path, shard: Optional["Part"], *, log: Callable[[str], None] = print,
                 what: str = "latinhib job"):
        self.dst = Path(dst)
        self.path = self.dst / LOCK_NAME
        self.shard = None if shard is None or shard.count == 1 else shard
        self.log = log
        self.what = what
        self._fd: Optional[int] = None
        self._unsupported = False

    @property
    def held(self) -> bool:
        return self._fd is not None or self._unsupported

    def acquire(self) -> None:
        """Take the lock (DST must exist), or raise :class:`DstBusy` naming the holder.
        A no-op when already held."""
        if self.held:
            return
        fd = self._open_locked_mutex()
        if fd is None:
            return
        try:
            conflict = self._take(fd)
            if conflict is not None:
                kind, holders = conflict
                raise DstBusy(self._busy_message(kind, holders))
            self._write_records(fd, self._live_records(fd) + [self._own_record()])
        except BaseException:
            os.close(fd)  # drops every lock this process took on the file
            raise
        _unlock(fd, MUTEX)
        self._fd = fd

    def release(self) -> None:
        """Let go; the last holder removes the file."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, MUTEX)
            mine = self._own_record()
            others = [r for r in _read_records(fd) if (r.get("pid"), r.get("host")) != (mine["pid"], mine["host"])]
            if _try(fd, fcntl.LOCK_EX, JOB):  # nobody else holds JOB (shared or not): the last one
                os.unlink(self.path)
            else:
                self._write_records(fd, others)
        except OSError:
            pass  # the kernel drops the locks with the descriptor anyway
        finally:
            os.close(fd)

    # -- acquisition ------------------------------------------------------------------

    def _open_locked_mutex(self) -> Optional[int]:
        """The lock file, open, with MUTEX held; None where the file system has no locks.
        Retries when the file was removed (by a last holder) while this process waited."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise DstBusy(f"DST {str(self.dst)!r}: cannot create {LOCK_NAME}: {exc.strerror or exc}") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX, 1, MUTEX)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in NO_LOCKS:
                    raise
                self.log(f"latinhib: warning: DST {str(self.dst)!r} does not support file locks "
                         f"({exc.strerror}); a second job into it will not be refused")
                self._unsupported = True
                return None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def _take(self, fd: int) -> Optional[Tuple[str, List[Dict]]]:
        """Take this job's locks (MUTEX held); on a conflict return (kind, its holders)."""
        records = _read_records(fd)
        if self.shard is None:
            if not _try(fd, fcntl.LOCK_EX, JOB):
                alone = [r for r in records if r.get("shard") is None]
                return ("job", alone) if alone else ("shards", [r for r in records if r.get("shard")])
            return None
        if not _try(fd, fcntl.LOCK_SH, JOB):
            return "job", [r for r in records if r.get("shard") is None]
        count = self.shard.count
        if not (_try_range(fd, COUNT_BASE, COUNT_BASE + count) and _try_range(fd, COUNT_BASE + count + 1, SHARD_BASE)):
            return "count", [r for r in records if r.get("shard") and not r["shard"].endswith(f"/{count}")]
        if not _try(fd, fcntl.LOCK_SH, COUNT_BASE + count):
            return "count", []
        if not _try(fd, fcntl.LOCK_EX, _shard_byte(self.shard.index, self.shard.count)):
            return "shard", [r for r in records if r.get("shard") == str(self.shard)]
        return None

    def _live_records(self, fd: int) -> List[Dict]:
        """The records of holders still alive (this job's locks just taken, MUTEX held):
        none if this job is unsharded; else those of other shards whose byte is held."""
        if self.shard is None:
            return []
        live = []
        for record in _read_records(fd):
            try:
                index, count = (int(v) for v in str(record.get("shard")).split("/"))
            except ValueError:
                continue  # an unsharded job's record: it cannot be alive next to this one
            if not 0 <= index < count or (index, count) == (self.shard.index, self.shard.count):
                continue  # garbage, or a dead job of this very shard (this one holds its byte now)
            byte = _shard_byte(index, count)
            if _try(fd, fcntl.LOCK_EX, byte):
                _unlock(fd, byte)  # nobody held it: a dead job's record
            else:
                live.append(record)
        return live

    def _own_record(self) -> Dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "shard": None if self.shard is None else str(self.shard),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _write_records(self, fd: int, records: List[Dict]) -> None:
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError:
            pass  # a full disk: the lock holds without its records (they only name holders)

    def _busy_message(self, kind: str, holders: List[Dict]) -> str:
        dst = repr(str(self.dst))
        if kind == "shard":
            head = f"shard {self.shard} of DST {dst} is in use by another latinhib job"
        elif kind == "count":
            head = f"DST {dst} is in use by latinhib shard jobs of another split"
        elif kind == "shards":
            head = f"DST {dst} is in use by latinhib shard jobs"
        else:
            head = f"DST {dst} is in use by another latinhib job"
        named = "; ".join(_describe(r) for r in holders[:3]) or "holder unknown"
        if len(holders) > 3:
            named += f"; and {len(holders) - 3} more"
        if kind == "count":
            advice = "shard jobs on one DST must use the same N in --shard I/N; wait for them to finish"
        elif self.what != "latinhib job":
            advice = f"run {self.what} when they have finished"
        else:
            advice = f"wait for {'them' if kind == 'shards' else 'it'} to finish, or choose another DST"
        return f"{head} ({named}); {advice}"


def _describe(record: Dict) -> str:
    shard = f"shard {record['shard']}: " if record.get("shard") else ""
    return f"{shard}pid {record.get('pid')} on {record.get('host')}, since {record.get('since')}"


def _shard_byte(index: int, count: int) -> int:
    return SHARD_BASE + count * (count - 1) // 2 + index


def _try(fd: int, mode: int, byte: int) -> bool:
    try:
        fcntl.lockf(fd, mode | fcntl.LOCK_NB, 1, byte)
        return True
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise


def _try_range(fd: int, start: int, stop: int) -> bool:
    """Whether nobody else holds any byte in [start, stop): a probe taken and dropped
    (MUTEX is held, so no other probe runs meanwhile)."""
    if stop <= start:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, stop - start, start)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    fcntl.lockf(fd, fcntl.LOCK_UN, stop - start, start)
    return True


def _unlock(fd: int, byte: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, byte)


def _read_records(fd: int) -> List[Dict]:
    try:
        data = os.pread(fd, max(os.fstat(fd).st_size, 0), 0)
    except OSError:
        return []
    records = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
