"""Kernel construction: the Gaussian used by the blur and the Laplacian of Gaussian
("Mexican hat") used for lateral inhibition.

Only kernels are built here; applying them lives in :mod:`latinhib.filters`. Every
function takes ``device`` and ``dtype`` so that new tensors follow their input.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = [
    "check_kernel_size",
    "check_sigma",
    "default_kernel_size",
    "gaussian_kernel1d",
    "gaussian_kernel2d",
    "log_kernel2d",
]


def check_kernel_size(kernel_size: int, name: str = "kernel_size") -> int:
    """Validate an odd kernel size >= 3 and return it as an ``int``."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise ValueError(f"{name} should be an odd integer >= 3. Got {kernel_size!r}")
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"{name} should be an odd integer >= 3. Got {kernel_size}")
    return kernel_size


def check_sigma(sigma: float, name: str = "sigma") -> float:
    """Validate a finite sigma > 0 and return it as a ``float``."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise ValueError(f"{name} should be a number > 0. Got {sigma!r}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"{name} should be a number > 0. Got {sigma}")
    return float(sigma)


def default_kernel_size(sigma: float) -> int:
    """Smallest odd size covering +-3 sigma (99.7% of a Gaussian's mass)."""
    return 2 * math.ceil(3.0 * check_sigma(sigma)) + 1


def _centered_grid(kernel_size: int, device, dtype) -> torch.Tensor:
    half = (kernel_size - 1) / 2
    return torch.arange(kernel_size, device=device, dtype=dtype) - half


def gaussian_kernel1d(
    kernel_size: int,
    sigma: float,
    *,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Normalised 1-D Gaussian of shape ``(kernel_size,)`` that sums to one."""
    check_kernel_size(kernel_size)
    check_sigma(sigma)
    # Built in float64 and cast once, so float16/bfloat16 kernels still sum to ~1.
    x = _centered_grid(kernel_size, device, torch.float64)
    kernel = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (kernel / kernel.sum()).to(dtype)


def gaussian_kernel2d(
    kernel_size: int,
    sigma: float,
    *,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Normalised 2-D Gaussian of shape ``(kernel_size, kernel_size)`` that sums to one."""
    g = gaussian_kernel1d(kernel_size, sigma, device=device, dtype=torch.float64)
    return torch.outer(g, g).to(dtype)


def log_kernel2d(
    kernel_size: int,
    sigma: float,
    *,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Discrete Laplacian of Gaussian with the Mexican-hat sign, shape ``(k, k)``.

    The continuous operator is the negative LoG,
    ``h(x, y) = (1 - r^2 / (2 sigma^2)) * exp(-r^2 / (2 sigma^2))``: positive centre,
    negative surround, as a neuron excites itself and inhibits its neighbours. Sampled on
    a ``k x k`` grid, its mean is subtracted so the kernel sums to exactly zero (a uniform
    map gives no response, whatever k truncates), and it is scaled so that its positive
    part sums to one, which keeps responses in the range of the input map.
    """
    check_kernel_size(kernel_size)
    check_sigma(sigma)
    x = _centered_grid(kernel_size, device, torch.float64)
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    s = r2 / (2.0 * sigma**2)
    kernel = (1.0 - s) * torch.exp(-s)
    kernel = kernel - kernel.mean()
    kernel = kernel / kernel.clamp(min=0).sum()
    return kernel.to(dtype)
