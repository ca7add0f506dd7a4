#!/usr/bin/env python
"""Per-file overhead of ``latinhib enhance`` on copies (issue 25, item 2), on tmpfs so the
disk's flushing does not blur it, side by side with what a copy costs at the least.

Rows, each at two sizes (default 20k and 200k files of an ImageNet-shaped tree, 1,000 class
folders of tiny JPEGs), each in its own subprocess (its peak RSS is its own, from wait4):

- ``cp -r``: the kernel's copy, no bookkeeping.
- ``loop``: the plain one-thread Python loop a user would write: copy each file to a
  temporary name, rename it, append a JSON manifest line.
- ``r=0``: ``latinhib enhance SRC DST --ratio 0 --quiet --json`` (every file a copy).
- ``rerun``: the same command again on the finished DST (everything already done).
- with ``--compare REV``: ``r=0`` and ``rerun`` of the code at git revision REV too (a
  temporary worktree of this repository on PYTHONPATH): before and after in one run.

Per row: seconds at each size, the marginal cost per file ((t_big - t_small) / (big - small),
so start-up and the model's loading are not counted), and the peak RSS growth per million
files. Then, in this process, listing and planning ``--listing N`` (default 1.28M) empty
files, by walking the folder and by ``--files-from``.

    nice .venv/bin/python scripts/bench/per_file.py                       # ~3-4 min on 2 cores
    nice .venv/bin/python scripts/bench/per_file.py --compare 0b23243 --listing 1280000 --repeats 3
    nice .venv/bin/python scripts/bench/per_file.py --sizes 2000 20000 --listing 0   # quick

Timings on a shared machine are noisy: compare rows of one run, rerun a figure that looks off.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
CLASSES = 1000

#: The plain loop, run as ``python -c`` with SRC, DST: what latinhib's copies are measured against.
PLAIN_LOOP = r'''
import json, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
with open(os.path.join(dst, "manifest.jsonl"), "w") as manifest:
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        out = os.path.join(dst, os.path.relpath(dirpath, src))
        os.makedirs(out, exist_ok=True)
        for name in sorted(filenames):
            target = os.path.join(out, name)
            tmp = os.path.join(out, "." + name + ".tmp")
            shutil.copyfile(os.path.join(dirpath, name), tmp)
            os.replace(tmp, target)
            manifest.write(json.dumps({"path": os.path.relpath(target, dst), "status": "copied"}) + "\n")
'''


def tiny_jpeg() -> bytes:
    """One small valid JPEG (~0.7 KB): the files' contents (copies never decode them)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (120, 80, 40)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_tree(root: Path, count: int, data: bytes = b"") -> None:
    """``count`` files in CLASSES folders named like ImageNet's (n00000000/n00000000_7.JPEG)."""
    per_class = -(-count // CLASSES)
    made = 0
    for c in range(CLASSES):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(min(per_class, count - made)):
            with open(folder / f"n{c:08d}_{i}.JPEG", "wb") as handle:
                handle.write(data)
            made += 1
        if made >= count:
            break


def timed(argv: List[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None) -> Tuple[float, float]:
    """(seconds, peak RSS MiB) of one subprocess."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... exited with {code}")
    return seconds, usage.ru_maxrss / 1024


def latinhib_argv(src: Path, dst: Path) -> List[str]:
    # --target pred: the tree's folders are no model's classes (what auto would pick, without its note)
    return [sys.executable, "-m", "latinhib", "enhance", str(src), str(dst), "--ratio", "0", "--quiet", "--json",
            "--device", "cpu", "--target", "pred"]


def code_env(tree: Path) -> Dict[str, str]:
    """The environment that runs latinhib from ``tree`` (PYTHONPATH wins over the editable install)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def rows_for(tmp: Path, sizes: List[int], trees: Dict[str, Path], repeats: int = 1) -> Dict[str, Dict[int, Tuple[float, float]]]:
    """Every row at every size, ``repeats`` rounds in turn (rows alternate, so the machine's
    drift spreads over all of them); each row's median seconds and median peak RSS."""
    runs: Dict[str, Dict[int, List[Tuple[float, float]]]] = {}
    for round_ in range(repeats):
        for size in sizes:
            src = tmp / f"src{size}"
            for name in ("cp -r", "loop"):
                dst = tmp / f"dst-{name.replace(' ', '')}-{size}"
                if name == "cp -r":
                    argv = ["cp", "-r", str(src), str(dst)]
                else:
                    dst.mkdir()
                    argv = [sys.executable, "-c", PLAIN_LOOP, str(src), str(dst)]
                runs.setdefault(name, {}).setdefault(size, []).append(timed(argv))
                shutil.rmtree(dst)
            for label, tree in trees.items():
                dst = tmp / f"dst-{label}-{size}"
                for row in (f"r=0 {label}", f"rerun {label}"):  # the rerun finds the r=0 run's DST finished
                    runs.setdefault(row, {}).setdefault(size, []).append(
                        timed(latinhib_argv(src, dst), code_env(tree), tree))
                shutil.rmtree(dst)
            print(f"  ... round {round_ + 1}/{repeats}: {size} files done", file=sys.stderr, flush=True)
    return {name: {size: (statistics.median(s for s, _ in done), statistics.median(r for _, r in done))
                   for size, done in by_size.items()} for name, by_size in runs.items()}


def print_rows(results, sizes: List[int]) -> None:
    small, big = sizes[0], sizes[-1]
    print(f"\n{'row':<16}" + "".join(f"{f'{n} files s':>14}" for n in sizes)
          + f"{'us/file':>10}{'x loop':>8}" + "".join(f"{f'RSS {n} MB':>13}" for n in sizes) + f"{'MB/M files':>12}")
    loop = (results["loop"][big][0] - results["loop"][small][0]) / (big - small) * 1e6
    for name, by_size in results.items():
        marginal = (by_size[big][0] - by_size[small][0]) / (big - small) * 1e6
        growth = (by_size[big][1] - by_size[small][1]) / (big - small) * 1e6
        print(f"{name:<16}" + "".join(f"{by_size[n][0]:>14.2f}" for n in sizes) + f"{marginal:>10.1f}"
              + f"{marginal / loop:>8.2f}" + "".join(f"{by_size[n][1]:>13.0f}" for n in sizes) + f"{growth:>12.0f}")
    print("us/file: (t at the largest size - t at the smallest) / the difference in files; MB/M files: the same "
          "for peak RSS, per million files")


def listing_rows(tmp: Path, count: int, trees: Dict[str, Path]) -> None:
    """:func:`listing` of one tree of ``count`` empty files by each code tree, in a subprocess each."""
    src = tmp / f"list{count}"
    started = time.perf_counter()
    make_tree(src, count)
    print(f"\nlisting + planning {count} files (tree made in {time.perf_counter() - started:.1f} s):", flush=True)
    for label, tree in trees.items():
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import per_file; "
                f"per_file.listing({str(src)!r}, {label!r})")
        subprocess.run([sys.executable, "-c", code], env=code_env(tree), cwd=tree, check=True)
    shutil.rmtree(src)


def listing(src: str, label: str) -> None:
    """List and plan the files under ``src`` in this process, walking and with --files-from."""
    from latinhib.config import Config
    from latinhib.plan import make_plan
    from latinhib.sinks import FolderSink
    from latinhib.sources import FolderSource

    src = Path(src)
    lines = [f"{d}/{name}" for d in sorted(os.listdir(src)) for name in sorted(os.listdir(src / d))]
    config = Config()
    sink = FolderSink(src.parent / "no-dst")
    for how, files_from in (("walk", None), ("--files-from", lines)):
        started = time.perf_counter()
        items = FolderSource(src, files_from=files_from).list().items
        listed = time.perf_counter() - started
        plan = make_plan(items, {}, config, sink)
        planned = time.perf_counter() - started
        print(f"  {label:<8} {how:<13} list {listed:6.2f} s, + plan {planned - listed:6.2f} s = {planned:6.2f} s "
              f"({len(plan.to_enhance)} to enhance, {len(plan.to_copy)} to copy)", flush=True)
        del items, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[20000, 200000], help="two or more (none: listing only)")
    parser.add_argument("--compare", metavar="REV", help="also run latinhib at this git revision, or from this "
                        "checkout's folder (before/after)")
    parser.add_argument("--listing", type=int, default=1280000, help="files to list and plan (0: skip)")
    parser.add_argument("--tmp", default="/dev/shm", help="where the trees go (tmpfs)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every row; each row's median is shown")
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    with tempfile.TemporaryDirectory(prefix="latinhib-perfile-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        trees = {"now": REPO}
        made = None
        if args.compare and Path(args.compare).is_dir():  # a checkout to compare with, as it is
            trees = {Path(args.compare).name: Path(args.compare).resolve(), "now": REPO}
        elif args.compare:
            made = tmp / "before"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(made), args.compare],
                           check=True)
            trees = {args.compare: made, "now": REPO}
        try:
            data = tiny_jpeg()
            for size in sizes:
                make_tree(tmp / f"src{size}", size, data)
            if len(sizes) >= 2:
                print_rows(rows_for(tmp, sizes, trees, args.repeats), sizes)
            if args.listing:
                listing_rows(tmp, args.listing, trees)
        finally:
            if made is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(made)])


if __name__ == "__main__":
    main()
