"""A full disk (or quota, or a read-only file system) under DST, --save-masks or
--save-heatmaps (issue 16): the first such write stops the job with one line naming the
folder, what happened and how far the job got; exit 1; nothing broken under a final name;
the manifest holds exactly what was written; the same command, once there is space again,
finishes the job with the same files as a run that never ran out.

Two ways: a real 4 MB tmpfs, partly filled so the job runs out part-way (needs root and
``mount``; skipped otherwise), and a simulated disk with a byte budget in front of the two
places every byte the job writes goes through (``files.write_all``, ``links.copy_data``),
which runs everywhere."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from latinhib import files, links
from latinhib.cli import main
from latinhib.manifest import Manifest, read_manifest

from helpers import check_no_partial_file, final_files, manifest_by_path, resume_command

DONE = ("enhanced", "copied", "unchanged")


def assert_manifest_is_what_was_written(dst: Path, masks: Path) -> int:
    """Every entry marked done has its complete output (and mask); returns how many."""
    done = [rel for rel, entry in manifest_by_path(dst).items() if entry["status"] in DONE]
    for rel in done:
        with Image.open(dst / rel) as image:
            image.load()
        if manifest_by_path(dst)[rel]["status"] == "enhanced":
            assert (masks / f"{rel}.png").is_file(), rel
    check_no_partial_file(dst, masks)
    return len(done)


def assert_one_stop_line(stderr: str, folder: str, reason: str) -> str:
    # The class folders are no names of the tiny checkpoint's: the job says so once (labels.py).
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("latinhib: target: pred")]
    assert len(lines) == 1, stderr
    [line] = lines
    assert line.startswith(f"latinhib: {folder}: {reason} (writing "), line
    assert "Traceback" not in stderr
    assert line.endswith("then rerun the same command to finish"), line
    return line


def blocks(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


# -- a real small file system -----------------------------------------------------------

@pytest.fixture()
def tmpfs(tmp_path):
    """A 4 MB tmpfs, unmounted afterwards."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("full", ["dst", "masks", "heatmaps"])
