"""`manifest windows`: dense unlabelled windows over whole videos, as a generic CSV a cache can add.

Teacher logits on unlabelled windows are where soft labels help most, and EPIC-KITCHENS videos are
mostly unannotated. The CSV (`segment_id,video,start_sec,stop_sec,split`, no label columns) joins any
cache with `cache init --manifest` or `extract --manifest`: it brings no head, so its segments are
unlabelled for every head of the cache.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from egodistill.common import EgodistillError, ManifestError, atomic_write, check_number
from egodistill.extract.manifests import GENERIC_COLUMNS, read_manifests

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


@dataclass(frozen=True)
class Window:
    id: str
    video: str  # relative to the videos folder, as a generic CSV names it
    start_sec: float
    stop_sec: float


def video_windows(videos: str | os.PathLike, window: float, stride: float, exclude: Sequence[str | os.PathLike] = (),
                  on_progress: Callable[[int, int], None] | None = None) -> tuple[list[Window], list[str]]:
    """Every whole window of `window` seconds, `stride` apart, of every video under `videos`, minus windows that
    overlap a segment of the `exclude` manifests in the same video (matched by file stem, so EPIC's video_id
    P01_11 matches P01/videos/P01_11.MP4). Returns (windows, videos that could not be opened, with the reason)."""
    from egodistill.extract.decode import open_video

    check_number(ManifestError, "--window", window, above=0)
    check_number(ManifestError, "--stride", stride, above=0)
    root = Path(videos)
    if not root.is_dir():
        raise ManifestError(f"videos folder {root} {'is not a folder' if root.exists() else 'not found'}: check the --videos path")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise ManifestError(f"no video ({', '.join(VIDEO_EXTENSIONS)}) under {root}: check the --videos path")
    taken = _excluded_spans(exclude)
    windows: list[Window] = []
    unreadable: list[str] = []
    for done, path in enumerate(files, start=1):
        relative = path.relative_to(root).as_posix()
        try:
            with open_video(path) as video:
                duration = video.duration
        except EgodistillError as err:
            unreadable.append(f"{relative}: {err}")
            continue
        spans = taken.get(path.stem, [])
        count = int(math.floor((duration - window) / stride + 1e-9)) + 1 if duration >= window else 0
        for k in range(count):
            start = round(k * stride, 6)
            stop = round(start + window, 6)
            if not any(start < b and a < stop for a, b in spans):
                windows.append(Window(f"{relative}#w{k:06d}", relative, start, stop))
        if on_progress:
            on_progress(done, len(files))
    return windows, unreadable


def _excluded_spans(exclude: Sequence[str | os.PathLike]) -> dict[str, list[tuple[float, float]]]:
    spans: dict[str, list[tuple[float, float]]] = {}
    for manifest in (read_manifests(exclude, option="--exclude") if exclude else []):
        for s in manifest.segments:
            stop = math.inf if math.isnan(s.stop_sec) else s.stop_sec
            spans.setdefault(Path(s.video).stem, []).append((s.start_sec, stop))
    return spans


def write_windows(windows: Sequence[Window], out: str | os.PathLike, split: str = "train") -> Path:
    """The windows as a generic CSV without label columns, written atomically."""
    out = Path(out)
    if not out.parent.is_dir():
        raise ManifestError(f"--out {out}: folder {out.parent} does not exist: create it or choose another --out")
    if not split.strip():
        raise ManifestError("--split is empty: write train (distil on the windows) or another split name")
    if not windows:
        raise ManifestError("no window fits: every video is shorter than --window, or every window overlaps an --exclude segment")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(GENERIC_COLUMNS)
    writer.writerows((w.id, w.video, f"{w.start_sec:g}", f"{w.stop_sec:g}", split) for w in windows)
    return atomic_write(out, text.getvalue())
