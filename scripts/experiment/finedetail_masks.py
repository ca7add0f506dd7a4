"""Mask IoU on val_rand of the fine-detail draws (issue 26): latinhib's default and its
variants against Grad-CAM, Grad-CAM++ and LayerCAM, at the same q for all, from each draw's
own pretrain checkpoint. Validation split only, no training: what a mask option does to the
masks before any of it is spent on downstream trainings.

    PYTHONPATH=. .venv/bin/python -m scripts.experiment.finedetail_masks out/issue26-s20 out/issue26-s21

Each argument is a finished (or at least pretrained) ``--work`` folder of the benchmark.
latinhib rows are steps 4-5 of the product (``latinhib.api.recombine``) on layer maps: the
product's own (``importance_maps``: the norm of gradient or gradient x activation), or a
CAM's per-layer evidence (scripts/experiment/enhancers.py) handed to the same filter,
outline and threshold, to see what the evidence itself is worth there. A second table
scores issue 26's second-round candidates at the product's own threshold (q auto): IoU,
the kept share, precision and recall; a third (the third round) scores candidates at q
auto against Grad-CAM++ and LayerCAM thresholded at each candidate's own kept share, image
by image, as the downstream CAM rows are.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from latinhib.api import Importance, recombine
from latinhib.config import load_config
from latinhib.importance import importance_maps
from scripts.experiment import common as helpers
from scripts.experiment.enhancers import cam_maps, layer_cams, mask_scores, per_image_quantile_mask, quantile_mask
from scripts.experiment.models import SmallResNet
from scripts.experiment.train import normalise

LAYERS = ["layer1", "layer2", "layer3"]
#: latinhib rows: (label, evidence, layers, inhibition overrides). Evidence "gxa" / "gradient" /
#: "gpp" is the product's (importance_maps, kind gradient_x_activation / gradient /
#: gradcam_plus_plus, for the label's loss); "layercam" / "gradcam++" is that CAM's per-layer
#: map of the label's logit (scripts/experiment/enhancers.py).
ROWS = [
    ("default (layer3, gradient x activation)", "gxa", ["layer3"], {}),
    ("layers layer2,layer3", "gxa", ["layer2", "layer3"], {}),
    ("layers layer2", "gxa", ["layer2"], {}),
    ("layers layer1,layer2,layer3", "gxa", LAYERS, {}),
    ("layers layer2,layer3, filter none", "gxa", ["layer2", "layer3"], {"inhibition.filter": "none"}),
    ("layers layer2,layer3, outline response", "gxa", ["layer2", "layer3"], {"inhibition.outline": "response"}),
    ("LayerCAM evidence, layer3", "layercam", ["layer3"], {}),
    ("LayerCAM evidence, layers layer2,layer3", "layercam", ["layer2", "layer3"], {}),
    ("LayerCAM evidence, layers layer2,layer3, filter none", "layercam", ["layer2", "layer3"], {"inhibition.filter": "none"}),
    ("importance gradcam_plus_plus (the product's), layer3 (the default layer)", "gpp", ["layer3"],
     {"inhibition.importance": "gradcam_plus_plus"}),
    ("importance gradcam_plus_plus (the product's), layers layer2", "gpp", ["layer2"],
     {"inhibition.importance": "gradcam_plus_plus"}),
    ("importance gradcam_plus_plus (the product's), layers layer2,layer3", "gpp", ["layer2", "layer3"],
     {"inhibition.importance": "gradcam_plus_plus"}),
    ("Grad-CAM++ evidence, layer2", "gradcam++", ["layer2"], {}),
    ("Grad-CAM++ evidence, layer2, filter none", "gradcam++", ["layer2"], {"inhibition.filter": "none"}),
    ("Grad-CAM++ evidence, layers layer2,layer3", "gradcam++", ["layer2", "layer3"], {}),
]
GPP = {"inhibition.importance": "gradcam_plus_plus"}
#: Issue 26's second round (the map-size layer rule, which picks layer2 and layer3 at 64 px):
#: the candidates at the product's own threshold (quantile auto), so the kept share is the
#: rule's own, with precision and recall beside the IoU.
AUTO_ROWS = [
    ("stride rule (layer3), gradient x activation", "gxa", ["layer3"], {}),
    ("map-size rule (layer2, layer3), gradient x activation", "gxa", ["layer2", "layer3"], {}),
    ("map-size rule, gradient x activation, auto_power 1.5", "gxa", ["layer2", "layer3"], {"inhibition.auto_power": 1.5}),
    ("map-size rule, gradient x activation, auto_power 3", "gxa", ["layer2", "layer3"], {"inhibition.auto_power": 3.0}),
    ("map-size rule, gradcam_plus_plus", "gpp", ["layer2", "layer3"], GPP),
    ("map-size rule, gradcam_plus_plus, auto_power 1.5", "gpp", ["layer2", "layer3"], {**GPP, "inhibition.auto_power": 1.5}),
    ("map-size rule, gradcam_plus_plus, auto_power 3", "gpp", ["layer2", "layer3"], {**GPP, "inhibition.auto_power": 3.0}),
    ("layer2 alone, gradient x activation", "gxa", ["layer2"], {}),
    ("layer2 alone, gradcam_plus_plus", "gpp", ["layer2"], GPP),
]
#: Issue 26's third round: latinhib's candidates at q auto against the strongest CAMs
#: thresholded at each candidate's own kept share, image by image, as the downstream rows
#: are (the CAM keeps exactly what the candidate keeps, so only the ranking differs). Rows
#: are (label, [(evidence, layer), ...], overrides); two evidences in one row are fused as
#: latinhib fuses layers.
MATCHED_ROWS = [
    ("stride rule (layer3), gradient x activation (the default)", [("gxa", "layer3")], {}),
    ("map-size rule (layer2, layer3), gradient x activation", [("gxa", "layer2"), ("gxa", "layer3")], {}),
    ("layer2 alone, gradient x activation", [("gxa", "layer2")], {}),
    ("layers layer1, layer2, gradient x activation", [("gxa", "layer1"), ("gxa", "layer2")], {}),
    ("layer2 alone, gradcam_plus_plus", [("gpp", "layer2")], GPP),
    ("layers layer1, layer2, gradcam_plus_plus", [("gpp", "layer1"), ("gpp", "layer2")], GPP),
    ("gradcam_plus_plus and gradient x activation at layer2, fused", [("gpp", "layer2"), ("gxa", "layer2")], {}),
    ("LayerCAM evidence, layer2", [("layercam", "layer2")], {}),
]
#: The references of MATCHED_ROWS: the two strongest CAMs of the downstream draws.
MATCHED_CAMS = [("Grad-CAM++ layer2", "gradcam++", ["layer2"], "max"),
                ("LayerCAM layer1+2+3, mean", "layercam", LAYERS, "mean")]
CAMS = [("Grad-CAM layer2", "gradcam", ["layer2"], "max"), ("Grad-CAM layer3", "gradcam", ["layer3"], "max"),
        ("Grad-CAM++ layer2", "gradcam++", ["layer2"], "max"), ("Grad-CAM++ layer3", "gradcam++", ["layer3"], "max"),
        ("LayerCAM layer1+2+3, mean", "layercam", LAYERS, "mean"), ("LayerCAM layer2+3, max", "layercam", ["layer2", "layer3"], "max")]


def evidence_maps(model, split, kind: str) -> dict[str, torch.Tensor]:
    """Per-layer maps of every image of ``split`` for LAYERS, (N, h, w) each."""
    out: dict[str, list] = {name: [] for name in LAYERS}
    for start in range(0, len(split.images), 120):
        images, labels = split.images[start:start + 120], split.labels[start:start + 120]
        if kind in ("gxa", "gradient", "gpp"):
            product = {"gxa": "gradient_x_activation", "gpp": "gradcam_plus_plus"}.get(kind, kind)
            maps = importance_maps(model, normalise(images), LAYERS, target="label", labels=labels, kind=product)
            parts = dict(zip(maps.names, maps.maps))
        else:
            parts = dict(zip(LAYERS, layer_cams(model, normalise(images), LAYERS, labels, kind)))
        for name in LAYERS:
            out[name].append(parts[name])
    return {name: torch.cat(v) for name, v in out.items()}


def latinhib_masks(layer_maps: list[torch.Tensor], size, overrides: dict, q: float) -> torch.Tensor:
    config = load_config(overrides={**overrides, "inhibition.quantile": q}).inhibition
    n = layer_maps[0].shape[0]
    imp = Importance(combined=torch.empty(n, *size), threshold=torch.empty(n), valid=torch.ones(n, dtype=torch.bool),
                     predicted=torch.zeros(n, dtype=torch.long), logits=torch.zeros(n, 1), target="label",
                     layer_maps=layer_maps, layers=[])
    imp = recombine(imp, config)
    return (imp.combined > imp.threshold[:, None, None]) | ~imp.valid[:, None, None]


def main(folders: list[str]) -> None:
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {}
    auto: dict[str, list[dict]] = {}
    matched: dict[str, list[list[float]]] = {}
    for folder in map(Path, folders):
        state = json.loads((folder / "state.json").read_text())
        info = json.loads((folder / "data" / "info.json").read_text())
        classes = sorted(info["classes"])
        val = helpers.Split(folder / "data", "val_rand", classes)
        model = SmallResNet(num_classes=len(classes))
        model.load_state_dict(torch.load(folder / "pretrain.pth", map_location="cpu", weights_only=True))
        model.eval().requires_grad_(False)
        q = state.get("gradcam", {}).get("mean_q", 0.69)
        cache = {}
        for label, kind, layers, overrides in ROWS:
            if kind not in cache:
                cache[kind] = evidence_maps(model, val, kind)
            masks = latinhib_masks([cache[kind][n] for n in layers], val.images.shape[-2:], overrides, q)
            results.setdefault(label, []).append(mask_scores(masks, val.masks)["iou"])
        for label, method, layers, fusion in CAMS:
            maps = cam_maps(model, val.images, layers, val.labels, method=method, fusion=fusion)
            results.setdefault(label, []).append(mask_scores(quantile_mask(maps, q), val.masks)["iou"])
        for label, kind, layers, overrides in AUTO_ROWS:
            if kind not in cache:
                cache[kind] = evidence_maps(model, val, kind)
            masks = latinhib_masks([cache[kind][n] for n in layers], val.images.shape[-2:], overrides, "auto")
            scores = mask_scores(masks, val.masks)
            scores["kept"] = float(masks.flatten(1).float().mean(1).mean())
            auto.setdefault(label, []).append(scores)
        matched_rows(model, val, cache, matched)
        print(f"{folder}: q {q:.2f}", flush=True)
    print(f"\n| mask (val_rand, q = each draw's matched mean q) | " + " | ".join(Path(f).name for f in folders) + " | mean |")
    print("|---|" + "---:|" * (len(folders) + 1))
    for label, values in results.items():
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + f" | **{np.mean(values):.3f}** |")
    print(f"\n| mask (val_rand, q auto: the product's own threshold) | IoU per draw | IoU mean | kept share | precision | recall |")
    print("|---|---|---:|---:|---:|---:|")
    for label, rows in auto.items():
        mean = {key: np.mean([row[key] for row in rows]) for key in rows[0]}
        print(f"| {label} | " + ", ".join(f"{row['iou']:.3f}" for row in rows)
              + f" | **{mean['iou']:.3f}** | {mean['kept']:.2f} | {mean['precision']:.3f} | {mean['recall']:.3f} |")

    print_matched(matched)


def matched_rows(model, val, cache: dict, out: dict) -> None:
    """MATCHED_ROWS of one draw into ``out``: per row [kept, IoU, precision, recall, then
    each MATCHED_CAMS reference's IoU and recall at the row's own per-image share]."""
    refs = [cam_maps(model, val.images, layers, val.labels, method=method, fusion=fusion)
            for _label, method, layers, fusion in MATCHED_CAMS]
    for label, parts, overrides in MATCHED_ROWS:
        for kind, _layer in parts:
            if kind not in cache:
                cache[kind] = evidence_maps(model, val, kind)
        masks = latinhib_masks([cache[kind][layer] for kind, layer in parts], val.images.shape[-2:], overrides, "auto")
        share = masks.flatten(1).float().mean(1)
        own = mask_scores(masks, val.masks)
        row = [float(share.mean()), own["iou"], own["precision"], own["recall"]]
        for ref in refs:
            theirs = mask_scores(per_image_quantile_mask(ref, 1 - share), val.masks)
            row += [theirs["iou"], theirs["recall"]]
        out.setdefault(label, []).append(row)


def print_matched(matched: dict) -> None:
    names = [label for label, *_ in MATCHED_CAMS]
    print("\n| mask (val_rand, q auto) | kept share | IoU | precision | recall | "
          + " | ".join(f"{n} at that share: IoU / recall | IoU minus it" for n in names) + " |")
    print("|---|---:|---:|---:|---:|" + "---|---:|" * len(names))
    for label, rows in matched.items():
        m = np.mean(rows, axis=0)
        cells = [f"{m[4 + 2 * i]:.3f} / {m[5 + 2 * i]:.3f} | {m[1] - m[4 + 2 * i]:+.3f}" for i in range(len(names))]
        print(f"| {label} | {m[0]:.2f} | **{m[1]:.3f}** | {m[2]:.3f} | {m[3]:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
