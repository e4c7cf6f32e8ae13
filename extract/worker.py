"""What runs on a Dask worker: one task = a range of segments, made into rows by its modality and written.

`run_task` is the one path every modality takes: skip a recorded task, ask the modality for the
task's rows (`TaskRows`, extract/tasks.py), write them with their record and ledger. Rows from video
come from `decoded_rows`: the model is built once per worker process and kept in `_BACKBONES`; only
the small `TaskSpec` travels in the graph. Decoding and preprocessing of the next segments run in a pool
of threads while the model computes on the current batch (the decoders, OpenCV, PIL's resize and
numpy release the GIL); segments are taken as they finish, not in order, so one slow video does not
stall the batch. Each task reports where its time went (`Timings`). A modality without a model (frames)
takes the same path minus the model: its preprocessed uint8 frames are the rows written. A modality with
a source of its own (layout: the box file) gives its rows through `Modality.rows` instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from egodistill import cache
from egodistill.cache.records import SamplingPolicy
from egodistill.common import EgodistillError
from egodistill.backbones import Backbone, BackboneSpec, create_backbone, pooled_logits
from egodistill.extract.decode import decode_clock
from egodistill.extract.modalities import MediaSource, get_modality
from egodistill.extract.sampling import clip_windows, sample_indices, step_times
from egodistill.extract.tasks import TaskResult, TaskRows, Timings

PREFETCH_SEGMENTS = 4  # segments decoded ahead per decode thread: bounds memory
_BACKBONES: dict[tuple, Backbone] = {}


@dataclass(frozen=True)
class TaskSpec:
    """One extraction run's settings as a worker needs them."""

    cache: str
    teacher_key: str
    backbone: BackboneSpec
    modality: str
    settings: dict
    policy: SamplingPolicy
    heads: dict[str, int]
    device: str = "cpu"
    precision: str | None = "fp32"  # None: the modality runs no model
    batch_size: int = 64
    threads: int = 1
    storage_options: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # the modality's resolved options (layout: where --boxes is)


def decode_threads(device: str, threads: int) -> int:
    """Decode/preprocess threads for one worker: the cores the model leaves free (on a GPU all but one),
    at least 2 so that a slow video overlaps a fast one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    spare = cores - 1 if device.startswith("cuda") else cores - threads
    return max(2, min(spare, 8))


@dataclass(frozen=True)
class SegmentJob:
    index: int
    segment_id: str
    video: str | None   # an existing file, or None when the manifest's video was not found
    start: float
    stop: float
    rows: int
    frames: int | None = None   # frames sampled from the segment (clip backbones read them in windows); None = rows
    name: str | None = None     # the segment's video as the modality's own source names it (a box file's key), matched by extract/names.py


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


def _prepare(job: SegmentJob, spec: TaskSpec, sources: dict[str, MediaSource]) -> tuple[tuple[np.ndarray, np.ndarray, str | None], Timings]:
    """(inputs, row times, fallback reason) of `_inputs`, and its decode and preprocess seconds; a failure
    carries its timings too (`err.timings`), for the task's thread to ledger it and count them."""
    started, decoded = time.perf_counter(), decode_clock()

    def timings() -> Timings:
        decode = decode_clock() - decoded
        return Timings(decode=decode, preprocess=max(0.0, time.perf_counter() - started - decode))

    try:
        result = _inputs(job, spec, sources)
    except Exception as err:
        err.timings = timings()  # type: ignore[attr-defined]
        raise
    return result, timings()


def _inputs(job: SegmentJob, spec: TaskSpec, sources: dict[str, MediaSource]) -> tuple[np.ndarray, np.ndarray, str | None]:
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
    clip = spec.policy.clip
    if clip is None:
        return make_inputs(source, indices, spec.settings), video.frame_times(indices).astype(np.float32), fallback
    windows = clip_windows(len(indices), clip)  # [W, K] positions into the sampled frames
    used, where = np.unique(windows, return_inverse=True)  # overlapping windows decode each frame once
    frames = make_inputs(source, indices[used], spec.settings)  # [U, C, H, W]
    inputs = np.ascontiguousarray(frames[where.reshape(windows.shape)].transpose(0, 2, 1, 3, 4))  # [W, C, K, H, W]
    times = step_times(video.frame_times(indices)[windows], clip.steps)
    return inputs, times.astype(np.float32), fallback


