"""The segments table: ids, videos, times, split and labels; it grows append-only, one part per manifest added.

Text columns are stored in core Zarr v3 types, so every Zarr v3 reader opens them (tensorstore
refuses zarr-python's variable-length string type): `<column>_bytes` holds the UTF-8 of every
value concatenated, `<column>_offsets` [N+1] where value i is `bytes[offsets[i]:offsets[i+1]]`.

The first write puts its columns at the group's root (part 0). A manifest added later becomes part
p >= 1: the same columns for its segments alone under `parts/<p>/`, so no stored chunk is ever
rewritten (task records checksum the table's chunks). Segment i of the cache is the i-th row of the
parts taken in order; the `parts` attribute holds each part's length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr

from egodistill.cache.records import UNLABELLED
from egodistill.common import CacheError

GROUP = "segments"
PARTS = "parts"
TEXT_COLUMNS = ("id", "video", "split")
NUMBER_COLUMNS = ("start_sec", "stop_sec")
CHUNK = 1 << 20  # elements per chunk: a reader takes whole columns at once


@dataclass(frozen=True)
class SegmentTable:
    """Column arrays of every segment in the cache, in cache order (index i = row i of logits)."""

    ids: np.ndarray          # str [N]
    videos: np.ndarray       # str [N]
    start_sec: np.ndarray    # float64 [N]
    stop_sec: np.ndarray     # float64 [N], NaN = end of video
    split: np.ndarray        # str [N]
    labels: dict[str, np.ndarray]  # head -> int32 [N], UNLABELLED (-1) = unlabelled
    heads: dict[str, int]    # head -> number of classes

    def __len__(self) -> int:
        return len(self.ids)


def encode_text(values) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes (uint8) of all values concatenated, and int64 offsets [N+1]."""
    encoded = [str(v).encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def decode_text(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    raw = data.tobytes()
    return np.array([raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())], dtype=str)


def table_arrays(heads: dict[str, int]) -> list[str]:
    """Names of the arrays a table with these heads is made of."""
    return [f"{c}_{part}" for c in TEXT_COLUMNS for part in ("bytes", "offsets")] + list(NUMBER_COLUMNS) + [f"label_{h}" for h in heads]


def _create(group: zarr.Group, name: str, values: np.ndarray, fill_value=None) -> None:
    # Dimension names as xarray wants them: one name, one length (each column's bytes differ in length).
    dims = (f"{name[:-len('_bytes')]}_byte",) if name.endswith("_bytes") else ("segment_edge",) if name.endswith("_offsets") else ("segment",)
    values = np.asarray(values)
    group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(max(1, min(len(values), CHUNK)),),
                       fill_value=fill_value, dimension_names=dims, overwrite=True)[:] = values


def write_text_columns(group: zarr.Group, columns: dict[str, np.ndarray]) -> None:
    """`<column>_bytes` and `<column>_offsets` of each text column ("id", "video", "split")."""
    for column, values in columns.items():
        data, offsets = encode_text(values)
        _create(group, f"{column}_bytes", data, 0)
        _create(group, f"{column}_offsets", offsets, 0)


def write_table(root: zarr.Group, table: SegmentTable, source: dict, files: list[dict] | None = None,
                class_names: dict[str, list[str]] | None = None) -> None:
    """Write the table if the cache has none; otherwise insist it is the same segments. `files`: the manifests
    it came from ({"format", "manifest", "split", "segments": [first, end]}); default: `source` for all of it."""
    if GROUP in root and "count" in root[GROUP].attrs:
        _check_same(read_table(root), table)
        return
    if GROUP in root:  # a run was killed while writing the table: nothing refers to it yet
        del root[GROUP]
    group = root.create_group(GROUP)
    _write_columns(group, table)
    # Attributes last: a table without them is a half-written one and is rewritten.
    group.attrs.update({"count": len(table), "heads": dict(table.heads), "source": source, "parts": [len(table)],
                        "files": list(files) if files is not None else [{**source, "segments": [0, len(table)]}],
                        **({"class_names": {h: list(n) for h, n in class_names.items()}} if class_names else {})})


