"""Images/s of latinhib's core on one batch, next to the floor it cannot beat.

core  = LateralInhibition(ratio 1) on a (32, 3, 224, 224) batch: importance (forward + one
        torch.autograd.grad to the default layers' activations), LoG + combine, quantile
        threshold, blur and blend.
floor = the same forward with frozen parameters and one torch.autograd.grad to the same
        captured activations, nothing else.

Both run in one process on the same batch, after warm-up, alternating within each
repetition, as the median of a few repetitions; each in the default (contiguous) and in
channels_last memory format. The machine's load average is printed: on a shared 2-core
box a busy neighbour slows 2-thread OpenMP kernels by far more than half.

    .venv/bin/python -m scripts.bench.core                   # resnet18 and mobilenet_v2, CPU
    .venv/bin/python -m scripts.bench.core --device cuda --batch-size 64
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, List, Optional

import torch
import torch.nn as nn
from torchvision import models

from latinhib import LateralInhibition
from latinhib.importance import default_layers, frozen_eval


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(steps: List[Callable[[], object]], device: torch.device, warmup: int, repeats: int) -> List[float]:
    """Median wall time of each step. The steps alternate within every repetition, so a
    change in machine load hits all of them alike."""
    for _ in range(warmup):
        for step in steps:
            step()
    synchronize(device)
    times: List[List[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times):
            start = time.perf_counter()
            step()
            synchronize(device)
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def floor_step(
    model: nn.Module, images: torch.Tensor, layers: List[str], autocast_dtype: Optional[torch.dtype] = None
) -> Callable[[], object]:
    """Plain forward + one autograd.grad to the captured activations (no clone: nothing
    in-place follows these layers' outputs in resnet18 / mobilenet_v2). The first captured
    layer starts the graph (parameters are frozen); later ones are already part of it.
    Also the floor row of scripts/bench/enhance.py."""
    modules = [model.get_submodule(name) for name in layers]
    enabled = autocast_dtype is not None

    def step():
        captured = []

        def hook(module, inputs, output):
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            captured.append(output)
            return output

        handles = [m.register_forward_hook(hook) for m in modules]
        try:
            with frozen_eval(model), torch.enable_grad():
                with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=enabled):
                    logits = model(images)
                return torch.autograd.grad(logits, captured, grad_outputs=torch.ones_like(logits))
        finally:
            for handle in handles:
                handle.remove()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--amp", default="off", help="runtime.amp for the core (auto, off, bf16, fp16)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, load {load:.1f}, "
          f"batch {args.batch_size}x3x{args.size}x{args.size}, warm-up {args.warmup}, median of {args.repeats}")
    print(f"{'arch':<14}{'format':<16}{'core img/s':>12}{'floor img/s':>13}{'core/floor':>12}")
    for arch in args.archs:
        model = getattr(models, arch)(weights=None).eval().to(device)
        layers = default_layers(model, (args.size, args.size))
        for fmt in (torch.contiguous_format, torch.channels_last):
            model = model.to(memory_format=fmt)
            batch = images.contiguous(memory_format=fmt)
            enhancer = LateralInhibition(model, {"inhibition.ratio": 1.0, "runtime.amp": args.amp},
                                         input_size=(args.size, args.size))
            assert enhancer.layers == layers
            core, floor = median_seconds([lambda: enhancer(batch), floor_step(model, batch, layers)],
                                         device, args.warmup, args.repeats)
            name = "channels_last" if fmt is torch.channels_last else "contiguous"
            print(f"{arch:<14}{name:<16}{args.batch_size / core:>12.1f}{args.batch_size / floor:>13.1f}"
                  f"{floor / core:>12.2f}", flush=True)
        print(f"{arch:<14}layers {', '.join(layers)}")


if __name__ == "__main__":
    main()
