"""``latinhib enhance`` from end to end: :func:`run` takes the inputs through the stages
named after the data's way, each in a module of its own:

    source (sources.py: a folder, --files-from, tar shards)   what to read
      -> plan (plan.py)                                       done / left out / enhance / copy
      -> executor (executors.py)                              decode, model pass, steps 6-8
           finishing (finishing.py)                           one image after the model pass
      -> sink (sinks.py: a mirrored folder, tar shards)       where the outputs go
      -> recorder (recorder.py)                               manifest, summary, progress, in order

This module only wires them together: the job's set-up (torchrun ranks, device, model,
DST), the Ctrl-C handling, and the one way out that every end of a job takes (the work
in flight is written whole, nothing new starts, the manifest is compacted).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Union

import torch

from . import distributed
from .api import LateralInhibition
from .choices import INPUT_FORMATS
from .config import Config, to_yaml
from .data import Item, bomb_warnings_ignored, display
from .executors import make_executor
from .files import UNUSABLE_ERRNOS, DestinationUnusable, atomic_write, remove_stale_temps
from .finishing import Finisher
from .labels import cls_labels, resolve_labels
from .locking import DstBusy, DstLock
from .manifest import CONFIG_NAME, Manifest, Previous
from .models import load_model
from .plan import JobError, Plan, check_previous_config, make_plan, recorded_config
from .recorder import Recorder, StrictStop, Summary, progress_bar
from .sinks import FolderSink, Sink, TarSink
from .sources import FORMATS, Listing, Source, SourceError, open_source
from .stopping import DestinationFull, Interrupted, StopRequest, folder_of, rank_of

__all__ = ["JobOptions", "run"]


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class JobOptions:
    """How one job runs, beside its :class:`~latinhib.config.Config`: where the inputs
    come from and the outputs go, which part of the job this process does, what it
    prints. Unlike the config, none of this is recorded in DST (a rerun may change it);
    the CLI builds one from its flags."""

    #: SRC is ``folder``, ``webdataset`` (tar shards) or ``auto`` (told apart by name);
    #: ``choices.INPUT_FORMATS``.
    input_format: str = "auto"
    #: ``folder`` or ``webdataset``; None: the input's format.
    output_format: Optional[str] = None
    #: Samples per output shard, for a folder written as tar shards (0: not that case).
    shard_size: int = 0
    #: Input paths relative to SRC (``--files-from``) instead of every file under it.
    files_from: Optional[Iterable[str]] = None
    #: Follow symlinks that point outside SRC.
    follow_symlinks: bool = False
    #: Stop at the first file that fails.
    strict: bool = False
    #: No progress bar.
    quiet: bool = False
    #: Do only part I of N of the job (``--shard I/N``); torchrun ranks split it further.
    part: Optional[distributed.Part] = None
    #: Called with each output's path once it is recorded (``--print-outputs``).
    on_output: Optional[Callable[[Path], None]] = None
    #: Where warnings and failure lines go (stderr; the progress bar's own line when shown).
    log: Callable[[str], None] = _to_stderr


def run(config: Config, src: Union[str, Path], dst: Path, options: JobOptions = JobOptions()) -> Summary:
    """Run ``latinhib enhance`` from SRC to DST: DST becomes a complete copy of SRC with a
    fraction of the images enhanced, plus ``latinhib-config.yaml`` and
    ``latinhib-manifest.jsonl`` (docs/usage.md). A rerun into the same DST skips what is done.

    Args:
        config: the job's :class:`~latinhib.config.Config` (``load_config``): the model, the
            method's settings and the outputs; recorded in DST.
        src: a folder (an ImageFolder tree or a flat folder), or WebDataset tar shards (a
            .tar file, a brace pattern, a folder of .tar files, ``pipe:CMD``).
        dst: the output folder; created if absent.
        options: how this job runs beside its config (:class:`JobOptions`): input and
            output formats (``options.input_format`` when detection is not enough; folder
            -> webdataset writes ``options.shard_size`` samples per shard), ``files_from``,
            ``strict``, ``quiet``, the ``part`` of a ``--shard I/N`` job, the output and log
            callbacks. Not recorded in DST.

    Returns:
        The job's :class:`~latinhib.recorder.Summary`: counts per status, the failures'
        lines, and ``exit_code`` (0 all done, 1 some files failed).

    Raises:
        JobError: the job cannot start (bad options, SRC or DST, DST in use by another job,
            a rerun with other settings); nothing is written.
        ConfigError: the config does not fit the model (e.g. unknown layers); nothing is
            written.
        CheckpointError: the checkpoint cannot be loaded or does not match its recorded
            hash; nothing is written.
        Interrupted: Ctrl-C or SIGTERM, once the work in flight is safely written
            (``exit_code`` 130 or 143; rerunning finishes the job).
        DestinationFull: DST or a masks/heat-maps folder is full or read-only; what was
            written is whole and recorded.

    Example:
        >>> from pathlib import Path
        >>> from latinhib import load_config
        >>> from latinhib.pipeline import JobOptions, run
        >>> summary = run(load_config(overrides={"inhibition.ratio": 1.0}), "examples", Path("out/api-demo"),
        ...               JobOptions(quiet=True))
        >>> summary.exit_code, summary.enhanced, summary.copied  # 4 photos and examples/README.md
        (0, 4, 1)
    """
    started = time.perf_counter()
    dst = Path(dst)
    exclude = [Path(p) for p in (config.output.save_masks, config.output.save_heatmaps) if p]
    source = _open_source(src, dst, options, exclude)
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    # torchrun rank / --shard I/N: which inputs are ours, which device (cuda:LOCAL_RANK).
    # Other ranks/shards may be writing into DST right now: any cleanup of stale temporary
    # files there must be guarded by ctx.owns_all_temp_files.
    ctx = distributed.setup(options.part, config.runtime.device)
    # One job per DST, or per shard of it (locking.py). Taken here when DST exists, so a
    # second job is refused before it loads a model; else _prepare_dst takes it on creating DST.
    lock = DstLock(dst, ctx.part, log=options.log)
    try:
        if dst.is_dir():
            lock.acquire()
        return _job(config, source, src, dst, ctx, lock, exclude, options, started)
    except DstBusy as exc:
        raise JobError(str(exc)) from None
    except DestinationUnusable as exc:  # before the loop: DST's config, the first manifest lines, a shard
        raise DestinationFull(Summary(dst=str(dst)), exc, folder_of(exc.path, dst, config), rank_of(ctx)) from None
    finally:
        lock.release()
        source.close()


def _job(config: Config, source: Source, src: Union[str, Path], dst: Path, ctx: distributed.Context, lock: DstLock,
         exclude: List[Path], options: JobOptions, started: float) -> Summary:
    """:func:`run` once DST is locked (or is locked as soon as this creates it): the
    stages in turn, then the stop or the job-wide summary."""
    loaded = load_model(config.model, ctx.device)
    enhancer = LateralInhibition(loaded.model, config, input_size=loaded.input_size)
    listing = _list(source, ctx)
    notes: List[str] = []  # said once DST is ready (a job that cannot start says only why)
    labels = resolve_labels(listing.items, config, loaded.classes, log=notes.append)
    # Labels above are decided on the whole listing, so every shard picks the same target.
    cls = None
    if listing.format == "folder" and (options.output_format or listing.format) == "webdataset":
        cls = cls_labels(listing.items, labels, config, loaded.classes, log=notes.append)
    sink = _open_sink(listing, src, dst, options, cls, config.output.unselected)
    items = ctx.select(listing.items, key=sink.unit_of)  # torchrun / --shard: by output unit
    problems = [p for p in listing.problems if ctx.owns_unit(p[0].split("/", 1)[0])]
    recorded = recorded_config(config, loaded, enhancer)
    check_previous_config(dst, config, recorded)
    manifest = _prepare_dst(dst, recorded, ctx, lock, exclude)
    for note in notes if ctx.primary else ():  # once, not by every rank
        options.log(note)
    previous = ctx.previous(dst, key=sink.unit_of_rel)
    plan = make_plan(items, previous, config, sink, problems)
    summary = Summary(dst=str(dst), total=len(items) + len(problems), device=str(ctx.device),
                      already_done=plan.already_done)
    summary.target = "label" if labels is not None else ("pred" if config.model.target == "auto" else config.model.target)
    sink.prepare(plan.todo, ctx.owns_unit)
    job = _Job(config, loaded, enhancer, labels, ctx, sink, plan, summary, options, started)
    listed = [rel for rel, _ in problems] + [item.rel for item in items]
    unusable = job.run(manifest, ctx.manifest_path(dst), previous, listed)
    if unusable is not None:
        raise DestinationFull(summary, unusable, folder_of(unusable.path, dst, config), rank_of(ctx))
    if summary.interrupted:
        raise Interrupted(summary, rank_of(ctx))
    # torchrun: job-wide counts on every rank, rank 0 merges the manifest parts.
    try:
        return ctx.finish(summary, dst, [rel for rel, _ in listing.problems] + [item.rel for item in listing.items])
    except DestinationUnusable as exc:  # no room for the merged manifest: the parts stay
        raise DestinationFull(summary, exc, folder_of(exc.path, dst, config), rank_of(ctx)) from None


def _open_source(src: Union[str, Path], dst: Path, options: JobOptions, exclude: List[Path]) -> Source:
    """The source for SRC, checked against DST (nothing written yet)."""
    if options.input_format not in INPUT_FORMATS:
        raise JobError(f"--input-format: {options.input_format!r} is not allowed; choose {', '.join(INPUT_FORMATS)}")
    try:
        source = open_source(src, options.input_format, spool_dir=dst, files_from=options.files_from,
                             follow_symlinks=options.follow_symlinks, exclude=exclude)
        source.check(dst)
    except SourceError as exc:
        raise JobError(str(exc)) from None
    return source


def _list(source: Source, ctx: distributed.Context) -> Listing:
    try:
        return source.list(ctx.same_lines)
    except SourceError as exc:  # a --files-from path outside SRC, say
        raise JobError(str(exc)) from None


def _open_sink(listing: Listing, src: Union[str, Path], dst: Path, options: JobOptions,
               cls: Optional[Callable[[Item], int]] = None, unselected: str = "copy") -> Sink:
    """Shards out for shards in, a folder for a folder, unless ``options.output_format`` says;
    folder -> shards writes ``cls(image)`` as each sample's ``KEY.cls``; a folder links its
    unselected files under ``output.unselected`` (shards hold bytes)."""
    output_format, shard_size = options.output_format or listing.format, options.shard_size
    if output_format not in FORMATS:
        raise JobError(f"--output-format: {output_format!r} is not allowed; choose {', '.join(FORMATS)}")
    if output_format == "folder":
        if shard_size:
            raise JobError("--shard-size is for --output-format webdataset")
        return FolderSink(dst, from_shards=listing.format == "webdataset", unselected=unselected,
                          note=lambda message: options.log(f"latinhib: {message}"))
    if listing.format == "webdataset":
        if shard_size:
            raise JobError("--shard-size is for a folder SRC: shards in give one output shard per input shard")
        return TarSink(dst, indexes=listing.indexes)
    if shard_size < 1:
        raise JobError("--output-format webdataset from a folder needs --shard-size N (samples per shard)")
    prefix = Path(os.path.abspath(src)).name or "shard"
    return TarSink(dst, items=listing.items, shard_size=shard_size, prefix=prefix, labels=cls)


def _prepare_dst(dst: Path, recorded: Config, ctx, lock: DstLock, exclude: List[Path]) -> Manifest:
    """DST, locked, with a killed run's temporaries removed (only by a run that owns them
    all), the config as this job runs it (provenance), and this process's manifest (a
    shard writes its own part)."""
    try:
        dst.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # no-op when DST existed (run took it then)
        if ctx.owns_all_temp_files:  # a killed run's hidden temporary files
            for folder in (dst, *exclude):
                remove_stale_temps(folder)
        atomic_write(dst / CONFIG_NAME, lambda tmp: tmp.write_text(to_yaml(recorded), encoding="utf-8"))
        return Manifest(ctx.manifest_path(dst))
    except OSError as exc:
        if exc.errno in UNUSABLE_ERRNOS:  # a full or read-only DST: the same stop as in the loop
            raise DestinationUnusable(Path(os.fsdecode(exc.filename or dst)), exc) from exc
        where = display(os.fsdecode(exc.filename)) if exc.filename else display(str(dst))
        raise JobError(f"DST {display(str(dst))!r}: cannot write {where!r}: {exc.strerror or exc}") from None


class _Job:
    """The plan's files through the executor, recorded in order; :meth:`run`'s one way
    out (finally) is the same for every end: done, Ctrl-C or SIGTERM, --strict, a failing
    model pass, a full disk."""

    def __init__(self, config: Config, loaded, enhancer, labels, ctx, sink: Sink, plan: Plan, summary: Summary,
                 options: JobOptions, started: float):
        self.config, self.loaded, self.enhancer, self.labels, self.ctx = config, loaded, enhancer, labels, ctx
        self.sink, self.plan, self.summary, self.options, self.started = sink, plan, summary, options, started

    def run(self, manifest: Manifest, manifest_path: Path, previous: Previous,
            listed: List[str]) -> Optional[DestinationUnusable]:
        """Returns the write that found DST full, if one did."""
        summary, plan = self.summary, self.plan
        stop = StopRequest()
        options = self.options
        bar = self.ctx.progress(len(plan.to_copy) + len(plan.to_enhance), options.quiet, progress_bar)
        # Entries of files outside this listing are kept; --overwrite only redoes the listed ones.
        # ``previous`` itself (1.28M lines for ImageNet), not a copy: the plan is done with it.
        recorder = Recorder(summary, manifest, previous, self.sink, strict=options.strict, bar=bar,
                            log=options.log, on_output=options.on_output, check=stop.check,
                            compact=previous.compact)
        executor, unusable = None, None
        with bomb_warnings_ignored():  # for the decoding threads too, entered once here
            try:
                recorder.record_fresh(plan.fresh)
                finisher = Finisher(self.config, self.loaded, self.sink, self.ctx.device)
                executor = make_executor(plan, recorder, finisher, self.enhancer, loaded=self.loaded, labels=self.labels,
                                         config=self.config, device=self.ctx.device, check=stop.check)
                executor.run()
            except KeyboardInterrupt:
                summary.interrupted = True
                summary.signum = stop.signum or signal.SIGINT
                summary.stopped = signal.Signals(summary.signum).name
            except StrictStop:
                pass
            except DestinationUnusable as exc:
                unusable = exc
            finally:
                unusable = self._wind_down(stop, executor, recorder, manifest_path, listed) or unusable
        return unusable

    def _wind_down(self, stop: StopRequest, executor, recorder: Recorder, manifest_path: Path,
                   listed: List[str]) -> Optional[DestinationUnusable]:
        """Every way out ends here: a second Ctrl-C cannot cut the cleanup short, writes in
        flight finish (each is atomic) and are recorded, nothing new starts, the manifest
        is compacted."""
        stop.ignore()
        if executor is not None:
            executor.stop_decoding()
        recorder.cancel_pending()  # not started: redone next run (first, so chunks skip them)
        if executor is not None:
            executor.shutdown()
        unusable = recorder.finish_pending()
        self.sink.close()
        unusable = recorder.close(manifest_path, listed) or unusable
        stop.restore()
        self.summary.seconds = time.perf_counter() - self.started
        return unusable
