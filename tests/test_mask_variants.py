"""The mask variants of issue 13, each against a reference that does not share its code:
the scale-selected Mexican hat against a float64 brute force over sigmas of the
continuous scale-normalised LoG; ``quantile: auto`` against scikit-image's Otsu
threshold; per-image quantiles against ``torch.quantile``; gradient x activation against
plain hooks and autograd; flip averaging against two separate passes; default_layers on
nn.ModuleList models and torchvision's families; and ``runtime.amp: auto``'s AMX check."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from hypothesis import given, settings
from hypothesis import strategies as st

from latinhib import LateralInhibition
from latinhib import api as api_module
from latinhib import runtime
from latinhib.runtime import amp_dtype
from latinhib.config import ConfigError, load_config
from latinhib.importance import default_layers, importance_maps
from latinhib.inhibition import auto_quantile, combine_maps, gate_by_response, quantile_threshold, respond



# ------------------------------------------------------------- scale-selected Mexican hat


def brute_force_scale_selected(maps: np.ndarray, sigmas, gamma: float) -> np.ndarray:
    """Per image, the response at the sigma whose peak of sigma^gamma * -LoG_sigma * map is
    largest, in float64: the continuous operator -(e/2) sigma^2 LoG sampled over +-5 sigma
    (no truncation to speak of, no zero-mean correction), numpy's reflect padding, one
    explicit sum over kernel offsets. (e/2: the product normalises each kernel's positive
    lobe to one, which is the continuous one's integral times e/2, for every sigma.)"""
    responses = []
    for sigma in sigmas:
        radius = int(math.ceil(5 * sigma))
        y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1].astype(np.float64)
        r2 = (x**2 + y**2) / (2 * sigma**2)
        # -sigma^2 * LoG(x, y) = (1 - r^2 / 2 sigma^2) exp(-r^2 / 2 sigma^2) / (pi sigma^2)
        kernel = (1 - r2) * np.exp(-r2) / (math.pi * sigma**2) * (math.e / 2)
        padded = np.pad(maps, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
        h, w = maps.shape[1:]
        out = np.zeros_like(maps)
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                out += kernel[dy, dx] * padded[:, dy:dy + h, dx:dx + w]
        responses.append(out)
    stacked = np.stack(responses)  # (S, N, h, w)
    peaks = stacked.reshape(len(sigmas), maps.shape[0], -1).max(axis=2) * np.array(sigmas)[:, None] ** (gamma - 2)
    return stacked, peaks


def blobs(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, size, size) maps: image i holds one Gaussian blob of radius 1 + 1.5 i (so the
    images call for different scales) and a weaker, small one, on a weak noise floor.
    (Blobs of equal height tie under scale normalisation, whatever their radius.)"""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    maps = 0.05 * rng.random((n, size, size))
    for i in range(n):
        for radius, height in ((1.0 + 1.5 * i, 1.0), (1.5, 0.6)):
            cy, cx = rng.uniform(16, size - 16), rng.uniform(16, size - 16)
            maps[i] += height * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
    return torch.from_numpy(maps)


@pytest.mark.parametrize("gamma", [2.0, 2.65])
def test_scale_selected_log_matches_a_float64_brute_force_over_sigmas(gamma):
    # A 64-pixel map at a 1024 input is a stride-16 map: the sigmas apply as given.
    maps = blobs(6, 64, seed=1)
    sigmas = [1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    want, peaks = brute_force_scale_selected(maps.numpy(), sigmas, gamma)
    want, peaks = torch.from_numpy(want), torch.from_numpy(peaks)
    # Each scale alone is the continuous scale-normalised operator: the product's kernels
    # are sampled on +-3 sigma and made exactly zero-sum: 1% (4% at sigma 1) of the peak away.
    singles = torch.stack([respond(maps.float(), "log", 13, 2.0, 1024, scales=[s]).double() for s in sigmas])
    for i, sigma in enumerate(sigmas):
        assert (singles[i] - want[i]).abs().amax() < 0.05 * want[i].abs().amax(), sigma
    got = respond(maps.float(), "log", 13, 2.0, 1024, scales=sigmas, gamma=gamma).double()
    chosen = torch.tensor([int(((singles[:, n] - got[n]).abs().flatten(1).amax(1) == 0).nonzero()[0])
                           for n in range(len(maps))])
    best = peaks.argmax(dim=0)
    assert len(set(best.tolist())) > 2, best  # the images call for different scales
    # The product picks the brute force's scale in every image.
    assert torch.equal(chosen, best), (chosen, best)


def test_scale_selection_follows_the_blob_size():
    """A disc of radius r: the selected scale grows with r (blob theory: sigma ~ r /
    sqrt(2) at gamma 2), and a large disc's inside stays positive, where a fixed small
    sigma leaves only its edge (SPEC "Traps")."""
    size = 96
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    sigmas = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0]
    discs = torch.stack([(((y - size / 2) ** 2 + (x - size / 2) ** 2) <= r**2).float() for r in (2.0, 4.0, 8.0, 12.0)])
    selected = respond(discs, "log", 13, 2.0, size * 16, scales=sigmas)
    singles = torch.stack([respond(discs, "log", 13, 2.0, size * 16, scales=[s]) for s in sigmas])
    chosen = [int(((singles[:, i] - selected[i]).abs().flatten(1).amax(1) == 0).nonzero()[0]) for i in range(4)]
    assert chosen == sorted(chosen) and chosen[0] < chosen[-1], chosen
    assert (selected[:, size // 2, size // 2] > 0).all()
    fixed = respond(discs[3:], "log", 7, 1.0, size * 16)
    assert abs(float(fixed[0, size // 2, size // 2])) < 1e-3
    # gamma above 2 never picks a smaller sigma than gamma 2 does
    leaning = respond(discs, "log", 13, 2.0, size * 16, scales=sigmas, gamma=2.65)
    lean = [int(((singles[:, i] - leaning[i]).abs().flatten(1).amax(1) == 0).nonzero()[0]) for i in range(4)]
    assert all(a >= b for a, b in zip(lean, chosen))


def test_scales_follow_each_layers_stride():
    """scales are stride-16 sigmas, like sigma: a stride-8 map uses twice each sigma."""
    maps = blobs(2, 56, seed=2).float()
    got = respond(maps, "log", 13, 2.0, 448, scales=[1.0, 2.0])  # 56 px at 448: stride 8
    want = respond(maps, "log", 13, 2.0, 56 * 16, scales=[2.0, 4.0])  # the same map read as stride 16
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------- quantile: auto


def want_threshold(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values.astype(np.float32), nbins=256))


def otsu_reference_q(values: np.ndarray, bounds) -> float:
    from skimage.filters import threshold_otsu

    threshold = threshold_otsu(values, nbins=256)
    return float(np.clip((values <= threshold).mean(), *bounds))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), share=st.floats(0.02, 0.9), spread=st.floats(0.02, 0.2),
       power=st.sampled_from([1.0, 1.5, 2.0, 3.0]))
def test_auto_quantile_matches_scikit_images_otsu(seed, share, spread, power):
    """Bimodal maps spanning [0, 1] (so both histograms use the same bins): the q Otsu
    gives is scikit-image's within one bin's share of pixels; with ``power`` (auto_power),
    scikit-image's Otsu of the map raised to that power."""
    rng = np.random.default_rng(seed)
    n = 40 * 40
    high = rng.random(n) < share
    values = np.where(high, rng.normal(0.75, spread, n), rng.normal(0.2, spread, n)).clip(0, 1)
    values[0], values[1] = 0.0, 1.0
    bounds = (0.0, 1.0)
    got = float(auto_quantile(torch.from_numpy(values).float().view(1, 40, 40), bounds, power=power)[0])
    values = values.astype(np.float32) ** np.float32(power)
    want = otsu_reference_q(values, bounds)
    # within the share of pixels in the reference split's own bin and its neighbours
    split = min(int(np.searchsorted(np.linspace(0, 1, 257), want_threshold(values)) - 1), 255)
    counts, _ = np.histogram(values, bins=256, range=(0, 1))
    assert abs(got - want) <= counts[max(split - 1, 0):split + 2].sum() / n + 1e-6, (got, want)


def test_auto_quantile_is_bounded_and_follows_the_object_size():
    maps = torch.zeros(3, 64, 64)
    maps[0, 30:34, 30:34] = 1.0  # 0.4% of the frame hot: q would be 0.996
    maps[1, 8:40, 8:40] = 1.0  # 25% hot
    maps[2, :, :60] = 1.0  # 94% hot: q would be 0.06
    maps += 0.02 * torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    q = auto_quantile(maps.clamp(0, 1), (0.3, 0.95))
    assert q[0] == pytest.approx(0.95) and q[2] == pytest.approx(0.3)
    assert q[1] == pytest.approx(0.75, abs=0.01)


def test_auto_power_leaves_the_halo_of_an_upsampled_map_out():
    """A coarse map bilinearly upsampled: an object's core with a ramp (halo) around it.
    Plain Otsu splits inside the ramp; power 2 moves the split up the ramp, towards the core."""
    coarse = torch.zeros(1, 1, 8, 8)
    coarse[..., 3:5, 3:5] = 1.0  # the object: 2 x 2 of 8 x 8 cells = 6% of the frame
    coarse[..., 2:6, 2:6] += 0.3  # a weaker ring of evidence around it
    maps = F.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    maps = maps / maps.max()
    q1, q2 = auto_quantile(maps, (0.0, 1.0)), auto_quantile(maps, (0.0, 1.0), power=2.0)
    assert q2 > q1
    core = F.interpolate(coarse, size=(64, 64), mode="nearest")[0, 0] >= 1.0
    kept1 = maps[0] > quantile_threshold(maps, q1)[0]
    kept2 = maps[0] > quantile_threshold(maps, q2)[0]
    iou = lambda kept: float((kept & core).sum() / (kept | core).sum())
    assert iou(kept2) > iou(kept1)
    with pytest.raises(ConfigError, match="inhibition.auto_power"):
        load_config(overrides={"inhibition.auto_power": 0})


def test_auto_power_reaches_the_masks_of_the_api(tiny_cnn, make_images):
    # outline response: q is Otsu's on the map it thresholds (importance takes q from the
    # response and thresholds the gated map: test_outline_in_the_config_and_the_api)
    settings_ = {"inhibition.quantile": "auto", "inhibition.ratio": 1.0, "inhibition.outline": "response"}
    images = make_images(4, 64)
    plain = LateralInhibition(tiny_cnn, settings_, input_size=(64, 64)).importance(images)
    tight = LateralInhibition(tiny_cnn, {**settings_, "inhibition.auto_power": 3.0},
                              input_size=(64, 64)).importance(images)
    torch.testing.assert_close(tight.quantile, auto_quantile(tight.combined, power=3.0))
    assert not torch.equal(tight.quantile, plain.quantile)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.lists(st.floats(0, 1), min_size=3, max_size=3))
