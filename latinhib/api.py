"""The public Python API: :class:`LateralInhibition` wraps a model and a config and turns
a batch of model inputs into enhanced images, masks and importance maps. The folder
pipeline uses the same object, so the CLI and a training loop share one code path.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .config import Config, ConfigError, InhibitionConfig, load_config
from .importance import default_layers, importance_maps, resolve_layers
from .inhibition import auto_quantile, combine_maps, gate_by_response, inhibit, quantile_threshold, select
from .runtime import amp_dtype, single_thread

__all__ = ["Importance", "InhibitionResult", "LateralInhibition", "recombine"]


@dataclass
class Importance:
    """What the model pass gives for a batch of N model inputs (H x W).

    combined: (N, H, W) float32 importance after the filter, normalised and averaged over
        layers, in [0, 1].
    threshold: (N,) the q-quantile Q_i of each combined map.
    valid: (N,) False where no layer had any spatial information (image left unchanged).
    predicted: (N,) the model's top-1 class. logits: (N, K).
    target: the loss target used. layer_maps: the raw IoM maps, one (N, h, w) per layer call.
    layers: the name of each layer map.
    quantile: (N,) the q each threshold was taken at (one per image under ``quantile: auto``).
    """

    combined: torch.Tensor
    threshold: torch.Tensor
    valid: torch.Tensor
    predicted: torch.Tensor
    logits: torch.Tensor
    target: str
    layer_maps: List[torch.Tensor]
    layers: List[str]
    quantile: Optional[torch.Tensor] = None


def recombine(imp: Importance, settings: InhibitionConfig) -> Importance:
    """Steps 4-5 again on ``imp``'s raw layer maps with the filter, sigma, k, scales, outline
    and q of ``settings`` (a config's ``inhibition`` section): what
    :meth:`LateralInhibition.importance` gives under those settings, with no model pass
    (the layer maps depend only on the model, its layers, the target, ``importance`` and
    ``flip``)."""
    combined, threshold, valid, quantile = _steps_4_5(imp.layer_maps, tuple(imp.combined.shape[-2:]), settings)
    return dataclasses.replace(imp, combined=combined, threshold=threshold, valid=valid, quantile=quantile)


def _steps_4_5(layer_maps: Sequence[torch.Tensor], size: Tuple[int, int], s: InhibitionConfig):
    with single_thread(layer_maps[0].device):
        combined, valid = combine_maps(
            layer_maps, size, kind=s.filter, kernel_size=s.kernel_size, sigma=s.sigma, scales=s.scales,
            gamma=s.scale_gamma,
        )
        # q comes from the response whatever the outline: its surround is what tells
        # object from background, and auto_power was chosen on it.
        if s.quantile == "auto":
            quantile = auto_quantile(combined, power=s.auto_power)
        else:
            quantile = combined.new_full((combined.shape[0],), float(s.quantile))
        if s.outline == "importance" and s.filter != "none":
            combined = gate_by_response(combined, combine_maps(layer_maps, size, kind="none")[0])
        threshold = quantile_threshold(combined, quantile if s.quantile == "auto" else float(s.quantile))
    return combined, threshold, valid, quantile


@dataclass
class InhibitionResult:
    """The enhanced batch and what it came from.

    enhanced: (N, C, H, W), unselected samples bit-identical to the input.
    masks: (N, H, W) in [0, 1]; 1 = kept sharp (all ones for unselected samples).
    importance: (N, H, W) combined importance (zeros for unselected samples).
    selected: (N,) bool. threshold: (N,) Q_i (NaN for unselected samples).
    kept_fraction: (N,) the mean of each mask. predicted: (N,) top-1 class (-1 unselected).
    """

    enhanced: torch.Tensor
    masks: torch.Tensor
    importance: torch.Tensor
    selected: torch.Tensor
    threshold: torch.Tensor
    kept_fraction: torch.Tensor
    predicted: torch.Tensor
    target: Optional[str]


def _check_targets(targets: Optional[torch.Tensor], n: int) -> None:
    if targets is not None and (targets.ndim != 1 or targets.shape[0] != n):
        raise ValueError(f"targets should have one entry per image ({n}). Got {targets.shape[0] if targets.ndim else 0}"
                         f" (shape {tuple(targets.shape)})")


class LateralInhibition:
    """Lateral-inhibition data enhancement for a CNN classifier: the model's loss gradients
    say which parts of each image matter, a Mexican-hat filter sharpens that map, and the
    unimportant part of a fraction of the images is Gaussian-blurred (docs/how-it-works.md).

    The object is the code path of ``latinhib enhance`` too, so a training loop and the CLI
    make the same masks. The model is run in eval mode with frozen parameters for the
    importance pass and restored afterwards, so the enhancer can sit inside a training loop.

    Args:
        model: the classifier whose gradients judge importance, on the device the images
            will be on; any ``nn.Module`` taking (N, C, H, W) and returning (N, K) logits.
        config: a :class:`~latinhib.config.Config`, a mapping of ``"section.key"``
            overrides (``{"inhibition.ratio": 0.3}``), or None for the defaults. Only the
            ``model.layers``, ``model.target``, ``inhibition``, ``blur`` and ``runtime.amp``
            keys matter here.
        input_size: (H, W) of the images the enhancer will see, used to find the default
            layers; default ``model.input_size``, else 224 x 224.

    Raises:
        ConfigError: a config key or value is not allowed, or ``model.layers`` names a
            module the model does not have.
        ValueError: no default layers can be found (the model has no spatial layer).

    Example:
        >>> import torch, torchvision
        >>> from latinhib import LateralInhibition
        >>> model = torchvision.models.mobilenet_v2(weights=None)
        >>> enhancer = LateralInhibition(model, {"inhibition.ratio": 1.0})
        >>> enhancer.layers
        ['features.6', 'features.13', 'features.17']
        >>> out = enhancer(torch.randn(2, 3, 224, 224))
        >>> out.enhanced.shape, out.masks.shape
        (torch.Size([2, 3, 224, 224]), torch.Size([2, 224, 224]))
        >>> out.selected
        tensor([True, True])
    """

    def __init__(
        self,
        model: nn.Module,
        config: Union[Config, Mapping[str, Any], None] = None,
        *,
        input_size: Optional[Tuple[int, int]] = None,
    ):
        if not isinstance(config, Config):
            config = load_config(overrides=dict(config or {}))
        self.model = model
        self.config = config
        self.settings: InhibitionConfig = config.inhibition
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.input_size = input_size or config.model.input_size or (224, 224)
        if config.model.layers:
            try:
                resolve_layers(model, config.model.layers)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            self.layers = list(config.model.layers)
        else:
            self.layers = default_layers(model, self.input_size, min_side=config.model.min_map_side)
        self._generator = torch.Generator().manual_seed(self.settings.seed)

    def _dtype(self) -> torch.dtype:
        param = next(self.model.parameters(), None)
        return param.dtype if param is not None and param.is_floating_point() else torch.float32

    def importance(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> Importance:
        """Steps 1-5 on model inputs (N, C, H, W): combined maps and thresholds."""
        s = self.settings
        n = images.shape[0]
        _check_targets(targets, n)
        # The model's own dtype for its pass (a float64 batch, say, under bf16 autocast or
        # none); the maps come back in float32 whatever the input.
        model_dtype = self._dtype()
        if images.dtype != model_dtype:
            images = images.to(model_dtype)
        if s.flip:
            # The mirrored copy rides in the same batch; its maps are mirrored back and
            # averaged with the originals, which cancels left-right artefacts of strided
            # convolutions and padding. The logits are the original images' own.
            images = torch.cat([images, images.flip(-1)])
            targets = torch.cat([targets, targets]) if targets is not None else None
        maps = importance_maps(
            self.model,
            images,
            self.layers,
            target=self.config.model.target,
            labels=targets,
            norm=s.norm,
            autocast_dtype=amp_dtype(self.config.runtime.amp, images.device),
            kind=s.importance,
        )
        layer_maps, logits, predicted = maps.maps, maps.logits, maps.predicted
        if s.flip:
            layer_maps = [(m[:n] + m[n:].flip(-1)) / 2 for m in layer_maps]
            logits, predicted = logits[:n], predicted[:n]
        combined, threshold, valid, quantile = _steps_4_5(layer_maps, tuple(images.shape[-2:]), self.settings)
        return Importance(combined, threshold, valid, predicted, logits, maps.target, layer_maps, maps.names, quantile)

    def select(self, n: int, keys: Optional[Sequence[str]] = None) -> torch.Tensor:
        """(n,) bool: which samples to enhance. With ``keys`` (e.g. file paths) the choice
        is a stable hash of (seed, key); without, a fresh draw from a seeded generator."""
        if keys is not None:
            if len(keys) != n:
                raise ValueError(f"keys should have one entry per image ({n}). Got {len(keys)}")
            return torch.tensor(select(keys, self.settings.ratio, self.settings.seed), dtype=torch.bool)
        return torch.rand(n, generator=self._generator) < self.settings.ratio

    def __call__(
        self,
        images: torch.Tensor,
        targets: Optional[torch.Tensor] = None,
        keys: Optional[Sequence[str]] = None,
    ) -> InhibitionResult:
        """Enhance a batch of model inputs: select a fraction ``inhibition.ratio`` of the
        samples, run the importance pass on those alone, and blur each one's unimportant part.

        Args:
            images: (N, C, H, W) float model inputs, normalised as the model expects. The
                blur sigma (``blur.sigma``) is in pixels of ``images``.
            targets: (N,) class indices, the loss target under ``model.target`` ``label``
                (and ``auto`` with labels); None where the target is the model's own
                prediction or its entropy.
            keys: one string per sample (e.g. its file path): the selection is then a
                stable hash of (``inhibition.seed``, key), the same as ``latinhib enhance``
                makes; None draws from the enhancer's seeded generator.

        Returns:
            An :class:`InhibitionResult`: ``enhanced`` (N, C, H, W), unselected samples
            bit-identical to the input (they get no model pass at all); ``masks`` (N, H, W),
            1 = kept sharp; ``importance``, ``selected``, ``threshold``, ``kept_fraction``,
            ``predicted`` and the loss ``target`` used.

        Raises:
            ValueError: ``images`` is not a float (N, C, H, W) tensor, ``keys`` does not
                have one entry per image, or the target is ``label`` and ``targets`` is None.

        Example:
            >>> enhancer = LateralInhibition(model, {"inhibition.ratio": 0.5})
            >>> out = enhancer(images, targets=labels, keys=paths)
            >>> loss = criterion(model(out.enhanced), labels)
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images should be a float (N, C, H, W) tensor. Got {images.dtype} {tuple(images.shape)}")
        n, _, h, w = images.shape
        _check_targets(targets, n)
        selected = self.select(n, keys).to(images.device)
        enhanced = images.clone()
        masks = images.new_ones((n, h, w))
        combined = images.new_zeros((n, h, w))
        threshold = images.new_full((n,), float("nan"))
        predicted = torch.full((n,), -1, dtype=torch.long, device=images.device)
        target = None
        index = selected.nonzero().view(-1)
        if index.numel():
            chosen = images.index_select(0, index)
            labels = targets.to(images.device).index_select(0, index) if targets is not None else None
            imp = self.importance(chosen, labels)
            out, mask = inhibit(
                chosen, imp.combined, imp.threshold, imp.valid,
                blur_sigma=self.config.blur.sigma, feather_sigma=self.config.blur.feather,
            )
            enhanced[index] = out
            masks[index] = mask.to(masks.dtype)
            combined[index] = imp.combined.to(combined.dtype)
            threshold[index] = imp.threshold.to(threshold.dtype)
            predicted[index] = imp.predicted
            target = imp.target
        return InhibitionResult(
            enhanced=enhanced,
            masks=masks,
            importance=combined,
            selected=selected,
            threshold=threshold,
            kept_fraction=masks.flatten(1).mean(dim=1),
            predicted=predicted,
            target=target,
        )
