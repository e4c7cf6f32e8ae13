"""Read a dataset's annotation files (EPIC-KITCHENS-100, Something-Something v2, generic CSV) into Manifests.

The format is recognised by content, never by file name, so a renamed file still reads. Every
error is a ManifestError with one line that names the file (and `path:LINE` for a bad row) and
says what to do.

A cache holds a dataset as released: one Manifest per file (each with the split its name says), in
the order they were added; segment ids are unique across them. `add_manifests` appends the files a
cache does not hold yet to its segments table, and `cache_manifests` gives every file a cache holds
or will hold, so `extract` plans over all of them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from egodistill.cache import UNLABELLED
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
    labels: dict[str, int]  # head name -> class index; UNLABELLED (-1) = unlabelled


@dataclass(frozen=True)
class Manifest:
    path: str
    format: str  # "epic100" | "ssv2" | "generic"
    segments: list[Segment]
    heads: dict[str, int]  # head name -> number of classes, in a stable order
    inferred: frozenset[str] = frozenset()  # heads whose count is only the largest label + 1 (a generic CSV that declares none)
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # head -> name of each class, where the file or --classes gives them


def read_manifest(path: str | os.PathLike, classes: dict[str, Sequence[str]] | None = None, option: str = "--manifest") -> Manifest:
    """Read an EPIC-KITCHENS-100 CSV, an SSv2 JSON list or a generic CSV, whichever the file holds.

    `classes` (head -> class names, e.g. from `read_classes`) names and sizes the file's heads of those names;
    `option` is the command-line option that gave the path, which an unreadable file's message names."""
    manifest = _read_any(Path(path), option)
    return _with_classes(manifest, classes) if classes else manifest


def _read_any(file: Path, option: str) -> Manifest:
    text = _read_text(file, option)
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


def segment_table(manifest: Manifest, heads: dict[str, int] | None = None):
    """The manifest as the cache's segments table (cache order = manifest order); with `heads`, labelled for
    those heads (UNLABELLED where the manifest has none of a head)."""
    import numpy as np

    from egodistill.cache.segments import SegmentTable

    segs = manifest.segments
    heads = dict(manifest.heads) if heads is None else dict(heads)
    return SegmentTable(
        ids=np.array([s.id for s in segs], dtype=object),
        videos=np.array([s.video for s in segs], dtype=object),
        start_sec=np.array([s.start_sec for s in segs], dtype=np.float64),
        stop_sec=np.array([s.stop_sec for s in segs], dtype=np.float64),
        split=np.array([s.split for s in segs], dtype=object),
        labels={h: np.array([s.labels.get(h, UNLABELLED) for s in segs], dtype=np.int32) for h in heads},
        heads=heads,
    )


def read_manifests(paths: Sequence[str | os.PathLike], classes: dict[str, Sequence[str]] | None = None, option: str = "--manifest") -> list[Manifest]:
    """Every file, each with its own split; a segment id in two files is one line naming both (`option`: see read_manifest)."""
    if not paths:
        raise ManifestError("no manifest given: pass --manifest FILE (repeat it for each file of a dataset)")
    manifests, seen = [], {}
    for path in dict.fromkeys(str(p) for p in paths):  # the same file twice is the same segments
        manifest = read_manifest(path, option=option)
        for s in manifest.segments:
            if s.id in seen:
                raise ManifestError(f"segment id '{s.id}' is in both {seen[s.id]} and {manifest.path}: give every segment of a cache its own id")
            seen[s.id] = manifest.path
        manifests.append(manifest)
    if classes:
        unknown = sorted(set(classes) - {h for m in manifests for h in m.heads})
        if unknown:
            raise ManifestError(f"--classes names head(s) {', '.join(unknown)} that no manifest has (they have: "
                                f"{', '.join(sorted({h for m in manifests for h in m.heads})) or 'none'}): name a label:<head> column")
        manifests = [_with_classes(m, classes) for m in manifests]
    return manifests