def test_per_image_quantiles_equal_torch_quantile(seed, q):
    maps = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(seed))
    got = quantile_threshold(maps, torch.tensor(q))
    want = torch.stack([torch.quantile(maps[i].flatten(), q[i]) for i in range(3)])
    torch.testing.assert_close(got, want)


def test_quantile_auto_in_the_api_and_config(tiny_cnn, make_images):
    enhancer = LateralInhibition(tiny_cnn, {"inhibition.quantile": "auto", "inhibition.ratio": 1.0,
                                            "inhibition.outline": "response"}, input_size=(64, 64))
    images = make_images(4, 64)
    imp = enhancer.importance(images)
    torch.testing.assert_close(imp.quantile, auto_quantile(imp.combined, power=enhancer.settings.auto_power))
    torch.testing.assert_close(imp.threshold, quantile_threshold(imp.combined, imp.quantile))
    out = enhancer(images)
    torch.testing.assert_close(out.kept_fraction, 1 - imp.quantile, atol=0.01, rtol=0)
    for bad in ("Auto", -0.1, [0.5]):
        with pytest.raises(ConfigError, match="inhibition.quantile"):
            load_config(overrides={"inhibition.quantile": bad})



def test_a_sigma_without_scales_asks_for_that_fixed_filter(tmp_path):
    """--sigma / --kernel-size with the default scale selection used to be ignored."""
    assert load_config().inhibition.scales is not None
    for key in ("inhibition.sigma", "inhibition.kernel_size"):
        assert load_config(overrides={key: 1 if key.endswith("sigma") else 7}).inhibition.scales is None
    both = load_config(overrides={"inhibition.sigma": 1.0, "inhibition.scales": [1, 2]}).inhibition
    assert both.scales == (1.0, 2.0)
    (tmp_path / "c.yaml").write_text("inhibition:\n  sigma: 1.5\n")
    assert load_config(tmp_path / "c.yaml").inhibition.scales is None
    # a file with sigma and scales (what `latinhib config` prints) keeps its scales, until
    # a later source (--sigma, --set) gives a sigma of its own
    (tmp_path / "d.yaml").write_text("inhibition:\n  sigma: 1.5\n  scales: [2.0]\n")
    assert load_config(tmp_path / "d.yaml").inhibition.scales == (2.0,)
    assert load_config(tmp_path / "d.yaml", {"inhibition.ratio": 0.5}).inhibition.scales == (2.0,)
    assert load_config(tmp_path / "d.yaml", {"inhibition.sigma": 1.0}).inhibition.scales is None
    assert load_config(tmp_path / "c.yaml", {"inhibition.scales": [3]}).inhibition.scales == (3.0,)


