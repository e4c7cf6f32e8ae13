"""Which frames of a segment become feature rows: segment-uniform N frames or a fixed rate, read one frame
per row (image backbones) or in clip windows (clip backbones: one row per output time step of each window)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from egodistill.cache.records import Clip, SamplingPolicy
from egodistill.common import ExtractError, MediaError

DEFAULT_FRAMES = 8


def sampling_policy(frames: int | None, fps: float | None) -> SamplingPolicy:
    """The run's policy from --frames/--fps: N segment-uniform frames or F per second; 8 frames by default."""
    if frames is not None and fps is not None:
        raise ExtractError("give --frames or --fps, not both")
    if fps is not None:
        if not math.isfinite(fps) or fps <= 0:
            raise ExtractError(f"--fps must be a positive number of rows per second, got {fps}")
        return SamplingPolicy(fps=float(fps))
    frames = DEFAULT_FRAMES if frames is None else frames
    if frames < 1:
        raise ExtractError(f"--frames must be at least 1, got {frames}")
    return SamplingPolicy(frames=int(frames))


def clip_policy(policy: SamplingPolicy, clip_frames: int, clip_stride: int, steps: int) -> SamplingPolicy:
    """The policy of a clip backbone: windows of `clip_frames` sampled frames, `clip_stride` apart, each
    giving `steps` rows (the model's output time steps for such a window)."""
    for flag, value in (("--clip-frames", clip_frames), ("--clip-stride", clip_stride)):
        if value < 1:
            raise ExtractError(f"{flag} must be at least 1, got {value}")
    return replace(policy, clip=Clip(int(clip_frames), int(clip_stride), int(steps)))


def frames_for(policy: SamplingPolicy, start: float, stop: float) -> int:
    """Frames sampled from a segment under the policy; stop must be known (not NaN) for a rate policy."""
    if policy.frames is not None:
        return policy.frames
    return max(1, math.floor((stop - start) * policy.fps))


def rows_from_frames(policy: SamplingPolicy, frames: int) -> int:
    clip = policy.clip
    return frames if clip is None else len(clip_windows(frames, clip)) * clip.steps


def clip_windows(frames: int, clip: Clip) -> np.ndarray:
    """[windows, clip frames] positions into a segment's `frames` sampled frames: windows of clip.frames
    consecutive samples, clip.stride apart (frames after the last whole window are not read); a segment
    shorter than one window gives one window with its last frame repeated."""
    size, stride = clip.frames, clip.stride
    starts = np.arange(0, max(frames - size, 0) + 1, stride)
    return np.minimum(starts[:, None] + np.arange(size)[None, :], frames - 1)


def step_times(frame_times: np.ndarray, steps: int) -> np.ndarray:
    """Timestamps of a clip model's rows: [windows, clip frames] frame times -> [windows * steps], each output
    step stamped with the centre time of the frames it covers (step s of T' covers frames s*K/T' to (s+1)*K/T')."""
    size = frame_times.shape[1]
    edges = np.floor(np.arange(steps + 1) * size / steps).astype(np.int64)
    first, last = edges[:-1], np.maximum(edges[1:], edges[:-1] + 1) - 1
    return ((frame_times[:, first] + frame_times[:, last]) / 2).reshape(-1)


def sample_indices(policy: SamplingPolicy, rows: int, start: float, stop: float, video_fps: float, num_frames: int) -> np.ndarray:
    """`rows` frame indices for one segment (rows as planned); NaN stop = end of video.

    Raises MediaError when the segment lies outside the video."""
    duration = num_frames / video_fps
    if not math.isfinite(stop):
        stop = duration
    if start >= duration:
        raise MediaError(f"segment starts at {start:.2f} s, after the end of the video ({duration:.2f} s): check the manifest's times")
    stop = min(stop, duration)
    if policy.frames is not None:
        n = rows
        first = min(int(round(start * video_fps)), num_frames - 1)
        last = max(first + 1, min(int(round(stop * video_fps)), num_frames))
        # Centre of each of n equal bins, as TSN-style segment sampling at test time.
        centres = first + (np.arange(n) + 0.5) * (last - first) / n
        return np.clip(np.floor(centres).astype(np.int64), 0, num_frames - 1)
    times = start + (np.arange(rows) + 0.5) / policy.fps
    return np.clip(np.floor(times * video_fps).astype(np.int64), 0, num_frames - 1)
