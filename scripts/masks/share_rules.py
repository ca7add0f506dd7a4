"""How much of each image ``quantile: auto`` should keep (issue 26, item 4): the shipped
rule (Otsu on the map squared) against other rules that read the object's share from the
same map, and against the oracle that knows it, on the real-model composites.

    PYTHONPATH=. .venv/bin/python -m scripts.masks.share_rules          # fit on seed 1, test on 0 and 2

The composites are scripts/masks/run.py's (``scenes.make_scenes``), one set per seed: the
fitted rule is fitted on ``--fit-seed`` only and scored on the others, so no row that
learns from the data is scored on what it learned from. Everything but q is the shipped
default (layers, gradient x activation, scale-selected Mexican hat, outline importance),
and q is taken from the filter's response as the product does (``latinhib.api``), so the
``otsu, power 2`` row is the product's own mask. Rows:

- Otsu on map ** p for p 1, 1.5 and 2 (2 is the default, ``inhibition.auto_power``);
- Kittler and Illingworth's minimum-error threshold (two Gaussians of their own variance
  and weight, the textbook fix for Otsu's pull towards classes of equal size) on map ** p;
- ``fitted``: log(share) regressed on the log of four statistics of the map (both Otsu
  shares, the mean scale the Mexican hat selected, the participation ratio of the raw map
  squared), pooled over the models on the fit seed;
- ``oracle``: the object's true share, the ceiling of any rule on this map.

Prints, per model and seed, mean IoU and kept share per size bucket, the difference to the
default paired by image (± SE), and how well each statistic tracks the true share.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from latinhib.api import LateralInhibition
from latinhib.config import load_config
from latinhib.inhibition import (AUTO_QUANTILE_BOUNDS, OTSU_BINS, auto_quantile, combine_maps, gate_by_response,
                                 layer_filter_size, log_filter_separable, quantile_threshold, scale_kernel_size)
from latinhib.models import load_model
from scripts.masks import scenes as scenes_mod
from scripts.masks.run import MODELS, gradient_pass, normalise, scores

CHUNK = 60
STATISTICS = ("otsu1", "otsu2", "sigma", "spread")


def minimum_error_quantile(response: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Kittler-Illingworth's minimum-error threshold of each (N, H, W) map in [0, 1] raised
    to ``power``: the split t minimising P1 log(s1 / P1) + P2 log(s2 / P2) (two Gaussian
    classes of weight P and spread s), on the same 256-bin histogram as Otsu. Returns the
    share of pixels at or below t, (N,)."""
    flat = response.flatten(1).double().clamp(0, 1).pow(power)
    n = flat.shape[0]
    bins = (flat * OTSU_BINS).long().clamp_(max=OTSU_BINS - 1) + torch.arange(n).view(-1, 1) * OTSU_BINS
    share = torch.bincount(bins.view(-1), minlength=n * OTSU_BINS).view(n, OTSU_BINS).double() / flat.shape[1]
    centres = (torch.arange(OTSU_BINS, dtype=torch.float64) + 0.5) / OTSU_BINS
    p1, m1, s1 = share.cumsum(1), (share * centres).cumsum(1), (share * centres ** 2).cumsum(1)
    p2, m2, s2 = p1[:, -1:] - p1, m1[:, -1:] - m1, s1[:, -1:] - s1
    floor = (0.5 / OTSU_BINS) ** 2  # a class inside one bin has no spread to take a log of
    cost = torch.zeros_like(p1)
    for p, m, s in ((p1, m1, s1), (p2, m2, s2)):
        safe = p.clamp_min(1e-12)
        var = (s / safe - (m / safe) ** 2).clamp_min(floor)
        cost += p * (0.5 * var.log() - safe.log())
    cost = torch.where((p1 > 1e-3) & (p2 > 1e-3), cost, torch.full_like(cost, float("inf")))
    return p1.gather(1, cost.argmin(1, keepdim=True))[:, 0].float()


