"""Resume and atomicity (issue 4): a real ``latinhib enhance`` subprocess is killed with
SIGKILL at several random points; at every point no file under a final name is partial,
and rerunning the same command finishes the job with the same files, the same selection
and (nearly) the same pixels as an uninterrupted run. Ctrl-C stops cleanly with exit code
130 and a line saying how to resume."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from helpers import check_no_partial_file, final_files, manifest_by_path, manifest_lines, resume_command

KILLS = 3


def test_kill_9_at_random_points_then_rerun_finishes_the_same_job(resume_src, tmp_path, checkpoint, resume_reference):
    dst, masks = tmp_path / "dst", tmp_path / "masks"
    argv = resume_command(resume_src, dst, masks, checkpoint)
    rng = random.Random(20240)
    killed = 0
    for attempt in range(KILLS):
        # Kill once a random number of new manifest lines has appeared (copies first, then
        # enhanced batches), or after a random start-up delay for the first kill.
        before = manifest_lines(dst)
        target = before + rng.randint(1, 8)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        delay = rng.uniform(0.0, 0.05)
        while proc.poll() is None and manifest_lines(dst) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=60)
        check_no_partial_file(dst, masks)
        assert not (dst / "latinhib-manifest.jsonl").exists() or final_files(dst)
    assert killed >= 2, "the job finished before it could be killed: make it longer"
    # what a kill during a write leaves (its pid is gone): the rerun removes it
    (masks / "ants").mkdir(parents=True, exist_ok=True)
    for stale in (dst / "ants" / ".001.jpg.latinhib-999999-1.tmp", masks / "ants" / ".001.jpg.png.latinhib-999999-1.tmp"):
        stale.write_bytes(b"half a file")
    proc = subprocess.run(argv, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr

    ref_dst, ref_masks = resume_reference
    # the same files, each complete, and no stale temporaries left behind
    assert final_files(dst) == final_files(ref_dst)
    assert final_files(masks) == final_files(ref_masks)
    assert [p.name for p in dst.rglob(".*")] == [] and [p.name for p in masks.rglob(".*")] == []
    check_no_partial_file(dst, masks)
    got, want = manifest_by_path(dst), manifest_by_path(ref_dst)
    assert list(got) == list(want)  # one line per input, in listing order
    assert {p: e["selected"] for p, e in got.items()} == {p: e["selected"] for p, e in want.items()}
    assert {p: e["status"] for p, e in got.items()} == {p: e["status"] for p, e in want.items()}
    for rel, entry in want.items():
        if entry["status"] == "copied":
            assert (dst / rel).read_bytes() == (ref_dst / rel).read_bytes()
            continue
        a = np.asarray(Image.open(dst / rel)).astype(int)
        b = np.asarray(Image.open(ref_dst / rel)).astype(int)
        # identical, or a different batch composition moved a threshold by a rounding step
        differing = (np.abs(a - b).reshape(a.shape[0], a.shape[1], -1).max(axis=2) > 0).mean()
        assert differing < 0.005, (rel, differing)


@pytest.mark.parametrize("batch_size", ["2", "8"])
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(resume_src, tmp_path, checkpoint, resume_reference, batch_size):
    dst, masks = tmp_path / "dst", tmp_path / "masks"
    # workers 2: Ctrl-C reaches the whole process group, decoding workers included.
    # Two threads: batch 2 decodes and writes in their own threads, batch 8 runs each
    # chunk start to end on one of two one-thread streams (executors._run_chunk).
    argv = resume_command(resume_src, dst, masks, checkpoint, "--set", "runtime.threads=2")
    argv[argv.index("--workers") + 1] = "2"
    argv[argv.index("--batch-size") + 1] = batch_size
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and manifest_lines(dst) < 20 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the job finished before Ctrl-C"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does
    stdout, stderr = proc.communicate(timeout=120)
    text = stderr.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    [line] = [s for s in text.splitlines() if s.strip()]
    assert line.startswith("latinhib: interrupted after ") and line.endswith("rerun the same command to resume")
    assert stdout == b""
    check_no_partial_file(dst, masks)
    done = sum(e["status"] in ("copied", "enhanced", "unchanged") for e in manifest_by_path(dst).values())
    assert f"after {done} of " in line  # what it says matches what it wrote
    proc = subprocess.run(argv, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert final_files(dst) == final_files(resume_reference[0])


def test_temporary_names_are_unique_and_only_dead_ones_are_cleaned(tmp_path):
    """Each write gets its own temporary name (a random token after the pid: two hosts
    sharing DST can run the same pid); cleanup removes those of dead processes, in this
    format and the older ``<pid>-<thread id>`` one, and nothing else."""
    from latinhib.files import remove_stale_temps, temp_path

    target = tmp_path / "a" / "001.jpg"
    names = {temp_path(target).name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(".001.jpg.latinhib-") and f"-{os.getpid()}-" in n and n.endswith(".tmp") for n in names)
    target.parent.mkdir()
    mine = target.parent / sorted(names)[0]
    dead_new = target.parent / ".002.jpg.latinhib-999999-0a1b2c3d4e5f.tmp"
    dead_old = target.parent / ".003.jpg.latinhib-999999-140234567.tmp"
    other = target.parent / ".004.jpg.latinhib-999999-notatoken.tmp"
    for path in (mine, dead_new, dead_old, other, target):
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([mine.name, other.name, target.name])
