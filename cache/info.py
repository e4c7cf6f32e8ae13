"""What a cache holds, as one JSON-ready dict: segments, teachers, provenance, progress, failures."""

from __future__ import annotations

import zarr

from cache.segments import GROUP as SEGMENTS
from cache.store import ROOT_ATTR
from cache.teachers import layout_of, ledger, list_teachers, open_teacher, segment_status, teacher_info


def describe(root: zarr.Group) -> dict:
    segments = root[SEGMENTS].attrs.asdict() if SEGMENTS in root else {}
    return {
        "schema": dict(root.attrs.get(ROOT_ATTR, {})),
        "segments": {"count": segments.get("count", 0), "heads": segments.get("heads", {}), "source": segments.get("source", {})},
        "teachers": [describe_teacher(open_teacher(root, key)) for key in list_teachers(root)],
    }


def describe_teacher(teacher: zarr.Group) -> dict:
    info = teacher_info(teacher)
    status = segment_status(teacher)
    layout = layout_of(teacher)
    arrays = {name: {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks), "shards": list(a.shards) if a.shards else None}
              for name, a in _arrays(teacher)}
    return {
        **{k: info[k] for k in ("key", "modality", "feature_dim", "heads", "created_by", "created_at")},
        "provenance": info["provenance"],
        "rows": layout.rows,
        "tasks": layout.tasks,
        "segments_done": int((status == 1).sum()),
        "segments_failed": int((status == -1).sum()),
        "segments_pending": int((status == 0).sum()),
        "complete": bool((status != 0).all()),
        "arrays": arrays,
        "failures": ledger(teacher),
    }


def _arrays(group: zarr.Group, prefix: str = ""):
    for name, member in sorted(group.members()):
        if name == "tasks":
            continue
        if isinstance(member, zarr.Array):
            yield prefix + name, member
        else:
            yield from _arrays(member, f"{prefix}{name}/")
