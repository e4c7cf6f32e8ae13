"""The segments table: ids, videos, times, split and labels, written once per cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr

from egodistill.cache.errors import CacheError

GROUP = "segments"


@dataclass(frozen=True)
class SegmentTable:
    """Column arrays of every segment in the cache, in cache order (index i = row i of logits)."""

    ids: np.ndarray          # str [N]
    videos: np.ndarray       # str [N]
    start_sec: np.ndarray    # float64 [N]
    stop_sec: np.ndarray     # float64 [N], NaN = end of video
    split: np.ndarray        # str [N]
    labels: dict[str, np.ndarray]  # head -> int32 [N], -1 = unlabelled
    heads: dict[str, int]    # head -> number of classes

    def __len__(self) -> int:
        return len(self.ids)


def write_segments(root: zarr.Group, table: SegmentTable, source: dict) -> None:
    """Write the table if the cache has none; otherwise insist it is the same segments."""
    if GROUP in root and "count" in root[GROUP].attrs:
        _check_same(read_segments(root), table)
        return
    if GROUP in root:  # a run was killed while writing the table: nothing refers to it yet
        del root[GROUP]
    n = len(table)
    group = root.create_group(GROUP)
    chunk = (max(1, min(n, 65536)),)
    for name, values, dtype in (
        ("id", table.ids, str),
        ("video", table.videos, str),
        ("split", table.split, str),
        ("start_sec", table.start_sec, "float64"),
        ("stop_sec", table.stop_sec, "float64"),
    ):
        group.create_array(name, shape=(n,), dtype=dtype, chunks=chunk)[:] = np.asarray(values)
    for head, labels in table.labels.items():
        group.create_array(f"label_{head}", shape=(n,), dtype="int32", chunks=chunk, fill_value=-1)[:] = labels
    # Attributes last: a table without them is a half-written one and is rewritten.
    group.attrs.update({"count": n, "heads": dict(table.heads), "source": source})


def read_segments(root: zarr.Group) -> SegmentTable:
    if GROUP not in root or "count" not in root[GROUP].attrs:
        raise CacheError("the cache has no segments table: run `egodistill extract` on it first")
    group = root[GROUP]
    heads = {k: int(v) for k, v in group.attrs["heads"].items()}
    return SegmentTable(
        ids=group["id"][:],
        videos=group["video"][:],
        start_sec=group["start_sec"][:],
        stop_sec=group["stop_sec"][:],
        split=group["split"][:],
        labels={h: group[f"label_{h}"][:] for h in heads},
        heads=heads,
    )


def _check_same(existing: SegmentTable, table: SegmentTable) -> None:
    same = (
        len(existing) == len(table)
        and np.array_equal(existing.ids, np.asarray(table.ids))
        and existing.heads == dict(table.heads)
    )
    if not same:
        raise CacheError(
            f"the cache already holds a different segments table ({len(existing)} segments, heads "
            f"{existing.heads}) than this manifest ({len(table)} segments, heads {dict(table.heads)}): "
            "use a new --cache for another manifest"
        )
