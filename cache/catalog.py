"""An opened cache: its segments table and its teachers, found, created and removed by key.

`open_cache` is the one way in for extract, student and the CLI; they get `Cache` and `Teacher`
objects and never see the Zarr groups, paths or attribute names behind them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.errors import ContainsGroupError

from egodistill.common import CacheError, check_plain_name
from egodistill.cache.shards import Layout
from egodistill.cache.lease import SEGMENTS_WAIT_SEC, current_holder, describe_holder, segments_lease, teacher_lease
from egodistill.cache.records import Failure, Provenance, Views
from egodistill.cache.extents import ExtendedTeacher, extend_teacher, open_extended
from egodistill.cache.segments import SegmentTable, append_table, has_table, read_table, table_attrs, write_table
from egodistill.cache.store import ROOT_ATTR, check_schema, is_url, open_root
from egodistill.cache.teachers import ATTR, GROUP, Teacher, create_logit_arrays, create_row_arrays, members, teacher_attrs


def open_cache(
    location: str | os.PathLike,
    mode: str = "r",
    storage_options: dict[str, Any] | None = None,
    read_cache: str | os.PathLike | None = None,
) -> Cache:
    """Open the cache at a path or fsspec URL. mode "r" never writes; "r+" writes an existing cache;
    "a" also creates it. See `store.open_root` for URLs, credentials and read-through copies."""
    root, folder = open_root(location, mode, storage_options, read_cache)
    check_schema(root, location)
    return Cache(root, str(location), folder)


def open_existing(location: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Cache | None:
    """The cache at `location` read-only, or None where there is none yet (what `extract` would create): a local
    path without zarr.json, or a remote URL that cannot be opened (were it unreadable, a write reports why)."""
    if not is_url(str(location)) and not Path(location, "zarr.json").exists():
        return None
    try:
        return open_cache(location, mode="r", storage_options=storage_options)
    except CacheError:
        if not is_url(str(location)):
            raise
        return None


class Cache:
    """A cache opened at `location`: the segments table and the teachers (handles, see cache/teachers.py)."""

    def __init__(self, root: zarr.Group, location: str, folder: Path | None) -> None:
        self._root = root  # cache/ modules only
        self.location = location
        self.folder = folder  # on a local or NFS path, else None

    def __repr__(self) -> str:
        return f"Cache({self.location!r})"

    @property
    def schema(self) -> dict:
        """{"schema_version", "created_with"} of the root."""
        return dict(self._root.attrs[ROOT_ATTR])

    # --- segments ------------------------------------------------------------------------

    @cached_property
    def segments(self) -> SegmentTable:
        """The segments table (read once per handle); a one-line error when the cache has none."""
        return read_table(self._root)

    @property
    def segments_info(self) -> dict:
        """{"count", "heads", "source", "files"} of the table, without reading its columns. `files`: the manifests it
        was read from, each {"format", "manifest", "split", "segments": [first, end]}."""
        attrs = table_attrs(self._root)
        count = attrs.get("count", 0)
        files = attrs.get("files", [{**attrs["source"], "segments": [0, count]}] if "source" in attrs else [])
        return {"count": count, "heads": attrs.get("heads", {}), "source": attrs.get("source", {}), "files": files,
                "class_names": attrs.get("class_names", {})}

    @property
    def has_segments(self) -> bool:
        return has_table(self._root)

    @contextmanager
    def segments_lease(self, wait_s: float = SEGMENTS_WAIT_SEC) -> Iterator[None]:
        """Hold the segments table for the block: writers that read it, decide and write (`extract` and `cache init`
        adding manifests) queue here, so two runs that start together on a new cache or add the same file write it
        once (local and NFS caches). The table is read afresh inside."""
        with segments_lease(self.folder, self.location, wait_s):
            self.__dict__.pop("segments", None)
            yield
            self.__dict__.pop("segments", None)

    def write_segments(self, table: SegmentTable, source: dict, files: list[dict] | None = None, class_names: dict[str, list[str]] | None = None) -> None:
        """Write the table if the cache has none; otherwise insist it is the same segments. `class_names`: head -> the
        name of each class, where the manifests give them (SSv2's labels file, `--classes`)."""
        write_table(self._root, table, source, files, class_names)
        self.__dict__.pop("segments", None)

    def append_segments(self, table: SegmentTable, files: list[dict]) -> None:
        """Add segments after the stored ones (append-only: nothing stored is rewritten). Teachers hold them as
        not extracted until `extract` gives each an extent for them (cache/extents.py)."""
        append_table(self._root, table, files)
        self.__dict__.pop("segments", None)

    # --- teachers ------------------------------------------------------------------------

    def teacher_keys(self) -> list[str]:
        if GROUP not in self._root:
            return []
        group = self._root[GROUP]
        return [k for k, g in members(group) if isinstance(g, zarr.Group) and ATTR in g.attrs]

    def teachers(self) -> list[Teacher]:
        return [self.teacher(k) for k in self.teacher_keys()]

    def teacher(self, key: str) -> Teacher | ExtendedTeacher:
        try:
            group = self._root[f"{GROUP}/{key}"]
            if ATTR in group.attrs:
                return open_extended(group, self._teacher_folder(key), self.segments_info["count"])
        except (KeyError, ValueError):  # ValueError: a key zarr refuses as a path, such as "../x"
            pass
        keys = self.teacher_keys()
        raise CacheError(f"teacher {key!r} is not in the cache (it holds: {', '.join(keys) or 'none'}): run `egodistill cache info` to see them")

    def key_for(self, provenance: Provenance, name: str | None = None) -> str:
        """`name` if given; else the key of the stored teacher with this identity (keys made by older
        versions, which hashed other fields, stand); else a new key."""
        if name:
            return name
        fresh = provenance.teacher_key()
        same = [t.key for t in self.teachers() if t.provenance.identity() == provenance.identity()]
        return fresh if fresh in same or not same else same[0]

    def create_teacher(self, key: str, provenance: Provenance, feature_dim: int, offsets: np.ndarray, layout: Layout,
                       heads: dict[str, int], frame_shape: tuple[int, int, int] | None = None) -> tuple[Teacher, bool]:
        """Create the teacher's arrays, or reopen it to resume. Returns (teacher, resumed).

        With `frame_shape` (H, W, 3) the teacher stores uint8 frames instead of features (give feature_dim 0)."""
        check_plain_name(CacheError, "teacher key", key)
        if frame_shape is not None and (feature_dim != 0 or len(frame_shape) != 3 or frame_shape[2] != 3 or min(frame_shape) < 1):
            raise CacheError(f"a frames teacher needs frame_shape (H, W, 3) and feature_dim 0, got {tuple(frame_shape)} and {feature_dim}")
        teachers = self._teachers_group()
        if key in teachers and ATTR in teachers[key].attrs:
            teacher = self.teacher(key)
            refuse_other_identity(teacher, provenance)
            if teacher.heads != dict(heads):
                raise CacheError(f"teacher {key!r} has heads {teacher.heads}, the cache's segments table {dict(heads)}: "
                                 "give --head a file of the table's class counts, or extract into a new --cache")
            if extend_teacher(teachers[key], teacher, offsets):  # the table grew: an extent for its new segments
                teacher = self.teacher(key)
            return teacher, True
        if key in teachers:  # killed while creating: nothing was written into it yet
            del teachers[key]
        group = teachers.create_group(key)
        create_row_arrays(group, feature_dim, offsets, layout, heads, frame_shape)
        group.attrs[ATTR] = teacher_attrs(key, provenance, feature_dim, heads, layout, frame_shape)
        return self.teacher(key), False

    def create_logits_teacher(self, key: str, provenance: Provenance, logits: dict[str, np.ndarray], failed: Sequence[Failure] = (),
                              views: Views | None = None, view_logits: dict[str, np.ndarray] | None = None) -> Teacher:
        """A teacher made of logits only (e.g. a head fitted on cached features), written whole at once.

        With `views`, its logits of each of those windows too (`view_logits`: head -> [N, V, C]); `logits` is then
        the centred view. An existing teacher of that key with the same identity is replaced, another one is refused."""
        check_plain_name(CacheError, "teacher key", key)
        if (views is None) != (view_logits is None):
            raise CacheError(f"teacher {key}: give views and view_logits together (the windows and their logits), or neither")
        teachers = self._teachers_group()
        if key in teachers:
            if ATTR in teachers[key].attrs:
                refuse_other_identity(self.teacher(key), provenance)
            del teachers[key]
        group = teachers.create_group(key)
        layout = create_logit_arrays(group, logits, failed, view_logits)
        attrs = teacher_attrs(key, provenance, 0, {h: int(v.shape[1]) for h, v in logits.items()}, layout)
        if views:
            attrs["views"] = views.to_json()
        group.attrs[ATTR] = attrs
        return self.teacher(key)

    def _teachers_group(self) -> zarr.Group:
        """The `teachers` group, created by whichever writer comes first. Writers of other teachers race here: zarr's
        require_group looks, then creates, so one that finds none may meet the group another writer made meanwhile."""
        try:
            return self._root.require_group(GROUP)
        except ContainsGroupError:
            return self._root[GROUP]

    def remove_teacher(self, key: str) -> None:
        """Delete teacher `key` (its arrays, task records and lease) and nothing else.

        Refused while an extraction holds the teacher's lease. Only the `teachers/<key>/` prefix is
        deleted: the `teachers` group's own metadata and other teachers' objects are not rewritten."""
        self.teacher(key)  # a one-line error naming the teachers there when the key is wrong
        holder = current_holder(self._teacher_folder(key))
        if holder:
            raise CacheError(f"teacher {key} is being extracted by {describe_holder(holder)}: wait for that run to finish before removing it")
        del self._root[GROUP][key]

    @contextmanager
    def lease(self, key: str) -> Iterator[Callable[[], None]]:
        """Hold the one-writer lease on teacher `key` for the block (local and NFS caches); yields `renew()`."""
        with teacher_lease(self._teacher_folder(key), key) as renew:
            yield renew

    def _teacher_folder(self, key: str) -> Path | None:
        return self.folder / GROUP / key if self.folder is not None else None


def refuse_other_identity(teacher: Teacher, provenance: Provenance) -> None:
    """A stored teacher is resumed only by a run of its identity (also what `extract --dry-run` checks)."""
    stored, asked = teacher.provenance.to_json(), provenance.to_json()
    if teacher.provenance.identity() != provenance.identity():
        changed = sorted(k for k in (set(stored) | set(asked)) - {"egodistill"} if stored.get(k) != asked.get(k))
        raise CacheError(
            f"teacher {teacher.key!r} already exists with other settings ({', '.join(changed)} differ): "
            "drop --name to get a key of its own, or use the stored settings"
        )
