"""Paired differences on test/mixed_rand pooled over several draws of the fine-detail benchmark.

    .venv/bin/python -m scripts.experiment.pool out/experiment-pattern out/experiment-pattern-s1

``--split val_rand`` pools another split (what chooses a default). Each argument is a ``--work`` folder of ``scripts.experiment.run --benchmark pattern`` run
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


def pairs(states: list, row: str, reference: str, split: str = SPLIT) -> list[float]:
    """(row - reference) on ``split``, in points, for every seed of every draw that has both."""
    out = []
    for state in states:
        runs = state["protocol"]
        for key, scores in runs.items():
            method, seed = key.rsplit("/", 1)
            other = runs.get(f"{reference}/{seed}")
            if method == row and other is not None:
                out.append(100 * (scores[split] - other[split]))
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


#: the references a latinhib row is compared with, where the draws trained them
CAMS = ("gradcam", "gradcam++", "layercam")
REFERENCES = ("baseline", "oracle", "blur-all") + CAMS


def verdict(mean: float, se: float) -> str:
    """Issue 26's bar: a win is a gain above two pooled standard errors."""
    return "win: > 2 SE" if mean > 2 * se else ("loss: < -2 SE" if mean < -2 * se else "tie: within 2 SE")


def main(folders: list[str], split: str = SPLIT) -> None:
    states = [json.loads((Path(f) / "state.json").read_text()) for f in folders]
    rows = [r for r in states[0]["order"] if r not in REFERENCES and all(r in s["order"] for s in states)]
    present = [r for r in REFERENCES if all(r in s["order"] for s in states)]

    def pairs_of(row: str, reference: str) -> list[float]:
        return pairs(states, row, reference, split)

    print(f"{len(states)} draws ({', '.join(folders)}); {split}, points, pooled over draws and seeds")
    oracle = "oracle" in present and "baseline" in present
    if oracle:
        oracle_gain, _ = mean_se(pairs_of("oracle", "baseline"))
        print(f"oracle - baseline: {oracle_gain:+.1f}")
    for row in rows:
        parts = []
        if "blur-all" in present:
            vs_cam, se_cam = mean_se(pairs_of(row, "gradcam"))
            vs_blur, se_blur = mean_se(pairs_of(row, "blur-all"))
            parts.append(f"vs Grad-CAM {vs_cam:+.1f} ± {se_cam:.1f} ({'met' if vs_cam >= 0 else 'NOT met'})")
            parts.append(f"vs blur-all {vs_blur:+.1f} ± {se_blur:.1f} ({'met' if vs_blur > 2 * se_blur else 'NOT met'}: "
                         f"2 SE {2 * se_blur:.1f})")
        if oracle:
            gain, _ = mean_se(pairs_of(row, "baseline"))
            parts.append(f"{gain / oracle_gain:.1%} of the oracle's gain "
                         f"({'met' if gain >= 0.8 * oracle_gain else 'NOT met'})")
        for cam in CAMS[1:] if "blur-all" in present else CAMS:
            if cam in present:
                mean, se = mean_se(pairs_of(row, cam))
                parts.append(f"vs {cam} {mean:+.1f} ± {se:.1f} ({verdict(mean, se)})")
        print(f"{row}: {len(pairs_of(row, 'gradcam'))} pairs; " + "; ".join(parts))


if __name__ == "__main__":
    args = sys.argv[1:]
    chosen = SPLIT
    if args[:1] == ["--split"]:
        chosen, args = args[1], args[2:]
    if not args:
        raise SystemExit(__doc__)
    main(args, chosen)
