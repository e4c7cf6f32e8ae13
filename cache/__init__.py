"""The egodistill cache: a Zarr v3 store of segments, teacher features and logits (docs/cache-format.md).

`open_cache(location, mode)` gives a `Cache`; its `teacher(key)` a `Teacher`. Extract and student
use these handles and the records below; only this package knows array and attribute names.
"""

from egodistill.cache.catalog import Cache, open_cache
from egodistill.cache.device import pick_device
from egodistill.cache.errors import CacheError, DeviceError, EgodistillError, ManifestError, MediaError, TeacherError
from egodistill.cache.info import describe
from egodistill.cache.layout import Layout, plan_layout
from egodistill.cache.records import FEATURES_FORMAT, Failure, Provenance, TaskRecord, Views, egodistill_version
from egodistill.cache.segments import SegmentTable
from egodistill.cache.store import SCHEMA_VERSION
from egodistill.cache.teachers import Teacher

__all__ = [
    "FEATURES_FORMAT", "SCHEMA_VERSION", "Cache", "CacheError", "DeviceError", "EgodistillError", "Failure", "Layout",
    "ManifestError", "MediaError", "Provenance", "SegmentTable", "TaskRecord", "Teacher", "TeacherError", "Views", "describe",
    "egodistill_version", "open_cache", "pick_device", "plan_layout",
]
