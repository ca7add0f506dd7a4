"""Putting a file that is not enhanced into DST: a byte-for-byte copy, or a link to the
input (``output.unselected``: copy, hardlink, reflink, symlink), always atomically (a hidden
temporary name, then a rename), so a killed job never leaves a half-made file under a final
name.

- ``copy``: the bytes, copied by the kernel (``sendfile``); DST is independent of SRC.
- ``hardlink``: a second name of the input's inode; no bytes written. Editing the file in
  place in DST edits SRC's (they are one file); tools that write a new file and rename it
  over the old one (most editors, Pillow's ``save`` to a new name, ``latinhib`` itself)
  break the link and leave SRC alone. Only within one filesystem.
- ``reflink``: a copy-on-write clone (``FICLONE``; btrfs, XFS, bcachefs, APFS-like
  filesystems): as independent as a copy, and no bytes written until one side changes.
- ``symlink``: a relative symbolic link to the input: DST holds no data; moving or deleting
  SRC breaks it, and writing through it edits SRC.

When a link cannot be made (another filesystem, a filesystem without reflinks, a file
with too many links, a filesystem that refuses links), the file is copied instead and the
job says so once (:attr:`Placer.fallback_note`); the manifest records what was done for each file.

Per file this costs what the copy needs and no more: each output folder is created once,
and temporary names come from a counter, not from the random source (see
:func:`temp_name`).
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import os
import secrets
import shutil
import threading
from typing import Callable, Optional, Set

__all__ = ["MODES", "LINK_FAILURES", "Placer", "copy_data", "temp_name"]

#: ``output.unselected`` values.
MODES = ("copy", "hardlink", "reflink", "symlink")
#: ioctl FICLONE (linux/fs.h): make the destination descriptor a clone of the source's.
FICLONE = getattr(fcntl, "FICLONE", 0x40049409)
#: errno values meaning "this link cannot be made here": the file is copied instead.
LINK_FAILURES = frozenset({
    errno.EXDEV,  # another filesystem
    errno.EPERM,  # a filesystem that refuses hard links (or protected_hardlinks)
    errno.EMLINK,  # the input has too many links already
    errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS,  # no reflinks here
    errno.EACCES,  # FICLONE on an input opened read-only by another user, say
})
#: The temporary-name marker (writer.TEMP_MARK): ``.NAME.latinhib-PID-TOKEN.tmp``; the
#: stale-file cleanup reads the pid back.
TEMP_MARK = ".latinhib-"
#: One random token per process, then a counter: unique across threads (``next`` on an
#: ``itertools.count`` is atomic under the GIL) and across hosts sharing DST (two hosts may
#: run the same pid), without a call into the random source per file.
_TOKEN = secrets.token_hex(4)
_COUNTER = itertools.count()
_TOKEN_PID = os.getpid()


def temp_name(name: str) -> str:
    """A hidden temporary file name next to ``name``: pid, the process token, a counter."""
    global _TOKEN, _COUNTER, _TOKEN_PID
    pid = os.getpid()
    if pid != _TOKEN_PID:  # a forked child must not reuse its parent's names
        _TOKEN, _COUNTER, _TOKEN_PID = secrets.token_hex(4), itertools.count(), pid
    return f".{name}{TEMP_MARK}{pid}-{_TOKEN}{next(_COUNTER):x}.tmp"


def copy_data(src: str, tmp: str) -> None:
    """The bytes of ``src`` into a new file ``tmp`` (kernel-side ``sendfile``, falling back
    to ``shutil.copyfile`` where sendfile is refused). An ``OSError`` opening ``src`` names
    ``src``; one writing names ``tmp``."""
    source = os.open(src, os.O_RDONLY)
    try:
        size = os.fstat(source).st_size
        target = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            _send(source, target, size, tmp)
        finally:
            os.close(target)
    finally:
        os.close(source)


def _send(source: int, target: int, size: int, tmp: str) -> None:
    sent = 0
    try:
        while True:
            count = os.sendfile(target, source, None, max(size - sent, 1 << 20))
            if count == 0:
                return
            sent += count
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) and sent == 0:
            os.lseek(source, 0, os.SEEK_SET)
            with os.fdopen(os.dup(source), "rb") as reader, os.fdopen(os.dup(target), "wb") as writer:
                shutil.copyfileobj(reader, writer)
            return
        raise OSError(exc.errno, exc.strerror, tmp) from None  # a failed write names the output


class Placer:
    """Puts input files at their output paths, by copy or by link (``mode``); thread-safe.

    :meth:`place` returns what was done (``copy``, ``hardlink``, ``reflink``, ``symlink``).
    ``note`` is called once, the first time a link falls back to a copy."""

    def __init__(self, mode: str = "copy", note: Optional[Callable[[str], None]] = None):
        if mode not in MODES:
            raise ValueError(f"output.unselected: {mode!r} is not allowed; choose {', '.join(MODES)}")
        self.mode = mode
        self.note = note
        self.fallback_note: Optional[str] = None
        self._made: Set[str] = set()  # output folders that exist (made or seen)
        self._lock = threading.Lock()

    def place(self, src: str, dst: str) -> str:
        """``src`` at ``dst`` (whose folder is made if needed), atomically. An OSError about
        ``src`` (missing, unreadable) names ``src``; any other is about DST."""
        folder, name = os.path.split(dst)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        tmp = os.path.join(folder, temp_name(name))
        try:
            done = self._make(src, tmp)
            os.replace(tmp, dst)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if done == "hardlink" and os.path.lexists(tmp):
            # rename(2) between two names of one inode (DST was already this link) does
            # nothing and succeeds: the temporary name is left behind
            os.unlink(tmp)
        return done

    def _make(self, src: str, tmp: str) -> str:
        mode = self.mode
        if mode == "copy":
            copy_data(src, tmp)
            return "copy"
        try:
            if mode == "hardlink":
                os.link(src, tmp, follow_symlinks=True)
            elif mode == "symlink":
                target = os.path.abspath(src)
                os.stat(target)  # a missing input fails here, as a copy's would
                os.symlink(os.path.relpath(target, os.path.dirname(os.path.abspath(tmp))), tmp)
            else:
                _reflink(src, tmp)
            return mode
        except OSError as exc:
            # os.link names both paths whichever is at fault: the input is, when it is gone
            # or unreadable; otherwise it is DST (read-only, full)
            if not os.access(src, os.R_OK):
                raise OSError(exc.errno, exc.strerror, src) from None
            if exc.errno not in LINK_FAILURES:
                raise OSError(exc.errno, exc.strerror, tmp) from None
            self._fell_back(exc)
        copy_data(src, tmp)
        return "copy"

    def _fell_back(self, exc: OSError) -> None:
        with self._lock:
            if self.fallback_note is not None:
                return
            why = "another filesystem" if exc.errno == errno.EXDEV else (exc.strerror or errno.errorcode.get(exc.errno))
            self.fallback_note = (f"output.unselected: {self.mode} is not possible here ({why}): "
                                  f"such files are copied instead (the manifest's 'link' says which)")
        if self.note is not None:
            self.note(self.fallback_note)


def _reflink(src: str, tmp: str) -> None:
    """A copy-on-write clone of ``src`` at ``tmp`` (``FICLONE``); the empty ``tmp`` is
    removed by the caller when the filesystem refuses."""
    source = os.open(src, os.O_RDONLY)
    try:
        target = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            fcntl.ioctl(target, FICLONE, source)
        except OSError:
            os.close(target)
            os.unlink(tmp)
            raise
        os.close(target)
    finally:
        os.close(source)
