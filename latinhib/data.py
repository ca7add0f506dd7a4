"""Listing and decoding images: which files a job covers, their relative paths and
folder classes, and turning one file into the original pixels (for the blend, at full
resolution) plus the model's input (resized and normalised). Decoding runs in the model
streams or in threads on a CPU, and in DataLoader worker processes on CUDA (see
``executors.py``); every failure becomes a :class:`DecodeError` naming the cause, never a
crash.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from .shards import Member

__all__ = [
    "IMAGE_EXTENSIONS",
    "Decoded",
    "DecodeError",
    "Item",
    "NotEnhanceable",
    "PathError",
    "decode",
    "decode_on_device",
    "display",
    "list_files_from",
    "list_folder",
]

#: Formats latinhib reads and writes back in the same format.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class DecodeError(Exception):
    """One file cannot be used; the message is the cause (the file is named by the caller)."""


class PathError(ValueError):
    """A path given to the job is not allowed (outside SRC, missing SRC, ...)."""


class NotEnhanceable(DecodeError):
    """A readable image latinhib does not enhance (an animation, a multi-page TIFF): the
    pipeline copies it byte for byte with status ``unchanged`` and this message as the
    note, instead of failing the file. Enhancing only the first frame or page would
    silently drop the others; copying keeps DST a complete mirror of SRC."""


def display(text: str) -> str:
    """A path for humans: undecodable bytes of non-UTF-8 names shown as ``\\xNN``."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


class Item:
    """One input file: ``path`` (where to read it), ``rel`` its POSIX path relative to SRC
    (the manifest key and the output path), ``class_name`` its ImageFolder class (first
    folder), if any.

    A job holds one per listed file (1.28M for ImageNet), so it is kept small: slots, no
    ``Path`` object (~4x its string), and nothing held twice. A path that ends in ``rel``
    (every file of a folder) is kept as its head, interned (``SRC/``: one string for the
    whole listing), plus ``rel``; the class name is shared by every file of a folder.
    Peak memory per file: docs/SPEED.md#per-file-overhead."""

    __slots__ = ("_head", "_whole", "rel", "class_name")

    def __init__(self, path: Union[str, Path], rel: str, class_name: Optional[str]):
        whole = not (isinstance(path, str) and len(path) > len(rel) and path.endswith(rel))
        self._head = path if whole else sys.intern(path[: len(path) - len(rel)])
        self._whole = whole
        self.rel = rel
        self.class_name = class_name

    @property
    def path(self) -> Union[str, Path]:
        return self._head if self._whole else self._head + self.rel

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, rel={self.rel!r}, class_name={self.class_name!r})"

    @property
    def is_image(self) -> bool:
        """An extension latinhib enhances; every other file is only ever copied (or, with
        ``output.images_only``, left out)."""
        return os.path.splitext(self.rel)[1].lower() in IMAGE_EXTENSIONS

    # What the stages after the source ask of an item, answered here so that none of them
    # checks which kind of item it holds (``sources.SampleItem`` answers for a tar sample).

    @property
    def shard(self) -> Optional[str]:
        """The input shard this item is a sample of; None for a file of a folder."""
        return None

    @property
    def members(self) -> Tuple[Member, ...]:
        """The tar members this item is made of, in order; () for a file of its own."""
        return ()

    @property
    def image_member(self) -> Optional[Member]:
        """The member that holds the image (None: a file, or a sample without one)."""
        return None

    @property
    def note(self) -> Optional[str]:
        """Said on stderr when the item is recorded (and kept in the manifest)."""
        return None

    @property
    def copy_note(self) -> Optional[str]:
        """The manifest's note on a copy, when the item is not simply unselected."""
        if self.is_image:
            return None
        return f"not a format latinhib enhances ({Path(self.rel).suffix or 'no extension'}): copied byte for byte"

    def image_source(self) -> Union[Path, BinaryIO]:
        """What :func:`decode` reads: the file itself."""
        return self.path



