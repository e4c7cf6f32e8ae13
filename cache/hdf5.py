"""A teacher as one HDF5 file (export), and such a file back into a cache bit for bit (import).

The file mirrors the Zarr layout, so h5py users read it the same way:

    /segments/<column>         the cache's segments table (id, video, start_sec, ..., label_<head>)
    /teacher/features [rows, D] float16, /teacher/timestamps [rows], /teacher/offsets [N+1]
    /teacher/logits/<head> [N, C]
    attrs["egodistill_export"] JSON: {"format": 1, "teacher": {...}, "segments": {...}, "records": {task: record}, ...}

Only finished tasks' records are exported, so an incomplete teacher stays incomplete after a
round trip; rows of unfinished tasks are exported as stored (NaN) and are not data.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from pathlib import Path

import h5py
import numpy as np

from egodistill.cache.catalog import open_cache
from egodistill.common import CacheError, atomic_write, check_plain_name, dumps, egodistill_version, file_sha256, first_line
from egodistill.cache.shards import Layout
from egodistill.cache.records import Provenance, TaskRecord, now
from egodistill.cache.segments import SegmentTable
from egodistill.cache.teachers import ATTR, Teacher

EXPORT_ATTR = "egodistill_export"
EXPORT_FORMAT = 1


def export_teacher(location: str | os.PathLike, key: str, out: str | os.PathLike, storage_options: dict | None = None) -> Path:
    """Write teacher `key` of the cache at `location`, with the segments table, to the HDF5 file `out`."""
    cache = open_cache(location, mode="r", storage_options=storage_options)
    teacher = cache.teacher(key)
    if not isinstance(teacher, Teacher):
        raise CacheError(f"teacher {key} also holds segments appended after its extraction (extents), which export-h5 cannot merge into one "
                         "file yet: extract it into a cache initialised with all its manifests at once (cache init --manifest A --manifest B ...)")
    table = cache.segments
    arrays = teacher._group
    out = Path(out)
    if not out.parent.is_dir():
        raise CacheError(f"cannot write {out}: folder {out.parent} not found: create it or choose another output path")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            segments = f.create_group("segments")
            for name, values in _segment_columns(table).items():
                segments.create_dataset(name, data=values, dtype=h5py.string_dtype() if values.dtype == object else values.dtype)
            group = f.create_group("teacher")
            names = [n for n in ("features", "frames", "timestamps", "offsets") if n in arrays]
            names += [f"logits/{h}" for h in teacher.heads]
            for name in names:
                array = arrays[name]
                data = group.create_dataset(name, shape=array.shape, dtype=array.dtype, chunks=_h5_chunks(array.shape, array.dtype.itemsize))
                step = max(1, (64 << 20) // max(1, array.dtype.itemsize * int(np.prod(array.shape[1:]))))  # ~64 MB at a time
                for a in range(0, array.shape[0], step):
                    data[a:a + step] = array[a:a + step]
            f.attrs[EXPORT_ATTR] = dumps({
                "format": EXPORT_FORMAT, "teacher": arrays.attrs[ATTR], "segments": cache.segments_info,
                "records": {str(t): r.to_json() for t, r in sorted(teacher.records().items())},
                "exported_from": str(location), "exported_at": now(), "egodistill": egodistill_version(),
            })
    atomic_write(out, write)  # a killed export never leaves a file that looks whole
    return out


def is_export(path: str | os.PathLike) -> bool:
    with open_h5(path) as f:
        return EXPORT_ATTR in f.attrs


def open_h5(path: str | os.PathLike) -> h5py.File:
    """The HDF5 file at `path`, opened read-only; a missing or non-HDF5 file is a CacheError."""
    if not Path(path).is_file():
        raise CacheError(f"HDF5 file {path} {'is a folder' if Path(path).is_dir() else 'not found'}: check the path")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise CacheError(f"{path} is not an HDF5 file ({first_line(err, 120)}): give an `egodistill cache export-h5` file or HDF5 features") from err


def import_export(path: str | os.PathLike, location: str | os.PathLike, name: str | None = None, storage_options: dict | None = None) -> str:
    """Recreate an exported teacher in the cache at `location` (created if absent); returns its key.

    Arrays come back bit-identical; the teacher keeps its provenance, creator and creation time and
    gains `imported` (file, sha256, who, when). Task records are rewritten with fresh checksums."""
    if name is not None:
        check_plain_name(CacheError, "--name", name)
    with open_h5(path) as f:
        meta = json.loads(f.attrs[EXPORT_ATTR])
        if int(meta.get("format", 0)) > EXPORT_FORMAT:
            raise CacheError(f"{path} was exported by a newer egodistill (format {meta['format']}): upgrade egodistill")
        info, records = meta["teacher"], {int(t): TaskRecord.from_json(r) for t, r in meta["records"].items()}
        key = name or info["key"]
        cache = open_cache(location, mode="a", storage_options=storage_options)
        cache.write_segments(_table_from(f["segments"], meta["segments"]), meta["segments"].get("source", {}))
        if key in cache.teacher_keys():
            raise CacheError(f"teacher {key} is already in {location}: `egodistill cache rm {location} --teacher {key}` first, or import with --name")
        data = f["teacher"]
        heads = {h: int(c) for h, c in info["heads"].items()}
        provenance = Provenance.from_json(info["provenance"])
        rows_name = "frames" if "frames" in data else "features"  # a frames teacher (extract --modality frames) has frames
        if rows_name not in data:  # a logits-only teacher (fitted on cached features)
            failed = [x for r in records.values() for x in r.failed]
            teacher = cache.create_logits_teacher(key, provenance, {h: data[f"logits/{h}"][:] for h in heads}, failed)
        else:
            layout = Layout(**info["layout"])
            offsets = data["offsets"][:]
            frame_shape = tuple(info["frame_shape"]) if "frame_shape" in info else None
            teacher, _ = cache.create_teacher(key, provenance, int(info["feature_dim"]), offsets, layout, heads, frame_shape)
            for task, record in sorted(records.items()):
                segs = layout.task_segments(task)
                r0, r1 = int(offsets[segs.start]), int(offsets[segs.stop])
                logits = {h: data[f"logits/{h}"][segs.start:segs.stop] for h in heads}
                # The write is new (fresh checksums and time); what the task found is kept.
                teacher.write_task(task, data[rows_name][r0:r1], data["timestamps"][r0:r1], logits, failed=record.failed,
                                   worker=record.worker, device=record.device, seconds=record.seconds)
    # The stored description comes back as exported (creator, creation time), plus where it came from.
    teacher._group.attrs[ATTR] = {**info, "key": key, "imported": imported_note(path)}
    return key


def imported_note(path: str | os.PathLike, sha256: str | None = None, source: dict | None = None) -> dict:
    """`imported` of a teacher's attributes: the file or folder, its sha256 (a folder's: listing-sha256), who, when, and how it was read."""
    note = {"from": str(path), "sha256": sha256 or file_sha256(path), "by": f"{getpass.getuser()}@{socket.gethostname()}", "at": now()}
    return {**note, "source": source} if source else note


def _segment_columns(table: SegmentTable) -> dict[str, np.ndarray]:
    columns = {"id": table.ids, "video": table.videos, "start_sec": table.start_sec, "stop_sec": table.stop_sec, "split": table.split}
    columns = {k: np.asarray(v, dtype=object) if k in ("id", "video", "split") else np.asarray(v) for k, v in columns.items()}
    return {**columns, **{f"label_{h}": np.asarray(v, dtype=np.int32) for h, v in table.labels.items()}}


def _table_from(group: h5py.Group, attrs: dict) -> SegmentTable:
    heads = {h: int(c) for h, c in attrs["heads"].items()}
    text = {k: group[k].asstr()[:].astype(object) for k in ("id", "video", "split")}
    return SegmentTable(ids=text["id"], videos=text["video"], start_sec=group["start_sec"][:], stop_sec=group["stop_sec"][:],
                        split=text["split"], labels={h: group[f"label_{h}"][:] for h in heads}, heads=heads)


def _h5_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...] | None:
    """Up to 4096 rows and 16 MiB per HDF5 chunk (a frames row is 48 KiB, a feature row a few KiB)."""
    if not shape or shape[0] == 0:
        return None
    row_bytes = itemsize * int(np.prod(shape[1:], dtype=np.int64))
    return (max(1, min(shape[0], 4096, (16 << 20) // max(1, row_bytes))), *shape[1:])
