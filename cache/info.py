"""What a cache holds, as one JSON-ready dict: segments, teachers, provenance, progress, failures."""

from __future__ import annotations

import zarr

from egodistill.cache.catalog import Cache
from egodistill.cache.teachers import FAILED, WRITTEN, Teacher, members


def describe(cache: Cache) -> dict:
    return {"schema": cache.schema, "segments": cache.segments_info, "teachers": [describe_teacher(t) for t in cache.teachers()]}


def describe_teacher(teacher: Teacher) -> dict:
    layout = teacher.layout
    records = teacher.records()  # read once: on S3 or HTTP each read is a round trip
    status = teacher.segment_status(records)
    arrays = {name: {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks), "shards": list(a.shards) if a.shards else None}
              for name, a in _arrays(teacher._group)}
    finished = sorted(r.finished_at for r in records.values() if r.finished_at)
    return {
        "key": teacher.key, "modality": teacher.modality, "feature_dim": teacher.feature_dim, "heads": teacher.heads,
        "frame_shape": list(teacher.frame_shape) if teacher.has_frames else None,
        "created_by": teacher.created_by, "created_at": teacher.created_at,
        "egodistill": teacher.provenance.egodistill,
        "provenance": teacher.provenance.to_json(),
        "imported": teacher.imported,
        "rows": layout.rows,
        "tasks": layout.tasks,
        "tasks_done": len(records),
        "written_by": sorted({str(r.worker) for r in records.values() if r.worker}),
        "last_finished_at": finished[-1] if finished else None,
        "checksummed": bool(records) and all(r.checksums is not None for r in records.values()),
        "segments_done": int((status == WRITTEN).sum()),
        "segments_failed": int((status == FAILED).sum()),
        "segments_pending": int((status == 0).sum()),
        "complete": bool((status != 0).all()),
        "arrays": arrays,
        "failures": [f.to_json() for f in teacher.ledger(records)],
    }


def _arrays(group: zarr.Group, prefix: str = ""):
    for name, member in members(group):
        if name == "tasks":
            continue
        if isinstance(member, zarr.Array):
            yield prefix + name, member
        else:
            yield from _arrays(member, f"{prefix}{name}/")
