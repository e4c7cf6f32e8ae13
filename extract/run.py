"""The extraction driver, one for every modality: plan the rows, create or resume the teacher under its lease,
run the tasks not recorded yet (or failed ones, with --retry-failed) on Dask or here, summarise from the ledger.
What a modality contributes is its settings, its row shape and each task's rows (extract/tasks.py)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from egodistill import cache
from egodistill.cache.records import SamplingPolicy
from egodistill.common import EgodistillError, ExtractError, check_number, check_plain_name, first_line, pick_device
from egodistill.backbones import BackboneSpec, backbone_family, clip_backbone_names, create_backbone, head_id, resolve_precision, weights_id
from egodistill.extract.manifests import Manifest, add_manifests, cache_manifests, combine, read_manifests, resolve_videos
from egodistill.extract.modalities import Modality, get_modality
from egodistill.extract.names import match_names, mismatch_note
from egodistill.extract.sampling import clip_policy, frames_for, rows_from_frames, sampling_policy
from egodistill.extract.tasks import TaskResult, Timings
from egodistill.extract.worker import SegmentJob, TaskSpec, run_task


@dataclass
class ExtractConfig:
    """Every setting of one `egodistill extract` run; the CLI fills it in."""

    manifest: str | list[str]  # one file, or each file of a dataset as released (train, validation, test), each its own split
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
    storage_options: dict = field(default_factory=dict)
    classes: dict[str, list[str]] = field(default_factory=dict)  # head -> class names (`--classes HEAD=FILE`)

    @property
    def manifests(self) -> list[str]:
        return [self.manifest] if isinstance(self.manifest, str) else list(self.manifest)


@dataclass
class Plan:
    manifest: Manifest  # every segment of the cache once this run wrote the new files: the stored files, then `added`
    video_paths: dict[str, Path | None]
    policy: SamplingPolicy
    rows_per_segment: np.ndarray
    offsets: np.ndarray
    layout: cache.Layout
    frames_per_segment: np.ndarray | None = None  # sampled frames (differs from rows for clip backbones)
    added: list[Manifest] = field(default_factory=list)  # the files given that the cache does not hold yet

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
    working: tuple[float, float] | None = None  # first task start to last task end, models loaded
    timings: Timings = field(default_factory=Timings)  # decode, preprocess, forward, write, wait (model idle) over all tasks
    mode: str = ""  # how the tasks ran: "in process", "local Dask, N workers" or "Dask at ADDRESS"
    crashed_tasks: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    ledger: list[cache.Failure] = field(default_factory=list)

    @property
    def working_seconds(self) -> float:
        return self.working[1] - self.working[0] if self.working else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.crashed_tasks

    def to_json(self) -> dict:
        """The summary as `extract --json` prints it: counts, seconds and where they went, the ledger."""
        return {
            "teacher": self.teacher_key, "ok": self.ok, "mode": self.mode, "segments": self.segments, "done_before": self.done_before,
            "extracted": self.extracted, "failed": self.failed, "rows": self.rows, "seconds": round(self.seconds, 3),
            "working_seconds": round(self.working_seconds, 3), "timings": {k: round(v, 3) for k, v in asdict(self.timings).items()},
            "crashed_tasks": self.crashed_tasks, "fallbacks": self.fallbacks, "ledger": [asdict(f) for f in self.ledger],
        }


def plan_extraction(cfg: ExtractConfig) -> Plan:
    """Read the manifest, find the videos and lay out rows; decodes nothing unless --fps needs durations."""
    check_options(cfg)
    policy = _sampling(cfg)
    files, added, heads = cache_manifests(cfg.cache, read_manifests(cfg.manifests, cfg.classes), cfg.storage_options)
    manifest = combine(files, heads)
    video_paths: dict[str, Path | None] = {}
    for file in files:  # each file's videos are found the way its format names them
        video_paths.update({v: p for v, p in resolve_videos(file, cfg.videos).items() if video_paths.get(v) is None})
    frames = np.array([_planned_frames(policy, s, video_paths.get(s.video)) for s in manifest.segments], dtype=np.int64)
    rows = np.array([rows_from_frames(policy, int(n)) for n in frames], dtype=np.int64)
    offsets, layout = cache.plan_layout(rows, cfg.segments_per_task)
    return Plan(manifest, video_paths, policy, rows, offsets, layout, frames, added)


def write_plan_segments(target: cache.Cache, cfg: ExtractConfig, plan: Plan) -> None:
    """Append the plan's new files to the cache's segments table; the table must then be the plan's segments."""
    add_manifests(target, read_manifests(cfg.manifests, cfg.classes))
    if target.segments_info["count"] != len(plan.manifest.segments):
        raise ExtractError(f"the segments table of {cfg.cache} changed while this run was planned ({target.segments_info['count']} segments, "
                           f"the plan {len(plan.manifest.segments)}): run the command again")


