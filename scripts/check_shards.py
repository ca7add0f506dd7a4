#!/usr/bin/env python
"""Shards against folders with the real ImageNet MobileNetV2, on generated photo-like JPEGs
and PNGs with ``.cls``/``.json`` sidecars, and peak memory against the number of shards.

``equal``: the same N images as a folder (``KEY.jpg``, ``KEY.cls``, ``KEY.json`` flat) and
as tar shards (100 samples each), both enhanced at r = 1 (so both jobs select every key;
at r < 1 the folder hashes ``KEY.jpg`` and the shards ``SHARD/KEY``, by design, and select
different files). Prints how many images have identical masks and identical bytes, the
largest share of mask pixels that differ, whether pixels are equal wherever the masks agree
(PNGs exactly; for JPEGs the count of images with equal bytes), and whether every sidecar
is byte for byte.

``memory``: ``latinhib enhance`` (r = 0.3) on 1, 5 and 20 shards of 50 samples, each in its
own process; prints each run's peak RSS.

Usage::

    .venv/bin/python -m scripts.check_shards equal --images 2000
    .venv/bin/python -m scripts.check_shards memory
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ARGS = ["--device", "cpu", "--batch-size", "16", "--quiet", "--set", "model.target=pred"]


def make_samples(count: int, seed: int = 0):
    """(key, [(ext, bytes)]) photo-like: smooth shapes plus noise, 96-160 px."""
    rng = np.random.default_rng(seed)
    for number in range(count):
        w, h = int(rng.integers(96, 160)), int(rng.integers(96, 160))
        small = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, size=(h, w, 3)).astype(np.int16)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        fmt, ext = ("PNG", "png") if number % 5 == 0 else ("JPEG", "jpg")
        image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        key = f"{number:06d}"
        yield key, [(ext, buffer.getvalue()), ("cls", str(number % 10).encode()),
                    ("json", json.dumps({"n": number}).encode())]


def write_shards(folder: Path, samples, per_shard: int, prefix: str = "train") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tar = None
    for index, (key, members) in enumerate(samples):
        if index % per_shard == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(folder / f"{prefix}-{index // per_shard:06d}.tar", "w")
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if tar is not None:
        tar.close()


def enhance(*argv) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "latinhib", "enhance", *map(str, argv), *ARGS], check=True)
    return time.perf_counter() - started


def equal(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        samples = list(make_samples(args.images))
        folder = root / "folder"
        folder.mkdir()
        for key, members in samples:
            for ext, data in members:
                (folder / f"{key}.{ext}").write_bytes(data)
        write_shards(root / "shards", samples, 100)
        t_folder = enhance(folder, root / "fdst", "--ratio", "1", "--save-masks", root / "fmasks")
        t_shards = enhance(root / "shards", root / "sdst", "--ratio", "1", "--save-masks", root / "smasks")
        same_mask = same_bytes = png_exact = pngs = 0
        worst = 0.0
        sidecars_equal = True
        for tar_path in sorted((root / "sdst").glob("*.tar")):
            with tarfile.open(tar_path) as tar:
                for member in tar.getmembers():
                    data = tar.extractfile(member).read()
                    key, ext = member.name.split(".", 1)
                    if ext in ("cls", "json"):
                        sidecars_equal &= data == (folder / member.name).read_bytes()
                        continue
                    mask_s = np.asarray(Image.open(root / "smasks" / tar_path.name / f"{key}.png")) > 127
                    mask_f = np.asarray(Image.open(root / "fmasks" / f"{member.name}.png")) > 127
                    differ = float((mask_s != mask_f).mean())
                    worst = max(worst, differ)
                    same_mask += differ == 0
                    same_bytes += data == (root / "fdst" / member.name).read_bytes()
                    if ext == "png":
                        pngs += 1
                        a = np.asarray(Image.open(io.BytesIO(data)))
                        b = np.asarray(Image.open(root / "fdst" / member.name))
                        png_exact += bool((a[mask_s == mask_f] == b[mask_s == mask_f]).all())
        print(f"{args.images} images (r = 1, MobileNetV2 ImageNet weights, batch 16): folder job {t_folder:.1f} s, "
              f"shard job {t_shards:.1f} s ({args.images // 100} shards of 100)")
        print(f"identical masks: {same_mask}/{args.images}; largest share of differing mask pixels: {worst:.4%}")
        print(f"identical output bytes: {same_bytes}/{args.images}; PNGs equal wherever the masks agree: "
              f"{png_exact}/{pngs}; sidecars byte for byte: {sidecars_equal}")


def memory(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        for count in (1, 5, 20):
            shards = root / f"src-{count}"
            write_shards(shards, make_samples(50 * count, seed=count), 50)
            code = ("import resource, sys; from latinhib.cli import main\n"
                    "try:\n    main()\nexcept SystemExit:\n    pass\n"
                    "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code, "enhance", str(shards), str(root / f"dst-{count}"),
                                   "--ratio", "0.3", *ARGS], capture_output=True, text=True, check=True)
            rss = float(proc.stdout.split("RSS")[-1])
            print(f"{count:2d} shards ({50 * count:4d} samples): peak RSS {rss:.0f} MB, "
                  f"{time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=("equal", "memory"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--tmp", default=None)
    args = parser.parse_args()
    print(f"# load {os.getloadavg()[0]:.2f}, cpus {os.cpu_count()}", flush=True)
    {"equal": equal, "memory": memory}[args.check](args)


if __name__ == "__main__":
    main()
