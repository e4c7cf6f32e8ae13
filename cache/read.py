"""Reading teachers back: offsets, whole-chunk row reads, logits, and which segments are usable."""

from __future__ import annotations

import numpy as np
import zarr

from egodistill.cache.teachers import layout_of, segment_status, task_segments


def read_offsets(teacher: zarr.Group) -> np.ndarray:
    return teacher["offsets"][:]


def read_rows(teacher: zarr.Group, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Features [rows, D] float16 and timestamps [rows] of rows start:stop, in one read per array."""
    return teacher["features"][start:stop], teacher["timestamps"][start:stop]


def read_logits(teacher: zarr.Group, head: str) -> np.ndarray:
    """Logits [N, C] float32 of one output head; NaN rows where a segment has none."""
    return teacher[f"logits/{head}"][:]


def has_features(teacher: zarr.Group) -> bool:
    return "features" in teacher


def logit_heads(teacher: zarr.Group) -> dict[str, int]:
    return dict(teacher.attrs["teacher"]["heads"])


def usable_segments(teacher: zarr.Group) -> np.ndarray:
    """bool [N]: the segment's task finished and the segment did not fail."""
    return segment_status(teacher) == 1


def read_blocks(teacher: zarr.Group) -> list[range]:
    """Segment ranges whose rows are whole shards (one per task): the unit a loader should read."""
    layout = layout_of(teacher)
    return [task_segments(layout, t) for t in range(layout.tasks)]
