"""End-to-end student loader bench: training steps/s from the cache against the same student fed in-memory tensors.

    python bench/bench_e2e.py [--clips 48] [--backbone test_resnet] [--image-size 64] [--batch-size 16]
                              [--frames 8] [--steps 12] [--repeats 2] [--threads 1] [--precision fp32]

Makes --clips real H.264 clips (egodistill.testing.make_video), stores their frames with
`extract --modality frames` (short side 128, the default), adds two logits teachers, and times
training steps of a `--inputs frames` student three ways, alternating, --repeats times each:
  stream  train-student itself, reading every buffer from the cache (--stream: no rows held);
  held    train-student itself with the default (rows kept in memory once read: later epochs read memory);
  memory  the same model, loss and optimiser on batches prepared in memory beforehand (no loader at all).
Prints steps/s (median over repeats, first 3 steps of each run not timed) and stream/memory, held/memory;
the goal is >= 0.9. Also the streaming loader's batches/s with no model (how far ahead of the steps it
runs), the stored bytes per frame, the cache's read throughput and the load average (other work on a
shared machine moves every rate).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from egodistill import cache, testing
from egodistill.common import dumps
from egodistill.extract.run import ExtractConfig, run_extraction
from egodistill.student.losses import student_loss
from egodistill.student.network import student_logits
from egodistill.student.schedule import make_optimiser
from egodistill.student.train import TrainConfig, loaders, setup, train

WARMUP = 3


def build(workdir: Path, clips: int, frames: int) -> tuple[str, str]:
    location = workdir / "cache.zarr"
    if location.exists():
        root = cache.open_cache(str(location))
        [key] = [t.key for t in root.teachers() if t.has_frames]
        return str(location), key
    rows = ["segment_id,video,start_sec,stop_sec,split,label:action"]
    for i in range(clips):
        testing.make_video(workdir / "videos" / f"c{i:03d}.mp4", seconds=1.0, fps=16, size=(170, 128), seed=i % 5, audio=False)
        rows.append(f"c{i:03d},c{i:03d}.mp4,0,1,train,{i % 5}")
    (workdir / "segments.csv").write_text("\n".join(rows) + "\n")
    summary = run_extraction(ExtractConfig(manifest=str(workdir / "segments.csv"), videos=str(workdir / "videos"), cache=str(location),
                                           modality="frames", frames=frames, workers=0, device="cpu", segments_per_task=8), log=lambda _: None)
    root = cache.open_cache(str(location), mode="a")
    y = root.segments.labels["action"]
    for name, shift in (("rgb", 0), ("flow", 1)):
        provenance = cache.Provenance(modality=name, backbone="temporal_head", fit={"shift": shift})
        root.create_logits_teacher(provenance.teacher_key(), provenance, {"action": (3 * np.eye(5)[(y + shift) % 5]).astype(np.float32)})
    return str(location), summary.teacher_key


def timed_train(cfg: TrainConfig) -> float:
    """Steps/s of train-student itself over the steps after the warm-up."""
    stamps: list[float] = []
    shutil.rmtree(cfg.out, ignore_errors=True)
    train(cfg, log=lambda _: None, on_step=lambda *_: stamps.append(time.perf_counter()))
    return (len(stamps) - 1 - WARMUP) / (stamps[-1] - stamps[WARMUP])


def timed_memory(cfg: TrainConfig) -> float:
    """Steps/s of the same model, loss and optimiser on batches already in memory (the loader's own batches,
    collected first, so shapes, crops and logits are the same)."""
    s = setup(cfg)
    batches = list(loaders(cfg, s)[0].epoch(0))
    torch.manual_seed(cfg.seed)
    model = s.network.train()
    optimiser = make_optimiser(model, cfg.lr, cfg.weight_decay)
    bf16 = cfg.precision == "bf16"
    if bf16:
        model.to_channels_last()
    stamps = []
    for step in range(cfg.steps):
        batch = batches[step % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = student_logits(model, batch, batch.present)
        loss = student_loss(logits, batch.labels, batch.teacher_logits)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimiser.step()
        loss.item()  # train-student reads the loss every step too
        stamps.append(time.perf_counter())
    return (len(stamps) - 1 - WARMUP) / (stamps[-1] - stamps[WARMUP])


def loader_alone(cfg: TrainConfig) -> float:
    """Batches/s of the streaming training loader with no model: how far ahead of the steps it can run."""
    s = setup(cfg)
    loader = loaders(cfg, s)[0]
    started, count = time.perf_counter(), 0
    for epoch in range(3):
        for _ in loader.epoch(epoch):
            count += 1
    return count / (time.perf_counter() - started)


def read_throughput(location: str, key: str) -> dict:
    teacher = cache.open_cache(location).teacher(key)
    spans = [(int(teacher.offsets[b.start]), int(teacher.offsets[b.stop])) for b in teacher.blocks()]
    started = time.perf_counter()
    frames = teacher.read_frames(spans)
    seconds = time.perf_counter() - started
    stored = sum(p.stat().st_size for p in (Path(location) / "teachers" / key).rglob("*") if p.is_file())
    return {"frames": int(len(frames)), "frame_shape": list(teacher.frame_shape), "stored_bytes_per_frame": stored / len(frames),
            "raw_bytes_per_frame": int(np.prod(teacher.frame_shape)), "read_frames_per_s": len(frames) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the loader's threads come on top)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--workdir", default="/tmp/egodistill-bench-e2e")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    location, key = build(workdir, args.clips, args.frames)
    base = dict(cache=location, inputs=["frames"], teachers=["rgb", "flow"], backbone=args.backbone, image_size=args.image_size,
                frames=args.frames, batch_size=args.batch_size, steps=args.steps, lr=1e-3, device="cpu", precision=args.precision, buffer_blocks=2)
    runs = {"stream": [], "held": [], "memory": []}
    for r in range(args.repeats):
        runs["stream"].append(timed_train(TrainConfig(out=str(workdir / "stream"), in_memory=False, **base)))
        runs["held"].append(timed_train(TrainConfig(out=str(workdir / "held"), **base)))
        runs["memory"].append(timed_memory(TrainConfig(out=str(workdir / "memory"), **base)))
    rate = {k: statistics.median(v) for k, v in runs.items()}
    alone = loader_alone(TrainConfig(out=str(workdir / "alone"), in_memory=False, **base))
    result = {"args": vars(args), "steps_per_s": rate, "runs": runs, "loader_alone_batches_per_s": alone, "load_average": os.getloadavg(), "stream_over_memory": rate["stream"] / rate["memory"],
              "held_over_memory": rate["held"] / rate["memory"], "storage": read_throughput(location, key)}
    print(dumps(result, indent=2))


if __name__ == "__main__":
    main()
