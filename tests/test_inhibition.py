"""Thresholding, masks, combining and blending (SPEC steps 4-8), with hypothesis property
tests for the quantile: the kept fraction is ~(1 - q), raising q never grows the kept
area, q = 0 keeps every pixel above the minimum and q = 1 keeps nothing sharp, and a
constant map leaves the image unchanged."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latinhib.filters import downsampled_gaussian_blur
from latinhib.inhibition import (
    blend,
    combine_maps,
    inhibit,
    is_constant,
    layer_filter_size,
    make_mask,
    quantile_threshold,
)

SETTINGS = settings(max_examples=40, deadline=None)

quantiles = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
sizes = st.tuples(st.integers(1, 4), st.integers(2, 40), st.integers(2, 40))


def continuous_maps(shape, seed: int, device) -> torch.Tensor:
    """Maps with (almost surely) distinct values, like real importance maps."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(device)


@SETTINGS
@given(shape=sizes, seed=seeds, q=quantiles)
def test_kept_fraction_is_one_minus_q(device, shape, seed, q):
    maps = continuous_maps(shape, seed, device)
    mask = make_mask(maps, quantile_threshold(maps, q))
    pixels = shape[1] * shape[2]
    kept = mask.flatten(1).mean(dim=1)
    # With distinct values, exactly floor((1 - q)(n - 1)) pixels lie above the linearly
    # interpolated quantile: within one pixel of (1 - q) n.
    assert ((kept - (1 - q)).abs() <= 1.0 / pixels + 1e-6).all(), (kept, q)


@SETTINGS
@given(shape=sizes, seed=seeds, q1=quantiles, q2=quantiles)
def test_raising_q_never_grows_the_kept_area(device, shape, seed, q1, q2):
    low, high = sorted((q1, q2))
    maps = continuous_maps(shape, seed, device)
    # Ties too: a coarse map has many equal values.
    coarse = (maps * 4).floor()
    for values in (maps, coarse):
        keep_low = make_mask(values, quantile_threshold(values, low))
        keep_high = make_mask(values, quantile_threshold(values, high))
        assert (keep_high <= keep_low).all()  # not just smaller: a subset


@SETTINGS
@given(shape=sizes, seed=seeds)
def test_q0_keeps_every_pixel_above_the_minimum_and_q1_keeps_nothing(device, shape, seed):
    maps = (continuous_maps(shape, seed, device) * 5).floor()  # several pixels at the minimum
    keep_all = make_mask(maps, quantile_threshold(maps, 0.0))
    minimum = maps.flatten(1).amin(dim=1).view(-1, 1, 1)
    assert torch.equal(keep_all.bool(), maps > minimum)
    keep_none = make_mask(maps, quantile_threshold(maps, 1.0))
    assert not keep_none.any()


@SETTINGS
@given(seed=seeds, q=quantiles)
def test_q1_blurs_the_whole_image_and_q0_almost_nothing(device, seed, q):
    image = continuous_maps((2, 3, 24, 30), seed, device)
    maps = continuous_maps((2, 24, 30), seed + 1, device)
    valid = torch.ones(2, dtype=torch.bool, device=device)
    blurred = downsampled_gaussian_blur(image, 2.0)
    enhanced, mask = inhibit(image, maps, quantile_threshold(maps, 1.0), valid, blur_sigma=2.0)
    assert not mask.any()
    assert torch.equal(enhanced, blurred)
    enhanced, mask = inhibit(image, maps, quantile_threshold(maps, q), valid, blur_sigma=2.0)
    kept = mask.bool()[:, None].expand_as(image)
    # Kept pixels are the original ones, bit for bit; inhibited ones are the blur's.
    assert torch.equal(enhanced[kept], image[kept])
    assert torch.equal(enhanced[~kept], blurred[~kept])


@SETTINGS
@given(value=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), q=quantiles,
       kind=st.sampled_from(["log", "gaussian", "none"]), seed=seeds)
def test_constant_map_leaves_the_image_unchanged(device, value, q, kind, seed):
    """SPEC step 6: no spatial information, no inhibition, bit-identical output."""
    maps = [torch.full((2, 14, 14), value, device=device), torch.full((2, 7, 7), value / 3, device=device)]
    combined, valid = combine_maps(maps, (56, 56), kind=kind)
    assert not valid.any()
    threshold = quantile_threshold(combined, q)
    assert make_mask(combined, threshold, valid).all()
    image = continuous_maps((2, 3, 80, 100), seed, device)
    enhanced, mask = inhibit(image, combined, threshold, valid, blur_sigma=3.0)
    assert mask.all()
    assert torch.equal(enhanced, image)


def test_zero_and_non_finite_maps_count_as_constant(device):
    maps = torch.rand(4, 5, 5, generator=torch.Generator().manual_seed(0)).to(device)
    maps[0] = 0.0
    maps[1, 2, 2] = float("nan")
    maps[2] = 7.0
    maps[2, 0, 0] = 7.0 * (1 + 1e-7)  # float rounding of a flat gradient
    assert is_constant(maps).tolist() == [True, True, True, False]


