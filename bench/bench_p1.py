"""Paper 1's way against egodistill's: one end-to-end student step with its three teachers running, and with cached logits.

The same `FramesStudent` (student/network.py) takes the same uint8 frames, the same crops and the same
distillation loss (student/losses.py, uniform ensemble of three teachers, T = 2) for the same steps, twice:

- **online** (Radevski et al. 2023): every step, the rgb teacher reads the window's frames, the flow teacher
  reads the window's flow as the paper's files hold it (uint8 images, u and v as two channels; EPIC's ±20 px
  scaled to 0-255) and the audio teacher reads the window's spectrograms (1 channel), each through its own
  backbone in eval mode under `torch.no_grad`, and their logits are the KD targets;
- **cached** (egodistill): the targets are logits read from memory (what the cache's loader hands over).

Both modes keep their inputs in memory (no decoding, no disk), so the ratio measures compute alone: the
online side's reading of flow files from disk would only add to its time. Time is measured in one process,
the two modes alternating in rounds so that other jobs on shared cores load both alike; each mode's peak
memory is measured in a fresh child process (CPU: peak resident set; CUDA: peak allocated).

    python bench/bench_p1.py                               # small shape, CPU: resnet18 at 112 px, 8 frames
    python bench/bench_p1.py --shape paper --device cuda   # paper 1's: swin3d_t student and teachers, 16 x 224²
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from egodistill.backbones import BackboneSpec, create_backbone, resolve_precision
from egodistill.common import dumps
from egodistill.student.losses import student_loss
from egodistill.student.network import FramesStudent, NetworkConfig

CLASSES = 97  # EPIC-KITCHENS-100's verb head
MARGIN = 8 / 7  # stored frames' short side over the crop (the loader's margin for random crops: 128 for 112)


@dataclass(frozen=True)
class Shape:
    backbone: str
    size: int      # crop side every network reads
    frames: int
    batch: int


SHAPES = {"small": Shape("resnet18", 112, 8, 4), "paper": Shape("swin3d_t", 224, 16, 8)}


class Teacher(torch.nn.Module):
    """A frozen teacher of one modality: centre crop of the stored window, resize, scale, backbone, linear head."""

    def __init__(self, backbone: str, in_chans: int, size: int, seed: int) -> None:
        super().__init__()
        built = create_backbone(BackboneSpec(backbone=backbone, in_chans=in_chans, seed=seed), {})
        self.backbone, self.clip, self.size = built.model.eval(), built.clip, size
        self.head = torch.nn.Linear(built.feature_dim, CLASSES)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, H, W, C] -> logits [B, CLASSES]."""
        b, t, h, w, c = window.shape
        top, left = (h - self.size) // 2, (w - self.size) // 2
        x = window[:, :, top: top + self.size, left: left + self.size].reshape(b * t, self.size, self.size, c).permute(0, 3, 1, 2).float()
        x = x / 127.5 - 1.0  # flow: back to [-1, 1] (±20 px); rgb and spectrograms: the same affine map
        if self.clip:
            pooled = self.backbone(x.view(b, t, c, self.size, self.size).transpose(1, 2).contiguous()).mean(dim=1)
        else:
            pooled = self.backbone(x.contiguous(memory_format=torch.channels_last)).view(b, t, -1).mean(dim=1)
        return self.head(pooled)


