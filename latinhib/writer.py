"""Everything the job writes: output paths that mirror SRC, atomic writes (temporary name
in the destination folder, then rename), byte-for-byte copies, image and mask encoding,
and the JSONL manifest. A process killed at any moment leaves no partial file under a
final name: rename is atomic on POSIX file systems.

A write that fails because the folder can take no more (a full disk or quota, a read-only
file system) raises :class:`DestinationUnusable` instead of the OSError: every later
write there would fail the same way, so the job stops at the first (``pipeline``) rather
than failing each remaining file with the same message.
"""
from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import re
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Tuple

import torch
import torch.nn.functional as F
from PIL import Image

from .data import Decoded

__all__ = [
    "CONFIG_NAME",
    "DestinationUnusable",
    "MANIFEST_NAME",
    "Manifest",
    "atomic_write",
    "atomic_write_bytes",
    "copy_file",
    "is_job_file",
    "mask_path",
    "output_path",
    "read_manifest",
    "remove_stale_temps",
    "heat_colors",
    "save_heatmap",
    "save_image",
    "save_mask",
    "temp_path",
]

MANIFEST_NAME = "latinhib-manifest.jsonl"
CONFIG_NAME = "latinhib-config.yaml"
TEMP_MARK = ".latinhib-"
#: Extensions whose format we save explicitly (PIL guesses the rest from the name).
SAVE_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF"}
#: errno values after which nothing more can be written to a folder: no space left, quota
#: exceeded, read-only file system (a disk that failed is often remounted read-only).
UNUSABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class DestinationUnusable(Exception):
    """Writing ``path`` failed with one of :data:`UNUSABLE_ERRNOS`. Not an OSError, so no
    handler of one file's write error takes it for that file's failure; the cause is
    chained (``__cause__``)."""

    def __init__(self, path: Path, error: OSError):
        self.path = Path(path)
        self.errno = error.errno
        self.strerror = error.strerror or os.strerror(error.errno)
        super().__init__(f"{self.path}: {self.strerror}")


#: The files a job writes at DST's top level (config, manifest, manifest parts, lock).
JOB_FILE = re.compile(r"^latinhib-(config\.yaml|manifest(\.part-\d+-of-\d+)?\.jsonl|[^/]*\.lock)$")


def is_job_file(rel: str) -> bool:
    """Whether an input's output path would be one of the job's own files in DST (a SRC
    that is itself a latinhib DST): such a file is never copied over them."""
    return JOB_FILE.match(rel) is not None


def output_path(dst: Path, rel: str) -> Path:
    """``DST/<rel>``: same relative path, file name and extension as the input."""
    return dst / rel


def mask_path(folder: Path, rel: str) -> Path:
    """``DIR/<rel>.png`` (``cat/001.jpg`` -> ``cat/001.jpg.png``: no clash between
    ``a.jpg`` and ``a.png``)."""
    return folder / f"{rel}.png"