# ------------------------------------------------------------- outline: importance


def reference_gate(response: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """float64, one image at a time: response x raw, min-max normalised; the response
    itself where the product is flat."""
    out = []
    for r, m in zip(response.astype(np.float64), raw.astype(np.float64)):
        g = r * m
        out.append((g - g.min()) / (g.max() - g.min()) if g.max() > g.min() else r)
    return np.stack(out)


def test_gate_by_response_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    response, raw = rng.random((3, 16, 20)), rng.random((3, 16, 20))
    response[1, :8] = 0.0  # the response suppresses half of the frame
    raw[2] = 0.0  # the two never overlap: the product is flat
    got = gate_by_response(torch.from_numpy(response).float(), torch.from_numpy(raw).float())
    np.testing.assert_allclose(got.numpy(), reference_gate(response, raw), atol=1e-6)
    assert got[1, :8].max() == 0


def l_shaped_maps(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer map of an L-shaped object (its two arms a quarter of the frame) on a
    weak noise floor, and the object's exact mask at 8x the map's size."""
    shape = torch.zeros(size, size)
    shape[3:13, 3:6] = 1.0
    shape[10:13, 3:13] = 1.0
    noise = 0.05 * torch.rand(size, size, generator=torch.Generator().manual_seed(0))
    exact = F.interpolate(shape[None, None], scale_factor=8, mode="nearest")[0, 0] > 0.5
    return (shape + noise)[None], exact


def test_outline_importance_follows_a_non_round_object():
    """The scale-selected Mexican hat answers an L with a round blob; a threshold on it keeps
    background in the L's corner and cuts off the ends of its arms. Gated by the raw map,
    the kept region at the same q follows the L."""
    layer_map, exact = l_shaped_maps()
    share = float(exact.float().mean())
    ious = {}
    for outline in ("response", "importance"):
        settings_ = load_config(overrides={"inhibition.outline": outline,
                                           "inhibition.quantile": 1 - share}).inhibition
        combined, threshold, _, _ = api_module._steps_4_5([layer_map], (128, 128), settings_)
        kept = combined[0] > threshold[0]
        ious[outline] = float((kept & exact).sum() / (kept | exact).sum())
    assert ious["importance"] > ious["response"] + 0.1, ious
    assert ious["importance"] > 0.8, ious


def test_outline_in_the_config_and_the_api(tiny_cnn, make_images):
    images = make_images(3, 64)
    assert load_config().inhibition.outline == "importance"  # the default
    response = LateralInhibition(tiny_cnn, {"runtime.amp": "off", "inhibition.outline": "response"},
                                 input_size=(64, 64)).importance(images)
    gated = LateralInhibition(tiny_cnn, {"runtime.amp": "off", "inhibition.outline": "importance"},
                              input_size=(64, 64)).importance(images)
    raw, _ = combine_maps(response.layer_maps, (64, 64), kind="none")
    torch.testing.assert_close(gated.combined, gate_by_response(response.combined, raw))
    # q is the response's (auto): the outline changes where the cut lies, not how much is kept
    torch.testing.assert_close(gated.quantile, response.quantile)
    with pytest.raises(ConfigError, match="inhibition.outline"):
        load_config(overrides={"inhibition.outline": "mask"})


# ------------------------------------------------------------- importance variants


def test_gradient_x_activation_matches_plain_hooks_and_autograd(tiny_cnn, make_images):
    model = tiny_cnn.double()
    images = make_images(3, 64).double()
    layers = ["features.1", "features.2", "features.3"]
    got = importance_maps(model, images, layers, target="pred", kind="gradient_x_activation")
    kept = []
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o: kept.append(o.detach().clone()))
               for n in layers]
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    # grad norms from the reference, then the activation-weighted norm by hand
    grads = []
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o: grads.append(o)) for n in layers]
    try:
        with torch.enable_grad():
            logits = model(images.clone().requires_grad_(True))
            p = logits.detach().softmax(dim=1)
            onehot = torch.nn.functional.one_hot(logits.argmax(1), p.shape[1]).bool()
            dloss = torch.where(onehot, -p.masked_fill(onehot, 0).sum(1, keepdim=True), p)
            g = torch.autograd.grad(logits, grads, grad_outputs=dloss)
    finally:
        for h in handles:
            h.remove()
    ratios = []
    for a, act, grad in zip(got.maps, kept, g):
        want = (act * grad).norm(dim=1)
        ratio = a.double().flatten(1).norm(dim=1) / want.flatten(1).norm(dim=1)
        ratios.append(ratio)
        torch.testing.assert_close(a.double(), want * ratio.view(-1, 1, 1), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(ratios[0], ratios[2])  # one scale per image, as for gradients
    plain = importance_maps(model, images, layers, target="pred")
    assert not torch.allclose(plain.maps[1], got.maps[1] * ratios[1].view(-1, 1, 1).float())
    with pytest.raises(ValueError, match="kind"):
        importance_maps(model, images, layers, kind="saliency")


def test_flip_averages_the_maps_of_the_image_and_its_mirror(tiny_cnn, make_images):
    images = make_images(3, 64)
    enhancer = LateralInhibition(tiny_cnn, {"inhibition.flip": True, "runtime.amp": "off"}, input_size=(64, 64))
    imp = enhancer.importance(images)
    kind = enhancer.settings.importance
    plain = importance_maps(tiny_cnn, images, enhancer.layers, target="pred", kind=kind)
    mirrored = importance_maps(tiny_cnn, images.flip(-1), enhancer.layers, target="pred", kind=kind)
    for got, a, b in zip(imp.layer_maps, plain.maps, mirrored.maps):
        torch.testing.assert_close(got, (a + b.flip(-1)) / 2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(imp.logits, plain.logits, rtol=1e-4, atol=1e-5)
    assert imp.combined.shape == (3, 64, 64)


# ------------------------------------------------------------- default layers


class ListNet(nn.Module):
    """EfficientNet-Lite's layout: stem, blocks in an nn.ModuleList, head conv + BN, a
    functional activation and global pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        chans = [8, 8, 16, 16, 24, 24, 32, 32]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2 if i % 2 else 1, padding=1), nn.BatchNorm2d(b), nn.ReLU())
            for i, (a, b) in enumerate(zip(chans, chans[1:] + [32]))
        )
        self.head = nn.Conv2d(32, 64, 1)
        self.bn = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.fc(torch.relu(self.bn(self.head(x))).mean(dim=(2, 3)))


