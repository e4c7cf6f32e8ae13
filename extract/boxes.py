"""The `layout` modality: object and hand boxes per sampled frame as feature rows, no model and no pixels.

Box files:
  - Something-Else JSON: `{video_id: [frame, ...]}`, each frame `{"name": "<video>/0001.jpg"` (or
    `"frame": 1`), `"labels": [{"box2d": {"x1", "y1", "x2", "y2"}, "category", "gt_annotation"` or
    `"standard_category"`, optional `"score"`}], optional `"gt_placeholders"`, `"width"`, `"height"`}.
  - CSV with header `video,time_sec,x1,y1,x2,y2,category[,score][,width,height]` (or `frame` for
    `time_sec`): one box per line.
Frame numbers are 1-based as in Something-Else's file names: frame n is at (n - 1) / --box-fps
(Something-Else annotates at 12 frames per second).

A row (one per sampled time; the nearest annotated frame within the segment) is K boxes x
[x1, y1, x2, y2, category, score, valid]: coordinates divided by the frame's width and height (from
the box file, else --frame-size WxH, else the video's header; pixels are never decoded), category 1
for a hand and 2 + N for object placeholder N, score 1 when the file has none, valid 1; the rest of
the K slots are zeros (valid 0). Hands come first, then objects by placeholder, each by score.
Its timestamp is the annotated frame's time. The row's format is `BoxRow` (cache/records.py), recorded
in the teacher's provenance as preprocessing["row"]. The box file's video keys match the manifest's
videos by id, file stem or relative path (extract/names.py). Segments whose video has no boxes, or
whose span holds no annotated frame, go to the ledger.

`box_rows` is this modality's side of the one extraction driver (extract/tasks.py): it gives a
task's rows; planning, lease, records, ledger and resume are the driver's.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from egodistill.cache.records import BOX_FIELDS, BoxRow, Failure, SamplingPolicy
from egodistill.common import ExtractError, MediaError, file_sha256
from egodistill.extract.tasks import TaskRows

if TYPE_CHECKING:
    from egodistill.extract.worker import SegmentJob, TaskSpec

HAND = 1
OBJECT_BASE = 2
DEFAULT_MAX_BOXES = 14   # Radevski et al.'s layout teacher: at most 14 boxes per frame
SOMETHING_ELSE_FPS = 12.0


@dataclass
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    category: int
    score: float = 1.0


@dataclass
class Frame:
    time: float
    boxes: list[Box]
    size: tuple[float, float] | None = None   # (width, height) when the file says


@dataclass
class VideoBoxes:
    frames: list[Frame] = field(default_factory=list)   # sorted by time

    @property
    def times(self) -> np.ndarray:
        return np.array([f.time for f in self.frames], dtype=np.float64)


# --- reading box files --------------------------------------------------------------------

def read_boxes(path: str | Path, box_fps: float) -> dict[str, VideoBoxes]:
    """Every video's annotated frames from a Something-Else JSON or a box CSV; ExtractError naming the file when neither."""
    file = Path(path)
    if not file.is_file():
        raise ExtractError(f"--boxes {path} {'is a folder' if file.is_dir() else 'not found'}: give the box annotation file (JSON or CSV)")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ExtractError(f"--boxes {path} is not UTF-8 text: give a Something-Else JSON or a CSV video,time_sec,x1,y1,x2,y2,category") from None
    videos = _read_json(file, text, box_fps) if text.lstrip()[:1] in ("{", "[") else _read_csv(file, text, box_fps)
    for boxes in videos.values():
        boxes.frames.sort(key=lambda f: f.time)
    if not videos:
        raise ExtractError(f"--boxes {path} holds no boxes")
    return videos


_NUMBER = re.compile(r"(\d+)")
_PLACEHOLDER = re.compile(r"object\s*(\d+)", re.IGNORECASE)


def _category(label: dict, placeholders: list, seen: dict[str, int]) -> int:
    """1 for a hand, 2 + N for object placeholder N (gt_annotation "object N", standard_category "000N",
    the index in gt_placeholders), else 2 + the order in which the video's names first appear."""
    for key in ("gt_annotation", "standard_category"):
        value = str(label.get(key, "")).strip()
        if value.lower().startswith("hand"):
            return HAND
        match = _PLACEHOLDER.fullmatch(value)
        if match or value.isdigit():
            return OBJECT_BASE + int(match[1] if match else value)
    name = str(label.get("category", "")).strip()
    if name.lower().startswith("hand"):
        return HAND
    if name in placeholders:
        return OBJECT_BASE + placeholders.index(name)
    if name.isdigit():
        return OBJECT_BASE + int(name)
    return OBJECT_BASE + seen.setdefault(name, len(seen))