def _inside(root_real: str, path: Union[str, Path]) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _class_of(rel: str, classes: Dict[str, str]) -> Optional[str]:
    """The first folder of ``rel`` (None for a file at SRC's top), one string per class."""
    head, sep, _ = rel.partition("/")
    if not sep:
        return None
    return classes.setdefault(head, head)


def list_folder(src: Path, *, follow_symlinks: bool = False, exclude: Sequence[Path] = ()) -> List[Item]:
    """Every file under ``src`` (sorted, so the order is the same on every machine).

    Symlinks that resolve outside ``src`` are left out unless ``follow_symlinks``; broken
    links and link loops are kept, so they are reported as failed files rather than
    silently vanishing. ``exclude`` are folders not to descend into (a mask folder inside
    SRC, say).

    One ``scandir`` per folder and string paths: the entries' types come with the
    listing, so a file costs no system call of its own unless it is a symlink (listing
    1.28M files: see scripts/bench/per_file.py).
    """
    root_real = os.path.realpath(src)
    excluded = {os.path.realpath(p) for p in exclude}
    items: List[Item] = []
    seen_dirs: set = set()
    classes: Dict[str, str] = {}
    top = os.fspath(src)

    def walk(folder: str, prefix: str) -> None:
        real_dir = os.path.realpath(folder)
        if real_dir in seen_dirs or real_dir in excluded:  # a directory link loop
            return
        seen_dirs.add(real_dir)
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError:  # unreadable, as os.walk skips it
            return
        subdirs = []
        class_name = _class_of(prefix, classes)  # every file of a folder shares its first folder
        append = items.append
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if entry.is_symlink() and (not follow_symlinks or os.path.realpath(entry.path) in seen_dirs):
                    continue
                subdirs.append(entry)
                continue
            name = entry.name
            if name.startswith(".") and ".latinhib-" in name:
                continue  # our own temporary files
            path = entry.path  # folder + name, made by scandir (os.path.join costs more than the rest)
            if (not follow_symlinks and entry.is_symlink() and os.path.exists(path)
                    and not _inside(root_real, path)):
                continue
            append(Item(path, prefix + name, class_name))
        for entry in subdirs:
            walk(os.path.join(folder, entry.name), prefix + entry.name + "/")

    walk(top, "")
    return items


