"""Read a dataset's annotation file (EPIC-KITCHENS-100, Something-Something v2, generic CSV) into one Manifest.

The format is recognised by content, never by file name, so a renamed file still reads. Every
error is a ManifestError with one line that names the file (and `path:LINE` for a bad row) and
says what to do.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from egodistill.common import ManifestError

EPIC_HEADS = {"verb": 97, "noun": 300}
SSV2_HEAD = "action"
GENERIC_COLUMNS = ("segment_id", "video", "start_sec", "stop_sec", "split")
LABEL_PREFIX = "label:"

_EPIC_COLUMNS = ("narration_id", "video_id", "start_timestamp", "stop_timestamp")
_FORMATS = (
    "give an EPIC-KITCHENS-100 CSV (narration_id,participant_id,video_id,...), a Something-Something v2 "
    "JSON list with its *labels.json beside it, or a CSV with header "
    "segment_id,video,start_sec,stop_sec,split[,label:<head>...]"
)
_TIMESTAMP = re.compile(r"(\d+):([0-5]?\d):([0-5]?\d(?:\.\d*)?)")


@dataclass(frozen=True)
class Segment:
    id: str
    video: str  # the manifest's reference to the video: EPIC video_id, SSv2 id, generic relative path
    start_sec: float
    stop_sec: float  # math.nan means "to the end of the video" (SSv2 whole videos)
    split: str  # "train" | "val" | "test" | whatever a generic CSV says
    labels: dict[str, int]  # head name -> class index; -1 = unlabelled


@dataclass(frozen=True)
class Manifest:
    path: str
    format: str  # "epic100" | "ssv2" | "generic"
    segments: list[Segment]
    heads: dict[str, int]  # head name -> number of classes, in a stable order


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read an EPIC-KITCHENS-100 CSV, an SSv2 JSON list or a generic CSV, whichever the file holds."""
    file = Path(path)
    text = _read_text(file)
    if not text.strip():
        raise ManifestError(f"manifest {file} is empty: give a file with a header and at least one segment")
    if text.lstrip().startswith("["):
        return _read_ssv2(file, text)
    rows = _csv_rows(file, text)
    header = [name.strip() for name in next(rows, (1, []))[1]]
    if set(_EPIC_COLUMNS) <= set(header):
        return _read_epic(file, header, rows)
    if set(GENERIC_COLUMNS) <= set(header):
        return _read_generic(file, header, rows)
    raise ManifestError(f"manifest {file} is not a format egodistill understands: {_FORMATS}")


def resolve_video(manifest: Manifest, segment_video: str, videos_root: str | os.PathLike) -> Path | None:
    """The existing file for one video reference under videos_root, or None when it is not there."""
    return _Finder(manifest, videos_root).find(segment_video)


def resolve_videos(manifest: Manifest, videos_root: str | os.PathLike) -> dict[str, Path | None]:
    """Every distinct video reference of the manifest -> its existing file, or None when it is not there."""
    finder = _Finder(manifest, videos_root)
    return {video: finder.find(video) for video in dict.fromkeys(s.video for s in manifest.segments)}


def segment_table(manifest: Manifest):
    """The manifest as the cache's segments table (cache order = manifest order)."""
    import numpy as np

    from egodistill.cache.segments import SegmentTable

    segs = manifest.segments
    return SegmentTable(
        ids=np.array([s.id for s in segs], dtype=object),
        videos=np.array([s.video for s in segs], dtype=object),
        start_sec=np.array([s.start_sec for s in segs], dtype=np.float64),
        stop_sec=np.array([s.stop_sec for s in segs], dtype=np.float64),
        split=np.array([s.split for s in segs], dtype=object),
        labels={h: np.array([s.labels.get(h, -1) for s in segs], dtype=np.int32) for h in manifest.heads},
        heads=dict(manifest.heads),
    )


def init_cache(manifest_path: str | os.PathLike, location: str, storage_options: dict | None = None) -> Manifest:
    """`cache init`: write the manifest's segments table alone into the cache at `location` (created if absent;
    an existing table must be the same segments). Features can then be imported without any video."""
    from egodistill.cache.catalog import open_cache

    manifest = read_manifest(manifest_path)
    target = open_cache(location, mode="a", storage_options=storage_options)
    target.write_segments(segment_table(manifest), {"format": manifest.format, "manifest": str(manifest.path)})
    return manifest


