#!/usr/bin/env python
"""Start-up of the `latinhib` command: `--version`, `enhance --help`, and a job's time to its
first written batch, for one or more copies of the package side by side.

Each tree is a folder holding a `latinhib/` package (this checkout, or an older commit
unpacked with `git archive <commit> latinhib | tar -x -C /tmp/before`). Every measurement
starts a fresh `python -m latinhib` with that tree first on PYTHONPATH; the trees alternate
within each repeat (the machine's load drifts) and the median of the repeats is printed.

- `--version` / `enhance --help`: wall time of the whole command, and whether `torch` was
  imported at all (`python -X importtime`).
- job: `latinhib enhance` on a generated folder of JPEGs (every image selected, the default
  ImageNet MobileNetV2, batch 8), timed from the process start to the first line of its
  manifest (the first batch written and recorded), and to its exit.

    .venv/bin/python -m scripts.bench.startup --tree before=/tmp/before --tree after=. --repeats 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for n in range(count):
        pixels = rng.integers(0, 255, (240, 320, 3)).astype(np.uint8)
        folder = root / f"class{n % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"img{n:03d}.jpg", quality=90)


def environment(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree.resolve())}


#: Every command runs here, not in the caller's folder: ``python -m`` puts the current
#: folder first on sys.path, and a checkout there would shadow the tree measured.
NEUTRAL = tempfile.mkdtemp(prefix="latinhib-startup-")


def time_command(tree: Path, args) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "latinhib", *args], env=environment(tree), check=True, cwd=NEUTRAL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def imports_torch(tree: Path, args) -> bool:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "latinhib", *args], env=environment(tree),
                          capture_output=True, text=True, check=True, cwd=NEUTRAL)
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in proc.stderr.splitlines())


def time_job(tree: Path, src: Path, dst: Path, threads: int) -> tuple:
    """(seconds to the first manifest line, seconds to exit)."""
    manifest = dst / "latinhib-manifest.jsonl"
    command = [sys.executable, "-m", "latinhib", "enhance", str(src), str(dst), "--ratio", "1", "--batch-size", "8",
               "--device", "cpu", "--set", f"runtime.threads={threads}", "--quiet"]
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=environment(tree), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=NEUTRAL)
    first = None
    while proc.poll() is None:
        if first is None and manifest.exists() and manifest.stat().st_size > 0:
            first = time.perf_counter() - started
        time.sleep(0.002)
    total = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr.read().decode()[-2000:]}")
    return (first if first is not None else total), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                        help="A folder holding a latinhib package; repeat to compare (e.g. before=/tmp/before).")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="runtime.threads of the job.")
    args = parser.parse_args()
    trees = [(name, Path(folder)) for name, folder in (t.split("=", 1) for t in args.tree)]
    for name, tree in trees:  # the package each tree really loads
        where = subprocess.run([sys.executable, "-c", "import latinhib; print(latinhib.__file__)"], cwd=NEUTRAL,
                               env=environment(tree), capture_output=True, text=True, check=True).stdout.strip()
        print(f"{name}: {where}")
    print(f"load before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    results = {name: {"version": [], "help": [], "first": [], "job": []} for name, _ in trees}
    with tempfile.TemporaryDirectory() as scratch:
        src = Path(scratch) / "src"
        make_folder(src, args.images)
        for repeat in range(args.repeats):
            for name, tree in trees:
                row = results[name]
                row["version"].append(time_command(tree, ["--version"]))
                row["help"].append(time_command(tree, ["enhance", "--help"]))
                first, total = time_job(tree, src, Path(scratch) / f"dst-{name}-{repeat}", args.threads)
                row["first"].append(first)
                row["job"].append(total)
    print(f"load after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"median of {args.repeats} runs (s); job: {args.images} JPEGs 320x240, MobileNetV2, batch 8, "
          f"runtime.threads={args.threads}")
    print(f"{'tree':<10} {'--version':>10} {'torch?':>7} {'enh --help':>11} {'torch?':>7} "
          f"{'1st batch':>10} {'job exit':>9}")
    for name, tree in trees:
        row = results[name]
        med = {key: statistics.median(values) for key, values in row.items()}
        print(f"{name:<10} {med['version']:>10.2f} {str(imports_torch(tree, ['--version'])):>7} "
              f"{med['help']:>11.2f} {str(imports_torch(tree, ['enhance', '--help'])):>7} "
              f"{med['first']:>10.2f} {med['job']:>9.2f}")
        print(f"{'':<10} runs: --version {_runs(row['version'])}; --help {_runs(row['help'])}; "
              f"1st batch {_runs(row['first'])}")


def _runs(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
