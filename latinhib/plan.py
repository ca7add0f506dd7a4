"""What to do with each listed input, decided before any work starts: already done
(skipped by a rerun), left out, selected for enhancement (``blake2b(seed, rel) < ratio``),
or copied; plus the checks a rerun must pass (same result-changing settings as the DST it
continues).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .api import LateralInhibition
from .config import Config
from .data import Item, display
from .inhibition import selection_score
from .manifest import entry, is_job_file, recorded_sections
from .models import LoadedModel
from .sinks import Sink

__all__ = ["JobError", "Plan", "RESULT_SECTIONS", "check_previous_config", "make_plan", "recorded_config"]

#: Config sections that change outputs; a rerun into the same DST must match them.
RESULT_SECTIONS = ("model", "inhibition", "blur")


class JobError(Exception):
    """The job cannot start (bad paths, config, checkpoint): nothing was written."""


@dataclass
class Plan:
    """``to_enhance`` and ``to_copy`` in listing order; ``fresh``: entries decided here
    (left out, or problems the source found); ``already_done``: skipped as done."""

    to_enhance: List[Item] = field(default_factory=list)
    to_copy: List[Item] = field(default_factory=list)
    fresh: List[Dict[str, Any]] = field(default_factory=list)
    already_done: int = 0

    @property
    def todo(self) -> List[Item]:
        return self.to_enhance + self.to_copy


def make_plan(items: Sequence[Item], previous: Dict[str, str], config: Config, sink: Sink,
              problems: Sequence[Tuple[str, str]] = ()) -> Plan:
    """Decide every item: ``sink.done`` says whether an earlier run finished it
    (``previous``: path -> an earlier run's manifest line)."""
    plan = Plan()
    ratio, seed = config.inhibition.ratio, config.inhibition.seed
    for rel, message in problems:
        plan.fresh.append(entry(_Named(rel), False, "failed", error=message))
    # ~1.28M iterations for ImageNet: the loop asks each item only what decides it (no
    # earlier run: no done check; ratio 0 or 1: no hash; a job file's name: a prefix first)
    # (a folder's file is done only by a manifest entry; an output shard by its file alone)
    check_done = not config.output.overwrite and (bool(previous) or getattr(sink, "format", "folder") != "folder")
    images_only = config.output.images_only
    enhance, copy = plan.to_enhance.append, plan.to_copy.append
    for item in items:
        rel = item.rel
        if check_done and sink.done(item, previous.get(rel)):
            plan.already_done += 1
            continue
        is_image = item.is_image
        if (rel.startswith("latinhib-") and is_job_file(rel)) or (images_only and not is_image):
            plan.fresh.append(entry(item, False, "skipped", error=_left_out(item, config)))
        elif is_image and ratio > 0 and (ratio >= 1 or selection_score(seed, rel) < ratio):
            enhance(item)
        else:  # unselected images, and files latinhib does not enhance: byte for byte
            copy(item)
    return plan


def _left_out(item: Item, config: Config) -> Optional[str]:
    """Why a listed file gets no output (status ``skipped``), or None: a name that would
    overwrite the job's own files in DST, or a file latinhib does not enhance under
    ``output.images_only``."""
    if is_job_file(item.rel):
        return "has the name of a file latinhib writes in DST (is SRC a latinhib DST?): not copied"
    if config.output.images_only and not item.is_image:
        return f"not a format latinhib enhances ({extension(item)}): left out (output.images_only)"
    return None


def extension(item: Item) -> str:
    return Path(item.rel).suffix or "no extension"


@dataclass(frozen=True)
class _Named:
    """A manifest path with no item behind it (a problem found while listing)."""

    rel: str


def check_previous_config(dst: Path, config: Config, recorded: Config) -> None:
    """A rerun into a DST made with other settings would mix two results: refuse.

    ``recorded`` is what this run writes to DST (:func:`recorded_config`); a key matches when
    the file holds the recorded value or the value asked for, so a DST written before
    the config recorded resolved values (``layers: null``) still resumes."""
    if config.output.overwrite:
        return
    try:
        previous = recorded_sections(dst, RESULT_SECTIONS)
    except ValueError as exc:
        raise JobError(f"DST {display(str(dst))!r}: {exc}; use --overwrite to redo DST, or another DST") from None
    if previous is None:
        return
    asked, current = config.to_dict(), recorded.to_dict()
    for section in RESULT_SECTIONS:
        for key, value in current[section].items():
            old = previous[section].get(key, value)
            if old != value and old != asked[section][key]:
                raise JobError(
                    f"DST {display(str(dst))!r} was made with {section}.{key} = {old!r}, this run has {value!r}; "
                    f"use --overwrite to redo it, or another DST"
                )


def recorded_config(config: Config, loaded: LoadedModel, enhancer: LateralInhibition) -> Config:
    """The config as this job really runs it, for DST's provenance: resolved layers, input
    size, mean and std, the weights only when weights were loaded, the checkpoint's
    sha256 and size."""
    return dataclasses.replace(config, model=loaded.resolved(config.model, enhancer.layers))