# --- reading -------------------------------------------------------------------------------------


def _read_text(file: Path) -> str:
    try:
        # utf-8-sig: spreadsheets often save CSVs with a byte-order mark, which would spoil the header.
        return file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"manifest {file} not found: check the --manifest path") from None
    except IsADirectoryError:
        raise ManifestError(f"manifest {file} is a folder: give the annotation file itself") from None
    except UnicodeDecodeError:
        raise ManifestError(f"manifest {file} is not UTF-8 text: {_FORMATS}") from None
    except OSError as err:
        raise ManifestError(f"manifest {file} cannot be read ({err.strerror}): check its permissions") from None


def _csv_rows(file: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, cells) of every non-blank row; the first is the header, and the rest must be as wide."""
    reader = csv.reader(io.StringIO(text))
    width = None
    line = 1
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                if width is None:
                    width = len(cells)
                elif len(cells) != width:
                    raise ManifestError(
                        f"{file}:{line}: {len(cells)} fields where the header has {width}: fix the row's commas or quoting"
                    )
                yield line, cells
            line = reader.line_num + 1
    except csv.Error as err:
        raise ManifestError(f"{file}:{reader.line_num}: unreadable CSV ({err}): fix the row's quoting") from None


def _manifest(file: Path, fmt: str, segments: list[Segment], heads: dict[str, int]) -> Manifest:
    if not segments:
        raise ManifestError(f"manifest {file} has no segments: add rows below the header or give another file")
    return Manifest(path=os.fspath(file), format=fmt, segments=segments, heads=heads)


def _split_from_name(file: Path) -> str:
    name = file.name.lower()
    if "train" in name:
        return "train"
    if "val" in name:  # also "validation"
        return "val"
    if "test" in name:
        return "test"
    return "unknown"


def _read_epic(file: Path, header: list[str], rows: Iterator[tuple[int, list[str]]]) -> Manifest:
    col = {name: i for i, name in enumerate(header)}
    # Test-set files have no class columns: their segments are unlabelled.
    label_cols = {head: col.get(f"{head}_class") for head in EPIC_HEADS}
    split = _split_from_name(file)
    segments: list[Segment] = []
    seen: dict[str, int] = {}
    for line, cells in rows:
        where = f"{file}:{line}"
        segment_id = _unique_id(where, "narration_id", cells[col["narration_id"]], seen, line)
        video = _plain_name(where, "video_id", cells[col["video_id"]])
        start = _timestamp(where, "start_timestamp", cells[col["start_timestamp"]])
        stop = _timestamp(where, "stop_timestamp", cells[col["stop_timestamp"]])
        # Equal times are let through: a zero-length narration in the official files still names a frame.
        if stop < start:
            raise ManifestError(f"{where}: stop_timestamp is before start_timestamp: fix the row's times")
        labels = {
            head: -1 if i is None else _class_index(where, f"{head}_class", cells[i], EPIC_HEADS[head])
            for head, i in label_cols.items()
        }
        segments.append(Segment(segment_id, video, start, stop, split, labels))
    return _manifest(file, "epic100", segments, dict(EPIC_HEADS))


def _read_generic(file: Path, header: list[str], rows: Iterator[tuple[int, list[str]]]) -> Manifest:
    col = {name: i for i, name in enumerate(header)}
    label_cols = _label_columns(file, header)
    segments: list[Segment] = []
    seen: dict[str, int] = {}
    for line, cells in rows:
        where = f"{file}:{line}"
        segment_id = _unique_id(where, "segment_id", cells[col["segment_id"]], seen, line)
        video = _relative_video(where, cells[col["video"]])
        start = _seconds(where, "start_sec", cells[col["start_sec"]], 0.0)
        stop = _seconds(where, "stop_sec", cells[col["stop_sec"]], math.nan)
        if start < 0:
            raise ManifestError(f"{where}: start_sec {start:g} is negative: times are seconds from the video's start")
        if stop <= start:  # False for NaN: an empty stop_sec runs to the end of the video
            raise ManifestError(f"{where}: stop_sec {stop:g} is not after start_sec {start:g}: fix the row's times")
        split = cells[col["split"]].strip()
        if not split:
            raise ManifestError(f"{where}: split is empty: write train, val, test or another name")
        labels = {head: _class_index(where, f"{LABEL_PREFIX}{head}", cells[i], None) for head, i in label_cols.items()}
        segments.append(Segment(segment_id, video, start, stop, split, labels))
    heads = {head: max([1] + [s.labels[head] + 1 for s in segments]) for head in label_cols}
    return _manifest(file, "generic", segments, heads)


def _label_columns(file: Path, header: list[str]) -> dict[str, int]:
    """label:<head> columns -> their index, in header order; any other unknown column is refused."""
    label_cols: dict[str, int] = {}
    for i, name in enumerate(header):
        if header.index(name) != i:
            raise ManifestError(f"{file}: header column '{name}' appears twice: keep one")
        if name in GENERIC_COLUMNS:
            continue
        head = name[len(LABEL_PREFIX):].strip() if name.startswith(LABEL_PREFIX) else ""
        if not head:
            raise ManifestError(
                f"{file}: header column '{name}' is not understood: a generic CSV has "
                f"{','.join(GENERIC_COLUMNS)} and label:<head> columns; rename or remove it"
            )
        label_cols[head] = i
    return label_cols


def _read_ssv2(file: Path, text: str) -> Manifest:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{file}:{err.lineno}: not valid JSON ({err.msg}): fix the file or give another manifest") from None
    if not entries:
        raise ManifestError(f"manifest {file} has no segments: add entries to the list or give another file")
    if not isinstance(entries[0], dict) or "id" not in entries[0]:
        raise ManifestError(f"manifest {file} is a JSON list but not of Something-Something v2 entries: {_FORMATS}")
    labels_file = _labels_beside(file)
    classes = _ssv2_classes(labels_file)
    split = _split_from_name(file)
    segments: list[Segment] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"{file}: entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), (str, int)):
            raise ManifestError(f"{where} has no 'id': every entry needs one, as in the SSv2 release")
        segment_id = _unique_id(where, "id", str(entry["id"]), seen, i, what="entry")
        _plain_name(where, "id", segment_id)
        template = entry.get("template")
        # Test entries come without a template: unlabelled.
        label = -1 if template is None else classes.get(_without_brackets(str(template)))
        if label is None:
            raise ManifestError(f"{where} (id {segment_id}): template '{template}' is not in {labels_file}: use the labels file of the same SSv2 release")
        segments.append(Segment(segment_id, segment_id, 0.0, math.nan, split, {SSV2_HEAD: label}))
    return _manifest(file, "ssv2", segments, {SSV2_HEAD: len(classes)})


def _labels_beside(file: Path) -> Path:
    folder = file.parent
    found = sorted(p for p in folder.iterdir() if p.name.endswith("labels.json") and p.is_file() and p.name != file.name)
    if not found:
        raise ManifestError(f"no *labels.json in {folder} beside SSv2 manifest {file.name}: put something-something-v2-labels.json there")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ManifestError(f"more than one *labels.json in {folder} ({names}): keep only the one for manifest {file.name}")
    return found[0]


def _ssv2_classes(labels_file: Path) -> dict[str, int]:
    """Class name without square brackets -> index, from SSv2's {"Approaching something ...": "0"} file."""
    try:
        labels = json.loads(labels_file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"labels file {labels_file} cannot be read ({err}): give the SSv2 labels.json") from None
    if not isinstance(labels, dict) or not labels:
        raise ManifestError(f"labels file {labels_file} is not a {{class name: index}} object: give the SSv2 labels.json")
    classes: dict[str, int] = {}
    for name, index in labels.items():
        if not str(index).isdigit():
            raise ManifestError(f"labels file {labels_file}: class '{name}' has index '{index}', not an integer: give the SSv2 labels.json")
        classes[_without_brackets(name)] = int(index)
    if sorted(classes.values()) != list(range(len(labels))):
        raise ManifestError(f"labels file {labels_file}: class indices are not 0..{len(labels) - 1}, each once: give the SSv2 labels.json")
    return classes


