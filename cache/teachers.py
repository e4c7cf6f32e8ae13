"""Teachers in the cache: provenance keys, the row layout, per-task writes and the ledger.

One teacher = one (modality, extractor) pair keyed by its provenance. Its frame-level
features are one concatenated `rows x D` float16 array; segment i owns rows
`offsets[i]:offsets[i+1]`. Work is split into tasks of whole segments; a task writes its
rows, its logits chunk and then its record under `tasks/`, so a segment is data only once
its task record says so.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import math
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from egodistill.cache.checksums import task_checksums
from egodistill.cache.errors import CacheError
from egodistill.cache.options import check_plain_name

GROUP = "teachers"
FEATURE_CODEC = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
ROW_CHUNK_TARGET = 512  # rows per inner chunk: the loader's read unit
TASKS_TARGET = 64       # aim for this many tasks so a cluster has work to spread
MIN_ROWS_PER_TASK = 32  # ... but give each task enough frames to batch the model's forward passes
MAX_SEGMENTS_PER_TASK = 256

LockFactory = Callable[[str], AbstractContextManager]


@dataclass(frozen=True)
class Layout:
    """How rows are cut into chunks, shards and tasks; fixed when the teacher is created."""

    segments: int
    rows: int
    segments_per_task: int
    rows_per_shard: int
    rows_per_chunk: int

    @property
    def tasks(self) -> int:
        return math.ceil(self.segments / self.segments_per_task)


def teacher_key(provenance: dict) -> str:
    """`<modality>-<backbone>-<hash>`: readable, and different whenever the provenance differs."""
    digest = hashlib.sha256(json.dumps(provenance, sort_keys=True).encode()).hexdigest()[:10]
    backbone = re.sub(r"[^A-Za-z0-9_.]+", "_", str(provenance["backbone"]))
    return f"{provenance['modality']}-{backbone}-{digest}"


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


def list_teachers(root: zarr.Group) -> list[str]:
    if GROUP not in root:
        return []
    return sorted(k for k, _ in root[GROUP].groups() if "teacher" in root[GROUP][k].attrs)


def open_teacher(root: zarr.Group, key: str) -> zarr.Group:
    try:
        group = root[f"{GROUP}/{key}"]
        if "teacher" in group.attrs:
            return group
    except (KeyError, ValueError):  # ValueError: a key zarr refuses as a path, such as "../x"
        pass
    keys = list_teachers(root)
    raise CacheError(f"teacher {key!r} is not in the cache (it holds: {', '.join(keys) or 'none'}): run `egodistill cache info` to see them")


def teacher_info(teacher: zarr.Group) -> dict:
    return dict(teacher.attrs["teacher"])


def create_teacher(
    root: zarr.Group,
    key: str,
    provenance: dict,
    feature_dim: int,
    offsets: np.ndarray,
    layout: Layout,
    heads: dict[str, int],
) -> tuple[zarr.Group, bool]:
    """Create the teacher's arrays, or reopen it to resume. Returns (group, resumed)."""
    check_plain_name(CacheError, "teacher key", key)
    teachers = root.require_group(GROUP)
    if key in teachers and "teacher" in teachers[key].attrs:
        group = teachers[key]
        stored = group.attrs["teacher"]["provenance"]
        if stored != provenance:
            changed = sorted(k for k in set(stored) | set(provenance) if stored.get(k) != provenance.get(k))
            raise CacheError(
                f"teacher {key!r} already exists with other settings ({', '.join(changed)} differ): "
                "drop --name to get a key of its own, or use the stored settings"
            )
        return group, True
    if key in teachers:  # killed while creating: nothing was written into it yet
        del teachers[key]
    group = teachers.create_group(key)
    rows, d = layout.rows, feature_dim
    group.create_array(
        "features", shape=(rows, d), dtype="float16", chunks=(layout.rows_per_chunk, d),
        shards=(layout.rows_per_shard, d), fill_value=np.nan, compressors=FEATURE_CODEC,
        dimension_names=("row", "feature"),
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
    group.attrs["teacher"] = {
        "key": key,
        "modality": provenance["modality"],
        "provenance": provenance,
        "feature_dim": d,
        "heads": dict(heads),
        "layout": asdict(layout),
        "created_by": f"{getpass.getuser()}@{socket.gethostname()}",
        "created_at": _now(),
    }
    return group, False


def create_logits_teacher(root: zarr.Group, key: str, provenance: dict, logits: dict[str, np.ndarray], failed: list[dict] | None = None) -> zarr.Group:
    """A teacher made of logits only (e.g. a head fitted on cached features), written whole at once.

    An existing teacher of that key with the same provenance is replaced, another one is refused."""
    teachers = root.require_group(GROUP)
    if key in teachers:
        stored = teachers[key].attrs.get("teacher", {}).get("provenance")
        if stored is not None and stored != provenance:
            raise CacheError(f"teacher {key!r} already exists with other settings: choose another name or remove it first")
        del teachers[key]
    n = len(next(iter(logits.values())))
    layout = Layout(segments=n, rows=0, segments_per_task=max(n, 1), rows_per_shard=1, rows_per_chunk=1)
    group = teachers.create_group(key)
    for head, values in logits.items():
        group.create_array(f"logits/{head}", shape=values.shape, dtype="float32", chunks=(max(1, min(n, 65536)), values.shape[1]), fill_value=np.nan, dimension_names=("segment", "class"))[:] = values
    group.create_group("tasks").create_group(task_name(0)).attrs["record"] = {"segments": [0, n], "rows": [0, 0], "failed": failed or [], "finished_at": _now()}
    group.attrs["teacher"] = {
        "key": key, "modality": provenance["modality"], "provenance": provenance, "feature_dim": 0,
        "heads": {h: int(v.shape[1]) for h, v in logits.items()}, "layout": asdict(layout),
        "created_by": f"{getpass.getuser()}@{socket.gethostname()}", "created_at": _now(),
    }
    return group


def layout_of(teacher: zarr.Group) -> Layout:
    return Layout(**teacher.attrs["teacher"]["layout"])


def task_segments(layout: Layout, task: int) -> range:
    start = task * layout.segments_per_task
    return range(start, min(start + layout.segments_per_task, layout.segments))


def task_name(task: int) -> str:
    return f"{task:06d}"


def task_records(teacher: zarr.Group) -> dict[int, dict]:
    """Records of finished tasks; a task without one has written nothing a reader may use."""
    return {int(name): dict(g.attrs["record"]) for name, g in teacher["tasks"].groups() if "record" in g.attrs}


def task_done(teacher: zarr.Group, task: int) -> bool:
    name = task_name(task)
    return name in teacher["tasks"] and "record" in teacher["tasks"][name].attrs


def write_task(
    teacher: zarr.Group,
    task: int,
    features: np.ndarray,
    timestamps: np.ndarray,
    logits: dict[str, np.ndarray],
    record: dict,
    lock: LockFactory | None = None,
) -> None:
    """Write one task's rows and logits, then its record (the completion marker), in that order."""
    layout = layout_of(teacher)
    segs = task_segments(layout, task)
    offsets = teacher["offsets"][segs.start: segs.stop + 1]
    r0, r1 = int(offsets[0]), int(offsets[-1])
    if features.shape[0] != r1 - r0 or timestamps.shape[0] != r1 - r0:
        raise CacheError(f"task {task} produced {features.shape[0]} rows, the layout expects {r1 - r0}")
    for array_name, values in (("features", features), ("timestamps", timestamps)):
        _write_rows(teacher, array_name, r0, values, layout.rows_per_shard, lock)
    for head, values in logits.items():
        teacher[f"logits/{head}"][segs.start: segs.stop] = values
    # Checksums of what is now stored, taken before the record makes the rows count as data.
    written = {"features": features, "timestamps": timestamps, **{f"logits/{h}": v for h, v in logits.items()}}
    sums = task_checksums(teacher, segs, r0, r1, written)
    tasks = teacher["tasks"]
    group = tasks[task_name(task)] if task_name(task) in tasks else tasks.create_group(task_name(task))
    group.attrs["record"] = {**record, "segments": [segs.start, segs.stop], "rows": [r0, r1], "finished_at": _now(), **sums}


def _write_rows(teacher: zarr.Group, name: str, r0: int, values: np.ndarray, shard: int, lock: LockFactory | None) -> None:
    """Whole shards are written directly; a shard shared with another task under a lock."""
    array = teacher[name]
    r1 = r0 + len(values)
    for a, b in _split_at_shards(r0, r1, shard):
        whole = a % shard == 0 and (b % shard == 0 or b == array.shape[0])
        guard = contextlib.nullcontext() if whole or lock is None else lock(f"{teacher.path}/{name}/shard-{a // shard}")
        with guard:
            array[a:b] = values[a - r0: b - r0]


def _split_at_shards(r0: int, r1: int, shard: int) -> Iterator[tuple[int, int]]:
    """Cut [r0, r1) into the partial head shard, the run of whole shards, and the partial tail."""
    first_whole = -(-r0 // shard) * shard
    last_whole = (r1 // shard) * shard
    if first_whole >= last_whole:  # all inside one or two partial shards
        cut = min(first_whole, r1)
        yield from ((a, b) for a, b in ((r0, cut), (cut, r1)) if b > a)
        return
    yield from ((a, b) for a, b in ((r0, first_whole), (first_whole, last_whole), (last_whole, r1)) if b > a)


def segment_status(teacher: zarr.Group) -> np.ndarray:
    """Per segment: 1 written and usable, -1 failed (see the ledger), 0 not extracted yet."""
    layout = layout_of(teacher)
    status = np.zeros(layout.segments, dtype=np.int8)
    for record in task_records(teacher).values():
        a, b = record["segments"]
        status[a:b] = 1
        for failure in record.get("failed", []):
            status[failure["segment"]] = -1
    return status


def ledger(teacher: zarr.Group) -> list[dict]:
    """Every failed segment with its reason and expected vs written rows."""
    entries = [f for record in task_records(teacher).values() for f in record.get("failed", [])]
    return sorted(entries, key=lambda f: f["segment"])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
