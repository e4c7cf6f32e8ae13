"""The extraction driver: plan the rows, create or resume the teacher, run tasks on Dask, summarise."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from egodistill import cache
from egodistill.common import EgodistillError, ExtractError, check_number, check_plain_name, first_line, pick_device
from egodistill.backbones import BackboneSpec, backbone_family, clip_backbone_names, create_backbone, head_id, resolve_precision, weights_id
from egodistill.extract.manifests import Manifest, read_manifest, resolve_videos, segment_table
from egodistill.extract.modalities import get_modality
from egodistill.extract.sampling import clip_policy, frames_for, rows_from_frames, sampling_policy
from egodistill.extract.worker import SegmentJob, TaskSpec, run_task


@dataclass
class ExtractConfig:
    """Every setting of one `egodistill extract` run; the CLI fills it in."""

    manifest: str
    videos: str
    cache: str
    modality: str = "rgb"
    backbone: str | None = None
    weights: str | None = None
    head: str | None = None
    frames: int | None = None
    fps: float | None = None
    clip_frames: int | None = None  # clip backbones: frames per window (default: the --frames as one clip, or the preset's length)
    clip_stride: int | None = None  # clip backbones: sampled frames between window starts (default: --clip-frames)
    options: dict = field(default_factory=dict)  # the modality's own options by name (extract/modalities.py)
    name: str | None = None
    workers: int | None = None
    threads: int | None = None   # torch threads per worker; default: cores / workers
    scheduler: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    seed: int = 0
    segments_per_task: int | None = None
    retry_failed: bool = False
    dry_run: bool = False
    storage_options: dict = field(default_factory=dict)


@dataclass
class Plan:
    manifest: Manifest
    video_paths: dict[str, Path | None]
    policy: dict
    rows_per_segment: np.ndarray
    offsets: np.ndarray
    layout: cache.Layout
    frames_per_segment: np.ndarray | None = None  # sampled frames (differs from rows for clip backbones)

    @property
    def missing_videos(self) -> list[str]:
        return sorted(v for v, p in self.video_paths.items() if p is None)


@dataclass
class Summary:
    teacher_key: str
    segments: int
    done_before: int = 0
    extracted: int = 0
    failed: int = 0
    rows: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0
    working: tuple[float, float] | None = None  # first task start to last task end, models loaded
    crashed_tasks: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    ledger: list[cache.Failure] = field(default_factory=list)

    @property
    def working_seconds(self) -> float:
        return self.working[1] - self.working[0] if self.working else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.crashed_tasks


def plan_extraction(cfg: ExtractConfig) -> Plan:
    """Read the manifest, find the videos and lay out rows; decodes nothing unless --fps needs durations."""
    check_options(cfg)
    policy = _sampling(cfg)
    manifest = read_manifest(cfg.manifest)
    video_paths = resolve_videos(manifest, cfg.videos)
    frames = np.array([_planned_frames(policy, s, video_paths.get(s.video)) for s in manifest.segments], dtype=np.int64)
    rows = np.array([rows_from_frames(policy, int(n)) for n in frames], dtype=np.int64)
    offsets, layout = cache.plan_layout(rows, cfg.segments_per_task)
    return Plan(manifest, video_paths, policy, rows, offsets, layout, frames)


def _sampling(cfg: ExtractConfig) -> dict:
    """The sampling policy; for a clip backbone with its windows: the --clip-frames/--clip-stride given, else
    the --frames as one clip, else the clip length of the model's weights preset."""
    modality = get_modality(cfg.modality)
    backbone = cfg.backbone or modality.default_backbone
    family = backbone_family(backbone) if modality.has_model else None  # frames run no model
    if family is None or not family.takes_clips:
        if cfg.clip_frames is not None or cfg.clip_stride is not None:
            raise ExtractError(f"--clip-frames/--clip-stride need a clip backbone ({', '.join(clip_backbone_names())}); {backbone} reads single frames")
        return sampling_policy(cfg.frames, cfg.fps)
    preset_frames = family.preset(backbone, 3)["clip_frames"]  # the clip length does not depend on the channels
    given = cfg.frames is not None or cfg.fps is not None
    policy = sampling_policy(cfg.frames if given else (cfg.clip_frames or preset_frames), cfg.fps)
    clip_frames = cfg.clip_frames or policy.get("frames", preset_frames)
    if clip_frames < 1:
        raise ExtractError(f"--clip-frames must be at least 1, got {clip_frames}")
    steps = family.output_steps(backbone, clip_frames)
    return clip_policy(policy, clip_frames, clip_frames if cfg.clip_stride is None else cfg.clip_stride, steps)


