"""How a job stops before its end, and what it says: Ctrl-C and SIGTERM as requests acted
on at the next safe point (:class:`StopRequest`), and the exceptions :func:`pipeline.run`
raises once the work in flight is safely written (:class:`Stopped`: :class:`Interrupted`,
:class:`DestinationFull`), each with the one line the CLI prints.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
from pathlib import Path
from typing import Any, Dict, Optional

from .config import Config
from .data import display
from .recorder import Summary
from .files import DestinationUnusable

__all__ = ["DestinationFull", "Interrupted", "STOP_SIGNALS", "StopRequest", "Stopped", "folder_of", "rank_of"]


class Stopped(Exception):
    """The job stopped before its end. What was written is complete and in the manifest;
    rerunning the same command finishes the job. ``summary``: how far it got;
    ``where``: "rank R of W" under torchrun, else empty."""

    exit_code = 1

    def __init__(self, summary: Summary, where: str = ""):
        super().__init__(self.__class__.__name__)
        self.summary = summary
        self.where = where

    def line(self) -> str:
        """The one line that says why, how far the job got and what to do."""
        raise NotImplementedError

    def _progress(self) -> str:
        total = self.summary.total
        return f"after {self.summary.done} of {total} files" if total else "before any file was done"


class Interrupted(Stopped):
    """Ctrl-C (SIGINT) or SIGTERM: stopped at the next safe point. Exit code 128 + signal."""

    @property
    def exit_code(self) -> int:
        return self.summary.exit_code

    def line(self) -> str:
        signum = self.summary.signum
        how = "interrupted" if signum in (None, signal.SIGINT) else f"stopped by {signal.Signals(signum).name}"
        where = f"{self.where}: " if self.where else ""
        return f"{where}{how} {self._progress()}; rerun the same command to resume"


class DestinationFull(Stopped):
    """DST, or the masks or heat-maps folder, can take no more writes (full disk or quota,
    read-only file system): nothing else could succeed, so the job stopped at the first
    such write. Exit code 1."""

    HINTS = {"ENOSPC": "free some space", "EDQUOT": "free some space or raise the quota",
             "EROFS": "make it writable"}

    def __init__(self, summary: Summary, error: DestinationUnusable, folder: str, where: str = ""):
        super().__init__(summary, where)
        self.error = error
        self.folder = folder
        summary.stopped = errno.errorcode.get(error.errno, str(error.errno))

    def line(self) -> str:
        hint = self.HINTS.get(errno.errorcode.get(self.error.errno, ""), "fix it")
        where = f"{self.where}: " if self.where else ""
        return (f"{where}{self.folder}: {self.error.strerror} (writing {display(str(self.error.path))!r}); "
                f"stopped {self._progress()}; {hint}, then rerun the same command to finish")



#: The signals that stop a job cleanly: Ctrl-C, and SIGTERM (what ``kill``, SLURM at a
#: time limit or preemption, ``docker stop`` and torchrun's shutdown of its workers send).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM as a request: the first one is acted on at the next safe
    point (after the model pass in flight, between batches, where no DataLoader iterator is
    half built), where :meth:`check` raises KeyboardInterrupt; a second one interrupts at
    once (the writes in flight still finish: each is atomic). ``signum`` is the first
    signal. Only installed from the main thread (``signal`` allows no other); the previous
    handlers are put back by :meth:`restore`."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.ignoring = False
        self.previous: Dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.requested and not self.ignoring:
            self.ignoring = True  # one KeyboardInterrupt per job: a third signal must not cut the stop short
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    def ignore(self) -> None:
        """From here on a signal only marks the request (the cleanup must run to its end)."""
        self.ignoring = True

    def check(self) -> None:
        if self.requested:
            # From the raise on, the job is stopping: a second signal arriving before the
            # cleanup has called ignore() must not raise again outside the job's handler.
            self.ignoring = True
            raise KeyboardInterrupt

    def restore(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous = {}


def folder_of(path: Path, dst: Path, config: Config) -> str:
    """The folder a stop message names for a write to ``path``: the masks or heat-maps
    folder when ``path`` is inside one, else DST."""
    target = os.path.abspath(path)
    for option, folder in (("--save-masks", config.output.save_masks), ("--save-heatmaps", config.output.save_heatmaps)):
        if folder and os.path.commonpath([target, os.path.abspath(folder)]) == os.path.abspath(folder):
            return f"{option} folder {display(folder)!r}"
    return f"DST {display(str(dst))!r}"


def rank_of(ctx: Any) -> str:
    """"rank R of W" under torchrun (each rank says how far its own share got), else ""."""
    return f"rank {ctx.rank} of {ctx.world_size}" if ctx.distributed else ""
