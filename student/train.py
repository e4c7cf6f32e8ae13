"""`train-student`: the training loop, read top to bottom (data, model, optimiser, then the loop).

Each step: mask inputs, forward, distillation loss, backward, clip, AdamW step, log. The budget
is a number of optimiser steps (student/schedule.py); each pass over the data ends with one line in
metrics.jsonl, and every tenth of the budget (and the end) with last.pt. The model evaluated is the
one at the last step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from egodistill import cache
from egodistill.common import EgodistillError, check_number, pick_device
from egodistill.student import rundir
from egodistill.student.data import CacheLoader, load_windows, present_inputs, row_statistics, teacher_logit_table, teacher_views
from egodistill.student.folds import grouped_holdout, segment_groups
from egodistill.student.losses import SCHEMES, dataset_weights, student_loss
from egodistill.student.model import ModelConfig, Student, mask_modalities
from egodistill.student.schedule import auto_steps, head_threads, lr_at, make_optimiser
from egodistill.student.step import STATISTICS_SEGMENTS, StepConfig, optimiser_step
from egodistill.student.sources import resolve_inputs, resolve_teachers


class TrainError(EgodistillError):
    """train-student cannot run with these options on this cache."""


@dataclass
class TrainConfig(StepConfig):
    """A student's run: the shared step settings (student/step.py) and the student's own."""

    inputs: list[str]
    teachers: list[str] = field(default_factory=list)
    out: str = "runs/student"
    weighting: str = "uniform"      # uniform | per-sample | dataset
    tau: float = 1.0                # softmin temperature of the ensemble weights
    temperature: float = 1.0        # KD temperature T
    kd_weight: float = 1.0
    gt_weight: float = 1.0
    mask_prob: float = 0.0          # per-sample, per-input drop probability (never all inputs)
    depth: int = 0                  # 0: pooled linear head; >= 1: plus a temporal transformer (student/model.py)
    num_heads: int = 4
    dropout: float = 0.1
    input_dropout: float = 0.5
    holdout: float = 0.0            # fraction of labelled training groups kept out (monitoring, dataset weights)
    buffer_blocks: int = 8
    save_every: int = 0             # also save last.pt every N steps (0: at epoch ends only)
    in_memory: bool | None = None  # None: hold the features read once they fit in memory; True: read all first; False: stream
    prefetch: int = 4




@dataclass
class Setup:
    """Everything a run derives from its config and the cache, before any training."""

    root: cache.Cache
    table: cache.SegmentTable
    input_keys: list[str]
    teacher_keys: list[str]
    present: np.ndarray
    teacher_logits: dict[str, np.ndarray] | None
    train_segments: np.ndarray
    holdout_segments: np.ndarray
    weights: dict[str, torch.Tensor] | None
    model: ModelConfig
    steps: int
    views: tuple[float, ...] | None  # the teachers' view placements: logits are then [N, K, V, C]

    def record(self, cfg: TrainConfig) -> dict:
        return {"config": asdict(cfg), "input_keys": self.input_keys, "teacher_keys": self.teacher_keys, "model": self.model.to_dict(), "steps": self.steps}


def check_numbers(cfg: TrainConfig) -> None:
    """Every number of the config in its range, before the cache is opened; raises TrainError naming the option."""
    cfg.check(TrainError)
    for option, value, bounds in (
        ("--mask-prob", cfg.mask_prob, {"at_least": 0, "below": 1}), ("--temperature", cfg.temperature, {"at_least": 0.05, "at_most": 100}),
        ("--tau", cfg.tau, {"at_least": 0}), ("--kd-weight", cfg.kd_weight, {"at_least": 0}), ("--gt-weight", cfg.gt_weight, {"at_least": 0}),
        ("--depth", cfg.depth, {"at_least": 0}), ("num_heads", cfg.num_heads, {"at_least": 1}), ("dropout", cfg.dropout, {"at_least": 0, "below": 1}),
        ("input_dropout", cfg.input_dropout, {"at_least": 0, "below": 1}), ("holdout", cfg.holdout, {"at_least": 0, "below": 1}),
        ("save_every", cfg.save_every, {"at_least": 0}),
    ):
        check_number(TrainError, option, value, **bounds)
    if cfg.depth and cfg.dim % cfg.num_heads:
        raise TrainError(f"--dim {cfg.dim} is not a multiple of the {cfg.num_heads} attention heads: give e.g. --dim {cfg.num_heads * max(1, round(cfg.dim / cfg.num_heads))}")


def setup(cfg: TrainConfig) -> Setup:
    """Resolve names, choose the training and held-out segments, read teacher logits, fix weights.

    Every arm trains on the same segments: those of the training split with at least one input.
    A segment some teacher has no logits for keeps its other teachers (see student/losses.py)."""
    check_numbers(cfg)
    if cfg.weighting not in SCHEMES:
        raise TrainError(f"--weighting {cfg.weighting!r} is unknown: use one of {', '.join(SCHEMES)}")
    root = cache.open_cache(cfg.cache, mode="r")
    table = root.segments
    if not table.heads:
        raise TrainError("the cache has no label heads, so the student has no outputs: extract a manifest with label columns")
    input_keys = resolve_inputs(root, cfg.inputs)
    teacher_keys = resolve_teachers(root, cfg.teachers, table.heads) if cfg.teachers else []
    if not teacher_keys and cfg.weighting != "uniform":
        raise TrainError(f"--weighting {cfg.weighting} needs --teachers")
    present = present_inputs(root, input_keys)
    views = teacher_views(root, teacher_keys) if teacher_keys else None
    if views and views[0] != cfg.frames:
        raise TrainError(f"the teachers' logits are per view of {views[0]} rows; the student reads --frames {cfg.frames}: "
                         f"train with --frames {views[0]} so both see the same rows")
    logits = teacher_logit_table(root, teacher_keys, list(table.heads), views=bool(views)) if teacher_keys else None
    candidates = np.flatnonzero((table.split == cfg.train_split) & present.any(axis=1))
    if len(candidates) == 0:
        raise TrainError(f"no {cfg.train_split!r} segments have input features in the cache: check --inputs and the split names")
    labelled = candidates[np.any([table.labels[h][candidates] >= 0 for h in table.heads], axis=0)]
    needs_labels = cfg.gt_weight > 0 or cfg.weighting != "uniform" or not teacher_keys
    if len(labelled) == 0 and needs_labels:
        raise TrainError(f"the cache has no labels for its {cfg.train_split!r} segments: train with --gt-weight 0 --weighting uniform and --teachers, or extract a labelled manifest")
    labelled_per_head = {h: int((table.labels[h][candidates] >= 0).sum()) for h in table.heads}
    for head, count in labelled_per_head.items():
        if count == 0 and not teacher_keys:  # nothing would ever train that head
            raise TrainError(f"head {head!r} has no labelled {cfg.train_split!r} segments with inputs (labelled per head: "
                             f"{', '.join(f'{h} {c}' for h, c in labelled_per_head.items())}): give --teachers with logits for it, or extract a labelled manifest")
    held = grouped_holdout(segment_groups(table.videos[candidates]), cfg.holdout, cfg.seed)
    holdout, train_segments = candidates[held], candidates[~held]
    weights = None
    if cfg.weighting == "dataset":
        # Training segments' teacher logits are out-of-fold (fit-teachers cross-fits them), so each
        # teacher's CE over them is already a held-out score; a --holdout narrows it to the holdout.
        scored = holdout if len(holdout) else labelled
        for head in table.heads:
            if not (table.labels[head][scored] >= 0).any():
                raise TrainError(f"--weighting dataset scores teachers on labelled {'held-out' if len(holdout) else cfg.train_split!r} segments, "
                                 f"and head {head!r} has none of {len(scored)}: raise --holdout, or use --weighting uniform")
        centred = teacher_logit_table(root, teacher_keys, list(table.heads)) if views else logits
        weights = {h: dataset_weights(torch.from_numpy(v[scored]), torch.from_numpy(table.labels[h][scored].astype(np.int64)), cfg.tau) for h, v in centred.items()}
    dims = [root.teacher(k).feature_dim for k in input_keys]
    model = ModelConfig(dims, dict(table.heads), frames=cfg.frames, dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads,
                        dropout=cfg.dropout, input_dropout=cfg.input_dropout)
    steps = cfg.steps or auto_steps(len(train_segments), cfg.batch_size)
    return Setup(root, table, input_keys, teacher_keys, present, logits, train_segments, holdout, weights, model, steps, views[1] if views else None)


def loaders(cfg: TrainConfig, s: Setup) -> tuple[CacheLoader, CacheLoader | None]:
    common = dict(teacher_logits=s.teacher_logits, frames=cfg.frames, seed=cfg.seed, buffer_blocks=cfg.buffer_blocks,
                  prefetch=cfg.prefetch, in_memory=cfg.in_memory, present=s.present, views=s.views)
    train = CacheLoader(s.root, s.input_keys, s.train_segments, s.table.labels, batch_size=cfg.batch_size, train=True, **common)
    held = CacheLoader(s.root, s.input_keys, s.holdout_segments, s.table.labels, batch_size=max(cfg.batch_size, 256), train=False, **common) if len(s.holdout_segments) else None
    return train, held


def training_statistics(cfg: TrainConfig, s: Setup) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per input (mean, std) over the rows of (a seeded sample of) the training segments only."""
    segments = s.train_segments
    if len(segments) > STATISTICS_SEGMENTS:
        segments = np.sort(np.random.default_rng(cfg.seed).choice(segments, STATISTICS_SEGMENTS, replace=False))
    # Streamed: only the sampled segments' blocks are read; holding whole arrays here would read them a
    # second time before the training loader does.
    loader = CacheLoader(s.root, s.input_keys, segments, {}, batch_size=256, frames=cfg.frames, train=False, present=s.present, in_memory=False)
    features, present = load_windows(loader, len(s.input_keys))
    return row_statistics(features, present)


