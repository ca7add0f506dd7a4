"""DST's record of the job: the manifest (one JSON line per input: its status and what
was done to it), its parts (one per ``--shard``/torchrun rank) and their merge, and the
config a run recorded in DST, read back by a rerun.

One module because every rule about these files is one contract between the run that
writes them and the rerun, ``latinhib merge`` or the user's script that reads them: the
names of the job's files, the statuses and which of them count as done, how a line is
appended whole and a torn one cut off, which entry wins when several files name a path,
and the order the merged manifest is in. The comparison of the recorded config with this
run's stays in ``plan`` (it decides whether the job may start); the reading is here, next
to the name of the file it reads.
"""
from __future__ import annotations

import json
import os
from json.encoder import encode_basestring_ascii
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import yaml

from . import files
from .data import Item
from .files import UNUSABLE_ERRNOS, DestinationUnusable

__all__ = [
    "CONFIG_NAME",
    "DONE",
    "JOB_FILE",
    "MANIFEST_NAME",
    "Manifest",
    "MergeResult",
    "PART_PATTERN",
    "STATUSES",
    "entry",
    "is_job_file",
    "listing_key",
    "merge",
    "pack",
    "part_name",
    "part_paths",
    "Previous",
    "read_all",
    "read_manifest",
    "recorded_sections",
    "status_of",
    "unpack",
]

MANIFEST_NAME = "latinhib-manifest.jsonl"
CONFIG_NAME = "latinhib-config.yaml"
PART_PATTERN = re.compile(r"^latinhib-manifest\.part-(\d+)-of-(\d+)\.jsonl$")
#: Every status a manifest line can have.
STATUSES = ("enhanced", "copied", "unchanged", "skipped", "failed")
#: Statuses whose output is in DST: a rerun skips them (when the output is still there).
DONE = ("enhanced", "copied", "unchanged")
#: Lines per write when a manifest is compacted.
COMPACT_BLOCK = 8192

#: The files a job writes at DST's top level (config, manifest, manifest parts, lock).
JOB_FILE = re.compile(r"^latinhib-(config\.yaml|manifest(\.part-\d+-of-\d+)?\.jsonl|[^/]*\.lock)$")


def is_job_file(rel: str) -> bool:
    """Whether an input's output path would be one of the job's own files in DST (a SRC
    that is itself a latinhib DST): such a file is never copied over them."""
    return JOB_FILE.match(rel) is not None


def entry(item: Item, selected: bool, status: str, **values: Any) -> Dict[str, Any]:
    """One manifest line for ``item``: every key present, so a reader need not guess."""
    line = {
        "path": item.rel,
        "selected": selected,
        "status": status,
        "kept_fraction": None,
        "threshold": None,
        "target": None,
        "predicted_class": None,
        "error": None,
    }
    line.update(values)
    return line


#: The start of every line :class:`Manifest` writes (``json.dumps`` of :func:`entry`, keys in
#: that order): a rerun reads each earlier line's path and status from it without parsing
#: the whole line, and keeps the line as text (1.28M dicts cost ~1 GB), packed (:func:`pack`).
_HEAD = re.compile(r'\{"path": "((?:[^"\\]|\\.)*)", "selected": (?:true|false), "status": "([a-z]+)"')
_STATUS = re.compile(r'"status": "([a-z]+)"')


#: What follows the path in lines that have no per-file value (a copy's, a skip's): one
#: string shared by every line of that shape (:func:`pack`), at most this many shapes.
_SHAPES: Dict[str, str] = {}
MAX_SHAPES = 4096
_DIGIT = re.compile(r"\d")
_PATH_KEY = '{"path": '


def pack(rel: str, line: str) -> str:
    """How a job holds ``rel``'s manifest line until the compaction: the line itself, or,
    when everything after its path is a shape many lines share (no number in it: a copy,
    a skip), that shared tail, which starts with ``,`` where a line starts with ``{``.
    1.28M copied files then hold one tail between them instead of ~300 bytes each
    (docs/SPEED.md#per-file-overhead); :func:`unpack` gives the line back."""
    head = _PATH_KEY + encode_basestring_ascii(rel)
    if not line.startswith(head):
        return line
    tail = line[len(head):]
    shared = _SHAPES.get(tail)
    if shared is None:
        if _DIGIT.search(tail) is not None or len(_SHAPES) >= MAX_SHAPES:
            return line
        shared = _SHAPES.setdefault(tail, tail)
    return shared


def unpack(rel: str, value: str) -> str:
    """The manifest line that :func:`pack` stored as ``value``."""
    return _PATH_KEY + encode_basestring_ascii(rel) + value if value.startswith(",") else value


