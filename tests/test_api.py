"""The public API: stable selection of the enhanced fraction r, unselected samples
bit-identical, inputs never modified, and the end-to-end invariants of one call."""
from __future__ import annotations

import math
import random

import pytest
import torch

from latinhib import ConfigError, LateralInhibition, load_config
from latinhib.inhibition import select, selection_score

KEYS = [f"class_{i % 7}/img_{i:05d}.jpg" for i in range(2000)]


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_selection_is_stable_across_batch_sizes_and_orders(tiny_cnn, ratio):
    enhancer = LateralInhibition(tiny_cnn, {"inhibition.ratio": ratio, "inhibition.seed": 3}, input_size=(64, 64))
    reference = {key for key, chosen in zip(KEYS, select(KEYS, ratio, 3)) if chosen}
    shuffled = KEYS[:]
    random.Random(0).shuffle(shuffled)
    for keys in (KEYS, shuffled, KEYS[::-1]):
        for batch_size in (1, 7, 64, 2000):
            chosen = set()
            for start in range(0, len(keys), batch_size):
                batch = keys[start:start + batch_size]
                flags = enhancer.select(len(batch), batch)
                chosen.update(key for key, flag in zip(batch, flags.tolist()) if flag)
            assert chosen == reference, (ratio, batch_size)
    # Binomial sampling error: |count - r n| <= 4 sqrt(n r (1 - r)), exact for r in {0, 1}.
    n = len(KEYS)
    assert abs(len(reference) - ratio * n) <= 4 * math.sqrt(n * ratio * (1 - ratio))


def test_selection_depends_on_the_seed_and_is_uniform():
    a = select(KEYS, 0.5, seed=0)
    b = select(KEYS, 0.5, seed=1)
    assert a != b
    scores = [selection_score(0, key) for key in KEYS]
    assert all(0.0 <= s < 1.0 for s in scores)
    # Deciles each hold ~200 of 2000 (4-sigma binomial bound).
    for decile in range(10):
        count = sum(decile / 10 <= s < (decile + 1) / 10 for s in scores)
        assert abs(count - 200) <= 4 * math.sqrt(2000 * 0.1 * 0.9)
    # Pinned values: the selection must not change between versions, or a resumed run
    # (or a second shard) would enhance a different set of files.
    assert selection_score(0, "class_0/img_00000.jpg") == 0.16934052869371363
    assert selection_score(7, "n01440764/a.JPEG") == 0.3011057132824986
    assert sum(select(KEYS, 0.3, 3)) == 604
    with pytest.raises(ValueError, match=r"ratio should be in \[0, 1\]. Got 1.5"):
        select(KEYS, 1.5, 0)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_unselected_samples_come_back_bit_identical(device, tiny_cnn, make_images, ratio):
    enhancer = LateralInhibition(tiny_cnn.to(device), {"inhibition.ratio": ratio}, input_size=(64, 64))
    images = make_images(8, device=device)
    before = images.clone()
    keys = KEYS[:8]
    result = enhancer(images, keys=keys)
    assert torch.equal(images, before)  # input never modified
    expected = torch.tensor(select(keys, ratio, 0), device=device)
    assert torch.equal(result.selected, expected)
    for i, chosen in enumerate(expected.tolist()):
        if chosen:
            assert not torch.equal(result.enhanced[i], images[i])
            # quantile auto clips q to [0.3, 0.95]: 5-70% of the image kept sharp
            assert 0.05 - 1e-3 < result.kept_fraction[i] < 0.7 + 1e-3 and result.predicted[i] >= 0
        else:
            assert torch.equal(result.enhanced[i], images[i])
            assert result.masks[i].eq(1).all() and result.predicted[i] == -1
            assert math.isnan(result.threshold[i].item())
    assert result.enhanced.data_ptr() != images.data_ptr()


def test_nothing_selected_means_no_model_pass(tiny_cnn, make_images):
    def forbidden(*args, **kwargs):
        raise AssertionError("the model ran although no image was selected")

    enhancer = LateralInhibition(tiny_cnn, {"inhibition.ratio": 0.0}, input_size=(64, 64))
    tiny_cnn.forward = forbidden
    result = enhancer(make_images(4))
    assert not result.selected.any() and result.target is None


def test_enhanced_pixels_are_either_original_or_blurred(device, tiny_cnn, make_images):
    from latinhib.filters import downsampled_gaussian_blur

    enhancer = LateralInhibition(tiny_cnn.to(device), {"inhibition.ratio": 1.0, "inhibition.quantile": 0.7,
                                                       "blur.sigma": 2.0}, input_size=(64, 64))
    images = make_images(3, device=device)
    result = enhancer(images)
    kept = result.masks.bool()[:, None].expand_as(images)
    blurred = downsampled_gaussian_blur(images, 2.0)
    assert torch.equal(result.enhanced[kept], images[kept])
    assert torch.equal(result.enhanced[~kept], blurred[~kept])
    assert ((result.kept_fraction - 0.3).abs() < 0.02).all()
    assert result.target == "pred"


def test_labels_select_the_label_target(tiny_cnn, make_images):
    enhancer = LateralInhibition(tiny_cnn, {"inhibition.ratio": 1.0}, input_size=(64, 64))
    result = enhancer(make_images(2), targets=torch.tensor([1, 2]))
    assert result.target == "label"


def test_a_layer_with_no_spatial_information_leaves_images_unchanged(device, tiny_cnn, make_images):
    # features.4 feeds global pooling: a flat gradient map, so nothing is inhibited. (Under
    # importance gradient_x_activation the same layer is not flat: its activations vary.)
    enhancer = LateralInhibition(tiny_cnn.to(device), {"inhibition.ratio": 1.0, "model.layers": ["features.4"],
                                                       "inhibition.importance": "gradient"},
                                 input_size=(64, 64))
    images = make_images(3, device=device)
    result = enhancer(images)
    assert result.selected.all()
    assert torch.equal(result.enhanced, images)
    assert result.masks.eq(1).all()


def test_config_objects_and_bad_layers(tiny_cnn):
    config = load_config(overrides={"inhibition.quantile": 0.8, "model.layers": "features.2,features.3"})
    enhancer = LateralInhibition(tiny_cnn, config)
    assert enhancer.layers == ["features.2", "features.3"] and enhancer.settings.quantile == 0.8
    with pytest.raises(ConfigError, match="no layer 'features.7'"):
        LateralInhibition(tiny_cnn, {"model.layers": ["features.7"]})
    with pytest.raises(ConfigError, match="unknown key 'inhibition.quantil'"):
        LateralInhibition(tiny_cnn, {"inhibition.quantil": 0.5})
    with pytest.raises(ValueError, match="keys should have one entry per image"):
        LateralInhibition(tiny_cnn, input_size=(64, 64))(torch.rand(2, 3, 64, 64), keys=["a"])
    with pytest.raises(ValueError, match="images should be a float"):
        LateralInhibition(tiny_cnn, input_size=(64, 64))(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