def _read_json(file: Path, text: str, box_fps: float) -> dict[str, VideoBoxes]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ExtractError(f"--boxes {file}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise ExtractError(f"--boxes {file}: expected Something-Else's {{video_id: [frame, ...]}}, found a JSON {type(data).__name__}")
    videos = {}
    for video, frames in data.items():
        if not isinstance(frames, list):
            raise ExtractError(f"--boxes {file}: video {video} maps to a {type(frames).__name__}, not a list of frames")
        out, seen = VideoBoxes(), {}
        for k, frame in enumerate(frames):
            where = f"--boxes {file}: video {video}, frame {k}"
            try:
                number = int(frame["frame"]) if "frame" in frame else int(_NUMBER.findall(Path(str(frame["name"])).stem)[-1])
                placeholders = [str(p) for p in frame.get("gt_placeholders", [])]
                boxes = [Box(*(float(label["box2d"][c]) for c in ("x1", "y1", "x2", "y2")), _category(label, placeholders, seen),
                             float(label.get("score", 1.0))) for label in frame.get("labels", [])]
                size = (float(frame["width"]), float(frame["height"])) if "width" in frame and "height" in frame else None
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
                raise ExtractError(f"{where}: {type(err).__name__} {err}: each frame needs \"name\" (or \"frame\") and \"labels\" with box2d x1,y1,x2,y2") from None
            out.frames.append(Frame((number - 1) / box_fps, boxes, size))
        videos[str(video)] = out
    return videos


def _read_csv(file: Path, text: str, box_fps: float) -> dict[str, VideoBoxes]:
    rows = csv.reader(text.splitlines())
    header = [h.strip() for h in next(rows, [])]
    when = "time_sec" if "time_sec" in header else "frame"
    needed = ("video", when, "x1", "y1", "x2", "y2", "category")
    if not set(needed) <= set(header):
        raise ExtractError(f"--boxes {file}: a box CSV needs the header video,time_sec (or frame),x1,y1,x2,y2,category[,score][,width,height]; found {','.join(header)}")
    col = {h: i for i, h in enumerate(header)}
    frames: dict[str, dict[float, Frame]] = {}
    seen: dict[str, dict[str, int]] = {}
    for line, cells in enumerate(rows, start=2):
        if not any(c.strip() for c in cells):
            continue
        try:
            video = cells[col["video"]].strip()
            t = float(cells[col["time_sec"]]) if when == "time_sec" else (float(cells[col["frame"]]) - 1) / box_fps
            label = {"category": cells[col["category"]]}
            box = Box(*(float(cells[col[c]]) for c in ("x1", "y1", "x2", "y2")), _category(label, [], seen.setdefault(video, {})),
                      float(cells[col["score"]]) if "score" in col and cells[col["score"]].strip() else 1.0)
            size = (float(cells[col["width"]]), float(cells[col["height"]])) if "width" in col and "height" in col else None
        except (IndexError, ValueError) as err:
            raise ExtractError(f"--boxes {file}:{line}: {err}: fix the row (numbers for {when}, x1, y1, x2, y2)") from None
        if not math.isfinite(t):
            raise ExtractError(f"--boxes {file}:{line}: {when} is not a number")
        frame = frames.setdefault(video, {}).setdefault(t, Frame(t, [], size))
        frame.boxes.append(box)
    return {v: VideoBoxes(list(by_time.values())) for v, by_time in frames.items()}


# --- rows ---------------------------------------------------------------------------------

def frame_row(frame: Frame, size: tuple[float, float], max_boxes: int) -> np.ndarray:
    """K x [x1, y1, x2, y2, category, score, valid], flattened; coordinates divided by (width, height)."""
    w, h = size
    row = np.zeros((max_boxes, len(BOX_FIELDS)), np.float32)  # BoxRow(max_boxes), flattened below
    boxes = sorted(frame.boxes, key=lambda b: (b.category, -b.score))[:max_boxes]
    for k, b in enumerate(boxes):
        row[k] = (b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h, b.category, b.score, 1.0)
    return row.reshape(-1)


def sample_times(policy: SamplingPolicy, rows: int, start: float, stop: float) -> np.ndarray:
    """The times of a segment's rows: centres of `frames` equal bins, or start + (k + 0.5) / fps."""
    if policy.frames is not None:
        return start + (np.arange(rows) + 0.5) * (stop - start) / rows
    return start + (np.arange(rows) + 0.5) / policy.fps


def segment_rows(boxes: VideoBoxes | None, policy: SamplingPolicy, rows: int, start: float, stop: float, size, max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    """A segment's rows and their times; MediaError (a ledger entry) when it has no boxes."""
    if boxes is None or not boxes.frames:
        raise MediaError("no boxes for this video in --boxes")
    times = boxes.times
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    end = stop if math.isfinite(stop) else times[-1] + step
    inside = np.flatnonzero((times >= start) & (times < end))
    if len(inside) == 0:
        raise MediaError(f"no annotated frame within [{start:g}, {end:g}) s (boxes span {times[0]:g}-{times[-1]:g} s)")
    wanted = sample_times(policy, rows, start, end)
    nearest = inside[np.abs(times[inside][None, :] - wanted[:, None]).argmin(axis=1)]
    features = []
    for j in nearest:
        frame = boxes.frames[j]
        frame_size = frame.size or size
        if frame_size is None:
            raise MediaError("frame size unknown: the box file has no width/height, and neither --frame-size nor the video is there")
        features.append(frame_row(frame, frame_size, max_boxes))
    return np.stack(features), times[nearest].astype(np.float32)


def video_size(path: Path | None) -> tuple[float, float] | None:
    """(width, height) from the video's header (no frame is decoded), or None without a readable video."""
    if path is None:
        return None
    import av

    try:
        with av.open(str(path)) as container:
            context = container.streams.video[0].codec_context
            return float(context.width), float(context.height)
    except (av.error.FFmpegError, IndexError, OSError):
        return None


# --- the modality's options and its rows ------------------------------------------------------

def parse_frame_size(value) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(value))
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError("give WIDTHxHEIGHT in pixels, e.g. 427x240")
    return int(match[1]), int(match[2])


def layout_settings(options: dict) -> dict:
    if not options.get("boxes"):
        raise ExtractError("--modality layout needs --boxes FILE (Something-Else JSON or a CSV video,time_sec,x1,y1,x2,y2,category)")
    return {
        "boxes": file_sha256(options["boxes"]) if Path(options["boxes"]).is_file() else options["boxes"],
        "max_boxes": options["max_boxes"], "box_fps": options["box_fps"],
        "frame_size": list(options["frame_size"]) if options["frame_size"] else "box file, else video header",
        "row": BoxRow(options["max_boxes"]).to_json(), "categories": {"padding": 0, "hand": HAND, "object N": f"{OBJECT_BASE} + N"},
    }


def box_row_shape(settings: dict) -> tuple[int]:
    return (BoxRow(settings["row"]["max_boxes"]).width,)


@lru_cache(maxsize=1)
def _boxes_file(path: str, box_fps: float, sha256: str) -> dict[str, VideoBoxes]:
    """The box file read once per process (the driver to match names, each worker for its tasks); the sha256
    keys the cache so a changed file is read again."""
    return read_boxes(path, box_fps)


def box_names(options: dict, settings: dict) -> list[str]:
    """The box file's video keys, to match to the manifest's videos (extract/names.py)."""
    return list(_boxes_file(options["boxes"], options["box_fps"], settings["boxes"]))


def box_rows(spec: TaskSpec, jobs: list[SegmentJob], device: str) -> TaskRows:
    """One task's rows from the box file (the job's `name` is its video's key there); a segment without boxes
    is failed, its rows NaN."""
    options = spec.options
    videos = _boxes_file(options["boxes"], options["box_fps"], spec.settings["boxes"])
    dim = BoxRow(options["max_boxes"]).width
    sizes: dict[str | None, tuple[float, float] | None] = {}
    features, times, failed = [], [], []
    for job in jobs:
        if job.video not in sizes:
            sizes[job.video] = tuple(options["frame_size"]) if options["frame_size"] else video_size(Path(job.video) if job.video else None)
        try:
            f, t = segment_rows(videos.get(job.name) if job.name else None, spec.policy, job.rows, job.start, job.stop, sizes[job.video], options["max_boxes"])
        except MediaError as err:
            failed.append(Failure(job.index, job.segment_id, job.video, str(err), expected_rows=job.rows))
            f, t = np.full((job.rows, dim), np.nan, np.float32), np.full(job.rows, np.nan, np.float32)
        features.append(f)
        times.append(t)
    return TaskRows(np.concatenate(features).astype(np.float16), np.concatenate(times), failed=failed)
