"""Filters against a dense float64 reference written here (explicit 2-D correlation with
reflect padding), and their invariants: a constant image is unchanged by the blur, inputs
are never modified, tiny images fall back to replicate padding."""
from __future__ import annotations

import math

import pytest
import torch

from latinhib.filters import (
    blur_uint8,
    downsampled_gaussian_blur,
    filter2d,
    gaussian_blur,
    gaussian_filter,
    log_filter,
    pad_mode,
)
from latinhib.kernels import log_kernel2d


def reflect_index(i: int, n: int) -> int:
    """numpy's 'reflect' / torch's 'reflect' (edge not repeated), or replicate when the
    axis is too short to reflect."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def dense_filter(image: torch.Tensor, kernel: torch.Tensor, replicate: bool = False) -> torch.Tensor:
    """out[y, x] = sum_{dy, dx} kernel[dy, dx] * image[y + dy - ph, x + dx - pw], with the
    out-of-range indices reflected (or clamped), in float64."""
    image = image.detach().cpu().double()
    kernel = kernel.detach().cpu().double()
    _, _, h, w = image.shape
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2

    def index(i: int, n: int, pad: int) -> int:
        return min(max(i, 0), n - 1) if (replicate or pad >= n) else reflect_index(i, n)

    out = torch.zeros_like(image)
    for dy in range(kernel.shape[0]):
        rows = torch.tensor([index(y + dy - ph, h, ph) for y in range(h)])
        for dx in range(kernel.shape[1]):
            cols = torch.tensor([index(x + dx - pw, w, pw) for x in range(w)])
            out += kernel[dy, dx] * image[:, :, rows][:, :, :, cols]
    return out


def gaussian_2d_reference(sigma: float, kernel_size: int) -> torch.Tensor:
    half = kernel_size // 2
    raw = torch.tensor([[math.exp(-(x * x + y * y) / (2 * sigma**2)) for x in range(-half, half + 1)]
                        for y in range(-half, half + 1)], dtype=torch.float64)
    return raw / raw.sum()


def test_reflect_index_reference_matches_torch():
    # The reference's own padding agrees with torch's, so the comparisons below test the
    # filters and not two readings of "reflect".
    row = torch.arange(5.0)[None, None]
    padded = torch.nn.functional.pad(row, (3, 3), mode="reflect")[0, 0].tolist()
    assert padded == [float(reflect_index(i, 5)) for i in range(-3, 8)]


@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (1, 1, 6, 40), (1, 2, 31, 9)])
@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.5])
def test_gaussian_blur_matches_dense_reference(device, shape, sigma):
    image = torch.rand(shape, generator=torch.Generator().manual_seed(1)).to(device)
    size = 2 * math.ceil(3 * sigma) + 1
    expected = dense_filter(image, gaussian_2d_reference(sigma, size))
    blurred = gaussian_blur(image, sigma)
    assert blurred.shape == image.shape and blurred.dtype == image.dtype and blurred.device == image.device
    torch.testing.assert_close(blurred.cpu().double(), expected, rtol=0, atol=2e-6)


def test_gaussian_blur_explicit_kernel_size(device):
    image = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(2)).to(device)
    expected = dense_filter(image, gaussian_2d_reference(3.0, 5))
    torch.testing.assert_close(gaussian_blur(image, 3.0, kernel_size=5).cpu().double(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("sigma", [0.5, 2.0, 7.0, 40.0])
@pytest.mark.parametrize("blur", [gaussian_blur, downsampled_gaussian_blur])
def test_constant_image_is_unchanged_by_blur(device, sigma, blur):
    image = torch.full((2, 3, 61, 90), 0.37, device=device)
    torch.testing.assert_close(blur(image, sigma), image, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "apply",
    [
        lambda t: gaussian_blur(t, 1.5),
        lambda t: downsampled_gaussian_blur(t, 9.0),
        lambda t: filter2d(t, torch.rand(3, 5)),
        lambda t: log_filter(t, 7, 2.0),
        lambda t: gaussian_filter(t, 7, 2.0),
    ],
    ids=["gaussian_blur", "downsampled_gaussian_blur", "filter2d", "log_filter", "gaussian_filter"],
)
def test_inputs_are_never_modified(device, apply):
    image = torch.rand(2, 3, 40, 50, generator=torch.Generator().manual_seed(3)).to(device)
    before = image.clone()
    result = apply(image)
    assert torch.equal(image, before)
    assert result.data_ptr() != image.data_ptr()


@pytest.mark.parametrize("kernel_shape", [(3, 3), (5, 3), (1, 7), (9, 9)])
def test_filter2d_matches_dense_reference(device, kernel_shape):
    generator = torch.Generator().manual_seed(4)
    image = torch.randn(2, 3, 15, 19, generator=generator).to(device)
    # An asymmetric kernel pins the orientation: filter2d correlates, like conv2d, kornia
    # and OpenCV; every kernel latinhib builds is symmetric, where the two agree.
    kernel = torch.randn(kernel_shape, generator=generator)
    expected = dense_filter(image, kernel)
    torch.testing.assert_close(filter2d(image, kernel).cpu().double(), expected, rtol=0, atol=2e-5)


def test_filter2d_float64_is_exact(device):
    image = torch.randn(1, 2, 12, 13, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(device)
    kernel = log_kernel2d(7, 1.5, dtype=torch.float64)
    torch.testing.assert_close(filter2d(image, kernel).cpu(), dense_filter(image, kernel), rtol=0, atol=1e-12)


def test_log_filter_of_constant_map_is_zero_and_of_a_peak_is_the_kernel(device):
    constant = torch.full((1, 1, 14, 14), 3.0, device=device)
    torch.testing.assert_close(log_filter(constant, 7, 2.0), torch.zeros_like(constant), rtol=0, atol=1e-6)
    peak = torch.zeros(1, 1, 15, 15, device=device)
    peak[0, 0, 7, 7] = 1.0
    response = log_filter(peak, 5, 1.0)[0, 0, 5:10, 5:10]
    torch.testing.assert_close(response.cpu(), log_kernel2d(5, 1.0), rtol=0, atol=1e-7)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.9, 3.0])
def test_downsampled_blur_is_gaussian_blur_for_small_sigma(device, sigma):
    image = torch.rand(1, 3, 50, 70, generator=torch.Generator().manual_seed(6)).to(device)
    assert torch.equal(downsampled_gaussian_blur(image, sigma), gaussian_blur(image, sigma))


@pytest.mark.parametrize("size", [(150, 203), (144, 204), (97, 131)])
@pytest.mark.parametrize("sigma", [3.5, 5.0, 8.0, 12.0])
def test_downsampled_blur_is_close_for_large_sigma(device, size, sigma):
    """Stated tolerance, for inputs in [-1, 1] (a sinusoid and uniform noise): max abs
    error 0.025 away from the border (2 sigma), mean abs error 0.012 over the whole image.
    The border is looser (bilinear upsampling clamps there). Sizes that are and are not a
    multiple of the downsampling factor must do equally well."""
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    wave = (torch.sin(xs / 9) * torch.cos(ys / 13))[None, None]
    noise = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(7))
    image = torch.cat([wave, noise], dim=1).to(device)
    exact = gaussian_blur(image, sigma)
    fast = downsampled_gaussian_blur(image, sigma)
    assert fast.shape == image.shape
    margin = int(2 * sigma)
    error = (fast - exact).abs()
    assert error[..., margin:-margin, margin:-margin].max().item() <= 0.025
    assert error.mean().item() <= 0.012


@pytest.mark.parametrize("blur", [gaussian_blur, downsampled_gaussian_blur])
def test_tiny_images_fall_back_to_replicate(device, blur):
    pixel = torch.tensor([[[[0.25]], [[0.5]], [[0.75]]]], device=device)
    torch.testing.assert_close(blur(pixel, 2.0), pixel)
    torch.testing.assert_close(blur(pixel, 10.0), pixel)
    thin = torch.rand(1, 1, 2, 9, generator=torch.Generator().manual_seed(8)).to(device)
    expected = dense_filter(thin, gaussian_2d_reference(1.0, 7))  # rows replicate, columns reflect
    torch.testing.assert_close(gaussian_blur(thin, 1.0).cpu().double(), expected, rtol=0, atol=2e-6)


def test_filter2d_on_a_map_smaller_than_the_kernel(device):
    maps = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(9)).to(device)
    kernel = log_kernel2d(7, 2.0)
    assert pad_mode(3, 3) == "replicate" and pad_mode(4, 3) == "reflect"
    expected = dense_filter(maps, kernel, replicate=True)
    torch.testing.assert_close(filter2d(maps, kernel).cpu().double(), expected, rtol=0, atol=1e-6)
    one = torch.full((1, 1, 1, 1), 2.0, device=device)
    torch.testing.assert_close(filter2d(one, kernel), torch.zeros_like(one), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [torch.rand(3, 8, 8), torch.rand(1, 1, 1, 8, 8)])
def test_shape_errors_say_what_was_expected(bad):
    with pytest.raises(ValueError, match=r"should be \(B, C, H, W\). Got shape"):
        gaussian_blur(bad, 1.0)
    with pytest.raises(ValueError, match=r"should be \(B, C, H, W\). Got shape"):
        filter2d(bad, torch.ones(3, 3))


def test_integer_images_and_even_kernels_are_rejected():
    with pytest.raises(ValueError, match="floating dtype. Got torch.uint8"):
        gaussian_blur(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 1.0)
    with pytest.raises(ValueError, match=r"odd sides. Got shape \(4, 3\)"):
        filter2d(torch.zeros(1, 1, 8, 8), torch.ones(4, 3))
    with pytest.raises(ValueError, match="blur sigma.*Got 0"):
        gaussian_blur(torch.zeros(1, 1, 8, 8), 0)


@pytest.mark.parametrize("size", [(150, 203), (144, 204), (97, 131)])
@pytest.mark.parametrize("sigma", [3.5, 5.0, 8.0, 12.0])
def test_uint8_blur_is_close_to_the_exact_blur(device, size, sigma):
    """The 8-bit path against the exact float blur of the same 8-bit image, rounded:
    within 4 grey levels away from the border (2 sigma) and 1.5 on average, the float
    path's stated tolerance (0.025 and 0.012 on [-1, 1]) plus rounding."""
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    wave = (torch.sin(xs / 9) * torch.cos(ys / 13) + 1) * 127.5
    noise = torch.rand(h, w, generator=torch.Generator().manual_seed(7)) * 255
    image = torch.stack([wave, noise, wave.flip(1)])[None].round().to(torch.uint8).to(device)
    fast = blur_uint8(image, sigma)
    assert fast.dtype == torch.uint8 and fast.shape == image.shape
    exact = gaussian_blur(image.float(), sigma).round()
    error = (fast.float() - exact).abs()
    margin = int(2 * sigma)
    assert error[..., margin:-margin, margin:-margin].max().item() <= 4
    assert error.mean().item() <= 1.5