def append_table(root: zarr.Group, table: SegmentTable, files: list[dict]) -> None:
    """Add `table`'s segments after the stored ones as a part of their own; `files` describe them
    ({"format", "manifest", "split", "segments": [first, end]} in cache indices). Stored columns are not rewritten."""
    group = root[GROUP]
    attrs = group.attrs.asdict()
    heads = {h: int(c) for h, c in attrs["heads"].items()}
    if dict(table.heads) != heads:
        raise CacheError(f"segments to append have heads {dict(table.heads)}, the cache's table {heads}")
    parts = list(attrs.get("parts", [attrs["count"]]))
    folder = group.require_group(PARTS)
    name = str(len(parts))
    if name in folder:  # a run was killed while appending: the attributes never counted it
        del folder[name]
    _write_columns(folder.create_group(name), table)
    # The attributes are the commit point: until they name the part, readers do not see it.
    group.attrs.update({"count": int(attrs["count"]) + len(table), "parts": parts + [len(table)],
                        "files": list(attrs.get("files", [{**attrs.get("source", {}), "segments": [0, int(attrs["count"])]}])) + list(files)})


def _write_columns(group: zarr.Group, table: SegmentTable) -> None:
    write_text_columns(group, {"id": table.ids, "video": table.videos, "split": table.split})
    _create(group, "start_sec", np.asarray(table.start_sec, dtype=np.float64), np.nan)
    _create(group, "stop_sec", np.asarray(table.stop_sec, dtype=np.float64), np.nan)
    for head, labels in table.labels.items():
        _create(group, f"label_{head}", np.asarray(labels, dtype=np.int32), UNLABELLED)


def part_groups(root: zarr.Group) -> list[zarr.Group]:
    """The groups holding each part's columns, in cache order (part 0 is the table's own group)."""
    group = root[GROUP]
    parts = group.attrs.get("parts", [group.attrs["count"]])
    return [group] + [group[f"{PARTS}/{p}"] for p in range(1, len(parts))]


def has_table(root: zarr.Group) -> bool:
    return GROUP in root and "count" in root[GROUP].attrs


def table_attrs(root: zarr.Group) -> dict:
    """{"count", "heads", "source", "parts", "files"} of the table, without reading its columns ({} when there is none)."""
    return root[GROUP].attrs.asdict() if GROUP in root else {}


def read_table(root: zarr.Group) -> SegmentTable:
    if not has_table(root):
        raise CacheError("the cache has no segments table: run `egodistill extract` on it, or `egodistill cache init --manifest FILE --cache CACHE`, first")
    heads = {k: int(v) for k, v in root[GROUP].attrs["heads"].items()}
    groups = part_groups(root)
    text = {c: np.concatenate([decode_text(g[f"{c}_bytes"][:], g[f"{c}_offsets"][:]) for g in groups]) for c in TEXT_COLUMNS}
    numbers = {c: np.concatenate([g[c][:] for g in groups]) for c in (*NUMBER_COLUMNS, *(f"label_{h}" for h in heads))}
    return SegmentTable(
        ids=text["id"], videos=text["video"], start_sec=numbers["start_sec"], stop_sec=numbers["stop_sec"], split=text["split"],
        labels={h: numbers[f"label_{h}"] for h in heads}, heads=heads,
    )


def _check_same(existing: SegmentTable, table: SegmentTable) -> None:
    same = (
        len(existing) == len(table)
        and np.array_equal(existing.ids.astype(str), np.asarray(table.ids).astype(str))
        and existing.heads == dict(table.heads)
    )
    if not same:
        raise CacheError(
            f"the cache already holds a different segments table ({len(existing)} segments, heads "
            f"{existing.heads}) than this manifest ({len(table)} segments, heads {dict(table.heads)}): "
            "use a new --cache for another manifest"
        )
