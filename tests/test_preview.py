"""`latinhib preview` and `enhance --save-heatmaps`, on small folders and a tiny checkpoint
made here: the sheet's size follows from n and the columns, each panel is the picture
`enhance` writes (mask, enhanced image, heat map), the settings grid varies what it says,
and text renders with Pillow's bundled font when no font file may be opened."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from latinhib import preview as preview_module
from latinhib.api import LateralInhibition
from latinhib.config import load_config
from latinhib.data import Item, list_folder
from latinhib.preview import GAP, MARGIN, Column, Row, Table, contact_table, grid_table, load_font, render, sample
from latinhib.encoding import HEAT_STOPS, heat_colors

from helpers import ARCH, invoke, make_image

CELL = 96


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """Five lossless PNGs of different shapes in two class folders."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("src")
    sizes = [(90, 60), (64, 100), (120, 80), (70, 70), (100, 50)]
    for i, size in enumerate(sizes):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        make_image(rng, size).save(folder / f"img{i}.png")
    return root


def model_args(checkpoint: Path):
    return ["--arch", ARCH, "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0",
            "--set", "model.input_size=64"]


def config_for(checkpoint: Path, **overrides):
    keys = {"model.arch": ARCH, "model.checkpoint": str(checkpoint), "model.input_size": 64,
            "runtime.device": "cpu", "runtime.workers": 0}
    keys.update(overrides)
    return load_config(overrides=keys)


def line_height() -> int:
    """One text line on the sheet: the default font's height plus padding."""
    bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), "Ag|(", font=load_font())[3]
    return int(bottom) + preview_module.PAD


