"""The numbers ``latinhib evaluate`` reports, from a (K, V, N) table of right/wrong answers
(checkpoint, variant, image): top-1 accuracy per variant with a percentile bootstrap 95%
interval over images, the gaps between variants, and for every further checkpoint its paired
difference from the first with McNemar's exact test. One seeded set of resamples serves every
variant and checkpoint, so gaps and differences are paired. Also the plain-text tables
(``--json`` is :meth:`EvaluationResult.as_dict`; ``evaluation_report`` draws the rest).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .variants import GAPS, VARIANTS

__all__ = ["RESAMPLES", "Accuracy", "Comparison", "Difference", "EvaluateError", "EvaluationResult",
           "bootstrap_accuracies", "format_table", "gap_name", "mcnemar_p", "summarise"]

#: Bootstrap resamples: enough that the interval's ends move by < 0.3 points between seeds
#: at n = 800 (a percentile of 2000 draws has a standard error of ~0.15 points there).
RESAMPLES = 2000


class EvaluateError(Exception):
    """The evaluation cannot run (an unmapped class folder, no images, ...); nothing done.
    Defined here, the lowest of the evaluation modules, as :func:`summarise` raises it too."""



@dataclass
class Accuracy:
    """Top-1 accuracy of one model on one variant, with its bootstrap 95% interval."""

    accuracy: float
    correct: int
    n: int
    ci95: Tuple[float, float]

    def as_dict(self) -> Dict[str, Any]:
        return {"accuracy": self.accuracy, "correct": self.correct, "n": self.n, "ci95": list(self.ci95)}


@dataclass
class Difference:
    """A difference of two accuracies on the same images with its paired bootstrap 95%
    interval; between two checkpoints also McNemar's counts and exact two-sided p-value."""

    difference: float
    ci95: Tuple[float, float]
    only_first_correct: Optional[int] = None
    only_this_correct: Optional[int] = None
    mcnemar_p: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        values = {"difference": self.difference, "ci95": list(self.ci95)}
        if self.mcnemar_p is not None:
            values.update(only_first_correct=self.only_first_correct, only_this_correct=self.only_this_correct,
                          mcnemar_p=self.mcnemar_p)
        return values


@dataclass
class Comparison:
    """A further checkpoint on the first model's variants: its accuracies, its own gaps,
    and per variant its paired difference against the first model (this - first)."""

    checkpoint: str
    variants: Dict[str, Accuracy]
    gaps: Dict[str, Difference]
    paired: Dict[str, Difference]

    def as_dict(self) -> Dict[str, Any]:
        return {"checkpoint": self.checkpoint,
                "variants": {k: v.as_dict() for k, v in self.variants.items()},
                "gaps": {k: v.as_dict() for k, v in self.gaps.items()},
                "paired": {k: v.as_dict() for k, v in self.paired.items()}}


@dataclass
class EvaluationResult:
    """What :func:`evaluate` gives: the first model's accuracy per variant and its gaps, every
    further checkpoint compared with it, and the settings used.

    correct: (K, V, N) bool, whether checkpoint k (0 = the first model) got image n right on
        variant v (order of :data:`~latinhib.variants.VARIANTS`), for further statistics.
    """

    checkpoints: List[str]
    variants: Dict[str, Accuracy]
    gaps: Dict[str, Difference]
    compared: List[Comparison]
    config: Dict[str, Any]
    correct: torch.Tensor = field(repr=False)

    def as_dict(self) -> Dict[str, Any]:
        """The ``--json`` document: variants, gaps, compared, config."""
        return {"variants": {k: v.as_dict() for k, v in self.variants.items()},
                "gaps": {k: v.as_dict() for k, v in self.gaps.items()},
                "compared": [c.as_dict() for c in self.compared],
                "config": self.config}

    def table(self) -> str:
        """Plain-text tables: accuracy per variant and checkpoint, the gaps, the paired
        differences. Percent, 95% intervals in brackets."""
        return format_table(self)


def gap_name(first: str, second: str) -> str:
    return f"{first} - {second}"


def mcnemar_p(only_first: int, only_this: int) -> float:
    """Exact two-sided McNemar p-value: 2 P(X <= min) for X ~ Binomial(discordant, 1/2)."""
    n = only_first + only_this
    if n == 0:
        return 1.0
    low = min(only_first, only_this)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0)
            for i in range(low + 1)]
    peak = max(logs)
    return min(1.0, 2.0 * math.exp(peak) * sum(math.exp(v - peak) for v in logs))


