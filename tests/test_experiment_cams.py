"""The fine-detail benchmark's CAM references (scripts/experiment/enhancers.py: Grad-CAM,
Grad-CAM++, LayerCAM and their multi-layer fusion) against pytorch-grad-cam's own classes
on the benchmark's model. Fast: a random SmallResNet, no training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.experiment.enhancers import cam_maps, fuse_cams, gradcam_maps
from scripts.experiment.models import SmallResNet
from scripts.experiment.train import normalise

grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

REFERENCE = {"gradcam": grad_cam.GradCAM, "gradcam++": grad_cam.GradCAMPlusPlus, "layercam": grad_cam.LayerCAM}


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = SmallResNet(num_classes=8).eval()
    # A trained network's BatchNorm statistics are not the identity: give it some, so the
    # activations are not symmetric around zero and the three CAMs differ.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.4)
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    return model, images, labels


def reference(model, images, labels, method, layers):
    """pytorch-grad-cam's map: each layer min-max scaled and resized to 64x64, then their mean."""
    modules = [model.get_submodule(name) for name in layers]
    inputs = normalise(images).requires_grad_(True)
    with REFERENCE[method](model=model, target_layers=modules) as cam:
        out = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(l)) for l in labels])
    return torch.from_numpy(np.asarray(out))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
@pytest.mark.parametrize("layers", [["layer3"], ["layer2", "layer3"]])
def test_cams_match_pytorch_grad_cam(setting, method, layers):
    model, images, labels = setting
    ours = cam_maps(model, images, layers, labels, method=method, fusion="mean")
    theirs = reference(model, images, labels, method, layers)
    # pytorch-grad-cam min-max scales its fused mean again; the quantile masks the benchmark
    # takes are invariant to that per-image affine map, so compare after the same scaling.
    low, high = ours.amin((1, 2), keepdim=True), ours.amax((1, 2), keepdim=True)
    ours = (ours - low) / (high - low + 1e-7)
    assert ours.shape == theirs.shape == (6, 64, 64)
    assert torch.allclose(ours, theirs.float(), atol=2e-3), (ours - theirs).abs().max()


def test_the_three_methods_differ_and_single_layer_gradcam_is_the_old_one(setting):
    model, images, labels = setting
    maps = {m: cam_maps(model, images, ["layer3"], labels, method=m) for m in ("gradcam", "gradcam++", "layercam")}
    assert not torch.allclose(maps["gradcam"], maps["layercam"], atol=1e-2)
    assert not torch.allclose(maps["gradcam"], maps["gradcam++"], atol=1e-3)
    # one layer: nothing to fuse, the map is the plain Grad-CAM the benchmark used before
    assert torch.allclose(maps["gradcam"], gradcam_maps(model, images, "layer3", labels), atol=1e-6)


def test_max_fusion_is_the_layercam_authors_tanh_max():
    # maps already at the output size: no interpolation, so the rule is visible as is
    a, b = torch.rand(2, 8, 8) * 5, torch.rand(2, 8, 8) * 0.1
    fused = fuse_cams([a, b], (8, 8), "max")
    expect = torch.maximum(torch.tanh(2 * a / a.amax((1, 2), keepdim=True)),
                           torch.tanh(2 * b / b.amax((1, 2), keepdim=True)))
    assert torch.allclose(fused, expect, atol=1e-6)
    # each layer counts by its own peak, not by the raw scale (b is 50x weaker than a)
    assert torch.allclose(fused.amax((1, 2)), torch.full((2,), float(np.tanh(2.0))), atol=1e-6)
    mean = fuse_cams([a, b], (8, 8), "mean")
    assert mean.shape == (2, 8, 8) and not torch.allclose(mean, fused)
    with pytest.raises(ValueError, match="fusion"):
        fuse_cams([a], (8, 8), "sum")
