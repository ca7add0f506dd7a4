"""One job per DST (issue 16): a second real process into a DST that a job holds is
refused at once (exit 2, one line naming DST and the holder's pid and host, nothing
written); shard jobs of one split share DST; a killed holder never leaves DST locked;
``latinhib merge`` waits for no one but refuses while shard jobs are writing."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from latinhib.locking import LOCK_NAME
from helpers import ARCH

HOLD = """
import sys, time
from pathlib import Path
from latinhib.distributed import parse_part
from latinhib.locking import DstLock
shard = None if sys.argv[2] == "-" else parse_part(sys.argv[2])
lock = DstLock(Path(sys.argv[1]), shard)
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture()
def src(tmp_path) -> Path:
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (40, 40), (40 * i, 90, 20)).save(root / "a" / f"{i}.png")
    return root


def enhance(src: Path, dst: Path, checkpoint: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latinhib", "enhance", str(src), str(dst), "--arch", ARCH,
                           "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0",
                           "--set", "model.input_size=64", "--ratio", "0.5", "--quiet", *extra],
                          capture_output=True, text=True, timeout=300)


class Holder:
    """Another process holding DST's lock (unsharded, or as shard I/N) until stopped."""

    def __init__(self, dst: Path, shard: str = "-"):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(dst), shard], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "held\n"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture()
def holders():
    started = []
    yield lambda *args: started.append(Holder(*args)) or started[-1]
    for holder in started:
        if holder.proc.poll() is None:
            holder.kill()


def test_a_second_job_into_a_held_dst_is_refused_at_once(src, tmp_path, checkpoint, holders):
    dst = tmp_path / "dst"
    dst.mkdir()
    holder = holders(dst)
    proc = enhance(src, dst, checkpoint)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"Error: DST '{dst}' is in use by another latinhib job "
                           f"(pid {holder.proc.pid} on {socket.gethostname()}, since "), line
    assert line.endswith("); wait for it to finish, or choose another DST"), line
    assert sorted(p.name for p in dst.iterdir()) == [LOCK_NAME]  # nothing written
    # at once: refused before the model is loaded (a checkpoint that cannot load is not reached)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    proc = enhance(src, dst, garbage)
    assert proc.returncode == 2 and proc.stderr.startswith(f"Error: DST '{dst}' is in use"), proc.stderr
    # a shard job conflicts with the unsharded holder too
    proc = enhance(src, dst, checkpoint, "--shard", "0/2")
    assert proc.returncode == 2 and f"pid {holder.proc.pid}" in proc.stderr, proc.stderr

    holder.kill()  # the kernel drops a dead process's lock: the file left behind means nothing
    assert (dst / LOCK_NAME).exists()
    proc = enhance(src, dst, checkpoint)
    assert proc.returncode == 0, proc.stderr
    assert len((dst / "latinhib-manifest.jsonl").read_text().splitlines()) == 6
    assert not (dst / LOCK_NAME).exists()  # the last holder removes it


def test_shard_jobs_of_one_split_work_side_by_side_and_others_are_refused(src, tmp_path, checkpoint, holders):
    dst = tmp_path / "dst"
    dst.mkdir()
    holder = holders(dst, "0/2")
    proc = enhance(src, dst, checkpoint, "--shard", "1/2")  # the other shard: runs
    assert proc.returncode == 0, proc.stderr
    assert (dst / "latinhib-manifest.part-1-of-2.jsonl").is_file()
    record = json.loads((dst / LOCK_NAME).read_text())  # the shard job's own record is gone with it
    assert (record["pid"], record["shard"]) == (holder.proc.pid, "0/2")
    refusals = {
        "0/2": f"shard 0/2 of DST '{dst}' is in use by another latinhib job (shard 0/2: pid {holder.proc.pid}",
        "1/3": f"DST '{dst}' is in use by latinhib shard jobs of another split (shard 0/2: pid {holder.proc.pid}",
        None: f"DST '{dst}' is in use by latinhib shard jobs (shard 0/2: pid {holder.proc.pid}",
    }
    for shard, message in refusals.items():
        proc = enhance(src, dst, checkpoint, *(("--shard", shard) if shard else ()))
        assert proc.returncode == 2, proc.stderr
        [line] = proc.stderr.splitlines()
        assert line.startswith(f"Error: {message}"), line
    merge = subprocess.run([sys.executable, "-m", "latinhib", "merge", str(dst)], capture_output=True, text=True)
    assert merge.returncode == 2 and "run latinhib merge when they have finished" in merge.stderr, merge.stderr
    assert (dst / "latinhib-manifest.part-1-of-2.jsonl").is_file()  # not merged under a running shard

    holder.kill()
    merge = subprocess.run([sys.executable, "-m", "latinhib", "merge", str(dst)], capture_output=True, text=True)
    assert merge.returncode == 0, merge.stderr
