"""Paired differences on test/mixed_rand pooled over several draws of the fine-detail benchmark.

    .venv/bin/python -m scripts.experiment.pool out/experiment-pattern out/experiment-pattern-s1

Each argument is a ``--work`` folder of ``scripts.experiment.run --benchmark pattern`` run
with another ``--seed`` (a new draw of garments, prints and backgrounds). Within a draw,
a row and a reference trained with the same seed form a pair; the pooled mean and its
standard error are over all pairs of all draws (std / sqrt(pairs)), the share of the
oracle's gain is the ratio of the pooled mean gains over the baseline. Prints, for every
latinhib row present in all draws, issue 13's three checks.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

SPLIT = "test/mixed_rand"


def pairs(states: list, row: str, reference: str) -> list[float]:
    """(row - reference) on SPLIT, in points, for every seed of every draw that has both."""
    out = []
    for state in states:
        runs = state["protocol"]
        for key, scores in runs.items():
            method, seed = key.rsplit("/", 1)
            other = runs.get(f"{reference}/{seed}")
            if method == row and other is not None:
                out.append(100 * (scores[SPLIT] - other[SPLIT]))
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def main(folders: list[str]) -> None:
    states = [json.loads((Path(f) / "state.json").read_text()) for f in folders]
    rows = [r for r in states[0]["order"] if r not in ("baseline", "oracle", "blur-all", "gradcam")
            and all(r in s["order"] for s in states)]
    oracle_gain, _ = mean_se(pairs(states, "oracle", "baseline"))
    print(f"{len(states)} draws ({', '.join(folders)}); {SPLIT}, points, pooled over draws and seeds")
    print(f"oracle - baseline: {oracle_gain:+.1f}")
    for row in rows:
        gain, _ = mean_se(pairs(states, row, "baseline"))
        vs_cam, se_cam = mean_se(pairs(states, row, "gradcam"))
        vs_blur, se_blur = mean_se(pairs(states, row, "blur-all"))
        n = len(pairs(states, row, "blur-all"))
        print(f"{row}: {n} pairs; vs Grad-CAM {vs_cam:+.1f} ± {se_cam:.1f} ({'met' if vs_cam >= 0 else 'NOT met'}); "
              f"vs blur-all {vs_blur:+.1f} ± {se_blur:.1f} ({'met' if vs_blur > 2 * se_blur else 'NOT met'}: 2 SE "
              f"{2 * se_blur:.1f}); {gain / oracle_gain:.1%} of the oracle's gain "
              f"({'met' if gain >= 0.8 * oracle_gain else 'NOT met'})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
