"""The protocol's tests (docs/demo-protocol.md): the teacher gate, paper 1's and paper 2's claims, with
intervals from demo/stats.py and one verdict sentence each. Input: the per-seed outputs of
demo/students.run_seed; output: plain dicts for results.json."""

from __future__ import annotations

import numpy as np

from egodistill.demo import stats
from egodistill.demo.protocol import FEWER_FRAMES, FLOPS_RATIO, MARGINS, SMALL_FRAMES, TEST_FRAMES
from egodistill.demo.students import FINETUNE_STUDENTS, STUDENTS, TEACHERS, UNLABELLED_STUDENTS
from egodistill.demo.stats import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Estimate

GATE_NOTE = " The teachers failed the gate (not worth learning from), so this distillation verdict is inconclusive whatever its interval."


def stack(per_seed: list[dict], path: tuple[str, ...]) -> np.ndarray:
    """[S, N, C] from each seed's array at `path` (keys into the run_seed output)."""
    arrays = []
    for seed in per_seed:
        value = seed
        for key in path:
            value = value[key]
        arrays.append(np.asarray(value, dtype=np.float64))
    return np.stack(arrays)


def analyse(per_seed: list[dict], labels: dict[str, np.ndarray], draws: dict[str, stats.Draws], num_classes: int) -> dict:
    """Every number the report shows: metrics with intervals per arm, teacher and ensemble; the gate; the claims."""
    val, train = labels["val"], labels["train"]
    dv = draws["val"]

    students: dict[str, dict] = {}
    estimates: dict[str, dict] = {}     # arm -> variant -> metric -> Estimate
    # Version 3's arms run under --finetune; version 4's always (absent from outputs saved by an earlier version).
    recipes = STUDENTS + [r for r in FINETUNE_STUDENTS + UNLABELLED_STUDENTS if r.name in per_seed[0]["students"]]
    for recipe in recipes:
        variants = per_seed[0]["students"][recipe.name]
        estimates[recipe.name] = {v: stats.metrics(stack(per_seed, ("students", recipe.name, v)), val, dv) for v in variants}
    teachers = {t: stats.metrics(stack(per_seed, ("teachers", "val", t)), val, dv) for t in [*TEACHERS, "ensemble-uniform", "ensemble-dataset"]}

    # The gate, on the training clips' out-of-fold logits only.
    dt = draws["train"]
    chance = 100.0 / num_classes
    oof = {t: stats.accuracy(stack(per_seed, ("teachers", "train", t)), train, dt) for t in [*TEACHERS, "ensemble-uniform"]}
    gate_tests = [{"test": f"{t} teacher above chance", "difference": (oof[t] - chance).to_json(), "passed": (oof[t] - chance).interval()[0] > 0}
                  for t in TEACHERS]
    ens = oof["ensemble-uniform"] - oof["rgb"]
    gate_tests.append({"test": "uniform ensemble of rgb, flow, audio above the rgb teacher", "difference": ens.to_json(), "passed": ens.interval()[0] > 0})
    gate = {"top1_out_of_fold": {t: e.to_json() for t, e in oof.items()}, "chance": chance, "tests": gate_tests,
            "passed": all(t["passed"] for t in gate_tests), "clips": int(len(train))}

    fewer = stats.accuracy(stack(per_seed, ("masked_fewer_frames",)), val, dv)
    claims = _paper1(estimates, gate["passed"]) + _paper2(estimates, teachers, fewer, per_seed[0].get("cost"), gate["passed"])
    if "e2e-gt" in estimates:
        claims += _end_to_end(estimates, teachers, per_seed[0].get("cost"), gate["passed"])
    if "mm-masked-small" in estimates:
        claims += _smaller_student(estimates, teachers, per_seed[0].get("cost"))
    if "rgb-kd-uniform-unl" in estimates:
        claims += _unlabelled(estimates, gate["passed"])

    for recipe in recipes:
        e = estimates[recipe.name]
        entry = {"title": recipe.title, "inputs": recipe.inputs, "teachers": recipe.teachers, "weighting": recipe.weighting if recipe.teachers else None,
                 "mask_prob": recipe.mask_prob, "seconds": float(np.mean([s["train_seconds"][recipe.name] for s in per_seed]))}
        if len(recipe.inputs) == 1:
            entry["metrics"] = _json(e[f"frames{TEST_FRAMES[0]}"])
            entry["frames"] = {str(k): _json(e[f"frames{k}"]) for k in TEST_FRAMES}
        else:
            full = "+".join(recipe.inputs)
            entry["metrics"] = _json(e[full])
            entry["subsets"] = {name: _json(m) for name, m in e.items()}
        students[recipe.name] = entry
    return {
        "students": students,
        "teachers": {t: _json(m) for t, m in teachers.items()},
        "dataset_weights": [s["teachers"]["dataset_weights"] for s in per_seed],
        "gate": gate,
        "masked_fewer_frames": {"frames": SMALL_FRAMES, "top1": fewer.to_json()},
        "claims": claims,
    }


