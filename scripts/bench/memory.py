#!/usr/bin/env python
"""Peak memory of ``latinhib enhance`` against the number of images (issue 4, "Bounded
memory"): runs the real CLI in a subprocess on N small images for each N and worker count,
and prints the peak RSS of the main process (``wait4``'s ru_maxrss) and the peak of the
whole process tree (main + DataLoader workers, summed, sampled from /proc every 20 ms).
With bounded queues both should stay flat as N grows (within ~10%).

    .venv/bin/python -m scripts.bench.memory               # 200 and 4000 images, workers 0 and 2
    .venv/bin/python -m scripts.bench.memory --counts 200 1000 --workers 2

Uses a tiny randomly initialised mobilenet_v3_small at input 64 (no download), ratio 0.5.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image


def make_images(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(count):
        pixels = rng.integers(0, 255, (int(rng.integers(48, 96)), int(rng.integers(48, 96)), 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:05d}.{'png' if i % 2 else 'jpg'}")


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int):
    pids = [pid]
    for current in pids:
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    pids.extend(int(p) for p in handle.read().split())
        except OSError:
            continue
    return pids


def run(src: Path, dst: Path, checkpoint: Path, workers: int):
    argv = [sys.executable, "-m", "latinhib", "enhance", str(src), str(dst), "--arch", "mobilenet_v3_small",
            "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", str(workers), "--batch-size", "16",
            "--set", "model.input_size=64", "--ratio", "0.5", "--quiet"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv)
    peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not done.is_set():
            peak_tree = max(peak_tree, sum(_rss_kib(p) for p in _tree(proc.pid)))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"latinhib exited with {proc.returncode}")
    return usage.ru_maxrss / 1024, peak_tree / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 4000])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="latinhib-mem-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        checkpoint = tmp / "tiny.pth"
        torch.save(torchvision.models.get_model("mobilenet_v3_small", num_classes=3).state_dict(), checkpoint)
        print(f"{'images':>7} {'workers':>7} {'main peak RSS MiB':>18} {'tree peak RSS MiB':>18} {'seconds':>8}")
        for count in args.counts:
            src = tmp / f"src{count}"
            make_images(src, count)
            for workers in args.workers:
                main_mib, tree_mib, seconds = run(src, tmp / f"dst{count}-{workers}", checkpoint, workers)
                print(f"{count:>7} {workers:>7} {main_mib:>18.1f} {tree_mib:>18.1f} {seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
