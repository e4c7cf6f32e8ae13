"""Generates the built-in demo dataset: short egocentric-like clips with sound, deterministic from a seed.

Design (docs/demo-data.md): label = (motion, object). Motion is seen best in optical flow,
the object is heard in audio and seen in RGB, RGB also holds the motion over time; clutter,
camera shake, colour jitter, masked sounds and noise keep every modality imperfect.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MOTIONS = ["right", "left", "down", "up"]
OBJECTS = ["kettle", "pan", "tap"]
_COLOURS = np.array([[200, 60, 50], [70, 170, 70], [60, 90, 200]], dtype=np.float32)  # per object
_TONES_HZ = [330.0, 880.0, None]  # kettle hums low, pan rings high, the tap hisses (band noise)


@dataclass(frozen=True)
class DemoSpec:
    clips_train: int = 240
    clips_val: int = 120
    seconds: float = 2.0
    fps: int = 12
    size: int = 96
    sample_rate: int = 24000
    seed: int = 0

    @classmethod
    def small(cls) -> DemoSpec:
        """The reduced set CI runs: same design, fewer and shorter clips."""
        return cls(clips_train=48, clips_val=24, seconds=1.5)


def class_names(spec: DemoSpec | None = None) -> list[str]:
    return [f"{m}-{o}" for m in MOTIONS for o in OBJECTS]


def describe_demo(spec: DemoSpec) -> dict:
    return {
        **asdict(spec), "classes": class_names(spec),
        "description": (f"{spec.clips_train} training and {spec.clips_val} validation clips of {spec.seconds:g} s, {spec.size}x{spec.size} "
                        f"H.264 at {spec.fps} fps with AAC sound, made by egodistill's generator (docs/demo-data.md): "
                        f"{len(MOTIONS)} motions x {len(OBJECTS)} objects = {len(MOTIONS) * len(OBJECTS)} classes."),
    }


def generate_demo_data(out_dir: Path, spec: DemoSpec = DemoSpec(), workers: int = 2, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write `videos/*.mp4` and `segments.csv` (generic manifest) into out_dir; reuse them if the spec matches."""
    out_dir = Path(out_dir)
    manifest, spec_file = out_dir / "segments.csv", out_dir / "demo-spec.json"
    clips = _clips(spec)
    if spec_file.exists() and manifest.exists() and json.loads(spec_file.read_text()) == asdict(spec) \
            and all((out_dir / "videos" / f"{c[0]}.mp4").exists() for c in clips):
        return manifest
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir / "videos" / f"{name}.mp4", spec, index, label) for name, index, label, _ in clips]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, _ in enumerate(pool.map(_write_clip, jobs, chunksize=8), start=1):
            if progress:
                progress(done, len(jobs))
    rows = ["segment_id,video,start_sec,stop_sec,split,label:action"]
    rows += [f"{name},{name}.mp4,0,{spec.seconds:g},{split},{label}" for name, _, label, split in clips]
    manifest.write_text("\n".join(rows) + "\n")
    spec_file.write_text(json.dumps(asdict(spec)))  # last: marks the set complete
    return manifest


def _clips(spec: DemoSpec) -> list[tuple[str, int, int, str]]:
    """(name, index, label, split); labels balanced and shuffled by the seed."""
    n = spec.clips_train + spec.clips_val
    classes = len(MOTIONS) * len(OBJECTS)
    rng = np.random.default_rng(spec.seed)
    train = rng.permutation(np.arange(spec.clips_train) % classes)
    val = rng.permutation(np.arange(spec.clips_val) % classes)
    labels = np.concatenate([train, val])
    return [(f"clip{i:04d}", i, int(labels[i]), "train" if i < spec.clips_train else "val") for i in range(n)]


