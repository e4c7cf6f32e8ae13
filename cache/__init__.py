"""The egodistill cache: a Zarr v3 store of segments, teacher features and logits (docs/cache-format.md)."""

from egodistill.cache.errors import CacheError, EgodistillError, ManifestError, MediaError, TeacherError
from egodistill.cache.info import describe
from egodistill.cache.read import has_features, logit_heads, read_blocks, read_logits, read_offsets, read_rows, usable_segments
from egodistill.cache.segments import SegmentTable, read_segments, write_segments
from egodistill.cache.store import SCHEMA_VERSION, egodistill_version, open_cache
from egodistill.cache.teachers import (
    Layout,
    create_logits_teacher,
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
    "TeacherError", "create_logits_teacher", "create_teacher", "describe", "egodistill_version", "has_features",
    "layout_of", "ledger", "list_teachers", "logit_heads", "open_cache", "open_teacher", "plan_layout",
    "read_blocks", "read_logits", "read_offsets", "read_rows", "read_segments", "segment_status", "task_done",
    "task_records", "task_segments", "teacher_info", "teacher_key", "usable_segments", "write_task",
]
