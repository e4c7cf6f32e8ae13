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
teacher (boxes per frame) at depth >= 1 is the spatio-temporal layout transformer of student/box_transformer.py.

At dataset scale (EPIC-KITCHENS-100: 76,885 segments, bench/bench_fit.py): the pooled head (depth 0)
fits on rows pooled once per segment (Student.pool), held at the cache's float16, so a step costs a
matrix product instead of a gather of T rows per input; the fits of a depth run side by side, one
per core, each on one thread (deterministic: every fit draws from its own generator); the step
budget stops growing at the data's size (schedule.MAX_SEGMENTS_SEEN); a rich bar shows fits done and left.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from egodistill import cache
from egodistill.cache.records import BoxRow
from egodistill.common import EgodistillError, check_number, pick_device
from egodistill.student.data import CacheLoader, load_windows, present_inputs, row_statistics
from egodistill.student.folds import grouped_folds, segment_groups
from egodistill.student.box_transformer import LAYOUT_MAX_LR, LayoutTransformer
from egodistill.student.losses import student_loss
from egodistill.student.model import ModelConfig, Student, pool_rows
from egodistill.student.schedule import auto_steps, head_threads, make_optimiser
from egodistill.student.sources import resolve_inputs
from egodistill.student.step import STATISTICS_SEGMENTS, FitConfig, autocast, optimiser_step


# FittedTeacher.source_model beside fold numbers 0..K-1: a segment's logits came from the model fitted on
# every labelled training segment (segments outside the folds), or from no model (no input to predict from).
ALL_TRAIN_MODEL, NO_MODEL = -1, -2


class FitError(EgodistillError):
    """fit-teachers cannot run on this cache with these options."""


@dataclass
class FittedTeacher:
    key: str
    modality: str
    sources: list[str]
    logits: dict[str, np.ndarray]          # head -> [N, C] of the centred view; NaN where no input was present
    source_model: np.ndarray               # int [N]: fold whose model made the logits, ALL_TRAIN_MODEL, or NO_MODEL
    view_logits: dict[str, np.ndarray] = field(default_factory=dict)  # head -> [N, V, C], every view
    depth: int = 0                         # the depth chosen on out-of-fold accuracy
    oof_accuracy: dict[int, float] = field(default_factory=dict)  # depth -> out-of-fold top-1 on the training segments
    trained_on: dict[int, np.ndarray] = field(default_factory=dict)  # model -> segment indices it was fitted on


def check_config(cfg: FitConfig) -> None:
    """Every option in its range, before the cache is opened; raises FitError naming it."""
    cfg.check(FitError)
    check_number(FitError, "--dim", cfg.dim, at_least=4)
    check_number(FitError, "--views", cfg.views, at_least=1, at_most=32)
    check_number(FitError, "--workers", cfg.workers, at_least=0)
    if cfg.dim % 4:
        raise FitError(f"--dim {cfg.dim} is not a multiple of the 4 attention heads of a fitted teacher")
    if not cfg.depths or any(d < 0 for d in cfg.depths):
        raise FitError(f"--depths {cfg.depths}: give one or more depths >= 0 (0 = pooled linear head)")
    if cfg.folds < 2:
        raise FitError(f"--folds {cfg.folds}: cross-fitting needs at least 2 folds")


def fit_count(cfg: FitConfig) -> int:
    """Fits per teacher: every fold at every candidate depth, then the all-train model."""
    return cfg.folds * len(cfg.depths) + 1


@dataclass
class FitPlan:
    """What fit_teachers works on, every refusal already made: the open cache, the input keys, the labelled
    training segments and their folds, the teachers to fit (modality, input indices) and which inputs each segment has."""
    root: cache.Cache
    table: cache.SegmentTable
    keys: list[str]
    train: np.ndarray
    fold: np.ndarray
    jobs: list[tuple[str, list[int]]]
    present: np.ndarray


