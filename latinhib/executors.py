"""How the selected files are taken through decoding, the model pass and steps 6-8, and
how the copies are interleaved with them: two executors behind one interface
(:meth:`Executor.run`, :meth:`Executor.stop_decoding`, :meth:`Executor.shutdown`), both
handing every file's future to the recorder in the order they start.

- :class:`WholeCoreStreams`: a CPU job with one stream per core (``streams.py``: one
  thread each) runs each chunk of a batch start to end on its stream: decode, model pass,
  blur at full resolution, encode, write (:func:`_run_chunk`). Every core runs one thread
  and never switches to another.
- :class:`Pipelined`: otherwise (CUDA, or a CPU whose streams have several threads each)
  decoding threads (DataLoader worker processes on CUDA) decode the next batches while
  the model runs, and writer threads blur, encode and write.

Unselected files are copied by a small pool, interleaved with the batches. Queues are
bounded, so memory does not grow with the number of images.
"""
from __future__ import annotations

import collections
import itertools
import os
import signal
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from .api import Importance, LateralInhibition
from .config import Config
from .data import Decoded, DecodeError, Item, NotEnhanceable, decode, decode_on_device
from .codec import resolve as resolve_codec
from .copying import CHUNK, copy_chunk, slots
from .finishing import Finisher, undecodable
from .labels import Labels
from .models import LoadedModel
from .plan import Plan
from .recorder import PassFailed, Recorder
from .stopping import STOP_SIGNALS
from .streams import ModelStreams

__all__ = ["Executor", "Pipelined", "WholeCoreStreams", "batch_importance", "make_executor"]


class _Decoding(Dataset):
    """Decodes selected files (in decoding threads on a CPU, DataLoader worker processes
    on CUDA); a failure is returned, not raised."""

    def __init__(self, items: Sequence[Item], loaded: LoadedModel, threads: bool = False, codec: str = "pillow",
                 on_device: bool = False):
        self.items = items
        self.codec = codec  # runtime.codec, resolved (codec.resolve)
        self.on_device = on_device  # plain JPEGs are left as bytes for decode_on_device
        self.input_size = loaded.input_size
        self.mean = loaded.mean
        self.std = loaded.std
        self.threads = threads  # in threads the job's main thread silences bomb warnings

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[int, Optional[Decoded], Optional[DecodeError]]:
        try:
            item = self.items[index]
            decoded = decode(item.image_source(), self.input_size, self.mean, self.std, quiet_bombs=not self.threads,
                             codec=self.codec, on_device=self.on_device)
            return index, decoded, None
        except DecodeError as exc:
            return index, None, exc
        except MemoryError:
            return index, None, DecodeError("out of memory while decoding")


def _ignore_stop_signals(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group, and SLURM sends SIGTERM to every process of
    a job step: decoding workers ignore both (no traceback per worker, no worker dying
    under the DataLoader) and the main process alone stops the job; the DataLoader then
    ends them.

    A main process interrupted while it fetches a decoded tensor's file descriptor resets
    the connection to the worker's ``multiprocessing.resource_sharer`` thread, which then
    prints a ConnectionResetError traceback through ``sys.excepthook``: in a worker, such
    errors only mean that the main process has stopped (and says so itself), so they are
    not printed."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    default_hook = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if not issubclass(kind, (ConnectionError, EOFError)):
            default_hook(kind, value, traceback)

    sys.excepthook = hook


def _as_list(batch):
    return batch


def _decode_on_device(device: torch.device, codec: str) -> bool:
    """Whether plain JPEGs are decoded by the job's device, a batch at a time (CUDA with the
    torchvision codec: nvJPEG), the workers only reading and checking each file: on a GPU
    server the CPU's decoding would be the ceiling (docs/SPEED.md#codec). On a CPU the
    decoding threads decode, in parallel with the model streams."""
    return device.type == "cuda" and codec == "torchvision"


def _decode_in_threads(device: torch.device) -> bool:
    """CPU jobs decode in threads, CUDA jobs in DataLoader worker processes (plenty of
    cores there, and no GIL shared with the writers)."""
    return device.type == "cpu"


def _decode_pool(workers: int) -> Optional[ThreadPoolExecutor]:
    """Decoding threads for a CPU job (None: decode in the calling thread).

    On a CPU the model needs every cycle: worker processes would cost each image a copy
    of its pixels into shared memory and a file descriptor passed back
    (docs/SPEED.md#decode-pool). Pillow and torch release the GIL while they decode and
    resize, so threads decode in parallel."""
    if workers <= 0:
        return None
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="latinhib-decode", initializer=_one_torch_thread)