@pytest.mark.parametrize("kind", ["log", "gaussian", "none"])
def test_a_constant_layer_does_not_dilute_the_others(device, kind):
    generator = torch.Generator().manual_seed(1)
    informative = torch.rand(3, 14, 14, generator=generator).to(device)
    other = torch.rand(3, 28, 28, generator=generator).to(device)
    flat = torch.full((3, 7, 7), 0.8, device=device)
    alone, valid_alone = combine_maps([informative, other], (56, 56), kind=kind)
    with_flat, valid = combine_maps([informative, flat, other], (56, 56), kind=kind)
    assert valid.all() and valid_alone.all()
    torch.testing.assert_close(with_flat, alone)
    # Flat for one image only: that image ignores the layer, the others average it in.
    partly = torch.rand(3, 7, 7, generator=generator).to(device)
    partly[1] = 0.3
    mixed, _ = combine_maps([informative, partly], (56, 56), kind=kind)
    single, _ = combine_maps([informative], (56, 56), kind=kind)
    torch.testing.assert_close(mixed[1], single[1])
    assert not torch.allclose(mixed[0], single[0])


def test_combined_maps_are_normalised_means(device):
    generator = torch.Generator().manual_seed(2)
    maps = [torch.rand(2, 14, 14, generator=generator).to(device), torch.rand(2, 7, 7, generator=generator).to(device)]
    combined, valid = combine_maps(maps, (56, 40))
    assert combined.shape == (2, 56, 40) and combined.dtype == torch.float32 and valid.all()
    assert combined.min() >= 0 and combined.max() <= 1
    # Each layer is min-max normalised, so the mean of two reaches neither 0 nor 1 unless
    # their extremes coincide; each image's range is within [0, 1] and non-degenerate.
    assert (combined.flatten(1).amax(1) - combined.flatten(1).amin(1) > 0.2).all()


def test_combine_is_per_image(device):
    """Batch independence at the tensor level: each image's combined map does not depend
    on the others in the batch."""
    generator = torch.Generator().manual_seed(3)
    maps = [torch.rand(5, 14, 14, generator=generator).to(device), torch.rand(5, 28, 28, generator=generator).to(device)]
    together, _ = combine_maps(maps, (56, 56))
    for i in range(5):
        alone, _ = combine_maps([m[i:i + 1] for m in maps], (56, 56))
        torch.testing.assert_close(alone[0], together[i])


def test_layer_filter_size_scales_with_stride():
    assert layer_filter_size(14, 224, 7, 2.0) == (7, 2.0)  # stride 16: as configured
    assert layer_filter_size(28, 224, 7, 2.0) == (13, 4.0)  # stride 8: twice the pixels
    assert layer_filter_size(7, 224, 7, 2.0) == (5, 1.0)  # stride 32: half (radius 1.5 rounds to 2)


def test_blend_takes_image_where_mask_is_one_and_blur_where_zero(device):
    generator = torch.Generator().manual_seed(4)
    image = torch.rand(2, 3, 8, 9, generator=generator).to(device)
    blurred = torch.rand(2, 3, 8, 9, generator=generator).to(device)
    mask = (torch.rand(2, 8, 9, generator=generator) > 0.5).float().to(device)
    out = blend(image, mask, blurred)
    expected = torch.where(mask.bool()[:, None], image, blurred)
    assert torch.equal(out, expected)
    half = blend(image, torch.full_like(mask, 0.5), blurred)
    torch.testing.assert_close(half, (image + blurred) / 2)
    with pytest.raises(ValueError, match="should share"):
        blend(image, mask[:, :4], blurred)


def test_inhibit_does_not_modify_its_inputs(device):
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(2, 3, 30, 40, generator=generator).to(device)
    combined = torch.rand(2, 14, 14, generator=generator).to(device)
    threshold = quantile_threshold(combined, 0.5)
    valid = torch.tensor([True, False], device=device)
    copies = [t.clone() for t in (image, combined, threshold, valid)]
    enhanced, mask = inhibit(image, combined, threshold, valid, blur_sigma=2.0, feather_sigma=1.0)
    for tensor, copy in zip((image, combined, threshold, valid), copies):
        assert torch.equal(tensor, copy)
    assert mask.shape == (2, 30, 40) and 0 <= mask.min() and mask.max() <= 1
    assert 0.3 < mask[0].mean() < 0.7  # the map scaled to 30x40 keeps about half
    assert torch.equal(enhanced[1], image[1])  # not valid: untouched


def test_quantile_threshold_validates(device):
    with pytest.raises(ValueError, match="quantile should be in \\[0, 1\\]. Got 1.5"):
        quantile_threshold(torch.rand(1, 4, 4, device=device), 1.5)
    with pytest.raises(ValueError, match=r"should be \(N, H, W\)"):
        quantile_threshold(torch.rand(4, 4, device=device), 0.5)
