"""Files that are not enhanced, copied (or linked) in chunks: one writer-pool task per chunk
of files, not one per file.

Why: a copy of a small file is ~20-50 us of system calls, and handing one file to a thread
pool and waiting for its future costs as much again (a lock, a condition, a queue, a wake-up
per file; measured on 2 cores: ~90 us per file for ``submit`` + ``result`` alone, most of
latinhib's 370 us per copied file). A chunk pays that once for :data:`CHUNK` files.

The recorder still sees one future per file, in order (:class:`Slot`: a view of the
chunk's future), so the manifest, the summary, ``--strict`` and the stop on a full disk
treat a chunk's files exactly as files copied one by one.
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Sequence

__all__ = ["CHUNK", "NotAttempted", "Slot", "copy_chunk", "slots"]

#: Files per copying task: large enough to make the pool's cost per file small, small
#: enough that a chunk interleaved with a model pass does not hold the recorder back.
CHUNK = 64


class NotAttempted(Exception):
    """A file after one whose write found DST unusable (full, read-only) in the same chunk:
    not tried; redone by the next run."""


def copy_chunk(copy: Callable[[Any], Dict[str, Any]], items: Sequence[Any]) -> List[Any]:
    """``copy(item)`` for each item: its manifest entry, or the exception it raised. After a
    write that found DST unusable, the rest are :class:`NotAttempted`."""
    from .files import DestinationUnusable

    results: List[Any] = []
    for k, item in enumerate(items):
        try:
            results.append(copy(item))
        except DestinationUnusable as exc:
            results.append(exc)
            results.extend(NotAttempted() for _ in items[k + 1:])
            break
        except Exception as exc:  # noqa: BLE001 - one file's failure, recorded with its name
            results.append(exc)
    return results


class Slot:
    """File ``index`` of a chunk's future, with the calls the recorder makes on a future."""

    __slots__ = ("chunk", "index")

    def __init__(self, chunk: Future, index: int):
        self.chunk = chunk
        self.index = index

    def done(self) -> bool:
        return self.chunk.done()

    def cancel(self) -> bool:
        return self.chunk.cancel()

    def cancelled(self) -> bool:
        return self.chunk.cancelled()

    def result(self, timeout=None) -> Dict[str, Any]:
        value = self.chunk.result(timeout)[self.index]  # raises the chunk's own error (CancelledError...)
        if isinstance(value, BaseException):
            raise value
        return value


def slots(chunk: Future, count: int) -> List[Slot]:
    return [Slot(chunk, k) for k in range(count)]