def check_options(cfg: ExtractConfig) -> None:
    """The options that need neither the manifest nor the model; raises ExtractError naming the option."""
    modality = get_modality(cfg.modality)
    modality.resolve_options(cfg.options)
    if not modality.has_model:
        given = [flag for flag, value in (("--backbone", cfg.backbone), ("--weights", cfg.weights), ("--head", cfg.head)) if value is not None]
        if given:
            raise ExtractError(f"{'/'.join(given)}: --modality {cfg.modality} runs no model (it stores the sampled frames): drop {'them' if len(given) > 1 else 'it'}")
    check_number(ExtractError, "--batch-size", cfg.batch_size, at_least=1)
    check_number(ExtractError, "--segments-per-task", cfg.segments_per_task, at_least=1)
    check_number(ExtractError, "--workers", cfg.workers, at_least=0)
    if cfg.name is not None:
        check_plain_name(ExtractError, "--name", cfg.name)
    if not Path(cfg.videos).is_dir():
        raise ExtractError(f"videos folder {cfg.videos} {'is not a folder' if Path(cfg.videos).exists() else 'not found'}: check the --videos path")


def _planned_frames(policy: dict, segment, path: Path | None) -> int:
    if "frames" in policy or math.isfinite(segment.stop_sec):
        return frames_for(policy, segment.start_sec, segment.stop_sec)
    # A whole-video segment at a fixed rate: its length is the video's.
    from egodistill.extract.decode import open_video

    if path is None:
        return 1
    try:
        with open_video(path) as video:
            return frames_for(policy, segment.start_sec, video.num_frames / video.fps)
    except EgodistillError:
        return 1  # the worker will fail it again and write the reason to the ledger


def teacher_provenance(cfg: ExtractConfig, spec: BackboneSpec, settings: dict, policy: dict, precision: str | None) -> cache.Provenance:
    """What the teacher's rows depend on; a modality without a model (frames) has no weights, head or precision."""
    if not get_modality(cfg.modality).has_model:
        return cache.Provenance(modality=cfg.modality, backbone=spec.backbone, in_chans=spec.in_chans, preprocessing=settings, sampling=policy)
    return cache.Provenance(
        modality=cfg.modality, backbone=spec.backbone, weights=weights_id(spec), head=head_id(spec), in_chans=spec.in_chans,
        preprocessing=settings, sampling=policy, precision=precision,
    )


def run_extraction(cfg: ExtractConfig, plan: Plan | None = None, on_progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print) -> Summary:
    """Extract every segment not done yet into the cache; safe to kill and rerun at any point."""
    started = time.perf_counter()
    plan = plan or plan_extraction(cfg)
    modality = get_modality(cfg.modality)
    if modality.run is not None:  # a modality without a model (layout) writes its own rows
        return modality.run(cfg, plan, on_progress, log)
    options = modality.resolve_options(cfg.options)
    spec = BackboneSpec(backbone=cfg.backbone or modality.default_backbone, in_chans=modality.in_chans(options), weights=cfg.weights, head=cfg.head, seed=cfg.seed)
    heads = plan.manifest.heads
    if modality.has_model:
        backbone = create_backbone(spec, heads)  # here, once, so a bad backbone/weights/head fails before any work
        settings = modality.settings(options, backbone.data_config)
        device = str(pick_device(cfg.device))
        precision: str | None = resolve_precision(cfg.precision, device)
        feature_dim, frame_shape = backbone.feature_dim, None
    else:  # frames: nothing to build; the workers store the preprocessed frames as rows
        settings = modality.settings(options, {})
        device, precision = "cpu", None
        feature_dim, frame_shape = 0, (*settings["input_size"], 3)
    provenance = teacher_provenance(cfg, spec, settings, plan.policy, precision)

    target = cache.open_cache(cfg.cache, mode="a", storage_options=cfg.storage_options)
    target.write_segments(segment_table(plan.manifest), {"format": plan.manifest.format, "manifest": str(plan.manifest.path)})
    key = target.key_for(provenance, cfg.name)  # a teacher extracted before, by any egodistill version, resumes
    with target.lease(key) as renew:
        teacher, resumed = target.create_teacher(key, provenance, feature_dim, plan.offsets, plan.layout, heads if spec.head else {}, frame_shape)
        summary = _run_tasks(cfg, plan, spec, settings, device, precision, teacher, resumed, heads, on_progress, renew, log)
    # A fresh handle: the workers wrote the records, and a remote store's listings may be cached.
    summary.ledger = cache.open_cache(cfg.cache, mode="r", storage_options=cfg.storage_options).teacher(teacher.key).ledger()
    summary.failed = len(summary.ledger)
    summary.seconds = time.perf_counter() - started
    return summary