def make_data(shape: Shape, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """`steps` batches of windows as stored: frames (uint8 RGB), flow (uint8 u, v), spectrograms (uint8), labels, logits."""
    g = torch.Generator().manual_seed(seed)
    side = round(shape.size * MARGIN)
    n = steps * shape.batch
    return {
        "frames": torch.randint(0, 256, (n, shape.frames, side, side, 3), generator=g, dtype=torch.uint8),
        "flow": torch.randint(0, 256, (n, shape.frames, side, side, 2), generator=g, dtype=torch.uint8),
        "audio": torch.randint(0, 256, (n, shape.frames, side, side, 1), generator=g, dtype=torch.uint8),
        "labels": torch.randint(0, CLASSES, (n,), generator=g),
        "logits": torch.randn(n, 3, CLASSES, generator=g),  # what the cache would hand over: [N, teachers, C]
    }


class Bench:
    """One student, its optimiser and its three teachers on a device; `step(mode, i)` runs batch i."""

    def __init__(self, shape: Shape, device: torch.device, precision: str, data: dict[str, torch.Tensor], teachers: bool = True) -> None:
        self.shape, self.device, self.data = shape, device, data
        self.bf16 = resolve_precision(precision, device.type) == "bf16"
        self.student = FramesStudent(NetworkConfig(backbone=shape.backbone, heads={"verb": CLASSES}, frames=shape.frames, image_size=shape.size)).to(device)
        # The cached mode's memory is measured without teachers: egodistill's student never builds them.
        self.teachers = torch.nn.ModuleList([Teacher(shape.backbone, c, shape.size, seed=k + 1) for k, c in enumerate((3, 2, 1)) if teachers]).to(device).eval()
        if self.bf16:
            self.student.to_channels_last()
            for t in self.teachers:
                t.backbone.to(memory_format=torch.channels_last_3d if t.clip else torch.channels_last)
        self.teachers.requires_grad_(False)
        self.optimiser = torch.optim.AdamW(self.student.parameters(), lr=1e-4, weight_decay=0.02)
        side = data["frames"].shape[2]
        inner = shape.size / side
        self.crops = torch.tensor([[(1 - inner) / 2, (1 - inner) / 2, (1 + inner) / 2, (1 + inner) / 2]] * shape.batch)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def step(self, mode: str, i: int) -> None:
        rows = slice(i * self.shape.batch, (i + 1) * self.shape.batch)
        frames = self.data["frames"][rows].to(self.device, non_blocking=True)
        labels = {"verb": self.data["labels"][rows].to(self.device)}
        if mode == "online":
            with torch.no_grad(), self.autocast():
                windows = (frames, self.data["flow"][rows].to(self.device), self.data["audio"][rows].to(self.device))
                targets = torch.stack([t(w).float() for t, w in zip(self.teachers, windows)], dim=1)
        else:
            targets = self.data["logits"][rows].to(self.device)
        with self.autocast():
            logits = self.student(frames, self.crops.to(self.device), None)
        loss = student_loss(logits, labels, {"verb": targets}, scheme="uniform", temperature=2.0)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 5.0)
        self.optimiser.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def time_modes(bench: Bench, steps: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each step, per mode: `rounds` x `steps` steps of each, the modes alternating step by step
    (online, cached, cached, online, ...) so that a burst of load from other jobs falls on both alike."""
    for i in range(warmup):
        bench.step("online", i)
        bench.step("cached", i)
    seconds: dict[str, list[float]] = {"online": [], "cached": []}
    for r in range(rounds):
        for i in range(steps):
            for mode in (("online", "cached") if (r * steps + i) % 2 == 0 else ("cached", "online")):
                started = time.perf_counter()
                bench.step(mode, i)
                seconds[mode].append(time.perf_counter() - started)
    return seconds


def status_bytes(field: str) -> int:
    """A size from /proc/self/status (VmRSS: resident now; VmHWM: the resident peak since the last reset)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    """Reset the kernel's resident peak (VmHWM) to the current resident set, so the peak read after the steps is
    the steps' own, not the imports' or the model building's (Linux >= 4.0: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_memory(shape: Shape, device: torch.device, precision: str, mode: str, steps: int) -> dict[str, float]:
    """Run in a fresh child: peak memory of `steps` steps of one mode (CPU: the resident peak during the steps, the
    models and data included; CUDA: allocated), and how far it rose above the set-up's."""
    data = make_data(shape, steps, seed=0)
    bench = Bench(shape, device, precision, data, teachers=mode == "online")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = status_bytes("VmRSS")
        reset_peak_rss()
    for i in range(steps):
        bench.step(mode, i)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = status_bytes("VmHWM")
    return {"peak_gib": peak / 2**30, "above_setup_gib": (peak - base) / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=0, help="clips per step (0: the shape's)")
    ap.add_argument("--steps", type=int, default=3, help="distinct batches (a round), per mode")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    shape = SHAPES[args.shape] if not args.batch else replace(SHAPES[args.shape], batch=args.batch)
    device = torch.device(args.device)
    if args.memory_child:
        print(dumps(peak_memory(shape, device, args.precision, args.memory_child, max(2, args.steps))))
        return

    data = make_data(shape, args.steps, seed=0)
    bench = Bench(shape, device, args.precision, data)
    params = {"student": sum(p.numel() for p in bench.student.parameters()),
              "teachers": [sum(p.numel() for p in t.parameters()) for t in bench.teachers]}
    seconds = time_modes(bench, args.steps, args.rounds, args.warmup)
    del bench, data
    memory = {}
    for mode in ("online", "cached"):
        child = [sys.executable, __file__, "--shape", args.shape, "--device", args.device, "--batch", str(shape.batch),
                 "--steps", str(args.steps), "--precision", args.precision, "--memory-child", mode]
        memory[mode] = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    median = {m: float(np.median(v)) for m, v in seconds.items()}
    result = {
        "shape": {**shape.__dict__, "name": args.shape}, "device": args.device, "torch_threads": torch.get_num_threads(),
        "bf16": resolve_precision(args.precision, device.type) == "bf16", "params": params,
        "seconds_per_step": seconds, "median_seconds_per_step": median,
        "speedup_cached_over_online": median["online"] / median["cached"],
        "ratio_per_pair": [o / c for o, c in zip(seconds["online"], seconds["cached"])],
        "memory": memory, "memory_ratio_online_over_cached": memory["online"]["peak_gib"] / memory["cached"]["peak_gib"],
    }
    print(dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            f.write(dumps(result))
    s = result
    print(f"{args.shape} {shape.backbone} {shape.frames}x{shape.size}² batch {shape.batch} on {args.device}: "
          f"online {median['online']:.3f} s/step, cached {median['cached']:.3f} s/step -> {s['speedup_cached_over_online']:.2f}x faster "
          f"(pairs' quartiles {np.percentile(s['ratio_per_pair'], 25):.2f}-{np.percentile(s['ratio_per_pair'], 75):.2f}); peak memory online {memory['online']['peak_gib']:.2f} GiB, "
          f"cached {memory['cached']['peak_gib']:.2f} GiB", file=sys.stderr)


if __name__ == "__main__":
    main()