def test_a_real_full_disk_stops_once_and_the_rerun_finishes(resume_src, tmp_path, checkpoint, resume_reference,
                                                            tmpfs, full):
    ref_dst, ref_masks = resume_reference
    folders = {name: (tmpfs if name == full else tmp_path) / name for name in ("dst", "masks", "heatmaps")}
    dst, masks, heatmaps = folders["dst"], folders["masks"], folders["heatmaps"]
    argv = resume_command(resume_src, dst, masks, checkpoint, "--save-heatmaps", str(heatmaps))
    # Leave room for about half of what the job writes into the folder on the tmpfs.
    needs = {"dst": blocks(ref_dst), "masks": blocks(ref_masks), "heatmaps": 2 * blocks(ref_masks)}[full]
    free = shutil.disk_usage(tmpfs).free
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * (free - needs // 2))

    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    name = {"dst": "DST", "masks": "--save-masks folder", "heatmaps": "--save-heatmaps folder"}[full]
    line = assert_one_stop_line(proc.stderr, f"{name} '{folders[full]}'", "No space left on device")
    done = assert_manifest_is_what_was_written(dst, masks)
    assert f"stopped after {done} of 36 files" in line
    assert 0 < done < 36
    assert [p.name for p in folders[full].rglob(".*")] == []  # no temporary file left behind

    filler.unlink()  # space again: the same command finishes the job
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert final_files(dst) == final_files(ref_dst)
    assert final_files(masks) == final_files(ref_masks)
    assert list(manifest_by_path(dst)) == list(manifest_by_path(ref_dst))
    assert all(e["status"] in DONE for e in manifest_by_path(dst).values())


# -- a simulated one, everywhere ---------------------------------------------------------

class SmallDisk:
    """A disk that takes ``budget`` more bytes, then fails every write with ``code`` after
    writing what still fits (as a real full disk does)."""

    def __init__(self, budget: float, code: int):
        self.budget = budget
        self.code = code
        self.lock = threading.Lock()
        self.real_write_all = files.write_all
        self.real_copyfile = links.copy_data

    def _take(self, size: int) -> int:
        with self.lock:
            fits = int(min(size, self.budget))
            self.budget -= fits
            return fits

    def _fail(self, path) -> OSError:
        return OSError(self.code, os.strerror(self.code), str(path))

    def write_all(self, fd: int, data: bytes) -> None:
        fits = self._take(len(data))
        self.real_write_all(fd, data[:fits])
        if fits < len(data):
            raise self._fail(f"fd {fd}")

    def copyfile(self, source, target, *args, **kwargs):  # links.copy_data's place
        data = Path(source).read_bytes()
        fits = self._take(len(data))
        if fits == len(data):
            return self.real_copyfile(source, target, *args, **kwargs)
        Path(target).write_bytes(data[:fits])
        raise self._fail(target)


@pytest.mark.parametrize("code, share", [(errno.ENOSPC, 0.2), (errno.EDQUOT, 0.5), (errno.EROFS, 0.9)])
def test_a_simulated_full_disk_stops_once_and_the_rerun_finishes(resume_src, tmp_path, checkpoint,
                                                                 resume_reference, monkeypatch,
                                                                 code, share):
    ref_dst, ref_masks = resume_reference
    dst, masks = tmp_path / "dst", tmp_path / "masks"
    argv = [str(a) for a in resume_command(resume_src, dst, masks, checkpoint)[3:]]  # after "python -m latinhib"
    total = sum(p.stat().st_size for root in (ref_dst, ref_masks) for p in root.rglob("*") if p.is_file())
    disk = SmallDisk(share * total, code)
    monkeypatch.setattr(files, "write_all", disk.write_all)
    monkeypatch.setattr(links, "copy_data", disk.copyfile)

    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    line = assert_one_stop_line(result.stderr, _named(result.stderr, dst, masks), os.strerror(code))
    done = assert_manifest_is_what_was_written(dst, masks) if (dst / "latinhib-manifest.jsonl").exists() else 0
    assert f"stopped after {done} of 36 files" in line or (done == 0 and "before any file" in line)
    assert [p.name for p in dst.rglob(".*")] == [] and [p.name for p in masks.rglob(".*")] == []

    disk.budget = float("inf")  # space again
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert final_files(dst) == final_files(ref_dst)
    assert final_files(masks) == final_files(ref_masks)
    assert list(manifest_by_path(dst)) == list(manifest_by_path(ref_dst))
    assert all(e["status"] in DONE for e in manifest_by_path(dst).values())


def _named(stderr: str, dst: Path, masks: Path) -> str:
    """The folder the stop line names: DST or the masks folder, whichever write ran out."""
    return f"--save-masks folder '{masks}'" if f"--save-masks folder '{masks}'" in stderr else f"DST '{dst}'"


def test_a_manifest_write_that_runs_out_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / "latinhib-manifest.jsonl"
    manifest = Manifest(path)
    manifest.write([{"path": "a.jpg", "status": "copied"}])
    disk = SmallDisk(10, errno.ENOSPC)
    monkeypatch.setattr(files, "write_all", disk.write_all)
    with pytest.raises(files.DestinationUnusable) as caught:
        manifest.write([{"path": "b.jpg", "status": "copied"}, {"path": "c.jpg", "status": "copied"}])
    assert caught.value.path == path and caught.value.errno == errno.ENOSPC
    manifest.close()
    assert path.read_text() == '{"path": "a.jpg", "status": "copied"}\n'
    # what a kill -9 in the middle of a write leaves: cut off when the manifest is opened again
    with open(path, "a") as handle:
        handle.write('{"path": "d.j')
    monkeypatch.undo()
    manifest = Manifest(path)
    manifest.write([{"path": "e.jpg", "status": "copied"}])
    manifest.close()
    assert list(read_manifest(path)) == ["a.jpg", "e.jpg"]