def list_files_from(src: Path, lines: Iterable[str], *, follow_symlinks: bool = False) -> List[Item]:
    """Items from a list of paths (``--files-from``): relative to ``src``, or absolute
    inside it. A path outside ``src`` (``..``, another folder), or one that resolves
    through a symlink to outside ``src`` without ``follow_symlinks``, raises
    :class:`PathError` naming it, before anything is written.

    Whether a path leaves SRC through a symlink is asked of each folder once (its real
    path and its symlinks, cached) and of each file only when it is a symlink itself."""
    root = os.path.abspath(src)
    inside_root = root.rstrip(os.sep) + os.sep  # normpath has taken out every "..": a prefix test is enough
    root_real = os.path.realpath(src)
    items: List[Item] = []
    seen = set()
    classes: Dict[str, str] = {}
    folders: Dict[str, Tuple[bool, FrozenSet[str]]] = {}  # folder -> (real path inside SRC, its symlinks)
    for number, line in enumerate(lines, 1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if _plain(text):  # most lines of a list made by find or ls: nothing to normalise
            path, rel = inside_root + text, text
        else:
            path = os.path.normpath(text if os.path.isabs(text) else os.path.join(root, text))
            rel = path[len(inside_root):] if path.startswith(inside_root) else None
        if not rel:
            raise PathError(f"--files-from line {number}: {display(text)!r} is outside SRC {display(str(src))!r}")
        if not follow_symlinks and _leaves(root_real, path, folders):
            raise PathError(f"--files-from line {number}: {display(text)!r} is a symlink to outside SRC "
                            f"{display(str(src))!r}; pass --follow-symlinks to follow it")
        rel = rel.replace(os.sep, "/")
        if rel in seen:
            continue
        seen.add(rel)
        items.append(Item(path, rel, _class_of(rel, classes)))
    return items


def _plain(text: str) -> bool:
    """Whether ``text`` is a relative POSIX path that ``normpath`` would leave as it is (no
    ``.`` or ``..`` part, no doubled, leading or trailing slash): most lines of a list.
    Anything else (a name starting with a dot included) takes the slow, general way."""
    return (os.sep == "/" and not text.startswith(("/", "./", "../")) and text not in (".", "..")
            and "//" not in text and "/." not in text and not text.endswith("/"))


def _leaves(root_real: str, path: str, folders: Dict[str, Tuple[bool, FrozenSet[str]]]) -> bool:
    """Whether the existing ``path`` resolves to outside SRC (a missing one never does).

    Each folder is asked once (cached in ``folders``) whether its real path is inside SRC
    and which of its entries are symlinks (one ``scandir``, whose entry types come with the
    listing): a file of it is then checked only when it is a link, instead of one ``lstat``
    per line (--files-from with 1.28M lines: docs/SPEED.md#per-file-overhead)."""
    cut = path.rfind(os.sep)
    folder = path[:cut] or os.sep  # os.path.dirname, for a normalised absolute path
    known = folders.get(folder)
    if known is None:
        known = folders[folder] = (_inside(root_real, folder), _symlinks_in(folder))
    inside, links = known
    if not inside or path[cut + 1:] in links:
        return os.path.exists(path) and not _inside(root_real, path)
    return False


def _symlinks_in(folder: str) -> FrozenSet[str]:
    """The names of ``folder``'s entries that are symbolic links (none if it cannot be read)."""
    try:
        with os.scandir(folder) as listing:
            return frozenset(entry.name for entry in listing if entry.is_symlink())
    except OSError:
        return frozenset()


@dataclass
class Decoded:
    """One decoded image.

    pixels: (C, H, W) original pixels after EXIF orientation, uint8, or int32 holding
        16-bit values; C is 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
    model_input: (3, h, w) float32, resized to the model's input and normalised.
    format: the PIL format to write back (JPEG, PNG, ...). mode: the PIL mode to write
        (the file's own where the format holds it: 1-bit, palette, grey, CMYK, 16-bit ...).
    max_value: 255 or 65535. size: (W, H). info: what the writer keeps: icc_profile, exif,
        dpi, the palette of a palette image, ``lossless`` for a lossless WebP.
    jpeg: a plain JPEG's bytes whose decoding is left to the job's device (``bytes``: from a
        DataLoader worker they travel pickled through its pipe, where a tensor would cost a
        shared-memory file and a descriptor passed back):
        ``pixels`` and ``model_input`` are None until :func:`decode_on_device` fills them
        in, one batched call per batch (``decode(..., on_device=True)``).
    """

    pixels: Optional[torch.Tensor]
    model_input: Optional[torch.Tensor]
    format: str
    mode: str
    max_value: int
    size: Tuple[int, int]
    info: Dict[str, Any] = field(default_factory=dict)
    #: what decoded it, and so encodes it back: pillow, or torchvision (codec.py)
    codec: str = "pillow"
    jpeg: Optional[bytes] = None

    @property
    def color_channels(self) -> int:
        return 3 if self.pixels.shape[0] >= 3 else 1


def _to_tensor(image: Image.Image, channels: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    raw = bytearray(image.tobytes())
    flat = torch.frombuffer(raw, dtype=dtype)
    return flat.view(image.size[1], image.size[0], channels).permute(2, 0, 1)


def _work_image(image: Image.Image) -> Tuple[Image.Image, str, int]:
    """(image in a mode we compute in, mode to write back, max value)."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return image.convert("I"), "I;16", 65535
    if mode in ("RGBA", "LA"):
        return image, mode, 255
    if mode == "PA" or (mode == "P" and "transparency" in image.info):
        return image.convert("RGBA"), "RGBA", 255
    if mode == "P":  # written back in its own palette (encoding.to_pil)
        return image.convert("RGB"), "P", 255
    if mode == "1":  # computed in grey, written back as 1-bit (encoding.to_pil)
        return image.convert("L"), "1", 255
    if mode == "L":
        return image, "L", 255
    if mode == "CMYK":
        return image.convert("RGB"), "CMYK", 255
    return (image if mode == "RGB" else image.convert("RGB")), "RGB", 255


#: Why a file could not be opened, by errno: shared by decoding and by byte-for-byte copies.
READ_ERRORS = {
    errno.ENOENT: "no such file (a broken symlink?)",
    errno.ELOOP: "symlink loop",
    errno.EACCES: "permission denied",
}


def read_error(exc: OSError) -> str:
    """The one-line cause of an OSError raised while opening an input file."""
    return READ_ERRORS.get(exc.errno, f"cannot read: {exc.strerror or exc}")


def _is_empty(path: Union[Path, BinaryIO]) -> bool:
    if not isinstance(path, (str, os.PathLike)):  # a tar member's bytes
        return path.seek(0, os.SEEK_END) == 0
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return False


@contextlib.contextmanager
def bomb_warnings_ignored() -> Iterator[None]:
    """Silence Pillow's DecompressionBombWarning (images above ``Image.MAX_IMAGE_PIXELS``;
    above twice that Pillow refuses, and :func:`decode` reports it). It changes the
    process's warning filters for the duration, which ``warnings.catch_warnings`` does not
    do safely from several threads at once: enter it from one thread only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _unnamed(exc: BaseException) -> str:
    """Pillow's message without the ``<_io.BytesIO object at 0x...>`` it names for bytes
    from a tar member (the caller names the sample)."""
    return re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))