def _json(metrics: dict[str, Estimate]) -> dict:
    return {k: v.to_json() for k, v in metrics.items()}


def _claim(cid: str, paper: int, primary: bool, claim: str, statistic: str, what: str, improvement: Estimate, margin: float, unit: str,
           gated: bool, gate_passed: bool) -> dict:
    """One tested claim: its improvement (positive favours the claim) with interval, margin and verdict."""
    lo, hi = improvement.interval()
    result = stats.verdict(improvement, margin)
    vetoed = gated and not gate_passed
    if vetoed:
        result = INCONCLUSIVE
    return {"id": cid, "paper": paper, "primary": primary, "claim": claim, "statistic": statistic, "margin": margin, "unit": unit,
            "improvement": improvement.to_json(), "verdict": result, "gate_vetoed": vetoed,
            "sentence": f"{cid} {result}: {what} is {_amount(improvement.value, unit)} {unit} (95 % interval {_amount(lo, unit)} to {_amount(hi, unit)}; "
                        f"margin {margin:g} {unit})." + (GATE_NOTE if vetoed else "")}


def _both(cid: str, primary: bool, claim: str, parts: list[dict]) -> dict:
    """A claim made of parts: holds if all hold, does not hold if any does not, else inconclusive."""
    result = stats.combine(p["verdict"] for p in parts)
    return {"id": cid, "paper": 1, "primary": primary, "claim": claim, "statistic": " and ".join(p["id"] for p in parts), "verdict": result,
            "parts": [p["id"] for p in parts], "gate_vetoed": any(p["gate_vetoed"] for p in parts),
            "sentence": f"{cid} {result}: " + " and ".join(f"{p['id']} {p['verdict']}" for p in parts) + "."}


def _amount(x: float, unit: str) -> str:
    return f"{x:+.3f}" if unit == "nats" else f"{x:+.1f}"


