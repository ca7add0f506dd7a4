"""scripts/masks/run.py's issue-26 pieces on synthetic maps: the LayerCAM fusions over the
per-layer maps pytorch-grad-cam gives, the best-candidate choice, the kept share and the
per-bucket paired differences. Fast: no model."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "scripts" / "masks" / "run.py"
    spec = importlib.util.spec_from_file_location("latinhib_masks_run", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_layercam_candidates_fuse_by_tanh_max_and_by_mean(bench):
    spec = bench.ModelSpec(overrides={}, layers=[], layer_sets={}, gradcam_layers=["a", "b", "c"],
                           layercam_sets=[["a", "c"]])
    cams = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float16)
    got = dict(bench.cam_candidates({"layercam": cams}, spec, "layercam"))
    per_layer = torch.from_numpy(cams.astype(np.float32))
    assert torch.equal(got["LayerCAM b"], per_layer[:, 1])
    assert torch.allclose(got["LayerCAM a+c, fused by tanh-max (its authors')"],
                          torch.maximum(torch.tanh(2 * per_layer[:, 0]), torch.tanh(2 * per_layer[:, 2])))
    assert torch.allclose(got["LayerCAM a+c, fused by mean (pytorch-grad-cam's)"], (per_layer[:, 0] + per_layer[:, 2]) / 2)
    # Grad-CAM++ is single-layer: no fused candidates
    assert len(list(bench.cam_candidates({"gradcam++": cams}, spec, "gradcam++"))) == 3


def test_best_cam_picks_the_candidate_that_matches_the_masks(bench):
    spec = bench.ModelSpec(overrides={}, layers=[], layer_sets={}, gradcam_layers=["good", "bad"])
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    good = masks.float() + 0.01 * torch.rand(4, 16, 16)
    bad = torch.rand(4, 16, 16)
    cams = torch.stack([good, bad], 1).numpy().astype(np.float16)
    label, sc = bench.best_cam({"gradcam++": cams}, spec, "gradcam++", masks, [0.75])
    assert label == "Grad-CAM++ good"
    assert sc["iou"].mean() > 0.9
    # kept share: the top quarter of the map is kept
    assert sc["kept"] == pytest.approx(np.full(4, 0.25), abs=0.01)


def test_bucket_paired_is_the_per_bucket_mean_and_standard_error(bench):
    a = np.array([0.5, 0.7, 0.2, 0.4])
    b = np.array([0.4, 0.4, 0.3, 0.3])
    buckets = np.array([0, 0, 4, 4])
    cells = bench.bucket_paired(a, b, buckets).split(", ")
    # bucket 0: differences 0.1, 0.3 -> +0.200 ± 0.100; bucket 4: -0.1, 0.1 -> +0.000 ± 0.100
    assert cells[0] == "+0.200 ± 0.100" and cells[4] == "+0.000 ± 0.100" and cells[1] == "-"
