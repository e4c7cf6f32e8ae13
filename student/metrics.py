"""Classification metrics over labelled segments: top-k, EPIC action accuracy, ECE and its reliability bins."""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def _labelled(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = (labels >= 0) & np.isfinite(logits).all(axis=1)
    return logits[keep], labels[keep]


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of labelled segments whose label is among the k highest logits (NaN if none labelled)."""
    logits, labels = _labelled(logits, labels)
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def action_accuracy(verb_logits: np.ndarray, verb: np.ndarray, noun_logits: np.ndarray, noun: np.ndarray) -> float:
    """EPIC action: verb and noun top-1 both right, over segments labelled for both."""
    keep = (verb >= 0) & (noun >= 0) & np.isfinite(verb_logits).all(axis=1) & np.isfinite(noun_logits).all(axis=1)
    if not keep.any():
        return float("nan")
    both = (verb_logits[keep].argmax(1) == verb[keep]) & (noun_logits[keep].argmax(1) == noun[keep])
    return float(both.mean())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per equal-width confidence bin: mean confidence, accuracy and count of labelled segments."""
    logits, labels = _labelled(logits, labels)
    probs = softmax(logits.astype(np.float64)) if len(labels) else np.zeros((0, 1))
    confidence = probs.max(axis=1) if len(labels) else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels) if len(labels) else np.zeros(0, bool)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; confidence is always > 0.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    out = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        member = which == b
        n = int(member.sum())
        out["count"].append(n)
        out["confidence"].append(float(confidence[member].mean()) if n else float("nan"))
        out["accuracy"].append(float(correct[member].mean()) if n else float("nan"))
    return out


def ece(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error x100: sum over bins of |accuracy - confidence| weighted by bin share."""
    r = reliability(logits, labels, bins)
    total = sum(r["count"])
    if total == 0:
        return float("nan")
    gaps = [n * abs(a - c) for n, a, c in zip(r["count"], r["accuracy"], r["confidence"]) if n]
    return float(100.0 * sum(gaps) / total)


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the label (nats) over labelled segments (NaN if none)."""
    logits, labels = _labelled(logits, labels)
    if len(labels) == 0:
        return float("nan")
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def brier(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean multi-class Brier score: sum over classes of (p - onehot)^2, in [0, 2] (NaN if none labelled).

    Unlike binned ECE it has no bins to bias it on a few hundred clips."""
    logits, labels = _labelled(logits, labels)
    if len(labels) == 0:
        return float("nan")
    probs = softmax(logits.astype(np.float64))
    probs[np.arange(len(labels)), labels] -= 1.0
    return float((probs**2).sum(axis=1).mean())


def head_metrics(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """top1/top5/ece/nll/brier per head, plus `action_top1` when both verb and noun heads exist."""
    out: dict[str, float] = {}
    for h, values in logits.items():
        out[f"{h}_top1"] = topk_accuracy(values, labels[h], 1)
        out[f"{h}_top5"] = topk_accuracy(values, labels[h], 5)
        out[f"{h}_ece"] = ece(values, labels[h])
        out[f"{h}_nll"] = nll(values, labels[h])
        out[f"{h}_brier"] = brier(values, labels[h])
    if "verb" in logits and "noun" in logits:
        out["action_top1"] = action_accuracy(logits["verb"], labels["verb"], logits["noun"], labels["noun"])
    return out
