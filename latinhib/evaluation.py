"""``latinhib evaluate``: how much a classifier leans on the background, measured on a
labelled folder (or a batch of tensors) with ImageNet-9-style variants built from latinhib's
own mask (Xiao et al. 2020, "Noise or signal").

Two passes over the images, in batches at the model's input size. The first decodes them and
runs the first model's importance pass (SPEC steps 1-6, the code path of ``enhance``), which
gives each mask and that model's top-1 on the original; ``--masks`` reads true masks instead.
The second builds the variants of :mod:`latinhib.variants` (``background_swapped`` needs the
mask of a partner image that may sit in any batch, hence the masks are kept between the
passes, one bit per pixel) and runs one classification pass per variant batch and model:
one importance pass plus four classification passes per batch for the first model, five
for every further checkpoint. Top-1 accuracies get a percentile bootstrap 95% interval over
images; one seeded set of resamples serves every variant and checkpoint, so gaps and the
differences between checkpoints are paired (and get McNemar's exact test as well).

The Python entry point is :func:`evaluate` (tensors in memory, e.g. a validation loop); the
CLI's is :func:`evaluate_folder`. ``evaluation_report.py`` writes ``--report``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .api import LateralInhibition, amp_dtype
from .config import Config, load_config
from .data import DecodeError, Item, PathError, decode, display, list_folder
from .inhibition import feather, make_mask
from .variants import GAPS, VARIANTS, make_variants, pair_partners

__all__ = ["RESAMPLES", "Accuracy", "Comparison", "Difference", "EvaluateError", "EvaluationResult", "Evaluator", "FolderRun",
           "evaluate", "evaluate_folder", "folder_labels", "summarise"]

#: Bootstrap resamples: enough that the interval's ends move by < 0.3 points between seeds
#: at n = 800 (a percentile of 2000 draws has a standard error of ~0.15 points there).
RESAMPLES = 2000
#: Decoded model inputs kept in memory between the first pass (which finds the bad files and
#: the dataset's mean colour) and the evaluation: 1 GiB holds ~1700 inputs at 224 x 224.
#: Beyond it, images are decoded again (same bits; decoding is ~5% of the per-image cost).
CACHE_BYTES = 1 << 30
#: Images on the report's sample sheet (drawn with ``inhibition.seed``).
SAMPLE_ROWS = 4


class EvaluateError(Exception):
    """The evaluation cannot run (an unmapped class folder, no images, ...); nothing done."""


# ----------------------------------------------------------------------------------------
# statistics


@dataclass
class Accuracy:
    """Top-1 accuracy of one model on one variant, with its bootstrap 95% interval."""

    accuracy: float
    correct: int
    n: int
    ci95: Tuple[float, float]

    def as_dict(self) -> Dict[str, Any]:
        return {"accuracy": self.accuracy, "correct": self.correct, "n": self.n, "ci95": list(self.ci95)}


@dataclass
class Difference:
    """A difference of two accuracies on the same images with its paired bootstrap 95%
    interval; between two checkpoints also McNemar's counts and exact two-sided p-value."""

    difference: float
    ci95: Tuple[float, float]
    only_first_correct: Optional[int] = None
    only_this_correct: Optional[int] = None
    mcnemar_p: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        values = {"difference": self.difference, "ci95": list(self.ci95)}
        if self.mcnemar_p is not None:
            values.update(only_first_correct=self.only_first_correct, only_this_correct=self.only_this_correct,
                          mcnemar_p=self.mcnemar_p)
        return values


@dataclass
class Comparison:
    """A further checkpoint on the first model's variants: its accuracies, its own gaps,
    and per variant its paired difference against the first model (this - first)."""

    checkpoint: str
    variants: Dict[str, Accuracy]
    gaps: Dict[str, Difference]
    paired: Dict[str, Difference]

    def as_dict(self) -> Dict[str, Any]:
        return {"checkpoint": self.checkpoint,
                "variants": {k: v.as_dict() for k, v in self.variants.items()},
                "gaps": {k: v.as_dict() for k, v in self.gaps.items()},
                "paired": {k: v.as_dict() for k, v in self.paired.items()}}


