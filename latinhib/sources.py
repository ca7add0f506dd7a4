"""Where a job's inputs come from: a folder (or ``--files-from``'s list of its files), or
WebDataset tar shards. A source checks SRC against DST, lists the inputs as items with a
stable key (``rel``: the manifest path and the selection hash's input) and a unit (which
output file or shard an item ends up in: what torchrun ranks and ``--shard I/N`` split
on), and names the problems found while listing (a truncated shard, a corrupt header), each
of which becomes one failed manifest entry.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

from . import shards
from .choices import FORMATS
from .data import Item, PathError, display, list_files_from, list_folder
from .shards import IMAGE_MEMBER_EXTENSIONS, Member, Sample, ShardError, ShardIndex

__all__ = ["FORMATS", "FolderSource", "Listing", "SampleItem", "ShardSource", "Source", "SourceError", "open_source",
           "read_listing"]



class SourceError(ValueError):
    """SRC cannot be used (missing, DST inside it, no shards): nothing was written."""


class SampleItem(Item):
    """One sample of a tar shard: ``path`` is the shard's local file (a spool file for a
    ``pipe:``), ``rel`` is ``SHARD/KEY``; the image member is read at its offset."""

    __slots__ = ("sample",)

    def __init__(self, path: Union[str, Path], rel: str, class_name: Optional[str], sample: Optional[Sample] = None):
        super().__init__(path, rel, class_name)
        self.sample = sample

    @property
    def is_image(self) -> bool:
        return self.sample.image is not None

    @property
    def shard(self) -> str:
        return self.sample.shard

    @property
    def members(self) -> Tuple[Member, ...]:
        return self.sample.members

    @property
    def image_member(self) -> Optional[Member]:
        return self.sample.image_member

    @property
    def note(self) -> Optional[str]:
        """Said once on stderr and kept in the manifest: a sample latinhib cannot enhance."""
        if self.sample.image is None:
            return f"no image member ({', '.join(IMAGE_MEMBER_EXTENSIONS)}): its members are copied unchanged"
        return None

    @property
    def copy_note(self) -> Optional[str]:
        return self.note

    def image_source(self) -> BinaryIO:
        """The image member's bytes, for decoding."""
        return io.BytesIO(shards.read_member(self.path, self.sample.image_member))


@dataclass
class Listing:
    """What a source lists: the items (in order), problems found on the way as
    (manifest path, message), and the indexes of the shards read (for the tar sink)."""

    items: List[Item]
    problems: List[Tuple[str, str]] = field(default_factory=list)
    indexes: List[ShardIndex] = field(default_factory=list)
    format: str = "folder"


def _as_read(lines: Iterable[str]) -> Iterable[str]:
    return lines


class Source(Protocol):
    """What the pipeline asks of a source (:class:`FolderSource`, :class:`ShardSource`):
    a new input format is one new class with these calls."""

    #: The output format a job writes by default (one of :data:`FORMATS`).
    format: str

    def check(self, dst: Optional[Path]) -> None:
        """Refuse SRC, or DST for this SRC, with :class:`SourceError`; nothing is written.
        ``dst`` None: a command that writes no DST (``preview``, ``evaluate``)."""

    def list(self, shared_lines: Callable[[Iterable[str]], Iterable[str]] = _as_read) -> Listing:
        """Every input, in a stable order, and the problems found on the way.
        ``shared_lines`` turns lines read from a stream (``--files-from``) into the same
        lines in every process of the job (torchrun: rank 0 reads, the others receive)."""

    def close(self) -> None:
        """Remove what listing left behind (the spool files of ``pipe:`` shards)."""


def check_dst(src_real: Optional[Path], src_text: str, dst: Optional[Path]) -> None:
    """Refuse DST == SRC and DST inside SRC, before anything is written (no DST: a
    command that only reads SRC)."""
    if dst is None:
        return
    if dst.exists() and not dst.is_dir():
        raise SourceError(f"DST {display(str(dst))!r}: exists and is not a directory")
    if src_real is None:
        return
    dst_real = Path(os.path.realpath(dst))
    if dst_real == src_real:
        raise SourceError(f"DST {display(str(dst))!r} is SRC itself; choose another folder")
    if src_real in dst_real.parents:
        raise SourceError(f"DST {display(str(dst))!r} is inside SRC {display(src_text)!r}; choose a folder outside it")


