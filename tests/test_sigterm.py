"""SIGTERM (what ``kill``, SLURM at a time limit or preemption, container runtimes and
torchrun's shutdown send) is handled like Ctrl-C (issue 16): a real ``latinhib enhance``
subprocess gets a real SIGTERM, stops at the next safe point, says in one line how far it
got and to rerun, exits 143; a second SIGTERM or a SIGKILL during that stop still leaves
nothing half-written; under torchrun every rank does the same; the rerun finishes the job."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import check_no_partial_file, final_files, manifest_by_path, manifest_lines, resume_command

TORCHRUN = Path(sys.executable).with_name("torchrun")
DONE = ("copied", "enhanced", "unchanged")


def start_and_wait(argv, dst: Path, lines: int = 12) -> subprocess.Popen:
    """Start the job and wait until it has recorded ``lines`` files."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and manifest_lines(dst) < lines and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the job finished before the signal"
    return proc


def test_sigterm_stops_cleanly_says_how_far_and_the_rerun_finishes(resume_src, tmp_path, checkpoint, resume_reference):
    dst, masks = tmp_path / "dst", tmp_path / "masks"
    argv = resume_command(resume_src, dst, masks, checkpoint)
    proc = start_and_wait(argv, dst)
    proc.send_signal(signal.SIGTERM)  # to the process alone, as kill and docker stop do
    stdout, stderr = proc.communicate(timeout=120)
    text = stderr.decode()
    assert proc.returncode == 143, text
    assert "Traceback" not in text
    [line] = [s for s in text.splitlines() if s.strip()]
    assert line.startswith("latinhib: stopped by SIGTERM after ") and line.endswith("rerun the same command to resume")
    assert stdout == b""
    check_no_partial_file(dst, masks)
    done = sum(e["status"] in DONE for e in manifest_by_path(dst).values())
    assert f"after {done} of 36 files" in line  # what it says matches what it wrote
    proc = subprocess.run(argv, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (final_files(dst) == final_files(resume_reference[0])
            and final_files(masks) == final_files(resume_reference[1]))


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGKILL])
def test_a_second_signal_during_the_stop_leaves_nothing_half_written(resume_src, tmp_path, checkpoint,
                                                                     resume_reference, second):
    dst, masks = tmp_path / "dst", tmp_path / "masks"
    argv = resume_command(resume_src, dst, masks, checkpoint)
    proc = start_and_wait(argv, dst)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    proc.send_signal(second)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == (143 if second == signal.SIGTERM else -signal.SIGKILL), stderr.decode()
    if second == signal.SIGTERM:
        assert "Traceback" not in stderr.decode()
    check_no_partial_file(dst, masks)
    proc = subprocess.run(argv, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (final_files(dst) == final_files(resume_reference[0])
            and final_files(masks) == final_files(resume_reference[1]))


def caught_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc/<pid>/status (Linux)")
def test_sigterm_while_starting_up_exits_143_with_one_line(resume_src, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    proc = subprocess.Popen(resume_command(resume_src, dst, tmp_path / "masks", checkpoint), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    # As soon as the command has its SIGTERM handler (before torch is imported), not before:
    # a SIGTERM earlier, while Python itself starts, kills it as any program.
    deadline = time.monotonic() + 60
    while proc.poll() is None and not caught_signals(proc.pid) & (1 << (signal.SIGTERM - 1)):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr.decode()
    assert stderr.decode().splitlines() == ["latinhib: stopped by SIGTERM before any file was processed"]
    assert stdout == b"" and not dst.exists()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this Python")
def test_sigterm_to_torchrun_stops_every_rank_cleanly(resume_src, tmp_path, checkpoint, resume_reference):
    dst, masks, logs = tmp_path / "dst", tmp_path / "masks", tmp_path / "logs"
    job = [str(a) for a in resume_command(resume_src, dst, masks, checkpoint)[3:]]  # after "python -m latinhib"
    argv = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "--log-dir", str(logs), "--redirects", "3",
            "-m", "latinhib", *job]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 180
    parts = lambda: sum(p.read_bytes().count(b"\n") for p in dst.glob("latinhib-manifest.part-*"))  # noqa: E731
    while proc.poll() is None and parts() < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the job finished before the signal"
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    rank_stderr = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    assert sorted(rank_stderr) == [0, 1], list(logs.rglob("*"))
    for rank, text in rank_stderr.items():
        lines = [s for s in text.splitlines() if s.startswith("latinhib:")]
        assert len(lines) == 1, text
        assert lines[0].startswith(f"latinhib: rank {rank} of 2: stopped by SIGTERM after "), text
        assert lines[0].endswith("rerun the same command to resume") and "Traceback" not in text
    check_no_partial_file(dst, masks)
    proc = subprocess.run(argv[:4] + argv[8:], capture_output=True, timeout=300, env=env)  # no log dir this time
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (final_files(dst) == final_files(resume_reference[0])
            and final_files(masks) == final_files(resume_reference[1]))
    assert list(manifest_by_path(dst)) == list(manifest_by_path(resume_reference[0]))  # rank 0 merged the parts