def test_default_layers_walk_module_lists():
    # strides: stem 2, blocks 2,4,4,8,8,16,16,32; the head conv and BN are single layers.
    assert default_layers(ListNet().eval(), (64, 64)) == ["blocks.4", "blocks.6", "blocks.7"]
    # At 64 px the stride-8 map is 8 x 8, so the map-size rule (min_side 16) adds the last
    # block with a 16 x 16 map (blocks.2, stride 4).
    assert default_layers(ListNet().eval(), (64, 64), min_side=16) == ["blocks.2", "blocks.4", "blocks.6", "blocks.7"]


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("mobilenet_v2", ["features.6", "features.13", "features.17"]),
        ("mobilenet_v3_large", ["features.6", "features.12", "features.15"]),
        ("efficientnet_b0", ["features.3", "features.5", "features.7"]),
        ("resnet18", ["layer2", "layer3", "layer4.0"]),
        ("resnet50", ["layer2", "layer3", "layer4.1"]),
        ("convnext_tiny", ["features.3", "features.5", "features.7.1"]),
        ("regnet_y_400mf", ["trunk_output.block2", "trunk_output.block3", "trunk_output.block4.block4-4"]),
        ("densenet121", ["features.denseblock2", "features.denseblock3", "features.denseblock4"]),
    ],
)
def test_default_layers_of_torchvision_families(arch, expected):
    """Each family's stage outputs at strides 8, 16, 32, never the map feeding the pool,
    a downsampling layer at a stage's start (ConvNeXt's features.6) or a bare head conv."""
    model = tvm.get_model(arch, weights=None).eval()
    assert default_layers(model, (224, 224)) == expected


