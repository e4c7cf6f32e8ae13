"""The `egodistill` command line: a thin Typer layer over extract, cache and student."""

from __future__ import annotations

import sys
from dataclasses import fields
from enum import Enum
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from egodistill.common import EgodistillError, ExtractError, dumps
from egodistill.student.step import SCHEDULES, SCHEMES, FitConfig, StepConfig

app = typer.Typer(help="Run heavy multimodal teachers once into a shared Zarr cache; distil cheap students from it.", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
cache_app = typer.Typer(help="Inspect, check, convert and share a cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
manifest_app = typer.Typer(help="Write manifests: dense unlabelled windows over whole videos.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")
console = Console()
errors = Console(stderr=True)

EXIT_FAILED_SEGMENTS = 3


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class _ExtractCommand(TyperCommand):
    """`extract --help` lists each modality's own options, read from the registry when help is asked for
    (so `egodistill` does not import the extract stage for other commands)."""

    def format_help(self, ctx, formatter) -> None:
        from egodistill.extract.modalities import options_help

        self.epilog = options_help()
        super().format_help(ctx, formatter)


@app.command(cls=_ExtractCommand, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def extract(
    ctx: typer.Context,
    manifest: Annotated[list[str], typer.Option(help="EPIC-KITCHENS-100 CSV, SSv2 JSON, or generic CSV (segment_id,video,start_sec,stop_sec,split,label:<head>[:<classes>]...). Repeat it for each file of a dataset (train, validation, test: each keeps its split); files the cache does not hold yet are appended to it.")],
    cache: Annotated[str, typer.Option(help="Cache location: a local path or an fsspec URL (s3://, gs://, file://).")],
    videos: Annotated[str, typer.Option(help="Folder the manifest's videos are found under.")] = ".",
    modality: Annotated[str, typer.Option(help="rgb, flow, audio, layout (boxes from --boxes FILE, no model), or frames (the sampled RGB frames as uint8, no model: for end-to-end students).")] = "rgb",
    backbone: Annotated[Optional[str], typer.Option(help="timm model name, or a torchvision clip model: swin3d_t/s/b, mvit_v1_b, mvit_v2_s, s3d, r2plus1d_18, r3d_18, mc3_18 (default: resnet50 for rgb/flow, resnet18 for audio).")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Backbone weights: a state dict or .safetensors file, or 'timm' for timm's own (needs its hub). Default: random init with --seed.")] = None,
    head: Annotated[Optional[str], typer.Option(help="Linear heads file (<head>.weight/.bias per output head); with it the run writes teacher logits.")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Segment-uniform N frames per segment (default 8).")] = None,
    fps: Annotated[Optional[float], typer.Option(help="Instead of --frames: one row every 1/F seconds.")] = None,
    clip_frames: Annotated[Optional[int], typer.Option(help="Clip backbones: sampled frames per window (default: the --frames as one clip; without --frames/--fps the clip length of the model's weights preset).")] = None,
    clip_stride: Annotated[Optional[int], typer.Option(help="Clip backbones: sampled frames between window starts (default: --clip-frames, no overlap).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Teacher key (default: <modality>-<backbone>-<provenance hash>).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Local Dask workers (default 0 = no cluster, run here, on a CPU or one GPU; one per GPU when there are several).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of an existing Dask scheduler, e.g. tcp://head:8786.")] = None,
    device: Annotated[Device, typer.Option(help="Where teachers run.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(help="bf16 autocast (+channels_last) or fp32; auto = bf16 where the hardware has it.")] = Precision.auto,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass (clip backbones: frames, in whole windows).")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of a randomly initialised backbone.")] = 0,
    segments_per_task: Annotated[Optional[int], typer.Option(help="Segments per Dask task (= logits chunk); fixed when the teacher is created.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Rerun tasks whose ledger has failed segments.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Read the manifest, find videos, show the planned rows and shards (of a teacher the cache holds already: its tasks left to run); run no model, write nothing.")] = False,
    classes: Annotated[Optional[list[str]], typer.Option(help="HEAD=FILE: the head's classes (one name a line, EPIC's classes CSV or SSv2's labels JSON) sizing a generic CSV's head; repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary (counts, timings, ledger) as JSON on stdout; progress goes to stderr.")] = False,
) -> None:
    """Run one teacher over a dataset's segments into the cache (resumable: rerun to finish).

    Each modality takes options of its own (e.g. --flow tvl1 --flow-stack 5); they are listed below."""
    from egodistill.extract.modalities import get_modality
    from egodistill.extract.run import ExtractConfig, plan_extraction, resume_state, run_extraction

    cfg = ExtractConfig(
        manifest=manifest, videos=videos, cache=cache, modality=modality, backbone=backbone, weights=weights, head=head,
        frames=frames, fps=fps, clip_frames=clip_frames, clip_stride=clip_stride, options=_modality_options(ctx.args), name=name, workers=workers, scheduler=scheduler,
        device=device.value, precision=precision.value, batch_size=batch_size, seed=seed,
        segments_per_task=segments_per_task, retry_failed=retry_failed, classes=_classes(classes),
    )
    plan = plan_extraction(cfg)
    if not as_json:  # stdout holds the JSON alone
        _print_plan(plan, needs_videos=get_modality(modality).rows is None, resume=resume_state(cfg, plan) if dry_run else None)
    if dry_run:
        return
    summary = _run_with_progress(run_extraction, cfg, plan, errors if as_json else console)
    if as_json:
        print(dumps(summary.to_json(), indent=2))
    else:
        _print_summary(summary)
    if not summary.ok:
        raise typer.Exit(EXIT_FAILED_SEGMENTS)


def _classes(specs: list[str] | None) -> dict[str, list[str]]:
    """`--classes verb=FILE --classes noun=FILE` -> {"verb": [97 names], "noun": [300 names]}."""
    from egodistill.extract.manifests import read_classes

    return dict(read_classes(spec) for spec in specs or [])


def _modality_options(args: list[str]) -> dict[str, str]:
    """`--flow tvl1 --flow-stack=5` -> {"flow": "tvl1", "flow_stack": "5"}; the modality checks names and values."""
    options, rest = {}, list(args)
    while rest:
        flag = rest.pop(0)
        if not flag.startswith("--"):
            raise ExtractError(f"unexpected argument {flag!r}: see `egodistill extract --help`")
        name, has_value, value = flag[2:].partition("=")
        if not has_value:
            if not rest or rest[0].startswith("--"):
                raise ExtractError(f"{flag} needs a value: see `egodistill extract --help`")
            value = rest.pop(0)
        options[name.replace("-", "_")] = value
    return options


def _run_with_progress(run, cfg, plan, out: Console = console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("segments"), TimeElapsedColumn(), TimeRemainingColumn(), console=out, transient=False) as progress:
        bar = progress.add_task(f"extract {cfg.modality}", total=plan.layout.segments)
        return run(cfg, plan, on_progress=lambda done, total: progress.update(bar, completed=done), log=progress.console.print)


def _print_plan(plan, needs_videos: bool = True, resume=None) -> None:
    m, layout = plan.manifest, plan.layout
    found = len(plan.video_paths) - len(plan.missing_videos)
    console.print(
        f"manifest {m.path} ({m.format}): {len(m.segments)} segments, heads "
        f"{', '.join(f'{h} ({c})' for h, c in m.heads.items()) or 'none'}; videos found {found} of {len(plan.video_paths)}"
        + (f"; new to the cache: {', '.join(f'{a.path} ({len(a.segments)})' for a in plan.added)}" if plan.added and len(plan.added) < len(m.path.split(", ")) else ""),
        markup=False, highlight=False, soft_wrap=True,
    )
    if plan.missing_videos and needs_videos:  # a modality with a source of its own (layout) reads no video
        shown = ", ".join(plan.missing_videos[:5]) + (f" ... (+{len(plan.missing_videos) - 5})" if len(plan.missing_videos) > 5 else "")
        console.print(f"[yellow]missing videos ({len(plan.missing_videos)}): {shown}[/] — their segments go to the ledger as failed")
    shards = -(-layout.rows // layout.rows_per_shard) if layout.rows else 0
    if resume is not None:  # the run resumes it in its own layout, not the fresh plan's
        console.print(f"plan: sampling {plan.policy.to_json()}, {layout.rows} rows; teacher {resume.teacher_key} exists: {resume.to_run} of {resume.tasks} tasks "
                      f"to run ({resume.segments_done} of {layout.segments} segments done, tasks of {resume.segments_per_task} segments)", markup=False, highlight=False, soft_wrap=True)
        return
    console.print(
        f"plan: sampling {plan.policy.to_json()}, {layout.rows} rows, {layout.tasks} tasks of {layout.segments_per_task} segments, "
        f"{shards} shards of {layout.rows_per_shard} rows (chunks of {layout.rows_per_chunk})"
    )


def _time_rows(summary) -> list[tuple[str, str]]:
    """Where the time went: decode and preprocess summed over the decode threads (they overlap the model),
    forward and write on the model's thread, wait = the model idle for want of decoded segments."""
    t, working = summary.timings, summary.working_seconds
    share = (lambda v: f" ({100 * v / working:.0f} % of {working:.1f} s working)") if working else (lambda v: "")
    return [("decode (threads)", f"{t.decode:.1f} s"), ("preprocess (threads)", f"{t.preprocess:.1f} s"),
            ("model forward", f"{t.forward:.1f} s{share(t.forward)}"), ("write", f"{t.write:.1f} s"),
            ("model idle (wait)", f"{t.wait:.1f} s{share(t.wait)}")]


def _print_summary(summary) -> None:
    table = Table(title=f"teacher {summary.teacher_key}", show_header=False)
    for label, value in (
        ("segments", summary.segments), ("done before this run", summary.done_before), ("extracted now", summary.extracted),
        ("failed (ledger)", summary.failed), ("rows written", summary.rows), ("wall time", f"{summary.seconds:.1f} s"),
        ("ran", summary.mode), *_time_rows(summary),
    ):
        table.add_row(label, str(value))
    console.print(table)
    if summary.fallbacks:
        console.print(f"decord could not decode {len(summary.fallbacks)} video(s); PyAV was used (first: {summary.fallbacks[0]})")
    for entry in summary.ledger[:10]:
        console.print(f"[red]failed[/] {entry.id}: {entry.reason}")
    if len(summary.ledger) > 10:
        console.print(f"... and {len(summary.ledger) - 10} more: `egodistill cache info CACHE --json` lists them all")
    for crash in summary.crashed_tasks:
        console.print(f"[red]task crashed[/] {crash} — rerun the same command to retry it")


@cache_app.command("info")
def cache_info(
    location: Annotated[str, typer.Argument(help="Cache path or URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What a cache holds: segments, teachers with provenance, arrays, done and failed segments."""
    from egodistill import cache as cache_lib

    info = cache_lib.describe(cache_lib.open_cache(location, mode="r"))
    if as_json:
        print(dumps(info, indent=2))
        return
    seg = info["segments"]
    console.print(f"cache {location}: {seg['count']} segments, heads {seg['heads']}, schema {info['schema'].get('schema_version')}")
    for t in info["teachers"]:
        p = t["provenance"]
        sampling = ",".join(f"{k}={v}" for k, v in p["sampling"].items())
        console.print(
            f"  {t['key']}  {t['modality']}  {p['backbone']}  weights {str(p['weights'])[:23]}  {sampling}  {_row_shape(t)}  "
            f"rows={t['rows']}  done {t['segments_done']}  failed {t['segments_failed']}  pending {t['segments_pending']}"
            + (f"  logits {t['heads']}" if t["heads"] else ""),
            markup=False, highlight=False, soft_wrap=True,
        )


def _row_shape(t: dict) -> str:
    """What one row of a teacher holds: `D=2048` features, or `frames 128x128x3` uint8 (--modality frames)."""
    return f"frames {'x'.join(map(str, t['frame_shape']))}" if t.get("frame_shape") else f"D={t['feature_dim']}"


@cache_app.command("ls")
def cache_ls(location: Annotated[str, typer.Argument(help="Cache path or URL (s3://, gs://, http(s)://, file://).")]) -> None:
    """The catalog: one row per teacher with provenance, who and when, rows and completeness."""
    from egodistill import cache as cache_lib

    info = cache_lib.describe(cache_lib.open_cache(location, mode="r"))
    seg = info["segments"]
    console.print(f"cache {location}: {seg['count']} segments, heads {seg['heads']}, schema {info['schema'].get('schema_version')}", markup=False, highlight=False)
    for t in info["teachers"]:
        p = t["provenance"]
        finished = t["segments_done"] + t["segments_failed"]
        done = f"{finished}/{seg['count']}" + (" complete" if t["complete"] else f" ({100 * finished // max(seg['count'], 1)}%, {t['segments_pending']} pending)")
        sampling = ",".join(f"{k}={v}" for k, v in p.get("sampling", {}).items())
        created = (t["created_at"] or "")[:16].replace("T", " ")
        imported = f"  imported from {t['imported']['from']}" if t.get("imported") else ""
        console.print(
            f"  {t['key']}  {t['modality']}  {p.get('backbone')}  weights {str(p.get('weights'))[:23]}  {sampling}  {_row_shape(t)}  "
            f"rows={t['rows']}  done {done}  failed {t['segments_failed']}  by {t['created_by']} {created}  egodistill {t.get('egodistill')}{imported}",
            markup=False, highlight=False, soft_wrap=True,
        )


@cache_app.command("verify")
def cache_verify(
    location: Annotated[str, typer.Argument(help="Cache path or URL.")],
    teacher: Annotated[Optional[str], typer.Option(help="Only this teacher key (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="Forget the task records of damaged objects and delete those objects (intact ones are kept), so the command that made the teacher writes them again.")] = False,
) -> None:
    """Re-read every shard and chunk and compare it with the checksum its task recorded; exit 2 when any changed."""
    from egodistill import cache as cache_lib
    from egodistill.cache.verify import repair_cache, verify_cache

    keys = [teacher] if teacher else None
    report = repair_cache(cache_lib.open_cache(location, mode="r+"), keys) if repair else verify_cache(cache_lib.open_cache(location, mode="r"), keys)
    if as_json:
        print(dumps(report, indent=2))
    else:
        for t in report["teachers"]:
            state = "ok" if not t["damaged"] else f"DAMAGED ({len(t['damaged'])})"
            console.print(f"{t['key']}: {state}: {t['objects_checked']} objects checked, {t['tasks_done']}/{t['tasks']} tasks done"
                          + (f", incomplete tasks {t['tasks_incomplete']} (written but unrecorded: not data, rerun extract)" if t["tasks_incomplete"] else "")
                          + (f", {t['tasks_pending']} pending" if t["tasks_pending"] else "")
                          + (f", {len(t['tasks_without_checksums'])} tasks without checksums (decoded only)" if t["tasks_without_checksums"] else ""),
                          markup=False, highlight=False, soft_wrap=True)
            for d in t["damaged"]:
                rows = f" rows {d['rows'][0]}:{d['rows'][1]}" if d["rows"] else ""
                console.print(f"  {d['problem']}: {d['object']} (array {d['array']}, task {d['task']}{rows})", markup=False, highlight=False, soft_wrap=True)
            for line in _repair_lines(location, t) if repair else []:
                console.print(line, markup=False, highlight=False, soft_wrap=True)
        if not report["ok"] and not repair:
            console.print(f"run `egodistill cache verify {location} --repair`, then the extract command again", markup=False, highlight=False, soft_wrap=True)
    if not report["ok"]:
        raise typer.Exit(EXIT_DAMAGED)


def _repair_lines(location: str, t: dict) -> list[str]:
    """What `cache verify --repair` did to one teacher, and the command that writes its forgotten tasks again."""
    r, lines = t["repair"], []
    if r["refused"]:
        lines.append(f"teacher {t['key']}: not repaired: {r['refused']}")
    if r["forgotten"]:
        spans = ", ".join(f"{a}-{b - 1}" for a, b in r["segments"])
        rerun = {"extract": "rerun the extract command that made it to re-extract them", "fit-teachers": "rerun fit-teachers to fit it again",
                 "import-h5": "`egodistill cache rm` it and import it again (cache import-h5)"}[r["remade_by"]]
        lines.append(f"teacher {t['key']}: {len(r['forgotten'])} task(s) forgotten (segments {spans}): {rerun}")
    if r["not_forgotten"]:
        lines.append(f"teacher {t['key']}: {', '.join(sorted({d['object'] for d in r['not_forgotten']}))} changed and no task writes it: "
                     f"restore {location} from a copy, or `egodistill cache rm` the teacher and make it again")
    return lines


EXIT_DAMAGED = 2


@cache_app.command("rm")
def cache_rm(
    location: Annotated[str, typer.Argument(help="Cache path or URL (not http).")],
    teacher: Annotated[str, typer.Option(help="Key of the teacher to remove (see `cache ls`).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove one teacher (its arrays, task records and ledger); other teachers are not touched."""
    from egodistill import cache as cache_lib

    target = cache_lib.open_cache(location, mode="r+")
    target.teacher(teacher)  # a wrong key is one line naming the teachers there, before any prompt
    if not yes and not typer.confirm(f"remove teacher {teacher} from {location}?"):
        raise typer.Exit(1)
    target.remove_teacher(teacher)
    console.print(f"removed {teacher} from {location}", markup=False, highlight=False)


@cache_app.command("upgrade")
def cache_upgrade(location: Annotated[str, typer.Argument(help="Cache path or URL (not http).")]) -> None:
    """Convert a cache written by an older egodistill to this schema, in place (teachers' arrays untouched)."""
    from egodistill.cache.upgrade import upgrade_cache

    before, after = upgrade_cache(location)
    message = f"{location}: schema {before} -> {after}" if before != after else f"{location} already has schema {after}: nothing to do"
    console.print(message, markup=False, highlight=False, soft_wrap=True)


@cache_app.command("export-h5")
def cache_export_h5(
    location: Annotated[str, typer.Argument(help="Cache path or URL.")],
    out: Annotated[str, typer.Argument(help="HDF5 file to write.")],
    teacher: Annotated[str, typer.Option(help="Key of the teacher to export (see `cache ls`).")],
) -> None:
    """Write one teacher and the segments table to an HDF5 file (same names as the Zarr layout)."""
    from egodistill.cache.hdf5 import export_teacher

    path = export_teacher(location, teacher, out)
    console.print(f"exported {teacher} to {path}", markup=False, highlight=False)


@cache_app.command("init")
def cache_init(
    manifest: Annotated[list[str], typer.Option(help="EPIC-KITCHENS-100 CSV, SSv2 JSON, or generic CSV (segment_id,video,start_sec,stop_sec,split,label:<head>[:<classes>]...). Repeat it for each file; files the cache does not hold yet are appended.")],
    cache: Annotated[str, typer.Option(help="Cache location: a local path or an fsspec URL (created if absent).")],
    classes: Annotated[Optional[list[str]], typer.Option(help="HEAD=FILE: the head's classes (one name a line, EPIC's classes CSV or SSv2's labels JSON) sizing a generic CSV's head; repeatable.")] = None,
) -> None:
    """Write the manifests' segments table alone (no videos needed), e.g. before `cache import`; add a dataset's other files to a cache."""
    from egodistill.extract.manifests import init_cache

    added, count = init_cache(manifest, cache, _classes(classes))
    for m in added:
        console.print(f"{cache}: added {len(m.segments)} segments from {m.path} ({m.format}, split {', '.join(sorted({s.split for s in m.segments}))}), heads "
                      f"{', '.join(f'{h} ({c})' for h, c in m.heads.items()) or 'none'}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"{cache}: {count} segments" + ("" if added else " (it already held every file given)"), markup=False, highlight=False, soft_wrap=True)


@manifest_app.command("windows")
def manifest_windows(
    videos: Annotated[str, typer.Option(help="Folder of videos (searched recursively: .mp4, .webm, .mkv, .avi, .mov).")],
    out: Annotated[str, typer.Option(help="Generic CSV to write (segment_id,video,start_sec,stop_sec,split; no labels).")],
    window: Annotated[float, typer.Option(help="Window length, seconds.")] = 2.0,
    stride: Annotated[float, typer.Option(help="Seconds between window starts.")] = 1.0,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Manifest whose segments no window may overlap (same video by file stem); repeatable.")] = None,
    split: Annotated[str, typer.Option(help="Split of the windows (train: distil on them; another name, e.g. unlabelled, keeps them apart for train-student --unlabelled-split).")] = "train",
) -> None:
    """Dense unlabelled windows over whole videos, as a manifest a cache can add (`cache init --manifest`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from egodistill.extract.windows import video_windows, write_windows

    with Progress(TextColumn("[bold]windows"), BarColumn(), MofNCompleteColumn(), TextColumn("videos"), console=console, transient=True) as progress:
        bar = progress.add_task("windows", total=None)
        windows, unreadable = video_windows(videos, window, stride, exclude or [], on_progress=lambda done, total: progress.update(bar, completed=done, total=total))
    path = write_windows(windows, out, split)
    for line in unreadable[:5]:
        console.print(f"skipped {line}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"{path}: {len(windows)} windows of {window:g} s every {stride:g} s over {len({w.video for w in windows})} videos (split {split})",
                  markup=False, highlight=False, soft_wrap=True)


class ImportFormat(str, Enum):
    auto = "auto"
    h5 = "h5"
    npy = "npy"
    pt = "pt"
    lmdb = "lmdb"


@cache_app.command("import")
def cache_import(
    source: Annotated[str, typer.Argument(help="Features a lab already has: an HDF5 file, a folder of .npy or .pt files, or an LMDB folder.")],
    cache: Annotated[str, typer.Option(help="Cache to add the teacher to (it must hold the segments table: `cache init`).")],
    source_format: Annotated[ImportFormat, typer.Option("--format", help="h5 (also export-h5 files), npy (<video>.npy or <segment_id>.npy), pt (Ego4D <video>.pt), lmdb (RULSTM); auto: from the path.")] = ImportFormat.auto,
    modality: Annotated[Optional[str], typer.Option(help="Modality of the features (rgb, flow, audio, ...); not needed for export-h5 files.")] = None,
    fps: Annotated[Optional[float], typer.Option(help="Frame rate the rows or frame numbers count at (npy per video, pt, lmdb; h5 without times).")] = None,
    stride: Annotated[Optional[int], typer.Option(help="pt: frames between rows (Ego4D: 16).")] = None,
    window: Annotated[Optional[int], typer.Option(help="pt: frames each row covers (Ego4D: 32).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Teacher key (default: the exported key, or <modality>-<backbone>-<hash>).")] = None,
    backbone: Annotated[str, typer.Option(help="What produced the features, recorded in the provenance.")] = "imported",
    by: Annotated[str, typer.Option(help="Names are segment ids, video ids, or auto (whichever matches more).")] = "auto",
) -> None:
    """Add features extracted elsewhere as a teacher, cut into the cache's segments by time (segments without rows go to the ledger)."""
    from egodistill.extract.importers import detect_format

    fmt = detect_format(source) if source_format is ImportFormat.auto else source_format.value
    _import(source, fmt, cache, modality, name=name, backbone=backbone, by=by, fps=fps, stride=stride, window=window)


def _import(source: str, fmt: str, cache: str, modality: str | None, **options) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from egodistill.cache.hdf5 import import_export, is_export
    from egodistill.extract.importers import import_source

    if fmt == "h5" and is_export(source):
        key = import_export(source, cache, options["name"])
    elif modality is None:
        raise EgodistillError(f"{source} is not an egodistill export: say what its features are with --modality rgb|flow|audio|...")
    else:
        progress = Progress(TextColumn("[bold]import"), BarColumn(), MofNCompleteColumn(), TextColumn("segments"), TimeElapsedColumn(), console=console)
        bar = progress.add_task("import", total=None)

        def on_progress(done: int, total: int) -> None:  # the bar starts once the source and the cache are checked
            progress.start()
            progress.update(bar, completed=done, total=total)

        try:
            key = import_source(source, fmt, cache, modality, on_progress=on_progress, **options)
        finally:
            progress.stop()
    console.print(f"imported {source} as teacher {key}; see `egodistill cache ls {cache}`", markup=False, highlight=False)


@cache_app.command("import-h5")
def cache_import_h5(
    file: Annotated[str, typer.Argument(help="An HDF5 file: an `export-h5` file, or features with one T x D dataset per segment or per video.")],
    cache: Annotated[str, typer.Option(help="Cache to add the teacher to (path or URL, not http).")],
    modality: Annotated[Optional[str], typer.Option(help="Modality of imported features (rgb, flow, audio, ...); not needed for export-h5 files.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Teacher key (default: the exported key, or <modality>-<backbone>-<hash>).")] = None,
    backbone: Annotated[str, typer.Option(help="What produced imported features, recorded in the provenance.")] = "imported",
    by: Annotated[str, typer.Option(help="Dataset names are segment ids, video ids, or auto (whichever matches more).")] = "auto",
    fps: Annotated[Optional[float], typer.Option(help="Rows per second of per-video features without timestamps.")] = None,
) -> None:
    """`cache import --format h5`: an export comes back bit-identical; other files become a new teacher."""
    from egodistill.cache.hdf5 import open_h5

    open_h5(file).close()  # a missing or non-HDF5 file is named as such
    _import(file, "h5", cache, modality, name=name, backbone=backbone, by=by, fps=fps)


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Folder for the data, the cache, the runs and report.html.")] = "demo-run",
    small: Annotated[bool, typer.Option(help="A smoke test for CI (60 clips, 2 seeds, short budgets): not the protocol, its verdicts decide nothing.")] = False,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds, each fitting the teachers and training every student (default: the protocol's 5; 2 with --small).")] = None,
    workers: Annotated[int, typer.Option(help="Processes that encode the clips and run seeds side by side (0: all in this process); extraction runs in this process.")] = 2,
    finetune: Annotated[bool, typer.Option(help="Also protocol v3's end-to-end students on stored frames (longer: prints its own time).")] = False,
    smaller_student: Annotated[bool, typer.Option(help="Also protocol v3's masked student on smaller extractors (P2.4k; three more extractions).")] = False,
) -> None:
    """The whole pipeline on built-in data: generate clips, extract teachers once, distil students, test both papers' claims (docs/demo-protocol.md), report."""
    from egodistill.demo.pipeline import run_demo, summary_lines

    results, report = run_demo(out, small=small, seeds=seeds, workers=workers, extract=_run_with_progress, log=console.print, finetune=finetune, smaller_student=smaller_student)
    for line in summary_lines(results):
        console.print(line, markup=False, highlight=False)
    console.print(f"report: {report}", markup=False, highlight=False)


# --- student commands (fit-teachers, train-student, evaluate) -----------------------------


# Defaults and choices of fit-teachers and train-student come from the package (student/step.py, torch-free).
FIT = {f.name: f.default for f in fields(FitConfig)}
STEP = {f.name: f.default for f in fields(StepConfig)}
Weighting = Enum("Weighting", {name.replace("-", "_"): name for name in SCHEMES}, type=str)
Schedule = Enum("Schedule", {name: name for name in SCHEDULES}, type=str)


@app.command("fit-teachers")
def fit_teachers_command(
    cache: Annotated[str, typer.Option(help="Cache location: a local path or an fsspec URL.")],
    modalities: Annotated[str, typer.Option(help="Comma-separated modalities or teacher keys with features, e.g. rgb,flow,audio.")],
    fusion: Annotated[bool, typer.Option(help="Also fit one fusion teacher over all of them.")] = FIT["fusion"],
    folds: Annotated[int, typer.Option(help="K of the grouped K-fold cross-fitting that makes training segments' logits.")] = FIT["folds"],
    seed: Annotated[int, typer.Option(help="Seed of the folds and the fits.")] = FIT["seed"],
    steps: Annotated[int, typer.Option(help="Optimiser steps of each fit; 0: 100 passes over the data or 125,000 segments seen, 1,000-10,000 steps.")] = FIT["steps"],
    depths: Annotated[str, typer.Option(help="Candidate depths, kept by out-of-fold accuracy (0: pooled linear head, 1: plus a temporal transformer).")] = ",".join(map(str, FIT["depths"])),
    frames: Annotated[int, typer.Option(help="Rows per segment the heads read (a window of them).")] = FIT["frames"],
    views: Annotated[int, typer.Option(help="Windows per segment with logits of their own, from first to last rows (consistent teaching when segments hold more rows than --frames); 1: centred.")] = FIT["views"],
    workers: Annotated[int, typer.Option(help="Pooled-head fits side by side, one thread each; 0: one per core.")] = FIT["workers"],
    device: Annotated[Device, typer.Option(help="Where the heads are fitted.")] = Device(FIT["device"]),
) -> None:
    """Fit light teachers on cached features (per modality, optional fusion) and write their logits into the cache."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from egodistill.student.fit import fit_teachers, plan_fit
    from egodistill.student.sources import split_names, split_numbers, teacher_name

    cfg = FitConfig(cache=cache, modalities=split_names(modalities), fusion=fusion, folds=folds, seed=seed, steps=steps,
                    depths=tuple(split_numbers(depths, "--depths")), frames=frames, views=views, workers=workers, device=device.value)
    plan = plan_fit(cfg)  # every refusal before the bar shows
    columns = (TextColumn("[bold]fit"), BarColumn(), MofNCompleteColumn(), TextColumn("fits"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("fit", total=None)
        fitted = fit_teachers(cfg, log=progress.console.print, on_fit=lambda done, total: progress.update(bar, completed=done, total=total), plan=plan)
    table = Table("teacher key", "modality", "from", "depth", "out-of-fold top-1", "segments with logits")
    for t in fitted:
        table.add_row(t.key, t.modality, ", ".join(t.sources), str(t.depth), f"{100 * t.oof_accuracy[t.depth]:.1f} %", str(int((t.source_model != -2).sum())))
    console.print(table)
    console.print("use them with `egodistill train-student --teachers " + ",".join(teacher_name(plan.root, t.key) for t in fitted) + " ...`")


@app.command("train-student")
def train_student_command(
    cache: Annotated[str, typer.Option(help="Cache location: a local path or an fsspec URL.")],
    inputs: Annotated[str, typer.Option(help="Comma-separated student inputs: modalities or teacher keys with features; 'frames': an end-to-end network on the cached frames (with --backbone or --init-from).")],
    out: Annotated[str, typer.Option(help="Run directory (config.json, metrics.jsonl, last.pt).")],
    teachers: Annotated[str, typer.Option(help="Comma-separated teachers with logits (modalities such as rgb,flow,audio,fusion or keys); empty: ground truth only.")] = "",
    weighting: Annotated[Weighting, typer.Option(help="How teacher logits are combined per head.")] = Weighting.uniform,
    tau: Annotated[float, typer.Option(help="Softmin temperature of per-sample/dataset weights (0 = pick the best teacher).")] = 1.0,
    temperature: Annotated[float, typer.Option(help="Distillation temperature T.")] = 1.0,
    kd_weight: Annotated[float, typer.Option(help="Weight of the distillation term.")] = 1.0,
    gt_weight: Annotated[float, typer.Option(help="Weight of the ground-truth cross-entropy.")] = 1.0,
    mask_prob: Annotated[float, typer.Option(help="Per-sample probability of dropping each input (never all).")] = 0.0,
    steps: Annotated[int, typer.Option(help="Optimiser steps; 0: 100 passes over the data or 125,000 segments seen, 1,000-10,000 steps. The last step is the model evaluated.")] = STEP["steps"],
    batch_size: Annotated[int, typer.Option(help="Segments per step.")] = STEP["batch_size"],
    lr: Annotated[Optional[float], typer.Option(help="Peak AdamW learning rate; default 1e-2 for a head on frozen features, 1e-4 (the paper's fine-tuning) with --inputs frames.")] = None,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on weight matrices (paper: 0.02).")] = STEP["weight_decay"],
    schedule: Annotated[Schedule, typer.Option(help="Decay after the warm-up: cosine or linear (paper).")] = Schedule(STEP["schedule"]),
    clip: Annotated[float, typer.Option(help="Gradient-norm clip (paper: 5).")] = STEP["clip"],
    frames: Annotated[int, typer.Option(help="Rows per segment and input (temporal jitter in training).")] = STEP["frames"],
    dim: Annotated[int, typer.Option(help="Transformer width (with --depth >= 1).")] = STEP["dim"],
    depth: Annotated[int, typer.Option(help="Temporal transformer layers; 0: the pooled linear head alone.")] = 0,
    holdout: Annotated[float, typer.Option(help="Fraction of training videos held out for monitoring (and dataset weights).")] = 0.0,
    unlabelled_split: Annotated[Optional[str], typer.Option(help="Also distil on this split's segments (e.g. `manifest windows --split unlabelled`): labels ignored, teachers' logits only; needs --teachers.")] = None,
    single_row: Annotated[float, typer.Option(help="Heads: probability a training sample is pooled from one random row, so the head stays sane at fewer test frames (costs 3-5 points at the trained frames on bench_quality's planted data; 0 turns it off).")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of model, data order, jitter and masking.")] = STEP["seed"],
    device: Annotated[Device, typer.Option(help="cpu, cuda (bf16 autocast) or auto.")] = Device(STEP["device"]),
    in_memory: Annotated[Optional[bool], typer.Option("--in-memory/--stream", help="Read the inputs' features whole first / always stream from the cache; default: keep what was read when it fits in a quarter of the memory.")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="--inputs frames: the student network, a timm model or a torchvision clip model (swin3d_t, r2plus1d_18, mvit_v2_s, ...).")] = None,
    weights: Annotated[Optional[str], typer.Option(help="--inputs frames: starting weights (a state dict or .safetensors file, or 'timm'); default random init with --seed.")] = None,
    init_from: Annotated[Optional[str], typer.Option(help="--inputs frames: start from this teacher's backbone and weights (e.g. rgb); its weights file, if any, goes in --weights and must match the sha256 it was extracted with.")] = None,
    image_size: Annotated[int, typer.Option(help="--inputs frames: crop side the backbone reads; 0: its own input size.")] = 0,
    crop_scale: Annotated[float, typer.Option(help="--inputs frames: smallest area share of a training crop (random resized crop inside the stored frame).")] = 0.35,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="--inputs frames: left-right flips in training; default: on for EPIC-KITCHENS, off elsewhere (SSv2's labels say left and right; a generic CSV's may). Refused on SSv2.")] = None,
    accumulate: Annotated[int, typer.Option(help="Batches per optimiser step (gradient accumulation).")] = 1,
    precision: Annotated[Precision, typer.Option(help="--inputs frames: bf16 autocast + channels_last, or fp32; auto: bf16 on CUDA and on CPUs with native bf16.")] = Precision.auto,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last.pt.")] = False,
) -> None:
    """Distil a student from cached features (a head) or cached frames (an end-to-end network) and teacher logits."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from egodistill.student.sources import split_names
    from egodistill.student.train import END_TO_END_LR, TrainConfig, start_run, train, world

    end_to_end = bool(backbone or init_from)
    cfg = TrainConfig(cache=cache, inputs=split_names(inputs), teachers=split_names(teachers), out=out, weighting=weighting.value, tau=tau,
                      temperature=temperature, kd_weight=kd_weight, gt_weight=gt_weight, mask_prob=mask_prob, steps=steps,
                      batch_size=batch_size, lr=lr if lr is not None else END_TO_END_LR if end_to_end else TrainConfig.lr,
                      weight_decay=weight_decay, schedule=schedule.value, clip=clip, frames=frames, dim=dim,
                      depth=depth, holdout=holdout, unlabelled_split=unlabelled_split, single_row=single_row, seed=seed, device=device.value, in_memory=in_memory,
                      backbone=backbone, weights=weights, init_from=init_from, image_size=image_size, crop_scale=crop_scale, flip=flip,
                      accumulate=accumulate, precision=precision.value)
    started = start_run(cfg, resume)  # every one-line error comes before the progress bar
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("steps  loss {task.fields[loss]:.4f}  {task.fields[rate]:.0f} segments/s"), TimeElapsedColumn(), TimeRemainingColumn())
    quiet = world()[0] > 0  # under torchrun, rank 0 alone shows progress
    with Progress(*columns, console=console, disable=quiet) as progress:
        bar = progress.add_task("train", total=None, loss=float("nan"), rate=0.0)

        def on_step(step: int, total: int, loss: float, rate: float) -> None:
            progress.update(bar, completed=step, total=total, loss=loss, rate=rate)

        metrics = train(cfg, resume=resume, log=(lambda _: None) if quiet else progress.console.print, on_step=on_step, started_run=started)
    if metrics and not quiet:
        console.print(f"done: {metrics[-1]['step']} steps in {out}; last train loss {metrics[-1]['train_loss']:.4f}")


@app.command("evaluate")
def evaluate_command(
    cache: Annotated[str, typer.Option(help="Cache location: a local path or an fsspec URL.")],
    run: Annotated[str, typer.Option(help="Run directory written by train-student.")],
    split: Annotated[str, typer.Option(help="Split of the cache to evaluate on; it needs labels: a split with none for any head is refused (score it with `predict`), and a head it has no labels for gets null metrics.")] = "val",
    baseline: Annotated[bool, typer.Option(help="Also fit the logistic-regression probe per input on the training split and score it here.")] = False,
    device: Annotated[Device, typer.Option(help="cpu, cuda or auto.")] = Device.auto,
) -> None:
    """Accuracy, NLL, Brier, ECE for every subset of the student's inputs, its teachers and their ensembles, and inference cost."""
    from egodistill.student.evaluate import EvalConfig, evaluate, format_table

    result = evaluate(EvalConfig(cache=cache, run=run, split=split, baseline=baseline, device=device.value))
    console.print(format_table(result), markup=False, highlight=False, soft_wrap=True)
    console.print(f"written: {run}/eval-{split}/ (metrics.json, table.txt, reliability.png, subsets.png)")


class PredictFormat(str, Enum):
    scores = "scores"
    epic_100 = "epic-100"
    epic_100_eval = "epic-100-eval"
    ssv2 = "ssv2"


@app.command("predict")
def predict_command(
    run: Annotated[str, typer.Option(help="Run directory written by train-student.")],
    out: Annotated[str, typer.Option(help="File to write: .npz (scores, with a .json beside it), .json or .zip (epic-100), .pkl (epic-100-eval), .csv (ssv2).")],
    cache: Annotated[Optional[str], typer.Option(help="A cache holding the student's input teachers: predict its --split.")] = None,
    split: Annotated[str, typer.Option(help="Split of --cache to predict.")] = "test",
    manifest: Annotated[Optional[list[str]], typer.Option(help="New videos instead of --cache: their manifest (repeatable); the student's inputs are extracted first.")] = None,
    videos: Annotated[Optional[str], typer.Option(help="Folder the --manifest's videos are under.")] = None,
    weights: Annotated[Optional[list[str]], typer.Option(help="Weights file of an input teacher extracted from a file (its sha256 must match the provenance); repeatable.")] = None,
    work_cache: Annotated[Optional[str], typer.Option(help="Where new videos' inputs are extracted (default: <out>.cache.zarr; rerun resumes).")] = None,
    output_format: Annotated[PredictFormat, typer.Option("--format", help="scores: .npz + strict JSON; epic-100: the challenge submission JSON; epic-100-eval: the results file of EPIC-KITCHENS-100's evaluate.py; ssv2: Something-Something v2's id;label lines.")] = PredictFormat.scores,
    sls_pt: Annotated[int, typer.Option(help="epic-100: supervision level of pretraining (0-5, https://github.com/epic-kitchens/sls).")] = 2,
    sls_tl: Annotated[int, typer.Option(help="epic-100: supervision level of training labels (0-5).")] = 3,
    sls_td: Annotated[int, typer.Option(help="epic-100: supervision level of training data (0-5; 3: the training split).")] = 3,
    device: Annotated[Device, typer.Option(help="cpu, cuda or auto.")] = Device.auto,
    workers: Annotated[int, typer.Option(help="Extraction workers for new videos (0: in this process).")] = 0,
) -> None:
    """Scores of a trained student for every head and segment of a split or of new videos, as files (submission formats too)."""
    from egodistill.student.predict import PredictConfig, predict

    cfg = PredictConfig(run=run, out=out, cache=cache, split=split, manifest=list(manifest or []), videos=videos, weights=list(weights or []),
                        work_cache=work_cache, format=output_format.value, sls=(sls_pt, sls_tl, sls_td), device=device.value, workers=workers)
    result = predict(cfg, log=console.print)
    console.print(f"{len(result.ids)} segments scored ({', '.join(f'{h} {v.shape[1]}' for h, v in result.scores.items())}): "
                  + ", ".join(str(f) for f in result.files), markup=False, highlight=False, soft_wrap=True)


@app.command("export")
def export_command(
    run: Annotated[str, typer.Option(help="Run directory of a student: end-to-end (--inputs frames) or a head over one rgb teacher (--inputs rgb).")],
    out: Annotated[str, typer.Option(help="File to write: model.pt (TorchScript: torch.jit.load it, no egodistill needed), or model.onnx with --format onnx.")],
    weights: Annotated[Optional[str], typer.Option(help="Frozen-feature student: the weights file its rgb teacher was extracted with (its sha256 must match the provenance).")] = None,
    cache: Annotated[Optional[str], typer.Option(help="Frozen-feature student: the cache holding its rgb teacher (default: the run's training cache).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="torchscript (any frame size), or onnx: a frozen-feature image student at one --frame-size (needs the package's onnx extra).")] = "torchscript",
    frame_size: Annotated[Optional[str], typer.Option(help="--format onnx: WIDTHxHEIGHT of the frames the graph takes, e.g. 456x256.")] = None,
) -> None:
    """A trained student as one TorchScript module: RGB frames uint8 [T, 3, H, W] -> {head: logits}, preprocessing baked in
    (a frozen-feature student: its teacher's backbone and extraction transform, then its head)."""
    from egodistill.student.export import ExportConfig, export_student

    size = None
    if frame_size is not None:
        parts = frame_size.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise EgodistillError(f"--frame-size {frame_size!r}: give WIDTHxHEIGHT in pixels, e.g. 456x256")
        size = (int(parts[0]), int(parts[1]))
    path, meta = export_student(ExportConfig(run=run, out=out, weights=[weights] if weights else [], cache=cache, format=output_format, frame_size=size))
    console.print(f"wrote {path}: {meta['backbone']}, heads {', '.join(f'{h} {c}' for h, c in meta['heads'].items())}, "
                  f"{meta['frames']} frames [T, 3, H, W] uint8 -> logits", markup=False, highlight=False, soft_wrap=True)
    if meta.get("note"):
        console.print(f"note: {meta['note']}", markup=False, highlight=False, soft_wrap=True)


# --- end of student commands --------------------------------------------------------------


# The command-line errors of typer's click (it vendors its own copy, so found through a public class).
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
EXIT_INTERRUPTED = 130


def main(args: list[str] | None = None) -> None:
    """`egodistill`: run the command in `args` (default: sys.argv) and exit with its code.

    A mistake the user can fix never ends in a traceback: an EgodistillError (a bad value, a missing
    file, an unknown name) is one line `error: ...` and exit 1; a malformed command line (an unknown
    option, a value of the wrong type) is one line too, and exit 2."""
    try:
        code = app(args=args, standalone_mode=False)
    except EgodistillError as err:
        _fail(str(err), 1)
    except _CLICK_ERROR as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `egodistill` or `egodistill cache` alone: the help is already shown
            sys.exit(err.exit_code)
        ctx = getattr(err, "ctx", None)
        _fail(err.format_message() + (f" (see `{ctx.command_path} --help`)" if ctx is not None else ""), err.exit_code)
    except typer.Abort:  # a confirmation prompt that got no answer
        _fail("aborted: nothing was changed", 1)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C inside a command into exit code 130
        given = sys.argv[1:] if args is None else args
        resume = "train-student" in given and "--resume" not in given  # extract resumes as it is; a run folder needs the flag
        errors.print("interrupted: rerun the same command" + (" with --resume" if resume else "") + " to resume", markup=False)
    sys.exit(code or 0)


def _fail(message: str, code: int) -> None:
    errors.print(f"error: {' '.join(message.split())}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
