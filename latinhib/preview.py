"""``latinhib preview``: pictures of what the enhancement considers important and what it
blurs. A contact sheet has one row per image -- the original, the combined importance as a
heat map over it, each layer's raw importance map, the filter's (Mexican-hat) response, the
mask and the enhanced image -- and a settings grid shows one image under several values of
one setting, one column per value.

Every panel comes from the code ``latinhib enhance`` runs: ``data.decode``, the
``LateralInhibition`` importance pass, ``finishing.enhance_pixels`` (so the enhanced panel is
the image ``enhance`` writes, and the mask panel its ``--save-masks`` mask) and
``encoding.heatmap_image`` (the ``--save-heatmaps`` colours). Text uses Pillow's own bundled
font (``ImageFont.load_default``), so a sheet renders on a machine with no fonts installed.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw, ImageFont

from .api import Importance, LateralInhibition, recombine
from .choices import GRID_KEYS
from .config import Config, load_config
from .data import Decoded, DecodeError, Item, PathError, decode, display, list_files_from
from .encoding import heat_colors, heatmap_image, tensor_bytes
from .executors import batch_importance
from .files import atomic_write
from .finishing import enhance_pixels, kept_fraction
from .inhibition import is_constant, respond, scale_kernel_size, selection_score
from .labels import resolve_labels
from .models import LoadedModel, load_model
from .runtime import resolve_device
from .shards import looks_like_shards
from .sources import SourceError, read_listing

__all__ = ["GRID_KEYS", "Column", "PreviewError", "Row", "Sheet", "Table", "contact_table", "grid_table",
           "load_font", "mask_picture", "parse_grid", "preview", "render", "sample"]

GRID_LABELS = {"inhibition.quantile": "q", "inhibition.sigma": "sigma", "inhibition.kernel_size": "k",
               "blur.sigma": "blur", "inhibition.filter": "filter", "inhibition.outline": "outline"}

# Layout, in pixels. A 13 px font is the smallest that stays legible at 100% zoom.
FONT_SIZE = 13
MARGIN = 8
GAP = 6
PAD = 3
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
#: How much of the heat colour shows over the (grey) image in the importance panel.
HEAT_ALPHA = 0.65


class PreviewError(Exception):
    """The preview cannot be made (no images, a bad --grid or --files); nothing written."""


@dataclass
class Column:
    """A sheet column: its title (may hold a newline), whether its panels are drawn at half
    size, and whether they are scaled with nearest neighbour (to show a feature map's grid)."""

    title: str
    small: bool = False
    nearest: bool = False


@dataclass
class Row:
    """One row: a label drawn above it and one picture (or None) per column."""

    label: str
    pictures: List[Optional[Image.Image]]


@dataclass
class Table:
    """What a sheet shows: a caption line, the columns and the rows."""

    caption: str
    columns: List[Column]
    rows: List[Row]


@dataclass
class Sheet:
    """The drawn sheet and, per row and column, the box (x0, y0, x1, y1) its picture fills."""

    image: Image.Image
    boxes: List[List[Optional[Tuple[int, int, int, int]]]] = field(default_factory=list)


def load_font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    """Pillow's bundled default font at ``size`` (no system font needed); on a Pillow too
    old to size it (< 10.1), its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def signed_colors(values: torch.Tensor) -> torch.Tensor:
    """(H, W) values in [-1, 1] -> (3, H, W) uint8: blue below 0, white at 0, red above."""
    values = torch.nan_to_num(values.float()).clamp(-1, 1)[..., None]
    white = torch.tensor([247.0, 247.0, 247.0], device=values.device)
    red = torch.tensor([178.0, 24.0, 43.0], device=values.device)
    blue = torch.tensor([33.0, 102.0, 172.0], device=values.device)
    colours = torch.where(values >= 0, white + values * (red - white), white - values * (blue - white))
    return colours.round_().clamp_(0, 255).to(torch.uint8).permute(2, 0, 1).contiguous()


def _pil(rgb: torch.Tensor) -> Image.Image:
    """(3, H, W) or (H, W) uint8 -> a PIL image (RGB or L)."""
    rgb = rgb.detach().cpu().contiguous()
    if rgb.ndim == 2:
        return Image.frombytes("L", (rgb.shape[1], rgb.shape[0]), tensor_bytes(rgb))
    hwc = rgb.permute(1, 2, 0).contiguous()
    return Image.frombytes("RGB", (rgb.shape[2], rgb.shape[1]), tensor_bytes(hwc))


def _as_rgb(pixels: torch.Tensor, decoded: Decoded) -> Image.Image:
    """The colour channels of decoded-format pixels (C, H, W) as an 8-bit RGB picture."""
    color = pixels[: decoded.color_channels]
    if decoded.max_value != 255:
        color = (color.float() * (255.0 / decoded.max_value)).round_()
    color = color.clamp(0, 255).to(torch.uint8)
    return _pil(color.expand(3, -1, -1) if color.shape[0] == 1 else color)


def mask_picture(mask: torch.Tensor) -> Image.Image:
    """A (H, W) mask as ``encoding.save_mask`` encodes it: L, 255 = kept sharp. The mask panel
    of every sheet (also ``evaluation_report``'s)."""
    return _pil((mask.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8))


def _heat_over(original: Image.Image, combined: torch.Tensor) -> Image.Image:
    """The combined importance map, in the ``--save-heatmaps`` colours, over a grey copy of
    the image (colour would fight with the heat colours)."""
    heat = heatmap_image(combined, (original.height, original.width))
    return Image.blend(original.convert("L").convert("RGB"), heat, HEAT_ALPHA)


def _layer_picture(layer_map: torch.Tensor) -> Image.Image:
    """One layer's raw IoM map (h, w), min-max normalised, at its own resolution."""
    layer_map = torch.nan_to_num(layer_map.float())
    low, high = layer_map.min(), layer_map.max()
    scaled = (layer_map - low) / (high - low) if high > low else torch.zeros_like(layer_map)
    return _pil(heat_colors(scaled))


def _response_picture(layer_maps: Sequence[torch.Tensor], config: Config, input_size: Tuple[int, int],
                      size: Tuple[int, int]) -> Image.Image:
    """The filter's signed response: each layer's response (``inhibition.respond``, as
    ``combine_maps`` computes it) scaled to the input size and divided by its largest
    magnitude, so 0 stays 0, then averaged over the layers that carry spatial information.
    Blue is where the inhibitory surround pushes importance below zero."""
    s = config.inhibition
    total = torch.zeros(input_size)
    used = 0
    for layer_map in layer_maps:
        layer_map = torch.nan_to_num(layer_map.float().cpu())[None]
        if bool(is_constant(layer_map)[0]):
            continue
        response = respond(layer_map, s.filter, s.kernel_size, s.sigma, input_size[-1], s.scales, s.scale_gamma)
        response = F.interpolate(response[:, None], size=input_size, mode="bilinear", align_corners=False)[0, 0]
        peak = response.abs().max()
        if peak > 0:
            total += response / peak
            used += 1
    signed = total / max(used, 1)
    signed = signed / signed.abs().max().clamp(min=1e-12)
    picture = _pil(signed_colors(signed))
    return picture.resize((size[1], size[0]), Image.BILINEAR)


def sample(images: Sequence[Item], count: int, seed: int) -> List[Item]:
    """``count`` of ``images`` drawn with ``seed`` (``inhibition.seed``, so a sheet is
    reproducible), in listing order."""
    picked = random.Random(seed).sample(range(len(images)), min(count, len(images)))
    return [images[i] for i in sorted(picked)]


class _Session:
    """The model, the importance pass and the per-image pixels, shared by both sheets."""

    def __init__(self, config: Config, src: Union[str, Path], files: Optional[Sequence[str]],
                 log: Callable[[str], None] = print):
        self.config = config
        if config.runtime.threads:
            torch.set_num_threads(config.runtime.threads)
        self.device = resolve_device(config.runtime.device)
        self._stack = contextlib.ExitStack()
        try:
            self.items = self._list(src, files)
        except (PathError, SourceError) as exc:
            self.close()
            raise PreviewError(str(exc)) from None
        except BaseException:
            self.close()
            raise
        self.images = [item for item in self.items if item.is_image]
        if not self.images:
            self.close()
            raise PreviewError(f"SRC {display(str(src))!r}: no images found")
        self.loaded: LoadedModel = load_model(config.model, self.device)
        # Labels over the same listing `enhance` would see, so the target is the same.
        self.labels = resolve_labels(self.images, config, self.loaded.classes, log=log)

    def _list(self, src: Union[str, Path], files: Optional[Sequence[str]]) -> List[Item]:
        """SRC's items (a folder, or shards: ``SHARD/KEY`` names a sample), or the ones
        ``--files`` names, each of which must be there."""
        if files and not looks_like_shards(str(src)):
            items = list_files_from(Path(src), files)
            missing = [item.rel for item in items if not Path(item.path).is_file()]
        else:
            listing = self._stack.enter_context(read_listing(src))
            items = listing.items
            if files:
                by_rel = {item.rel: item for item in items}
                missing = [name for name in files if name not in by_rel]
                items = [by_rel[name] for name in files if name in by_rel]
            else:
                missing = []
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise PreviewError(f"--files: {display(missing[0])!r} is not in SRC {display(str(src))!r}{more}")
        return items

    def close(self) -> None:
        """Shards' spool files are removed."""
        self._stack.close()

    def sample(self, count: int, chosen: bool) -> List[Item]:
        """``--files`` as given, else a seeded sample of ``count`` images."""
        return list(self.images) if chosen else sample(self.images, count, self.config.inhibition.seed)

    def decode(self, items: Sequence[Item], log: Callable[[str], None]) -> List[Tuple[Item, Decoded]]:
        decoded = []
        for item in items:
            try:
                decoded.append((item, decode(item.image_source(), self.loaded.input_size, self.loaded.mean, self.loaded.std)))
            except DecodeError as exc:
                log(f"latinhib: {display(item.rel)}: {exc}")
        if not decoded:
            raise PreviewError("none of the chosen images could be decoded")
        return decoded

    def importance(self, config: Config, batch: Sequence[Tuple[Item, Decoded]]) -> Importance:
        enhancer = LateralInhibition(self.loaded.model, config, input_size=self.loaded.input_size)
        items = [item for item, _ in batch]
        return batch_importance(enhancer, list(enumerate(d for _, d in batch)), items, self.labels, self.device)

    def class_name(self, index: int) -> str:
        classes = self.loaded.classes
        return classes[index] if classes and 0 <= index < len(classes) else str(index)


def _settings(config: Config, varied: Optional[str] = None) -> str:
    """The settings that shape the pictures, leaving out the one a grid varies."""
    s, b = config.inhibition, config.blur
    shown = {"q": s.quantile if isinstance(s.quantile, str) else f"{s.quantile:g}", "filter": s.filter}
    if s.scales and s.filter != "none":  # scale selection: sigma and k are the scales', not the fixed ones
        shown["scales"] = ",".join(f"{v:g}" for v in s.scales)
    elif s.filter != "none":
        shown.update(sigma=f"{s.sigma:g}", k=str(s.kernel_size))
    shown.update(outline=s.outline, blur=f"{b.sigma:g}")
    if b.feather:
        shown["feather"] = f"{b.feather:g}"
    return "  ".join(f"{name}={value}" for name, value in shown.items() if name != varied)


def contact_table(
    config: Config,
    src: Path,
    *,
    count: int = 8,
    files: Optional[Sequence[str]] = None,
    log: Callable[[str], None] = print,
) -> Table:
    """One row per image: original | importance | each layer's IoM | response | mask | enhanced.

    Every sampled image is shown enhanced, whether or not ``--ratio`` would select it; the
    row label says which ``enhance`` would do.
    """
    session = _Session(config, src, files, log)
    try:
        return _contact_table(config, session, count, files, log)
    finally:
        session.close()


def _contact_table(config: Config, session: "_Session", count: int, files, log) -> Table:
    batch = session.decode(session.sample(count, bool(files)), log)
    rows: List[Row] = []
    layer_columns: List[Column] = []
    size = session.config.runtime.batch_size
    for start in range(0, len(batch), size):
        chunk = batch[start : start + size]
        imp = session.importance(config, chunk)
        if not layer_columns:
            layer_columns = [Column(f"{name}\n{m.shape[-2]}x{m.shape[-1]} IoM", small=True, nearest=True)
                             for name, m in zip(imp.layers, imp.layer_maps)]
        for index, (item, decoded) in enumerate(chunk):
            values, mask = enhance_pixels(decoded, imp, index, config, session.loaded.input_size, session.device)
            original = _as_rgb(decoded.pixels, decoded)
            h, w = mask.shape[-2:]
            layer_maps = [m[index].detach().cpu() for m in imp.layer_maps]
            pictures: List[Optional[Image.Image]] = [original, _heat_over(original, imp.combined[index].cpu())]
            # Blocks stretched to the image's shape, as the map is stretched over it.
            pictures += [_layer_picture(m).resize((w, h), Image.NEAREST) for m in layer_maps]
            pictures += [
                _response_picture(layer_maps, config, session.loaded.input_size, (h, w)),
                mask_picture(mask[0]),
                _as_rgb(values.cpu(), decoded),
            ]
            selected = selection_score(config.inhibition.seed, item.rel) < config.inhibition.ratio
            label = (f"{display(item.rel)}  |  predicted: {session.class_name(int(imp.predicted[index]))}"
                     f"  |  kept sharp: {kept_fraction(mask):.0%}"
                     f"  |  enhance r={config.inhibition.ratio:g}: {'enhanced' if selected else 'copied as is'}")
            if not bool(imp.valid[index]):
                label += "  |  no spatial information: left unchanged"
            rows.append(Row(label, pictures))
    filter_name = {"log": "Mexican-hat", "gaussian": "Gaussian", "none": "unfiltered"}[config.inhibition.filter]
    columns = [
        Column("original"),
        Column("importance\n(bright = kept)"),
        *layer_columns,
        Column(f"{filter_name} response\n(blue < 0 < red)"),
        Column("mask\n(white = kept sharp)"),
        Column("enhanced"),
    ]
    caption = f"latinhib preview  |  {session.loaded.description}  |  {_settings(config)}"
    return Table(caption, columns, rows)


def parse_grid(text: str) -> Tuple[str, List[Any]]:
    """``"q=0.3,0.5,0.7"`` -> ("inhibition.quantile", [0.3, 0.5, 0.7])."""
    if "=" not in text:
        raise PreviewError(f"--grid {text!r}: expected KEY=V1,V2,... with KEY one of {', '.join(GRID_KEYS)}")
    name, raw = text.split("=", 1)
    key = GRID_KEYS.get(name.strip())
    if key is None:
        raise PreviewError(f"--grid {text!r}: unknown key {name.strip()!r}; expected one of {', '.join(GRID_KEYS)}")
    values = []
    for part in raw.split(","):
        if not part.strip():
            continue
        try:
            values.append(yaml.safe_load(part))
        except yaml.YAMLError:
            values.append(part.strip())
    if not values:
        raise PreviewError(f"--grid {text!r}: no values")
    return key, values


def _with(config: Config, key: str, value: Any) -> Config:
    overrides = [(f"{section}.{name}", v) for section, values in config.to_dict().items() for name, v in values.items()]
    if key in ("inhibition.sigma", "inhibition.kernel_size"):
        overrides.append(("inhibition.scales", None))  # a sigma column means that one fixed filter
    if key == "inhibition.sigma" and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        # Each column's kernel holds its sigma's whole surround (config.py's rule for k), as
        # a fixed k would cut a larger sigma's surround short.
        overrides.append(("inhibition.kernel_size", scale_kernel_size(value)))
    return load_config(overrides=overrides + [(key, value)])


def grid_table(
    config: Config,
    src: Path,
    grid: str,
    *,
    files: Optional[Sequence[str]] = None,
    log: Callable[[str], None] = print,
) -> Table:
    """One image (the first of ``--files``, else of the seeded sample), one column per value
    of one setting; rows: importance, mask, enhanced."""
    key, values = parse_grid(grid)
    configs = [_with(config, key, value) for value in values]  # validates every value first
    session = _Session(config, src, files, log)
    try:
        return _grid_table(config, session, grid, key, values, configs, files, log)
    finally:
        session.close()


def _grid_table(config: Config, session: "_Session", grid: str, key: str, values, configs, files, log) -> Table:
    (item, decoded), = session.decode(session.sample(1, bool(files))[:1], log)
    original = _as_rgb(decoded.pixels, decoded)
    heats: List[Optional[Image.Image]] = [original]
    masks: List[Optional[Image.Image]] = [None]
    enhanced: List[Optional[Image.Image]] = [None]
    columns = [Column("original")]
    predicted = ""
    # The grid's settings (q, filter, sigma, k, blur) act after the model pass: one pass,
    # then steps 4-8 per column.
    base = session.importance(config, [(item, decoded)])
    for value, cfg in zip(values, configs):
        imp = recombine(base, cfg.inhibition)
        pixels, mask = enhance_pixels(decoded, imp, 0, cfg, session.loaded.input_size, session.device)
        heats.append(_heat_over(original, imp.combined[0].cpu()))
        masks.append(mask_picture(mask[0]))
        enhanced.append(_as_rgb(pixels.cpu(), decoded))
        fitted = f" k={cfg.inhibition.kernel_size}" if key == "inhibition.sigma" else ""
        columns.append(Column(f"{GRID_LABELS[key]}={value}{fitted}\nkept sharp {kept_fraction(mask):.0%}"))
        predicted = session.class_name(int(imp.predicted[0]))
    rows = [Row("importance (bright = kept)", heats), Row("mask (white = kept sharp)", masks),
            Row("enhanced", enhanced)]
    caption = (f"latinhib preview --grid {grid}  |  {display(item.rel)}  |  predicted: {predicted}  |  "
               f"{session.loaded.description}  |  {_settings(config, GRID_LABELS[key])}")
    return Table(caption, columns, rows)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> Tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, spacing=PAD)
    return int(right), int(bottom)


def render(table: Table, cell: int = 192) -> Sheet:
    """Draw ``table``: each picture fitted (aspect kept) into a ``cell`` x ``cell`` box, or
    a half-size box for small columns; column titles on top, each row's label above it.

    Sheet size: width = 2 MARGIN + the column widths + GAP between columns, a column as wide
    as its box or its title (or the caption or a row label, if wider); height = 2 MARGIN + the caption and title lines + per row a
    label line and the cell, GAP apart.
    """
    font = load_font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = _text_size(probe, "Ag|(", font)[1] + PAD
    boxes = [cell // 2 if column.small else cell for column in table.columns]
    widths = [max(box, _text_size(probe, column.title, font)[0]) for box, column in zip(boxes, table.columns)]
    title_lines = max(column.title.count("\n") + 1 for column in table.columns)
    top = MARGIN + line + GAP + title_lines * line + GAP
    row_height = line + cell
    width = 2 * MARGIN + sum(widths) + GAP * (len(widths) - 1)
    texts = [table.caption] + [row.label for row in table.rows]
    width = max([width] + [2 * MARGIN + _text_size(probe, text, font)[0] for text in texts])
    height = top + len(table.rows) * row_height + max(len(table.rows) - 1, 0) * GAP + MARGIN
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, MARGIN), table.caption, fill=TEXT, font=font)
    lefts = [MARGIN + sum(widths[:i]) + GAP * i for i in range(len(widths))]
    for column, left, col_width in zip(table.columns, lefts, widths):
        title_width = _text_size(probe, column.title, font)[0]
        draw.multiline_text((left + (col_width - title_width) // 2, MARGIN + line + GAP), column.title,
                            fill=TEXT, font=font, spacing=PAD, align="center")
    all_boxes: List[List[Optional[Tuple[int, int, int, int]]]] = []
    for r, row in enumerate(table.rows):
        y = top + r * (row_height + GAP)
        draw.text((MARGIN, y), row.label, fill=TEXT, font=font)
        y += line
        row_boxes: List[Optional[Tuple[int, int, int, int]]] = []
        for picture, column, left, col_width, box in zip(row.pictures, table.columns, lefts, widths, boxes):
            if picture is None:
                row_boxes.append(None)
                continue
            scale = min(box / picture.width, box / picture.height)
            w, h = max(1, round(picture.width * scale)), max(1, round(picture.height * scale))
            resample = Image.NEAREST if column.nearest else Image.LANCZOS
            x0, y0 = left + (col_width - w) // 2, y + (cell - h) // 2
            sheet.paste(picture.convert("RGB").resize((w, h), resample), (x0, y0))
            row_boxes.append((x0, y0, x0 + w, y0 + h))
        all_boxes.append(row_boxes)
    return Sheet(sheet, all_boxes)


def preview(
    config: Config,
    src: Path,
    output: Path,
    *,
    count: int = 8,
    files: Optional[Sequence[str]] = None,
    grid: Optional[str] = None,
    cell: int = 192,
    log: Callable[[str], None] = print,
) -> Sheet:
    """Make the contact sheet (or, with ``grid``, the settings grid) and write it to
    ``output`` (format from its extension) atomically."""
    output = Path(output)
    fmt = Image.registered_extensions().get(output.suffix.lower())
    if fmt is None:
        raise PreviewError(f"-o {display(str(output))!r}: unknown image extension; use .png or .jpg")
    if grid:
        table = grid_table(config, src, grid, files=files, log=log)
    else:
        table = contact_table(config, src, count=count, files=files, log=log)
    sheet = render(table, cell)
    atomic_write(output, lambda tmp: sheet.image.save(tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {})))
    return sheet
