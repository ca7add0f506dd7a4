"""What the experiment's two report writers share (report.py, report_finedetail.py):
Markdown tables, a section rewritten in place, the figures' font and the per-seed statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ImageFont

KEY = "test/mixed_rand"


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def write_section(results: Path, name: str, text: str) -> None:
    """Replace the text between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` in
    ``results`` (append the section if it is not there), keeping everything else: the page
    has sections written by different scripts (and by hand). Written atomically."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    old = results.read_text() if results.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + ("\n\n" if old.strip() else "") + block + "\n"
    temporary = results.with_name(results.name + ".tmp")
    temporary.write_text(new)
    temporary.replace(results)


def per_seed(state: dict, method: str, key: str = KEY) -> dict[int, float]:
    return {int(name.rsplit("/", 1)[1]): scores[key] for name, scores in state["protocol"].items()
            if name.rsplit("/", 1)[0] == method}


def mean_pm_std(state: dict, method: str, key: str) -> str:
    values = np.asarray(list(per_seed(state, method, key).values()))
    if len(values) == 0:
        return "-"
    std = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{100 * values.mean():.1f} ± {100 * std:.1f}"


def paired(state: dict, a: str, b: str, key: str = KEY) -> tuple[float, float, int]:
    """Mean and standard error of a - b over the seeds both have; (nan, nan, 0) if none."""
    sa, sb = per_seed(state, a, key), per_seed(state, b, key)
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        return float("nan"), float("nan"), 0
    diffs = np.asarray([sa[s] - sb[s] for s in seeds])
    se = diffs.std(ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return float(diffs.mean()), float(se), len(seeds)


def fmt(diff: tuple[float, float, int]) -> str:
    mean, se, n = diff
    return "-" if n == 0 else f"{100 * mean:+.1f} ± {100 * se:.1f}"
