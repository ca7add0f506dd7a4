"""The job's bookkeeping, in order: every file handed to the executor is recorded here
once its work is done, oldest first (the manifest, the summary's counts, one line per
failure, the progress bar, the sink's commit, ``--strict``), and at the end the manifest
is compacted to one line per input in listing order.

Why in order: the manifest is flushed batch by batch, so a killed job's manifest holds
a prefix of the work; the tar sink assembles an output shard once all its files are
recorded; and the number of files in flight is bounded by waiting for the oldest one.
"""
from __future__ import annotations

import collections
import signal
import sys
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .data import Item, display
from .files import DestinationUnusable
from .manifest import Manifest, entry, pack

if TYPE_CHECKING:  # sinks.py imports this module (entry)
    from .sinks import Sink

__all__ = ["PassFailed", "Recorder", "StrictStop", "Summary", "describe", "progress_bar"]


class StrictStop(Exception):
    """``--strict`` and a file failed."""


class PassFailed(Exception):
    """A model pass raised: carried by each of its files' futures, re-raised by the job."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


@dataclass
class Summary:
    """Counts per status for the files this run handled, plus those already done."""

    dst: str
    total: int = 0
    enhanced: int = 0
    copied: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0
    already_done: int = 0
    seconds: float = 0.0
    target: Optional[str] = None
    device: str = "cpu"
    interrupted: bool = False
    #: the signal that interrupted the job (SIGINT: Ctrl-C; SIGTERM: kill, SLURM, docker stop)
    signum: Optional[int] = None
    #: why the job stopped before its end: the signal's name (SIGINT, SIGTERM) or the
    #: errno's (ENOSPC, EDQUOT, EROFS); None when it ran to its end
    stopped: Optional[str] = None
    failures: List[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted:  # the shell's convention: 128 + the signal (130 Ctrl-C, 143 SIGTERM)
            return 128 + (self.signum or signal.SIGINT)
        return 1 if self.failed else 0

    @property
    def done(self) -> int:
        """Files whose output is in DST (this run's and earlier runs')."""
        return self.enhanced + self.copied + self.unchanged + self.already_done

    def as_dict(self) -> Dict[str, Any]:
        keys = ("dst", "total", "enhanced", "copied", "unchanged", "skipped", "failed", "already_done",
                "seconds", "target", "device", "interrupted", "stopped")
        return {k: getattr(self, k) for k in keys}

    def line(self) -> str:
        rate = (self.enhanced + self.copied + self.unchanged) / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.total} files: {self.enhanced} enhanced, {self.copied} copied, {self.unchanged} unchanged, "
            f"{self.skipped} skipped, {self.failed} failed, {self.already_done} already done "
            f"({self.seconds:.1f} s, {rate:.1f} files/s) -> {display(self.dst)}"
        )


def describe(exc: BaseException) -> str:
    """One file's failure in one line."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot write: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def progress_bar(total: int, quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="img", dynamic_ncols=True, leave=True)


