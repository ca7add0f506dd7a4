"""What DST holds besides enhanced JPEGs (issue 16, items 4-6): a multi-page TIFF is copied
unchanged with a note (no page lost), a lossless WebP stays lossless, a 1-bit or palette
PNG keeps its mode, and every file latinhib does not enhance (labels.csv, README.txt,
.gif, no extension) is copied byte for byte unless ``--images-only``, under the same
symlink, ``--files-from``, resume and shard rules as the images. All files are made here
with Pillow."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latinhib.distributed import part_of
from helpers import ARCH, invoke, make_image, manifest_by_path

#: Files latinhib does not enhance, at the root and inside a class folder.
OTHERS = {
    "labels.csv": b"path,label\ncats/a.png,cats\n",
    "README.txt": b"a dataset\n",
    "cats/notes": b"\x00\x01 binary, no extension\xff",
}


def args(checkpoint, *extra):
    return ["--arch", ARCH, "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0",
            "--batch-size", "4", "--set", "model.input_size=64", "--quiet", *map(str, extra)]


def files(root: Path):
    """Every file under ``root``, but the job's own files at DST's top level (manifest,
    config, lock)."""
    rels = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(rel for rel in rels if not ("/" not in rel and rel.startswith("latinhib-")))


def first_image_chunk(path: Path) -> bytes:
    """The fourcc of a WebP file's image chunk: b'VP8L' (lossless) or b'VP8 ' (lossy)."""
    data = path.read_bytes()
    position = 12
    while position + 8 <= len(data):
        fourcc, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        if fourcc in (b"VP8L", b"VP8 "):
            return fourcc
        position += 8 + size + (size & 1)
    raise AssertionError(f"{path}: no image chunk")


def kept(masks: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(masks / f"{rel}.png")) == 255


# -- item 4: multi-page TIFF -------------------------------------------------------------

def test_multi_page_and_float_tiff_are_copied_unchanged_with_a_note_and_a_single_page_one_is_enhanced(tmp_path, checkpoint):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    rng = np.random.default_rng(0)
    pages = [make_image(rng, (64, 48)) for _ in range(3)]
    pages[0].save(src / "pages.tif", save_all=True, append_images=pages[1:])
    make_image(rng, (64, 48)).save(src / "single.tif")
    Image.fromarray(rng.normal(0, 1000, (48, 64)).astype(np.float32)).save(src / "depth.tif")  # mode F
    result = invoke("enhance", src, dst, *args(checkpoint, "--ratio", "1"))
    assert result.exit_code == 0, result.output
    entries = manifest_by_path(dst)
    assert (dst / "pages.tif").read_bytes() == (src / "pages.tif").read_bytes()
    with Image.open(dst / "pages.tif") as out:
        assert out.n_frames == 3
    assert entries["pages.tif"]["status"] == "unchanged" and entries["pages.tif"]["selected"] is True
    assert entries["pages.tif"]["error"] == ("multi-page TIFF with 3 pages: copied unchanged "
                                             "(only single-page images are enhanced)")
    assert entries["single.tif"]["status"] == "enhanced"
    # a float image would lose its values in 8 bits: copied unchanged too
    assert (dst / "depth.tif").read_bytes() == (src / "depth.tif").read_bytes()
    assert entries["depth.tif"]["status"] == "unchanged"
    assert entries["depth.tif"]["error"].startswith("32-bit float TIFF: copied unchanged")


# -- item 5: lossless stays lossless, modes are kept ---------------------------------------

def test_lossless_webp_stays_lossless_and_lossy_webp_stays_lossy(tmp_path, checkpoint):
    src, dst, masks = tmp_path / "src", tmp_path / "dst", tmp_path / "masks"
    src.mkdir()
    rng = np.random.default_rng(1)
    make_image(rng, (80, 60)).save(src / "lossless.webp", lossless=True)
    rgba = make_image(rng, (80, 60)).convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 255, (60, 80), dtype=np.uint8)))
    rgba.save(src / "lossless_alpha.webp", lossless=True, exif=Image.Exif().tobytes())  # extended (VP8X) file
    make_image(rng, (80, 60)).save(src / "lossy.webp", quality=80)
    assert [first_image_chunk(src / n) for n in ("lossless.webp", "lossless_alpha.webp", "lossy.webp")] == \
        [b"VP8L", b"VP8L", b"VP8 "]
    result = invoke("enhance", src, dst, *args(checkpoint, "--ratio", "1", "--save-masks", masks))
    assert result.exit_code == 0, result.output
    entries = manifest_by_path(dst)
    for name in ("lossless.webp", "lossless_alpha.webp"):
        assert entries[name]["status"] == "enhanced"
        assert first_image_chunk(dst / name) == b"VP8L", name
        before = np.asarray(Image.open(src / name))
        after = np.asarray(Image.open(dst / name))
        assert after.shape == before.shape
        keep = kept(masks, name)
        assert 0 < keep.mean() < 1
        assert (after[keep] == before[keep]).all(), name  # lossless: kept pixels are the input's bits
        assert (after[~keep] != before[~keep]).any(), name
    assert first_image_chunk(dst / "lossy.webp") == b"VP8 "