def _sampling(cfg: ExtractConfig) -> SamplingPolicy:
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
    clip_frames = cfg.clip_frames or (policy.frames if policy.frames is not None else preset_frames)
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
            raise ExtractError(f"{'/'.join(given)}: --modality {cfg.modality} runs no model: drop {'them' if len(given) > 1 else 'it'}")
    check_number(ExtractError, "--batch-size", cfg.batch_size, at_least=1)
    check_number(ExtractError, "--segments-per-task", cfg.segments_per_task, at_least=1)
    check_number(ExtractError, "--workers", cfg.workers, at_least=0)
    if cfg.name is not None:
        check_plain_name(ExtractError, "--name", cfg.name)
    if not Path(cfg.videos).is_dir():
        raise ExtractError(f"videos folder {cfg.videos} {'is not a folder' if Path(cfg.videos).exists() else 'not found'}: check the --videos path")


def _planned_frames(policy: SamplingPolicy, segment, path: Path | None) -> int:
    if policy.frames is not None or math.isfinite(segment.stop_sec):
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


def teacher_provenance(cfg: ExtractConfig, spec: BackboneSpec, settings: dict, policy: SamplingPolicy, precision: str | None) -> cache.Provenance:
    """What the teacher's rows depend on; a modality without a model (frames, layout) has no weights, head or
    precision (layout's settings hold its box file's sha256)."""
    if not get_modality(cfg.modality).has_model:
        return cache.Provenance(modality=cfg.modality, backbone=spec.backbone, in_chans=spec.in_chans, preprocessing=settings, sampling=policy.to_json())
    return cache.Provenance(
        modality=cfg.modality, backbone=spec.backbone, weights=weights_id(spec), head=head_id(spec), in_chans=spec.in_chans,
        preprocessing=settings, sampling=policy.to_json(), precision=precision,
    )


@dataclass
class TeacherSetup:
    """The teacher a run writes, before any row: its backbone, settings, where it runs, its row shape, its provenance."""

    spec: BackboneSpec
    options: dict  # the modality's options, resolved
    settings: dict
    device: str
    precision: str | None
    feature_dim: int
    frame_shape: tuple[int, int, int] | None
    provenance: cache.Provenance


def setup_teacher(cfg: ExtractConfig, plan: Plan) -> TeacherSetup:
    """Build the backbone once (no forward pass), so a bad backbone/weights/head fails before any work."""
    modality = get_modality(cfg.modality)
    options = modality.resolve_options(cfg.options)
    spec = BackboneSpec(backbone=cfg.backbone or modality.default_backbone, in_chans=modality.in_chans(options), weights=cfg.weights, head=cfg.head, seed=cfg.seed)
    if modality.has_model:
        backbone = create_backbone(spec, plan.manifest.heads)
        settings = modality.settings(options, backbone.data_config)
        device = str(pick_device(cfg.device))
        precision: str | None = resolve_precision(cfg.precision, device)
        feature_dim, frame_shape = backbone.feature_dim, None
    else:  # frames, layout: nothing to build; the rows are the modality's own
        settings = modality.settings(options, {})
        device, precision = "cpu", None
        shape = modality.row_shape(settings)
        feature_dim, frame_shape = (shape[0], None) if len(shape) == 1 else (0, shape)
    return TeacherSetup(spec, options, settings, device, precision, feature_dim, frame_shape, teacher_provenance(cfg, spec, settings, plan.policy, precision))


@dataclass
class Resume:
    """What a run would do to a teacher the cache holds already (`extract --dry-run` says it instead of a fresh plan)."""

    teacher_key: str
    tasks: int  # the teacher's tasks once it covers every planned segment (its layout, fixed when it was created)
    to_run: int  # of them: not recorded yet, new segments', and with --retry-failed those with failed segments
    segments_done: int
    segments_per_task: int


