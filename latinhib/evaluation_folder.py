"""``latinhib evaluate SRC``: :class:`~latinhib.evaluation_passes.Evaluator` over a labelled
ImageFolder tree, in batches of ``runtime.batch_size``. The class folders map onto the
model's classes; the first pass decodes every image (a bad file gets one line and is left
out), keeps the decoded inputs up to :data:`CACHE_BYTES` and makes the masks (or reads true
ones, ``--masks``); the second builds the variants, pairs each image with a partner of another
class, classifies, and optionally saves the variants (``--save-variants``) and the report's
sample rows (``--report``, written by ``evaluation_report``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .config import Config
from .data import DecodeError, Item, PathError, decode, display, list_folder
from .encoding import tensor_bytes
from .evaluation_passes import BatchOutcome, Evaluator, MaskStore
from .evaluation_statistics import RESAMPLES, EvaluateError, EvaluationResult, summarise
from .files import atomic_write
from .labels import class_labels
from .variants import pair_partners

__all__ = ["CACHE_BYTES", "SAMPLE_ROWS", "FirstPass", "FolderRun", "evaluate_folder", "folder_labels", "load_mask"]

#: Decoded model inputs kept in memory between the first pass (which finds the bad files and
#: the dataset's mean colour) and the evaluation: 1 GiB holds ~1700 inputs at 224 x 224.
#: Beyond it, images are decoded again (same bits; decoding is a small share of the per-image cost).
CACHE_BYTES = 1 << 30
#: Images on the report's sample sheet (drawn with ``inhibition.seed``).
SAMPLE_ROWS = 4


def folder_labels(images: Sequence[Item], classes: Optional[List[str]]) -> Dict[str, int]:
    """Class folder -> model output index, by the mapping ``target: auto/label`` uses
    (``labels.class_labels``: exact, ignoring case and '_' vs ' ', or a numeric folder).
    Raises :class:`EvaluateError` naming the first folder (sorted) that does not map."""
    loose = [item for item in images if item.class_name is None]
    if loose:
        raise EvaluateError(f"{display(loose[0].rel)!r} is not in a class folder; SRC should be an ImageFolder "
                            f"tree SRC/<class>/<file> whose folders are the model's classes")
    if not classes:
        raise EvaluateError("the model has no class names to map the folders onto: set model.classes "
                            "(e.g. the sorted folder names a torchvision ImageFolder trained it on)")
    mapping = class_labels(images, classes)
    if mapping is not None:
        return mapping
    first: Dict[str, Item] = {}
    for item in images:
        first.setdefault(item.class_name, item)
    for name in sorted(first):
        if class_labels([first[name]], classes) is None:
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


@dataclass
class FirstPass:
    """What the first pass hands the second."""

    #: Indices (into the listing) of the images that decoded, in listing order.
    good: List[int] = dataclasses.field(default_factory=list)
    #: (rel, cause) of every file that did not.
    failed: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    masks: MaskStore = dataclasses.field(default_factory=MaskStore)
    #: The first model's top-1 on the original, by index, from its importance pass (so it is
    #: not classified again); None with true masks (no importance pass).
    first_top1: Optional[Dict[int, int]] = None
    #: (C,) the mean colour of the decoded inputs (normalised): ``object_only``'s fill.
    fill: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(3))


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

    pictures = {name: _uint8(v, loaded.mean, loaded.std).permute(0, 2, 3, 1).cpu() for name, v in variants.items()}
    levels = (masks.float() * 255).round_().to(torch.uint8).cpu()
    for i, item in enumerate(items):
        for name, batch in pictures.items():
            picture = Image.frombytes("RGB", (batch.shape[2], batch.shape[1]), tensor_bytes(batch[i]))
            atomic_write(folder / name / f"{item.rel}.png", lambda tmp, p=picture: p.save(tmp, format="PNG"))
        mask = Image.frombytes("L", (levels.shape[2], levels.shape[1]), tensor_bytes(levels[i]))
        atomic_write(folder / "mask" / f"{item.rel}.png", lambda tmp, p=mask: p.save(tmp, format="PNG"))


# ----------------------------------------------------------------------------------------
# the first pass: decode, keep, masks


def _decode_pool(workers: int):
    """Threads that decode a batch's files (Pillow releases the GIL), or none at 0 workers."""
    if workers > 0:
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="latinhib-decode")
    return contextlib.nullcontext()


