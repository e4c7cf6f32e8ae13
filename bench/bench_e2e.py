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
the goal is >= 0.9.

With --online instead (issue 15 §5, paper 1's point): the same student on the same in-memory batches for the
same steps, once with its rgb, flow and audio teachers (backbones of the student's own size) run forward on
every step's window, once with the cached logits; each mode in a process of its own, alternating. Prints the
step-time ratio (goal >= 1.8; about 2 is the limit with three teachers the student's size) and peak memory
(CUDA: allocated peak; CPU: peak resident set). Paper 1's shape, for a GPU:
    python bench/bench_e2e.py --online --device cuda --backbone swin3d_t --image-size 224 --frames 16 --batch-size 8
(its frames need `--frame-size 256` or so at extraction; here they are the default 128, enlarged by the crop.)
Also the streaming loader's batches/s with no model (how far ahead of the steps it
runs), the stored bytes per frame, the cache's read throughput and the load average (other work on a
shared machine moves every rate).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from egodistill import cache, testing
from egodistill.backbones import BackboneSpec, create_backbone
from egodistill.common import dumps
from egodistill.extract.run import ExtractConfig, run_extraction
from egodistill.student.losses import student_loss
from egodistill.student.network import FramesStudent, NetworkConfig, student_logits
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


class OnlineTeachers(torch.nn.Module):
    """Paper 1's way: rgb, flow and audio teachers of the student's backbone and size, run forward on every
    step's window (rgb on the student's frames and crops, flow on stored 2-channel flow images, audio on
    1-channel spectrogram images, both uint8 as the paper's files hold them), each with its linear head."""

    def __init__(self, backbone: str, heads: dict[str, int], frames: int, image_size: int) -> None:
        super().__init__()
        self.rgb = FramesStudent(NetworkConfig(backbone, heads, frames=frames, image_size=image_size)).eval()
        self.size = self.rgb.size
        self.others = torch.nn.ModuleList()
        self.heads = torch.nn.ModuleList()
        for chans in (2, 1):
            built = create_backbone(BackboneSpec(backbone, chans, seed=chans), {})
            self.others.append(built.model.eval())
            self.heads.append(torch.nn.ModuleDict({h: torch.nn.Linear(built.feature_dim, c) for h, c in heads.items()}))
        self.clip = self.rgb.clip

    @torch.no_grad()
    def forward(self, batch, flow: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        out = [self.rgb(batch.features[0], batch.crops, batch.flip)]
        for net, heads, images in zip(self.others, self.heads, (flow, audio)):
            b, t = images.shape[:2]
            x = images.float().div(255.0).sub(0.5).div(0.25)  # [B, T, C, S, S]
            pooled = net(x.transpose(1, 2)).mean(dim=1) if self.clip else net(x.flatten(0, 1)).view(b, t, -1).mean(dim=1)
            out.append({h: head(pooled) for h, head in heads.items()})
        return {h: torch.stack([o[h].float() for o in out], dim=1) for h in out[0]}


def timed_memory(cfg: TrainConfig, online: bool = False) -> float:
    """Steps/s of the same model, loss and optimiser on batches already in memory (the loader's own batches,
    collected first, so shapes, crops and logits are the same). online: the teachers run on every step
    (`OnlineTeachers`) instead of their logits being read."""
    s = setup(cfg)
    device = torch.device(cfg.device)
    batches = [b.to(device) for b in loaders(cfg, s)[0].epoch(0)]
    torch.manual_seed(cfg.seed)
    model = s.network.train().to(device)
    optimiser = make_optimiser(model, cfg.lr, cfg.weight_decay)
    bf16 = cfg.precision == "bf16"
    if bf16:
        model.to_channels_last()
    teachers, extra = None, []
    if online:
        teachers = OnlineTeachers(cfg.backbone, dict(s.table.heads), cfg.frames, cfg.image_size).to(device)
        size = teachers.size
        extra = [(torch.randint(0, 256, (len(b), cfg.frames, 2, size, size), dtype=torch.uint8, device=device),
                  torch.randint(0, 256, (len(b), cfg.frames, 1, size, size), dtype=torch.uint8, device=device)) for b in batches]
    stamps = []
    for step in range(cfg.steps):
        batch = batches[step % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            targets = teachers(batch, *extra[step % len(batches)]) if online else batch.teacher_logits
            logits = student_logits(model, batch, batch.present)
        loss = student_loss(logits, batch.labels, targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimiser.step()
        loss.item()  # train-student reads the loss every step too
        stamps.append(time.perf_counter())
    return (len(stamps) - 1 - WARMUP) / (stamps[-1] - stamps[WARMUP])


def peak_memory(device: torch.device) -> int:
    """Peak bytes: the GPU's allocated peak on CUDA, else the process's peak resident set."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def teachers_online_vs_cached(args, base: dict, workdir: Path) -> dict:
    """Each mode in its own process (a clean peak memory), alternating, --repeats times."""
    import subprocess
    import sys

    runs: dict[str, list] = {"cached": [], "online": []}
    for _ in range(args.repeats):
        for mode in runs:
            command = [sys.executable, __file__, "--mode", mode, *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("mode", "online")]]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rate = {m: statistics.median(r["steps_per_s"] for r in v) for m, v in runs.items()}
    peak = {m: max(r["peak_bytes"] for r in v) for m, v in runs.items()}
    return {"steps_per_s": rate, "peak_bytes": peak, "cached_over_online": rate["cached"] / rate["online"], "runs": runs}


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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--online", action="store_true", help="instead: step time and peak memory with the teachers run every step vs cached logits")
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # one mode of --online, in a process of its own
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    location, key = build(workdir, args.clips, args.frames)
    base = dict(cache=location, inputs=["frames"], teachers=["rgb", "flow"], backbone=args.backbone, image_size=args.image_size,
                frames=args.frames, batch_size=args.batch_size, steps=args.steps, lr=1e-3, device=args.device, precision=args.precision, buffer_blocks=2)
    if args.mode:
        cfg = TrainConfig(out=str(workdir / args.mode), in_memory=True, **base)
        rate = timed_memory(cfg, online=args.mode == "online")
        print(json.dumps({"steps_per_s": rate, "peak_bytes": peak_memory(torch.device(args.device))}))
        return
    if args.online:
        print(dumps({"args": vars(args), **teachers_online_vs_cached(args, base, workdir), "load_average": os.getloadavg()}, indent=2))
        return
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
