#!/usr/bin/env python
"""Throughput of ``latinhib evaluate`` next to ``latinhib enhance`` (r = 1), and the model
passes ``evaluate`` makes per batch.

Same machine, model, batch size and images (scripts/bench/enhance.py's generated folder of 480
~ImageNet-sized JPEGs, in class folders ``0`` and ``1`` so they map onto the model's first
two classes). Each row runs in its own subprocess after an untimed warm-up on one batch;
``--repeats`` alternates the rows and reports each row's median, since this machine's
speed drifts. The ``evaluate`` row also counts the forward calls of each model per batch:
at most one importance pass plus five classification passes (the first model's
``original`` comes from its importance pass, so it makes 1 + 4).

    .venv/bin/python -m scripts.bench.evaluate                      # mobilenet_v2, CPU
    .venv/bin/python -m scripts.bench.evaluate --arch resnet18 --repeats 3
    .venv/bin/python -m scripts.bench.evaluate --device cuda --batch-size 128

Prints images/s per row (whole run, model loading included, as a user sees it) and the
ratio evaluate / enhance. Check ``uptime``: other processes skew absolute numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = ("enhance", "evaluate", "evaluate+1")


def make_folder(folder: Path, count: int) -> None:
    from scripts.bench.enhance import make_images

    make_images(folder, count)
    for i in (0, 1):  # numeric class folders: model outputs 0 and 1
        (folder / f"class{i}").rename(folder / str(i))


def _config(args):
    from latinhib.config import load_config

    return load_config(overrides={
        "model.arch": args.arch, "model.weights": args.weights, "inhibition.ratio": 1.0,
        "runtime.device": args.device, "runtime.batch_size": args.batch_size, "runtime.workers": args.workers,
        "model.classes": [str(i) for i in range(1000)] if args.weights is None else None,
        "output.overwrite": True,
    })


def _warm(src: Path, tmp: Path, size: int) -> Path:
    warm = tmp / "warm"
    for path in sorted(src.rglob("*.jpg"))[:size]:
        (warm / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, warm / path.parent.name / path.name)
    return warm


def run_row(args) -> None:
    import torch

    from latinhib.allocator import keep_large_blocks

    keep_large_blocks()  # as the CLI does for both commands
    if args.threads:
        torch.set_num_threads(args.threads)
    config = _config(args)
    src = Path(args.src)
    result = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        warm = _warm(src, Path(tmp), args.batch_size)
        if args.row == "enhance":
            from latinhib.pipeline import JobOptions, run

            run(config, warm, Path(tmp) / "warm-out", JobOptions(quiet=True))
            start = time.perf_counter()
            summary = run(config, src, Path(tmp) / "out", JobOptions(quiet=True))
            result["images"] = summary.enhanced + summary.unchanged
        else:
            from latinhib import evaluation_folder, evaluation_passes
            from latinhib.models import load_model

            also = []
            if args.row == "evaluate+1":  # a second checkpoint of the same architecture
                model = load_model(config.model, torch.device("cpu")).model
                also = [Path(tmp) / "also.pth"]
                torch.save(model.state_dict(), also[0])
            evaluation_folder.evaluate_folder(config, warm, also=also, quiet=True, log=lambda m: None)
            calls = []
            original = evaluation_passes.Evaluator.__init__

            def counting(self, models, *rest, **kw):  # count each model's forward calls
                original(self, models, *rest, **kw)
                for k, m in enumerate(models):
                    m.register_forward_hook(lambda *_, k=k: calls.append(k))

            evaluation_passes.Evaluator.__init__ = counting
            start = time.perf_counter()
            run = evaluation_folder.evaluate_folder(config, src, also=also, quiet=True, log=lambda m: None)
            result["images"] = run.images
            batches = -(-run.images // args.batch_size)
            result["forwards_per_batch"] = [calls.count(k) / batches for k in range(1 + len(also))]
        result["seconds"] = time.perf_counter() - start
    print("BENCH-RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--weights", default="IMAGENET1K_V1", help="torchvision weights ('none': random init)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--src", default=None)
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.weights in ("none", "None", ""):
        args.weights = None
    if args.row:
        run_row(args)
        return
    rows = [r for r in args.rows.split(",") if r]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        src = Path(args.src) if args.src else Path(tmp) / "images"
        if not args.src:
            make_folder(src, args.images)
        print(f"# {args.arch} ({args.weights}) on {args.device}, batch {args.batch_size}, {args.images} JPEGs, "
              f"workers {args.workers}, threads {args.threads or 'default'}, cpus {os.cpu_count()}, "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        runs = {row: [] for row in rows}
        for _ in range(args.repeats):
            for row in rows:
                cmd = [sys.executable, "-m", __spec__.name, "--row", row, "--src", str(src), f"--arch={args.arch}",
                       f"--weights={args.weights}", f"--device={args.device}", f"--batch-size={args.batch_size}",
                       f"--workers={args.workers}", f"--threads={args.threads}"] + ([f"--tmp={args.tmp}"] if args.tmp else [])
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH-RESULT ")]
                if proc.returncode or not lines:
                    print(f"# row {row} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
                    continue
                result = json.loads(lines[-1][len("BENCH-RESULT "):])
                result["ips"] = result["images"] / result["seconds"]
                runs[row].append(result)
                print(f"# {row}: {result['ips']:.1f} img/s" + (f", forwards per batch per model "
                      f"{result['forwards_per_batch']}" if "forwards_per_batch" in result else ""), flush=True)
        print(f"\n| row | img/s (median of {args.repeats}) | runs | vs enhance r=1 | forwards per batch |")
        print("|---|---|---|---|---|")
        base = statistics.median(r["ips"] for r in runs["enhance"]) if runs.get("enhance") else None
        for row, results in runs.items():
            if not results:
                continue
            ips = statistics.median(r["ips"] for r in results)
            ratio = f"{ips / base:.2f} x" if base else "-"
            forwards = results[0].get("forwards_per_batch", "1 importance pass")
            each = ", ".join(f"{r['ips']:.1f}" for r in results)
            print(f"| {row} | {ips:.1f} | {each} | {ratio} | {forwards} |")
        print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
