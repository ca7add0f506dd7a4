"""`latinhib enhance` on WebDataset tar shards, end to end with a tiny checkpoint made
here: shards in give shards out with the same members in the same order (enhanced images
replaced, everything else byte for byte), the result equals the folder job on the same
images, a killed job leaves only whole shards and a rerun finishes it, hostile shards and
members each get one line, shards split over ranks and --shard I/N by input shard, and
folders convert to shards and back."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latinhib.cli import main
from latinhib.distributed import part_of
from latinhib.inhibition import selection_score

from helpers import ARCH, invoke, make_image, manifest_entries, save_checkpoint

TORCHRUN = Path(sys.executable).with_name("torchrun")
SEED = 0  # inhibition.seed's default
MASK_TOLERANCE = 0.01  # as tests/test_distributed.py: batches differ, a few threshold pixels may flip


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_tar(path: Path, members) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(rng, number: int):
    """One sample: an image (JPEG or PNG), then its class and a JSON sidecar."""
    key = f"{number:05d}"
    size = (int(rng.integers(40, 100)), int(rng.integers(40, 100)))
    fmt, ext = ("JPEG", "jpg") if number % 3 else ("PNG", "png")
    return [(f"{key}.{ext}", encoded(make_image(rng, size), fmt)), (f"{key}.cls", str(number % 2).encode()),
            (f"{key}.json", json.dumps({"caption": f"sample {number}"}).encode())]


def make_shards(folder: Path, shards: int, per_shard: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    for s in range(shards):
        members = [m for k in range(per_shard) for m in sample_members(rng, s * per_shard + k)]
        paths.append(write_tar(folder / f"train-{s:06d}.tar", members))
    return paths


def members(path: Path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """This module's own checkpoint, two outputs (conftest's has three): MASK_TOLERANCE, how
    far another batch composition may move a mask, was measured on this one."""
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", num_classes=2)


def base_args(checkpoint: Path, *extra):
    return ["--arch", ARCH, "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0",
            "--batch-size", "4", "--set", "model.input_size=64", "--quiet", *map(str, extra)]


@pytest.fixture(scope="module")
def shards_src(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards") / "src"
    make_shards(folder, 4, 6)
    return folder


def test_shards_in_give_the_same_members_in_the_same_order_and_copies_byte_for_byte(shards_src, checkpoint, tmp_path):
    dst = tmp_path / "out"
    result = invoke("enhance", str(shards_src / "train-{000000..000003}.tar"), dst, *base_args(checkpoint),
                    "--ratio", "0.5", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    lines = {e["path"]: e for e in manifest_entries(dst)}
    assert len(lines) == 24 and summary["total"] == 24
    enhanced = 0
    for s in range(4):
        name = f"train-{s:06d}.tar"
        before, after = members(shards_src / name), members(dst / name)
        assert [n for n, _ in after] == [n for n, _ in before]
        for (member, old), (_, new) in zip(before, after):
            rel = f"{name}/{member.split('.')[0]}"
            selected = selection_score(SEED, rel) < 0.5
            assert lines[rel]["selected"] == selected
            if member.endswith((".jpg", ".png")) and selected:
                assert lines[rel]["status"] == "enhanced" and new != old
                assert Image.open(io.BytesIO(new)).size == Image.open(io.BytesIO(old)).size
                enhanced += 1
            else:  # unselected images and every sidecar
                assert new == old, member
    assert enhanced == summary["enhanced"] > 0 and summary["copied"] == 24 - enhanced
    # A rerun finds every shard done.
    again = invoke("enhance", str(shards_src), dst, *base_args(checkpoint), "--ratio", "0.5", "--json")
    assert json.loads(again.output.splitlines()[-1])["already_done"] == 24


def test_the_shard_job_equals_the_folder_job_on_the_same_images(shards_src, checkpoint, tmp_path):
    """Every image enhanced (r = 1, so both jobs select every key): pixels equal where the
    masks agree, masks agree almost everywhere, sidecars byte for byte."""
    folder = tmp_path / "folder"
    folder.mkdir()
    for tar in sorted(shards_src.glob("*.tar")):
        for name, data in members(tar):
            (folder / name).write_bytes(data)
    fdst, fmasks, sdst, smasks = (tmp_path / n for n in ("fdst", "fmasks", "sdst", "smasks"))
    # --target pred: the shards' .cls would be their label (the flat folder has none).
    assert invoke("enhance", folder, fdst, *base_args(checkpoint), "--ratio", "1", "--target", "pred",
                  "--save-masks", fmasks).exit_code == 0
    assert invoke("enhance", shards_src, sdst, *base_args(checkpoint), "--ratio", "1", "--target", "pred",
                  "--save-masks", smasks).exit_code == 0
    for tar in sorted(sdst.glob("*.tar")):
        for name, data in members(tar):
            key = name.split(".")[0]
            if not name.endswith((".jpg", ".png")):
                assert data == (folder / name).read_bytes()
                continue
            shard_mask = np.asarray(Image.open(smasks / tar.name / f"{key}.png")) > 127
            folder_mask = np.asarray(Image.open(fmasks / f"{name}.png")) > 127
            assert (shard_mask != folder_mask).mean() <= MASK_TOLERANCE
            ours = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            theirs = np.asarray(Image.open(fdst / name).convert("RGB"))
            agree = shard_mask == folder_mask
            if name.endswith(".png"):  # lossless: exact where the masks agree
                assert (ours[agree] == theirs[agree]).all()
            else:  # JPEG blocks straddle a flipped pixel; equal bytes when the masks are equal
                assert agree.all() and data == (fdst / name).read_bytes() or agree.mean() >= 1 - MASK_TOLERANCE


def hostile_shards(folder: Path):
    rng = np.random.default_rng(3)
    folder.mkdir()
    good = sample_members(rng, 0)
    write_tar(folder / "a-000000.tar", good + [("00001.jpg", b""), ("00001.cls", b"1"),
                                               ("00002.jpg", b"this is not an image"),
                                               ("00003.jpg", good[0][1][: len(good[0][1]) // 2]),
                                               ("00004.txt", b"a caption and no image")]
              + sample_members(rng, 5))
    (folder / "a-000001.tar").write_bytes(b"")
    (folder / "a-000002.tar").write_bytes(b"PK\x03\x04 a zip, not a tar" * 30)
    whole = write_tar(folder / "a-000003.tar", sample_members(rng, 6) + sample_members(rng, 7)).read_bytes()
    with tarfile.open(folder / "a-000003.tar") as tar:
        cut = tar.getmember("00007.jpg").offset_data + 10
    (folder / "a-000003.tar").write_bytes(whole[:cut])  # a truncated final shard


def test_hostile_members_and_shards_each_get_one_line_and_the_rest_goes_on(checkpoint, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    hostile_shards(src)
    proc = subprocess.run([sys.executable, "-m", "latinhib", "enhance", str(src), str(dst),
                           *base_args(checkpoint, "--ratio", "1")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("latinhib: ") and "files:" not in line]
    # Some samples have a .cls, 00002 has none: the job says once that it explains the top-1.
    fallback = [line for line in lines if line.startswith("latinhib: target: pred")]
    assert len(fallback) == 1 and "a-000000.tar/00002" in fallback[0], lines
    lines = [line for line in lines if line not in fallback]
    expected = {
        "a-000000.tar/00001": "empty file (0 bytes)",
        "a-000000.tar/00002": "cannot decode",
        "a-000000.tar/00003": "cannot decode",
        "a-000000.tar/00004": "no image member",
        "a-000001.tar": "empty file",
        "a-000002.tar": "not a tar file",
        "a-000003.tar/00007": "truncated: member '00007.jpg' has 10 of",
    }
    assert len(lines) == len(expected), lines
    for rel, cause in expected.items():
        assert sum(line.startswith(f"latinhib: {rel}: ") and cause in line for line in lines) == 1, (rel, lines)
    entries = {e["path"]: e for e in manifest_entries(dst)}
    assert {rel for rel, e in entries.items() if e["status"] == "failed"} == set(expected) - {"a-000000.tar/00004"}
    assert entries["a-000000.tar/00004"]["status"] == "copied"
    assert entries["a-000000.tar/00000"]["status"] == entries["a-000000.tar/00005"]["status"] == "enhanced"
    # The good and the broken samples of a shard all stay in its output shard, in order.
    assert [n for n, _ in members(dst / "a-000000.tar")] == [n for n, _ in members(src / "a-000000.tar")]
    out = dict(members(dst / "a-000000.tar"))
    for name, data in members(src / "a-000000.tar"):
        if name not in ("00000.png", "00005.jpg"):  # the two enhanced images
            assert out[name] == data, name
    assert [n for n, _ in members(dst / "a-000003.tar")] == [n for n, _ in sample_members(np.random.default_rng(0), 6)]
    assert not (dst / "a-000001.tar").exists() and not (dst / "a-000002.tar").exists()


def final_files(root: Path):
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_kill_9_at_random_points_then_rerun_equals_an_uninterrupted_run(checkpoint, tmp_path):
    src = tmp_path / "src"
    make_shards(src, 6, 8, seed=1)
    command = [sys.executable, "-m", "latinhib", "enhance", str(src), "DST", *base_args(checkpoint, "--ratio", "0.5")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run([c if c != "DST" else str(reference) for c in command], check=True, env=env, timeout=300)
    dst = tmp_path / "dst"
    rng = random.Random(0)
    kills = 0
    for _ in range(6):
        process = subprocess.Popen([c if c != "DST" else str(dst) for c in command], env=env,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 6.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        for path in dst.glob("*.tar"):  # whatever has a final name is a whole shard
            assert [n for n, _ in members(path)] == [n for n, _ in members(reference / path.name)]
    assert kills >= 1
    proc = subprocess.run([c if c != "DST" else str(dst) for c in command], env=env, timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert final_files(dst) == final_files(reference)
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]  # no temporary left
    for path in sorted(reference.glob("*.tar")):
        theirs, ours = members(path), members(dst / path.name)
        assert [n for n, _ in ours] == [n for n, _ in theirs]
        for (name, a), (_, b) in zip(theirs, ours):
            rel = f"{path.name}/{name.split('.')[0]}"
            if not (name.endswith((".jpg", ".png")) and selection_score(SEED, rel) < 0.5):
                assert a == b, name  # copies byte for byte
    assert {e["path"]: e["status"] for e in manifest_entries(dst)} == {e["path"]: e["status"] for e in manifest_entries(reference)}


def assert_same_job(reference: Path, dst: Path, masks_a: Path, masks_b: Path) -> None:
    """Same entries in the same order (statuses, selection, predictions; kept fractions
    and thresholds within the float noise of other batch compositions), same shards with
    the same members, copies byte for byte, enhanced images with masks that agree and,
    where the masks are equal, the same bytes."""
    ours, theirs = manifest_entries(dst), manifest_entries(reference)
    assert [e["path"] for e in ours] == [e["path"] for e in theirs]
    for a, b in zip(ours, theirs):
        assert (a["status"], a["selected"], a.get("predicted_index")) == (b["status"], b["selected"], b.get("predicted_index"))
        if b["status"] == "enhanced":
            assert abs(a["kept_fraction"] - b["kept_fraction"]) <= MASK_TOLERANCE
            assert abs(a["threshold"] - b["threshold"]) <= 1e-4
    assert final_files(dst) == final_files(reference)
    status = {e["path"]: e["status"] for e in theirs}
    for path in sorted(reference.glob("*.tar")):
        for (name, x), (name_b, y) in zip(members(path), members(dst / path.name)):
            assert name == name_b
            key = name.split(".")[0]
            if name.endswith((".jpg", ".png")) and status.get(f"{path.name}/{key}") == "enhanced":
                mask_a = np.asarray(Image.open(masks_a / path.name / f"{key}.png"))
                mask_b = np.asarray(Image.open(masks_b / path.name / f"{key}.png"))
                assert (mask_a != mask_b).mean() <= MASK_TOLERANCE
                assert (mask_a != mask_b).any() or x == y, name
            else:
                assert x == y, name


def test_shard_i_of_n_splits_by_input_shard_and_merge_equals_one_process(shards_src, checkpoint, tmp_path):
    single, dst, masks_a, masks_b = (tmp_path / n for n in ("single", "dst", "masks_a", "masks_b"))
    assert invoke("enhance", shards_src, single, *base_args(checkpoint), "--ratio", "0.5",
                  "--save-masks", masks_a).exit_code == 0
    for i in range(3):
        assert invoke("enhance", shards_src, dst, *base_args(checkpoint), "--ratio", "0.5", "--shard", f"{i}/3",
                      "--save-masks", masks_b).exit_code == 0
        part = [json.loads(x) for x in (dst / f"latinhib-manifest.part-{i}-of-3.jsonl").read_text().splitlines()]
        assert all(part_of(e["path"].split("/")[0], 3) == i for e in part)
    assert invoke("merge", dst).exit_code == 0
    assert_same_job(single, dst, masks_a, masks_b)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this Python")
def test_torchrun_two_ranks_over_four_shards_equal_one_process(shards_src, checkpoint, tmp_path):
    single, dst, masks_a, masks_b = (tmp_path / n for n in ("single", "dst", "masks_a", "masks_b"))
    assert invoke("enhance", shards_src, single, *base_args(checkpoint), "--ratio", "0.5",
                  "--save-masks", masks_a).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "latinhib", "enhance",
                           str(shards_src), str(dst),
                           *base_args(checkpoint, "--ratio", "0.5", "--json", "--save-masks", masks_b)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    owners = {part_of(f"train-{s:06d}.tar", 2) for s in range(4)}
    assert owners == {0, 1}  # both ranks had shards to write
    assert not list(dst.glob("latinhib-manifest.part-*"))  # rank 0 merged them
    assert_same_job(single, dst, masks_a, masks_b)


def test_a_folder_becomes_shards_and_shards_become_a_folder(shards_src, checkpoint, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    names = []
    for tar in sorted(shards_src.glob("*.tar"))[:2]:
        for name, data in members(tar):
            (folder / name).write_bytes(data)
            names.append(name)
    out = tmp_path / "out"
    result = invoke("enhance", folder, out, *base_args(checkpoint), "--ratio", "0.5", "--output-format", "webdataset",
                    "--shard-size", "5", "--json")
    assert result.exit_code == 0, result.output
    shards = sorted(out.glob("*.tar"))
    assert [p.name for p in shards] == ["photos-000000.tar", "photos-000001.tar", "photos-000002.tar"]  # 12 keys / 5
    written = [m for p in shards for m in members(p)]
    assert [n for n, _ in written] == sorted(names)  # sidecars too: files latinhib does not enhance are copied
    for name, data in written:
        selected = name.endswith((".jpg", ".png")) and selection_score(SEED, name) < 0.5
        assert (data != (folder / name).read_bytes()) == selected, name
    # ... and back: shards -> a folder per shard
    back = tmp_path / "back"
    assert invoke("enhance", out, back, *base_args(checkpoint), "--ratio", "0", "--output-format", "folder").exit_code == 0
    for path in shards:
        for name, data in members(path):
            assert (back / path.name[: -len(".tar")] / name).read_bytes() == data


def test_a_pipe_source_is_read_like_a_file_and_leaves_no_spool(shards_src, checkpoint, tmp_path):
    dst, reference = tmp_path / "dst", tmp_path / "reference"
    pattern = f"pipe:cat {shards_src}/train-{{000000..000001}}.tar"
    assert invoke("enhance", pattern, dst, *base_args(checkpoint), "--ratio", "0.5").exit_code == 0
    assert invoke("enhance", str(shards_src / "train-{000000..000001}.tar"), reference, *base_args(checkpoint),
                  "--ratio", "0.5").exit_code == 0
    assert final_files(dst) == final_files(reference)
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]
    for path in sorted(reference.glob("*.tar")):
        assert members(dst / path.name) == members(path)


def test_bad_format_options_are_usage_errors(shards_src, checkpoint, tmp_path):
    result = CliRunner().invoke(main, ["enhance", str(shards_src), str(tmp_path / "o"), *base_args(checkpoint),
                                       "--shard-size", "3"])
    assert result.exit_code == 2 and "--shard-size is for a folder SRC" in result.output
    result = CliRunner().invoke(main, ["enhance", str(tmp_path / "missing-{0..3}.tar"), str(tmp_path / "o"),
                                       *base_args(checkpoint)])
    assert result.exit_code == 2 and "no such shard" in result.output
    assert not (tmp_path / "o").exists()
