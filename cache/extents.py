"""Teachers over a grown segments table: an extent of their own for the segments a manifest added later.

A teacher's arrays are sized to the segments it was created for: that is extent 0, the teacher's own
group. When the cache's table grows (`cache init`/`extract` with another `--manifest`), the teacher
holds the new segments as not extracted. The next `extract` of that teacher adds an extent for them,
`parts/<p>/` inside the teacher's group: the same arrays (same dtypes, chunk and shard shapes,
codecs, fill values) sized to the new segments alone, with its own `tasks/`. Nothing stored is
rewritten, so old shards, chunks and task records stay byte for byte (their checksums still hold),
and the teacher's key stays.

`ExtendedTeacher` reads and writes such a teacher in cache indices (segments, rows, tasks) across
its extents, and shows segments no extent covers yet as not extracted: NaN logits, no rows, status 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from egodistill.cache.shards import Layout
from egodistill.cache.records import Failure, TaskRecord
from egodistill.cache.teachers import ATTR, SegmentViews, Teacher, members
from egodistill.common import CacheError

PARTS = "parts"
EXTENTS = "extents"  # teacher attribute: [{"segments": [a, b], "rows": [r0, r1], "tasks": [t0, t1]}] of parts 1, 2, ...


@dataclass(frozen=True)
class Extent:
    """One run of consecutive segments stored in arrays of their own; `teacher` reads them in local indices."""

    teacher: Teacher
    first_segment: int
    first_row: int
    first_task: int

    @property
    def segments(self) -> int:
        return self.teacher.layout.segments

    @property
    def end_segment(self) -> int:
        return self.first_segment + self.segments

    @property
    def end_row(self) -> int:
        return self.first_row + self.teacher.layout.rows


@dataclass(frozen=True)
class ExtentLayout:
    """A teacher's layout across its extents, in cache indices: the part of `Layout` drivers and readers use."""

    extents: tuple[Extent, ...]
    segments: int  # the cache's segments; those past the last extent have no task yet

    @property
    def rows(self) -> int:
        return self.extents[-1].end_row

    @property
    def tasks(self) -> int:
        return sum(e.teacher.layout.tasks for e in self.extents)

    @property
    def segments_per_task(self) -> int:
        return self.extents[0].teacher.layout.segments_per_task

    @property
    def rows_per_shard(self) -> int:
        return self.extents[0].teacher.layout.rows_per_shard

    @property
    def rows_per_chunk(self) -> int:
        return self.extents[0].teacher.layout.rows_per_chunk

    def task_segments(self, task: int) -> range:
        extent, local = self.locate_task(task)
        segs = extent.teacher.layout.task_segments(local)
        return range(segs.start + extent.first_segment, segs.stop + extent.first_segment)

    def locate_task(self, task: int) -> tuple[Extent, int]:
        for extent in self.extents:
            if task < extent.first_task + extent.teacher.layout.tasks:
                return extent, task - extent.first_task
        raise CacheError(f"task {task} is past the teacher's {self.tasks} tasks")


