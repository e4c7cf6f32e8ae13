"""Public test fixtures, as `zarr.testing`: real encoded media made with ffmpeg, and small synthetic caches.

Plain functions, shared by test modules, benchmarks and the demo.
- Media: every file is encoded for real (H.264 + AAC in .mp4, VP9 + Opus in .webm), so the decoders
  meet the formats they meet in datasets; plus broken files (truncated, empty).
- Synthetic caches: learnable features written through the cache API. Each modality's rows are a
  class signal (one random direction per verb and per noun) plus noise of its own strength, so
  teachers differ in quality the way real modalities do.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from egodistill import cache

# --- media ----------------------------------------------------------------------------------

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


# --- synthetic caches -----------------------------------------------------------------------

# modality -> (backbone named in the provenance, input channels, image size, signal strength)
DEFAULT_MODALITIES = {"rgb": ("resnet18", 3, 224, 1.0), "flow": ("resnet18", 2, 224, 0.7), "audio": ("resnet18", 1, 224, 0.4)}


@dataclass
class SyntheticSpec:
    segments: int = 120
    heads: dict[str, int] = field(default_factory=lambda: {"verb": 4, "noun": 6})
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.3})
    modalities: dict[str, tuple] = field(default_factory=lambda: dict(DEFAULT_MODALITIES))
    frames: int = 8
    feature_dim: int = 32
    segments_per_task: int = 16
    unlabelled: float = 0.0        # fraction of training segments whose labels are cache.UNLABELLED
    hidden_heads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> heads none of its segments has labels for (EPIC's test file: verb, noun)
    failed: dict[str, list[int]] = field(default_factory=dict)  # modality -> segments its ledger marks failed (NaN rows)
    offset: float = 0.0            # a pattern shared by every row of a modality, of this norm (as frozen features have)
    seed: int = 0


def build_synthetic_cache(location: str, spec: SyntheticSpec | None = None) -> dict[str, str]:
    """Write the cache at `location`; returns modality -> teacher key."""
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(spec.seed)
    n = spec.segments
    handle = cache.open_cache(location, mode="a")
    labels = {h: rng.integers(0, c, n).astype(np.int32) for h, c in spec.heads.items()}
    split_names = list(spec.splits)
    split = np.array(split_names)[np.minimum(np.searchsorted(np.cumsum(list(spec.splits.values())), (np.arange(n) + 0.5) / n), len(split_names) - 1)]
    hidden = (split == split_names[0]) & (rng.random(n) < spec.unlabelled)
    table = cache.SegmentTable(
        ids=np.array([f"seg{i:05d}" for i in range(n)]), videos=np.array([f"video{i // 10:03d}" for i in range(n)]),
        start_sec=np.arange(n, dtype=np.float64), stop_sec=np.arange(n, dtype=np.float64) + 1.0, split=split,
        labels={h: np.where(hidden | np.isin(split, [s for s, hs in spec.hidden_heads.items() if h in hs]), cache.UNLABELLED, y).astype(np.int32)
                for h, y in labels.items()}, heads=dict(spec.heads),
    )
    handle.write_segments(table, {"format": "synthetic", "seed": spec.seed})
    keys = {}
    for modality, (backbone, in_chans, size, strength) in spec.modalities.items():
        keys[modality] = _write_teacher(handle, modality, backbone, in_chans, size, strength, labels, spec, rng)
    return keys


def _write_teacher(handle: cache.Cache, modality, backbone, in_chans, size, strength, labels, spec: SyntheticSpec, rng) -> str:
    n, t, d = spec.segments, spec.frames, spec.feature_dim
    directions = {h: rng.normal(size=(c, d)) for h, c in spec.heads.items()}
    signal = sum(directions[h][y] for h, y in labels.items()) * strength
    shared = rng.normal(size=d)
    shared *= spec.offset / np.linalg.norm(shared)
    rows = (shared + signal[:, None, :] + rng.normal(size=(n, t, d))).reshape(n * t, d).astype(np.float16)
    provenance = cache.Provenance(
        modality=modality, backbone=backbone, weights=f"random-init:{spec.seed}", in_chans=in_chans,
        preprocessing={"input_size": [size, size]}, sampling={"frames": t}, precision="fp32",
    )
    key = provenance.teacher_key()
    offsets, layout = cache.plan_layout(np.full(n, t), spec.segments_per_task)
    teacher, _ = handle.create_teacher(key, provenance, d, offsets, layout, {})
    for task in range(layout.tasks):
        segs = layout.task_segments(task)
        r0, r1 = int(offsets[segs.start]), int(offsets[segs.stop])
        times = np.tile(np.arange(t, dtype=np.float32) / t, len(segs)) + np.repeat(np.arange(segs.start, segs.stop, dtype=np.float32), t)
        failed = [i for i in spec.failed.get(modality, []) if i in segs]
        values = rows[r0:r1].copy()
        for i in failed:  # as extract leaves a failed segment: NaN rows and a ledger entry
            values[offsets[i] - r0: offsets[i + 1] - r0] = np.nan
        ledger = [cache.Failure(i, f"seg{i:05d}", "synthetic", "synthetic failure", expected_rows=t) for i in failed]
        teacher.write_task(task, values, times, {}, failed=ledger, worker="synthetic")
    return key
