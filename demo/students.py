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
from egodistill.demo.protocol import SMALL_FRAMES, TEST_FRAMES, UNLABELLED_SPLIT
from egodistill.student.cost import student_cost
from egodistill.student.data import CacheLoader, present_inputs, teacher_logit_table
from egodistill.student.evaluate import EvalConfig, evaluate, input_subsets, load_student, scoring_loader
from egodistill.student.fit import FitConfig, fit_teachers
from egodistill.student.losses import dataset_weights, ensemble_logits
from egodistill.student.model import ModelConfig, Student
from egodistill.student.network import student_logits
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
    extractors: str = "base"   # base: the test_resnet features the teachers read; small: FINETUNE_EXTRACTOR's (P2.4k)
    network: bool = False      # an end-to-end student trained on the stored frames (inputs ["frames"])
    unlabelled: str | None = None  # also distil on this split's segments (train-student --unlabelled-split)


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


# Version 3's arms, run under `egodistill demo --finetune` (docs/demo-protocol.md, "Version 3").
FINETUNE_STUDENTS = [
    StudentRecipe("e2e-gt", "end-to-end RGB student on frames, ground truth only", ["frames"], network=True),
    StudentRecipe("e2e-kd-uniform", "end-to-end RGB student on frames distilled from the rgb+flow+audio teachers, uniform ensemble (primary)",
                  ["frames"], MODALITIES, "uniform", network=True),
    StudentRecipe("mm-masked-small", "rgb+flow+audio student on smaller extractors (test_byobnet) distilled from the fusion teacher, masking p=0.5",
                  MODALITIES, ["fusion"], mask_prob=0.5, extractors="small"),
]
FINETUNE_EXTRACTOR = "test_byobnet"  # 0.30 of test_resnet's FLOPs per frame (KARMMA's student: about a fifth of its teacher)
FRAME_SIZE = 48                      # stored frames; the network reads 40-px crops


# Version 4's arm (docs/demo-protocol.md, "Version 4"): rgb-kd-uniform's settings exactly, plus the unlabelled clips.
UNLABELLED_STUDENTS = [
    StudentRecipe("rgb-kd-uniform-unl", "RGB student distilled from the rgb+flow+audio teachers, uniform ensemble, plus the unlabelled clips (distillation only)",
                  ["rgb"], MODALITIES, "uniform", unlabelled=UNLABELLED_SPLIT),
]


def finetune_students(budget: "StudentBudget") -> list[StudentRecipe]:
    """Version 3's arms this run trains: the end-to-end pair with --finetune, mm-masked-small with --smaller-student."""
    return [r for r in FINETUNE_STUDENTS if (budget.finetune and r.network) or (budget.smaller_student and r.extractors == "small")]


@dataclass(frozen=True)
class NetworkBudget:
    """The end-to-end arms' settings (docs/demo-protocol.md, version 3), fixed before any of their runs."""

    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    image_size: int = 40
    flip: bool = False  # the demo's classes say left and right


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
    finetune: bool = False  # also version 3's end-to-end arms
    smaller_student: bool = False  # and version 3's mm-masked-small (three more extractions)
    network: NetworkBudget = field(default_factory=NetworkBudget)


