"""One teacher of a cache: its description, rows, logits and task records, and the writes that make them.

One teacher = one (modality, extractor) pair keyed by its provenance. Its frame-level features are
one concatenated `rows x D` float16 array; a frames teacher (`extract --modality frames`) stores
instead the sampled RGB frames themselves, one `H x W x 3` uint8 frame per row, for students that
train on pixels. Segment i owns rows `offsets[i]:offsets[i+1]`. Work is split into tasks of whole segments; a task writes its rows, its logits chunk and then its record
under `tasks/`, so a segment is data only once its task record says so.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.errors import ZarrUserWarning

from egodistill.cache.blocks import RowReader
from egodistill.cache.checksums import task_checksums
from egodistill.common import CacheError
from egodistill.cache.shards import Layout
from egodistill.cache.records import Failure, Provenance, TaskRecord, Views, now

GROUP = "teachers"
ATTR = "teacher"
FEATURE_CODEC = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
# Frames (bench/RESULTS.md "Frames in the cache"): lossless codecs barely shrink decoded natural video
# (zstd-3: 1.26x on real clips), so the pick is read speed at that ratio. Bit-shuffle saves 11% more
# bytes but decodes 1.7-4x slower; lz4 decodes 2-5x faster and saves only 8%. Byte shuffle does nothing on uint8.
FRAME_CODEC = BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle")
FRAME_CHUNK_BYTES = 1 << 20  # a frames chunk holds whole segments up to ~1 MiB raw: one random segment = one chunk read

LockFactory = Callable[[str], AbstractContextManager]


class SegmentViews:
    """What a teacher's task records say per segment; a teacher class gives `records()` and `layout.segments`."""

    def segment_status(self, records: dict[int, TaskRecord] | None = None) -> np.ndarray:
        """Per segment: WRITTEN and usable, FAILED (see the ledger), or PENDING (not extracted yet)."""
        return segment_status(self.layout.segments, self.records() if records is None else records)

    def usable_segments(self) -> np.ndarray:
        """bool [N]: the segment's task finished and the segment did not fail."""
        return self.segment_status() == WRITTEN

    def ledger(self, records: dict[int, TaskRecord] | None = None) -> list[Failure]:
        """Every failed segment with its reason and expected vs written rows."""
        return ledger(self.records() if records is None else records)