def _run_tasks(cfg: ExtractConfig, plan: Plan, spec: BackboneSpec, settings: dict, device: str, precision: str | None,
               teacher: cache.Teacher, resumed: bool, heads: dict[str, int], on_progress, renew, log) -> Summary:
    """Run every task of the teacher that has no record yet (or failed segments, with --retry-failed)."""
    key, layout = teacher.key, teacher.layout
    records = teacher.records()
    todo = [t for t in range(layout.tasks) if t not in records or (cfg.retry_failed and records[t].failed)]
    summary = Summary(teacher_key=key, segments=layout.segments, done_before=sum(len(layout.task_segments(t)) for t in records if t not in todo))
    log(f"teacher {key}: {'resuming' if resumed else 'new'}, {len(todo)} of {layout.tasks} tasks to run on {device} ({precision or 'no model'})")
    if cfg.retry_failed:  # a retried task rewrites its record; until then its segments must not look done
        teacher.drop_records([t for t in todo if t in records])

    workers = _default_workers(device) if cfg.workers is None else cfg.workers
    task_spec = TaskSpec(
        cache=cfg.cache, teacher_key=key, backbone=spec, modality=cfg.modality, settings=settings, policy=plan.policy,
        heads=heads if spec.head else {}, device=device, precision=precision, batch_size=cfg.batch_size,
        threads=cfg.threads or (max(1, (os.cpu_count() or 1) // max(workers, 1)) if cfg.scheduler is None else 1),
        storage_options=cfg.storage_options,
    )
    tasks = [(t, _jobs(plan, layout, t)) for t in todo]
    if tasks and workers == 0 and not cfg.scheduler:
        _run_in_process(task_spec, tasks, summary, _renewing(on_progress, renew))
    elif tasks:
        _run_on_dask(cfg, workers, task_spec, tasks, summary, _renewing(on_progress, renew))
    return summary


def _renewing(on_progress, renew):
    def progress(done: int, total: int) -> None:
        renew()
        if on_progress:
            on_progress(done, total)
    return progress


def _jobs(plan: Plan, layout: cache.Layout, task: int) -> list[SegmentJob]:
    jobs = []
    for i in layout.task_segments(task):
        s = plan.manifest.segments[i]
        path = plan.video_paths.get(s.video)
        frames = int(plan.frames_per_segment[i]) if plan.frames_per_segment is not None else None
        jobs.append(SegmentJob(i, s.id, str(path) if path else None, s.start_sec, s.stop_sec, int(plan.rows_per_segment[i]), frames))
    return jobs


def _default_workers(device: str) -> int:
    if device.startswith("cuda"):
        import torch
        return max(1, torch.cuda.device_count())
    return max(1, os.cpu_count() or 1)


def _run_in_process(spec: TaskSpec, tasks: list[tuple[int, list[SegmentJob]]], summary: Summary, on_progress) -> None:
    """--workers 0: no cluster, tasks one after another here (debugging, tiny jobs)."""
    done = summary.done_before
    for task, jobs in tasks:
        _account(summary, run_task(spec, task, jobs))
        done += len(jobs)
        if on_progress:
            on_progress(done, summary.segments)


def _account(summary: Summary, result: dict) -> None:
    if not result["skipped"]:
        summary.extracted += result["segments"] - result["failed"]
        summary.rows += result["rows"]
        summary.forward_seconds += result["forward_seconds"]
        summary.fallbacks.extend(result["fallbacks"])
        start, end = result["working"]
        summary.working = (min(start, summary.working[0]), max(end, summary.working[1])) if summary.working else (start, end)


def _run_on_dask(cfg: ExtractConfig, workers: int, spec: TaskSpec, tasks: list[tuple[int, list[SegmentJob]]], summary: Summary, on_progress) -> None:
    from distributed import Client, LocalCluster, as_completed

    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny", "distributed.core"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if cfg.scheduler:
        client = Client(cfg.scheduler, timeout="30s")
        cluster = None
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        futures = [client.submit(run_task, spec, task, jobs, key=f"extract-{spec.teacher_key}-{task}", pure=False, retries=2) for task, jobs in tasks]
        size = {f.key: len(jobs) for f, (_, jobs) in zip(futures, tasks)}
        done = summary.done_before
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as err:  # noqa: BLE001 - a crashed task is reported and rerun next time
                summary.crashed_tasks.append(f"{future.key}: {type(err).__name__}: {first_line(err)}")
            else:
                _account(summary, result)
            done += size[future.key]
            if on_progress:
                on_progress(done, summary.segments)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
