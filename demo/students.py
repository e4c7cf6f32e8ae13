"""The demo's student half: fit teachers, train the compared students over seeds, evaluate them.

Every step goes through the functions the CLI commands call (`fit_teachers`, `train`,
`evaluate`), so the commands written into the report reproduce each row.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from egodistill.student.evaluate import EvalConfig, evaluate
from egodistill.student.fit import FitConfig, fit_teachers
from egodistill.student.train import TrainConfig, train

MODALITIES = ["rgb", "flow", "audio"]


@dataclass(frozen=True)
class StudentRecipe:
    name: str
    title: str
    inputs: list[str]
    teachers: list[str] = field(default_factory=list)
    weighting: str = "uniform"
    mask_prob: float = 0.0


# Fixed before any result was seen; the same budget for every student.
STUDENTS = [
    StudentRecipe("rgb-gt", "RGB student, ground truth only", ["rgb"]),
    StudentRecipe("rgb-kd-uniform", "RGB student, distilled from rgb+flow+audio (uniform)", ["rgb"], MODALITIES, "uniform"),
    StudentRecipe("rgb-kd-per-sample", "RGB student, distilled from rgb+flow+audio (per-sample)", ["rgb"], MODALITIES, "per-sample"),
    StudentRecipe("rgb-kd-dataset", "RGB student, distilled from rgb+flow+audio (dataset)", ["rgb"], MODALITIES, "dataset"),
    StudentRecipe("mm-unmasked", "rgb+flow+audio student from the fusion teacher, no masking", MODALITIES, ["fusion"]),
    StudentRecipe("mm-masked", "rgb+flow+audio student from the fusion teacher, modality masking p=0.5", MODALITIES, ["fusion"], mask_prob=0.5),
]


@dataclass
class StudentBudget:
    """Training settings shared by every student of the demo."""

    steps: int = 0          # train-student's default budget (0 = auto)
    frames: int = 8
    temperature: float = 2.0
    tau: float = 1.0
    fit_steps: int = 0      # fit-teachers' default budget (0 = auto)
    folds: int = 5
    device: str = "cpu"
    in_memory: bool = True  # the demo's cache is a few MB: no reader threads competing with training


def train_command(cache: str, recipe: StudentRecipe, budget: StudentBudget, seed: int, out: Path) -> str:
    """The CLI line that trains this row, for the report."""
    parts = [f"egodistill train-student --cache {cache} --inputs {','.join(recipe.inputs)} --out {out}",
             f"--steps {budget.steps} --frames {budget.frames} --seed {seed} --device {budget.device}" + (" --in-memory" if budget.in_memory else "")]
    if recipe.teachers:
        parts.append(f"--teachers {','.join(recipe.teachers)} --weighting {recipe.weighting} --temperature {budget.temperature} --tau {budget.tau}")
    if recipe.mask_prob:
        parts.append(f"--mask-prob {recipe.mask_prob}")
    return " ".join(parts)


def run_students(cache: str, out: Path, seeds: list[int], budget: StudentBudget, log: Callable[[str], None] = print) -> dict:
    """Fit teachers, then train and evaluate every recipe for every seed. Returns the raw results."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    fit_teachers(FitConfig(cache=cache, modalities=MODALITIES, fusion=True, folds=budget.folds, seed=0, steps=budget.fit_steps,
                           frames=budget.frames, device=budget.device), log=lambda _: None)
    timings["fit_teachers"] = time.perf_counter() - t0
    log(f"fit-teachers: rgb, flow, audio and fusion with {budget.folds}-fold cross-fitting ({timings['fit_teachers']:.1f} s)")

    runs_dir = out / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)  # students are the cheap part: always trained afresh
    results: dict[str, dict] = {}
    for recipe in STUDENTS:
        per_seed = []
        for seed in seeds:
            run = runs_dir / recipe.name / f"seed{seed}"
            cfg = TrainConfig(
                cache=cache, inputs=recipe.inputs, teachers=recipe.teachers, out=str(run), weighting=recipe.weighting,
                tau=budget.tau, temperature=budget.temperature, mask_prob=recipe.mask_prob, steps=budget.steps, frames=budget.frames,
                seed=seed, device=budget.device, in_memory=budget.in_memory,
            )
            started = time.perf_counter()
            train(cfg, log=lambda _: None)
            seconds = time.perf_counter() - started
            evaluation = evaluate(EvalConfig(cache=cache, run=str(run), split="val", device=budget.device, cost=seed == seeds[0]))
            per_seed.append({"seed": seed, "seconds": seconds, "evaluation": evaluation, "command": train_command(cache, recipe, budget, seed, run)})
            full = evaluation["subsets"][0]["metrics"]
            log(f"{recipe.name} seed {seed}: top-1 {100 * _top1(full):.1f} %, ECE {_ece(full):.1f} ({seconds:.1f} s)")
        results[recipe.name] = {"recipe": recipe, "runs": per_seed}
    return {"timings": timings, "students": results}


