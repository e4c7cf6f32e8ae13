"""Extraction benchmarks (issue 2): overlap, against the common per-video loop, scaling, footprint;
(issue 11, --breakeven) the whole command against a sequential per-segment loop, 2 workers against 1,
and the segment counts where each starts to win; (issue 17, --modes) in process against local Dask with
1 and 2 workers, whole commands, with the summary's decode/preprocess/forward/write/wait breakdown.

    python bench/bench_extract.py [--videos 6] [--seconds 12] [--backbone resnet18]
    python bench/bench_extract.py --breakeven [--precision auto|fp32|bf16]
    python bench/bench_extract.py --modes [--every-sec 0.25 --segment-sec 1 --frames 2 ...]
    python bench/bench_extract.py --goals [--every-sec 0.25 ...]
    python bench/bench_extract.py --decoders [--real ../shared/real/videos]

Same videos, same model, same cores in one run; prints figures and ratios. The videos look like
EPIC-KITCHENS' common release (456x256, 50 fps, H.264) with 2 s segments every 3 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from egodistill.extract.modalities import MediaSource, get_modality  # noqa: E402
from egodistill.extract.run import ExtractConfig, run_extraction  # noqa: E402
from egodistill.cache.records import SamplingPolicy  # noqa: E402
from egodistill.extract.sampling import sample_indices  # noqa: E402
from egodistill.backbones import BackboneSpec, create_backbone  # noqa: E402
from egodistill.extract.worker import embed  # noqa: E402
from egodistill import testing as media  # noqa: E402


def make_dataset(root: Path, videos: int, seconds: float, segment_sec: float, every_sec: float) -> Path:
    rows = ["segment_id,video,start_sec,stop_sec,split"]
    for v in range(videos):
        media.make_video(root / "videos" / f"v{v:02d}.mp4", seconds=seconds, fps=50, size=(456, 256), seed=v)
        for s in range(int((seconds - segment_sec) // every_sec) + 1):
            rows.append(f"v{v:02d}-{s},v{v:02d}.mp4,{s * every_sec},{s * every_sec + segment_sec},train")
    manifest = root / "segments.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def segments_of(manifest: Path) -> list[tuple[str, str, float, float]]:
    lines = manifest.read_text().splitlines()[1:]
    return [(p[0], p[1], float(p[2]), float(p[3])) for p in (line.split(",") for line in lines)]


def extract(manifest: Path, videos: Path, out: Path, backbone: str, frames: int, workers: int | None, threads: int | None = None, precision: str = "fp32") -> tuple[float, object]:
    cfg = ExtractConfig(manifest=str(manifest), videos=str(videos), cache=str(out), modality="rgb", backbone=backbone,
                        frames=frames, workers=workers, threads=threads, device="cpu", precision=precision, batch_size=64)
    t0 = time.perf_counter()
    summary = run_extraction(cfg, log=lambda _: None)
    return time.perf_counter() - t0, summary


def forward_only(manifest: Path, videos: Path, backbone: str, frames: int, batch: int, modality: str = "rgb", precision: str = "fp32") -> float:
    """Time of the model forward passes alone, on the same input batches, inputs prepared beforehand."""
    spec = get_modality(modality)
    teacher = create_backbone(BackboneSpec(backbone, in_chans=spec.in_chans(spec.resolve_options({}))), {})
    settings = spec.settings(spec.resolve_options({}), teacher.data_config)
    inputs = []
    for _, name, start, stop in segments_of(manifest):
        source = MediaSource(videos / name)
        idx = sample_indices(SamplingPolicy(frames=frames), frames, start, stop, source.video.fps, source.video.num_frames)
        inputs.append(spec.make_inputs(source, idx, settings))
    x = np.concatenate(inputs)
    torch.set_num_threads(os.cpu_count() or 1)
    if precision == "bf16" and not teacher.clip:  # as extract's worker does
        teacher.model.to(memory_format=torch.channels_last)
    embed(teacher, x[:batch], "cpu", precision)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        embed(teacher, x[i: i + batch], "cpu", precision)
    return time.perf_counter() - t0


def common_practice(manifest: Path, videos: Path, backbone: str, frames: int, out: Path) -> float:
    """The popular per-video extractor loop: read every frame of a video with OpenCV, then per segment
    sample, preprocess, run the model on that segment alone and np.save its features."""
    spec = get_modality("rgb")
    teacher = create_backbone(BackboneSpec(backbone, in_chans=3), {})
    settings = spec.settings(spec.resolve_options({}), teacher.data_config)
    settings["resize_short"] = int(min(settings["input_size"]) / settings["crop_pct"])  # timm's floor
    mean, std = np.asarray(settings["mean"]) * 255, np.asarray(settings["std"]) * 255
    torch.set_num_threads(os.cpu_count() or 1)
    out.mkdir(parents=True, exist_ok=True)
    by_video: dict[str, list] = {}
    for seg in segments_of(manifest):
        by_video.setdefault(seg[1], []).append(seg)
    t0 = time.perf_counter()
    for name, segs in by_video.items():
        cap = cv2.VideoCapture(str(videos / name))
        fps = cap.get(cv2.CAP_PROP_FPS)
        all_frames = []
        ok, frame = cap.read()
        while ok:
            all_frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            ok, frame = cap.read()
        for seg_id, _, start, stop in segs:
            idx = sample_indices(SamplingPolicy(frames=frames), frames, start, stop, fps, len(all_frames))
            h, w = settings["input_size"]
            batch = []
            for i in idx:
                f = all_frames[i]
                scale = settings["resize_short"] / min(f.shape[:2])
                f = cv2.resize(f, (round(f.shape[1] * scale), round(f.shape[0] * scale)), interpolation=cv2.INTER_AREA)
                top, left = (f.shape[0] - h) // 2, (f.shape[1] - w) // 2
                batch.append(((f[top: top + h, left: left + w] - mean) / std).transpose(2, 0, 1))
            with torch.inference_mode():
                feats = teacher.model(torch.from_numpy(np.stack(batch)).float()).numpy()
            np.save(out / f"{seg_id}.npy", feats)
    return time.perf_counter() - t0


def per_segment_loop(manifest: Path, videos: Path, backbone: str, frames: int, precision: str, out: Path) -> tuple[float, float]:
    """A sequential loop over the same segments in one process, all cores: per segment open its video, sample
    and preprocess exactly as extract does (clip windows too), run the model on that segment alone (same
    precision) and np.save the features. Returns (model build seconds, loop seconds)."""
    from egodistill.extract.run import plan_extraction
    from egodistill.extract.worker import SegmentJob, TaskSpec, _prepare

    plan = plan_extraction(ExtractConfig(manifest=str(manifest), videos=str(videos), cache=str(out / "unused.zarr"), modality="rgb",
                                         backbone=backbone, frames=frames, device="cpu", precision=precision))
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    spec = BackboneSpec(backbone, in_chans=3)
    teacher = create_backbone(spec, {})
    if precision == "bf16" and not teacher.clip:
        teacher.model.to(memory_format=torch.channels_last)
    build = time.perf_counter() - t0
    rgb = get_modality("rgb")
    task = TaskSpec(cache="", teacher_key="", backbone=spec, modality="rgb", settings=rgb.settings(rgb.resolve_options({}), teacher.data_config),
                    policy=plan.policy, heads={}, precision=precision)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, seg in enumerate(plan.manifest.segments):
        job = SegmentJob(i, seg.id, str(plan.video_paths[seg.video]), seg.start_sec, seg.stop_sec, int(plan.rows_per_segment[i]), int(plan.frames_per_segment[i]))
        sources: dict = {}
        (inputs, _, _), _ = _prepare(job, task, sources)
        np.save(out / f"{seg.id}.npy", embed(teacher, inputs, "cpu", precision))
        for source in sources.values():
            source.close()
    return build, time.perf_counter() - t0


def breakeven(fixed_a: float, per_a: float, fixed_b: float, per_b: float) -> str:
    """Segments from which b (more start-up, less per segment) beats a: (F_b - F_a) / (c_a - c_b)."""
    if per_b >= per_a:
        return "never (no per-segment gain)"
    return f"{max(0.0, (fixed_b - fixed_a) / (per_a - per_b)):.0f} segments"


def breakeven_figures(args, work: Path, manifest: Path, videos: Path) -> None:
    from egodistill.backbones import resolve_precision

    precision = resolve_precision(args.precision, "cpu")
    n = len(segments_of(manifest))
    build, loop = per_segment_loop(manifest, videos, args.backbone, args.frames, precision, work / "loop-npy")
    runs = {}
    for workers in (2, 1):  # default threads: cores / workers, so both use every core
        wall, summary = extract(manifest, videos, work / f"w{workers}.zarr", args.backbone, args.frames, workers=workers, precision=precision)
        runs[workers] = (wall - summary.working_seconds, summary.working_seconds / n, wall)
    print(f"{n} segments, {precision}; sequential per-segment loop: model build {build:.2f} s + {loop:.2f} s "
          f"({loop / n * 1000:.0f} ms/segment)")
    for workers, (fixed, per, wall) in runs.items():
        print(f"extract --workers {workers}: whole command {wall:.2f} s = start-up {fixed:.2f} s + {per * 1000:.0f} ms/segment; "
              f"loop (incl. build) / command = {(build + loop) / wall:.2f}x; break-even vs loop {breakeven(build, loop / n, fixed, per)}")
    (f1, c1, w1), (f2, c2, w2) = runs[1], runs[2]
    print(f"2 workers vs 1: whole commands {w1:.2f} s / {w2:.2f} s = {w1 / w2:.2f}x; once models are loaded {c1 / c2:.2f}x; "
          f"break-even {breakeven(f1, c1, f2, c2)}")


def modes_figures(args, work: Path, manifest: Path, videos: Path) -> None:
    """The run modes on one machine, whole commands (start-up included), in one run: compare as ratios."""
    from egodistill.backbones import resolve_precision

    precision = resolve_precision(args.precision, "cpu")
    n = len(segments_of(manifest))
    rows = []
    for label, workers in (("in process (--workers 0)", 0), ("local Dask, 1 worker", 1), ("local Dask, 2 workers", 2)):
        wall, s = extract(manifest, videos, work / f"modes-{workers}.zarr", args.backbone, args.frames, workers=workers, precision=precision)
        rows.append((label, wall, s))
    base = rows[0][1]
    print(f"| mode ({n} segments x {args.frames} frames, {args.backbone}, {precision}) | whole command | vs in process | working | "
          f"decode | preprocess | forward | write | wait (model idle) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, wall, s in rows:
        t = s.timings
        print(f"| {label} | {wall:.1f} s | {base / wall:.2f}x | {s.working_seconds:.1f} s | {t.decode:.1f} s | {t.preprocess:.1f} s | "
              f"{t.forward:.1f} s | {t.write:.1f} s | {t.wait:.1f} s |")


def goals_figures(args, work: Path, manifest: Path, videos: Path) -> None:
    """Issue 17 §7 in one run: the whole command at fp32 and at its defaults against a sequential per-segment
    loop at fp32 (model build included in both), and the command's throughput against pure forward."""
    from egodistill.backbones import resolve_precision

    auto = resolve_precision("auto", "cpu")
    n = len(segments_of(manifest))
    images = n * args.frames
    build, loop = per_segment_loop(manifest, videos, args.backbone, args.frames, "fp32", work / "loop-npy")
    base = build + loop
    fwd = {p: forward_only(manifest, videos, args.backbone, args.frames, 64, precision=p) for p in dict.fromkeys(("fp32", auto))}
    print(f"{n} segments x {args.frames} frames; sequential per-segment loop at fp32: {base:.1f} s (model build {build:.1f} s); "
          f"pure forward, batch 64, inputs prepared beforehand: " + ", ".join(f"{p} {t:.1f} s ({images / t:.0f} img/s)" for p, t in fwd.items()))
    print("| run | whole command | vs loop (fp32) | img/s | vs pure forward | decode | preprocess | forward | write | wait (model idle) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| per-segment loop, fp32 | {base:.1f} s | 1.00x | {images / base:.0f} | {fwd['fp32'] / base:.2f} | | | | | |")
    for label, precision in (("extract, --precision fp32", "fp32"), (f"extract at its defaults ({auto})", "auto")):
        wall, s = extract(manifest, videos, work / f"goals-{precision}.zarr", args.backbone, args.frames, workers=None, precision=precision)
        t = s.timings
        print(f"| {label} ({s.mode}) | {wall:.1f} s | {base / wall:.2f}x | {images / wall:.0f} | {fwd[resolve_precision(precision, 'cpu')] / wall:.2f} | "
              f"{t.decode:.1f} s | {t.preprocess:.1f} s | {t.forward:.1f} s | {t.write:.1f} s | {t.wait:.1f} s |")


