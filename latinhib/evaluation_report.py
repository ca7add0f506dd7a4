"""``latinhib evaluate --report DIR``: ``report.md`` (the tables in Markdown), ``report.json``
(the ``--json`` document), ``accuracy.png`` (a bar chart of every variant per checkpoint,
with the 95% intervals as whiskers) and ``samples.png`` (a few images in every variant, drawn
with ``preview.render``). Pictures use Pillow only, with its bundled font.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

from PIL import Image, ImageDraw

from .data import display
from .encoding import tensor_bytes
from .files import atomic_write
from .preview import Column, Row, Table, load_font, mask_picture, render
from .variants import VARIANTS

__all__ = ["bar_chart", "markdown", "write_report"]

#: One colour per checkpoint (colour-blind safe, Okabe-Ito), cycled beyond six.
COLOURS = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0)]
CHART = {"width": 860, "height": 420, "left": 56, "right": 16, "top": 40, "bottom": 64}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown(run, description: str) -> str:
    """The report's text: accuracies, gaps and paired differences as Markdown tables."""
    result = run.result
    settings = result.config.get("evaluate", {})
    names = result.checkpoints
    every = [result.variants] + [c.variants for c in result.compared]
    lines = [f"# latinhib evaluate: {display(settings.get('src', ''))}", "",
             f"{run.images} images ({len(run.failed)} failed), model {description}, masks: "
             f"{settings.get('masks')}; q = {result.config['inhibition']['quantile']}, blur sigma = "
             f"{result.config['blur']['sigma']}; 95% intervals by bootstrap over images "
             f"({settings.get('resamples')} resamples, seed {settings.get('bootstrap_seed')}).", "",
             "Top-1 accuracy (%):", "",
             "| variant | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name in VARIANTS:
        cells = [f"{_pct(a[name].accuracy)} [{_pct(a[name].ci95[0])}, {_pct(a[name].ci95[1])}]" for a in every]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    gaps = [result.gaps] + [c.gaps for c in result.compared]
    lines += ["", "Gaps (points):", "", "| gap | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in result.gaps:
        cells = [f"{100 * g[key].difference:+.1f} [{100 * g[key].ci95[0]:+.1f}, {100 * g[key].ci95[1]:+.1f}]"
                 for g in gaps]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    for comparison in result.compared:
        lines += ["", f"{comparison.checkpoint} - {names[0]}, paired (points):", "",
                  "| variant | difference | only first right | only this right | McNemar p |", "|---|---|---|---|---|"]
        for name, d in comparison.paired.items():
            lines.append(f"| {name} | {100 * d.difference:+.1f} [{100 * d.ci95[0]:+.1f}, {100 * d.ci95[1]:+.1f}] | "
                         f"{d.only_first_correct} | {d.only_this_correct} | {d.mcnemar_p:.3g} |")
    lines += ["", "![accuracy per variant](accuracy.png)", "", "![samples](samples.png)", ""]
    if run.failed:
        lines += ["Files left out:", ""] + [f"- `{display(rel)}`: {cause}" for rel, cause in run.failed] + [""]
    doubtful = getattr(run, "doubtful", [])
    if doubtful:
        lines += [f"{len(doubtful)} doubtful mask{'s' * (len(doubtful) != 1)} (used as they are):", ""]
        lines += [f"- `{display(rel)}`: {why}" for rel, why in doubtful] + [""]
    return "\n".join(lines)


def bar_chart(result) -> Image.Image:
    """Accuracy per variant (groups) and checkpoint (bars), whiskers = 95% intervals."""
    c = CHART
    image = Image.new("RGB", (c["width"], c["height"]), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = load_font()
    every = [result.variants] + [comp.variants for comp in result.compared]
    x0, x1 = c["left"], c["width"] - c["right"]
    y0, y1 = c["top"], c["height"] - c["bottom"]

    def y(value: float) -> float:
        return y1 - value * (y1 - y0)

    for tick in range(0, 101, 20):
        draw.line([(x0, y(tick / 100)), (x1, y(tick / 100))], fill=(225, 225, 225))
        draw.text((x0 - 30, y(tick / 100) - 7), f"{tick}%", fill=(60, 60, 60), font=font)
    group = (x1 - x0) / len(VARIANTS)
    bar = group * 0.8 / len(every)
    for g, name in enumerate(VARIANTS):
        left = x0 + g * group + group * 0.1
        for k, accuracies in enumerate(every):
            entry = accuracies[name]
            colour = COLOURS[k % len(COLOURS)]
            bx = left + k * bar
            draw.rectangle([bx + 1, y(entry.accuracy), bx + bar - 1, y1], fill=colour)
            middle = bx + bar / 2
            draw.line([(middle, y(entry.ci95[0])), (middle, y(entry.ci95[1]))], fill=(0, 0, 0), width=2)
            for end in entry.ci95:
                draw.line([(middle - bar / 4, y(end)), (middle + bar / 4, y(end))], fill=(0, 0, 0), width=2)
        label = name.replace("_", " ")
        width = draw.textlength(label, font=font)
        draw.text((x0 + g * group + (group - width) / 2, y1 + 6), label, fill=(20, 20, 20), font=font)
    draw.line([(x0, y1), (x1, y1)], fill=(0, 0, 0))
    legend_x = x0
    for k, name in enumerate(result.checkpoints):
        colour = COLOURS[k % len(COLOURS)]
        text = Path(name).name or name
        draw.rectangle([legend_x, y1 + 30, legend_x + 12, y1 + 42], fill=colour)
        draw.text((legend_x + 16, y1 + 29), text, fill=(20, 20, 20), font=font)
        legend_x += 28 + draw.textlength(text, font=font)
    draw.text((x0, 12), "top-1 accuracy per variant (whiskers: 95% bootstrap interval)", fill=(20, 20, 20), font=font)
    return image


def _picture(rgb) -> Image.Image:
    hwc = rgb.permute(1, 2, 0).contiguous()
    return Image.frombytes("RGB", (hwc.shape[1], hwc.shape[0]), tensor_bytes(hwc))


def sample_table(samples: Sequence[Dict[str, Any]], checkpoints: Sequence[str]) -> Table:
    """The sample sheet: one row per image, one column per variant and the mask; the row
    label says which checkpoints got each variant right."""
    columns = [Column(name.replace("_", "\n", 1)) for name in VARIANTS] + [Column("mask\n(white = kept)")]
    rows: List[Row] = []
    short = [Path(name).stem or name for name in checkpoints]
    for entry in samples:
        right = []
        for k, name in enumerate(short):
            hits = [v for i, v in enumerate(VARIANTS) if bool(entry["correct"][k, i])]
            right.append(f"{name}: {len(hits)}/{len(VARIANTS)} right")
        label = f"{display(entry['rel'])}  |  class {display(entry['class'])}  |  " + ", ".join(right)
        pictures = [_picture(entry["pictures"][name]) for name in VARIANTS] + [mask_picture(entry["mask"])]
        rows.append(Row(label, pictures))
    return Table("latinhib evaluate: the variants each model was tested on", columns, rows)


def write_report(folder: Path, run, samples: Sequence[Dict[str, Any]], description: str) -> None:
    """Write report.md, report.json, accuracy.png and samples.png into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    document = json.dumps(run.result.as_dict(), indent=1)
    atomic_write(folder / "report.json", lambda tmp: tmp.write_text(document + "\n", encoding="utf-8"))
    text = markdown(run, description)
    atomic_write(folder / "report.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    chart = bar_chart(run.result)
    atomic_write(folder / "accuracy.png", lambda tmp: chart.save(tmp, format="PNG"))
    if samples:
        sheet = render(sample_table(samples, run.result.checkpoints), cell=128).image
        atomic_write(folder / "samples.png", lambda tmp: sheet.save(tmp, format="PNG"))