def _refuse_not_enhanceable(opened: Image.Image, fmt: str) -> None:
    """Raise :class:`NotEnhanceable` for an animation, a multi-page TIFF or a float image
    (a depth map, say: written back in 8 bits it would lose its values). MPO (a JPEG with
    extra pictures, as cameras write) is enhanced as the JPEG it starts with."""
    if opened.mode == "F":
        raise NotEnhanceable(f"32-bit float {fmt}: copied unchanged (only 8- and 16-bit images are enhanced)")
    frames = getattr(opened, "n_frames", 1)
    if frames <= 1 or fmt == "MPO":
        return
    if fmt == "TIFF":
        raise NotEnhanceable(f"multi-page TIFF with {frames} pages: copied unchanged "
                             f"(only single-page images are enhanced)")
    raise NotEnhanceable(f"animated {fmt} with {frames} frames: copied unchanged (only still images are enhanced)")


def webp_is_lossless(path: Union[Path, BinaryIO]) -> bool:
    """Whether a WebP file holds a lossless (VP8L) bitstream rather than a lossy (VP8) one.

    Pillow does not say (13.0): read the RIFF chunks. A simple file starts with its one
    image chunk; an extended one (``VP8X``) has metadata/alpha chunks before it. ``path``
    may be a binary file object (a tar member's bytes)."""
    if not isinstance(path, (str, os.PathLike)):  # its own copy: Pillow reads the same object
        return _webp_chunks_lossless(io.BytesIO(path.getvalue()))
    with open(path, "rb") as handle:
        return _webp_chunks_lossless(handle)


def _webp_chunks_lossless(handle: BinaryIO) -> bool:
    header = handle.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WEBP":
        return False
    while True:
        chunk = handle.read(8)
        if len(chunk) < 8:
            return False
        fourcc, size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if fourcc in (b"VP8L", b"VP8 "):
            return fourcc == b"VP8L"
        handle.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to even sizes


