#!/usr/bin/env python
"""Peak memory of ``latinhib enhance`` against the number of images (issue 4, "Bounded
memory"): runs the real CLI in a subprocess on N small images for each N and worker count,
and prints the peak RSS of the main process (``wait4``'s ru_maxrss) and the peak of the
whole process tree (main + DataLoader workers, summed, sampled from /proc every 20 ms).
With bounded queues both should stay flat as N grows (within ~10%).

``--files N1 N2 ...`` (issue 25) measures what stays in memory *per file* instead: ImageNet-shaped
trees (1,000 class folders) of N tiny JPEGs on tmpfs, every file a copy (ratio 0), then the
rerun of the finished job (every file already done), and the peak RSS growth per million
files against the smallest tree. The bar is ``--max-mb-per-million`` (default 100, as the
issue asks): the script exits 1 when a row grows faster, so memory per file is asserted by
a benchmark, not by a timed test.

    .venv/bin/python -m scripts.bench.memory               # 200 and 4000 images, workers 0 and 2
    .venv/bin/python -m scripts.bench.memory --counts 200 1000 --workers 2
    .venv/bin/python -m scripts.bench.memory --files 20000 400000   # ~2 min on 2 cores

Uses a tiny randomly initialised mobilenet_v3_small at input 64 (no download), ratio 0.5
(ratio 0 for ``--files``).
"""
from __future__ import annotations

import argparse
import os
import shutil
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


def run(src: Path, dst: Path, checkpoint: Path, workers: int, ratio: float = 0.5):
    argv = [sys.executable, "-m", "latinhib", "enhance", str(src), str(dst), "--arch", "mobilenet_v3_small",
            "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", str(workers), "--batch-size", "16",
            "--set", "model.input_size=64", "--ratio", str(ratio), "--quiet", "--target", "pred"]
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


def per_file(tmp: Path, checkpoint: Path, counts, limit: float) -> int:
    """Peak RSS of r = 0 and of its rerun against the number of files; 1 when a row grows
    faster than ``limit`` MB per million files."""
    from scripts.bench.per_file import make_tree, tiny_jpeg

    data, rows = tiny_jpeg(), {"r=0": {}, "rerun": {}}
    for count in counts:
        src, dst = tmp / f"files{count}", tmp / f"files{count}-dst"
        make_tree(src, count, data)
        for row in rows:  # the rerun finds the r = 0 job finished
            rows[row][count] = run(src, dst, checkpoint, 0, ratio=0.0)[0]
        shutil.rmtree(src)
        shutil.rmtree(dst)
    small, failed = counts[0], 0
    print(f"{'row':<7}" + "".join(f"{f'{n} files MiB':>18}" for n in counts) + f"{'MiB / M files':>15}")
    for row, peaks in rows.items():
        growth = max((peaks[n] - peaks[small]) / (n - small) * 1e6 for n in counts[1:])
        failed |= growth > limit
        print(f"{row:<7}" + "".join(f"{peaks[n]:>18.1f}" for n in counts) + f"{growth:>15.0f}"
              + ("  OVER" if growth > limit else "  ok"))
    print(f"(peak RSS of the whole job, model included; growth against {small} files; the bar: {limit:.0f} MiB "
          "per million files)")
    return int(failed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 4000])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--files", type=int, nargs="+", help="per-file memory: tree sizes (two or more)")
    parser.add_argument("--max-mb-per-million", type=float, default=100.0)
    parser.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="latinhib-mem-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        checkpoint = tmp / "tiny.pth"
        torch.save(torchvision.models.get_model("mobilenet_v3_small", num_classes=3).state_dict(), checkpoint)
        if args.files:
            raise SystemExit(per_file(tmp, checkpoint, sorted(args.files), args.max_mb_per_million))
        print(f"{'images':>7} {'workers':>7} {'main peak RSS MiB':>18} {'tree peak RSS MiB':>18} {'seconds':>8}")
        for count in args.counts:
            src = tmp / f"src{count}"
            make_images(src, count)
            for workers in args.workers:
                main_mib, tree_mib, seconds = run(src, tmp / f"dst{count}-{workers}", checkpoint, workers)
                print(f"{count:>7} {workers:>7} {main_mib:>18.1f} {tree_mib:>18.1f} {seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
