"""What a cache holds, as one JSON-ready dict: segments, teachers, provenance, progress, failures."""

from __future__ import annotations

import numpy as np
import zarr

from egodistill.cache.segments import GROUP as SEGMENTS
from egodistill.cache.store import ROOT_ATTR
from egodistill.cache.teachers import layout_of, list_teachers, open_teacher, task_records, teacher_info


def describe(root: zarr.Group) -> dict:
    segments = root[SEGMENTS].attrs.asdict() if SEGMENTS in root else {}
    return {
        "schema": dict(root.attrs.get(ROOT_ATTR, {})),
        "segments": {"count": segments.get("count", 0), "heads": segments.get("heads", {}), "source": segments.get("source", {})},
        "teachers": [describe_teacher(open_teacher(root, key)) for key in list_teachers(root)],
    }


def describe_teacher(teacher: zarr.Group) -> dict:
    info = teacher_info(teacher)
    layout = layout_of(teacher)
    records = task_records(teacher)  # read once: on S3 or HTTP each read is a round trip
    status, failures = _status(layout.segments, records)
    arrays = {name: {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks), "shards": list(a.shards) if a.shards else None}
              for name, a in _arrays(teacher)}
    finished = sorted(r["finished_at"] for r in records.values() if "finished_at" in r)
    return {
        **{k: info[k] for k in ("key", "modality", "feature_dim", "heads", "created_by", "created_at")},
        "egodistill": info["provenance"].get("egodistill"),
        "provenance": info["provenance"],
        "imported": info.get("imported"),
        "rows": layout.rows,
        "tasks": layout.tasks,
        "tasks_done": len(records),
        "written_by": sorted({str(r["worker"]) for r in records.values() if r.get("worker")}),
        "last_finished_at": finished[-1] if finished else None,
        "checksummed": bool(records) and all("checksums" in r for r in records.values()),
        "segments_done": int((status == 1).sum()),
        "segments_failed": int((status == -1).sum()),
        "segments_pending": int((status == 0).sum()),
        "complete": bool((status != 0).all()),
        "arrays": arrays,
        "failures": failures,
    }


def _arrays(group: zarr.Group, prefix: str = ""):
    for name, member in sorted(group.members()):
        if name == "tasks":
            continue
        if isinstance(member, zarr.Array):
            yield prefix + name, member
        else:
            yield from _arrays(member, f"{prefix}{name}/")


def _status(segments: int, records: dict[int, dict]) -> tuple[np.ndarray, list[dict]]:
    """As teachers.segment_status and teachers.ledger, from records already read."""
    status = np.zeros(segments, dtype=np.int8)
    failures = []
    for record in records.values():
        a, b = record["segments"]
        status[a:b] = 1
        for failure in record.get("failed", []):
            status[failure["segment"]] = -1
            failures.append(failure)
    return status, sorted(failures, key=lambda f: f["segment"])
