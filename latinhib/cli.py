"""Command line: flags -> config overrides -> ``pipeline.run``. The only click import.

Exit codes: 0 all done; 1 the job finished but some files failed, or it stopped because
DST (or a masks/heat-maps folder) is full or read-only; 2 bad usage, config or checkpoint,
or DST in use by another job (nothing written); 130 Ctrl-C, 143 SIGTERM (128 + the signal:
rerun the same command to resume). stdout carries only what was asked for
(``--print-outputs``, ``--print0``, ``--json``); progress and messages go to stderr.

Start-up: this module imports click and nothing heavy, so ``latinhib --version`` and
``--help`` never import torch (~1 s). Each command imports what it needs (pipeline,
models, torch) inside its own function: a new command should do the same.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import click

from . import __version__
from .choices import FILTERS, FORMATS, GRID_KEYS, INPUT_FORMATS, TARGETS

if TYPE_CHECKING:
    from .config import Config
    from .pipeline import JobOptions


class BadInput(click.ClickException):
    """A usage, config or checkpoint error: exit code 2, nothing written."""

    exit_code = 2


#: (option name, config key) for the options that map one-to-one onto config keys.
OPTION_KEYS = {
    "arch": "model.arch",
    "weights": "model.weights",
    "checkpoint": "model.checkpoint",
    "layers": "model.layers",
    "target": "model.target",
    "quantile": "inhibition.quantile",
    "sigma": "inhibition.sigma",
    "kernel_size": "inhibition.kernel_size",
    "ratio": "inhibition.ratio",
    "seed": "inhibition.seed",
    "filter": "inhibition.filter",
    "blur_sigma": "blur.sigma",
    "device": "runtime.device",
    "batch_size": "runtime.batch_size",
    "workers": "runtime.workers",
    "save_masks": "output.save_masks",
    "save_heatmaps": "output.save_heatmaps",
    "jpeg_quality": "output.jpeg_quality",
    "link_unselected": "output.unselected",
}
FLAG_KEYS = {"trust_checkpoint": "model.trust_checkpoint", "overwrite": "output.overwrite",
             "images_only": "output.images_only"}


def _with_default(text: str, key: str) -> str:
    """An option's help with its config key's default (the config's own: it cannot drift).
    Not click's ``default=``: a default there would override the --config file's value."""
    return f"{text}  [default: {_default(key)}]"


def _default(key: str) -> str:
    from .config import Config

    section, name = key.split(".")
    value = getattr(getattr(Config(), section), name)
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class _Quantile(click.ParamType):
    """``-q``: a number in [0, 1], or ``auto`` (the default: per image, by Otsu's method)."""

    name = "Q|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == "auto":
            return value
        try:
            return float(value)  # its range is the config's to check (inhibition.quantile's message)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number in [0, 1] or auto", param, ctx)


def config_options(func=None, *, evaluate: bool = False):
    """The options shared by every command that builds a config. ``evaluate``: without
    ``--ratio`` (evaluate enhances no files: every image is evaluated), and ``--seed`` is
    the pairing's and the bootstrap's seed there."""
    if func is None:
        return lambda f: config_options(f, evaluate=evaluate)
    seed_help = ("Seed of the background pairing, the bootstrap and the sample sheet." if evaluate
                 else "Seed of the per-file selection.")
    ratio = click.option("--ratio", type=float,
                         help=_with_default("Fraction of images to enhance (0-1).", "inhibition.ratio"))
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file."),
        click.option("--arch", help=_with_default("torchvision architecture (resnet50, ...), 'timm:NAME' "
                                                  "(timm:convnext_tiny) or 'package.module:Class'.", "model.arch")),
        click.option("--weights", help=_with_default("torchvision weights name, e.g. IMAGENET1K_V1 or "
                                                     "ResNet50_Weights.IMAGENET1K_V2; 'pretrained' for timm.",
                                                     "model.weights")),
        click.option("--checkpoint", type=click.Path(dir_okay=False), help="state_dict or TorchScript file."),
        click.option("--trust-checkpoint", is_flag=True, default=None,
                     help="Allow a fully pickled model (runs code from the file)."),
        click.option("--layers", help="Comma-separated module names whose gradients are used."),
        click.option("--target", type=click.Choice(TARGETS),
                     help=_with_default("Loss target: auto is the label where every image has one (class folders, "
                                        ".cls; docs/datasets.md), else pred.", "model.target")),
        click.option("-q", "--quantile", type=_Quantile(),
                     help=_with_default("Fraction of each image to blur (0-1), or auto (per image).",
                                        "inhibition.quantile")),
        click.option("--sigma", type=float,
                     help=_with_default("Mexican-hat sigma, in stride-16 feature pixels (one fixed sigma: "
                                        "inhibition.scales becomes none).", "inhibition.sigma")),
        click.option("--kernel-size", type=int,
                     help=_with_default("Mexican-hat kernel size k (odd).", "inhibition.kernel_size")),
        click.option("--filter", type=click.Choice(FILTERS),
                     help=_with_default("Importance filter (log: the paper's Mexican hat).", "inhibition.filter")),
        *([] if evaluate else [ratio]),
        click.option("--blur-sigma", type=float, help=_with_default("Blur sigma in model-input pixels.", "blur.sigma")),
        click.option("--seed", type=int, help=_with_default(seed_help, "inhibition.seed")),
        click.option("--device", help=_with_default("auto, cpu, cuda or cuda:N.", "runtime.device")),
        click.option("--batch-size", type=int, help=_with_default("Images per model pass.", "runtime.batch_size")),
        click.option("--workers", type=int,
                     help=_with_default("Decoding workers (processes on CUDA; on a CPU, threads when the model "
                                        "streams have several threads).", "runtime.workers")),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config key, e.g. blur.feather=2."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_config(config_file: Optional[str], sets: Tuple[str, ...], values: Dict[str, Any]) -> Config:
    """Defaults < YAML < --set < dedicated options."""
    from .config import ConfigError, load_config, parse_override

    overrides: List[Tuple[str, Any]] = []
    try:
        for text in sets:
            overrides.append(parse_override(text))
        for name, key in {**OPTION_KEYS, **FLAG_KEYS}.items():
            value = values.get(name)
            if value is not None:
                overrides.append((key, value))
        return load_config(config_file, overrides)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


#: A hyphen inside a word, held together while help text is wrapped.
_HYPHEN_IN_WORD = re.compile(r"(?<=[\w/.])-(?=[\w])")
_HELD = "\u2011"  # non-breaking hyphen: textwrap never breaks a line at it


class _HelpFormatter(click.HelpFormatter):
    """click's help layout, except that a line never breaks inside a hyphenated name
    (``latinhib-`` / ``manifest.jsonl``, ``--also-`` / ``checkpoint``: textwrap breaks at
    hyphens). Hyphens inside words are held as U+2011 while wrapping and given back."""

    def write_text(self, text: str) -> None:
        super().write_text(_HYPHEN_IN_WORD.sub(_HELD, text))

    def write_dl(self, rows, col_max: int = 30, col_spacing: int = 2) -> None:
        super().write_dl([(first, _HYPHEN_IN_WORD.sub(_HELD, second)) for first, second in rows], col_max, col_spacing)

    def getvalue(self) -> str:
        return super().getvalue().replace(_HELD, "-")


class _Context(click.Context):
    formatter_class = _HelpFormatter


class _Command(click.Command):
    context_class = _Context


class _Group(click.Group):
    context_class = _Context
    command_class = _Command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="latinhib")
def main() -> None:
    """Lateral-inhibition data enhancement: blur what a pretrained CNN finds unimportant.

    \b
    Example:
      latinhib enhance photos/ enhanced/ --ratio 0.5 -q 0.5
    """


@main.command()
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False, path_type=Path))
@config_options
@click.option("--input-format", type=click.Choice(INPUT_FORMATS), default="auto", show_default=True,
              help="SRC is a folder, or WebDataset tar shards (a .tar, a brace pattern, a folder of .tar files, "
                   "pipe:CMD); auto tells them apart.")
