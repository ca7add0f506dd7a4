"""``inhibition.importance: gradcam_plus_plus`` against pytorch-grad-cam's own GradCAMPlusPlus
on the same model, layer and scalar (issue 26). The reference differentiates exactly what
latinhib differentiates for the target (minus the loss, through latinhib's own rescaled
logit gradient), so any difference is in the weights, the ReLU or the channel sum."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from latinhib.config import load_config
from latinhib.importance import importance_maps, logit_gradient

grad_cam = pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = tvm.resnet18(weights=None, num_classes=10).eval()
    # random BatchNorm statistics, so activations are not centred and the CAMs are not trivial
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.4)
    return net


def reference(model, images, labels, layer):
    """pytorch-grad-cam's Grad-CAM++ of ``layer`` at that layer's own size (no resize),
    for the scalar -(g . logits) per image, g = latinhib's rescaled dL/dlogits (label)."""
    with torch.no_grad():
        g = logit_gradient(model(images), "label", labels)

    class AtLayerSize(grad_cam.GradCAMPlusPlus):
        def get_target_width_height(self, input_tensor):
            return self.size

    cam = AtLayerSize(model=model, target_layers=[model.get_submodule(layer)])
    with torch.no_grad():
        shape = {}
        hook = model.get_submodule(layer).register_forward_hook(lambda m, i, o: shape.update(s=o.shape))
        model(images[:1])
        hook.remove()
    cam.size = (shape["s"][-1], shape["s"][-2])
    targets = [lambda out, gi=gi: -(gi * out).sum() for gi in g]
    with cam:
        out = cam(input_tensor=images.clone().requires_grad_(True), targets=targets)
    return torch.from_numpy(np.asarray(out))


@pytest.mark.parametrize("layer", ["layer2", "layer3"])
def test_gradcam_plus_plus_matches_pytorch_grad_cam(model, layer):
    torch.manual_seed(1)
    images = torch.randn(4, 3, 96, 96)
    labels = torch.tensor([1, 3, 5, 7])
    ours = importance_maps(model, images, [layer], target="label", labels=labels, kind="gradcam_plus_plus").maps[0]
    theirs = reference(model, images, labels, layer)
    low, high = ours.amin((1, 2), keepdim=True), ours.amax((1, 2), keepdim=True)
    scaled = (ours - low) / (1e-7 + high - low)
    assert scaled.shape == theirs.shape
    assert (ours >= 0).all() and (high > low).all()
    assert torch.allclose(scaled, theirs.float(), atol=1e-4), (scaled - theirs).abs().max()
    # not the gradient x activation norm under another name
    gxa = importance_maps(model, images, [layer], target="label", labels=labels, kind="gradient_x_activation").maps[0]
    assert not torch.allclose(gxa / gxa.amax((1, 2), keepdim=True), ours / high, atol=0.05)


def test_the_config_accepts_it_and_rejects_a_misspelling():
    assert load_config(overrides={"inhibition.importance": "gradcam_plus_plus"}).inhibition.importance == "gradcam_plus_plus"
    with pytest.raises(Exception, match="inhibition.importance"):
        load_config(overrides={"inhibition.importance": "gradcam++"})
