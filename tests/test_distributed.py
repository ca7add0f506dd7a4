"""One job over several processes: a real ``torchrun --nproc-per-node 2`` (gloo, CPU) and
``--shard I/3`` runs plus ``latinhib merge`` give the same outputs and manifest as one
process, every file is written by exactly one process, failures on any rank reach the
exit code, and a rerun of one shard alone completes its share."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latinhib.data import list_folder
from latinhib.distributed import Part, parse_part, part_of, split
from latinhib.manifest import listing_key
from latinhib.inhibition import selection_score

from helpers import ARCH, invoke, make_image, manifest_entries, save_checkpoint

CLASSES = ("ants", "bees")
TORCHRUN = Path(sys.executable).with_name("torchrun")
#: Shards batch other images together than a single process does; float results of a
#: conv over another batch size differ in the last bits, so a few mask pixels right at
#: the threshold may flip. Measured here: identical; allowed: 1% of the pixels.
MASK_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """This module's own checkpoint, two outputs (conftest's has three): MASK_TOLERANCE, how
    far another batch composition may move a mask, was measured on this one."""
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", num_classes=2)


def broken_name(owner: int, count: int) -> str:
    """A file name owned by shard ``owner`` of ``count``."""
    return next(n for n in (f"bees/broken{i}.jpg" for i in range(100)) if part_of(n, count) == owner)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """20 images in two class folders and the root, a text file, and a corrupt JPEG that
    rank 1 of 2 owns (so rank 0 learns of the failure only through the group)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("src")
    for n in range(20):
        folder = root / (CLASSES[n % 2] if n < 16 else "")
        folder.mkdir(parents=True, exist_ok=True)
        image = make_image(rng, (int(rng.integers(40, 90)), int(rng.integers(40, 90))))
        image.save(folder / f"img{n:02d}.{'png' if n % 3 else 'jpg'}")
    (root / "notes.txt").write_text("not an image")
    (root / broken_name(1, 2)).write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def base_args(checkpoint: Path):
    return ["--arch", ARCH, "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0",
            "--batch-size", "4", "--set", "model.input_size=64", "--set", "runtime.threads=1",
            "--ratio", "0.6", "--quiet"]


def outputs(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not p.name.startswith("latinhib-"))


@pytest.fixture(scope="module")
def single(src, checkpoint, tmp_path_factory):
    """The reference: one process, with masks."""
    dst = tmp_path_factory.mktemp("single")
    result = invoke("enhance", src, dst / "out", *base_args(checkpoint), "--save-masks", dst / "masks", "--json")
    assert result.exit_code == 1  # the corrupt JPEG
    return dst


def assert_same_as_single(single: Path, dst: Path, masks: Path) -> None:
    reference, merged = manifest_entries(single / "out"), manifest_entries(dst)
    # same inputs, same listing order, same selection and outcome
    assert [e["path"] for e in merged] == [e["path"] for e in reference]
    assert outputs(dst) == outputs(single / "out")
    assert "notes.txt" in outputs(dst)  # a file latinhib does not enhance is copied by the rank that owns it
    enhanced = 0
    for ref, entry in zip(reference, merged):
        assert (entry["status"], entry["selected"], entry["target"]) == (ref["status"], ref["selected"], ref["target"])
        rel = ref["path"]
        if ref["status"] == "copied":
            assert (dst / rel).read_bytes() == (single / "out" / rel).read_bytes()
        if ref["status"] == "enhanced":
            enhanced += 1
            assert entry["predicted_index"] == ref["predicted_index"]
            assert abs(entry["kept_fraction"] - ref["kept_fraction"]) <= MASK_TOLERANCE
            a = np.asarray(Image.open(single / "masks" / f"{rel}.png"))
            b = np.asarray(Image.open(masks / f"{rel}.png"))
            assert (a != b).mean() <= MASK_TOLERANCE
    assert enhanced >= 5


def test_shard_hash_partitions_and_is_independent_of_the_selection():
    paths = [f"class{i % 7}/image_{i:05d}.jpg" for i in range(4000)]
    owners = [part_of(p, 3) for p in paths]
    assert all(Part(o, 3).owns(p) and sum(Part(i, 3).owns(p) for i in range(3)) == 1 for p, o in zip(paths, owners))
    for index in range(3):
        mine = [p for p, o in zip(paths, owners) if o == index]
        assert abs(len(mine) / len(paths) - 1 / 3) < 0.03
        # the selection (r = 0.5) is as frequent inside a shard as overall: uncorrelated hashes
        assert abs(np.mean([selection_score(0, p) < 0.5 for p in mine]) - 0.5) < 0.05


def test_torchrun_ranks_split_exactly_the_shard_given():
    paths = [f"d{i % 5}/f{i}.png" for i in range(600)]
    for rel in paths:
        assert split(None, part_of(rel, 4), 4).owns(rel)
        for index in range(3):
            owners = [rank for rank in range(2) if split(Part(index, 3), rank, 2).owns(rel)]
            assert len(owners) == (1 if Part(index, 3).owns(rel) else 0)


def test_parse_part():
    assert parse_part("2/3") == Part(2, 3)
    for bad in ("3/3", "-1/3", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="expected I/N"):
            parse_part(bad)
    result = invoke("enhance", "a", "b", "--shard", "3/3")
    assert result.exit_code == 2 and "--shard: '3/3' is not allowed" in result.output


def test_merge_refuses_a_folder_without_manifests(tmp_path):
    result = invoke("merge", tmp_path)
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: DST '{tmp_path}': no latinhib-manifest.jsonl and no manifest parts to merge"
    assert list(tmp_path.iterdir()) == []


