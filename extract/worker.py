"""What runs on a Dask worker: one task = a range of segments, decoded, embedded and written.

The model is built once per worker process and kept in `_BACKBONES`; only the small
`TaskSpec` travels in the graph. Decoding and preprocessing of the next segments run in
threads while the model computes on the current batch. A modality without a model (frames)
takes the same path minus the model: its preprocessed uint8 frames are the rows written.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from egodistill import cache
from egodistill.common import EgodistillError
from egodistill.backbones import Backbone, BackboneSpec, create_backbone, pooled_logits
from egodistill.extract.modalities import MediaSource, get_modality
from egodistill.extract.sampling import clip_windows, sample_indices, step_times

PREFETCH_SEGMENTS = 4
_BACKBONES: dict[tuple, Backbone] = {}


@dataclass(frozen=True)
class TaskSpec:
    """One extraction run's settings as a worker needs them."""

    cache: str
    teacher_key: str
    backbone: BackboneSpec
    modality: str
    settings: dict
    policy: dict
    heads: dict[str, int]
    device: str = "cpu"
    precision: str | None = "fp32"  # None: the modality runs no model
    batch_size: int = 64
    threads: int = 1
    storage_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentJob:
    index: int
    segment_id: str
    video: str | None   # an existing file, or None when the manifest's video was not found
    start: float
    stop: float
    rows: int
    frames: int | None = None   # frames sampled from the segment (clip backbones read them in windows); None = rows


def worker_device(device: str) -> str:
    """Pin each local Dask worker to its own GPU, by worker index, when there are several."""
    if device != "cuda" or torch.cuda.device_count() <= 1:
        return device
    try:
        from distributed import get_worker
        name = str(get_worker().name)
        index = int(name.rsplit("-", 1)[-1]) if name.rsplit("-", 1)[-1].isdigit() else hash(name)
    except (ImportError, ValueError):
        index = 0
    return f"cuda:{index % torch.cuda.device_count()}"


def get_backbone(spec: TaskSpec, device: str) -> Backbone:
    key = (spec.backbone, tuple(spec.heads.items()), device, spec.precision)
    if key not in _BACKBONES:
        backbone = create_backbone(spec.backbone, spec.heads)
        backbone.model.to(device)
        if not backbone.clip and (spec.precision == "bf16" or device.startswith("cuda")):
            backbone.model.to(memory_format=torch.channels_last)
        _BACKBONES[key] = backbone
    return _BACKBONES[key]


def embed(backbone: Backbone, batch: np.ndarray, device: str, precision: str) -> np.ndarray:
    """Features as float32: [B, D] for images, [B, T', D] for clips [B, C, T, H, W]; halves the batch on out-of-memory."""
    x = torch.from_numpy(batch).to(device, non_blocking=True)
    if not backbone.clip and (precision == "bf16" or device.startswith("cuda")):
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    try:
        with torch.inference_mode(), autocast:
            return backbone.model(x).float().cpu().numpy()
    except torch.OutOfMemoryError:
        if len(batch) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(batch) // 2
        return np.concatenate([embed(backbone, batch[:half], device, precision), embed(backbone, batch[half:], device, precision)])