class ExtendedTeacher(SegmentViews):
    """A teacher whose extents do not match the cache's table one to one: read and written in cache indices.

    Everything that describes the teacher (key, provenance, heads, ...) is extent 0's."""

    def __init__(self, extents: Sequence[Extent], segments: int) -> None:
        self.extents = tuple(extents)
        self.layout = ExtentLayout(self.extents, segments)

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "extents":  # copy and pickle look these up before __init__ ran
            raise AttributeError(name)
        return getattr(self.extents[0].teacher, name)

    def __repr__(self) -> str:
        return f"ExtendedTeacher({self.key!r}, extents={len(self.extents)}, segments={self.layout.segments})"

    @cached_property
    def offsets(self) -> np.ndarray:
        """int64 [N+1] in cache rows; segments no extent covers own no rows."""
        parts = [e.teacher.offsets[:-1] + e.first_row for e in self.extents]
        covered = self.extents[-1].end_segment
        tail = np.full(self.layout.segments - covered + 1, self.extents[-1].end_row, dtype=np.int64)
        return np.concatenate([*parts, tail])

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        pieces = [e.teacher.read_rows(a, b) for e, a, b in self._row_pieces(start, stop)]
        if not pieces:
            return self.extents[0].teacher.read_rows(0, 0)
        return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])

    def read_features(self, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        return self._read_spans("read_features", spans)

    def read_frames(self, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        return self._read_spans("read_frames", spans)

    def read_logits(self, head: str) -> np.ndarray:
        return self._padded([e.teacher.read_logits(head) for e in self.extents])

    def read_view_logits(self, head: str) -> np.ndarray:
        return self._padded([e.teacher.read_view_logits(head) for e in self.extents])

    def blocks(self) -> list[range]:
        return [range(b.start + e.first_segment, b.stop + e.first_segment) for e in self.extents for b in e.teacher.blocks()]

    def records(self) -> dict[int, TaskRecord]:
        return {e.first_task + t: _shifted(r, e.first_segment, e.first_row) for e in self.extents for t, r in e.teacher.records().items()}

    def task_done(self, task: int) -> bool:
        extent, local = self.layout.locate_task(task)
        return extent.teacher.task_done(local)

    def write_task(self, task: int, features: np.ndarray, timestamps: np.ndarray, logits: dict[str, np.ndarray],
                   failed: Sequence[Failure] = (), **options) -> None:
        """Write task `task` (a cache task number; failures name cache segments) into its extent."""
        extent, local = self.layout.locate_task(task)
        local_failed = [replace(f, segment=f.segment - extent.first_segment) for f in failed]
        extent.teacher.write_task(local, features, timestamps, logits, failed=local_failed, **options)

    def drop_records(self, tasks: Sequence[int]) -> None:
        for task in tasks:
            extent, local = self.layout.locate_task(task)
            extent.teacher.drop_records([local])

    def _row_pieces(self, start: int, stop: int) -> list[tuple[Extent, int, int]]:
        """(extent, local start, local stop) of the cache rows start:stop, in order."""
        return [(e, max(start, e.first_row) - e.first_row, min(stop, e.end_row) - e.first_row)
                for e in self.extents if max(start, e.first_row) < min(stop, e.end_row)]

    def _read_spans(self, method: str, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """Rows of every span in order, each extent's spans issued together (a loader's block is in one extent)."""
        pieces = [(e, a, b) for start, stop in spans for e, a, b in self._row_pieces(int(start), int(stop))]
        if not pieces:
            return getattr(self.extents[0].teacher, method)([])
        runs: list[tuple[Extent, list[tuple[int, int]]]] = []
        for e, a, b in pieces:  # consecutive pieces of one extent become one call
            if runs and runs[-1][0] is e:
                runs[-1][1].append((a, b))
            else:
                runs.append((e, [(a, b)]))
        parts = [getattr(e.teacher, method)(local) for e, local in runs]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _padded(self, parts: list[np.ndarray]) -> np.ndarray:
        missing = self.layout.segments - self.extents[-1].end_segment
        pad = np.full((missing, *parts[0].shape[1:]), np.nan, dtype=parts[0].dtype)
        return np.concatenate([*parts, pad])


def _shifted(record: TaskRecord, segment: int, row: int) -> TaskRecord:
    """A record of an extent in cache indices."""
    if not segment and not row:
        return record
    return replace(record, segments=(record.segments[0] + segment, record.segments[1] + segment), rows=(record.rows[0] + row, record.rows[1] + row),
                   failed=tuple(replace(f, segment=f.segment + segment) for f in record.failed))


def open_extended(group: zarr.Group, local_path: Path | None, segments: int) -> Teacher | ExtendedTeacher:
    """The teacher in `group` seen over the cache's `segments`: a plain `Teacher` when its one extent is exactly them."""
    base = Teacher(group, local_path)
    added = group.attrs[ATTR].get(EXTENTS, [])
    if not added and base.layout.segments >= segments:
        return base
    extents = [Extent(base, 0, 0, 0)]
    for p, entry in enumerate(added, start=1):
        path = local_path / PARTS / str(p) if local_path is not None else None
        extents.append(Extent(Teacher(group[f"{PARTS}/{p}"], path), entry["segments"][0], entry["rows"][0], entry["tasks"][0]))
    return ExtendedTeacher(extents, max(segments, extents[-1].end_segment))


def extend_teacher(group: zarr.Group, teacher: Teacher | ExtendedTeacher, offsets: np.ndarray) -> bool:
    """Give the teacher an extent for the segments past its last one (cache rows `offsets` [N+1] as the plan lays
    them out). Returns whether it added one. The new arrays are written first and the teacher's attributes last:
    a run killed in between leaves an extent nobody refers to, which the next call replaces."""
    extents = teacher.extents if isinstance(teacher, ExtendedTeacher) else (Extent(teacher, 0, 0, 0),)
    last = extents[-1]
    covered, n = last.end_segment, len(offsets) - 1
    if n <= covered:
        return False
    base = extents[0].teacher
    if not any(name in group for name in ("features", "frames")):
        raise CacheError(f"teacher {base.key} holds logits only: fit it again (`egodistill fit-teachers`) to cover the cache's new segments")
    stored = np.asarray(teacher.offsets[: covered + 1])
    if not np.array_equal(stored, np.asarray(offsets[: covered + 1]) - offsets[0]):
        raise CacheError(f"teacher {base.key} was extracted with other rows per segment than this run plans for its {covered} segments: "
                         "use the settings it was extracted with (see `egodistill cache info`)")
    local = np.asarray(offsets[covered:], dtype=np.int64) - int(offsets[covered])
    first = base.layout
    layout = Layout(segments=n - covered, rows=int(local[-1]), segments_per_task=first.segments_per_task,
                    rows_per_shard=first.rows_per_shard, rows_per_chunk=first.rows_per_chunk)
    folder = group.require_group(PARTS)
    name = str(len(extents))
    if name in folder:
        del folder[name]
    part = folder.create_group(name)
    for path, array in _arrays(group):
        rows = {"row": layout.rows, "segment": layout.segments, "segment_edge": layout.segments + 1}[array.metadata.dimension_names[0]]
        clone = part.create_array(path, shape=(rows, *array.shape[1:]), dtype=array.dtype, chunks=array.chunks, shards=array.shards,
                                  fill_value=array.fill_value, compressors=array.compressors, filters=array.filters,
                                  dimension_names=array.metadata.dimension_names)
        if path == "offsets":
            clone[:] = local
    part.create_group("tasks")
    meta = dict(group.attrs[ATTR])
    part.attrs[ATTR] = {**{k: v for k, v in meta.items() if k != EXTENTS}, "layout": layout.to_json()}
    entry = {"segments": [covered, n], "rows": [last.end_row, last.end_row + layout.rows],
             "tasks": [last.first_task + last.teacher.layout.tasks, last.first_task + last.teacher.layout.tasks + layout.tasks]}
    group.attrs[ATTR] = {**meta, EXTENTS: [*meta.get(EXTENTS, []), entry]}
    return True


def _arrays(group: zarr.Group, prefix: str = ""):
    """(path, array) of the teacher's own arrays: not its tasks, not other extents."""
    for name, member in members(group):
        if name in ("tasks", PARTS):
            continue
        if isinstance(member, zarr.Array):
            yield prefix + name, member
        else:
            yield from _arrays(member, f"{prefix}{name}/")