def _without_brackets(template: str) -> str:
    # Entries write "[something]" or "[Something]"; the labels file writes the same words without brackets.
    return template.replace("[", "").replace("]", "")


# --- cells -----------------------------------------------------------------------------------------


def _unique_id(where: str, column: str, text: str, seen: dict[str, int], place: int, what: str = "line") -> str:
    segment_id = text.strip()
    if not segment_id:
        raise ManifestError(f"{where}: {column} is empty: give every segment an id")
    if segment_id in seen:
        raise ManifestError(f"{where}: {column} '{segment_id}' repeats {what} {seen[segment_id]}: give every segment its own id")
    seen[segment_id] = place
    return segment_id


def _plain_name(where: str, column: str, text: str) -> str:
    # These ids become file names under --videos, so they must not reach into other folders.
    name = text.strip()
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ManifestError(f"{where}: {column} '{name}' is not a plain file name: fix the row")
    return name


def _relative_video(where: str, text: str) -> str:
    video = text.strip()
    if not video:
        raise ManifestError(f"{where}: video is empty: give the video's path relative to --videos")
    if os.path.isabs(video):
        raise ManifestError(f"{where}: video '{video}' is an absolute path: write it relative to --videos")
    if _escapes(video):
        raise ManifestError(f"{where}: video '{video}' leads outside the videos folder: keep videos under --videos")
    return video