@dataclass
class EvaluationResult:
    """What :func:`evaluate` gives: the first model's accuracy per variant and its gaps, every
    further checkpoint compared with it, and the settings used.

    correct: (K, V, N) bool, whether checkpoint k (0 = the first model) got image n right on
        variant v (order of :data:`~latinhib.variants.VARIANTS`), for further statistics.
    """

    checkpoints: List[str]
    variants: Dict[str, Accuracy]
    gaps: Dict[str, Difference]
    compared: List[Comparison]
    config: Dict[str, Any]
    correct: torch.Tensor = field(repr=False)

    def as_dict(self) -> Dict[str, Any]:
        """The ``--json`` document: variants, gaps, compared, config."""
        return {"variants": {k: v.as_dict() for k, v in self.variants.items()},
                "gaps": {k: v.as_dict() for k, v in self.gaps.items()},
                "compared": [c.as_dict() for c in self.compared],
                "config": self.config}

    def table(self) -> str:
        """Plain-text tables: accuracy per variant and checkpoint, the gaps, the paired
        differences. Percent, 95% intervals in brackets."""
        return format_table(self)


def gap_name(first: str, second: str) -> str:
    return f"{first} - {second}"


def mcnemar_p(only_first: int, only_this: int) -> float:
    """Exact two-sided McNemar p-value: 2 P(X <= min) for X ~ Binomial(discordant, 1/2)."""
    n = only_first + only_this
    if n == 0:
        return 1.0
    low = min(only_first, only_this)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0)
            for i in range(low + 1)]
    peak = max(logs)
    return min(1.0, 2.0 * math.exp(peak) * sum(math.exp(v - peak) for v in logs))


