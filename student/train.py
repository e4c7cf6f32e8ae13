"""`train-student`: the training loop, read top to bottom (data, model, optimiser, then the loop).

Each step: mask inputs, forward, distillation loss, backward (over `accumulate` batches), clip, AdamW step, log.
The model is a head on cached features (student/model.py) or, with `--inputs frames`, an end-to-end
network trained on the cached frames (student/network.py); the same loop trains both. The budget
is a number of optimiser steps (student/schedule.py); each pass over the data ends with one line in
metrics.jsonl, and every tenth of the budget (and the end) with last.pt. The model evaluated is the
one at the last step.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from egodistill import cache
from egodistill.backbones import backbone_family, resolve_precision
from egodistill.common import EgodistillError, check_choice, check_number, pick_device
from egodistill.student import rundir
from egodistill.student.data import Augment, CacheLoader, load_windows, present_inputs, row_statistics, teacher_logit_table, teacher_views
from egodistill.student.folds import grouped_holdout, segment_groups
from egodistill.student.losses import SCHEMES, dataset_weights, student_loss
from egodistill.student.model import ModelConfig, Student, mask_modalities
from egodistill.student.network import FramesStudent, NetworkConfig, eval_crop_fraction, student_logits
from egodistill.student.schedule import auto_steps, head_threads, lr_at, make_optimiser
from egodistill.student.sources import recorded_seed, recorded_weights, resolve_frames, resolve_inputs, resolve_teachers
from egodistill.student.step import STATISTICS_SEGMENTS, StepConfig, optimiser_step


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
    single_row: float = 0.2         # heads: probability a training sample is pooled from one row (heads at any row count, student/model.py)
    holdout: float = 0.0            # fraction of labelled training groups kept out (monitoring, dataset weights)
    unlabelled_split: str | None = None  # also distil on this split's segments: labels ignored, teachers' logits only
    buffer_blocks: int = 8
    save_every: int = 0             # also save last.pt every N steps (0: at epoch ends only)
    in_memory: bool | None = None  # None: hold the features read once they fit in memory; True: read all first; False: stream
    prefetch: int = 4
    # End-to-end students (--inputs frames, student/network.py)
    backbone: str | None = None     # a timm model or a torchvision clip model; default: the --init-from teacher's
    weights: str | None = None      # its starting weights: a file, "timm", or None (random init with --seed)
    init_from: str | None = None    # start from this teacher's backbone and weights (its file, checked by sha256)
    image_size: int = 0             # crop side the backbone reads; 0: its data config's input size
    crop_scale: float = 0.35        # smallest area share of a training crop (random resized crop)
    flip: bool | None = None        # left-right flips in training; None: where the dataset allows (not SSv2)
    accumulate: int = 1             # batches per optimiser step (gradient accumulation)
    precision: str = "auto"         # end-to-end: auto (bf16 autocast + channels_last where native) | fp32 | bf16


END_TO_END_LR = 1e-4  # the paper's fine-tuning lr, the CLI's default for --inputs frames (heads: TrainConfig.lr)
PRECISIONS = ("auto", "fp32", "bf16")
SSV2 = "ssv2"  # the segments table's source format whose labels say left and right: no flips
FLIP_FORMATS = ("epic100",)  # formats whose classes are known not to name a direction: flips by default




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
    model: ModelConfig | NetworkConfig
    steps: int
    views: cache.Views | None  # the teachers' views: logits are then [N, K, V, C]
    network: FramesStudent | None = None  # the end-to-end student, built (with its starting weights) before any work
    augment: Augment | None = None
    unlabelled: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # --unlabelled-split segments, part of train_segments

    def record(self, cfg: TrainConfig) -> dict:
        record = {"config": asdict(cfg), "input_keys": self.input_keys, "teacher_keys": self.teacher_keys, "model": self.model.to_dict(), "steps": self.steps}
        if cfg.unlabelled_split is not None:  # only then: a run dir written before the option existed still resumes
            record["unlabelled_segments"] = int(len(self.unlabelled))
        return record

    def labels(self) -> dict[str, np.ndarray]:
        """The labels the run learns from: the cache's, with every --unlabelled-split segment's ignored (UNLABELLED)."""
        if not len(self.unlabelled):
            return self.table.labels
        labels = {h: y.copy() for h, y in self.table.labels.items()}
        for y in labels.values():
            y[self.unlabelled] = cache.UNLABELLED
        return labels


def check_numbers(cfg: TrainConfig) -> None:
    """Every number of the config in its range, before the cache is opened; raises TrainError naming the option."""
    cfg.check(TrainError)
    for option, value, bounds in (
        ("--mask-prob", cfg.mask_prob, {"at_least": 0, "below": 1}), ("--temperature", cfg.temperature, {"at_least": 0.05, "at_most": 100}),
        ("--tau", cfg.tau, {"at_least": 0}), ("--kd-weight", cfg.kd_weight, {"at_least": 0}), ("--gt-weight", cfg.gt_weight, {"at_least": 0}),
        ("--depth", cfg.depth, {"at_least": 0}), ("num_heads", cfg.num_heads, {"at_least": 1}), ("dropout", cfg.dropout, {"at_least": 0, "below": 1}),
        ("input_dropout", cfg.input_dropout, {"at_least": 0, "below": 1}), ("single_row", cfg.single_row, {"at_least": 0, "at_most": 1}), ("holdout", cfg.holdout, {"at_least": 0, "below": 1}),
        ("save_every", cfg.save_every, {"at_least": 0}), ("--accumulate", cfg.accumulate, {"at_least": 1}),
        ("--image-size", cfg.image_size, {"at_least": 0}), ("--crop-scale", cfg.crop_scale, {"above": 0, "at_most": 1}),
    ):
        check_number(TrainError, option, value, **bounds)
    check_choice(TrainError, "--precision", cfg.precision, PRECISIONS)
    if cfg.mask_prob > 0 and len(cfg.inputs) < 2:  # masking drops inputs, and never all of them: with one it would silently do nothing
        raise TrainError(f"--mask-prob {cfg.mask_prob} drops modalities, and --inputs {','.join(cfg.inputs)} is one: give two or more --inputs, or drop --mask-prob")
    if cfg.depth and cfg.dim % cfg.num_heads:
        raise TrainError(f"--dim {cfg.dim} is not a multiple of the {cfg.num_heads} attention heads: give e.g. --dim {cfg.num_heads * max(1, round(cfg.dim / cfg.num_heads))}")


def setup(cfg: TrainConfig) -> Setup:
    """Resolve names, choose the training and held-out segments, read teacher logits, fix weights.

    Every arm trains on the same segments: those of the training split with at least one input, and with
    --unlabelled-split that split's segments with an input and teacher logits (distillation term only).
    A segment some teacher has no logits for keeps its other teachers (see student/losses.py)."""
    check_numbers(cfg)
    check_unlabelled_option(cfg)
    if cfg.weighting not in SCHEMES:
        raise TrainError(f"--weighting {cfg.weighting!r} is unknown: use one of {', '.join(SCHEMES)}")
    root = cache.open_cache(cfg.cache, mode="r")
    table = root.segments
    if not table.heads:
        raise TrainError("the cache has no label heads, so the student has no outputs: extract a manifest with label columns")
    frames_key = resolve_frames(root, cfg.inputs)
    if frames_key is None and (cfg.backbone or cfg.init_from or cfg.weights):
        raise TrainError("--backbone, --weights and --init-from train an end-to-end student on frames: pass --inputs frames (after `egodistill extract --modality frames`)")
    input_keys = [frames_key] if frames_key else resolve_inputs(root, cfg.inputs)
    teacher_keys = resolve_teachers(root, cfg.teachers, table.heads) if cfg.teachers else []
    if not teacher_keys and cfg.weighting != "uniform":
        raise TrainError(f"--weighting {cfg.weighting} needs --teachers")
    present = present_inputs(root, input_keys)
    views = teacher_views(root, teacher_keys) if teacher_keys else None
    if views and views.frames != cfg.frames:
        raise TrainError(f"the teachers' logits are per view of {views.frames} rows; the student reads --frames {cfg.frames}: "
                         f"train with --frames {views.frames} so both see the same rows")
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
    unlabelled = unlabelled_segments(cfg, table, present, logits, holdout, input_keys) if cfg.unlabelled_split is not None else np.zeros(0, dtype=np.int64)
    if len(unlabelled):
        train_segments = np.sort(np.concatenate([train_segments, unlabelled]))
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
    steps = cfg.steps or auto_steps(len(train_segments), cfg.batch_size * cfg.accumulate)
    if frames_key:
        network, augment = frames_network(cfg, root, frames_key, teacher_keys, bool(views))
        return Setup(root, table, input_keys, teacher_keys, present, logits, train_segments, holdout, weights, network.cfg, steps,
                     views, network, augment, unlabelled=unlabelled)
    dims = [root.teacher(k).feature_dim for k in input_keys]
    model = ModelConfig(dims, dict(table.heads), frames=cfg.frames, dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads,
                        dropout=cfg.dropout, input_dropout=cfg.input_dropout, single_row=cfg.single_row)
    return Setup(root, table, input_keys, teacher_keys, present, logits, train_segments, holdout, weights, model, steps, views,
                 unlabelled=unlabelled)


def check_unlabelled_option(cfg: TrainConfig) -> None:
    """--unlabelled-split names another split than --train-split, and comes with teachers; before the cache is opened."""
    name = cfg.unlabelled_split
    if name is None:
        return
    if not name.strip():
        raise TrainError("--unlabelled-split is empty: name the split of the unlabelled segments (`manifest windows --split NAME`)")
    if name == cfg.train_split:
        raise TrainError(f"--unlabelled-split {name} is the training split itself: name the split of the unlabelled segments (`manifest windows --split NAME`)")
    if not cfg.teachers:
        raise TrainError(f"--unlabelled-split {name} needs --teachers: unlabelled segments teach only through the teachers' logits")


def unlabelled_segments(cfg: TrainConfig, table: cache.SegmentTable, present: np.ndarray, logits: dict[str, np.ndarray],
                        holdout: np.ndarray, input_keys: list[str]) -> np.ndarray:
    """The --unlabelled-split segments the run distils on: those with an input and some teacher's logits.

    Their labels are ignored (Setup.labels), so they add only the distillation term. A video with held-out
    segments gives none: its windows' teacher logits come from the model fitted on all labelled training
    segments, held-out ones included, so they would carry the holdout's labels into training."""
    name = cfg.unlabelled_split
    in_split = table.split == name
    if not in_split.any():
        raise TrainError(f"the cache has no {name!r} segments (its splits: {', '.join(sorted(set(table.split.tolist())))}): "
                         f"add them with `egodistill manifest windows --split {name}` and `extract --manifest`, or name another --unlabelled-split")
    usable = in_split & present.any(axis=1)
    if not usable.any():
        raise TrainError(f"none of the {int(in_split.sum())} {name!r} segments has features of {', '.join(input_keys)}: "
                         f"run `egodistill extract` for them on the manifest that holds that split")
    taught = np.any([np.isfinite(v.reshape(len(v), -1)).any(axis=1) for v in logits.values()], axis=0)
    if not (usable & taught).any():
        raise TrainError(f"the teachers have no logits for the {int(usable.sum())} {name!r} segments with inputs: "
                         f"run `egodistill fit-teachers` again now that they are extracted, then train")
    keep = usable & taught & ~np.isin(table.videos, table.videos[holdout])
    if not keep.any():
        raise TrainError(f"every {name!r} segment with inputs and teacher logits is from a video --holdout {cfg.holdout:g} keeps out: lower --holdout")
    return np.flatnonzero(keep)


