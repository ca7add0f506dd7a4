"""Gradient importance (SPEC steps 1-3): in-place safety on torchvision's ResNet, every
call of a shared module captured, hooks and model state always restored, one
``torch.autograd.grad`` and no weight gradients, no underflow on very confident models,
the loss targets, the default layers, and batch independence."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import mobilenet_v2, resnet18

from latinhib import LateralInhibition
from latinhib.importance import (ActivationCapture, BlockOutput, default_layers, importance_maps, logit_gradient,
                                 pick_layers, MIN_MAP_SIDE)
from latinhib.config import ConfigError, load_config
from latinhib.inhibition import combine_maps, is_constant

RESNET_LAYERS = ["layer1.0.bn1", "layer1.0.relu", "layer1", "layer2.0.bn2", "layer2", "layer3.1", "layer4.0"]


def seeded_resnet18(device) -> nn.Module:
    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=10).eval().to(device)


def without_inplace(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return twin


def reference_maps(model: nn.Module, images: torch.Tensor, layers, labels=None) -> list:
    """Naive IoM, independent of latinhib: plain hooks that keep the outputs, the summed
    cross-entropy against the label (default: the prediction), autograd.grad, 2-norm over
    channels. Only valid where no in-place op follows a captured output."""
    kept = []
    handles = [model.get_submodule(name).register_forward_hook(lambda m, i, o: kept.append(o)) for name in layers]
    try:
        with torch.enable_grad():
            source = images.clone().requires_grad_(True)
            logits = model(source)
            target = logits.argmax(dim=1) if labels is None else labels
            # dCE/dz = p - onehot, with the target entry written as -(sum of the other p):
            # at 1 - 1e-30, p_t - 1 is 0 even in float64 (autograd of F.cross_entropy
            # gives that), which would turn the gradient's direction.
            p = logits.detach().double().softmax(dim=1)
            onehot = F.one_hot(target, p.shape[1]).bool()
            dloss = torch.where(onehot, -p.masked_fill(onehot, 0).sum(1, keepdim=True), p)
            grads = torch.autograd.grad(logits, kept, grad_outputs=dloss.to(logits.dtype))
    finally:
        for handle in handles:
            handle.remove()
    return [g.norm(dim=1) for g in grads]


def peak_normalised(maps: torch.Tensor) -> torch.Tensor:
    return maps / maps.flatten(1).amax(dim=1).view(-1, *([1] * (maps.ndim - 1)))


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_inplace_relus_give_the_same_maps(device, make_images):
    model = seeded_resnet18(device)
    twin = without_inplace(model)
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
    images = make_images(2, 64, device=device)
    got = importance_maps(model, images, RESNET_LAYERS, target="pred")
    want = importance_maps(twin, images, RESNET_LAYERS, target="pred")
    assert got.names == want.names
    assert len(got.maps) == len(RESNET_LAYERS) + 1  # layer1.0.relu runs twice
    for name, a, b in zip(got.names, got.maps, want.maps):
        assert not is_constant(a).any(), name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_maps_match_a_naive_float64_reference(device, tiny_cnn, make_images):
    """Where nothing in-place follows the captured outputs, a plain hook + cross-entropy
    + autograd.grad gives the same maps up to one scale per image."""
    model = tiny_cnn.double().to(device)
    images = make_images(3, 64, device=device).double()
    layers = ["features.1", "features.2", "features.3"]
    got = importance_maps(model, images, layers, target="pred")
    want = reference_maps(model, images, layers)
    scales = []
    for a, b in zip(got.maps, want):
        ratio = (a.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1))
        scales.append(ratio)
        assert a.dtype == torch.float32  # maps are float32 whatever the model's dtype
        torch.testing.assert_close(a.double(), b * ratio.view(-1, 1, 1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scales[0], scales[2])  # one scale per image, shared by layers


def test_a_shared_module_gives_one_map_per_call(device, make_images):
    model = seeded_resnet18(device)
    images = make_images(2, 64, device=device)
    result = importance_maps(model, images, ["layer1.0.relu", "layer4.0.relu"], target="pred")
    assert result.names == ["layer1.0.relu", "layer1.0.relu", "layer4.0.relu", "layer4.0.relu"]
    first, second = result.maps[0], result.maps[1]
    assert first.shape == second.shape == (2, 16, 16)
    assert not torch.allclose(first, second)  # two different calls, not one map twice


class Exploding(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, images):
        self.inner.features(images)
        raise RuntimeError("boom")


def test_hooks_and_state_are_restored_even_when_the_forward_raises(tiny_cnn, make_images):
    model = Exploding(tiny_cnn).train()
    model.inner.fc.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        importance_maps(model, make_images(2), ["inner.features.1", "inner.features.2"], target="pred")
    assert all_hooks(model) == 0
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags


def test_state_is_restored_and_no_parameter_gets_a_grad(device, tiny_cnn, make_images):
    model = tiny_cnn.to(device).train()
    model.features[0][0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    stats = [b.clone() for b in model.buffers()]
    images = make_images(4, device=device)
    before = images.clone()
    importance_maps(model, images, ["features.2", "features.3"], target="pred")
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))  # eval: BN stats untouched
    assert all_hooks(model) == 0
    assert torch.equal(images, before) and not images.requires_grad


def test_exactly_one_autograd_grad_and_no_backward(monkeypatch, tiny_cnn, make_images):
    calls = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(len(args[1]) if len(args) > 1 else len(kwargs["inputs"]))
        return real_grad(*args, **kwargs)

    def no_backward(*args, **kwargs):
        raise AssertionError(".backward() must not be called")

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    result = importance_maps(tiny_cnn, make_images(3), ["features.1", "features.2", "features.3"], target="pred")
    assert calls == [3]  # one call, for all three captured activations
    assert len(result.maps) == 3


def confident(model: nn.Module, images: torch.Tensor, doubt: float) -> nn.Module:
    """Scale the last layer's weights until every image's top-1 probability is at least
    1 - doubt (computed in float64)."""
    for _ in range(40):
        with torch.no_grad():
            p = model(images).double().softmax(dim=1).amax(dim=1)
            if (1 - p).max() <= doubt:
                return model
            model.fc.weight.mul_(1.5)
            model.fc.bias.mul_(1.5)
    raise AssertionError(f"could not make the model {1 - doubt} sure")


@pytest.mark.parametrize("doubt", [1e-4, 1e-30])
@pytest.mark.parametrize("target", ["pred", "label", "entropy"])
def test_confident_models_still_give_informative_maps(device, tiny_cnn, make_images, doubt, target):
    """SPEC "Traps": at 99.99% (and 1 - 1e-30) the cross-entropy gradient is ~1e-4
    (~1e-30); its square underflows in float32 unless the gradient is rescaled."""
    images = make_images(4, device=device)
    model = confident(tiny_cnn.to(device), images, doubt)
    layers = ["features.1", "features.2", "features.3"]
    labels = model(images).argmax(dim=1) if target == "label" else None
    result = importance_maps(model, images, layers, target=target, labels=labels)
    for layer_map in result.maps:
        assert torch.isfinite(layer_map).all()
        assert not is_constant(layer_map).any()
    combined, valid = combine_maps(result.maps, (64, 64))
    assert valid.all() and torch.isfinite(combined).all()
    if target != "entropy":
        # Same maps, up to scale, as a float64 pass without any rescaling.
        want = reference_maps(copy.deepcopy(model).double(), images.double(), layers, labels)
        for a, b in zip(result.maps, want):
            torch.testing.assert_close(peak_normalised(a).double(), peak_normalised(b), rtol=1e-3, atol=1e-4)


def test_logit_gradient_matches_autograd_of_the_documented_losses():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator, dtype=torch.float64) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 0])

    def direction(loss_fn):
        z = logits.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(z), z)
        return grad / grad.norm(dim=1, keepdim=True)

    cases = {
        "label": lambda z: F.cross_entropy(z, labels, reduction="sum"),
        "pred": lambda z: F.cross_entropy(z, z.argmax(dim=1), reduction="sum"),
        "entropy": lambda z: -(z.softmax(1) * z.log_softmax(1)).sum(),
    }
    for target, loss_fn in cases.items():
        got = logit_gradient(logits, target, labels if target == "label" else None)
        torch.testing.assert_close(got, direction(loss_fn), msg=lambda m: f"{target}: {m}")
        torch.testing.assert_close(got.norm(dim=1), torch.ones(6, dtype=torch.float64))


def test_targets_behave_as_documented(tiny_cnn, make_images):
    images = make_images(4)
    layers = ["features.2"]
    predicted = tiny_cnn(images).argmax(dim=1)
    other = (predicted + 1) % 10
    assert importance_maps(tiny_cnn, images, layers).target == "pred"  # auto without labels
    auto = importance_maps(tiny_cnn, images, layers, labels=other)
    assert auto.target == "label"  # auto with labels
    label = importance_maps(tiny_cnn, images, layers, target="label", labels=other)
    pred = importance_maps(tiny_cnn, images, layers, target="pred", labels=other)
    as_pred = importance_maps(tiny_cnn, images, layers, target="label", labels=predicted)
    entropy = importance_maps(tiny_cnn, images, layers, target="entropy")
    torch.testing.assert_close(auto.maps[0], label.maps[0])
    torch.testing.assert_close(as_pred.maps[0], pred.maps[0])  # label = prediction: same loss
    assert not torch.allclose(label.maps[0], pred.maps[0])
    assert not torch.allclose(entropy.maps[0], pred.maps[0])
    assert torch.equal(pred.predicted, predicted)
    with pytest.raises(ValueError, match="target 'label' needs labels"):
        importance_maps(tiny_cnn, images, layers, target="label")
    with pytest.raises(ValueError, match="target should be one of .*Got 'loss'"):
        importance_maps(tiny_cnn, images, layers, target="loss")


def test_unknown_layers_list_the_valid_names(tiny_cnn, make_images):
    with pytest.raises(ValueError, match="no layer 'features.9'; valid names: features, features.0"):
        importance_maps(tiny_cnn, make_images(1), ["features.9"])
    with pytest.raises(ValueError, match="should output a \\(N, C, H, W\\) tensor. Got \\(1, 10\\)"):
        importance_maps(tiny_cnn, make_images(1), ["fc"])
    assert all_hooks(tiny_cnn) == 0


def test_captured_activations_are_not_modified_afterwards(make_images):
    model = seeded_resnet18("cpu")
    with torch.no_grad(), ActivationCapture(model, ["layer1.0.bn1", "layer2.0.bn2"]) as capture:
        model(make_images(1))
    bn1 = capture.activations[0][1]
    assert (bn1 < 0).any()  # the in-place ReLU that follows ran on a clone
    assert all_hooks(model) == 0


def test_default_layers_for_torchvision_models():
    torch.manual_seed(0)
    assert default_layers(resnet18(weights=None), (224, 224)) == ["layer2", "layer3", "layer4.0"]
    assert default_layers(mobilenet_v2(weights=None), (224, 224)) == ["features.6", "features.13", "features.17"]


def test_default_layers_at_small_inputs_with_the_map_size_rule():
    # Maps written out by hand from the architectures (an independent reading of the rule):
    # resnet18 at 64 px has layer1 16 x 16, layer2 8 x 8, layer3 4 x 4, layer4 2 x 2 (final);
    # MobileNetV2 at 96 px has features.3 (stride 4) 24 x 24 and features.6 (stride 8) 12 x 12.
    torch.manual_seed(0)
    assert default_layers(resnet18(weights=None).eval(), (64, 64), min_side=16) == ["layer1", "layer2", "layer3", "layer4.0"]
    assert default_layers(mobilenet_v2(weights=None).eval(), (96, 96), min_side=16) == [
        "features.3", "features.6", "features.13", "features.17"]
    # SmallResNet-shaped (one BasicBlock a stage, stride-2 stem; the benchmarks' 64-px model):
    # layer1 32, layer2 16, layer3 8, layer4 4 (final).
    assert default_layers(_small_resnet().eval(), (64, 64), min_side=16) == ["layer2", "layer3"]
    assert default_layers(_small_resnet().eval(), (128, 128), min_side=16) == ["layer3"]
    # 224 px: unchanged by the rule (the stride-8 maps are 28 x 28); off, the strides alone
    assert default_layers(mobilenet_v2(weights=None).eval(), (224, 224), min_side=16) == [
        "features.6", "features.13", "features.17"]
    assert default_layers(_small_resnet().eval(), (64, 64)) == ["layer3"]
    # the config key reaches the API's layer choice; a bad value names the key
    model = _small_resnet().eval()
    config = load_config(overrides={"model.min_map_side": 16, "model.weights": None, "model.input_size": 64})
    assert LateralInhibition(model, config).layers == ["layer2", "layer3"]
    config = load_config(overrides={"model.weights": None, "model.input_size": 64})
    assert LateralInhibition(model, config).layers == ["layer3"]
    with pytest.raises(ConfigError, match="model.min_map_side"):
        load_config(overrides={"model.min_map_side": -1})


def _small_resnet() -> nn.Module:
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=4, width_per_group=64)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _outputs(*rows):
    """BlockOutputs from (name, map side, compound, tensor id) rows, in finishing order."""
    return [BlockOutput(name, (side, side), compound, tensor) for name, side, compound, tensor in rows]


def test_the_pick_rule_without_a_model():
    # The stride rule alone (min_side=0; the map-size rule has its own test below).
    # A ResNet-like listing at 64 px: strides 2 and 4 are too fine; per stride the last
    # block wins (layer2.1 over layer2.0); blocks returning one tensor keep the shallowest
    # name (layer2 for layer2.1's output); the final map (layer4 and layer4.1, feeding the
    # pool) is left out, so layer4.0 stands for stride 32.
    resnet = _outputs(("conv1", 32, False, 1), ("maxpool", 16, False, 2), ("layer1.0", 16, True, 3),
                      ("layer1", 16, True, 3), ("layer2.0", 8, True, 4), ("layer2.1", 8, True, 5),
                      ("layer2", 8, True, 5), ("layer3.0", 4, True, 6), ("layer3", 4, True, 6),
                      ("layer4.0", 2, True, 7), ("layer4.1", 2, True, 8), ("layer4", 2, True, 8),
                      ("avgpool", 1, False, 9))
    assert pick_layers(resnet, (64, 64), min_side=0) == ["layer2", "layer3", "layer4.0"]
    # A bare head conv after a stride's last block does not displace it; alone it counts.
    head = _outputs(("blocks.0", 8, True, 1), ("head", 8, False, 2), ("bare", 4, False, 3), ("last", 2, True, 4))
    assert pick_layers(head, (64, 64), min_side=0) == ["blocks.0", "bare"]
    # Two blocks at one stride returning different tensors: the later one wins (the
    # stage's output, not a downsampling layer at its start).
    assert pick_layers(_outputs(("a", 8, True, 1), ("b", 8, True, 2), ("end", 4, True, 3)), (64, 64), min_side=0) == ["b"]
    # ... whichever finishes first: a deeper block passing the same tensor on (an identity,
    # an in-place activation) does not take the name from a shallower one.
    passed_on = _outputs(("stage", 8, True, 1), ("next.0", 8, True, 1), ("end", 4, True, 2))
    assert pick_layers(passed_on, (64, 64), min_side=0) == ["stage"]
    # Other strides can be asked for; map sizes decide the stride (input height / map height).
    assert pick_layers(resnet, (64, 64), strides=(4,), min_side=0) == ["layer1"]
    # No block at strides 8-32: the last spatial block that is not the final map.
    assert pick_layers(_outputs(("a", 32, True, 1), ("b", 32, True, 2), ("c", 32, True, 3)), (64, 64), min_side=0) == ["b"]
    assert pick_layers(_outputs(("only", 32, True, 1)), (64, 64), min_side=0) == ["only"]
    with pytest.raises(ValueError, match="could not find any spatial layer"):
        pick_layers(_outputs(("pool", 1, False, 1)), (64, 64), min_side=0)


def test_the_map_size_rule_without_a_model():
    # SmallResNet's listing at 64 px (stages 32, 32, 16, 8, 4 px): the stride rule finds only
    # layer3's 8 x 8 map, shorter than MIN_MAP_SIDE (16), so the deepest block with a map of
    # at least 16 x 16 joins it: layer2, not layer1 or the bare stem conv at 32 x 32.
    small = _outputs(("conv1", 32, False, 1), ("bn1", 32, False, 2), ("layer1.0", 32, True, 3),
                     ("layer1", 32, True, 3), ("layer2.0", 16, True, 4), ("layer2", 16, True, 4),
                     ("layer3.0", 8, True, 5), ("layer3", 8, True, 5), ("layer4.0", 4, True, 6),
                     ("layer4", 4, True, 6), ("avgpool", 1, False, 7))
    assert MIN_MAP_SIDE == 16
    assert pick_layers(small, (64, 64), min_side=MIN_MAP_SIDE) == ["layer2", "layer3"]
    assert pick_layers(small, (64, 64)) == ["layer3"] == pick_layers(small, (64, 64), min_side=0)  # off by default
    assert pick_layers(small, (64, 64), min_side=32) == ["layer1", "layer3"]
    # The same network at 224 px (stages 112, 112, 56, 28, 14): the stride-8 map is 28 x 28,
    # so the map-size rule adds nothing and the strides' picks stand.
    large = [BlockOutput(o.name, (o.size[0] * 224 // 64 if o.size[0] > 1 else 1,) * 2, o.compound, o.tensor)
             for o in small]
    assert pick_layers(large, (224, 224), min_side=16) == ["layer3"] == pick_layers(large, (224, 224))
    # A map wide enough on one side only does not count: the short side decides.
    wide = _outputs(("a", 8, True, 1), ("end", 4, True, 2))
    wide.insert(0, BlockOutput("tall", (32, 8), True, 9))
    assert pick_layers(wide, (64, 64), min_side=16) == ["a"]
    # The block picked for its size follows the stride rule's choices at its stride: the
    # last compound block to finish there, never the final map.
    assert pick_layers(_outputs(("s.0", 16, True, 1), ("s.1", 16, True, 2), ("bare", 16, False, 3),
                                ("t", 8, True, 4), ("end", 4, True, 5)), (64, 64), min_side=16) == ["s.1", "t"]
    # Nothing at least 16 px wide that is not final: the strides' picks alone.
    assert pick_layers(_outputs(("t", 8, True, 1), ("end", 4, True, 2)), (64, 64), min_side=16) == ["t"]



def test_default_layers_skip_the_stage_feeding_global_pooling(tiny_cnn, make_images):
    # At 64x64 the tiny CNN's stages are 32, 16, 8, 4, 2 pixels; features.4 feeds the pool.
    # features.4 (= its in-place ReLU's output) is left out; the conv inside it is not:
    # its gradient passes BN and the ReLU's on/off pattern, which is not flat. That is the
    # analogue of MobileNetV2's features.17 (through 1x1 conv, BN and ReLU6 to the pool).
    assert default_layers(tiny_cnn, (64, 64)) == ["features.2", "features.3", "features.4.0"]
    # with the map-size rule on, features.1 (16 x 16) joins: the stride-8 map is only 8 x 8
    assert default_layers(tiny_cnn, (64, 64), min_side=16) == ["features.1", "features.2", "features.3", "features.4.0"]
    # The stage feeding the pool is left out because its gradient map is flat.
    final = importance_maps(tiny_cnn, make_images(3), ["features.4", "features.4.0"], target="pred")
    assert final.names == ["features.4.0", "features.4"]  # maps come in call order
    assert is_constant(final.maps[1]).all()
    assert not is_constant(final.maps[0]).any()
    model = seeded_resnet18("cpu")
    result = importance_maps(model, make_images(2, 64), ["layer4", "layer4.0"], target="pred")
    assert result.names == ["layer4.0", "layer4"]
    assert is_constant(result.maps[1]).all() and not is_constant(result.maps[0]).any()


@pytest.mark.parametrize("arch", ["tiny", "resnet18"])
def test_a_samples_mask_does_not_depend_on_its_batch(device, tiny_cnn, make_images, arch):
    """A sample's mask is the same alone or inside a batch of 8 different images (eval-mode
    BatchNorm; per-image normalisation and quantile)."""
    # In training mode, as inside a training loop: the pass itself must switch to eval
    # (BatchNorm with running statistics), or samples would see each other.
    model = (tiny_cnn if arch == "tiny" else seeded_resnet18("cpu")).to(device).train()
    # amp off: bf16 autocast (the CUDA default) rounds differently per batch shape.
    settings = {"inhibition.ratio": 1.0, "inhibition.quantile": 0.6, "runtime.amp": "off"}
    enhancer = LateralInhibition(model, settings, input_size=(64, 64))
    batch = make_images(8, 64, seed=11, device=device)
    # oneDNN's CPU conv backward picks another kernel for a batch of 8 than for 1, and on CPUs
    # without AMX that kernel's layer2 gradient differed by 0.4% from float64 (batch 1 and
    # oneDNN off: 1e-7). The property tested is latinhib's (no sample sees another), not the
    # kernel's precision, so the CPU pass runs on ATen's own convolutions.
    with torch.backends.mkldnn.flags(enabled=False):
        together = enhancer(batch)
        alones = [enhancer(batch[i:i + 1]) for i in (0, 5)]
    for i, alone in zip((0, 5), alones):
        torch.testing.assert_close(alone.importance[0], together.importance[i], rtol=1e-4, atol=1e-5)
        # A pixel may flip only where the map sits within float noise of the threshold.
        flipped = (alone.masks[0] != together.masks[i]).float().mean().item()
        assert flipped <= 0.002, flipped
        agree = (alone.masks[0] == together.masks[i])[None].expand_as(alone.enhanced[0])
        torch.testing.assert_close(alone.enhanced[0][agree], together.enhanced[i][agree], rtol=0, atol=1e-5)
    assert together.masks.flatten(1).mean(1).sub(0.4).abs().max() < 0.02
    assert model.training