class Recorder:
    """Files in flight (``pending``: item, future, whether selected, oldest first) and
    what happens when each one is done.

    ``entries`` maps every manifest path to its latest entry (earlier runs' included);
    ``sink.commit(item, entry)`` is called for every recorded file, in order.
    """

    def __init__(self, summary: Summary, manifest: Manifest, entries: Dict[str, Union[str, Dict[str, Any]]],
                 sink: Sink, *, strict: bool, bar: Any, log: Callable[[str], None],
                 on_output: Optional[Callable[[Path], None]], check: Callable[[], None],
                 compact: Optional[Path] = None):
        self.summary = summary
        self.manifest = manifest
        self.entries = entries
        self.sink = sink
        self.strict = strict
        self.bar = bar
        self.log = log
        self.on_output = on_output
        self.check = check  # raises KeyboardInterrupt once a stop was asked for
        self.pending: Deque[Tuple[Item, Future, bool]] = collections.deque()
        self.copies: set = set()  # the futures in `pending` that are byte-for-byte copies
        self.compact = compact  # the manifest ``entries`` came from, if it held them as they are

    def add(self, item: Item, future: Future, selected: bool, copy: bool = False) -> None:
        self.pending.append((item, future, selected))
        if copy:
            self.copies.add(future)

    def record_fresh(self, lines: Sequence[Dict[str, Any]]) -> None:
        """Entries the plan decided (files left out, problems the source found): written
        and counted before any work starts; no output, no progress step."""
        if self.strict:  # --strict: the first problem found while listing stops the job
            first = next((k for k, line in enumerate(lines) if line["status"] == "failed"), None)
            lines = lines if first is None else lines[: first + 1]
        texts = self.manifest.write(lines)
        for line, text in zip(lines, texts):
            self.entries[line["path"]] = pack(line["path"], text)
            setattr(self.summary, line["status"], getattr(self.summary, line["status"]) + 1)
            if line["status"] == "failed":
                message = f"latinhib: {display(line['path'])}: {line['error']}"
                self.summary.failures.append(message)
                self.bar.write(message, file=sys.stderr) if self.bar is not None else self.log(message)
        if self.strict and self.summary.failed:
            raise StrictStop(self.summary.failures[0])

    def record(self, line: Dict[str, Any], item: Item, text: Optional[str] = None) -> None:
        """``text``: the line as the manifest holds it, kept for the compaction in place of
        the dict (memory per file)."""
        self.entries[item.rel] = line if text is None else pack(item.rel, text)
        status = line["status"]
        setattr(self.summary, status, getattr(self.summary, status) + 1)
        self.sink.commit(item, line)
        if status == "failed":
            message = f"latinhib: {display(item.rel)}: {line['error']}"
            self.summary.failures.append(message)
            self.bar.write(message, file=sys.stderr) if self.bar is not None else self.log(message)
        else:
            note = item.note  # a tar sample without an image member, say
            if note is not None:
                message = f"latinhib: {display(item.rel)}: {note}"
                self.bar.write(message, file=sys.stderr) if self.bar is not None else self.log(message)
            if self.on_output is not None:
                self.on_output(self.sink.output_of(item))
        if self.bar is not None:
            self.bar.update(1)

    def _with_sink_fields(self, done: Sequence[Tuple[Dict[str, Any], Item]]) -> None:
        """The fields the sink adds to a line (folder -> shards: the sample's key)."""
        for line, item in done:
            line.update(self.sink.manifest_fields(item))

    def record_all(self, done: Sequence[Tuple[Dict[str, Any], Item]]) -> None:
        if self.strict:  # --strict: the first failure is the last file recorded; later ones stay undone
            first = next((k for k, (line, _) in enumerate(done) if line["status"] == "failed"), None)
            done = done if first is None else done[: first + 1]
        self._with_sink_fields(done)
        texts = self.manifest.write(e for e, _ in done)
        for (line, item), text in zip(done, texts):
            self.record(line, item, text)
        if self.strict and self.summary.failed:
            raise StrictStop(self.summary.failures[0])

    def drain(self, images: int, files: Optional[int] = None) -> None:
        """Record finished files in order, waiting for the oldest while more than
        ``images`` images (copies aside) or ``files`` files in all (default: ``images``)
        are in flight; Ctrl-C is acted on between waits."""
        files = images if files is None else files
        pending = self.pending
        while pending and (len(pending) - len(self.copies) > images or len(pending) > files or pending[0][1].done()):
            done, failure = self._collect()
            self.record_all(done)
            if failure is not None:
                raise failure
            self.check()

    def _collect(self) -> Tuple[List[Tuple[Dict[str, Any], Item]], Optional[BaseException]]:
        """The oldest file (waiting for it), then every finished one behind it; stops at a
        failed model pass, whose error the job re-raises."""
        done = []
        pending = self.pending
        while pending and (not done or pending[0][1].done()):
            item, future, selected = pending.popleft()
            self.copies.discard(future)
            try:
                line = future.result()
            except PassFailed as exc:  # the model pass itself failed: the job stops
                return done, exc.error
            except DestinationUnusable as exc:  # a full disk: no later write can succeed either
                return done, exc
            except Exception as exc:  # noqa: BLE001 - one file's failure, reported with its name
                line = entry(item, selected, "failed", error=describe(exc))
            done.append((line, item))
        return done, None

    def cancel_pending(self) -> None:
        """Work not started yet is dropped (redone on the next run); first, so model
        streams skip the files whose future is cancelled."""
        for _, future, _ in self.pending:
            future.cancel()

    def finish_pending(self) -> Optional[DestinationUnusable]:
        """After every pool has ended: record the files in flight that were written;
        failures in flight are redone on the next run. Returns the error when the
        manifest itself could not be written (those files are redone next run)."""
        done = []
        for item, future, _ in self.pending:
            if future.cancelled():
                continue
            try:
                line = future.result()
            except Exception:  # noqa: BLE001 - it is redone on the next run
                continue
            if line["status"] == "failed" and self.strict and self.summary.failed:
                continue  # after --strict's stop only the first failure is reported; this one is redone
            done.append((line, item))
        self._with_sink_fields(done)
        try:
            texts = self.manifest.write(e for e, _ in done)
        except DestinationUnusable as exc:
            return exc
        for (line, item), text in zip(done, texts):
            self.record(line, item, text)
        return None

    def close(self, path: Path, listed: Iterable[str]) -> Optional[DestinationUnusable]:
        """Close the manifest and the bar, and compact the manifest: one line per input in
        listing order, then entries of files outside this listing (an earlier
        ``--files-from`` subset), which are kept. On a full disk the rewrite (a whole new
        copy) may not fit: the appended manifest then stays as it is (it holds the same
        entries, in the order they were done) and the error is returned."""
        self.manifest.close()
        if self.bar is not None:
            self.bar.close()
        order = listed if isinstance(listed, list) else list(listed)
        entries = self.entries
        # Entries outside the listing: found with a set only where some exist (a set of
        # 1.28M paths would be the job's largest structure at its very end).
        if sum(1 for rel in order if rel in entries) != len(entries):
            known = set(order)
            order = order + [rel for rel in entries if rel not in known]
        if self.compact == path and self.manifest.lines_written == 0 and len(order) == len(entries) \
                and all(a == b for a, b in zip(order, entries)):
            return None  # a rerun with nothing to do: the file already is its compacted self
        try:
            Manifest.compact(path, order, self.entries)
        except DestinationUnusable as exc:
            return exc
        return None
