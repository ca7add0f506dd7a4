"""Where a job's outputs go: a folder that mirrors SRC (:class:`FolderSink`), or WebDataset
tar shards (:class:`TarSink`). Every sink answers the same calls, from the plan (is this
item done already?), the executor's threads (copy it; write its enhanced image) and the
recorder (this item is recorded, in order), so a new output format is one new class.

Every file a sink leaves under a final name is complete: folder outputs are written under
a hidden temporary name and renamed (``files.atomic_write``), and an output shard is
assembled under a temporary name once all its items are recorded, then renamed.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

from . import shards
from .data import Item, read_error
from .shards import Member, ShardIndex
from .encoding import save_image
from .files import UNUSABLE_ERRNOS, DestinationUnusable, atomic_write, output_path, temp_path
from .links import Placer
from .manifest import DONE, entry

__all__ = ["FolderSink", "Sink", "TarSink", "shard_names"]


class Sink(Protocol):
    """What the plan, the executor's threads and the recorder ask of a sink
    (:class:`FolderSink`, :class:`TarSink`): a new output format is one new class."""

    #: One of ``choices.FORMATS``.
    format: str

    def unit_of(self, item: Item) -> str:
        """The output file or shard ``item`` ends up in: what torchrun ranks and
        ``--shard I/N`` split on, so that one process writes each unit."""

    def unit_of_rel(self, rel: str) -> str:
        """:meth:`unit_of` from a manifest path alone (an earlier run's entry)."""

    def output_of(self, item: Item) -> Path:
        """Where ``item``'s output is (the file a rerun checks, the path --print-outputs prints)."""

    def done(self, item: Item, old: Optional[Dict[str, Any]]) -> bool:
        """Whether an earlier run (its manifest entry ``old``) finished ``item``'s output."""

    def prepare(self, todo: Sequence[Item], owns: Callable[[str], bool]) -> None:
        """Told once, before any write, which items this run hands to the executor;
        ``owns(unit)`` says which units are this process's."""

    def copy(self, item: Item) -> Dict[str, Any]:
        """An unselected item, byte for byte; returns its manifest entry (a source that
        cannot be read is the item's failure; a failed write is raised)."""

    def copy_unchanged(self, item: Item) -> Optional[str]:
        """A selected item that is not enhanced after all (not enhanceable), as it is;
        returns how it was put there (``links.MODES``), where that can differ."""

    def save_image(self, item: Item, pixels, decoded, jpeg_quality: int) -> None:
        """``item``'s enhanced image (called from writer threads)."""

    def commit(self, item: Item, line: Dict[str, Any]) -> None:
        """``item`` is recorded in the manifest (in listing order) as ``line``."""

    def close(self) -> None:
        """The job is over: remove what an unfinished unit left behind."""


def _copy_entry(item: Item, copy: Callable[[], Optional[str]], mode: str = "copy") -> Dict[str, Any]:
    """``copy()`` for an unselected file; a source that cannot be read is the file's
    failure (the causes ``decode`` names), a failed write is raised. ``copy`` returns
    what it did (``links.Placer.place``); under a link mode the entry's ``link`` says it."""
    try:
        done = copy()
    except OSError as exc:
        if exc.filename is None or os.fsdecode(exc.filename) != str(item.path):
            raise  # the write failed: reported as "cannot write: ..."
        return entry(item, False, "failed", error=read_error(exc))
    if mode != "copy":
        return entry(item, False, "copied", error=item.copy_note, link=done or "copy")
    return entry(item, False, "copied", error=item.copy_note)


class FolderSink:
    """DST mirrors SRC: ``DST/<rel>`` for a folder's files; a tar sample's members go to
    ``DST/<shard name without .tar>/<member name>``."""

    format = "folder"

    def __init__(self, dst: Path, from_shards: bool = False, unselected: str = "copy",
                 note: Optional[Callable[[str], None]] = None):
        self.dst = dst
        self._dst = os.fspath(dst)
        self.from_shards = from_shards
        self.placer = Placer(unselected, note=note)  # copies and links, each output folder made once

    def unit_of(self, item: Item) -> str:
        """What torchrun ranks and ``--shard`` split on: each file on its own (a tar
        sample: its input shard)."""
        return item.shard if item.shard is not None else item.rel

    def unit_of_rel(self, rel: str) -> str:
        """:meth:`unit_of` from a manifest path alone (earlier runs' entries)."""
        return rel.split("/", 1)[0] if self.from_shards else rel

    def output_of(self, item: Item) -> Path:
        if item.members:  # a tar sample: named by its image member
            return self._member_path(item, item.image_member or item.members[0])
        return output_path(self.dst, item.rel)

    def done(self, item: Item, old: Optional[Dict[str, Any]]) -> bool:
        if old is None or old.get("status") not in DONE:
            return False
        if item.members:  # a tar sample
            return self.output_of(item).exists()
        return os.path.exists(os.path.join(self._dst, item.rel))  # a rerun asks this of every file: no Path

    def prepare(self, todo: Sequence[Item], owns: Callable[[str], bool]) -> None:
        """Nothing to set up: every file is written on its own."""

    def copy(self, item: Item) -> Dict[str, Any]:
        """An unselected image, or a file latinhib does not enhance, byte for byte (or
        linked: ``output.unselected``)."""
        return _copy_entry(item, lambda: self.copy_unchanged(item), self.placer.mode)

    def copy_unchanged(self, item: Item) -> Optional[str]:
        """The input as it is in DST: its bytes, or a link (returns which, ``links.MODES``)."""
        if item.members:  # a tar sample: its members, byte for byte
            for member in item.members:
                self._write_member(item, member)
            return "copy"
        target = os.path.join(self._dst, item.rel)
        try:
            return self.placer.place(os.fspath(item.path), target)
        except OSError as exc:
            if exc.errno in UNUSABLE_ERRNOS and os.fsdecode(exc.filename or "") != os.fspath(item.path):
                raise DestinationUnusable(Path(target), exc) from exc
            raise

    def save_image(self, item: Item, pixels, decoded, jpeg_quality: int) -> None:
        save_image(pixels, decoded, self.output_of(item), jpeg_quality)
        for member in item.members:  # a tar sample's sidecars, byte for byte
            if member is not item.image_member:
                self._write_member(item, member)

    def commit(self, item: Item, line: Dict[str, Any]) -> None:
        """Folder outputs are in place once written."""

    def close(self) -> None:
        pass

    def _member_path(self, item: Item, member: Member) -> Path:
        stem = item.shard[: -len(".tar")] if item.shard.endswith(".tar") else item.shard
        return self.dst / stem / member.name

    def _write_member(self, item: Item, member: Member) -> None:
        data = shards.read_member(item.path, member)
        atomic_write(self._member_path(item, member), lambda tmp: tmp.write_bytes(data))


@dataclass
class _OutputShard:
    """One output shard: its name, what goes into it in order (input shard entries, or a
    folder's files as (item, member name)), the items still to be recorded, and the
    spool files of the enhanced images written so far."""

    name: str
    index: Optional[ShardIndex] = None
    files: List[Item] = field(default_factory=list)
    waiting: set = field(default_factory=set)
    spooled: Dict[str, Path] = field(default_factory=dict)
    lines: Dict[str, Dict[str, Any]] = field(default_factory=dict)


def shard_names(prefix: str, count: int) -> List[str]:
    """``PREFIX-000000.tar``, ``PREFIX-000001.tar``, ... (webdataset's ShardWriter names)."""
    return [f"{prefix}-{number:06d}.tar" for number in range(count)]


def _group_files(items: Sequence[Item], shard_size: int) -> List[List[Item]]:
    """A folder's files in listing order, ``shard_size`` samples (keys: the path without
    its extensions, as webdataset groups members) per output shard."""
    groups: List[List[Item]] = []
    last_key, samples = None, 0
    for item in items:
        key = shards.split_name(item.rel)[0]
        if key != last_key:
            if not groups or samples == shard_size:
                groups.append([])
                samples = 0
            samples += 1
            last_key = key
        groups[-1].append(item)
    return groups


class TarSink:
    """WebDataset shards out. From shards: one output shard per input shard, same name,
    same members in the same order (enhanced images replaced, everything else byte for
    byte, raw from the input). From a folder: ``shard_size`` samples per shard, named
    ``PREFIX-%06d.tar``.

    Enhanced images are spooled to hidden temporary files as they are written (memory
    stays flat whatever the shard size); when the recorder has recorded every item of a
    shard, the shard is assembled under a temporary name and renamed. A shard is done
    when its final file exists: a rerun skips its items and redoes unfinished shards
    whole, so a killed job (kill -9) leaves only whole shards.
    """

    format = "webdataset"

    def __init__(self, dst: Path, *, indexes: Sequence[ShardIndex] = (), items: Sequence[Item] = (),
                 shard_size: int = 0, prefix: str = "shard"):
        self.dst = dst
        self._lock = threading.Lock()
        self.shards: Dict[str, _OutputShard] = {}
        self._unit: Dict[str, str] = {}
        for index in indexes:
            self.shards[index.shard.name] = _OutputShard(index.shard.name, index=index)
        if not indexes:
            groups = _group_files([i for i in items], max(1, shard_size))
            for name, group in zip(shard_names(prefix, len(groups)), groups):
                self.shards[name] = _OutputShard(name, files=group)
                for item in group:
                    self._unit[item.rel] = name

    def unit_of(self, item: Item) -> str:
        """The output shard ``item`` goes into: what torchrun ranks and ``--shard`` split
        on, so each output shard is written by one process."""
        return item.shard if item.shard is not None else self._unit[item.rel]

    def unit_of_rel(self, rel: str) -> str:
        return self._unit.get(rel) or rel.split("/", 1)[0]

    def output_of(self, item: Item) -> Path:
        return self.dst / self.unit_of(item)

    def done(self, item: Item, old: Optional[Dict[str, Any]]) -> bool:
        return self.output_of(item).exists()

    def prepare(self, todo: Sequence[Item], owns: Callable[[str], bool]) -> None:
        """The items this run hands to the executor. A shard of this process (``owns``)
        with none of them and no final file yet (its listing held only problems, or
        only files left out) is written at once."""
        for item in todo:
            self.shards[self.unit_of(item)].waiting.add(item.rel)
        for shard in self.shards.values():
            has_entries = shard.index.entries if shard.index is not None else shard.files
            if owns(shard.name) and not shard.waiting and has_entries and not (self.dst / shard.name).exists():
                self._assemble(shard)

    def copy(self, item: Item) -> Dict[str, Any]:
        """Copies are made when the shard is assembled; a folder file must be readable."""
        if item.shard is None:
            return _copy_entry(item, lambda: os.close(os.open(item.path, os.O_RDONLY)))
        return entry(item, False, "copied", error=item.copy_note)

    def copy_unchanged(self, item: Item) -> None:
        """Nothing to spool: the input's bytes go in as they are."""

    def save_image(self, item: Item, pixels, decoded, jpeg_quality: int) -> None:
        shard = self.shards[self.unit_of(item)]
        spool = temp_path(self.dst / f"{shard.name}.{len(shard.spooled)}")
        save_image(pixels, decoded, spool, jpeg_quality)  # under a hidden temporary name of its own
        with self._lock:
            shard.spooled[item.rel] = spool

    def commit(self, item: Item, line: Dict[str, Any]) -> None:
        shard = self.shards[self.unit_of(item)]
        shard.waiting.discard(item.rel)
        shard.lines[item.rel] = line
        if not shard.waiting:
            self._assemble(shard)

    def close(self) -> None:
        """Spool files of shards left unfinished (an interrupted job) are removed."""
        for shard in self.shards.values():
            self._drop_spool(shard)

    def _assemble(self, shard: _OutputShard) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                shards.write_shard(handle, self._pieces(shard))

        atomic_write(self.dst / shard.name, write)
        self._drop_spool(shard)
        shard.lines.clear()

    def _pieces(self, shard: _OutputShard):
        if shard.index is not None:
            return self._shard_pieces(shard)
        return self._file_pieces(shard)

    def _replacement(self, shard: _OutputShard, rel: str) -> Optional[bytes]:
        spool = shard.spooled.get(rel)
        return None if spool is None else spool.read_bytes()

    def _shard_pieces(self, shard: _OutputShard):
        index = shard.index
        for item_entry in index.entries:
            if isinstance(item_entry, Member):  # a folder or link entry, in its place
                yield (index.path, item_entry.offset, item_entry.end - item_entry.offset)
            elif item_entry.complete:
                image = item_entry.image_member
                new = self._replacement(shard, item_entry.rel)
                yield from shards.sample_pieces(index.path, item_entry,
                                                lambda m: new if (m is image and new is not None) else None)

    def _file_pieces(self, shard: _OutputShard):
        for item in shard.files:
            line = shard.lines.get(item.rel)
            if line is None or (line["status"] == "failed" and item.rel not in shard.spooled):
                continue  # left out of the job (skipped), or nothing readable to put in
            spool = shard.spooled.get(item.rel)
            path = spool if spool is not None else Path(item.path)
            data = path.read_bytes()
            yield shards.member_header(item.rel, len(data), mtime=os.stat(item.path).st_mtime)
            yield shards.padded(data)

    def _drop_spool(self, shard: _OutputShard) -> None:
        with self._lock:
            spooled, shard.spooled = shard.spooled, {}
        for path in spooled.values():
            try:
                path.unlink()
            except FileNotFoundError:
                pass

