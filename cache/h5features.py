"""Import features someone else extracted (one HDF5 dataset per segment or per video) as a new teacher.

Accepted shapes, anywhere in the file's hierarchy:
  - a dataset `T x D` named by a segment id or a video id (its path, e.g. `P01_11` or `P01/P01_11`);
  - a group so named holding `features` (`T x D`) and optionally `timestamps` (`T`, seconds).
Timestamps come from a `timestamps` dataset, else from an `fps` attribute (row k at
`start_sec_attr + k / fps`), else from `--fps`. Per-segment files without any are spread
evenly over the segment; per-video files need them, to cut each segment's rows out by time.
The result is a normal teacher (tasks, records, checksums, ledger); segments the file lacks
are failed in its ledger, and its provenance names the file and its sha256.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import h5py
import numpy as np

from egodistill.cache.catalog import open_cache
from egodistill.cache.checksums import file_sha256
from egodistill.cache.errors import CacheError
from egodistill.cache.hdf5 import imported_note, open_h5
from egodistill.cache.layout import plan_layout
from egodistill.cache.options import check_choice, check_number, check_plain_name
from egodistill.cache.records import Failure, Provenance
from egodistill.cache.teachers import ATTR


@dataclass
class Entry:
    """One feature matrix found in the file, and where its rows sit in time."""

    name: str
    dataset: h5py.Dataset
    timestamps: np.ndarray | None  # seconds per row, or None when the file says nothing


def find_entries(f: h5py.File, fps: float | None = None) -> dict[str, Entry]:
    """Every `T x D` feature matrix in the file, keyed by its path without the leading slash."""
    entries: dict[str, Entry] = {}

    def visit(path: str, node) -> None:
        if isinstance(node, h5py.Group) and isinstance(node.get("features"), h5py.Dataset):
            times = node["timestamps"][:] if isinstance(node.get("timestamps"), h5py.Dataset) else _times_from_attrs(node["features"], node.attrs, fps)
            entries[path] = Entry(path, node["features"], times)
        elif isinstance(node, h5py.Dataset) and node.ndim == 2 and path.rsplit("/", 1)[-1] not in ("features", "timestamps"):
            entries[path] = Entry(path, node, _times_from_attrs(node, node.attrs, fps))

    f.visititems(visit)
    return entries


def _times_from_attrs(dataset: h5py.Dataset, attrs, fps: float | None) -> np.ndarray | None:
    rate = float(attrs["fps"]) if "fps" in attrs else fps
    if not rate:
        return None
    return (float(attrs.get("start_sec", 0.0)) + np.arange(dataset.shape[0]) / rate).astype(np.float32)


def import_features(path: str | os.PathLike, location: str | os.PathLike, modality: str, name: str | None = None,
                    backbone: str = "imported", by: str = "auto", fps: float | None = None, storage_options: dict | None = None) -> str:
    """Add the file's features to the cache at `location` (which must hold the segments table) as a teacher; returns its key."""
    check_plain_name(CacheError, "--modality", modality)
    if name is not None:
        check_plain_name(CacheError, "--name", name)
    check_choice(CacheError, "--by", by, ("auto", "segment", "video"))
    check_number(CacheError, "--fps", fps, above=0)
    cache = open_cache(location, mode="r+", storage_options=storage_options)
    table = cache.segments
    with open_h5(path) as f:
        entries = find_entries(f, fps)
        if not entries:
            raise CacheError(f"{path} holds no T x D feature datasets: expected one dataset (or group with `features`) per segment or video")
        by = _match_by(entries, table, by, path)
        dims = {int(e.dataset.shape[1]) for e in entries.values()}
        if len(dims) != 1:
            raise CacheError(f"{path} mixes feature widths {sorted(dims)}: every dataset must be T x D with one D")
        rows, failed = _plan(entries, table, by, path)
        source = {"file": os.path.basename(str(path)), "by": by, "timestamps": _timestamp_source(entries, fps)}
        provenance = Provenance(
            modality=modality, backbone=backbone, weights=file_sha256(path), preprocessing={"imported": source},
            sampling={"imported": by}, precision=str(next(iter(entries.values())).dataset.dtype),
        )
        key = cache.key_for(provenance, name)
        if key in cache.teacher_keys():
            raise CacheError(f"teacher {key} is already in {location}: `egodistill cache rm {location} --teacher {key}` first, or pick another --name")
        offsets, layout = plan_layout(np.array([r for r, _ in rows], dtype=np.int64))
        dim = dims.pop()
        teacher, _ = cache.create_teacher(key, provenance, dim, offsets, layout, {})
        for task in range(layout.tasks):
            segs = layout.task_segments(task)
            parts = [_segment_rows(rows[i][1], table, i, dim) for i in segs]
            features, times = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            teacher.write_task(task, features.astype(np.float16), times.astype(np.float32), {},
                               failed=[x for x in failed if x.segment in segs], worker="import-h5")
    teacher._group.attrs[ATTR] = {**teacher._group.attrs[ATTR], "imported": imported_note(path, **source)}
    return key


