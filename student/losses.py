"""Distillation losses: temperature KD, teacher-ensemble weighting, and the combined student loss.

The formulas follow research/seeds.md (Radevski et al. 2023): the ensemble is a weighted sum of
teacher *logits*; `per-sample` weights are softmin(CE_i / tau) against the sample's label;
`dataset` weights are softmin(mean CE_i / tau) over held-out training data, fixed for a run.

A teacher without logits for a segment (NaN rows: e.g. no audio track) is left out of that
segment's ensemble and the other teachers' weights are renormalised over the ones present, so a
distilled student trains on the same segments as a ground-truth one. A segment with no teacher at
all gets the ground-truth term alone. Unlabelled segments weigh their present teachers uniformly
under `per-sample` (there is no label to score the teachers against).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from egodistill.cache import UNLABELLED
from egodistill.student.step import SCHEMES

HIGH_TEMPERATURE = 8.0


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), mean over the batch ("batchmean").

    The T^2 factor keeps the gradient scale independent of T (Hinton et al.), so kd_weight means
    the same thing at every temperature. Both inputs are [batch, classes]; `mask` [batch] keeps
    only the samples that have a teacher (the mean is over those)."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape")
    # At least float32 (bf16 autocast outputs); float64 inputs stay float64, which high T needs.
    # float64 at high T: the KL shrinks like 1/T^2 and float32 cancellation would swamp it.
    floor = torch.float64 if temperature > HIGH_TEMPERATURE else torch.float32
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), floor)
    if mask is not None:
        student_logits, teacher_logits = student_logits[mask], teacher_logits[mask]
        if len(student_logits) == 0:
            return student_logits.new_zeros((), dtype=torch.float32)
    student_log_probs = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return (kl * temperature**2).float()


def teacher_present(teacher_logits: torch.Tensor) -> torch.Tensor:
    """bool [batch, teachers]: the teacher has logits for the sample (no NaN)."""
    return torch.isfinite(teacher_logits).all(dim=-1)


def teacher_ce(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every teacher against the label: [batch, teachers]; 0 where the label is -1,
    +inf where the teacher has no logits for the sample."""
    b, k, c = teacher_logits.shape
    safe = labels.clamp(min=0).long()
    present = teacher_present(teacher_logits)
    log_probs = F.log_softmax(torch.where(present.unsqueeze(-1), teacher_logits.float(), 0.0), dim=-1)
    ce = -log_probs.gather(-1, safe.view(b, 1, 1).expand(b, k, 1)).squeeze(-1)
    ce = torch.where((labels >= 0).view(b, 1), ce, torch.zeros_like(ce))
    return torch.where(present, ce, torch.full_like(ce, math.inf))


def softmin(values: torch.Tensor, tau: float, dim: int = -1) -> torch.Tensor:
    """softmax(-values / tau). tau = 0 picks the minimum (ties share); tau = inf is uniform."""
    if tau < 0 or math.isnan(tau):
        raise ValueError(f"tau must be >= 0, got {tau}")
    if tau == 0:
        best = values == values.min(dim=dim, keepdim=True).values
        return best.float() / best.sum(dim=dim, keepdim=True)
    if math.isinf(tau):
        return torch.full_like(values, 1.0 / values.shape[dim])
    return torch.softmax(-values / tau, dim=dim)


def dataset_weights(teacher_logits: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """[teachers] weights: softmin of each teacher's mean CE over the labelled samples given."""
    labelled = labels >= 0
    if not bool(labelled.any()):
        raise ValueError("dataset weights need labelled held-out samples, none were given")
    ce = teacher_ce(teacher_logits[labelled], labels[labelled])
    seen = torch.isfinite(ce)
    # Each teacher's mean over the samples it has logits for; one that has none gets weight 0.
    mean_ce = torch.where(seen, ce, 0.0).sum(dim=0) / seen.sum(dim=0).clamp(min=1)
    mean_ce = torch.where(seen.any(dim=0), mean_ce, torch.full_like(mean_ce, math.inf))
    return softmin(mean_ce, tau)


def ensemble_logits(
    teacher_logits: torch.Tensor, labels: torch.Tensor | None, scheme: str, tau: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted sum of teacher logits [batch, teachers, classes] -> [batch, classes].

    scheme "uniform": 1/N; "per-sample": softmin(CE_i / tau) per sample, uniform where the label
    is -1; "dataset": the fixed `weights` [teachers] (see `dataset_weights`). Weights are
    renormalised over the teachers present for each sample; a sample without any gets NaN."""
    if teacher_logits.dim() != 3:
        raise ValueError(f"teacher logits must be [batch, teachers, classes], got {tuple(teacher_logits.shape)}")
    b, k, _ = teacher_logits.shape
    present = teacher_present(teacher_logits)
    logits = torch.where(present.unsqueeze(-1), teacher_logits.float(), 0.0)
    if scheme == "uniform":
        w = torch.ones((b, k), device=logits.device)
    elif scheme == "per-sample":
        if labels is None:
            raise ValueError("per-sample weighting needs labels (-1 for unlabelled samples)")
        ce = teacher_ce(teacher_logits, labels)
        # Present teachers' CE relative to the best one, so softmin never sees inf - inf.
        best = torch.where(present, ce, math.inf).min(dim=1, keepdim=True).values
        relative = torch.where(present, ce - torch.where(torch.isfinite(best), best, 0.0), math.inf)
        per_sample = softmin(torch.where(present.any(dim=1, keepdim=True), relative, 0.0), tau, dim=1)
        w = torch.where((labels >= 0).view(b, 1), per_sample, torch.ones_like(per_sample))
    elif scheme == "dataset":
        if weights is None:
            raise ValueError("dataset weighting needs the fixed per-teacher weights (see dataset_weights)")
        w = weights.to(logits).view(1, k).expand(b, k)
    else:
        raise ValueError(f"unknown weighting {scheme!r}: use one of {', '.join(SCHEMES)}")
    w = w * present
    total = w.sum(dim=1, keepdim=True)
    w = torch.where(total > 0, w / total.clamp(min=1e-30), torch.full_like(w, math.nan))
    return (w.unsqueeze(-1) * logits).sum(dim=1)


def student_loss(
    student_logits: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    teacher_logits: dict[str, torch.Tensor] | None,
    *,
    scheme: str = "uniform",
    tau: float = 1.0,
    temperature: float = 1.0,
    kd_weight: float = 1.0,
    gt_weight: float = 1.0,
    weights: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """kd_weight * KD + gt_weight * CE, averaged over output heads.

    CE ignores label -1, so unlabelled samples contribute only the KD term; without teachers
    (teacher_logits None) the loss is the ground-truth term alone."""
    total = 0.0
    for head, logits in student_logits.items():
        y = labels[head]
        loss = logits.new_zeros((), dtype=torch.float32)
        if gt_weight and bool((y >= 0).any()):
            loss = loss + gt_weight * F.cross_entropy(logits.float(), y.long(), ignore_index=UNLABELLED)
        if kd_weight and teacher_logits is not None:
            w = None if weights is None else weights[head]
            target = ensemble_logits(teacher_logits[head], y, scheme, tau, w)
            has_teacher = torch.isfinite(target).all(dim=-1)
            # Scaled by the share of samples with a teacher, so a batch's KD weight per sample stays kd_weight.
            share = has_teacher.float().mean()
            loss = loss + kd_weight * share * kd_loss(logits, target, temperature, mask=has_teacher)
        total = total + loss
    return total / len(student_logits)