@click.option("--output-format", type=click.Choice(FORMATS),
              help="Write a mirrored folder or tar shards (default: as SRC).")
@click.option("--shard-size", type=click.IntRange(min=1), help="Samples per output shard, folder -> webdataset.")
@click.option("--files-from", type=click.File("r", encoding="utf-8", errors="surrogateescape"),
              help="Read input paths (relative to SRC) from FILE, or - for stdin.")
@click.option("--save-masks", type=click.Path(file_okay=False), help="Write each enhanced image's mask here.")
@click.option("--save-heatmaps", type=click.Path(file_okay=False), help="Write each enhanced image's heat map here.")
@click.option("--jpeg-quality", type=int, help="Quality of written JPEG/WebP files (1-100).")
@click.option("--overwrite", is_flag=True, default=None, help="Redo outputs that already exist.")
@click.option("--images-only", is_flag=True, default=None,
              help="Leave out files latinhib does not enhance (by default they are copied byte for byte).")
@click.option("--link-unselected", "link_unselected", flag_value="hardlink", default=None,
              help="Hard-link the files that are not enhanced instead of copying them (output.unselected: "
                   "hardlink; copies where SRC and DST are on different filesystems). See docs/linked-copies.md.")
@click.option("--follow-symlinks", is_flag=True, help="Follow symlinks that point outside SRC.")
@click.option("--strict", is_flag=True, help="Stop at the first file that fails.")
@click.option("--print-outputs", is_flag=True, help="Print each output path on stdout, one per line.")
@click.option("--print0", is_flag=True, help="Like --print-outputs, NUL-separated (for xargs -0).")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary on stderr.")
@click.option("--shard", metavar="I/N", callback=lambda ctx, param, value: _shard(value),
              help="Do only shard I of N (0-based; a stable hash of each path decides), e.g. for SLURM "
                   "arrays; then run 'latinhib merge DST'. Under torchrun each rank is a shard already.")
