"""Where a job's outputs go: a folder that mirrors SRC (:class:`FolderSink`), or WebDataset
tar shards (:class:`TarSink`). Every sink answers the same calls, from the plan (is this
item done already?), the executor's threads (copy it; write its enhanced image) and the
recorder (this item is recorded, in order), so a new output format is one new class.

Every file a sink leaves under a final name is complete: folder outputs are written under
a hidden temporary name and renamed (``files.atomic_write``), and an output shard is
assembled under a temporary name once all its items are recorded, then renamed.
"""
from __future__ import annotations

import gzip
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from . import shards
from .data import Item, read_error
from .shards import Member, ShardIndex
from .encoding import save_image
from .files import UNUSABLE_ERRNOS, DestinationUnusable, atomic_write, copy_file, output_path, temp_path
from .links import Placer
from .manifest import DONE, entry, status_of
from .sample_labels import CLS_EXTENSION
from .shard_keys import member_extension, sample_keys

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

    def done(self, item: Item, old: Optional[str]) -> bool:
        """Whether an earlier run (its manifest line ``old``, JSON text) finished ``item``'s output."""

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

    def manifest_fields(self, item: Item) -> Dict[str, Any]:
        """What ``item``'s manifest line says besides its path and outcome (the sample
        key a folder's file became in shards), added before the line is written."""

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
        self._dst_prefix = os.path.join(self._dst, "")
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

    def done(self, item: Item, old: Optional[str]) -> bool:
        if old is None or status_of(old) not in DONE:
            return False
        if item.members:  # a tar sample
            return self.output_of(item).exists()
        return os.path.exists(self._dst_prefix + item.rel)  # a rerun asks this of every file: no Path, no join

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

    def manifest_fields(self, item: Item) -> Dict[str, Any]:
        """Nothing beyond the path: DST mirrors it."""
        return {}

    def _member_path(self, item: Item, member: Member) -> Path:
        return self.dst / shards.shard_stem(item.shard) / member.name

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


def _group_files(samples: Sequence[List[Item]], shard_size: int) -> List[List[Item]]:
    """A folder's samples (each an image and its sidecars, in listing order), ``shard_size``
    samples per output shard, flattened."""
    return [[item for sample in samples[start : start + shard_size] for item in sample]
            for start in range(0, len(samples), shard_size)]


def _folder_samples(items: Sequence[Item]) -> Tuple[List[List[Item]], Dict[str, str], List[Item]]:
    """(samples, sidecar rel -> its image's rel, files beside the shards). A non-image file
    with an image's webdataset key (``0001.json`` beside ``0001.jpg``) is that image's
    sidecar, in listing order; any other (``labels.csv``) belongs to no sample."""
    images = [item for item in items if item.is_image]
    by_key: Dict[str, str] = {}
    for image in images:
        by_key.setdefault(shards.split_name(image.rel)[0], image.rel)
    samples: Dict[str, List[Item]] = {image.rel: [] for image in images}
    owner: Dict[str, str] = {}
    beside: List[Item] = []
    for item in items:
        if item.is_image:
            samples[item.rel].append(item)
            continue
        image = by_key.get(shards.split_name(item.rel)[0])
        if image is None:
            beside.append(item)
        else:
            samples[image].append(item)
            owner[item.rel] = image
    return list(samples.values()), owner, beside


def _image_of(sample: Sequence[Item]) -> Item:
    return next(item for item in sample if item.is_image)


def _beside_note(item: Item) -> str:
    return (f"not an image ({Path(item.rel).suffix or 'no extension'}): copied beside the shards, "
            f"not into the sample stream")


