"""`evaluate`: a trained student on one split, for every subset of its inputs, beside its teachers.

Writes <run>/eval-<split>/metrics.json, table.txt, reliability.png and subsets.png.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from egodistill import cache
from egodistill.cache.errors import EgodistillError
from egodistill.cache.jsonio import write_json
from egodistill.cache.options import check_choice
from egodistill.student import rundir
from egodistill.student.cost import student_cost, teacher_cost
from egodistill.student.data import CacheLoader, present_inputs
from egodistill.student.metrics import head_metrics, reliability
from egodistill.student.model import ModelConfig, Student
from egodistill.student.plots import reliability_diagram, subset_bars


class EvaluateError(EgodistillError):
    """evaluate cannot run on this run dir, cache or split."""


@dataclass
class EvalConfig:
    cache: str
    run: str
    split: str = "val"
    checkpoint: str = "best"   # best | last
    batch_size: int = 256
    device: str = "auto"
    cost: bool = True          # count teacher/student FLOPs (needs timm's model definitions only)


def input_subsets(count: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of `count` inputs, largest first."""
    return [c for size in range(count, 0, -1) for c in itertools.combinations(range(count), size)]


def load_student(run: str, checkpoint: str = "best") -> tuple[dict, Student]:
    check_choice(EvaluateError, "--checkpoint", checkpoint, ("best", "last"))
    record = rundir.read_run_config(run)
    name = rundir.BEST if checkpoint == "best" else rundir.LAST
    if checkpoint == "best" and not (Path(run) / name).exists():
        name = rundir.LAST
    ckpt = rundir.load_checkpoint(run, name)
    try:
        model = Student(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError) as err:  # a checkpoint of another student model version
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise EvaluateError(f"{Path(run) / name} does not fit this egodistill's student model ({detail}): train the run again with train-student") from err
    return record, model.eval()


@torch.no_grad()
def evaluate(cfg: EvalConfig) -> dict:
    record, model = load_student(cfg.run, cfg.checkpoint)
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
    device = cache.pick_device(cfg.device)
    model = model.to(device)
    loader = CacheLoader(root, input_keys, segments, table.labels, batch_size=cfg.batch_size, frames=model.cfg.frames, train=False, present=present)
    subsets = input_subsets(len(input_keys))
    outputs = {s: {h: [] for h in table.heads} for s in subsets}
    order = []
    for batch in loader.epoch(0):
        batch = batch.to(device)
        order.append(batch.index.cpu().numpy())
        for s in subsets:
            keep = torch.zeros(len(input_keys), dtype=torch.bool, device=device)
            keep[list(s)] = True
            for h, v in model(batch.features, batch.present & keep).items():
                outputs[s][h].append(v.float().cpu().numpy())
    order = np.concatenate(order)
    labels = {h: y[order] for h, y in table.labels.items()}
    names = _input_names(root, input_keys)
    result = {
        "run": str(cfg.run), "split": cfg.split, "segments": int(len(order)), "inputs": input_keys, "teachers": teacher_keys,
        "subsets": [], "teacher_metrics": [],
    }
    for s in subsets:
        logits = {h: np.concatenate(v) for h, v in outputs[s].items()}
        entry = {"name": "+".join(names[i] for i in s), "inputs": [input_keys[i] for i in s], "metrics": head_metrics(logits, labels),
                 "segments_with_all": int(present[order][:, list(s)].all(axis=1).sum())}
        if s == subsets[0]:
            entry["reliability"] = {h: reliability(v, labels[h]) for h, v in logits.items()}
        result["subsets"].append(entry)
    for key in teacher_keys:
        teacher = root.teacher(key)
        logits = {h: teacher.read_logits(h)[order] for h in table.heads}
        result["teacher_metrics"].append({"teacher": key, "metrics": head_metrics(logits, labels)})
    if cfg.cost:
        result["cost"] = {"student": student_cost(root, model.cpu(), input_keys), "teachers": [teacher_cost(root, k) for k in teacher_keys]}
    write_report(result, Path(cfg.run) / f"eval-{cfg.split}")
    return result


def _input_names(root, keys: list[str]) -> list[str]:
    modalities = [root.teacher(k).modality for k in keys]
    return modalities if len(set(modalities)) == len(modalities) else keys


def format_table(result: dict) -> str:
    """A plain-text table: one row per input subset, then one per teacher, then costs."""
    keys = [k for k in result["subsets"][0]["metrics"]]
    rows = [["model", *[k + (" (x100)" if k.endswith("_ece") else " %") for k in keys]]]
    rows += [[f"student[{s['name']}]", *[_pct(s["metrics"][k], k) for k in keys]] for s in result["subsets"]]
    rows += [[f"teacher {t['teacher']}", *[_pct(t["metrics"].get(k), k) for k in keys]] for t in result["teacher_metrics"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    if "cost" in result:
        lines.append("")
        lines.append("inference cost per segment (params, GFLOPs):")
        for c in [result["cost"]["student"], *result["cost"]["teachers"]]:
            lines.append(f"  {c['teacher']}: {_count(c['params'])} params, {_gflops(c['flops'])} GFLOPs")
    return "\n".join(lines) + "\n"


def write_report(result: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "metrics.json", result)
    (folder / "table.txt").write_text(format_table(result))
    title = f"{Path(result['run']).name} on {result['split']}"
    reliability_diagram(result["subsets"][0]["reliability"], folder / "reliability.png", f"{title}: {result['subsets'][0]['name']}")
    subset_bars(result["subsets"], folder / "subsets.png", f"{title}: accuracy per input subset")
    return folder


def _pct(v, key: str) -> str:
    """Accuracies as %, ECE as stored (already x100)."""
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.1f}" if key.endswith("_ece") else f"{v * 100:.1f}"


def _count(n) -> str:
    return "?" if n is None else f"{n / 1e6:.2f}M"


def _gflops(f) -> str:
    return "?" if f is None else f"{f / 1e9:.3f}"