def _top1(metrics: dict) -> float:
    return metrics.get("action_top1", next(v for k, v in metrics.items() if k.endswith("_top1")))


def _ece(metrics: dict) -> float:
    return statistics.fmean(v for k, v in metrics.items() if k.endswith("_ece"))


def summarise(raw: dict) -> dict:
    """Mean ± std over seeds of top-1 and ECE, per student and per input subset; the teachers' figures."""
    students = {}
    for name, entry in raw["students"].items():
        runs = entry["runs"]
        subsets = {}
        for i, subset in enumerate(runs[0]["evaluation"]["subsets"]):
            top1 = [_top1(r["evaluation"]["subsets"][i]["metrics"]) * 100 for r in runs]
            ece = [_ece(r["evaluation"]["subsets"][i]["metrics"]) for r in runs]
            subsets[subset["name"]] = {"top1": _stats(top1), "ece": _stats(ece)}
        full = next(iter(subsets.values()))
        students[name] = {
            "title": entry["recipe"].title, "inputs": entry["recipe"].inputs, "teachers": entry["recipe"].teachers,
            "top1": full["top1"], "ece": full["ece"], "subsets": subsets,
            "seconds": _stats([r["seconds"] for r in runs]), "commands": [r["command"] for r in runs],
            "cost": runs[0]["evaluation"].get("cost"),
        }
    teachers = {}
    for entry in raw["students"].values():
        for t in entry["runs"][0]["evaluation"]["teacher_metrics"]:
            teachers.setdefault(t["teacher"], {"top1": 100 * _top1(t["metrics"]), "ece": _ece(t["metrics"])})
    return {"students": students, "teachers": teachers}


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def check_claims(summary: dict) -> dict:
    """The two papers' claims, each with the numbers that decide it."""
    s = summary["students"]
    gt = s["rgb-gt"]
    distilled = {k: v for k, v in s.items() if k.startswith("rgb-kd-")}
    best = max(distilled, key=lambda k: distilled[k]["top1"]["mean"])
    wins = [k for k, v in distilled.items() if v["top1"]["mean"] > gt["top1"]["mean"] and v["ece"]["mean"] < gt["ece"]["mean"]]
    paper1 = {
        "claim": "An RGB student distilled from the rgb+flow+audio ensemble is more accurate and better calibrated than the RGB student trained on ground truth.",
        "ground_truth": {"top1": gt["top1"]["mean"], "ece": gt["ece"]["mean"]},
        "distilled": {k: {"top1": v["top1"]["mean"], "ece": v["ece"]["mean"]} for k, v in distilled.items()},
        "schemes_where_it_holds": wins,
        "holds": bool(wins),
        "best_scheme": best,
    }
    drops = {}
    for name in ("mm-unmasked", "mm-masked"):
        subsets = s[name]["subsets"]
        full = next(iter(subsets.values()))["top1"]["mean"]
        missing = [v["top1"]["mean"] for k, v in list(subsets.items())[1:]]
        drops[name] = {"full": full, "mean_drop": full - statistics.fmean(missing), "worst_drop": full - min(missing)}
    masked, unmasked = drops["mm-masked"], drops["mm-unmasked"]
    paper2 = {
        "claim": "A multimodal student trained with random modality masking loses less accuracy than one trained without it when modalities are missing.",
        "drops": drops,
        "holds_mean": masked["mean_drop"] < unmasked["mean_drop"],
        "holds_worst": masked["worst_drop"] < unmasked["worst_drop"],
    }
    paper2["holds"] = paper2["holds_mean"] and paper2["holds_worst"]
    return {"paper1": paper1, "paper2": paper2}


def explain_claims(claims: dict) -> dict[str, str]:
    """One factual sentence per claim: the size of the effect, and where it falls short, by how much."""
    c1 = claims["paper1"]
    gt = c1["ground_truth"]
    best = c1["distilled"][c1["best_scheme"]]
    text1 = (f"Best scheme {c1['best_scheme']}: {best['top1'] - gt['top1']:+.1f} top-1 points and {best['ece'] - gt['ece']:+.1f} ECE "
             f"against the ground-truth student.")
    if c1["holds"]:
        text1 += f" Both better for: {', '.join(c1['schemes_where_it_holds'])}."
    else:
        worse = [k for k, v in c1["distilled"].items() if v["top1"] <= gt["top1"] or v["ece"] >= gt["ece"]]
        text1 += f" Not both better for: {', '.join(worse)}."
    c2 = claims["paper2"]
    m, u = c2["drops"]["mm-masked"], c2["drops"]["mm-unmasked"]
    text2 = (f"Masking changes the mean drop by {m['mean_drop'] - u['mean_drop']:+.1f} points and the worst-case drop by "
             f"{m['worst_drop'] - u['worst_drop']:+.1f} points; with all inputs present it costs {u['full'] - m['full']:+.1f} points.")
    return {"paper1": text1, "paper2": text2}
