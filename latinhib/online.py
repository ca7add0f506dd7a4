"""Online self-enhancement: the model being trained enhances its own batches.

:class:`OnlineInhibition` is a callable a training loop puts after its augmentations. Each
call runs :class:`~latinhib.api.LateralInhibition` with the model in training on the batch
(in eval mode with frozen parameters, restored afterwards) and returns the batch with the
unimportant part of a fraction ``ratio`` of it blurred. docs/online.md says when to use it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .api import InhibitionResult, LateralInhibition
from .config import Config, load_config

__all__ = ["OnlineInhibition"]


class OnlineInhibition:
    """Blur the unimportant part of a fraction of each training batch, judged by the model
    being trained: a three-line change in a training loop.

    The importance pass is the one of :class:`~latinhib.api.LateralInhibition` (the same
    masks ``latinhib enhance`` would make with this model): BatchNorm uses its running
    statistics and updates none of them, dropout is off, no parameter gets a gradient, and
    the model's training mode and ``requires_grad`` flags are restored. The returned batch
    is detached, so nothing of the pass reaches the training graph. The first
    ``warmup_steps`` calls return the batch unchanged (an untrained model's masks are
    noise).

    Args:
        model: the classifier being trained, on the device the batches will be on.
        config: a :class:`~latinhib.config.Config`, a mapping of ``"section.key"``
            overrides (``{"inhibition.quantile": 0.8, "blur.sigma": 3}``), or None for the
            defaults, as for :class:`~latinhib.api.LateralInhibition`.
        warmup_steps: how many calls return the batch untouched before enhancement starts.
        ratio: the fraction of each batch to enhance; None keeps ``inhibition.ratio``.
        seed: seeds the selection; None keeps ``inhibition.seed``.
        input_size: (H, W) of the batches, used to find the default layers; default
            ``model.input_size``, else 224 x 224.

    Raises:
        ValueError: ``warmup_steps`` is negative, or ``ratio`` is outside [0, 1].
        ConfigError: as for :class:`~latinhib.api.LateralInhibition`.

    Example:
        >>> import torch
        >>> from latinhib import OnlineInhibition
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=8), torch.nn.ReLU(),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                             torch.nn.Linear(8, 4))
        >>> online = OnlineInhibition(model, {"blur.sigma": 3}, warmup_steps=0, ratio=1.0,
        ...                           input_size=(32, 32))
        >>> images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
        >>> inputs = online(images, labels)   # after the augmentations, before model(...)
        >>> inputs.shape, bool(online.last.selected.all())
        (torch.Size([4, 3, 32, 32]), True)
    """

    def __init__(
        self,
        model: nn.Module,
        config: Union[Config, Mapping[str, Any], None] = None,
        *,
        warmup_steps: int = 0,
        ratio: Optional[float] = None,
        seed: Optional[int] = None,
        input_size: Optional[Tuple[int, int]] = None,
    ):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps should be >= 0. Got {warmup_steps}")
        if ratio is not None and not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio should be in [0, 1]. Got {ratio}")
        if not isinstance(config, Config):
            config = load_config(overrides=dict(config or {}))
        settings = {"ratio": float(ratio)} if ratio is not None else {}
        if seed is not None:
            settings["seed"] = int(seed)
        config = dataclasses.replace(config, inhibition=dataclasses.replace(config.inhibition, **settings))
        self.enhancer = LateralInhibition(model, config, input_size=input_size)
        self.warmup_steps = int(warmup_steps)
        #: calls so far (set it when resuming a run, so the warm-up is not redone).
        self.step = 0
        #: the last call's :class:`~latinhib.api.InhibitionResult` (None during warm-up).
        self.last: Optional[InhibitionResult] = None

    @property
    def ratio(self) -> float:
        return float(self.enhancer.settings.ratio)

    @property
    def active(self) -> bool:
        """Whether the next call enhances (the warm-up is over)."""
        return self.step >= self.warmup_steps

    def __call__(
        self,
        images: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        keys: Optional[Sequence[str]] = None,
    ) -> torch.Tensor:
        """The batch with a fraction ``ratio`` of it enhanced by the model's own masks.

        Args:
            images: (N, C, H, W) float model inputs, normalised as the model expects (after
                the augmentations). Blur sigmas are in pixels of ``images``.
            labels: (N,) class indices: the loss target under ``model.target`` ``auto``
                (the default) and ``label``; None makes ``auto`` use the prediction.
            keys: one string per sample (e.g. its file path): the chosen samples are then a
                stable hash of (seed, key), the same files every epoch, as
                ``latinhib enhance`` chooses them; None draws afresh each call.

        Returns:
            (N, C, H, W) tensor of the same dtype and device, detached; unselected samples
            are bit-identical to ``images``. During the warm-up, ``images`` itself.

        Raises:
            ValueError: ``images`` is not a float (N, C, H, W) tensor, or ``labels`` /
                ``keys`` do not have one entry per image.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images should be a float (N, C, H, W) tensor. Got {images.dtype} {tuple(images.shape)}")
        n = images.shape[0]
        if labels is not None and (labels.ndim != 1 or labels.shape[0] != n):
            raise ValueError(f"labels should be (N,) = ({n},) class indices. Got shape {tuple(labels.shape)}")
        active = self.active
        self.step += 1
        if not active:
            self.last = None
            return images
        result = self.enhancer(images.detach(), labels.detach() if labels is not None else None, keys)
        self.last = result
        return result.enhanced.detach()

