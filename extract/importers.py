"""Import features a lab already has (HDF5, .npy or .pt folders, RULSTM LMDB) as a new teacher, cut into segments by time.

Every reader turns its source into `Entry`s: one `T x D` matrix per video or per segment id,
with the time of each row (given, or from a rate), read lazily. `import_source` then matches
entries to the cache's segments (by segment id or by video; a name matches by id, file stem or
relative path, extract/names.py), cuts per-video rows by time
(`start_sec <= t < stop_sec`), and writes a normal teacher (tasks, records, checksums, ledger):
a segment with no rows is failed in the ledger. The rows are the source's values (stored as
float16), and the provenance names the source, its format and its sha256 (for folders: the
sha256 of the sorted file names and sizes, docs/cache-format.md).

Formats:
  h5    one dataset `T x D` per segment or video id (at any depth), or a group with `features`
        and optional `timestamps`; times from `timestamps`, else an `fps` attribute (with
        optional `start_sec`), else --fps.
  npy   a folder of `<video>.npy` [T, D] at --fps (video_features' layout: row k at k/fps), or
        `<segment_id>.npy` (rows spread evenly over the segment, or start + k/fps with --fps).
  pt    a folder of `<video>.pt` tensors [T, D] (Ego4D): row j covers frames
        [j*stride, j*stride + window) at --fps; its time is the window's centre,
        (j*stride + window/2) / fps.
  lmdb  RULSTM: one float32 vector per key `<video>_frame_<n:010d>.jpg`, n the 1-based frame
        number at --fps, so the row's time is (n - 1) / fps.  Needs `pip install egodistill[lmdb]`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from egodistill.cache.catalog import open_cache
from egodistill.common import CacheError, check_choice, check_number, check_plain_name, file_sha256, first_line
from egodistill.cache.shards import plan_layout
from egodistill.cache.records import Failure, Provenance, SamplingPolicy
from egodistill.extract.names import match_names, mismatch_note

FORMATS = ("h5", "npy", "pt", "lmdb")
Progress = Callable[[int, int], None]


@dataclass
class Entry:
    """One feature matrix of the source (a video's or a segment's) and where its rows sit in time.

    `values` is anything with `.shape` and row slicing (an h5py dataset, a memory-mapped array,
    an LMDB reader). Times: `timestamps` if given; else row k at `origin + k / fps` (origin None:
    the segment's start for per-segment entries, 0 for per-video ones); else none."""

    name: str
    values: object
    timestamps: np.ndarray | None = None
    fps: float | None = None
    origin: float | None = None

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    def times(self, segment_start: float) -> np.ndarray | None:
        if self.timestamps is not None:
            return np.asarray(self.timestamps, dtype=np.float64)
        if self.fps:
            origin = self.origin if self.origin is not None else segment_start
            return origin + np.arange(self.rows) / self.fps
        return None


@dataclass
class Source:
    """What a reader found: the entries, how their times are known, and how to name the source."""

    path: str
    format: str
    entries: dict[str, Entry]
    sha256: str            # "sha256:<hex>" of the file, or "listing-sha256:<hex>" of a folder's names and sizes
    timing: dict            # how rows get their times, recorded in the provenance
    close: Callable[[], None] = lambda: None


# --- readers ------------------------------------------------------------------------------

def read_source(path: str | os.PathLike, fmt: str, fps: float | None = None, stride: int | None = None, window: int | None = None) -> Source:
    """Open `path` as a source of format `fmt` (h5, npy, pt, lmdb); a one-line CacheError when it is not one."""
    check_choice(CacheError, "--format", fmt, FORMATS)
    check_number(CacheError, "--fps", fps, above=0)
    check_number(CacheError, "--stride", stride, at_least=1)
    check_number(CacheError, "--window", window, at_least=1)
    path = str(path)
    if not Path(path).exists():
        raise CacheError(f"{fmt} source {path} not found: check the path")
    return {"h5": _read_h5, "npy": _read_npy, "pt": _read_pt, "lmdb": _read_lmdb}[fmt](path, fps, stride, window)


def _read_h5(path: str, fps, stride, window) -> Source:
    import h5py

    from egodistill.cache.hdf5 import open_h5

    f = open_h5(path)
    entries: dict[str, Entry] = {}

    def rate(node) -> tuple[float | None, float | None]:
        if "fps" in node.attrs:
            return float(node.attrs["fps"]), float(node.attrs.get("start_sec", 0.0))
        return fps, (float(node.attrs["start_sec"]) if "start_sec" in node.attrs else None)

    def visit(name: str, node) -> None:
        if isinstance(node, h5py.Group) and isinstance(node.get("features"), h5py.Dataset):
            given = node["timestamps"][:] if isinstance(node.get("timestamps"), h5py.Dataset) else None
            r, origin = rate(node["features"]) if "fps" in node["features"].attrs else rate(node)
            entries[name] = Entry(name, node["features"], given, r, origin)
        elif isinstance(node, h5py.Dataset) and node.ndim == 2 and name.rsplit("/", 1)[-1] not in ("features", "timestamps"):
            entries[name] = Entry(name, node, None, *rate(node))

    f.visititems(visit)
    if not entries:
        f.close()
        raise CacheError(f"{path} holds no T x D feature datasets: expected one dataset (or group with `features`) per segment or video")
    given = all(e.timestamps is not None for e in entries.values())
    timing = {"timestamps": "file" if given else (f"fps={fps}" if fps else "fps attribute, else uniform-in-segment")}
    return Source(path, "h5", entries, file_sha256(path), timing, f.close)


def _folder_files(path: str, suffix: str, fmt: str) -> list[Path]:
    folder = Path(path)
    if not folder.is_dir():
        raise CacheError(f"--format {fmt} expects a folder of *{suffix} files, and {path} is a file")
    files = sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file())
    if not files:
        raise CacheError(f"{path} holds no *{suffix} files: give the folder of per-video or per-segment {suffix} features")
    return files


