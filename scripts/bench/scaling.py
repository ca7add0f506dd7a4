#!/usr/bin/env python
"""Throughput of `latinhib enhance` in 1 process vs N torchrun processes (one thread each).

Makes a folder of generated JPEGs (224-ish pixels), then for each process count runs the
real CLI (`python -m latinhib enhance` for 1, `torchrun --standalone --nproc-per-node N -m
latinhib enhance` otherwise) into a fresh DST with ratio 1 (every image through the model),
workers 0 and runtime.threads=1, and prints images/s from the wall time of the whole command
(start-up and model loading included) and from the job's own `seconds`, and the CPU seconds
per image over all processes (load-independent: equal CPU per image means N processes give
N times the throughput when N cores are free). The best of
--repeats runs is reported. The machine's load (uptime) is printed before and after: on a
shared machine, other jobs take cores from the processes measured here.

    .venv/bin/python -m scripts.bench.scaling --images 48 --more 96 --arch resnet18 --procs 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for n in range(count):
        w, h = int(rng.integers(200, 260)), int(rng.integers(200, 260))
        yy, xx = np.mgrid[0:h, 0:w]
        noise = rng.integers(0, 255, (h, w, 3)).astype(np.float32) * 0.6
        blob = ((yy - rng.uniform(0.3, 0.7) * h) ** 2 + (xx - rng.uniform(0.3, 0.7) * w) ** 2 < (min(w, h) / 4) ** 2)
        pixels = np.where(blob[..., None], rng.integers(0, 255, 3).astype(np.float32), noise).astype(np.uint8)
        folder = root / f"class{n % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"img{n:03d}.jpg", quality=90)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_once(procs: int, src: Path, dst: Path, args) -> dict:
    common = ["enhance", str(src), str(dst), "--arch", args.arch, "--set", "model.weights=null", "--device", "cpu",
              "--workers", "0", "--batch-size", str(args.batch_size), "--set", "runtime.threads=1", "--ratio", "1",
              "--quiet", "--json"]
    if procs == 1:
        command = [sys.executable, "-m", "latinhib", *common]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        command = [torchrun, "--standalone", f"--nproc-per-node={procs}", "-m", "latinhib", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of every process of the command (torchrun's workers included): unlike
    # wall time, this does not depend on what else the shared machine is running.
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    return {"wall": wall, "job": summary["seconds"], "cpu": cpu,
            "images": summary["enhanced"] + summary["unchanged"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--more", type=int, default=0,
                        help="Also run on this many more images and report the marginal cost per image, "
                             "which leaves out start-up (imports, model loading) (0 = off).")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="latinhib-bench-"))
    sizes = [args.images] + ([args.images + args.more] if args.more else [])
    try:
        for size in sizes:
            make_folder(work / f"src-{size}", size)
        print(f"JPEGs 200-260 px, {args.arch} (random weights), ratio 1, workers 0, 1 thread per process, "
              f"best of {args.repeats}")
        print(f"load average before: {load()}  (cores: {os.cpu_count()})")
        results = {}
        for procs in args.procs:
            for size in sizes:
                best = None
                for repeat in range(args.repeats):
                    result = run_once(procs, work / f"src-{size}", work / f"dst-{procs}-{size}-{repeat}", args)
                    assert result["images"] == size, result
                    best = result if best is None or result["wall"] < best["wall"] else best
                results[procs, size] = best
                print(f"{procs} process(es), {size} images: {size / best['wall']:6.2f} images/s end to end "
                      f"({best['wall']:.1f} s), {size / best['job']:6.2f} images/s in the job ({best['job']:.1f} s), "
                      f"{best['cpu'] / size:.3f} CPU s per image", flush=True)
            if args.more:
                small, large = results[procs, sizes[0]], results[procs, sizes[1]]
                print(f"{procs} process(es), marginal ({args.more} more images): "
                      f"{args.more / (large['wall'] - small['wall']):6.2f} images/s, "
                      f"{(large['cpu'] - small['cpu']) / args.more:.3f} CPU s per image", flush=True)
        for procs in args.procs:
            if procs != 1 and 1 in args.procs:
                one, many = results[1, sizes[-1]], results[procs, sizes[-1]]
                line = (f"speed-up {procs} vs 1 ({sizes[-1]} images): {one['wall'] / many['wall']:.2f}x end to end, "
                        f"{one['job'] / many['job']:.2f}x in the job")
                if args.more:
                    marginal = [(results[p, sizes[1]]["wall"] - results[p, sizes[0]]["wall"]) for p in (1, procs)]
                    line += f", {marginal[0] / marginal[1]:.2f}x marginal"
                print(line)
        print(f"load average after: {load()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