def test_sheet_size_follows_n_and_columns(src, checkpoint, tmp_path):
    sizes = {}
    cell = 160  # wider than every column title, so each column is exactly its box wide
    for n in (1, 3):
        out = tmp_path / f"sheet{n}.png"
        result = invoke("preview", src, "-o", out, "--n", n, "--cell", cell, *model_args(checkpoint))
        assert result.exit_code == 0, result.output
        sizes[n] = Image.open(out).size
    table = contact_table(config_for(checkpoint), src, count=3)
    layers = len(table.columns) - 5
    assert layers >= 1
    assert [c.title.split("\n")[0] for c in table.columns[:2]] == ["original", "importance"]
    assert [c.title.split("\n")[0] for c in table.columns[-2:]] == ["mask", "enhanced"]
    assert [c.small for c in table.columns] == [False, False] + [True] * layers + [False] * 3
    assert len(table.rows) == 3 and all(len(row.pictures) == len(table.columns) for row in table.rows)
    line = line_height()
    width = 2 * MARGIN + 5 * cell + layers * (cell // 2) + GAP * (len(table.columns) - 1)
    top = MARGIN + line + GAP + 2 * line + GAP
    for n, size in sizes.items():
        assert size == (width, top + n * (line + cell) + (n - 1) * GAP + MARGIN)
    # Rows are one pitch apart, each picture centred in its cell below its label line.
    boxes = render(table, cell).boxes
    for r, row in enumerate(boxes):
        for x0, y0, x1, y1 in row:
            cell_top = top + r * (line + cell + GAP) + line
            assert cell_top <= y0 and y1 <= cell_top + cell and abs((y0 + y1) / 2 - (cell_top + cell / 2)) <= 1
    # The same table drawn bigger grows by the boxes and nothing else.
    big, small = render(table, 2 * cell).image.size, render(table, cell).image.size
    assert (big[0] - small[0], big[1] - small[1]) == (5 * cell + layers * (cell // 2), 3 * cell)


def test_panels_are_what_enhance_writes(src, checkpoint, tmp_path):
    dst, masks, heatmaps = tmp_path / "dst", tmp_path / "masks", tmp_path / "heat"
    result = invoke("enhance", src, dst, *model_args(checkpoint), "--ratio", "1", "--quiet",
                    "--save-masks", masks, "--save-heatmaps", heatmaps)
    assert result.exit_code == 0, result.output
    entries = {e["path"]: e for e in map(json.loads, (dst / "latinhib-manifest.jsonl").read_text().splitlines())}
    rels = sorted(entries)
    config = config_for(checkpoint)
    table = contact_table(config, src, files=rels)
    sheet = render(table, CELL)
    titles = [c.title.split("\n")[0] for c in table.columns]
    mask_col, enhanced_col = titles.index("mask"), titles.index("enhanced")
    for r, (rel, row) in enumerate(zip(rels, table.rows)):
        assert entries[rel]["status"] == "enhanced"
        assert row.label.startswith(rel) and f"predicted: {entries[rel]['predicted_class']}" in row.label
        saved_mask = Image.open(masks / f"{rel}.png")
        assert np.array_equal(np.asarray(row.pictures[mask_col]), np.asarray(saved_mask))
        assert np.array_equal(np.asarray(row.pictures[enhanced_col]), np.asarray(Image.open(dst / rel).convert("RGB")))
        assert np.array_equal(np.asarray(row.pictures[0]), np.asarray(Image.open(src / rel).convert("RGB")))
        # On the sheet, the mask column holds the mask, scaled into its box.
        x0, y0, x1, y1 = sheet.boxes[r][mask_col]
        expected = saved_mask.convert("RGB").resize((x1 - x0, y1 - y0), Image.LANCZOS)
        assert np.array_equal(np.asarray(sheet.image.crop((x0, y0, x1, y1))), np.asarray(expected))
        # The heat map is the importance at the image's size: thresholded at Q it is the mask.
        heat = Image.open(heatmaps / f"{rel}.png")
        assert heat.mode == "RGB" and heat.size == saved_mask.size
        level = heat_level(np.asarray(heat))
        kept = np.asarray(saved_mask) == 255
        assert kept.any() and (~kept).any()
        assert level[kept].min() >= entries[rel]["threshold"] - 0.02
        assert level[~kept].max() <= entries[rel]["threshold"] + 0.02
        assert level[kept].mean() > level[~kept].mean() + 0.1


def heat_level(rgb: np.ndarray) -> np.ndarray:
    """Invert the heat colours: the value in [0, 1] whose colour is nearest each pixel."""
    values = torch.linspace(0, 1, 1001)
    lut = heat_colors(values[None]).permute(1, 2, 0)[0].numpy().astype(np.float32)  # (1001, 3)
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    nearest = ((pixels[:, None, :] - lut[None]) ** 2).sum(-1).argmin(1)
    return values.numpy()[nearest].reshape(rgb.shape[:2])


def test_heat_colors_run_through_the_stops():
    colours = heat_colors(torch.tensor([[0.0, 1.0]]))
    assert colours[:, 0, 0].tolist() == list(HEAT_STOPS[0]) and colours[:, 0, 1].tolist() == list(HEAT_STOPS[-1])
    brightness = heat_colors(torch.linspace(0, 1, 50)[None]).float().sum(0)[0]
    assert bool((brightness[1:] > brightness[:-1]).all())  # readable in grey: brighter = more important


def test_grid_one_column_per_value(src, checkpoint, tmp_path):
    rel = "a/img1.png"
    table = grid_table(config_for(checkpoint), src, "q=0.2,0.8", files=[rel])
    assert [c.title.split("\n")[0] for c in table.columns] == ["original", "q=0.2", "q=0.8"]
    assert [row.label.split(" ")[0] for row in table.rows] == ["importance", "mask", "enhanced"]
    masks = [np.asarray(p) / 255.0 for p in table.rows[1].pictures[1:]]
    assert abs(masks[0].mean() - 0.8) < 0.05 and abs(masks[1].mean() - 0.2) < 0.05
    # The q=0.8 column is what `enhance -q 0.8` writes.
    dst = tmp_path / "dst"
    list_file = tmp_path / "list.txt"
    list_file.write_text(rel + "\n")
    result = invoke("enhance", src, dst, *model_args(checkpoint), "--ratio", "1", "-q", "0.8", "--quiet",
                    "--files-from", list_file)
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(table.rows[2].pictures[2]), np.asarray(Image.open(dst / rel).convert("RGB")))
    out = tmp_path / "grid.png"
    result = invoke("preview", src, "-o", out, "--files", rel, "--grid", "blur=2,8", "--cell", CELL,
                    *model_args(checkpoint))
    assert result.exit_code == 0, result.output
    line = line_height()  # caption, two title lines, then three rows of (label, cell)
    assert Image.open(out).size[1] == MARGIN + 3 * line + 2 * GAP + 3 * (line + CELL) + 2 * GAP + MARGIN
    boxes = render(table, CELL).boxes
    assert [[box is not None for box in row] for row in boxes] == [[True] * 3, [False, True, True], [False, True, True]]


@pytest.mark.parametrize(
    "grid, message",
    [
        ("x=1,2", "--grid 'x=1,2': unknown key 'x'; expected one of q, quantile, sigma"),
        ("q=0.3,1.5", "inhibition.quantile: 1.5 is not allowed"),
        ("k=4", "inhibition.kernel_size: 4 is not allowed"),
        ("q", "--grid 'q': expected KEY=V1,V2,..."),
    ],
)
def test_bad_grid_is_a_usage_error(src, checkpoint, tmp_path, grid, message):
    out = tmp_path / "grid.png"
    result = invoke("preview", src, "-o", out, "--grid", grid, *model_args(checkpoint))
    assert result.exit_code == 2 and message in result.output
    assert not out.exists()


def test_unknown_output_extension_is_refused_before_any_work(src, tmp_path):
    result = invoke("preview", src, "-o", tmp_path / "sheet.txt", "--checkpoint", tmp_path / "missing.pth")
    assert result.exit_code == 2 and "-o" in result.output and "unknown image extension" in result.output


def test_sample_is_seeded(src, checkpoint):
    images = [Item(Path(f"{i:02d}.png"), f"{i:02d}.png", None) for i in range(30)]
    first = sample(images, 5, seed=0)
    assert len(first) == 5 and first == sorted(first, key=lambda item: item.rel)
    assert all(sample(images, 5, seed=0) == first for _ in range(5))
    assert len({tuple(item.rel for item in sample(images, 5, seed)) for seed in range(1, 6)} | {tuple(i.rel for i in first)}) > 1
    assert sample(images[:3], 8, seed=0) == images[:3]
    # The sheet uses it with inhibition.seed.
    table = contact_table(config_for(checkpoint, **{"inhibition.seed": 3}), src, count=2)
    expected = sample([i for i in list_folder(src) if i.is_image], 2, seed=3)
    assert [row.label.split(" ")[0] for row in table.rows] == [item.rel for item in expected]


@pytest.mark.parametrize("old_pillow", [False, True])
def test_text_needs_no_font_file(monkeypatch, old_pillow):
    """Opening any font by name or path fails (no system fonts); the sheet still has text."""
    real_truetype, real_default = ImageFont.truetype, ImageFont.load_default

    def no_font_files(font=None, *args, **kwargs):
        if isinstance(font, (str, bytes, Path)):
            raise OSError(f"cannot open resource {font!r}")
        return real_truetype(font, *args, **kwargs)

    def unsized_default(size=None):
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return real_default()

    monkeypatch.setattr(ImageFont, "truetype", no_font_files)
    if old_pillow:
        monkeypatch.setattr(ImageFont, "load_default", unsized_default)
    picture = Image.new("RGB", (40, 30), (0, 128, 255))
    table = Table("caption text", [Column("first"), Column("second\ntwo lines", small=True)],
                  [Row("row label", [picture, picture])])
    sheet = render(table, 64)
    pixels = np.asarray(sheet.image)
    caption = pixels[MARGIN : MARGIN + 10, MARGIN : MARGIN + 60]
    assert (caption < 128).any()  # dark text on the white background
    x0, y0, x1, y1 = sheet.boxes[0][0]
    assert (x1 - x0, y1 - y0) == (64, 48)
    assert np.array_equal(pixels[y0:y1, x0:x1], np.asarray(picture.resize((64, 48), Image.LANCZOS)))


@pytest.mark.parametrize("grid", ["sigma=1,3", "k=3,9", "filter=log,gaussian,none", "q=0.3,0.6",
                                  "outline=response,importance"])
def test_grid_runs_the_model_once_and_each_column_is_a_full_pass(src, checkpoint, monkeypatch, grid):
    """Every grid key acts after the model pass: one pass, then steps 4-8 per column, with
    the masks a full pass under that column's settings gives."""
    import latinhib.api as api
    from latinhib.data import decode
    from latinhib.models import load_model
    from latinhib.executors import batch_importance
    from latinhib.finishing import enhance_pixels
    from latinhib.preview import GRID_KEYS, _with, parse_grid

    import latinhib.preview as preview

    passes, forwards = [], []
    original = api.importance_maps
    monkeypatch.setattr(api, "importance_maps", lambda *a, **k: passes.append(1) or original(*a, **k))
    real_load = preview.load_model

    def counting_load(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        loaded.model.register_forward_hook(lambda *_: forwards.append(1))
        return loaded

    monkeypatch.setattr(preview, "load_model", counting_load)
    rel = "a/img1.png"
    config = config_for(checkpoint)
    table = grid_table(config, src, grid, files=[rel])
    assert len(passes) == 1
    assert len(forwards) == 2  # the layer probe and the one importance pass, whatever the columns
    key, values = parse_grid(grid)
    assert key in GRID_KEYS.values()
    loaded = load_model(config.model, torch.device("cpu"))
    item = Item(src / rel, rel, "a")
    decoded = decode(item.path, loaded.input_size, loaded.mean, loaded.std)
    for column, value in enumerate(values, 1):
        cfg = _with(config, key, value)
        enhancer = LateralInhibition(loaded.model, cfg, input_size=loaded.input_size)
        imp = batch_importance(enhancer, [(0, decoded)], [item], None, torch.device("cpu"))
        _, mask = enhance_pixels(decoded, imp, 0, cfg, loaded.input_size, torch.device("cpu"))
        shown = np.asarray(table.rows[1].pictures[column]) > 127
        assert np.array_equal(shown, mask[0].numpy()), (grid, value)
