"""WebDataset tar shards, the file format: which shards a SRC names, what a shard holds
(samples grouped by key, with the byte ranges of their members), reading a member's
bytes, and writing an output shard atomically with its members in the input's order.

Knows nothing of models or the job: ``sources.py`` turns samples into the pipeline's
items and ``sinks.py`` decides what goes into each output shard.

Why the standard library's ``tarfile`` rather than the ``webdataset`` package (both are
far faster than the model, docs/SPEED.md#shards, so the choice is for function): webdataset reads a shard as a stream of samples
held in memory and writes a sample's members sorted by extension with fresh headers,
while a rerun that skips finished work, and an output shard with *the same members in
the same order*, byte for byte, need each member's place in the file. ``tarfile`` lists
the headers of a local shard by seeking past the data (the fastest reader measured), and
unchanged members are copied as the raw bytes they have in the input, headers included.
Brace patterns are expanded by ``braceexpand``, the package webdataset itself uses; a
``pipe:`` command (webdataset's spelling) is run by the shell and its output spooled to a
temporary file, so it can be indexed like a local shard.
"""
from __future__ import annotations

import gzip
import os
import shlex
import shutil
import subprocess
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

__all__ = [
    "IMAGE_MEMBER_EXTENSIONS",
    "SHARD_SUFFIXES",
    "Member",
    "Sample",
    "Shard",
    "ShardError",
    "ShardIndex",
    "expand",
    "index_shard",
    "looks_like_shards",
    "member_header",
    "read_member",
    "is_gzip_name",
    "is_shard_name",
    "shard_stem",
    "split_name",
    "write_shard",
]

#: The image member of a sample: the first of these extensions it has (webdataset's
#: ``to_tuple("jpg;png;...")`` convention); every other member is a sidecar.
IMAGE_MEMBER_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
#: Shard file names: plain tar, or tar in a gzip stream (read through a spool file,
#: written compressed the same way).
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
GZIP_SUFFIXES = (".tar.gz", ".tgz")
GZIP_MAGIC = b"\x1f\x8b"
BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 20 blocks: tarfile pads an archive to a multiple of this
PIPE = "pipe:"


class ShardError(ValueError):
    """SRC names no usable shard (an empty pattern, a folder without .tar files, a
    ``pipe:`` command whose output cannot be named): the job cannot start."""


@dataclass(frozen=True)
class Shard:
    """One input shard: ``url`` is a local path or a ``pipe:`` command, ``name`` the file
    name without folders (``train-000001.tar``): the output shard's name and the first
    part of every sample's manifest path."""

    url: str
    name: str

    @property
    def is_pipe(self) -> bool:
        return self.url.startswith(PIPE)

    @property
    def is_gzip(self) -> bool:
        """Written gzipped (``.tar.gz``/``.tgz``); input is recognised by its bytes."""
        return is_gzip_name(self.name)

    @property
    def needs_spool(self) -> bool:
        """Read through a spool file: a command's output, or a local shard that may be
        gzipped (tar offsets need the plain bytes)."""
        return self.is_pipe or self.is_gzip


def is_shard_name(name: str) -> bool:
    return name.endswith(SHARD_SUFFIXES)


def is_gzip_name(name: str) -> bool:
    return name.endswith(GZIP_SUFFIXES)


