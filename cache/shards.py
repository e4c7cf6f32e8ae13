"""How a teacher's rows are cut into chunks, shards and tasks (its `Layout`); fixed when the teacher is created."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

ROW_CHUNK_TARGET = 512  # rows per inner chunk: the loader's read unit
TASKS_TARGET = 64       # aim for this many tasks so a cluster has work to spread
MIN_ROWS_PER_TASK = 32  # ... but give each task enough frames to batch the model's forward passes
MAX_SEGMENTS_PER_TASK = 256


@dataclass(frozen=True)
class Layout:
    segments: int
    rows: int
    segments_per_task: int
    rows_per_shard: int
    rows_per_chunk: int

    @property
    def tasks(self) -> int:
        return math.ceil(self.segments / self.segments_per_task)

    def task_segments(self, task: int) -> range:
        """Task t covers segments [t*S, min((t+1)*S, N))."""
        start = task * self.segments_per_task
        return range(start, min(start + self.segments_per_task, self.segments))

    def to_json(self) -> dict:
        return asdict(self)


def plan_layout(rows_per_segment: np.ndarray, segments_per_task: int | None = None) -> tuple[np.ndarray, Layout]:
    """Offsets (N+1) and a layout whose shards line up with tasks whenever segments have equal rows."""
    rows_per_segment = np.asarray(rows_per_segment, dtype=np.int64)
    n = len(rows_per_segment)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(rows_per_segment, out=offsets[1:])
    if segments_per_task is None:
        mean_rows = max(1.0, float(offsets[-1]) / max(n, 1))
        wanted = max(math.ceil(n / TASKS_TARGET), math.ceil(MIN_ROWS_PER_TASK / mean_rows))
        segments_per_task = int(np.clip(wanted, 1, MAX_SEGMENTS_PER_TASK))
    uniform = n > 0 and bool(np.all(rows_per_segment == rows_per_segment[0]))
    if uniform:
        # Shard = one task's rows exactly, so no two tasks ever touch one shard.
        t = int(rows_per_segment[0])
        shard = segments_per_task * t
        per_chunk = max(d for d in range(1, segments_per_task + 1) if segments_per_task % d == 0 and d * t <= max(ROW_CHUNK_TARGET, t))
        chunk = per_chunk * t
    else:
        mean_rows = max(1, int(offsets[-1] // max(n, 1)))
        chunk = min(ROW_CHUNK_TARGET, max(1, segments_per_task * mean_rows))
        shard = chunk * max(1, round(segments_per_task * mean_rows / chunk))
    layout = Layout(segments=n, rows=int(offsets[-1]), segments_per_task=segments_per_task, rows_per_shard=max(shard, 1), rows_per_chunk=max(chunk, 1))
    return offsets, layout
