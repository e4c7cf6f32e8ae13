"""`fit-teachers`: light teachers fitted on cached frame features, written back as logits-only teachers.

Per chosen modality a student-style head (student/model.py); with fusion, one over all of them
(KARMMA's frozen-extractor teacher; absent modalities get their stand-ins). Logits of labelled
training segments are cross-fitted: K models each trained without one fold, each segment's logits
from the model that left its fold out. Folds are grouped (student/folds.py: participant, else
video), so no held-out logit comes from a model that saw the same video. Every other segment gets
the logits of a model fitted on all labelled training segments, which never saw it either.

Model selection: each teacher is cross-fitted at every depth in `depths` (0 = pooled linear head,
1 = plus a temporal transformer), and the depth whose out-of-fold accuracy on the training
segments is highest is kept (ties: the smaller). This uses training data only, never validation.
The default is the pooled head alone: it matched or beat the transformer on every teacher of the
measured datasets but the demo's fusion, at a tenth of the time (docs/training.md). A `layout`
teacher (boxes per frame) at depth >= 1 is the spatio-temporal layout transformer of student/layout.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from egodistill import cache
from egodistill.cache.records import BoxRow
from egodistill.common import EgodistillError, check_number
from egodistill.student.data import CacheLoader, load_windows, present_inputs, row_statistics
from egodistill.student.folds import grouped_folds, segment_groups
from egodistill.student.layout import LAYOUT_MAX_LR, LayoutTransformer
from egodistill.student.model import ModelConfig, Student
from egodistill.student.schedule import auto_steps, head_threads, lr_at, make_optimiser
from egodistill.student.sources import resolve_inputs


class FitError(EgodistillError):
    """fit-teachers cannot run on this cache with these options."""


@dataclass
class FitConfig:
    cache: str
    modalities: list[str]
    fusion: bool = False
    folds: int = 5
    seed: int = 0
    steps: int = 0                  # per fit; 0 = schedule.auto_steps
    depths: tuple[int, ...] = (0,)  # candidates kept by out-of-fold accuracy; (0, 1) also tries the transformer
    views: int = 1                  # windows per segment with logits of their own (consistent teaching); 1: the centred one
    frames: int = 8
    dim: int = 64
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 0.05
    warmup: float = 0.05
    clip: float = 1.0
    train_split: str = "train"
    device: str = "cpu"


@dataclass
class FittedTeacher:
    key: str
    modality: str
    sources: list[str]
    logits: dict[str, np.ndarray]          # head -> [N, C] of the centred view; NaN where no input was present
    source_model: np.ndarray               # int [N]: fold whose model made the logits, -1 = all-train model, -2 = none
    view_logits: dict[str, np.ndarray] = field(default_factory=dict)  # head -> [N, V, C], every view
    depth: int = 0                         # the depth chosen on out-of-fold accuracy
    oof_accuracy: dict[int, float] = field(default_factory=dict)  # depth -> out-of-fold top-1 on the training segments
    trained_on: dict[int, np.ndarray] = field(default_factory=dict)  # model -> segment indices it was fitted on


def fit_teachers(cfg: FitConfig, log: Callable[[str], None] = print) -> list[FittedTeacher]:
    """Fit, cross-fit and write every requested teacher; returns what was written."""
    for option, value, bounds in (("--steps", cfg.steps, {"at_least": 0}), ("--frames", cfg.frames, {"at_least": 1}), ("dim", cfg.dim, {"at_least": 4}),
                                  ("--views", cfg.views, {"at_least": 1, "at_most": 32}),
                                  ("batch_size", cfg.batch_size, {"at_least": 1}), ("lr", cfg.lr, {"above": 0})):
        check_number(FitError, option, value, **bounds)
    if cfg.dim % 4:
        raise FitError(f"dim {cfg.dim} is not a multiple of the 4 attention heads of a fitted teacher")
    if not cfg.depths or any(d < 0 for d in cfg.depths):
        raise FitError(f"depths {cfg.depths}: give one or more depths >= 0 (0 = pooled linear head)")
    if cfg.folds < 2:
        raise FitError(f"--folds {cfg.folds}: cross-fitting needs at least 2 folds")
    root = cache.open_cache(cfg.cache, mode="r+")
    table = root.segments
    keys = resolve_inputs(root, cfg.modalities, "--modalities")
    train = _labelled_training(table, cfg)
    groups = segment_groups(table.videos[train])
    if len(np.unique(groups)) < cfg.folds:
        raise FitError(f"--folds {cfg.folds} needs at least {cfg.folds} videos (or participants) among the labelled {cfg.train_split!r} segments, "
                       f"the cache has {len(np.unique(groups))}: lower --folds")
    placements = view_placements(cfg.views)
    windows = [load_features(root, keys, cfg, window=p) for p in placements]
    # Views stacked along the segment axis: row v * N + i is segment i seen through window v.
    features = [np.concatenate([w[0][m] for w in windows]) for m in range(len(keys))]
    present = np.tile(windows[0][1], (cfg.views, 1))
    labels = {h: np.tile(y, cfg.views) for h, y in table.labels.items()}
    fold = grouped_folds(groups, cfg.folds, cfg.seed)
    jobs = [(root.teacher(k).modality, [m]) for m, k in enumerate(keys)]
    if cfg.fusion:
        jobs.append(("fusion", list(range(len(keys)))))
    written = []
    for modality, members in jobs:
        log(f"fitting {modality} teacher on {', '.join(keys[m] for m in members)} ({cfg.folds} grouped folds x depths {list(cfg.depths)}, then the all-train model)")
        with head_threads(cfg.device):
            layout = len(members) == 1 and BoxRow.of(root.teacher(keys[members[0]]).provenance) is not None  # rows of boxes: the provenance says
            fitted = cross_fit([features[m] for m in members], present[:, members], labels, train, fold, cfg, table.heads, layout=layout)
        log(f"  out-of-fold top-1 by depth: {', '.join(f'{d}: {a:.3f}' for d, a in fitted.oof_accuracy.items())}; kept depth {fitted.depth}")
        provenance = cache.Provenance(
            modality=modality,
            backbone="fusion_head" if len(members) > 1 or modality == "fusion" else "layout_transformer" if layout and fitted.depth > 0 else "student_head",
            weights=f"fitted:seed{cfg.seed}",
            source_teachers=tuple(keys[m] for m in members),
            fit={"folds": cfg.folds, "grouped_by": "participant/video", "seed": cfg.seed, "train_split": cfg.train_split,
                 # Settings only: the depth chosen and the out-of-fold accuracies are results (in the log and
                 # FittedTeacher), and a key must not change when a result does.
                 "steps": cfg.steps or "auto", "depths": list(cfg.depths), "frames": cfg.frames, "dim": cfg.dim,
                 "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                 **({"views": {"frames": cfg.frames, "placements": list(placements)}} if cfg.views > 1 else {})},
        )
        key = root.key_for(provenance)
        failed = [cache.Failure(int(i), str(table.ids[i]), str(table.videos[i]), "no usable input features")
                  for i in np.flatnonzero(fitted.source_model == -2)]
        views = cache.Views(cfg.frames, placements, fitted.view_logits) if cfg.views > 1 else None
        root.create_logits_teacher(key, provenance, fitted.logits, failed=failed, views=views)
        fitted.key, fitted.modality, fitted.sources = key, modality, list(provenance.source_teachers)
        written.append(fitted)
    return written


def _labelled_training(table: cache.SegmentTable, cfg: FitConfig) -> np.ndarray:
    if not table.heads:
        raise FitError("the cache has no label heads: fit-teachers needs labelled training segments (a manifest with label columns)")
    labelled = np.any(np.stack([y >= 0 for y in table.labels.values()]), axis=0)
    train = np.flatnonzero((table.split == cfg.train_split) & labelled)
    if len(train) == 0:
        raise FitError(f"the cache has no labelled {cfg.train_split!r} segments to fit teachers on: extract a manifest with labels for its training split")
    return train


def view_placements(views: int) -> tuple[float, ...]:
    """Where each view's window sits in its segment: evenly from first to last rows; one view is centred."""
    return (0.5,) if views == 1 else tuple(float(p) for p in np.linspace(0.0, 1.0, views))