def bootstrap_accuracies(correct: torch.Tensor, resamples: int, seed: int) -> torch.Tensor:
    """Accuracy of every row of ``correct`` (R, N) bool on ``resamples`` seeded resamples of
    the N images (with replacement), the same resamples for every row: (resamples, R)
    float64. Each resample is a count vector, so this is one matrix product per chunk."""
    rows, n = correct.shape
    generator = torch.Generator().manual_seed(seed)
    values = correct.to(torch.float64).t()  # (N, R)
    chunk = max(1, min(resamples, (1 << 22) // max(n, 1)))  # ~32 MB per chunk
    parts = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        picks = torch.randint(0, n, (size, n), generator=generator)
        counts = torch.zeros(size, n, dtype=torch.float64).scatter_add_(1, picks, torch.ones(size, n, dtype=torch.float64))
        parts.append(counts @ values / n)
    return torch.cat(parts)


def _interval(samples: torch.Tensor) -> Tuple[float, float]:
    low, high = torch.quantile(samples, torch.tensor([0.025, 0.975], dtype=samples.dtype)).tolist()
    return (low, high)


def summarise(correct: torch.Tensor, checkpoints: Sequence[str], config: Dict[str, Any], *,
              resamples: int = RESAMPLES, seed: int = 0) -> EvaluationResult:
    """Accuracies, intervals, gaps and paired differences from ``correct`` (K, V, N) bool."""
    k, v, n = correct.shape
    if n == 0:
        raise EvaluateError("no image could be evaluated")
    correct = correct.cpu()
    samples = bootstrap_accuracies(correct.reshape(k * v, n), resamples, seed).view(-1, k, v)
    counts = correct.sum(dim=2)

    def accuracies(model: int) -> Dict[str, Accuracy]:
        return {name: Accuracy(float(counts[model, i]) / n, int(counts[model, i]), n, _interval(samples[:, model, i]))
                for i, name in enumerate(VARIANTS)}

    def gaps(model: int) -> Dict[str, Difference]:
        out = {}
        for first, second in GAPS:
            a, b = VARIANTS.index(first), VARIANTS.index(second)
            value = float(counts[model, a] - counts[model, b]) / n
            out[gap_name(first, second)] = Difference(value, _interval(samples[:, model, a] - samples[:, model, b]))
        return out

    compared = []
    for model in range(1, k):
        paired = {}
        for i, name in enumerate(VARIANTS):
            only_first = int((correct[0, i] & ~correct[model, i]).sum())
            only_this = int((correct[model, i] & ~correct[0, i]).sum())
            paired[name] = Difference(float(counts[model, i] - counts[0, i]) / n,
                                      _interval(samples[:, model, i] - samples[:, 0, i]),
                                      only_first, only_this, mcnemar_p(only_first, only_this))
        compared.append(Comparison(checkpoints[model], accuracies(model), gaps(model), paired))
    config = dict(config)
    config.setdefault("evaluate", {}).update(resamples=resamples, bootstrap_seed=seed)
    return EvaluationResult(list(checkpoints), accuracies(0), gaps(0), compared, config, correct)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _span(low: float, high: float, sign: bool = False) -> str:
    form = "{:+.1f}" if sign else "{:.1f}"
    return f"[{form.format(100 * low)}, {form.format(100 * high)}]"


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in rows]
    return lines


def format_table(result: EvaluationResult) -> str:
    names = result.checkpoints
    n = next(iter(result.variants.values())).n
    every = [result.variants] + [c.variants for c in result.compared]
    every_gaps = [result.gaps] + [c.gaps for c in result.compared]
    settings = result.config.get("evaluate", {})
    lines = [f"top-1 accuracy (%) on {n} images, masks: {settings.get('masks', 'latinhib')}; "
             f"[95% bootstrap interval, {settings.get('resamples', RESAMPLES)} resamples]", ""]
    rows = [[name] + [f"{_pct(acc[name].accuracy)} {_span(*acc[name].ci95)}" for acc in every] for name in VARIANTS]
    lines += _grid(["variant"] + names, rows)
    lines.append("")
    rows = [[key] + [f"{100 * g[key].difference:+.1f} {_span(*g[key].ci95, sign=True)}" for g in every_gaps]
            for key in every_gaps[0]]
    lines += _grid(["gap (points)"] + names, rows)
    for comparison in result.compared:
        lines += ["", f"{comparison.checkpoint} - {names[0]} (paired, points; McNemar p)"]
        rows = [[name, f"{100 * d.difference:+.1f} {_span(*d.ci95, sign=True)}", f"p={d.mcnemar_p:.3g}"]
                for name, d in comparison.paired.items()]
        lines += _grid(["variant", "difference", "McNemar"], rows)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# the two passes over a batch


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


# ----------------------------------------------------------------------------------------
# the Python API


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
    """Accuracy of ``model`` on the variants of ``images``, e.g. inside a validation loop::

        from latinhib import evaluate
        result = evaluate(model, val_images, val_labels, {"inhibition.quantile": 0.5})
        print(result.table())           # result.variants["background_swapped"].accuracy, ...

    images: (N, C, H, W) normalised model inputs (as the model takes them); labels: (N,)
        class indices of the model's outputs. Batches of ``runtime.batch_size`` go through
        the models on the first model's device.
    config: a :class:`~latinhib.config.Config`, a mapping of ``"section.key"`` overrides or
        None: ``model.layers``/``target``, ``inhibition``, ``blur`` and ``runtime.amp``/
        ``batch_size`` matter. ``inhibition.seed`` seeds the pairing and the bootstrap.
    also: further models, evaluated on the same variants (masks from ``model``).
    masks: (N, H, W) true masks (1 = object) instead of latinhib's.
    fill: (C,) the ``object_only`` colour in normalised space; default: the images' mean.
    """
    config = _as_config(config)
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images should be a float (N, C, H, W) tensor. Got {images.dtype} {tuple(images.shape)}")
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


# ----------------------------------------------------------------------------------------
# a labelled folder


def folder_labels(images: Sequence[Item], classes: Optional[List[str]]) -> Dict[str, int]:
    """Class folder -> model output index, by the mapping ``target: auto/label`` uses
    (``plan._class_labels``: exact, ignoring case and '_' vs ' ', or a numeric folder).
    Raises :class:`EvaluateError` naming the first folder (sorted) that does not map."""
    from .plan import _class_labels

    loose = [item for item in images if item.class_name is None]
    if loose:
        raise EvaluateError(f"{display(loose[0].rel)!r} is not in a class folder; SRC should be an ImageFolder "
                            f"tree SRC/<class>/<file> whose folders are the model's classes")
    if not classes:
        raise EvaluateError("the model has no class names to map the folders onto: set model.classes "
                            "(e.g. the sorted folder names a torchvision ImageFolder trained it on)")
    mapping = _class_labels(images, classes)
    if mapping is not None:
        return mapping
    first: Dict[str, Item] = {}
    for item in images:
        first.setdefault(item.class_name, item)
    for name in sorted(first):
        if _class_labels([first[name]], classes) is None:
            raise EvaluateError(f"class folder {display(name)!r} is not one of the model's {len(classes)} classes "
                                f"(matched exactly, ignoring case and '_', or as an index); rename it or set "
                                f"model.classes")
    raise AssertionError("unreachable: every folder maps on its own")


@dataclass
class FolderRun:
    """A folder evaluation: the result, the files that failed (rel, cause), the images
    evaluated and the wall time."""

    result: EvaluationResult
    failed: List[Tuple[str, str]]
    images: int
    seconds: float

    def line(self) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else float("nan")
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return f"{self.images} images evaluated{failed} in {self.seconds:.1f} s ({rate:.1f} img/s)"


def _mask_file(folder: Path, rel: str) -> Optional[Path]:
    """The true mask of ``rel`` under ``folder``: ``rel`` itself (a mirrored tree, e.g.
    ImageNet-9's or the experiment's), ``rel.png`` (``--save-masks``) or ``rel`` with a .png
    suffix."""
    for candidate in (folder / rel, folder / f"{rel}.png", (folder / rel).with_suffix(".png")):
        if candidate.is_file():
            return candidate
    return None


def load_mask(path: Path, size: Tuple[int, int]) -> torch.Tensor:
    """A mask file (any mode; > 50% grey = object) as a (H, W) 0/1 float mask at ``size``:
    the grey levels are scaled bilinearly (antialiased) and thresholded at half."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            grey = opened.convert("L")
            raw = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(grey.size[1], grey.size[0])
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types; reported with the file name
        raise DecodeError(f"mask {display(str(path))!r}: cannot decode: {exc}") from None
    scaled = F.interpolate(raw.float()[None, None] / 255.0, size=size, mode="bilinear", antialias=True,
                           align_corners=False)[0, 0]
    return (scaled >= 0.5).float()


class _Inputs:
    """Decoded model inputs (and true masks) by image index: decoded in the first pass and
    kept up to ``cache_bytes``, decoded again in the second pass beyond that."""

    def __init__(self, items: Sequence[Item], loaded, masks_dir: Optional[Path], cache_bytes: int):
        self.items, self.loaded, self.masks_dir = items, loaded, masks_dir
        self.cache: Dict[int, torch.Tensor] = {}
        self.room = cache_bytes

    def load(self, index: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(model input (3, H, W), true mask (H, W) or None); raises DecodeError."""
        if index in self.cache:
            return self.cache[index], None
        item, loaded = self.items[index], self.loaded
        decoded = decode(item.path, loaded.input_size, loaded.mean, loaded.std)
        mask = None
        if self.masks_dir is not None:
            path = _mask_file(self.masks_dir, item.rel)
            if path is None:
                raise DecodeError(f"no mask under {display(str(self.masks_dir))!r} (looked for {display(item.rel)} "
                                  f"and {display(item.rel)}.png)")
            mask = load_mask(path, loaded.input_size)
        return decoded.model_input, mask

    def keep(self, index: int, model_input: torch.Tensor) -> None:
        size = model_input.numel() * model_input.element_size()
        if size <= self.room:
            self.cache[index] = model_input
            self.room -= size

    def again(self, index: int) -> torch.Tensor:
        """The model input of an image that decoded in the first pass."""
        try:
            return self.load(index)[0]
        except DecodeError as exc:
            raise EvaluateError(f"{display(self.items[index].rel)}: decoded in the first pass, not now "
                                f"(changed during the run?): {exc}") from None


def _decode_batch(inputs: _Inputs, indices: Sequence[int], pool: Optional[ThreadPoolExecutor]):
    def one(index: int):
        try:
            return index, inputs.load(index), None
        except DecodeError as exc:
            return index, None, str(exc)

    return list(pool.map(one, indices)) if pool is not None else [one(i) for i in indices]


def _uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised (n, 3, H, W) model inputs -> (n, 3, H, W) uint8 pixels."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() * std_t + mean_t).clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _save_variants(folder: Path, items: Sequence[Item], variants: Dict[str, torch.Tensor], masks: torch.Tensor,
                   loaded) -> None:
    """``folder/<variant>/<rel>.png`` for every variant and ``folder/mask/<rel>.png``
    (255 = kept), at the model's input size, PNG so nothing is lost to compression."""
    from PIL import Image

    from .writer import atomic_write, tensor_bytes

    pictures = {name: _uint8(v, loaded.mean, loaded.std).permute(0, 2, 3, 1).cpu() for name, v in variants.items()}
    levels = (masks.float() * 255).round_().to(torch.uint8).cpu()
    for i, item in enumerate(items):
        for name, batch in pictures.items():
            picture = Image.frombytes("RGB", (batch.shape[2], batch.shape[1]), tensor_bytes(batch[i]))
            atomic_write(folder / name / f"{item.rel}.png", lambda tmp, p=picture: p.save(tmp, format="PNG"))
        mask = Image.frombytes("L", (levels.shape[2], levels.shape[1]), tensor_bytes(levels[i]))
        atomic_write(folder / "mask" / f"{item.rel}.png", lambda tmp, p=mask: p.save(tmp, format="PNG"))


