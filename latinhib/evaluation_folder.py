"""``latinhib evaluate SRC``: :class:`~latinhib.evaluation_passes.Evaluator` over a labelled
ImageFolder tree or WebDataset shards, in batches of ``runtime.batch_size``. Each image's
label maps onto the model's classes (``labels.py``: class folders by name, index or ImageNet
WordNet ID; a sample's ``.cls`` or JSON field); the first pass decodes every image (a bad
file gets one line and is left out), keeps the decoded inputs up to :data:`CACHE_BYTES` and
makes the masks (or reads true ones, ``--masks``, each doubtful one said and counted); the
second builds the variants, pairs each image with a partner of another class, classifies,
and optionally saves the variants (``--save-variants``) and the report's sample rows
(``--report``, written by ``evaluation_report``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .data import DecodeError, Item, decode, display
from .encoding import tensor_bytes
from .evaluation_passes import BatchOutcome, Evaluator, MaskStore
from .evaluation_statistics import RESAMPLES, EvaluateError, EvaluationResult, summarise
from .files import atomic_write
from .labels import Labels, find_labels
from .variants import pair_partners

__all__ = ["CACHE_BYTES", "SAMPLE_ROWS", "FirstPass", "FolderRun", "evaluate_folder", "folder_labels", "load_mask"]

#: Decoded model inputs kept in memory between the first pass (which finds the bad files and
#: the dataset's mean colour) and the evaluation: 1 GiB holds ~1700 inputs at 224 x 224.
#: Beyond it, images are decoded again (same bits; decoding is a small share of the per-image cost).
CACHE_BYTES = 1 << 30
#: Images on the report's sample sheet (drawn with ``inhibition.seed``).
SAMPLE_ROWS = 4


def folder_labels(images: Sequence[Item], config: Config, classes: Optional[List[str]]) -> Labels:
    """Each image's class as a model output index, by the rules ``target: auto/label`` use
    (``labels.find_labels``). Raises :class:`EvaluateError` naming the first folder
    (sorted) or sample without one."""
    labels, why, _ = find_labels(images, config, classes)
    if labels is not None:
        return labels
    if any(item.shard is not None for item in images):
        raise EvaluateError(f"{why or 'no labels'}: evaluate needs every sample's class (a .cls member, or the "
                            f"KEY.json field model.label_key names)")
    if why is not None and why.startswith("class folder") and classes:
        raise EvaluateError(f"{why}; rename it or set model.classes")
    if why is not None and not why.startswith("class folder"):
        raise EvaluateError(f"{why}; SRC should be an ImageFolder tree SRC/<class>/<file> whose folders are "
                            f"the model's classes")
    raise EvaluateError(why or "no image is in a class folder")


@dataclass
class FolderRun:
    """A folder evaluation: the result, the files that failed (rel, cause), the images
    evaluated, the wall time and the true masks that look wrong (rel, why)."""

    result: EvaluationResult
    failed: List[Tuple[str, str]]
    images: int
    seconds: float
    doubtful: List[Tuple[str, str]] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else float("nan")
        failed = f", {len(self.failed)} failed" if self.failed else ""
        doubtful = f", {len(self.doubtful)} doubtful mask{'s' * (len(self.doubtful) != 1)}" if self.doubtful else ""
        return (f"{self.images} image{'s' * (self.images != 1)} evaluated{failed}{doubtful} in {self.seconds:.1f} s "
                f"({rate:.1f} img/s)")


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


#: A true mask whose width / height differs from its image's by more than this share was
#: drawn for another picture (or another crop) of it: said, since it is stretched to fit.
ASPECT_TOLERANCE = 0.02


def _mask_names(rel: str) -> List[str]:
    """Where the true mask of ``rel`` may be, in order: ``rel`` itself (a mirrored tree,
    e.g. ImageNet-9's or the experiment's), ``rel.png`` (``--save-masks``), ``rel`` with a
    .png suffix."""
    return list(dict.fromkeys([rel, f"{rel}.png", Path(rel).with_suffix(".png").as_posix()]))


def _mask_file(folder: Path, rel: str) -> Optional[Path]:
    for name in _mask_names(rel):
        if (folder / name).is_file():
            return folder / name
    return None


def load_mask(path: Path, size: Tuple[int, int]) -> torch.Tensor:
    """A mask file (any mode; > 50% grey = object) as a (H, W) 0/1 float mask at ``size``:
    the grey levels are scaled bilinearly (antialiased) and thresholded at half."""
    return _read_mask(path, size)[0]


def _read_mask(path: Path, size: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """(the mask at ``size``, the file's own (H, W))."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            grey = opened.convert("L")
            raw = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(grey.size[1], grey.size[0])
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types; reported with the file name
        raise DecodeError(f"mask {display(str(path))!r}: cannot decode: {exc}") from None
    scaled = F.interpolate(raw.float()[None, None] / 255.0, size=size, mode="bilinear", antialias=True,
                           align_corners=False)[0, 0]
    return (scaled >= 0.5).float(), (raw.shape[0], raw.shape[1])


def mask_doubt(mask: torch.Tensor, mask_size: Tuple[int, int], image_size: Tuple[int, int]) -> Optional[str]:
    """Why a true mask looks wrong for its image, or None: another aspect ratio (drawn for
    another picture or crop: stretched to fit), or no object / no background at all (the
    object or background variants are then the image itself, or none of it)."""
    (mask_h, mask_w), (image_h, image_w) = mask_size, image_size
    if abs((mask_w / mask_h) / (image_w / image_h) - 1) > ASPECT_TOLERANCE:
        return f"mask is {mask_w}x{mask_h}, the image {image_w}x{image_h}: another aspect ratio (stretched to fit; used)"
    if not bool(mask.any()):
        return "mask is all black: no object (used)"
    if bool(mask.all()):
        return "mask is all white: no background (used)"
    return None


class _Inputs:
    """Decoded model inputs (and true masks) by image index: decoded in the first pass and
    kept up to ``cache_bytes``, decoded again in the second pass beyond that."""

    def __init__(self, items: Sequence[Item], loaded, masks_dir: Optional[Path], cache_bytes: int):
        self.items, self.loaded, self.masks_dir = items, loaded, masks_dir
        self.cache: Dict[int, torch.Tensor] = {}
        self.room = cache_bytes
        self.doubtful: List[Tuple[str, str]] = []  # (rel, why) of true masks that look wrong
        self._seen: set = set()
        self._new: List[Tuple[str, str]] = []

    def load(self, index: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(model input (3, H, W), true mask (H, W) or None); raises DecodeError."""
        if index in self.cache:
            return self.cache[index], None
        item, loaded = self.items[index], self.loaded
        decoded = decode(item.image_source(), loaded.input_size, loaded.mean, loaded.std)
        mask = None
        if self.masks_dir is not None:
            path = _mask_file(self.masks_dir, item.rel)
            if path is None:
                names = [display(name) for name in _mask_names(item.rel)]
                raise DecodeError(f"no mask under {display(str(self.masks_dir))!r} (looked for "
                                  f"{', '.join(names[:-1])} and {names[-1]})")
            mask, mask_size = _read_mask(path, loaded.input_size)
            doubt = mask_doubt(mask, mask_size, tuple(decoded.pixels.shape[-2:]))
            if doubt is not None and index not in self._seen:  # said once, in the first pass
                self._seen.add(index)
                self.doubtful.append((item.rel, doubt))
                self._new.append((item.rel, doubt))
        return decoded.model_input, mask

    def take_warnings(self) -> List[Tuple[str, str]]:
        """The doubtful masks found since the last call, to be said once each."""
        new, self._new = self._new, []
        return new

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
                  progress: "_Progress"):
    """[(index, (model input, true mask or None))] of the images in ``indices`` that decode,
    in order; each one that does not is a failure of ``progress`` (one line); each doubtful
    true mask gets a line."""
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
        progress.fail(inputs.items[index].rel, error)
    for rel, why in inputs.take_warnings():
        progress.say(f"latinhib: {display(rel)}: {why}")
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
                workers: int, progress: "_Progress") -> FirstPass:
    """Decode every image, batch by batch; with ``evaluator``, its importance pass gives each
    mask and the first model's top-1 on the original, else the true masks are read."""
    done = FirstPass(first_top1={} if evaluator is not None else None)
    total, pixels = None, 0
    with _decode_pool(workers) as pool:
        for start in range(0, len(inputs.items), batch_size):
            indices = list(range(start, min(start + batch_size, len(inputs.items))))
            decoded = _decode_batch(inputs, indices, pool, progress)
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
            progress.update(len(indices))
    done.failed = progress.failed
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
                 save_variants: Optional[Path], progress: "_Progress") -> Tuple[torch.Tensor, List[Dict[str, Any]]]:
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
        progress.update(len(rows))
    return torch.cat(parts, dim=2), samples


# ----------------------------------------------------------------------------------------
# the command


class _Progress:
    """The progress of the two passes (masks, then variants), counting images, and the
    lines said on the way. On a terminal a bar per pass, each line written through it (never
    glued to it); in a log (stderr not a TTY) no bar, one line per finished pass instead.
    Failures are collected (rel, cause) for the report and the JSON."""

    def __init__(self, quiet: bool, log: Callable[[str], None]):
        self.quiet, self.log = quiet, log
        self.failed: List[Tuple[str, str]] = []
        self.bar = None
        self.what, self.done, self.total, self.started = "", 0, 0, time.time()

    def start(self, what: str, total: int) -> None:
        from .recorder import progress_bar

        self.end()
        self.what, self.done, self.total, self.started = what, 0, total, time.time()
        if sys.stderr.isatty():
            self.bar = progress_bar(total, self.quiet)
        if self.bar is not None:
            self.bar.set_description(what)

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            self.log(line)

    def fail(self, rel: str, cause: str) -> None:
        self.say(f"latinhib: {display(rel)}: {cause}")
        self.failed.append((rel, cause))

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)

    def end(self) -> None:
        """The pass is over: its bar closed, or its line said."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.what and not self.quiet and self.total:
            self.log(f"latinhib: {self.what}: {self.done}/{self.total} image{'s' * (self.total != 1)} "
                     f"({time.time() - self.started:.1f} s)")
        self.what = ""


def _settings(src, masks: Optional[Path], first: FirstPass, config: Config, loaded, labels: Labels,
              items: Sequence[Item], doubtful: Sequence[Tuple[str, str]]) -> Dict[str, Any]:
    """The ``evaluate`` section of the result's config: what was evaluated and how, the
    failed files and doubtful masks (with why), and which class each folder (or ``.cls``
    index) was taken for."""
    fill_rgb = _uint8(first.fill.view(1, -1, 1, 1), loaded.mean, loaded.std).view(-1)
    used = sorted({(item.class_name if labels.by_class else None, labels.of(item)) for item in items},
                  key=lambda pair: (pair[1], pair[0] or ""))
    return {"src": str(src), "masks": str(masks) if masks is not None else "latinhib", "images": len(first.good),
            "failed": len(first.failed), "failed_files": [{"path": rel, "error": cause} for rel, cause in first.failed],
            "doubtful_masks": [{"path": rel, "warning": why} for rel, why in doubtful],
            "pairing_seed": config.inhibition.seed, "fill_rgb": [int(v) for v in fill_rgb],
            "classes": {(name if name is not None else str(index)): _class_name(loaded.classes, index)
                        for name, index in used}}


def _class_name(classes: Optional[Sequence[str]], index: int) -> str:
    return classes[index] if classes and 0 <= index < len(classes) else str(index)


def _output_count(model: nn.Module, input_size: Tuple[int, int], device: torch.device) -> int:
    """How many classes ``model`` scores: one forward pass of a blank input (any model
    kind, TorchScript included)."""
    with torch.inference_mode():
        logits = model(torch.zeros(1, 3, *input_size, device=device))
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return int(logits.shape[-1])


def _load_also(config: Config, path: Union[str, Path], loaded, device: torch.device) -> nn.Module:
    """A further checkpoint, refused unless it scores the first model's classes: the
    accuracy of a model with another head on these labels means nothing (its column read
    0.0 [0.0, 0.0])."""
    from .models import CheckpointError, load_model

    model = load_model(dataclasses.replace(config.model, checkpoint=str(path)), device).model
    theirs = _output_count(model, loaded.input_size, device)
    ours = _output_count(loaded.model, loaded.input_size, device)
    if theirs != ours:
        raise CheckpointError(f"--also-checkpoint {display(str(path))!r}: the model has {theirs} classes, the first "
                              f"model {ours}; evaluate compares models of the same classes")
    return model


def evaluate_folder(
    config: Config,
    src: Union[str, Path],
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
    """``latinhib evaluate SRC``: every image of ``src`` (an ImageFolder tree, or WebDataset
    shards whose samples carry their class) through :class:`Evaluator` with the model of
    ``config`` and the checkpoints ``also``. Bad image (or mask) files get one line on
    ``log`` each and are left out (the pairing only uses images that decoded); doubtful true
    masks get one line each and are counted; an unmapped class folder, no images, a bad
    config or checkpoint (or one of other classes than the first model's) raise before any
    model pass."""
    from .sources import SourceError, read_listing

    try:
        with read_listing(src) as listing:
            return _evaluate(config, src, listing, also, masks, save_variants, report, quiet, log, resamples,
                             cache_bytes)
    except SourceError as exc:
        raise EvaluateError(str(exc)) from None


def _evaluate(config: Config, src, listing, also, masks, save_variants, report, quiet, log, resamples,
              cache_bytes) -> FolderRun:
    from .models import load_model
    from .runtime import resolve_device

    started = time.time()
    items = [item for item in listing.items if item.is_image]  # other files are not evaluated
    if not items:
        raise EvaluateError(f"SRC {display(str(src))!r}: no images found")
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    device = resolve_device(config.runtime.device)
    loaded = load_model(config.model, device)
    labels_of = folder_labels(items, config, loaded.classes)  # fails before the other checkpoints load
    models = [loaded.model] + [_load_also(config, path, loaded, device) for path in also]
    evaluator = Evaluator(models, config, loaded.input_size)
    labels = torch.tensor([labels_of.of(item) for item in items])
    inputs = _Inputs(items, loaded, masks, cache_bytes)
    progress = _Progress(quiet, log)
    try:
        progress.start("masks", len(items))
        for rel, problem in listing.problems:  # a shard that cannot be read: its samples are not listed
            progress.fail(rel, problem)
        first = _first_pass(inputs, None if masks is not None else evaluator, labels, config.runtime.batch_size,
                            config.runtime.workers, progress)
        progress.end()
        if not first.good:
            raise EvaluateError("none of the images could be decoded")
        if len(torch.unique(labels[first.good])) == 1:
            progress.say("latinhib: background_swapped: SRC holds one class, so backgrounds are swapped between "
                         "images of that class (a weaker test than across classes)")
        progress.start("variants", len(first.good))
        correct, samples = _second_pass(evaluator, inputs, first, labels[first.good], config, save_variants,
                                        progress)
    finally:
        progress.end()
    names = [config.model.checkpoint or loaded.description] + [str(path) for path in also]
    settings = _settings(src, masks, first, config, loaded, labels_of, items, inputs.doubtful)
    result = summarise(correct, names, {**config.to_dict(), "evaluate": settings}, resamples=resamples,
                       seed=config.inhibition.seed)
    run = FolderRun(result, first.failed, len(first.good), time.time() - started, inputs.doubtful)
    if report is not None:
        from .evaluation_report import write_report

        write_report(Path(report), run, samples, loaded.description)
    return run
