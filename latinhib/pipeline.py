"""The one loop of ``latinhib enhance``: list the inputs, copy the unselected ones, and
take the selected ones through decoding, the model pass, the inhibition and writing.
Owns the progress bar; returns a :class:`Summary`.

How the work is spread:

- A CPU job with one stream per core (``streams.py``: one thread each) runs each chunk of
  a batch start to end on its stream: decode, model pass, blur at full resolution, encode,
  write (:func:`_run_chunk`). Every core runs one thread and never switches to another.
- Otherwise (CUDA, or a CPU whose streams have several threads each) decoding threads
  (DataLoader worker processes on CUDA) decode the next batches while the model runs, and
  writer threads blur, encode and write.

Unselected files are copied by a small pool, interleaved with the batches. The main
thread hands out the work and records the results in order. Queues are bounded, so
memory does not grow with the number of images.
"""
from __future__ import annotations

import collections
import itertools
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .api import Importance, LateralInhibition
from .config import Config, ConfigError, to_yaml
from .data import (
    Decoded,
    DecodeError,
    Item,
    NotEnhanceable,
    PathError,
    bomb_warnings_ignored,
    decode,
    display,
    list_files_from,
    list_folder,
    read_error,
)
from .filters import blur_uint8
from .inhibition import inhibit, selection_score
from .models import LoadedModel, load_model
from .streams import ModelStreams
from .writer import (
    CONFIG_NAME,
    Manifest,
    atomic_write,
    copy_file,
    mask_path,
    output_path,
    remove_stale_temps,
    save_heatmap,
    save_image,
    save_mask,
)

__all__ = ["JobError", "Interrupted", "Summary", "run", "STATUSES"]

STATUSES = distributed.STATUSES
#: Config sections that change outputs; a rerun into the same DST must match them.
RESULT_SECTIONS = ("model", "inhibition", "blur")
DONE = ("enhanced", "copied", "unchanged")


class JobError(Exception):
    """The job cannot start (bad paths, config, checkpoint): nothing was written."""


class StrictStop(Exception):
    """``--strict`` and a file failed."""


@dataclass
class Summary:
    """Counts per status for the files this run handled, plus those already done."""

    dst: str
    total: int = 0
    enhanced: int = 0
    copied: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0
    already_done: int = 0
    seconds: float = 0.0
    target: Optional[str] = None
    device: str = "cpu"
    interrupted: bool = False
    failures: List[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0

    def as_dict(self) -> Dict[str, Any]:
        keys = ("dst", "total", "enhanced", "copied", "unchanged", "skipped", "failed", "already_done",
                "seconds", "target", "device", "interrupted")
        return {k: getattr(self, k) for k in keys}

    def line(self) -> str:
        rate = (self.enhanced + self.copied + self.unchanged) / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.total} files: {self.enhanced} enhanced, {self.copied} copied, {self.unchanged} unchanged, "
            f"{self.skipped} skipped, {self.failed} failed, {self.already_done} already done "
            f"({self.seconds:.1f} s, {rate:.1f} files/s) -> {display(self.dst)}"
        )


class Interrupted(Exception):
    def __init__(self, summary: Summary):
        super().__init__("interrupted")
        self.summary = summary


class _Decoding(Dataset):
    """Decodes selected files (in decoding threads on a CPU, DataLoader worker processes
    on CUDA); a failure is returned, not raised."""

    def __init__(self, items: Sequence[Item], loaded: LoadedModel, threads: bool = False):
        self.items = items
        self.input_size = loaded.input_size
        self.mean = loaded.mean
        self.std = loaded.std
        self.threads = threads  # in threads the job's main thread silences bomb warnings

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[int, Optional[Decoded], Optional[DecodeError]]:
        try:
            decoded = decode(self.items[index].path, self.input_size, self.mean, self.std, quiet_bombs=not self.threads)
            return index, decoded, None
        except DecodeError as exc:
            return index, None, exc
        except MemoryError:
            return index, None, DecodeError("out of memory while decoding")


