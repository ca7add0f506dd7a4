"""What the mask settings cost per image: ``LateralInhibition.importance`` (steps 1-5) on
one batch of real-sized model inputs, the paper's settings against the defaults (bf16 on
CPUs with AMX, and float32), alternating repeats in one process so machine load hits
every row alike. Prints the median ms per image of each row and of steps 4-5 alone.

    .venv/bin/python -m scripts.masks.cost --arch mobilenet_v2 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from latinhib import LateralInhibition
from latinhib.api import _steps_4_5
from latinhib.config import load_config
from latinhib.models import load_model

ROWS = {
    "paper (configs/paper.yaml)": {"inhibition.importance": "gradient", "inhibition.scales": None,
                                   "inhibition.quantile": 0.5, "inhibition.outline": "response",
                                   "runtime.amp": "off"},
    "defaults, outline response, float32": {"inhibition.outline": "response", "runtime.amp": "off"},
    "defaults, float32": {"runtime.amp": "off"},
    "defaults (amp auto)": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(load_config(overrides={"model.arch": args.arch, "model.weights": None}).model,
                        torch.device("cpu"))
    images = torch.randn(args.batch, 3, *loaded.input_size).contiguous(memory_format=torch.channels_last)
    enhancers = {name: LateralInhibition(loaded.model, load_config(overrides={"model.target": "pred", **o}))
                 for name, o in ROWS.items()}
    total = {name: [] for name in ROWS}
    steps = {name: [] for name in ROWS}
    for enhancer in enhancers.values():
        enhancer.importance(images)  # warm-up
    for _ in range(args.repeats):
        for name, enhancer in enhancers.items():
            start = time.perf_counter()
            imp = enhancer.importance(images)
            total[name].append((time.perf_counter() - start) * 1000 / args.batch)
            start = time.perf_counter()
            _steps_4_5(imp.layer_maps, tuple(images.shape[-2:]), enhancer.settings)
            steps[name].append((time.perf_counter() - start) * 1000 / args.batch)
    print(f"{args.arch}, batch {args.batch}, {args.threads} thread(s), median of {args.repeats} alternating repeats")
    print(f"{'row':38s} {'steps 1-5 ms/img':>17s} {'steps 4-5 ms/img':>17s}")
    for name in ROWS:
        print(f"{name:38s} {statistics.median(total[name]):17.1f} {statistics.median(steps[name]):17.2f}")


if __name__ == "__main__":
    main()