def _paper1(e: dict, gate: bool) -> list[dict]:
    gt, out = e["rgb-gt"], []
    full = f"frames{TEST_FRAMES[0]}"
    for scheme in ("uniform", "per-sample", "dataset"):
        kd = e[f"rgb-kd-{scheme}"]
        primary = scheme == "uniform"
        tag = "" if primary else f" [{scheme}]"
        accurate = _claim(f"P1.1{tag}", 1, primary, f"The RGB student distilled from the rgb+flow+audio ensemble ({scheme}) is more accurate than the one trained on ground truth.",
                          "top-1(kd) - top-1(gt)", f"the {scheme}-distilled RGB student's top-1 minus the ground-truth one's",
                          kd[full]["top1"] - gt[full]["top1"], MARGINS["top1"], "points", True, gate)
        calibrated = _claim(f"P1.2{tag}", 1, primary, f"The RGB student distilled ({scheme}) is better calibrated than the one trained on ground truth.",
                            "ECE(gt) - ECE(kd), x100", f"the ground-truth RGB student's ECE minus the {scheme}-distilled one's",
                            gt[full]["ece"] - kd[full]["ece"], MARGINS["ece"], "ECE points", True, gate)
        out += [accurate, calibrated, _both(f"P1{tag}", primary, f"More accurate and better calibrated ({scheme}).", [accurate, calibrated])]
        out.append(_claim(f"P1.NLL{tag}", 1, False, f"The RGB student distilled ({scheme}) has a lower NLL than the one trained on ground truth.",
                          "NLL(gt) - NLL(kd)", f"the ground-truth RGB student's NLL minus the {scheme}-distilled one's",
                          gt[full]["nll"] - kd[full]["nll"], MARGINS["nll"], "nats", True, gate))
    kd = e["rgb-kd-uniform"]
    drops = {k: (kd[f"frames{k}"]["top1"] - kd[full]["top1"]) - (gt[f"frames{k}"]["top1"] - gt[full]["top1"]) for k in FEWER_FRAMES}
    out.append(_claim("P1.3", 1, True, "The distilled RGB student keeps more accuracy than the ground-truth one when fewer frames are used at test time.",
                      "mean over k in 4, 2, 1 of [drop_k(kd) - drop_k(gt)]; drop_k = top-1 at k frames - top-1 at 8",
                      "the distilled student's top-1 drop from 8 frames (to 4, 2 and 1, averaged) minus the ground-truth one's",
                      stats.mean_of(drops.values()), MARGINS["top1"], "points", True, gate))
    for k, d in drops.items():
        out.append(_claim(f"P1.3 [{k}]", 1, False, f"... with {k} frame{'s' if k > 1 else ''} at test time.", f"drop_{k}(kd) - drop_{k}(gt)",
                          f"with {k} frame{'s' if k > 1 else ''}, the distilled student's drop minus the ground-truth one's", d, MARGINS["top1"], "points", True, gate))
    return out


def _paper2(e: dict, teachers: dict, fewer: Estimate, cost: dict | None, gate: bool) -> list[dict]:
    masked, unmasked, gt = e["mm-masked"], e["mm-unmasked"], e["mm-masked-gt"]
    subsets = list(masked)
    full = subsets[0]
    out = [
        _claim("P2.1", 2, True, "A student trained with modality masking is more accurate over the subsets of its inputs than one trained without.",
               "mean over the 7 subsets of top-1(masked) - top-1(unmasked)", "the masked student's top-1 minus the unmasked one's, averaged over the 7 input subsets",
               stats.mean_of(masked[s]["top1"] - unmasked[s]["top1"] for s in subsets), MARGINS["top1"], "points", False, gate),
        _claim("P2.2", 2, True, "... and in the worst case over the subsets.", "min over subsets of top-1(masked) - min over subsets of top-1(unmasked)",
               "the masked student's worst-subset top-1 minus the unmasked one's",
               stats.min_of(masked[s]["top1"] for s in subsets) - stats.min_of(unmasked[s]["top1"] for s in subsets), MARGINS["top1"], "points", False, gate),
        _claim("P2.3", 2, True, "Distillation from the fusion teacher helps the masked student (KARMMA's KD against ground truth only).",
               "mean over the 7 subsets of top-1(masked, distilled) - top-1(masked, ground truth)",
               "the distilled masked student's top-1 minus the ground-truth masked one's, averaged over the 7 subsets",
               stats.mean_of(masked[s]["top1"] - gt[s]["top1"] for s in subsets), MARGINS["top1"], "points", True, gate),
    ]
    for s in subsets:
        out.append(_claim(f"P2.1 [{s}]", 2, False, f"... with only {s} at test time." if s != full else "... with every input present (the cost of masking).",
                          f"top-1(masked) - top-1(unmasked) on {s}", f"on {s}, the masked student's top-1 minus the unmasked one's",
                          masked[s]["top1"] - unmasked[s]["top1"], MARGINS["top1"], "points", False, gate))
    if cost is not None:
        out.append(_smaller("P2.4", True, masked[full]["top1"], teachers["fusion"]["top1"], cost["mm-masked"]["student"], cost["mm-masked"]["teachers"][0], 8))
        out.append(_smaller(f"P2.4 [{SMALL_FRAMES}]", False, fewer, teachers["fusion"]["top1"], cost[f"mm-masked@{SMALL_FRAMES}"], cost["mm-masked"]["teachers"][0], SMALL_FRAMES))
    return out