def status_of(line: Union[str, Dict[str, Any]]) -> Optional[str]:
    """The status of a manifest entry, held as its JSON line (or :func:`pack`'s tail of
    it) or as a dict."""
    if isinstance(line, dict):
        return line.get("status")
    match = _STATUS.search(line)  # an escaped '"' inside a value cannot fake it
    return match.group(1) if match else None


def _parse(line: str) -> Optional[Tuple[str, str, bool]]:
    """(path, the entry's JSON text, whether that is the line itself) of one manifest line;
    None for a line that is not an entry. A line latinhib wrote whole (ending in a newline)
    is matched, not parsed; anything else is parsed and written back normalised."""
    if line.endswith("}\n"):
        match = _HEAD.match(line)
        if match is not None:
            path = match.group(1)
            return (json.loads(f'"{path}"') if "\\" in path else path), line[:-1], True
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None
    if isinstance(entry, dict) and isinstance(entry.get("path"), str):
        return entry["path"], json.dumps(entry, ensure_ascii=True), False
    return None


class Previous(dict):
    """path -> the latest manifest line for it (JSON text, :func:`pack`ed), over the files read.
    ``compact``: the one file it was read from, when that file holds exactly one line per
    path in this order and nothing else, so a run that adds no line need not rewrite it."""

    compact: Optional[Path] = None


def read_manifest(path: Path) -> Previous:
    """path -> last entry (its JSON line) of an existing manifest; a torn last line (a
    killed job) or a line that is not an entry is ignored."""
    entries = Previous()
    lines, verbatim = 0, 0
    try:
        with open(path, "r", encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                lines += 1
                parsed = _parse(line)
                if parsed is not None:
                    entries[parsed[0]] = pack(parsed[0], parsed[1])
                    verbatim += parsed[2]
    except FileNotFoundError:
        return entries
    if lines == verbatim == len(entries):  # no duplicate, torn or rewritten line
        entries.compact = path
    return entries


class Manifest:
    """Append-only JSONL, one object per input, written batch by batch.

    Each batch's lines go out in one :func:`files.write_all` on an ``O_APPEND``
    descriptor, not through a buffered handle: a write that fails part-way (a full disk) is
    cut back to the last whole line, so the file holds exactly the entries whose write succeeded, and
    no buffer is left for ``close`` to fail on. A torn last line left by a killed process
    is cut off on opening."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        self._lock = threading.Lock()
        self.lines_written = 0
        try:
            _cut_torn_line(self._fd)
        except OSError as exc:
            os.close(self._fd)
            if exc.errno in UNUSABLE_ERRNOS:
                raise DestinationUnusable(path, exc) from exc
            raise

    def write(self, entries: Iterable[Dict[str, Any]]) -> List[str]:
        """Append ``entries``; returns their lines (JSON text, no newline), which the
        recorder keeps instead of the dicts (a dict costs ~3x its line; a job keeps one per
        file until the manifest is compacted). Raises :class:`DestinationUnusable` (none of
        them written) for a full disk or a read-only file system."""
        lines = [json.dumps(entry, ensure_ascii=True) for entry in entries]
        if not lines:
            return lines
        data = ("\n".join(lines) + "\n").encode("ascii")
        with self._lock:
            size = os.fstat(self._fd).st_size
            try:
                files.write_all(self._fd, data)  # the one place tests put a full disk
            except OSError as exc:
                try:
                    os.ftruncate(self._fd, size)  # no half line: the batch is redone next run
                except OSError:
                    pass
                if exc.errno in UNUSABLE_ERRNOS:
                    raise DestinationUnusable(self.path, exc) from exc
                raise
            self.lines_written += len(lines)
        return lines

    def close(self) -> None:
        os.close(self._fd)

    @staticmethod
    def compact(path: Path, order: Iterable[str], entries: Dict[str, Union[str, Dict[str, Any]]]) -> None:
        """Rewrite ``path`` atomically with one line per input, in listing order.
        ``entries`` holds each path's entry, or its line already written as JSON text;
        written block by block, so the whole file is never held in memory twice."""

        def write(tmp: Path) -> None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                block: List[str] = []
                for rel in order:
                    value = entries.get(rel)
                    if value is None:
                        continue
                    block.append(unpack(rel, value) if isinstance(value, str) else json.dumps(value, ensure_ascii=True))
                    if len(block) == COMPACT_BLOCK:
                        files.write_all(fd, ("\n".join(block) + "\n").encode("ascii"))
                        block = []
                if block:
                    files.write_all(fd, ("\n".join(block) + "\n").encode("ascii"))
            finally:
                os.close(fd)

        files.atomic_write(path, write)


def _cut_torn_line(fd: int) -> None:
    """Truncate the file after its last newline (a process killed in the middle of a write
    can leave half a line; the next line appended would be glued to it)."""
    end = os.fstat(fd).st_size
    position = end
    while position > 0:
        start = max(0, position - 65536)
        newline = os.pread(fd, position - start, start).rfind(b"\n")
        if newline >= 0:
            position = start + newline + 1
            break
        position = start
    if position != end:
        os.ftruncate(fd, position)


# -- manifest parts ------------------------------------------------------------------------

def part_name(index: int, count: int) -> str:
    """The manifest file of part ``index`` of ``count`` (``--shard I/N``, a torchrun rank)."""
    return f"latinhib-manifest.part-{index}-of-{count}.jsonl"


def part_paths(dst: Path) -> List[Tuple[int, int, Path]]:
    """The manifest parts in ``dst`` as (index, count, path), oldest first (a later part's
    entries win)."""
    found = []
    try:
        names = os.listdir(dst)
    except FileNotFoundError:
        return []
    for name in names:
        match = PART_PATTERN.match(name)
        if match and int(match.group(1)) < int(match.group(2)):
            path = dst / name
            found.append((path.stat().st_mtime_ns, name, int(match.group(1)), int(match.group(2)), path))
    return [(index, count, path) for _, _, index, count, path in sorted(found)]


def read_all(dst: Path) -> Previous:
    """path -> latest entry (its JSON line) over DST's main manifest and every part: the
    files are read oldest first, so a later file's entry for a path wins (within a file,
    the later line)."""
    paths = [path for _, _, path in part_paths(dst)]
    main = dst / MANIFEST_NAME
    if main.is_file():
        paths.append(main)
    if len(paths) == 1:
        return read_manifest(paths[0])
    entries = Previous()
    for path in sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name)):
        entries.update(read_manifest(path))
    return entries


def listing_key(rel: str) -> Tuple[Tuple[int, str], ...]:
    """Sort key that reproduces ``data.list_folder``'s order (os.walk top-down with sorted
    names: a folder's files before its subfolders) from relative paths alone."""
    parts = rel.split("/")
    return tuple((1, part) for part in parts[:-1]) + ((0, parts[-1]),)


