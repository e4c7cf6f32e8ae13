"""The egodistill cache: a Zarr v3 store of segments, teacher features and logits (docs/cache-format.md)."""

from cache.errors import CacheError, EgodistillError, ManifestError, MediaError, TeacherError
from cache.segments import SegmentTable, read_segments, write_segments
from cache.store import SCHEMA_VERSION, egodistill_version, open_cache
from cache.teachers import (
    Layout,
    create_teacher,
    layout_of,
    ledger,
    list_teachers,
    open_teacher,
    plan_layout,
    segment_status,
    task_done,
    task_records,
    task_segments,
    teacher_info,
    teacher_key,
    write_task,
)

__all__ = [
    "CacheError", "EgodistillError", "Layout", "ManifestError", "MediaError", "SCHEMA_VERSION", "SegmentTable",
    "TeacherError", "create_teacher", "egodistill_version", "layout_of", "ledger", "list_teachers", "open_cache",
    "open_teacher", "plan_layout", "read_segments", "segment_status", "task_done", "task_records", "task_segments",
    "teacher_info", "teacher_key", "write_task",
]

from cache.info import describe  # noqa: E402

__all__ += ["describe"]
