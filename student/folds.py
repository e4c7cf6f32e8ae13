"""Grouped folds and holdouts: every segment of one group (participant, else video) on the same side.

Neighbouring segments of one video share its scene, lighting and sound; a fold or holdout drawn
per segment puts them on both sides, so "held-out" predictions become nearly in-sample. On
EPIC-KITCHENS the group is the participant (`P01` of video `P01_11`), as in its own splits.
"""

from __future__ import annotations

import re

import numpy as np

EPIC_VIDEO = re.compile(r"^(P\d+)_\d+$")


def segment_groups(videos: np.ndarray) -> np.ndarray:
    """int [N] group id per segment: the participant where every video is named like EPIC's, else the video."""
    names = [str(v) for v in videos]
    matches = [EPIC_VIDEO.match(v) for v in names]
    keys = [m.group(1) for m in matches] if names and all(matches) else names
    _, ids = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    return ids.astype(np.int64)


def grouped_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold [N] of each sample: groups dealt in a seeded order, each to the fold with fewest samples so far.

    With one sample per group this is a balanced random split (folds differ by <= 1)."""
    ids, sizes = np.unique(groups, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(ids))
    # Largest groups first (stable on the seeded order), so the greedy deal stays balanced.
    order = order[np.argsort(-sizes[order], kind="stable")]
    load = np.zeros(folds, dtype=np.int64)
    fold_of_group = np.empty(len(ids), dtype=np.int64)
    for g in order:
        f = int(np.argmin(load))
        fold_of_group[g] = f
        load[f] += sizes[g]
    return fold_of_group[np.searchsorted(ids, groups)]


def grouped_holdout(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """bool [N]: whole groups, in a seeded order, until at least `fraction` of the samples are held out."""
    if fraction <= 0 or len(groups) == 0:
        return np.zeros(len(groups), dtype=bool)
    ids, sizes = np.unique(groups, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(ids))
    taken = order[: int(np.searchsorted(np.cumsum(sizes[order]), fraction * len(groups)) + 1)]
    return np.isin(groups, ids[taken])