class _StopRequest:
    """Ctrl-C (SIGINT) as a request: the first one is acted on at the next safe point (after
    the model pass in flight, between batches, where no DataLoader iterator is half built),
    where :meth:`check` raises KeyboardInterrupt; a second one interrupts at once. Only
    installed from the main thread (``signal`` allows no other); the previous handler is
    put back by :meth:`restore`."""

    def __init__(self) -> None:
        self.requested = False
        self.ignoring = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested and not self.ignoring:
            raise KeyboardInterrupt
        self.requested = True

    def ignore(self) -> None:
        """From here on Ctrl-C only marks the request (the cleanup must run to its end)."""
        self.ignoring = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def _ignore_sigint(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: decoding workers ignore it (no traceback per
    worker) and the main process alone stops the job; the DataLoader then ends them.

    A main process interrupted while it fetches a decoded tensor's file descriptor resets
    the connection to the worker's ``multiprocessing.resource_sharer`` thread, which then
    prints a ConnectionResetError traceback through ``sys.excepthook``: in a worker, such
    errors only mean that the main process has stopped (and says so itself), so they are
    not printed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    default_hook = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if not issubclass(kind, (ConnectionError, EOFError)):
            default_hook(kind, value, traceback)

    sys.excepthook = hook


def _as_list(batch):
    return batch


def _decode_in_threads(device: torch.device) -> bool:
    """CPU jobs decode in threads, CUDA jobs in DataLoader worker processes (plenty of
    cores there, and no GIL shared with the writers)."""
    return device.type == "cpu"


def _decode_pool(workers: int) -> Optional[ThreadPoolExecutor]:
    """Decoding threads for a CPU job (None: decode in the calling thread).

    On a CPU the model needs every cycle: worker processes would cost each image a copy
    of its pixels into shared memory and a file descriptor passed back, ~2 ms of CPU per
    image (measured: resnet18, 2 cores, 35.7 -> 38.2 img/s with threads). Pillow and
    torch release the GIL while they decode and resize, so threads decode in parallel."""
    if workers <= 0:
        return None
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="latinhib-decode", initializer=_one_torch_thread)


def _decode_ahead(dataset: "_Decoding", batch_size: int, pool: Optional[ThreadPoolExecutor]) -> Iterator[list]:
    """Batches of ``dataset`` items in order, decoded on ``pool`` up to two batches ahead
    of the one handed out (in the calling thread when ``pool`` is None)."""
    n = len(dataset)
    if pool is None:
        for start in range(0, n, batch_size):
            yield [dataset[i] for i in range(start, min(start + batch_size, n))]
        return
    ahead: Deque[Future] = collections.deque()
    submitted = 0
    while True:
        while submitted < n and len(ahead) < 2 * batch_size:
            ahead.append(pool.submit(dataset.__getitem__, submitted))
            submitted += 1
        if not ahead:
            return
        yield [ahead.popleft().result() for _ in range(min(batch_size, len(ahead)))]


def check_paths(src: Path, dst: Path) -> None:
    """Refuse a missing SRC, DST == SRC and DST inside SRC, before anything is written."""
    if not src.exists():
        raise JobError(f"SRC {display(str(src))!r}: no such directory")
    if not src.is_dir():
        raise JobError(f"SRC {display(str(src))!r}: not a directory")
    src_real = Path(os.path.realpath(src))
    dst_real = Path(os.path.realpath(dst))
    if dst_real == src_real:
        raise JobError(f"DST {display(str(dst))!r} is SRC itself; choose another folder")
    if src_real in dst_real.parents:
        raise JobError(f"DST {display(str(dst))!r} is inside SRC {display(str(src))!r}; choose a folder outside it")
    if dst.exists() and not dst.is_dir():
        raise JobError(f"DST {display(str(dst))!r}: exists and is not a directory")


def _check_previous_config(dst: Path, config: Config) -> None:
    """A rerun into a DST made with other settings would mix two results: refuse."""
    path = dst / CONFIG_NAME
    if config.output.overwrite or not path.is_file():
        return
    try:
        previous = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        previous = None
    if not isinstance(previous, dict) or not all(isinstance(previous.get(s) or {}, dict) for s in RESULT_SECTIONS):
        raise JobError(f"DST {display(str(dst))!r}: {CONFIG_NAME} is unreadable or not a latinhib config; "
                       f"use --overwrite to redo DST, or another DST")
    current = config.to_dict()
    for section in RESULT_SECTIONS:
        for key, value in current[section].items():
            old = (previous.get(section) or {}).get(key, value)
            if old != value:
                raise JobError(
                    f"DST {display(str(dst))!r} was made with {section}.{key} = {old!r}, this run has {value!r}; "
                    f"use --overwrite to redo it, or another DST"
                )


