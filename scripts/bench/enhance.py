#!/usr/bin/env python
"""Throughput of ``latinhib enhance`` against its floor and against pytorch-grad-cam.

One run, same machine, model, layers (``latinhib.importance.default_layers``), batch size
and images (a generated folder of ~ImageNet-sized JPEGs, 500x375 with a few other sizes
mixed in). Each row runs in its own subprocess, so its peak RSS is its own:

1. ``floor``: the model's forward + one ``torch.autograd.grad`` to the captured
   activations of the default layers, on tensors already in memory at the input size
   (same AMP and channels_last as latinhib). No implementation of the method can beat it.
2. ``enhance r=1``: ``latinhib.pipeline.run`` end to end (list, decode, resize, importance,
   inhibition, blur at full size, encode, write), every image enhanced.
3. ``enhance r=0.3``: the same, 30% enhanced, the rest copied byte for byte.
4. ``grad-cam r=1``: what a user would otherwise write with pytorch-grad-cam (``pip install
   grad-cam``, the ``bench`` extra): GradCAM on the same layers over a DataLoader,
   thresholded at the same quantile, the background blurred with OpenCV, files written.
   Given the very same model object (channels_last, eval) as latinhib.
5. ``r1-wds`` / ``r03-wds`` (not in the default set): ``enhance`` on the same JPEGs as
   WebDataset tar shards (48 samples each, a ``.cls`` sidecar per image), shards out; the
   r = 0.3 selection hashes ``SHARD/KEY``, so it enhances other files than ``r03``
   (the count is printed).
6. ``r1-paper`` (not in the default set): ``enhance r=1`` under configs/paper.yaml, the
   defaults before issue 13 (fixed-sigma LoG on the gradient, q 0.5, float32), so the
   price of the shipped mask defaults is measured side by side.

Usage::

    .venv/bin/python -m scripts.bench.enhance --arch resnet18                  # CPU, 2 cores: ~2 min
    .venv/bin/python -m scripts.bench.enhance --arch mobilenet_v2
    .venv/bin/python -m scripts.bench.enhance --device cuda --arch resnet50 --batch-size 128 --quick
    .venv/bin/python -m scripts.bench.enhance --arch resnet18 --repeats 3     # median of 3 alternating runs per row

Prints a table of images/s, ratios, peak RSS (and peak GPU memory on CUDA). Numbers are
only comparable within one run; check ``uptime``: other processes on the machine skew them.
Every row runs with the malloc setting of ``latinhib enhance`` (``latinhib.allocator``), so
no row pays for page faults the CLI does not (the floor varied 55-88 img/s without it).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = ("floor", "r1", "r03", "gradcam")
#: The same images as WebDataset tar shards in and out (not in the default set), against
#: r1/r03's folder in and out, e.g. --rows r1,r1-wds,r03,r03-wds --repeats 3.
SHARD_ROWS = ("r1-wds", "r03-wds")
SHARD_SIZE = 48  # samples per shard: 480 images -> 10 shards
#: The same rows under glibc's default malloc (not in the default set): the baseline of
#: latinhib.allocator, e.g. --rows floor,floor-m,r1,r1-m --repeats 3.
MALLOC_ROWS = ("floor-m", "r1-m")
#: ``enhance r=1`` under configs/paper.yaml (not in the default set): the defaults before
#: issue 13 (fixed-sigma LoG on the gradient, q 0.5, float32), against the shipped ones,
#: e.g. --rows r1,r1-paper --repeats 3.
PAPER_ROWS = ("r1-paper",)
PAPER_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "paper.yaml"
SIZES = [(500, 375)] * 6 + [(375, 500), (640, 480), (500, 333), (800, 600)]


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs (quality 90) in two class folders: smooth shapes plus a little
    noise, so decode/encode cost is that of a photo rather than of white noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        small = rng.uniform(0, 255, size=(12, 16, 3)).astype(np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, size=(h, w, 3)).astype(np.int16)
        out = folder / f"class{i % 2}" / f"img{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, quality=90)


def _config(args, ratio: float, path=None):
    from latinhib.config import load_config

    return load_config(path, overrides={
        "model.arch": args.arch,
        "model.weights": args.weights,
        "model.target": "pred",
        "inhibition.ratio": ratio,
        "runtime.device": args.device,
        "runtime.batch_size": args.batch_size,
        "runtime.workers": args.workers,
        "output.overwrite": True,
    })


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def row_floor(args, src: Path) -> dict:
    """Forward + one autograd.grad to the default layers' activations, inputs in memory."""
    import torch

    from scripts.bench.core import floor_step  # the same floor as scripts/bench/core.py

    from latinhib.importance import default_layers
    from latinhib.models import load_model
    from latinhib.runtime import amp_dtype, resolve_device

    config = _config(args, 1.0)
    device = resolve_device(config.runtime.device)
    loaded = load_model(config.model, device)
    model = loaded.model
    layers = default_layers(model, loaded.input_size)
    b = args.batch_size
    x = torch.randn(b, 3, *loaded.input_size, device=device).contiguous(memory_format=torch.channels_last)
    step = floor_step(model, x, layers, amp_dtype(config.runtime.amp, device))

    for _ in range(2):
        step()
    _sync(device)
    batches = max(1, args.images // b)
    start = time.perf_counter()
    for _ in range(batches):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    return {"images": batches * b, "seconds": seconds, "layers": layers}


def make_shards(src: Path, folder: Path, shard_size: int = SHARD_SIZE) -> Path:
    """``src``'s JPEGs as tar shards (``KEY.jpg`` + ``KEY.cls``), in listing order."""
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(src.rglob("*.jpg"))
    for number in range(0, len(paths), shard_size):
        with tarfile.open(folder / f"bench-{number // shard_size:06d}.tar", "w") as tar:
            for path in paths[number:number + shard_size]:
                key = f"{path.parent.name}_{path.stem}"
                tar.add(path, arcname=f"{key}.jpg")
                info = tarfile.TarInfo(f"{key}.cls")
                info.size = 1
                tar.addfile(info, io.BytesIO(path.parent.name[-1].encode()))
    return folder


def row_enhance(args, src: Path, ratio: float, shards: bool = False, path=None) -> dict:
    from latinhib.pipeline import JobOptions, run

    config = _config(args, ratio, path)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if shards:  # made before the clock starts, like the folder itself
            src = make_shards(src, Path(tmp) / "shards")
        # Warm-up on a few images (imports, allocator, kernels), untimed.
        warm_src = Path(tmp) / "warm"
        for path in sorted(Path(args.src).rglob("*.jpg"))[: args.batch_size]:
            (warm_src / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, warm_src / path.parent.name / path.name)
        run(_config(args, 1.0), warm_src, Path(tmp) / "warm-out", JobOptions(quiet=True))
        written = []
        start = time.perf_counter()
        timed = JobOptions(quiet=True, on_output=lambda _: written.append(time.perf_counter()))
        summary = run(config, src, Path(tmp) / "out", timed)
        seconds = time.perf_counter() - start
    done = summary.enhanced + summary.copied + summary.unchanged
    # Steady state: the images written after the first batch's, over the time they took
    # (leaves out the one-off start: model build, layer probe, worker start, first decode).
    k = min(args.batch_size, len(written) - 1)
    steady = (len(written) - k) / (written[-1] - written[k - 1]) if k > 0 and written[-1] > written[k - 1] else None
    return {"images": done, "seconds": seconds, "enhanced": summary.enhanced, "failed": summary.failed,
            "startup_s": written[0] - start if written else None, "steady_ips": steady}


def row_gradcam(args, src: Path) -> dict:
    """What a user writes with pytorch-grad-cam: GradCAM on the same layers, threshold at
    the same quantile, blur the background with OpenCV, write the files."""
    import cv2
    import numpy as np
    import torch
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from torch.utils.data import DataLoader, Dataset

    from latinhib.importance import default_layers, resolve_layers
    from latinhib.models import load_model
    from latinhib.runtime import resolve_device

    config = _config(args, 1.0)
    device = resolve_device(config.runtime.device)
    loaded = load_model(config.model, device)
    model = loaded.model
    for p in model.parameters():  # grad-cam backpropagates into the weights as usual
        p.requires_grad_(True)
    layers = [m for _, m in resolve_layers(model, default_layers(model, loaded.input_size))]
    h, w = loaded.input_size
    mean = np.array(loaded.mean, dtype=np.float32)
    std = np.array(loaded.std, dtype=np.float32)
    files = sorted(src.rglob("*.jpg"))
    q, blur = config.inhibition.quantile, config.blur.sigma

    class Images(Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            rgb = np.asarray(Image.open(files[i]).convert("RGB"))
            x = (cv2.resize(rgb, (w, h)).astype(np.float32) / 255.0 - mean) / std
            return torch.from_numpy(x.transpose(2, 0, 1).copy()), i

    def collate(batch):
        return torch.stack([x for x, _ in batch]), [i for _, i in batch]

    loader = DataLoader(Images(), batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp, GradCAM(model=model, target_layers=layers) as cam:
        out_root = Path(tmp)

        def process(x, index, write=True):
            maps = cam(input_tensor=x.to(device), targets=None)  # (N, h, w) numpy in [0, 1]
            for m, i in zip(maps, index):
                image = cv2.imread(str(files[i]))  # BGR, full size
                m = cv2.resize(m, (image.shape[1], image.shape[0]))
                keep = (m > np.quantile(m, q))[..., None]
                sigma = blur * min(image.shape[:2]) / min(h, w)
                out = np.where(keep, image, cv2.GaussianBlur(image, (0, 0), sigma))
                if write:
                    target = out_root / files[i].relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(target), out, [cv2.IMWRITE_JPEG_QUALITY, config.output.jpeg_quality])

        first = next(iter(DataLoader(Images(), batch_size=args.batch_size, collate_fn=collate)))
        process(*first, write=False)  # warm-up, untimed
        _sync(device)
        start = time.perf_counter()
        done = 0
        for x, index in loader:
            process(x, index)
            done += len(index)
        _sync(device)
        seconds = time.perf_counter() - start
    return {"images": done, "seconds": seconds}


def run_row(args) -> None:
    import torch

    from latinhib.allocator import keep_large_blocks

    # As `latinhib enhance` does, for every row alike: without it each batch's activations
    # land on freshly mapped pages, and the floor alone varied 55-88 img/s between runs.
    # Rows ending in "-m" keep glibc's defaults, as the baseline.
    row = args.row[:-2] if args.row.endswith("-m") else args.row
    if row == args.row:
        keep_large_blocks()
    before = resource.getrusage(resource.RUSAGE_SELF)
    if args.threads:
        torch.set_num_threads(args.threads)
    src = Path(args.src)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if row == "floor":
        result = row_floor(args, src)
    elif row == "r1":
        result = row_enhance(args, src, 1.0)
    elif row == "r03":
        result = row_enhance(args, src, 0.3)
    elif row == "r1-paper":
        result = row_enhance(args, src, 1.0, path=PAPER_CONFIG)
    elif row in SHARD_ROWS:
        result = row_enhance(args, src, 1.0 if row == "r1-wds" else 0.3, shards=True)
    else:
        result = row_gradcam(args, src)
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["page_faults"] = after.ru_minflt - before.ru_minflt  # the whole row, set-up included
    result["kernel_s"] = after.ru_stime - before.ru_stime
    result["rss_mb"] = after.ru_maxrss / 1024
    result["workers_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if args.device.startswith("cuda"):
        result["gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("BENCH-RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--weights", default=None, help="torchvision weights (default: random; speed does not care)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 2 on CPU, 8 on CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--images", type=int, default=None, help="images in the folder (default 480 CPU, 1024 CUDA)")
    parser.add_argument("--quick", action="store_true", help="fewer images (96 CPU, 512 CUDA)")
    parser.add_argument("--repeats", type=int, default=1, help="run every row this many times, alternating; "
                        "report each row's median run (the machine's speed drifts)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}, "
                        f"or {', '.join(MALLOC_ROWS)}: floor and r1 under glibc's default malloc, "
                        f"or {', '.join(SHARD_ROWS)}: r1 and r03 on the same images as tar shards in and out, "
                        f"or {', '.join(PAPER_ROWS)}: r1 under configs/paper.yaml (the defaults before issue 13)")
    parser.add_argument("--src", default=None, help="use this image folder instead of generating one")
    parser.add_argument("--tmp", default=None, help="folder for temporary files")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if args.workers is None:
        args.workers = 8 if cuda else 2
    if args.images is None:
        args.images = (512 if cuda else 96) if args.quick else (1024 if cuda else 480)
    if args.row:
        run_row(args)
        return

    rows = [r for r in args.rows.split(",") if r]
    extra = MALLOC_ROWS + SHARD_ROWS + PAPER_ROWS
    unknown = set(rows) - set(ROWS) - set(extra)
    if unknown:
        parser.error(f"--rows: unknown {sorted(unknown)}; choose from {ROWS + extra}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        src = Path(args.src) if args.src else Path(tmp) / "images"
        if not args.src:
            make_images(src, args.images)
        args.images = len(list(src.rglob("*.jpg")))
        load = os.getloadavg()[0]
        print(f"# {args.arch} on {args.device}, batch {args.batch_size}, {args.images} JPEGs, workers {args.workers}, "
              f"threads {args.threads or 'default'}, cpus {os.cpu_count()}, load {load:.2f}", flush=True)
        runs: dict = {row: [] for row in rows}
        for repeat in range(args.repeats):  # rows alternate, so a change in load hits them all
            for row in rows:
                cmd = [sys.executable, "-m", __spec__.name, "--row", row, "--src", str(src)] + [
                    f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                    if k in ("arch", "device", "batch_size", "workers", "threads", "images", "tmp") and v is not None
                ] + ([f"--weights={args.weights}"] if args.weights else [])
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH-RESULT ")]
                if proc.returncode or not lines:
                    print(f"# row {row} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
                    continue
                result = json.loads(lines[-1][len("BENCH-RESULT "):])
                result["ips"] = result["images"] / result["seconds"]
                runs[row].append(result)
                print(f"# {row} (run {repeat + 1}): {json.dumps(result)}", flush=True)
        # Each row's median run (by img/s); its spread is printed below the table.
        results = {row: sorted(r, key=lambda x: x["ips"])[len(r) // 2] for row, r in runs.items() if r}
    names = {"floor": "floor (fwd + grad to layers)", "r1": "latinhib enhance r=1", "r03": "latinhib enhance r=0.3",
             "gradcam": "grad-cam peer r=1", "floor-m": "floor, default malloc", "r1-m": "enhance r=1, default malloc",
             "r1-wds": "enhance r=1, tar shards in/out", "r03-wds": "enhance r=0.3, tar shards in/out",
             "r1-paper": "enhance r=1, configs/paper.yaml"}
    floor = results.get("floor", {}).get("ips")
    r1 = results.get("r1", {}).get("ips")
    print(f"\n{'row':32} {'img/s':>8} {'x floor':>8} {'x r=1':>7} {'peak RSS MB':>12}" + (" peak GPU MB" if cuda else "")
          + "  steady img/s (x floor)")
    for row, result in results.items():
        ips = result["ips"]
        rss = max(result["rss_mb"], result.get("workers_rss_mb", 0))
        line = (f"{names[row]:32} {ips:8.1f} {ips / floor if floor else float('nan'):8.2f} "
                f"{ips / r1 if r1 else float('nan'):7.2f} {rss:12.0f}")
        if cuda:
            line += f" {result.get('gpu_mb', 0):11.0f}"
        if result.get("steady_ips"):
            line += f"  {result['steady_ips']:.1f} ({result['steady_ips'] / floor if floor else float('nan'):.2f})"
        print(line)
    if args.repeats > 1:
        print("img/s of every run: " + "; ".join(f"{row} " + ", ".join(f"{r['ips']:.1f}" for r in runs[row])
                                               for row in results))
    print("page faults / kernel s of each row's median run: " + "; ".join(
        f"{row} {r.get('page_faults', 0)} / {r.get('kernel_s', 0):.2f}" for row, r in results.items()))
    if r1 and results.get("r03", {}).get("enhanced"):
        r03 = results["r03"]
        ceiling = r03["images"] / r03["enhanced"]
        print(f"r=0.3 enhanced {r03['enhanced']} of {r03['images']} ({r03['enhanced'] / r03['images']:.1%}, the hash "
              f"selection's draw): copies free and no start-up would make it {ceiling:.2f}x r=1; it ran at "
              f"{r03['ips'] / r1:.2f}x ({r03['ips'] / r1 / ceiling:.0%} of that)")
    for row in ("r03", "r03-wds"):
        if row in results:
            print(f"{row}: {results[row]['enhanced']} of {results[row]['images']} enhanced")
    if r1 and "gradcam" in results:
        print(f"latinhib r=1 / grad-cam: {r1 / results['gradcam']['ips']:.2f}x")
    starts = {row: round(r["startup_s"], 2) for row, r in results.items() if r.get("startup_s") is not None}
    print(f"layers: {results.get('floor', {}).get('layers')}; seconds to first output: {starts}; "
          f"load at end {os.getloadavg()[0]:.2f}")
    print("img/s = images / whole run (enhance rows: model build and worker start included); steady = after the "
          "first batch's outputs")


if __name__ == "__main__":
    main()
