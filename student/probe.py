"""The logistic-regression probe: the floor every teacher head and student must reach on the same features.

A segment's rows of each input are pooled into the mean and the mean of the second half minus the
first half (so the probe sees order, coarsely), standardised with training statistics, and fed to
an L2-regularised multinomial logistic regression (sklearn's default strength, C = 1), fitted with
L-BFGS. Absent inputs pool to the training mean (zeros after standardising).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from egodistill.student.model import pool_rows


def pooled_inputs(features: list[np.ndarray], present: np.ndarray) -> np.ndarray:
    """Per input pooled rows (the student's own pooling), NaN where the input is absent: [N, sum 2D_m]."""
    parts = []
    for m, x in enumerate(features):
        pooled = pool_rows(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()
        pooled[~present[:, m]] = np.nan
        parts.append(pooled)
    return np.concatenate(parts, axis=1)


def fit_probe(x: np.ndarray, y: np.ndarray, classes: int, c: float = 1.0, max_iter: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit on rows x [N, F] (NaN = absent) with labels y (-1 ignored). Returns (mean, std, W [F, C], b [C])."""
    keep = y >= 0
    x, y = x[keep], y[keep]
    mean = np.nanmean(x, axis=0)
    std = np.nanstd(x, axis=0)
    mean, std = np.nan_to_num(mean), np.where(np.nan_to_num(std) > 1e-6, np.nan_to_num(std), 1.0)
    z = torch.from_numpy(np.nan_to_num((x - mean) / std)).double()
    target = torch.from_numpy(y.astype(np.int64))
    w = torch.zeros(z.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-7, history_size=20, line_search_fn="strong_wolfe")
    n = len(y)

    def closure():
        optimiser.zero_grad()
        # sklearn's objective divided by C * n: mean cross-entropy + ||W||^2 / (2 C n).
        loss = F.cross_entropy(z @ w + b, target) + (w * w).sum() / (2 * c * n)
        loss.backward()
        return loss

    optimiser.step(closure)
    return mean, std, w.detach().numpy(), b.detach().numpy()


def probe_logits(x: np.ndarray, probe: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    mean, std, w, b = probe
    return (np.nan_to_num((x - mean) / std) @ w + b).astype(np.float32)