def test_listing_key_reproduces_the_folder_listing(tmp_path):
    for rel in ("b.jpg", "a/z.jpg", "a/b/c.jpg", "a-b.jpg", "a/a.jpg", "A/x.png", "a.b/c.jpg", "a/b.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    listed = [item.rel for item in list_folder(tmp_path)]
    assert sorted(listed, key=listing_key) == listed


def test_shards_then_merge_equal_one_process_and_a_shard_reruns_alone(src, checkpoint, single, tmp_path):
    dst, masks = tmp_path / "dst", tmp_path / "masks"
    parts = []
    for index in range(3):
        result = invoke("enhance", src, dst, *base_args(checkpoint), "--save-masks", masks, "--shard", f"{index}/3",
                        "--json")
        assert result.exit_code == (1 if part_of(broken_name(1, 2), 3) == index else 0), result.output
        part = dst / f"latinhib-manifest.part-{index}-of-3.jsonl"
        parts.append({json.loads(line)["path"] for line in part.read_text().splitlines()})
        assert all(part_of(p, 3) == index for p in parts[-1])
    # every file in exactly one part: nothing written twice, nothing left out
    assert sum(map(len, parts)) == len(set().union(*parts)) == len(manifest_entries(single / "out"))
    assert not (dst / "latinhib-manifest.jsonl").exists()
    result = invoke("merge", dst, "--json")
    assert result.exit_code == 1  # the corrupt JPEG failed
    merged = json.loads(result.stdout)
    assert merged["parts"] == ["0/3", "1/3", "2/3"] or sorted(merged["parts"]) == ["0/3", "1/3", "2/3"]
    assert merged["failed"] == 1 and merged["missing"] == []
    assert not list(dst.glob("latinhib-manifest.part-*"))
    assert_same_as_single(single, dst, masks)
    first = manifest_entries(dst)

    # A killed shard: one of its outputs is gone. Rerun alone, it redoes exactly that file.
    victim = next(e["path"] for e in first if e["status"] == "enhanced" and part_of(e["path"], 3) == 1)
    (dst / victim).unlink()
    result = invoke("enhance", src, dst, *base_args(checkpoint), "--save-masks", masks, "--shard", "1/3", "--json")
    summary = json.loads(result.stdout)
    owned = sum(part_of(e["path"], 3) == 1 for e in first)
    assert summary["enhanced"] == 1 and summary["copied"] == 0
    assert summary["already_done"] + summary["skipped"] + summary["failed"] + 1 == owned
    assert invoke("merge", dst).exit_code == 1
    assert manifest_entries(dst) == first


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this Python")
def test_torchrun_two_processes_equal_one_process(src, checkpoint, single, tmp_path):
    dst, masks, logs = tmp_path / "dst", tmp_path / "masks", tmp_path / "logs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "--log-dir", str(logs), "--redirects", "1",
         "-m", "latinhib", "enhance", str(src), str(dst), *map(str, base_args(checkpoint)),
         "--save-masks", str(masks), "--print-outputs", "--json"],
        capture_output=True, text=True, timeout=240, env=env,
    )
    rank_stdout = {int(p.parent.name): p.read_text().splitlines() for p in logs.rglob("stdout.log")}
    assert sorted(rank_stdout) == [0, 1], (proc.stderr[-3000:], list(logs.rglob("*")))
    # rank 1's corrupt JPEG fails the job: torchrun exits non-zero
    assert proc.returncode != 0, proc.stderr[-3000:]
    # rank 0 prints the job's summary, summed over both ranks; rank 1 prints none
    summary = json.loads(rank_stdout[0][-1])
    assert not any(line.startswith("{") for line in rank_stdout[1])
    reference = manifest_entries(single / "out")
    for status in ("enhanced", "copied", "unchanged", "skipped", "failed"):
        assert summary[status] == sum(e["status"] == status for e in reference), status
    assert summary["failed"] == 1 and summary["total"] == len(reference)
    # each output written by exactly one rank, each rank only its own share
    written = {rank: [os.path.relpath(line, dst) for line in lines if not line.startswith("{")]
               for rank, lines in rank_stdout.items()}
    assert all(part_of(rel, 2) == rank for rank, rels in written.items() for rel in rels)
    assert sorted(written[0] + written[1]) == outputs(dst)
    assert not list(dst.glob("latinhib-manifest.part-*"))  # rank 0 merged them
    assert_same_as_single(single, dst, masks)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this Python")
def test_torchrun_with_files_from_stdin_lists_the_same_files_on_every_rank(src, checkpoint, single, tmp_path):
    """``find SRC | torchrun ... --files-from -``: stdin reaches every rank, so only rank 0
    reads it and the others get its lines (ranks reading one pipe at once would each get
    a part of it, and files would be missed)."""
    dst, masks = tmp_path / "dst", tmp_path / "masks"
    listing = "".join(f"{src / item.rel}\n" for item in list_folder(src))  # the folder's own order
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "latinhib", "enhance", str(src), str(dst),
         *map(str, base_args(checkpoint)), "--save-masks", str(masks), "--files-from", "-", "--json"],
        input=listing * 40,  # long enough that both ranks would get some of it
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode != 0, proc.stderr[-3000:]  # the corrupt JPEG, as in the reference
    assert proc.stdout.strip(), proc.stderr[-3000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["total"] == len(manifest_entries(single / "out")), proc.stderr[-3000:]
    assert_same_as_single(single, dst, masks)