def _decode_batch(inputs: _Inputs, indices: Sequence[int], pool: Optional[ThreadPoolExecutor],
                  failed: List[Tuple[str, str]], log: Callable[[str], None]):
    """[(index, (model input, true mask or None))] of the images in ``indices`` that decode,
    in order; each one that does not gets a line on ``log`` and a row in ``failed``."""
    def one(index: int):
        try:
            return index, inputs.load(index), None
        except DecodeError as exc:
            return index, None, str(exc)

    decoded = []
    for index, value, error in (pool.map(one, indices) if pool is not None else map(one, indices)):
        if error is None:
            decoded.append((index, value))
            continue
        rel = inputs.items[index].rel
        log(f"latinhib: {display(rel)}: {error}")
        failed.append((rel, error))
    return decoded


def _importance_masks(evaluator: Evaluator, decoded, labels: torch.Tensor, done: FirstPass) -> None:
    """The first model's importance pass over a decoded batch: each image's mask and top-1."""
    batch = torch.stack([value[0] for _, value in decoded])
    masks, _, predicted = evaluator.masks(batch, labels[[index for index, _ in decoded]])
    masks, predicted = masks.cpu(), predicted.cpu()  # one transfer per batch
    for row, (index, _) in enumerate(decoded):
        done.masks.put(index, masks[row])
        done.first_top1[index] = int(predicted[row])


def _first_pass(inputs: _Inputs, evaluator: Optional[Evaluator], labels: torch.Tensor, batch_size: int,
                workers: int, log: Callable[[str], None], bar) -> FirstPass:
    """Decode every image, batch by batch; with ``evaluator``, its importance pass gives each
    mask and the first model's top-1 on the original, else the true masks are read."""
    done = FirstPass(first_top1={} if evaluator is not None else None)
    total, pixels = None, 0
    with _decode_pool(workers) as pool:
        for start in range(0, len(inputs.items), batch_size):
            indices = list(range(start, min(start + batch_size, len(inputs.items))))
            decoded = _decode_batch(inputs, indices, pool, done.failed, log)
            for index, (model_input, true_mask) in decoded:
                inputs.keep(index, model_input)
                sums = model_input.double().sum(dim=(1, 2))
                total = sums if total is None else total + sums
                pixels += model_input.shape[1] * model_input.shape[2]
                if evaluator is None:
                    done.masks.put(index, true_mask)
                done.good.append(index)
            if decoded and evaluator is not None:
                _importance_masks(evaluator, decoded, labels, done)
            if bar is not None:
                bar.update(2 * len(indices) - len(decoded))  # a failed file has no second pass
    if total is not None:
        done.fill = (total / pixels).float()
    return done


# ----------------------------------------------------------------------------------------
# the second pass: variants, classification, saved pictures


def _variant_batch(evaluator: Evaluator, inputs: _Inputs, first: FirstPass, rows: Sequence[int],
                   labels: torch.Tensor, partners: torch.Tensor) -> Tuple[BatchOutcome, List[int], torch.Tensor]:
    """The second pass over one batch (``rows`` of the decoded images ``first.good``): each
    image with its partner's input and mask, through every variant and model. Returns the
    outcome, the batch's item indices and its masks."""
    own = [first.good[r] for r in rows]
    lent = [first.good[int(partners[r])] for r in rows]
    masks = torch.stack([first.masks.get(i) for i in own])
    top1 = torch.tensor([first.first_top1[i] for i in own]) if first.first_top1 is not None else None
    outcome = evaluator(torch.stack([inputs.again(i) for i in own]), labels[list(rows)], masks,
                        torch.stack([inputs.again(i) for i in lent]), torch.stack([first.masks.get(i) for i in lent]),
                        first.fill, top1)
    return outcome, own, masks


def _sample_row(item: Item, index: int, outcome: BatchOutcome, masks: torch.Tensor, loaded) -> Dict[str, Any]:
    """One image's variants as uint8 (3, H, W) CPU tensors, its mask, and which checkpoints
    got each variant right, for the report's sample sheet."""
    pictures = {name: _uint8(v[index : index + 1], loaded.mean, loaded.std)[0].cpu()
                for name, v in outcome.variants.items()}
    return {"rel": item.rel, "class": item.class_name, "pictures": pictures,
            "mask": masks[index].float().cpu(), "correct": outcome.correct[:, :, index].clone()}