def _end_to_end(e: dict, teachers: dict, cost: dict | None, gate: bool) -> list[dict]:
    """Version 3: the end-to-end RGB student distilled against the same student on ground truth (E1), and the
    representation learned against the frozen-feature heads (E0)."""
    full = f"frames{TEST_FRAMES[0]}"
    gt, kd = e["e2e-gt"], e["e2e-kd-uniform"]
    accurate = _claim("E1.1", 1, True, "The end-to-end RGB student distilled from the rgb+flow+audio ensemble (uniform) is more accurate than the same student trained on ground truth.",
                      "top-1(e2e-kd) - top-1(e2e-gt)", "the distilled end-to-end student's top-1 minus the ground-truth one's",
                      kd[full]["top1"] - gt[full]["top1"], MARGINS["top1"], "points", True, gate)
    calibrated = _claim("E1.2", 1, True, "The distilled end-to-end RGB student is better calibrated than the one trained on ground truth.",
                        "ECE(e2e-gt) - ECE(e2e-kd), x100", "the ground-truth end-to-end student's ECE minus the distilled one's",
                        gt[full]["ece"] - kd[full]["ece"], MARGINS["ece"], "ECE points", True, gate)
    out = [accurate, calibrated, _both("E1", True, "The end-to-end student: more accurate and better calibrated.", [accurate, calibrated])]
    out.append(_claim("E1.NLL", 1, False, "The distilled end-to-end RGB student has a lower NLL than the one trained on ground truth.",
                      "NLL(e2e-gt) - NLL(e2e-kd)", "the ground-truth end-to-end student's NLL minus the distilled one's",
                      gt[full]["nll"] - kd[full]["nll"], MARGINS["nll"], "nats", True, gate))
    drops = [(kd[f"frames{k}"]["top1"] - kd[full]["top1"]) - (gt[f"frames{k}"]["top1"] - gt[full]["top1"]) for k in FEWER_FRAMES]
    out.append(_claim("E1.3", 1, False, "The distilled end-to-end student keeps more accuracy than the ground-truth one with fewer frames at test time.",
                      "mean over k in 4, 2, 1 of [drop_k(e2e-kd) - drop_k(e2e-gt)]", "the distilled end-to-end student's drop from 8 frames minus the ground-truth one's",
                      stats.mean_of(drops), MARGINS["top1"], "points", True, gate))
    out.append(_claim("E0", 1, False, "Learning the representation: the end-to-end student on ground truth is more accurate than the head on frozen rgb features.",
                      "top-1(e2e-gt) - top-1(rgb-gt)", "the end-to-end ground-truth student's top-1 minus the frozen-feature one's",
                      gt[full]["top1"] - e["rgb-gt"][full]["top1"], MARGINS["top1"], "points", False, gate))
    out.append(_claim("E0.kd", 1, False, "... and distilled: the end-to-end distilled student is more accurate than the distilled head on frozen rgb features.",
                      "top-1(e2e-kd) - top-1(rgb-kd-uniform)", "the end-to-end distilled student's top-1 minus the frozen-feature distilled one's",
                      kd[full]["top1"] - e["rgb-kd-uniform"][full]["top1"], MARGINS["top1"], "points", False, gate))
    return out


