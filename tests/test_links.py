"""latinhib.links: copies and links of files that are not enhanced, each mode checked on
the filesystem (inode, clone, link target), and the fallback to a copy across
filesystems (a tmpfs mounted for the test when it runs as root; skipped elsewhere)."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from latinhib import links
from latinhib.links import Placer, temp_name


def _write(path: Path, data: bytes = b"pixels\x00\x01" * 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _temps(folder: Path):
    return [p for p in folder.rglob("*") if links.TEMP_MARK in p.name]


def _mount(kind_argv, where: Path):
    where.mkdir()
    result = subprocess.run(kind_argv + [str(where)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount ({result.stderr.strip()})")
    return where


@pytest.fixture
def other_filesystem(tmp_path):
    """A folder on a filesystem other than tmp_path's: a tmpfs mounted for the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the cross-filesystem fallback needs root")
    where = _mount(["mount", "-t", "tmpfs", "-o", "size=16m", "latinhib-test"], tmp_path / "other")
    yield where
    subprocess.run(["umount", str(where)], check=False)


@pytest.fixture
def reflink_filesystem(tmp_path):
    """An XFS image (reflinks on) loop-mounted for the test, where root and mkfs.xfs allow."""
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        pytest.skip("a filesystem with reflinks needs root and mkfs.xfs (xfsprogs) for a loop mount")
    image = tmp_path / "xfs.img"
    with open(image, "wb") as handle:
        handle.truncate(320 << 20)  # sparse: a few MB on disk
    made = subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"mkfs.xfs failed ({made.stderr.strip()})")
    where = _mount(["mount", "-o", "loop", str(image)], tmp_path / "xfs")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def test_copy_is_independent_bytes(tmp_path):
    src = _write(tmp_path / "src" / "cat" / "a.jpg")
    out = tmp_path / "dst" / "cat" / "a.jpg"
    assert Placer("copy").place(str(src), str(out)) == "copy"
    assert out.read_bytes() == src.read_bytes()
    assert os.stat(out).st_ino != os.stat(src).st_ino and not out.is_symlink()
    assert not _temps(tmp_path / "dst")


def test_large_copy_is_whole(tmp_path):
    data = os.urandom(3 << 20) + b"end"
    src = _write(tmp_path / "big.bin", data)
    out = tmp_path / "dst" / "big.bin"
    Placer("copy").place(str(src), str(out))
    assert out.read_bytes() == data


def test_hardlink_shares_the_inode(tmp_path):
    src = _write(tmp_path / "src" / "a.jpg")
    out = tmp_path / "dst" / "a.jpg"
    assert Placer("hardlink").place(str(src), str(out)) == "hardlink"
    assert os.stat(out).st_ino == os.stat(src).st_ino and os.stat(src).st_nlink == 2


def test_hardlink_over_the_same_link_leaves_no_temporary(tmp_path):
    """rename(2) onto another name of the same inode does nothing: the temporary name must
    not be left behind (a rerun with --overwrite)."""
    src = _write(tmp_path / "src" / "a.jpg")
    out = tmp_path / "dst" / "a.jpg"
    placer = Placer("hardlink")
    placer.place(str(src), str(out))
    placer.place(str(src), str(out))
    assert not _temps(tmp_path / "dst") and os.stat(src).st_nlink == 2


def test_symlink_is_relative_and_resolves_to_the_input(tmp_path):
    src = _write(tmp_path / "src" / "cat" / "a.jpg")
    out = tmp_path / "dst" / "cat" / "a.jpg"
    assert Placer("symlink").place(str(src), str(out)) == "symlink"
    assert out.is_symlink() and not os.path.isabs(os.readlink(out))
    assert os.path.samefile(out, src) and out.read_bytes() == src.read_bytes()
    # relative: moving SRC and DST together keeps it working
    shutil.move(str(tmp_path / "src"), str(tmp_path / "moved" / "src"))
    shutil.move(str(tmp_path / "dst"), str(tmp_path / "moved" / "dst"))
    assert (tmp_path / "moved" / "dst" / "cat" / "a.jpg").read_bytes() == b"pixels\x00\x01" * 100


def test_reflink_clones(reflink_filesystem):
    src = _write(reflink_filesystem / "src" / "a.jpg")
    out = reflink_filesystem / "dst" / "a.jpg"
    notes = []
    assert Placer("reflink", note=notes.append).place(str(src), str(out)) == "reflink"
    assert notes == [] and out.read_bytes() == src.read_bytes()
    assert os.stat(out).st_ino != os.stat(src).st_ino  # its own file: editing it leaves SRC alone
    with open(out, "r+b") as handle:
        handle.write(b"X")
    assert src.read_bytes()[:1] == b"p"


def test_reflink_where_the_filesystem_has_none_copies_with_one_note(tmp_path):
    src = _write(tmp_path / "src" / "a.jpg")
    _write(tmp_path / "src" / "b.jpg")
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if fs in ("btrfs", "xfs", "bcachefs", "zfs"):
        pytest.skip(f"tmp_path is on {fs}, which may clone")
    notes = []
    placer = Placer("reflink", note=notes.append)
    assert placer.place(str(src), str(tmp_path / "dst" / "a.jpg")) == "copy"
    assert placer.place(str(tmp_path / "src" / "b.jpg"), str(tmp_path / "dst" / "b.jpg")) == "copy"
    assert len(notes) == 1 and "reflink is not possible here" in notes[0]
    assert (tmp_path / "dst" / "a.jpg").read_bytes() == src.read_bytes() and not _temps(tmp_path / "dst")


def test_hardlink_across_filesystems_copies_with_one_note(tmp_path, other_filesystem):
    srcs = [_write(tmp_path / "src" / f"{n}.jpg", bytes([n]) * 50) for n in range(3)]
    notes = []
    placer = Placer("hardlink", note=notes.append)
    done = [placer.place(str(s), str(other_filesystem / "dst" / s.name)) for s in srcs]
    assert done == ["copy"] * 3
    assert notes == ["output.unselected: hardlink is not possible here (another filesystem): such files are "
                     "copied instead (the manifest's 'link' says which)"]
    assert all((other_filesystem / "dst" / s.name).read_bytes() == s.read_bytes() for s in srcs)
    assert not _temps(other_filesystem)


def test_symlink_across_filesystems_is_a_link(tmp_path, other_filesystem):
    """A symlink can point anywhere: no fallback."""
    src = _write(tmp_path / "src" / "a.jpg")
    out = other_filesystem / "dst" / "a.jpg"
    assert Placer("symlink").place(str(src), str(out)) == "symlink" and os.path.samefile(out, src)


@pytest.mark.parametrize("mode", links.MODES)
def test_a_missing_input_is_named_and_nothing_is_left(tmp_path, mode):
    out = tmp_path / "dst" / "a.jpg"
    with pytest.raises(OSError) as raised:
        Placer(mode).place(str(tmp_path / "gone.jpg"), str(out))
    assert raised.value.errno == errno.ENOENT and os.fsdecode(raised.value.filename) == str(tmp_path / "gone.jpg")
    assert not out.exists() and not _temps(tmp_path / "dst")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="output.unselected: 'move' is not allowed"):
        Placer("move")


def test_temporary_names_are_unique_and_carry_the_pid():
    names = {temp_name("a.jpg") for _ in range(1000)}
    assert len(names) == 1000
    assert all(n.startswith(".a.jpg.latinhib-") and f"-{os.getpid()}-" in f"-{n.split('latinhib-')[1]}" for n in names)