def bootstrap_accuracies(correct: torch.Tensor, resamples: int, seed: int) -> torch.Tensor:
    """Accuracy of every row of ``correct`` (R, N) bool on ``resamples`` seeded resamples of
    the N images (with replacement), the same resamples for every row: (resamples, R)
    float64. Each resample is a count vector, so this is one matrix product per chunk."""
    rows, n = correct.shape
    generator = torch.Generator().manual_seed(seed)
    values = correct.to(torch.float64).t()  # (N, R)
    chunk = max(1, min(resamples, (1 << 22) // max(n, 1)))  # ~32 MB per chunk
    parts = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        picks = torch.randint(0, n, (size, n), generator=generator)
        counts = torch.zeros(size, n, dtype=torch.float64).scatter_add_(1, picks, torch.ones(size, n, dtype=torch.float64))
        parts.append(counts @ values / n)
    return torch.cat(parts)


def _interval(samples: torch.Tensor) -> Tuple[float, float]:
    low, high = torch.quantile(samples, torch.tensor([0.025, 0.975], dtype=samples.dtype)).tolist()
    return (low, high)


def summarise(correct: torch.Tensor, checkpoints: Sequence[str], config: Dict[str, Any], *,
              resamples: int = RESAMPLES, seed: int = 0) -> EvaluationResult:
    """Accuracies, intervals, gaps and paired differences from ``correct`` (K, V, N) bool."""
    k, v, n = correct.shape
    if n == 0:
        raise EvaluateError("no image could be evaluated")
    correct = correct.cpu()
    samples = bootstrap_accuracies(correct.reshape(k * v, n), resamples, seed).view(-1, k, v)
    counts = correct.sum(dim=2)

    def accuracies(model: int) -> Dict[str, Accuracy]:
        return {name: Accuracy(float(counts[model, i]) / n, int(counts[model, i]), n, _interval(samples[:, model, i]))
                for i, name in enumerate(VARIANTS)}

    def gaps(model: int) -> Dict[str, Difference]:
        out = {}
        for first, second in GAPS:
            a, b = VARIANTS.index(first), VARIANTS.index(second)
            value = float(counts[model, a] - counts[model, b]) / n
            out[gap_name(first, second)] = Difference(value, _interval(samples[:, model, a] - samples[:, model, b]))
        return out

    compared = []
    for model in range(1, k):
        paired = {}
        for i, name in enumerate(VARIANTS):
            only_first = int((correct[0, i] & ~correct[model, i]).sum())
            only_this = int((correct[model, i] & ~correct[0, i]).sum())
            paired[name] = Difference(float(counts[model, i] - counts[0, i]) / n,
                                      _interval(samples[:, model, i] - samples[:, 0, i]),
                                      only_first, only_this, mcnemar_p(only_first, only_this))
        compared.append(Comparison(checkpoints[model], accuracies(model), gaps(model), paired))
    config = dict(config)
    config.setdefault("evaluate", {}).update(resamples=resamples, bootstrap_seed=seed)
    return EvaluationResult(list(checkpoints), accuracies(0), gaps(0), compared, config, correct)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _span(low: float, high: float, sign: bool = False) -> str:
    form = "{:+.1f}" if sign else "{:.1f}"
    return f"[{form.format(100 * low)}, {form.format(100 * high)}]"


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in rows]
    return lines


def format_table(result: EvaluationResult) -> str:
    names = result.checkpoints
    n = next(iter(result.variants.values())).n
    every = [result.variants] + [c.variants for c in result.compared]
    every_gaps = [result.gaps] + [c.gaps for c in result.compared]
    settings = result.config.get("evaluate", {})
    lines = [f"top-1 accuracy (%) on {n} images, masks: {settings.get('masks', 'latinhib')}; "
             f"[95% bootstrap interval, {settings.get('resamples', RESAMPLES)} resamples]", ""]
    rows = [[name] + [f"{_pct(acc[name].accuracy)} {_span(*acc[name].ci95)}" for acc in every] for name in VARIANTS]
    lines += _grid(["variant"] + names, rows)
    lines.append("")
    rows = [[key] + [f"{100 * g[key].difference:+.1f} {_span(*g[key].ci95, sign=True)}" for g in every_gaps]
            for key in every_gaps[0]]
    lines += _grid(["gap (points)"] + names, rows)
    for comparison in result.compared:
        lines += ["", f"{comparison.checkpoint} - {names[0]} (paired, points; McNemar p)"]
        rows = [[name, f"{100 * d.difference:+.1f} {_span(*d.ci95, sign=True)}", f"p={d.mcnemar_p:.3g}"]
                for name, d in comparison.paired.items()]
        lines += _grid(["variant", "difference", "McNemar"], rows)
    return "\n".join(lines)

