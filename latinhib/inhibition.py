"""Lateral inhibition proper (SPEC steps 4-8): filter each layer's importance map with the
Mexican hat, bring the maps to the input size, normalise and combine them, threshold each
image at its q-quantile, and blend the image with its blurred copy where the mask is 0.
Also the stable per-image selection for the enhanced ratio r.

Imports torch (and hashlib for the selection hash) only.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .choices import FILTERS
from .filters import downsampled_gaussian_blur, gaussian_filter, log_filter, log_filter_separable

__all__ = [
    "AUTO_QUANTILE_BOUNDS",
    "FILTERS",
    "REFERENCE_STRIDE",
    "blend",
    "auto_quantile",
    "combine_maps",
    "gate_by_response",
    "inhibit",
    "is_constant",
    "layer_filter_size",
    "make_mask",
    "quantile_threshold",
    "scale_kernel_size",
    "selection_score",
    "select",
]

#: ``inhibition.sigma`` and ``kernel_size`` are in pixels of a stride-16 feature map (14x14
#: at a 224 input). Other layers scale both by 16 / stride, so the filter covers the same
#: part of the image at every layer: one fixed sigma in each layer's own pixels would be a
#: sharpening filter on a 7x7 map and a mere edge detector on a 56x56 one.
REFERENCE_STRIDE = 16

#: ``inhibition.quantile: auto`` picks each image's q by Otsu's method on its combined map
#: and clips it to these bounds: at least 30% and at most 95% of the frame is blurred, so
#: a map with one hot pixel cannot keep almost nothing, nor a flat one almost everything.
AUTO_QUANTILE_BOUNDS = (0.3, 0.95)

#: Histogram bins for Otsu's method over the combined map's [0, 1] range.
OTSU_BINS = 256

#: A map whose range is below this fraction of its peak carries no spatial information
#: (e.g. the stage right before global average pooling: the gradient of a mean is the
#: same everywhere). Float rounding of such maps stays around 1e-7 relative.
CONSTANT_TOLERANCE = 1e-5


#: Feathered mask values this close to 0 or 1 are float rounding of a uniform region.
FEATHER_SNAP = 1e-5


def is_constant(maps: torch.Tensor) -> torch.Tensor:
    """Per image, whether a (N, h, w) map is constant (or zero, or not finite); (N,) bool."""
    flat = maps.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    flat = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    peak = flat.abs().amax(dim=1)
    spread = flat.amax(dim=1) - flat.amin(dim=1)
    return ~finite | (spread <= CONSTANT_TOLERANCE * peak) | (peak == 0)


def layer_filter_size(map_size: int, input_size: int, kernel_size: int, sigma: float) -> Tuple[int, float]:
    """The (k, sigma) a layer of ``map_size`` pixels uses, scaled from the stride-16 values."""
    stride = max(input_size / max(map_size, 1), 1e-6)
    scale = REFERENCE_STRIDE / stride
    radius = max(1, round((kernel_size // 2) * scale))
    return 2 * radius + 1, sigma * scale


def scale_kernel_size(sigma: float) -> int:
    """The stride-16 kernel size of one scale of a scale-selected Mexican hat: +-3 sigma,
    which holds its whole inhibitory surround (the rule for ``kernel_size``)."""
    return 2 * math.ceil(3.0 * sigma) + 1


def respond(
    maps: torch.Tensor,
    kind: str,
    kernel_size: int,
    sigma: float,
    input_size: int,
    scales: Optional[Sequence[float]] = None,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Step 4 for one layer: the filter response of (N, h, w) maps, same shape out.

    With ``scales`` (stride-16 sigmas) the Mexican hat is scale-selected per image: each
    image gets the response at the sigma whose peak, ``max over positions`` of
    ``sigma^(gamma - 2) * response``, is largest. Every kernel is normalised so that its
    positive lobe sums to one, which for the Mexican hat is the scale-normalised LoG
    ``-sigma^2 * LoG`` (up to the constant e/2); ``gamma`` is Lindeberg's scale
    normalisation exponent (2: a Gaussian blob of radius r peaks at sigma = r / sqrt(2)
    whatever r; above 2 larger scales are preferred). So the surround follows the
    object's size, and a large object's inside is no longer inhibited by a surround
    that is too small for it (SPEC "Traps")."""
    if kind not in FILTERS:
        raise ValueError(f"filter should be one of {FILTERS}. Got {kind!r}")
    if kind == "none":
        return maps
    if kind == "log" and scales:
        responses = []
        for scale in scales:
            k, s = layer_filter_size(maps.shape[-1], input_size, scale_kernel_size(scale), scale)
            responses.append(log_filter_separable(maps[:, None], k, s)[:, 0])
        stacked = torch.stack(responses)  # (S, N, h, w)
        weights = torch.tensor([scale ** (gamma - 2.0) for scale in scales], device=maps.device, dtype=maps.dtype)
        peaks = stacked.flatten(2).amax(dim=2) * weights[:, None]  # (S, N)
        best = peaks.argmax(dim=0)
        return stacked[best, torch.arange(maps.shape[0], device=maps.device)]
    k, s = layer_filter_size(maps.shape[-1], input_size, kernel_size, sigma)
    apply = log_filter if kind == "log" else gaussian_filter
    return apply(maps[:, None], k, s)[:, 0]