def _second_pass(evaluator: Evaluator, inputs: _Inputs, first: FirstPass, labels: torch.Tensor, config: Config,
                 save_variants: Optional[Path], bar) -> Tuple[torch.Tensor, List[Dict[str, Any]]]:
    """Every decoded image through the variants and models, ``labels`` (one per
    ``first.good``). Returns correct (K, V, n) and the report's sample rows."""
    from .preview import sample

    items = inputs.items
    partners = pair_partners(labels, config.inhibition.seed)
    shown = {item.rel for item in sample([items[i] for i in first.good], SAMPLE_ROWS, config.inhibition.seed)}
    samples: List[Dict[str, Any]] = []
    parts = []
    size = config.runtime.batch_size
    for start in range(0, len(first.good), size):
        rows = list(range(start, min(start + size, len(first.good))))
        outcome, own, batch_masks = _variant_batch(evaluator, inputs, first, rows, labels, partners)
        parts.append(outcome.correct)
        batch_items = [items[i] for i in own]
        if save_variants is not None:
            _save_variants(Path(save_variants), batch_items, outcome.variants, batch_masks, inputs.loaded)
        samples += [_sample_row(item, row, outcome, batch_masks, inputs.loaded)
                    for row, item in enumerate(batch_items) if item.rel in shown]
        if bar is not None:
            bar.update(len(rows))
    return torch.cat(parts, dim=2), samples


# ----------------------------------------------------------------------------------------
# the command


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


def _settings(src: Path, masks: Optional[Path], first: FirstPass, config: Config, loaded,
              mapping: Dict[str, int]) -> Dict[str, Any]:
    """The ``evaluate`` section of the result's config: what was evaluated and how."""
    fill_rgb = _uint8(first.fill.view(1, -1, 1, 1), loaded.mean, loaded.std).view(-1)
    return {"src": str(src), "masks": str(masks) if masks is not None else "latinhib", "images": len(first.good),
            "failed": len(first.failed), "pairing_seed": config.inhibition.seed,
            "fill_rgb": [int(v) for v in fill_rgb],
            "classes": {name: loaded.classes[index] for name, index in sorted(mapping.items())}}


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
    :class:`Evaluator` with the model of ``config`` and the checkpoints ``also``. Bad image
    (or mask) files get one line on ``log`` each and are left out (the pairing only uses
    images that decoded); an unmapped class folder, no images, a bad config or checkpoint
    raise before any model pass."""
    from .models import load_model
    from .recorder import progress_bar
    from .runtime import resolve_device

    started = time.time()
    src = Path(src)
    items = _list_images(src)
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    device = resolve_device(config.runtime.device)
    loaded = load_model(config.model, device)
    mapping = folder_labels(items, loaded.classes)  # fails before the other checkpoints load
    models = [loaded.model] + [load_model(dataclasses.replace(config.model, checkpoint=str(path)), device).model
                               for path in also]
    evaluator = Evaluator(models, config, loaded.input_size)
    labels = torch.tensor([mapping[item.class_name] for item in items])
    inputs = _Inputs(items, loaded, masks, cache_bytes)
    bar = progress_bar(2 * len(items), quiet)
    first = _first_pass(inputs, None if masks is not None else evaluator, labels, config.runtime.batch_size,
                        config.runtime.workers, log, bar)
    if not first.good:
        raise EvaluateError("none of the images could be decoded")
    correct, samples = _second_pass(evaluator, inputs, first, labels[first.good], config, save_variants, bar)
    if bar is not None:
        bar.close()
    names = [config.model.checkpoint or loaded.description] + [str(path) for path in also]
    settings = _settings(src, masks, first, config, loaded, mapping)
    result = summarise(correct, names, {**config.to_dict(), "evaluate": settings}, resamples=resamples,
                       seed=config.inhibition.seed)
    run = FolderRun(result, first.failed, len(first.good), time.time() - started)
    if report is not None:
        from .evaluation_report import write_report

        write_report(Path(report), run, samples, loaded.description)
    return run
