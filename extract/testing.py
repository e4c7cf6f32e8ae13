"""Real encoded test media made with ffmpeg: small moving pictures with a sine tone, plus broken files.

Plain functions, shared by test modules and benchmarks. Every file is encoded for real (H.264 +
AAC in .mp4, VP9 + Opus in .webm), so the decoders meet the formats they meet in datasets.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FFMPEG = shutil.which("ffmpeg")

_CODECS = {
    # x264 at its fastest, but with B-frames so that decode order differs from display order.
    "h264": ["-c:v", "libx264", "-preset", "ultrafast", "-x264-params", "bframes=2", "-pix_fmt", "yuv420p"],
    "vp9": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-pix_fmt", "yuv420p"],
}
_AUDIO = {"h264": ["-c:a", "aac", "-b:a", "64k"], "vp9": ["-c:a", "libopus", "-b:a", "32k"]}


def have_ffmpeg() -> bool:
    return FFMPEG is not None


def make_video(path: str | Path, seconds: float = 2.0, fps: int = 25, size: tuple[int, int] = (96, 64),
               codec: str = "h264", audio: bool = True, tone_hz: float = 440.0, seed: int = 0,
               faststart: bool = True) -> Path:
    """Encode a moving test picture (ffmpeg's testsrc2, hue turned by `seed`) of `size` = (width, height).

    codec "h264" writes H.264 with AAC audio (mp4 with its index at the front unless faststart=False),
    "vp9" writes VP9 with Opus audio (webm). With audio, the track is a mono sine at `tone_hz`.
    A key frame every second keeps seeks realistic. Returns the path.
    """
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {sorted(_CODECS)}, got {codec!r}")
    if FFMPEG is None:
        raise RuntimeError("ffmpeg is not on PATH: install it (apt-get install -y ffmpeg)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    cmd = [FFMPEG, "-nostdin", "-y", "-loglevel", "error",
           "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps},hue=h={(seed * 47) % 360}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=48000"]
    cmd += ["-t", f"{seconds}", *_CODECS[codec], "-g", str(max(1, int(fps)))]
    cmd += [*_AUDIO[codec], "-ac", "1"] if audio else ["-an"]
    if codec == "h264" and faststart:
        cmd += ["-movflags", "+faststart"]
    subprocess.run([*cmd, str(path)], check=True, capture_output=True)
    return path


def truncate(path: str | Path, out: str | Path, fraction: float = 0.5) -> Path:
    """Copy the first `fraction` of `path`'s bytes to `out`, like a download cut short."""
    data = Path(path).read_bytes()
    out = Path(out)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def make_empty(path: str | Path) -> Path:
    """A zero-byte file, like a failed copy."""
    path = Path(path)
    path.write_bytes(b"")
    return path