def listing_sha256(files: list[Path], root: str) -> str:
    """sha256 of the sorted `relative name<TAB>size` lines of the files: a folder's stand-in for a file hash."""
    lines = sorted(f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}" for p in files)
    return "listing-sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _matrix(path: Path, values: np.ndarray) -> np.ndarray:
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2 or values.shape[0] == 0 or not np.issubdtype(values.dtype, np.number):
        raise CacheError(f"{path} holds an array of shape {tuple(values.shape)} ({values.dtype}): expected numbers, T x D")
    return values


def _read_npy(path: str, fps, stride, window) -> Source:
    files = _folder_files(path, ".npy", "npy")
    entries = {}
    for file in files:
        try:
            values = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise CacheError(f"{file} is not a .npy array ({first_line(err, 100)}): give arrays saved with numpy.save") from None
        entries[file.stem] = Entry(file.stem, _matrix(file, values), None, fps, None)
    timing = {"timestamps": f"row k at k/fps, fps={fps} (per segment: from its start)" if fps else "uniform-in-segment"}
    return Source(path, "npy", entries, listing_sha256(files, path), timing)


def _read_pt(path: str, fps, stride, window) -> Source:
    import torch

    if not (fps and stride and window):
        raise CacheError("--format pt needs --fps, --stride and --window (Ego4D: --fps 30 --stride 16 --window 32): row j covers frames [j*stride, j*stride+window)")
    files = _folder_files(path, ".pt", "pt")
    entries = {}
    for file in files:
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for a file that is not a tensor
            raise CacheError(f"{file} is not a saved tensor ({type(err).__name__}): give torch.save(tensor) files, T x D per video") from None
        if not isinstance(loaded, torch.Tensor):
            raise CacheError(f"{file} holds a {type(loaded).__name__}, not a tensor: give torch.save(tensor) files, T x D per video")
        values = _matrix(file, loaded.float().numpy() if loaded.dtype == torch.bfloat16 else loaded.numpy())
        times = (np.arange(values.shape[0]) * stride + window / 2) / fps
        entries[file.stem] = Entry(file.stem, values, times)
    timing = {"timestamps": "window centre", "fps": fps, "stride": stride, "window": window}
    return Source(path, "pt", entries, listing_sha256(files, path), timing)


_LMDB_KEY = re.compile(r"(.+)_frame_(\d+)\.jpg")


class _LmdbRows:
    """One video's rows of an LMDB, read when sliced (the database can be far larger than memory)."""

    def __init__(self, env, keys: list[bytes], dim: int) -> None:
        self._env, self._keys = env, keys
        self.shape = (len(keys), dim)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, rows: slice) -> np.ndarray:
        keys = self._keys[rows]
        out = np.empty((len(keys), self.shape[1]), np.float32)
        with self._env.begin() as txn:
            for k, key in enumerate(keys):
                value = txn.get(key)
                if len(value) != out.shape[1] * 4:
                    raise CacheError(f"LMDB key {key.decode()} holds {len(value)} bytes, not {out.shape[1]} float32 values like the first key")
                out[k] = np.frombuffer(value, dtype=np.float32)
        return out