@pytest.mark.parametrize("sigma", [0.5, 2.0, 7.0, 40.0])
@pytest.mark.parametrize("size", [(61, 90), (2, 9), (1, 1)])
def test_uint8_blur_keeps_constants_and_small_sigma_is_exact(device, sigma, size):
    image = torch.full((1, 3, *size), 201, dtype=torch.uint8, device=device)
    image[:, 1] = 0
    image[:, 2] = 255
    assert torch.equal(blur_uint8(image, sigma), image)
    photo = torch.randint(0, 256, (2, 3, *size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    photo = photo.to(device)
    before = photo.clone()
    out = blur_uint8(photo, sigma)
    assert torch.equal(photo, before)  # the input is never modified
    if sigma <= 3.0 or min(size) < 2 * (int(sigma // 3.0) + 1):  # blurred at full size, rounded once
        assert torch.equal(out, gaussian_blur(photo.float(), sigma).round().clamp(0, 255).to(torch.uint8))


def test_uint8_blur_rejects_other_dtypes():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) uint8. Got torch.float32"):
        blur_uint8(torch.zeros(1, 3, 8, 8), 1.0)
    with pytest.raises(ValueError, match="blur sigma.*Got 0"):
        blur_uint8(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 0)


def _edge_width(image: torch.Tensor) -> float:
    """The standard deviation of a blurred vertical step edge's derivative (= sigma)."""
    row = image[0, 0, image.shape[2] // 2].double()
    slope = row[1:] - row[:-1]
    x = torch.arange(len(slope), dtype=torch.float64)
    mean = (x * slope).sum() / slope.sum()
    return math.sqrt(float(((x - mean) ** 2 * slope).sum() / slope.sum()))


@pytest.mark.parametrize("sigma", [3.5, 6.7, 12.0, 40.0])
@pytest.mark.parametrize("height", [32, 300])
def test_uint8_blur_has_the_configured_width(sigma, height):
    """A step edge blurred by the 8-bit path is as wide as under the exact blur (within
    3%), also on a thin image, where the shrunk size rounds up far more on one axis."""
    edge = torch.zeros(1, 1, height, 1201, dtype=torch.uint8)
    edge[..., 600:] = 255
    exact = _edge_width(gaussian_blur(edge.float(), sigma))
    assert _edge_width(blur_uint8(edge, sigma).float()) == pytest.approx(exact, rel=0.03)