def _class_labels(items: Sequence[Item], classes: Optional[List[str]]) -> Optional[Dict[str, int]]:
    """Folder class -> model output index, when every folder class maps onto the model's
    classes (exactly, or ignoring case and '_' vs ' '); else None."""
    names = {item.class_name for item in items if item.is_image}
    if not names or None in names or not classes:
        return None
    exact = {name: i for i, name in enumerate(classes)}
    loose = {name.lower().replace("_", " "): i for i, name in enumerate(classes)}
    mapping = {}
    for name in names:
        if name in exact:
            mapping[name] = exact[name]
        elif name.lower().replace("_", " ") in loose:
            mapping[name] = loose[name.lower().replace("_", " ")]
        elif name.isdigit() and int(name) < len(classes):
            mapping[name] = int(name)
        else:
            return None
    return mapping


def resolve_labels(items: Sequence[Item], config: Config, classes: Optional[List[str]]) -> Optional[Dict[str, int]]:
    """The folder labels the loss uses (``target: auto``/``label``), or None for ``pred``/
    ``entropy``; ``target: label`` without a mapping is a :class:`ConfigError`. Shared by
    ``enhance`` and ``preview`` so both pick the same target."""
    labels = _class_labels(items, classes) if config.model.target in ("auto", "label") else None
    if config.model.target == "label" and labels is None:
        raise ConfigError(
            "model.target: 'label' needs every image in a class folder whose name is one of the model's classes "
            "(set model.classes, or use target auto/pred/entropy)"
        )
    return labels


def _entry(item: Item, selected: bool, status: str, **values: Any) -> Dict[str, Any]:
    entry = {
        "path": item.rel,
        "selected": selected,
        "status": status,
        "kept_fraction": None,
        "threshold": None,
        "target": None,
        "predicted_class": None,
        "error": None,
    }
    entry.update(values)
    return entry


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


class _Finisher:
    """Steps 6-8 at full resolution, encoding and writing, run in writer threads."""

    def __init__(self, config: Config, loaded: LoadedModel, dst: Path, device: torch.device):
        self.config = config
        self.loaded = loaded
        self.dst = dst
        self.device = device
        self.masks = Path(config.output.save_masks) if config.output.save_masks else None
        self.heatmaps = Path(config.output.save_heatmaps) if config.output.save_heatmaps else None

    def __call__(self, item: Item, decoded: Decoded, imp: Importance, index: int) -> Dict[str, Any]:
        target = imp.target
        predicted = int(imp.predicted[index])
        classes = self.loaded.classes
        common = dict(
            target=target,
            predicted_class=classes[predicted] if classes and predicted < len(classes) else predicted,
            predicted_index=predicted,
        )
        out = output_path(self.dst, item.rel)
        if not bool(imp.valid[index]):
            copy_file(item.path, out)
            return _entry(item, True, "unchanged", error="importance map has no spatial information (constant gradient)",
                          **common)
        values, mask = enhance_pixels(decoded, imp, index, self.config, self.loaded.input_size, self.device)
        save_image(values.cpu(), decoded, out, self.config.output.jpeg_quality)
        if self.masks is not None:
            save_mask(mask[0].cpu(), mask_path(self.masks, item.rel))
        if self.heatmaps is not None:
            save_heatmap(imp.combined[index], tuple(mask.shape[-2:]), mask_path(self.heatmaps, item.rel))
        return _entry(
            item,
            True,
            "enhanced",
            kept_fraction=round(kept_fraction(mask), 6),
            threshold=round(float(imp.threshold[index]), 6),
            quantile=round(float(imp.quantile[index]), 6) if imp.quantile is not None else None,
            **common,
        )


