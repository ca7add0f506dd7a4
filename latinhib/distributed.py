"""One job over many processes: torchrun ranks and independent jobs of one part each
(``--shard I/N``: a :class:`Part` of the files, not a tar shard).

Each file belongs to exactly one part, decided by a salted blake2b hash of its relative
path, so membership depends neither on listing order nor on timing, and is uncorrelated
with the enhancement selection (``inhibition.selection_score``: unsalted, seeded). Under
``torchrun`` (``WORLD_SIZE`` > 1 in the environment) rank R of W is part R/W, and with
``--shard I/N`` as well it is part I+N*R of N*W (a split of part I/N). A part writes its
outputs and its own manifest part (``manifest.part_name``); ``manifest.merge`` folds the
parts into the main manifest (rank 0 does it once every rank is done; after separate
``--shard`` jobs, ``latinhib merge DST`` does). A part reads the main manifest and every
manifest part at start, so a rerun of one killed rank alone (``--shard R/W``) completes
its share, and a rerun with another part count still skips what is done.

No process manager here: torchrun or the scheduler starts the processes. The process group
(gloo on CPU, nccl on CUDA) is initialised only when WORLD_SIZE > 1 and serves three things:
the job-wide counts (so every rank's exit code reflects failures on any rank), the sync
before rank 0 merges, and one progress bar on rank 0 fed through the group's key-value
store.

Temporary files: a part must never delete another live rank's temporaries. Any cleanup of
stale ``*.latinhib-*.tmp`` files belongs only in runs where :attr:`Context.owns_all_temp_files`
is True (not sharded, not distributed).
"""
from __future__ import annotations

import atexit
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence

import torch

from .data import Item
from .manifest import MANIFEST_NAME, STATUSES, Previous, merge, part_name, part_paths, read_all
from .runtime import resolve_device

__all__ = [
    "Context",
    "Part",
    "is_distributed",
    "is_primary",
    "parse_part",
    "part_of",
    "setup",
    "split",
]

#: Salt of the part hash; any value other than the selection hash's (none) would do.
PART_SALT = b"latinhib-shard"
#: Summary counters summed over ranks at the end of a torchrun job: one per status, and two more.
COUNTERS = ("total", *STATUSES, "already_done")
PROGRESS_KEY = "latinhib/progress"
DONE_KEY = "latinhib/done"
EXIT_KEY = "latinhib/exit"