def _prefetched(jobs: list[SegmentJob], spec: TaskSpec, threads: int) -> Iterator[tuple[SegmentJob, Future]]:
    """Yield (job, finished future of `_prepare`) as segments finish decoding, in any order, with at most
    PREFETCH_SEGMENTS per thread in flight so memory stays small. Each thread keeps its own open videos
    (a decoder is not shared across threads); jobs go to the pool in manifest order, so a thread mostly
    reads one video forward."""
    local, opened, lock = threading.local(), [], threading.Lock()

    def prepare(job: SegmentJob):
        if not hasattr(local, "sources"):
            local.sources = {}
            with lock:
                opened.append(local.sources)
        return _prepare(job, spec, local.sources)

    queue = iter(jobs)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        pending: dict[Future, SegmentJob] = {}
        for job in queue:
            pending[pool.submit(prepare, job)] = job
            if len(pending) >= threads * PREFETCH_SEGMENTS:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                nxt = next(queue, None)
                if nxt is not None:
                    pending[pool.submit(prepare, nxt)] = nxt
                yield job, future
    for sources in opened:
        for source in sources.values():
            source.close()


def run_task(spec: TaskSpec, task: int, jobs: list[SegmentJob]) -> TaskResult:
    """Make one task's rows by its modality and write them; a task already recorded as done is a no-op."""
    started = time.perf_counter()
    teacher = cache.open_cache(spec.cache, mode="r+", storage_options=spec.storage_options).teacher(spec.teacher_key)
    if teacher.task_done(task):
        return TaskResult(task, skipped=True, segments=len(jobs))
    torch.set_num_threads(spec.threads)
    device = worker_device(spec.device)
    rows = (get_modality(spec.modality).rows or decoded_rows)(spec, jobs, device)
    t0 = time.perf_counter()
    teacher.write_task(
        task, rows.features, rows.times, rows.logits, failed=rows.failed, worker=os.uname().nodename, device=device,
        seconds=round(time.perf_counter() - started, 3), lock=_dask_lock,
    )
    rows.timings.write += time.perf_counter() - t0
    return TaskResult(
        task, skipped=False, segments=len(jobs), failed=len(rows.failed), rows=len(rows.times),
        timings=rows.timings, fallbacks=tuple(sorted(rows.fallbacks)), working=(rows.working_since, time.time()),
    )


def decoded_rows(spec: TaskSpec, jobs: list[SegmentJob], device: str) -> TaskRows:
    """Rows from each segment's decoded video: the backbone's features (and logits), or without a model the frames."""
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
    timings = Timings()

    batch: list[tuple[int, np.ndarray]] = []  # (position in task, inputs)

    def flush() -> None:
        if not batch:
            return
        t0 = time.perf_counter()
        out = embed(backbone, np.concatenate([inputs for _, inputs in batch]), device, spec.precision)
        timings.forward += time.perf_counter() - t0
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
    prefetched = _prefetched(jobs, spec, decode_threads(device, spec.threads))
    while True:
        t0 = time.perf_counter()
        job, future = next(prefetched, (None, None))
        timings.wait += time.perf_counter() - t0  # the model idle: no decoded segment to take
        if job is None:
            break
        pos = positions[job.index]
        try:
            (inputs, times, fallback), spent = future.result()
            timings.add(spent)
        except Exception as err:  # noqa: BLE001 - one bad segment must not sink its task: it goes to the ledger
            timings.add(getattr(err, "timings", Timings()))
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
    return TaskRows(features if backbone is None else features.astype(np.float16), timestamps, logits, failed, sorted(fallbacks), timings, working_since)


def _dask_lock(name: str):
    """A cluster-wide lock for the rare shard two tasks share (ragged --fps layouts only)."""
    try:
        from distributed import Lock, get_worker
        get_worker()
    except (ImportError, ValueError):
        return contextlib.nullcontext()
    return Lock(name)
