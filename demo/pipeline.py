"""`egodistill demo`: generate clips, extract teachers once, distil students, check the claims, write the report."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from egodistill.cache.errors import EgodistillError
from egodistill.cache.jsonio import write_json
from egodistill.cache.options import check_number
from egodistill.demo.data import DemoSpec, describe_demo, generate_demo_data
from egodistill.demo.report import write_report
from egodistill.demo.students import StudentBudget, check_claims, explain_claims, run_students, summarise
from egodistill.extract.run import ExtractConfig, plan_extraction, run_extraction

DEMO_BACKBONE = "test_resnet"  # timm's smallest ResNet: the demo fits in minutes on 2 CPU cores


def _plain_extract(run, cfg, plan):
    return run(cfg, plan)


def run_demo(out: str | Path, small: bool = False, seeds: int = 3, workers: int = 2,
             extract: Callable = _plain_extract, log: Callable[[str], None] = print) -> tuple[dict, Path]:
    """Run the whole demo into folder `out`; returns (results, path of report.html).

    `extract(run_extraction, cfg, plan)` runs one extraction (the CLI passes one with a progress bar)."""
    folder = Path(out)
    check_number(EgodistillError, "--seeds", seeds, at_least=1)
    check_number(EgodistillError, "--workers", workers, at_least=0)
    if folder.exists() and not folder.is_dir():
        raise EgodistillError(f"--out {folder} is a file: give a folder for the demo's data, cache, runs and report")
    spec = DemoSpec.small() if small else DemoSpec()
    budget = StudentBudget(steps=300, fit_steps=300) if small else StudentBudget()
    t0 = time.perf_counter()
    manifest = generate_demo_data(folder / "data", spec, workers=max(1, workers))
    generate_seconds = time.perf_counter() - t0
    log(f"demo data: {manifest} ({generate_seconds:.1f} s)")

    cache = str(folder / "cache.zarr")
    backbones = {"rgb": DEMO_BACKBONE, "flow": DEMO_BACKBONE, "audio": DEMO_BACKBONE}
    extract_seconds: dict[str, float] = {}
    for modality, backbone in backbones.items():
        cfg = ExtractConfig(manifest=str(manifest), videos=str(manifest.parent / "videos"), cache=cache, modality=modality,
                            backbone=backbone, frames=budget.frames, workers=workers, device="cpu", seed=0)
        summary = extract(run_extraction, cfg, plan_extraction(cfg))
        extract_seconds[modality] = summary.seconds
        if not summary.ok:
            raise EgodistillError(f"demo extraction of {modality} failed for {summary.failed} segments: see `egodistill cache info {cache}`")
    first = _first_extraction(folder, extract_seconds)
    reused = first != extract_seconds

    raw = run_students(cache, folder, list(range(seeds)), budget, log=log)
    summary = summarise(raw)
    claims = check_claims(summary)
    run_seconds = statistics.fmean(s["seconds"]["mean"] for s in summary["students"].values())
    results = {
        "data": {**describe_demo(spec), "manifest": str(manifest)},
        "backbones": backbones,
        "seeds": list(range(seeds)),
        "budget": vars(budget),
        "timings": {"generate": generate_seconds, "extract": extract_seconds, "extract_first": first, "extraction_reused": reused,
                    "fit_teachers": raw["timings"]["fit_teachers"]},
        "student_run_seconds": run_seconds,
        "ratio_student_run_over_extraction": run_seconds / sum(first.values()),
        **summary,
        "claims": claims,
        "explanations": explain_claims(claims),
        "commands": _demo_commands(manifest, cache, backbones, budget, summary),
    }
    return results, write_report(folder, results, raw)


def _first_extraction(folder, seconds: dict[str, float]) -> dict[str, float]:
    """Extraction times of the run that actually extracted (a later demo reuses the cache)."""
    path = folder / "extraction-seconds.json"
    if path.exists():
        return json.loads(path.read_text())
    write_json(path, seconds)
    return seconds


def _demo_commands(manifest, cache: str, backbones: dict, budget, summary: dict) -> list[str]:
    videos = manifest.parent / "videos"
    lines = [f"egodistill extract --manifest {manifest} --videos {videos} --cache {cache} --modality {m} --backbone {b} --frames {budget.frames} --device cpu"
             for m, b in backbones.items()]
    lines.append(f"egodistill fit-teachers --cache {cache} --modalities rgb,flow,audio --fusion --folds {budget.folds} --steps {budget.fit_steps} --frames {budget.frames} --seed 0")
    for name, s in summary["students"].items():
        lines.extend(s["commands"])
        lines.append(f"egodistill evaluate --cache {cache} --run {s['commands'][0].split('--out ')[1].split()[0]}")
    return lines