def _sequential(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _readers(path: Path) -> dict:
    """Each decoder as a function of sorted unique frame indices -> uint8 [K, H, W, 3], opened once per video."""
    import decord
    from torchcodec.decoders import VideoDecoder

    from egodistill.extract.decode import _PyAVFrames

    readers = {}
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
        readers["decord"] = lambda idx: vr.get_batch(idx.tolist()).asnumpy()
    except Exception as err:  # noqa: BLE001 - a decoder that cannot open the file is a result
        readers["decord"] = f"cannot open: {str(err).splitlines()[0][:60]}"
    pyav = _PyAVFrames(path)
    readers["pyav"] = pyav.read
    for mode in ("exact", "approximate"):
        dec = VideoDecoder(str(path), seek_mode=mode, dimension_order="NHWC", num_ffmpeg_threads=0)
        readers[f"torchcodec-{mode}"] = lambda idx, dec=dec: dec.get_frames_at(idx.tolist()).data.numpy()
    return readers


def decoders_figures(args, work: Path) -> None:
    """decord, PyAV and torchcodec on each codec: frames equal to a sequential decode, and read speed over
    1 s segments every 0.5 s, 8 frames each, in manifest order (what a task reads). Opening is timed apart."""
    videos = [media.make_video(work / "h264.mp4", seconds=12, fps=50, size=(456, 256), seed=1),
              media.make_video(work / "vp9.webm", seconds=12, fps=50, size=(456, 256), codec="vp9", seed=2)]
    real = Path(args.real)
    videos += sorted(real.iterdir()) if real.is_dir() else []
    print("| video | codec | decoder | open | read (segments) | frames equal to sequential |")
    print("| --- | --- | --- | --- | --- | --- |")
    import av

    for path in videos:
        with av.open(str(path)) as c:
            codec, fps = c.streams.video[0].codec_context.name, float(c.streams.video[0].average_rate)
        reference = _sequential(path)
        n = len(reference)
        segments = [sample_indices(SamplingPolicy(frames=8), 8, a, a + 1.0, fps, n) for a in np.arange(0, n / fps - 1.0 + 1e-9, 0.5)]
        segments.append(np.arange(max(0, n - 8), n))  # the last frames, where decord fails MPEG-4 Part 2
        t0 = time.perf_counter()
        readers = _readers(path)
        opened = time.perf_counter() - t0
        for name, read in readers.items():
            if isinstance(read, str):
                print(f"| {path.name} | {codec} | {name} | {read} | | |")
                continue
            t0 = time.perf_counter()
            worst, error = 0, None
            try:
                for idx in segments:
                    idx = np.unique(idx)
                    got = read(idx)
                    worst = max(worst, max(int(np.abs(got[k].astype(np.int16) - reference[i]).max()) for k, i in enumerate(idx)))
            except Exception as err:  # noqa: BLE001 - a failing decoder is a result
                error = f"fails: {str(err).splitlines()[0][:60]}"
            took = time.perf_counter() - t0
            print(f"| {path.name} | {codec} | {name} | {opened:.2f} s (all) | {took:.2f} s ({len(segments)}) | "
                  f"{error or ('yes' if worst == 0 else f'no: max diff {worst}')} |")


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--segment-sec", type=float, default=2.0)
    parser.add_argument("--every-sec", type=float, default=3.0)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--breakeven", action="store_true", help="only the issue 11 figures: command vs per-segment loop, 2 workers vs 1, break-even")
    parser.add_argument("--decoders", action="store_true", help="only the decoder figures: decord, PyAV, torchcodec per codec")
    parser.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared" / "real" / "videos"), help="real videos for --decoders")
    parser.add_argument("--modes", action="store_true", help="only the issue 17 figures: in process vs local Dask with 1 and 2 workers")
    parser.add_argument("--goals", action="store_true", help="only issue 17's goals: the whole command at fp32 and at its defaults vs the fp32 loop, and vs pure forward")
    parser.add_argument("--precision", default="auto", help="for --breakeven/--modes: auto (bf16 where the CPU has it), fp32 or bf16")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    if args.decoders:
        try:
            return decoders_figures(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    try:
        manifest = make_dataset(work, args.videos, args.seconds, args.segment_sec, args.every_sec)
        videos = work / "videos"
        n_segments = len(segments_of(manifest))
        images = n_segments * args.frames
        print(f"{n_segments} segments x {args.frames} frames = {images} images, {args.videos} H.264 456x256 50 fps videos of {args.seconds:g} s, "
              f"backbone {args.backbone}, {os.cpu_count()} cores")
        if args.breakeven:
            breakeven_figures(args, work, manifest, videos)
            return
        if args.modes:
            modes_figures(args, work, manifest, videos)
            return
        if args.goals:
            goals_figures(args, work, manifest, videos)
            return

        fwd = forward_only(manifest, videos, args.backbone, args.frames, 64)
        wall_inproc, s0 = extract(manifest, videos, work / "inproc.zarr", args.backbone, args.frames, workers=0)
        print(f"1. overlap: extraction wall {wall_inproc:.2f} s (one process, all cores) / forward alone {fwd:.2f} s "
              f"= {wall_inproc / fwd:.2f}  (target <= 1.25); model time inside the run {s0.timings.forward:.2f} s")

        loop = common_practice(manifest, videos, args.backbone, args.frames, work / "npy")
        wall2, s2 = extract(manifest, videos, work / "two.zarr", args.backbone, args.frames, workers=2)
        print(f"2. vs per-video loop (model built beforehand): loop {images / loop:.1f} img/s; egodistill 2 workers "
              f"{images / s2.working_seconds:.1f} img/s once models are loaded = {loop / s2.working_seconds:.2f}x  (target >= 2x); "
              f"whole command incl. cluster start and model loads {images / wall2:.1f} img/s = {loop / wall2:.2f}x; "
              f"one process {loop / wall_inproc:.2f}x")

        wall1w, s1w = extract(manifest, videos, work / "one-worker.zarr", args.backbone, args.frames, workers=1, threads=1)
        wall2w, s2w = extract(manifest, videos, work / "two-workers.zarr", args.backbone, args.frames, workers=2, threads=1)
        print(f"3. scaling, workers of 1 torch thread: 1 worker {s1w.working_seconds:.2f} s, 2 workers {s2w.working_seconds:.2f} s "
              f"= {s1w.working_seconds / s2w.working_seconds:.2f}x once models are loaded  (target >= 1.6x); "
              f"whole commands {wall1w:.2f} s / {wall2w:.2f} s = {wall1w / wall2w:.2f}x")

        npy = tree_bytes(work / "npy")  # the loop saved the same features as float32 .npy
        cache_bytes = tree_bytes(work / "two.zarr")
        print(f"4. footprint: cache {cache_bytes / 1e6:.3f} MB / float32 .npy {npy / 1e6:.3f} MB = {cache_bytes / npy:.2f}  (target <= 0.55)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
