"""``latinhib.evaluate``: how much a classifier leans on the background, measured on a batch
of tensors (e.g. inside a validation loop) with ImageNet-9-style variants built from
latinhib's own mask (Xiao et al. 2020, "Noise or signal").

Two passes over the images, in batches at the model's input size: the first model's
importance pass gives each mask (and its top-1 on the original), then every variant batch goes
through every model: one importance pass plus four classification passes per batch for the
first model, five for every further one. The evaluation is four modules, data flowing down:

- ``evaluation.py`` (this one): :func:`evaluate`, the Python entry point;
- ``evaluation_folder.py``: ``latinhib evaluate SRC`` on a labelled ImageFolder tree;
- ``evaluation_passes.py``: the models' two passes over a batch, the masks kept between them;
- ``evaluation_statistics.py``: accuracies, bootstrap intervals, gaps, McNemar, the tables;
- ``evaluation_report.py``: the ``--report`` folder (Markdown, JSON, charts).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from .config import Config, load_config
from .evaluation_passes import Evaluator
from .evaluation_statistics import RESAMPLES, EvaluationResult, summarise
from .variants import pair_partners

__all__ = ["evaluate"]


def _as_config(config: Union[Config, Mapping[str, Any], None]) -> Config:
    return config if isinstance(config, Config) else load_config(overrides=dict(config or {}))


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: Union[Config, Mapping[str, Any], None] = None,
    *,
    also: Sequence[nn.Module] = (),
    masks: Optional[torch.Tensor] = None,
    fill: Optional[torch.Tensor] = None,
    resamples: int = RESAMPLES,
) -> EvaluationResult:
    """Top-1 accuracy of ``model`` (and of ``also``) on the variants of ``images``: the
    original, its object blurred, its background blurred, the object alone on a plain colour,
    the object on another class's background (``latinhib.variants.VARIANTS``), with the masks
    latinhib makes for ``enhance`` (or true masks). Batches of ``runtime.batch_size`` go
    through the models on the first model's device; ``inhibition.seed`` seeds the pairing of
    backgrounds and the bootstrap, so a rerun gives the same numbers.

    Args:
        model: the classifier whose importance makes the masks; its outputs are class indices.
        images: (N, C, H, W) float, normalised as ``model`` takes them.
        labels: (N,) the true class index of each image in ``model``'s outputs.
        config: a :class:`~latinhib.config.Config`, a mapping of ``"section.key"`` overrides
            (as ``--set`` takes them) or None for the defaults. ``model.layers``/``target``,
            ``inhibition``, ``blur`` and ``runtime.amp``/``batch_size`` matter here.
        also: further models, scored on the very same variants (the masks come from ``model``).
        masks: (N, H, W) true masks (1 = object) instead of latinhib's; no importance pass then.
        fill: (C,) the ``object_only`` background colour in normalised space; default: the
            images' mean colour.
        resamples: bootstrap resamples for the 95% intervals.

    Returns:
        An :class:`~latinhib.evaluation_statistics.EvaluationResult`: ``variants`` (accuracy,
        count and interval per variant), ``gaps`` (e.g. ``"original - background_swapped"``),
        ``compared`` (each model of ``also`` against ``model``, paired, with McNemar's p),
        ``correct`` ((K, V, N) bool, per model, variant and image) and ``table()``.

    Raises:
        ValueError: ``images`` is not a float (N, C, H, W) tensor with N >= 1, or ``labels``
            is not (N,).
        ConfigError: a key of ``config`` is unknown or its value is not allowed.

    Example:
        >>> import torch, torchvision, latinhib
        >>> model = torchvision.models.resnet18(num_classes=4).eval()
        >>> images, labels = torch.randn(8, 3, 64, 64), torch.arange(8) % 4
        >>> result = latinhib.evaluate(model, images, labels, {"model.layers": ["layer3"]})
        >>> result.variants["original"].n, len(result.variants)
        (8, 5)
        >>> print(result.table())  # doctest: +SKIP
    """
    config = _as_config(config)
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images should be a float (N, C, H, W) tensor. Got {images.dtype} {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("images should hold at least one image. Got none")
    if labels.shape != (len(images),):
        raise ValueError(f"labels should be ({len(images)},). Got shape {tuple(labels.shape)}")
    evaluator = Evaluator([model, *also], config, tuple(images.shape[-2:]))
    fill = images.mean(dim=(0, 2, 3)) if fill is None else fill
    size = config.runtime.batch_size
    batches = [torch.arange(start, min(start + size, len(images))) for start in range(0, len(images), size)]
    first_original = None
    if masks is None:
        parts = [evaluator.masks(images[index], labels[index]) for index in batches]
        masks = torch.cat([p[0].cpu() for p in parts])
        first_original = torch.cat([p[2].cpu() for p in parts])
    partners = pair_partners(labels, config.inhibition.seed)
    correct = []
    for index in batches:
        outcome = evaluator(images[index], labels[index], masks[index], images[partners[index]], masks[partners[index]],
                            fill, first_original[index] if first_original is not None else None)
        correct.append(outcome.correct)
    names = ["model"] + [f"also[{i}]" for i in range(len(also))]
    settings = {"masks": "given" if first_original is None else "latinhib", "images": len(images)}
    return summarise(torch.cat(correct, dim=2), names, {**config.to_dict(), "evaluate": settings},
                     resamples=resamples, seed=config.inhibition.seed)