def part_of(rel: str, count: int) -> int:
    """The part in ``range(count)`` that owns relative path ``rel``."""
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8, salt=PART_SALT).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` (0-based) of a job's files: what ``--shard I/N`` and a
    torchrun rank do (not :class:`shards.Shard`, a tar file)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise ValueError(f"shard should be I/N with 0 <= I < N. Got {self.index}/{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, rel: str) -> bool:
        return self.count == 1 or part_of(rel, self.count) == self.index


def parse_part(text: str) -> Part:
    """``--shard``'s ``"I/N"`` -> :class:`Part`; ValueError naming the value otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"--shard: {text!r} is not allowed; expected I/N with 0 <= I < N, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard: {text!r} is not allowed; expected I/N with 0 <= I < N, e.g. 0/4")
    return Part(index, count)


class _RankBar:
    """Progress for a torchrun job: every rank adds what it finishes to a counter in the
    process group's store; only rank 0 draws a bar, for the whole job."""

    def __init__(self, store, bar, world_size: int):
        self.store = store
        self.bar = bar
        self.world_size = world_size

    def update(self, n: int = 1) -> None:
        value = self.store.add(PROGRESS_KEY, n)
        if self.bar is not None:
            self.bar.update(value - self.bar.n)

    def write(self, message: str, file=None) -> None:
        if self.bar is not None:
            self.bar.write(message, file=file)
        else:
            print(message, file=file or sys.stderr, flush=True)

    def close(self) -> None:
        """This rank's work is done; rank 0's bar stays open until :meth:`wait`."""
        self.store.add(DONE_KEY, 1)

    def wait(self) -> None:
        """Rank 0 keeps the bar moving until every rank is done (torchrun stops the whole
        job if a rank dies, so this does not wait forever on a dead rank)."""
        if self.bar is None:
            return
        while self.store.add(DONE_KEY, 0) < self.world_size:
            self.update(0)
            time.sleep(0.2)
        self.update(0)
        self.bar.close()


@dataclass
class Context:
    """Where this process stands in the job.

    part: the files this process owns (None = all). distributed: a torch.distributed group
    was initialised by :func:`setup` (torchrun with WORLD_SIZE > 1). rank/world_size: within
    that group (0/1 otherwise). device: the device to run on.
    """

    part: Optional[Part] = None
    distributed: bool = False
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    #: rank 0 merges the parts at the end: torchrun without --shard (with --shard, other
    #: shard jobs may still be writing theirs; `latinhib merge` runs once they are done).
    merge_at_end: bool = False
    _bar: Optional[_RankBar] = None

    @property
    def primary(self) -> bool:
        """Prints the job summary (rank 0, or the only process)."""
        return self.rank == 0

    @property
    def owns_all_temp_files(self) -> bool:
        """Only a lone, unsharded run may clean up stale temporary files in DST: anywhere
        else they may belong to another live rank or shard."""
        return self.part is None and not self.distributed

    def select(self, items: Sequence[Item], key: Optional[Callable[[Item], str]] = None) -> List[Item]:
        """The items this process handles: those whose unit (``key(item)``, by default its
        path; an input or output tar shard's name for shard jobs) this shard owns."""
        if self.part is None:
            return list(items)
        key = key or (lambda item: item.rel)
        return [item for item in items if self.part.owns(key(item))]

    def owns_unit(self, unit: str) -> bool:
        return self.part is None or self.part.owns(unit)

    def same_lines(self, lines: Iterable[str]) -> Iterable[str]:
        """``--files-from``'s lines as rank 0 reads them. Under torchrun every rank
        inherits the same stdin: ranks reading one pipe at once would each get a part of
        it (even half lines), so only rank 0 reads and the others receive its list."""
        if not self.distributed:
            return lines
        import torch.distributed as dist

        box = [list(lines) if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def manifest_path(self, dst: Path) -> Path:
        """The main manifest, or this part's."""
        return dst / (MANIFEST_NAME if self.part is None else part_name(self.part.index, self.part.count))

    def previous(self, dst: Path, key: Optional[Callable[[str], str]] = None) -> Previous:
        """What earlier runs did (the main manifest and every part), restricted to the paths
        this process owns; ``key`` maps a path to the unit ownership is decided on (a tar
        sample's shard; the path itself by default)."""
        entries = read_all(dst)
        if self.part is None or self.part.count == 1:
            return entries
        key = key or (lambda rel: rel)
        return Previous((rel, line) for rel, line in entries.items() if self.part.owns(key(rel)))

    def progress(self, todo: int, quiet: bool, make_bar: Callable[[int, bool], Any]):
        """A progress bar: the usual one outside torchrun; under torchrun one bar on rank 0
        for the whole job (a collective: every rank calls it once)."""
        if not self.distributed:
            return make_bar(todo, quiet)
        total = self._sum([todo])[0]
        if quiet:
            return None
        from torch.distributed.distributed_c10d import _get_default_store

        self._bar = _RankBar(_get_default_store(), make_bar(total, quiet) if self.rank == 0 else None, self.world_size)
        return self._bar

    def finish(self, summary, dst: Path, order: Sequence[str]):
        """End of the job for this process: under torchrun, sum the counts over ranks (every
        rank returns the job's summary, so every exit code reflects failures anywhere) and
        rank 0 merges the parts; an unsharded run folds in parts left by earlier shards."""
        if self.part is None:
            if part_paths(dst):
                merge(dst, order)
            return summary
        if not self.distributed:
            return summary
        import torch.distributed as dist

        if self._bar is not None:
            self._bar.wait()
        values = self._sum([getattr(summary, name) for name in COUNTERS])
        for name, value in zip(COUNTERS, values):
            setattr(summary, name, value)
        seconds = torch.tensor([summary.seconds], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        summary.seconds = float(seconds.item())
        if self.rank == 0 and self.merge_at_end:
            merge(dst, order)
        dist.barrier()  # nobody exits before rank 0 has merged
        # torchrun stops the other workers as soon as one exits non-zero (a failed file):
        # the other ranks wait until rank 0 has printed the summary and is on its way out.
        from torch.distributed.distributed_c10d import _get_default_store

        store = _get_default_store()
        if self.rank == 0:
            atexit.register(_release, store)
        else:
            try:
                store.wait([EXIT_KEY])
            except Exception:  # noqa: BLE001 - rank 0 and its store are gone: nothing to wait for
                pass
        return summary

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def _collective_device(self) -> torch.device:
        import torch.distributed as dist

        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _sum(self, values: List[int]) -> List[int]:
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.int64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [int(v) for v in tensor.tolist()]


def _release(store) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        store.set(EXIT_KEY, "1")
    except Exception:  # noqa: BLE001 - the job is over; a rank still waiting times out
        pass


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def split(part: Optional[Part], rank: int, world_size: int) -> Part:
    """Rank ``rank``'s share of ``part`` (of the whole job when None).

    I + N*R of N*W: hash % N == I still, so the ranks split exactly part I/N, and a later
    ``--shard I/N`` run alone covers the same files."""
    if part is None:
        return Part(rank, world_size)
    return Part(part.index + part.count * rank, part.count * world_size)


def is_distributed() -> bool:
    """Whether torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def is_primary() -> bool:
    """Whether this process prints the job's summary: rank 0 under torchrun, else always."""
    return _env_int("RANK", 0) == 0


def setup(part: Optional[Part], device_name: str) -> Context:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), pick the device
    (``cuda:LOCAL_RANK`` when ``device_name`` is auto/cuda and CUDA is there) and, when
    WORLD_SIZE > 1, initialise the process group: nccl when each rank has its own GPU, else
    gloo."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return Context(part=part, device=resolve_device(device_name))
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device_name in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = resolve_device(device_name)
    import torch.distributed as dist

    if not dist.is_initialized():
        # nccl needs one GPU per rank on a machine; more ranks than GPUs share them over
        # gloo (the group only carries a few counters).
        one_gpu_each = (device_name in ("auto", "cuda") and device.type == "cuda"
                        and _env_int("LOCAL_WORLD_SIZE", 1) <= torch.cuda.device_count())
        dist.init_process_group(backend="nccl" if one_gpu_each else "gloo")
    return Context(part=split(part, rank, world_size), distributed=True, rank=rank, world_size=world_size, device=device,
                   merge_at_end=part is None)
