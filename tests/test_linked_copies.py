"""``output.unselected`` end to end (issue 25, item 3): unselected and non-image files are
linked instead of copied in each mode (inode, clone, link target checked), enhanced files
are always new files, the manifest says what was done, and resume, ``--shard`` parts,
``merge`` and the fallback to a copy on another filesystem treat links like copies."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from latinhib.cli import main

ARCH = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(torchvision.models.get_model(ARCH, num_classes=2).state_dict(), path)
    return path


def make_src(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(12):
        folder = root / ("ants" if i % 2 else "bees")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (int(rng.integers(40, 80)), int(rng.integers(40, 80)), 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", quality=90)
    (root / "labels.csv").write_text("file,label\n")
    return root


@pytest.fixture
def src(tmp_path) -> Path:
    return make_src(tmp_path / "src")


def enhance(src: Path, dst: Path, checkpoint: Path, *extra: str):
    args = ["enhance", str(src), str(dst), "--arch", ARCH, "--checkpoint", str(checkpoint), "--device", "cpu",
            "--set", "model.input_size=64", "--ratio", "0.5", "--batch-size", "4", "--quiet", *extra]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def manifest(dst: Path, name: str = "latinhib-manifest.jsonl"):
    return {e["path"]: e for e in map(json.loads, (dst / name).read_text().splitlines())}


def temporaries(root: Path):
    return [p for p in root.rglob("*") if ".latinhib-" in p.name and p.name.endswith(".tmp")]


def check_links(src: Path, dst: Path, entries, mode: str) -> None:
    copied = [rel for rel, e in entries.items() if e["status"] == "copied"]
    enhanced = [rel for rel, e in entries.items() if e["status"] == "enhanced"]
    assert copied and enhanced and "labels.csv" in copied
    for rel in copied:
        assert entries[rel]["link"] == mode
        a, b = src / rel, dst / rel
        assert b.read_bytes() == a.read_bytes()
        if mode == "hardlink":
            assert os.stat(b).st_ino == os.stat(a).st_ino
        elif mode == "symlink":
            assert b.is_symlink() and not os.path.isabs(os.readlink(b)) and os.path.samefile(a, b)
        else:  # copy or reflink: a file of its own
            assert not b.is_symlink() and os.stat(b).st_ino != os.stat(a).st_ino
    for rel in enhanced:  # enhanced images are always new files
        assert not (dst / rel).is_symlink() and os.stat(dst / rel).st_ino != os.stat(src / rel).st_ino
        assert "link" not in entries[rel]
    assert not temporaries(dst)


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_each_link_mode(src, tmp_path, checkpoint, mode):
    result = enhance(src, tmp_path / "dst", checkpoint, "--set", f"output.unselected={mode}")
    assert result.exit_code == 0, result.output
    check_links(src, tmp_path / "dst", manifest(tmp_path / "dst"), mode)


def test_link_unselected_is_hardlink_and_a_rerun_treats_links_as_done(src, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    assert enhance(src, dst, checkpoint, "--link-unselected").exit_code == 0
    check_links(src, dst, manifest(dst), "hardlink")
    again = enhance(src, dst, checkpoint, "--link-unselected", "--json")
    assert json.loads(again.stdout.splitlines()[-1])["already_done"] == 13
    # --overwrite: each link made again onto the same inode leaves no temporary name
    assert enhance(src, dst, checkpoint, "--link-unselected", "--overwrite").exit_code == 0
    check_links(src, dst, manifest(dst), "hardlink")
    assert all(os.stat(src / rel).st_nlink == 2 for rel, e in manifest(dst).items() if e["status"] == "copied")


def test_default_copies_and_records_no_link(src, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    assert enhance(src, dst, checkpoint).exit_code == 0
    entries = manifest(dst)
    assert all("link" not in e for e in entries.values())
    copied = [rel for rel, e in entries.items() if e["status"] == "copied"]
    assert copied and all(os.stat(dst / rel).st_ino != os.stat(src / rel).st_ino for rel in copied)


def test_reflink_on_a_filesystem_without_them_copies_with_one_note(src, tmp_path, checkpoint):
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if fs in ("btrfs", "xfs", "bcachefs", "zfs"):
        pytest.skip(f"tmp_path is on {fs}, which may clone")
    result = enhance(src, tmp_path / "dst", checkpoint, "--set", "output.unselected=reflink")
    assert result.exit_code == 0
    assert result.stderr.count("output.unselected: reflink is not possible here") == 1
    check_links(src, tmp_path / "dst", manifest(tmp_path / "dst"), "copy")


def test_hardlink_to_another_filesystem_copies_with_one_note(src, tmp_path, checkpoint):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the cross-filesystem fallback needs root")
    other = tmp_path / "other"
    other.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "latinhib-test", str(other)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        result = enhance(src, other / "dst", checkpoint, "--link-unselected")
        assert result.exit_code == 0
        assert result.stderr.count("hardlink is not possible here (another filesystem)") == 1
        check_links(src, other / "dst", manifest(other / "dst"), "copy")
    finally:
        subprocess.run(["umount", str(other)])


def test_shards_and_merge_with_links(src, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    for part in ("0/2", "1/2"):
        assert enhance(src, dst, checkpoint, "--link-unselected", "--shard", part).exit_code == 0
    merged = CliRunner().invoke(main, ["merge", str(dst), "--quiet"], catch_exceptions=False)
    assert merged.exit_code == 0, merged.output
    entries = manifest(dst)
    assert len(entries) == 13
    check_links(src, dst, entries, "hardlink")


def test_an_unknown_mode_is_a_config_error(src, tmp_path, checkpoint):
    result = CliRunner().invoke(main, ["enhance", str(src), str(tmp_path / "dst"), "--set", "output.unselected=move"])
    assert result.exit_code != 0 and "output.unselected: 'move' is not allowed" in result.output
    assert not (tmp_path / "dst").exists()