def _first_pass(inputs: _Inputs, evaluator: Optional[Evaluator], labels: torch.Tensor, batch_size: int,
                workers: int, log: Callable[[str], None], bar):
    """Decode every image, batch by batch; with ``evaluator``, its importance pass gives each
    mask and the first model's top-1 on the original, else the true masks are read.
    Returns (indices that decoded, failures (rel, cause), MaskStore, first top-1 by index or
    None, the mean colour of the decoded inputs (C,): the normalised dataset mean colour)."""
    good: List[int] = []
    failed: List[Tuple[str, str]] = []
    store = MaskStore()
    first: Dict[int, int] = {}
    total, pixels = None, 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="latinhib-decode") if workers > 0 else None
    try:
        for start in range(0, len(inputs.items), batch_size):
            indices = list(range(start, min(start + batch_size, len(inputs.items))))
            ok = []
            for index, value, error in _decode_batch(inputs, indices, pool):
                if error is not None:
                    rel = inputs.items[index].rel
                    log(f"latinhib: {display(rel)}: {error}")
                    failed.append((rel, error))
                    continue
                ok.append((index, value))
                inputs.keep(index, value[0])
                sums = value[0].double().sum(dim=(1, 2))
                total = sums if total is None else total + sums
                pixels += value[0].shape[1] * value[0].shape[2]
            if ok and evaluator is not None:
                batch = torch.stack([value[0] for _, value in ok])
                masks, _, predicted = evaluator.masks(batch, labels[[index for index, _ in ok]])
                masks, predicted = masks.cpu(), predicted.cpu()  # one transfer per batch
                for row, (index, _) in enumerate(ok):
                    store.put(index, masks[row])
                    first[index] = int(predicted[row])
            for index, value in ok:
                if evaluator is None:
                    store.put(index, value[1])
                good.append(index)
            if bar is not None:
                bar.update(2 * len(indices) - len(ok))  # a failed file has no second pass
    finally:
        if pool is not None:
            pool.shutdown()
    fill = (total / pixels).float() if total is not None else torch.zeros(3)
    return good, failed, store, (first if evaluator is not None else None), fill