def _copy(item: Item, dst: Path) -> Dict[str, Any]:
    try:
        copy_file(item.path, output_path(dst, item.rel))
    except OSError as exc:
        if exc.filename is None or os.fsdecode(exc.filename) != str(item.path):
            raise  # the write failed: reported as "cannot write: ..."
        # The source could not be read: the same causes decode() names.
        return _entry(item, False, "failed", error=read_error(exc))
    return _entry(item, False, "copied")


def _undecodable(item: Item, error: DecodeError, dst: Path) -> Dict[str, Any]:
    """The entry of a selected file that did not decode: a good image latinhib does not
    enhance (an animation, :class:`NotEnhanceable`) is copied byte for byte as
    ``unchanged``; anything else is ``failed`` with the cause."""
    if isinstance(error, NotEnhanceable):
        copy_file(item.path, output_path(dst, item.rel))
        return _entry(item, True, "unchanged", error=str(error))
    return _entry(item, True, "failed", error=str(error))


def run(
    config: Config,
    src: Path,
    dst: Path,
    *,
    files_from: Optional[Iterable[str]] = None,
    follow_symlinks: bool = False,
    strict: bool = False,
    quiet: bool = False,
    shard: Optional[distributed.Shard] = None,
    on_output: Optional[Callable[[Path], None]] = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> Summary:
    """Run ``latinhib enhance`` from SRC to DST with ``config``; see the CLI's help.

    Raises :class:`JobError` (or ``ConfigError``/``CheckpointError``) before writing
    anything when the job cannot start, and :class:`Interrupted` after Ctrl-C, once the
    work in flight is safely written.
    """
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    check_paths(src, dst)
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    # torchrun rank / --shard I/N: which files are ours, which device (cuda:LOCAL_RANK).
    # Other ranks/shards may be writing into DST right now: any cleanup of stale temporary
    # files there must be guarded by ctx.owns_all_temp_files.
    ctx = distributed.setup(shard, config.runtime.device)
    if files_from is not None:
        files_from = ctx.same_lines(files_from)
    device = ctx.device
    loaded = load_model(config.model, device)
    enhancer = LateralInhibition(loaded.model, config, input_size=loaded.input_size)
    exclude = [Path(p) for p in (config.output.save_masks, config.output.save_heatmaps) if p]
    try:
        items = list_files_from(src, files_from, follow_symlinks=follow_symlinks) if files_from is not None else list_folder(
            src, follow_symlinks=follow_symlinks, exclude=exclude
        )
    except PathError as exc:
        raise JobError(str(exc)) from None
    labels = resolve_labels(items, config, loaded.classes)
    # Labels above are decided on the whole listing, so every shard picks the same target.
    all_items, items = items, ctx.select(items)
    _check_previous_config(dst, config)

    manifest_path = ctx.manifest_path(dst)  # a shard writes its own part
    try:
        dst.mkdir(parents=True, exist_ok=True)
        if ctx.owns_all_temp_files:  # a killed run's hidden temporary files
            for folder in (dst, *exclude):
                remove_stale_temps(folder)
        atomic_write(dst / CONFIG_NAME, lambda tmp: tmp.write_text(to_yaml(config), encoding="utf-8"))
        manifest = Manifest(manifest_path)
    except OSError as exc:
        where = display(os.fsdecode(exc.filename)) if exc.filename else display(str(dst))
        raise JobError(f"DST {display(str(dst))!r}: cannot write {where!r}: {exc.strerror or exc}") from None
    # Entries of files outside this listing are kept; --overwrite only redoes the listed ones.
    previous = ctx.previous(dst)
    summary = Summary(dst=str(dst), total=len(items), device=str(device))
    summary.target = "label" if labels is not None else ("pred" if config.model.target == "auto" else config.model.target)

    entries: Dict[str, Dict[str, Any]] = dict(previous)
    ratio, seed = config.inhibition.ratio, config.inhibition.seed
    to_copy: List[Item] = []
    to_enhance: List[Item] = []
    fresh: List[Dict[str, Any]] = []
    for item in items:
        old = previous.get(item.rel)
        if not item.is_image:
            fresh.append(_entry(item, False, "skipped", error=f"not an image extension ({Path(item.rel).suffix or 'none'})"))
            continue
        if (not config.output.overwrite and old is not None and old.get("status") in DONE
                and output_path(dst, item.rel).exists()):
            summary.already_done += 1
            continue
        if selection_score(seed, item.rel) < ratio:
            to_enhance.append(item)
        else:
            to_copy.append(item)
    summary.skipped = len(fresh)
    manifest.write(fresh)
    for entry in fresh:
        entries[entry["path"]] = entry

    finisher = _Finisher(config, loaded, dst, device)
    # On a GPU the CPU side (PIL encode, which releases the GIL) is the bottleneck: give
    # the writers half the cores; on a CPU the model needs the cores, so 2-4 threads.
    cores = os.cpu_count() or 2
    threads = max(2, min(16, cores // 2)) if device.type == "cuda" else max(2, min(4, cores))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="latinhib-writer", initializer=_one_torch_thread)
    pending: Deque[Tuple[Item, Future]] = collections.deque()
    copies: set = set()  # the futures in `pending` that are byte-for-byte copies
    batches = -(-len(to_enhance) // config.runtime.batch_size)
    copies_per_batch = -(-len(to_copy) // batches) if batches else 0
    # In flight at most: two batches of images (they hold pixels), and their copies on top
    # (they hold nothing). Were the copies counted against the images, each batch's copies
    # would make the main thread wait for that batch's own images before handing out the
    # next one, and a stream would sit idle (r = 0.3 on 1600 files: 2.77 -> 3.21 x r = 1).
    limit = max(2 * config.runtime.batch_size, 8)
    files_limit = limit + max(2 * copies_per_batch, 64)
    bar = ctx.progress(len(to_copy) + len(to_enhance), quiet, _progress)

    def record(entry: Dict[str, Any], item: Item) -> None:
        entries[item.rel] = entry
        status = entry["status"]
        setattr(summary, status, getattr(summary, status) + 1)
        if status == "failed":
            message = f"latinhib: {display(item.rel)}: {entry['error']}"
            summary.failures.append(message)
            bar.write(message, file=sys.stderr) if bar is not None else log(message)
        elif on_output is not None:
            on_output(output_path(dst, item.rel))
        if bar is not None:
            bar.update(1)

    def drain(images: int, files: Optional[int] = None) -> None:
        """Record finished files in order, waiting for the oldest while more than
        ``images`` images (copies aside) or ``files`` files in all (default: ``images``)
        are in flight; Ctrl-C is acted on between waits."""
        files = images if files is None else files
        while pending and (len(pending) - len(copies) > images or len(pending) > files or pending[0][1].done()):
            done = []
            failure = None
            while pending and (not done or pending[0][1].done()):  # the oldest, then all done behind it
                item, future = pending.popleft()
                copies.discard(future)
                try:
                    entry = future.result()
                except _PassFailed as exc:  # the model pass itself failed: the job stops, as below
                    failure = exc.error
                    break
                except Exception as exc:  # noqa: BLE001 - one file's failure, reported with its name
                    entry = _entry(item, item in to_enhance_set, "failed", error=_describe(exc))
                done.append((entry, item))
            record_all(done)
            if failure is not None:
                raise failure
            stop.check()

    def record_all(done: List[Tuple[Dict[str, Any], Item]]) -> None:
        manifest.write(e for e, _ in done)
        for entry, item in done:
            record(entry, item)
        if strict and summary.failed:  # --strict: stop after recording the whole group
            raise StrictStop(summary.failures[0])

    to_enhance_set = set(to_enhance)
    streams = ModelStreams(enhancer, device, config.runtime.batch_size)
    passes: Deque[Tuple[List[Tuple[int, Decoded]], Future]] = collections.deque()

    def finish(chunk: List[Tuple[int, Decoded]], model_pass: Future) -> None:
        imp = model_pass.result()
        for position, (i, decoded) in enumerate(chunk):
            pending.append((to_enhance[i], pool.submit(finisher, to_enhance[i], decoded, imp, position)))
        drain(limit, files_limit)

    decoders: Optional[ThreadPoolExecutor] = None
    uncopied = iter(to_copy)

    def copy(count: int) -> None:
        for item in itertools.islice(uncopied, count):
            future = pool.submit(_copy, item, dst)
            copies.add(future)
            pending.append((item, future))
            drain(limit, files_limit)
            stop.check()

    stop = _StopRequest()
    with bomb_warnings_ignored():  # for the decoding threads too, entered once here
        try:
            if to_enhance and _whole_core_streams(device, streams):
                # Every core has its own one-thread stream: each chunk is decoded, passed
                # through the model and finished on its stream, start to end (_run_chunk).
                dataset = _Decoding(to_enhance, loaded, threads=True)
                for start in range(0, len(to_enhance), config.runtime.batch_size):
                    stop.check()
                    batch = range(start, min(start + config.runtime.batch_size, len(to_enhance)))
                    for chunk in streams.split(batch):
                        futures = [Future() for _ in chunk]
                        pending.extend((to_enhance[i], f) for i, f in zip(chunk, futures))
                        streams.submit(_run_chunk, chunk, futures, dataset, finisher, labels, device)
                    copy(copies_per_batch)
                    drain(limit, files_limit)  # one batch queued behind the one running: no core waits
            elif to_enhance:
                dataset = _Decoding(to_enhance, loaded, threads=_decode_in_threads(device))
                if dataset.threads:
                    decoders = _decode_pool(config.runtime.workers)
                    loader: Iterable[list] = _decode_ahead(dataset, config.runtime.batch_size, decoders)
                else:
                    loader = DataLoader(
                        dataset,
                        batch_size=config.runtime.batch_size,
                        num_workers=config.runtime.workers,
                        collate_fn=_as_list,
                        prefetch_factor=2 if config.runtime.workers else None,
                        worker_init_fn=_ignore_sigint if config.runtime.workers else None,
                    )
                for batch in loader:
                    stop.check()  # Ctrl-C: the batch just decoded is discarded, none is half done
                    decoded_ok = [(i, d) for i, d, err in batch if d is not None]
                    failed = []
                    for i, _, err in (b for b in batch if b[1] is None):
                        if isinstance(err, NotEnhanceable):  # a copy: on the pool
                            pending.append((to_enhance[i], pool.submit(_undecodable, to_enhance[i], err, dst)))
                        else:  # recorded at once, so --strict stops before the next batch
                            failed.append((_undecodable(to_enhance[i], err, dst), to_enhance[i]))
                    if failed:
                        record_all(failed)
                    for chunk in streams.split(decoded_ok):
                        passes.append((chunk, streams.submit(_importance, chunk, to_enhance, labels, device)))
                    copy(copies_per_batch)  # copies overlap the model passes instead of delaying the first
                    # Each stream keeps one chunk queued behind the one it runs.
                    while len(passes) > streams.count:
                        finish(*passes.popleft())
                while passes:
                    finish(*passes.popleft())
            copy(len(to_copy))
            drain(0)
        except KeyboardInterrupt:
            summary.interrupted = True
        except StrictStop:
            pass
        finally:
            # Every way out (done, Ctrl-C, --strict, an error in the model pass or a full disk)
            # ends here: a second Ctrl-C cannot cut the cleanup short, writes in flight finish
            # (each is atomic) and are recorded, nothing new starts, the manifest is compacted.
            stop.ignore()
            if decoders is not None:
                decoders.shutdown(wait=True, cancel_futures=True)
            for _, future in pending:  # not started: redone next run (first, so chunks skip them)
                future.cancel()
            streams.shutdown()  # model passes in flight end, and the files they started
            pool.shutdown(wait=True)
            _finish_pending(pending, manifest, record)
            _close(manifest, manifest_path, items, entries, bar)
            stop.restore()
            summary.seconds = time.perf_counter() - started
    if summary.interrupted:
        raise Interrupted(summary)
    # torchrun: job-wide counts on every rank, rank 0 merges the manifest parts.
    return ctx.finish(summary, dst, [item.rel for item in all_items])


def _one_torch_thread() -> None:
    """Writer and decoding threads run torch on one thread each (OpenMP's thread count is
    per calling thread, so the model streams keep theirs). Left at the default,
    2-4 writers each fork an OpenMP team per element-wise op of the blur and fight the
    model for the cores: measured on 2 cores, the full-size blur of a 600x400 image went
    from ~5 ms on one thread to 140-380 ms, and ``enhance`` ran at 0.3 img/s against a
    floor of 4.5 (resnet18, batch 16, under load)."""
    torch.set_num_threads(1)


def _whole_core_streams(device: torch.device, streams: ModelStreams) -> bool:
    """A CPU job whose streams have one thread each (one per core, at most
    ``MAX_STREAMS``): each chunk runs start to end on its stream (:func:`_run_chunk`).

    Why: with separate decoding and writer threads, 2 cores ran 2 model threads plus up
    to 6 others, switching between them. One thread per core doing everything in turn
    keeps the cores busy with no switching and holds fewer images in memory. Measured on
    2 cores (scripts/bench.py --rows r1, 480 JPEGs, batch 16, 3 alternating runs, the
    allocator tuned in both): resnet18 43.1-45.9 -> 44.9-47.5 img/s, peak RSS 1190-1250
    -> 1050-1060 MB; mobilenet_v2 57.7-60.0 -> 59.9-60.7 img/s, 1560-1660 -> 1340-1430 MB."""
    return device.type == "cpu" and streams.threads_per_stream == 1


class _PassFailed(Exception):
    """A model pass raised: carried by each of its files' futures, re-raised by the job."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _run_chunk(enhancer: LateralInhibition, chunk: Sequence[int], futures: Sequence[Future], dataset: "_Decoding",
               finisher: "_Finisher", labels, device: torch.device) -> None:
    """One chunk of ``dataset`` on one stream: decode, model pass, steps 6-8, encode and
    write each file. ``futures[k]`` gets file ``chunk[k]``'s manifest entry (or its
    error); files whose future the job cancelled before the chunk started are skipped."""
    live = [(i, f) for i, f in zip(chunk, futures) if f.set_running_or_notify_cancel()]
    items = dataset.items
    decoded_ok = []
    try:
        for i, future in live:
            _, decoded, err = dataset[i]
            if decoded is not None:
                decoded_ok.append((i, decoded, future))
            else:
                _settle(future, _undecodable, items[i], err, finisher.dst)
        if decoded_ok:
            imp = _importance(enhancer, [(i, d) for i, d, _ in decoded_ok], items, labels, device)
    except BaseException as exc:  # the model pass (or decoding itself) raised: the job stops
        for _, future in live:  # no future is left for the job to wait on
            if not future.done():
                future.set_exception(_PassFailed(exc))
        return
    for position, (i, decoded, future) in enumerate(decoded_ok):
        _settle(future, finisher, items[i], decoded, imp, position)


def _settle(future: Future, fn: Callable[..., Dict[str, Any]], *args: Any) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - one file's failure, recorded with its name
        future.set_exception(exc)


def _importance(enhancer: LateralInhibition, decoded_ok, items, labels, device) -> Importance:
    inputs = torch.stack([d.model_input for _, d in decoded_ok])
    if device.type == "cuda":
        inputs = inputs.pin_memory()
    inputs = inputs.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    targets = None
    if labels is not None:
        targets = torch.tensor([labels[items[i].class_name] for i, _ in decoded_ok], device=device)
    return enhancer.importance(inputs, targets)


def _finish_pending(pending, manifest: Manifest, record) -> None:
    done = []
    for item, future in pending:
        if future.cancelled():
            continue
        try:
            done.append((future.result(), item))
        except Exception:  # noqa: BLE001 - it is redone on the next run
            continue
    manifest.write(e for e, _ in done)
    for entry, item in done:
        record(entry, item)


def _close(manifest: Manifest, path: Path, items: Sequence[Item], entries: Dict[str, Dict[str, Any]], bar) -> None:
    manifest.close()
    if bar is not None:
        bar.close()
    listed = [item.rel for item in items]
    known = set(listed)
    # Entries of files outside this listing (an earlier --files-from subset) are kept.
    Manifest.compact(path, listed + [rel for rel in entries if rel not in known], entries)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot write: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _progress(total: int, quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="img", dynamic_ncols=True, leave=True)