def load_features(root: cache.Cache, keys: list[str], cfg: FitConfig, window: float = 0.5) -> tuple[list[np.ndarray], np.ndarray]:
    """T-row windows (placed at `window`) of every segment and input, in memory: [N, T, D_m] float16 each, and present [N, inputs]."""
    present = present_inputs(root, keys)
    loader = CacheLoader(root, keys, np.arange(len(present)), {}, batch_size=1024, frames=cfg.frames, train=False, present=present, window=window)
    features, _ = load_windows(loader, len(keys))
    return features, present


def cross_fit(features, present, labels, train, fold, cfg: FitConfig, heads, layout: bool = False) -> FittedTeacher:
    """Out-of-fold logits at every candidate depth, the depth with the best OOF accuracy, then the all-train model.

    Inputs hold cfg.views stacked windows per segment (row v * N + i); a model trains on every view of
    its segments and predicts each view of the others. Logits come back as [N, V, C]."""
    n = len(present) // cfg.views

    def every_view(idx: np.ndarray) -> np.ndarray:
        return np.concatenate([idx + v * n for v in range(cfg.views)])

    def predict_views(model, idx: np.ndarray, logits: dict) -> None:
        for v in range(cfg.views):
            for h, values in predict_head(model, features, present, idx + v * n, cfg).items():
                logits[h][idx, v] = values

    usable_train = train[present[train].any(axis=1)]
    runs = {}
    for depth in cfg.depths:
        logits = {h: np.full((n, cfg.views, c), np.nan, dtype=np.float32) for h, c in heads.items()}
        trained_on: dict[int, np.ndarray] = {}
        for f in range(cfg.folds):
            fit_on, predict = train[fold != f], train[fold == f]
            predict = predict[present[predict].any(axis=1)]  # nothing to predict from: stays NaN, ledger
            model = fit_head(features, present, labels, every_view(fit_on), cfg, heads, depth, seed=cfg.seed * 1000 + f + 1, layout=layout)
            predict_views(model, predict, logits)
            trained_on[f] = fit_on
        runs[depth] = (logits, trained_on, _top1({h: v.mean(axis=1) for h, v in logits.items()}, labels, usable_train))
    depth = max(cfg.depths, key=lambda d: (runs[d][2], -d))
    logits, trained_on, _ = runs[depth]
    source = np.full(n, -2, dtype=np.int64)
    for f in range(cfg.folds):
        predict = train[fold == f]
        source[predict[present[predict].any(axis=1)]] = f
    rest = np.setdiff1d(np.arange(n), train)
    rest = rest[present[rest].any(axis=1)]
    model = fit_head(features, present, labels, every_view(train), cfg, heads, depth, seed=cfg.seed * 1000, layout=layout)
    predict_views(model, rest, logits)
    source[rest] = -1
    trained_on[-1] = train
    centre = int(np.argmin(np.abs(np.asarray(view_placements(cfg.views)) - 0.5)))
    return FittedTeacher(key="", modality="", sources=[], logits={h: v[:, centre] for h, v in logits.items()}, view_logits=logits,
                         source_model=source, depth=depth,
                         oof_accuracy={d: runs[d][2] for d in cfg.depths}, trained_on=trained_on)