def start_run(cfg: TrainConfig, resume: bool = False) -> tuple[Setup, bool]:
    """Check everything that can be wrong before any work: the cache, the names, the run dir.
    Returns the setup and whether there is a checkpoint to resume from."""
    s = setup(cfg)
    return s, rundir.claim_run_dir(cfg.out, s.record(cfg), resume)


def train(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print,
          on_step: Callable[[int, int, float, float], None] | None = None, stop_after: int | None = None,
          started_run: tuple[Setup, bool] | None = None) -> list[dict]:
    """Train (or resume) the student for its step budget; returns the metrics lines of every epoch.

    The model scored afterwards is the one at the last step (last.pt): one rule for every arm, never
    a checkpoint picked on a noisy held-out loss. on_step(step, total_steps, loss, segments_per_s)
    reports progress; stop_after ends the run after that many steps with last.pt saved, as if it had
    been killed right after a checkpoint. started_run is what start_run returned."""
    s, resuming = started_run or start_run(cfg, resume)
    device = pick_device(cfg.device)
    with head_threads(device):
        return _train(cfg, s, resuming, device, log, on_step, stop_after)


def _train(cfg: TrainConfig, s: Setup, resuming: bool, device: torch.device, log: Callable[[str], None],
           on_step: Callable[[int, int, float, float], None] | None, stop_after: int | None) -> list[dict]:
    torch.manual_seed(cfg.seed)
    train_loader, held_loader = loaders(cfg, s)
    model = Student(s.model)
    if not resuming:  # a resumed model brings its statistics in its state dict
        model.set_statistics(training_statistics(cfg, s))
    model = model.to(device)
    optimiser = make_optimiser(model, cfg.lr, cfg.weight_decay)
    masking = torch.Generator().manual_seed(cfg.seed + 1)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    total_steps = s.steps
    state = {"epoch": 0, "batch": 0, "step": 0, "loss_sum": 0.0, "seen": 0}
    if resuming:
        ckpt = rundir.load_checkpoint(cfg.out, rundir.LAST)
        model.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        state = dict(ckpt["state"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        masking.set_state(ckpt["rng"]["masking"])
        if device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        rundir.truncate_metrics(cfg.out, state["epoch"])
        log(f"resuming {cfg.out} at epoch {state['epoch']}, batch {state['batch']} (step {state['step']} of {total_steps})")
    loss_args = dict(scheme=cfg.weighting, tau=cfg.tau, temperature=cfg.temperature, kd_weight=cfg.kd_weight,
                     gt_weight=cfg.gt_weight, weights=None if s.weights is None else {h: w.to(device) for h, w in s.weights.items()})
    log_every = max(1, total_steps // 10)

    def checkpoint() -> None:
        rng = {"torch": torch.get_rng_state(), "masking": masking.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        rundir.save_checkpoint(cfg.out, rundir.LAST, {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "state": dict(state), "rng": rng, "model_config": s.model.to_dict()})

    while state["step"] < total_steps:
        model.train()
        started, seen_now, logged_before = time.perf_counter(), 0, state["step"] // log_every
        for batch in train_loader.epoch(state["epoch"], state["batch"]):
            batch = batch.to(device)
            present = mask_modalities(batch.present, cfg.mask_prob, masking)
            with autocast():
                logits = model(batch.features, present)
            loss = student_loss(logits, batch.labels, batch.teacher_logits, **loss_args)
            optimiser_step(model, optimiser, loss, state["step"], total_steps, cfg)  # a batch with nothing to learn from is skipped
            state["step"] += 1
            state["batch"] += 1
            state["loss_sum"] += loss.detach().item() * len(batch)
            state["seen"] += len(batch)
            seen_now += len(batch)
            if on_step:
                on_step(state["step"], total_steps, loss.detach().item(), seen_now / max(time.perf_counter() - started, 1e-9))
            if cfg.save_every and state["step"] % cfg.save_every == 0:
                checkpoint()
            if stop_after is not None and state["step"] >= stop_after:
                checkpoint()
                return rundir.read_metrics(cfg.out)
            if state["step"] >= total_steps:
                break
        seconds = time.perf_counter() - started
        line = {"epoch": state["epoch"], "step": state["step"], "lr": lr_at(max(state["step"] - 1, 0), total_steps, cfg.lr, cfg.warmup, cfg.schedule),
                "train_loss": state["loss_sum"] / max(state["seen"], 1), "seconds": seconds, "segments_per_s": seen_now / max(seconds, 1e-9)}
        last = state["step"] >= total_steps
        if held_loader is not None and (last or state["step"] // log_every > logged_before):
            line.update(held_out(model, held_loader, device, autocast, loss_args))
        rundir.append_metrics(cfg.out, line)
        boundary = last or state["step"] // log_every > logged_before
        if boundary:
            log(_summary(line, total_steps))
        state.update(epoch=state["epoch"] + 1, batch=0, loss_sum=0.0, seen=0)
        if boundary:  # ten checkpoints a run and the last: small data makes hundreds of passes
            checkpoint()
    return rundir.read_metrics(cfg.out)


@torch.no_grad()
def held_out(model: Student, loader: CacheLoader | None, device, autocast, loss_args: dict) -> dict:
    """Loss and top-1 per head on the held-out training segments (all inputs present as cached)."""
    if loader is None:
        return {}
    model.eval()
    loss_sum, count, correct, labelled = 0.0, 0, {}, {}
    for batch in loader.epoch(0):
        batch = batch.to(device)
        with autocast():
            logits = model(batch.features, batch.present)
        loss_sum += float(student_loss(logits, batch.labels, batch.teacher_logits, **loss_args)) * len(batch)
        count += len(batch)
        for h, out in logits.items():
            y = batch.labels[h]
            correct[h] = correct.get(h, 0) + int(((out.argmax(-1) == y) & (y >= 0)).sum())
            labelled[h] = labelled.get(h, 0) + int((y >= 0).sum())
    model.train()
    return {"holdout_loss": loss_sum / max(count, 1), **{f"holdout_top1_{h}": correct[h] / max(labelled[h], 1) for h in correct}}


def _summary(line: dict, total_steps: int) -> str:
    parts = [f"step {line['step']}/{total_steps}", f"train loss {line['train_loss']:.4f}"]
    parts += [f"{k.replace('_', ' ')} {v:.4f}" for k, v in line.items() if k.startswith("holdout_")]
    parts.append(f"{line['segments_per_s']:.0f} segments/s")
    return ", ".join(parts)
