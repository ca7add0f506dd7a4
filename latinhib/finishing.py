"""What happens to one image after the model pass: steps 6-8 at the image's own
resolution (mask, blur, select; :func:`enhance_pixels`, shared with ``latinhib preview``),
then encoding and handing the file to the sink (:class:`Finisher`), in a writer thread or
on a model stream. Also the entries of selected files that are not enhanced (an importance
map without spatial information, a file that does not decode).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

from .api import Importance
from .config import Config
from .data import Decoded, DecodeError, Item, NotEnhanceable
from .encoding import save_heatmap, save_mask
from .files import mask_path
from .filters import blur_uint8
from .inhibition import inhibit
from .manifest import entry
from .models import LoadedModel
from .sinks import Sink

__all__ = ["Finisher", "enhance_pixels", "enhance_uint8", "kept_fraction", "undecodable"]


def enhance_pixels(
    decoded: Decoded, imp: Importance, index: int, config: Config, input_size: Tuple[int, int], device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Steps 6-8 for sample ``index`` of ``imp`` at the image's own resolution, exactly as
    ``latinhib enhance`` writes it (``latinhib preview`` shows the same pixels).

    8-bit images with a hard mask (the default, ``blur.feather: 0``) stay in uint8 from
    file to file (:func:`enhance_uint8`); 16-bit images and feathered masks go through
    float (:func:`~latinhib.inhibition.inhibit`) and are rounded once at the end.

    Returns (pixels (C, H, W) in the decoded dtype with alpha passed through, mask (1, H, W):
    bool on the 8-bit path, float in [0, 1] otherwise; :func:`kept_fraction` reads both).
    """
    pixels = decoded.pixels.to(device, non_blocking=True)
    channels = decoded.color_channels
    h, w = pixels.shape[-2:]
    # blur.sigma is in model-input pixels; scale it to this image's resolution.
    scale = min(h, w) / min(input_size)
    combined = imp.combined[index : index + 1]
    threshold = imp.threshold[index : index + 1]
    valid = imp.valid[index : index + 1]
    if decoded.max_value == 255 and config.blur.feather <= 0:
        values, mask = enhance_uint8(pixels[:channels][None], combined, threshold, valid, config.blur.sigma * scale)
        values = values[0]
    else:
        color = pixels[:channels][None].float().div_(decoded.max_value)
        enhanced, mask = inhibit(
            color, combined, threshold, valid,
            blur_sigma=config.blur.sigma * scale,
            feather_sigma=config.blur.feather * scale,
        )
        values = enhanced[0].mul_(decoded.max_value).round_().clamp_(0, decoded.max_value).to(pixels.dtype)
    if pixels.shape[0] > channels:  # alpha passes through untouched
        values = torch.cat([values, pixels[channels:]], dim=0)
    return values, mask


def enhance_uint8(
    image: torch.Tensor, combined: torch.Tensor, threshold: torch.Tensor, valid: torch.Tensor, blur_sigma: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Steps 6-8 for one 8-bit image (1, C, H, W) uint8 with a hard mask, all in uint8.

    The map is scaled to (H, W) and thresholded exactly as in
    :func:`~latinhib.inhibition.inhibit`; kept pixels are the input's bits, inhibited ones
    :func:`~latinhib.filters.blur_uint8`'s. The select is three bitwise passes
    (``b ^ ((a ^ b) & m)`` with m = 0xFF where kept), ~6x cheaper on CPU than
    ``torch.where`` with a mask broadcast over the channels. Returns (pixels (1, C, H, W)
    uint8 in channels_last order, mask (1, H, W) bool).
    """
    h, w = image.shape[-2:]
    if combined.shape[-2:] != (h, w):
        combined = F.interpolate(combined[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    # A map without spatial information keeps every pixel: its threshold becomes -inf (one
    # scalar op instead of a full-size OR; the map is never NaN).
    keep = combined[0] > torch.where(valid[0], threshold[0], float("-inf"))
    if not image.is_contiguous(memory_format=torch.channels_last):
        image = image.contiguous(memory_format=torch.channels_last)
    blurred = blur_uint8(image, blur_sigma)
    select = keep.to(torch.uint8).neg_()  # 255 where kept, 0 where blurred
    select = select[:, :, None].expand(h, w, image.shape[1]).permute(2, 0, 1)[None]
    out = torch.bitwise_xor(image, blurred).bitwise_and_(select).bitwise_xor_(blurred)
    return out, keep[None]


def kept_fraction(mask: torch.Tensor) -> float:
    """The share of an image kept sharp: the mean of a float mask, or of a bool one."""
    if mask.dtype == torch.bool:
        return float(torch.count_nonzero(mask)) / max(mask.numel(), 1)
    return float(mask.sum()) / max(mask.numel(), 1)



class Finisher:
    """Steps 6-8 at full resolution, encoding, and the sink's write, for one decoded image
    whose model pass is done: run in writer threads, or on the image's own model stream.
    Returns the file's manifest entry."""

    def __init__(self, config: Config, loaded: LoadedModel, sink: Sink, device: torch.device):
        self.config = config
        self.loaded = loaded
        self.sink = sink
        self.device = device
        self.masks = Path(config.output.save_masks) if config.output.save_masks else None
        self.heatmaps = Path(config.output.save_heatmaps) if config.output.save_heatmaps else None

    def __call__(self, item: Item, decoded: Decoded, imp: Importance, index: int) -> Dict[str, Any]:
        predicted = int(imp.predicted[index])
        classes = self.loaded.classes
        common = dict(
            target=imp.target,
            predicted_class=classes[predicted] if classes and predicted < len(classes) else predicted,
            predicted_index=predicted,
        )
        if not bool(imp.valid[index]):
            self.sink.copy_unchanged(item)
            return entry(item, True, "unchanged", error="importance map has no spatial information (constant gradient)",
                         **common)
        values, mask = enhance_pixels(decoded, imp, index, self.config, self.loaded.input_size, self.device)
        # torchvision's encoder takes the pixels where they are (nvJPEG on CUDA)
        pixels = values if decoded.codec == "torchvision" else values.cpu()
        self.sink.save_image(item, pixels, decoded, self.config.output.jpeg_quality)
        if self.masks is not None:
            save_mask(mask[0].cpu(), mask_path(self.masks, item.rel))
        if self.heatmaps is not None:
            save_heatmap(imp.combined[index], tuple(mask.shape[-2:]), mask_path(self.heatmaps, item.rel))
        return entry(
            item,
            True,
            "enhanced",
            kept_fraction=round(kept_fraction(mask), 6),
            threshold=round(float(imp.threshold[index]), 6),
            # the image's own q under ``quantile: auto`` (else the config's q)
            quantile=round(float(imp.quantile[index]), 6) if imp.quantile is not None else None,
            **common,
        )


def undecodable(item: Item, error: DecodeError, sink: Sink) -> Dict[str, Any]:
    """The entry of a selected file that did not decode: a good image latinhib does not
    enhance (an animation, :class:`NotEnhanceable`) is copied byte for byte as
    ``unchanged``; anything else is ``failed`` with the cause."""
    if isinstance(error, NotEnhanceable):
        sink.copy_unchanged(item)
        return entry(item, True, "unchanged", error=str(error))
    return entry(item, True, "failed", error=str(error))
