#!/usr/bin/env python
"""The ceiling of everything but the model (issue 25, items 1 and 4), and the end-to-end
figures against the model and codec floors, side by side in one run.

Rows (each in its own subprocess, so its peak RSS and its threads are its own):

- ``floor``: the model alone, forward + one autograd.grad to the default layers, on tensors
  in memory (``scripts/bench/enhance.py``'s floor; the dtype the job runs in is printed).
- ``pillow``: the plain Pillow codec floor: per file, Pillow decode -> tensor -> blur
  (``filters.blur_uint8``, on a reduced copy where the sigma is large) -> blend with a mask
  -> Pillow JPEG encode -> write, on ``--threads`` threads; no bookkeeping at all.
- ``stub``: ``latinhib.pipeline.run`` end to end (list, plan, decode, resize, steps 6-8,
  encode, write, manifest) with the model pass made free: ``LateralInhibition.importance``
  returns importance maps of the right shape at once. Its img/s is the ceiling the GPU
  cannot push past; per core it says how many cores a GPU enhancing N img/s needs.
- ``stub-tv`` / ``stub-pil``: the same with ``runtime.codec`` torchvision / pillow.
- ``r1`` / ``r03``: the real job (resnet18 by default) at r = 1 and r = 0.3.

Images are made from scikit-image's photos (astronaut, chelsea, coffee, rocket), cropped,
resized and lightly noised (sensor-like texture) and saved at quality 90: ImageNet-like
500x375 files and 12-megapixel (4000x3000) ones.

    nice .venv/bin/python scripts/bench/ceiling.py                        # ~6 min on 2 cores
    nice .venv/bin/python scripts/bench/ceiling.py --sizes imagenet --rows floor,pillow,stub,r1,r03
    python scripts/bench/ceiling.py --device cuda --arch resnet50 --batch-size 128   # on a GPU

Numbers are only comparable within one run (the machine is shared: check the load line).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(SCRIPTS.parent))

SIZES = {"imagenet": (500, 375), "12mp": (4000, 3000)}
#: Files per size: enough for steady state on 2 cores without a long run.
COUNTS = {"imagenet": 480, "12mp": 32}
ROWS = ("floor", "pillow", "stub", "stub-pil", "stub-tv", "r1", "r03")


def make_photos(folder: Path, count: int, size, seed: int = 0) -> None:
    """``count`` JPEGs (quality 90) of ``size`` (W, H) from scikit-image's photos, in two
    class folders."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(count):
        photo = photos[i % len(photos)]
        ph, pw = photo.shape[:2]
        # a random crop of the photo's aspect 4:3 (or as near as it allows), then resized
        cw = min(pw, int(ph * 4 / 3)) * rng.uniform(0.7, 1.0)
        ch = cw * 3 / 4
        x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, max(ph - ch, 0))
        image = Image.fromarray(photo).crop((int(x0), int(y0), int(x0 + cw), int(y0 + ch))).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 3, size=(h, w, 3)).astype(np.int16)
        out = folder / f"class{i % 2}" / f"photo{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, quality=90)


def stub_importance():
    """Make the model pass free: importance maps of the right shape (a centred disc kept,
    the rest blurred) for every batch, at once."""
    import torch

    from latinhib import api

    cache = {}

    def importance(self, images, targets=None):
        n, _, h, w = images.shape
        if (h, w) not in cache:
            ys = torch.linspace(-1, 1, h)[:, None]
            xs = torch.linspace(-1, 1, w)[None, :]
            cache[(h, w)] = (1 - (ys**2 + xs**2).sqrt() / 2 ** 0.5).clamp(0, 1)
        combined = cache[(h, w)].to(images.device).expand(n, h, w)
        return api.Importance(
            combined=combined, threshold=torch.full((n,), 0.5, device=images.device),
            valid=torch.ones(n, dtype=torch.bool, device=images.device),
            predicted=torch.zeros(n, dtype=torch.long, device=images.device),
            logits=torch.zeros(n, 1000, device=images.device), target="pred", layer_maps=[], layers=[],
            quantile=torch.full((n,), 0.5, device=images.device))

    api.LateralInhibition.importance = importance


def row_pillow(args, src: Path) -> dict:
    """Decode, blur, blend, encode, write with Pillow and torch: nothing else."""
    import numpy as np
    import torch
    from PIL import Image

    from latinhib.filters import blur_uint8

    paths = sorted(src.rglob("*.jpg"))
    out = Path(tempfile.mkdtemp(dir=args.tmp))

    def one(k_path):
        torch.set_num_threads(1)
        k, path = k_path
        with Image.open(path) as opened:
            pixels = torch.from_numpy(np.array(opened.convert("RGB"))).permute(2, 0, 1)[None]
        h, w = pixels.shape[-2:]
        blurred = blur_uint8(pixels.contiguous(memory_format=torch.channels_last), 4.0 * min(h, w) / 224)
        keep = torch.zeros(h, w, dtype=torch.bool)
        keep[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
        blended = torch.where(keep, pixels, blurred)[0]
        image = Image.fromarray(blended.permute(1, 2, 0).contiguous().numpy())
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        (out / f"{k}.jpg").write_bytes(buffer.getvalue())

    one((0, paths[0]))  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.threads or 1) as pool:
        list(pool.map(one, enumerate(paths)))
    return {"images": len(paths), "seconds": time.perf_counter() - start}


