"""Real-model masks of two ``inhibition.importance`` kinds side by side (issue 26, second
round): the shipped default's gradient x activation against Grad-CAM++'s weights
(``gradcam_plus_plus``), everything else as configs/default.yaml says, on the composites of
scripts/masks/run.py (same scenes, models, layers and scoring), paired by image.

    PYTHONPATH=. .venv/bin/python -m scripts.masks.importance_kinds            # both models

Only the two passes at the models' default layers are computed (no CAM passes), so it is
the cheap check that a mask option found on the 64-px benchmark does not lose on real
models before it is pre-announced as a candidate default. Prints mean IoU per size bucket
at q auto and q 0.5 and the paired difference (other kind minus the default), ± SE.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from latinhib.api import LateralInhibition
from latinhib.config import load_config
from latinhib.models import load_model
from scripts.masks import scenes as scenes_mod
from scripts.masks.run import MODELS, candidate_from_config, gradient_pass, normalise, score_latinhib

KINDS = ("gradient_x_activation", "gradcam_plus_plus")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--per-cell", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenes = scenes_mod.make_scenes(per_cell=args.per_cell)
    masks = torch.from_numpy(scenes.masks)
    buckets = np.array([scenes_mod.bucket_of(a) for a in scenes.areas])
    heads = [f"{lo:.0%}-{min(hi, 1.0):.0%} (n={int((buckets == b).sum())})"
             for b, (lo, hi) in enumerate(scenes_mod.BUCKETS)]
    base = {k: v for k, v in candidate_from_config().items() if k not in ("inhibition.flip", "inhibition.importance")}
    for name in args.models.split(","):
        spec = MODELS[name]()
        config = load_config(overrides=spec.overrides)
        loaded = load_model(config.model, torch.device("cpu"))
        layers = LateralInhibition(loaded.model, config).layers
        inputs = normalise(scenes.images, loaded.mean, loaded.std).contiguous(memory_format=torch.channels_last)
        maps = {}
        for kind in KINDS:
            start = time.perf_counter()
            maps[kind] = gradient_pass(loaded.model, inputs, layers, kind=kind)
            print(f"  {name}: {kind} pass {time.perf_counter() - start:.0f} s", file=sys.stderr)
        print(f"\n**{name}** (default layers {', '.join(layers)}), mean IoU\n")
        print("| importance | rule | " + " | ".join(heads) + " | mean IoU | precision | recall |")
        print("|---|---|" + "---:|" * (len(heads) + 3))
        diffs = []
        for q in ("auto", 0.5):
            scored = {kind: score_latinhib(maps[kind], masks, {**base, "inhibition.quantile": q}) for kind in KINDS}
            for kind, s in scored.items():
                cells = [f"{s['iou'][buckets == b].mean():.3f}" for b in range(len(heads))]
                print(f"| {kind} | q {q} | " + " | ".join(cells)
                      + f" | **{s['iou'].mean():.3f}** | {s['precision'].mean():.3f} | {s['recall'].mean():.3f} |")
            delta = scored[KINDS[1]]["iou"] - scored[KINDS[0]]["iou"]
            per = [f"{delta[buckets == b].mean():+.3f}" for b in range(len(heads))]
            diffs.append(f"q {q}: {KINDS[1]} - {KINDS[0]} = {delta.mean():+.4f} ± {delta.std(ddof=1) / np.sqrt(len(delta)):.4f}"
                         f" (paired by image); per bucket " + ", ".join(per))
        print()
        for line in diffs:
            print(line + "  ")


if __name__ == "__main__":
    main()