def evaluate_folder(
    config: Config,
    src: Path,
    *,
    also: Sequence[Union[str, Path]] = (),
    masks: Optional[Path] = None,
    save_variants: Optional[Path] = None,
    report: Optional[Path] = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    resamples: int = RESAMPLES,
    cache_bytes: int = CACHE_BYTES,
) -> FolderRun:
    """``latinhib evaluate SRC``: every image of the ImageFolder tree ``src`` through
    :class:`Evaluator`, in batches of ``runtime.batch_size``: a first pass decodes and makes
    the masks, a second builds the variants and classifies them. Bad image (or mask) files
    get one line on ``log`` each and are left out (the pairing only uses images that
    decoded); an unmapped class folder, no images, a bad config or checkpoint raise
    before any model pass."""
    from .models import load_model, resolve_device
    from .recorder import progress_bar
    from .preview import sample

    started = time.time()
    src = Path(src)
    items = _list_images(src)
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    device = resolve_device(config.runtime.device)
    loaded = load_model(config.model, device)
    mapping = folder_labels(items, loaded.classes)
    models = [loaded.model] + [load_model(dataclasses.replace(config.model, checkpoint=str(path)), device).model
                               for path in also]
    evaluator = Evaluator(models, config, loaded.input_size)
    all_labels = torch.tensor([mapping[item.class_name] for item in items])
    inputs = _Inputs(items, loaded, masks, cache_bytes)
    bar = progress_bar(2 * len(items), quiet)
    size = config.runtime.batch_size
    good, failed, store, first, fill = _first_pass(inputs, None if masks is not None else evaluator, all_labels,
                                                   size, config.runtime.workers, log, bar)
    if not good:
        raise EvaluateError("none of the images could be decoded")
    labels = all_labels[good]
    partners = pair_partners(labels, config.inhibition.seed)
    shown = {item.rel for item in sample([items[i] for i in good], SAMPLE_ROWS, config.inhibition.seed)}
    samples: List[Dict[str, Any]] = []
    parts = []
    for start in range(0, len(good), size):
        rows = list(range(start, min(start + size, len(good))))
        outcome, own, batch_masks = _variant_batch(evaluator, inputs, store, good, rows, labels, partners, fill, first)
        parts.append(outcome.correct)
        batch_items = [items[i] for i in own]
        if save_variants is not None:
            _save_variants(Path(save_variants), batch_items, outcome.variants, batch_masks, loaded)
        samples += [_sample_row(item, row, outcome, batch_masks, loaded)
                    for row, item in enumerate(batch_items) if item.rel in shown]
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    names = [config.model.checkpoint or loaded.description] + [str(path) for path in also]
    settings = {"src": str(src), "masks": str(masks) if masks is not None else "latinhib", "images": len(good),
                "failed": len(failed), "pairing_seed": config.inhibition.seed,
                "fill_rgb": [int(v) for v in _uint8(fill.view(1, -1, 1, 1), loaded.mean, loaded.std).view(-1)],
                "classes": {name: loaded.classes[index] for name, index in sorted(mapping.items())}}
    result = summarise(torch.cat(parts, dim=2), names, {**config.to_dict(), "evaluate": settings},
                       resamples=resamples, seed=config.inhibition.seed)
    run = FolderRun(result, failed, len(good), time.time() - started)
    if report is not None:
        from .evaluation_report import write_report

        write_report(Path(report), run, samples, loaded.description)
    return run


