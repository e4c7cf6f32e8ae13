"""PNG figures of an evaluation: reliability diagram per head, accuracy per input subset (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def reliability_diagram(bins_per_head: dict[str, dict], path: Path, title: str) -> Path:
    """Accuracy vs confidence per bin, one panel per head, the diagonal as perfect calibration."""
    heads = list(bins_per_head)
    fig, axes = plt.subplots(1, len(heads), figsize=(4 * len(heads), 4), squeeze=False)
    for ax, head in zip(axes[0], heads):
        r = bins_per_head[head]
        n = len(r["count"])
        centres = (np.arange(n) + 0.5) / n
        acc = np.nan_to_num(np.asarray(r["accuracy"], dtype=float))
        ax.bar(centres, acc, width=1 / n, edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=head)
        ax.legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def subset_bars(subsets: list[dict], path: Path, title: str) -> Path:
    """Top-1 accuracy per head (and action) for every input subset."""
    names = [s["name"] for s in subsets]
    keys = [k for k in subsets[0]["metrics"] if k.endswith("_top1")]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) * max(1, len(keys)) / 2), 4))
    width = 0.8 / max(1, len(keys))
    x = np.arange(len(names))
    for i, k in enumerate(keys):
        ax.bar(x + i * width - 0.4 + width / 2, [100 * np.nan_to_num(s["metrics"][k]) for s in subsets], width, label=k.removesuffix("_top1"))
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel="top-1 accuracy (%)", ylim=(0, 100), title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
