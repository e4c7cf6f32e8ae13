"""Decodes video frames and audio, with decord first and PyAV where decord fails.

`open_video` returns a `Video` that reads frames by index, whatever the backend. decord is
tried first; PyAV takes over when decord cannot open a file, when a read fails (the switch
happens inside `Video.frames`, transparently), and for codecs decord is known to mis-decode
(VP9, the codec of SSv2's .webm files: decord's `get_batch` fails there with "Error sending
packet"). `Video.backend` says which one is in use and `Video.fallback_reason` why PyAV took
over, so a caller can log it once per run. Every problem with a file is raised as
`MediaError`, one line that names the file.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from egodistill.common import MediaError

try:  # decord has no wheels for some platforms: PyAV then does all the work
    import decord
    from decord import AudioReader, VideoReader, cpu

    decord.logging.set_level(decord.logging.QUIET)  # its failures become MediaError or a fallback reason
except ImportError:  # pragma: no cover - decord is installed wherever the tests run
    decord = None

# Codecs decord opens but cannot batch-decode: research/stack.md measured "Error sending packet" from
# get_batch on VP9 .webm. The small VP9 files at hand (shared/real, ffmpeg-made) did decode with
# decord 0.6, so this is a precaution for SSv2; PyAV gives the same frames, only somewhat slower.
DECORD_UNRELIABLE = {
    "vp9": "decord cannot batch-decode VP9 ('Error sending packet')",
    # Measured on ../shared/real/videos/mmaction2_test.avi (MPEG-4 Part 2, packed B-frames): decord's last
    # frame differs from a sequential decode by up to 254 grey levels; PyAV's matches it exactly.
    "mpeg4": "decord returns wrong frames near the end of MPEG-4 Part 2 streams (packed B-frames)",
}


_CLOCK = threading.local()


def decode_clock() -> float:
    """Seconds this thread has spent opening videos and decoding frames or audio: the difference of two
    readings is the decode time of the work in between (the extract summary's "decode")."""
    return getattr(_CLOCK, "seconds", 0.0)


def _timed(fn):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        depth = getattr(_CLOCK, "depth", 0)
        if depth:  # inside another timed call (frames -> frames): counted there
            return fn(*args, **kwargs)
        started, _CLOCK.depth = time.perf_counter(), 1
        try:
            return fn(*args, **kwargs)
        finally:
            _CLOCK.seconds, _CLOCK.depth = decode_clock() + time.perf_counter() - started, 0
    return timed


def _short(err: BaseException) -> str:
    """The gist of a decord or FFmpeg error, on one line, without log prefixes or paths."""
    if isinstance(err, av.error.FFmpegError) and err.strerror:
        return str(err.strerror)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    text = re.sub(r"^\[[\d:]+\]\s*\S+:\d+:\s*", "", text)  # decord's "[hh:mm:ss] file.cc:123: "
    return text[:160]


def _check_file(path: str | Path, what: str = "video") -> Path:
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{what} {path} not found: check the path")
    if not path.is_file():
        raise MediaError(f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise MediaError(f"{what} {path} is empty (0 bytes): re-copy it")
    return path


def _probe_codec(path: Path) -> str | None:
    """The video codec's name (e.g. "h264", "vp9"), or None when PyAV cannot tell."""
    try:
        with av.open(str(path)) as container:
            return container.streams.video[0].codec_context.name if container.streams.video else None
    except (av.error.FFmpegError, OSError, ValueError):
        return None


class _PyAVFrames:
    """Frames by index with PyAV: decode forward from a key frame and count frames in display order.

    Frame i is the i-th frame the decoder outputs, as in decord. A read from the start counts from
    the first frame; a read further in seeks to the key frame before it and takes that frame's
    index from its timestamp, round((pts - first pts) * time_base * fps), then counts on (exact
    for constant frame rate). Timestamps alone are not enough: AVI files with packed B-frames give
    frames out-of-order timestamps. The decoder is kept between calls, so sorted reads that move
    forward (segment after segment) continue without seeking.
    """

    def __init__(self, path: Path):
        self.path = path
        self._open()
        try:
            stream = self.stream
            if stream is None:
                raise MediaError(f"video {path} has no video stream")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate or rate <= 0:
                raise MediaError(f"cannot decode video {path}: its frame rate is unknown")
            self.fps = float(rate)
            self.time_base = stream.time_base or Fraction(1, 1000)
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            self.num_frames = stream.frames if stream.frames > 0 else self._count_frames()
            self._gap = max(1, round(2 * self.fps))  # decode forward across gaps up to ~2 s, else seek
            self._error: str | None = None  # the last decode error, to explain missing frames
            self.origin = None
            head = self._restart()
            if head is None:
                raise MediaError(f"cannot decode video {path}: no frame decodes ({self._error or 'no video data'})")
            self.origin = head[1].pts  # the first frame's timestamp: index 0
            self._iter = None
        except BaseException:
            self.container.close()
            raise

    def _open(self) -> None:
        self.container = av.open(str(self.path))
        self.stream = self.container.streams.video[0] if self.container.streams.video else None
        if self.stream is not None:
            self.stream.thread_type = "AUTO"
        self._iter: Iterator[tuple[int | None, av.VideoFrame]] | None = None
        self._last = -1  # index of the last frame the decoder handed out

    def _count_frames(self) -> int:
        """Video packets in the file (Matroska/WebM store no frame count); reads, does not decode."""
        count = 0
        demux = self.container.demux(self.stream)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.error.FFmpegError:  # cut-off file: count what is there
                break
            if packet.size:
                count += 1
        return count

    def _decoded(self, start: int | None) -> Iterator[tuple[int | None, av.VideoFrame]]:
        """(index, frame) from the current position to the end; damaged packets are skipped, as ffmpeg does.

        The first frame is `start`, or (start=None) what its timestamp says, None when it has none.
        """
        demux = self.container.demux(self.stream)
        index = None if start is None else start - 1
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except av.error.FFmpegError as err:
                self._error = _short(err)
                return
            try:
                frames = packet.decode()
            except av.error.FFmpegError as err:
                self._error = _short(err)
                continue
            for frame in frames:
                if index is None:
                    if frame.pts is None or self.origin is None:
                        yield None, frame
                        return
                    index = round(float((frame.pts - self.origin) * self.time_base) * self.fps)
                else:
                    index += 1
                self._last = index
                yield index, frame

    def _restart(self) -> tuple[int, av.VideoFrame] | None:
        """Put the decoder at frame 0 and return that frame (None when nothing decodes)."""
        try:
            self.container.seek(self.stream.start_time or 0, stream=self.stream, backward=True, any_frame=False)
            self._iter, self._last = self._decoded(0), -1
            head = next(self._iter, None)
        except av.error.FFmpegError:
            head = None
        if self.origin is not None and (head is None or head[1].pts != self.origin):
            self.container.close()  # the seek did not reach the first frame: start afresh
            self._open()
            self._iter = self._decoded(0)
            head = next(self._iter, None)
        return head

    def _from(self, first: int) -> Iterator[tuple[int | None, av.VideoFrame]]:
        """Frames from a decoder position at or before `first`: continuing, seeking, or from the start."""
        if self._iter is None or not (self._last < first <= self._last + self._gap):
            head = None
            if first > 0 and self.origin is not None:
                target = self.origin + int(Fraction(first) / Fraction(self.fps) / self.time_base)
                self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
                self._iter, self._last = self._decoded(None), -1
                head = next(self._iter, None)
                if head is not None and (head[0] is None or head[0] > first):
                    head = None  # no timestamp, or the seek landed past the frame
            if head is None:
                head = self._restart()
            if head is not None:
                yield head
        for item in self._iter:  # a plain loop: stopping early must not close the shared decoder
            yield item

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at sorted, unique `indices` as uint8 [K, H, W, 3] RGB."""
        found: dict[int, np.ndarray] = {}
        groups = np.split(indices, np.flatnonzero(np.diff(indices) > self._gap) + 1)
        for group in groups:
            wanted, last = set(group.tolist()), int(group[-1])
            try:
                for index, frame in self._from(int(group[0])):
                    if index in wanted and index not in found:
                        found[index] = frame.to_ndarray(format="rgb24")
                    if index >= last:
                        break
            except av.error.FFmpegError as err:  # a seek that fails on a damaged file
                self._error = _short(err)
            missing = wanted - found.keys()
            if missing:
                self._iter = None  # a failed read leaves no position worth keeping
                why = f" ({self._error})" if self._error else ""
                raise MediaError(
                    f"cannot decode video {self.path}: frame {min(missing)} of {self.num_frames} could not be "
                    f"decoded{why}; the file may be truncated or damaged"
                )
        return np.stack([found[int(i)] for i in indices])

    def close(self) -> None:
        self._iter = None
        self.container.close()


class Video:
    """An open video: frame count, fps, duration, and random access to frames by index."""

    def __init__(self, path: Path, backend: str, fps: float, num_frames: int, *, reader=None,
                 pyav: _PyAVFrames | None = None, fallback_reason: str | None = None):
        self.path = path
        self.backend = backend
        self.fps = float(fps)
        self.num_frames = int(num_frames)
        self.duration = self.num_frames / self.fps  # seconds covered by the frames
        self.fallback_reason = fallback_reason  # why PyAV stands in for decord, or None
        self._decord = reader
        self._pyav = pyav

    def __repr__(self) -> str:
        return f"Video({str(self.path)!r}, backend={self.backend!r}, fps={self.fps:g}, num_frames={self.num_frames})"

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frame_times(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Seconds from the start of the video of each frame (index / fps), float64."""
        return np.asarray(indices, dtype=np.float64) / self.fps

    @_timed
    def frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 [K, H, W, 3] RGB frames at `indices` (any order, repeats allowed)."""
        wanted = np.asarray(indices)
        if wanted.size and not np.issubdtype(wanted.dtype, np.integer):
            if not np.all(np.mod(wanted, 1) == 0):
                raise ValueError(f"frame indices must be whole numbers, got {wanted.tolist()[:8]}")
        wanted = wanted.astype(np.int64).reshape(-1)
        bad = wanted[(wanted < 0) | (wanted >= self.num_frames)]
        if bad.size:
            raise MediaError(f"video {self.path} has {self.num_frames} frames: frame {int(bad[0])} is out of range")
        if not wanted.size:
            return self.frames([0])[:0] if self.num_frames else np.zeros((0, 0, 0, 3), np.uint8)
        unique, inverse = np.unique(wanted, return_inverse=True)
        return self._read(unique)[inverse.reshape(-1)]

    def _read(self, unique: np.ndarray) -> np.ndarray:
        if self._decord is not None:
            try:
                return self._decord.get_batch(unique.tolist()).asnumpy()
            except Exception as err:  # decord raises DECORDError/RuntimeError: let PyAV try the same frames
                self._switch_to_pyav(f"decord failed reading frames ({_short(err)})")
        return self._pyav.read(unique)

    def _switch_to_pyav(self, reason: str) -> None:
        self._decord = None
        try:
            self._pyav = _PyAVFrames(self.path)
        except av.error.FFmpegError as err:
            raise MediaError(f"cannot decode video {self.path}: {reason}; PyAV: {_short(err)}") from err
        self.backend, self.fallback_reason = "pyav", f"{reason}; decoded with PyAV"

    def close(self) -> None:
        self._decord = None
        if self._pyav is not None:
            self._pyav.close()
            self._pyav = None


def _open_decord(path: Path):
    """A decord VideoReader, fps and frame count; raises whatever decord raises."""
    reader = VideoReader(str(path), ctx=cpu(0))
    fps, count = float(reader.get_avg_fps()), len(reader)
    if not (fps > 0 and count > 0):
        raise RuntimeError(f"decord reads {count} frames at {fps} fps")
    return reader, fps, count


@_timed
def open_video(path: str | Path, prefer: str = "decord") -> Video:
    """Open a video for reading frames: decord unless it cannot (then PyAV, with `fallback_reason` set)."""
    if prefer not in ("decord", "pyav"):
        raise ValueError(f"prefer must be 'decord' or 'pyav', got {prefer!r}")
    path = _check_file(path)
    reason = None
    if prefer == "decord":
        codec = _probe_codec(path)
        if decord is None:
            reason = "decord is not installed"
        elif codec in DECORD_UNRELIABLE:
            reason = DECORD_UNRELIABLE[codec]
        else:
            try:
                reader, fps, count = _open_decord(path)
                return Video(path, "decord", fps, count, reader=reader)
            except Exception as err:  # decord raises DECORDError, RuntimeError and others
                reason = f"decord could not open it ({_short(err)})"
    try:
        pyav = _PyAVFrames(path)
    except av.error.FFmpegError as err:
        raise MediaError(f"cannot decode video {path}: {_short(err)}") from err
    if pyav.num_frames <= 0:
        pyav.close()
        raise MediaError(f"cannot decode video {path}: it holds no video frames")
    return Video(path, "pyav", pyav.fps, pyav.num_frames, pyav=pyav,
                 fallback_reason=f"{reason}; decoded with PyAV" if reason else None)


def _pyav_audio(path: Path, sample_rate: int) -> np.ndarray:
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise MediaError(f"cannot decode audio of video {path}: {_short(err)}") from err
    with container:
        if not container.streams.audio:
            raise MediaError(f"video {path} has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
        chunks, error = [], None
        demux = container.demux(stream)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.error.FFmpegError as err:
                error = _short(err)
                break
            try:
                frames = packet.decode()
            except av.error.FFmpegError as err:  # a damaged packet: skip it, as ffmpeg does
                error = _short(err)
                continue
            for frame in frames:
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    if not chunks:
        raise MediaError(f"cannot decode audio of video {path}: {error or 'no audio samples'}")
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


@_timed
def read_audio_track(path: str | Path, sample_rate: int = 24000) -> np.ndarray:
    """The whole audio track as mono float32 at `sample_rate` (decord, else PyAV)."""
    path = _check_file(path)
    if decord is not None:
        try:
            samples = AudioReader(str(path), ctx=cpu(0), sample_rate=sample_rate, mono=True)[:].asnumpy()
            if samples.size:
                return np.ascontiguousarray(samples.reshape(-1), dtype=np.float32)
        except Exception:  # no audio stream, or a codec decord cannot read: PyAV says which
            pass
    return _pyav_audio(path, sample_rate)


def read_audio(path: str | Path, sample_rate: int = 24000, start: float = 0.0, stop: float | None = None) -> np.ndarray:
    """Mono float32 samples covering [start, stop) seconds (stop=None: to the end); shorter where the track ends.

    Decodes the whole track: callers reading many windows of one video should call
    `read_audio_track` once and slice it themselves.
    """
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    track = read_audio_track(path, sample_rate)
    first = int(round(start * sample_rate))
    last = len(track) if stop is None else int(round(stop * sample_rate))
    return track[first:last].copy()
