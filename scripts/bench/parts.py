#!/usr/bin/env python
"""Where ``latinhib enhance``'s CPU time goes, per image: decoding, the model pass with
steps 4-5, and finishing (steps 6-8 at full size, encoding, the atomic write).

Runs ``latinhib.pipeline.run`` at r = 1 on a generated folder (``scripts/bench/enhance.py``'s
JPEGs) with the CLI's allocator setting, timing those three pipeline functions with each
thread's CPU clock (``time.thread_time``) and the wall clock, so the parts can be set
against the run's total CPU time and against ``scripts/bench/enhance.py``'s floor.

Usage::

    .venv/bin/python -m scripts.bench.parts --arch resnet18
    .venv/bin/python -m scripts.bench.parts --arch mobilenet_v2 --images 960 --batch-size 16
"""
from __future__ import annotations

import argparse
import collections
import resource
import tempfile
import threading
import time
from pathlib import Path

from scripts.bench.enhance import make_images  # the same folder as the benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tmp", default=None, help="folder for temporary files")
    args = parser.parse_args()

    from latinhib.allocator import keep_large_blocks

    keep_large_blocks()
    import latinhib.executors as executors
    import latinhib.finishing as finishing
    import latinhib.pipeline as pipeline
    from latinhib.config import load_config

    cpu = collections.defaultdict(float)
    wall = collections.defaultdict(float)
    lock = threading.Lock()

    def timed(name, fn):
        def wrapper(*a, **k):
            c, w = time.thread_time(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    cpu[name] += time.thread_time() - c
                    wall[name] += time.perf_counter() - w
        return wrapper

    executors._Decoding.__getitem__ = timed("decode", executors._Decoding.__getitem__)
    executors.batch_importance = timed("model pass + steps 4-5", executors.batch_importance)
    finishing.Finisher.__call__ = timed("finish (blur, select, encode, write)", finishing.Finisher.__call__)
    config = load_config(overrides={
        "model.arch": args.arch, "model.weights": None, "model.target": "pred", "inhibition.ratio": 1.0,
        "runtime.device": "cpu", "runtime.batch_size": args.batch_size, "output.overwrite": True,
    })
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        src, warm = Path(tmp) / "images", Path(tmp) / "warm"
        make_images(src, args.images)
        make_images(warm, args.batch_size, seed=1)
        pipeline.run(config, warm, Path(tmp) / "warm-out", pipeline.JobOptions(quiet=True))
        cpu.clear()
        wall.clear()
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        summary = pipeline.run(config, src, Path(tmp) / "out", pipeline.JobOptions(quiet=True))
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    n = summary.enhanced
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"# {args.arch}, batch {args.batch_size}, {n} images enhanced in {seconds:.2f} s: {n / seconds:.1f} img/s")
    print(f"{'part':40} {'CPU ms/img':>11} {'wall ms/img':>12}")
    for name in cpu:
        print(f"{name:40} {cpu[name] / n * 1000:11.2f} {wall[name] / n * 1000:12.2f}")
    print(f"{'all threads (kernel time included)':40} {total / n * 1000:11.2f}")
    print(f"kernel time {after.ru_stime - before.ru_stime:.2f} s, page faults {after.ru_minflt - before.ru_minflt}")


if __name__ == "__main__":
    main()
