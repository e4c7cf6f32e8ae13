"""Streams student batches from the cache: whole-shard reads, a shuffle buffer, a prefetch thread.

One epoch is a plan computed up front from (seed, epoch) alone: a shuffled order of blocks
(segment ranges whose rows are whole shards, `Teacher.blocks`), cut into buffers of
`buffer_blocks` blocks whose segments are shuffled together, plus one jitter draw per segment.
Because the plan needs no data, a resumed run restarts at batch k of epoch e and sees exactly
the batches it would have seen. Rows are read one buffer at a time, one read call per
block and input, never one call per segment, and the next buffer is read while this one is used.

An input may be a frames teacher (`extract --modality frames`: uint8 rows [H, W, 3]) instead of
features; its rows are gathered the same way, and the plan adds one crop box and one flip flag
per segment (`Augment`), drawn from (seed, epoch) too, so a resumed end-to-end run sees the same
crops. The crop itself runs on the device (student/network.py).
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from egodistill import cache


@dataclass
class Batch:
    """One batch: inputs per modality, which are present, labels and teacher logits per head."""

    features: list[torch.Tensor]          # per input: float16 [B, T, D_m] (zeros where absent)
    present: torch.Tensor                 # bool [B, inputs]
    labels: dict[str, torch.Tensor]       # head -> int64 [B], -1 unlabelled
    teacher_logits: dict[str, torch.Tensor] | None  # head -> float32 [B, teachers, C]
    index: torch.Tensor                   # int64 [B], segment index in the cache
    crops: torch.Tensor | None = None     # frames inputs: float32 [B, 4] crop box (x0, y0, x1, y1) as fractions of W, H
    flip: torch.Tensor | None = None      # frames inputs: bool [B], mirror the crop left-right

    def __len__(self) -> int:
        return len(self.index)

    def _map(self, move) -> "Batch":
        return Batch(
            features=[move(f) for f in self.features], present=move(self.present),
            labels={h: move(y) for h, y in self.labels.items()},
            teacher_logits=None if self.teacher_logits is None else {h: move(t) for h, t in self.teacher_logits.items()},
            index=move(self.index), crops=None if self.crops is None else move(self.crops), flip=None if self.flip is None else move(self.flip),
        )

    def to(self, device: torch.device | str) -> "Batch":
        non_blocking = torch.device(device).type == "cuda"  # asynchronous from pinned memory (`pin`)
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin(self) -> "Batch":
        """The batch in page-locked memory, so the copy to a GPU overlaps the step (done in the loader thread)."""
        return self._map(lambda t: t.pin_memory())


@dataclass(frozen=True)
class Augment:
    """Training views of frames inputs, and the evaluation view.

    Training: a random resized crop inside the stored frame (area share in `scale`, aspect ratio in
    `ratio`, as torchvision's RandomResizedCrop draws it) and, where `flip`, a left-right mirror with
    probability 1/2. Evaluation: a centred square of `eval_fraction` of the short side (the backbone's
    own crop_pct). Both are the same for every frame of a segment, so the motion a clip model sees is
    not broken. See docs/training.md for their effect on consistency with the teachers' views."""

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    eval_fraction: float = 0.875


def centre_boxes(count: int, frame_shape: tuple[int, int], fraction: float) -> np.ndarray:
    """float32 [count, 4]: the centred square of `fraction` of the short side, as fractions of W and H."""
    h, w = frame_shape
    side = fraction * min(h, w)
    half_x, half_y = side / (2 * w), side / (2 * h)
    return np.tile(np.array([0.5 - half_x, 0.5 - half_y, 0.5 + half_x, 0.5 + half_y], dtype=np.float32), (count, 1))


def random_crop_boxes(rng: np.random.Generator, count: int, frame_shape: tuple[int, int], augment: Augment, attempts: int = 10) -> np.ndarray:
    """float32 [count, 4] random resized crops (fractions of W and H): torchvision's draw, vectorised, with its
    fallback (the largest centred crop of an allowed ratio) where no attempt fits."""
    h, w = frame_shape
    area = rng.uniform(*augment.scale, size=(count, attempts)) * h * w
    ratio = np.exp(rng.uniform(np.log(augment.ratio[0]), np.log(augment.ratio[1]), size=(count, attempts)))
    cw, ch = np.sqrt(area * ratio), np.sqrt(area / ratio)
    fits = (cw <= w) & (ch <= h)
    first = np.where(fits.any(axis=1), fits.argmax(axis=1), -1)
    pick = np.maximum(first, 0)
    cw, ch = cw[np.arange(count), pick], ch[np.arange(count), pick]
    fallback_ratio = float(np.clip(w / h, *augment.ratio))
    fw, fh = (h * fallback_ratio, h) if w / h > fallback_ratio else (w, w / fallback_ratio)
    cw, ch = np.where(first >= 0, cw, fw), np.where(first >= 0, ch, fh)
    x0 = np.where(first >= 0, rng.random(count) * (w - cw), (w - cw) / 2)
    y0 = np.where(first >= 0, rng.random(count) * (h - ch), (h - ch) / 2)
    return np.stack([x0 / w, y0 / h, (x0 + cw) / w, (y0 + ch) / h], axis=1).astype(np.float32)


def frame_indices(rows: np.ndarray, frames: int, jitter: np.ndarray) -> np.ndarray:
    """Row indices [B, frames] inside each segment of `rows` rows: evenly strided frames, the window
    placed at fraction `jitter` in [0, 1) of the free room (0.5 = centred). Short segments repeat rows."""
    rows = np.maximum(np.asarray(rows, dtype=np.int64), 1)[:, None]
    steps = np.arange(frames, dtype=np.int64)[None, :]
    stride = np.maximum(rows // frames, 1)
    room = rows - (stride * (frames - 1) + 1)
    offset = np.floor(np.asarray(jitter, dtype=np.float64)[:, None] * (np.maximum(room, 0) + 1)).astype(np.int64)
    offset = np.minimum(offset, np.maximum(room, 0))
    long_enough = offset + stride * steps
    short = (steps * rows) // frames  # fewer rows than frames: spread and repeat
    return np.where(room >= 0, long_enough, short)


def present_inputs(opened: cache.Cache, input_keys: list[str]) -> np.ndarray:
    """bool [N, inputs]: the segment has usable rows in that input teacher."""
    cols = []
    for key in input_keys:
        teacher = opened.teacher(key)
        cols.append(teacher.usable_segments() & (np.diff(teacher.offsets) > 0))
    return np.stack(cols, axis=1)


def teacher_logit_table(opened: cache.Cache, teacher_keys: list[str], heads: list[str], views: bool = False) -> dict[str, np.ndarray]:
    """head -> float32 [N, teachers, C] (NaN where a teacher has no logits for a segment);
    with views, [N, teachers, V, C] (see `teacher_views`)."""
    teachers = [opened.teacher(k) for k in teacher_keys]
    read = (lambda t, h: t.read_view_logits(h)) if views else (lambda t, h: t.read_logits(h))
    return {h: np.stack([read(t, h) for t in teachers], axis=1).astype(np.float32) for h in heads}


def teacher_views(opened: cache.Cache, teacher_keys: list[str]) -> cache.Views | None:
    """The views shared by all the teachers' per-view logits; None when none has views.
    Raises CacheError when some have views and others not, or their views differ."""
    found = {opened.teacher(k).views for k in teacher_keys}
    if found == {None}:
        return None
    if len(found) > 1:
        raise cache.CacheError(f"the teachers {', '.join(teacher_keys)} have different views ({sorted(found, key=str)}): "
                               "fit them with the same fit-teachers --views, or distil from teachers without views")
    return next(iter(found))


def load_windows(loader: CacheLoader, inputs: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Every segment's window of an eval-mode loader, in memory, in `loader.segments` order:
    per input float16 [S, T, D] (zeros where absent) and present bool [S, inputs]."""
    order = {int(seg): i for i, seg in enumerate(loader.segments)}
    features = [np.zeros((len(loader.segments), loader.frames, d), dtype=np.float16) for d in loader.dims]
    present = np.zeros((len(loader.segments), inputs), dtype=bool)
    for batch in loader.epoch(0):
        at = np.array([order[int(i)] for i in batch.index.numpy()], dtype=np.int64)
        for m, x in enumerate(batch.features):
            features[m][at] = x.numpy()
        present[at] = batch.present.numpy()
    return features, present


def row_statistics(features: list[np.ndarray], present: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per input (mean [D], std [D]) over every row of the segments where that input is present."""
    out = []
    for m, x in enumerate(features):
        rows = x[present[:, m]].reshape(-1, x.shape[-1]).astype(np.float64)
        if len(rows) == 0:
            out.append((torch.zeros(x.shape[-1]), torch.ones(x.shape[-1])))
            continue
        out.append((torch.from_numpy(rows.mean(axis=0)).float(), torch.from_numpy(rows.std(axis=0)).float()))
    return out


def memory_budget() -> int:
    """Bytes of decoded features a loader may hold: a quarter of physical memory, at most 8 GiB."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 8 << 30
    return int(min(physical // 4, 8 << 30))


@dataclass(frozen=True)
class EpochPlan:
    """One epoch, computed up front: blocks in read order, segments in batch order, the buffer each
    segment is read with, where its window sits (0..1) and which teacher view that window is."""

    blocks: list[int]
    segments: np.ndarray
    buffers: np.ndarray
    placement: np.ndarray
    view: np.ndarray
    crops: np.ndarray | None = None  # frames inputs: float32 [S, 4] crop box per segment (see `Augment`)
    flip: np.ndarray | None = None   # frames inputs: bool [S]


class CacheLoader:
    """Batches of the given segments, streamed from the cache (see module doc).

    train=True shuffles and jitters (seeded by (seed, epoch)); train=False keeps cache order and
    places the frame window at `window` (0.5: centred). in_memory=True reads every input's rows once,
    up front; None (default) keeps the rows it has read when all of them fit `memory_budget()`, so
    only the first epoch reads the store; False always streams. With `views` (the teachers' views, `teacher_views`; teacher_logits then head -> [N, K, V, C]),
    training draws one view per segment and hands over that view's window and that view's teacher
    logits, so student and teachers saw the same rows (consistent teaching); evaluation uses the view
    nearest `window`. With a frames input (a teacher with `has_frames`), batches also carry each
    segment's crop box and flip flag (`augment`: random in training, the centred crop in evaluation),
    and pin_memory=True pins them for asynchronous copies to a GPU."""

    def __init__(
        self,
        opened: cache.Cache,
        input_keys: list[str],
        segments: np.ndarray,
        labels: dict[str, np.ndarray],
        *,
        teacher_logits: dict[str, np.ndarray] | None = None,
        batch_size: int = 64,
        frames: int = 8,
        train: bool = True,
        seed: int = 0,
        buffer_blocks: int = 8,
        prefetch: int = 4,
        in_memory: bool | None = None,
        present: np.ndarray | None = None,
        read_threads: int = 4,
        views: cache.Views | None = None,
        window: float = 0.5,
        augment: Augment | None = None,
        pin_memory: bool = False,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        self.teachers = [opened.teacher(k) for k in input_keys]
        self.offsets = [t.offsets for t in self.teachers]
        self.dims = [t.feature_dim for t in self.teachers]
        # What one row of each input is: a feature vector (float16 [D]) or a stored frame (uint8 [H, W, 3]).
        self.frames_input = [bool(getattr(t, "has_frames", False)) for t in self.teachers]
        self.row_shapes = [tuple(t.frame_shape) if f else (t.feature_dim,) for t, f in zip(self.teachers, self.frames_input)]
        self.row_dtypes = [np.dtype(np.uint8) if f else np.dtype(np.float16) for f in self.frames_input]
        self._readers = [t.read_frames if f else t.read_features for t, f in zip(self.teachers, self.frames_input)]
        self.augment = augment or Augment()
        self.pin_memory = pin_memory
        # (rank, processes): each batch of the plan is the global batch; this loader hands over its rank's part.
        self.rank, self.processes = share
        self.present = present if present is not None else present_inputs(opened, input_keys)
        self.segments = np.asarray(segments, dtype=np.int64)
        # int64 once, not per batch: the loader's per-batch work is what training waits on.
        self.labels, self.teacher_logits = {h: np.asarray(y, dtype=np.int64) for h, y in labels.items()}, teacher_logits
        self.batch_size, self.frames, self.train, self.seed = batch_size, frames, train, seed
        self.views, self.window = views, window
        self.buffer_blocks, self.prefetch = max(1, buffer_blocks), max(1, prefetch)
        # Blocks of the first input define the read unit; other inputs are read over the same
        # segment ranges (one call each), which are whole shards too when layouts agree.
        selected = np.zeros(len(self.present), dtype=bool)
        selected[self.segments] = True
        self.blocks = [b for b in self.teachers[0].blocks() if selected[b.start:b.stop].any()]
        self.block_segments = [np.arange(b.start, b.stop)[selected[b.start:b.stop]] for b in self.blocks]
        self._pool = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="egodistill-read")
        # Its own thread: a read-ahead waits on the read pool, so it must not hold one of its threads.
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egodistill-read-ahead")
        size = sum(int(o[-1]) * int(np.prod(shape)) * dtype.itemsize for o, shape, dtype in zip(self.offsets, self.row_shapes, self.row_dtypes))
        # None: hold the decoded rows once read when they fit the budget (every later epoch then reads
        # memory, not the store); False: always stream; True: read everything now.
        self._hold = size <= memory_budget() if in_memory is None else bool(in_memory)
        self.memory = self._read_all() if in_memory else None

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-len(self.segments) // self.batch_size)

    def plan(self, epoch: int) -> EpochPlan:
        """The whole epoch, from (seed, epoch) alone: block and segment order, buffers, windows and views."""
        if not self.train:
            order = list(range(len(self.blocks)))
            segs = np.concatenate(self.block_segments) if self.blocks else np.zeros(0, np.int64)
            buffers = np.concatenate([np.full(len(s), i // self.buffer_blocks) for i, s in enumerate(self.block_segments)]) if self.blocks else np.zeros(0, np.int64)
            view = self.views.nearest(self.window) if self.views else 0
            placement = self.views.placements[view] if self.views else self.window
            plan = EpochPlan(order, segs, buffers, np.full(len(segs), placement), np.full(len(segs), view, dtype=np.int64))
            return self._with_views(plan, epoch)
        rng = np.random.default_rng([self.seed, epoch])
        order = [int(i) for i in rng.permutation(len(self.blocks))]
        segs, buffers = [], []
        for g in range(0, len(order), self.buffer_blocks):
            members = np.concatenate([self.block_segments[b] for b in order[g:g + self.buffer_blocks]])
            segs.append(rng.permutation(members))
            buffers.append(np.full(len(members), g // self.buffer_blocks))
        segs_all = np.concatenate(segs) if segs else np.zeros(0, np.int64)
        buffers_all = np.concatenate(buffers) if buffers else np.zeros(0, np.int64)
        if self.views:
            view = rng.integers(0, len(self.views.placements), len(segs_all))
            return self._with_views(EpochPlan(order, segs_all, buffers_all, np.asarray(self.views.placements)[view], view), epoch)
        return self._with_views(EpochPlan(order, segs_all, buffers_all, rng.random(len(segs_all)), np.zeros(len(segs_all), dtype=np.int64)), epoch)

    def _with_views(self, plan: EpochPlan, epoch: int) -> EpochPlan:
        """Add each segment's crop box and flip for a frames input, from a generator of their own (so the
        plan of a feature-only loader is what it always was)."""
        if not any(self.frames_input):
            return plan
        shape = self.row_shapes[self.frames_input.index(True)][:2]
        n = len(plan.segments)
        if not self.train:
            return replace(plan, crops=centre_boxes(n, shape, self.augment.eval_fraction), flip=np.zeros(n, dtype=bool))
        rng = np.random.default_rng([self.seed, epoch, 1])
        crops = random_crop_boxes(rng, n, shape, self.augment)
        flip = (rng.random(n) < 0.5) & self.augment.flip
        return replace(plan, crops=crops, flip=flip)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of one epoch from batch `start_batch` on, assembled in a background thread."""
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for batch in self._batches(epoch, start_batch):
                    while not stop.is_set():
                        try:
                            out.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                out.put(done)
            except BaseException as err:  # handed to the consumer, which re-raises it
                out.put(err)

        worker = threading.Thread(target=produce, name="egodistill-loader", daemon=True)
        worker.start()
        try:
            while True:
                item = out.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join(timeout=5)

    def _batches(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        plan = self.plan(epoch)
        order, segs, buffers = plan.blocks, plan.segments, plan.buffers
        # Every segment's window rows of the epoch at once, per input (inputs may hold other row counts).
        within = [frame_indices(o[segs + 1] - o[segs], self.frames, plan.placement) for o in self.offsets]
        groups = [order[g:g + self.buffer_blocks] for g in range(0, len(order), self.buffer_blocks)]
        loaded: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # buffer -> (rows per input, segment -> row start)
        ahead: dict[int, Future] = {}  # the next buffer, read while this one is assembled into batches
        for a in range(start_batch * self.batch_size, len(segs), self.batch_size):
            size = min(self.batch_size, len(segs) - a)
            cut = slice(a + size * self.rank // self.processes, a + size * (self.rank + 1) // self.processes)
            batch, need = segs[cut], np.unique(buffers[cut])  # only the buffers this rank's part lies in are read
            for g in list(loaded):
                if g < need[0]:
                    del loaded[g]  # the plan never returns to a buffer it has left
            for g in need:
                if int(g) not in loaded:
                    job = ahead.pop(int(g), None)
                    loaded[int(g)] = job.result() if job is not None else self._read_buffer(groups[int(g)])
            following = int(need[-1]) + 1
            if following < len(groups) and following not in ahead and self.memory is None and not self._hold:
                ahead[following] = self._ahead.submit(self._read_buffer, groups[following])
            out = self._assemble(batch, buffers[cut], [w[cut] for w in within], plan.view[cut], loaded)
            if plan.crops is not None:
                out.crops, out.flip = torch.from_numpy(plan.crops[cut].copy()), torch.from_numpy(plan.flip[cut].copy())
            yield out.pin() if self.pin_memory else out

    def _read_all(self) -> list[np.ndarray]:
        jobs = [self._pool.submit(read, [(0, int(o[-1]))]) for read, o in zip(self._readers, self.offsets)]
        return [job.result() for job in jobs]

    def _read_buffer(self, block_ids: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Rows of every input for these blocks, concatenated, and each segment's first row in them."""
        if self.memory is None and self._hold:
            self.memory = self._read_all()
        if self.memory is not None:  # every row is in memory already: read it in place, no copy
            return self.memory, [o[:-1] for o in self.offsets]
        spans = [[(int(o[self.blocks[b].start]), int(o[self.blocks[b].stop])) for b in block_ids] for o in self.offsets]
        # Each input's blocks are one whole-shard read call (tensorstore, concurrently, on local caches);
        # the inputs' calls are in flight together.
        jobs = [self._pool.submit(read, s) for read, s in zip(self._readers, spans)]
        rows = [job.result() for job in jobs]
        starts = []
        for m, offsets in enumerate(self.offsets):
            start, at = np.full(len(self.present), -1, dtype=np.int64), 0
            for b, (r0, r1) in zip(block_ids, spans[m]):
                block = self.blocks[b]
                start[block.start:block.stop] = offsets[block.start:block.stop] - r0 + at
                at += r1 - r0
            starts.append(start)
        return rows, starts

    def _assemble(self, batch: np.ndarray, buffers: np.ndarray, windows: list[np.ndarray], view: np.ndarray, loaded: dict) -> Batch:
        present = self.present[batch]
        features = []
        for m, within in enumerate(windows):
            have = present[:, m]
            if buffers[0] == buffers[-1]:  # the common case (buffers ascend in a plan): one gather, absent rows zeroed after
                rows, starts = loaded[int(buffers[0])][0][m], loaded[int(buffers[0])][1][m]
                out = rows[np.where(have, starts[batch], 0)[:, None] + within]
                if not have.all():
                    out[~have] = 0
            else:  # a batch straddling two buffers
                out = np.zeros((len(batch), self.frames, *self.row_shapes[m]), dtype=self.row_dtypes[m])
                for g in np.unique(buffers):
                    rows, starts = loaded[int(g)][0][m], loaded[int(g)][1][m]
                    pick = (buffers == g) & have
                    out[pick] = rows[starts[batch[pick]][:, None] + within[pick]]
            features.append(torch.from_numpy(out))
        labels = {h: torch.from_numpy(y[batch]) for h, y in self.labels.items()}
        if self.teacher_logits is None:
            teachers = None
        elif self.views:  # [N, K, V, C]: each segment's drawn view
            teachers = {h: torch.from_numpy(np.ascontiguousarray(t[batch, :, view])) for h, t in self.teacher_logits.items()}
        else:
            teachers = {h: torch.from_numpy(t[batch]) for h, t in self.teacher_logits.items()}
        return Batch(features, torch.from_numpy(present.copy()), labels, teachers, torch.from_numpy(batch.copy()))