def _prepare(job: SegmentJob, spec: TaskSpec, sources: dict[str, MediaSource]) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Model input ([T, C, H, W] frames, or [windows, C, K, H, W] clips), row timestamps and why PyAV stood in
    for decord (if it did)."""
    if job.video is None:
        raise EgodistillError("video not found: check --videos and the manifest's video column")
    source = sources.get(job.video)
    if source is None:
        for old in sources.values():  # segments of a task mostly share one video: keep only the current one
            old.close()
        sources.clear()
        source = sources[job.video] = MediaSource(Path(job.video))
    video = source.video
    indices = sample_indices(spec.policy, job.rows if job.frames is None else job.frames, job.start, job.stop, video.fps, video.num_frames)
    make_inputs = get_modality(spec.modality).make_inputs
    fallback = f"{job.video}: {video.fallback_reason}" if video.fallback_reason else None
    clip = spec.policy.get("clip")
    if clip is None:
        return make_inputs(source, indices, spec.settings), video.frame_times(indices).astype(np.float32), fallback
    windows = clip_windows(len(indices), clip)  # [W, K] positions into the sampled frames
    used, where = np.unique(windows, return_inverse=True)  # overlapping windows decode each frame once
    frames = make_inputs(source, indices[used], spec.settings)  # [U, C, H, W]
    inputs = np.ascontiguousarray(frames[where.reshape(windows.shape)].transpose(0, 2, 1, 3, 4))  # [W, C, K, H, W]
    times = step_times(video.frame_times(indices)[windows], clip["steps"])
    return inputs, times.astype(np.float32), fallback


def _prefetched(jobs: list[SegmentJob], spec: TaskSpec) -> Iterator[tuple[SegmentJob, Future]]:
    """Yield (job, future of its inputs) with a bounded look-ahead, so memory stays small."""
    sources: dict[str, MediaSource] = {}
    # One thread: MediaSource is not shared across threads, and decode overlaps the forward pass.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        pending: deque[tuple[SegmentJob, Future]] = deque()
        for job in jobs:
            pending.append((job, pool.submit(_prepare, job, spec, sources)))
            if len(pending) > PREFETCH_SEGMENTS:
                yield pending.popleft()
        yield from pending
    for source in sources.values():
        source.close()


def run_task(spec: TaskSpec, task: int, jobs: list[SegmentJob]) -> dict:
    """Extract one task's segments and write them; a task already recorded as done is a no-op."""
    started = time.perf_counter()
    teacher = cache.open_cache(spec.cache, mode="r+", storage_options=spec.storage_options).teacher(spec.teacher_key)
    if teacher.task_done(task):
        return {"task": task, "skipped": True, "segments": len(jobs), "failed": 0}
    torch.set_num_threads(spec.threads)
    device = worker_device(spec.device)
    starts = np.cumsum([0] + [j.rows for j in jobs])  # row offsets within this task
    if get_modality(spec.modality).has_model:
        backbone: Backbone | None = get_backbone(spec, device)
        features = np.full((int(starts[-1]), backbone.feature_dim), np.nan, dtype=np.float32)
    else:  # frames: rows are the preprocessed frames; failed segments keep zeros (the record says they are not data)
        backbone = None
        features = np.zeros((int(starts[-1]), *spec.settings["input_size"], 3), dtype=np.uint8)
    working_since = time.time()  # after the (once per worker) model load: what throughput figures measure
    timestamps = np.full(int(starts[-1]), np.nan, dtype=np.float32)
    logits = {h: np.full((len(jobs), c), np.nan, dtype=np.float32) for h, c in spec.heads.items()} if backbone and backbone.heads else {}
    failed: list[cache.Failure] = []
    fallbacks: set[str] = set()
    forward_seconds = 0.0

    batch: list[tuple[int, np.ndarray]] = []  # (position in task, inputs)

    def flush() -> None:
        nonlocal forward_seconds
        if not batch:
            return
        t0 = time.perf_counter()
        out = embed(backbone, np.concatenate([inputs for _, inputs in batch]), device, spec.precision)
        forward_seconds += time.perf_counter() - t0
        steps = out.shape[1] if backbone.clip else 1  # a clip's output time steps, one row each
        out = out.reshape(-1, out.shape[-1])
        cursor = 0
        for pos, inputs in batch:
            rows = len(inputs) * steps
            if rows != starts[pos + 1] - starts[pos]:
                raise RuntimeError(f"segment {jobs[pos].segment_id}: the model gave {rows} rows, the plan has {starts[pos + 1] - starts[pos]}")
            features[starts[pos]: starts[pos + 1]] = out[cursor: cursor + rows]
            if backbone.heads:
                for head, values in pooled_logits(backbone, out[cursor: cursor + rows]).items():
                    logits[head][pos] = values
            cursor += rows
        batch.clear()

    positions = {job.index: pos for pos, job in enumerate(jobs)}
    for job, future in _prefetched(jobs, spec):
        pos = positions[job.index]
        try:
            inputs, times, fallback = future.result()
        except Exception as err:  # noqa: BLE001 - one bad segment must not sink its task: it goes to the ledger
            reason = str(err) if isinstance(err, EgodistillError) else f"{type(err).__name__}: {str(err).strip()[:300]}"
            failed.append(cache.Failure(job.index, job.segment_id, job.video, reason, expected_rows=job.rows))
            continue
        if fallback:
            fallbacks.add(fallback)
        timestamps[starts[pos]: starts[pos + 1]] = times
        if backbone is None:
            features[starts[pos]: starts[pos + 1]] = inputs
            continue
        batch.append((pos, inputs))
        if sum(len(i) * (i.shape[2] if backbone.clip else 1) for _, i in batch) >= spec.batch_size:  # frames per forward
            flush()
    flush()
    teacher.write_task(
        task, features if backbone is None else features.astype(np.float16), timestamps, logits, failed=failed, worker=os.uname().nodename, device=device,
        seconds=round(time.perf_counter() - started, 3), lock=_dask_lock,
    )
    return {
        "task": task, "skipped": False, "segments": len(jobs), "failed": len(failed), "rows": int(starts[-1]),
        "seconds": time.perf_counter() - started, "forward_seconds": forward_seconds, "fallbacks": sorted(fallbacks),
        "working": (working_since, time.time()),
    }


def _dask_lock(name: str):
    """A cluster-wide lock for the rare shard two tasks share (ragged --fps layouts only)."""
    try:
        from distributed import Lock, get_worker
        get_worker()
    except (ImportError, ValueError):
        return contextlib.nullcontext()
    return Lock(name)
