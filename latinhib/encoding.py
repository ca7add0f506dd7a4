"""Pixels to file bytes: a result tensor back to a PIL image in the input's own mode,
encoded in the input's own format (lossless stays lossless), masks and importance heatmaps
as PNGs. Written through :func:`files.atomic_write_bytes`, so an encoded file is whole or
absent.
"""
from __future__ import annotations

import ctypes
import io
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from PIL import Image

from .data import Decoded
from .files import atomic_write_bytes

__all__ = [
    "HEAT_STOPS",
    "encode",
    "heat_colors",
    "heatmap_image",
    "save_heatmap",
    "save_image",
    "save_mask",
    "tensor_bytes",
    "to_pil",
]

#: Extensions whose format we save explicitly (PIL guesses the rest from the name).
SAVE_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF"}


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a CPU tensor, in its (contiguous) element order.

    Not ``bytes(tensor.untyped_storage())``: that iterates the storage one element at a
    time in Python, seconds per image (docs/SPEED.md#encoding); this is a single memcpy,
    with no numpy needed."""
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
    """Encode and atomically write an enhanced image in its original format: a JPEG that
    ``torchvision.io`` decoded is encoded by it too, on the pixels' device (``codec.py``)."""
    if decoded.codec == "torchvision" and decoded.format == "JPEG" and decoded.mode in ("RGB", "L"):
        from .codec import encode_jpegs

        data = encode_jpegs([pixels.to(torch.uint8)], jpeg_quality, [decoded.info])[0]
    else:
        data = encode(to_pil(pixels.cpu(), decoded), decoded.format, decoded.info, jpeg_quality)
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