def temp_path(path: Path) -> Path:
    """A hidden temporary name next to ``path``: the process id (for stale-file cleanup),
    then a random token, unique across threads and across machines that share DST (two
    hosts can run processes with the same pid; two writers of one temporary file would
    rename a mix of both)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(6)}.tmp")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``; the temporary file is removed
    if ``write`` fails, so only complete files ever carry a final name (and a full disk
    gets back the space the half-written file took). Raises :class:`DestinationUnusable`
    for a full disk or quota, or a read-only file system."""
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:  # never created, or the file system is read-only now
            pass
        if isinstance(exc, OSError) and exc.errno in UNUSABLE_ERRNOS:
            raise DestinationUnusable(path, exc) from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)

    atomic_write(path, write)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (a write may take only part of
    it). Every byte the job writes into a file goes through here or ``shutil.copyfile``
    (the tests simulate a full disk at these two places)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def remove_stale_temps(folder: Path) -> int:
    """Delete the temporary files (``.name.latinhib-<pid>-<token>.tmp``) that a killed job
    left under ``folder``; returns how many. They never carry a final name, so this is
    tidying, not correctness. Files of a live process (this one, or another latinhib still
    writing here) are left alone. Only for runs that own the whole folder (not shards)."""
    pattern = re.compile(r"^\..+" + re.escape(TEMP_MARK) + r"(\d+)-[0-9a-f]+\.tmp$")  # token: hex, or a thread id
    removed = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            match = pattern.match(name)
            if match is None or _alive(int(match.group(1))):
                continue
            try:
                os.unlink(os.path.join(dirpath, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def copy_file(src: Path, dst: Path) -> None:
    """Byte-for-byte copy, atomically (no decoding)."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a CPU tensor, in its (contiguous) element order.

    Not ``bytes(tensor.untyped_storage())``: that iterates the storage one element at a
    time in Python, ~3 s for one 600x400 RGB image (it was 95% of ``enhance``'s time);
    this is a single memcpy (~0.1 ms), with no numpy needed."""
    tensor = tensor.detach().cpu().contiguous()
    return ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size())


def to_pil(pixels: torch.Tensor, decoded: Decoded) -> Image.Image:
    """(C, H, W) integer pixels in the decoded image's working mode -> a PIL image in the
    file's own mode (alpha kept; CMYK JPEGs written as CMYK; 16-bit stays 16-bit).

    A 1-bit image stays 1-bit: the grey blur is thresholded at half (no dithering, which
    would put back the fine texture the blur removed), so detail finer than the blur
    disappears there; kept pixels are black or white already and pass unchanged. A
    palette image is mapped back onto its own palette (nearest colour, no dithering):
    kept pixels are palette colours and come back exact, blurred ones take the nearest."""
    channels = pixels.shape[0]
    hwc = pixels.permute(1, 2, 0).contiguous()
    w, h = decoded.size
    if decoded.max_value == 65535:
        return Image.frombytes("I;16", (w, h), _int16_bytes(hwc))
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    image = Image.frombytes(mode, (w, h), tensor_bytes(hwc.to(torch.uint8)))
    if decoded.mode == "CMYK":
        image = image.convert("CMYK")
    elif decoded.mode == "1":
        image = image.convert("1", dither=Image.Dither.NONE)
    elif decoded.mode == "P" and decoded.info.get("palette"):
        palette = Image.new("P", (1, 1))
        palette.putpalette(decoded.info["palette"])
        image = image.quantize(palette=palette, dither=Image.Dither.NONE)
    return image


def _int16_bytes(hwc: torch.Tensor) -> bytes:
    values = hwc.to(torch.int32).clamp(0, 65535).view(-1)
    # little-endian uint16 without numpy: low byte, high byte interleaved.
    pairs = torch.stack([values & 0xFF, values >> 8], dim=1).to(torch.uint8)
    return tensor_bytes(pairs)


def encode(image: Image.Image, fmt: str, info: Dict[str, Any], jpeg_quality: int) -> bytes:
    """Encode ``image`` in ``fmt``: lossless formats (PNG, BMP, TIFF as LZW, and a WebP
    that was lossless, ``info["lossless"]``) stay lossless; JPEG and lossy WebP at
    ``jpeg_quality``."""
    options: Dict[str, Any] = {}
    if info.get("icc_profile"):
        options["icc_profile"] = info["icc_profile"]
    if fmt in ("JPEG", "WEBP"):
        if fmt == "WEBP" and info.get("lossless"):
            # quality then means effort (Pillow's default kept); exact: keep the colour under
            # fully transparent pixels, which libwebp otherwise rewrites
            options.update(lossless=True, exact=True)
        else:
            options["quality"] = jpeg_quality
        if info.get("exif"):
            options["exif"] = info["exif"]
    if fmt == "JPEG" and image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGB")
    if fmt == "BMP" and image.mode in ("LA",):
        image = image.convert("RGBA")
    if fmt == "TIFF":
        options["compression"] = "tiff_lzw" if image.mode != "I;16" else None
        options = {k: v for k, v in options.items() if v is not None}
    buffer = io.BytesIO()
    image.save(buffer, format=fmt if fmt in SAVE_FORMATS else "PNG", **options)
    return buffer.getvalue()


def save_image(pixels: torch.Tensor, decoded: Decoded, path: Path, jpeg_quality: int) -> None:
    """Encode and atomically write an enhanced image in its original format."""
    data = encode(to_pil(pixels, decoded), decoded.format, decoded.info, jpeg_quality)
    atomic_write_bytes(path, data)


def save_mask(mask: torch.Tensor, path: Path) -> None:
    """A (H, W) mask in [0, 1] as a one-channel PNG, 255 = kept sharp, 0 = inhibited."""
    values = (mask.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8).contiguous()
    h, w = values.shape
    image = Image.frombytes("L", (w, h), tensor_bytes(values))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    atomic_write_bytes(path, data)


#: A few stops of matplotlib's 'inferno' (black -> purple -> red -> orange -> pale yellow):
#: perceptually ordered and readable in grey, so no matplotlib dependency is needed.
HEAT_STOPS = (
    (0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99),
    (212, 72, 66), (245, 125, 21), (250, 193, 39), (252, 255, 164),
)


def heat_colors(values: torch.Tensor) -> torch.Tensor:
    """(H, W) values in [0, 1] -> (3, H, W) uint8 'inferno' colours (linear between stops)."""
    if values.ndim != 2:
        raise ValueError(f"values should be (H, W). Got shape {tuple(values.shape)}")
    stops = torch.tensor(HEAT_STOPS, dtype=torch.float32, device=values.device)
    position = torch.nan_to_num(values.float()).clamp(0, 1) * (len(HEAT_STOPS) - 1)
    low = position.floor().long().clamp(max=len(HEAT_STOPS) - 2)
    weight = (position - low)[..., None]
    colours = stops[low] * (1 - weight) + stops[low + 1] * weight
    return colours.round_().clamp_(0, 255).to(torch.uint8).permute(2, 0, 1).contiguous()


def heatmap_image(importance: torch.Tensor, size: Tuple[int, int]) -> Image.Image:
    """A (h, w) importance map in [0, 1], scaled bilinearly to ``size`` (H, W) and colour
    mapped, as an RGB PIL image."""
    if importance.shape[-2:] != tuple(size):
        importance = F.interpolate(importance.float()[None, None], size=tuple(size), mode="bilinear",
                                   align_corners=False)[0, 0]
    rgb = heat_colors(importance).cpu().permute(1, 2, 0).contiguous()
    return Image.frombytes("RGB", (size[1], size[0]), tensor_bytes(rgb))


def save_heatmap(importance: torch.Tensor, size: Tuple[int, int], path: Path) -> None:
    """An enhanced image's combined importance (h, w) as an RGB PNG at the image's own
    ``size`` (H, W): bright = important (kept sharp), dark = blurred."""
    buffer = io.BytesIO()
    heatmap_image(importance, size).save(buffer, format="PNG")
    data = buffer.getvalue()
    atomic_write_bytes(path, data)


def read_manifest(path: Path) -> Dict[str, Dict[str, Any]]:
    """path -> last entry of an existing manifest; a torn last line (a killed job) is
    ignored."""
    entries: Dict[str, Dict[str, Any]] = {}
    try:
        with open(path, "r", encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                    entries[entry["path"]] = entry
    except FileNotFoundError:
        pass
    return entries


class Manifest:
    """Append-only JSONL, one object per input, written batch by batch.

    Each batch's lines go out in one :func:`write_all` on an ``O_APPEND`` descriptor, not
    through a buffered handle: a write that fails part-way (a full disk) is cut back to
    the last whole line, so the file holds exactly the entries whose write succeeded, and
    no buffer is left for ``close`` to fail on. A torn last line left by a killed process
    is cut off on opening."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        self._lock = threading.Lock()
        try:
            _cut_torn_line(self._fd)
        except OSError as exc:
            os.close(self._fd)
            if exc.errno in UNUSABLE_ERRNOS:
                raise DestinationUnusable(path, exc) from exc
            raise

    def write(self, entries: Iterable[Dict[str, Any]]) -> None:
        """Append ``entries``; raises :class:`DestinationUnusable` (none of them written) for
        a full disk or a read-only file system."""
        data = "".join(json.dumps(entry, ensure_ascii=True) + "\n" for entry in entries).encode("ascii")
        if not data:
            return
        with self._lock:
            size = os.fstat(self._fd).st_size
            try:
                write_all(self._fd, data)
            except OSError as exc:
                try:
                    os.ftruncate(self._fd, size)  # no half line: the batch is redone next run
                except OSError:
                    pass
                if exc.errno in UNUSABLE_ERRNOS:
                    raise DestinationUnusable(self.path, exc) from exc
                raise

    def close(self) -> None:
        os.close(self._fd)

    @staticmethod
    def compact(path: Path, order: List[str], entries: Dict[str, Dict[str, Any]]) -> None:
        """Rewrite ``path`` atomically with one line per input, in listing order."""
        lines = [json.dumps(entries[rel], ensure_ascii=True) + "\n" for rel in order if rel in entries]
        atomic_write_bytes(path, "".join(lines).encode("ascii"))


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
