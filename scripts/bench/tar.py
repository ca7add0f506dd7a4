#!/usr/bin/env python
"""Reading and writing WebDataset tar shards: the ``webdataset`` package against the
standard library's ``tarfile``, on the same shards (what ``latinhib/shards.py`` chose by).

Generates SHARDS shards of SAMPLES samples each (``KEY.jpg`` of 20-80 KB of random bytes,
``KEY.cls``, ``KEY.json``: tar I/O does not care whether the bytes decode), in a temporary
folder on the same disk as the output (page cache warm after the first pass), and prints
MB/s and samples/s per method, the median of ``--repeats`` alternating runs:

read
  ``wds``          ``webdataset.WebDataset(urls)`` without decoders: samples as dicts of bytes
  ``tar-stream``   ``tarfile.open(mode="r|")``, members grouped by key (one pass, no seeks;
                   what a ``pipe:`` source has to do)
  ``tar-index``    ``tarfile.open(mode="r:")`` lists the headers (it seeks past the data),
                   then each member's bytes are read at their offset (``os.pread``)
write (one output shard per input shard, every member, from bytes in memory)
  ``wds``          ``webdataset.TarWriter.write(sample)`` (writes a sample's members sorted by
                   extension, with its own mtime/mode/owner: not the input's headers)
  ``tar-addfile``  ``tarfile.addfile(copied TarInfo, BytesIO)``: members in input order,
                   headers as in the input

Usage::

    .venv/bin/python -m scripts.bench.tar                       # 10 shards x 200 samples, 3 repeats
    .venv/bin/python -m scripts.bench.tar --shards 20 --samples 500
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List


def make_shards(folder: Path, shards: int, samples: int, seed: int = 0) -> List[Path]:
    import random

    rng = random.Random(seed)
    paths = []
    for s in range(shards):
        path = folder / f"train-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for k in range(samples):
                key = f"{s:06d}{k:06d}"
                for ext, data in (("jpg", rng.randbytes(rng.randint(20_000, 80_000))),
                                  ("cls", str(k % 10).encode()), ("json", b'{"caption": "a photo"}')):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    info.mtime = 1_700_000_000
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def read_wds(paths: List[Path]) -> int:
    import webdataset as wds

    total = 0
    for sample in wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False):
        total += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
    return total


def read_stream(paths: List[Path]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            current, sample = None, {}
            for info in tar:
                if not info.isreg():
                    continue
                key, _, ext = info.name.partition(".")
                if key != current:
                    total += sum(len(v) for v in sample.values())
                    current, sample = key, {}
                sample[ext] = tar.extractfile(info).read()
                tar.members = []  # what webdataset does too: the member list would grow with the shard
            total += sum(len(v) for v in sample.values())
    return total


def read_index(paths: List[Path]) -> int:
    total = 0
    for path in paths:
        with tarfile.open(path, "r:") as tar:
            members = [(m.offset_data, m.size) for m in tar.getmembers() if m.isreg()]
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset, size in members:
                total += len(os.pread(fd, size, offset))
        finally:
            os.close(fd)
    return total


def _load(paths: List[Path]) -> List[List[tarfile.TarInfo]]:
    """Every shard's members, data held in memory (the writers' input)."""
    shards = []
    for path in paths:
        with tarfile.open(path, "r:") as tar:
            shards.append([(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()])
    return shards


def write_wds(shards, out: Path) -> int:
    import webdataset as wds

    total = 0
    for s, members in enumerate(shards):
        with wds.TarWriter(str(out / f"wds-{s:06d}.tar")) as writer:
            sample: Dict[str, bytes] = {}
            for info, data in members:
                key, _, ext = info.name.partition(".")
                if sample and sample["__key__"] != key:
                    writer.write(sample)
                    sample = {}
                sample["__key__"] = key
                sample[ext] = data
                total += len(data)
            if sample:
                writer.write(sample)
    return total


def write_addfile(shards, out: Path) -> int:
    total = 0
    for s, members in enumerate(shards):
        with tarfile.open(out / f"tar-{s:06d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data))
                total += len(data)
    return total


def timed(fn: Callable[[], int]) -> tuple:
    started = time.perf_counter()
    nbytes = fn()
    return nbytes, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="latinhib-bench-tar-") as tmp:
        folder = Path(tmp)
        paths = make_shards(folder, args.shards, args.samples)
        shards = _load(paths)
        out = folder / "out"
        out.mkdir()
        readers = {"wds": read_wds, "tar-stream": read_stream, "tar-index": read_index}
        writers = {"wds": write_wds, "tar-addfile": write_addfile}
        runs: Dict[str, List[float]] = {f"read {k}": [] for k in readers}
        runs.update({f"write {k}": [] for k in writers})
        nbytes = {}
        for _ in range(args.repeats):  # alternating, so drifting load hits every method
            for name, fn in readers.items():
                nbytes[f"read {name}"], seconds = timed(lambda: fn(paths))
                runs[f"read {name}"].append(seconds)
            for name, fn in writers.items():
                nbytes[f"write {name}"], seconds = timed(lambda: fn(shards, out))
                runs[f"write {name}"].append(seconds)
        n = args.shards * args.samples
        print(f"{args.shards} shards x {args.samples} samples (3 members each), {nbytes['read tar-index'] / 1e6:.0f} MB, "
              f"median of {args.repeats} alternating runs")
        for name, seconds in runs.items():
            median = statistics.median(seconds)
            print(f"{name:18s} {nbytes[name] / 1e6 / median:8.0f} MB/s {n / median:10.0f} samples/s   "
                  f"(runs: {', '.join(f'{s:.3f}' for s in seconds)} s)")


if __name__ == "__main__":
    main()