def _decode_ahead(dataset: "_Decoding", batch_size: int, pool: Optional[ThreadPoolExecutor]) -> Iterator[list]:
    """Batches of ``dataset`` items in order, decoded on ``pool`` up to two batches ahead
    of the one handed out (in the calling thread when ``pool`` is None)."""
    n = len(dataset)
    if pool is None:
        for start in range(0, n, batch_size):
            yield [dataset[i] for i in range(start, min(start + batch_size, n))]
        return
    ahead: Deque[Future] = collections.deque()
    submitted = 0
    while True:
        while submitted < n and len(ahead) < 2 * batch_size:
            ahead.append(pool.submit(dataset.__getitem__, submitted))
            submitted += 1
        if not ahead:
            return
        yield [ahead.popleft().result() for _ in range(min(batch_size, len(ahead)))]


def _one_torch_thread() -> None:
    """Writer and decoding threads run torch on one thread each (OpenMP's thread count is
    per calling thread, so the model streams keep theirs). Left at the default,
    2-4 writers each fork an OpenMP team per element-wise op of the blur and fight the
    model for the cores, which made the blur dozens of times slower
    (docs/SPEED.md#decode-pool)."""
    torch.set_num_threads(1)


def _whole_core_streams(device: torch.device, streams: ModelStreams) -> bool:
    """A CPU job whose streams have one thread each (one per core, at most
    ``MAX_STREAMS``): each chunk runs start to end on its stream (:func:`_run_chunk`).

    Why: with separate decoding and writer threads, 2 cores ran 2 model threads plus up
    to 6 others, switching between them. One thread per core doing everything in turn
    keeps the cores busy with no switching and holds fewer images in memory
    (docs/SPEED.md#whole-core-streams)."""
    return device.type == "cpu" and streams.threads_per_stream == 1


def _run_chunk(enhancer: LateralInhibition, chunk: Sequence[int], futures: Sequence[Future], dataset: "_Decoding",
               finisher: Finisher, labels, device: torch.device) -> None:
    """One chunk of ``dataset`` on one stream: decode, model pass, steps 6-8, encode and
    write each file. ``futures[k]`` gets file ``chunk[k]``'s manifest entry (or its
    error); files whose future the job cancelled before the chunk started are skipped."""
    live = [(i, f) for i, f in zip(chunk, futures) if f.set_running_or_notify_cancel()]
    items = dataset.items
    decoded_ok = []
    try:
        for i, future in live:
            _, decoded, err = dataset[i]
            if decoded is not None:
                decoded_ok.append((i, decoded, future))
            else:
                _settle(future, undecodable, items[i], err, finisher.sink)
        if decoded_ok:
            imp = batch_importance(enhancer, [(i, d) for i, d, _ in decoded_ok], items, labels, device)
    except BaseException as exc:  # the model pass (or decoding itself) raised: the job stops
        for _, future in live:  # no future is left for the job to wait on
            if not future.done():
                future.set_exception(PassFailed(exc))
        return
    for position, (i, decoded, future) in enumerate(decoded_ok):
        _settle(future, finisher, items[i], decoded, imp, position)


def _settle(future: Future, fn: Callable[..., Dict[str, Any]], *args: Any) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - one file's failure, recorded with its name
        future.set_exception(exc)


