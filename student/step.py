"""One training step, and the settings of the runs that take it (fit-teachers and train-student).

Both loops (student/fit.py `fit_head`, student/train.py `_train`) build data, model and optimiser,
then call `optimiser_step` once per batch: backward, and on a step's last batch (gradient accumulation)
its learning rate (student/schedule.py), clip, step, zero_grad. `StepConfig` holds the settings they share, with their defaults and their
validation, written once; `FitConfig` adds fit-teachers' own (train-student's are in student/train.py).

This module does not import torch until a step is taken: cli.py reads its option defaults and
choices from here, and `egodistill --help` must not wait for torch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from egodistill.common import EgodistillError, check_choice, check_number, cpu_has_bf16

if TYPE_CHECKING:
    import torch
    from torch import nn

SCHEDULES = ("cosine", "linear")                   # learning-rate decay after the warm-up (student/schedule.py)
SCHEMES = ("uniform", "per-sample", "dataset")     # teacher-ensemble weightings (student/losses.py)

STATISTICS_SEGMENTS = 2048  # standardisation statistics from at most this many training segments (enough for a mean and std per feature)


@dataclass(kw_only=True)
class StepConfig:
    """Settings shared by a fitted teacher's fits and a student's run."""

    cache: str
    steps: int = 0                  # optimiser steps; 0 = schedule.auto_steps
    batch_size: int = 64
    lr: float = 1e-2                # a head on frozen features; the paper's fine-tuning lr is 1e-4 (student/schedule.py)
    weight_decay: float = 0.05
    schedule: str = "cosine"        # cosine | linear decay after the warm-up
    warmup: float = 0.05            # fraction of all steps spent warming up
    clip: float = 1.0
    frames: int = 8                 # rows per segment and input
    dim: int = 64                   # transformer width (depth >= 1)
    train_split: str = "train"
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda[:N], resolved by common.pick_device inside the package

    def check(self, error: type[EgodistillError]) -> None:
        """Every shared number in its range and the schedule known; raises `error` naming the option."""
        for option, value, bounds in (
            ("--steps", self.steps, {"at_least": 0}), ("--batch-size", self.batch_size, {"at_least": 1}), ("--lr", self.lr, {"above": 0}),
            ("--weight-decay", self.weight_decay, {"at_least": 0}), ("warmup", self.warmup, {"at_least": 0, "at_most": 1}),
            ("--clip", self.clip, {"above": 0}), ("--frames", self.frames, {"at_least": 1}), ("--dim", self.dim, {"at_least": 1}),
        ):
            check_number(error, option, value, **bounds)
        check_choice(error, "--schedule", self.schedule, SCHEDULES)


@dataclass(kw_only=True)
class FitConfig(StepConfig):
    """fit-teachers: the shared settings and the cross-fitting's own (student/fit.py)."""

    modalities: list[str]
    fusion: bool = False
    folds: int = 5
    depths: tuple[int, ...] = (0,)  # candidates kept by out-of-fold accuracy; (0, 1) also tries the transformer
    views: int = 1                  # windows per segment with logits of their own (consistent teaching); 1: the centred one
    workers: int = 0                # pooled-head fits side by side on CPU; 0: one per core torch may use


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and on CPUs with native bf16 (weights and their updates stay fp32); else nothing."""
    import torch

    if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def optimiser_step(model: nn.Module, optimiser: torch.optim.Optimizer, loss: torch.Tensor, step: int, total: int,
                   cfg: StepConfig, lr: float | None = None, share: float = 1.0, last: bool = True) -> bool:
    """Backward `loss * share`; on the step's `last` batch also set step `step` of `total`'s learning rate
    (peak `lr`, default cfg.lr), clip, step and zero the gradients.

    One batch a step: the defaults. Gradient accumulation: every batch of a step calls this with
    share = 1 / its batches, and last=True on the final one, so gradients add up until then. A loss that
    reaches no parameter (a batch with no label and no teacher for any head) adds nothing: returns False,
    and a step whose batches all added nothing leaves the model and the optimiser as they were."""
    import torch

    from egodistill.student.schedule import lr_at

    learned = isinstance(loss, torch.Tensor) and loss.requires_grad
    if learned:
        (loss * share if share != 1.0 else loss).backward()
    if last:
        if any(p.grad is not None for group in optimiser.param_groups for p in group["params"]):
            for group in optimiser.param_groups:
                group["lr"] = lr_at(step, total, cfg.lr if lr is None else lr, cfg.warmup, cfg.schedule)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimiser.step()
        optimiser.zero_grad(set_to_none=True)
    return learned
