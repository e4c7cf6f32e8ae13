"""Which frames of a segment become feature rows: segment-uniform N frames or a fixed rate."""

from __future__ import annotations

import math

import numpy as np

from egodistill.cache.errors import ExtractError, MediaError


def sampling_policy(frames: int | None, fps: float | None) -> dict:
    """The run's policy as stored in the cache: {"frames": N} or {"fps": F}; frames=8 by default."""
    if frames is not None and fps is not None:
        raise ExtractError("give --frames or --fps, not both")
    if fps is not None:
        if not math.isfinite(fps) or fps <= 0:
            raise ExtractError(f"--fps must be a positive number of rows per second, got {fps}")
        return {"fps": float(fps)}
    frames = 8 if frames is None else frames
    if frames < 1:
        raise ExtractError(f"--frames must be at least 1, got {frames}")
    return {"frames": int(frames)}


def rows_for(policy: dict, start: float, stop: float) -> int:
    """Rows a segment gets under the policy; stop must be known (not NaN) for a rate policy."""
    if "frames" in policy:
        return policy["frames"]
    return max(1, math.floor((stop - start) * policy["fps"]))


def sample_indices(policy: dict, rows: int, start: float, stop: float, video_fps: float, num_frames: int) -> np.ndarray:
    """`rows` frame indices for one segment (rows as planned); NaN stop = end of video.

    Raises MediaError when the segment lies outside the video."""
    duration = num_frames / video_fps
    if not math.isfinite(stop):
        stop = duration
    if start >= duration:
        raise MediaError(f"segment starts at {start:.2f} s, after the end of the video ({duration:.2f} s): check the manifest's times")
    stop = min(stop, duration)
    if "frames" in policy:
        n = rows
        first = min(int(round(start * video_fps)), num_frames - 1)
        last = max(first + 1, min(int(round(stop * video_fps)), num_frames))
        # Centre of each of n equal bins, as TSN-style segment sampling at test time.
        centres = first + (np.arange(n) + 0.5) * (last - first) / n
        return np.clip(np.floor(centres).astype(np.int64), 0, num_frames - 1)
    times = start + (np.arange(rows) + 0.5) / policy["fps"]
    return np.clip(np.floor(times * video_fps).astype(np.int64), 0, num_frames - 1)