def _read_lmdb(path: str, fps, stride, window) -> Source:
    try:
        import lmdb
    except ImportError:
        raise CacheError("--format lmdb needs the lmdb package: pip install egodistill[lmdb]") from None
    if not fps:
        raise CacheError("--format lmdb needs --fps, the frame rate the keys' frame numbers count at (RULSTM EPIC: 30)")
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=Path(path).is_dir())
    except lmdb.Error as err:
        raise CacheError(f"{path} is not an LMDB database ({first_line(err, 100)}): give RULSTM's feature folder (data.mdb)") from None
    frames: dict[str, list[tuple[int, bytes]]] = {}
    dim = None
    with env.begin() as txn:
        cursor = txn.cursor()
        if cursor.first():
            dim = len(cursor.value()) // 4
        for key in cursor.iternext(keys=True, values=False):  # keys only: the values are read when rows are cut
            match = _LMDB_KEY.fullmatch(key.decode(errors="replace"))
            if match is None:
                env.close()
                raise CacheError(f"{path}: key {key[:60]!r} is not <video>_frame_<number>.jpg (RULSTM's keys)")
            frames.setdefault(match[1], []).append((int(match[2]), bytes(key)))
    if not frames:
        env.close()
        raise CacheError(f"{path} is an empty LMDB database: no features to import")
    entries = {}
    for video, keyed in frames.items():
        keyed.sort()
        numbers = np.array([n for n, _ in keyed], dtype=np.float64)
        entries[video] = Entry(video, _LmdbRows(env, [k for _, k in keyed], dim), (numbers - 1) / fps)
    folder = Path(path)
    files = [folder / "data.mdb"] if folder.is_dir() else [folder]
    return Source(path, "lmdb", entries, listing_sha256(files, str(folder if folder.is_dir() else folder.parent)),
                  {"timestamps": "(frame - 1) / fps", "fps": fps}, env.close)


# --- writing a teacher --------------------------------------------------------------------

def import_source(path: str | os.PathLike, fmt: str, location: str | os.PathLike, modality: str, *, name: str | None = None,
                  backbone: str = "imported", by: str = "auto", fps: float | None = None, stride: int | None = None,
                  window: int | None = None, storage_options: dict | None = None, on_progress: Progress | None = None,
                  log: Callable[[str], None] = print) -> str:
    """Add the source's features to the cache at `location` (which must hold the segments table) as a teacher; returns its key.
    `log` gets one line, before any row is written, when most segments match no name of the source."""
    check_plain_name(CacheError, "--modality", modality)
    if name is not None:
        check_plain_name(CacheError, "--name", name)
    check_choice(CacheError, "--by", by, ("auto", "segment", "video"))
    source = read_source(path, fmt, fps, stride, window)
    try:
        return _write_teacher(source, location, modality, name, backbone, by, storage_options, on_progress, log)
    finally:
        source.close()


def _write_teacher(source: Source, location, modality: str, name, backbone: str, by: str, storage_options, on_progress, log) -> str:
    cache = open_cache(location, mode="r+", storage_options=storage_options)
    table = cache.segments
    entries = source.entries
    by, matched = _match_by(entries, table, by, source.path)
    column = table.ids if by == "segment" else table.videos
    note = mismatch_note(f"name in {os.path.basename(source.path.rstrip('/'))}", entries, column, matched, map(str, column))
    if note:
        log(note)
    dims = {int(e.values.shape[1]) for e in entries.values()}
    if len(dims) != 1:
        raise CacheError(f"{source.path} mixes feature widths {sorted(dims)}: every matrix must be T x D with one D")
    dim = dims.pop()
    plan, failed = _plan(entries, matched, table, by, source.path)
    described = {"file": os.path.basename(source.path.rstrip("/")), "format": source.format, "by": by, **source.timing}
    provenance = Provenance(
        modality=modality, backbone=backbone, weights=source.sha256, preprocessing={"imported": described},
        sampling=SamplingPolicy(imported=by).to_json(), precision=str(np.dtype(getattr(next(iter(entries.values())).values, "dtype", np.float32))),
    )
    key = cache.key_for(provenance, name)
    if key in cache.teacher_keys():
        raise CacheError(f"teacher {key} is already in {location}: `egodistill cache rm {location} --teacher {key}` first, or pick another --name")
    offsets, layout = plan_layout(np.array([len(rows) for rows, _ in plan], dtype=np.int64))
    teacher, _ = cache.create_teacher(key, provenance, dim, offsets, layout, {})
    for task in range(layout.tasks):
        segs = layout.task_segments(task)
        parts = [_segment_rows(plan[i], dim) for i in segs]
        features = np.concatenate([p[0] for p in parts]).astype(np.float16)
        times = np.concatenate([p[1] for p in parts]).astype(np.float32)
        teacher.write_task(task, features, times, {}, failed=[x for x in failed if x.segment in segs], worker=f"import-{source.format}")
        if on_progress:
            on_progress(segs.stop, layout.segments)
    teacher.mark_imported(source.path, source.sha256, described)
    return key