def enhance(src: str, dst: Path, config_file, sets, input_format, output_format, shard_size, files_from, follow_symlinks,
            strict, print_outputs, print0, as_json, quiet, **values) -> None:
    """Enhance the images under SRC into DST.

    A fraction (--ratio) of the images, chosen by a stable hash of their path, has its
    unimportant regions blurred; every other file is copied byte for byte. DST mirrors
    SRC (same names, formats and sizes) and gets latinhib-manifest.jsonl and
    latinhib-config.yaml. A rerun skips finished files. SRC may be WebDataset tar
    shards: DST then gets one output shard per input shard, same members in the same
    order, and SHARD/KEY is each sample's path.

    \b
    Example:
      latinhib enhance data/train data/train-li --ratio 0.3 -q 0.5 --save-masks masks/
      latinhib enhance 'shards/train-{000000..000099}.tar' shards-li/
    """
    with _stop_before_start():  # SIGTERM or Ctrl-C while torch loads, the model loads, SRC is listed
        # The heavy imports (torch, torchvision, the pipeline) happen here, when a job runs, not
        # at the top of this module: --help and --version stay fast (see the module docstring).
        from .allocator import keep_large_blocks
        from .pipeline import JobOptions

        keep_large_blocks()  # no page faults on each batch's fresh activations (allocator.py)
        part = values.pop("shard", None)
        config = build_config(config_file, sets, values)
        on_output = _output_printer(print0, part is not None) if (print0 or print_outputs) else None
        options = JobOptions(input_format=input_format, output_format=output_format, shard_size=shard_size or 0,
                             files_from=files_from, follow_symlinks=follow_symlinks, strict=strict, quiet=quiet,
                             part=part, on_output=on_output)
        _enhance(config, src, dst, options, as_json)


def _output_printer(print0: bool, sharded: bool):
    """``--print-outputs`` / ``--print0``: each output's path on stdout."""
    from .distributed import is_distributed

    def emit(path: Path) -> None:
        # Bytes, not text: a file name that is not valid UTF-8 comes out as the same bytes
        # it has on disk (xargs can open it), where a text write would raise.
        sys.stdout.flush()
        sys.stdout.buffer.write(os.fsencode(path) + (b"\0" if print0 else b"\n"))
        if sharded or is_distributed():
            # torchrun ranks and shards share one stdout: one write per path (atomic on a
            # pipe up to 4 KiB) keeps their lines whole.
            sys.stdout.flush()

    return emit


