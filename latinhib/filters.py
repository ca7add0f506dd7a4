"""Pure tensor filters on ``(B, C, H, W)`` batches: 2-D filtering with reflect padding,
the separable Gaussian blur and the Laplacian-of-Gaussian response.

Every function works on any device and floating dtype and never modifies its input.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .kernels import check_sigma, default_kernel_size, gaussian_kernel1d, log_kernel2d

__all__ = [
    "blur_uint8",
    "downsampled_gaussian_blur",
    "filter2d",
    "gaussian_blur",
    "log_filter",
    "log_filter_separable",
    "pad_mode",
]


def _check_image(image: torch.Tensor, name: str = "image") -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} should be a torch.Tensor. Got {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(f"{name} should be (B, C, H, W). Got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"{name} should have a floating dtype. Got {image.dtype}")


def pad_mode(size: int, pad: int) -> str:
    """Reflect padding where the axis is long enough for it, else replicate.

    Reflection needs ``pad < size``; a 7x7 feature map under a 9x9 kernel, or a 1-pixel
    image, falls back to repeating the border, which is the closest well-defined choice.
    """
    return "reflect" if pad < size else "replicate"


def filter2d(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of ``image`` (B, C, H, W) with one odd ``kernel`` (kh, kw).

    Reflect padding keeps the output at (B, C, H, W). Computed in the image's dtype.
    """
    _check_image(image)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"kernel should be (kh, kw) with odd sides. Got shape {tuple(kernel.shape)}")
    b, c, h, w = image.shape
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    # One pad call per axis, because either axis may need the replicate fallback.
    padded = F.pad(image, (pw, pw, 0, 0), mode=pad_mode(w, pw))
    padded = F.pad(padded, (0, 0, ph, ph), mode=pad_mode(h, ph))
    weight = kernel.to(device=image.device, dtype=image.dtype)[None, None].expand(c, 1, -1, -1)
    return F.conv2d(padded, weight, groups=c)


def _blur_axis(image: torch.Tensor, weights: Sequence[float], dim: int) -> torch.Tensor:
    """Correlate ``image`` with the symmetric 1-D ``weights`` along ``dim`` (2 or 3).

    Written as a sum of shifted slices: on CPU builds this is far faster than a depthwise
    ``conv2d`` for image-sized inputs (docs/SPEED.md#filters).
    """
    radius = len(weights) // 2
    size = image.shape[dim]
    pad = (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius)
    padded = F.pad(image, pad, mode=pad_mode(size, radius))
    blurred = padded.narrow(dim, 0, size) * weights[0]
    for offset in range(1, len(weights)):
        blurred.add_(padded.narrow(dim, offset, size), alpha=weights[offset])
    return blurred


def gaussian_blur(image: torch.Tensor, sigma: float, kernel_size: Optional[int] = None) -> torch.Tensor:
    """Separable Gaussian blur of ``image`` (B, C, H, W) with reflect padding.

    ``kernel_size`` defaults to the smallest odd size covering +-3 sigma. Returns a new
    tensor of the same shape and dtype.
    """
    _check_image(image)
    check_sigma(sigma, "blur sigma")
    return _gaussian_axis(_gaussian_axis(image, sigma, 3, kernel_size), sigma, 2, kernel_size)


def _gaussian_axis(image: torch.Tensor, sigma: float, dim: int, kernel_size: Optional[int] = None) -> torch.Tensor:
    """The 1-D Gaussian of ``sigma`` along ``dim`` (2 or 3), reflect padded."""
    size = default_kernel_size(sigma) if kernel_size is None else kernel_size
    return _blur_axis(image, _gaussian_weights(size, float(sigma)), dim)


@functools.lru_cache(maxsize=256)
def _gaussian_weights(size: int, sigma: float) -> Tuple[float, ...]:
    """The 1-D Gaussian's taps as Python floats: they travel to the device as scalars (no
    host sync per tap), and are built once per (size, sigma), not once per image (a few
    percent of the pipeline's time per 500x375 image when the model is free)."""
    return tuple(gaussian_kernel1d(size, sigma, dtype=torch.float64).tolist())


