"""Student benchmarks: cache epoch vs the papers' way, loader throughput, the cost of modality masking.

    python bench/bench_student.py [--segments 2048] [--paper-steps 1] [--workdir /tmp/egodistill-bench]

Builds a synthetic cache shaped like a real one (rgb, flow, audio; resnet18 features, D=512,
8 rows per segment; three logits teachers) and prints:
  1. one student epoch from the cache vs one epoch of the papers' way (every teacher backbone
     forward on decoded frames at every step; frames simulated as random uint8 tensors of the
     backbones' input size; the papers' epoch is extrapolated from --paper-steps timed steps of
     --paper-batch segments: backbone cost is linear in the batch);
  2. loader segments/s vs iterating the same features from an in-memory tensor, and vs one
     zarr-python read per segment and input;
  3. training steps/s with and without --mask-prob 0.5 (median of interleaved single steps).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch


from egodistill import cache  # noqa: E402
from egodistill.student.data import CacheLoader  # noqa: E402
from egodistill.student.losses import student_loss  # noqa: E402
from egodistill.student.model import ModelConfig, Student, mask_modalities  # noqa: E402
from egodistill.testing import SyntheticSpec, build_synthetic_cache  # noqa: E402
from egodistill.student.train import TrainConfig, setup, train  # noqa: E402

HEADS = {"verb": 97, "noun": 300}
MODALITIES = {"rgb": ("resnet18", 3, 224, 1.0), "flow": ("resnet18", 2, 224, 0.7), "audio": ("resnet18", 1, 224, 0.4)}


def build(workdir: Path, segments: int) -> tuple[str, dict[str, str], list[str]]:
    path = workdir / "bench.zarr"
    if path.exists():
        shutil.rmtree(path)
    spec = SyntheticSpec(segments=segments, heads=HEADS, splits={"train": 0.8, "val": 0.2}, modalities=MODALITIES, frames=8,
                         feature_dim=512, segments_per_task=64)
    keys = build_synthetic_cache(str(path), spec)
    root = cache.open_cache(str(path), mode="a")
    table = root.segments
    rng = np.random.default_rng(0)
    teachers = []
    for modality, key in keys.items():  # logits-only teachers, as fit-teachers writes them
        logits = {h: (rng.normal(size=(segments, c)) + 3 * np.eye(c)[table.labels[h]]).astype(np.float32) for h, c in HEADS.items()}
        provenance = cache.Provenance(modality=modality, backbone="temporal_head", source_teachers=(key,), fit={"seed": 0})
        teachers.append(root.create_logits_teacher(provenance.teacher_key(), provenance, logits).key)
    return str(path), keys, teachers


def student_config(path: str, out: Path, **overrides) -> TrainConfig:
    base = dict(cache=path, inputs=["rgb", "flow", "audio"], teachers=["rgb", "flow", "audio"], out=str(out), steps=0, batch_size=64,
                device="cpu", weighting="per-sample", temperature=2.0)
    return TrainConfig(**{**base, **overrides})


def cache_epoch(path: str, workdir: Path) -> tuple[float, int, int]:
    out = workdir / "run-cache"
    shutil.rmtree(out, ignore_errors=True)
    metrics = train(student_config(path, out), log=lambda _: None)
    return metrics[0]["seconds"], metrics[0]["step"], int(round(metrics[0]["seconds"] * metrics[0]["segments_per_s"]))


def papers_step(steps: int, batch_size: int, frames: int = 8) -> float:
    """Seconds per segment of a training step when every teacher backbone runs on decoded frames."""
    import timm

    torch.manual_seed(0)
    backbones = [timm.create_model(b, pretrained=False, num_classes=0, in_chans=c).eval() for b, c, _, _ in MODALITIES.values()]
    heads = [torch.nn.ModuleDict({h: torch.nn.Linear(512, n) for h, n in HEADS.items()}) for _ in backbones]
    student = Student(ModelConfig([512] * 3, HEADS, frames=frames))
    optimiser = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.02)
    mean, std = torch.tensor(0.45), torch.tensor(0.225)

    def step(b: int) -> None:
        features, teacher_logits = [], {h: [] for h in HEADS}
        with torch.no_grad():
            for backbone, head, (_, chans, size, _) in zip(backbones, heads, MODALITIES.values()):
                decoded = torch.randint(0, 256, (b * frames, chans, size, size), dtype=torch.uint8)  # stands in for decoded frames
                rows = backbone((decoded.float() / 255 - mean) / std).view(b, frames, -1)
                features.append(rows)
                for h in HEADS:
                    teacher_logits[h].append(head[h](rows.mean(dim=1)))
        logits = student(features, torch.ones(b, 3, dtype=torch.bool))
        labels = {h: torch.randint(0, n, (b,)) for h, n in HEADS.items()}
        loss = student_loss(logits, labels, {h: torch.stack(v, dim=1) for h, v in teacher_logits.items()}, scheme="per-sample", temperature=2.0)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        optimiser.step()

    step(2)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step(batch_size)
    return (time.perf_counter() - started) / steps / batch_size


def loader_rates(path: str, keys: dict[str, str]) -> dict[str, float]:
    cfg = student_config(path, Path("/nonexistent"))
    s = setup(cfg)
    segments = s.train_segments
    loader = CacheLoader(s.root, s.input_keys, segments, s.table.labels, teacher_logits=s.teacher_logits, batch_size=64, frames=8, train=True, seed=0, present=s.present)
    for _ in loader.epoch(0):  # warm the OS page cache, as any second epoch would find it
        pass
    rates = {}
    started = time.perf_counter()
    for _ in range(3):
        for _ in loader.epoch(1):
            pass
    rates["streaming loader"] = 3 * len(segments) / (time.perf_counter() - started)
    memory = CacheLoader(s.root, s.input_keys, segments, s.table.labels, teacher_logits=s.teacher_logits, batch_size=64, frames=8, train=True, seed=0, present=s.present, in_memory=True)
    started = time.perf_counter()
    for _ in range(3):
        for _ in memory.epoch(1):
            pass
    rates["loader --in-memory"] = 3 * len(segments) / (time.perf_counter() - started)
    # The same features, labels and teacher logits already in memory as tensors.
    tensors = [torch.from_numpy(np.stack([t.read_rows(o[i], o[i] + 8)[0] for i in segments])) for t, o in zip(loader.teachers, loader.offsets)]
    labels = {h: torch.from_numpy(y[segments].astype(np.int64)) for h, y in s.table.labels.items()}
    logits = {h: torch.from_numpy(v[segments]) for h, v in s.teacher_logits.items()}
    started = time.perf_counter()
    for epoch in range(3):
        order = torch.randperm(len(segments), generator=torch.Generator().manual_seed(epoch))
        for a in range(0, len(order), 64):
            idx = order[a:a + 64]
            _ = [x[idx] for x in tensors], {h: y[idx] for h, y in labels.items()}, {h: v[idx] for h, v in logits.items()}
    rates["in-memory tensor"] = 3 * len(segments) / (time.perf_counter() - started)
    items = segments[:256]
    started = time.perf_counter()
    for i in items:
        for t, o in zip(loader.teachers, loader.offsets):
            t.read_rows(int(o[i]), int(o[i + 1]))
    rates["one zarr read per item"] = len(items) / (time.perf_counter() - started)
    return rates


def masking_rates(path: str, repeats: int, steps: int = 10) -> dict[float, float]:
    """Student steps/s without and with masking, timed in alternating rounds on the same batches
    (other processes on a shared machine shift both alike), median over rounds."""
    s = setup(student_config(path, Path("/nonexistent")))
    loader = CacheLoader(s.root, s.input_keys, s.train_segments, s.table.labels, teacher_logits=s.teacher_logits, batch_size=64, frames=8, train=True, in_memory=True, present=s.present)
    batches = list(loader.epoch(0))[:steps]
    torch.manual_seed(0)
    model = Student(s.model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.02)
    generator = torch.Generator().manual_seed(0)

    def step(batch, prob: float) -> float:
        started = time.perf_counter()
        present = mask_modalities(batch.present, prob, generator)
        loss = student_loss(model(batch.features, present), batch.labels, batch.teacher_logits, scheme="per-sample", temperature=2.0)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()
        return time.perf_counter() - started

    step(batches[0], 0.0)  # warm-up
    # Alternate single steps (and which goes first), so load from other processes hits both alike.
    times: dict[float, list[float]] = {0.0: [], 0.5: []}
    for r in range(repeats):
        for i, batch in enumerate(batches):
            for prob in ((0.0, 0.5) if (r + i) % 2 == 0 else (0.5, 0.0)):
                times[prob].append(step(batch, prob))
    started = time.perf_counter()
    for _ in range(100):
        mask_modalities(batches[0].present, 0.5, generator)
    mask_only = (time.perf_counter() - started) / 100
    rates = {p: 1 / statistics.median(v) for p, v in times.items()}
    rates["mask_only_s"] = mask_only
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=2048)
    parser.add_argument("--paper-steps", type=int, default=1, help="timed steps of the papers' way")
    parser.add_argument("--paper-batch", type=int, default=8, help="their batch; the per-segment cost is scaled to the student's 64")
    parser.add_argument("--mask-repeats", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/egodistill-bench")
    parser.add_argument("--parts", default="1,2,3", help="which benchmarks to run")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; cache of {args.segments} segments, 3 inputs x 8 rows x 512 (resnet18)")
    path, keys, _ = build(workdir, args.segments)
    parts = {int(p) for p in args.parts.split(",")}

    if 1 in parts:
        epoch_benchmark(path, workdir, args)
    if 2 in parts:
        loader_benchmark(path, keys)
    if 3 in parts:
        masking_benchmark(path, args)


def epoch_benchmark(path: str, workdir: Path, args) -> None:
    seconds, steps, seen = cache_epoch(path, workdir)
    per_segment = papers_step(args.paper_steps, args.paper_batch)
    per_step = per_segment * 64
    paper_seconds = per_step * steps
    print(f"\n1. one student epoch ({seen} segments, {steps} steps of 64)")
    print(f"   from the cache:  {seconds:8.2f} s")
    print(f"   papers' way:     {paper_seconds:8.1f} s  ({per_segment:.2f} s/segment timed at batch {args.paper_batch}: 3 x resnet18 on 8 frames of 224^2 each, x 64 x {steps} steps)")
    print(f"   speed-up:        {paper_seconds / seconds:8.0f}x  (target >= 50x)")


def loader_benchmark(path: str, keys: dict[str, str]) -> None:
    rates = loader_rates(path, keys)
    print("\n2. loader, segments/s (warm page cache)")
    for name, rate in rates.items():
        print(f"   {name:24s} {rate:10.0f}")
    print(f"   streaming / in-memory tensor: {rates['streaming loader'] / rates['in-memory tensor']:.2f}  (target >= 0.8)")
    print(f"   streaming / per-item reads:   {rates['streaming loader'] / rates['one zarr read per item']:.0f}x  (target >= 10x)")


def masking_benchmark(path: str, args) -> None:
    masking = masking_rates(path, args.mask_repeats)
    cost = 1 - masking[0.5] / masking[0.0]
    print("\n3. student training steps/s, batch 64, 3 inputs (median of interleaved single steps)")
    print(f"   --mask-prob 0:   {masking[0.0]:.2f}\n   --mask-prob 0.5: {masking[0.5]:.2f}\n   masking costs {100 * cost:.1f} %  (target < 5 %)")
    print(f"   mask_modalities alone: {1e6 * masking['mask_only_s']:.0f} us per batch = {100 * masking['mask_only_s'] * masking[0.0]:.2f} % of a step")


if __name__ == "__main__":
    main()
