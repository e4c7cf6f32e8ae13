"""GPU readiness (issue 17 §6): pure-forward throughput against the whole `extract` command.

For each backbone (resnet50 from timm, swin3d_t from torchvision; random init: no weights are
downloaded) and batch size: the forward passes alone on inputs already on the device (bf16 autocast,
channels_last for 2D models, as extract's worker runs them), then the whole `extract` command on
generated H.264 videos at the same batch size (decode, preprocess, host-to-device copy, write
included). The goal is a whole command at >= 0.70 of pure forward. Where torchcodec can decode on the
GPU (NVDEC), its frames/s on the same videos is printed beside CPU decoding, for the record; extract
decodes on the CPU.

    python bench/bench_gpu.py [--device cuda] [--batches 16,64,128] [--segments 256]
    python bench/bench_gpu.py --device cpu --batches 8 --segments 8 --backbones resnet50   # a smoke run

Prints one Markdown table; ratios within one run are what count on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from egodistill import testing as media  # noqa: E402
from egodistill.backbones import BackboneSpec, create_backbone, resolve_precision  # noqa: E402
from egodistill.extract.run import ExtractConfig, plan_extraction, run_extraction  # noqa: E402
from egodistill.extract.worker import embed  # noqa: E402

FRAMES = {"resnet50": 8, "swin3d_t": 16}  # per segment: 8 images, or one 16-frame clip


def make_videos(root: Path, segments: int) -> Path:
    """Videos of 20 s at 30 fps, 640x360 (larger than EPIC's 456x256 release), 2 s segments every 2 s."""
    per_video = 10
    rows = ["segment_id,video,start_sec,stop_sec,split"]
    for v in range(-(-segments // per_video)):
        media.make_video(root / "videos" / f"v{v:03d}.mp4", seconds=20.0, fps=30, size=(640, 360), seed=v)
        rows += [f"v{v:03d}-{s},v{v:03d}.mp4,{2 * s},{2 * s + 2},train" for s in range(per_video) if v * per_video + s < segments]
    manifest = root / "segments.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def pure_forward(backbone_name: str, batch: int, device: str, precision: str, seconds: float = 5.0) -> float:
    """Images (or clip frames) per second through the model alone, inputs already on the device."""
    backbone = create_backbone(BackboneSpec(backbone_name, in_chans=3), {})
    backbone.model.to(device)
    if not backbone.clip:
        backbone.model.to(memory_format=torch.channels_last)
    h, w = backbone.data_config["input_size"][-2:]
    frames = FRAMES[backbone_name]
    shape = (max(1, batch // frames), 3, frames, h, w) if backbone.clip else (batch, 3, h, w)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    images = int(np.prod(shape[:1])) * (frames if backbone.clip else 1)
    for _ in range(3):
        embed(backbone, x, device, precision)  # warm-up (and cudnn autotune)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        embed(backbone, x, device, precision)  # returns host float32: includes the device-to-host copy extract pays
        done += images
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def whole_command(backbone_name: str, batch: int, device: str, manifest: Path, out: Path) -> tuple[float, object]:
    cfg = ExtractConfig(manifest=str(manifest), videos=str(manifest.parent / "videos"), cache=str(out), modality="rgb",
                        backbone=backbone_name, frames=FRAMES[backbone_name], device=device, precision="auto", batch_size=batch)
    plan = plan_extraction(cfg)
    t0 = time.perf_counter()
    summary = run_extraction(cfg, plan, log=lambda _: None)
    images = int(plan.frames_per_segment.sum()) if plan.frames_per_segment is not None else int(plan.rows_per_segment.sum())
    return images / (time.perf_counter() - t0), summary


def nvdec_note(videos: Path) -> str:
    """torchcodec's CUDA decoding against its CPU decoding on the same files, where it is available."""
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError:
        return "torchcodec not installed: NVDEC not measured"
    files = sorted(videos.glob("*.mp4"))[:4]
    rates = {}
    for device in ("cpu", "cuda"):
        try:
            t0, count = time.perf_counter(), 0
            for path in files:
                decoder = VideoDecoder(str(path), device=device)
                count += len(decoder.get_frames_in_range(0, len(decoder)).data)
            rates[device] = count / (time.perf_counter() - t0)
        except Exception as err:  # noqa: BLE001 - report why, do not stop the bench
            rates[device] = f"unavailable ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return "torchcodec decode, frames/s: " + ", ".join(f"{d} {r:.0f}" if isinstance(r, float) else f"{d} {r}" for d, r in rates.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="16,64,128", help="batch sizes in images (clip models: frames)")
    parser.add_argument("--segments", type=int, default=256)
    parser.add_argument("--backbones", default="resnet50,swin3d_t")
    args = parser.parse_args()
    precision = resolve_precision("auto", args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        manifest = make_videos(work, args.segments)
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
        print(f"{args.segments} segments of 2 s, 640x360 H.264 30 fps; {name}; precision {precision}; {nvdec_note(work / 'videos')}")
        print("| backbone | batch | pure forward (img/s) | whole extract (img/s) | whole / pure | decode | preprocess | forward | write | wait |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for backbone in args.backbones.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                pure = pure_forward(backbone, batch, args.device, precision)
                whole, s = whole_command(backbone, batch, args.device, manifest, work / f"{backbone}-{batch}.zarr")
                t = s.timings
                print(f"| {backbone} | {batch} | {pure:.0f} | {whole:.0f} | {whole / pure:.2f} | {t.decode:.1f} s | {t.preprocess:.1f} s | "
                      f"{t.forward:.1f} s | {t.write:.1f} s | {t.wait:.1f} s |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