def _top1(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], idx: np.ndarray) -> float:
    """Mean over heads of top-1 on the labelled segments of idx."""
    scores = []
    for h, values in logits.items():
        y = labels[h][idx]
        keep = (y >= 0) & np.isfinite(values[idx]).all(axis=1)
        if keep.any():
            scores.append(float((values[idx][keep].argmax(axis=1) == y[keep]).mean()))
    return float(np.mean(scores)) if scores else 0.0


def _tensors(features, present, labels, idx, device):
    xs = [torch.from_numpy(x[idx]).to(device) for x in features]
    return xs, torch.from_numpy(present[idx]).to(device), {h: torch.from_numpy(y[idx].astype(np.int64)).to(device) for h, y in labels.items()}


def fit_head(features, present, labels, fit_on: np.ndarray, cfg: FitConfig, heads, depth: int, seed: int, layout: bool = False) -> Student:
    """One head trained for the step budget on `fit_on` (standardised with their statistics), as train-student does."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    fit_on = fit_on[present[fit_on].any(axis=1)]
    model_cfg = ModelConfig([x.shape[2] for x in features], dict(heads), frames=cfg.frames, dim=cfg.dim, depth=depth, num_heads=4)
    # Layout rows (boxes per frame) at depth >= 1: the spatio-temporal layout transformer; depth 0: the pooled head on the flat rows.
    model = LayoutTransformer(model_cfg) if layout and depth > 0 else Student(model_cfg)
    model.set_statistics(row_statistics([x[fit_on] for x in features], present[fit_on]))
    model = model.to(cfg.device)
    lr = min(cfg.lr, LAYOUT_MAX_LR) if isinstance(model, LayoutTransformer) else cfg.lr
    optimiser = make_optimiser(model, lr, cfg.weight_decay)
    batch = min(cfg.batch_size, len(fit_on))
    total = cfg.steps or auto_steps(len(fit_on), batch)
    model.train()
    order, at = rng.permutation(fit_on), 0
    for step in range(total):
        if at + batch > len(order):
            order, at = rng.permutation(fit_on), 0
        xs, mask, ys = _tensors(features, present, labels, order[at:at + batch], cfg.device)
        at += batch
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, total, lr, cfg.warmup, "cosine")
        out = model(xs, mask)
        loss = sum(F.cross_entropy(out[h].float(), ys[h], ignore_index=-1) for h in heads if bool((ys[h] >= 0).any()))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimiser.step()
    return model


@torch.no_grad()
def predict_head(model: Student, features, present, idx: np.ndarray, cfg: FitConfig) -> dict[str, np.ndarray]:
    model.eval()
    parts: dict[str, list[np.ndarray]] = {h: [] for h in model.heads}
    for a in range(0, len(idx), 1024):
        xs, mask, _ = _tensors(features, present, {}, idx[a:a + 1024], cfg.device)
        for h, v in model(xs, mask).items():
            parts[h].append(v.float().cpu().numpy())
    return {h: np.concatenate(p) if p else np.zeros((0, model.cfg.heads[h]), np.float32) for h, p in parts.items()}