def read_classes(spec: str) -> tuple[str, list[str]]:
    """`HEAD=FILE` of `--classes`: the head and its class names in index order, read from FILE: one class name a
    line, EPIC-KITCHENS-100's classes CSV (id,key,...: the `key` column), or SSv2's labels JSON ({name: index})."""
    head, sep, name = spec.partition("=")
    if not sep or not head.strip() or not name.strip():
        raise ManifestError(f"--classes {spec!r} is not HEAD=FILE: write e.g. --classes verb=EPIC_100_verb_classes.csv")
    file = Path(name.strip())
    text = _read_text(file, "--classes", "classes file")
    if text.lstrip().startswith("{"):
        try:
            names = list(_ssv2_classes(file))
        except ManifestError as err:
            raise ManifestError(f"classes file {file}: {err}") from None
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        header = [c.strip() for c in next(csv.reader([lines[0]]))] if lines else []
        if {"id", "key"} <= set(header):
            rows = [dict(zip(header, cells)) for cells in csv.reader(lines[1:])]
            names = [r["key"] for r in sorted(rows, key=lambda r: int(r["id"]) if r["id"].strip().isdigit() else -1)]
        else:
            names = [line.strip() for line in lines]
    if not names:
        raise ManifestError(f"classes file {file} names no class: give one class name a line")
    return head.strip(), names


def _with_classes(manifest: Manifest, classes: dict[str, Sequence[str]]) -> Manifest:
    heads, inferred, names = dict(manifest.heads), set(manifest.inferred), dict(manifest.class_names)
    for head, given in classes.items():
        if head not in heads:
            continue
        count = len(given)
        if head not in inferred and heads[head] != count:
            raise ManifestError(f"manifest {manifest.path} declares {heads[head]} classes for head {head}, --classes {count}: make them agree")
        top = max((s.labels.get(head, UNLABELLED) for s in manifest.segments), default=UNLABELLED)
        if top >= count:
            raise ManifestError(f"manifest {manifest.path}: label:{head} {top} is out of range (--classes gives {count} classes): fix the labels or the classes file")
        heads[head], names[head] = count, tuple(given)
        inferred.discard(head)
    return replace(manifest, heads=heads, inferred=frozenset(inferred), class_names=names)


def cache_heads(manifests: Sequence[Manifest], stored: dict[str, int] | None = None) -> dict[str, int]:
    """The heads of a cache holding these files: declared counts must agree and inferred ones (largest label + 1)
    fit under them. Files added to a stored table bring no new head and no other count (teachers' logits are sized by it)."""
    heads = dict(stored or {})
    order = list(dict.fromkeys(h for m in manifests for h in m.heads))
    for head in order:
        declared = {m.heads[head]: m for m in manifests if head in m.heads and head not in m.inferred}
        inferred = [(m.heads[head], m) for m in manifests if head in m.inferred]
        if stored is not None and head not in stored:
            m = next(m for m in manifests if head in m.heads)
            raise ManifestError(f"manifest {m.path} has head {head}, which the cache's segments table lacks (it has: "
                                f"{', '.join(stored) or 'none'}): a cache's heads are set by its first manifests; use a new --cache")
        if stored is not None:
            declared.setdefault(stored[head], None)
        if len(declared) > 1:
            (c1, m1), (c2, m2) = list(declared.items())[:2]
            where = " and ".join(f"{m.path} {c}" if m else f"the cache {c}" for c, m in ((c1, m1), (c2, m2)))
            raise ManifestError(f"head {head} has different class counts ({where}): declare one count for every file "
                                f"(a header label:{head}:N, or --classes {head}=FILE)")
        count = next(iter(declared)) if declared else max(c for c, _ in inferred)
        too_many = [(c, m) for c, m in inferred if c > count]
        if too_many:
            c, m = too_many[0]
            raise ManifestError(f"manifest {m.path}: head {head} has {c} classes, the cache {count}: declare one count for "
                                f"every file (a header label:{head}:N, or --classes {head}=FILE)")
        heads[head] = count
    return heads


def cache_manifests(location: str, manifests: Sequence[Manifest], storage_options: dict | None = None) -> tuple[list[Manifest], list[Manifest], dict[str, int]]:
    """(every file the cache will hold, in cache order; those of `manifests` it does not hold yet; its heads),
    reading the cache without writing (a missing cache holds nothing yet)."""
    from egodistill.cache.catalog import open_existing

    target = open_existing(location, storage_options)
    if target is None or not target.has_segments:
        return list(manifests), list(manifests), cache_heads(manifests)
    return _partition(target, manifests)