def test_one_bit_and_palette_png_keep_their_mode(tmp_path, checkpoint):
    """A 1-bit PNG stays 1-bit (the blur is thresholded at half, no dithering: see
    encoding.to_pil); a palette PNG stays a palette image with kept pixels exact."""
    src, dst, masks = tmp_path / "src", tmp_path / "dst", tmp_path / "masks"
    src.mkdir()
    rng = np.random.default_rng(2)
    # 1-bit: a fine checkerboard texture (which a blur turns mid-grey) with a solid disc
    yy, xx = np.mgrid[0:60, 0:80]
    checker = ((yy // 2 + xx // 2) % 2).astype(bool)
    disc = (yy - 30) ** 2 + (xx - 40) ** 2 < 15 ** 2
    Image.fromarray(checker | disc).save(src / "onebit.png")
    make_image(rng, (80, 60)).quantize(32).save(src / "palette.png")
    result = invoke("enhance", src, dst, *args(checkpoint, "--ratio", "1", "--save-masks", masks))
    assert result.exit_code == 0, result.output
    for name, mode in (("onebit.png", "1"), ("palette.png", "P")):
        assert manifest_by_path(dst)[name]["status"] == "enhanced"
        with Image.open(src / name) as a, Image.open(dst / name) as b:
            assert (a.mode, b.mode) == (mode, mode)
            before, after = np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))
        keep = kept(masks, name)
        assert 0 < keep.mean() < 1
        assert (after[keep] == before[keep]).all(), name
    with Image.open(dst / "onebit.png") as b:
        after = np.asarray(b)
    # thresholded, not dithered: in the blurred area (kept and disc pixels aside) the fine
    # checkerboard becomes flat, where dithering its mid-grey blur would redraw a pattern
    blurred = ~kept(masks, "onebit.png") & ~disc
    pairs = blurred[:, 1:] & blurred[:, :-1]
    assert pairs.sum() > 100
    changes = after[:, 1:] != after[:, :-1]
    assert changes[pairs].mean() < 0.1 < (checker[:, 1:] != checker[:, :-1])[pairs].mean()


# -- item 6: files latinhib does not enhance ---------------------------------------------