class FolderSource:
    """Every file under SRC (sorted), or the files ``--files-from`` names."""

    format = "folder"

    def __init__(self, src: Path, *, files_from: Optional[Iterable[str]] = None, follow_symlinks: bool = False,
                 exclude: Sequence[Path] = ()):
        self.src = Path(src)
        self.files_from = files_from
        self.follow_symlinks = follow_symlinks
        self.exclude = list(exclude)

    def check(self, dst: Optional[Path]) -> None:
        src = self.src
        if not src.exists():
            raise SourceError(f"SRC {display(str(src))!r}: no such directory")
        if not src.is_dir():
            raise SourceError(f"SRC {display(str(src))!r}: not a directory")
        check_dst(Path(os.path.realpath(src)), str(src), dst)

    def list(self, shared_lines: Callable[[Iterable[str]], Iterable[str]] = _as_read) -> Listing:
        try:
            if self.files_from is not None:
                items = list_files_from(self.src, shared_lines(self.files_from), follow_symlinks=self.follow_symlinks)
            else:
                items = list_folder(self.src, follow_symlinks=self.follow_symlinks, exclude=self.exclude)
        except PathError as exc:
            raise SourceError(str(exc)) from None
        return Listing(items)

    def close(self) -> None:
        pass


class ShardSource:
    """The samples of WebDataset tar shards, shard by shard, in member order. ``pipe:``
    and gzip shards are spooled into ``spool_dir`` (hidden temporary files, removed by
    :meth:`close`)."""

    format = "webdataset"

    def __init__(self, src: str, spool_dir: Optional[Path] = None):
        self.text = str(src)
        self.spool_dir = spool_dir

    def check(self, dst: Optional[Path]) -> None:
        try:
            self.shards = shards.expand(self.text)
        except ShardError as exc:
            raise SourceError(str(exc)) from None
        local = [Path(os.path.realpath(s.url)).parent for s in self.shards if not s.is_pipe]
        folder = Path(self.text) if Path(self.text).is_dir() else (local[0] if local else None)
        check_dst(Path(os.path.realpath(folder)) if folder is not None else None, self.text, dst)
        for shard in self.shards if dst is not None else ():
            if not shard.is_pipe and Path(os.path.realpath(dst / shard.name)) == Path(os.path.realpath(shard.url)):
                raise SourceError(f"DST {display(str(dst))!r}: its output shard {shard.name!r} would be the input")

    def list(self, shared_lines: Callable[[Iterable[str]], Iterable[str]] = _as_read) -> Listing:
        """The shards' samples (``shared_lines``: nothing is read from a stream here)."""
        listing = Listing([], format=self.format)
        for number, shard in enumerate(self.shards):
            spool = None
            if shard.needs_spool:
                from .files import temp_path

                self.spool_dir.mkdir(parents=True, exist_ok=True)
                spool = temp_path(self.spool_dir / f"spool-{number}-{shard.name}")
            index = shards.index_shard(shard, spool)
            listing.indexes.append(index)
            listing.problems.extend(index.problems)
            for sample in index.samples:
                if sample.error is not None:
                    listing.problems.append((sample.rel, sample.error))
                else:
                    listing.items.append(SampleItem(index.path, sample.rel, None, sample))
        self.indexes = listing.indexes
        return listing

    def close(self) -> None:
        """Spool files of ``pipe:`` and gzip shards are removed."""
        for index in getattr(self, "indexes", []):
            if index.shard.needs_spool:
                try:
                    index.path.unlink()
                except FileNotFoundError:
                    pass


@contextlib.contextmanager
def read_listing(src: Union[str, Path], input_format: str = "auto") -> Iterator[Listing]:
    """SRC's listing for a command that writes no DST (``preview``, ``evaluate``): a folder
    or shards, ``pipe:`` and gzip shards spooled into a temporary folder that is removed,
    with the items, when the block ends."""
    with tempfile.TemporaryDirectory(prefix="latinhib-spool-") as spool:
        source = open_source(src, input_format, spool_dir=Path(spool))
        try:
            source.check(None)
            yield source.list()
        finally:
            source.close()


def open_source(src: Union[str, Path], input_format: str = "auto", **folder_options) -> Source:
    """The source for SRC: ``webdataset`` for tar shards, ``folder`` for a folder; ``auto``
    tells them apart (:func:`latinhib.shards.looks_like_shards`)."""
    text = str(src)
    if input_format == "auto":
        input_format = "webdataset" if shards.looks_like_shards(text) else "folder"
    if input_format == "webdataset":
        if folder_options.get("files_from") is not None:
            raise SourceError("--files-from lists files of a folder; SRC here is tar shards")
        return ShardSource(text, spool_dir=folder_options.get("spool_dir"))
    folder_options.pop("spool_dir", None)
    return FolderSource(Path(src), **folder_options)