def plan_fit(cfg: FitConfig) -> FitPlan:
    """Open the cache and make every refusal fit_teachers would, before any work (the CLI calls it before its bar)."""
    check_config(cfg)
    root = cache.open_cache(cfg.cache, mode="r+")
    table = root.segments
    keys = resolve_inputs(root, cfg.modalities, "--modalities")
    train = _labelled_training(table, cfg)
    groups = segment_groups(table.videos[train])
    jobs = [(root.teacher(k).modality, [m]) for m, k in enumerate(keys)]
    if cfg.fusion:
        jobs.append(("fusion", list(range(len(keys)))))
    present = present_inputs(root, keys)
    chosen = [(modality, present[:, members]) for modality, members in jobs]
    problem = _fold_problem(table, train, groups, chosen, cfg.folds, cfg)
    if problem:
        fewest = problem
        for k in range(cfg.folds - 1, 1, -1):
            fewest = _fold_problem(table, train, groups, chosen, k, cfg)
            if fewest is None:
                raise FitError(f"{problem[0]}: lower --folds to {k} (the most this cache allows), or {problem[1]}")
        # Not even the fewest folds work: what 2 folds lack is the fix (more data), never fewer folds.
        raise FitError(f"{fewest[0]}: {fewest[1]}")
    return FitPlan(root, table, keys, train, grouped_folds(groups, cfg.folds, cfg.seed), jobs, present)


def fit_teachers(cfg: FitConfig, log: Callable[[str], None] = print,
                 on_fit: Callable[[int, int], None] | None = None, plan: FitPlan | None = None) -> list[FittedTeacher]:
    """Fit, cross-fit and write every requested teacher; returns what was written. on_fit(done, total) after each fit.
    plan: what plan_fit(cfg) returned, when the caller made the refusals first."""
    plan = plan or plan_fit(cfg)
    device = pick_device(cfg.device)
    root, table, keys, train, fold, jobs, present_once = plan.root, plan.table, plan.keys, plan.train, plan.fold, plan.jobs, plan.present
    placements = view_placements(cfg.views)
    views = cache.Views(cfg.frames, placements) if cfg.views > 1 else None  # the windows a fitted teacher has logits of
    started = time.perf_counter()
    windows = [load_features(root, keys, cfg, window=p) for p in placements]
    # Views stacked along the segment axis: row v * N + i is segment i seen through window v.
    features = [windows[0][0][m] if cfg.views == 1 else np.concatenate([w[0][m] for w in windows]) for m in range(len(keys))]
    del windows
    present = np.tile(present_once, (cfg.views, 1))
    pooled = pool_features(features, present) if 0 in cfg.depths else None
    labels = {h: np.tile(y, cfg.views) for h, y in table.labels.items()}
    log(f"read {len(present_once):,} segments x {cfg.views} view(s) of {', '.join(keys)} (float16, {sum(x.nbytes for x in features) / 2**30:.2f} GiB)"
        f"{' and pooled them' if pooled is not None else ''} in {time.perf_counter() - started:.0f} s; {len(jobs) * fit_count(cfg)} fits to run")
    total, done, counting = len(jobs) * fit_count(cfg), [0], threading.Lock()

    def fitted_one() -> None:  # called from the threads fitting side by side
        with counting:
            done[0] += 1
            if on_fit:
                on_fit(done[0], total)

    # The caller's thread budget (the demo gives each of its processes a share of the cores), read before
    # head_threads sets one thread per fit.
    workers = cfg.workers or max(1, min(available_cores(), torch.get_num_threads()))
    written = []
    for modality, members in jobs:
        log(f"fitting {modality} teacher on {', '.join(keys[m] for m in members)} ({cfg.folds} grouped folds x depths {list(cfg.depths)}, then the all-train model)")
        with head_threads(device):
            layout = len(members) == 1 and BoxRow.of(root.teacher(keys[members[0]]).provenance) is not None  # rows of boxes: the provenance says
            fitted = cross_fit([features[m] for m in members], present[:, members], labels, train, fold, cfg, table.heads, layout=layout,
                               pooled=None if pooled is None else [pooled[m] for m in members], device=device, workers=workers, on_fit=fitted_one,
                               splits=table.split)
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
                 **({"views": views.to_json()} if views else {})},
        )
        key = root.key_for(provenance)
        failed = [cache.Failure(int(i), str(table.ids[i]), str(table.videos[i]), "no usable input features")
                  for i in np.flatnonzero(fitted.source_model == NO_MODEL)]
        root.create_logits_teacher(key, provenance, fitted.logits, failed=failed, views=views, view_logits=fitted.view_logits if views else None)
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


