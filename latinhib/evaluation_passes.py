"""The model passes of ``latinhib evaluate`` over one batch: :class:`Evaluator` holds the
models; its first pass (:meth:`Evaluator.masks`) is the first model's importance pass, the
code path of ``enhance`` (SPEC steps 1-6), giving each image's mask and that model's top-1 on
the original; its second pass (calling it) builds the variants of :mod:`latinhib.variants`
and runs one classification pass per variant and model. :class:`MaskStore` keeps the masks
between the passes, one bit per pixel, because ``background_swapped`` needs the mask of a
partner image that may sit in any batch.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .api import LateralInhibition
from .runtime import amp_dtype
from .config import Config
from .inhibition import feather, make_mask
from .variants import VARIANTS, make_variants

__all__ = ["BatchOutcome", "Evaluator", "MaskStore"]



@dataclass
class BatchOutcome:
    """One batch of the second pass: correct (K, V, n) bool on the CPU, and the variants
    {name: (n, C, H, W)} on the device."""

    correct: torch.Tensor
    variants: Dict[str, torch.Tensor]


class Evaluator:
    """The models, the first one's importance pass (first pass: masks) and the
    classification passes over the variants (second pass)."""

    def __init__(self, models: Sequence[nn.Module], config: Config, input_size: Tuple[int, int]):
        if not models:
            raise ValueError("models should hold at least one model. Got none")
        self.models = list(models)
        self.config = config
        self.enhancer = LateralInhibition(self.models[0], config, input_size=input_size)
        self.device = self.enhancer.device

    def masks(self, inputs: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """First pass: (masks (n, H, W), valid (n,), the first model's top-1 on the
        originals), from one importance pass, the masks made as ``enhance`` makes them at the
        input size (SPEC steps 1-6, ``blur.feather``). ``valid`` is False where the map had
        no spatial information (mask all ones)."""
        inputs = inputs.to(self.device).contiguous(memory_format=torch.channels_last)
        targets = labels.to(self.device) if self.config.model.target in ("auto", "label") else None
        imp = self.enhancer.importance(inputs, targets)
        mask = feather(make_mask(imp.combined, imp.threshold, imp.valid), self.config.blur.feather)
        return mask, imp.valid, imp.predicted

    def classify(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Top-1 class of each image, (n,): one forward pass, no gradients."""
        dtype = amp_dtype(self.config.runtime.amp, images.device)
        autocast = torch.autocast(images.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            logits = model(images.contiguous(memory_format=torch.channels_last))
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return logits.argmax(dim=1)

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, partners: torch.Tensor,
                 partner_masks: torch.Tensor, fill: torch.Tensor,
                 first_original: Optional[torch.Tensor] = None) -> BatchOutcome:
        """Second pass over a batch of normalised inputs (n, C, H, W) with labels (n,), their
        masks (n, H, W), the partner images and masks that lend ``background_swapped`` its
        backgrounds, and the ``object_only`` colour ``fill`` (C,). ``first_original``: the
        first model's top-1 on the originals from its importance pass (not classified again)."""
        inputs, labels = inputs.to(self.device), labels.to(self.device)
        variants = make_variants(inputs, masks.to(self.device, inputs.dtype), partners.to(self.device),
                                 partner_masks.to(self.device), fill, self.config.blur.sigma)
        rows = []
        for k, model in enumerate(self.models):
            row = []
            for name in VARIANTS:
                if k == 0 and name == "original" and first_original is not None:
                    predicted = first_original.to(self.device)
                else:
                    predicted = self.classify(model, variants[name])
                row.append(predicted == labels)
            rows.append(torch.stack(row))
        return BatchOutcome(torch.stack(rows).cpu(), variants)


class MaskStore:
    """Masks by image index between the two passes (a partner's mask is needed in whichever
    batch its partner falls): one bit per pixel for hard masks (6 KB at 224 x 224), 8-bit
    levels for feathered ones (``blur.feather`` > 0; within 1/510 of the float mask)."""

    BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)

    def __init__(self) -> None:
        self.masks: Dict[int, Tuple[bool, torch.Tensor, Tuple[int, int]]] = {}

    def put(self, index: int, mask: torch.Tensor) -> None:
        mask = mask.detach().cpu().float()
        hard = bool(((mask == 0) | (mask == 1)).all())
        if hard:
            bits = mask.flatten().bool()
            bits = torch.cat([bits, bits.new_zeros((-bits.numel()) % 8)])
            packed = (bits.view(-1, 8).to(torch.uint8) * self.BITS).sum(dim=1, dtype=torch.uint8)
            self.masks[index] = (True, packed, tuple(mask.shape))
        else:
            self.masks[index] = (False, mask.mul(255).round_().to(torch.uint8), tuple(mask.shape))

    def get(self, index: int) -> torch.Tensor:
        """(H, W) float mask."""
        hard, data, shape = self.masks[index]
        if not hard:
            return data.float() / 255
        bits = (data[:, None] & self.BITS) > 0
        return bits.flatten()[: shape[0] * shape[1]].view(shape).float()

