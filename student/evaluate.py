"""`evaluate`: a trained student on one split, for every subset of its inputs, beside its teachers,
their ensembles (the distillation targets) and, with --baseline, the logistic-regression probe.

Writes <run>/eval-<split>/metrics.json, table.txt, reliability.png and subsets.png.
"""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from egodistill import cache
from egodistill.common import EgodistillError, first_line, pick_device, write_json
from egodistill.student import rundir
from egodistill.student.cost import student_cost, teacher_cost
from egodistill.student.data import Augment, CacheLoader, load_windows, present_inputs, teacher_logit_table
from egodistill.student.losses import dataset_weights, ensemble_logits
from egodistill.student.metrics import head_metrics, reliability
from egodistill.student.model import ModelConfig, Student
from egodistill.student.network import FramesStudent, NetworkConfig, eval_crop_fraction, student_logits
from egodistill.student.plots import reliability_diagram, subset_bars
from egodistill.student.probe import fit_probe, pooled_inputs, probe_logits


class EvaluateError(EgodistillError):
    """evaluate cannot run on this run dir, cache or split."""


@dataclass
class EvalConfig:
    cache: str
    run: str
    split: str = "val"
    baseline: bool = False     # also fit and score the logistic-regression probe per input
    batch_size: int = 256
    device: str = "auto"
    cost: bool = True          # count teacher/student FLOPs (needs timm's model definitions only)


