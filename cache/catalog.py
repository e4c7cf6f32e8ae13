"""Removing one teacher from a shared cache, leaving every other teacher's objects untouched."""

from __future__ import annotations

import os

from egodistill.cache.errors import CacheError
from egodistill.cache.lease import current_holder, describe_holder
from egodistill.cache.store import open_cache
from egodistill.cache.teachers import GROUP, open_teacher


def remove_teacher(location: str | os.PathLike, key: str, storage_options: dict | None = None) -> None:
    """Delete teacher `key` (its arrays, task records and lease) and nothing else.

    Refused while an extraction holds the teacher's lease. Only the `teachers/<key>/` prefix is
    deleted: the `teachers` group's own metadata and other teachers' objects are not rewritten."""
    root = open_cache(location, mode="r+", storage_options=storage_options)
    open_teacher(root, key)  # a one-line error naming the teachers there when the key is wrong
    holder = current_holder(str(location), key)
    if holder:
        raise CacheError(f"teacher {key} is being extracted by {describe_holder(holder)}: wait for that run to finish before removing it")
    del root[GROUP][key]