def selected_sigma(layer_map: torch.Tensor, scales, gamma: float, input_size: int = 224) -> torch.Tensor:
    """The sigma the scale-selected Mexican hat picks for each image of one layer, (N,)
    (latinhib.inhibition.respond's choice, recomputed here to read it out)."""
    responses = []
    for scale in scales:
        k, s = layer_filter_size(layer_map.shape[-1], input_size, scale_kernel_size(scale), scale)
        responses.append(log_filter_separable(layer_map[:, None].float(), k, s)[:, 0])
    weights = torch.tensor([scale ** (gamma - 2.0) for scale in scales])
    peaks = torch.stack(responses).flatten(2).amax(2) * weights[:, None]
    return torch.tensor(list(scales))[peaks.argmax(0)]


def participation(maps: torch.Tensor) -> torch.Tensor:
    """(sum m)^2 / (n sum m^2) per image: the share of the frame a map's mass is spread
    over (1 for a flat map, k/n for k equal peaks)."""
    flat = maps.flatten(1).double()
    return (flat.sum(1) ** 2 / (flat.shape[1] * (flat ** 2).sum(1)).clamp_min(1e-30)).float()


def maps_and_statistics(layer_maps: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, np.ndarray]]:
    """The default's filter response and gated map (what its threshold is taken on) for a
    chunk of images, and the statistics a rule may read the share from."""
    s = load_config().inhibition
    size = (224, 224)
    response, _ = combine_maps(layer_maps, size, kind=s.filter, kernel_size=s.kernel_size, sigma=s.sigma,
                               scales=s.scales, gamma=s.scale_gamma)
    raw, _ = combine_maps(layer_maps, size, kind="none")
    gated = gate_by_response(response, raw)
    sigma = torch.stack([selected_sigma(m, s.scales, s.scale_gamma) for m in layer_maps]).mean(0)
    stats = {"otsu1": 1 - auto_quantile(response, (0.0, 1.0), 1.0), "otsu2": 1 - auto_quantile(response, (0.0, 1.0), 2.0),
             "sigma": sigma, "spread": participation(raw ** 2)}
    return response, gated, {k: v.numpy().astype(np.float64) for k, v in stats.items()}