def input_subsets(count: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of `count` inputs, largest first."""
    return [c for size in range(count, 0, -1) for c in itertools.combinations(range(count), size)]


def load_student(run: str) -> tuple[dict, Student | FramesStudent]:
    """The run's config record and its model at the last step (the one rule every arm is scored by): a head,
    or an end-to-end network (built without its starting weights: the checkpoint holds every weight)."""
    record = rundir.read_run_config(run)
    ckpt = rundir.load_checkpoint(run, rundir.LAST)
    try:
        if "network_config" in ckpt:
            model = FramesStudent(NetworkConfig(**ckpt["network_config"]))
        else:
            model = Student(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError) as err:  # a checkpoint of another student model version
        raise EvaluateError(f"{Path(run) / rundir.LAST} does not fit this egodistill's student model ({first_line(err, 160)}): train the run again with train-student") from err
    return record, model.eval()


def scoring_loader(model: Student | FramesStudent, root: cache.Cache, input_keys: list[str], segments: np.ndarray, labels: dict[str, np.ndarray],
                   present: np.ndarray, batch_size: int, device: torch.device, frames: int | None = None) -> CacheLoader:
    """The held-out loader any student is scored through (evaluate, predict, the demo): the centred window of its
    frames (`frames`, default the student's own), and for a network the centred crop its backbone's preprocessing
    takes (its teachers' view); feed its batches to `student_logits`."""
    augment = Augment(eval_fraction=eval_crop_fraction(model.cfg.backbone)) if isinstance(model, FramesStudent) else None
    return CacheLoader(root, input_keys, segments, labels, batch_size=batch_size, frames=frames or model.cfg.frames, train=False, present=present,
                       augment=augment, pin_memory=device.type == "cuda")


@torch.no_grad()
def evaluate(cfg: EvalConfig) -> dict:
    record, model = load_student(cfg.run)
    root = cache.open_cache(cfg.cache, mode="r")
    table = root.segments
    input_keys, teacher_keys = record["input_keys"], record["teacher_keys"]
    for key in [*input_keys, *teacher_keys]:
        root.teacher(key)  # a clear error if the cache no longer holds it
    present = present_inputs(root, input_keys)
    segments = np.flatnonzero((table.split == cfg.split) & present.any(axis=1))
    if len(segments) == 0:
        splits = ", ".join(sorted(set(table.split.tolist())))
        raise EvaluateError(f"no {cfg.split!r} segments with the student's inputs in the cache (splits: {splits}): pass another --split")
    unlabelled = unlabelled_heads(table, segments)
    if len(unlabelled) == len(table.heads):  # every metric would be null: thin data, refused before anything is written
        raise EvaluateError(f"split {cfg.split} has no labelled segments for head {', '.join(unlabelled)}: evaluate a labelled split, "
                            f"or use `egodistill predict --split {cfg.split}` for scores")
    network = isinstance(model, FramesStudent)
    if network and cfg.baseline:
        raise EvaluateError(f"--baseline fits a probe on cached features; {cfg.run} is an end-to-end student on frames: evaluate it without --baseline")
    device = pick_device(cfg.device)
    model = model.to(device)
    loader = scoring_loader(model, root, input_keys, segments, table.labels, present, cfg.batch_size, device)
    subsets = input_subsets(len(input_keys))
    outputs = {s: {h: [] for h in table.heads} for s in subsets}
    order = []
    for batch in loader.epoch(0):
        batch = batch.to(device)
        order.append(batch.index.cpu().numpy())
        for s in subsets:
            keep = torch.zeros(len(input_keys), dtype=torch.bool, device=device)
            keep[list(s)] = True
            for h, v in student_logits(model, batch, batch.present & keep).items():
                outputs[s][h].append(v.float().cpu().numpy())
    order = np.concatenate(order)
    labels = {h: y[order] for h, y in table.labels.items()}
    names = _input_names(root, input_keys)
    result = {
        "run": str(cfg.run), "split": cfg.split, "segments": int(len(order)), "inputs": input_keys, "teachers": teacher_keys,
        "subsets": [], "teacher_metrics": [], "ensembles": [], "baselines": [], "unlabelled_heads": unlabelled,
    }
    for s in subsets:
        # A subset is scored on the segments that have every input of it, so a missing audio track
        # is not counted as a failure of the audio-only student.
        has_all = present[order][:, list(s)].all(axis=1)
        logits = {h: np.concatenate(v)[has_all] for h, v in outputs[s].items()}
        kept = {h: y[has_all] for h, y in labels.items()}
        entry = {"name": "+".join(names[i] for i in s), "inputs": [input_keys[i] for i in s], "segments": int(has_all.sum()),
                 "metrics": head_metrics(logits, kept)}
        if s == subsets[0]:
            entry["reliability"] = {h: reliability(v, kept[h]) for h, v in logits.items()}
        result["subsets"].append(entry)
    teacher_logits = teacher_logit_table(root, teacher_keys, list(table.heads)) if teacher_keys else {}
    for k, key in enumerate(teacher_keys):
        logits = {h: v[order, k] for h, v in teacher_logits.items()}
        result["teacher_metrics"].append({"teacher": key, "metrics": head_metrics(logits, labels)})
    if len(teacher_keys) > 1:
        result["ensembles"] = teacher_ensembles(teacher_logits, table, order, float(record["config"].get("tau", 1.0)), record["config"].get("train_split", "train"))
    if cfg.baseline:
        result["baselines"] = probe_baselines(root, table, input_keys, names, present, order, model.cfg.frames, record["config"].get("train_split", "train"))
    if cfg.cost:
        result["cost"] = {"student": student_cost(root, model.cpu(), input_keys), "teachers": [teacher_cost(root, k) for k in teacher_keys]}
    write_evaluation(result, Path(cfg.run) / f"eval-{cfg.split}")
    return result


def unlabelled_heads(table: cache.SegmentTable, segments: np.ndarray) -> list[str]:
    """The heads none of `segments` has a label for (e.g. EPIC-KITCHENS-100's test file: no verb, no noun)."""
    return [h for h, y in table.labels.items() if not (y[segments] != cache.UNLABELLED).any()]


def teacher_ensembles(teacher_logits: dict[str, np.ndarray], table: cache.SegmentTable, order: np.ndarray, tau: float, train_split: str) -> list[dict]:
    """The distillation targets themselves, scored: the uniform and the dataset-weighted sum of teacher logits.

    Dataset weights come from the training split's labelled segments, whose teacher logits are out-of-fold."""
    labels = {h: y[order] for h, y in table.labels.items()}
    train = np.flatnonzero(table.split == train_split)
    out = []
    for scheme in ("uniform", "dataset"):
        logits, weights = {}, {}
        for h, v in teacher_logits.items():
            w = None
            if scheme == "dataset":
                y = table.labels[h][train]
                if not (y >= 0).any():
                    break
                w = dataset_weights(torch.from_numpy(v[train]), torch.from_numpy(y.astype(np.int64)), tau)
                weights[h] = [float(x) for x in w]
            logits[h] = ensemble_logits(torch.from_numpy(v[order]), None, scheme, tau, w).numpy()
        else:
            out.append({"ensemble": scheme, "weights": weights or None, "metrics": head_metrics(logits, labels)})
    return out


def probe_baselines(root: cache.Cache, table: cache.SegmentTable, input_keys: list[str], names: list[str], present: np.ndarray,
                    order: np.ndarray, frames: int, train_split: str) -> list[dict]:
    """The logistic-regression probe (student/probe.py) per input and on all inputs: fitted on the training
    split, scored on the evaluated segments. A student below its probe learns less than its features hold."""
    train = np.flatnonzero((table.split == train_split) & present.any(axis=1))
    windows = {}
    for name, segs in (("train", train), ("eval", order)):
        # Streamed: each loader reads its own segments' blocks, not the whole arrays again.
        loader = CacheLoader(root, input_keys, segs, {}, batch_size=512, frames=frames, train=False, present=present, in_memory=False)
        windows[name] = load_windows(loader, len(input_keys))
    labels = {h: y[order] for h, y in table.labels.items()}
    out = []
    members = [(names[m], [m]) for m in range(len(input_keys))] + ([("+".join(names), list(range(len(input_keys))))] if len(input_keys) > 1 else [])
    for name, ms in members:
        x_train = pooled_inputs([windows["train"][0][m] for m in ms], windows["train"][1][:, ms])
        x_eval = pooled_inputs([windows["eval"][0][m] for m in ms], windows["eval"][1][:, ms])
        has_all = windows["eval"][1][:, ms].all(axis=1)
        logits = {}
        for h, classes in table.heads.items():
            logits[h] = probe_logits(x_eval, fit_probe(x_train, table.labels[h][train], classes))[has_all]
        out.append({"probe": name, "segments": int(has_all.sum()), "metrics": head_metrics(logits, {h: y[has_all] for h, y in labels.items()})})
    return out


def _input_names(root, keys: list[str]) -> list[str]:
    modalities = [root.teacher(k).modality for k in keys]
    return modalities if len(set(modalities)) == len(modalities) else keys


def format_table(result: dict) -> str:
    """A plain-text table: one row per input subset, per teacher, per teacher ensemble and per probe, then costs."""
    keys = [k for k in result["subsets"][0]["metrics"]]
    rows = [["model", *[k + (" (x100)" if k.endswith("_ece") else "" if k.endswith(("_nll", "_brier")) else " %") for k in keys]]]
    rows += [[f"student[{s['name']}]", *[_pct(s["metrics"][k], k) for k in keys]] for s in result["subsets"]]
    rows += [[f"teacher {t['teacher']}", *[_pct(t["metrics"].get(k), k) for k in keys]] for t in result["teacher_metrics"]]
    rows += [[f"ensemble of teachers ({e['ensemble']})", *[_pct(e["metrics"].get(k), k) for k in keys]] for e in result["ensembles"]]
    rows += [[f"probe[{b['probe']}]", *[_pct(b["metrics"].get(k), k) for k in keys]] for b in result["baselines"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    if result.get("unlabelled_heads"):
        lines.append(f"no labels for head {', '.join(result['unlabelled_heads'])} in {result['split']}: its metrics are null (-)")
    if "cost" in result:
        lines.append("")
        lines.append("inference cost per segment (params, GFLOPs):")
        for c in [result["cost"]["student"], *result["cost"]["teachers"]]:
            lines.append(f"  {c['teacher']}: {_count(c['params'])} params, {_gflops(c['flops'])} GFLOPs")
    return "\n".join(lines) + "\n"


def write_evaluation(result: dict, folder: Path) -> Path:
    """Write the four files into a sibling folder and swap it in whole, so a failure part-way leaves the
    previous evaluation (or none), never a folder mixing new metrics with old plots."""
    staging, previous = (folder.with_name(f".{folder.name}.{part}-{os.getpid()}") for part in ("new", "old"))
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write_json(staging / "metrics.json", result)
        (staging / "table.txt").write_text(format_table(result))
        title = f"{Path(result['run']).name} on {result['split']}"
        reliability_diagram(result["subsets"][0]["reliability"], staging / "reliability.png", f"{title}: {result['subsets'][0]['name']}")
        subset_bars(result["subsets"], staging / "subsets.png", f"{title}: accuracy per input subset")
        if folder.exists():
            folder.rename(previous)
        staging.rename(folder)
    except BaseException:
        if previous.exists() and not folder.exists():
            previous.rename(folder)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    return folder


def _pct(v, key: str) -> str:
    """Accuracies as %, ECE as stored (already x100), NLL and Brier as they are."""
    if v is None or not np.isfinite(v):
        return "-"
    if key.endswith(("_nll", "_brier")):
        return f"{v:.3f}"
    return f"{v:.1f}" if key.endswith("_ece") else f"{v * 100:.1f}"


def _count(n) -> str:
    return "?" if n is None else f"{n / 1e6:.2f}M"


def _gflops(f) -> str:
    return "?" if f is None else f"{f / 1e9:.3f}"
