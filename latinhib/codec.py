"""JPEG decoding and encoding through ``torchvision.io`` (libjpeg-turbo on a CPU, nvJPEG on
CUDA) beside Pillow: ``runtime.codec`` (auto, pillow, torchvision).

One code path for every device: :func:`decode_jpegs` and :func:`encode_jpegs` take lists
(a batch) and a ``device``, and the only difference on CUDA is that device. Pixels come out
as (C, H, W) uint8 tensors, the layout the pipeline computes in, with no copy through a
Pillow image (``Image.tobytes`` and a ``bytearray`` are two full copies of a 12-megapixel
image).

Only plain JPEGs take this path (:func:`plain_jpeg`): RGB or grey, no EXIF rotation to
apply. CMYK, rotated or other files go through Pillow as before. What Pillow would keep is
kept here too: the ICC profile and the EXIF block are spliced back into the encoded bytes
(:func:`with_metadata`), as Pillow writes them.

``auto`` (:func:`resolve`): torchvision where it is measured faster, Pillow elsewhere.
``scripts/bench/ceiling.py`` prints the comparison; on this project's 2-core CPU (one
thread, libjpeg-turbo in both) torchvision decoded 500x375 JPEGs in 2.6 ms against
Pillow's 3.7 (pixels identical), and 12-MP ones in 197 ms against 567 (Pillow's copies out
of its image dominate), and encoded at the same speed: so ``auto`` is torchvision on
every device where torchvision.io has JPEG support.
"""
from __future__ import annotations

import struct
import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch

__all__ = ["CODECS", "available", "decode_jpegs", "encode_jpegs", "plain_jpeg", "resolve", "with_metadata"]

#: ``runtime.codec`` values.
CODECS = ("auto", "pillow", "torchvision")
#: APP2 marker payload of an ICC profile, and the most profile bytes one marker carries.
ICC_MARK = b"ICC_PROFILE\x00"
ICC_CHUNK = 65519
# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec (a new
# dependency, not yet needed): the warning, said on every call, is silenced by its message.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

#: EXIF orientation tag (0x0112): 1 = as stored; anything else needs a rotation Pillow does.
ORIENTATION = 0x0112


def available() -> bool:
    """Whether this torchvision has JPEG decode and encode (built with libjpeg)."""
    try:
        from torchvision.io import decode_jpeg, encode_jpeg  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def resolve(codec: str, device: torch.device) -> str:
    """The codec a job uses: ``auto`` is torchvision wherever it is available (measured
    faster on the CPU and nvJPEG on CUDA; see the module's docstring), else Pillow. Asking
    for torchvision where it is missing is an error naming the key."""
    if codec not in CODECS:
        raise ValueError(f"runtime.codec: {codec!r} is not allowed; choose {', '.join(CODECS)}")
    if codec == "pillow":
        return "pillow"
    if not available():
        if codec == "torchvision":
            raise ValueError("runtime.codec: torchvision, but this torchvision has no JPEG support (torchvision.io)")
        return "pillow"
    return "torchvision"


def plain_jpeg(opened: Any) -> bool:
    """Whether a Pillow image opened lazily (header read, no pixels) is a JPEG this path
    decodes exactly as Pillow would: RGB or grey, and no EXIF rotation."""
    if opened.format not in ("JPEG", "MPO") or opened.mode not in ("RGB", "L"):
        return False
    try:
        orientation = opened.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: let Pillow decide
        return False
    return orientation in (1, None)


def decode_jpegs(datas: Sequence[bytes], device: torch.device) -> List[torch.Tensor]:
    """JPEG files' bytes -> (C, H, W) uint8 pixels on ``device`` (C = 3, or 1 for grey), in
    one batched call. Raises RuntimeError for a corrupt file (the caller falls back to
    Pillow, which names the cause)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    if not tensors:
        return []
    decoded = decode_jpeg(tensors, mode=ImageReadMode.UNCHANGED, device=device)
    return list(decoded)


def encode_jpegs(images: Sequence[torch.Tensor], quality: int, infos: Sequence[Optional[Dict[str, Any]]] = ()) -> List[bytes]:
    """(C, H, W) uint8 pixels (C = 1 or 3), on any one device -> JPEG bytes at ``quality``,
    in one batched call on the images' device; ``infos[k]`` (a :class:`~latinhib.data.Decoded`'s
    info) puts its ICC profile and EXIF back."""
    from torchvision.io import encode_jpeg

    if not images:
        return []
    # As they are: torchvision makes (H, W, C) rows for libjpeg itself, which for the
    # pipeline's channels-last pixels is a no-op; .contiguous() here first was a full
    # (C, H, W) copy, 1.4 of the 1.9 ms a 500x375 encode took (docs/SPEED.md#codec).
    encoded = encode_jpeg(list(images), quality=quality)
    infos = list(infos) + [None] * (len(images) - len(infos))
    out = []
    for data, info in zip(encoded, infos):
        raw = data.cpu().numpy().tobytes()
        out.append(with_metadata(raw, (info or {}).get("exif"), (info or {}).get("icc_profile")))
    return out


def with_metadata(jpeg: bytes, exif: Optional[bytes] = None, icc: Optional[bytes] = None) -> bytes:
    """``jpeg`` with an EXIF block (APP1) and an ICC profile (APP2 markers, split as the ICC
    spec says) inserted after SOI and a JFIF APP0, where Pillow puts them."""
    if not exif and not icc:
        return jpeg
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream")
    position = 2
    if jpeg[2:4] == b"\xff\xe0":  # JFIF APP0 first, as readers expect
        position = 4 + struct.unpack(">H", jpeg[4:6])[0]
    segments = []
    if exif:
        payload = exif if exif.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + exif
        segments.append(_segment(0xE1, payload))
    if icc:
        chunks = [icc[i:i + ICC_CHUNK] for i in range(0, len(icc), ICC_CHUNK)]
        for number, chunk in enumerate(chunks, 1):
            segments.append(_segment(0xE2, ICC_MARK + bytes([number, len(chunks)]) + chunk))
    return jpeg[:position] + b"".join(segments) + jpeg[position:]


def _segment(marker: int, payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise ValueError(f"JPEG marker payload of {len(payload)} bytes is too long")
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