def shard_stem(name: str) -> str:
    """``train-000001.tar.gz`` -> ``train-000001``."""
    for suffix in sorted(SHARD_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _pipe_name(command: str) -> str:
    """The shard name of ``pipe:cat data/x.tar`` or ``pipe:curl -s https://h/x.tar``: the
    base name of the last word ending in .tar. ``pipe:gzip -dc x.tar.gz`` is ``x.tar``: a
    command's output shard is a plain tar (gzip bytes from the command are still read)."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    for word in reversed(words):
        base = word.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        if is_shard_name(base):
            return shard_stem(base) + ".tar"
    raise ShardError(f"SRC {PIPE}{command!r}: no word ending in .tar, .tar.gz or .tgz to name the output shard after")


def looks_like_shards(src: str) -> bool:
    """``--input-format auto``: a ``pipe:`` command, a brace pattern or a ``.tar`` (or
    ``.tar.gz``, ``.tgz``) file, or a folder holding such files and nothing else but
    folders (and latinhib's own ``latinhib-*`` files: a shard job's DST is a shard SRC)."""
    if src.startswith(PIPE) or is_shard_name(src) or ("{" in src and (".tar" in src or ".tgz" in src)):
        return True
    path = Path(src)
    if not path.is_dir():
        return False
    # A DST of a shard job holds latinhib's own manifest and config next to its shards.
    names = [entry.name for entry in os.scandir(path)
             if not entry.name.startswith((".", "latinhib-")) and not _is_dir(entry)]
    return bool(names) and all(is_shard_name(name) for name in names)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop, say: a file as far as detection goes
        return False


def expand(src: str) -> List[Shard]:
    """The shards SRC names, in order: a ``.tar`` (``.tar.gz``, ``.tgz``) file, a brace
    pattern (``data/train-{000000..000099}.tar``, each expansion must exist), a folder of
    such files (sorted by name) or ``pipe:CMD`` (braces in CMD expand to one command each).
    Raises :class:`ShardError` naming what is missing; two shards with one file name are
    refused (their outputs would collide)."""
    from braceexpand import braceexpand

    if src.startswith(PIPE):
        shards = [Shard(PIPE + cmd, _pipe_name(cmd)) for cmd in braceexpand(src[len(PIPE):])]
    elif Path(src).is_dir():
        names = sorted(n for n in os.listdir(src) if is_shard_name(n) and not n.startswith("."))
        if not names:
            raise ShardError(f"SRC {src!r}: a folder with no .tar shards in it (nor .tar.gz, .tgz)")
        shards = [Shard(str(Path(src) / n), n) for n in names]
    else:
        paths = list(braceexpand(src))
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more of {len(paths)})" if len(missing) > 1 else ""
            raise ShardError(f"SRC {src!r}: no such shard {missing[0]!r}{more}")
        shards = [Shard(p, Path(p).name) for p in paths]
    seen = {}
    for shard in shards:
        if shard.name in seen:
            raise ShardError(f"SRC {src!r}: two shards named {shard.name!r} ({seen[shard.name]!r} and "
                             f"{shard.url!r}); their output shards would be one file")
        seen[shard.name] = shard.url
    return shards


def split_name(name: str) -> Tuple[str, str]:
    """(key, extension) as webdataset splits a member name: the extension starts at the
    first dot of the base name (``a/b.seg.png`` -> ``a/b``, ``seg.png``)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


@dataclass(frozen=True)
class Member:
    """One tar member: where its header starts, where its data starts and how long it is,
    plus the header fields a replaced member keeps. ``regular`` is False for folders,
    links and other entries, which are copied as they are and belong to no sample."""

    name: str
    offset: int
    data_offset: int
    size: int
    regular: bool = True
    mode: int = 0o644
    mtime: float = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""

    @property
    def end(self) -> int:
        """The end of the member's data padded to a whole block (where the next header is)."""
        return self.data_offset + -(-self.size // BLOCK) * BLOCK

    @property
    def extension(self) -> str:
        return split_name(self.name)[1]


@dataclass(frozen=True)
class Sample:
    """The members of one key, in shard order. ``image`` is the index in ``members`` of
    the image member (None: the sample has none); ``error`` says why the sample cannot be
    used (a member cut short by a truncated shard, a key seen twice)."""

    shard: str
    key: str
    members: Tuple[Member, ...]
    image: Optional[int]
    error: Optional[str] = None
    #: False when the shard was cut inside this sample: it is left out of the output
    #: shard (its last member is not all there), where a sample with another error is
    #: copied as it is.
    complete: bool = True

    @property
    def rel(self) -> str:
        """``SHARD/KEY``: the manifest path and the selection hash's input."""
        return f"{self.shard}/{self.key}"

    @property
    def image_member(self) -> Optional[Member]:
        return None if self.image is None else self.members[self.image]


@dataclass
class ShardIndex:
    """What one shard holds: its local file (a spool file for a ``pipe:``), the entries
    in order (samples, and non-regular members that belong to none), and problems with
    the shard itself, as (manifest path, message): the shard's name when no sample is
    to blame (not a tar, a corrupt header), ``SHARD/KEY`` for a sample lost whole to a
    cut."""

    shard: Shard
    path: Path
    entries: List[Union[Sample, Member]] = field(default_factory=list)
    problems: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def samples(self) -> List[Sample]:
        return [e for e in self.entries if isinstance(e, Sample)]


def _member(info: tarfile.TarInfo) -> Member:
    return Member(info.name, info.offset, info.offset_data, info.size, info.isreg(), info.mode, info.mtime,
                  info.uid, info.gid, info.uname, info.gname)


def _sample(shard: str, key: str, members: List[Member], error: Optional[str] = None) -> Sample:
    by_ext = {m.extension.lower(): i for i, m in reversed(list(enumerate(members)))}
    image = next((by_ext[ext] for ext in IMAGE_MEMBER_EXTENSIONS if ext in by_ext), None)
    return Sample(shard, key, tuple(members), image, error)


def _headers(handle: BinaryIO, size: int) -> Tuple[List[Member], Optional[str], Optional[str]]:
    """The members of the tar open in ``handle`` (``size`` bytes), the problem that ended
    the listing early if any, and the name of the member the shard was cut in (if so)."""
    members: List[Member] = []
    try:
        tar = tarfile.open(fileobj=handle, mode="r:")
    except tarfile.ReadError as exc:
        return [], ("empty file (0 bytes)" if size == 0 else f"not a tar file ({exc})"), None
    while True:
        try:
            info = tar.next()
        except tarfile.ReadError as exc:
            last = members[-1].name if members else "the start"
            return members, f"truncated or corrupt after {last!r} ({exc})", None
        if info is None:
            break
        member = _member(info)
        tar.members = []  # the member list would grow with the shard; ours is compact
        if member.data_offset + member.size > size:
            have = max(0, size - member.data_offset)
            return members, f"truncated: member {member.name!r} has {have} of {member.size} bytes", member.name
        members.append(member)
    return members, _end_problem(handle, tar.offset, size, members), None


def _end_problem(handle: BinaryIO, offset: int, size: int, members: Sequence[Member]) -> Optional[str]:
    """tarfile ends a listing silently at a corrupt header after the first one, and at a
    shard cut off right after a member: tell those apart from a proper end of archive."""
    handle.seek(offset)
    tail = handle.read(2 * BLOCK)
    last = repr(members[-1].name) if members else "the start"
    if not tail:
        return f"truncated: ends after {last} without an end-of-archive marker"
    if tail.strip(b"\0"):
        return f"corrupt header at byte {offset} (after {last}); the remaining {size - offset} bytes are not read"
    return None


def _group(shard: str, members: Sequence[Member]) -> List[Union[Sample, Member]]:
    """Consecutive members with one key make a sample (as webdataset groups them); a key
    that comes back after another one is a sample of its own, marked with an error."""
    entries: List[Union[Sample, Member]] = []
    seen = set()
    key, group = None, []

    def close() -> None:
        if group:
            again = f"key {key!r} appears again after other keys (members not consecutive)" if key in seen else None
            entries.append(_sample(shard, key if again is None else f"{key}@{group[0].offset}", group, again))
            seen.add(key)

    for member in members:
        if not member.regular:  # a folder or link entry: in its place, in no sample
            close()
            key, group = None, []
            entries.append(member)
            continue
        member_key = split_name(member.name)[0]
        if member_key != key:
            close()
            key, group = member_key, []
        group.append(member)
    close()
    return entries


def index_shard(shard: Shard, spool: Optional[Path] = None) -> ShardIndex:
    """List ``shard``: its samples and members, and what is wrong with it. A ``pipe:``
    shard's output is first written to ``spool`` (a temporary file the caller owns).
    A shard cut short keeps the samples before the cut; a sample cut in half is kept,
    marked incomplete, and a sample lost whole to the cut is a problem of its own."""
    path = Path(shard.url)
    failed = None  # the command's (or the gzip stream's) own error: the shard's one problem
    if shard.needs_spool:
        if spool is None:
            raise ValueError("a pipe: or gzip shard needs a spool file")
        failed = _spool(shard.url[len(PIPE):], spool) if shard.is_pipe else None
        path = spool if shard.is_pipe else path
        try:
            failed = failed or _gunzip(path, spool)
        except OSError as exc:
            return ShardIndex(shard, path, [], [(shard.name, f"cannot read: {exc.strerror or exc}")])
        path = spool
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as handle:
            members, problem, cut = _headers(handle, size)
    except OSError as exc:
        return ShardIndex(shard, path, [], [(shard.name, failed or f"cannot read: {exc.strerror or exc}")])
    entries = _group(shard.name, members)
    problems: List[Tuple[str, str]] = []
    if cut is not None:
        problems.extend(_blame_cut(shard.name, entries, cut, problem))
    if failed or (problem and cut is None):
        # A failed command or stream explains what its output lacks: said once.
        problems.append((shard.name, failed or problem))
    return ShardIndex(shard, path, entries, problems)


def _blame_cut(shard: str, entries: List[Union[Sample, Member]], cut: str, problem: str) -> List[Tuple[str, str]]:
    """The shard ends inside member ``cut``. When ``cut`` belongs to the last sample
    listed, that sample becomes incomplete (its error is the problem: nothing more to
    report); else the sample of ``cut`` is lost whole and is the problem's manifest path."""
    key = split_name(cut)[0]
    last = entries[-1] if entries else None
    if isinstance(last, Sample) and last.key == key:
        entries[-1] = Sample(last.shard, last.key, last.members, last.image, problem, complete=False)
        return []
    return [(f"{shard}/{key}", problem)]


def _spool(command: str, spool: Path) -> Optional[str]:
    """Run ``command`` in the shell, its stdout into ``spool``; the problem, if any."""
    with open(spool, "wb") as out:
        process = subprocess.run(command, shell=True, stdout=out, stderr=subprocess.PIPE)
    if process.returncode != 0:
        said = process.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"{PIPE}{command} exited with status {process.returncode}" + (f": {said[-1]}" if said else "")
    return None


def _gunzip(path: Path, spool: Path) -> Optional[str]:
    """A gzipped shard at ``path`` decompressed into ``spool`` (in place when ``path`` is
    the spool: a command's output); the problem if the stream is corrupt or cut. A plain
    tar is copied (local) or left (spool) as it is: the bytes say which it is."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == GZIP_MAGIC
    if not gzipped:
        if path != spool:
            shutil.copyfile(path, spool)
        return None
    target = spool if path != spool else spool.with_name(spool.name + ".gunzip")
    problem = None
    try:
        with gzip.open(path, "rb") as stream, open(target, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        problem = f"gzip stream {'cut short' if isinstance(exc, EOFError) else 'corrupt'} ({exc})"
    if target != spool:
        os.replace(target, spool)
    return problem


def read_member(path: Path, member: Member) -> bytes:
    """A member's data, read at its offset (``os.pread``: safe from several threads at
    once on one descriptor, and no seek shared between them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, member.size, member.data_offset)
    finally:
        os.close(fd)
    if len(data) != member.size:
        raise OSError(f"{member.name}: {len(data)} of {member.size} bytes (the shard changed?)")
    return data


def member_header(name: str, size: int, like: Optional[Member] = None, mtime: float = 0) -> bytes:
    """A tar header (PAX where a field needs it, like tarfile's default) for a member of
    ``size`` bytes named ``name``, keeping ``like``'s mode, times and owner."""
    info = tarfile.TarInfo(name)
    info.size = size
    if like is not None:
        info.mode, info.mtime, info.uid, info.gid = like.mode, like.mtime, like.uid, like.gid
        info.uname, info.gname = like.uname, like.gname
    else:
        info.mtime = mtime
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


#: One piece of an output shard: raw bytes copied from a range of an input file
#: ``(path, offset, length)``, or bytes given whole.
Piece = Union[Tuple[Path, int, int], bytes]


def write_shard(handle: BinaryIO, pieces: Iterable[Piece]) -> int:
    """Write a tar from ``pieces`` (each a header, or a header's data, already padded by
    the caller where needed: see :func:`padded`), then the end-of-archive marker padded
    to a whole record as tarfile does. Returns the bytes written."""
    written = 0
    for piece in pieces:
        if isinstance(piece, bytes):
            handle.write(piece)
            written += len(piece)
        else:
            written += _copy_range(handle, *piece)
    end = 2 * BLOCK
    end += -(written + end) % RECORD
    handle.write(b"\0" * end)
    return written + end


def padded(data: bytes) -> bytes:
    """``data`` followed by zeros up to a whole block: a member's data as a tar holds it."""
    return data + b"\0" * (-len(data) % BLOCK)


def _copy_range(handle: BinaryIO, path: Path, offset: int, length: int) -> int:
    with open(path, "rb") as source:
        source.seek(offset)
        left = length
        while left:
            chunk = source.read(min(left, 1 << 20))
            if not chunk:
                raise OSError(f"{path}: ends {left} bytes early (the shard changed?)")
            handle.write(chunk)
            left -= len(chunk)
    return length


def sample_pieces(path: Path, sample: Sample, replace: Callable[[Member], Optional[bytes]]) -> Iterator[Piece]:
    """The pieces that write ``sample`` into an output shard: each member copied raw
    (header and data as in ``path``), unless ``replace(member)`` gives new data."""
    for member in sample.members:
        data = replace(member)
        if data is None:  # the padding is written, not copied: a shard cut inside it still gives a whole member
            yield (path, member.offset, member.data_offset + member.size - member.offset)
            yield b"\0" * (member.end - member.data_offset - member.size)
        else:
            yield member_header(member.name, len(data), like=member)
            yield padded(data)