def frames_network(cfg: TrainConfig, root: cache.Cache, frames_key: str, teacher_keys: list[str], views: bool) -> tuple[FramesStudent, Augment]:
    """The end-to-end student for `--inputs frames`, built with its starting weights, and its training views.

    Refuses, in one line: more --frames than stored, flips on SSv2, an unknown backbone, weights that do not
    fit it, and an --init-from file other than the one the teacher was extracted with."""
    frames = root.teacher(frames_key)
    stored = np.diff(frames.offsets)[frames.usable_segments()]
    if len(stored) and cfg.frames > int(stored.max()):
        raise TrainError(f"--frames {cfg.frames} is more than the {int(stored.max())} frames per segment that {frames_key} stores: "
                         f"pass --frames {int(stored.max())} or fewer, or extract frames again with --frames {cfg.frames}")
    if views:  # the teachers' logits are per window of their source rows: the frames must be those rows
        for key in teacher_keys:
            for source in root.teacher(key).provenance.source_teachers:
                if not np.array_equal(root.teacher(source).offsets, frames.offsets):
                    raise TrainError(f"teacher {key} has views over the rows of {source}, and {frames_key} stores other rows per segment: "
                                     f"extract frames with the same --frames/--fps as {source}, so the student sees its teachers' frames")
    source_format = root.segments_info["source"].get("format")
    if cfg.flip and source_format == SSV2:
        raise TrainError("--flip on a Something-Something v2 cache: its labels name left and right, so a mirrored clip has another label; train without --flip")
    backbone, weights, seed = starting_point(cfg, root)
    backbone_family(backbone)  # a one-line error for an unknown name, before anything is built
    torch.manual_seed(cfg.seed)
    network = FramesStudent(NetworkConfig(backbone, dict(root.segments.heads), frames=cfg.frames, image_size=cfg.image_size), weights=weights, seed=seed)
    # Unknown classes (a generic CSV) may name left and right, as the demo's do: no flips unless asked.
    flip = source_format in FLIP_FORMATS if cfg.flip is None else cfg.flip
    return network, Augment(scale=(cfg.crop_scale, 1.0), flip=flip, eval_fraction=eval_crop_fraction(backbone))