def test_default_layers_of_efficientnet_lite0():
    lite = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch (test extra)")
    model = lite.EfficientNet.from_name("efficientnet-lite0").eval()
    assert default_layers(model, (224, 224)) == ["_blocks.4", "_blocks.10", "_blocks.15"]


# ------------------------------------------------------------- runtime.amp: auto


@pytest.mark.parametrize("amx", [True, False])
def test_amp_auto_is_bf16_exactly_on_cpus_with_amx(monkeypatch, amx):
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: amx)
    assert amp_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if amx else None)
    assert amp_dtype("off", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_amp_off_as_a_user_types_it(tmp_path):
    """`--set runtime.amp=off` and `amp: off` in a file: YAML reads a bare off as false."""
    from click.testing import CliRunner

    from latinhib.cli import main

    assert load_config(overrides={"runtime.amp": False}).runtime.amp == "off"
    (tmp_path / "c.yaml").write_text("runtime:\n  amp: off\n")
    assert load_config(tmp_path / "c.yaml").runtime.amp == "off"
    result = CliRunner().invoke(main, ["config", "--set", "runtime.amp=off"])
    assert result.exit_code == 0, result.output
    assert "amp: 'off'" in result.output or "amp: off" in result.output
    with pytest.raises(ConfigError, match="runtime.amp"):
        load_config(overrides={"runtime.amp": True})


def test_amx_check_reads_the_cpu_flags(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    info = tmp_path / "cpuinfo"
    opened = []
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            opened.append(path)
            return real_open(info, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    info.write_text("processor : 0\nflags : fpu sse avx512f amx_bf16 amx_tile amx_int8\n")
    assert runtime.cpu_has_amx()
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n")
    assert not runtime.cpu_has_amx()
    assert opened
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    info.write_text("flags : amx_bf16 amx_tile\n")
    assert not runtime.cpu_has_amx()  # torch's own check says no: no bf16 by default


@pytest.mark.parametrize("shape, k, sigma", [((4, 1, 28, 28), 73, 12.0), ((3, 2, 7, 9), 19, 3.0), ((2, 1, 40, 30), 7, 1.0)])
def test_separable_log_equals_the_2d_kernel(shape, k, sigma):
    """Scale selection's wide kernels run as 1-D passes: the same response as the 2-D
    Mexican hat of filter2d, replicate fallback on maps smaller than the kernel included."""
    from latinhib.filters import log_filter, log_filter_separable

    maps = torch.rand(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(log_filter_separable(maps, k, sigma), log_filter(maps, k, sigma), rtol=1e-9, atol=1e-12)
