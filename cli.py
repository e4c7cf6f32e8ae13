"""The `egodistill` command line: a thin Typer layer over extract, cache and student."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cache.errors import EgodistillError

app = typer.Typer(help="Run heavy multimodal teachers once into a shared Zarr cache; distil cheap students from it.", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
cache_app = typer.Typer(help="Inspect a cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
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


@app.command()
def extract(
    manifest: Annotated[str, typer.Option(help="EPIC-KITCHENS-100 CSV, SSv2 JSON, or generic CSV (segment_id,video,start_sec,stop_sec,split,label:<head>...).")],
    cache: Annotated[str, typer.Option(help="Cache location: a local path or an fsspec URL (s3://, gs://, file://).")],
    videos: Annotated[str, typer.Option(help="Folder the manifest's videos are found under.")] = ".",
    modality: Annotated[str, typer.Option(help="rgb, flow or audio.")] = "rgb",
    backbone: Annotated[Optional[str], typer.Option(help="timm model name (default: resnet50 for rgb/flow, resnet18 for audio).")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Backbone weights: a state dict or .safetensors file, or 'timm' for timm's own (needs its hub). Default: random init with --seed.")] = None,
    head: Annotated[Optional[str], typer.Option(help="Linear heads file (<head>.weight/.bias per output head); with it the run writes teacher logits.")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Segment-uniform N frames per segment (default 8).")] = None,
    fps: Annotated[Optional[float], typer.Option(help="Instead of --frames: one row every 1/F seconds.")] = None,
    flow: Annotated[str, typer.Option(help="Optical flow method: dis (CPU default) or tvl1.")] = "dis",
    flow_stack: Annotated[int, typer.Option(help="Flow pairs stacked per row (2L channels).")] = 1,
    name: Annotated[Optional[str], typer.Option(help="Teacher key (default: <modality>-<backbone>-<provenance hash>).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Local Dask workers (default: one per GPU, else one per core; 0 = no cluster, run here).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of an existing Dask scheduler, e.g. tcp://head:8786.")] = None,
    device: Annotated[Device, typer.Option(help="Where teachers run.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(help="bf16 autocast (+channels_last) or fp32; auto = bf16 where the hardware has it.")] = Precision.auto,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of a randomly initialised backbone.")] = 0,
    segments_per_task: Annotated[Optional[int], typer.Option(help="Segments per Dask task (= logits chunk); fixed when the teacher is created.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Rerun tasks whose ledger has failed segments.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Read the manifest, find videos, show the planned rows and shards; run no model.")] = False,
) -> None:
    """Run one teacher over a dataset's segments into the cache (resumable: rerun to finish)."""
    from extract.run import ExtractConfig, plan_extraction, run_extraction

    cfg = ExtractConfig(
        manifest=manifest, videos=videos, cache=cache, modality=modality, backbone=backbone, weights=weights, head=head,
        frames=frames, fps=fps, flow=flow, flow_stack=flow_stack, name=name, workers=workers, scheduler=scheduler,
        device=device.value, precision=precision.value, batch_size=batch_size, seed=seed,
        segments_per_task=segments_per_task, retry_failed=retry_failed, dry_run=dry_run,
    )
    plan = plan_extraction(cfg)
    _print_plan(plan)
    if dry_run:
        return
    summary = _run_with_progress(run_extraction, cfg, plan)
    _print_summary(summary)
    if not summary.ok:
        raise typer.Exit(EXIT_FAILED_SEGMENTS)


def _run_with_progress(run, cfg, plan):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("segments"), TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as progress:
        bar = progress.add_task(f"extract {cfg.modality}", total=plan.layout.segments)
        return run(cfg, plan, on_progress=lambda done, total: progress.update(bar, completed=done), log=progress.console.print)


def _print_plan(plan) -> None:
    m, layout = plan.manifest, plan.layout
    found = len(plan.video_paths) - len(plan.missing_videos)
    console.print(
        f"manifest {m.path} ({m.format}): {len(m.segments)} segments, heads "
        f"{', '.join(f'{h} ({c})' for h, c in m.heads.items()) or 'none'}; videos found {found} of {len(plan.video_paths)}"
    )
    if plan.missing_videos:
        shown = ", ".join(plan.missing_videos[:5]) + (f" ... (+{len(plan.missing_videos) - 5})" if len(plan.missing_videos) > 5 else "")
        console.print(f"[yellow]missing videos ({len(plan.missing_videos)}): {shown}[/] — their segments go to the ledger as failed")
    shards = -(-layout.rows // layout.rows_per_shard) if layout.rows else 0
    console.print(
        f"plan: sampling {plan.policy}, {layout.rows} rows, {layout.tasks} tasks of {layout.segments_per_task} segments, "
        f"{shards} shards of {layout.rows_per_shard} rows (chunks of {layout.rows_per_chunk})"
    )


def _print_summary(summary) -> None:
    table = Table(title=f"teacher {summary.teacher_key}", show_header=False)
    for label, value in (
        ("segments", summary.segments), ("done before this run", summary.done_before), ("extracted now", summary.extracted),
        ("failed (ledger)", summary.failed), ("rows written", summary.rows), ("wall time", f"{summary.seconds:.1f} s"),
        ("model forward time", f"{summary.forward_seconds:.1f} s"),
    ):
        table.add_row(label, str(value))
    console.print(table)
    if summary.fallbacks:
        console.print(f"decord could not decode {len(summary.fallbacks)} video(s); PyAV was used (first: {summary.fallbacks[0]})")
    for entry in summary.ledger[:10]:
        console.print(f"[red]failed[/] {entry['id']}: {entry['reason']}")
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
    import cache as cache_lib

    info = cache_lib.describe(cache_lib.open_cache(location, mode="r"))
    if as_json:
        print(json.dumps(info, indent=2))
        return
    seg = info["segments"]
    console.print(f"cache {location}: {seg['count']} segments, heads {seg['heads']}, schema {info['schema'].get('schema_version')}")
    table = Table("teacher", "modality", "backbone", "weights", "sampling", "D", "rows", "done", "failed", "pending")
    for t in info["teachers"]:
        p = t["provenance"]
        table.add_row(t["key"], t["modality"], p["backbone"], p["weights"][:24], json.dumps(p["sampling"]), str(t["feature_dim"]), str(t["rows"]), str(t["segments_done"]), str(t["segments_failed"]), str(t["segments_pending"]))
    console.print(table)


# --- student commands (fit-teachers, train-student, evaluate) -----------------------------
# --- end of student commands --------------------------------------------------------------


def main() -> None:
    try:
        app()
    except EgodistillError as err:
        errors.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        errors.print("interrupted: rerun the same command to resume", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
