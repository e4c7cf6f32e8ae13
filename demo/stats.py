"""The demo's statistics: one paired bootstrap over clips and seeds, and the verdict rule (docs/demo-protocol.md).

A draw resamples the clips and the seeds with replacement; every arm and every statistic is computed
on the same draws, so a difference of two statistics is paired by clip and by seed. A statistic is
computed per drawn seed on the drawn clips and averaged over the drawn seeds. Draws are stored as
counts (how often each clip and each seed was drawn), so a statistic is a few matrix products.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from egodistill.student.metrics import ECE_BINS

LEVEL = 0.95
HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Draws:
    """B bootstrap draws of N clips and S seeds, as counts: clips [B, N], seeds [B, S]."""

    clips: np.ndarray
    seeds: np.ndarray

    @classmethod
    def make(cls, n_clips: int, n_seeds: int, count: int, seed: int) -> Draws:
        rng = np.random.default_rng(seed)
        clips = np.stack([np.bincount(rng.integers(0, n_clips, n_clips), minlength=n_clips) for _ in range(count)])
        seeds = np.stack([np.bincount(rng.integers(0, n_seeds, n_seeds), minlength=n_seeds) for _ in range(count)])
        return cls(clips.astype(np.float64), seeds.astype(np.float64))

    @property
    def shape(self) -> tuple[int, int]:
        """(clips, seeds)."""
        return self.clips.shape[1], self.seeds.shape[1]


@dataclass(frozen=True)
class Estimate:
    """A statistic on all the data (`value`) and on every bootstrap draw (`draws`, [B])."""

    value: float
    draws: np.ndarray

    def __sub__(self, other: Estimate | float) -> Estimate:
        if isinstance(other, Estimate):
            return Estimate(self.value - other.value, self.draws - other.draws)
        return Estimate(self.value - other, self.draws - other)

    def __neg__(self) -> Estimate:
        return Estimate(-self.value, -self.draws)

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        tail = 100 * (1 - level) / 2
        lo, hi = np.percentile(self.draws, [tail, 100 - tail])
        return float(lo), float(hi)

    def to_json(self) -> dict:
        lo, hi = self.interval()
        return {"estimate": float(self.value), "lo": lo, "hi": hi}


def mean_of(estimates: Iterable[Estimate]) -> Estimate:
    """The mean of several statistics, draw by draw."""
    items = list(estimates)
    return Estimate(float(np.mean([e.value for e in items])), np.mean([e.draws for e in items], axis=0))


def min_of(estimates: Iterable[Estimate]) -> Estimate:
    """The smallest of several statistics, draw by draw (a worst case)."""
    items = list(estimates)
    return Estimate(float(np.min([e.value for e in items])), np.min([e.draws for e in items], axis=0))


def per_clip_mean(values: np.ndarray, draws: Draws) -> Estimate:
    """Mean over clips, then over seeds, of values [S, N] (an additive per-clip score: correct, NLL, ...)."""
    values = np.asarray(values, dtype=np.float64)
    n, s = draws.shape
    if values.shape != (s, n):
        raise ValueError(f"values {values.shape} do not match the draws' (seeds, clips) = {(s, n)}")
    per_seed = draws.clips @ values.T / n                      # [B, S]: each seed's mean on the drawn clips
    return Estimate(float(values.mean()), (per_seed * draws.seeds).sum(axis=1) / s)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1.0 where the top-1 class is the label: [S, N, C], [N] -> [S, N]."""
    return (logits.argmax(axis=-1) == labels[None, :]).astype(np.float64)


def accuracy(logits: np.ndarray, labels: np.ndarray, draws: Draws) -> Estimate:
    """Top-1 in %."""
    e = per_clip_mean(correct(logits, labels), draws)
    return Estimate(100 * e.value, 100 * e.draws)


def nll(logits: np.ndarray, labels: np.ndarray, draws: Draws) -> Estimate:
    """Negative log-likelihood of the label, nats."""
    probs = _softmax(logits)
    picked = np.take_along_axis(probs, labels[None, :, None].repeat(len(probs), 0), axis=-1)[..., 0]
    return per_clip_mean(-np.log(np.maximum(picked, 1e-300)), draws)


def brier(logits: np.ndarray, labels: np.ndarray, draws: Draws) -> Estimate:
    """Multi-class Brier score, in [0, 2]."""
    probs = _softmax(logits)
    onehot = np.eye(probs.shape[-1])[labels][None]
    return per_clip_mean(((probs - onehot) ** 2).sum(axis=-1), draws)


def ece(logits: np.ndarray, labels: np.ndarray, draws: Draws, bins: int = ECE_BINS) -> Estimate:
    """Expected calibration error x100 with `bins` equal-width bins (as student/metrics.py), per seed,
    averaged over seeds. On a draw, a clip drawn twice counts twice in its bin."""
    probs = _softmax(logits)
    confidence = probs.max(axis=-1)                                     # [S, N]
    gap = (probs.argmax(axis=-1) == labels[None]).astype(np.float64) - confidence
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    n, s = draws.shape
    per_seed = np.empty((len(draws.clips), s))
    value = []
    for k in range(s):
        in_bin = np.zeros((n, bins))
        in_bin[np.arange(n), which[k]] = gap[k]                         # [N, bins]: the clip's gap in its bin
        per_seed[:, k] = np.abs(draws.clips @ in_bin).sum(axis=1) / n
        value.append(np.abs(in_bin.sum(axis=0)).sum() / n)
    return Estimate(100 * float(np.mean(value)), 100 * (per_seed * draws.seeds).sum(axis=1) / s)


def metrics(logits: np.ndarray, labels: np.ndarray, draws: Draws) -> dict[str, Estimate]:
    """top1 (%), ece (x100), nll (nats) and brier of logits [S, N, C] against labels [N]."""
    return {"top1": accuracy(logits, labels, draws), "ece": ece(logits, labels, draws),
            "nll": nll(logits, labels, draws), "brier": brier(logits, labels, draws)}


def verdict(improvement: Estimate, margin: float) -> str:
    """The protocol's rule for a claimed improvement (positive favours the claim) and its margin:
    holds if the interval's lower end is above 0; does not hold if, short of that, its upper end is
    below the margin; inconclusive otherwise."""
    lo, hi = improvement.interval()
    if lo > 0:
        return HOLDS
    if hi < margin:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def combine(verdicts: Iterable[str]) -> str:
    """A claim of several parts: holds if all hold, does not hold if any does not, else inconclusive."""
    items = list(verdicts)
    if items and all(v == HOLDS for v in items):
        return HOLDS
    if any(v == DOES_NOT_HOLD for v in items):
        return DOES_NOT_HOLD
    return INCONCLUSIVE