def _unlabelled(e: dict, gate: bool) -> list[dict]:
    """Version 4: the distilled RGB student with the unlabelled clips in its draw against the same student without them."""
    full = f"frames{TEST_FRAMES[0]}"
    base, unl = e["rgb-kd-uniform"][full], e["rgb-kd-uniform-unl"][full]
    return [
        _claim("U1", 1, True, "Distilling on unlabelled clips too makes the RGB student (uniform ensemble) more accurate than distilling on the labelled clips alone.",
               "top-1(rgb-kd-uniform-unl) - top-1(rgb-kd-uniform)", "the top-1 of the RGB student distilled with the unlabelled clips minus the one without them",
               unl["top1"] - base["top1"], MARGINS["top1"], "points", True, gate),
        _claim("U1.ECE", 1, False, "... and better calibrated.", "ECE(rgb-kd-uniform) - ECE(rgb-kd-uniform-unl), x100",
               "the ECE of the RGB student distilled without the unlabelled clips minus the one with them",
               base["ece"] - unl["ece"], MARGINS["ece"], "ECE points", True, gate),
    ]


def _smaller_student(e: dict, teachers: dict, cost: dict | None) -> list[dict]:
    """Version 3's P2.4k: P2.4's rule for the masked student on extractors smaller than its teacher's (KARMMA's setting)."""
    if cost is None or "mm-masked-small" not in cost:
        return []
    small = e["mm-masked-small"]
    return [_smaller("P2.4k", True, small[next(iter(small))]["top1"], teachers["fusion"]["top1"], cost["mm-masked-small"]["student"],
                     cost["mm-masked-small"]["teachers"][0], 8, "the masked student on the smaller extractors")]


def _smaller(cid: str, primary: bool, student_top1: Estimate, teacher_top1: Estimate, student: dict, teacher: dict, frames: int,
             who: str = "the masked student") -> dict:
    """P2.4: the FLOPs ratio (a count: no interval) and the accuracy kept, student - teacher (an interval)."""
    ratio = student["flops"] / teacher["flops"] if student["flops"] and teacher["flops"] else None
    params = student["params"] / teacher["params"] if student["params"] and teacher["params"] else None
    kept = student_top1 - teacher_top1
    lo, hi = kept.interval()
    margin = MARGINS["top1"]
    if ratio is None:
        result = INCONCLUSIVE
    elif ratio > FLOPS_RATIO or hi < -margin:
        result = DOES_NOT_HOLD
    elif lo > -margin:
        result = HOLDS
    else:
        result = INCONCLUSIVE
    ratio_text = "an unknown share" if ratio is None else f"{ratio:.2f}"
    return {"id": cid, "paper": 2, "primary": primary,
            "claim": f"A smaller student keeps the teacher's accuracy: at most {FLOPS_RATIO} of its FLOPs and top-1 within {margin:g} points."
                     + ("" if primary else f" (The masked student reading {frames} frames.)"),
            "statistic": "FLOPs(student) / FLOPs(fusion teacher); top-1(masked student, all inputs) - top-1(fusion teacher)",
            "margin": margin, "unit": "points", "improvement": kept.to_json(), "flops_ratio": ratio, "params_ratio": params, "frames": frames,
            "student_cost": {"params": student["params"], "flops": student["flops"]}, "teacher_cost": {"params": teacher["params"], "flops": teacher["flops"]},
            "verdict": result, "gate_vetoed": False,
            "sentence": (f"{cid} {result}: {who} ({frames} frames) costs {ratio_text} of the fusion teacher's FLOPs per clip "
                         f"(threshold {FLOPS_RATIO}; parameters {'?' if params is None else f'{params:.2f}'}) and its top-1 minus the teacher's is "
                         f"{kept.value:+.1f} points (95 % interval {lo:+.1f} to {hi:+.1f}; margin -{margin:g} points).")}