def design(stats: Dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([np.log(stats[k] + 1e-6) for k in STATISTICS] + [np.ones_like(stats["otsu1"])], 1)


def model_maps(name: str, scenes) -> List[torch.Tensor]:
    spec = MODELS[name]()
    config = load_config(overrides=spec.overrides)
    loaded = load_model(config.model, torch.device("cpu"))
    layers = LateralInhibition(loaded.model, config).layers
    inputs = normalise(scenes.images, loaded.mean, loaded.std).contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    maps = gradient_pass(loaded.model, inputs, layers, kind="gradient_x_activation")
    print(f"  {name}: pass {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return maps


def score_rules(layer_maps: List[torch.Tensor], truth: torch.Tensor,
                fitted: np.ndarray | None) -> Tuple[Dict[str, Dict[str, np.ndarray]], Dict[str, np.ndarray]]:
    """IoU/kept/precision/recall per image for every rule, and the statistics."""
    bounds = AUTO_QUANTILE_BOUNDS
    rules: Dict[str, Callable] = {
        "otsu, power 2 (the default)": lambda r, st, t: auto_quantile(r, bounds, 2.0),
        "otsu, power 1.5": lambda r, st, t: auto_quantile(r, bounds, 1.5),
        "otsu, power 1 (plain)": lambda r, st, t: auto_quantile(r, bounds, 1.0),
        "minimum error, power 1": lambda r, st, t: minimum_error_quantile(r, 1.0).clamp(*bounds),
        "minimum error, power 2": lambda r, st, t: minimum_error_quantile(r, 2.0).clamp(*bounds),
    }
    if fitted is not None:
        rules["fitted on the fit seed"] = lambda r, st, t: torch.from_numpy(
            1 - np.exp(design(st) @ fitted)).float().clamp(*bounds)
    rules["oracle (the true share)"] = lambda r, st, t: (1 - t.flatten(1).float().mean(1))
    parts: Dict[str, List[Dict[str, np.ndarray]]] = {name: [] for name in rules}
    stats_parts: List[Dict[str, np.ndarray]] = []
    for start in range(0, truth.shape[0], CHUNK):
        chunk, t = [m[start:start + CHUNK] for m in layer_maps], truth[start:start + CHUNK]
        response, gated, stats = maps_and_statistics(chunk)
        stats_parts.append(stats)
        for name, rule in rules.items():
            q = rule(response, stats, t)
            kept = gated > quantile_threshold(gated, q)[:, None, None]
            parts[name].append(scores(kept, t))
    out = {name: {k: np.concatenate([p[k] for p in ps]) for k in ps[0]} for name, ps in parts.items()}
    return out, {k: np.concatenate([s[k] for s in stats_parts]) for k in STATISTICS}


def report(name: str, seed: int, results, stats, truth_share: np.ndarray, buckets: np.ndarray) -> None:
    heads = [f"{lo:.0%}-{min(hi, 1.0):.0%} (n={int((buckets == b).sum())})" for b, (lo, hi) in enumerate(scenes_mod.BUCKETS)]
    print(f"\n**{name}, composites seed {seed}**: mean IoU / kept share per bucket (object share "
          + ", ".join(f"{truth_share[buckets == b].mean():.2f}" for b in range(len(heads))) + ")\n")
    print("| rule | " + " | ".join(heads) + " | mean IoU | minus the default, paired |")
    print("|---|" + "---:|" * (len(heads) + 2))
    default = results["otsu, power 2 (the default)"]["iou"]
    for rule, s in results.items():
        cells = [f"{s['iou'][buckets == b].mean():.3f} / {s['kept'][buckets == b].mean():.2f}" for b in range(len(heads))]
        delta = s["iou"] - default
        print(f"| {rule} | " + " | ".join(cells) + f" | **{s['iou'].mean():.3f}** | "
              f"{delta.mean():+.3f} ± {delta.std(ddof=1) / np.sqrt(len(delta)):.3f} |")
    print("\n| statistic | correlation of logs with the true share | mean per bucket |\n|---|---:|---|")
    for key in STATISTICS:
        corr = np.corrcoef(np.log(stats[key] + 1e-6), np.log(truth_share))[0, 1]
        print(f"| {key} | {corr:+.2f} | " + ", ".join(f"{stats[key][buckets == b].mean():.2f}" for b in range(len(heads))) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--fit-seed", type=int, default=1)
    parser.add_argument("--test-seeds", default="0,2")
    parser.add_argument("--per-cell", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.models.split(",")
    seeds = [args.fit_seed] + [int(s) for s in args.test_seeds.split(",")]
    fitted = None
    for seed in seeds:
        scenes = scenes_mod.make_scenes(per_cell=args.per_cell, seed=seed)
        truth = torch.from_numpy(scenes.masks)
        share = truth.flatten(1).double().mean(1).numpy()
        buckets = np.array([scenes_mod.bucket_of(a) for a in scenes.areas])
        per_model = {}
        for name in names:
            per_model[name] = score_rules(model_maps(name, scenes), truth, fitted if seed != args.fit_seed else None)
            report(name, seed, *per_model[name], share, buckets)
        if seed == args.fit_seed:
            X = np.concatenate([design(stats) for _, stats in per_model.values()])
            fitted, *_ = np.linalg.lstsq(X, np.tile(np.log(share), len(names)), rcond=None)
            print("\nfitted: log(share) = " + " + ".join(f"{c:+.3f} log({k})" for c, k in zip(fitted, STATISTICS))
                  + f" {fitted[-1]:+.3f} (least squares, both models, seed {seed}; scored on the other seeds only)")


if __name__ == "__main__":
    main()
