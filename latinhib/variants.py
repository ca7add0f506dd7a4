"""The test-time variants ``latinhib evaluate`` builds from a mask (ImageNet-9 style, Xiao et
al. 2020): the image as it is, its background blurred (what ``enhance`` writes at r = 1), its
object blurred, its object pasted onto another image, and its object on a flat colour; and
the seeded pairing that says which other image lends the background (with its own object
removed, :func:`background_only`).

Pure tensor code on (N, C, H, W) model inputs; imports torch only. Every variant is a blend
``mask * image + (1 - mask) * other`` (``inhibition.blend``, SPEC step 8), so where a hard
mask is 1 a variant holds the image's own values and where it is 0 the other's, bit for bit.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from .filters import downsampled_gaussian_blur
from .inhibition import blend

__all__ = ["FILL_SHIFTS", "GAPS", "VARIANTS", "background_only", "make_variants", "pair_partners"]

#: Variant names, in report order.
VARIANTS = ("original", "background_blurred", "object_blurred", "background_swapped", "object_only")

#: The accuracy gaps people read, as (minuend, subtrahend): background reliance, object
#: reliance, and the seed's test-time effect of latinhib's enhancement.
GAPS: Tuple[Tuple[str, str], ...] = (
    ("original", "background_swapped"),
    ("original", "object_blurred"),
    ("background_blurred", "original"),
)


#: Shifts, as fractions of (H, W), from which an image's own background fills the region its
#: mask keeps (ImageNet-9's "only_bg_t" tiles the background over the object): half and
#: quarter periods first, then eighths; what no shift reaches gets the fill colour.
FILL_SHIFTS = ((0, 0.5), (0.5, 0), (0.5, 0.5), (0, 0.25), (0.25, 0), (0.25, 0.25), (0, -0.25), (-0.25, 0),
               (0.25, -0.25), (-0.25, 0.25), (0, 0.125), (0.125, 0), (0.125, 0.125), (0, -0.125), (-0.125, 0))


def background_only(images: torch.Tensor, masks: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``images`` (N, C, H, W) with the region each mask keeps (mask >= 0.5) removed: every
    such pixel takes the value of the first shifted copy of the same image (circular shifts
    :data:`FILL_SHIFTS`) that is background there, else ``fill`` (C,). Background pixels are
    the image's own, bit for bit. Without it, the partner's own object would show through
    wherever the two masks differ, and a swapped background would carry another class's
    object, not just its background."""
    hole = masks >= 0.5
    background = ~hole
    filled = images.clone()
    missing = hole.clone()
    h, w = masks.shape[-2:]
    for fy, fx in FILL_SHIFTS:
        if not bool(missing.any()):
            break
        shift = (round(fy * h), round(fx * w))
        source_ok = torch.roll(background, shift, dims=(1, 2))
        take = missing & source_ok
        filled = torch.where(take[:, None], torch.roll(images, shift, dims=(2, 3)), filled)
        missing &= ~take
    flat = fill.to(images.device, images.dtype).view(1, -1, 1, 1).expand_as(images)
    return torch.where(missing[:, None], flat, filled)


def make_variants(
    images: torch.Tensor,
    masks: torch.Tensor,
    partners: torch.Tensor,
    partner_masks: torch.Tensor,
    fill: torch.Tensor,
    blur_sigma: float,
) -> Dict[str, torch.Tensor]:
    """Every variant of ``images`` (N, C, H, W, float).

    masks: (N, H, W) in [0, 1], 1 = kept (the object), 0 = inhibited (the background).
    partners, partner_masks: for each image, the image (N, C, H, W) whose background
        replaces its own, and that image's mask (N, H, W).
    fill: (C,) the flat colour of ``object_only``, in the images' own space (normalised
        model inputs: the normalised dataset mean colour).
    blur_sigma: the Gaussian blur's sigma in pixels of ``images`` (``blur.sigma``).

    Returns {name: (N, C, H, W)} for every name in :data:`VARIANTS`; ``original`` is
    ``images`` itself (not a copy). ``background_swapped`` is the kept region of image i
    over :func:`background_only` of its partner j.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images should be a float (N, C, H, W) tensor. Got {images.dtype} {tuple(images.shape)}")
    n, c, h, w = images.shape
    for name, value in (("masks", masks), ("partner_masks", partner_masks)):
        if value.shape != (n, h, w):
            raise ValueError(f"{name} should be (N, H, W) = {(n, h, w)}. Got shape {tuple(value.shape)}")
    if partners.shape != images.shape:
        raise ValueError(f"partners should have the images' shape {tuple(images.shape)}. Got {tuple(partners.shape)}")
    if fill.shape != (c,):
        raise ValueError(f"fill should be one value per channel ({c},). Got shape {tuple(fill.shape)}")
    kept = masks.to(images.dtype)[:, None]
    blurred = downsampled_gaussian_blur(images, blur_sigma)
    flat = fill.to(images.device, images.dtype).view(1, c, 1, 1).expand_as(images)
    swapped_in = background_only(partners.to(images.dtype), partner_masks, fill)
    return {
        "original": images,
        "background_blurred": blend(images, kept, blurred),
        "object_blurred": blend(images, 1 - kept, blurred),
        "background_swapped": blend(images, kept, swapped_in),
        "object_only": blend(images, kept, flat),
    }


def pair_partners(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """For each of N images, the index of the image that lends it a background: a uniform,
    seeded draw among the images of *another* class (ImageNet-9's mixed_rand), so a swapped
    background never agrees with the label. Where every image has the same class, any other
    image; a single image is its own partner. Depends only on (labels, seed): the same
    pairing whatever the batch size or device. (N,) long, on the CPU.
    """
    labels = labels.detach().cpu().long().view(-1)
    n = labels.numel()
    generator = torch.Generator().manual_seed(seed)
    draw = torch.rand(n, generator=generator, dtype=torch.float64)
    if n <= 1:
        return torch.zeros(n, dtype=torch.long)
    order = torch.argsort(labels, stable=True)  # image indices grouped by class
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    if len(classes) == 1:
        pick = (draw * (n - 1)).long().clamp(max=n - 2)
        own = torch.arange(n)
        return pick + (pick >= own).long()  # skip the image itself
    starts = torch.cumsum(counts, 0) - counts
    which = torch.searchsorted(classes, labels)
    start, count = starts[which], counts[which]
    others = n - count
    pick = torch.minimum((draw * others).long(), others - 1)
    # Position pick among the images outside the own class's block of `order`.
    position = torch.where(pick < start, pick, pick + count)
    return order[position]
