"""Checksums of the stored objects a task writes, computed at write time for its task record.

A task's record carries `checksums`: the sha256 of every object (shard or chunk file) the task
owns outright, keyed by its store key from the cache root (the file `<cache>/<key>`), plus the objects its rows depend on
(`offsets`, the segments table). Objects zarr did not store because they held only the fill
value are recorded as "absent". Rows that share a shard with another task (ragged `--fps`
layouts) cannot be checked by the object's bytes, which the neighbour rewrites; for them the
record keeps `row_checksums`, a sha256 of the row values as written.
"""

from __future__ import annotations

import hashlib

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from egodistill.cache.segments import has_table, part_groups, table_arrays, table_attrs

ABSENT = "absent"


def digest(data: bytes | None) -> str:
    return ABSENT if data is None else "sha256:" + hashlib.sha256(data).hexdigest()


def rows_digest(values: np.ndarray) -> str:
    """sha256 of row values as little-endian bytes (what a reader decodes), C order."""
    values = np.ascontiguousarray(values)
    return "sha256:" + hashlib.sha256(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def read_object(group: zarr.Group, key: str) -> bytes | None:
    """The stored bytes of the object `key` (from the cache root) of `group`'s store, or None when absent."""
    store = group.store_path.store
    buffer = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buffer is None else buffer.to_bytes()


def object_grid(array: zarr.Array) -> tuple[int, ...]:
    """Extent of one stored object: the shard shape of a sharded array, else its chunk shape."""
    return tuple(array.metadata.chunk_grid.chunk_shape)


def object_key(array: zarr.Array, coords: tuple[int, ...]) -> str:
    """The object's store key from the cache root (e.g. "teachers/<key>/features/c/3/0")."""
    return f"{array.path}/{array.metadata.chunk_key_encoding.encode_chunk_key(coords)}"


def objects_along_rows(array: zarr.Array, r0: int, r1: int) -> list[tuple[tuple[int, ...], int, int]]:
    """(coords, first row, end row) of every stored object rows r0:r1 touch (all columns)."""
    step = object_grid(array)[0]
    if r1 <= r0:
        return []
    tail = (0,) * (array.ndim - 1)  # rows span every column in one object: D and classes are never split
    return [((i, *tail), i * step, min((i + 1) * step, array.shape[0])) for i in range(r0 // step, (r1 - 1) // step + 1)]


def task_checksums(teacher: zarr.Group, segments: range, r0: int, r1: int, written: dict[str, np.ndarray]) -> dict:
    """`checksums` and `row_checksums` for a task that wrote rows r0:r1 and `segments`.

    `written` maps array name (features, timestamps, logits/<head>) to the values the task wrote."""
    checksums: dict[str, str] = {}
    row_checksums: list[dict] = []
    for name, values in written.items():
        array = teacher[name]
        a, b = (segments.start, segments.stop) if name.startswith("logits/") else (r0, r1)
        for coords, start, stop in objects_along_rows(array, a, b):
            key = object_key(array, coords)
            if a <= start and stop <= b:
                checksums[key] = digest(read_object(teacher, key))
            else:  # shared with a neighbouring task: check the values of our rows only
                lo, hi = max(a, start), min(b, stop)
                row_checksums.append({"array": name, "rows": [lo, hi], "sha256": rows_digest(values[lo - a: hi - a])})
    root = zarr.open_group(teacher.store_path.store, path="", mode="r")
    for key in object_keys(root, [teacher["offsets"].path, *segment_table_keys(root)]):
        checksums[key] = digest(read_object(teacher, key))
    return {"checksums": checksums, "row_checksums": row_checksums}


def segment_table_keys(root: zarr.Group) -> list[str]:
    """Paths of the arrays the segments table is made of (none when the cache has no table)."""
    if not has_table(root):
        return []
    names = table_arrays(table_attrs(root)["heads"])
    return [f"{group.path}/{name}" for group in part_groups(root) for name in names]


def object_keys(root: zarr.Group, array_paths: list[str]) -> list[str]:
    """Store keys of every object of these arrays (paths from the cache root)."""
    arrays = [root[p] for p in array_paths]
    return [object_key(array, coords) for array in arrays for coords, _, _ in objects_along_rows(array, 0, array.shape[0])]
