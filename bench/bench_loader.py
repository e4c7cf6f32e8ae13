"""The student's loader against memory: segments/s of an epoch streamed from the cache, read whole into
memory first (`in_memory=True`), and a plain in-memory tensor iteration of the same batches.

    python bench/bench_loader.py [--segments 2048] [--dim 512] [--epochs 3] [--rounds 3] [--workdir /tmp/egodistill-bench]

The cache is synthetic (egodistill.testing): rgb, flow and audio teachers of D float16 features,
8 rows per segment, 64 segments per shard, on local disk (warm in the page cache after the first
epoch, as every later training epoch finds it). The tensor baseline holds every input's rows as one
torch tensor and, per batch, gathers the same segments' same frame rows and labels the loader gives.
Each figure is the median over `--rounds` rounds that take turns, so load from other processes on a
shared machine hits all three alike. The ratio that matters is streamed / tensor.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from egodistill import cache
from egodistill.testing import SyntheticSpec, build_synthetic_cache
from egodistill.student.data import CacheLoader, frame_indices

MODALITIES = {"rgb": ("resnet18", 3, 224, 1.0), "flow": ("resnet18", 2, 224, 0.7), "audio": ("resnet18", 1, 224, 0.4)}


def build(path: Path, segments: int, dim: int) -> list[str]:
    if path.exists():
        shutil.rmtree(path)
    spec = SyntheticSpec(segments=segments, heads={"verb": 97, "noun": 300}, splits={"train": 0.8, "val": 0.2}, modalities=MODALITIES,
                         frames=8, feature_dim=dim, segments_per_task=64)
    return list(build_synthetic_cache(str(path), spec).values())


def loader_epochs(loader: CacheLoader, epochs: range) -> float:
    started = time.perf_counter()
    for epoch in epochs:
        for _ in loader.epoch(epoch):
            pass
    return time.perf_counter() - started


def tensor_epochs(loader: CacheLoader, epochs: range) -> float:
    """The same batches (segments, frame rows, labels, presence) gathered from tensors already in memory."""
    tensors = [torch.from_numpy(t.read_features([(0, t.layout.rows)])) for t in loader.teachers]
    labels = {h: torch.from_numpy(y.astype(np.int64)) for h, y in loader.labels.items()}
    present = torch.from_numpy(loader.present)
    plans = []
    for epoch in epochs:  # index arithmetic outside the timed loop: the baseline only moves data
        plan = loader.plan(epoch)
        segs, jitter = plan.segments, plan.placement
        batches = []
        for a in range(0, len(segs), loader.batch_size):
            batch = segs[a:a + loader.batch_size]
            rows = [torch.from_numpy(o[batch][:, None] + frame_indices(o[batch + 1] - o[batch], loader.frames, jitter[a:a + loader.batch_size]))
                    for o in loader.offsets]
            batches.append((torch.from_numpy(batch), rows))
        plans.append(batches)
    # The faster of one torch thread and all cores: with all, any other busy process on a small
    # machine leaves OpenMP spinning (measured on 2 cores: 6 ms instead of 0.09 ms a gather).
    cores, times = torch.get_num_threads(), []
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        started = time.perf_counter()
        for batches in plans:
            for batch, rows in batches:
                _ = [x[r] for x, r in zip(tensors, rows)], {h: y[batch] for h, y in labels.items()}, present[batch]
        times.append(time.perf_counter() - started)
    torch.set_num_threads(cores)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=512, help="feature width (512: resnet18)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", default="/tmp/egodistill-bench")
    args = parser.parse_args()
    path = Path(args.workdir) / "loader.zarr"
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = build(path, args.segments, args.dim)
    opened = cache.open_cache(path)
    table = opened.segments
    segments = np.flatnonzero(table.split == "train")
    common = dict(batch_size=args.batch_size, frames=8, train=True, seed=0)
    streamed = CacheLoader(opened, keys, segments, table.labels, in_memory=False, **common)
    in_memory = CacheLoader(opened, keys, segments, table.labels, in_memory=True, **common)
    default = CacheLoader(opened, keys, segments, table.labels, **common)  # holds what it read: it fits
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(segments)} training segments x 3 inputs x 8 rows x D={args.dim} "
          f"float16 ({sum(t.layout.rows for t in streamed.teachers) * args.dim * 2 / 1e6:.1f} MB in the cache), batches of {args.batch_size}")
    loader_epochs(streamed, range(1))  # warm the page cache, as any second epoch finds it
    loader_epochs(default, range(1))  # its first epoch reads the store; later ones, what it holds
    seconds: dict[str, list[float]] = {"default": [], "streamed": [], "in_memory": [], "tensor": []}
    for r in range(args.rounds):
        epochs = range(1 + r * args.epochs, 1 + (r + 1) * args.epochs)
        seconds["default"].append(loader_epochs(default, epochs))
        seconds["streamed"].append(loader_epochs(streamed, epochs))
        seconds["in_memory"].append(loader_epochs(in_memory, epochs))
        seconds["tensor"].append(tensor_epochs(streamed, epochs))
    rate = {name: args.epochs * len(segments) / statistics.median(s) for name, s in seconds.items()}
    for name, label in (("default", "loader, default (epochs after the 1st)"), ("streamed", "loader, streamed from the cache"), ("in_memory", "loader, in_memory=True"), ("tensor", "in-memory tensor, same batches")):
        print(f"{label:34s} {rate[name]:>10,.0f} segments/s  (rounds: {', '.join(f'{args.epochs * len(segments) / s:,.0f}' for s in seconds[name])})")
    print(f"ratio default / tensor    = {rate['default'] / rate['tensor']:.2f}")
    print(f"ratio streamed / tensor   = {rate['streamed'] / rate['tensor']:.2f}")
    print(f"ratio in_memory / tensor  = {rate['in_memory'] / rate['tensor']:.2f}")


if __name__ == "__main__":
    main()