def log_filter(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Mexican-hat (negative LoG) response of ``maps`` (B, C, h, w); same shape out."""
    _check_image(maps, "maps")
    kernel = log_kernel2d(kernel_size, sigma, device=maps.device, dtype=maps.dtype)
    return filter2d(maps, kernel)


def log_filter_separable(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """:func:`log_filter` as a sum of 1-D passes: the same kernel (to float rounding), with
    O(k) work per pixel instead of O(k^2), for the wide kernels of scale selection.

    The kernel is ``a * (h - mean(h))`` with ``h(x, y) = g(x) g(y) - u(x) g(y) - g(x) u(y)``,
    ``g(t) = exp(-t^2 / 2 sigma^2)`` and ``u(t) = t^2 / (2 sigma^2) g(t)``: three separable
    products and a box (the mean). Same padding as :func:`filter2d`.
    """
    _check_image(maps, "maps")
    kernel = log_kernel2d(kernel_size, sigma, dtype=torch.float64)  # only for its scale a
    half = (kernel_size - 1) / 2
    t = torch.arange(kernel_size, dtype=torch.float64) - half
    g = torch.exp(-(t**2) / (2.0 * sigma**2))
    u = t**2 / (2.0 * sigma**2) * g
    h = torch.outer(g, g) - torch.outer(u, g) - torch.outer(g, u)
    mean = float(h.mean())
    scale = float(kernel.abs().sum() / (h - mean).abs().sum())
    b, c, height, width = maps.shape
    pad = kernel_size // 2
    padded = F.pad(maps, (pad, pad, 0, 0), mode=pad_mode(width, pad))
    padded = F.pad(padded, (0, 0, pad, pad), mode=pad_mode(height, pad))
    flat = padded.reshape(b * c, 1, *padded.shape[-2:])

    def along(image: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
        weight = taps.to(device=maps.device, dtype=maps.dtype)
        weight = weight.view(1, 1, -1, 1) if dim == 2 else weight.view(1, 1, 1, -1)
        return F.conv2d(image, weight)

    g_rows, u_rows = along(flat, g, 2), along(flat, u, 2)
    ones = torch.ones(kernel_size, dtype=torch.float64)
    response = along(g_rows, g, 3) - along(u_rows, g, 3) - along(g_rows, u, 3)
    response = response - mean * along(along(flat, ones, 2), ones, 3)
    return (response * scale).reshape(b, c, height, width)


def gaussian_filter(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Plain Gaussian smoothing of ``maps`` with the same k and sigma as :func:`log_filter`.

    The control for the Mexican hat: same support, no inhibitory surround.
    """
    _check_image(maps, "maps")
    g = gaussian_kernel1d(kernel_size, sigma, device=maps.device, dtype=torch.float64)
    return filter2d(maps, torch.outer(g, g).to(maps.dtype))


def downsampled_gaussian_blur(image: torch.Tensor, sigma: float, max_sigma: float = 3.0) -> torch.Tensor:
    """Gaussian blur that stays cheap for large sigma: area-downsample, blur, upsample.

    For ``sigma <= max_sigma`` this is exactly :func:`gaussian_blur`. Above it, the image
    is averaged over ``f x f`` cells (f = floor(sigma / max_sigma) + 1), blurred with the
    sigma that makes the total match (an f-box has variance (f^2 - 1) / 12), and brought
    back with bilinear interpolation. The cost no longer grows with sigma, which is what
    keeps a 12000x9000 photo at a blur of sigma 150 px in seconds rather than minutes.
    """
    _check_image(image)
    check_sigma(sigma, "blur sigma")
    if sigma <= max_sigma:
        return gaussian_blur(image, sigma)
    h, w = image.shape[-2:]
    factor = int(sigma // max_sigma) + 1
    if min(h, w) < 2 * factor:
        return gaussian_blur(image, sigma)
    small = F.avg_pool2d(image, factor, stride=factor, ceil_mode=True, count_include_pad=False)
    residual = math.sqrt(max(sigma**2 - (factor**2 - 1) / 12.0, 0.25)) / factor
    small = gaussian_blur(small, residual)
    # Upsample by the cell size itself, not to (h, w): when h or w is not a multiple of
    # the factor, the last cell is partial and "size=" would stretch the grid by up to
    # half a cell; scale_factor keeps every cell centred on the pixels it averaged.
    # channels_last: the same bits (tests/test_speed_paths.py), faster on CPU for RGB
    # (docs/SPEED.md#filters).
    upsampled = F.interpolate(
        small.contiguous(memory_format=torch.channels_last),
        scale_factor=factor,
        mode="bilinear",
        align_corners=False,
        recompute_scale_factor=False,
    )
    return upsampled[..., :h, :w]


def blur_uint8(image: torch.Tensor, sigma: float, max_sigma: float = 3.0) -> torch.Tensor:
    """Gaussian blur of 8-bit images (B, C, H, W) uint8, for writing files: uint8 out.

    The same plan as :func:`downsampled_gaussian_blur`, with every full-size pass in
    uint8, where torch has vectorised kernels for channels_last resizing, several times
    faster than the float passes (docs/SPEED.md#filters). For ``sigma > max_sigma`` the image is shrunk by ``f`` (f =
    floor(sigma / max_sigma) + 1) with antialiased bilinear resizing, blurred in float with
    the sigma that makes the total match (shrinking and enlarging are tents of variance
    f^2 / 6 each), rounded to uint8 and resized back bilinearly; a step edge comes out as
    wide as under the exact blur (within 3%). Against the exact float blur, rounded: under
    1.5 grey levels on average and at most 4 away from the border (tests/test_filters.py).
    Smaller sigmas blur at full size in float and round once.
    """
    _check_uint8(image)
    check_sigma(sigma, "blur sigma")
    h, w = image.shape[-2:]
    factor = int(sigma // max_sigma) + 1
    if factor == 1 or min(h, w) < 2 * factor:
        return _round_uint8(gaussian_blur(image.float(), sigma))
    small_size = (math.ceil(h / factor), math.ceil(w / factor))
    image = image.contiguous(memory_format=torch.channels_last)
    small = _resize_uint8(image, small_size, antialias=True)
    # Per axis, as rounding the small size up makes the two scales differ on thin images.
    # Shrinking and enlarging are each a tent of half-width `scale` (variance scale^2 / 6).
    blurred = small.float()
    for dim, scale in ((3, w / small_size[1]), (2, h / small_size[0])):
        residual = math.sqrt(max(sigma**2 - scale**2 / 3.0, 0.25)) / scale
        blurred = _gaussian_axis(blurred, residual, dim)
    small = _round_uint8(blurred).contiguous(memory_format=torch.channels_last)
    return _resize_uint8(small, (h, w), antialias=False)


def _resize_uint8(image: torch.Tensor, size: Tuple[int, int], antialias: bool) -> torch.Tensor:
    """Bilinear resize of uint8 images: torch's uint8 kernels on CPU; on other devices in
    float, rounded (uint8 resizing is a CPU speciality)."""
    if image.device.type == "cpu":
        return F.interpolate(image, size=size, mode="bilinear", antialias=antialias, align_corners=False)
    resized = F.interpolate(image.float(), size=size, mode="bilinear", antialias=antialias, align_corners=False)
    return _round_uint8(resized)


def _check_uint8(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image should be a torch.Tensor. Got {type(image).__name__}")
    if image.ndim != 4 or image.dtype != torch.uint8:
        raise ValueError(f"image should be (B, C, H, W) uint8. Got {image.dtype} {tuple(image.shape)}")


def _round_uint8(values: torch.Tensor) -> torch.Tensor:
    return values.round_().clamp_(0, 255).to(torch.uint8)