def render_clip(spec: DemoSpec, index: int, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T, S, S, 3] and mono audio float32 [samples] of one clip."""
    rng = np.random.default_rng([spec.seed, index])
    motion, obj = divmod(label, len(OBJECTS))
    return _frames(spec, rng, motion, obj), _audio(spec, rng, obj)


def _frames(spec: DemoSpec, rng: np.random.Generator, motion: int, obj: int) -> np.ndarray:
    s, t = spec.size, int(round(spec.seconds * spec.fps))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    # A cluttered worktop: smooth random texture plus static distractor blobs in object-like colours.
    background = rng.uniform(60, 160, (s // 8 + 1, s // 8 + 1, 3)).astype(np.float32)
    background = np.kron(background, np.ones((8, 8, 1), dtype=np.float32))[:s, :s]
    background += rng.normal(0, 12, (s, s, 3)).astype(np.float32)
    for _ in range(rng.integers(2, 5)):
        cy, cx, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(s * 0.06, s * 0.14)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        background[blob] = _COLOURS[rng.integers(len(OBJECTS))] + rng.normal(0, 25, 3)
    # The object: its colour jittered, sometimes washed out (bad light), so appearance is unreliable.
    colour = _COLOURS[obj] + rng.normal(0, 30, 3)
    if rng.random() < 0.25:
        colour = 0.4 * colour + 0.6 * rng.uniform(60, 200, 3)
    radius = rng.uniform(s * 0.12, s * 0.18)
    direction = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]][motion], dtype=np.float32)  # (dx, dy)
    speed = rng.uniform(0.25, 0.45) * s / t  # pixels per frame
    start = np.array([s / 2, s / 2], dtype=np.float32) - direction * speed * t / 2 + rng.normal(0, s * 0.08, 2)
    stripes = 0.75 + 0.25 * np.sign(np.sin((xx + yy) * 0.9))  # texture so flow sees the inside move too
    frames = np.empty((t, s, s, 3), dtype=np.uint8)
    shake = np.cumsum(rng.normal(0, 0.6, (t, 2)), axis=0)  # head-mounted camera drifts
    for i in range(t):
        cx, cy = start + direction * speed * i
        dx, dy = int(round(shake[i, 0])), int(round(shake[i, 1]))
        image = np.roll(background, (dy, dx), axis=(0, 1)).copy()
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius * radius
        image[inside] = (colour * stripes[inside, None])
        if rng.random() < 0.2:  # a hand or steam occludes part of the view
            oy, ox = rng.integers(0, s // 2, 2)
            image[oy: oy + s // 2, ox: ox + s // 3] = rng.uniform(90, 140)
        image += rng.normal(0, 10, image.shape).astype(np.float32)
        frames[i] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


def _audio(spec: DemoSpec, rng: np.random.Generator, obj: int) -> np.ndarray:
    n = int(round(spec.seconds * spec.sample_rate))
    time = np.arange(n, dtype=np.float32) / spec.sample_rate
    noise = rng.normal(0, 1, n).astype(np.float32)
    tone = _TONES_HZ[obj]
    if tone is None:  # hiss: noise band-limited to high frequencies by differencing
        sound = np.diff(rng.normal(0, 1, n + 1)).astype(np.float32) * 0.5
    else:
        sound = np.sin(2 * np.pi * tone * rng.uniform(0.9, 1.1) * time).astype(np.float32)
    # The object sounds in bursts, and in some clips not at all (a kitchen is noisy).
    envelope = (np.sin(2 * np.pi * rng.uniform(1, 3) * time + rng.uniform(0, 6.3)) > -0.3).astype(np.float32)
    if rng.random() < 0.2:
        envelope[:] = 0.0
    snr = rng.uniform(0.3, 1.5)
    audio = snr * envelope * sound + 0.35 * noise
    return (0.25 * audio / (np.abs(audio).max() + 1e-6)).astype(np.float32)


def _write_clip(job: tuple[Path, DemoSpec, int, int]) -> Path:
    import av

    path, spec, index, label = job
    frames, audio = render_clip(spec, index, label)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        video = container.add_stream("libx264", rate=spec.fps, options={"preset": "ultrafast", "crf": "20", "threads": "1"})
        video.width = video.height = spec.size
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=spec.sample_rate, layout="mono")
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        step = 1024
        for start in range(0, len(audio), step):
            chunk = av.AudioFrame.from_ndarray(audio[None, start: start + step], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = spec.sample_rate, start
            container.mux(sound.encode(chunk))
        container.mux(sound.encode())
    tmp.replace(path)  # a killed generator never leaves a half-written clip under the real name
    return path