def members(group: zarr.Group) -> list[tuple[str, zarr.Array | zarr.Group]]:
    """A group's arrays and groups, sorted by name. A teacher's folder also holds its lease file, and a teacher
    that another writer is creating is for a moment a folder with only that file: neither is a Zarr node, and zarr
    would warn of each."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=ZarrUserWarning)
        return sorted(group.members(), key=lambda m: m[0])


class Teacher(SegmentViews):
    """A teacher as stored: read its rows, logits and records; write its tasks (caches opened for writing)."""

    def __init__(self, group: zarr.Group, local_path: Path | None = None) -> None:
        meta = group.attrs[ATTR]
        self._group = group  # cache/ modules only: outside cache/, nobody indexes the store
        self._local_path = local_path  # the teacher's folder on a local or NFS path, else None
        self.key: str = meta["key"]
        self.modality: str = meta["modality"]
        self.provenance = Provenance.from_json(meta["provenance"])
        self.feature_dim: int = int(meta["feature_dim"])  # 0 for teachers without features (frames, logits only)
        self._frame_shape: list[int] | None = meta.get("frame_shape")
        self.heads: dict[str, int] = {h: int(c) for h, c in meta["heads"].items()}
        self.layout = Layout(**meta["layout"])
        self.created_by: str | None = meta.get("created_by")
        self.created_at: str | None = meta.get("created_at")
        self.imported: dict | None = meta.get("imported")  # {"from", "sha256", "by", "at", ...} of `cache import-h5`
        # {"params", "flops_per_row"} of the backbone that made the rows, counted at extraction (not part of the
        # identity: a result, not a setting), so `evaluate` need not build models again; None where unknown.
        self.cost: dict | None = meta.get("cost")
        # Teachers with per-view logits (`read_view_logits`): the windows those logits are of; None for the others.
        self.views: Views | None = Views.from_json(meta["views"]) if "views" in meta else None

    def __repr__(self) -> str:
        return f"Teacher({self.key!r}, modality={self.modality!r}, rows={self.layout.rows}, heads={self.heads})"

    # --- reading ---------------------------------------------------------------------------

    @cached_property
    def has_features(self) -> bool:
        return "features" in self._group

    @cached_property
    def has_frames(self) -> bool:
        """Whether the teacher stores sampled RGB frames (`extract --modality frames`) rather than features."""
        return "frames" in self._group

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of every stored frame; a one-line error for a teacher without frames."""
        if self._frame_shape is None:
            raise self._no_frames()
        h, w, c = self._frame_shape
        return int(h), int(w), int(c)

    @cached_property
    def offsets(self) -> np.ndarray:
        """int64 [N+1]: segment i owns rows offsets[i]:offsets[i+1]."""
        return self._group["offsets"][:]

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows start:stop (features [rows, D] float16, or frames [rows, H, W, 3] uint8) and their timestamps [rows] float32."""
        return self._group["frames" if self.has_frames else "features"][start:stop], self._group["timestamps"][start:stop]

    def read_features(self, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """Feature rows of every (start, stop) span, concatenated: the loader's whole-block read."""
        return self._reader("features").read(spans)

    def read_frames(self, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """Frames uint8 [rows, H, W, 3] of every (start, stop) row span, concatenated: the loader's whole-block read."""
        if not self.has_frames:
            raise self._no_frames()
        return self._reader("frames").read(spans)

    def _no_frames(self) -> CacheError:
        return CacheError(f"teacher {self.key} ({self.modality}) holds no frames: run `egodistill extract --modality frames` for a teacher that does")

    @cached_property
    def _readers(self) -> dict[str, RowReader]:
        return {}

    def _reader(self, name: str) -> RowReader:
        """One reader per array, opened on first use and kept (opening tensorstore costs a metadata read)."""
        if name not in self._readers:
            local = self._local_path / name if self._local_path is not None else None
            self._readers[name] = RowReader(self._group[name], local)
        return self._readers[name]

    def read_logits(self, head: str) -> np.ndarray:
        """Logits [N, C] float32 of one output head (for a teacher with views: its centred view); NaN rows where a segment has none."""
        if head not in self.heads:
            raise CacheError(f"teacher {self.key} has no logits for head {head!r} (it has: {', '.join(self.heads) or 'none'})")
        return self._group[f"logits/{head}"][:]

    def read_view_logits(self, head: str) -> np.ndarray:
        """Logits [N, V, C] float32 of every view (see `views`); a teacher without views has one, the logits."""
        if self.views is None:
            return self.read_logits(head)[:, None, :]
        if head not in self.heads:
            raise CacheError(f"teacher {self.key} has no logits for head {head!r} (it has: {', '.join(self.heads) or 'none'})")
        return self._group[f"view_logits/{head}"][:]

    def blocks(self) -> list[range]:
        """Segment ranges whose rows are whole shards (one per task): the unit a loader should read."""
        return [self.layout.task_segments(t) for t in range(self.layout.tasks)]

    def records(self) -> dict[int, TaskRecord]:
        """Records of finished tasks; a task without one has written nothing a reader may use."""
        return {int(name): TaskRecord.from_json(g.attrs["record"]) for name, g in self._group["tasks"].groups() if "record" in g.attrs}

    def task_done(self, task: int) -> bool:
        tasks = self._group["tasks"]
        return task_name(task) in tasks and "record" in tasks[task_name(task)].attrs

    # --- writing ---------------------------------------------------------------------------

    def write_task(self, task: int, features: np.ndarray, timestamps: np.ndarray, logits: dict[str, np.ndarray],
                   failed: Sequence[Failure] = (), worker: str | None = None, device: str | None = None,
                   seconds: float | None = None, lock: LockFactory | None = None) -> None:
        """Write one task's rows and logits, then its record (the completion marker), in that order.

        `features` are the task's rows: float16 [rows, D], or for a frames teacher uint8 [rows, H, W, 3]."""
        segs = self.layout.task_segments(task)
        r0, r1 = int(self.offsets[segs.start]), int(self.offsets[segs.stop])
        if features.shape[0] != r1 - r0 or timestamps.shape[0] != r1 - r0:
            raise CacheError(f"task {task} produced {features.shape[0]} rows, the layout expects {r1 - r0}")
        rows_name = "frames" if self.has_frames else "features"
        if self.has_frames and (features.dtype != np.uint8 or features.shape[1:] != self.frame_shape):
            raise CacheError(f"task {task} produced frames {features.dtype} {list(features.shape[1:])}, teacher {self.key} stores uint8 {list(self.frame_shape)}")
        for name, values in ((rows_name, features), ("timestamps", timestamps)):
            self._write_rows(name, r0, values, lock)
        for head, values in logits.items():
            self._group[f"logits/{head}"][segs.start: segs.stop] = values
        # Checksums of what is now stored, taken before the record makes the rows count as data.
        written = {rows_name: features, "timestamps": timestamps, **{f"logits/{h}": v for h, v in logits.items()}}
        sums = task_checksums(self._group, segs, r0, r1, written)
        record = TaskRecord(segments=(segs.start, segs.stop), rows=(r0, r1), finished_at=now(), failed=tuple(failed), worker=worker,
                            device=device, seconds=seconds, checksums=sums["checksums"], row_checksums=tuple(sums["row_checksums"]))
        tasks = self._group["tasks"]
        group = tasks[task_name(task)] if task_name(task) in tasks else tasks.create_group(task_name(task))
        group.attrs["record"] = record.to_json()

    def mark_imported(self, path: str | Path, sha256: str | None = None, source: dict | None = None) -> None:
        """Record where an imported teacher's rows came from (`imported` of its attributes)."""
        from egodistill.cache.hdf5 import imported_note

        self._group.attrs[ATTR] = {**self._group.attrs[ATTR], "imported": imported_note(path, sha256, source)}
        self.imported = self._group.attrs[ATTR]["imported"]

    def record_cost(self, params: int, flops_per_row: float) -> None:
        """Store the extracting backbone's parameters and FLOPs per row (`cost` of the teacher's attributes)."""
        self._group.attrs[ATTR] = {**self._group.attrs[ATTR], "cost": {"params": int(params), "flops_per_row": float(flops_per_row)}}
        self.cost = self._group.attrs[ATTR]["cost"]

    def drop_records(self, tasks: Sequence[int]) -> None:
        """Forget these tasks' records (to run them again): until rewritten, their segments are not data."""
        for task in tasks:
            if task_name(task) in self._group["tasks"]:
                del self._group["tasks"][task_name(task)]

    def _write_rows(self, name: str, r0: int, values: np.ndarray, lock: LockFactory | None) -> None:
        """Whole shards are written directly; a shard shared with another task under a lock."""
        array, shard = self._group[name], self.layout.rows_per_shard
        for a, b in _split_at_shards(r0, r0 + len(values), shard):
            whole = a % shard == 0 and (b % shard == 0 or b == array.shape[0])
            guard = contextlib.nullcontext() if whole or lock is None else lock(f"{self._group.path}/{name}/shard-{a // shard}")
            with guard:
                array[a:b] = values[a - r0: b - r0]


# A segment's status in a teacher (`Teacher.segment_status`).
PENDING, WRITTEN, FAILED = 0, 1, -1


def segment_status(segments: int, records: dict[int, TaskRecord]) -> np.ndarray:
    """int8 [segments] from task records: WRITTEN where a record covers the segment, FAILED where it names it, else PENDING."""
    status = np.full(segments, PENDING, dtype=np.int8)
    for record in records.values():
        a, b = record.segments
        status[a:b] = WRITTEN
        for failure in record.failed:
            status[failure.segment] = FAILED
    return status


def ledger(records: dict[int, TaskRecord]) -> list[Failure]:
    """Every failure the records name, in segment order."""
    return sorted((f for r in records.values() for f in r.failed), key=lambda f: f.segment)


def task_name(task: int) -> str:
    return f"{task:06d}"


def _split_at_shards(r0: int, r1: int, shard: int) -> Iterator[tuple[int, int]]:
    """Cut [r0, r1) into the partial head shard, the run of whole shards, and the partial tail."""
    first_whole = -(-r0 // shard) * shard
    last_whole = (r1 // shard) * shard
    if first_whole >= last_whole:  # all inside one or two partial shards
        cut = min(first_whole, r1)
        yield from ((a, b) for a, b in ((r0, cut), (cut, r1)) if b > a)
        return
    yield from ((a, b) for a, b in ((r0, first_whole), (first_whole, last_whole), (last_whole, r1)) if b > a)


def teacher_attrs(key: str, provenance: Provenance, feature_dim: int, heads: dict[str, int], layout: Layout,
                  frame_shape: tuple[int, int, int] | None = None) -> dict:
    attrs = {
        "key": key, "modality": provenance.modality, "provenance": provenance.to_json(), "feature_dim": int(feature_dim),
        "heads": dict(heads), "layout": layout.to_json(), "created_by": f"{getpass.getuser()}@{socket.gethostname()}", "created_at": now(),
    }
    if frame_shape is not None:
        attrs["frame_shape"] = [int(n) for n in frame_shape]
    return attrs


def frame_chunk_rows(offsets: np.ndarray, layout: Layout, frame_shape: tuple[int, int, int]) -> int:
    """Rows per `frames` chunk: whole segments (when all have equal rows) up to FRAME_CHUNK_BYTES raw, at least one
    segment, dividing the shard (zarr's sharding needs that); ragged layouts: the largest such divisor of the shard."""
    rows = np.diff(np.asarray(offsets, dtype=np.int64))
    unit = int(rows[0]) if len(rows) and rows[0] > 0 and bool(np.all(rows == rows[0])) else 1
    shard = layout.rows_per_shard
    budget = max(unit, FRAME_CHUNK_BYTES // int(np.prod(frame_shape)))
    return max(c for c in range(unit, shard + 1, unit) if shard % c == 0 and c <= budget)


def create_row_arrays(group: zarr.Group, feature_dim: int, offsets: np.ndarray, layout: Layout, heads: dict[str, int],
                      frame_shape: tuple[int, int, int] | None = None) -> None:
    """A teacher's arrays before any task ran: `features` [rows, D] float16, or with `frame_shape` `frames` [rows, H, W, 3]
    uint8; then timestamps, offsets, logits and the tasks group."""
    rows, d = layout.rows, feature_dim
    if frame_shape is None:
        group.create_array(
            "features", shape=(rows, d), dtype="float16", chunks=(layout.rows_per_chunk, d),
            shards=(layout.rows_per_shard, d), fill_value=np.nan, compressors=FEATURE_CODEC, dimension_names=("row", "feature"),
        )
    else:
        frame_shape = tuple(int(n) for n in frame_shape)
        group.create_array(
            "frames", shape=(rows, *frame_shape), dtype="uint8", chunks=(frame_chunk_rows(offsets, layout, frame_shape), *frame_shape),
            shards=(layout.rows_per_shard, *frame_shape), fill_value=0, compressors=FRAME_CODEC, dimension_names=("row", "y", "x", "channel"),
        )
    group.create_array(
        "timestamps", shape=(rows,), dtype="float32", chunks=(layout.rows_per_chunk,),
        shards=(layout.rows_per_shard,), fill_value=np.nan, dimension_names=("row",),
    )
    group.create_array("offsets", shape=(len(offsets),), dtype="int64", chunks=(max(1, min(len(offsets), 1 << 20)),), dimension_names=("segment_edge",))[:] = offsets
    for head, classes in heads.items():
        group.create_array(
            f"logits/{head}", shape=(layout.segments, classes), dtype="float32",
            chunks=(layout.segments_per_task, classes), fill_value=np.nan, dimension_names=("segment", "class"),
        )
    group.create_group("tasks")


def create_logit_arrays(group: zarr.Group, logits: dict[str, np.ndarray], failed: Sequence[Failure],
                        view_logits: dict[str, np.ndarray] | None = None) -> Layout:
    """Logits written whole (and per-view logits [N, V, C] where given), with one task record covering every segment."""
    n = len(next(iter(logits.values())))
    layout = Layout(segments=n, rows=0, segments_per_task=max(n, 1), rows_per_shard=1, rows_per_chunk=1)
    for head, values in logits.items():
        group.create_array(f"logits/{head}", shape=values.shape, dtype="float32", chunks=(max(1, min(n, 65536)), values.shape[1]),
                           fill_value=np.nan, dimension_names=("segment", "class"))[:] = values
    for head, values in (view_logits or {}).items():
        group.create_array(f"view_logits/{head}", shape=values.shape, dtype="float32", chunks=(max(1, min(n, 65536 // values.shape[1])), *values.shape[1:]),
                           fill_value=np.nan, dimension_names=("segment", "view", "class"))[:] = values
    record = TaskRecord(segments=(0, n), rows=(0, 0), finished_at=now(), failed=tuple(failed))
    group.create_group("tasks").create_group(task_name(0)).attrs["record"] = record.to_json()
    return layout