def _fold_problem(table: cache.SegmentTable, train: np.ndarray, groups: np.ndarray, chosen: list[tuple[str, np.ndarray]],
                  folds: int, cfg: FitConfig) -> tuple[str, str] | None:
    """Why `folds` grouped folds cannot cross-fit every (modality, inputs present) teacher, and the fix short of fewer
    folds, naming the counts; None when they can."""
    have = len(np.unique(groups))
    if have < 2:  # below any cross-fit, whatever --folds
        return (f"cross-fitting needs labelled {cfg.train_split!r} segments of at least 2 videos (or participants), the cache has {have}",
                "label segments of more videos")
    if have < folds:
        return (f"--folds {folds} needs at least {folds} videos (or participants) among the labelled {cfg.train_split!r} segments, the cache has {have}",
                "label segments of more videos")
    fold = grouped_folds(groups, folds, cfg.seed)
    for modality, present in chosen:
        usable = present[train].any(axis=1)
        counts = {h: int((table.labels[h][train[usable]] >= 0).sum()) for h in table.heads}
        where = (f"{int(usable.sum())} of the {len(train)} labelled {cfg.train_split!r} segments have its input features; "
                 f"labelled per head: {', '.join(f'{h} {c}' for h, c in counts.items())}")
        more = "extract features for more labelled segments"
        for head, count in counts.items():
            if count < 2:  # below any cross-fit, whatever --folds
                return f"the {modality} teacher cannot be cross-fitted: {where}; head {head!r} needs at least 2 labelled segments with features", more
            if count < folds:
                return f"the {modality} teacher cannot be cross-fitted: {where}, too few for head {head!r} and --folds {folds}", more
        for f in range(folds):
            fit_on = train[usable & (fold != f)]
            for head in table.heads:
                if not (table.labels[head][fit_on] >= 0).any():
                    return (f"the {modality} teacher cannot be cross-fitted: fold {f} of --folds {folds} leaves no labelled segment of head {head!r} "
                            f"to fit on ({where})", "extract features for labelled segments of more videos")
    return None


def view_placements(views: int) -> tuple[float, ...]:
    """Where each view's window sits in its segment: evenly from first to last rows; one view is centred."""
    return (0.5,) if views == 1 else tuple(float(p) for p in np.linspace(0.0, 1.0, views))


def load_features(root: cache.Cache, keys: list[str], cfg: FitConfig, window: float = 0.5) -> tuple[list[np.ndarray], np.ndarray]:
    """T-row windows (placed at `window`) of every segment and input, in memory: [N, T, D_m] float16 each, and present [N, inputs]."""
    present = present_inputs(root, keys)
    # Streamed: holding the arrays whole as well would double the peak at dataset scale.
    loader = CacheLoader(root, keys, np.arange(len(present)), {}, batch_size=1024, frames=cfg.frames, train=False, present=present,
                         window=window, in_memory=False)
    features, _ = load_windows(loader, len(keys))
    return features, present


def pool_features(features: list[np.ndarray], present: np.ndarray, chunk: int = 4096) -> list[np.ndarray]:
    """Every segment's rows pooled once, as Student.pool does: per input float16 [N, 2D] (the cache's precision)."""
    out = []
    for m, x in enumerate(features):
        pooled = np.empty((len(x), 2 * x.shape[2]), dtype=np.float16)
        for a in range(0, len(x), chunk):
            rows = torch.from_numpy(x[a:a + chunk]).float()
            rows = torch.where(torch.from_numpy(present[a:a + chunk, m]).view(-1, 1, 1), rows, 0.0)
            pooled[a:a + chunk] = pool_rows(rows).numpy()
        out.append(pooled)
    return out


