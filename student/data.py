"""Streams student batches from the cache: whole-shard reads, a shuffle buffer, a prefetch thread.

One epoch is a plan computed up front from (seed, epoch) alone: a shuffled order of blocks
(segment ranges whose rows are whole shards, `Teacher.blocks`), cut into buffers of
`buffer_blocks` blocks whose segments are shuffled together, plus one jitter draw per segment.
Because the plan needs no data, a resumed run restarts at batch k of epoch e and sees exactly
the batches it would have seen. Rows are read one buffer at a time, one read call per
block and input, never one call per segment.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from dataclasses import dataclass

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

    def __len__(self) -> int:
        return len(self.index)

    def to(self, device: torch.device | str) -> "Batch":
        non_blocking = torch.device(device).type == "cuda"
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(
            features=[move(f) for f in self.features], present=move(self.present),
            labels={h: move(y) for h, y in self.labels.items()},
            teacher_logits=None if self.teacher_logits is None else {h: move(t) for h, t in self.teacher_logits.items()},
            index=move(self.index),
        )


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


def teacher_views(opened: cache.Cache, teacher_keys: list[str]) -> tuple[int, tuple[float, ...]] | None:
    """(frames, placements) shared by all the teachers' per-view logits; None when none has views.
    Raises CacheError when some have views and others not, or their views differ."""
    found = {(opened.teacher(k).view_frames, opened.teacher(k).views) for k in teacher_keys}
    if found == {(None, None)}:
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


class CacheLoader:
    """Batches of the given segments, streamed from the cache (see module doc).

    train=True shuffles and jitters (seeded by (seed, epoch)); train=False keeps cache order and
    places the frame window at `window` (0.5: centred). in_memory=True reads every input's rows once,
    up front; None (default) keeps the rows it has read when all of them fit `memory_budget()`, so
    only the first epoch reads the store; False always streams. With `views` (the teachers' view placements; teacher_logits then head -> [N, K, V, C]),
    training draws one view per segment and hands over that view's window and that view's teacher
    logits, so student and teachers saw the same rows (consistent teaching); evaluation uses the view
    nearest `window`."""

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
        views: tuple[float, ...] | None = None,
        window: float = 0.5,
    ) -> None:
        self.teachers = [opened.teacher(k) for k in input_keys]
        self.offsets = [t.offsets for t in self.teachers]
        self.dims = [t.feature_dim for t in self.teachers]
        self.present = present if present is not None else present_inputs(opened, input_keys)
        self.segments = np.asarray(segments, dtype=np.int64)
        # int64 once, not per batch: the loader's per-batch work is what training waits on.
        self.labels, self.teacher_logits = {h: np.asarray(y, dtype=np.int64) for h, y in labels.items()}, teacher_logits
        self.batch_size, self.frames, self.train, self.seed = batch_size, frames, train, seed
        self.views, self.window = (tuple(views) if views else None), window
        self.buffer_blocks, self.prefetch = max(1, buffer_blocks), max(1, prefetch)
        # Blocks of the first input define the read unit; other inputs are read over the same
        # segment ranges (one call each), which are whole shards too when layouts agree.
        selected = np.zeros(len(self.present), dtype=bool)
        selected[self.segments] = True
        self.blocks = [b for b in self.teachers[0].blocks() if selected[b.start:b.stop].any()]
        self.block_segments = [np.arange(b.start, b.stop)[selected[b.start:b.stop]] for b in self.blocks]
        self._pool = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="egodistill-read")
        size = sum(int(o[-1]) * d * 2 for o, d in zip(self.offsets, self.dims))
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
            view = int(np.argmin([abs(p - self.window) for p in self.views])) if self.views else 0
            placement = self.views[view] if self.views else self.window
            return EpochPlan(order, segs, buffers, np.full(len(segs), placement), np.full(len(segs), view, dtype=np.int64))
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
            view = rng.integers(0, len(self.views), len(segs_all))
            return EpochPlan(order, segs_all, buffers_all, np.asarray(self.views)[view], view)
        return EpochPlan(order, segs_all, buffers_all, rng.random(len(segs_all)), np.zeros(len(segs_all), dtype=np.int64))

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
        for a in range(start_batch * self.batch_size, len(segs), self.batch_size):
            batch, need = segs[a:a + self.batch_size], np.unique(buffers[a:a + self.batch_size])
            for g in list(loaded):
                if g < need[0]:
                    del loaded[g]  # the plan never returns to a buffer it has left
            for g in need:
                if int(g) not in loaded:
                    loaded[int(g)] = self._read_buffer(groups[int(g)])
            cut = slice(a, a + self.batch_size)
            yield self._assemble(batch, buffers[cut], [w[cut] for w in within], plan.view[cut], loaded)

    def _read_all(self) -> list[np.ndarray]:
        jobs = [self._pool.submit(t.read_features, [(0, int(o[-1]))]) for t, o in zip(self.teachers, self.offsets)]
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
        jobs = [self._pool.submit(t.read_features, s) for t, s in zip(self.teachers, spans)]
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
                out = np.zeros((len(batch), self.frames, self.dims[m]), dtype=np.float16)
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