def _list_images(src: Path) -> List[Item]:
    """The images under ``src`` (other files are not evaluated); a missing or empty SRC raises."""
    if not src.is_dir():
        raise EvaluateError(f"SRC {display(str(src))!r}: no such folder")
    try:
        items = [item for item in list_folder(src) if item.is_image]
    except PathError as exc:
        raise EvaluateError(str(exc)) from None
    if not items:
        raise EvaluateError(f"SRC {display(str(src))!r}: no images found")
    return items


def _variant_batch(evaluator: "Evaluator", inputs: "_Inputs", store: MaskStore, good: Sequence[int],
                   rows: Sequence[int], labels: torch.Tensor, partners: torch.Tensor, fill: torch.Tensor,
                   first: Optional[Sequence[bool]]):
    """The second pass over one batch (``rows`` of the decoded images ``good``): each image
    with its partner's input and mask, through every variant and model. Returns the outcome,
    the batch's item indices and its masks."""
    own = [good[r] for r in rows]
    lent = [good[int(partners[r])] for r in rows]
    masks = torch.stack([store.get(i) for i in own])
    outcome = evaluator(torch.stack([inputs.again(i) for i in own]), labels[list(rows)], masks,
                        torch.stack([inputs.again(i) for i in lent]), torch.stack([store.get(i) for i in lent]),
                        fill, torch.tensor([first[i] for i in own]) if first is not None else None)
    return outcome, own, masks


def _sample_row(item: Item, index: int, outcome: BatchOutcome, masks: torch.Tensor, loaded) -> Dict[str, Any]:
    """One image's variants as uint8 (3, H, W) CPU tensors, its mask, and which checkpoints
    got each variant right, for the report's sample sheet."""
    pictures = {name: _uint8(v[index : index + 1], loaded.mean, loaded.std)[0].cpu()
                for name, v in outcome.variants.items()}
    return {"rel": item.rel, "class": item.class_name, "pictures": pictures,
            "mask": masks[index].float().cpu(), "correct": outcome.correct[:, :, index].clone()}