def _enhance(config: Config, src: str, dst: Path, options: JobOptions, as_json: bool) -> None:
    """Run the job and print its summary (stderr, and stdout with --json); exits with its code."""
    from .config import ConfigError
    from .distributed import is_primary
    from .models import CheckpointError
    from .pipeline import run
    from .plan import JobError
    from .stopping import Stopped

    try:
        summary = run(config, src, dst, options)
    except (JobError, ConfigError, CheckpointError) as exc:
        raise BadInput(str(exc)) from None
    except Stopped as exc:  # Ctrl-C, SIGTERM, a full disk: what is done is written and recorded
        click.echo(f"latinhib: {exc.line()}", err=True)  # every torchrun rank says how far it got
        if as_json and is_primary():
            click.echo(json.dumps(exc.summary.as_dict()))
        sys.exit(exc.exit_code)
    if is_primary():  # under torchrun the counts are the whole job's: print them once
        if not options.quiet:
            click.echo(f"latinhib: {summary.line()}", err=True)
        if as_json:
            click.echo(json.dumps(summary.as_dict()))
    sys.exit(summary.exit_code)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt until the job's own handler takes over
    (``stopping.StopRequest``), so both stop the command the same way."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _stop_before_start() -> Iterator[None]:
    """Ctrl-C or SIGTERM before the job has written anything: one line, exit 128 + signal.
    Once files are being processed, ``pipeline.run`` handles both itself (stops at the next
    safe point) and raises ``Stopped``."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        click.echo(f"latinhib: {how} before any file was processed", err=True)
        previous = signal.SIG_IGN
        sys.exit(128 + signum)
    except SystemExit as exc:
        if isinstance(exc.code, int) and exc.code > 128:
            # The job stopped on a signal and the process is on its way out: a second
            # SIGTERM sent during the stop, arriving now, has nothing left to stop (with the
            # default handler back it would kill the exiting process: exit -15, not 143).
            previous = signal.SIG_IGN
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _shard(value: Optional[str]):
    if value is None:
        return None
    from .distributed import parse_part

    try:
        return parse_part(value)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


@main.command()
@click.argument("dst", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the merged summary as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No summary on stderr.")
def merge(dst: Path, as_json: bool, quiet: bool) -> None:
    """Merge the manifest parts of sharded runs (--shard I/N) in DST.

    Folds every DST/latinhib-manifest.part-I-of-N.jsonl into DST/latinhib-manifest.jsonl
    (one line per input, listing order, written atomically), removes the parts and prints
    the job's counts. Exit code 1 when a file failed. Safe to repeat; refused (exit 2)
    while shard jobs are still writing into DST.

    \b
    Example:
      latinhib merge data/train-li
    """
    from .files import DestinationUnusable
    from .locking import DstBusy, DstLock
    from .manifest import merge as merge_parts

    lock = DstLock(dst, None, what="latinhib merge", log=lambda message: click.echo(message, err=True))
    try:
        lock.acquire()  # the parts are complete only once their shard jobs are done
        result = merge_parts(dst)
    except (ValueError, DstBusy) as exc:
        raise BadInput(str(exc)) from None
    except DestinationUnusable as exc:
        click.echo(f"latinhib: DST {str(dst)!r}: {exc.strerror} (writing {str(exc.path)!r}); nothing merged", err=True)
        sys.exit(1)
    finally:
        lock.release()
    if not quiet:
        for shard in result.missing:
            click.echo(f"latinhib: warning: no manifest part for shard {shard} (not run, or merged earlier)",
                       err=True)
        click.echo(f"latinhib: {result.line()}", err=True)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    sys.exit(1 if result.counts["failed"] else 0)


@main.command()
@click.argument("src")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The sheet to write (.png or .jpg).")
@click.option("-n", "--n", "count", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Images on the sheet, drawn with inhibition.seed.")
@click.option("--files", help="Comma-separated images (relative to SRC) instead of a random sample.")
@click.option("--grid", metavar="KEY=V1,V2,...",
              help=f"One image, one column per value of one of {', '.join(GRID_KEYS)} (e.g. q=0.3,0.5,0.7).")
@click.option("--cell", type=click.IntRange(64, 1024), default=192, show_default=True, help="Panel size in pixels.")
@config_options
def preview(src: Path, output: Path, count, files, grid, cell, config_file, sets, **values) -> None:
    """Draw what enhance does to a few images of SRC: a contact sheet with the original,
    the importance heat map, each layer's map, the filter response, the mask and the
    enhanced image, one row per image; with --grid, one image under several settings.

    \b
    Example:
      latinhib preview examples -o docs/preview.png --n 4
      latinhib preview examples -o grid.png --files cat/chelsea.jpg --grid q=0.3,0.5,0.7
    """
    from .config import ConfigError
    from .models import CheckpointError
    from .files import DestinationUnusable
    from .preview import PreviewError, preview as make_preview

    config = build_config(config_file, sets, values)
    chosen = [f.strip() for f in files.split(",") if f.strip()] if files else None
    try:
        make_preview(config, src, output, count=count, files=chosen, grid=grid, cell=cell,
                     log=lambda message: click.echo(message, err=True))
    except (PreviewError, ConfigError, CheckpointError) as exc:
        raise BadInput(str(exc)) from None
    except DestinationUnusable as exc:
        raise click.ClickException(str(exc)) from None  # exit 1
    click.echo(f"latinhib: wrote {output}", err=True)


@main.command("evaluate")
@click.argument("src")
@config_options(evaluate=True)
@click.option("--also-checkpoint", "also", multiple=True, type=click.Path(dir_okay=False),
              help="Another checkpoint of the same architecture, evaluated on the same variants (repeatable).")
@click.option("--masks", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="True masks (DIR/<rel>, DIR/<rel>.png; white = object) instead of latinhib's.")
@click.option("--save-variants", type=click.Path(file_okay=False, path_type=Path),
              help="Write every variant as DIR/<variant>/<rel>.png (and DIR/mask/).")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path),
              help="Write report.md, report.json, accuracy.png and samples.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead of the table.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary on stderr.")
def evaluate_command(src: Path, config_file, sets, also, masks, save_variants, report, as_json, quiet,
                     **values) -> None:
    """Top-1 accuracy on the images of SRC as they are and with their background blurred,
    object blurred, background swapped (from an image of another class) or object alone on
    the mean colour, the masks made by latinhib (or --masks); with 95% bootstrap intervals,
    the gaps between variants and, per --also-checkpoint, paired differences. SRC is an
    ImageFolder tree whose class folders are the model's classes (names, indices or ImageNet
    WordNet IDs), or WebDataset shards whose samples carry a .cls (or model.label_key).
    Exit 1 when some files failed.

    \b
    Example:
      latinhib evaluate val/ --arch resnet18 --checkpoint base.pth --also-checkpoint li.pth --report rep/
    """
    from .allocator import keep_large_blocks
    from .config import ConfigError
    from .evaluation_folder import evaluate_folder
    from .evaluation_statistics import EvaluateError
    from .models import CheckpointError

    keep_large_blocks()
    config = build_config(config_file, sets, values)
    try:
        run = evaluate_folder(config, src, also=also, masks=masks, save_variants=save_variants, report=report,
                              quiet=quiet, log=lambda message: click.echo(message, err=True))
    except (EvaluateError, ConfigError, CheckpointError) as exc:
        raise BadInput(str(exc)) from None
    click.echo(json.dumps(run.result.as_dict()) if as_json else run.result.table())
    if not quiet:
        click.echo(f"latinhib: {run.line()}", err=True)
    sys.exit(1 if run.failed else 0)


@main.command("config")
@config_options
def show_config(config_file, sets, **values) -> None:
    """Print the effective config (defaults < --config < options) as YAML.

    \b
    Example:
      latinhib config --config configs/resnet50-gpu.yaml --set inhibition.quantile=0.6
    """
    from .config import to_yaml

    click.echo(to_yaml(build_config(config_file, sets, values)), nl=False)


if __name__ == "__main__":
    main()