def cross_fit(features, present, labels, train, fold, cfg: FitConfig, heads, layout: bool = False, pooled=None,
              device: torch.device | str = "cpu", workers: int = 1, on_fit: Callable[[], None] | None = None,
              splits: np.ndarray | None = None) -> FittedTeacher:
    """Out-of-fold logits at every candidate depth, the depth with the best OOF accuracy, then the all-train model.

    Inputs hold cfg.views stacked windows per segment (row v * N + i); a model trains on every view of
    its segments and predicts each view of the others. Logits come back as [N, V, C]. The pooled fits
    of a depth run `workers` side by side (with one candidate depth, the all-train model with them).
    `splits` (the segments' split names): the all-train model predicts the segments outside the folds split by split."""
    n = len(present) // cfg.views

    def every_view(idx: np.ndarray) -> np.ndarray:
        return np.concatenate([idx + v * n for v in range(cfg.views)])

    def predict_views(model, idx: np.ndarray, logits: dict) -> None:
        for v in range(cfg.views):
            for h, values in predict_head(model, features, present, idx + v * n, cfg, pooled=pooled, device=device).items():
                logits[h][idx, v] = values

    def fit_all(depth: int, fits: dict[int, np.ndarray]) -> dict[int, nn.Module]:
        """model id (fold, or -1: all-train) -> its head, fitted side by side where that stays deterministic."""
        def one(item):
            f, fit_on = item
            model = fit_head(features, present, labels, every_view(fit_on), cfg, heads, depth, seed=cfg.seed * 1000 + f + 1, layout=layout,
                             pooled=pooled, device=device)
            if on_fit:
                on_fit()
            return f, model
        parallel = depth == 0 and not layout and torch.device(device).type == "cpu"
        side_by_side = min(len(fits), workers) if parallel else 1
        if side_by_side == 1:
            return dict(map(one, fits.items()))
        with ThreadPoolExecutor(side_by_side) as pool:
            return dict(pool.map(one, fits.items()))

    usable_train = train[present[train].any(axis=1)]
    all_train_with_folds = len(cfg.depths) == 1
    runs, all_train = {}, None
    for depth in cfg.depths:
        logits = {h: np.full((n, cfg.views, c), np.nan, dtype=np.float32) for h, c in heads.items()}
        fits = {f: train[fold != f] for f in range(cfg.folds)}
        if all_train_with_folds:
            fits[-1] = train
        models = fit_all(depth, fits)
        all_train = models.pop(-1, None)
        trained_on: dict[int, np.ndarray] = {}
        for f, model in models.items():
            predict = train[fold == f]
            predict_views(model, predict[present[predict].any(axis=1)], logits)  # nothing to predict from: stays NaN, ledger
            trained_on[f] = fits[f]
        runs[depth] = (logits, trained_on, _top1({h: v.mean(axis=1) for h, v in logits.items()}, labels, usable_train))
    depth = max(cfg.depths, key=lambda d: (runs[d][2], -d))
    logits, trained_on, _ = runs[depth]
    source = np.full(n, NO_MODEL, dtype=np.int64)
    for f in range(cfg.folds):
        predict = train[fold == f]
        source[predict[present[predict].any(axis=1)]] = f
    rest = np.setdiff1d(np.arange(n), train)
    rest = rest[present[rest].any(axis=1)]
    model = all_train if all_train is not None else fit_all(depth, {-1: train})[-1]
    # One split at a time: a split's logits then come from the same batches whatever other splits the cache
    # holds, so appending unlabelled windows (another split) leaves every existing logit byte for byte.
    for split in (dict.fromkeys(splits[rest].tolist()) if splits is not None else [None]):
        predict_views(model, rest if split is None else rest[splits[rest] == split], logits)
    source[rest] = ALL_TRAIN_MODEL
    trained_on[ALL_TRAIN_MODEL] = train
    centre = int(np.argmin(np.abs(np.asarray(view_placements(cfg.views)) - 0.5)))
    return FittedTeacher(key="", modality="", sources=[], logits={h: v[:, centre] for h, v in logits.items()}, view_logits=logits,
                         source_model=source, depth=depth,
                         oof_accuracy={d: runs[d][2] for d in cfg.depths}, trained_on=trained_on)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _top1(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], idx: np.ndarray) -> float:
    """Mean over heads of top-1 on the labelled segments of idx."""
    scores = []
    for h, values in logits.items():
        y = labels[h][idx]
        keep = (y >= 0) & np.isfinite(values[idx]).all(axis=1)
        if keep.any():
            scores.append(float((values[idx][keep].argmax(axis=1) == y[keep]).mean()))
    return float(np.mean(scores)) if scores else 0.0


_SEEDING = threading.Lock()  # a model's initialisation draws from torch's global generator: one fit at a time


