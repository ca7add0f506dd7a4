"""Model passes as independent streams: on a CPU, each batch is split into one chunk per
stream, and every stream runs its chunks on its own thread, with its own copy of the
model and its own share of the cores (``torch.set_num_threads`` is per thread).

Why: on a CPU the model pass shares the cores with decoding, blurring and encoding. One
pass over all cores is an OpenMP team that meets at a barrier after every op; whenever
another thread holds one of its cores, the whole team waits (and spins). Streams of one
thread each never wait for each other, and the OS fills every gap with the other work;
even the bare model pass runs a little faster as two one-thread streams than as one of two
threads (docs/SPEED.md#streams).

When every stream has one thread (one per core), ``latinhib enhance`` also decodes and
writes each chunk's images on its stream (``executors._run_chunk``), so each core runs one
thread and nothing else competes for it.

On CUDA (or with one core) there is a single stream, run inline by the calling thread:
the GPU is one device and its work is already asynchronous.
"""
from __future__ import annotations

import copy
import io
import queue
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, List, Optional, Sequence, TypeVar

import torch

__all__ = ["ModelStreams", "clone", "stream_count"]

T = TypeVar("T")

#: A chunk below this many images wastes the model's per-op overhead on a CPU.
MIN_CHUNK = 4
#: More streams than this gain nothing and multiply the model copies held in memory.
MAX_STREAMS = 4


def stream_count(device: torch.device, threads: int, batch_size: int) -> int:
    """How many streams: one per core on a small CPU (at most ``MAX_STREAMS``, each chunk
    at least ``MIN_CHUNK`` images); 1 on CUDA or with one thread."""
    if device.type != "cpu" or threads < 2:
        return 1
    return max(1, min(threads, MAX_STREAMS, batch_size // MIN_CHUNK))


def clone(owner: Any) -> Any:
    """A deep copy of ``owner`` with modules of its own. TorchScript modules among its
    attributes are copied by a save/load round trip: ``copy.deepcopy`` gives a scripted
    model whose parameters are no longer leaves, so a frozen pass cannot freeze them."""
    memo = {}
    for value in getattr(owner, "__dict__", {}).values():
        if isinstance(value, torch.jit.ScriptModule):
            buffer = io.BytesIO()
            with warnings.catch_warnings():  # called from one thread, like models.py's load
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated"
                torch.jit.save(value, buffer)
                buffer.seek(0)
                memo[id(value)] = torch.jit.load(buffer, map_location="cpu")
    return copy.deepcopy(owner, memo)


class ModelStreams:
    """Runs ``fn(model_owner, chunk, ...)`` for chunks of a batch on ``count`` streams.

    ``owner`` is the object holding the model (a :class:`~latinhib.api.LateralInhibition`);
    streams other than the first get a copy (:func:`clone`), because a pass changes its
    model's state while it runs (hooks, eval mode, frozen parameters). Streams are CPU-only,
    so copies live on the CPU.
    """

    def __init__(self, owner: Any, device: torch.device, batch_size: int):
        threads = torch.get_num_threads()
        self.count = stream_count(device, threads, batch_size)
        self.threads_per_stream = max(1, threads // self.count)
        self._owner = owner
        self._pool: Optional[ThreadPoolExecutor] = None
        if self.count > 1:
            owners: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
            owners.put(owner)
            for _ in range(self.count - 1):
                owners.put(clone(owner))
            local = threading.local()
            self._local = local
            per_stream = self.threads_per_stream

            def start() -> None:  # once per thread: at most `count` threads, one owner each
                torch.set_num_threads(per_stream)
                local.owner = owners.get_nowait()

            self._pool = ThreadPoolExecutor(max_workers=self.count, thread_name_prefix="latinhib-model",
                                            initializer=start)

    def split(self, items: Sequence[T]) -> List[List[T]]:
        """``items`` in ``count`` contiguous chunks of near-equal size (none empty)."""
        n = len(items)
        parts = min(self.count, n)
        if parts <= 1:
            return [list(items)] if n else []
        bounds = [round(i * n / parts) for i in range(parts + 1)]
        return [list(items[a:b]) for a, b in zip(bounds, bounds[1:])]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(owner, *args)`` on a free stream; inline (already done) with one stream."""
        if self._pool is None:
            future: Future = Future()
            try:
                future.set_result(fn(self._owner, *args))
            except Exception as exc:  # noqa: BLE001 - handed over like a pool's future
                future.set_exception(exc)
            return future
        local = self._local
        return self._pool.submit(lambda: fn(local.owner, *args))

    def shutdown(self) -> None:
        """Cancel what has not started and wait for the passes in flight."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