def demo_segments(cache_path: str, inputs: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """The clips the statistics use: validation clips and labelled training clips, each with every input.

    `inputs`: the teachers' extractors, modality -> key (needed once the cache holds a second extractor per modality)."""
    root = cache.open_cache(cache_path, mode="r")
    table = root.segments
    present = present_inputs(root, [inputs[m] for m in MODALITIES] if inputs else resolve_inputs(root, MODALITIES)).all(axis=1)
    labelled = table.labels[HEAD] >= 0
    return {split: np.flatnonzero((table.split == split) & present & labelled) for split in ("train", "val")}


def train_command(cache_path: str, recipe: StudentRecipe, input_keys: list[str], teacher_keys: list[str], budget: StudentBudget, seed: int, out: Path,
                  init_from: str | None = None) -> str:
    """The CLI line that trains this run."""
    parts = [f"egodistill train-student --cache {cache_path} --inputs {','.join(input_keys)} --out {out}"]
    if recipe.network:
        n = budget.network
        parts.append(f"--init-from {init_from} --image-size {n.image_size} --batch-size {n.batch_size} --lr {n.lr} --weight-decay {n.weight_decay} --no-flip"
                     f" --steps {n.steps} --frames {budget.frames} --seed {seed} --device {budget.device}" + (" --in-memory" if budget.in_memory else ""))
    else:
        parts.append(f"--steps {budget.steps} --frames {budget.frames} --seed {seed} --device {budget.device}" + (" --in-memory" if budget.in_memory else ""))
    if teacher_keys:
        parts.append(f"--teachers {','.join(teacher_keys)} --weighting {recipe.weighting} --temperature {budget.temperature} --tau {budget.tau}")
    if recipe.mask_prob:
        parts.append(f"--mask-prob {recipe.mask_prob}")
    if recipe.unlabelled:
        parts.append(f"--unlabelled-split {recipe.unlabelled}")
    return " ".join(parts)


def fit_command(cache_path: str, budget: StudentBudget, seed: int, inputs: list[str]) -> str:
    return (f"egodistill fit-teachers --cache {cache_path} --modalities {','.join(inputs)} --fusion --folds {budget.folds} "
            f"--steps {budget.fit_steps} --depths 0 --frames {budget.frames} --seed {seed} --device {budget.device}")


def budget_from_fields(fields: dict) -> StudentBudget:
    return StudentBudget(**{**fields, "network": NetworkBudget(**fields["network"])})


def run_seed(job: tuple[str, str, int, dict, bool, dict]) -> dict:
    """One seed: fit the four teachers, train every arm, return logits per clip and the timings.

    `job` = (cache, runs folder, seed, StudentBudget as a dict, whether to count costs, input keys: group ->
    modality -> key, groups "base" (the teachers' extractors), and with --finetune "small" and "frames");
    a tuple so that a process pool can send it."""
    cache_path, runs, seed, budget_fields, count_cost, keys = job
    budget = budget_from_fields(budget_fields)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny heads: one thread each (the seeds run in parallel processes)
    try:
        return _run_seed(cache_path, Path(runs), seed, budget, count_cost, keys)
    finally:
        torch.set_num_threads(threads)


def _run_seed(cache_path: str, runs: Path, seed: int, budget: StudentBudget, count_cost: bool, inputs: dict[str, dict[str, str]]) -> dict:
    segments = demo_segments(cache_path, inputs["base"])
    base = [inputs["base"][m] for m in MODALITIES]
    started = time.perf_counter()
    fitted = fit_teachers(FitConfig(cache=cache_path, modalities=base, fusion=True, folds=budget.folds, seed=seed, steps=budget.fit_steps,
                                    depths=(0,), frames=budget.frames, device=budget.device), log=lambda _: None)
    fit_seconds = time.perf_counter() - started
    keys = {f.modality: f.key for f in fitted}
    out: dict = {"seed": seed, "teacher_keys": keys, "fit_seconds": fit_seconds, "train_seconds": {}, "commands": [fit_command(cache_path, budget, seed, base)],
                 "oof_accuracy": {f.modality: {str(d): a for d, a in f.oof_accuracy.items()} for f in fitted}, "students": {}}
    root = cache.open_cache(cache_path, mode="r")
    for recipe in STUDENTS + finetune_students(budget) + UNLABELLED_STUDENTS:
        teacher_keys = [keys[t] for t in recipe.teachers]
        input_keys = [inputs[recipe.extractors][m] for m in recipe.inputs] if not recipe.network else [inputs["frames"]["frames"]]
        run = runs / recipe.name / f"seed{seed}"
        shutil.rmtree(run, ignore_errors=True)  # students are the cheap part: always trained afresh
        cfg = TrainConfig(cache=cache_path, inputs=input_keys, teachers=teacher_keys, out=str(run), weighting=recipe.weighting,
                          tau=budget.tau, temperature=budget.temperature, mask_prob=recipe.mask_prob, steps=budget.steps, frames=budget.frames,
                          seed=seed, device=budget.device, in_memory=budget.in_memory, unlabelled_split=recipe.unlabelled)
        if recipe.network:
            n = budget.network
            cfg = replace(cfg, init_from=inputs["base"]["rgb"], image_size=n.image_size, batch_size=n.batch_size, lr=n.lr, weight_decay=n.weight_decay,
                          flip=n.flip, steps=n.steps)
        started = time.perf_counter()
        train(cfg, log=lambda _: None)
        out["train_seconds"][recipe.name] = time.perf_counter() - started
        out["commands"].append(train_command(cache_path, recipe, input_keys, teacher_keys, budget, seed, run, cfg.init_from))
        if recipe.network:
            out["students"][recipe.name] = {f"frames{k}": predict_frames(root, run, segments["val"], k) for k in TEST_FRAMES}
        elif len(recipe.inputs) == 1:
            out["students"][recipe.name] = {f"frames{k}": predict(root, run, segments["val"], k)["+".join(recipe.inputs)] for k in TEST_FRAMES}
        else:
            out["students"][recipe.name] = predict(root, run, segments["val"], budget.frames)
        if recipe.name == "mm-masked":  # P2.4's secondary row: the same student reading fewer frames
            out["masked_fewer_frames"] = predict(root, run, segments["val"], SMALL_FRAMES)["+".join(recipe.inputs)]
    out["teachers"] = teacher_predictions(root, keys, segments, budget.tau)
    if count_cost:
        out["cost"] = costs(cache_path, runs, seed, root, finetune_students(budget))
    return out


@torch.no_grad()
def predict_frames(root: cache.Cache, run: Path, segments: np.ndarray, frames: int) -> np.ndarray:
    """Logits [N, C] of a trained end-to-end student on `frames` frames per clip (centred window, the
    backbone's centred crop, as `evaluate` scores it), in `segments` order."""
    record, model = load_student(str(run))
    model.eval()
    keys = record["input_keys"]
    loader = scoring_loader(model, root, keys, segments, root.segments.labels, present_inputs(root, keys), 64, torch.device("cpu"), frames)
    position = np.full(len(root.segments.split), -1, dtype=np.int64)
    position[segments] = np.arange(len(segments))
    out = np.full((len(segments), model.cfg.heads[HEAD]), np.nan, dtype=np.float32)
    for batch in loader.epoch(0):
        out[position[batch.index.numpy()]] = student_logits(model, batch, batch.present)[HEAD].float().numpy()
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


def costs(cache_path: str, runs: Path, seed: int, root: cache.Cache, finetune: list[StudentRecipe] = ()) -> dict:
    """Params and FLOPs per clip (evaluate's `cost`) of the primary RGB student and its three teachers, of the
    masked student and its fusion teacher, and of the masked student reading SMALL_FRAMES frames; with
    the arms of version 3 in `finetune` too."""
    out = {}
    for name in ("rgb-kd-uniform", "mm-masked") + tuple(r.name for r in finetune):
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
    return replace(StudentBudget(), steps=200, fit_steps=200, folds=3, network=NetworkBudget(steps=20))