def resume_state(cfg: ExtractConfig, plan: Plan) -> Resume | None:
    """The stored teacher a run of `cfg` would resume, read-only; None when the run would create a new one.
    Builds the backbone (no forward pass) only when a stored teacher could be it."""
    root = cache.open_existing(cfg.cache, cfg.storage_options)
    if root is None:
        return None
    stored = {t.key: t for t in root.teachers()}
    backbone = cfg.backbone or get_modality(cfg.modality).default_backbone
    if cfg.name not in stored and not any(t.provenance.modality == cfg.modality and t.provenance.backbone == backbone for t in stored.values()):
        return None  # no stored teacher can have this identity: skip building the backbone
    provenance = setup_teacher(cfg, plan).provenance
    teacher = stored.get(root.key_for(provenance, cfg.name))
    if teacher is None:
        return None
    cache.refuse_other_identity(teacher, provenance)  # what the run itself would say
    layout, records = teacher.layout, teacher.records()
    todo = tasks_to_run(records, layout.tasks, cfg.retry_failed)
    covered = layout.task_segments(layout.tasks - 1).stop if layout.tasks else 0
    grown = -(-max(0, len(plan.manifest.segments) - covered) // layout.segments_per_task)  # the extent a run adds for new segments
    return Resume(teacher.key, layout.tasks + grown, len(todo) + grown, segments_done(layout, records, todo), layout.segments_per_task)


def tasks_to_run(records: dict[int, cache.TaskRecord], tasks: int, retry_failed: bool) -> list[int]:
    """The tasks without a record, and with `retry_failed` those whose record has failed segments."""
    return [t for t in range(tasks) if t not in records or (retry_failed and records[t].failed)]


def segments_done(layout: cache.Layout, records: dict[int, cache.TaskRecord], todo: list[int]) -> int:
    """Segments of the recorded tasks a run leaves as they are."""
    return sum(len(layout.task_segments(t)) for t in records if t not in todo)


def run_extraction(cfg: ExtractConfig, plan: Plan | None = None, on_progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print) -> Summary:
    """Extract every segment not done yet into the cache; safe to kill and rerun at any point."""
    started = time.perf_counter()
    plan = plan or plan_extraction(cfg)
    modality = get_modality(cfg.modality)
    heads = plan.manifest.heads
    setup = setup_teacher(cfg, plan)
    spec, settings, options, device, precision = setup.spec, setup.settings, setup.options, setup.device, setup.precision
    names = _source_names(modality, options, settings, plan, cfg.videos, log)  # before any work: a mismatch is said first

    target = cache.open_cache(cfg.cache, mode="a", storage_options=cfg.storage_options)
    write_plan_segments(target, cfg, plan)
    key = target.key_for(setup.provenance, cfg.name)  # a teacher extracted before, by any egodistill version, resumes
    with target.lease(key) as renew:
        teacher, resumed = target.create_teacher(key, setup.provenance, setup.feature_dim, plan.offsets, plan.layout, heads if spec.head else {}, setup.frame_shape)
        if modality.has_model and teacher.cost is None:
            _record_cost(teacher, spec, settings, plan.policy)
        summary = _run_tasks(cfg, plan, spec, settings, options, names, device, precision, teacher, resumed, heads, on_progress, renew, log)
    # A fresh handle: the workers wrote the records, and a remote store's listings may be cached.
    summary.ledger = cache.open_cache(cfg.cache, mode="r", storage_options=cfg.storage_options).teacher(teacher.key).ledger()
    summary.failed = len(summary.ledger)
    summary.seconds = time.perf_counter() - started
    return summary


def _record_cost(teacher: cache.Teacher, spec: BackboneSpec, settings: dict, policy: SamplingPolicy) -> None:
    """Count the backbone's parameters and FLOPs per row once, here (on the meta device: no weights, no compute),
    so evaluation reads them; a clip backbone's window of `clip.frames` frames gives `clip.steps` rows."""
    height, width = settings["input_size"][-2:]
    frames, steps = (policy.clip.frames, policy.clip.steps) if policy.clip else (1, 1)
    try:
        params, flops = backbone_family(spec.backbone).cost(spec.backbone, spec.in_chans, int(height), int(width), frames)
    except Exception:  # noqa: BLE001 - a model that cannot be traced on the meta device: its cost stays unknown
        return
    teacher.record_cost(params, flops / steps)


def _source_names(modality: Modality, options: dict, settings: dict, plan: Plan, videos_root: str, log) -> dict[str, str]:
    """A modality with a source of its own (layout's box file): manifest video -> its name there, by id, file stem
    or relative path (extract/names.py); one line when most segments find none."""
    if modality.names is None:
        return {}
    names = list(modality.names(options, settings))
    relative = {v: _relative(p, videos_root) for v, p in plan.video_paths.items()}
    matched = match_names(names, plan.video_paths, relative)
    source = modality.options[0].flag if modality.options else f"--modality {modality.name}'s source"  # the source is its first option
    note = mismatch_note(f"name in {source}", names, plan.video_paths, matched, [s.video for s in plan.manifest.segments])
    if note:
        log(note)
    return matched


def _relative(path: Path | None, videos_root: str) -> str | None:
    if path is None:
        return None
    try:
        return path.resolve().relative_to(Path(videos_root).resolve()).as_posix()
    except ValueError:
        return None


def _run_tasks(cfg: ExtractConfig, plan: Plan, spec: BackboneSpec, settings: dict, options: dict, names: dict[str, str], device: str,
               precision: str | None, teacher: cache.Teacher, resumed: bool, heads: dict[str, int], on_progress, renew, log) -> Summary:
    """Run every task of the teacher that has no record yet (or failed segments, with --retry-failed)."""
    key, layout = teacher.key, teacher.layout
    records = teacher.records()
    todo = tasks_to_run(records, layout.tasks, cfg.retry_failed)
    summary = Summary(teacher_key=key, segments=layout.segments, done_before=segments_done(layout, records, todo))
    log(f"teacher {key}: {'resuming' if resumed else 'new'}, {len(todo)} of {layout.tasks} tasks to run on {device} ({precision or 'no model'})")
    if cfg.retry_failed:  # a retried task rewrites its record; until then its segments must not look done
        teacher.drop_records([t for t in todo if t in records])

    workers = cfg.workers if cfg.workers is not None else 0 if get_modality(cfg.modality).rows else _default_workers(device)  # a source of its own: no decode to spread
    task_spec = TaskSpec(
        cache=cfg.cache, teacher_key=key, backbone=spec, modality=cfg.modality, settings=settings, policy=plan.policy,
        heads=heads if spec.head else {}, device=device, precision=precision, batch_size=cfg.batch_size,
        threads=cfg.threads or (max(1, (os.cpu_count() or 1) // max(workers, 1)) if cfg.scheduler is None else 1),
        storage_options=cfg.storage_options, options=options,
    )
    tasks = [(t, _jobs(plan, layout, t, names)) for t in todo]
    summary.mode = f"Dask at {cfg.scheduler}" if cfg.scheduler else "in process" if workers == 0 else f"local Dask, {workers} workers"
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


def _jobs(plan: Plan, layout: cache.Layout, task: int, names: dict[str, str]) -> list[SegmentJob]:
    jobs = []
    for i in layout.task_segments(task):
        s = plan.manifest.segments[i]
        path = plan.video_paths.get(s.video)
        frames = int(plan.frames_per_segment[i]) if plan.frames_per_segment is not None else None
        jobs.append(SegmentJob(i, s.id, str(path) if path else None, s.start_sec, s.stop_sec, int(plan.rows_per_segment[i]), frames, names.get(s.video)))
    return jobs


def _default_workers(device: str) -> int:
    """0 (in process) on a CPU and on one GPU, one Dask worker per GPU when there are several. Measured
    (bench/RESULTS.md, issue 17): a local cluster costs seconds to start and its single-thread workers
    split the cores the model would use whole, so in process is fastest on one machine."""
    if device.startswith("cuda"):
        import torch
        return torch.cuda.device_count() if torch.cuda.device_count() > 1 else 0
    return 0


def _run_in_process(spec: TaskSpec, tasks: list[tuple[int, list[SegmentJob]]], summary: Summary, on_progress) -> None:
    """--workers 0 (the default on one machine): no cluster, tasks one after another here."""
    done = summary.done_before
    for task, jobs in tasks:
        _account(summary, run_task(spec, task, jobs))
        done += len(jobs)
        if on_progress:
            on_progress(done, summary.segments)


def _account(summary: Summary, result: TaskResult) -> None:
    if not result.skipped:
        summary.extracted += result.segments - result.failed
        summary.rows += result.rows
        summary.timings.add(result.timings)
        summary.fallbacks.extend(result.fallbacks)
        start, end = result.working
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