def _held(manifest: Manifest, index: dict[str, tuple[int, Manifest]]) -> bool:
    """Whether the cache holds this file already (every id, in one file, in order); a partial overlap is refused."""
    hits = [index.get(s.id) for s in manifest.segments]
    found = [h for h in hits if h is not None]
    if not found:
        return False
    first = next(s for s, h in zip(manifest.segments, hits) if h is not None)
    other = index[first.id][1]
    whole = len(found) == len(hits) and all(m is other for _, m in found) and [i for i, _ in found] == list(range(found[0][0], found[0][0] + len(found)))
    if not whole or len(other.segments) != len(found):
        raise ManifestError(f"segment id '{first.id}' of {manifest.path} is already in the cache, from {other.path}: a manifest is added "
                            "whole and once; put new segments in a file of their own")
    return True


def stored_manifests(target) -> list[Manifest]:
    """The files a cache's segments table was read from, rebuilt from the table (one Manifest per file)."""
    table = target.segments
    info = target.segments_info
    out = []
    for entry in info["files"]:
        a, b = entry["segments"]
        segments = [Segment(str(table.ids[i]), str(table.videos[i]), float(table.start_sec[i]), float(table.stop_sec[i]), str(table.split[i]),
                            {h: int(v[i]) for h, v in table.labels.items()}) for i in range(a, b)]
        out.append(Manifest(path=str(entry.get("manifest", "")), format=str(entry.get("format", "generic")), segments=segments, heads=dict(table.heads)))
    return out


def add_manifests(target, manifests: Sequence[Manifest]) -> list[Manifest]:
    """Write the files the cache does not hold yet into its segments table (append-only); returns them.
    Under the table's lease: of two runs adding the same file, the second finds it there."""
    with target.segments_lease():
        if not target.has_segments:
            heads = cache_heads(manifests)
            whole = combine(manifests, heads)
            names = {h: list(n) for m in reversed(manifests) for h, n in m.class_names.items() if len(n) == heads.get(h)}
            target.write_segments(segment_table(whole, heads), _source(manifests[0]), _files(manifests, 0), names)
            return list(manifests)
        _, new, heads = _partition(target, manifests)
        if new:
            start = int(target.segments_info["count"])
            target.append_segments(segment_table(combine(new, heads), heads), _files(new, start))
        return new


def _partition(target, manifests: Sequence[Manifest]) -> tuple[list[Manifest], list[Manifest], dict[str, int]]:
    """(stored files + new ones, the new ones, the stored heads); new files are checked against the stored heads."""
    stored = stored_manifests(target)
    heads = {h: int(c) for h, c in target.segments_info["heads"].items()}
    index = {s.id: (i, m) for m in stored for i, s in enumerate(m.segments)}
    new = [m for m in manifests if not _held(m, index)]
    cache_heads(new, heads)
    return stored + new, new, heads


def combine(manifests: Sequence[Manifest], heads: dict[str, int] | None = None) -> Manifest:
    """The files as one Manifest, in order (what `extract` plans over); format "mixed" when they differ."""
    formats = {m.format for m in manifests}
    return Manifest(path=", ".join(m.path for m in manifests), format=formats.pop() if len(formats) == 1 else "mixed",
                    segments=[s for m in manifests for s in m.segments], heads=dict(heads if heads is not None else cache_heads(manifests)))


def _source(manifest: Manifest) -> dict:
    return {"format": manifest.format, "manifest": str(manifest.path)}


def _files(manifests: Sequence[Manifest], start: int) -> list[dict]:
    files = []
    for m in manifests:
        split = sorted({s.split for s in m.segments})
        files.append({**_source(m), "split": split[0] if len(split) == 1 else split, "segments": [start, start + len(m.segments)]})
        start += len(m.segments)
    return files