def _match_by(entries: dict[str, Entry], table, by: str, path) -> str:
    ids, videos = set(map(str, table.ids)), set(map(str, table.videos))
    names = {n: n.rsplit("/", 1)[-1] for n in entries}
    hits = {"segment": sum(n in ids or b in ids for n, b in names.items()), "video": sum(n in videos or b in videos for n, b in names.items())}
    if by == "auto":
        by = max(hits, key=hits.get)
    if hits.get(by, 0) == 0:
        raise CacheError(
            f"no dataset name in {path} (e.g. {', '.join(list(entries)[:3])}) is a {by if by != 'auto' else 'segment or video'} id of the cache "
            f"(e.g. {', '.join(map(str, table.ids[:2]))} / {', '.join(map(str, table.videos[:2]))})"
        )
    return by


def _lookup(entries: dict[str, Entry], wanted: str) -> Entry | None:
    if wanted in entries:
        return entries[wanted]
    for name, entry in entries.items():  # e.g. "P01/P01_11" for video P01_11
        if name.rsplit("/", 1)[-1] == wanted:
            return entry
    return None


def _plan(entries, table, by: str, path) -> tuple[list[tuple[int, tuple]], list[Failure]]:
    """Per segment: (rows, how to read them), and ledger entries for segments the file lacks."""
    rows, failed = [], []
    for i in range(len(table)):
        sid, video = str(table.ids[i]), str(table.videos[i])
        entry = _lookup(entries, sid if by == "segment" else video)
        if entry is None:
            rows.append((0, (None, None, None)))
            failed.append(Failure(i, sid, video, f"not in {os.path.basename(str(path))}"))
            continue
        if by == "segment":
            rows.append((entry.dataset.shape[0], (entry, 0, entry.dataset.shape[0])))
            continue
        if entry.timestamps is None:
            raise CacheError(f"{path} has per-video features without timestamps: add a `timestamps` dataset or `fps` attribute, or pass --fps")
        start, stop = float(table.start_sec[i]), float(table.stop_sec[i])
        a = int(np.searchsorted(entry.timestamps, start, side="left"))
        b = len(entry.timestamps) if math.isnan(stop) else int(np.searchsorted(entry.timestamps, stop, side="left"))
        if b <= a:
            failed.append(Failure(i, sid, video, f"no rows of {entry.name} within [{start}, {stop}) s"))
        rows.append((max(0, b - a), (entry, a, max(a, b))))
    return rows, failed


def _segment_rows(how: tuple, table, i: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    entry, a, b = how
    if entry is None:
        return np.zeros((0, dim), np.float16), np.zeros(0, np.float32)
    values = entry.dataset[a:b]
    if entry.timestamps is not None:
        return values, entry.timestamps[a:b]
    start, stop, n = float(table.start_sec[i]), float(table.stop_sec[i]), b - a
    times = start + (np.arange(n) + 0.5) * (stop - start) / max(n, 1) if math.isfinite(stop) else np.full(n, np.nan)
    return values, times.astype(np.float32)


def _timestamp_source(entries: dict[str, Entry], fps: float | None) -> str:
    if all(e.timestamps is not None for e in entries.values()):
        return f"fps={fps}" if fps else "file"
    return "uniform-in-segment"