def _batch(inputs: list[np.ndarray], present: np.ndarray, labels: dict, idx: np.ndarray, device) -> tuple:
    xs = [torch.from_numpy(x[idx]).to(device) for x in inputs]
    return xs, torch.from_numpy(present[idx]).to(device), {h: torch.from_numpy(y[idx].astype(np.int64)).to(device) for h, y in labels.items()}


def fit_head(features, present, labels, fit_on: np.ndarray, cfg: FitConfig, heads, depth: int, seed: int, layout: bool = False,
             pooled: list[np.ndarray] | None = None, device: torch.device | str | None = None) -> nn.Module:
    """One head trained for the step budget on `fit_on` (standardised with their statistics), as train-student does.

    The pooled linear head (depth 0) reads `pooled` (pool_features of `features`; pooled here when not given)."""
    device = torch.device(device or pick_device(cfg.device))
    fit_on = fit_on[present[fit_on].any(axis=1)]
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    # single_row 0: a teacher's logits are only ever made on its cached T-row windows, so it needs no robustness
    # to fewer rows (a student does, at deployment); the one-row draw would only cost it accuracy.
    model_cfg = ModelConfig([x.shape[2] for x in features], dict(heads), frames=cfg.frames, dim=cfg.dim, depth=depth, num_heads=4, single_row=0.0)
    with _SEEDING:
        torch.manual_seed(seed)
        # Layout rows (boxes per frame) at depth >= 1: the spatio-temporal layout transformer; depth 0: the pooled head on the flat rows.
        model = LayoutTransformer(model_cfg) if layout and depth > 0 else Student(model_cfg)
    on_pooled = isinstance(model, Student) and depth == 0
    if on_pooled and pooled is None:
        pooled = pool_features(features, present)
    sample = fit_on if len(fit_on) <= STATISTICS_SEGMENTS else np.sort(rng.choice(fit_on, STATISTICS_SEGMENTS, replace=False))
    model.set_statistics(row_statistics([x[sample] for x in features], present[sample]))
    model = model.to(device)
    lr = min(cfg.lr, LAYOUT_MAX_LR) if isinstance(model, LayoutTransformer) else cfg.lr
    optimiser = make_optimiser(model, lr, cfg.weight_decay)
    batch = min(cfg.batch_size, len(fit_on))
    total = cfg.steps or auto_steps(len(fit_on), batch)
    model.train()
    order, at = rng.permutation(fit_on), 0
    for step in range(total):
        if at + batch > len(order):
            order, at = rng.permutation(fit_on), 0
        idx = order[at:at + batch]
        at += batch
        xs, mask, ys = _batch(pooled if on_pooled else features, present, labels, idx, device)
        if on_pooled:  # rows pooled once (pool_features): late - early exists wherever a window has two rows
            moving = torch.full((len(idx),), features[0].shape[1] > 1, dtype=torch.bool)
            with autocast(device):  # the head's matrix products are nearly all of a pooled fit's time
                out = model.pooled_logits(xs, mask, moving.to(device), generator=generator)
        else:
            out = model(xs, mask)
        optimiser_step(model, optimiser, student_loss(out, ys, None), step, total, cfg, lr=lr)
    return model


@torch.no_grad()
def predict_head(model: nn.Module, features, present, idx: np.ndarray, cfg: FitConfig, pooled: list[np.ndarray] | None = None,
                 device: torch.device | str | None = None) -> dict[str, np.ndarray]:
    """Logits [len(idx), C] per head; a pooled head reads `pooled` where given (as it was fitted)."""
    device = torch.device(device or pick_device(cfg.device))
    on_pooled = pooled is not None and isinstance(model, Student) and model.temporal is None
    model.eval()
    parts: dict[str, list[np.ndarray]] = {h: [] for h in model.heads}
    for a in range(0, len(idx), 1024):
        xs, mask, _ = _batch(pooled if on_pooled else features, present, {}, idx[a:a + 1024], device)
        moving = torch.full((len(mask),), features[0].shape[1] > 1, dtype=torch.bool, device=device)
        with autocast(device) if on_pooled else contextlib.nullcontext():  # as it was fitted
            out = model.pooled_logits(xs, mask, moving) if on_pooled else model(xs, mask)
        for h, v in out.items():
            parts[h].append(v.float().cpu().numpy())
    return {h: np.concatenate(p) if p else np.zeros((0, model.cfg.heads[h]), np.float32) for h, p in parts.items()}
