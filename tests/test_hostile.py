"""Hostile and odd inputs (issue 4): one corpus, generated here, of every kind of broken or
unusual file a real dataset holds. Each file either becomes a correct output or gets one
line on stderr naming it and the cause plus a manifest line with the error, the job goes
on, the summary counts the failures and the exit code is 1. ``--strict`` stops at the
first bad file. Nothing is written outside DST: ``--files-from`` paths outside SRC and
symlinks that leave SRC are refused unless ``--follow-symlinks``."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latinhib.cli import main
from helpers import ARCH, manifest_by_path

ROOT = os.geteuid() == 0
NON_UTF8 = os.fsdecode(b"caf\xe9-latin1.png")  # a Latin-1 name: not valid UTF-8

#: file -> the start of its error (after "latinhib: <file>: ").
FAILS = {
    "zero.jpg": "empty file (0 bytes)",
    "truncated.jpg": "cannot decode: image file is truncated",
    "text.jpg": "cannot decode: cannot identify image file",
    "badcrc.png": "cannot decode: ",
    "bomb.png": "refused as a decompression bomb",
    "loop_a.jpg": "symlink loop",
    "loop_b.jpg": "symlink loop",
    "broken.jpg": "no such file (a broken symlink?)",
}
if not ROOT:  # root reads a mode-000 file anyway; see test_unreadable_file_fails_with_its_cause
    FAILS["unreadable.png"] = "permission denied"
#: file -> (mode of the output, (W, H)).
GOOD = {
    "ok.jpg": ("RGB", (80, 60)),
    "cmyk.jpg": ("CMYK", (64, 48)),
    "gray16.png": ("I;16", (50, 40)),
    "palette.png": ("RGBA", (50, 40)),  # palette + transparency -> RGBA, alpha kept
    "opaque_palette.png": ("P", (50, 40)),  # a palette without transparency stays a palette
    "onebit.png": ("1", (50, 40)),  # 1-bit stays 1-bit
    "rotated.jpg": ("RGB", (40, 60)),  # EXIF orientation 6 applied: 60x40 stored -> 40x60
    "one.png": ("RGB", (1, 1)),
    NON_UTF8: ("RGB", (40, 30)),
}
if ROOT:
    GOOD["unreadable.png"] = ("RGB", (40, 30))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """69 bytes that claim a width x height RGB image (Pillow's decompression-bomb case)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def build_corpus(root: Path) -> None:
    rng = np.random.default_rng(0)

    def texture(w, h):
        return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))

    root.mkdir(parents=True)
    buffer = io.BytesIO()
    texture(80, 60).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    (root / "ok.jpg").write_bytes(jpeg)
    (root / "zero.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "text.jpg").write_text("hello, I am not a JPEG\n")
    buffer = io.BytesIO()
    texture(40, 30).save(buffer, "PNG")
    png = buffer.getvalue()
    broken = bytearray(png)
    broken[29] ^= 0xFF  # the IHDR chunk's CRC (8 signature + 4 length + 4 type + 13 data)
    (root / "badcrc.png").write_bytes(bytes(broken))
    (root / "bomb.png").write_bytes(bomb_png(100_000, 100_000))
    texture(64, 48).convert("CMYK").save(root / "cmyk.jpg", "JPEG", quality=90)
    Image.fromarray(np.linspace(0, 65535, 40 * 50).reshape(40, 50).astype(np.uint16)).save(root / "gray16.png")
    texture(50, 40).quantize(16).save(root / "palette.png", transparency=0)
    texture(50, 40).quantize(16).save(root / "opaque_palette.png")
    texture(50, 40).convert("1").save(root / "onebit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    texture(60, 40).save(root / "rotated.jpg", "JPEG", exif=exif.tobytes(), quality=90)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "one.png")
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(root / "anim.webp", save_all=True, append_images=frames[1:], duration=100, loop=0)
    (root / "unreadable.png").write_bytes(png)
    os.chmod(root / "unreadable.png", 0)
    (root / NON_UTF8).write_bytes(png)
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    os.symlink("missing.jpg", root / "broken.jpg")


@pytest.fixture()
def corpus(tmp_path) -> Path:
    build_corpus(tmp_path / "src")
    yield tmp_path / "src"
    os.chmod(tmp_path / "src" / "unreadable.png", 0o644)


def args(checkpoint, *extra):
    return ["--arch", ARCH, "--checkpoint", str(checkpoint), "--device", "cpu", "--batch-size", "4",
            "--set", "model.input_size=64", "--ratio", "1", "--quiet", *map(str, extra)]


def cli(*argv, stdin=None):
    # Strict UTF-8 stdio, as under a desktop's en_US.UTF-8 locale (a C locale would let
    # Python escape undecodable names by itself and hide a text-mode write).
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    return subprocess.run([sys.executable, "-m", "latinhib", *map(str, argv)], capture_output=True,
                          input=stdin, timeout=300, env=env)


def test_every_hostile_file_becomes_an_output_or_one_error_line(corpus, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    # workers 2: decoding failures cross the DataLoader's process boundary.
    proc = cli("enhance", corpus, dst, *args(checkpoint, "--workers", "2", "--print0", "--json"))
    assert proc.returncode == 1, proc.stderr.decode(errors="replace")
    stderr = proc.stderr.decode("utf-8").splitlines()
    assert "Traceback" not in proc.stderr.decode("utf-8")
    # one line per bad file, naming it and the cause
    assert len(stderr) == len(FAILS), stderr
    for name, cause in FAILS.items():
        [line] = [s for s in stderr if s.startswith(f"latinhib: {name}: ")]
        assert line[len(f"latinhib: {name}: "):].startswith(cause), line
    entries = manifest_by_path(dst)
    listed = set(os.listdir(corpus))
    assert set(entries) == listed  # one manifest line per input, the bad ones included
    for name, cause in FAILS.items():
        assert entries[name]["status"] == "failed" and entries[name]["error"].startswith(cause)
    # stdout: the NUL-separated output paths, then the JSON summary, nothing else
    *paths, summary = proc.stdout.split(b"\0")
    summary = json.loads(summary)
    assert summary["failed"] == len(FAILS) and summary["total"] == len(listed)
    assert summary["enhanced"] == len(GOOD) and summary["unchanged"] == 1 and summary["copied"] == 1
    assert summary["skipped"] == 0
    assert sorted(paths) == sorted(os.fsencode(dst / n) for n in [*GOOD, "anim.webp", "anim.gif"])
    # the good files are correct outputs: they decode, at the right size and mode
    for name, (mode, size) in GOOD.items():
        with Image.open(dst / name) as out:
            out.load()
            assert (out.mode, out.size) == (mode, size), name
        assert entries[name]["status"] == "enhanced"
    with Image.open(dst / "rotated.jpg") as out:
        assert out.getexif().get(0x0112) in (None, 1)  # not rotated a second time by viewers
    # an animation is copied byte for byte, with a note; so is a GIF, a format latinhib does not enhance
    assert (dst / "anim.webp").read_bytes() == (corpus / "anim.webp").read_bytes()
    assert entries["anim.webp"]["status"] == "unchanged" and "animated WEBP" in entries["anim.webp"]["error"]
    assert (dst / "anim.gif").read_bytes() == (corpus / "anim.gif").read_bytes()
    assert entries["anim.gif"]["status"] == "copied" and entries["anim.gif"]["selected"] is False
    assert entries["anim.gif"]["error"] == "not a format latinhib enhances (.gif): copied byte for byte"
    # DST holds the outputs and the job's two files, nothing else (no temporaries)
    assert set(os.listdir(dst)) == {*GOOD, "anim.webp", "anim.gif", "latinhib-manifest.jsonl", "latinhib-config.yaml"}


def test_rerun_retries_only_the_failures(corpus, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    first = CliRunner().invoke(main, ["enhance", str(corpus), str(dst), *args(checkpoint, "--workers", "0")])
    assert first.exit_code == 1
    again = CliRunner().invoke(main, ["enhance", str(corpus), str(dst), *args(checkpoint, "--workers", "0", "--json")])
    summary = json.loads(again.stdout)
    assert again.exit_code == 1 and summary["failed"] == len(FAILS)
    assert summary["already_done"] == len(GOOD) + 2  # and the two copied animations


def test_unreadable_file_fails_with_its_cause(tmp_path, checkpoint, monkeypatch):
    """Permission denied, in-process so it also holds when the tests run as root (root
    reads a mode-000 file): the open that Pillow makes is refused like the kernel would."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(src / "fine.png")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(src / "secret.png")
    os.chmod(src / "secret.png", 0)
    real_open = open

    def guarded_open(file, *a, **k):
        if str(file).endswith("secret.png"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", guarded_open)
    result = CliRunner().invoke(main, ["enhance", str(src), str(dst), *args(checkpoint, "--workers", "0")])
    monkeypatch.undo()
    os.chmod(src / "secret.png", 0o644)
    assert result.exit_code == 1
    assert result.stderr.strip() == "latinhib: secret.png: permission denied"
    assert manifest_by_path(dst)["secret.png"]["error"] == "permission denied"
    assert manifest_by_path(dst)["fine.png"]["status"] == "enhanced"


def test_strict_stops_at_the_first_bad_file(corpus, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    result = CliRunner().invoke(main, ["enhance", str(corpus), str(dst),
                                       *args(checkpoint, "--workers", "0", "--batch-size", "1", "--strict")])
    assert result.exit_code == 1
    # listing order is sorted: anim.gif (copied), anim.webp (copied unchanged), badcrc.png
    assert result.stderr.splitlines() == [result.stderr.splitlines()[0]]
    assert result.stderr.startswith("latinhib: badcrc.png: cannot decode: ")
    entries = manifest_by_path(dst)
    assert entries["badcrc.png"]["status"] == "failed"
    assert "zero.jpg" not in entries and not (dst / "rotated.jpg").exists()  # nothing after it ran


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # 108 MP: warned, not refused
def test_12000x9000_image_is_enhanced_at_full_size(tmp_path, checkpoint):
    """108 megapixels: over Pillow's warning limit, under its bomb limit, so it is a real
    image and is enhanced at its own size (solid colour: ~0.3 MB to create)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    Image.new("RGB", (12000, 9000), (30, 120, 200)).save(src / "huge.png", compress_level=1)
    result = CliRunner().invoke(main, ["enhance", str(src), str(dst), *args(checkpoint, "--workers", "0")])
    assert result.exit_code == 0, result.output
    assert manifest_by_path(dst)["huge.png"]["status"] in ("enhanced", "unchanged")
    with Image.open(dst / "huge.png") as out:
        assert out.size == (12000, 9000)
        out.load()
        assert out.getextrema() == ((30, 30), (120, 120), (200, 200))  # the blur of a constant is the constant


def test_symlinks_leaving_src_are_not_followed_unless_asked(tmp_path, checkpoint):
    src, outside = tmp_path / "src", tmp_path / "outside"
    src.mkdir()
    outside.mkdir()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(src / "inside.png")
    Image.new("RGB", (20, 20), (9, 9, 9)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", src / "link.png")
    os.symlink(outside, src / "linkdir")
    os.symlink("inside.png", src / "alias.png")  # inside SRC: followed
    dst = tmp_path / "dst"
    result = CliRunner().invoke(main, ["enhance", str(src), str(dst), *args(checkpoint, "--workers", "0")])
    assert result.exit_code == 0
    assert set(manifest_by_path(dst)) == {"inside.png", "alias.png"}
    assert not (dst / "link.png").exists() and not (dst / "linkdir").exists()
    dst2 = tmp_path / "dst2"
    result = CliRunner().invoke(main, ["enhance", str(src), str(dst2),
                                       *args(checkpoint, "--workers", "0", "--follow-symlinks")])
    assert result.exit_code == 0
    assert set(manifest_by_path(dst2)) == {"inside.png", "alias.png", "link.png", "linkdir/secret.png"}
    assert (dst2 / "linkdir" / "secret.png").is_file() and not (dst2 / "linkdir").is_symlink()


@pytest.mark.parametrize("line, why", [
    ("../outside/secret.png", "is outside SRC"),
    ("{outside}/secret.png", "is outside SRC"),
    ("sub/../../outside/secret.png", "is outside SRC"),
    ("link.png", "is a symlink to outside SRC"),
])
def test_files_from_refuses_paths_outside_src(tmp_path, checkpoint, line, why):
    src, outside, dst = tmp_path / "src", tmp_path / "outside", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (20, 20)).save(src / "ok.png")
    Image.new("RGB", (20, 20)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", src / "link.png")
    text = f"ok.png\n{line.format(outside=outside)}\n"
    result = CliRunner().invoke(main, ["enhance", str(src), str(dst), *args(checkpoint, "--workers", "0"),
                                       "--files-from", "-"], input=text)
    assert result.exit_code == 2
    assert result.output.strip().startswith("Error: --files-from line 2: ") and why in result.output
    assert not dst.exists()


def test_files_from_stdin_and_print_outputs_in_a_pipe(tmp_path, checkpoint):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a").mkdir(parents=True)
    for name in ("a/1.png", "a/2.jpg", "3.png", NON_UTF8):
        Image.new("RGB", (24, 24), (50, 60, 70)).save(src / name, format="PNG" if name.endswith("png") else "JPEG")
    wanted = ["a/1.png", str(src / "3.png"), NON_UTF8]  # relative, absolute inside SRC, non-UTF-8
    proc = cli("enhance", src, dst, *args(checkpoint, "--workers", "0", "--ratio", "0.5", "--target", "pred", "--files-from", "-",
                                          "--print-outputs"),
               stdin=b"".join(os.fsencode(p) + b"\n" for p in wanted))
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == sorted(os.fsencode(dst / p) for p in ("a/1.png", "3.png", NON_UTF8))
    assert proc.stderr == b""
    assert not (dst / "a" / "2.jpg").exists()


def test_unselected_files_are_copied_undecoded_and_unreadable_ones_named(corpus, tmp_path, checkpoint):
    """ratio 0: nothing is decoded, so a corrupt but readable file is copied byte for byte
    (it is not latinhib's to judge); a file that cannot even be read fails with its cause."""
    dst = tmp_path / "dst"
    result = CliRunner().invoke(main, ["enhance", str(corpus), str(dst),
                                       *args(checkpoint, "--workers", "0", "--ratio", "0")])
    assert result.exit_code == 1
    assert sorted(result.stderr.splitlines()) == [
        "latinhib: broken.jpg: no such file (a broken symlink?)",
        "latinhib: loop_a.jpg: symlink loop",
        "latinhib: loop_b.jpg: symlink loop",
    ]
    for name in ("zero.jpg", "truncated.jpg", "text.jpg", "bomb.png", "anim.webp"):
        assert (dst / name).read_bytes() == (corpus / name).read_bytes()
