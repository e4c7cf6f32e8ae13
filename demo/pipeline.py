"""`egodistill demo`: generate clips, extract teachers once, then per seed fit teachers and train every arm,
test the protocol's claims with intervals (docs/demo-protocol.md), and write the report."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from egodistill import cache as cache_api
from egodistill.common import EgodistillError, check_number, write_json
from egodistill.demo import claims as claims_api
from egodistill.demo.boxes import write_demo_boxes
from egodistill.demo.data import (HEAD, SPEC_NAME, UNLABELLED_SPEC_NAME, DemoSpec, class_names, describe_demo, generate_demo_data,
                                  generate_unlabelled_clips, unlabelled_spec)
from egodistill.demo.protocol import (BOOTSTRAP_DRAWS, BOOTSTRAP_SEED, SEEDS, SMALL_UNLABELLED_CLIPS, UNLABELLED_CLIPS, UNLABELLED_SEED,
                                      UNLABELLED_SPLIT, describe_protocol)
from egodistill.demo.report import write_report
from egodistill.demo.stats import Draws
from egodistill.demo.students import FINETUNE_EXTRACTOR, FRAME_SIZE, STUDENTS, StudentBudget, budget_fields, demo_segments, run_seed, small_budget
from egodistill.extract.run import ExtractConfig, plan_extraction, run_extraction
from egodistill.extract.windows import video_windows, write_windows

DEMO_BACKBONE = "test_resnet"  # timm's smallest ResNet: the demo fits in minutes on 2 CPU cores
UNLABELLED_MANIFEST = "unlabelled.csv"  # data/: `manifest windows` over the unlabelled clips (protocol version 4)
SMALL_SEEDS = 2


def _plain_extract(run, cfg, plan):
    return run(cfg, plan)


def run_demo(out: str | Path, small: bool = False, seeds: int | None = None, workers: int = 2,
             extract: Callable = _plain_extract, log: Callable[[str], None] = print, finetune: bool = False,
             smaller_student: bool = False) -> tuple[dict, Path]:
    """Run the whole demo into folder `out`; returns (results, path of report.html).

    `finetune`: also protocol version 3's costly arms (end-to-end students on stored frames, the masked
    student on smaller extractors with `smaller_student`), extracting what they read first.
    `seeds`: how many seeds (default: the protocol's 5; 2 with `small`). `workers`: the processes that
    encode the clips and run seeds side by side (0: everything in this process). Extraction runs in this process,
    extract's default and its fastest on one machine (bench/RESULTS.md, issue 17's run modes).
    `extract(run_extraction, cfg, plan)` runs one extraction (the CLI passes one with a progress bar)."""
    started = time.perf_counter()
    folder = Path(out)
    seeds = SMALL_SEEDS if small and seeds is None else len(SEEDS) if seeds is None else seeds
    check_number(EgodistillError, "--seeds", seeds, at_least=1)
    check_number(EgodistillError, "--workers", workers, at_least=0)
    if folder.exists() and not folder.is_dir():
        raise EgodistillError(f"--out {folder} is a file: give a folder for the demo's data, cache, runs and report")
    seed_list = list(range(seeds))
    spec = DemoSpec.small() if small else DemoSpec()
    budget = replace(small_budget() if small else StudentBudget(), finetune=finetune, smaller_student=smaller_student)
    protocol = describe_protocol(seed_list, small, finetune, smaller_student)
    log(f"protocol version {protocol['version']} ({protocol['doc']})" + ("" if protocol["followed"] else f"; NOT the protocol: {'; '.join(protocol['deviations'])}"))

    t0 = time.perf_counter()
    manifest = generate_demo_data(folder / "data", spec, workers=max(1, workers))
    write_demo_boxes(folder / "data", spec)  # for `extract --modality layout` (not part of the protocol's arms)
    generate_seconds = time.perf_counter() - t0
    log(f"demo data: {manifest} ({generate_seconds:.1f} s)")
    t0 = time.perf_counter()
    unlabelled = unlabelled_spec(spec, SMALL_UNLABELLED_CLIPS if small else UNLABELLED_CLIPS, UNLABELLED_SEED)
    unlabelled_folder = generate_unlabelled_clips(folder / "data", unlabelled, workers=max(1, workers))
    unlabelled_seconds = time.perf_counter() - t0
    log(f"unlabelled clips: {unlabelled.clips} in {unlabelled_folder} ({unlabelled_seconds:.1f} s)")

    cache = str(folder / "cache.zarr")
    _match_cache_to_data(folder, [manifest.parent / SPEC_NAME, unlabelled_folder / UNLABELLED_SPEC_NAME])
    backbones = {"rgb": DEMO_BACKBONE, "flow": DEMO_BACKBONE, "audio": DEMO_BACKBONE}
    extract_seconds: dict[str, float] = {}
    keys: dict[str, dict[str, str]] = {"base": {}}
    jobs = [("base", m, b, {}) for m, b in backbones.items()]
    if finetune:  # version 3: the frames the end-to-end students read, and the smaller student's extractors
        jobs.append(("frames", "frames", None, {"frame_size": FRAME_SIZE}))
    if smaller_student:
        jobs += [("small", m, FINETUNE_EXTRACTOR, {}) for m in backbones]
    for group, modality, backbone, options in jobs:
        summary = _extract(extract, manifest, manifest, cache, modality, backbone, budget, options)
        extract_seconds[modality if group == "base" else f"{modality} ({group})"] = summary.seconds
        keys.setdefault(group, {})[modality] = summary.teacher_key
    # Version 4: the unlabelled clips' windows, appended to the cache after the labelled clips' extraction and
    # extracted with the same settings (the same teachers resume: only the new segments are extracted).
    t0 = time.perf_counter()
    windows, window_count = unlabelled_windows(manifest, unlabelled.seconds)
    windows_seconds = time.perf_counter() - t0
    for modality, backbone in backbones.items():
        extract_seconds[f"{modality} (unlabelled)"] = _extract(extract, windows, manifest, cache, modality, backbone, budget, {}).seconds
    first = _first_extraction(folder, extract_seconds)

    t0 = time.perf_counter()
    per_seed = run_seeds(cache, folder / "runs", seed_list, budget, workers, log, keys)
    seeds_seconds = time.perf_counter() - t0
    import torch  # the seeds' outputs, kept before the statistics so a failure there loses no training
    torch.save(per_seed, folder / "per-seed.pt")

    t0 = time.perf_counter()
    segments = demo_segments(cache, keys["base"])
    labels_all = cache_api.open_cache(cache, mode="r").segments.labels[HEAD]
    labels = {split: labels_all[idx].astype(np.int64) for split, idx in segments.items()}
    draws = {"val": Draws.make(len(labels["val"]), seeds, BOOTSTRAP_DRAWS, BOOTSTRAP_SEED),
             "train": Draws.make(len(labels["train"]), seeds, BOOTSTRAP_DRAWS, BOOTSTRAP_SEED + 1)}
    analysis = claims_api.analyse(per_seed, labels, draws, len(class_names(spec)))
    statistics_seconds = time.perf_counter() - t0
    _save_predictions(folder / "predictions.npz", per_seed, labels)

    train_seconds = [r["train_seconds"][x.name] for r in per_seed for x in STUDENTS]  # version 2's head arms
    unlabelled_record = {"clips": unlabelled.clips, "seed": unlabelled.seed, "split": UNLABELLED_SPLIT, "windows": window_count,
                         "manifest": str(windows), "videos": str(unlabelled_folder)}
    fit_seconds = [r["fit_seconds"] for r in per_seed]
    results = {
        "protocol": protocol,
        "data": {**describe_demo(spec), "manifest": str(manifest), "clips_scored": {k: int(len(v)) for k, v in labels.items()}, "unlabelled": unlabelled_record},
        "backbones": backbones,
        "seeds": seed_list,
        "budget": budget_fields(budget),
        "timings": {
            "generate": generate_seconds, "generate_unlabelled": unlabelled_seconds, "windows": windows_seconds, "extract": extract_seconds, "extract_first": first, "extraction_reused": first != extract_seconds,
            "fit_teachers_per_seed": fit_seconds, "fit_teachers_mean": float(np.mean(fit_seconds)),
            "student_run_mean": float(np.mean(train_seconds)), "student_runs": len(train_seconds),
            "seeds_wall": seeds_seconds, "seed_processes": _processes(workers, seeds), "statistics": statistics_seconds,
        },
        "ratio_student_run_over_extraction": float(np.mean(train_seconds)) / sum(first[m] for m in backbones),
        **analysis,
        "cost": per_seed[0].get("cost"),
        "teacher_keys": {str(r["seed"]): r["teacher_keys"] for r in per_seed},
        "oof_accuracy": {str(r["seed"]): r["oof_accuracy"] for r in per_seed},
        "input_keys": keys,
        "commands": _extract_commands(manifest, windows, cache, backbones, budget, unlabelled.seconds) + [c for r in per_seed for c in r["commands"]],
    }
    t0 = time.perf_counter()
    report = write_report(folder, results, per_seed, labels)
    results["timings"]["report"] = time.perf_counter() - t0
    results["timings"]["total"] = time.perf_counter() - started
    write_json(folder / "results.json", results)  # again, with the report's and the total time
    return results, report


def _extract(extract: Callable, manifest: Path, labelled: Path, cache: str, modality: str, backbone: str | None, budget: StudentBudget,
             options: dict):
    """One demo extraction of `manifest` (every video under the labelled manifest's videos folder); its summary."""
    cfg = ExtractConfig(manifest=str(manifest), videos=str(labelled.parent / "videos"), cache=cache, modality=modality,
                        backbone=backbone, frames=budget.frames, device="cpu", seed=0, options=options)
    summary = extract(run_extraction, cfg, plan_extraction(cfg))
    if not summary.ok:
        raise EgodistillError(f"demo extraction of {modality} failed for {summary.failed} segments: see `egodistill cache info {cache}`")
    return summary


def unlabelled_windows(manifest: Path, seconds: float) -> tuple[Path, int]:
    """`egodistill manifest windows` over the demo's videos into data/unlabelled.csv, split `unlabelled`: window =
    stride = a clip's duration, so one window per unlabelled clip, and the labelled clips excluded (each
    labelled segment covers its whole clip). Returns (the CSV, its windows)."""
    windows, unreadable = video_windows(manifest.parent / "videos", seconds, seconds, [manifest])
    if unreadable:
        raise EgodistillError(f"demo: {len(unreadable)} generated clips cannot be opened (first: {unreadable[0]}): "
                              f"delete {manifest.parent} and run the demo again")
    return write_windows(windows, manifest.parent / UNLABELLED_MANIFEST, UNLABELLED_SPLIT), len(windows)


def _processes(workers: int, seeds: int) -> int:
    return max(1, min(workers, seeds))


def run_seeds(cache: str, runs: Path, seeds: list[int], budget: StudentBudget, workers: int, log: Callable[[str], None],
              keys: dict[str, dict[str, str]]) -> list[dict]:
    """Every seed's replicate (demo/students.run_seed), side by side in `workers` processes (0 or 1: here).
    `keys`: the extracted inputs, group -> modality -> teacher key (see run_seed)."""
    jobs = [(cache, str(runs), s, budget_fields(budget), s == seeds[0], keys) for s in seeds]
    processes = _processes(workers, len(seeds))
    done: dict[int, dict] = {}

    def report(result: dict) -> None:
        done[result["seed"]] = result
        log(f"seed {result['seed']}: teachers fitted in {result['fit_seconds']:.1f} s, {len(result['train_seconds'])} students "
            f"in {sum(result['train_seconds'].values()):.1f} s ({len(done)}/{len(seeds)} seeds)")

    if processes == 1:
        for job in jobs:
            report(run_seed(job))
    else:
        with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
            for result in pool.map(run_seed, jobs):
                report(result)
    return [done[s] for s in seeds]


def _save_predictions(path: Path, per_seed: list[dict], labels: dict[str, np.ndarray]) -> None:
    """Every logit the statistics used, for re-analysis: seed<s>/<group>/<name>[/<variant>] -> [N, C]."""
    arrays = {f"labels/{split}": y for split, y in labels.items()}
    for r in per_seed:
        for arm, variants in r["students"].items():
            for variant, logits in variants.items():
                arrays[f"seed{r['seed']}/students/{arm}/{variant}"] = logits
        arrays[f"seed{r['seed']}/students/mm-masked/fewer-frames"] = r["masked_fewer_frames"]
        for split in ("train", "val"):
            for name, logits in r["teachers"][split].items():
                arrays[f"seed{r['seed']}/teachers/{split}/{name}"] = logits
    np.savez_compressed(path, **arrays)


def _match_cache_to_data(folder: Path, spec_files: list[Path]) -> None:
    """A cache, runs and timings made from other demo data (another spec or generator version) are removed."""
    marker = folder / "cache-data.json"
    texts = [f.read_text() for f in spec_files]
    wanted = [json.loads(t) for t in texts]  # one JSON value: the specs in order
    if marker.exists():
        held = marker.read_text()
        if held == "".join(texts):  # what demos wrote before: the specs' texts run together, not one JSON value
            write_json(marker, wanted)
            return
        with contextlib.suppress(ValueError):
            if json.loads(held) == wanted:
                return
    for stale in ("cache.zarr", "runs"):
        shutil.rmtree(folder / stale, ignore_errors=True)
    (folder / "extraction-seconds.json").unlink(missing_ok=True)
    write_json(marker, wanted)


def _first_extraction(folder, seconds: dict[str, float]) -> dict[str, float]:
    """Extraction times of the run that actually extracted (a later demo reuses the cache)."""
    path = folder / "extraction-seconds.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if set(stored) == set(seconds):
            return stored
    write_json(path, seconds)
    return seconds


def _extract_commands(manifest, windows, cache: str, backbones: dict, budget: StudentBudget, seconds: float) -> list[str]:
    videos = manifest.parent / "videos"
    lines = [f"egodistill extract --manifest {manifest} --videos {videos} --cache {cache} --modality {m} --backbone {b} --frames {budget.frames} --device cpu"
             for m, b in backbones.items()]
    lines.append(f"egodistill manifest windows --videos {videos} --window {seconds:g} --stride {seconds:g} --exclude {manifest} --split {UNLABELLED_SPLIT} --out {windows}")
    lines += [f"egodistill extract --manifest {windows} --videos {videos} --cache {cache} --modality {m} --backbone {b} --frames {budget.frames} --device cpu"
              for m, b in backbones.items()]
    if budget.finetune:
        lines.append(f"egodistill extract --manifest {manifest} --videos {videos} --cache {cache} --modality frames --frame-size {FRAME_SIZE} --frames {budget.frames}")
    if budget.smaller_student:
        lines += [f"egodistill extract --manifest {manifest} --videos {videos} --cache {cache} --modality {m} --backbone {FINETUNE_EXTRACTOR} --frames {budget.frames} --device cpu"
                  for m in backbones]
    return lines


def summary_lines(results: dict) -> list[str]:
    """What `egodistill demo` prints at the end: the protocol, the gate, each primary verdict with its interval, timings."""
    p, t = results["protocol"], results["timings"]
    lines = [f"protocol v{p['version']} ({p['doc']}), generator v{results['data']['generator_version']}, seeds {results['seeds']}, "
             f"{results['data']['clips_scored']['val']} validation clips" + ("" if p["followed"] else f" -- NOT the protocol: {'; '.join(p['deviations'])}")]
    lines.append(f"teacher gate (training clips, out-of-fold): {'passed' if results['gate']['passed'] else 'FAILED'}")
    lines += [c["sentence"] for c in results["claims"] if c["primary"]]
    lines.append(f"time: {t['total']:.0f} s in all (generate {t['generate'] + t['generate_unlabelled']:.0f} s, extract {sum(t['extract'].values()):.0f} s, "
                 f"seeds {t['seeds_wall']:.0f} s, statistics {t['statistics']:.0f} s); one student run / extraction = {results['ratio_student_run_over_extraction']:.3f}")
    return lines
