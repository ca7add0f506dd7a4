"""Kernel construction against values written out by hand and an independent float64
formula; the Mexican hat's invariants; validation messages."""
from __future__ import annotations

import math

import pytest
import torch

from latinhib.kernels import default_kernel_size, gaussian_kernel1d, gaussian_kernel2d, log_kernel2d


def dense_log(kernel_size: int, sigma: float) -> list:
    """The docstring's recipe in plain Python floats (no torch): sample
    h = (1 - r^2 / 2s^2) exp(-r^2 / 2s^2), subtract the mean, divide by the positive sum."""
    half = kernel_size // 2
    values = [
        [(1 - (x * x + y * y) / (2 * sigma**2)) * math.exp(-(x * x + y * y) / (2 * sigma**2)) for x in range(-half, half + 1)]
        for y in range(-half, half + 1)
    ]
    mean = sum(map(sum, values)) / kernel_size**2
    values = [[v - mean for v in row] for row in values]
    positive = sum(v for row in values for v in row if v > 0)
    return [[v / positive for v in row] for row in values]


def test_log_kernel_3x3_sigma1_by_hand(device):
    # k = 3, sigma = 1: r^2 is 0 (centre), 1 (edges), 2 (corners), so h = 1, a, 0 with
    # a = 0.5 * exp(-1/2). Mean m = (1 + 4a) / 9; after subtracting it the positive part
    # (centre and edges) sums to (4 + 16a) / 9. Hence
    #   centre = (2 - a) / (1 + 4a), edge = (5a - 1) / (4 + 16a), corner = -1/4 exactly.
    centre, edge, corner = 0.7666912142246136, 0.05832719644384659, -0.25
    expected = torch.tensor(
        [[corner, edge, corner], [edge, centre, edge], [corner, edge, corner]], dtype=torch.float64
    )
    kernel = log_kernel2d(3, 1.0, device=device, dtype=torch.float64)
    torch.testing.assert_close(kernel.cpu(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kernel_size, sigma", [(3, 0.5), (5, 1.0), (7, 2.0), (9, 1.5), (15, 2.5), (21, 7.0)])
def test_log_kernel_matches_float64_formula(device, kernel_size, sigma):
    expected = torch.tensor(dense_log(kernel_size, sigma), dtype=torch.float64)
    kernel = log_kernel2d(kernel_size, sigma, device=device, dtype=torch.float64)
    torch.testing.assert_close(kernel.cpu(), expected, rtol=0, atol=1e-12)
    kernel32 = log_kernel2d(kernel_size, sigma, device=device)
    assert kernel32.dtype == torch.float32 and kernel32.device.type == device.type
    torch.testing.assert_close(kernel32.cpu().double(), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("kernel_size, sigma", [(3, 1.0), (5, 0.7), (7, 2.0), (11, 2.0), (25, 4.0)])
def test_log_kernel_is_a_zero_sum_mexican_hat(device, kernel_size, sigma):
    kernel = log_kernel2d(kernel_size, sigma, device=device, dtype=torch.float64).cpu()
    assert abs(kernel.sum().item()) < 1e-12
    half = kernel_size // 2
    assert kernel[half, half] > 0 and kernel[half, half] == kernel.max()
    assert kernel.clamp(min=0).sum().item() == pytest.approx(1.0, abs=1e-12)
    # Negative surround: where the continuous hat is <= 0 (r^2 >= 2 sigma^2) every sample
    # is negative, since the mean subtracted to reach zero sum is positive.
    grid = torch.arange(kernel_size, dtype=torch.float64) - half
    r2 = grid[:, None] ** 2 + grid[None, :] ** 2
    surround = r2 >= 2 * sigma**2
    assert surround.any()
    assert (kernel[surround] < 0).all()
    # Radially symmetric.
    torch.testing.assert_close(kernel, kernel.T)
    torch.testing.assert_close(kernel, kernel.flip(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_log_kernel_sums_to_zero_in_every_dtype(device, dtype):
    kernel = log_kernel2d(9, 2.0, device=device, dtype=dtype)
    assert kernel.dtype == dtype
    # Built in float64 and cast once: the sum is only off by the cast's rounding.
    tolerance = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6
    assert abs(kernel.double().sum().item()) < tolerance


@pytest.mark.parametrize("kernel_size, sigma", [(3, 0.5), (5, 1.0), (9, 2.0), (13, 0.8)])
def test_gaussian_kernels_sum_to_one_and_match_formula(device, kernel_size, sigma):
    half = kernel_size // 2
    raw = [math.exp(-(x * x) / (2 * sigma**2)) for x in range(-half, half + 1)]
    expected = torch.tensor([v / sum(raw) for v in raw], dtype=torch.float64)
    g1 = gaussian_kernel1d(kernel_size, sigma, device=device, dtype=torch.float64).cpu()
    torch.testing.assert_close(g1, expected, rtol=0, atol=1e-15)
    g2 = gaussian_kernel2d(kernel_size, sigma, device=device, dtype=torch.float64).cpu()
    torch.testing.assert_close(g2, torch.outer(expected, expected), rtol=0, atol=1e-15)
    assert g1.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert g2.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert gaussian_kernel2d(kernel_size, sigma, device=device).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_default_kernel_size_covers_three_sigma():
    assert default_kernel_size(1.0) == 7
    assert default_kernel_size(0.4) == 5  # ceil(1.2) = 2
    assert default_kernel_size(4.0) == 25


@pytest.mark.parametrize("builder", [log_kernel2d, gaussian_kernel1d, gaussian_kernel2d])
@pytest.mark.parametrize(
    "kernel_size, sigma, named",
    [(4, 1.0, "kernel_size.*Got 4"), (1, 1.0, "kernel_size.*Got 1"), (-3, 1.0, "Got -3"), (2.5, 1.0, "Got 2.5"),
     (True, 1.0, "Got True"), (5, 0.0, "sigma.*Got 0.0"), (5, -1.5, "sigma.*Got -1.5"), (5, float("nan"), "sigma.*Got nan"),
     (5, float("inf"), "sigma.*Got inf")],
)
def test_bad_kernel_arguments_name_the_value(builder, kernel_size, sigma, named):
    with pytest.raises(ValueError, match=named):
        builder(kernel_size, sigma)