def views_note(cfg: TrainConfig, s: Setup) -> str:
    """The end-to-end student's training views in one line, said at the start of a run: a flip chosen by
    default on a manifest whose classes might name left and right is worth seeing."""
    why = "as asked" if cfg.flip is not None else "on for EPIC-KITCHENS, off elsewhere: pass --flip when no class names a direction"
    return (f"training views: random resized crop (area {s.augment.scale[0]:g}-1 of the stored frame) to {s.network.size} px, "
            f"left-right flips {'on' if s.augment.flip else 'off'} ({why})")


def starting_point(cfg: TrainConfig, root: cache.Cache) -> tuple[str, str | None, int]:
    """(backbone, weights, seed) the end-to-end student starts from: as given, or an --init-from teacher's own,
    read from its provenance (a weights file is checked against the sha256 recorded there)."""
    if not cfg.init_from:
        if not cfg.backbone:
            raise TrainError("--inputs frames needs --backbone NAME (a timm model or a torchvision clip model such as swin3d_t), or --init-from rgb")
        return cfg.backbone, cfg.weights, cfg.seed
    key = resolve_inputs(root, [cfg.init_from], "--init-from")[0]
    p = root.teacher(key).provenance
    if p.in_chans != 3:
        raise TrainError(f"--init-from {cfg.init_from}: teacher {key} reads {p.in_chans} channels, the student reads RGB frames: start from an RGB teacher")
    if cfg.backbone and cfg.backbone != p.backbone:
        raise TrainError(f"--backbone {cfg.backbone} and --init-from {cfg.init_from} (a {p.backbone}) disagree: drop --backbone, or start from another teacher")
    if not str(p.weights).startswith(("random-init:", "timm-pretrained:", "sha256:")):
        raise TrainError(f"--init-from {cfg.init_from}: teacher {key} has weights {p.weights}, not a backbone's: start from an extracted RGB teacher")
    # As predict and export rebuild it: a random init by its recorded seed (the same weights), a file by its sha256.
    [weights] = recorded_weights([root.teacher(key)], [cfg.weights] if cfg.weights else [])
    return p.backbone, weights, recorded_seed(p.weights) if weights is None else cfg.seed