def init_cache(manifest_paths: Sequence[str | os.PathLike], location: str, classes: dict[str, Sequence[str]] | None = None,
               storage_options: dict | None = None) -> tuple[list[Manifest], int]:
    """`cache init`: write the manifests' segments table alone into the cache at `location` (created if absent).
    Files the cache holds already are checked and skipped; new ones are appended. Features can then be imported
    without any video. Returns (the files added, the cache's segment count)."""
    from egodistill.cache.catalog import open_cache

    manifests = read_manifests(manifest_paths, classes)
    target = open_cache(location, mode="a", storage_options=storage_options)
    added = add_manifests(target, manifests)
    return added, int(target.segments_info["count"])


# --- reading -------------------------------------------------------------------------------------


def _read_text(file: Path, option: str, noun: str = "manifest") -> str:
    """The file's text; `option` (--manifest, --exclude, --classes) is what the user fixes when it is missing."""
    try:
        # utf-8-sig: spreadsheets often save CSVs with a byte-order mark, which would spoil the header.
        return file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"{noun} {file} not found: check the {option} path") from None
    except IsADirectoryError:
        raise ManifestError(f"{noun} {file} is a folder: give the {option} file itself") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{noun} {file} is not UTF-8 text: {_FORMATS if noun == 'manifest' else 'give a text file'}") from None
    except OSError as err:
        raise ManifestError(f"{noun} {file} cannot be read ({err.strerror}): check its permissions") from None


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
            head: UNLABELLED if i is None else _class_index(where, f"{head}_class", cells[i], EPIC_HEADS[head])
            for head, i in label_cols.items()
        }
        segments.append(Segment(segment_id, video, start, stop, split, labels))
    return _manifest(file, "epic100", segments, dict(EPIC_HEADS))


def _read_generic(file: Path, header: list[str], rows: Iterator[tuple[int, list[str]]]) -> Manifest:
    col = {name: i for i, name in enumerate(header)}
    label_cols = _label_columns(file, header)
    declared = {head: count for head, (_, count) in label_cols.items() if count is not None}
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
        labels = {head: _class_index(where, f"{LABEL_PREFIX}{head}", cells[i], declared.get(head)) for head, (i, _) in label_cols.items()}
        segments.append(Segment(segment_id, video, start, stop, split, labels))
    heads = {head: declared.get(head) or max([1] + [s.labels[head] + 1 for s in segments]) for head in label_cols}
    manifest = _manifest(file, "generic", segments, heads)
    return replace(manifest, inferred=frozenset(h for h in heads if h not in declared))


def _label_columns(file: Path, header: list[str]) -> dict[str, tuple[int, int | None]]:
    """label:<head>[:<classes>] columns -> (their index, the declared number of classes or None), in header order;
    any other unknown column is refused."""
    label_cols: dict[str, tuple[int, int | None]] = {}
    for i, name in enumerate(header):
        if header.index(name) != i:
            raise ManifestError(f"{file}: header column '{name}' appears twice: keep one")
        if name in GENERIC_COLUMNS:
            continue
        head, _, count = (name[len(LABEL_PREFIX):] if name.startswith(LABEL_PREFIX) else "").partition(":")
        head, count = head.strip(), count.strip()
        if not head:
            raise ManifestError(
                f"{file}: header column '{name}' is not understood: a generic CSV has "
                f"{','.join(GENERIC_COLUMNS)} and label:<head> or label:<head>:<classes> columns; rename or remove it"
            )
        if count and not (count.isascii() and count.isdigit() and int(count) > 0):
            raise ManifestError(f"{file}: header column '{name}' declares '{count}' classes: write a positive integer, e.g. label:{head}:97")
        if head in label_cols:
            raise ManifestError(f"{file}: head '{head}' has two label columns: keep one")
        label_cols[head] = (i, int(count) if count else None)
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
        label = UNLABELLED if template is None else classes.get(_without_brackets(str(template)))
        if label is None:
            raise ManifestError(f"{where} (id {segment_id}): template '{template}' is not in {labels_file}: use the labels file of the same SSv2 release")
        segments.append(Segment(segment_id, segment_id, 0.0, math.nan, split, {SSV2_HEAD: label}))
    manifest = _manifest(file, "ssv2", segments, {SSV2_HEAD: len(classes)})
    return replace(manifest, class_names={SSV2_HEAD: tuple(sorted(classes, key=classes.get))})


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
        return UNLABELLED
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