@dataclass
class MergeResult:
    """What :func:`merge` did: the parts folded in, counts per status over the merged
    manifest, and parts missing among the part counts seen (as ``I/N``)."""

    dst: str
    parts: List[str] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> Dict[str, Any]:
        return {"dst": self.dst, "parts": self.parts, "total": self.total, **self.counts, "missing": self.missing}

    def line(self) -> str:
        c = self.counts
        return (
            f"merged {len(self.parts)} manifest part(s): {self.total} files: {c['enhanced']} enhanced, "
            f"{c['copied']} copied, {c['unchanged']} unchanged, {c['skipped']} skipped, {c['failed']} failed "
            f"-> {self.dst}"
        )


def merge(dst: Path, order: Optional[Sequence[str]] = None) -> MergeResult:
    """Fold the manifest parts in ``dst`` into ``dst/latinhib-manifest.jsonl`` (written
    atomically, one line per input, in ``order`` or else in listing order), then remove the
    parts. Safe to repeat; a part written later by a rerun is folded in by the next merge."""
    dst = Path(dst)
    parts = part_paths(dst)
    if not parts and not (dst / MANIFEST_NAME).is_file():
        raise ValueError(f"DST {str(dst)!r}: no {MANIFEST_NAME} and no manifest parts to merge")
    entries = read_all(dst)
    keys = list(order) if order is not None else sorted(entries, key=listing_key)
    seen = set(keys)
    keys += sorted((rel for rel in entries if rel not in seen), key=listing_key)
    Manifest.compact(dst / MANIFEST_NAME, keys, entries)
    for _, _, path in parts:
        path.unlink()
    counts = {status: 0 for status in STATUSES}
    for line in entries.values():
        status = status_of(line)
        if status in counts:
            counts[status] += 1
    present = {(index, count) for index, count, _ in parts}
    missing = sorted({f"{i}/{n}" for _, n in present for i in range(n) if (i, n) not in present})
    return MergeResult(str(dst), [f"{index}/{count}" for index, count, _ in parts], counts, missing)


# -- the recorded config -------------------------------------------------------------------

def recorded_sections(dst: Path, sections: Sequence[str]) -> Optional[Dict[str, Dict[str, Any]]]:
    """``sections`` of the config an earlier run recorded in ``dst`` (each a mapping, empty
    when the file lacks it), or None when DST has no recorded config. Raises ValueError,
    naming the file, when it is unreadable or not a latinhib config."""
    path = dst / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        recorded = None
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(s) or {}, dict) for s in sections):
        raise ValueError(f"{CONFIG_NAME} is unreadable or not a latinhib config")
    return {section: recorded.get(section) or {} for section in sections}