def combine_maps(
    maps: Sequence[torch.Tensor],
    size: Tuple[int, int],
    *,
    kind: str = "log",
    kernel_size: int = 7,
    sigma: float = 2.0,
    scales: Optional[Sequence[float]] = None,
    gamma: float = 2.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Steps 4-5: filter, scale to ``size``, normalise per image, average over layers.

    ``maps`` are (N, h_l, w_l) IoM maps. Each response is bilinearly scaled to (H, W) and
    min-max normalised per image to [0, 1]; a layer whose IoM is constant for an image
    contributes nothing to that image (it is not averaged in as a flat map, which would
    dilute the others). Returns ``combined`` (N, H, W) float32 and ``valid`` (N,) bool,
    False where no layer had any spatial information.
    """
    if not maps:
        raise ValueError("maps should hold at least one (N, h, w) tensor. Got none")
    total = None
    weight = None
    for layer_map in maps:
        if layer_map.ndim != 3:
            raise ValueError(f"each map should be (N, h, w). Got shape {tuple(layer_map.shape)}")
        layer_map = layer_map.float()
        usable = ~is_constant(layer_map)
        response = respond(torch.nan_to_num(layer_map), kind, kernel_size, sigma, size[-1], scales, gamma)
        response = F.interpolate(response[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        low = response.amin(dim=(1, 2), keepdim=True)  # amin + amax: faster than aminmax on CPU (docs/SPEED.md#filters)
        high = response.amax(dim=(1, 2), keepdim=True)
        usable = usable & (high > low).view(-1)
        normalised = response.sub_(low).div_((high - low).clamp(min=torch.finfo(torch.float32).tiny))
        w = usable.to(normalised.dtype).view(-1, 1, 1)
        # w is 0 or 1, so normalised * w is exact and the fused multiply-add rounds once,
        # like total + normalised * w.
        total = normalised.mul_(w) if total is None else total.addcmul_(normalised, w)
        weight = w if weight is None else weight + w
    combined = total / weight.clamp(min=1.0)
    return combined, (weight.view(-1) > 0)


def gate_by_response(response: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """``inhibition.outline: importance``: the filtered map times the unfiltered one, both
    (N, H, W) in [0, 1] (``combine_maps`` with the filter and with ``kind="none"``), min-max
    normalised per image again.

    The Mexican hat's response is a blob that says where the object is (its surround
    suppresses the rest of the frame); at a large sigma it is round whatever the object's
    shape, and a threshold on it keeps a disc: background in the disc, the object's
    corners and handles outside. The unfiltered map follows the object's outline; the
    product keeps that outline where the response is high."""
    gated = response * raw
    low = gated.amin(dim=(1, 2), keepdim=True)
    high = gated.amax(dim=(1, 2), keepdim=True)
    gated = gated.sub_(low).div_((high - low).clamp(min=torch.finfo(torch.float32).tiny))
    # Where the two never overlap the product is flat: keep the response there.
    return torch.where(high > low, gated, response)


def quantile_threshold(combined: torch.Tensor, q: Union[float, torch.Tensor]) -> torch.Tensor:
    """Step 5: Q_i, the q-quantile of each image's (N, H, W) map (linear interpolation).

    ``q`` is one number for all images, or an (N,) tensor of one q per image (what
    :func:`auto_quantile` gives); both interpolate as ``torch.quantile`` does."""
    if combined.ndim != 3:
        raise ValueError(f"combined should be (N, H, W). Got shape {tuple(combined.shape)}")
    flat = combined.flatten(1).float()
    if not isinstance(q, torch.Tensor):
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile should be in [0, 1]. Got {q}")
        return torch.quantile(flat, q, dim=1)
    if q.shape != (combined.shape[0],):
        raise ValueError(f"per-image quantiles should be ({combined.shape[0]},). Got shape {tuple(q.shape)}")
    # One sort for all images: torch.quantile gives (N, N) for N q's, image i's own q on
    # the diagonal (a sort + gather per row by hand was slower on CPU: docs/SPEED.md#filters).
    return torch.quantile(flat, q.to(flat).clamp(0.0, 1.0), dim=1).diagonal().contiguous()


def auto_quantile(combined: torch.Tensor, bounds: Tuple[float, float] = AUTO_QUANTILE_BOUNDS,
                  power: float = 1.0) -> torch.Tensor:
    """``inhibition.quantile: auto``: each image's q from its own (N, H, W) map, (N,) out.

    Otsu's method on a histogram of the map (values in [0, 1]) raised to ``power``
    (``inhibition.auto_power``; 1 = plain Otsu) splits it into the two classes with the
    largest between-class variance; q is the share of pixels in the low class, clipped to
    ``bounds``. Users cannot know each photo's background share, and a map of a small
    object has a long low tail that Otsu puts in the background. A power above 1 presses
    the ramp that bilinear upsampling leaves around an object towards the low class, so
    the threshold moves up it (a monotone map of the values: the kept pixels are still the
    map's top ones)."""
    if combined.ndim != 3:
        raise ValueError(f"combined should be (N, H, W). Got shape {tuple(combined.shape)}")
    flat = combined.flatten(1).float().clamp(0.0, 1.0)
    if power != 1.0:
        flat = flat.pow(power)
    n = flat.shape[0]
    bins = (flat * OTSU_BINS).long().clamp_(max=OTSU_BINS - 1)
    bins += torch.arange(n, device=flat.device).view(-1, 1) * OTSU_BINS  # one histogram per image
    hist = torch.bincount(bins.view(-1), minlength=n * OTSU_BINS).view(n, OTSU_BINS).to(torch.float64)
    share = hist / flat.shape[1]
    centres = (torch.arange(OTSU_BINS, device=flat.device, dtype=torch.float64) + 0.5) / OTSU_BINS
    low_share = share.cumsum(dim=1)  # omega(t): share of pixels in bins <= t
    low_mass = (share * centres).cumsum(dim=1)  # mu(t)
    total_mass = low_mass[:, -1:]
    between = (total_mass * low_share - low_mass) ** 2 / (low_share * (1 - low_share)).clamp(min=1e-12)
    between = torch.where((low_share > 0) & (low_share < 1), between, torch.zeros_like(between))
    split = between.argmax(dim=1, keepdim=True)
    q = low_share.gather(1, split)[:, 0]
    return q.clamp(bounds[0], bounds[1]).to(torch.float32)


def make_mask(combined: torch.Tensor, threshold: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Step 6: 1 where the map exceeds Q_i (kept sharp), 0 elsewhere (inhibited).

    ``combined`` is (N, H, W) at any size (the input size, or one image's own size after
    bilinear scaling); ``threshold`` is (N,). Images that are not ``valid`` keep every
    pixel. Returns a float mask of ``combined``'s shape.
    """
    mask = combined > threshold.view(-1, *([1] * (combined.ndim - 1)))
    if valid is not None:
        mask = mask | ~valid.view(-1, *([1] * (combined.ndim - 1)))
    return mask.to(combined.dtype if combined.is_floating_point() else torch.float32)


def blend(image: torch.Tensor, mask: torch.Tensor, blurred: torch.Tensor) -> torch.Tensor:
    """Step 8: ``mask * image + (1 - mask) * blurred`` for (N, C, H, W) images and
    (N, H, W) or (N, 1, H, W) masks.

    Written as in the SPEC, not as ``blurred + mask * (image - blurred)``: this way a
    kept pixel (mask 1) is the input bit for bit and an inhibited one the blur's, so a
    constant map leaves the image unchanged exactly (SPEC step 6)."""
    if mask.ndim == 3:
        mask = mask[:, None]
    if image.shape != blurred.shape or mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"image, mask and blurred should share (H, W). Got {tuple(image.shape)}, "
            f"{tuple(mask.shape)}, {tuple(blurred.shape)}"
        )
    return mask * image + (1 - mask) * blurred


def feather(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Soften a (N, H, W) mask's edges with a Gaussian of ``sigma`` pixels (0 = hard)."""
    if sigma <= 0:
        return mask
    softened = downsampled_gaussian_blur(mask[:, None], sigma)[:, 0]
    # The blur's float weights sum to 1 only within rounding, so a region that is all
    # kept comes out at 0.99999994: snap such values back, or an image whose mask is all
    # ones (a constant map) would not come back unchanged and kept pixels would drift.
    softened = torch.where(softened >= 1.0 - FEATHER_SNAP, torch.ones_like(softened), softened)
    softened = torch.where(softened <= FEATHER_SNAP, torch.zeros_like(softened), softened)
    return softened.clamp(0.0, 1.0)


def inhibit(
    image: torch.Tensor,
    combined: torch.Tensor,
    threshold: torch.Tensor,
    valid: torch.Tensor,
    *,
    blur_sigma: float,
    feather_sigma: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Steps 6-8 at the image's own resolution.

    ``image`` (N, C, H, W) float, ``combined`` (N, h, w) maps at the model's input size,
    ``threshold`` (N,), ``valid`` (N,). The map is scaled to (H, W) bilinearly and then
    thresholded at the same Q_i, which gives smooth mask edges instead of the blocks a
    nearest-neighbour scaled binary mask would have. Returns (enhanced, mask), the mask
    (N, H, W) in [0, 1].
    """
    size = image.shape[-2:]
    if combined.shape[-2:] != size:
        combined = F.interpolate(combined[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    mask = feather(make_mask(combined, threshold, valid), feather_sigma)
    blurred = downsampled_gaussian_blur(image, blur_sigma)
    if feather_sigma <= 0:
        # A hard mask is exactly 0 or 1, where blend() gives image or blurred bit for bit
        # (1*a + 0*b == a for finite values): one select instead of four full-size
        # arithmetic passes (tests/test_speed_paths.py checks it against blend()).
        return torch.where(mask[:, None] > 0.5, image, blurred), mask
    return blend(image, mask.to(image.dtype), blurred), mask


def selection_score(seed: int, key: str) -> float:
    """A uniform number in [0, 1) from (seed, key); stable across runs and machines."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def select(keys: Iterable[str], ratio: float, seed: int) -> List[bool]:
    """Step 7: whether each key's image is enhanced, ``selection_score < ratio``.

    Depends on nothing but (seed, key), so the choice is the same across batch sizes,
    orders, resumes and shards; ratio 0 selects nothing and ratio 1 everything.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio should be in [0, 1]. Got {ratio}")
    return [selection_score(seed, key) < ratio for key in keys]