def row_job(args, src: Path, ratio: float, codec=None, stub=False) -> dict:
    from scripts.bench import enhance as bench

    if stub:
        stub_importance()
    if codec:
        os.environ["LATINHIB_BENCH_CODEC"] = codec
    bench_args = argparse.Namespace(**vars(args))
    bench_args.src = str(src)
    bench_args.workers = args.workers
    if codec:  # runtime.codec, where this tree has it
        original = bench._config

        def with_codec(a, r, path=None):
            import dataclasses

            config = original(a, r, path)
            if hasattr(config.runtime, "codec"):
                config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, codec=codec))
            return config

        bench._config = with_codec
    return bench.row_enhance(bench_args, src, ratio)


def run_row(args) -> None:
    import torch

    from latinhib.allocator import keep_large_blocks

    keep_large_blocks()
    if args.threads:
        torch.set_num_threads(args.threads)
    src = Path(args.src)
    row = args.row
    if row == "floor":
        from scripts.bench import enhance as bench

        result = bench.row_floor(args, src)
        from latinhib.api import amp_dtype

        result["dtype"] = str(amp_dtype("auto", torch.device(args.device)) or torch.float32)
    elif row == "pillow":
        result = row_pillow(args, src)
    elif row.startswith("stub"):
        codec = {"stub-tv": "torchvision", "stub-pil": "pillow"}.get(row)
        result = row_job(args, src, 1.0, codec=codec, stub=True)
    else:
        result = row_job(args, src, 1.0 if row == "r1" else 0.3)
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("BENCH-RESULT " + json.dumps(result, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="threads (streams) per run")
    parser.add_argument("--sizes", default="imagenet,12mp")
    parser.add_argument("--counts", default="", help="files per size, e.g. imagenet=1600 (default: "
                        + ", ".join(f"{k}={v}" for k, v in COUNTS.items()) + ")")
    parser.add_argument("--rows", default="floor,pillow,stub,stub-pil,stub-tv,r1,r03")
    parser.add_argument("--gpu-rates", type=float, nargs="+", default=[1000.0, 3000.0],
                        help="img/s a GPU enhances, for the cores-needed line")
    parser.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        args.threads = args.threads[0]
        return run_row(args)
    rows = args.rows.split(",")
    cuda = args.device.startswith("cuda")
    counts = dict(COUNTS, **{k: int(v) for k, v in (pair.split("=") for pair in args.counts.split(",") if pair)})
    table = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in args.sizes.split(","):
            src = Path(tmp) / size
            count = counts[size] * (8 if cuda else 1)
            make_photos(src, count, SIZES[size])
            for threads in args.threads:
                for row in rows:
                    if row in ("r1", "r03", "floor") and size != "imagenet":
                        continue  # the model's rows: at ImageNet's size only
                    cmd = [sys.executable, __file__, "--row", row, "--src", str(src), "--threads", str(threads),
                           "--arch", args.arch, "--device", args.device, "--batch-size", str(args.batch_size),
                           "--workers", str(args.workers), "--images", str(count), "--tmp", str(tmp)]
                    if args.weights:
                        cmd += ["--weights", args.weights]
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH-RESULT ")]
                    if proc.returncode or not lines:
                        print(f"# {size} {row} x{threads} failed (exit {proc.returncode}):\n{proc.stderr[-1500:]}",
                              flush=True)
                        continue
                    result = json.loads(lines[-1][len("BENCH-RESULT "):])
                    result["ips"] = result["images"] / result["seconds"]
                    table.append((size, threads, row, result))
                    print(f"# {size} {row} threads {threads}: {json.dumps(result)}", flush=True)
    print(f"\n# {args.arch} on {args.device}, batch {args.batch_size}, cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'size':>9} {'threads':>7} {'row':>9} {'img/s':>8} {'img/s/core':>10} {'steady':>8} {'RSS MB':>7}")
    by = {}
    for size, threads, row, result in table:
        cores = 1 if cuda else threads
        by[(size, threads, row)] = result
        steady = result.get("steady_ips")
        print(f"{size:>9} {threads:>7} {row:>9} {result['ips']:8.1f} {result['ips'] / cores:10.1f} "
              f"{steady if steady else float('nan'):8.1f} {result['rss_mb']:7.0f}" +
              (f"  ({result['dtype']})" if "dtype" in result else ""))
    for size in args.sizes.split(","):
        for threads in args.threads:
            stub = by.get((size, threads, "stub"))
            if stub:
                per_core = (stub.get("steady_ips") or stub["ips"]) / (1 if cuda else threads)  # start-up aside
                need = ", ".join(f"{rate:.0f} img/s -> {rate / per_core:.0f} cores" for rate in args.gpu_rates)
                print(f"{size} x{threads}: the ceiling is {per_core:.1f} img/s per core; a GPU enhancing {need}")
    for threads in args.threads:
        floor, pillow = by.get(("imagenet", threads, "floor")), by.get(("imagenet", threads, "pillow"))
        r1, r03 = by.get(("imagenet", threads, "r1")), by.get(("imagenet", threads, "r03"))
        if floor and pillow and r1:
            limit = 1 / (1 / floor["ips"] + 1 / pillow["ips"])
            print(f"threads {threads}: model floor {floor['ips']:.1f} ({floor.get('dtype')}) and Pillow codec floor "
                  f"{pillow['ips']:.1f} img/s on the same cores allow {limit:.1f}; r=1 {r1['ips']:.1f} = "
                  f"{r1['ips'] / limit:.2f} of it (steady {r1.get('steady_ips') or float('nan'):.1f} = "
                  f"{(r1.get('steady_ips') or float('nan')) / limit:.2f})" +
                  (f"; r=0.3 {r03['ips']:.1f} = {r03['ips'] / r1['ips']:.2f}x r=1" if r03 else ""))


if __name__ == "__main__":
    main()