def _escapes(relative: str) -> bool:
    normal = os.path.normpath(relative)
    return normal == os.pardir or normal.startswith(os.pardir + os.sep)


def _seconds(where: str, column: str, text: str, empty: float) -> float:
    text = text.strip()
    if not text:
        return empty
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ManifestError(f"{where}: {column} '{text}' is not a number: write seconds, e.g. 12.5")
    return value


def _timestamp(where: str, column: str, text: str) -> float:
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ManifestError(f"{where}: {column} '{text}' is not a HH:MM:SS.ff timestamp: fix the row")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _class_index(where: str, column: str, text: str, classes: int | None) -> int:
    text = text.strip()
    if not text:
        return -1
    if not (text.isascii() and text.isdigit()):
        raise ManifestError(f"{where}: {column} '{text}' is not a class index: write a non-negative integer, or leave it empty for unlabelled")
    index = int(text)
    if classes is not None and index >= classes:
        raise ManifestError(f"{where}: {column} {index} is out of range (the head has {classes} classes): fix the row")
    return index


# --- finding videos ----------------------------------------------------------------------------------


class _Finder:
    """Finds a manifest's videos under one root, listing each folder once: 10k segments share 100s of videos."""

    def __init__(self, manifest: Manifest, videos_root: str | os.PathLike) -> None:
        self.manifest = manifest
        # Absolute, not symlink-resolved: the paths must also work for workers that mount the same tree.
        self.root = Path(os.path.abspath(videos_root))
        self.real_root = self.root.resolve()
        self.listings: dict[Path, dict[str, str]] = {}

    def find(self, video: str) -> Path | None:
        if self.manifest.format == "epic100":
            participant = video.split("_", 1)[0]  # P01_11 -> P01
            return self._in_folder(self.root / participant / "videos", video, ".mp4") or self._in_folder(self.root, video, ".mp4")
        if self.manifest.format == "ssv2":
            return self._in_folder(self.root, video, ".webm")
        if self.manifest.format == "generic":
            return self._under_root(video)
        raise ManifestError(f"manifest {self.manifest.path} has format '{self.manifest.format}': read it with read_manifest")

    def _in_folder(self, folder: Path, stem: str, extension: str) -> Path | None:
        if folder not in self.listings:
            self.listings[folder] = _list_files(folder)
        name = self.listings[folder].get(stem + extension)
        return None if name is None else folder / name

    def _under_root(self, video: str) -> Path | None:
        if os.path.isabs(video) or _escapes(video):
            raise ManifestError(f"manifest {self.manifest.path}: video '{video}' leads outside the videos folder: keep videos under --videos")
        path = self.root / video
        # Resolving follows symlinks, so a link that points out of the root is refused too.
        if not path.resolve().is_relative_to(self.real_root):
            raise ManifestError(
                f"manifest {self.manifest.path}: video '{video}' leads outside the videos folder {self.root} "
                "through a symlink: keep videos under --videos"
            )
        return path if path.is_file() else None


def _list_files(folder: Path) -> dict[str, str]:
    """File name with its extension lower-cased -> the name on disk, so P01_11.MP4 and .mp4 both match."""
    try:
        with os.scandir(folder) as entries:
            return {_lower_extension(e.name): e.name for e in entries if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def _lower_extension(name: str) -> str:
    stem, extension = os.path.splitext(name)
    return stem + extension.lower()
