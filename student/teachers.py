"""`fit-teachers`: light teachers fitted on cached frame features, written back as logits-only teachers.

Per chosen modality a small temporal transformer head; with fusion, one transformer over all of
them (KARMMA's frozen-extractor teacher; absent modalities get their missing token). Logits of
labelled training segments are cross-fitted: K models each trained without one fold, each
segment's logits from the model that left its fold out. Every other segment gets the logits of
a model fitted on all labelled training segments, which never saw it either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from egodistill import cache
from egodistill.cache.errors import EgodistillError
from egodistill.cache.options import check_number
from egodistill.student.data import CacheLoader, present_inputs
from egodistill.student.model import ModelConfig, Student
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
    epochs: int = 30
    frames: int = 8
    dim: int = 128
    batch_size: int = 256
    lr: float = 1e-3
    train_split: str = "train"
    device: str = "cpu"


@dataclass
class FittedTeacher:
    key: str
    modality: str
    sources: list[str]
    logits: dict[str, np.ndarray]          # head -> [N, C]; NaN where no input was present
    source_model: np.ndarray               # int [N]: fold whose model made the logits, -1 = all-train model, -2 = none
    trained_on: dict[int, np.ndarray] = field(default_factory=dict)  # model -> segment indices it was fitted on


def fold_assignment(count: int, folds: int, seed: int) -> np.ndarray:
    """Fold of each of `count` samples: a seeded permutation dealt round-robin, so folds differ by <= 1."""
    fold = np.empty(count, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(count)] = np.arange(count) % folds
    return fold


def fit_teachers(cfg: FitConfig, log: Callable[[str], None] = print) -> list[FittedTeacher]:
    """Fit, cross-fit and write every requested teacher; returns what was written."""
    for option, value, bounds in (("--epochs", cfg.epochs, {"at_least": 1}), ("--frames", cfg.frames, {"at_least": 1}), ("dim", cfg.dim, {"at_least": 4}),
                                  ("batch_size", cfg.batch_size, {"at_least": 1}), ("lr", cfg.lr, {"above": 0})):
        check_number(FitError, option, value, **bounds)
    if cfg.dim % 4:
        raise FitError(f"dim {cfg.dim} is not a multiple of the 4 attention heads of a fitted teacher")
    root = cache.open_cache(cfg.cache, mode="r+")
    table = root.segments
    keys = resolve_inputs(root, cfg.modalities, "--modalities")
    train = _labelled_training(table, cfg)
    if cfg.folds < 2:
        raise FitError(f"--folds {cfg.folds}: cross-fitting needs at least 2 folds")
    if len(train) < cfg.folds:
        raise FitError(f"--folds {cfg.folds} needs at least {cfg.folds} labelled {cfg.train_split!r} segments, the cache has {len(train)}: lower --folds")
    features, present = load_features(root, keys, cfg)
    fold = fold_assignment(len(train), cfg.folds, cfg.seed)
    jobs = [(root.teacher(k).modality, [m]) for m, k in enumerate(keys)]
    if cfg.fusion:
        jobs.append(("fusion", list(range(len(keys)))))
    written = []
    for modality, members in jobs:
        log(f"fitting {modality} teacher on {', '.join(keys[m] for m in members)} ({cfg.folds} folds + all-train model)")
        fitted = _cross_fit([features[m] for m in members], present[:, members], table.labels, train, fold, cfg, table.heads)
        provenance = cache.Provenance(
            modality=modality,
            backbone="fusion_transformer" if len(members) > 1 or modality == "fusion" else "temporal_head",
            weights=f"fitted:seed{cfg.seed}",
            source_teachers=tuple(keys[m] for m in members),
            fit={"folds": cfg.folds, "seed": cfg.seed, "train_split": cfg.train_split, "epochs": cfg.epochs, "frames": cfg.frames,
                 "dim": cfg.dim, "batch_size": cfg.batch_size, "lr": cfg.lr},
        )
        key = root.key_for(provenance)
        failed = [cache.Failure(int(i), str(table.ids[i]), str(table.videos[i]), "no usable input features")
                  for i in np.flatnonzero(fitted.source_model == -2)]
        root.create_logits_teacher(key, provenance, fitted.logits, failed=failed)
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


def load_features(root, keys: list[str], cfg: FitConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """Centred T-row windows of every segment and input, in memory: [N, T, D_m] float16 each."""
    present = present_inputs(root, keys)
    n = len(present)
    loader = CacheLoader(root, keys, np.arange(n), {}, batch_size=1024, frames=cfg.frames, train=False, present=present)
    features = [np.zeros((n, cfg.frames, root.teacher(k).feature_dim), dtype=np.float16) for k in keys]
    for batch in loader.epoch(0):
        for m, x in enumerate(batch.features):
            features[m][batch.index.numpy()] = x.numpy()
    return features, present


def _cross_fit(features, present, labels, train, fold, cfg: FitConfig, heads) -> FittedTeacher:
    n = len(present)
    logits = {h: np.full((n, c), np.nan, dtype=np.float32) for h, c in heads.items()}
    source = np.full(n, -2, dtype=np.int64)
    trained_on: dict[int, np.ndarray] = {}
    for f in [*range(cfg.folds), -1]:
        fit_on = train[fold != f] if f >= 0 else train
        predict = train[fold == f] if f >= 0 else np.setdiff1d(np.arange(n), train)
        predict = predict[present[predict].any(axis=1)]  # nothing to predict from: stays NaN, ledger
        model = fit_head(features, present, labels, fit_on, cfg, heads, seed=cfg.seed * 1000 + f + 1)
        for h, values in predict_head(model, features, present, predict, cfg).items():
            logits[h][predict] = values
        source[predict] = f
        trained_on[f] = fit_on
    return FittedTeacher(key="", modality="", sources=[], logits=logits, source_model=source, trained_on=trained_on)


def _tensors(features, present, labels, idx, device):
    xs = [torch.from_numpy(x[idx]).to(device) for x in features]
    return xs, torch.from_numpy(present[idx]).to(device), {h: torch.from_numpy(y[idx].astype(np.int64)).to(device) for h, y in labels.items()}


def fit_head(features, present, labels, fit_on: np.ndarray, cfg: FitConfig, heads, seed: int) -> Student:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Student(ModelConfig([x.shape[2] for x in features], dict(heads), frames=cfg.frames, dim=cfg.dim, depth=1, num_heads=4, dropout=0.1)).to(cfg.device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.02)
    fit_on = fit_on[present[fit_on].any(axis=1)]
    model.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(fit_on)
        for a in range(0, len(order), cfg.batch_size):
            xs, mask, ys = _tensors(features, present, labels, order[a:a + cfg.batch_size], cfg.device)
            out = model(xs, mask)
            loss = sum(F.cross_entropy(out[h], ys[h], ignore_index=-1) for h in heads if bool((ys[h] >= 0).any()))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return model


@torch.no_grad()
def predict_head(model: Student, features, present, idx: np.ndarray, cfg: FitConfig) -> dict[str, np.ndarray]:
    model.eval()
    parts: dict[str, list[np.ndarray]] = {h: [] for h in model.heads}
    for a in range(0, len(idx), cfg.batch_size):
        xs, mask, _ = _tensors(features, present, {}, idx[a:a + cfg.batch_size], cfg.device)
        for h, v in model(xs, mask).items():
            parts[h].append(v.float().cpu().numpy())
    return {h: np.concatenate(p) if p else np.zeros((0, model.cfg.heads[h]), np.float32) for h, p in parts.items()}