class TarSink:
    """WebDataset shards out. From shards: one output shard per input shard, same name,
    same members in the same order (enhanced images replaced, everything else byte for
    byte, raw from the input). From a folder: ``shard_size`` samples per shard, named
    ``PREFIX-%06d.tar``.

    From a folder each image is a sample with a key of its own (``shard_keys.py``) and,
    given ``labels`` (image -> class index), a ``KEY.cls``, so a standard reader's
    ``to_tuple("jpg;png", "cls")`` trains on the shards as they are; files that are not
    images are copied beside the shards (``DST/<rel>``), out of the sample stream.

    Enhanced images are spooled to hidden temporary files as they are written (memory
    stays flat whatever the shard size); when the recorder has recorded every item of a
    shard, the shard is assembled under a temporary name and renamed (gzipped for a
    ``.tar.gz``/``.tgz`` name, as its input was). A shard is done when its final file
    exists: a rerun skips its items and redoes unfinished shards whole, so a killed job
    (kill -9) leaves only whole shards.
    """

    format = "webdataset"

    def __init__(self, dst: Path, *, indexes: Sequence[ShardIndex] = (), items: Sequence[Item] = (),
                 shard_size: int = 0, prefix: str = "shard", labels: Optional[Callable[[Item], int]] = None):
        self.dst = dst
        self._lock = threading.Lock()
        self.shards: Dict[str, _OutputShard] = {}
        self._unit: Dict[str, str] = {}
        self._keys: Dict[str, str] = {}  # image rel -> its sample's key
        self._owner: Dict[str, str] = {}  # sidecar rel -> its image's rel
        self._labels = labels
        for index in indexes:
            self.shards[index.shard.name] = _OutputShard(index.shard.name, index=index)
        if not indexes:
            samples, self._owner, beside = _folder_samples(items)
            self._keys = sample_keys(_image_of(sample).rel for sample in samples)
            groups = _group_files(samples, max(1, shard_size))
            for name, group in zip(shard_names(prefix, len(groups)), groups):
                self.shards[name] = _OutputShard(name, files=group)
                for item in group:
                    self._unit[item.rel] = name
            for item in beside:  # under its own name, beside the shards
                self._unit[item.rel] = item.rel

    def unit_of(self, item: Item) -> str:
        """The output shard ``item`` goes into: what torchrun ranks and ``--shard`` split
        on, so each output shard is written by one process."""
        return item.shard if item.shard is not None else self._unit[item.rel]

    def unit_of_rel(self, rel: str) -> str:
        return self._unit.get(rel) or rel.split("/", 1)[0]

    def output_of(self, item: Item) -> Path:
        return self.dst / self.unit_of(item)

    def done(self, item: Item, old: Optional[str]) -> bool:
        return self.output_of(item).exists()

    def prepare(self, todo: Sequence[Item], owns: Callable[[str], bool]) -> None:
        """The items this run hands to the executor. A shard of this process (``owns``)
        with none of them and no final file yet (its listing held only problems, or
        only files left out) is written at once."""
        for item in todo:
            if self.unit_of(item) in self.shards:  # not a file beside the shards
                self.shards[self.unit_of(item)].waiting.add(item.rel)
        for shard in self.shards.values():
            has_entries = shard.index.entries if shard.index is not None else shard.files
            if owns(shard.name) and not shard.waiting and has_entries and not (self.dst / shard.name).exists():
                self._assemble(shard)

    def copy(self, item: Item) -> Dict[str, Any]:
        """Copies are made when the shard is assembled; a folder file must be readable.
        A folder's file beside the shards (no image's sidecar) is copied now."""
        if item.shard is not None:
            return entry(item, False, "copied", error=item.copy_note)
        if self.unit_of(item) not in self.shards:
            line = _copy_entry(item, lambda: copy_file(item.path, output_path(self.dst, item.rel)))
            if line["status"] == "copied":
                line["error"] = _beside_note(item)
            return line
        return _copy_entry(item, lambda: os.close(os.open(item.path, os.O_RDONLY)))

    def manifest_fields(self, item: Item) -> Dict[str, Any]:
        """From a folder: ``key``, the ``SHARD/KEY`` of the sample the file went into (the
        manifest's path is the source file)."""
        key = self._keys.get(self._owner.get(item.rel, item.rel))
        return {} if key is None else {"key": f"{self.unit_of(item)}/{key}"}

    def copy_unchanged(self, item: Item) -> None:
        """Nothing to spool: the input's bytes go in as they are."""

    def save_image(self, item: Item, pixels, decoded, jpeg_quality: int) -> None:
        shard = self.shards[self.unit_of(item)]
        spool = temp_path(self.dst / f"{shard.name}.{len(shard.spooled)}")
        save_image(pixels, decoded, spool, jpeg_quality)  # under a hidden temporary name of its own
        with self._lock:
            shard.spooled[item.rel] = spool

    def commit(self, item: Item, line: Dict[str, Any]) -> None:
        shard = self.shards.get(self.unit_of(item))
        if shard is None:  # a file beside the shards: in place once copied
            return
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
                if shards.is_gzip_name(shard.name):  # mtime 0: the same input gives the same bytes
                    with gzip.GzipFile(fileobj=handle, mode="wb", mtime=0) as stream:
                        shards.write_shard(stream, self._pieces(shard))
                else:
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
        """Each sample's members in listing order (the image as ``KEY.jpg``, ``KEY.png``,
        ..., a sidecar as ``KEY.<its extensions>``), then its ``KEY.cls`` unless a sidecar is one."""
        for image, members in self._samples_of(shard.files):
            key, has_cls, has_image = self._keys[image.rel], False, False
            for item in members:
                line = shard.lines.get(item.rel)
                if line is None or (line["status"] == "failed" and item.rel not in shard.spooled):
                    continue  # left out of the job (skipped), or nothing readable to put in
                spool = shard.spooled.get(item.rel)
                data = (spool if spool is not None else Path(item.path)).read_bytes()
                extension = member_extension(item.rel) if item is image else shards.split_name(item.rel)[1]
                has_cls = has_cls or extension == CLS_EXTENSION
                has_image = has_image or item is image
                yield shards.member_header(f"{key}.{extension}", len(data), mtime=os.stat(item.path).st_mtime)
                yield shards.padded(data)
            if self._labels is not None and has_image and not has_cls:
                label = str(self._labels(image)).encode()
                yield shards.member_header(f"{key}.{CLS_EXTENSION}", len(label), mtime=os.stat(image.path).st_mtime)
                yield shards.padded(label)

    def _samples_of(self, files: Sequence[Item]):
        """(image, its members in order) for the flattened samples of an output shard."""
        members: List[Item] = []
        for item in files:
            if members and self._owner.get(item.rel, item.rel) != self._owner.get(members[0].rel, members[0].rel):
                yield _image_of(members), members
                members = []
            members.append(item)
        if members:
            yield _image_of(members), members

    def _drop_spool(self, shard: _OutputShard) -> None:
        with self._lock:
            spooled, shard.spooled = shard.spooled, {}
        for path in spooled.values():
            try:
                path.unlink()
            except FileNotFoundError:
                pass