def loaders(cfg: TrainConfig, s: Setup, pin_memory: bool = False, share: tuple[int, int] = (0, 1)) -> tuple[CacheLoader, CacheLoader | None]:
    """The training loader (under torchrun: this rank's share of every global batch) and the held-out one."""
    common = dict(teacher_logits=s.teacher_logits, frames=cfg.frames, seed=cfg.seed, buffer_blocks=cfg.buffer_blocks,
                  prefetch=cfg.prefetch, in_memory=cfg.in_memory, present=s.present, views=s.views, augment=s.augment, pin_memory=pin_memory)
    train = CacheLoader(s.root, s.input_keys, s.train_segments, s.labels(), batch_size=cfg.batch_size, train=True, share=share, **common)
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


def world() -> tuple[int, int]:
    """(rank, processes) under `torchrun` (its RANK and WORLD_SIZE variables), else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def join_process_group(device_name: str) -> None:
    """Under torchrun: join the process group once (NCCL on CUDA, gloo on CPU), each rank on its own GPU."""
    import torch.distributed as dist

    if world()[1] == 1 or dist.is_initialized():
        return
    cuda = pick_device(device_name).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")


def start_run(cfg: TrainConfig, resume: bool = False) -> tuple[Setup, bool]:
    """Check everything that can be wrong before any work: the cache, the names, the run dir.
    Returns the setup and whether there is a checkpoint to resume from. Under torchrun, rank 0 claims
    the run dir and tells the others (its one-line error, if any, is every rank's)."""
    s = setup(cfg)
    rank, processes = world()
    if processes == 1:
        return s, rundir.claim_run_dir(cfg.out, s.record(cfg), resume)
    if cfg.batch_size % processes:
        raise TrainError(f"--batch-size {cfg.batch_size} is the global batch of {processes} processes: give a multiple of {processes}")
    import torch.distributed as dist

    join_process_group(cfg.device)
    answer: list = [None]
    if rank == 0:
        try:
            answer[0] = rundir.claim_run_dir(cfg.out, s.record(cfg), resume)
        except EgodistillError as err:
            answer[0] = str(err)
    dist.broadcast_object_list(answer, src=0)
    if isinstance(answer[0], str):
        raise TrainError(answer[0])
    return s, bool(answer[0])


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
    if device.type == "cuda" and world()[1] > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    with head_threads(device) if s.network is None else contextlib.nullcontext():  # a network uses every core
        return _train(cfg, s, resuming, device, log, on_step, stop_after)


def accumulation_group(batch: int, batches: int, accumulate: int) -> tuple[int, int]:
    """(first batch, batches) of the optimiser step that batch `batch` of an epoch of `batches` belongs to.
    The epoch's last step takes what is left, so a checkpoint at an epoch end never holds half a gradient."""
    first = batch // accumulate * accumulate
    return first, min(accumulate, batches - first)


def _train(cfg: TrainConfig, s: Setup, resuming: bool, device: torch.device, log: Callable[[str], None],
           on_step: Callable[[int, int, float, float], None] | None, stop_after: int | None) -> list[dict]:
    torch.manual_seed(cfg.seed)
    rank, processes = world()
    train_loader, held_loader = loaders(cfg, s, pin_memory=device.type == "cuda", share=(rank, processes))
    model = s.network if s.network is not None else Student(s.model)
    if s.network is not None:
        log(views_note(cfg, s))
    if s.network is None and not resuming:  # a resumed model brings its statistics in its state dict
        model.set_statistics(training_statistics(cfg, s))
    # Heads: bf16 on CUDA. Networks: bf16 autocast and channels_last on CUDA and on CPUs with native bf16.
    bf16 = device.type == "cuda" if s.network is None else resolve_precision(cfg.precision, device.type) == "bf16"
    if s.network is not None and bf16:
        model.to_channels_last()
    model = model.to(device)
    net = model  # what the steps call: under torchrun, DDP around the model (gradients averaged over the ranks)
    if processes > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda" and s.network is not None:  # batch statistics over the global batch, as one process has them
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimiser = make_optimiser(model, cfg.lr, cfg.weight_decay)
    masking = torch.Generator().manual_seed(cfg.seed + 1)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
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
        if rank == 0:
            rundir.truncate_metrics(cfg.out, state["epoch"], state["step"])
        log(f"resuming {cfg.out} at epoch {state['epoch']}, batch {state['batch']} (step {state['step']} of {total_steps})")
    elif rank == 0:  # a run killed before its first checkpoint starts over: its lines go too
        rundir.truncate_metrics(cfg.out, 0, 0)
    loss_args = dict(scheme=cfg.weighting, tau=cfg.tau, temperature=cfg.temperature, kd_weight=cfg.kd_weight,
                     gt_weight=cfg.gt_weight, weights=None if s.weights is None else {h: w.to(device) for h, w in s.weights.items()})
    log_every = max(1, total_steps // 10)

    def checkpoint() -> None:
        if rank:  # rank 0 writes the run dir; every rank holds the same weights
            return
        rng = {"torch": torch.get_rng_state(), "masking": masking.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        kind = "network_config" if s.network is not None else "model_config"
        rundir.save_checkpoint(cfg.out, rundir.LAST, {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "state": dict(state), "rng": rng, kind: s.model.to_dict()})

    batches = len(train_loader)

    while state["step"] < total_steps:
        model.train()
        started, seen_now, logged_before = time.perf_counter(), 0, state["step"] // log_every
        for batch in train_loader.epoch(state["epoch"], state["batch"]):
            batch = batch.to(device)
            present = mask_modalities(batch.present, cfg.mask_prob, masking)
            with autocast():
                logits = student_logits(net, batch, present)
            loss = student_loss(logits, batch.labels, batch.teacher_logits, **loss_args)
            first, group_size = accumulation_group(state["batch"], batches, cfg.accumulate)
            state["batch"] += 1
            ends_step = state["batch"] == first + group_size  # gradient accumulation: the step's final batch
            # A batch with nothing to learn from adds nothing (student/step.py).
            optimiser_step(model, optimiser, loss, state["step"], total_steps, cfg, share=1.0 / group_size, last=ends_step)
            state["loss_sum"] += loss.detach().item() * len(batch)
            state["seen"] += len(batch)
            seen_now += len(batch)
            if not ends_step:
                continue
            state["step"] += 1
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
        boundary = last or state["step"] // log_every > logged_before
        if rank == 0:  # the line's loss and rate are rank 0's share of each batch
            rundir.append_metrics(cfg.out, line)
            if boundary:
                log(_summary(line, total_steps))
        state.update(epoch=state["epoch"] + 1, batch=0, loss_sum=0.0, seen=0)
        if boundary:  # ten checkpoints a run and the last: small data makes hundreds of passes
            checkpoint()
    return rundir.read_metrics(cfg.out)


@torch.no_grad()
def held_out(model: Student | FramesStudent, loader: CacheLoader | None, device, autocast, loss_args: dict) -> dict:
    """Loss and top-1 per head on the held-out training segments (all inputs present as cached)."""
    if loader is None:
        return {}
    model.eval()
    loss_sum, count, correct, labelled = 0.0, 0, {}, {}
    for batch in loader.epoch(0):
        batch = batch.to(device)
        with autocast():
            logits = student_logits(model, batch, batch.present)
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
