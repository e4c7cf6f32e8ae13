"""`cache upgrade`: convert a cache of an older schema in place (docs/cache-format.md, Versioning).

Schema 1 -> 2 rewrites the segments table's text columns (id, video, split) from zarr-python's
string type, which other Zarr v3 readers refuse, to UTF-8 bytes + offsets. Teachers' arrays are not
touched; their task records' checksums of the segments table are renewed. Safe to kill and rerun:
the new columns are written beside the old ones, the schema version changes only once they and the
checksums are in place, and the old columns are removed last.
"""

from __future__ import annotations

import os

import zarr

from egodistill.cache.checksums import digest, object_keys, read_object, segment_table_keys
from egodistill.common import CacheError, egodistill_version
from egodistill.cache.segments import GROUP, TEXT_COLUMNS, has_table, write_text_columns
from egodistill.cache.store import ROOT_ATTR, SCHEMA_VERSION, open_root, schema_version
from egodistill.cache.teachers import ATTR
from egodistill.cache.teachers import GROUP as TEACHERS


def upgrade_cache(location: str | os.PathLike, storage_options: dict | None = None) -> tuple[int, int]:
    """Bring the cache at `location` to SCHEMA_VERSION; returns (schema before, schema after)."""
    root, _ = open_root(location, mode="r+", storage_options=storage_options)
    before = schema_version(root)
    if before > SCHEMA_VERSION:
        raise CacheError(f"cache {location} has schema version {before}, newer than this egodistill understands ({SCHEMA_VERSION}): upgrade egodistill")
    if before < 2 and has_table(root):
        group = root[GROUP]
        # A killed upgrade deletes schema 1's columns only after the version changed, so at version 1 they are all there.
        missing = [c for c in TEXT_COLUMNS if c not in group]
        if missing:
            raise CacheError(f"cache {location} says schema_version 1, but its segments table lacks schema 1's column(s) "
                             f"{', '.join(f'{GROUP}/{c}' for c in missing)} (it holds: {', '.join(sorted(group.array_keys())) or 'nothing'}): "
                             "nothing was written; it is not a schema-1 cache egodistill can upgrade")
        write_text_columns(group, {c: group[c][:].tolist() for c in TEXT_COLUMNS})
        _renew_segment_checksums(root)
    if before < SCHEMA_VERSION:
        root.attrs[ROOT_ATTR] = {**root.attrs[ROOT_ATTR], "schema_version": SCHEMA_VERSION, "upgraded_with": egodistill_version()}
    if GROUP in root:  # last, and also when a killed upgrade already changed the version
        for column in TEXT_COLUMNS:
            if column in root[GROUP]:
                del root[GROUP][column]
    return before, SCHEMA_VERSION


def _renew_segment_checksums(root: zarr.Group) -> None:
    """Task records checksum the segments table's objects; point them at the table as it now is."""
    table = {key: digest(read_object(root, key)) for key in object_keys(root, segment_table_keys(root))}
    if TEACHERS not in root:
        return
    for _, teacher in root[TEACHERS].groups():
        if ATTR not in teacher.attrs or "tasks" not in teacher:
            continue
        for _, task in teacher["tasks"].groups():
            record = task.attrs.get("record")
            if record and record.get("checksums") is not None:
                kept = {k: v for k, v in record["checksums"].items() if not k.startswith(f"{GROUP}/")}
                task.attrs["record"] = {**record, "checksums": {**kept, **table}}
