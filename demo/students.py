"""The demo's student half, one seed at a time: fit the teachers, train every arm, predict every clip.

A seed is one replicate of everything after extraction (docs/demo-protocol.md): `fit_teachers` with
that seed (folds and initialisation), then every arm's `train` with that seed, learning from that
seed's teachers. Each step goes through the functions the CLI commands call, so the commands in the
report reproduce every run. The predictions (logits per clip) are what the statistics need.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from egodistill import cache
from egodistill.demo.data import HEAD
from egodistill.demo.protocol import SMALL_FRAMES, TEST_FRAMES
from egodistill.student.cost import student_cost
from egodistill.student.data import CacheLoader, present_inputs, teacher_logit_table
from egodistill.student.evaluate import EvalConfig, evaluate, input_subsets, load_student
from egodistill.student.fit import FitConfig, fit_teachers
from egodistill.student.losses import dataset_weights, ensemble_logits
from egodistill.student.model import ModelConfig, Student
from egodistill.student.sources import resolve_inputs
from egodistill.student.train import TrainConfig, train

MODALITIES = ["rgb", "flow", "audio"]
TEACHERS = [*MODALITIES, "fusion"]


@dataclass(frozen=True)
class StudentRecipe:
    name: str
    title: str
    inputs: list[str]
    teachers: list[str] = field(default_factory=list)   # teacher modalities; this seed's fitted teachers
    weighting: str = "uniform"
    mask_prob: float = 0.0


# The protocol's arms (docs/demo-protocol.md), fixed before any result was seen.
STUDENTS = [
    StudentRecipe("rgb-gt", "RGB student, ground truth only", ["rgb"]),
    StudentRecipe("rgb-kd-uniform", "RGB student distilled from the rgb+flow+audio teachers, uniform ensemble (primary)", ["rgb"], MODALITIES, "uniform"),
    StudentRecipe("rgb-kd-per-sample", "RGB student distilled from the rgb+flow+audio teachers, per-sample weights", ["rgb"], MODALITIES, "per-sample"),
    StudentRecipe("rgb-kd-dataset", "RGB student distilled from the rgb+flow+audio teachers, dataset weights", ["rgb"], MODALITIES, "dataset"),
    StudentRecipe("mm-unmasked", "rgb+flow+audio student distilled from the fusion teacher, no masking", MODALITIES, ["fusion"]),
    StudentRecipe("mm-masked", "rgb+flow+audio student distilled from the fusion teacher, modality masking p=0.5", MODALITIES, ["fusion"], mask_prob=0.5),
    StudentRecipe("mm-masked-gt", "rgb+flow+audio student on ground truth only, modality masking p=0.5", MODALITIES, mask_prob=0.5),
]


@dataclass(frozen=True)
class StudentBudget:
    """Training settings shared by every arm and seed (0 = the commands' auto budgets)."""

    steps: int = 0
    frames: int = 8
    temperature: float = 2.0
    tau: float = 1.0
    fit_steps: int = 0
    folds: int = 5
    device: str = "cpu"
    in_memory: bool = True  # the demo's cache is a few MB: no reader threads competing with training


def demo_segments(cache_path: str) -> dict[str, np.ndarray]:
    """The clips the statistics use: validation clips and labelled training clips, each with every input."""
    root = cache.open_cache(cache_path, mode="r")
    table = root.segments
    present = present_inputs(root, resolve_inputs(root, MODALITIES)).all(axis=1)
    labelled = table.labels[HEAD] >= 0
    return {split: np.flatnonzero((table.split == split) & present & labelled) for split in ("train", "val")}


def train_command(cache_path: str, recipe: StudentRecipe, teacher_keys: list[str], budget: StudentBudget, seed: int, out: Path) -> str:
    """The CLI line that trains this run."""
    parts = [f"egodistill train-student --cache {cache_path} --inputs {','.join(recipe.inputs)} --out {out}",
             f"--steps {budget.steps} --frames {budget.frames} --seed {seed} --device {budget.device}" + (" --in-memory" if budget.in_memory else "")]
    if teacher_keys:
        parts.append(f"--teachers {','.join(teacher_keys)} --weighting {recipe.weighting} --temperature {budget.temperature} --tau {budget.tau}")
    if recipe.mask_prob:
        parts.append(f"--mask-prob {recipe.mask_prob}")
    return " ".join(parts)


def fit_command(cache_path: str, budget: StudentBudget, seed: int) -> str:
    return (f"egodistill fit-teachers --cache {cache_path} --modalities {','.join(MODALITIES)} --fusion --folds {budget.folds} "
            f"--steps {budget.fit_steps} --depths 0 --frames {budget.frames} --seed {seed} --device {budget.device}")


def run_seed(job: tuple[str, str, int, dict, bool]) -> dict:
    """One seed: fit the four teachers, train every arm, return logits per clip and the timings.

    `job` = (cache, runs folder, seed, StudentBudget as a dict, whether to count costs); a tuple so that
    a process pool can send it."""
    cache_path, runs, seed, budget_fields, count_cost = job
    budget = StudentBudget(**budget_fields)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny heads: one thread each (the seeds run in parallel processes)
    try:
        return _run_seed(cache_path, Path(runs), seed, budget, count_cost)
    finally:
        torch.set_num_threads(threads)


def _run_seed(cache_path: str, runs: Path, seed: int, budget: StudentBudget, count_cost: bool) -> dict:
    segments = demo_segments(cache_path)
    started = time.perf_counter()
    fitted = fit_teachers(FitConfig(cache=cache_path, modalities=MODALITIES, fusion=True, folds=budget.folds, seed=seed, steps=budget.fit_steps,
                                    depths=(0,), frames=budget.frames, device=budget.device), log=lambda _: None)
    fit_seconds = time.perf_counter() - started
    keys = {f.modality: f.key for f in fitted}
    out: dict = {"seed": seed, "teacher_keys": keys, "fit_seconds": fit_seconds, "train_seconds": {}, "commands": [fit_command(cache_path, budget, seed)],
                 "oof_accuracy": {f.modality: {str(d): a for d, a in f.oof_accuracy.items()} for f in fitted}, "students": {}}
    root = cache.open_cache(cache_path, mode="r")
    for recipe in STUDENTS:
        teacher_keys = [keys[t] for t in recipe.teachers]
        run = runs / recipe.name / f"seed{seed}"
        shutil.rmtree(run, ignore_errors=True)  # students are the cheap part: always trained afresh
        cfg = TrainConfig(cache=cache_path, inputs=recipe.inputs, teachers=teacher_keys, out=str(run), weighting=recipe.weighting,
                          tau=budget.tau, temperature=budget.temperature, mask_prob=recipe.mask_prob, steps=budget.steps, frames=budget.frames,
                          seed=seed, device=budget.device, in_memory=budget.in_memory)
        started = time.perf_counter()
        train(cfg, log=lambda _: None)
        out["train_seconds"][recipe.name] = time.perf_counter() - started
        out["commands"].append(train_command(cache_path, recipe, teacher_keys, budget, seed, run))
        if len(recipe.inputs) == 1:
            out["students"][recipe.name] = {f"frames{k}": predict(root, run, segments["val"], k)["+".join(recipe.inputs)] for k in TEST_FRAMES}
        else:
            out["students"][recipe.name] = predict(root, run, segments["val"], budget.frames)
        if recipe.name == "mm-masked":  # P2.4's secondary row: the same student reading fewer frames
            out["masked_fewer_frames"] = predict(root, run, segments["val"], SMALL_FRAMES)["+".join(recipe.inputs)]
    out["teachers"] = teacher_predictions(root, keys, segments, budget.tau)
    if count_cost:
        out["cost"] = costs(cache_path, runs, seed, root)
    return out


@torch.no_grad()
def predict(root: cache.Cache, run: Path, segments: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """Logits [N, C] of the trained student for every non-empty subset of its inputs (named like
    "rgb+audio"), the others given as missing, with `frames` rows per input (centred), in `segments` order."""
    record, model = load_student(str(run))
    keys = record["input_keys"]
    names = [root.teacher(k).modality for k in keys]
    present = present_inputs(root, keys)
    loader = CacheLoader(root, keys, segments, root.segments.labels, batch_size=512, frames=frames, train=False, present=present)
    position = np.full(len(root.segments.split), -1, dtype=np.int64)
    position[segments] = np.arange(len(segments))
    subsets = input_subsets(len(keys))
    classes = model.cfg.heads[HEAD]
    out = {"+".join(names[i] for i in s): np.full((len(segments), classes), np.nan, dtype=np.float32) for s in subsets}
    for batch in loader.epoch(0):
        at = position[batch.index.numpy()]
        for s in subsets:
            keep = torch.zeros(len(keys), dtype=torch.bool)
            keep[list(s)] = True
            out["+".join(names[i] for i in s)][at] = model(batch.features, batch.present & keep)[HEAD].float().numpy()
    return out


def teacher_predictions(root: cache.Cache, keys: dict[str, str], segments: dict[str, np.ndarray], tau: float) -> dict[str, dict[str, np.ndarray]]:
    """Per split, the logits of each teacher and of the uniform and dataset ensembles of rgb, flow and audio.

    Training clips' logits are out-of-fold; the dataset weights come from them, as train-student's do."""
    table = root.segments
    logits = teacher_logit_table(root, [keys[t] for t in TEACHERS], [HEAD])[HEAD]        # [N_all, 4, C]
    unimodal = torch.from_numpy(logits[:, : len(MODALITIES)])
    train = segments["train"]
    weights = dataset_weights(unimodal[train], torch.from_numpy(table.labels[HEAD][train].astype(np.int64)), tau)
    out = {}
    for split, idx in segments.items():
        rows = {t: logits[idx, k] for k, t in enumerate(TEACHERS)}
        rows["ensemble-uniform"] = ensemble_logits(unimodal[idx], None, "uniform", tau).numpy()
        rows["ensemble-dataset"] = ensemble_logits(unimodal[idx], None, "dataset", tau, weights).numpy()
        out[split] = rows
    out["dataset_weights"] = {t: float(w) for t, w in zip(MODALITIES, weights)}
    return out


def costs(cache_path: str, runs: Path, seed: int, root: cache.Cache) -> dict:
    """Params and FLOPs per clip (evaluate's `cost`) of the primary RGB student and its three teachers, of the
    masked student and its fusion teacher, and of the masked student reading SMALL_FRAMES frames."""
    out = {}
    for name in ("rgb-kd-uniform", "mm-masked"):
        result = evaluate(EvalConfig(cache=cache_path, run=str(runs / name / f"seed{seed}"), split="val", device="cpu", cost=True))
        out[name] = result["cost"]
    record, model = load_student(str(runs / "mm-masked" / f"seed{seed}"))
    fewer = Student(ModelConfig(**{**model.cfg.to_dict(), "frames": SMALL_FRAMES}))
    fewer.load_state_dict(model.state_dict())
    out[f"mm-masked@{SMALL_FRAMES}"] = student_cost(root, fewer, record["input_keys"])
    return out


def budget_fields(budget: StudentBudget) -> dict:
    return asdict(budget)


def small_budget() -> StudentBudget:
    """The CI smoke test's budget: short fits and runs, 3 folds."""
    return replace(StudentBudget(), steps=200, fit_steps=200, folds=3)