def batch_importance(enhancer: LateralInhibition, decoded_ok, items, labels, device) -> Importance:
    """Steps 1-5 on a batch of decoded images (``decoded_ok``: (index into ``items``,
    decoded) pairs), with their labels (``labels.Labels``) as targets when given; shared
    with ``preview`` so both feed the model the same way."""
    inputs = torch.stack([d.model_input for _, d in decoded_ok])
    if device.type == "cuda" and inputs.device.type == "cpu":  # decoded on the device: there already
        inputs = inputs.pin_memory()
    inputs = inputs.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    targets = None
    if labels is not None:
        targets = torch.tensor([labels.of(items[i]) for i, _ in decoded_ok], device=device)
    return enhancer.importance(inputs, targets)




class Executor:
    """Takes a plan's files through the work and hands each one's future to the recorder.

    In flight at most: two batches of images (they hold pixels), and their copies on top
    (they hold nothing). Were the copies counted against the images, each batch's copies
    would make the main thread wait for that batch's own images before handing out the
    next one, and a stream would sit idle (r = 0.3 on 1600 files: 2.77 -> 3.21 x r = 1).
    """

    def __init__(self, plan: Plan, recorder: Recorder, finisher: Finisher, streams: ModelStreams, *,
                 loaded: LoadedModel, labels: Optional[Labels], config: Config, device: torch.device,
                 check: Callable[[], None]):
        self.plan, self.recorder, self.finisher, self.streams = plan, recorder, finisher, streams
        self.loaded, self.labels, self.device, self.check = loaded, labels, device, check
        self.batch_size = config.runtime.batch_size
        self.codec = resolve_codec(config.runtime.codec, device)
        self.workers = config.runtime.workers
        # On a GPU the CPU side (PIL encode, which releases the GIL) is the bottleneck: give
        # the writers half the cores; on a CPU the model needs the cores, so 2-4 threads.
        cores = os.cpu_count() or 2
        threads = max(2, min(16, cores // 2)) if device.type == "cuda" else max(2, min(4, cores))
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="latinhib-writer",
                                       initializer=_one_torch_thread)
        batches = -(-len(plan.to_enhance) // self.batch_size)
        self.copies_per_batch = -(-len(plan.to_copy) // batches) if batches else 0
        self.limit = max(2 * self.batch_size, 8)
        # copies in flight: two batches' worth, and at least a few chunks for the pool's threads
        self.files_limit = self.limit + max(2 * self.copies_per_batch, 4 * CHUNK)
        self._uncopied = iter(plan.to_copy)

    def run(self) -> None:
        """Every file of the plan, then wait until all are recorded."""
        if self.plan.to_enhance:
            self.enhance()
        self.copy(len(self.plan.to_copy))
        self.recorder.drain(0)

    def enhance(self) -> None:
        raise NotImplementedError

    def copy(self, count: int) -> None:
        """The next ``count`` unselected files, on the writer pool, ``copying.CHUNK`` to a
        task (``copying.py``: one task per file cost as much as the copy)."""
        while count > 0:
            chunk = list(itertools.islice(self._uncopied, min(count, CHUNK)))
            if not chunk:
                return
            count -= len(chunk)
            future = self.pool.submit(copy_chunk, self.finisher.sink.copy, chunk)
            for item, slot in zip(chunk, slots(future, len(chunk))):
                self.recorder.add(item, slot, False, copy=True)
            self.drain()
            self.check()

    def drain(self) -> None:
        self.recorder.drain(self.limit, self.files_limit)

    def stop_decoding(self) -> None:
        """First step of every way out: no more decoding starts."""

    def shutdown(self) -> None:
        """Model passes in flight end, and the files they started; then the writers."""
        self.streams.shutdown()
        self.pool.shutdown(wait=True)


class WholeCoreStreams(Executor):
    """Every core has its own one-thread stream: each chunk is decoded, passed through the
    model and finished on its stream, start to end (:func:`_run_chunk`)."""

    def enhance(self) -> None:
        to_enhance = self.plan.to_enhance
        dataset = _Decoding(to_enhance, self.loaded, threads=True, codec=self.codec)
        for start in range(0, len(to_enhance), self.batch_size):
            self.check()
            batch = range(start, min(start + self.batch_size, len(to_enhance)))
            for chunk in self.streams.split(batch):
                futures = [Future() for _ in chunk]
                for i, future in zip(chunk, futures):
                    self.recorder.add(to_enhance[i], future, True)
                self.streams.submit(_run_chunk, chunk, futures, dataset, self.finisher, self.labels, self.device)
            self.copy(self.copies_per_batch)
            self.drain()  # one batch queued behind the one running: no core waits


class Pipelined(Executor):
    """Decoding ahead (threads on a CPU, DataLoader workers on CUDA), model passes on the
    streams, steps 6-8 and writing on the writer pool."""

    decoders: Optional[ThreadPoolExecutor] = None

    def enhance(self) -> None:
        to_enhance = self.plan.to_enhance
        passes: Deque[Tuple[List[Tuple[int, Decoded]], Future]] = collections.deque()
        dataset = _Decoding(to_enhance, self.loaded, threads=_decode_in_threads(self.device), codec=self.codec,
                            on_device=_decode_on_device(self.device, self.codec))
        for batch in self._loader(dataset):
            self.check()  # Ctrl-C: the batch just decoded is discarded, none is half done
            if dataset.on_device:  # one batched call on the device (one code path: the device differs)
                batch = decode_on_device(batch, dataset.input_size, dataset.mean, dataset.std, self.device)
            self._undecoded(batch)
            decoded_ok = [(i, d) for i, d, err in batch if d is not None]
            for chunk in self.streams.split(decoded_ok):
                passes.append((chunk, self.streams.submit(batch_importance, chunk, to_enhance, self.labels, self.device)))
            self.copy(self.copies_per_batch)  # copies overlap the model passes instead of delaying the first
            while len(passes) > self.streams.count:  # each stream keeps one chunk queued behind the one it runs
                self._finish(*passes.popleft())
        while passes:
            self._finish(*passes.popleft())

    def _loader(self, dataset: _Decoding) -> Iterable[list]:
        if dataset.threads:
            self.decoders = _decode_pool(self.workers)
            return _decode_ahead(dataset, self.batch_size, self.decoders)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.workers,
            collate_fn=_as_list,
            prefetch_factor=2 if self.workers else None,
            worker_init_fn=_ignore_stop_signals if self.workers else None,
        )

    def _undecoded(self, batch: list) -> None:
        """The files of ``batch`` that did not decode: an animation is copied on the pool;
        a failure is recorded at once, so --strict stops before the next batch."""
        to_enhance = self.plan.to_enhance
        failed = []
        for i, _, err in (b for b in batch if b[1] is None):
            if isinstance(err, NotEnhanceable):
                self.recorder.add(to_enhance[i], self.pool.submit(undecodable, to_enhance[i], err, self.finisher.sink),
                                  True)
            else:
                failed.append((undecodable(to_enhance[i], err, self.finisher.sink), to_enhance[i]))
        if failed:
            self.recorder.record_all(failed)

    def _finish(self, chunk: List[Tuple[int, Decoded]], model_pass: Future) -> None:
        imp = model_pass.result()
        to_enhance = self.plan.to_enhance
        for position, (i, decoded) in enumerate(chunk):
            self.recorder.add(to_enhance[i], self.pool.submit(self.finisher, to_enhance[i], decoded, imp, position), True)
        self.drain()

    def stop_decoding(self) -> None:
        if self.decoders is not None:
            self.decoders.shutdown(wait=True, cancel_futures=True)


def make_executor(plan: Plan, recorder: Recorder, finisher: Finisher, enhancer: LateralInhibition, **options) -> Executor:
    """The executor for this job: whole-core streams on a CPU with one thread per stream,
    else the pipelined one."""
    device = options["device"]
    streams = ModelStreams(enhancer, device, options["config"].runtime.batch_size)
    kind = WholeCoreStreams if _whole_core_streams(device, streams) else Pipelined
    return kind(plan, recorder, finisher, streams, **options)