@pytest.fixture()
def dataset(tmp_path) -> Path:
    """Two class folders of images, a GIF, the OTHERS, and a symlinked CSV inside SRC."""
    src = tmp_path / "src"
    rng = np.random.default_rng(3)
    for cls in ("cats", "dogs"):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            make_image(rng, (48, 40)).save(src / cls / f"{i}.png")
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(src / "dogs" / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    for rel, data in OTHERS.items():
        (src / rel).write_bytes(data)
    os.symlink("../labels.csv", src / "cats" / "labels-link.csv")
    return src


def test_other_files_are_copied_byte_for_byte_with_a_note(dataset, tmp_path, checkpoint):
    dst, masks = tmp_path / "dst", tmp_path / "masks"
    result = invoke("enhance", dataset, dst, *args(checkpoint, "--ratio", "1", "--save-masks", masks, "--json"))
    assert result.exit_code == 0, result.output
    assert files(dst) == files(dataset)
    entries = manifest_by_path(dst)
    others = [*OTHERS, "dogs/anim.gif", "cats/labels-link.csv"]
    for rel in others:
        assert (dst / rel).read_bytes() == (dataset / rel).read_bytes(), rel
        assert not (dst / rel).is_symlink()  # a copy of the content, as for images
        assert entries[rel]["status"] == "copied" and entries[rel]["selected"] is False, rel
        assert entries[rel]["error"].startswith("not a format latinhib enhances (")
        assert entries[rel]["error"].endswith("): copied byte for byte")
    assert entries["cats/notes"]["error"] == "not a format latinhib enhances (no extension): copied byte for byte"
    summary = json.loads(result.stdout)
    assert summary["copied"] == len(others) and summary["enhanced"] == 6 and summary["skipped"] == 0
    # masks exist for the enhanced images only; the other files get none
    assert files(masks) == sorted(f"{cls}/{i}.png.png" for cls in ("cats", "dogs") for i in range(3))
    # a rerun finds them done like the images
    again = invoke("enhance", dataset, dst, *args(checkpoint, "--ratio", "1", "--save-masks", masks, "--json"))
    assert json.loads(again.stdout)["already_done"] == len(entries)


def test_images_only_leaves_them_out(dataset, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    result = invoke("enhance", dataset, dst, *args(checkpoint, "--ratio", "0.5", "--images-only"))
    assert result.exit_code == 0, result.output
    entries = manifest_by_path(dst)
    for rel in [*OTHERS, "dogs/anim.gif", "cats/labels-link.csv"]:
        assert not (dst / rel).exists(), rel
        assert entries[rel]["status"] == "skipped" and entries[rel]["selected"] is False
        assert "left out (output.images_only)" in entries[rel]["error"]
    # the config key does the same
    dst2 = tmp_path / "dst2"
    assert invoke("enhance", dataset, dst2, *args(checkpoint, "--set", "output.images_only=true")).exit_code == 0
    assert not (dst2 / "labels.csv").exists()


def test_symlink_and_files_from_rules_apply_to_other_files(dataset, tmp_path, checkpoint):
    outside = tmp_path / "outside.csv"
    outside.write_text("secret\n")
    os.symlink(outside, dataset / "leak.csv")
    dst = tmp_path / "dst"
    assert invoke("enhance", dataset, dst, *args(checkpoint)).exit_code == 0
    assert not (dst / "leak.csv").exists() and "leak.csv" not in manifest_by_path(dst)  # leaves SRC: not listed
    dst2 = tmp_path / "dst2"
    assert invoke("enhance", dataset, dst2, *args(checkpoint, "--follow-symlinks")).exit_code == 0
    assert (dst2 / "leak.csv").read_bytes() == outside.read_bytes()
    # --files-from: a non-image path outside SRC is refused like an image's; one inside is copied
    listing = tmp_path / "list.txt"
    listing.write_text(f"{outside}\n")
    result = invoke("enhance", dataset, tmp_path / "dst3", *args(checkpoint, "--files-from", listing))
    assert result.exit_code == 2 and "is outside SRC" in result.output
    listing.write_text("labels.csv\ncats/0.png\n")
    dst4 = tmp_path / "dst4"
    assert invoke("enhance", dataset, dst4, *args(checkpoint, "--files-from", listing)).exit_code == 0
    assert files(dst4) == ["cats/0.png", "labels.csv"]
    assert (dst4 / "labels.csv").read_bytes() == OTHERS["labels.csv"]


def test_shards_copy_each_other_file_once(dataset, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    for index in range(2):
        result = invoke("enhance", dataset, dst, *args(checkpoint, "--shard", f"{index}/2", "--print-outputs"))
        assert result.exit_code == 0, result.output
        written = {os.path.relpath(line, dst) for line in result.stdout.splitlines()}
        # each shard copies exactly the other files the shard hash gives it
        assert {rel for rel in OTHERS if part_of(rel, 2) == index} == written & set(OTHERS)
    assert invoke("merge", dst, "--quiet").exit_code == 0
    entries = manifest_by_path(dst)
    for rel, data in OTHERS.items():
        assert (dst / rel).read_bytes() == data and entries[rel]["status"] == "copied"


def test_a_src_file_named_like_the_jobs_own_files_is_not_copied_over_them(dataset, tmp_path, checkpoint):
    """SRC that is itself a latinhib DST: its manifest and config must not replace the job's."""
    (dataset / "latinhib-manifest.jsonl").write_text('{"path": "fake"}\n')
    (dataset / "latinhib-config.yaml").write_text("model: {arch: fake}\n")
    (dataset / "cats" / "latinhib-config.yaml").write_text("below the top level: an ordinary file\n")
    dst = tmp_path / "dst"
    assert invoke("enhance", dataset, dst, *args(checkpoint)).exit_code == 0
    entries = manifest_by_path(dst)
    assert "fake" not in entries and "arch: mobilenet_v3_small" in (dst / "latinhib-config.yaml").read_text()
    for rel in ("latinhib-manifest.jsonl", "latinhib-config.yaml"):
        assert entries[rel]["status"] == "skipped" and "file latinhib writes in DST" in entries[rel]["error"]
    assert entries["cats/latinhib-config.yaml"]["status"] == "copied"