def decode(
    path: Union[Path, BinaryIO],
    input_size: Tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    quiet_bombs: bool = True,
    codec: str = "pillow",
    on_device: bool = False,
) -> Decoded:
    """Decode ``path`` (a file, or a binary file object: a tar member's bytes) for the
    pipeline; raises :class:`DecodeError` with the cause.

    ``quiet_bombs=False`` leaves the warning filters alone: for decoding threads, whose
    job holds :func:`bomb_warnings_ignored` from its main thread. ``codec="torchvision"``
    (``runtime.codec``, resolved): plain JPEGs are decoded by ``torchvision.io`` straight
    into a tensor (``codec.py``); every other file, and a JPEG it cannot read, by Pillow.
    ``on_device`` (with torchvision): a plain JPEG is only read and checked here, its bytes
    kept for :func:`decode_on_device` (a CUDA job decodes each batch with nvJPEG)."""
    fast = None
    try:
        with bomb_warnings_ignored() if quiet_bombs else contextlib.nullcontext():
            with Image.open(path) as opened:
                fmt = opened.format or "PNG"
                _refuse_not_enhanceable(opened, fmt)
                info = {k: opened.info[k] for k in ("icc_profile", "dpi") if k in opened.info}
                if codec == "torchvision":
                    fast = _torchvision_pixels(path, opened, info, decode_now=not on_device)
                if fast is None:
                    if opened.mode == "P" and "transparency" not in opened.info:
                        info["palette"] = opened.getpalette()
                    if fmt == "WEBP" and webp_is_lossless(path):
                        info["lossless"] = True
                    ImageOps.exif_transpose(opened, in_place=True)  # loads the pixels
                    image = opened
                    if "exif" in image.info:
                        info["exif"] = image.info["exif"]
                    work, out_mode, max_value = _work_image(image)
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"refused as a decompression bomb: {exc}") from None
    except OSError as exc:
        if exc.errno in READ_ERRORS:
            raise DecodeError(read_error(exc)) from None
        if _is_empty(path):  # Pillow's "cannot identify image file" hides the real cause
            raise DecodeError("empty file (0 bytes)") from None
        raise DecodeError(f"cannot decode: {_unnamed(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises SyntaxError, struct.error, ValueError...
        raise DecodeError(f"cannot decode: {type(exc).__name__}: {_unnamed(exc)}") from None
    if fmt == "MPO":
        fmt = "JPEG"
    if isinstance(fast, bytes):  # the file's bytes, for decode_on_device
        return Decoded(None, None, "JPEG", opened.mode, 255, opened.size, info, "torchvision", jpeg=fast)
    if fast is not None:
        mode = "RGB" if fast.shape[0] == 3 else "L"
        return _decoded(fast, "JPEG", mode, 255, input_size, mean, std, info, codec="torchvision")
    channels = len(work.getbands())
    if work.mode == "I":
        pixels = _to_tensor(work, 1, torch.int32).clamp(0, 65535)
    else:
        pixels = _to_tensor(work, channels)
    return _decoded(pixels, fmt, out_mode, max_value, input_size, mean, std, info)


def _torchvision_pixels(path: Union[Path, BinaryIO], opened: Image.Image, info: Dict[str, Any],
                        decode_now: bool = True) -> Union[torch.Tensor, bytes, None]:
    """A plain JPEG's pixels (C, H, W) uint8 by ``torchvision.io``, its EXIF kept in
    ``info``; None for any other file, or one torchvision cannot read (Pillow then decodes
    it and names what is wrong). Not ``decode_now``: the file's bytes, for
    :func:`decode_on_device`."""
    from . import codec

    if not codec.plain_jpeg(opened):
        return None
    if isinstance(path, (str, os.PathLike)):
        with open(path, "rb") as handle:
            data = handle.read()
    else:
        data = path.getvalue()
    if "exif" in opened.info:
        info["exif"] = opened.info["exif"]
    if not decode_now:
        return bytes(data)
    try:
        return codec.decode_jpegs([data], torch.device("cpu"))[0]
    except RuntimeError:
        return None


def decode_on_device(batch: List[Tuple[int, Optional[Decoded], Optional[DecodeError]]], input_size: Tuple[int, int],
                     mean: Sequence[float], std: Sequence[float], device: torch.device,
                     ) -> List[Tuple[int, Optional[Decoded], Optional[DecodeError]]]:
    """The JPEGs of a decoded batch ((index, decoded, error) triples) that ``decode(...,
    on_device=True)`` left as bytes, decoded in one batched ``torchvision.io`` call on
    ``device`` (nvJPEG on CUDA), their model inputs made there too. Should the batch call
    fail (a file libjpeg accepts but nvJPEG does not), each file is decoded on its own,
    and one that still fails goes through Pillow, which names the cause. Every model input
    of the batch is on ``device`` afterwards (a PNG's, a Pillow fallback's are moved), so
    the batch stacks as one tensor."""
    from . import codec

    waiting = [k for k, (_, decoded, _) in enumerate(batch) if decoded is not None and decoded.jpeg is not None]
    out = list(batch)
    pixels: List[Optional[torch.Tensor]] = []
    if waiting:
        try:
            pixels = codec.decode_jpegs([batch[k][1].jpeg for k in waiting], device)
        except RuntimeError:
            pixels = [None] * len(waiting)
    for k, decoded_pixels in zip(waiting, pixels):
        index, pending, _ = batch[k]
        if decoded_pixels is None:
            try:
                decoded_pixels = codec.decode_jpegs([pending.jpeg], device)[0]
            except RuntimeError:
                data = io.BytesIO(pending.jpeg)
                try:
                    out[k] = (index, decode(data, input_size, mean, std), None)
                except DecodeError as exc:
                    out[k] = (index, None, exc)
                continue
        mode = "RGB" if decoded_pixels.shape[0] == 3 else "L"
        out[k] = (index, _decoded(decoded_pixels, "JPEG", mode, 255, input_size, mean, std, pending.info,
                                  codec="torchvision"), None)
    for _, decoded, _ in out:
        if decoded is not None and decoded.model_input.device.type != device.type:  # decoded by the worker
            decoded.model_input = decoded.model_input.to(device, non_blocking=True)
    return out


def _resize_8bit(color: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(C, H, W) uint8 -> (C, h, w) float holding whole grey levels, by torch's uint8
    antialiased bilinear kernel (CPU only)."""
    small = F.interpolate(color[None].contiguous(memory_format=torch.channels_last), size=size,
                          mode="bilinear", antialias=True, align_corners=False)[0]
    return small.contiguous().float()


def _resize_8bit_float(color: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """:func:`_resize_8bit` for pixels on a device whose resize kernels take float (CUDA,
    after :func:`decode_on_device`): the same filter in float, rounded as uint8 would be."""
    return F.interpolate(color[None].float(), size=size, mode="bilinear", antialias=True,
                         align_corners=False)[0].round_().clamp_(0, 255)


def _decoded(
    pixels: torch.Tensor,
    fmt: str,
    out_mode: str,
    max_value: int,
    input_size: Tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    info: Dict[str, Any],
    codec: str = "pillow",
) -> Decoded:
    """A :class:`Decoded` with the model input made from ``pixels`` (C, H, W).

    8-bit images are resized in uint8 (torch's antialiased bilinear, the kernel
    torchvision's ``Resize`` uses on tensors; within one grey level of Pillow's, ~4x
    faster); 16-bit ones in float. Grey images are repeated over three channels."""
    h, w = input_size
    color = pixels[:3] if pixels.shape[0] >= 3 else pixels[:1]
    if max_value == 255:
        resize = _resize_8bit if pixels.device.type == "cpu" else _resize_8bit_float
        model_input = resize(color, (h, w)).div_(255.0)
    else:
        gray = color.float()[None] / max_value
        model_input = F.interpolate(gray, size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    if model_input.shape[0] == 1:
        model_input = model_input.expand(3, -1, -1).contiguous()
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    model_input = model_input.sub_(mean_t).div_(std_t)
    return Decoded(pixels, model_input, fmt, out_mode, max_value, (pixels.shape[2], pixels.shape[1]), info, codec)
