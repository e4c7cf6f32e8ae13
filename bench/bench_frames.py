"""Frames in the cache (issue 15): bytes per stored frame and whole-shard read throughput, per codec.

    python bench/bench_frames.py [--frame-size 128] [--rounds 5] [--workdir /tmp/egodistill-bench-frames]

Two sources: real encoded test videos (egodistill.testing.make_video: ffmpeg's testsrc2, H.264, 320x240,
8 clips of 16 s) and, where the folder exists, the real clips of /work/shared/real/videos (kitchen 426x240,
tap 1920x1080, mmaction2's 320x240 test clip); back-to-back segments of 2 s, 8 frames each (0.25 s apart,
about EPIC's spacing; segments must not overlap, or a chunk would hold the same frame twice and flatter
codecs that see across frames). Each is extracted once with `extract --modality frames --frames 8`
(the cache's own codec); its frames are then rewritten, same chunks and shards, with each candidate codec
into a scratch Zarr group, and read back whole shard by whole shard with the cache's RowReader
(tensorstore on a local path), warm in the page cache as every epoch after the first finds them.
Read figures are the median and the best of `--rounds` reads of every shard (the machine is shared: the
best is what the codec costs, the median what a loader met); MB/s counts decoded bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from egodistill import cache, testing
from egodistill.cache.blocks import RowReader
from egodistill.extract.run import ExtractConfig, run_extraction

REAL_VIDEOS = Path("/work/shared/real/videos")
SEGMENT_SEC = 2.0
CODECS = {
    "none": None,
    "blosc-lz4": BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),
    "blosc-zstd-3": BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle"),
    "blosc-zstd-3-bitshuffle": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
    "zstd-1": ZstdCodec(level=1),
    "zstd-3": ZstdCodec(level=3),
    "zstd-5": ZstdCodec(level=5),
}


def make_dataset(folder: Path, source: str) -> tuple[Path, Path]:
    """A generic manifest of 1 s segments over the source's videos."""
    videos = folder / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    if source == "test":
        for i in range(8):
            testing.make_video(videos / f"clip{i}.mp4", seconds=16.0, fps=25, size=(320, 240), seed=i)
    else:
        for path in sorted(REAL_VIDEOS.iterdir()):
            shutil.copy(path, videos / path.name)
    from egodistill.extract.decode import open_video

    rows = ["segment_id,video,start_sec,stop_sec,split"]
    for path in sorted(videos.iterdir()):
        with open_video(path) as video:
            starts = np.arange(0.0, video.num_frames / video.fps - SEGMENT_SEC + 1e-6, SEGMENT_SEC)
        rows += [f"{path.stem}_{k},{path.name},{a:.2f},{a + SEGMENT_SEC:.2f},train" for k, a in enumerate(starts)]
    manifest = folder / "segments.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest, videos


def stored_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")


def read_seconds(reader: RowReader, spans: list[tuple[int, int]], rounds: int) -> tuple[float, float]:
    """(median, best) seconds to read every span."""
    reader.read(spans)  # warm: page cache and tensorstore's metadata
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        reader.read(spans)
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times)


def row(source: str, codec: str, frames: np.ndarray, nbytes: int, seconds: tuple[float, float]) -> dict:
    median, best = seconds
    return {"source": source, "codec": codec, "frames": len(frames), "bytes_per_frame": nbytes / len(frames), "ratio": frames.nbytes / nbytes,
            "frames_per_s": len(frames) / median, "mb_per_s": frames.nbytes / median / 1e6, "best_frames_per_s": len(frames) / best}


def bench_source(workdir: Path, source: str, frame_size: int, rounds: int) -> list[dict]:
    folder = workdir / source
    shutil.rmtree(folder, ignore_errors=True)
    manifest, videos = make_dataset(folder, source)
    location = folder / "cache.zarr"
    summary = run_extraction(ExtractConfig(manifest=str(manifest), videos=str(videos), cache=str(location), modality="frames", frames=8,
                                           workers=0, options={"frame_size": frame_size}), log=lambda _: None)
    assert summary.ok, summary.ledger
    teacher = cache.open_cache(location).teacher(summary.teacher_key)
    spans = [(int(teacher.offsets[b.start]), int(teacher.offsets[b.stop])) for b in teacher.blocks()]
    frames = teacher.read_frames(spans)
    stored = zarr.open_group(location, mode="r")[f"teachers/{teacher.key}/frames"]
    results = []
    for name, codec in CODECS.items():
        scratch = folder / "codecs" / name
        array = zarr.create_array(scratch, shape=frames.shape, dtype="uint8", chunks=stored.chunks, shards=stored.shards,
                                  fill_value=0, compressors=codec, dimension_names=("row", "y", "x", "channel"))
        array[:] = frames
        reader = RowReader(zarr.open_array(scratch, mode="r"), scratch)
        assert np.array_equal(reader.read(spans), frames)
        results.append(row(source, name, frames, stored_bytes(scratch), read_seconds(reader, spans, rounds)))
    # The cache's own array, read through the public API (Teacher.read_frames), timed the same way.
    times = []
    for _ in range(rounds + 1):
        started = time.perf_counter()
        teacher.read_frames(spans)
        times.append(time.perf_counter() - started)
    own = stored_bytes(location / "teachers" / teacher.key / "frames")
    results.append(row(source, "cache: Teacher.read_frames", frames, own, (statistics.median(times[1:]), min(times[1:]))))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/egodistill-bench-frames"))
    args = parser.parse_args()
    sources = ["test"] + (["real"] if REAL_VIDEOS.is_dir() else [])
    rows = [r for s in sources for r in bench_source(args.workdir, s, args.frame_size, args.rounds)]
    raw = args.frame_size * args.frame_size * 3
    print(f"frames of {args.frame_size}x{args.frame_size}x3 uint8 ({raw} B raw); {os.cpu_count()} CPUs")
    print("| source | codec | frames | bytes/frame | ratio | frames/s (median) | MB/s (median) | frames/s (best) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['source']} | {r['codec']} | {r['frames']} | {r['bytes_per_frame']:,.0f} | {r['ratio']:.2f} | {r['frames_per_s']:,.0f} "
              f"| {r['mb_per_s']:,.0f} | {r['best_frames_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