def _match_by(entries: dict[str, Entry], table, by: str, path) -> tuple[str, dict[str, str]]:
    """Whether the names are segment or video ids (the one more names match, for auto), and segment id or
    video -> entry name."""
    matches = {"segment": match_names(entries, map(str, table.ids)), "video": match_names(entries, map(str, table.videos))}
    # auto: the side more names match; on a tie the side matched by id rather than by stem (a name `v1.mp4`
    # is video `v1.mp4` itself, not segment `v1` by its stem).
    ranked = {k: (len(m), sum(key == name for key, name in m.items())) for k, m in matches.items()}
    asked, by = by, max(matches, key=ranked.get) if by == "auto" else by
    if not matches[by]:
        raise CacheError(
            f"no name in {path} (e.g. {', '.join(list(entries)[:3])}) is a {asked if asked != 'auto' else 'segment or video'} id of the cache "
            f"(e.g. {', '.join(map(str, table.ids[:2]))} / {', '.join(map(str, table.videos[:2]))}) by id, file stem or relative path"
        )
    return by, matches[by]


def cut_by_time(times: np.ndarray, start: float, stop: float) -> tuple[int, int]:
    """Rows [a, b) of sorted `times` with start <= t < stop (NaN stop: to the end)."""
    a = int(np.searchsorted(times, start, side="left"))
    b = len(times) if math.isnan(stop) else int(np.searchsorted(times, stop, side="left"))
    return a, max(a, b)


def _plan(entries: dict[str, Entry], matched: dict[str, str], table, by: str, path) -> tuple[list[tuple[range, tuple]], list[Failure]]:
    """Per segment: its rows of the entry and their times; ledger entries for segments with none."""
    plan, failed = [], []
    video_times: dict[str, np.ndarray] = {}
    source = os.path.basename(str(path).rstrip("/"))
    for i in range(len(table)):
        sid, video = str(table.ids[i]), str(table.videos[i])
        start, stop = float(table.start_sec[i]), float(table.stop_sec[i])
        wanted = matched.get(sid if by == "segment" else video)
        entry = entries[wanted] if wanted is not None else None
        if entry is None:
            plan.append((range(0), (None, None)))
            failed.append(Failure(i, sid, video, f"not in {source}"))
            continue
        if by == "segment":
            times = entry.times(start)
            if times is None:  # spread evenly over the segment
                n = entry.rows
                times = start + (np.arange(n) + 0.5) * (stop - start) / n if math.isfinite(stop) else np.full(n, np.nan)
            plan.append((range(entry.rows), (entry, times)))
            continue
        times = video_times.get(entry.name)
        if times is None:  # once per video: a video has many segments
            times = video_times[entry.name] = entry.times(0.0)
            if times is None:
                raise CacheError(f"{path} has per-video features without times: pass --fps (or add `timestamps`/an `fps` attribute in HDF5)")
            if len(times) > 1 and not np.all(np.diff(times) >= 0):
                raise CacheError(f"{path}: the times of {entry.name} go backwards: its rows must be in time order to be cut into segments")
        a, b = cut_by_time(times, start, stop)
        if b == a:
            failed.append(Failure(i, sid, video, f"no rows of {entry.name} within [{start}, {stop}) s (its rows span {times[0]:.2f}-{times[-1]:.2f} s)"))
        plan.append((range(a, b), (entry, times)))
    return plan, failed


def _segment_rows(planned: tuple[range, tuple], dim: int) -> tuple[np.ndarray, np.ndarray]:
    rows, (entry, times) = planned
    if entry is None or len(rows) == 0:
        return np.zeros((0, dim), np.float16), np.zeros(0, np.float32)
    return np.asarray(entry.values[rows.start:rows.stop]), np.asarray(times[rows.start:rows.stop])


def detect_format(path: str | os.PathLike) -> str:
    """h5, npy, pt or lmdb from what is at `path` (a file's suffix, a folder's files)."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() in (".h5", ".hdf5", ".hdf"):
            return "h5"
        if p.name == "data.mdb":
            return "lmdb"
        raise CacheError(f"cannot tell the format of {path}: pass --format h5|npy|pt|lmdb")
    if p.is_dir():
        if (p / "data.mdb").is_file():
            return "lmdb"
        for suffix, fmt in ((".npy", "npy"), (".pt", "pt")):
            if next(p.rglob(f"*{suffix}"), None) is not None:
                return fmt
        raise CacheError(f"{path} holds no .npy, .pt or data.mdb: pass --format h5|npy|pt|lmdb")
    raise CacheError(f"source {path} not found: check the path")
