"""The egodistill cache: a Zarr v3 store of segments, teacher features and logits (docs/cache-format.md).

`open_cache(location, mode)` gives a `Cache`; its `teacher(key)` a `Teacher`. Extract and student
use these handles and the records below; only this package knows array and attribute names. It
holds storage only: errors, option checks, JSON and device choice live in `egodistill.common`.
"""

from egodistill.cache.catalog import Cache, open_cache, open_existing, refuse_other_identity
from egodistill.cache.info import describe
from egodistill.cache.shards import Layout, plan_layout
from egodistill.cache.records import FEATURES_FORMAT, UNLABELLED, Failure, Provenance, TaskRecord, Views
from egodistill.cache.segments import SegmentTable
from egodistill.cache.store import SCHEMA_VERSION
from egodistill.cache.teachers import Teacher
from egodistill.common import CacheError, egodistill_version

__all__ = [
    "FEATURES_FORMAT", "SCHEMA_VERSION", "UNLABELLED", "Cache", "CacheError", "Failure", "Layout", "Provenance", "SegmentTable", "TaskRecord",
    "Teacher", "Views", "describe", "egodistill_version", "open_cache", "open_existing", "plan_layout", "refuse_other_identity",
]
