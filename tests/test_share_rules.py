"""scripts/masks/share_rules.py's rules on synthetic maps, each against a reference written
out independently: the minimum-error threshold against a brute-force search over the
pixel values, the participation ratio against its definition. Fast: no model."""
from __future__ import annotations

import numpy as np
import torch

from scripts.masks.share_rules import minimum_error_quantile, participation
from latinhib.inhibition import OTSU_BINS, auto_quantile


def brute_force_minimum_error(values: np.ndarray) -> float:
    """Kittler-Illingworth by trying every split of the sorted distinct values and
    computing each class's weight and variance from its pixels."""
    floor = (0.5 / OTSU_BINS) ** 2
    best, best_share = np.inf, None
    for t in np.unique(values)[:-1]:
        low, high = values[values <= t], values[values > t]
        p1, p2 = low.size / values.size, high.size / values.size
        if p1 <= 1e-3 or p2 <= 1e-3:
            continue
        cost = sum(p * (0.5 * np.log(max(c.var(), floor)) - np.log(p)) for p, c in ((p1, low), (p2, high)))
        if cost < best:
            best, best_share = cost, p1
    return best_share


def test_minimum_error_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    for trial in range(6):
        # values on bin centres, so the histogram loses nothing and both must agree exactly
        n_high = int(rng.integers(200, 1500))
        low = rng.normal(0.2, 0.05 + 0.03 * trial, 4096 - n_high)
        high = rng.normal(0.75, 0.03 + 0.02 * trial, n_high)
        bins = np.clip((np.concatenate([low, high]) * OTSU_BINS).astype(int), 0, OTSU_BINS - 1)
        values = (bins + 0.5) / OTSU_BINS
        got = float(minimum_error_quantile(torch.from_numpy(values).view(1, 64, 64))[0])
        assert abs(got - brute_force_minimum_error(values)) < 1e-6


def test_minimum_error_finds_a_small_class_that_otsu_misses():
    # 5% bright object, 95% background with a long spread: Otsu's between-class variance
    # splits the background, the minimum-error rule puts the split at the object
    rng = np.random.default_rng(1)
    background = np.clip(rng.normal(0.3, 0.15, 3891), 0, 1)
    obj = np.clip(rng.normal(0.9, 0.02, 205), 0, 1)
    maps = torch.from_numpy(np.concatenate([background, obj])).float().view(1, 64, 64)
    assert abs(float(minimum_error_quantile(maps)[0]) - 0.95) < 0.01
    assert float(auto_quantile(maps, (0.0, 1.0), 1.0)[0]) < 0.9


def test_participation_is_the_share_a_maps_mass_is_spread_over():
    maps = torch.zeros(3, 10, 10)
    maps[0] = 1.0  # flat: the whole frame
    maps[1, :5, :4] = 2.0  # 20 equal peaks of 100 pixels
    maps[2, 0, 0] = 7.0  # one pixel
    assert torch.allclose(participation(maps), torch.tensor([1.0, 0.2, 0.01]))
